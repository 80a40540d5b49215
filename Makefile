# The two commands: `make demo` runs the example app, `make test` runs the tests.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-dashboard clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/flask --app example_app run --debug

test: $(BIN)/.installed
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check flask_queue tests example_app bench
	$(BIN)/ruff format --check flask_queue tests example_app bench
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python -m bench.run_path

clean:
	rm -rf $(VENV) build dist *.egg-info instance
