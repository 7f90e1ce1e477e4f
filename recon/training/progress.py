"""The training progress bar: step/total, it/s, ETA, primitive count, memory, last PSNR.

On a terminal it is a live rich bar; in logs (no TTY) it prints one plain line every 10% instead,
so CI logs and ``nohup`` files stay readable.
"""

from __future__ import annotations

import resource
import sys
import time

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def memory_string(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return f"{rss_kib / 2**20:.2f} GiB RSS"


class TrainProgress:
    def __init__(self, total: int, start: int, enabled: bool, device: str) -> None:
        self.total, self.start, self.device = total, start, device
        self.console = Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.enabled = enabled
        self._t0 = time.perf_counter()
        self._next_print = start + max(1, total // 10)
        self._last = start

    def __enter__(self) -> "TrainProgress":
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} it/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
                console=self.console,
                transient=False,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=self.total, completed=self.start, rate="-", stats="")
        elif self.enabled:
            self.console.print(f"training {self.start} -> {self.total} steps on {self.device}", highlight=False)
        return self

    def update(self, step: int, n: int, psnr: float) -> None:
        self._last = step
        elapsed = time.perf_counter() - self._t0
        rate = (step - self.start) / max(elapsed, 1e-9)
        stats = f"N={n:,} | {memory_string(self.device)} | PSNR {psnr:5.2f}"
        if self.live:
            self.progress.update(self.task, completed=step, rate=f"{rate:.1f}", stats=stats)
        elif self.enabled and (step >= self._next_print or step == self.total):
            eta = (self.total - step) / max(rate, 1e-9)
            print(f"step {step}/{self.total} | {rate:.1f} it/s | ETA {eta:.0f} s | {stats}", file=sys.stderr, flush=True)
            self._next_print = step + max(1, self.total // 10)

    def log(self, message: str) -> None:
        if self.live:
            self.progress.console.print(message, highlight=False)
        elif self.enabled:
            print(message, file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.live:
            self.progress.__exit__(*exc)
