# The two set-up commands (README): `make demo` runs the pipeline on the embedded sample, `make test` the tests.
# Each creates .venv from requirements.txt first if it is missing or stale.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
# Stage commands call `python`: make it the environment's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test env clean browser

demo: $(VENV)/.installed
	$(BIN)/dvc repro

test: $(VENV)/.installed browser
	$(BIN)/python -m pytest

# The offline-plots test renders `dvc plots show` in a headless Chromium. Installed here where we can (root with
# apt-get: CI, containers); elsewhere that one test skips and says how to install it.
BROWSERS := chromium-headless-shell chromium chromium-browser google-chrome
browser:
	@for b in $(BROWSERS); do command -v $$b >/dev/null && exit 0; done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium-headless-shell (apt-get) for the offline-plots test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell) >/dev/null \
		|| echo "warning: could not install chromium-headless-shell; the offline-plots test will skip"; \
	else echo "note: no headless Chromium; the offline-plots test will skip (apt-get install chromium-headless-shell)"; fi

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; run: make PYTHON=/path/to/python3.11 ..."; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

clean:
	rm -rf $(VENV)
