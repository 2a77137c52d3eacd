# Two entry points (see README.md):  make demo  |  make test
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dermkit-installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# The main job: fine-tune ImageNet EfficientNet-Lite0 on HAM10000, select on val, report on test.
# Data: $DERMKIT_DATA if set, else ../shared/data, else HAM10000 fetched from Harvard Dataverse
# (checksums verified, licence asked for; FETCH_FLAGS=--accept-licence when not on a terminal)
# into $(DATA_CACHE)/ham10000. It says which one it used.
DATA_CACHE  ?= $(or $(DERMKIT_CACHE),$(HOME)/.cache/dermkit)/data
FETCH_FLAGS ?=
demo: $(STAMP)
	@if [ -n "$$DERMKIT_DATA" ]; then \
	  data="$$DERMKIT_DATA"; echo "demo: data from DERMKIT_DATA=$$data"; \
	elif [ -f ../shared/data/ham10000/metadata.csv ]; then \
	  data="$$(cd ../shared/data && pwd)"; echo "demo: data from ../shared/data ($$data)"; \
	else \
	  data="$(DATA_CACHE)"; \
	  if [ -f "$$data/ham10000/metadata.csv" ]; then echo "demo: data from $$data (HAM10000 fetched earlier)"; \
	  else echo "demo: no DERMKIT_DATA and no ../shared/data: fetching HAM10000 into $$data/ham10000"; \
	    $(BIN)/dermkit data fetch ham10000 --out "$$data/ham10000" $(FETCH_FLAGS) || exit $$?; fi; \
	fi; \
	DERMKIT_DATA="$$data" $(BIN)/dermkit benchmark

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# Lint (ruff, configured in pyproject.toml) and the architecture contracts (import-linter).
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
