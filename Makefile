# Two entry points: `make demo` (set up + run the main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench-local clean

$(BIN)/ecd-chem: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=23"
	$(BIN)/pip install -q torch==2.13.0   # first, pinned: the CPU wheel, not the CUDA stack
	$(BIN)/pip install -q -e ".[test,smiles]"
	$(BIN)/ecd-chem fetch-models   # ANI-1ccx's network files, once (torchani 2.2.4 ships them empty)
	touch $@

setup: $(BIN)/ecd-chem

demo: setup
	$(BIN)/python examples/optimize_ethanol.py demo-output
	$(BIN)/python examples/search_butane.py demo-output

test: setup
	ECD_TEST_ANI1CCX=1 $(BIN)/python -m pytest -q -p no:cacheprovider

bench-local: setup
	$(BIN)/python benchmarks/local.py

clean:
	rm -rf $(VENV) demo-output
