#!/usr/bin/env bash
# Stop exactly the daemons start.sh recorded (by PID, never by name), newest first.
set -u
DIR=${SLURM_DEV_DIR:-/tmp/slurm-dev}
[ -f "$DIR/pids" ] || { echo "no dev cluster recorded in $DIR"; exit 0; }
tac "$DIR/pids" | while read -r name pid; do
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "stopped $name ($pid)"
  fi
done
: > "$DIR/pids"
