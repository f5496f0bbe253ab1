#!/usr/bin/env bash
# One command on a fresh machine: environment, Redis, then the API and one worker on the `tiny`
# model in the background. Running it again restarts both. Stop them with scripts/dev-down.sh.
# Logs: var/log/{api,worker}.log. Settings: SVG2_* environment variables (see README).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_env
ensure_redis
cd "$REPO_ROOT"

export SVG2_HOST="${SVG2_HOST:-127.0.0.1}" SVG2_PORT="${SVG2_PORT:-8000}"
export SVG2_OUTPUT_DIR="${SVG2_OUTPUT_DIR:-$REPO_ROOT/var/outputs}" SVG2_MODEL="${SVG2_MODEL:-tiny}"
# Local development: no API keys unless asked for (SVG2_AUTH_DISABLED=0 scripts/dev-up.sh, then
# svg2-keys create --name me). The API logs a loud warning; never expose this to a network.
export SVG2_AUTH_DISABLED="${SVG2_AUTH_DISABLED:-1}"
RUN_DIR="$REPO_ROOT/var/run" LOG_DIR="$REPO_ROOT/var/log"
mkdir -p "$RUN_DIR" "$LOG_DIR" "$SVG2_OUTPUT_DIR"

"$REPO_ROOT/scripts/dev-down.sh" --quiet

if (exec 3<>"/dev/tcp/$SVG2_HOST/$SVG2_PORT") 2>/dev/null; then
    log "port $SVG2_PORT is taken by another program; choose another with SVG2_PORT=8001 $0"
    exit 1
fi

start() {  # start NAME COMMAND...: run in its own session, remember its pid
    local name="$1"
    shift
    setsid nohup "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
}
start api svg2-api
start worker svg2-worker

URL="http://$SVG2_HOST:$SVG2_PORT"
log "waiting for the API and the worker (model $SVG2_MODEL) to be ready"
for _ in $(seq 1 300); do
    for name in api worker; do
        if ! kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null; then
            log "$name exited; last lines of var/log/$name.log:"
            tail -n 30 "$LOG_DIR/$name.log" >&2
            "$REPO_ROOT/scripts/dev-down.sh" --quiet
            exit 1
        fi
    done
    if python -c "import httpx, sys; sys.exit(httpx.get('$URL/readyz', timeout=2).status_code != 200)" 2>/dev/null; then
        cat <<MSG

svg2 is up: $URL   (API docs: $URL/docs; logs: var/log/; stop: scripts/dev-down.sh)
The '$SVG2_MODEL' model has random weights: its videos are noise, but they travel the whole path.

  curl -s $URL/v1/videos -H 'content-type: application/json' \\
       -d '{"prompt": "a red fox running through snow", "seconds": "1"}'
  curl -s $URL/v1/videos/<id>                         # poll until "status": "completed"
  curl -s -o fox.mp4 $URL/v1/videos/<id>/content

MSG
        exit 0
    fi
    sleep 1
done
log "not ready after 300 s; see var/log/api.log and var/log/worker.log"
exit 1
