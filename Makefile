# apmae: every target bootstraps the local virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pins the CPU torch wheel; GPU users set CONSTRAINTS= after installing their CUDA torch.
CONSTRAINTS ?= constraints-cpu.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
UI_PORT ?= 5000
DEMO_DIR ?= artifacts/demo
export JSONARGPARSE_DEPRECATION_WARNINGS := off
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast ui bench clean-demo

$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_CONSTRAINTS) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

ui: $(VENV)/.installed
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server \
	  --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root ./mlruns \
	  --host 127.0.0.1 --port $(UI_PORT) --workers 1

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_model.py

clean-demo:
	rm -rf $(DEMO_DIR)
