#!/usr/bin/env bash
# Local Apache Kafka in KRaft mode, from the broker jars Maven resolves from Maven Central.
#
#   kafka.sh fetch                         resolve the jars into .local/kafka/libs (cached)
#   kafka.sh start NAME PORT CTRL_PORT [NODE_ID VOTERS RF]
#                                          start node NAME (data in .local/kafka/NAME) and wait until it listens
#   kafka.sh stop NAME [--kill]            stop it (SIGTERM, or SIGKILL with --kill) and wait until it is gone
#   kafka.sh status NAME                   exit 0 when it runs
#
# VOTERS is the KRaft quorum ("1@127.0.0.1:9093,..."); RF the replication factor of internal topics.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
local_dir=${QLARA_LOCAL_DIR:-$root/.local}
libs=$local_dir/kafka/libs

log() { printf 'kafka: %s\n' "$*" >&2; }

fetch() {
  if [ -f "$libs/.complete" ] && cmp -s "$here/pom.xml" "$libs/.pom"; then return 0; fi
  command -v mvn >/dev/null || { log "Maven (mvn) is required to resolve Kafka's jars"; exit 1; }
  command -v java >/dev/null || { log "Java 17+ is required to run Kafka"; exit 1; }
  log "resolving broker jars from Maven Central (first run only)"
  rm -rf "$libs"; mkdir -p "$libs"
  mvn -B -q -Dstyle.color=never -f "$here/pom.xml" -Dmaven.repo.local="$local_dir/m2" \
      dependency:copy-dependencies -DoutputDirectory="$libs" -DincludeScope=runtime
  cp "$here/pom.xml" "$libs/.pom"; touch "$libs/.complete"
}

pid_of() { local f=$local_dir/kafka/$1/pid; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }

wait_port() { # host port seconds
  local deadline=$((SECONDS + $3))
  while ! (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

start() {
  local name=$1 port=$2 ctrl=$3 node=${4:-1} voters=${5:-} rf=${6:-1}
  [ -n "$voters" ] || voters="$node@127.0.0.1:$ctrl"
  local dir=$local_dir/kafka/$name
  if pid=$(pid_of "$name"); then log "$name already running (pid $pid) on 127.0.0.1:$port"; return 0; fi
  fetch
  mkdir -p "$dir/data"
  local min_isr=1; [ "$rf" -ge 3 ] && min_isr=2
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=6
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
PROPS
  local cp="$libs/*"
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id_file=$local_dir/kafka/cluster-id-$rf
    [ -f "$cluster_id_file" ] || java -cp "$cp" -Dlog4j.configuration="file:$here/log4j.properties" kafka.tools.StorageTool random-uuid > "$cluster_id_file"
    java -cp "$cp" -Dlog4j.configuration="file:$here/log4j.properties" kafka.tools.StorageTool format \
      -t "$(cat "$cluster_id_file")" -c "$dir/server.properties" --ignore-formatted >/dev/null
  fi
  log "starting $name on 127.0.0.1:$port (logs: $dir/server.log)"
  # setsid: the broker outlives this script and is not killed by a Ctrl-C meant for `make run`.
  setsid java -Xms256m -Xmx${QLARA_KAFKA_HEAP:-768m} -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$here/log4j.properties" -cp "$cp" kafka.Kafka "$dir/server.properties" \
    >"$dir/server.log" 2>&1 </dev/null &
  echo $! > "$dir/pid"
  if ! wait_port 127.0.0.1 "$port" 90; then
    log "$name did not start listening on $port within 90 s; last log lines:"; tail -20 "$dir/server.log" >&2
    exit 1
  fi
}

stop() {
  local name=$1 sig=TERM; [ "${2:-}" = "--kill" ] && sig=KILL
  local pid; pid=$(pid_of "$name") || { rm -f "$local_dir/kafka/$name/pid"; return 0; }
  kill -s "$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$local_dir/kafka/$name/pid"
  log "$name stopped"
}

cmd=${1:-}; shift || true
case "$cmd" in
  fetch) fetch ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  status) pid_of "$1" >/dev/null ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
