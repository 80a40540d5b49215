# bench-peers: flask_queue side by side with Procrastinate and RQ on PostgreSQL
# (bench/peers.py). Meant to be included from the Makefile (`include bench/peers.mk`)
# or run alone from the repository root: `make -f bench/peers.mk bench-peers`.
#
# The peers live in a virtualenv of their own, .bench-venv, installed from
# bench/peers-requirements.txt on first use: they never become dependencies of
# flask_queue or enter .venv. Needs PostgreSQL on 127.0.0.1:5432 (user postgres,
# trust) and Redis on 127.0.0.1:6379.
#
#   make bench-peers                              # N=5000, 3 rounds
#   make bench-peers BENCH_PEERS_ARGS='--jobs 2000 --rounds 5'
#   make bench-peers-smoke                        # 40 jobs, 1 round: does it all run?

PYTHON ?= python3
BENCH_VENV ?= .bench-venv
BENCH_BIN := $(BENCH_VENV)/bin
BENCH_PEERS_ARGS ?=

.PHONY: bench-peers bench-peers-smoke

$(BENCH_BIN)/.installed: setup.cfg pyproject.toml bench/peers-requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/python -m pip install --quiet --upgrade pip
	$(BENCH_BIN)/python -m pip install --quiet -e . -r bench/peers-requirements.txt
	touch $@

bench-peers: $(BENCH_BIN)/.installed
	$(BENCH_BIN)/python -m bench.peers $(BENCH_PEERS_ARGS)

bench-peers-smoke: $(BENCH_BIN)/.installed
	$(BENCH_BIN)/python -m bench.peers --smoke $(BENCH_PEERS_ARGS)
