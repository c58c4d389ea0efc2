# streamscore: `make demo` runs the whole loop, `make test` runs every test (real Kafka included).
# Everything installs itself on first use: a venv in .venv, the Kafka jars in .cache/ (Maven).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install test test-unit demo broker broker-stop bench bench-full bench-stages bench-peers clean

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

BENCH_STAMP := $(VENV)/.bench-$(shell cksum pyproject.toml | cut -d' ' -f1)
QUIX_STAMP  := .venv-quix/.installed-$(shell cksum benchmarks/peers/quix-requirements.txt | cut -d' ' -f1)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@rm -f $(VENV)/.bench-*; touch $@

$(QUIX_STAMP): benchmarks/peers/quix-requirements.txt
	$(PYTHON) -m venv .venv-quix
	.venv-quix/bin/pip install --quiet -r benchmarks/peers/quix-requirements.txt
	@rm -f .venv-quix/.installed-*; touch $@

bench-peers: $(BENCH_STAMP) $(QUIX_STAMP) ## the benchmark's extras and the Quix Streams peer's own venv

bench: bench-peers ## end-to-end quick profile vs Faust and Quix Streams (~5 min on 2 cores) -> benchmarks/results/e2e/
	$(BIN)/python -m benchmarks.bench_e2e

bench-full: bench-peers ## every end-to-end scenario (1-2 processes, 10-90 % sweep, state size, restore); long
	$(BIN)/python -m benchmarks.bench_e2e --full

bench-stages: $(STAMP) ## the stage benchmarks (features, scoring, state, drift monitors), ~10 min (writes benchmarks/results/*.json)
	$(BIN)/python -m benchmarks.bench_features --json benchmarks/results/features.json
	$(BIN)/python -m benchmarks.bench_scoring --json benchmarks/results/scoring.json
	$(BIN)/python -m benchmarks.bench_state --json benchmarks/results/state.json
	$(BIN)/python -m benchmarks.bench_drift --json benchmarks/results/drift.json

clean:
	-$(BIN)/streamscore broker stop 2>/dev/null
	rm -rf .streamscore .pytest_cache build *.egg-info .venv-quix
