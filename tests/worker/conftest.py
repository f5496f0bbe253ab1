"""Fixtures of the worker tests: the tiny model, loaded once per session like a worker would."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model():
    """The built-in tiny model as a resident :class:`~worker.pipelines.loading.LoadedModel` (CPU)."""
    from worker.pipelines.loading import load_model
    from worker.registry import load_registry

    return load_model(load_registry().get("tiny"), device="cpu")


@pytest.fixture
def tiny_spec(registry):
    """Build a resolved tiny-model JobSpec; keyword arguments are request fields."""
    from worker.registry import build_job_spec

    def make(**fields):
        fields.setdefault("prompt", "a red fox running through snow")
        fields.setdefault("seed", 1234)
        spec, _ = build_job_spec(registry, model="tiny", **fields)
        return spec

    return make


@pytest.fixture
def start_worker(redis_client, redis_url, output_dir, tmp_path):
    """``start_worker(**SVG2_settings) -> WorkerProcess`` on the test Redis and ``output_dir``;
    every worker started is stopped after the test."""
    from worker_process import worker_pool

    env = {"SVG2_REDIS_URL": redis_url, "SVG2_OUTPUT_DIR": str(output_dir)}
    with worker_pool(env, tmp_path) as start:
        yield start
