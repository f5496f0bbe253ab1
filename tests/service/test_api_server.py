"""The API as users run it: ``python -m service`` (uvicorn) in a subprocess, over real HTTP."""

from __future__ import annotations

import time

import httpx
import pytest
from rq import Queue

from tests.conftest import start_api_server, stop_process
from worker.store import JobStore


def test_server_accepts_a_job_over_http_and_serves_it_back(api_server, redis_client):
    with httpx.Client(base_url=api_server.base_url, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        resp = http.post("/v1/videos", json={"prompt": "a lighthouse at dusk", "num_frames": 5})
        assert resp.status_code == 201, resp.text
        video = resp.json()
        assert resp.headers["location"] == f"/v1/videos/{video['id']}"
        assert http.get(f"/v1/videos/{video['id']}").json()["status"] == "queued"
        assert Queue("tiny", connection=redis_client).job_ids == [video["id"]]
        assert http.get("/docs").status_code == 200


def test_server_refuses_oversized_bodies_with_and_without_content_length(api_server):
    with httpx.Client(base_url=api_server.base_url, timeout=10) as http:
        resp = http.post("/v1/videos", json={"prompt": "x" * 100_000})
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"

        def chunks():  # chunked transfer encoding: no Content-Length to trust
            for _ in range(64):
                yield b" " * 4096

        resp = http.post("/v1/videos", content=chunks(), headers={"content-type": "application/json"})
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
        assert http.get("/healthz").status_code == 200  # and the server lives on


def test_server_readyz_follows_worker_heartbeats(api_server, store):
    with httpx.Client(base_url=api_server.base_url, timeout=10) as http:
        assert http.get("/readyz").status_code == 503
        store.heartbeat("gpu0-42", {"model": "tiny", "queues": ["tiny"]}, ttl_s=10)
        assert http.get("/readyz").status_code == 200


@pytest.fixture
def sweeping_server(redis_url, redis_client, output_dir, tmp_path):
    """A server of its own whose maintenance pass runs twice a second."""
    server = start_api_server(redis_url, output_dir, tmp_path / "api.log", SVG2_MAINTENANCE_INTERVAL_S="0.5",
                              SVG2_MAX_ATTEMPTS="1")  # no re-queue: the first loss is final
    yield server
    stop_process(server.process)


def test_server_fails_a_job_whose_worker_died_and_spares_a_live_one(sweeping_server, redis_client):
    store = JobStore(redis_client, sweeping_server.output_dir)
    with httpx.Client(base_url=sweeping_server.base_url, timeout=10) as http:
        orphan = http.post("/v1/videos", json={"prompt": "a"}).json()["id"]
        alive = http.post("/v1/videos", json={"prompt": "b"}).json()["id"]
        store.heartbeat("gpu1-7", {"queues": ["tiny"]}, ttl_s=30)
        store.mark_started(orphan, "gpu0-9")  # gpu0-9 never beats: it is gone
        store.mark_started(alive, "gpu1-7")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and http.get(f"/v1/videos/{orphan}").json()["status"] == "in_progress":
            time.sleep(0.2)
        lost = http.get(f"/v1/videos/{orphan}").json()
        assert lost["status"] == "failed" and lost["error"]["code"] == "worker_lost"
        assert "gpu0-9" in lost["error"]["message"]
        assert http.get(f"/v1/videos/{alive}").json()["status"] == "in_progress"
