# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.recon-installed

.PHONY: setup demo test test-cuda clean

setup: $(STAMP)

# torch first, pinned to the CPU build this project is tested with (the local wheel where one is
# provided); a machine that already has a CUDA torch in this venv keeps it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

## Train 3D Gaussians on the built-in demo scene (CPU: a few minutes), evaluate, export a PLY.
demo: setup
	$(VENV)/bin/recon-train --data demo --output outputs/demo

## The test suite (CPU). Real-data tests run when RECON_DATA points at the shared data folder; the
## third-party clients it checks outputs with (browser, glTF validator, ...) are installed first.
test: setup
	bash scripts/install_test_clients.sh
	$(PY) -m pytest -q

## The GPU suite, on a machine with an NVIDIA GPU.
test-cuda: setup
	$(PY) -m pytest -q -m cuda

clean:
	rm -rf $(VENV) outputs .pytest_cache
