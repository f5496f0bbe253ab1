"""The job store's hardening features: owners, queued counts, re-queue of lost jobs with an attempt
limit, record retention and idempotency keys (real Redis, real rq queues)."""

from __future__ import annotations

import json
import time

import pytest
from rq import Queue
from rq.registry import StartedJobRegistry

from worker.spec import JobSpec
from worker.store import IdempotencyConflict


@pytest.fixture
def spec(registry) -> JobSpec:
    from worker.registry import build_job_spec

    return build_job_spec(registry, prompt="a fox", model="tiny", num_frames=5, num_inference_steps=2)[0]


def test_owner_lists_and_queued_counts(store, spec):
    a1, a2 = store.create(spec, "tiny", owner="key_a"), store.create(spec, "tiny", owner="key_a")
    b1 = store.create(spec, "tiny", owner="key_b")
    assert store.get(a1.id).owner == "key_a"
    assert [r.id for r in store.list(None, 10, owner="key_a")[0]] == [a2.id, a1.id]
    assert [r.id for r in store.list(None, 10, owner="key_b")[0]] == [b1.id]
    assert len(store.list(None, 10)[0]) == 3
    with pytest.raises(KeyError):
        store.list(b1.id, 10, owner="key_a")  # another owner's id is no cursor
    assert store.queued_counts("key_a") == (3, 2)
    store.mark_started(a1.id, "w-1")
    store.request_cancel(a2.id)
    assert store.queued_counts("key_a") == (1, 0) and store.queued_counts("key_b") == (1, 1)


def test_lost_job_is_requeued_then_failed_after_max_attempts(store, spec, redis_client):
    store.max_attempts = 2
    rec = store.create(spec, "tiny")
    queue = Queue("tiny", connection=redis_client)
    redis_client.lpop(queue.key)  # a worker took it
    redis_client.zadd(StartedJobRegistry("tiny", connection=redis_client).key, {f"{rec.id}:exec1": time.time() + 60})
    store.mark_started(rec.id, "dead-1")
    assert store.fail_orphaned_jobs() == [rec.id]
    again = store.get(rec.id)
    assert again.status == "queued" and again.worker is None and again.attempts == 1
    assert rec.id in queue.get_job_ids()  # a fresh rq job, same id
    assert redis_client.zcard(StartedJobRegistry("tiny", connection=redis_client).key) == 0
    assert store.queued_counts("")[0] == 1
    store.mark_started(rec.id, "dead-2")  # second attempt, its worker dies too
    assert store.fail_orphaned_jobs() == [rec.id]
    final = store.get(rec.id)
    assert final.status == "failed" and final.error.code == "worker_lost" and final.attempts == 2
    assert "attempt limit 2" in final.error.message
    assert store.fail_orphaned_jobs() == []


def test_requeue_spares_a_job_owned_by_another_worker(store, spec):
    rec = store.create(spec, "tiny")
    store.mark_started(rec.id, "w-2")
    assert store.requeue_or_fail(rec.id, "worker_shutdown", "stopped", expect_worker="w-1") is None
    assert store.get(rec.id).status == "in_progress"


def test_expired_records_are_deleted_with_their_video(store, spec):
    store.record_grace_s = 10
    done, running = store.create(spec, "tiny", owner="k"), store.create(spec, "tiny", owner="k")
    store.mark_started(done.id, "w")
    store.mark_completed(done.id, {})
    store.video_path(done.id).write_bytes(b"mp4")
    store.mark_started(running.id, "w")
    expires = store.get(done.id).expires_at
    assert store.purge_expired_records(now=expires + 5) == 0  # grace not over
    assert store.purge_expired_records(now=expires + 11) == 1
    assert store.get(done.id) is None and not store.video_path(done.id).exists()
    assert [r.id for r in store.list(None, 10, owner="k")[0]] == [running.id]
    assert [r.id for r in store.list(None, 10)[0]] == [running.id]


def test_delete_of_a_finished_job_moves_its_record_expiry(store, spec):
    store.record_grace_s = 0
    rec = store.create(spec, "tiny")
    store.mark_started(rec.id, "w")
    store.mark_completed(rec.id, {})
    assert store.purge_expired_records() == 0  # retention not over
    store.request_cancel(rec.id)  # DELETE: expires now
    assert store.purge_expired_records(now=time.time() + 1) == 1


def test_idempotency_key_binds_one_job_per_body(store):
    job_id, new = store.reserve_idempotency_key("k", "abc", "body-1", ttl_s=60)
    assert new
    assert store.reserve_idempotency_key("k", "abc", "body-1", ttl_s=60) == (job_id, False)
    with pytest.raises(IdempotencyConflict) as err:
        store.reserve_idempotency_key("k", "abc", "body-2", ttl_s=60)
    assert err.value.job_id == job_id
    other, new = store.reserve_idempotency_key("k2", "abc", "body-2", ttl_s=60)  # keys are per owner
    assert new and other != job_id
    store.release_idempotency_key("k", "abc")
    assert store.reserve_idempotency_key("k", "abc", "body-2", ttl_s=60)[1]


def test_an_abandoned_idempotency_binding_is_taken_over(store, redis_client, spec):
    job_id, _ = store.reserve_idempotency_key("k", "abc", "body-1", ttl_s=60)
    # the API died before creating the job: young bindings are "in progress", old ones are taken over
    assert store.reserve_idempotency_key("k", "abc", "body-1", ttl_s=60) == (job_id, False)
    key = next(iter(redis_client.keys("svg2:idem:*")))
    bound = json.loads(redis_client.get(key))
    redis_client.set(key, json.dumps({**bound, "at": bound["at"] - 31}), ex=60)
    fresh, new = store.reserve_idempotency_key("k", "abc", "body-1", ttl_s=60)
    assert new and fresh != job_id
    store.create(spec, "tiny", owner="k", job_id=fresh)
    redis_client.set(key, json.dumps({**json.loads(redis_client.get(key)), "at": 0}), ex=60)
    assert store.reserve_idempotency_key("k", "abc", "body-1", ttl_s=60) == (fresh, False)  # created: kept
