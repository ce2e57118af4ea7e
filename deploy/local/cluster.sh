#!/usr/bin/env bash
# A local three-broker Apache Kafka cluster in KRaft mode (every node is broker and controller), built on
# kafka.sh: replication factor 3 for internal topics, min.insync.replicas=2, data in .local/kafka/NAME-N.
#
#   cluster.sh up [--fresh]      start the three nodes together (a quorum needs two of them), wait until all listen;
#                                --fresh first deletes the nodes' data (only when none of them runs)
#   cluster.sh down              stop every node (SIGKILL: nothing to flush for a throwaway cluster)
#   cluster.sh kill N            kill -9 node N (1..3) and wait until it is gone
#   cluster.sh start N           start node N again with its data, wait until it listens
#   cluster.sh bootstrap         print the bootstrap servers (host:port,host:port,host:port)
#   cluster.sh status            exit 0 when all three nodes run
#
# Environment: QLARA_CLUSTER_NAME (node names NAME-1..3, default chaos), QLARA_CLUSTER_BASE_PORT (default 19192):
# node N listens on BASE+2(N-1) and its controller on BASE+2(N-1)+1, so the defaults are brokers
# 19192/19194/19196 and controllers 19193/19195/19197. QLARA_KAFKA_HEAP sets each node's heap (kafka.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
local_dir=${QLARA_LOCAL_DIR:-$root/.local}
name=${QLARA_CLUSTER_NAME:-chaos}
base=${QLARA_CLUSTER_BASE_PORT:-19192}
nodes=(1 2 3)

log() { printf 'cluster %s: %s\n' "$name" "$*" >&2; }

port_of() { echo $((base + 2 * ($1 - 1))); }
ctrl_of() { echo $((base + 2 * ($1 - 1) + 1)); }

voters() {
  local v="" n
  for n in "${nodes[@]}"; do v+="${v:+,}$n@127.0.0.1:$(ctrl_of "$n")"; done
  echo "$v"
}

bootstrap() {
  local b="" n
  for n in "${nodes[@]}"; do b+="${b:+,}127.0.0.1:$(port_of "$n")"; done
  echo "$b"
}

check_node() { [[ "${1:-}" =~ ^[123]$ ]] || { log "node must be 1, 2 or 3"; exit 2; }; }

start_node() { "$here/kafka.sh" start "$name-$1" "$(port_of "$1")" "$(ctrl_of "$1")" "$1" "$(voters)" 3; }

up() {
  local n
  if [ "${1:-}" = "--fresh" ]; then
    for n in "${nodes[@]}"; do
      if "$here/kafka.sh" status "$name-$n"; then log "$name-$n runs; not deleting its data"; exit 1; fi
    done
    for n in "${nodes[@]}"; do rm -rf "${local_dir:?}/kafka/$name-$n"; done
  fi
  "$here/kafka.sh" fetch
  # kafka.sh formats a new node with the id in this file and creates it when missing; create it here first
  # so the three nodes started in parallel cannot each write a different one.
  local id_file=$local_dir/kafka/cluster-id-3
  [ -s "$id_file" ] || java -cp "$local_dir/kafka/libs/*" -Dlog4j.configuration="file:$here/log4j.properties" \
    kafka.tools.StorageTool random-uuid > "$id_file"
  # Each node waits for its own listener, which opens only once the controller quorum (two of three)
  # formed: start them in parallel, then collect every exit status.
  local pids=() failed=0
  for n in "${nodes[@]}"; do start_node "$n" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || { log "a node did not start; see .local/kafka/$name-N/server.log"; exit 1; }
  log "up: $(bootstrap)"
}

down() {
  local n
  for n in "${nodes[@]}"; do "$here/kafka.sh" stop "$name-$n" --kill; done
}

cmd=${1:-}; shift || true
case "$cmd" in
  up) up "$@" ;;
  down) down ;;
  kill) check_node "${1:-}"; "$here/kafka.sh" stop "$name-$1" --kill ;;
  start) check_node "${1:-}"; start_node "$1" ;;
  bootstrap) bootstrap ;;
  status) for n in "${nodes[@]}"; do "$here/kafka.sh" status "$name-$n" || exit 1; done ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
