#!/usr/bin/env bash
# The test command: set up the environment if needed, make sure Redis runs, lint, run the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/service -x).
# Without arguments the kernel tests (tests/svg2core: Triton interpreter, CPU-bound, no Redis, no timing) run first in
# SVG2_TEST_WORKERS pytest-xdist processes (default 2; 0 = none), then every other test in this process, alone, as
# the tests with servers, workers and deadlines expect. With arguments, pytest runs them in this process.
# Tests use their own Redis DB (SVG2_TEST_REDIS_URL, default redis://127.0.0.1:6379/15), flushed per test.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_env
SVG2_REDIS_URL="${SVG2_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}" ensure_redis
ensure_prometheus
cd "$REPO_ROOT"
log "ruff check"
ruff check .
workers="${SVG2_TEST_WORKERS:-2}"
if [[ $# -gt 0 || "$workers" == 0 ]]; then
    log "pytest"
    exec python -m pytest -q "$@"
fi
status=0
log "pytest: kernel tests (tests/svg2core), $workers processes"
python -m pytest -q -n "$workers" tests/svg2core || status=$?
log "pytest: the other tests"
python -m pytest -q --ignore=tests/svg2core || status=$?
exit "$status"
