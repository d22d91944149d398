# Every target sets up .venv itself. Pass overrides as ARGS="section.key=value ...".
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= pipeline.yaml
ARGS ?=
SMOKE_DIR ?= runs/smoke
# The smoke run: the tiny synthetic set and small settings, so it runs on a laptop CPU in minutes.
SMOKE_ARGS := paths.ssv2_root=$(SMOKE_DIR)/ssv2 paths.run_dir=$(SMOKE_DIR) shards.videos_per_shard=8 shards.cpus_per_task=2 \
	teacher.model=clip-tiny teacher.pretrained=random teacher.num_workers=2 \
	student.arch=tsm_tiny student.image_size=64 student.num_frames=8 train.epochs=2 train.batch_size=4 \
	train.num_workers=2 train.log_every_steps=4 train.eval_frame_counts=[4,8] slurm.executor=local \
	slurm.shards.cpus_per_task=2 slurm.teacher_cache.gpus_per_node=0 slurm.teacher_cache.cpus_per_task=2 \
	slurm.train_student.gpus_per_node=0 slurm.train_student.tasks_per_node=1 slurm.train_student.cpus_per_task=2

.PHONY: help venv smoke test shards teacher-cache train-student all report status slurm-up slurm-down synthetic bench-shards clean-smoke

help: ## List every target with one line each
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

venv: $(STAMP) ## Create .venv with the pinned requirements (done by every target when missing)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

smoke: $(STAMP) ## Run every stage on the embedded tiny synthetic data set (CPU, a few minutes)
	$(PY) -m stages.synthetic --config $(CONFIG) $(SMOKE_ARGS)
	$(PY) -m slurm.launch all --config $(CONFIG) $(SMOKE_ARGS) $(ARGS)
	$(PY) -m stages.report --config $(CONFIG) $(SMOKE_ARGS) $(ARGS)

test: $(STAMP) ## Run the test suite
	$(PY) -m pytest -q tests

synthetic: $(STAMP) ## Write the synthetic SSv2-format set to paths.ssv2_root
	$(PY) -m stages.synthetic --config $(CONFIG) $(ARGS)

shards: $(STAMP) ## Stage 1: submit the shard array job (only shards not done) and wait
	$(PY) -m slurm.launch shards --config $(CONFIG) $(ARGS)

teacher-cache: $(STAMP) ## Stage 2: submit the teacher-cache array job (only shards not cached) and wait
	$(PY) -m slurm.launch teacher-cache --config $(CONFIG) $(ARGS)

train-student: $(STAMP) ## Stage 3: submit the DDP training job (requeues itself when preempted) and wait
	$(PY) -m slurm.launch train-student --config $(CONFIG) $(ARGS)

all: $(STAMP) ## Submit all three stages chained with afterok dependencies
	$(PY) -m slurm.launch all --no-wait --config $(CONFIG) $(ARGS)

report: $(STAMP) ## Write <run_dir>/report/report.md and its PNG plots from the run's own files
	$(PY) -m stages.report --config $(CONFIG) $(ARGS)

status: $(STAMP) ## Each stage's jobs and states, and shards/rows/steps done versus expected
	$(PY) -m slurm.launch status --config $(CONFIG) $(ARGS)

slurm-up: ## Start a single-node SLURM cluster on this machine (root, Debian)
	bash slurm/dev-cluster/start.sh

slurm-down: ## Stop exactly the daemons slurm-up started
	bash slurm/dev-cluster/stop.sh

bench-shards: $(STAMP) ## Benchmark the shards stage against a bare ffmpeg decode (CPU)
	$(PY) -m bench.shards_bench $(BENCH_ARGS)

clean-smoke: ## Delete the smoke run's outputs
	rm -rf $(SMOKE_DIR)
