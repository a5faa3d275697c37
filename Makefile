# Two entry points that work on a fresh machine; each makes the venv it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint venv clean

$(BIN)/emodis: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/emodis

venv: $(BIN)/emodis

demo: venv  ## synthetic data -> manifest -> ... end to end, on a local Ray cluster the program starts
	$(BIN)/emodis demo --out demo

test: venv  ## lint, then the whole suite (Ray integration tests included)
	$(BIN)/ruff check emodis_ray tests
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check emodis_ray tests

clean:
	rm -rf demo .pytest_cache .ruff_cache
