#!/usr/bin/env bash
# Local throwaway Redis (no persistence, loopback only) for development and tests.
#
#   deploy/local/redis.sh start|stop|status
#
# If REDIS_URL is set, that Redis is used and nothing is started. Otherwise
# redis-server runs on 127.0.0.1:${REDIS_PORT:-6379} with its pid and log in
# ${ENRICH_RUN_DIR:-<repo>/.run}/redis. status exits 0 when it answers PING, 3 otherwise.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
RUN="${ENRICH_RUN_DIR:-$REPO/.run}/redis"
PORT="${REDIS_PORT:-6379}"
PID_FILE="$RUN/redis.pid"
LOG="$RUN/redis.log"
URL="redis://127.0.0.1:$PORT/0"

log() { echo "redis: $*" >&2; }
die() { log "error: $*"; exit 1; }

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
  ((EUID == 0)) || die "redis-server not found; install it (sudo apt-get install redis-server) or set REDIS_URL"
  command -v apt-get >/dev/null 2>&1 || die "redis-server not found and apt-get is unavailable; install Redis or set REDIS_URL"
  log "installing redis-server with apt-get..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q redis-server >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q redis-server >&2; } \
    || die "apt-get could not install redis-server"
}

cli() { redis-cli -h 127.0.0.1 -p "$PORT" "$@"; }

# True if the pid file names a live redis-server process.
running() {
  local pid
  [[ -f "$PID_FILE" ]] && pid="$(cat "$PID_FILE")" && [[ "$pid" =~ ^[0-9]+$ ]] \
    && kill -0 "$pid" 2>/dev/null && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null
}

start() {
  if running; then
    log "already running (pid $(cat "$PID_FILE")) at $URL"
    echo "$URL"
    return 0
  fi
  ensure_redis
  if [[ "$(cli ping 2>/dev/null)" == PONG ]]; then
    die "another Redis already answers on 127.0.0.1:$PORT; set REDIS_URL=$URL to use it, or REDIS_PORT"
  fi
  rm -f "$PID_FILE"
  mkdir -p "$RUN"
  log "starting redis-server on 127.0.0.1:$PORT (log: $LOG)"
  redis-server --bind 127.0.0.1 --port "$PORT" --protected-mode yes \
    --save '' --appendonly no --daemonize yes \
    --dir "$RUN" --pidfile "$PID_FILE" --logfile "$LOG" >&2 \
    || die "redis-server failed to start (log: $LOG)"
  local i
  for ((i = 0; i < 50; i++)); do
    if [[ "$(cli ping 2>/dev/null)" == PONG ]]; then
      log "ready"
      echo "$URL"
      return 0
    fi
    sleep 0.2
  done
  tail -n 20 "$LOG" >&2 || true
  die "redis-server did not answer PING within 10s (log: $LOG)"
}

stop() {
  if ! running; then
    log "not running"
    rm -f "$PID_FILE"
    return 0
  fi
  local pid i
  pid="$(cat "$PID_FILE")"
  log "stopping (pid $pid)"
  cli shutdown nosave >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  rm -f "$PID_FILE"
  log "stopped"
}

status() {
  if running && [[ "$(cli ping 2>/dev/null)" == PONG ]]; then
    log "running (pid $(cat "$PID_FILE")), reachable at $URL"
    echo "$URL"
    return 0
  fi
  log "not running"
  return 3
}

external() {
  log "REDIS_URL is set: using the existing Redis at $REDIS_URL"
  if [[ "$1" == status ]]; then
    ensure_redis
    [[ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null)" == PONG ]] \
      || { log "$REDIS_URL does not answer PING"; return 3; }
    log "$REDIS_URL is reachable"
  fi
}

case "${1:-}" in
  start | stop | status)
    if [[ -n "${REDIS_URL:-}" ]]; then external "$1"; else "$1"; fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
