# hpml: see README.md. Every target sets up (or refreshes) the project's venv by itself.

PYTHON ?= python3
VENV ?= .venv
SHARED ?= ../shared
PY := $(VENV)/bin/python
HPML := $(VENV)/bin/hpml
DEMO_DATA := results/data/wikitext-2
# The study and the site for submit-all, status and cancel: make submit-all EXP=seed_study SITE=greene
EXP ?= tiny_study
SITE ?= local
# Each configuration REPEATS times instead of the experiment file's repeats (make demo REPEATS=3;
# give the same REPEATS to status and report).
REPEATS ?=
STUDY = $(EXP) --site $(SITE) $(if $(REPEATS),--repeats $(REPEATS))

.PHONY: venv data demo submit-all status cancel report bench bench-memory bench-report bench-cli bench-planner chaos gpu-check gpu-wheels test schema slurm-up slurm-down

# The venv holds everything: the login side (pip install hpml), the engine and the tests.
# torch==2.13.0 goes in first: on a machine without a GPU it is the CPU build on this disk, and
# everything installed after it (deepspeed, transformers) is satisfied by it.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -e '.[engine,dev]'
	touch $@

# Real English text for the demo: WikiText-2 from ../shared, with a BPE tokenizer trained on it
# (nothing is downloaded). On a cluster, prepare WikiText-103 instead (docs/cluster.md#data).
data: $(DEMO_DATA)/meta.json
$(DEMO_DATA)/meta.json: | venv
	@test -f $(SHARED)/data/wikitext-2/valid.txt || { echo "make data: no $(SHARED)/data/wikitext-2/valid.txt; set SHARED=... or see docs/cluster.md#data" >&2; exit 2; }
	$(HPML) data prepare --files $(SHARED)/data/wikitext-2/valid.txt --tokenizer train --vocab-size 4096 --out $(DEMO_DATA)

# The seed study's five layouts and their baselines on the tiny GPT-2 (jobs/experiments/tiny_study.yaml),
# twice each, run on this machine without Slurm: CPU processes with gloo, one rank file per process.
# Running it again runs only what has not completed; REPEATS=3 adds a third repeat of each.
demo: venv data
	$(HPML) submit tiny_study --site local $(if $(REPEATS),--repeats $(REPEATS))
	@echo "tables, figures and report.html: make report"

# Submit every run of $(EXP) that has not completed to $(SITE) (or, with SITE=local, run it here);
# again after failures, it submits only what did not complete. ARGS="--only-failed" and friends pass through.
# The tiny study trains on the demo data, prepared first.
submit-all: venv $(if $(filter tiny_study,$(EXP)),data)
	$(HPML) submit $(STUDY) $(ARGS)

status: venv
	$(HPML) status $(STUDY) $(ARGS)

cancel: venv
	$(HPML) cancel $(STUDY) $(ARGS)

# Tables (CSV, Markdown, LaTeX), figures (PNG, SVG) and report.html in results/$(EXP)/report/;
# works while jobs still run.
report: venv
	$(HPML) report $(STUDY) $(ARGS)

# On one GPU: the original study's loop against the engine (tokens/s, TFLOP/s, MFU, memory, ratio),
# written to results/bench/bench.json. BENCH_ARGS="--data DIR --engine-batch 16"; on a CPU it runs too (MFU n/a): docs/speed.md.
BENCH_ARGS ?= --data $(DEMO_DATA)
bench: venv
	$(PY) -m hpml_core.bench $(BENCH_ARGS)

# The study's memory table measured: per-rank peak memory in the four layouts (4 processes; with
# fewer than 4 GPUs they share GPU 0 over gloo). MEMORY_ARGS="--data DIR"; results/bench/memory/.
MEMORY_ARGS ?= --data $(DEMO_DATA)
bench-memory: venv
	$(PY) -m hpml_core.bench.memory $(MEMORY_ARGS)

# Every GPU path checked and the study measured on one GPU, in one command (under 9 minutes on an
# H100), into results/gpu-check/ (gpu-check.md, gpu-check.json, logs/). Without a GPU it runs in a
# reduced form. On a GPU machine without a package index: make gpu-wheels here, carry .whl, and
# there run make gpu-check NO_VENV=1 PY=python3 (hpml_core/bench/README.md gives the steps).
GPU_CHECK_ARGS ?=
gpu-check: $(if $(NO_VENV),,venv)
	$(PY) -m hpml_core.bench.gpu_check $(GPU_CHECK_ARGS)

# The wheels gpu-check needs beyond a CUDA image's PyTorch (Python 3.12, x86-64), into .whl/.
gpu-wheels: venv
	hpml_core/bench/gpu-wheels .whl

# How long the report takes to aggregate 1,000 runs x 4 rank files (target: under 5 s).
bench-report: venv
	$(PY) -m analysis.bench_report

# How long hpml --help, plan, status and report take on the demo's results, each a fresh process
# of $(HPML) (median of 5; target: plan and status under 0.5 s on this machine).
bench-cli: demo
	$(PY) -m jobs.bench_cli --hpml $(HPML)

# How far the planner's step time is from the demo's runs, with the site's assumed rates and
# calibrated on the other half of the configurations (target: median error at most 30 %).
bench-planner: demo
	$(PY) -m jobs.bench_planner

# A study of 24 short runs on the local Slurm (NODES=2 make slurm-up; root) while ranks are
# killed, tasks cancelled, slurmctld restarted and the results disk filled; then hpml submit again
# until every run completes: runs lost and tracebacks seen must be 0 (jobs/chaos.py, ~10 minutes).
CHAOS_ARGS ?=
chaos: venv data
	$(PY) -m jobs.chaos $(CHAOS_ARGS)

# The suite on both cores (pytest-xdist: one file per worker at a time), then its 15 slowest
# tests. TEST_ARGS="tests/test_report.py -x" picks tests; TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
TEST_ARGS ?=
test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(TEST_ARGS)

# Regenerate the JSON Schema of the rank files (hpml_core/contract/schemas/) after changing
# hpml_core/contract/rank_file.py.
schema: venv
	$(PY) -m hpml_core.contract.rank_file

# A real Slurm on this machine (root, Debian): NODES=2 make slurm-up emulates two nodes;
# then make submit-all SITE=local-slurm.
slurm-up:
	jobs/local-slurm up

slurm-down:
	jobs/local-slurm down
