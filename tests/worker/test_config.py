"""WorkerSettings: environment parsing and the rules that keep a worker's liveness honest."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from worker.config import WorkerSettings, default_worker_name


def test_settings_come_from_svg2_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SVG2_REDIS_URL", "redis://example:6380/3")
    monkeypatch.setenv("SVG2_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setenv("SVG2_MODEL", "wan2.1-t2v-1.3b")
    monkeypatch.setenv("SVG2_QUEUES", "wan-1.3b, urgent ,")
    monkeypatch.setenv("SVG2_HEARTBEAT_INTERVAL_S", "2")
    s = WorkerSettings()
    assert (s.redis_url, s.output_dir, s.model) == ("redis://example:6380/3", tmp_path, "wan2.1-t2v-1.3b")
    assert s.queues == ["wan-1.3b", "urgent"]
    assert (s.heartbeat_interval_s, s.heartbeat_ttl_s) == (2.0, 30.0)


def test_defaults_serve_the_registry_model_under_a_unique_name(monkeypatch):
    for name in ("SVG2_MODEL", "SVG2_QUEUES", "SVG2_WORKER_NAME"):
        monkeypatch.delenv(name, raising=False)
    s = WorkerSettings()
    assert s.model is None and s.queues == []
    assert s.worker_name == default_worker_name() and s.worker_name.endswith(f"-{os.getpid()}")


def test_heartbeat_ttl_must_outlast_the_interval():
    with pytest.raises(ValidationError, match="heartbeat_ttl_s must exceed heartbeat_interval_s"):
        WorkerSettings(heartbeat_interval_s=10, heartbeat_ttl_s=10)


def test_worker_name_is_checked():
    with pytest.raises(ValidationError, match="worker_name"):
        WorkerSettings(worker_name="has space")


def test_warmup_mode_is_checked_and_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("SVG2_WARMUP", raising=False)
    assert WorkerSettings().warmup == "auto"
    monkeypatch.setenv("SVG2_WARMUP", "default")
    assert WorkerSettings().warmup == "default"
    monkeypatch.setenv("SVG2_WARMUP", "sometimes")
    with pytest.raises(ValidationError, match="warmup") as err:
        WorkerSettings()
    assert "'auto', 'none', 'default' or 'all'" in str(err.value)
