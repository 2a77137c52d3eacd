# Two entry points (see README.md):  make demo  |  make test
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dermkit-installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# The main job: fine-tune ImageNet EfficientNet-Lite0 on HAM10000, select on val, report on test.
demo: $(STAMP)
	$(BIN)/dermkit benchmark

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) runs .pytest_cache
