"""The Redis job store: records, rq enqueueing, status transitions and their races, heartbeats."""

from __future__ import annotations

import threading
import time

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from worker.registry import build_job_spec
from worker.store import TASK_FUNCTION, InvalidJobId, JobStore, is_valid_job_id


@pytest.fixture
def spec(registry):
    return build_job_spec(registry, prompt="a red fox in snow", seed=7)[0]


def test_create_stores_a_queued_record_and_enqueues_the_rq_job_with_the_same_id(store, spec, redis_client):
    rec = store.create(spec, "tiny")
    assert is_valid_job_id(rec.id)
    assert rec.status == "queued" and rec.progress == 0 and rec.attempts == 0
    again = store.get(rec.id)
    assert again is not None and again.spec == spec and again.queue == "tiny"
    assert Queue("tiny", connection=redis_client).job_ids == [rec.id]
    job = Job.fetch(rec.id, connection=redis_client)
    assert job.func_name == TASK_FUNCTION and job.args == (rec.id,)


def test_get_returns_none_for_unknown_and_malformed_ids(store):
    assert store.get("video_" + "0" * 32) is None
    assert store.get("../../etc/passwd") is None


def test_paths_are_only_formed_from_valid_ids(store):
    good = "video_" + "a" * 32
    assert store.video_path(good) == store.output_dir / f"{good}.mp4"
    for bad in ("../x", "video_" + "A" * 32, "video_" + "a" * 31, "video_" + "a" * 32 + "/x"):
        with pytest.raises(InvalidJobId):
            store.video_path(bad)


def test_a_run_records_start_progress_step_times_and_completion(store, spec):
    rec = store.create(spec, "tiny")
    started = store.mark_started(rec.id, "w1")
    assert started is not None and started.status == "in_progress" and started.worker == "w1"
    assert started.attempts == 1 and started.metrics["queue_wait_seconds"] >= 0
    store.set_progress(rec.id, 1, 4, 0.5)
    store.set_progress(rec.id, 2, 4, 0.25)
    mid = store.get(rec.id)
    assert mid.progress == 50.0 and mid.metrics["step_seconds"] == [0.5, 0.25]
    assert not store.is_cancel_requested(rec.id)
    assert store.mark_completed(rec.id, {"encode_seconds": 0.1}) == "completed"
    done = store.get(rec.id)
    assert done.status == "completed" and done.progress == 100
    assert done.metrics["encode_seconds"] == 0.1 and done.metrics["step_seconds"] == [0.5, 0.25]
    assert done.metrics["run_seconds"] >= 0
    assert done.completed_at >= done.started_at >= done.created_at
    assert done.expires_at == pytest.approx(done.completed_at + 3600)


def test_cancelling_a_queued_job_removes_it_from_the_rq_queue_and_it_never_starts(store, spec, redis_client):
    rec = store.create(spec, "tiny")
    cancelled = store.request_cancel(rec.id)
    assert cancelled.status == "cancelled" and cancelled.completed_at is not None
    assert Queue("tiny", connection=redis_client).job_ids == []
    assert Job.fetch(rec.id, connection=redis_client).get_status() == JobStatus.CANCELED
    assert store.mark_started(rec.id, "w1") is None
    assert store.get(rec.id).status == "cancelled"


def test_cancelling_a_running_job_asks_the_worker_and_wins_over_completion(store, spec):
    rec = store.create(spec, "tiny")
    store.mark_started(rec.id, "w1")
    path = store.video_path(rec.id)
    path.write_bytes(b"mp4")
    after = store.request_cancel(rec.id)
    assert after.status == "in_progress" and after.cancel_requested
    assert store.is_cancel_requested(rec.id)
    assert not path.exists()
    path.write_bytes(b"mp4")  # the worker finished the last step anyway
    assert store.mark_completed(rec.id, {}) == "cancelled"
    assert store.get(rec.id).status == "cancelled" and not path.exists()


def test_a_finished_job_never_changes_status(store, spec):
    rec = store.create(spec, "tiny")
    store.mark_started(rec.id, "w1")
    store.video_path(rec.id).write_bytes(b"mp4")
    store.mark_completed(rec.id, {})
    deleted = store.request_cancel(rec.id)
    assert deleted.status == "completed" and not deleted.cancel_requested
    assert deleted.expires_at <= time.time()
    assert not store.video_path(rec.id).exists()
    store.mark_failed(rec.id, "boom", "late failure")
    store.mark_cancelled(rec.id)
    assert store.mark_started(rec.id, "w2") is None
    assert store.mark_completed(rec.id, {}) is None
    final = store.get(rec.id)
    assert final.status == "completed" and final.error is None and final.attempts == 1


def test_failure_records_the_error_and_progress_stops_counting(store, spec):
    rec = store.create(spec, "tiny")
    store.mark_started(rec.id, "w1")
    store.mark_failed(rec.id, "pipeline_error", "CUDA out of memory", {"peak_bytes": 5})
    failed = store.get(rec.id)
    assert failed.status == "failed" and failed.error.code == "pipeline_error"
    assert failed.error.message == "CUDA out of memory" and failed.metrics["peak_bytes"] == 5
    store.set_progress(rec.id, 3, 4, 1.0)
    assert store.get(rec.id).progress == 0
    assert store.is_cancel_requested(rec.id)  # not in progress: a worker must stop


def test_restarted_job_counts_attempts_and_restarts_step_times(store, spec):
    rec = store.create(spec, "tiny")
    store.mark_started(rec.id, "w1")
    store.set_progress(rec.id, 1, 4, 0.5)
    again = store.mark_started(rec.id, "w2")  # re-delivered after w1 died
    assert again.attempts == 2 and again.worker == "w2" and "step_seconds" not in again.metrics


def test_cancel_racing_start_never_leaves_a_cancelled_job_running(store, spec, redis_client):
    """Many rounds of API cancel vs worker start in two threads: the outcomes are consistent."""
    def race(job_id: str) -> dict:
        results: dict = {}
        barrier = threading.Barrier(2)

        def start() -> None:
            barrier.wait()
            results["started"] = store.mark_started(job_id, "w1")

        def cancel() -> None:
            barrier.wait()
            results["cancel"] = store.request_cancel(job_id)

        threads = [threading.Thread(target=start), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    for _ in range(30):
        rec = store.create(spec, "tiny")
        results = race(rec.id)
        final = store.get(rec.id)
        if results["started"] is None:
            assert final.status == "cancelled" and final.started_at is None
        else:
            assert final.status == "in_progress" and final.cancel_requested
            assert store.mark_completed(rec.id, {}) == "cancelled"


def test_list_is_newest_first_with_cursor_pagination(store, spec):
    ids = [store.create(spec, "tiny").id for _ in range(5)]
    newest_first = list(reversed(ids))
    page, more = store.list(None, 2)
    assert [r.id for r in page] == newest_first[:2] and more
    page, more = store.list(page[-1].id, 2)
    assert [r.id for r in page] == newest_first[2:4] and more
    page, more = store.list(page[-1].id, 2)
    assert [r.id for r in page] == newest_first[4:] and not more
    with pytest.raises(KeyError):
        store.list("video_" + "f" * 32, 2)
    page, more = store.list(ids[1], 2, order="asc")
    assert [r.id for r in page] == ids[2:4] and more


def test_list_skips_records_that_disappeared(store, spec, redis_client):
    ids = [store.create(spec, "tiny").id for _ in range(3)]
    redis_client.delete(f"svg2:job:{ids[1]}")
    page, more = store.list(None, 5)
    assert [r.id for r in page] == [ids[2], ids[0]] and not more


def test_heartbeats_expire(store):
    store.heartbeat("gpu0-1", {"model": "tiny", "queues": ["tiny"]}, ttl_s=0.3)
    live = store.live_workers()
    assert [w["name"] for w in live] == ["gpu0-1"] and live[0]["queues"] == ["tiny"]
    time.sleep(0.45)
    assert store.live_workers() == []
    store.heartbeat("gpu0-1", {}, ttl_s=5)
    store.remove_worker("gpu0-1")
    assert store.live_workers() == []
    with pytest.raises(ValueError):
        store.heartbeat("bad name/..", {}, ttl_s=5)


def test_purge_expired_deletes_only_expired_videos(store, spec):
    old, fresh = store.create(spec, "tiny"), store.create(spec, "tiny")
    for rec in (old, fresh):
        store.mark_started(rec.id, "w")
        store.video_path(rec.id).write_bytes(b"mp4")
        store.mark_completed(rec.id, {})
    assert store.purge_expired(now=time.time() + 10) == 0
    store.request_cancel(old.id)  # expires it now
    store.video_path(old.id).write_bytes(b"mp4")
    assert store.purge_expired() == 1
    assert not store.video_path(old.id).exists() and store.video_path(fresh.id).exists()


def test_store_needs_no_torch():
    import subprocess
    import sys

    code = "import sys, worker.store, worker.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_output_dir_is_created(redis_client, tmp_path):
    JobStore(redis_client, tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_orphan_sweep_fails_only_jobs_whose_worker_is_gone(store, spec):
    store.max_attempts = 1  # no retry: the first loss is final
    dead, live, queued = (store.create(spec, "tiny") for _ in range(3))
    store.heartbeat("live-1", {}, ttl_s=30)
    store.mark_started(dead.id, "dead-1")
    store.mark_started(live.id, "live-1")
    assert store.fail_orphaned_jobs() == [dead.id]
    lost = store.get(dead.id)
    assert lost.status == "failed" and lost.error.code == "worker_lost" and "dead-1" in lost.error.message
    assert store.get(live.id).status == "in_progress" and store.get(queued.id).status == "queued"
    assert store.fail_orphaned_jobs() == []  # idempotent
    store.mark_completed(live.id, {})
    store.remove_worker("live-1")
    assert store.fail_orphaned_jobs() == [] and store.get(live.id).status == "completed"


def test_orphan_sweep_spares_a_job_taken_over_by_a_new_worker(store, spec):
    rec = store.create(spec, "tiny")
    store.mark_started(rec.id, "old-1")
    store.heartbeat("new-2", {}, ttl_s=30)
    store.mark_started(rec.id, "new-2")  # re-delivered to a live worker
    assert store.fail_orphaned_jobs() == []
    assert store.get(rec.id).worker == "new-2"
