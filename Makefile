# The README's two set-up commands: `make demo` and `make test`. Each creates (or reuses) the virtual environment in
# .venv, installs what it needs at the versions pinned in constraints.txt when a requirements file changed, builds
# DeepSpeed's JIT op for CPU collectives once (never first inside a test that kills processes), then runs.
#   demo: requirements.txt (the trainer's runtime)
#   test, test-fast, lint: that, plus requirements-export.txt (the tests cover the ONNX export) and
#   requirements-test.txt (pytest, pytest-xdist, ruff)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
# JIT-built ops per environment (ssd_ds.train sets the same default): torch < 2.14 guards builds with a lock file
# that a killed build leaves behind, and a directory shared between torch versions hangs the older one.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions
# ... built by the environment's own ninja (pip's): ninja versions log build commands differently, and the trainer
# (ssd_ds.distributed.setup_process_env), the tests and the DeepSpeed launcher all use the environment's.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv venv-test demo test test-fast lint

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	DS_ACCELERATOR=cpu $(PY) -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP) requirements-export.txt requirements-test.txt
	$(PY) -m pip install -q -r requirements.txt -r requirements-export.txt -r requirements-test.txt -c constraints.txt
	@touch $(TEST_STAMP)

venv: $(STAMP)

venv-test: $(TEST_STAMP)

demo: $(STAMP)
	$(PY) -m ssd_ds.train --preset demo

# The suite, one test per core (at most 4; most end-to-end tests launch single-threaded trainer processes), then
# the kernels again under the GPU image's triton (3.6): interpreter tests and compile_check.
test: $(TEST_STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 tests
	PYTHON=$(PY) bash scripts/gpu/triton_compat.sh

# The inner loop: unit and kernel tests, without those marked slow (about 2 minutes on 2 cores).
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 -m "not slow" tests/unit tests/kernels

# Lint and import order (pyproject.toml's [tool.ruff]); CI runs it before `make test` (.ci/run).
lint: $(TEST_STAMP)
	$(PY) -m ruff check .
