#!/usr/bin/env bash
# Runs the whole fieldlink test suite. Where PostgreSQL's server binaries are installed
# (Debian package `postgresql`), a private PostgreSQL instance is started on 127.0.0.1 for
# the store tests and stopped afterwards; without them those tests say they were skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "${FIELDLINK_TEST_PG_URL:-}" ] && [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ]; then
  pg_dir=$(mktemp -d /tmp/fieldlink-pg.XXXXXX)
  pg_port=${FIELDLINK_TEST_PG_PORT:-55432}
  run_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
  [ "$(id -u)" = 0 ] && chown postgres "$pg_dir"
  echo "== starting PostgreSQL ($pg_bin) on 127.0.0.1:$pg_port"
  run_pg "'$pg_bin/initdb' -D '$pg_dir/data' -A trust -U postgres" >/dev/null
  run_pg "'$pg_bin/pg_ctl' -D '$pg_dir/data' -l '$pg_dir/log' -w -o \"-c listen_addresses=127.0.0.1 -p $pg_port -k '$pg_dir'\" start" >/dev/null
  trap 'run_pg "\"$pg_bin/pg_ctl\" -D \"$pg_dir/data\" -m fast stop" >/dev/null 2>&1 || true; rm -rf "$pg_dir"' EXIT
  "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE DATABASE fieldlink_test" >/dev/null
  export FIELDLINK_TEST_PG_URL="postgres://postgres@127.0.0.1:$pg_port/fieldlink_test"
fi

if [ ! -d tests/browser/node_modules ] && command -v npm >/dev/null; then
  echo "== installing the browser test driver (playwright-core)"
  npm ci --prefix tests/browser --no-audit --no-fund
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== cargo-nextest not found: installing it"
  cargo install cargo-nextest --locked
fi
cargo nextest run --workspace --no-fail-fast "$@"
