# scale: jobs/s drained by 1, 2, 4 app hosts (network namespaces, gunicorn + a
# producer pinging /produce, http executor) and by 1, 4, 16 `flask queue work`
# processes on one database, with the per-job database cost (bench/scale.py).
# Meant to be included from the Makefile (`include bench/scale.mk`) or run alone from
# the repository root: `make -f bench/scale.mk scale`.
#
# Needs root (ip netns) and PostgreSQL and MariaDB on 127.0.0.1 (the URLs below, or
# QUEUE_TEST_POSTGRES_URL / QUEUE_TEST_MYSQL_URL). The short multi-host test that CI
# runs is tests/test_multihost.py.
#
#   make scale                                        # both databases, default sizes
#   make scale SCALE_ARGS='--db postgresql --host-jobs 1000 --worker-jobs 5000'

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SCALE_ARGS ?= --db postgresql --db mysql

.PHONY: scale

scale: $(BIN)/.installed
	QUEUE_TEST_POSTGRES_URL=$${QUEUE_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} \
	QUEUE_TEST_MYSQL_URL=$${QUEUE_TEST_MYSQL_URL:-mysql+pymysql://root@127.0.0.1:3306/test} \
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

# The multi-host test itself at ten times its CI size (3,000 jobs, three hosts, one
# killed and brought back), on PostgreSQL and MariaDB.
.PHONY: multihost
multihost: $(BIN)/.installed
	QUEUE_TEST_POSTGRES_URL=$${QUEUE_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} \
	QUEUE_TEST_MYSQL_URL=$${QUEUE_TEST_MYSQL_URL:-mysql+pymysql://root@127.0.0.1:3306/test} \
	MULTIHOST_JOBS=3000 MULTIHOST_DEADLINE=900 \
	$(BIN)/pytest -s -p no:cacheprovider -o timeout=1800 tests/test_multihost.py
