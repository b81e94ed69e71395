# Two entry points for a fresh machine: `make run` (set up + main job) and `make test` (set up + tests).
# Both are idempotent: the install re-runs only when packaging files or a Cython kernel changed
# (editable installs do not rebuild changed .pyx files on their own).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rdquant-installed
KERNEL_SOURCES := $(wildcard quantcore/_ext/*.pyx quantcore/_ext/*.pxd)

.PHONY: setup run workflow lint test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(KERNEL_SOURCES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

run: $(STAMP)
	@# the main job: five iterations of unattended factor/model mining on the embedded S&P 500 market
	MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/rdquant loop --budget 5 --data sp500
	$(VENV)/bin/rdquant runs list

workflow: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/rdquant run examples/alpha158_lightgbm_sp500.yaml

lint: $(STAMP)
	@# ruff: lint (pyflakes, pycodestyle's errors, import order) and formatting, as configured in pyproject.toml
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

test: $(STAMP)
	@# pytest exits 5 when nothing was collected: report it, do not fail on it
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo 'no tests collected'; exit 0; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/bench_alpha158.py

clean:
	rm -rf $(VENV) build *.egg-info quantcore/_ext/*.c quantcore/_ext/*.so
