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
