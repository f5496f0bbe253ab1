"""Retention through the API server's own maintenance pass: an expired job's MP4 is deleted at
``expires_at`` (410) and its record at ``expires_at + SVG2_RECORD_GRACE_S`` (404)."""

from __future__ import annotations

import time

import httpx

from tests.conftest import start_api_server, stop_process
from worker.store import JobStore


def test_expired_videos_then_records_are_swept(redis_url, redis_client, output_dir, tmp_path, registry):
    from worker.registry import build_job_spec

    server = start_api_server(redis_url, output_dir, tmp_path / "api.log", SVG2_MAINTENANCE_INTERVAL_S="0.2",
                              SVG2_RETENTION_S="1", SVG2_RECORD_GRACE_S="2")
    try:
        store = JobStore(redis_client, output_dir, retention_s=1, record_grace_s=2)
        spec = build_job_spec(registry, prompt="a fox", model="tiny", num_frames=5)[0]
        job = store.create(spec, "tiny")
        store.mark_started(job.id, "w")
        store.video_path(job.id).write_bytes(b"mp4")
        store.mark_completed(job.id, {})
        url = f"{server.base_url}/v1/videos/{job.id}"
        assert httpx.get(url + "/content", timeout=10).status_code == 200
        deadline = time.monotonic() + 10
        while store.video_path(job.id).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not store.video_path(job.id).exists()
        assert httpx.get(url + "/content", timeout=10).status_code == 410
        assert httpx.get(url, timeout=10).json()["status"] == "completed"  # the record outlives the MP4
        while httpx.get(url, timeout=10).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(url, timeout=10).status_code == 404
        assert httpx.get(f"{server.base_url}/v1/videos", timeout=10).json()["data"] == []
    finally:
        stop_process(server.process)
