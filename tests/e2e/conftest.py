"""End-to-end fixtures: real workers beside the shared uvicorn API server (tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def start_worker(api_server, tmp_path):
    """``start_worker(**SVG2_settings) -> WorkerProcess`` sharing the API's Redis and output
    directory; every worker started is stopped after the test."""
    from worker_process import worker_pool

    env = {"SVG2_REDIS_URL": api_server.env["SVG2_REDIS_URL"], "SVG2_OUTPUT_DIR": api_server.env["SVG2_OUTPUT_DIR"]}
    with worker_pool(env, tmp_path) as start:
        yield start
