# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install, run the whole pipeline on the embedded data, build the report
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build; pip finds it on the machine's disk where it lies there.
TORCH ?= torch==2.13.0
CONFIG ?= config/config.yaml

.PHONY: demo test lint install report clean cdo slurm frontier-profile

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

# Each experiment writes under its own folder (results/<experiment> unless the config sets results).
report: install
	@results="$$($(BIN)/seqvit paths --config $(CONFIG) --results)" && \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile profiles/local --configfile $(CONFIG) --report "$$results/report.html" && \
	echo "Report: $$(cd "$$results" && pwd)/report.html"

# tests/test_regrid_cdo.py compares regridding with CDO: install the Debian package cdo when it
# is missing (as root, with apt-get); otherwise say how, and those tests fail with the same advice.
cdo:
	@if command -v cdo >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing the Debian package cdo for the CDO comparison tests (tests/test_regrid_cdo.py)"; \
	  { apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cdo >/dev/null; } || \
	  echo "NOTE: apt-get could not install cdo; tests/test_regrid_cdo.py will fail until cdo is installed."; \
	else \
	  echo "NOTE: the CDO comparison tests (tests/test_regrid_cdo.py) need the command cdo, which is not installed,"; \
	  echo "      and this is not root with apt-get. Install it: sudo apt-get install cdo (Debian/Ubuntu),"; \
	  echo "      or conda install -c conda-forge cdo; or run with SEQVIT_SKIP_CDO=1 to skip those tests on purpose."; \
	fi

# tests/test_slurm.py runs the workflow through the Slurm executor on a one-node cluster on this
# machine (installed with apt-get and started as root; kept running if already up).
slurm:
	bash tests/cluster/start-slurm.sh

lint: install
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: install lint cdo slurm
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

# Snakemake finds a bare profile name in ./ or ~/.config/snakemake, not in profiles/: link it
# there so that `snakemake --profile frontier` works from this folder.
# A link already there is replaced; a real folder or file is refused, since ln -sfn would put the
# link inside that folder and `--profile frontier` would keep using the old profile.
frontier-profile:
	@link="$(HOME)/.config/snakemake/frontier"; target="$(CURDIR)/profiles/frontier"; \
	mkdir -p "$(HOME)/.config/snakemake" || exit 1; \
	if [ -e "$$link" ] && [ ! -L "$$link" ]; then \
	  echo "make frontier-profile: $$link is a $$( [ -d "$$link" ] && echo folder || echo file ), not a link;" \
	    "nothing was linked, and snakemake --profile frontier would not use $$target." >&2; \
	  echo "  Move it away (mv \"$$link\" \"$$link.old\") or remove it, then run make frontier-profile again." >&2; \
	  exit 1; \
	fi; \
	ln -sfn "$$target" "$$link" && [ "$$(readlink "$$link")" = "$$target" ] || \
	  { echo "make frontier-profile: could not link $$link -> $$target" >&2; exit 1; }; \
	echo "linked $$link -> $$target"

# Removes the results of $(CONFIG) (results/demo for the demo) and Snakemake's records.
clean: install
	rm -rf "$$($(BIN)/seqvit paths --config $(CONFIG) --results)" .snakemake
