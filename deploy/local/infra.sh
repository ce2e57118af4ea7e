#!/usr/bin/env bash
# Starts (or stops) everything the service and its tests need on this machine: one KRaft Kafka broker on
# 127.0.0.1:9092 and PostgreSQL on 127.0.0.1:55432. Idempotent: what already runs is left as it is.
#   infra.sh up | down
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-up}" in
  up)
    "$here/postgres.sh" start
    "$here/kafka.sh" start single "${QLARA_LOCAL_KAFKA_PORT:-9092}" "${QLARA_LOCAL_KAFKA_CONTROLLER_PORT:-9093}"
    ;;
  down)
    "$here/kafka.sh" stop single
    "$here/postgres.sh" stop
    ;;
  *) echo "usage: infra.sh up|down" >&2; exit 2 ;;
esac
