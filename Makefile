# hpml: see README.md. Every target sets up (or refreshes) the project's venv by itself.

PYTHON ?= python3
VENV ?= .venv
SHARED ?= ../shared
PY := $(VENV)/bin/python
HPML := $(VENV)/bin/hpml
DEMO_DATA := results/data/wikitext-2
DEMO_FLAGS := --test --data $(DEMO_DATA) --precision bf16 --steps 40 --warmup-steps 5

.PHONY: venv data demo test schema

# torch==2.13.0 goes in first: on a machine without a GPU it is the CPU build on this disk, and
# everything installed after it (deepspeed, transformers) is satisfied by it.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Real English text for the demo: WikiText-2 from ../shared, with a BPE tokenizer trained on it
# (nothing is downloaded). On a cluster, prepare WikiText-103 instead (README, "Data").
data: $(DEMO_DATA)/meta.json
$(DEMO_DATA)/meta.json: | venv
	@test -f $(SHARED)/data/wikitext-2/valid.txt || { echo "make data: no $(SHARED)/data/wikitext-2/valid.txt; set SHARED=... or see README, Data" >&2; exit 2; }
	$(HPML) data prepare --files $(SHARED)/data/wikitext-2/valid.txt --tokenizer train --vocab-size 4096 --out $(DEMO_DATA)

# The tiny GPT-2 trained alone and with DDP on two CPU ranks (gloo), one rank file per process.
demo: venv data
	$(HPML) train $(DEMO_FLAGS) --batch-size 8 --out results/demo/single
	$(VENV)/bin/torchrun --standalone --nproc_per_node=2 -m hpml_core.train $(DEMO_FLAGS) --mode baseline --batch-size 4 --out results/demo/ddp-2
	@echo "demo results: results/demo/single/rank-0.json, results/demo/ddp-2/rank-{0,1}.json"

test: venv
	$(PY) -m pytest -q

# Regenerate the JSON Schema of the rank files after changing hpml_core/rank_file.py.
schema: venv
	$(PY) -m hpml_core.rank_file
