#!/usr/bin/env bash
# The test command: set up the environment if needed, make sure Redis runs, lint, run the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/service -x).
# Tests use their own Redis DB (SVG2_TEST_REDIS_URL, default redis://127.0.0.1:6379/15), flushed per test.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_env
SVG2_REDIS_URL="${SVG2_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}" ensure_redis
ensure_prometheus
cd "$REPO_ROOT"
log "ruff check"
ruff check .
log "pytest"
python -m pytest -q "$@"
