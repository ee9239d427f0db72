#!/usr/bin/env bash
# Starts throw-away servers for the tests that need real ones, and prints `export` lines for
# their URLs:
#   - PostgreSQL 15 (Debian `postgresql`): initdb + pg_ctl on 127.0.0.1, data under a temp dir;
#   - an S3-compatible server: moto_server (PyPI `moto[server]`, in a venv under target/).
# Usage:  eval "$(bash scripts/services.sh start)"  ...  bash scripts/services.sh stop
# State (temp dir, pids) is kept in target/services.env so `stop` finds it.
set -euo pipefail
cd "$(dirname "$0")/.."
state=target/services.env
mkdir -p target

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {
  [ -f "$state" ] && stop >/dev/null 2>&1 || true
  local dir pg_port s3_port pgbin
  dir=$(mktemp -d /tmp/shoal-services.XXXXXX)
  chmod 755 "$dir"
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$pgbin" ] || { echo "PostgreSQL is not installed (bash scripts/install-deps.sh)" >&2; exit 1; }
  pg_port=$(free_port)
  mkdir -p "$dir/pg"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$dir/pg"
    as_pg=(runuser -u postgres --)
  else
    as_pg=()
  fi
  "${as_pg[@]}" "$pgbin/initdb" -D "$dir/pg/data" -U postgres -A trust >"$dir/initdb.log" 2>&1
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log" \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $dir/pg -c fsync=off" -w start >/dev/null

  if [ ! -x target/moto-venv/bin/moto_server ]; then
    python3 -m venv target/moto-venv >&2
    target/moto-venv/bin/pip install -q 'moto[server]' >&2
  fi
  s3_port=$(free_port)
  target/moto-venv/bin/moto_server -H 127.0.0.1 -p "$s3_port" >"$dir/moto.log" 2>&1 &
  local moto_pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$s3_port/" && break
    sleep 0.1
  done
  cat >"$state" <<EOT
SERVICES_DIR=$dir
PG_BIN=$pgbin
MOTO_PID=$moto_pid
EOT
  cat <<EOT
export SHOAL_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$pg_port/postgres
export SHOAL_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
EOT
}

stop() {
  [ -f "$state" ] || return 0
  # shellcheck disable=SC1090
  . "$state"
  kill "$MOTO_PID" 2>/dev/null || true
  if [ "$(id -u)" -eq 0 ]; then as_pg=(runuser -u postgres --); else as_pg=(); fi
  "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$SERVICES_DIR/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$SERVICES_DIR" "$state"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
