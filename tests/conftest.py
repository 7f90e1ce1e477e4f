"""Shared fixtures. Real data comes only through $RECON_DATA; tests that need it skip when it is unset."""

from __future__ import annotations

import os
import pathlib

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own recon cache, so nothing is written into $RECON_DATA or the user's home."""
    monkeypatch.setenv("RECON_CACHE", str(tmp_path_factory.mktemp("recon-cache")))


@pytest.fixture
def recon_data() -> pathlib.Path:
    root = os.environ.get("RECON_DATA")
    if not root:
        pytest.skip("RECON_DATA is not set; real-data test skipped")
    path = pathlib.Path(root)
    if not path.is_dir():
        pytest.skip(f"RECON_DATA={root!r} is not a directory")
    return path


def dataset(recon_data: pathlib.Path, name: str) -> pathlib.Path:
    path = recon_data / name
    if not path.is_dir():
        pytest.skip(f"{name} not found under RECON_DATA")
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip cleanly on a machine without a GPU, even when selected with -m cuda."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a broken install, reported elsewhere
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def require_client(available: bool, what: str) -> None:
    """Skip a test whose third-party client (browser, validator, Blender, ...) is missing, or fail it
    when $RECON_REQUIRE_TEST_CLIENTS is set (CI: `scripts/install_test_clients.sh` must have run)."""
    if available:
        return
    message = f"{what} is not installed (run scripts/install_test_clients.sh)"
    if os.environ.get("RECON_REQUIRE_TEST_CLIENTS"):
        pytest.fail(message)
    pytest.skip(message)


JS_CLIENTS = pathlib.Path(__file__).resolve().parent / "js"


def node_module(name: str) -> pathlib.Path:
    """The installed npm package ``name`` under tests/js/node_modules (skip/fail via require_client)."""
    import shutil

    path = JS_CLIENTS / "node_modules" / name
    require_client(path.is_dir() and shutil.which("node") is not None, f"npm package {name} (tests/js)")
    return path
