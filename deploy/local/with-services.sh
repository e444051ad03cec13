#!/usr/bin/env bash
# Run a command with local Kafka and Redis available:
#
#   deploy/local/with-services.sh CMD [ARGS...]
#
# Services whose address is already given (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL)
# or that are already running (from `kafka.sh start` / `redis.sh start`) are
# used as they are. Whatever this script starts is stopped again when it exits
# (normally, on error, or on INT/TERM). Exits with the command's status.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STARTED=()

(($# > 0)) || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }

# shellcheck disable=SC2317  # only called from the EXIT trap
cleanup() {
  local i
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    # Unset the addresses exported above, or the scripts would treat them as external.
    env -u KAFKA_BOOTSTRAP_SERVERS -u REDIS_URL "$HERE/${STARTED[i]}.sh" stop \
      || echo "with-services: could not stop ${STARTED[i]}" >&2
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ensure NAME: sets ADDR; starts NAME only if it is not already up.
ensure() {
  if ADDR="$("$HERE/$1.sh" status 2>/dev/null)"; then
    echo "with-services: using the running $1 at $ADDR" >&2
  else
    ADDR="$("$HERE/$1.sh" start)"
    STARTED+=("$1")
  fi
}

if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  ensure kafka
  export KAFKA_BOOTSTRAP_SERVERS="$ADDR"
fi
if [[ -z "${REDIS_URL:-}" ]]; then
  ensure redis
  export REDIS_URL="$ADDR"
fi
echo "with-services: KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS REDIS_URL=$REDIS_URL" >&2

# Run the command in the background and wait, so INT/TERM are handled at once
# (bash defers traps while a foreground child runs). The command keeps our
# stdin, and is sent TERM if we are interrupted (background jobs ignore INT).
"$@" <&0 &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM
rc=0
while :; do
  wait "$child" && rc=0 || rc=$?
  kill -0 "$child" 2>/dev/null || break # still alive: wait was cut short by a signal
done
exit "$rc"
