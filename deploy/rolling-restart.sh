#!/bin/sh
# Restarts every server of a running herd one at a time (an upgrade: point --bin at
# the new binary), each with its data dir, waiting before the next until the one
# restarted serves, has every link up and has caught up from its neighbours
# (`herd wait`). Clients that retry on another server while theirs restarts see no
# failed command, and no acknowledged IAMAT is lost (tests/rolling.rs).
#
#   deploy/rolling-restart.sh --config FILE --run-dir DIR --data-dir DIR
#       [--log-dir DIR] [--bin PATH] [--timeout SECONDS] [NAME...]
#
# Each server NAME runs as `herd serve NAME --config FILE --data-dir DATA/NAME
# --log-dir LOGS`, its PID in RUN/NAME.pid (this script writes it for the servers
# it starts). Without names, every server of the herd file, in its order. A server
# that is not running is started, and waited for only once every named server is
# started (its neighbours may be among them): so the same script starts a herd. A server
# gets SIGTERM and has its shutdown_grace_ms (default 3 s) to stop: it stops
# accepting, answers what it has read, and exits; one that is still running
# --timeout seconds later (default 30) stops the script with an error, the herd
# left as it is. Exit 0: every server restarted and ready; 1: a step failed (named);
# 2: usage.
set -eu

usage() { echo "usage: $0 --config FILE --run-dir DIR --data-dir DIR [--log-dir DIR] [--bin PATH] [--timeout SECONDS] [NAME...]" >&2; exit 2; }

CONFIG= RUN= DATA= LOGS=logs BIN=herd TIMEOUT=30
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=${2:?}; shift 2 ;;
    --run-dir) RUN=${2:?}; shift 2 ;;
    --data-dir) DATA=${2:?}; shift 2 ;;
    --log-dir) LOGS=${2:?}; shift 2 ;;
    --bin) BIN=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --help|-h) usage ;;
    --*) echo "$0: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ -n "$CONFIG" ] && [ -n "$RUN" ] && [ -n "$DATA" ] || usage
[ -f "$CONFIG" ] || { echo "$0: no herd file at $CONFIG" >&2; exit 2; }

if [ $# -gt 0 ]; then
  NAMES=$*
else
  # The name of every [[server]] entry, in order.
  NAMES=$(sed -n 's/^[[:space:]]*name[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$CONFIG")
fi
[ -n "$NAMES" ] || { echo "$0: no servers named in $CONFIG" >&2; exit 2; }

say() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# Whether process $1 still runs (a zombie, exited but not yet reaped, does not).
alive() {
  if [ -r "/proc/$1/stat" ]; then
    state=$(sed 's/^.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [ "$state" != Z ]
  else
    kill -0 "$1" 2>/dev/null
  fi
}

ready() {
  if ! "$BIN" wait --server "$1" --config "$CONFIG" --timeout "${TIMEOUT}s"; then
    echo "$0: $1 is not ready; stopping here (its stderr: $LOGS/$1.stderr)" >&2
    exit 1
  fi
}

COLD=
for name in $NAMES; do
  pidfile="$RUN/$name.pid"
  cold=yes
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if alive "$pid"; then
      say "$name: SIGTERM to $pid"
      kill -TERM "$pid"
      waited=0
      while alive "$pid"; do
        if [ "$waited" -ge $((TIMEOUT * 10)) ]; then
          echo "$0: $name ($pid) still running ${TIMEOUT}s after SIGTERM; stopping here" >&2
          exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
      done
      say "$name: stopped after $((waited / 10)).$((waited % 10))s"
      cold=
    else
      say "$name: $pid is not running; starting it"
    fi
  else
    say "$name: no $pidfile; starting it"
  fi
  mkdir -p "$RUN" "$DATA/$name" "$LOGS"
  nohup "$BIN" serve "$name" --config "$CONFIG" --data-dir "$DATA/$name" --log-dir "$LOGS" \
    </dev/null >>"$LOGS/$name.stderr" 2>&1 &
  echo $! >"$pidfile"
  say "$name: started as $(cat "$pidfile")"
  if [ -n "$cold" ]; then
    COLD="$COLD $name"
  else
    ready "$name"
  fi
done
for name in $COLD; do
  ready "$name"
done
say "every server restarted and ready: $(echo $NAMES)"
