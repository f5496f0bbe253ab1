#!/usr/bin/env bash
# Create .venv, install svg2 (+ test tools) and make sure Redis is running. Idempotent.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_env
ensure_redis
log "environment ready: source $VENV/bin/activate"
