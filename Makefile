# The README's two set-up commands: `make demo` and `make test`. Each creates (or reuses) the virtual
# environment in .venv, installs requirements.txt when it changed, then runs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m ssd_ds.train --preset demo

test: $(STAMP)
	$(PY) -m pytest -q tests
