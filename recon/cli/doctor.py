"""``recon-doctor``: what recon sees of python, torch, CUDA, the driver, nvcc and the GPU, and what to
do when they disagree. Never compiles anything; useful on a CPU-only machine too."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from recon.cli.common import run_cli


@dataclass
class Report:
    rows: list[tuple[str, str]] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    problems: int = 0

    def add(self, key: str, value: str) -> None:
        self.rows.append((key, value))

    def advise(self, text: str, problem: bool = True) -> None:
        self.advice.append(text)
        self.problems += int(problem)


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _nvcc_path() -> tuple[str | None, str]:
    """nvcc that torch's extension builder would use (CUDA_HOME first, then PATH)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        cand = os.path.join(home, "bin", "nvcc")
        if os.path.exists(cand):
            return cand, f"CUDA_HOME={home}"
    found = shutil.which("nvcc")
    if found:
        return found, "PATH"
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda/bin/nvcc", "/usr/local/cuda"
    return None, ""


def _driver_cuda_version() -> str | None:
    """CUDA version the installed driver supports (cuDriverGetVersion), None without a driver."""
    try:
        import ctypes

        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
            return None
        return f"{v.value // 1000}.{(v.value % 1000) // 10}"
    except Exception:  # noqa: BLE001
        return None


def _major(v: str | None) -> int | None:
    m = re.match(r"(\d+)", v or "")
    return int(m.group(1)) if m else None


def collect() -> Report:
    r = Report()
    r.add("python", f"{platform.python_version()} ({sys.executable})")
    r.add("platform", f"{platform.system()} {platform.machine()}")
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        r.add("torch", f"not importable ({exc})")
        r.advise("install PyTorch: https://pytorch.org/get-started/locally/")
        return r
    r.add("torch", torch.__version__)
    torch_cuda = torch.version.cuda
    r.add("torch CUDA", torch_cuda or "none (CPU-only build)")
    has_gpu = False
    try:
        has_gpu = bool(torch_cuda) and torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_gpu = False
    if torch_cuda:
        r.add("CUDA runtime", f"{torch_cuda} (bundled with torch)")
    drv_cuda = _driver_cuda_version()
    if drv_cuda:
        r.add("driver CUDA API", drv_cuda)
    if has_gpu:
        for i in range(torch.cuda.device_count()):
            name = torch.cuda.get_device_name(i)
            cc = "%d.%d" % torch.cuda.get_device_capability(i)
            mem = torch.cuda.get_device_properties(i).total_memory / 2**30
            r.add(f"GPU {i}", f"{name}, compute capability {cc}, {mem:.0f} GiB")
    else:
        r.add("GPU", "none visible to torch")

    smi = _run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"])
    driver = None
    if smi:
        driver = smi.strip().splitlines()[0].split(",")[0].strip()
        r.add("driver", f"{driver} (nvidia-smi)")
        text = _run(["nvidia-smi"]) or ""
        m = re.search(r"CUDA Version:\s*([\d.]+)", text)
        drv_cuda = drv_cuda or (m.group(1) if m else None)
    else:
        r.add("driver", "nvidia-smi not found")
    if drv_cuda and torch_cuda and (_major(drv_cuda) or 0) < (_major(torch_cuda) or 0):
        r.advise(
            f"the driver supports CUDA {drv_cuda} but torch was built for CUDA {torch_cuda}: update the "
            "NVIDIA driver or install a torch build for an older CUDA"
        )

    nvcc, source = _nvcc_path()
    nvcc_version = None
    if nvcc:
        out = _run([nvcc, "--version"]) or ""
        m = re.search(r"release\s+([\d.]+)", out)
        nvcc_version = m.group(1) if m else None
        r.add("nvcc", f"{nvcc_version or '?'} ({nvcc}, via {source})")
    else:
        r.add("nvcc", "not found (CUDA_HOME unset, no nvcc on PATH)")
    r.add("TORCH_CUDA_ARCH_LIST", os.environ.get("TORCH_CUDA_ARCH_LIST", "(unset: the present GPU's arch)"))
    r.add("MAX_JOBS", os.environ.get("MAX_JOBS", "(unset: all cores)"))
    ninja = shutil.which("ninja")
    try:
        import ninja as _ninja  # noqa: F401

        ninja = ninja or "python package"
    except Exception:  # noqa: BLE001
        pass
    r.add("ninja", ninja or "not found")

    try:
        from recon.rasterizers.cuda import _backend

        r.add("extension cache", str(_backend.build_dir()))
        r.add("extension built", "yes" if _backend.is_built() else "no (compiles on first GPU use, ~60 s)")
        r.add("extension loaded", "yes" if _backend.loaded() else "no")
    except Exception as exc:  # noqa: BLE001
        r.add("extension", f"cannot inspect ({exc})")

    # advice
    if not torch_cuda:
        r.advise("torch is a CPU-only build: recon renders with the PyTorch reference (slow). For the CUDA core "
                 "install a CUDA build of torch (https://pytorch.org/get-started/locally/)", problem=smi is not None)
    elif not has_gpu:
        r.advise("torch has CUDA but sees no GPU: check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES; "
                 "recon falls back to the CPU path")
    if torch_cuda:
        if nvcc is None:
            r.advise("no nvcc: install the CUDA toolkit matching torch's CUDA "
                     f"({torch_cuda}) and set CUDA_HOME, or use the CPU path")
        elif nvcc_version and _major(nvcc_version) != _major(torch_cuda):
            r.advise(f"nvcc {nvcc_version} and torch CUDA {torch_cuda} differ in major version: the extension will "
                     f"not build. Install CUDA toolkit {_major(torch_cuda)}.x and point CUDA_HOME at it")
        if ninja is None:
            r.advise("ninja not found: `pip install ninja` (torch's extension builder needs it)")
    if not r.advice:
        r.advise("everything agrees: the CUDA core builds on first use, or now with "
                 "`python -m recon.rasterizers.cuda.build`", problem=False)
    return r


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    report = collect()
    console = Console()
    table = Table(title="recon doctor", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in report.rows:
        table.add_row(k, v)
    console.print(table)
    for line in report.advice:
        console.print(f"- {line}", highlight=False)
    return 0


def entrypoint() -> None:
    run_cli(main)


if __name__ == "__main__":
    entrypoint()
