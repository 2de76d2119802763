# Two commands do everything on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; users with a GPU install their own CUDA build first (TORCH_SPEC=torch).
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test setup bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# MovieLens 100K offline: the recbole wheel is only a data carrier (never imported).
	$(BIN)/python -m pip install -q --no-deps recbole==1.2.1
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/python -m pipeline.search

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
