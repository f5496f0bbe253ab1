"""The svg2-worker process: resident model, heartbeats while idle and during jobs, clean exits."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from worker_process import REPO_ROOT


def _wait_terminal(store, job_id: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = store.get(job_id)
        if record.is_terminal:
            return record
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished within {timeout_s} s: {store.get(job_id)}")


def _metric(worker, name: str, by: str = "model") -> dict[str, float]:
    """The samples called ``name`` on the worker's /metrics, summed by the label ``by``."""
    text = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10).text
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                sums[sample.labels[by]] = sums.get(sample.labels[by], 0.0) + sample.value
    return sums


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
    finished = {k: v for k, v in _metric(worker, "svg2_jobs_finished_total", "status").items() if v}
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


def test_warm_up_runs_before_serving_and_leaves_no_jobs_behind(store, start_worker, tiny_spec):
    # A job queued before the worker starts waits for its warm-up, then runs.
    queued = store.create(tiny_spec(num_frames=5, num_inference_steps=2), "tiny")
    worker = start_worker(SVG2_WARMUP="all")
    warming = worker.wait_for("warming")
    assert warming["current_job"] is None and "warmup_jobs" not in warming
    assert store.get(queued.id).status == "queued"

    done = _wait_terminal(store, queued.id)
    assert done.status == "completed" and done.metrics["worker"] == worker.name
    beat = worker.wait_for("idle")
    deadline = time.monotonic() + 30
    while beat["jobs_done"] != 1 and time.monotonic() < deadline:  # the idle beat after the job, not before it
        time.sleep(0.05)
        beat = worker.heartbeat() or beat
    assert beat["state"] == "idle" and beat["jobs_done"] == 1
    assert beat["warmup"] == "all" and beat["warmup_seconds"] > 0 and "warmup_error" not in beat
    assert beat["warmup_jobs"][0].startswith("dense (1 step,") and len(beat["warmup_jobs"]) >= 4
    # The warm-up's jobs are not jobs: one record in the store, one finished job in the metrics.
    assert [r.id for r in store.list(None, 100)[0]] == [queued.id]
    assert _metric(worker, "svg2_worker_warmup_seconds")["tiny"] == pytest.approx(beat["warmup_seconds"], abs=1e-3)
    assert {k: v for k, v in _metric(worker, "svg2_jobs_finished_total", "status").items() if v} == {"completed": 1.0}


def test_a_cpu_worker_skips_the_warm_up_by_default(start_worker):
    worker = start_worker()
    idle = worker.wait_for("idle")
    assert "warmup" not in idle and "warm-up (" not in worker.log()
    assert _metric(worker, "svg2_worker_warmup_seconds")["tiny"] == 0.0


def test_sigterm_during_the_warm_up_exits_cleanly_at_once(start_worker, tmp_path):
    # The tiny model at its largest default shape, so that the warm-up lasts long enough to be interrupted.
    registry = yaml.safe_load((REPO_ROOT / "worker" / "models.yaml").read_text())
    tiny = next(m for m in registry["models"] if m["name"] == "tiny")
    tiny["defaults"].update(width=128, height=128, num_frames=17)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry))
    worker = start_worker(SVG2_WARMUP="all", SVG2_REGISTRY_PATH=str(path))
    worker.wait_for("warming")
    assert worker.stop(timeout_s=30) == 0
    assert worker.heartbeat() is None  # removed on the way out, not left to expire
    log = worker.log()
    assert "SIGTERM while warming; exiting" in log and "warm-up of" not in log and "serving" not in log
