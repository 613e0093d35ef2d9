# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install, run the whole pipeline on the embedded data, build the report
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build; pip finds it on the machine's disk where it lies there.
TORCH ?= torch==2.13.0
CONFIG ?= config/config.yaml

.PHONY: demo test install report clean

$(BIN)/seqvit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/seqvit

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile profiles/local --configfile $(CONFIG)
	$(MAKE) --no-print-directory report

report: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile profiles/local --configfile $(CONFIG) --report results/report.html
	@echo "Report: $(CURDIR)/results/report.html"

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

clean:
	rm -rf results/raw results/regridded results/stats results/tokens results/train \
	       results/predictions results/eval results/logs results/benchmarks results/report.html .snakemake
