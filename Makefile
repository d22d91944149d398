# Every target sets up .venv itself. Pass overrides as ARGS="section.key=value ...", a recipe
# (recipes/*.yaml, layered on CONFIG) as RECIPE=recipes/NAME.yaml.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= pipeline.yaml
RECIPE ?=
ARGS ?=
SMOKE_DIR ?= runs/smoke
SWEEP ?=
RUNS ?=
COMPARE_DIR ?= runs/compare
SRC ?=
FROM ?=
OUT ?=
# The smoke run: configs/smoke.yaml (small settings, also the tests' base) over the config, on the
# tiny synthetic set under SMOKE_DIR, so it runs on a laptop CPU in minutes.
SMOKE_ARGS := --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) --config configs/smoke.yaml paths.ssv2_root=$(SMOKE_DIR)/ssv2 paths.run_dir=$(SMOKE_DIR)

EXP_ARGS ?=
NAME ?=
.PHONY: test-integration test-slow runs pretrain-teacher experiment help venv smoke test test-fast lint format shards teacher-cache teacher-head train-student evaluate export import-weights sweep compare all report verify status slurm-up slurm-down synthetic bench-shards clean-smoke

help: ## List every target with one line each
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

venv: $(STAMP) ## Create .venv with the pinned requirements (done by every target when missing)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

smoke: $(STAMP) ## Run every stage on the embedded tiny synthetic data set (CPU, about a minute)
	$(PY) -m stages.synthetic $(SMOKE_ARGS)
	$(PY) -m slurm.launch all $(SMOKE_ARGS) $(ARGS)
	$(PY) -m slurm.launch evaluate $(SMOKE_ARGS) $(ARGS)
	$(PY) -m slurm.launch export $(SMOKE_ARGS) $(ARGS)
	$(PY) -m stages.report $(SMOKE_ARGS) $(ARGS)

# Test files run side by side, each whole in one worker (its module fixtures and the SLURM dev
# cluster stay in one process); one thread per process, or the workers' thread pools oversubscribe the
# cores and the suite gets slower, not faster (docs/benchmarks.md, the test suite's time).
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP) ## Run the whole test suite (what CI runs): unit, integration, slow and real-SLURM tests; the 15 slowest listed
	$(PYTEST) --durations=15 tests

test-fast: $(STAMP) ## Run the unit tier only (no stage runs, no SLURM): under a minute
	$(PY) -m pytest -q -m unit tests

test-integration: $(STAMP) ## The unit and integration tiers (real stages on the synthetic set; no SLURM, no experiment variants)
	$(PYTEST) --durations=15 -m "unit or integration" tests

test-slow: $(STAMP) ## The CPU variants of the accuracy experiments alone
	$(PYTEST) --durations=15 -m slow tests

lint: $(STAMP) ## ruff (lint and format check of the whole tree) and the import layers (lint/import_layers.py)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) lint/import_layers.py

format: $(STAMP) ## ruff: apply the formatter and the safe lint fixes
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

pretrain-teacher: $(STAMP) ## Train the proxy benchmark's small CLIP here with ClipLoss (teacher_pretrain.*): writes the checkpoint teacher.pretrained names
	$(PY) -m stages.pretrain_teacher --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

experiment: $(STAMP) ## Proxy-benchmark tables (or all): make experiment NAME="safety unlabelled" [EXP_ARGS="--work DIR --seeds 0 1 2 --parallel 2"]
	@test -n "$(NAME)" || { echo "make experiment: name a table: make experiment NAME=safety (screen safety unlabelled frames mobilevit_gpu tsm_r50_gpu optimiser heads loss labels views tfd mobilevit controls student_teacher, or all)" >&2; exit 2; }
	$(PY) -m experiments.proxy_benchmark $(NAME) $(EXP_ARGS)

synthetic: $(STAMP) ## Write a synthetic SSv2-format set to paths.ssv2_root (ARGS="synthetic.preset=proxy": the proxy benchmark's)
	$(PY) -m stages.synthetic --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

shards: $(STAMP) ## Stage 1: submit the shard array job (only shards not done) and wait
	$(PY) -m slurm.launch shards --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

teacher-cache: $(STAMP) ## Stage 2: submit the teacher-cache array job (only shards not cached) and wait
	$(PY) -m slurm.launch teacher-cache --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

teacher-head: $(STAMP) ## Stage 2b: submit the job fitting teacher heads on the cached features (only heads not fitted) and wait
	$(PY) -m slurm.launch teacher-head --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

train-student: $(STAMP) ## Stage 3: submit the DDP training job (requeues itself when preempted) and wait
	$(PY) -m slurm.launch train-student --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

evaluate: $(STAMP) ## The published test protocol (eval.clips x eval.crops views, softmax averaged) on a checkpoint, as a job; waits
	$(PY) -m slurm.launch evaluate --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

all: $(STAMP) ## Every stage (shards, teacher-cache, teacher-head, train-student): on SLURM chained with afterok, returning at once; without SLURM run here in order
	$(PY) -m slurm.launch all --no-wait --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

import-weights: $(STAMP) ## A downloaded TSM-R50 checkpoint (SRC=file FROM=mit-han-lab|mmaction2|ffn [OUT=file]) as this project's student (<student>/best.pt)
	@test -n "$(SRC)" -a -n "$(FROM)" || { echo "make import-weights: name the file and its layout: make import-weights SRC=path.pth FROM=mmaction2 (or mit-han-lab, ffn)" >&2; exit 2; }
	$(PY) -m stages.import_weights --src $(SRC) --from $(FROM) $(if $(OUT),--out $(OUT)) --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

export: $(STAMP) ## The trained student as ONNX and torch.export programs per frame count, checked against PyTorch, timed at batch 1 (a job; waits)
	$(PY) -m slurm.launch export --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

sweep: $(STAMP) ## Train every point of SWEEP=sweeps/<name>.yaml as one SLURM array (only points not finished) and compare them
	@test -n "$(SWEEP)" || { echo "make sweep: name a sweep file: make sweep SWEEP=sweeps/loss_weights.yaml" >&2; exit 2; }
	$(PY) -m slurm.sweep $(SWEEP) --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

compare: $(STAMP) ## One table and plots across RUNS="folder ..." (student, run or sweep folders) into COMPARE_DIR
	@test -n "$(RUNS)" || { echo "make compare: name the runs: make compare RUNS=\"runs/a runs/b\"" >&2; exit 2; }
	$(PY) -m stages.compare $(RUNS) --out $(COMPARE_DIR)

runs: $(STAMP) ## Every trained student under DIR (default runs/): student, recipe, best top-1, learned, date, commit, device
	$(PY) -m stages.runs $(or $(DIR),runs)

report: $(STAMP) ## Write <run_dir>/report/report.md and its PNG plots from the run's own files (VANILLA=<student folder>: per class against it)
	$(PY) -m stages.report --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(if $(VANILLA),--vanilla $(VANILLA)) $(ARGS)

verify: $(STAMP) ## Check shards (sha256), indexes, the cache (fingerprint, done shards, every chunk's CRC32C) and checkpoints; print each problem with its repair command
	$(PY) -m stages.verify --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

status: $(STAMP) ## Each stage's jobs and states, and shards/rows/steps done versus expected
	$(PY) -m slurm.launch status --config $(CONFIG) $(if $(RECIPE),--config $(RECIPE)) $(ARGS)

slurm-up: ## Start a single-node SLURM cluster on this machine (root, Debian)
	bash slurm/dev-cluster/start.sh

slurm-down: ## Stop exactly the daemons slurm-up started
	bash slurm/dev-cluster/stop.sh

bench-shards: $(STAMP) ## Benchmark the shards stage against a bare ffmpeg decode (CPU)
	$(PY) -m bench.shards_bench $(BENCH_ARGS)

clean-smoke: ## Delete the smoke run's outputs
	rm -rf $(SMOKE_DIR)
