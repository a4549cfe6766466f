# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= $(shell nproc)
SNAKEMAKE := $(BIN)/python -m snakemake

.PHONY: venv demo test test-slurm lint dag bench-cache bench-train bench-dag clean-demo

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

demo: venv  ## run the whole workflow on the built-in synthetic data set (offline)
	$(SNAKEMAKE) --cores $(CORES) --configfile config/demo.yaml

test: venv  ## run the test suite
	$(BIN)/python -m pytest

test-slurm: venv  ## real SLURM: private one-node cluster (root; apt-installs slurm-wlm, munge); local and SLURM results must agree
	PYTHON=$(BIN)/python tests/slurm/run_slurm_test.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check $$(git ls-files '*.py')
	$(SNAKEMAKE) --lint --configfile config/demo.yaml

dag: venv  ## draw the demo DAG (needs graphviz's dot)
	$(SNAKEMAKE) --configfile config/demo.yaml --dag | dot -Tsvg > dag.svg

bench-cache: venv  ## data stage: cache build vs the seed's decode path (prints a Markdown table)
	$(BIN)/python benchmarks/bench_cache.py

bench-train: venv  ## training stage: uint8-cache pipeline vs decode-every-epoch pipeline
	$(BIN)/python benchmarks/bench_train.py

bench-dag: venv  ## snakemake -n at EyePACS scale (35,126 + 53,576 placeholder images)
	$(BIN)/python benchmarks/bench_dag.py

clean-demo:
	rm -rf results resources/demo
