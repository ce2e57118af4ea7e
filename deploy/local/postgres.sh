#!/usr/bin/env bash
# Local PostgreSQL on loopback, data under .local/pg.
#
#   postgres.sh start [PORT]     install the server if missing, init the cluster once, start it, create databases
#   postgres.sh stop [--kill]    stop it (fast shutdown, or SIGKILL of the postmaster with --kill)
#   postgres.sh status
#
# PostgreSQL refuses to run as root: when run as root it runs as the `postgres` system user (created by
# Debian's package). If that user cannot reach .local (a checkout inside a private 0700 directory, as
# `mktemp -d` makes), the cluster lives in /var/lib/qlara-events/<hash of the checkout> and .local/pg links there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
local_dir=${QLARA_LOCAL_DIR:-$root/.local}
port=${2:-${QLARA_PG_PORT:-55432}}
databases=(qlara qlara_test)

log() { printf 'postgres: %s\n' "$*" >&2; }

bin_dir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  command -v pg_ctl >/dev/null && { dirname "$(readlink -f "$(command -v pg_ctl)")"; return 0; }
  return 1
}

ensure_installed() {
  bin_dir >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing PostgreSQL from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    log "PostgreSQL 15+ server binaries not found; install them (e.g. apt-get install postgresql)"; exit 1
  fi
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

data_dir() {
  mkdir -p "$local_dir"
  # Always the real path: the postgres user may not be able to traverse the checkout to follow a link.
  if [ -e "$local_dir/pg" ]; then readlink -f "$local_dir/pg"; return 0; fi
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/false postgres
    if ! runuser -u postgres -- test -x "$local_dir"; then
      local ext=/var/lib/qlara-events/$(printf '%s' "$local_dir" | sha256sum | cut -c1-16)/pg
      mkdir -p "$ext"; chown postgres: "$ext" "$(dirname "$ext")"; chmod 700 "$ext"
      ln -s "$ext" "$local_dir/pg"
      echo "$ext"; return 0
    fi
    mkdir -p "$local_dir/pg"; chown postgres: "$local_dir/pg"; chmod 700 "$local_dir/pg"
  else
    mkdir -p "$local_dir/pg"; chmod 700 "$local_dir/pg"
  fi
  echo "$local_dir/pg"
}

start() {
  ensure_installed
  local bin; bin=$(bin_dir)
  local data; data=$(data_dir)
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising a cluster in $data"
    as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$data/postgresql.conf" <<CONF
# qlara-events local settings
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
CONF
  fi
  if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "already running on 127.0.0.1:$port"
  else
    log "starting on 127.0.0.1:$port (log: $data/server.log)"
    as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -o "-p $port" -w -t 60 start >/dev/null
  fi
  for db in "${databases[@]}"; do
    if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "select 1 from pg_database where datname='$db'" | grep -q 1; then
      "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "create database $db" >/dev/null
    fi
  done
}

stop() {
  local bin; bin=$(bin_dir) || return 0
  [ -e "$local_dir/pg/PG_VERSION" ] || return 0
  local data; data=$(readlink -f "$local_dir/pg")
  if [ "${1:-}" = "--kill" ]; then
    local pid; pid=$(head -1 "$data/postmaster.pid" 2>/dev/null) || return 0
    kill -9 "$pid" 2>/dev/null || true
    log "killed"
    return 0
  fi
  as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 && log "stopped" || true
}

cmd=${1:-}
case "$cmd" in
  start) start ;;
  stop) stop "${2:-}" ;;
  status) bin=$(bin_dir) && as_owner "$bin/pg_ctl" -D "$(readlink -f "$local_dir/pg")" status >/dev/null ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
