#!/usr/bin/env bash
# Stop the API and worker that scripts/dev-up.sh started (by their pid files). Leaves Redis running.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$REPO_ROOT/var/run"
quiet="${1:-}"
for name in worker api; do
    pidfile="$RUN_DIR/$name.pid"
    [[ -f "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        [[ "$quiet" == "--quiet" ]] || echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
done
