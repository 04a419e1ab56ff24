# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := runs/demo
# Pinned so the set-up path takes the local CPU wheel; pyproject declares a range for everyone else.
TORCH := torch==2.13.0

.PHONY: demo test lint format clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[train,export,tflite,dev]" $(TORCH)
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m tinyseg.tools.demo --out $(DEMO)

test: $(BIN)/.installed
	$(BIN)/python -m pytest tests

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs build *.egg-info
