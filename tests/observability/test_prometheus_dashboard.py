"""Every dashboard query returns data from a real Prometheus scraping a real API and worker.

A real Prometheus (Debian's ``prometheus`` package) runs on the project's scrape config with only
the targets replaced (:mod:`promconfig`), pointed at the shared uvicorn API server and a
``svg2-worker`` process started here on the tiny CPU model. Through the API the test creates one job
that completes, one that fails (a model whose queue the worker also serves but whose pipeline it
does not own: ``invalid_input``) and one cancelled while queued. Then every PromQL expression of the
Grafana dashboard (except the optional DCGM exporter's) is evaluated through Prometheus' HTTP API
and must return at least one finite value. Finally the worker is killed and must stop being counted.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from promconfig import load_project_config, localize_config

from bench.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "deploy"))
from dashboard_queries import load_dashboard, panel_queries  # noqa: E402

PROMETHEUS = shutil.which("prometheus")
TERMINAL = {"completed", "failed", "cancelled"}
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install -y prometheus)"),
]


def wait_until(what: str, check, timeout_s: float, interval_s: float = 0.25, diagnostics=lambda: ""):
    """Poll ``check()`` until it returns a truthy value; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{diagnostics()}", pytrace=False)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Prometheus:
    def __init__(self, base_url: str, process: subprocess.Popen, log_path: Path) -> None:
        self.base_url = base_url
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def query(self, expr: str) -> list[dict]:
        response = httpx.get(f"{self.base_url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def start_prometheus(tmp_path: Path, targets: dict[str, list[str]]) -> Prometheus:
    port = free_port()
    config = localize_config(load_project_config(), {**targets, "prometheus": [f"127.0.0.1:{port}"]})
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    check = subprocess.run([shutil.which("promtool") or "promtool", "check", "config", str(config_path)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", process, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{prom.log()}", pytrace=False)
        try:
            return httpx.get(f"{prom.base_url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until("prometheus to be ready", ready, 60, diagnostics=prom.log)
    return prom


def create_video(api, **fields) -> str:
    response = httpx.post(f"{api.base_url}/v1/videos", json={"prompt": "a red fox in snow", **fields}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def video_status(api, video_id: str) -> str:
    response = httpx.get(f"{api.base_url}/v1/videos/{video_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["status"]


def test_every_dashboard_query_returns_data(api_server, tmp_path):
    api = api_server
    metrics = httpx.get(f"{api.base_url}/metrics", timeout=10)
    assert metrics.status_code == 200, (
        "the API serves no /metrics: wire service.metrics.install_metrics into service.main.create_app "
        "(docs/observability.md, 'Wiring')"
    )

    # Jobs before the worker exists: the cancel happens while queued, the others wait for it.
    cancelled = create_video(api, model="tiny")
    assert httpx.delete(f"{api.base_url}/v1/videos/{cancelled}", timeout=10).json()["status"] == "cancelled"
    failed = create_video(api, model="wan2.1-t2v-1.3b", size="256x256", num_frames=5, num_inference_steps=2)
    completed = create_video(api, model="tiny", sparsity="balanced", num_inference_steps=5)

    worker_port = free_port()
    worker_env = {
        **api.env,
        "SVG2_MODEL": "tiny",
        "SVG2_QUEUES": "tiny,wan-1.3b",
        "SVG2_WORKER_NAME": "observability-test-worker",
        "SVG2_METRICS_PORT": str(worker_port),
        "SVG2_METRICS_ADDR": "127.0.0.1",
        "SVG2_HEARTBEAT_INTERVAL_S": "0.5",
        "SVG2_HEARTBEAT_TTL_S": "2",
        "SVG2_LOG_LEVEL": "INFO",
    }
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "worker.main"], cwd=ROOT, env=worker_env,
                                  stdout=log, stderr=subprocess.STDOUT)

    def worker_diagnostics() -> str:
        return worker_log.read_text(errors="replace")[-4000:]

    prom = None
    try:
        prom = start_prometheus(tmp_path, {"svg2-api": [f"127.0.0.1:{api.port}"],
                                           "svg2-worker": [f"127.0.0.1:{worker_port}"]})

        def finished() -> bool:
            if worker.poll() is not None:
                pytest.fail(f"worker exited with {worker.returncode}:\n{worker_diagnostics()}", pytrace=False)
            return {video_status(api, completed), video_status(api, failed)} <= TERMINAL

        wait_until("the worker to finish both jobs", finished, 300, diagnostics=worker_diagnostics)
        assert video_status(api, completed) == "completed", worker_diagnostics()
        error = httpx.get(f"{api.base_url}/v1/videos/{failed}", timeout=10).json()["error"]
        assert error["code"] == "invalid_input", error

        # Prometheus has seen the finished jobs (the worker's series and the API's cancel).
        wait_until("the scraped job counters", lambda: (
            (prom.value('sum(svg2_jobs_finished_total{job="svg2-worker", status="completed"})') or 0) >= 1
            and (prom.value('sum(svg2_jobs_finished_total{job="svg2-worker", status="failed"})') or 0) >= 1
            and (prom.value('sum(svg2_jobs_finished_total{job="svg2-api", status="cancelled"})') or 0) >= 1
        ), 60, diagnostics=prom.log)
        # API traffic after Prometheus has scraped the API at least once, spread over a few 1 s
        # scrapes, so the request-rate windows hold an increase even when the jobs finished before
        # the first scrape.
        wait_until("a first scrape of the API and the worker", lambda: (
            prom.value('sum(up{job="svg2-api"})') == 1 and prom.value('sum(up{job="svg2-worker"})') == 1
        ), 30, diagnostics=prom.log)
        # Likewise one more job after the worker's first scrape: the jobs above may have finished
        # before Prometheus started, and a rate needs an increase between two scrapes.
        after_first_scrape = create_video(api, model="tiny", sparsity="balanced", num_inference_steps=5)
        wait_until("the job after the first scrape",
                   lambda: video_status(api, after_first_scrape) in TERMINAL, 120, diagnostics=worker_diagnostics)
        assert video_status(api, after_first_scrape) == "completed", worker_diagnostics()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert httpx.get(f"{api.base_url}/v1/videos", timeout=10).status_code == 200
            time.sleep(0.1)

        def queries_without_data() -> list[str]:
            empty = []
            for query in panel_queries(load_dashboard()):
                if query.external:
                    continue  # the DCGM exporter is an optional compose profile; no GPU here
                result = prom.query(query.evaluable())
                values = [float(s["value"][1]) for s in result]
                if not any(math.isfinite(v) for v in values):
                    empty.append(f"{query.panel} [{query.ref_id}]: {query.evaluable()} -> {result}")
            return empty

        # Poll for a few scrapes (data arrives with the next 1 s scrape), then require every query.
        empty = queries_without_data()
        deadline = time.monotonic() + 10
        while empty and time.monotonic() < deadline:
            time.sleep(1)
            empty = queries_without_data()
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        assert prom.value('sum(up{job="svg2-worker"})') == 1
        assert prom.value('sum(svg2_workers_live{model="tiny"})') == 1
        assert prom.value('sum(svg2_jobs_finished_total{status="failed", error_code="invalid_input"})') == 1

        # A worker that dies stops being counted: its scrape fails at once, its heartbeat expires.
        worker.kill()
        worker.wait()
        wait_until("the dead worker to drop out", lambda: (
            prom.value('sum(up{job="svg2-worker"})') == 0
            and not prom.value('sum(svg2_workers_live)')
        ), 30, diagnostics=prom.log)
    finally:
        stop(worker)
        if prom is not None:
            stop(prom.process)

