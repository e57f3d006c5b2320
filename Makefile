# The two set-up commands (README): `make demo` runs the pipeline on the embedded sample, `make test` the tests.
# Each creates .venv from requirements.txt first if it is missing or stale.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
# Stage commands call `python`: make it the environment's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test env clean

demo: $(VENV)/.installed
	$(BIN)/dvc repro

test: $(VENV)/.installed
	$(BIN)/python -m pytest

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; run: make PYTHON=/path/to/python3.11 ..."; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

clean:
	rm -rf $(VENV)
