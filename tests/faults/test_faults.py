"""Faults against a live stack of real processes (bench/stack.py): a Redis of its own with an
append-only file, the API (uvicorn) and tiny-model workers. Nothing is mocked; every test ends with
every job final and none lost.

Recovery bound of a killed worker: heartbeat TTL + API maintenance interval (here 2 s + 0.5 s; by
default 30 s + 10 s, see docs/hardening.md).
"""

from __future__ import annotations

import time

import httpx
import pytest

from bench.stack import LiveStack

pytestmark = pytest.mark.slow

SLOW_JOB = {"size": "128x128", "num_frames": 17, "num_inference_steps": 100}  # ~3 s on a quiet CPU core: outlasts the 1.5 s shutdown grace
TTL_S, SWEEP_S = 2.0, 0.5


@pytest.fixture
def stack(tmp_path):
    s = LiveStack(tmp_path)
    s.start_redis()
    yield s
    s.close()


def _wait_running(stack: LiveStack, job_id: str) -> dict:
    """Wait until the job runs and has done a step (so a fault lands mid-job)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        video = stack.get(job_id)
        if video["status"] == "in_progress" and video["progress"] > 0:
            return video
        time.sleep(0.05)
    raise TimeoutError(f"{job_id} never ran: {stack.get(job_id)}")


def _runner_of(stack: LiveStack, job_id: str) -> str | None:
    """The name of the live worker whose heartbeat says it runs ``job_id``."""
    for proc in stack.workers:
        beat = stack.heartbeat(proc) if proc.alive() else None
        if beat is not None and beat.get("current_job") == job_id:
            return proc.name
    return None


def test_worker_killed_mid_job_is_requeued_and_completed_by_another(stack):
    stack.start_api(SVG2_MAX_ATTEMPTS="2")
    first = stack.start_worker()
    job = stack.submit(1, **SLOW_JOB)[0]
    _wait_running(stack, job)
    assert _runner_of(stack, job) == first.name
    second = stack.start_worker()
    killed_at = time.monotonic()
    stack.kill_worker(first)
    deadline = time.monotonic() + 60
    while _runner_of(stack, job) != second.name and time.monotonic() < deadline:
        time.sleep(0.05)
    picked_up_after = time.monotonic() - killed_at
    assert picked_up_after < TTL_S + SWEEP_S + 5, picked_up_after  # heartbeat-based, not rq's 10 minutes
    final = stack.wait_final([job], 120)[job]
    assert final["status"] == "completed", final
    assert final["metrics"]["worker"] == second.name
    assert httpx.get(f"{stack.base_url}/v1/videos/{job}/content", timeout=10).status_code == 200


def test_worker_killed_on_the_last_attempt_fails_the_job_worker_lost(stack):
    stack.start_api(SVG2_MAX_ATTEMPTS="1")
    worker = stack.start_worker()
    job = stack.submit(1, **SLOW_JOB)[0]
    _wait_running(stack, job)
    killed_at = time.monotonic()
    stack.kill_worker(worker)
    final = stack.wait_status(job, ("failed",), TTL_S + SWEEP_S + 10)
    assert time.monotonic() - killed_at < TTL_S + SWEEP_S + 5
    assert final["error"]["code"] == "worker_lost" and worker.name in final["error"]["message"]
    assert not list(stack.output_dir.glob(f"*{job}*"))  # no partial file left


def test_sigterm_requeues_a_job_that_outlasts_the_shutdown_grace(stack):
    # (a job that ends within the grace finishes: tests/worker/test_worker_process.py)
    stack.start_api()
    worker = stack.start_worker(SVG2_SHUTDOWN_GRACE_S="1.5")
    job = stack.submit(1, **SLOW_JOB)[0]  # ~5 s: longer than the grace
    _wait_running(stack, job)
    stopped_at = time.monotonic()
    assert stack.term_worker(worker, timeout_s=30) == 0
    assert time.monotonic() - stopped_at < 1.5 + 5  # bounded by the grace, not by the job
    video = stack.get(job)
    assert video["status"] == "queued" and video["error"] is None, video
    assert not (stack.output_dir / f"{job}.mp4").exists()
    stack.start_worker()
    assert stack.wait_final([job], 120)[job]["status"] == "completed"


def test_redis_restart_loses_nothing_and_the_api_answers_503_meanwhile(stack):
    stack.start_api()
    worker = stack.start_worker()
    done = stack.submit(1)[0]
    assert stack.wait_final([done], 60)[done]["status"] == "completed"
    running = stack.submit(1, **SLOW_JOB)[0]
    queued = stack.submit(2)
    _wait_running(stack, running)

    stack.stop_redis(kill=True)  # SIGKILL: only the append-only file survives
    t0 = time.monotonic()
    resp = httpx.get(f"{stack.base_url}/v1/videos/{done}", timeout=30)
    assert resp.status_code == 503 and time.monotonic() - t0 < 10
    assert resp.json()["error"]["code"] == "unavailable" and int(resp.headers["retry-after"]) > 0
    assert httpx.post(f"{stack.base_url}/v1/videos", json={"prompt": "x"}, timeout=30).status_code == 503
    assert httpx.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{stack.base_url}/readyz", timeout=30).status_code == 503
    time.sleep(1.0)

    stack.start_redis()  # same port and directory: replays the append-only file
    stack.wait_http(f"{stack.base_url}/readyz", 60)  # the API and the worker came back by themselves
    assert stack.get(done)["status"] == "completed"
    assert httpx.get(f"{stack.base_url}/v1/videos/{done}/content", timeout=10).status_code == 200
    final = stack.wait_final([running, *queued], 120)
    assert {v["status"] for v in final.values()} == {"completed"}, final
    assert worker.alive()  # the same worker reconnected and ran them
    later = stack.submit(1)[0]
    assert stack.wait_final([later], 60)[later]["status"] == "completed"


def test_api_restart_while_jobs_run_loses_nothing(stack):
    stack.start_api()
    stack.start_worker()
    ids = stack.submit(1, **SLOW_JOB) + stack.submit(2)
    _wait_running(stack, ids[0])
    stack.stop_api()
    time.sleep(1.0)
    stack.start_api()
    final = stack.wait_final(ids, 120)
    assert {v["status"] for v in final.values()} == {"completed"}, final
