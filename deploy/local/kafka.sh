#!/usr/bin/env bash
# Local single-node Kafka (KRaft, broker+controller) for development and tests.
#
#   deploy/local/kafka.sh start|stop|status
#
# If KAFKA_BOOTSTRAP_SERVERS is set, that broker is used and nothing is started.
# Otherwise the broker jars are resolved once with Maven into
# ${ENRICH_CACHE_DIR:-~/.cache/enrich}/kafka/<version>/lib and the broker runs
# from ${ENRICH_RUN_DIR:-<repo>/.run}/kafka (config, data, kafka.log, kafka.pid).
# Knobs: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_HEAP_OPTS, and
# KAFKA_KEEP_DATA=1 (stop keeps the data; start reuses it: an outage, not a new cluster).
# status exits 0 when the broker answers a metadata request, 3 otherwise.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
POM="$HERE/kafka/pom.xml"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
CACHE="${ENRICH_CACHE_DIR:-$HOME/.cache/enrich}/kafka/$VERSION"
LIB="$CACHE/lib"
RUN="${ENRICH_RUN_DIR:-$REPO/.run}/kafka"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
PID_FILE="$RUN/kafka.pid"
LOG="$RUN/kafka.log"
DATA="$RUN/data"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
START_TIMEOUT=60

log() { echo "kafka: $*" >&2; }
die() { log "error: $*"; exit 1; }

require_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found; install a JDK 17+ (or set JAVA_HOME)"
  local v
  v="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
  if ! [[ "$v" =~ ^[0-9]+$ ]] || ((v < 17)); then
    die "Kafka $VERSION needs Java 17+, found: ${v:-unknown} ($JAVA)"
  fi
}

# Resolve the broker jars once per Kafka version (and pom content).
# The marker holds the pom checksum and is written only after a complete copy.
ensure_jars() {
  local sum marker="$CACHE/.resolved"
  sum="$(sha256sum "$POM" | cut -d' ' -f1)"
  [[ -f "$marker" && "$(cat "$marker")" == "$sum" ]] && return 0
  command -v mvn >/dev/null 2>&1 || die "mvn not found; install Maven (apt-get install maven) to fetch Kafka $VERSION"
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9  # another start may be resolving right now
  if [[ ! -f "$marker" || "$(cat "$marker")" != "$sum" ]]; then
    log "resolving Kafka $VERSION jars into $LIB (first run only)..."
    rm -rf "$LIB" "$LIB.tmp"
    mvn -B -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$LIB.tmp" >"$CACHE/mvn.log" 2>&1 \
      || { tail -n 30 "$CACHE/mvn.log" >&2; die "mvn could not resolve Kafka $VERSION (log: $CACHE/mvn.log)"; }
    mv "$LIB.tmp" "$LIB"
    echo "$sum" >"$marker"
  fi
  exec 9>&-
}

# True if the pid file names a live kafka.Kafka process.
running() {
  local pid
  [[ -f "$PID_FILE" ]] && pid="$(cat "$PID_FILE")" && [[ "$pid" =~ ^[0-9]+$ ]] \
    && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'
}

# A real request: Admin describeCluster via the kafka-tools ClusterTool.
# Prints the cluster id; fails if the broker does not answer.
probe() {
  local bootstrap="$1" cfg
  cfg="$(mktemp)"
  printf 'request.timeout.ms=3000\ndefault.api.timeout.ms=4000\n' >"$cfg"
  local out rc=0
  out="$(timeout 20 "$JAVA" -Xmx128m -XX:TieredStopAtLevel=1 -cp "$LIB/*" \
    org.apache.kafka.tools.ClusterTool cluster-id --bootstrap-server "$bootstrap" \
    --command-config "$cfg" 2>/dev/null)" || rc=$?
  rm -f "$cfg"
  ((rc == 0)) && sed -n 's/^Cluster ID: //p' <<<"$out" | grep .
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_config() {
  cat >"$RUN/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$RUN/log4j2.properties" <<EOF
appender.file.type = File
appender.file.name = file
appender.file.fileName = $LOG
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = \${sys:kafka.log.level:-INFO}
rootLogger.appenderRef.file.ref = file
EOF
}

start() {
  if running; then
    log "already running (pid $(cat "$PID_FILE")) on 127.0.0.1:$PORT"
    echo "127.0.0.1:$PORT"
    return 0
  fi
  require_java
  port_busy "$PORT" && die "port $PORT is in use by another process; set KAFKA_PORT, or KAFKA_BOOTSTRAP_SERVERS to use that broker"
  port_busy "$CONTROLLER_PORT" && die "controller port $CONTROLLER_PORT is in use; set KAFKA_CONTROLLER_PORT"
  ensure_jars

  local cluster_id jvm_log=(-Dlog4j2.configurationFile="$RUN/log4j2.properties" -Dkafka.logs.dir="$RUN")
  if [[ "${KAFKA_KEEP_DATA:-0}" == 1 && -f "$DATA/meta.properties" ]]; then
    # Restart on the data of the last run (outage tests): same cluster, same topics.
    rm -f "$PID_FILE"
    write_config
    cluster_id="$(sed -n 's/^cluster.id=//p' "$DATA/meta.properties")"
  else
    # Start from a fresh, freshly formatted data dir (also clears stale state).
    rm -rf "$DATA" "$PID_FILE"
    mkdir -p "$RUN"
    : >"$LOG"
    write_config
    # A random base64url UUID; one starting with "-" would be read as an option by the
    # storage tool (about 1 start in 64), so draw again.
    cluster_id="-"
    while [[ "$cluster_id" == -* ]]; do
      cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    "$JAVA" -Xmx256m -Dkafka.log.level=WARN "${jvm_log[@]}" -cp "$LIB/*" kafka.tools.StorageTool format \
      --config "$RUN/server.properties" --cluster-id "$cluster_id" >>"$LOG" 2>&1 \
      || { tail -n 30 "$LOG" >&2; die "formatting KRaft storage failed (log: $LOG)"; }
  fi

  local heap
  read -ra heap <<<"${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
  log "starting Kafka $VERSION on 127.0.0.1:$PORT (log: $LOG)"
  # setsid: keep the broker out of the caller's process group (Ctrl-C, hangups).
  # shellcheck disable=SC2016  # $$ and $1 are expanded by the inner sh
  setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$PID_FILE" \
    "$JAVA" "${heap[@]}" -XX:+UseG1GC -Djava.awt.headless=true "${jvm_log[@]}" \
    -cp "$LIB/*" kafka.Kafka "$RUN/server.properties" </dev/null >>"$LOG" 2>&1 &

  local deadline=$((SECONDS + START_TIMEOUT)) got
  while ((SECONDS < deadline)); do
    sleep 1
    if ! running; then
      sleep 1; running || { tail -n 40 "$LOG" >&2; die "broker exited during startup (log: $LOG)"; }
    fi
    if got="$(probe "127.0.0.1:$PORT")" && [[ "$got" == "$cluster_id" ]]; then
      log "ready after ${SECONDS}s (cluster id $cluster_id)"
      echo "127.0.0.1:$PORT"
      return 0
    fi
  done
  tail -n 40 "$LOG" >&2
  stop >/dev/null 2>&1 || true
  die "broker did not answer within ${START_TIMEOUT}s (log: $LOG)"
}

stop() {
  if ! running; then
    log "not running"
    rm -f "$PID_FILE"; [[ "${KAFKA_KEEP_DATA:-0}" == 1 ]] || rm -rf "$DATA"
    return 0
  fi
  local pid i
  pid="$(cat "$PID_FILE")"
  log "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after 30s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$PID_FILE"
  [[ "${KAFKA_KEEP_DATA:-0}" == 1 ]] || rm -rf "$DATA"
  log "stopped"
}

status() {
  local id
  if running && id="$(probe "127.0.0.1:$PORT")"; then
    log "running (pid $(cat "$PID_FILE")), reachable at 127.0.0.1:$PORT, cluster id $id"
    echo "127.0.0.1:$PORT"
    return 0
  fi
  if running; then
    log "process is up (pid $(cat "$PID_FILE")) but the broker does not answer"
  else
    log "not running"
  fi
  return 3
}

external() {
  log "KAFKA_BOOTSTRAP_SERVERS is set: using the existing broker at $KAFKA_BOOTSTRAP_SERVERS"
  case "$1" in
    start | stop) ;;
    status)
      require_java
      ensure_jars
      probe "$KAFKA_BOOTSTRAP_SERVERS" >/dev/null \
        || { log "$KAFKA_BOOTSTRAP_SERVERS does not answer"; return 3; }
      log "$KAFKA_BOOTSTRAP_SERVERS is reachable"
      ;;
  esac
}

case "${1:-}" in
  start | stop | status)
    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then external "$1"; else "$1"; fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
