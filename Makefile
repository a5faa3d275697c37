# Two entry points that work on a fresh machine; each makes the venv it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint venv clean

$(BIN)/emodis: pyproject.toml  # -qq: errors only (a failed install still says why)
	@echo "setting up $(VENV) from pyproject.toml (first run only, a few minutes)"
	@$(PY) -m venv $(VENV)
	@$(BIN)/pip install -qq --upgrade pip
	@$(BIN)/pip install -qq -e '.[dev]'
	@touch $(BIN)/emodis

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
