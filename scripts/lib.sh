# Shared by scripts/*.sh: create the environment, install, make sure Redis answers.
# Source it; it defines functions only (and REPO_ROOT).

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SVG2_VENV:-$REPO_ROOT/.venv}"
# torch must be installed before the project, or pip resolves "torch>=2.4" to a multi-GB CUDA
# build. The default is the CPU release this project tests with; on a GPU host install the CUDA
# build that matches the driver first (scripts then leave an importable torch alone).
TORCH_SPEC="${SVG2_TORCH_SPEC:-torch==2.13.0}"

log() { printf '\033[1m[svg2]\033[0m %s\n' "$*" >&2; }

pick_python() {
    local py
    for py in "${PYTHON:-}" python3.12 python3.11 python3.10 python3; do
        [[ -n "$py" ]] || continue
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    log "need Python >= 3.10 (set PYTHON=/path/to/python)"
    return 1
}

# Create .venv if missing and install the project (+ test extras) into it; skipped when
# pyproject.toml has not changed since the last install. Activates the venv.
ensure_env() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        local py
        py="$(pick_python)"
        log "creating virtual environment $VENV with $py"
        "$py" -m venv "$VENV"
    fi
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    local stamp="$VENV/.svg2-install-stamp" want
    want="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && python -c 'import service, worker, torch' 2>/dev/null; then
        return 0
    fi
    if ! python -c 'import torch' 2>/dev/null; then
        log "installing $TORCH_SPEC"
        python -m pip install --quiet "$TORCH_SPEC"
    fi
    log "installing svg2 and its test tools (pip install -e '.[test]')"
    python -m pip install --quiet -e "$REPO_ROOT[test]"
    echo "$want" >"$stamp"
}

redis_host_port() {  # from SVG2_REDIS_URL (default redis://127.0.0.1:6379/0): "host port"
    python3 - "${SVG2_REDIS_URL:-redis://127.0.0.1:6379/0}" <<'PY'
import sys
from urllib.parse import urlparse
u = urlparse(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 6379)
PY
}

redis_ping() {  # redis_ping HOST PORT: true if a Redis answers PONG (no redis-cli needed)
    local reply
    # the braces scope the 2>/dev/null to the connect: on a bare `exec`, a redirection applies to the shell itself,
    # and every later message of the calling script (log() writes to stderr) would be lost
    { exec 3<>"/dev/tcp/$1/$2"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || true
    exec 3<&- 3>&-
    [[ "$reply" == "+PONG"* ]]
}

# Make sure the Redis of SVG2_REDIS_URL answers; a local one is started (and installed with
# apt-get when missing and possible). A remote Redis is only checked.
ensure_redis() {
    local host port
    read -r host port < <(redis_host_port)
    if redis_ping "$host" "$port"; then
        return 0
    fi
    if [[ "$host" != "127.0.0.1" && "$host" != "localhost" ]]; then
        log "Redis at $host:$port does not answer (SVG2_REDIS_URL); start it and retry"
        return 1
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
            log "installing redis-server (apt-get)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
        else
            log "no Redis answers on $host:$port and redis-server is not installed: install Redis and retry"
            return 1
        fi
    fi
    log "starting redis-server on port $port"
    redis-server --daemonize yes --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null
    local _
    for _ in $(seq 1 50); do
        redis_ping "$host" "$port" && return 0
        sleep 0.1
    done
    log "redis-server did not answer on port $port"
    return 1
}

# Install Prometheus (the `prometheus` and `promtool` binaries the observability tests run) when it
# is missing and apt-get can install it (root only). Never fails: without it those tests skip and
# say why.
ensure_prometheus() {
    if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
        return 0
    fi
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
        log "installing prometheus (apt-get)"
        if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus >/dev/null; then
            return 0
        fi
        log "apt-get could not install prometheus; the Prometheus tests will be skipped"
    else
        log "prometheus is not installed (needs root and apt-get); the Prometheus tests will be skipped"
    fi
    return 0
}
