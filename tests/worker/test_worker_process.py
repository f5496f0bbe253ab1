"""The svg2-worker process: resident model, heartbeats while idle and during jobs, clean exits."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def _wait_terminal(store, job_id: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = store.get(job_id)
        if record.is_terminal:
            return record
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished within {timeout_s} s: {store.get(job_id)}")


def test_worker_serves_jobs_and_beats_while_busy(store, start_worker, tiny_spec):
    worker = start_worker()
    idle = worker.wait_for("idle")
    assert idle["model"] == "tiny" and idle["queues"] == ["tiny"] and idle["device"] == "cpu"

    # A long job (largest tiny shape, most steps): the heartbeat must keep coming while it runs.
    job = store.create(tiny_spec(size="128x128", num_frames=17, num_inference_steps=20), "tiny")
    busy = worker.wait_for("busy")
    assert busy["current_job"] == job.id
    beats = {busy["beat_at"]}
    while not store.get(job.id).is_terminal and len(beats) < 2:
        beat = worker.heartbeat()
        if beat and beat["state"] == "busy":
            beats.add(beat["beat_at"])
        time.sleep(0.05)
    assert len(beats) >= 2, "no fresh heartbeat during the job"

    assert _wait_terminal(store, job.id).status == "completed"
    after = worker.wait_for("idle")
    assert after["current_job"] is None and after["jobs_done"] == 1
    assert [w["name"] for w in store.live_workers()] == [worker.name]

    # The same resident model serves the next job: no reload between jobs.
    second = store.create(tiny_spec(num_frames=5, num_inference_steps=2), "tiny")
    done = _wait_terminal(store, second.id)
    assert done.status == "completed" and done.metrics["worker"] == worker.name
    assert done.metrics["load_seconds"] == store.get(job.id).metrics["load_seconds"]
    assert worker.log().count("loading model tiny") == 1

    # The worker's own /metrics counted both jobs.
    text = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10).text
    finished = {
        s.labels["status"]: s.value
        for family in text_string_to_metric_families(text) if family.name == "svg2_jobs_finished"
        for s in family.samples if s.name == "svg2_jobs_finished_total" and s.value
    }
    assert finished == {"completed": 2.0}

    assert worker.stop() == 0
    assert worker.heartbeat() is None and store.live_workers() == []


def test_sigterm_during_a_job_lets_it_finish_then_exits(store, start_worker, tiny_spec):
    worker = start_worker()
    worker.wait_for("idle")
    job = store.create(tiny_spec(size="128x128", num_frames=17, num_inference_steps=20), "tiny")
    deadline = time.monotonic() + 120
    while store.get(job.id).progress == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.get(job.id).status == "in_progress"

    assert worker.stop() == 0  # warm shutdown: rq finishes the job first
    record = store.get(job.id)
    assert record.status == "completed" and store.video_path(job.id).exists()
    assert worker.heartbeat() is None


def test_worker_without_weights_exits_with_model_unavailable(start_worker, tmp_path):
    model = "wan2.1-t2v-1.3b"
    worker = start_worker(SVG2_MODEL=model, SVG2_DEVICE="cpu", HF_HUB_CACHE=str(tmp_path / "empty-cache"))
    assert worker.process.wait(timeout=120) == 2
    log = worker.log()
    assert "model_unavailable" in log and f"model {model!r}" in log
    assert worker.heartbeat() is None
