# The two commands: `make demo` runs the example app, `make test` runs the tests.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-parallel lint screenshots bench bench-dashboard bench-smoke bench-steps chaos clean package-smoke bench-floor bench-profile bench-memory

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/flask --app example_app run --debug

# PYTHONNODEBUGRANGES: CPython 3.11's traceback module ast.parse()s source lines to
# draw ^^^ under errors, and its AST converter keeps a recursion counter shared by
# all threads (fixed in 3.12): a traceback logged on one thread while Werkzeug
# compiles URL rules on another raises "SystemError: AST constructor recursion depth
# mismatch". The outage tests log driver tracebacks from worker threads while the
# next test builds its app; without column ranges there is nothing to parse.
export PYTHONNODEBUGRANGES := 1

test: $(BIN)/.installed
	$(BIN)/pytest

# The suite on three pytest-xdist workers (~6 min here instead of ~15). Not what CI
# runs yet: the heartbeat, chaos and multihost tests have been seen clean under it
# in only two runs on this 2-core machine.
test-parallel: $(BIN)/.installed
	$(BIN)/pytest -n 3

lint: $(BIN)/.installed
	$(BIN)/ruff check flask_queue tests example_app bench .ci
	$(BIN)/ruff format --check flask_queue tests example_app bench .ci
	$(BIN)/mypy

# The raw at-least-once drain beside `flask queue work` on the same table (issue 22).
bench-floor: $(BIN)/.installed
	$(BIN)/python -m bench.floor --jobs 20000 --db postgresql --db mysql --db sqlite --rounds 3

# A worker's RSS after 10,000 and after 1,000,000 drained jobs (issue 22, item 4).
bench-memory: $(BIN)/.installed
	$(BIN)/python -m bench.memory --jobs 1000000 --db postgresql

# Where a draining worker's CPU goes (py-spy on the GIL holder): bench/profile-postgresql.txt.
bench-profile: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet py-spy
	$(BIN)/python -m bench.profile_drain --jobs 20000 --db postgresql --out bench/profile-postgresql.txt

# Build the sdist and wheel, install the wheel with its dependencies in a fresh
# virtualenv, and serve the example app from it (README, "Install"; CI runs it).
package-smoke: $(BIN)/.installed
	$(BIN)/python .ci/package_smoke.py

# Refresh the README's dashboard screenshots in docs/ (the browser tests).
screenshots: $(BIN)/.installed
	QUEUE_UPDATE_SCREENSHOTS=1 $(BIN)/pytest -q -p no:cacheprovider tests/test_browser.py

bench: $(BIN)/.installed
	$(BIN)/python -m bench.run_path

# What a replay of a 10-step job costs beside a no-op job (README, "Durable steps").
bench-steps: $(BIN)/.installed
	$(BIN)/python -m bench.steps --db sqlite --db postgresql --db mysql --jobs 200

# The long chaos run (10,000 jobs, 20 worker kills, 2 database cuts) on PostgreSQL and
# MariaDB; the suite runs a 300-job variant. Figures go in the README.
chaos: $(BIN)/.installed
	QUEUE_TEST_POSTGRES_URL=$${QUEUE_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} \
	QUEUE_TEST_MYSQL_URL=$${QUEUE_TEST_MYSQL_URL:-mysql+pymysql://root@127.0.0.1:3306/test} \
	CHAOS_JOBS=10000 CHAOS_KILLS=20 CHAOS_SLEEP=0.01 CHAOS_DEADLINE=3000 \
	$(BIN)/pytest -s -p no:cacheprovider -o timeout=3600 tests/test_chaos.py

# Peers (Procrastinate, RQ) side by side, in a virtualenv of their own: bench/peers.mk.
include bench/peers.mk

# Many app hosts on one database (network namespaces; root): scaling figures.
include bench/scale.mk

# The benchmarks with tiny N: do they all still run? (CI runs this after the tests.)
bench-smoke: $(BIN)/.installed $(BENCH_BIN)/.installed
	$(BIN)/python -m bench.drain --jobs 50 --db sqlite --db postgresql --db mysql
	$(BIN)/python -m bench.wakeup --jobs 2 --interval 0.2
	$(BIN)/python -m bench.floor --jobs 300 --db sqlite --db postgresql --db mysql --rounds 1
	$(BIN)/python -m bench.memory --jobs 10500 --db sqlite
	$(BIN)/python -m bench.backlog --db sqlite --db postgresql --db mysql --sizes 600,1000
	$(BIN)/python -m bench.keys --db sqlite --db postgresql --db mysql --jobs 3000 --keys 1000 --claims 3 --rounds 1 --head 300
	$(BIN)/python -m bench.dashboard --smoke --db sqlite,postgresql,mysql
	$(BIN)/python -m bench.steps --db sqlite --db postgresql --db mysql --jobs 5
	$(BENCH_BIN)/python -m bench.peers --smoke

clean:
	rm -rf $(VENV) $(BENCH_VENV) build dist *.egg-info instance
