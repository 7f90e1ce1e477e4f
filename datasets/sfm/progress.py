"""Progress display for SfM: one rich line per stage (bar + count + ETA, or a spinner).

rich is imported lazily, so importing :mod:`recon.datasets.sfm` needs no rich."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator


def _progress_columns():
    from rich.progress import ProgressColumn, SpinnerColumn, TimeRemainingColumn
    from rich.text import Text

    class CountColumn(ProgressColumn):
        """``done/total`` for counted stages, nothing for spinner stages."""

        def render(self, task):
            if not task.fields.get("counted", True) or task.total is None:
                return Text("")
            return Text(f"{int(task.completed)}/{int(task.total)}", style="progress.download")

    class EtaColumn(TimeRemainingColumn):
        """``eta 0:00:12`` while a counted stage runs; nothing otherwise."""

        def render(self, task):
            if task.finished or task.stop_time is not None or not task.fields.get("counted", True) \
                    or task.total is None or not task.completed:
                return Text("")
            return Text("eta ") + super().render(task)

    class DoneSpinnerColumn(SpinnerColumn):
        """A spinner while the stage runs, a tick once it ended (even short of its total, as a
        mapper that registered 50 of 65 images)."""

        def render(self, task):
            if task.finished or task.stop_time is not None:
                return Text("✓", style="green")
            return super().render(task)

    return CountColumn, EtaColumn, DoneSpinnerColumn


def _CountColumn():  # noqa: N802 - column factories, built lazily so importing sfm needs no rich
    return _progress_columns()[0]()


def _EtaColumn():  # noqa: N802
    return _progress_columns()[1]()


def _SpinColumn():  # noqa: N802
    return _progress_columns()[2]()


class _Stages:
    """One rich progress line per stage, with a bar and an ETA when the stage has a known number
    of steps, and a spinner with the elapsed time when it does not. Silent when disabled."""

    def __init__(self, enabled: bool, title: str, console=None) -> None:
        self.enabled = enabled
        self.title = title
        self.console = console
        self.progress = None
        self.times: dict[str, float] = {}

    def __enter__(self) -> "_Stages":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.console = self.console or Console(stderr=True)
            self.progress = Progress(
                _SpinColumn(),
                TextColumn("[bold]{task.description:<10}[/]"),
                BarColumn(bar_width=30),
                _CountColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                _EtaColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.__enter__()
            self.console.print(f"[bold]{self.title}[/]", highlight=False)
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None, note: str = "") -> Iterator["_Stage"]:
        st = _Stage(self, name, total, note)
        t0 = time.perf_counter()
        try:
            yield st
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
            st.finish()


class _Stage:
    def __init__(self, parent: _Stages, name: str, total: int | None, note: str) -> None:
        self.parent, self.name, self.total = parent, name, total
        self.task = None
        if parent.progress is not None:
            self.task = parent.progress.add_task(name, total=total, note=note, counted=total is not None)

    def advance(self, n: float = 1) -> None:
        if self.task is not None:
            self.parent.progress.advance(self.task, n)

    def set(self, completed: float | None = None, note: str | None = None, total: int | None = None) -> None:
        if self.task is not None:
            kw: dict[str, Any] = {}
            if completed is not None:
                kw["completed"] = completed
            if note is not None:
                kw["note"] = note
            if total is not None:
                kw["total"] = total
            self.parent.progress.update(self.task, **kw)

    def finish(self) -> None:
        if self.task is not None:
            task = self.parent.progress.tasks[self.task]
            if task.total is None:  # a spinner stage: show it as done
                self.parent.progress.update(self.task, total=1, completed=1)
            self.parent.progress.stop_task(self.task)
