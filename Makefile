# streamscore: `make demo` runs the whole loop, `make test` runs every test (real Kafka included).
# Everything installs itself on first use: a venv in .venv, the Kafka jars in .cache/ (Maven).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install test test-unit demo broker broker-stop bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP) ## create .venv and install streamscore with its pinned dependencies

test: $(STAMP) ## all tests: unit + integration against a real local Kafka broker
	$(BIN)/pytest

test-unit: $(STAMP) ## unit tests only (no broker)
	$(BIN)/pytest -m "not integration"

demo: $(STAMP) ## broker, history, train, live scoring, summary; leaves nothing running
	$(BIN)/streamscore demo

broker: $(STAMP) ## start the local broker (first start fetches Kafka from Maven Central)
	$(BIN)/streamscore broker start

broker-stop: $(STAMP)
	$(BIN)/streamscore broker stop

bench: $(STAMP) ## all benchmarks, ~10 min on 2 cores (prints figures, writes benchmarks/results/*.json)
	$(BIN)/python -m benchmarks.bench_features --json benchmarks/results/features.json
	$(BIN)/python -m benchmarks.bench_scoring --json benchmarks/results/scoring.json
	$(BIN)/python -m benchmarks.bench_state --json benchmarks/results/state.json
	$(BIN)/python -m benchmarks.bench_drift --json benchmarks/results/drift.json

clean:
	-$(BIN)/streamscore broker stop 2>/dev/null
	rm -rf .streamscore .pytest_cache build *.egg-info
