"""service/metrics.py on a small FastAPI app over the real job store (Redis, rq).

The app here has the same kind of routes as the API (a path parameter, a cancel) so the tests pin
what the middleware, the queue collector and the cancel counter do; the full API with a worker is
exercised through a real Prometheus in test_prometheus_dashboard.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import redis
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import UNMATCHED_ROUTE, ApiMetrics, install_metrics
from worker.registry import build_job_spec


def scrape(client: TestClient) -> dict[tuple[str, tuple], float]:
    """``GET /metrics`` parsed into {(sample name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def make_app(store, registry, connection) -> tuple[FastAPI, ApiMetrics]:
    app = FastAPI()
    metrics = ApiMetrics()

    @app.post("/v1/videos", status_code=201)
    def create(model: str = "tiny") -> dict:
        spec, entry = build_job_spec(registry, prompt="a fox", model=model)
        return {"id": store.create(spec, entry.queue).id}

    @app.delete("/v1/videos/{video_id}")
    def cancel(video_id: str) -> dict:
        requested_at = time.time()
        record = store.request_cancel(video_id)
        if record is None:
            raise HTTPException(404, "no such video")
        metrics.observe_cancel(record, requested_at)
        return {"status": record.status}

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("route failed")

    install_metrics(app, metrics, connection, queue_names=lambda: [m.queue for m in registry.models],
                    live_workers=store.live_workers)
    return app, metrics


@pytest.fixture
def app_client(store, registry, redis_client):
    app, metrics = make_app(store, registry, redis_client)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, metrics


def test_requests_are_counted_by_route_template_and_code(app_client):
    client, _ = app_client
    created = client.post("/v1/videos").json()["id"]
    client.delete(f"/v1/videos/{created}")
    client.delete("/v1/videos/video_" + "0" * 32)
    client.get("/no/such/path")
    client.get("/boom")
    samples = scrape(client)

    def requests(route: str, method: str, code: str) -> float | None:
        return samples.get(("svg2_http_requests_total", (("code", code), ("method", method), ("route", route))))

    assert requests("/v1/videos", "POST", "201") == 1
    # Both ids land on the template: job ids never become label values.
    assert requests("/v1/videos/{video_id}", "DELETE", "200") == 1
    assert requests("/v1/videos/{video_id}", "DELETE", "404") == 1
    assert requests(UNMATCHED_ROUTE, "GET", "404") == 1
    assert requests("/boom", "GET", "500") == 1
    assert not any(re.search(r"video_[0-9a-f]{32}", str(key)) for key in samples)
    count = samples[("svg2_http_request_duration_seconds_count", (("method", "POST"), ("route", "/v1/videos")))]
    assert count == 1


def test_queue_gauges_read_redis_at_scrape_time(app_client, store):
    client, _ = app_client
    for _ in range(2):
        client.post("/v1/videos")
    client.post("/v1/videos", params={"model": "wan2.1-t2v-1.3b"})
    samples = scrape(client)
    assert samples[("svg2_redis_up", ())] == 1
    assert samples[("svg2_queue_jobs_waiting", (("queue", "tiny"),))] == 2
    assert samples[("svg2_queue_jobs_waiting", (("queue", "wan-1.3b"),))] == 1
    assert samples[("svg2_queue_jobs_waiting", (("queue", "hunyuanvideo"),))] == 0  # registry queue, empty
    assert samples[("svg2_queue_jobs_running", (("queue", "tiny"),))] == 0

    store.heartbeat("w-idle", {"model": "tiny", "state": "idle", "current_job": None}, ttl_s=30)
    store.heartbeat("w-busy", {"model": "tiny", "state": "busy", "current_job": "video_" + "1" * 32}, ttl_s=30)
    store.heartbeat("w-gone", {"model": "tiny", "state": "busy"}, ttl_s=0.05)
    store.heartbeat("w-warm", {"model": "tiny", "state": "warming", "current_job": None}, ttl_s=30)
    store.heartbeat("w-load", {"model": "wan2.1-t2v-1.3b", "state": "loading", "current_job": None}, ttl_s=30)
    time.sleep(0.2)  # w-gone's heartbeat expires: a dead worker stops being counted
    samples = scrape(client)
    assert samples[("svg2_workers_live", (("model", "tiny"),))] == 3
    assert samples[("svg2_workers_busy", (("model", "tiny"),))] == 1
    assert samples[("svg2_workers_starting", (("model", "tiny"),))] == 1
    assert samples[("svg2_workers_starting", (("model", "wan2.1-t2v-1.3b"),))] == 1
    assert samples[("svg2_workers_busy", (("model", "wan2.1-t2v-1.3b"),))] == 0


def test_cancel_of_a_queued_job_is_counted_once(app_client):
    client, _ = app_client
    video_id = client.post("/v1/videos").json()["id"]
    assert client.delete(f"/v1/videos/{video_id}").json()["status"] == "cancelled"
    assert client.delete(f"/v1/videos/{video_id}").status_code == 200  # repeated DELETE: no new count
    samples = scrape(client)
    key = ("svg2_jobs_finished_total",
           (("error_code", ""), ("model", "tiny"), ("preset", "balanced"), ("status", "cancelled")))
    assert samples[key] == 1
    assert samples[("svg2_queue_jobs_waiting", (("queue", "tiny"),))] == 0


def test_cancel_of_a_running_job_is_left_to_the_worker(store, registry):
    spec, entry = build_job_spec(registry, prompt="x", model="tiny")
    record = store.create(spec, entry.queue)
    store.mark_started(record.id, "w0")
    metrics = ApiMetrics()
    requested_at = time.time()
    assert metrics.observe_cancel(store.request_cancel(record.id), requested_at) is False


def test_redis_down_is_reported_not_raised(store, registry):
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    app, _ = make_app(store, registry, dead)
    with TestClient(app) as client:
        samples = scrape(client)
    assert samples[("svg2_redis_up", ())] == 0
    assert not any(name == "svg2_queue_jobs_waiting" for name, _ in samples)


def test_service_metrics_does_not_import_torch():
    code = "import sys, service.metrics; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
