"""CPU-side checks of the CUDA core's packaging: nothing compiles on import or without a GPU, the build
location and arch selection follow the documented rules, recon-doctor and recon-bench answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_py(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_import_never_compiles():
    code = (
        "import sys, recon, recon.rasterizers, recon.rasterizers.cuda as c\n"
        "assert 'torch.utils.cpp_extension' not in sys.modules, 'cpp_extension imported at import time'\n"
        "assert not c._backend.loaded()\n"
        "print('ok')\n"
    )
    r = _run_py(code)
    assert r.returncode == 0, r.stderr
    assert "compiling" not in r.stderr


def test_cpu_machine_never_compiles(monkeypatch):
    from recon.rasterizers.cuda import _backend

    monkeypatch.setattr(_backend, "cuda_device_present", lambda: False)

    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("load() called without a CUDA device")

    monkeypatch.setattr(_backend, "load", boom)
    assert _backend.is_available() is False
    assert _backend.unavailable_reason() == "no CUDA device"


def test_build_dir_rules(monkeypatch, tmp_path):
    from recon.rasterizers.cuda import _backend

    monkeypatch.delenv("RECON_CUDA_BUILD_DIR", raising=False)
    monkeypatch.setenv("RECON_CACHE", str(tmp_path / "cache"))
    root = _backend.build_root()
    assert root.parent == tmp_path / "cache" / "torch_extensions"
    assert "torch" in root.name and "cu" in root.name
    monkeypatch.setenv("RECON_CUDA_BUILD_DIR", str(tmp_path / "explicit"))
    assert _backend.build_root() == tmp_path / "explicit"
    assert _backend.build_dir().name.startswith("recon_cuda_")
    assert not _backend.is_built()


def test_arch_list_respects_env(monkeypatch):
    from recon.rasterizers.cuda import _backend

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6;9.0")
    assert _backend.arch_list() == "8.6;9.0"
    h1 = _backend.source_hash()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert _backend.source_hash() != h1  # a different target never reuses a stale binary


def test_sources_are_package_data():
    from recon.rasterizers.cuda import _backend

    for name in _backend.SOURCES:
        assert (_backend.CSRC / name).is_file(), name
    import fnmatch
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "recon.rasterizers.cuda.csrc" in setuptools_cfg["packages"]
    patterns = setuptools_cfg["package-data"]["recon.rasterizers.cuda.csrc"]
    shipped = [p.name for p in _backend.CSRC.iterdir() if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    # every file the build compiles or includes must travel in the wheel
    for path in _backend.CSRC.iterdir():
        if path.suffix in (".cu", ".cuh", ".h", ".cpp"):
            assert path.name in shipped, path.name


def test_render_on_cpu_uses_reference_without_compiling():
    import torch

    from recon.rasterizers import render_gaussians
    from recon.rasterizers.cuda import _backend

    n = 5
    g = torch.Generator().manual_seed(0)
    out = render_gaussians(
        torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 3.0]), torch.randn(n, 4, generator=g),
        torch.full((n, 3), 0.1), torch.full((n,), 0.5), torch.rand(n, 3, generator=g), torch.eye(4),
        torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]), 16, 16,
    )  # fmt: skip
    assert out.meta["backend"] == "reference"
    assert not _backend.loaded()


def test_doctor_runs_and_reports():
    from recon.cli import doctor

    report = doctor.collect()
    keys = [k for k, _ in report.rows]
    for k in ("python", "torch", "torch CUDA", "nvcc", "extension built"):
        assert k in keys, k
    assert report.advice
    r = subprocess.run([sys.executable, "-m", "recon.cli.doctor"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "recon doctor" in r.stdout


def test_build_module_prints_dir():
    r = subprocess.run([sys.executable, "-m", "recon.rasterizers.cuda.build", "--print-dir"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "recon_cuda_" in r.stdout


def test_bench_help_and_cpu_error():
    pytest.importorskip("tyro")
    r = subprocess.run([sys.executable, "-m", "recon.cli.bench", "raster", "--help"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0 and "--scenes" in r.stdout
    import torch

    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, "-m", "recon.cli.bench", "raster", "--scenes", "1k"], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)  # fmt: skip
        assert r.returncode == 2
        assert "needs a CUDA GPU" in r.stderr
