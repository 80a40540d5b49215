#!/usr/bin/env bash
# Start PgBouncer in transaction mode on 127.0.0.1:6432 in front of the local
# PostgreSQL (database "test", trust auth), as Supabase's and Neon's pooled URLs
# are: the pooler tests (tests/test_pooler.py) run through it. It refuses to run
# as root, so it runs as "postgres". Prints the URL to export as
# QUEUE_TEST_PGBOUNCER_URL.
set -euo pipefail
if ! command -v pgbouncer >/dev/null 2>&1; then
  echo "ci: installing pgbouncer" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
fi
dir=/tmp/flask_queue_pgbouncer
url="postgresql+psycopg://postgres@127.0.0.1:6432/test"
if pg_isready -h 127.0.0.1 -p 6432 >/dev/null 2>&1; then
  echo "$url"; exit 0
fi
mkdir -p "$dir"
cat > "$dir/pgbouncer.ini" <<INI
[databases]
test = host=127.0.0.1 port=5432 dbname=test
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6432
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
ignore_startup_parameters = extra_float_digits,options
INI
echo '"postgres" ""' > "$dir/userlist.txt"
chown -R postgres "$dir"
if [ "$(id -u)" = 0 ]; then
  su postgres -s /bin/sh -c "pgbouncer -d $dir/pgbouncer.ini"
else
  pgbouncer -d "$dir/pgbouncer.ini"
fi
for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 6432 >/dev/null 2>&1 && break; sleep 0.5; done
pg_isready -h 127.0.0.1 -p 6432 >/dev/null
echo "$url"
