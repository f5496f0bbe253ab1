"""The job store: every job's record lives in Redis, its MP4 in a shared output directory.

Torch-free: the API process and the GPU workers both use it. Layout (see docs/ARCHITECTURE.md):

- ``svg2:job:{id}`` hash with the fields of :class:`JobRecord` (``spec``, ``error`` and ``metrics``
  as JSON, timestamps as unix seconds, empty string for "not set").
- ``svg2:jobs`` sorted set of ids scored by creation time (listing, newest first).
- ``svg2:jobs:owner:{owner}`` the same per API key (tenant listing); ``svg2:queued`` and
  ``svg2:queued:owner:{owner}`` sets of the ids still queued (backpressure caps);
  ``svg2:expiry`` sorted set of finished ids by the time their record is deleted (retention sweep).
- ``svg2:idem:{owner}:{sha256(key)}`` JSON ``{"body": sha256, "id": job id}`` with a TTL
  (``Idempotency-Key`` of ``POST /v1/videos``).
- ``svg2:worker:{name}`` heartbeat key with a TTL, JSON of the worker's model / device / current job;
  ``svg2:workers`` is the set of names that ever beat (stale names are pruned on read).
- one rq job per video, same id, on the queue of the job's model, running
  ``worker.tasks.run_video_job(video_id)``.

Status transitions run inside WATCH/MULTI transactions on the job's hash, so the API (cancel) and a
worker (start / progress / complete) can race without breaking the rules: a job cancelled while
queued never starts, a finished job never changes status again, and a cancel requested while a job
runs turns its completion into ``cancelled``.

The Redis client must use ``decode_responses=False`` (rq stores pickled bytes in the same database).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry

from worker.spec import JobSpec

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

#: The function every rq job runs, referenced by name so the API never imports the worker code.
TASK_FUNCTION = "worker.tasks.run_video_job"

JOB_ID_RE = re.compile(r"^video_[0-9a-f]{32}$")
WORKER_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
#: heartbeat ``state`` values of a live worker that takes no jobs yet (the others: ``idle``, ``busy``)
WORKER_STARTING_STATES = ("loading", "warming")

DEFAULT_RETENTION_S = 24 * 3600
DEFAULT_JOB_TIMEOUT_S = 4 * 3600
DEFAULT_RECORD_GRACE_S = 24 * 3600
DEFAULT_MAX_ATTEMPTS = 3


class IdempotencyConflict(Exception):
    """An ``Idempotency-Key`` reused with a different request body; ``job_id`` is the first job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class InvalidJobId(ValueError):
    """A string that is not a job id (``video_`` + 32 lowercase hex digits)."""


def new_job_id() -> str:
    """A fresh job id: ``video_<32 hex>``."""
    return f"video_{uuid.uuid4().hex}"


def is_valid_job_id(job_id: str) -> bool:
    return isinstance(job_id, str) and JOB_ID_RE.fullmatch(job_id) is not None


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` unchanged or raise :class:`InvalidJobId`; call before forming a path or key."""
    if not is_valid_job_id(job_id):
        raise InvalidJobId(f"invalid job id {job_id!r}: expected 'video_' followed by 32 hex digits")
    return job_id


class JobError(BaseModel):
    code: str
    message: str


class JobRecord(BaseModel):
    """One job as stored in Redis."""

    model_config = ConfigDict(extra="ignore")

    id: str
    spec: JobSpec
    status: JobStatus
    progress: float = Field(0.0, ge=0.0, le=100.0)
    created_at: float
    started_at: float | None = None
    completed_at: float | None = Field(None, description="When the job reached a terminal status.")
    expires_at: float | None = Field(None, description="When the MP4 (and later the record) is removed.")
    error: JobError | None = None
    metrics: dict = Field(default_factory=dict)
    worker: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    queue: str = ""
    owner: str = Field("", description="Id of the API key that created the job ('' with auth disabled).")

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def _opt_float(raw: str) -> float | None:
    return float(raw) if raw else None


def _record_from_hash(job_id: str, h: dict[str, str]) -> JobRecord:
    return JobRecord(
        id=job_id,
        spec=JobSpec.model_validate_json(h["spec"]),
        status=h["status"],
        progress=float(h.get("progress") or 0.0),
        created_at=float(h["created_at"]),
        started_at=_opt_float(h.get("started_at", "")),
        completed_at=_opt_float(h.get("completed_at", "")),
        expires_at=_opt_float(h.get("expires_at", "")),
        error=json.loads(h["error"]) if h.get("error") else None,
        metrics=json.loads(h.get("metrics") or "{}"),
        worker=h.get("worker") or None,
        attempts=int(h.get("attempts") or 0),
        cancel_requested=h.get("cancel_requested") == "1",
        queue=h.get("queue", ""),
        owner=h.get("owner", ""),
    )


def _decode(h: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in h.items()}


# A transition reads the decoded hash and returns the fields to write (or None for "no change").
Transition = Callable[[dict[str, str]], dict[str, str] | None]


#: An input image without a job record is removed by ``purge_expired`` after this many seconds.
ORPHAN_INPUT_AGE_S = 3600


class JobStore:
    """Job records in Redis plus the MP4 files in ``output_dir``.

    Args:
        redis: a client with ``decode_responses=False`` (shared with rq).
        output_dir: directory shared by the API and the workers; created if missing.
        retention_s: how long a finished job's MP4 is kept (``expires_at = completed_at + retention_s``).
        job_timeout_s: rq's timeout for one video job.
        record_grace_s: how long the record outlives its MP4 (deleted at ``expires_at + record_grace_s``).
        max_attempts: how many times a job may start; a job whose worker was lost (or stopped) is
            re-queued while it has attempts left, else failed.
        prefix: key prefix of the records (rq's own keys keep rq's prefix).
    """

    def __init__(
        self,
        redis: redis.Redis,
        output_dir: Path,
        *,
        retention_s: int = DEFAULT_RETENTION_S,
        job_timeout_s: int = DEFAULT_JOB_TIMEOUT_S,
        record_grace_s: float = DEFAULT_RECORD_GRACE_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        prefix: str = "svg2",
    ) -> None:
        self.redis = redis
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_s
        self.job_timeout_s = job_timeout_s
        self.record_grace_s = record_grace_s
        self.max_attempts = max(1, max_attempts)
        self.prefix = prefix
        self._jobs_key = f"{prefix}:jobs"
        self._workers_key = f"{prefix}:workers"
        self._running_key = f"{prefix}:running"  # ids of in_progress jobs (for the orphan sweep)
        self._queued_key = f"{prefix}:queued"  # ids of queued jobs (global backpressure cap)
        self._expiry_key = f"{prefix}:expiry"  # finished ids scored by when their record is deleted

    # ----------------------------------------------------------------------------- keys and paths

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{validate_job_id(job_id)}"

    def _owner_jobs_key(self, owner: str) -> str:
        return f"{self._jobs_key}:owner:{owner}"

    def _owner_queued_key(self, owner: str) -> str:
        return f"{self._queued_key}:owner:{owner}"

    def _worker_key(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def video_path(self, job_id: str) -> Path:
        """``<output_dir>/<id>.mp4`` (raises :class:`InvalidJobId` for anything that is not an id)."""
        return self.output_dir / f"{validate_job_id(job_id)}.mp4"

    def temp_video_path(self, job_id: str) -> Path:
        """Where a worker writes the MP4 before renaming it to :meth:`video_path` (same directory, so
        the rename is atomic)."""
        return self.output_dir / f".{validate_job_id(job_id)}.partial.mp4"

    def input_path(self, job_id: str) -> Path:
        """``<output_dir>/<id>.input.png``: an image-to-video job's first frame (worker/images.py)."""
        return self.output_dir / f"{validate_job_id(job_id)}.input.png"

    def save_input_image(self, job_id: str, png: bytes) -> Path:
        """Write a job's first frame before the job is created (the worker may take it at once): to a temporary
        name in the same directory, then renamed, so a reader sees the whole file or none."""
        path = self.input_path(job_id)
        tmp = self.output_dir / f".{validate_job_id(job_id)}.input.partial"
        try:
            tmp.write_bytes(png)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def queue(self, name: str) -> Queue:
        """The rq queue of one model."""
        return Queue(name, connection=self.redis)

    # ----------------------------------------------------------------------------- create / read

    def create(self, spec: JobSpec, queue: str, *, owner: str = "", job_id: str | None = None) -> JobRecord:
        """Store a new queued job and enqueue its rq job (same id) on ``queue``, in one transaction.
        ``owner`` is the id of the API key that creates it; ``job_id`` a pre-drawn id (idempotent
        creates reserve it first)."""
        job_id = validate_job_id(job_id) if job_id is not None else new_job_id()
        now = time.time()
        fields = {
            "spec": spec.model_dump_json(),
            "status": "queued",
            "progress": "0",
            "created_at": repr(now),
            "started_at": "",
            "completed_at": "",
            "expires_at": "",
            "error": "",
            "metrics": "{}",
            "worker": "",
            "attempts": "0",
            "cancel_requested": "0",
            "queue": queue,
            "owner": owner,
        }
        pipe = self.redis.pipeline(transaction=True)
        # rq opens the MULTI itself; the record joins the same transaction after it.
        self.queue(queue).enqueue_call(
            TASK_FUNCTION,
            args=(job_id,),
            job_id=job_id,
            timeout=self.job_timeout_s,
            result_ttl=3600,
            failure_ttl=self.retention_s,
            description=f"video {job_id} ({spec.model})",
            pipeline=pipe,
        )
        pipe.hset(self._job_key(job_id), mapping=fields)
        pipe.zadd(self._jobs_key, {job_id: now})
        pipe.zadd(self._owner_jobs_key(owner), {job_id: now})
        pipe.sadd(self._queued_key, job_id)
        pipe.sadd(self._owner_queued_key(owner), job_id)
        pipe.execute()
        return _record_from_hash(job_id, fields)

    def queued_counts(self, owner: str) -> tuple[int, int]:
        """(jobs queued in all, jobs queued by ``owner``): what the backpressure caps compare."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.scard(self._queued_key)
        pipe.scard(self._owner_queued_key(owner))
        total, mine = pipe.execute()
        return int(total), int(mine)

    def get(self, job_id: str) -> JobRecord | None:
        """The record, or None for an unknown (or malformed) id."""
        if not is_valid_job_id(job_id):
            return None
        return self.parse_record(job_id, self.redis.hgetall(self._job_key(job_id)))

    async def aget(self, aredis, job_id: str) -> JobRecord | None:
        """:meth:`get` through an asyncio Redis client (``redis.asyncio``, bytes): the API's polling path."""
        if not is_valid_job_id(job_id):
            return None
        return self.parse_record(job_id, await aredis.hgetall(self._job_key(job_id)))

    @staticmethod
    def parse_record(job_id: str, raw: dict[bytes, bytes]) -> JobRecord | None:
        """The record from its raw hash (None when empty)."""
        return _record_from_hash(job_id, _decode(raw)) if raw else None

    def list(self, after: str | None, limit: int, order: Literal["desc", "asc"] = "desc",
             owner: str | None = None) -> tuple[list[JobRecord], bool]:
        """Up to ``limit`` jobs, newest first (``order="asc"``: oldest first), starting after the job
        ``after``; and whether more follow. ``owner``: only that API key's jobs (None: everyone's).

        Raises :class:`KeyError` when ``after`` is not a known job id (of that owner).
        """
        jobs_key = self._jobs_key if owner is None else self._owner_jobs_key(owner)
        newest_first = order == "desc"
        rank_of = self.redis.zrevrank if newest_first else self.redis.zrank
        id_range = self.redis.zrevrange if newest_first else self.redis.zrange
        start = 0
        if after is not None:
            rank = rank_of(jobs_key, after) if is_valid_job_id(after) else None
            if rank is None:
                raise KeyError(after)
            start = rank + 1
        records: list[JobRecord] = []
        # Records can vanish (purged) between the range and the read: keep reading until full.
        while len(records) <= limit:
            want = limit + 1 - len(records)
            ids = [i.decode() for i in id_range(jobs_key, start, start + want - 1)]
            if not ids:
                break
            start += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self._job_key(job_id))
            for job_id, raw in zip(ids, pipe.execute(), strict=True):
                if raw:
                    records.append(_record_from_hash(job_id, _decode(raw)))
                else:
                    self.redis.zrem(jobs_key, job_id)
        return records[:limit], len(records) > limit

    # ----------------------------------------------------------------------------- transitions

    def _transition(self, job_id: str, fn: Transition) -> dict[str, str] | None:
        """Apply ``fn`` atomically (WATCH/MULTI, retried on conflict); return the hash as it was
        before, or None when the job does not exist."""
        key = self._job_key(job_id)
        before: dict[str, str] | None = None

        def body(pipe: redis.client.Pipeline) -> None:
            nonlocal before
            raw = pipe.hgetall(key)
            before = _decode(raw) if raw else None
            updates = fn(before) if before is not None else None
            pipe.multi()
            if updates:
                pipe.hset(key, mapping=updates)
                self._index_status(pipe, job_id, before, updates)

        self.redis.transaction(body, key)
        return before

    def _index_status(self, pipe: redis.client.Pipeline, job_id: str, before: dict[str, str],
                      updates: dict[str, str]) -> None:
        """Keep the running / queued / expiry indexes in step with a status change (same MULTI)."""
        owner = before.get("owner", "")
        status = updates.get("status")
        if status == "in_progress":
            pipe.sadd(self._running_key, job_id)
        elif status in TERMINAL_STATUSES:
            pipe.srem(self._running_key, job_id)
        if status == "queued":
            pipe.srem(self._running_key, job_id)
            pipe.sadd(self._queued_key, job_id)
            pipe.sadd(self._owner_queued_key(owner), job_id)
        elif status is not None:
            pipe.srem(self._queued_key, job_id)
            pipe.srem(self._owner_queued_key(owner), job_id)
        if updates.get("expires_at"):
            pipe.zadd(self._expiry_key, {job_id: float(updates["expires_at"]) + self.record_grace_s})

    def mark_started(self, job_id: str, worker: str) -> JobRecord | None:
        """queued (or in_progress again after a lost worker) -> in_progress. Returns None when the job
        must not run: unknown, cancelled, finished, or a cancel was requested."""
        now = time.time()

        def fn(h: dict[str, str]) -> dict[str, str] | None:
            if h["status"] not in ("queued", "in_progress"):
                return None
            if h.get("cancel_requested") == "1":
                return {"status": "cancelled", "completed_at": repr(now), "expires_at": repr(now + self.retention_s)}
            metrics = json.loads(h.get("metrics") or "{}")
            metrics.pop("step_seconds", None)  # a retry starts its step times afresh
            metrics["queue_wait_seconds"] = now - float(h["created_at"])
            return {
                "status": "in_progress",
                "started_at": repr(now),
                "worker": worker,
                "progress": "0",
                "attempts": str(int(h.get("attempts") or 0) + 1),
                "metrics": json.dumps(metrics),
            }

        before = self._transition(job_id, fn)
        if before is None or before["status"] not in ("queued", "in_progress") or before.get("cancel_requested") == "1":
            return None
        return self.get(job_id)

    def set_progress(self, job_id: str, step: int, total_steps: int, step_seconds: float) -> None:
        """Record that denoising step ``step`` (1-based) of ``total_steps`` finished in ``step_seconds``."""
        progress = 100.0 * min(max(step, 0), total_steps) / max(total_steps, 1)

        def fn(h: dict[str, str]) -> dict[str, str] | None:
            if h["status"] != "in_progress":
                return None
            metrics = json.loads(h.get("metrics") or "{}")
            metrics.setdefault("step_seconds", []).append(float(step_seconds))
            return {"progress": repr(progress), "metrics": json.dumps(metrics)}

        self._transition(job_id, fn)

    def is_cancel_requested(self, job_id: str) -> bool:
        """True when the worker should stop: a cancel was requested, or the job is no longer running."""
        status, flag = self.redis.hmget(self._job_key(job_id), ["status", "cancel_requested"])
        if status is None:
            return True
        return flag == b"1" or status.decode() != "in_progress"

    def _finish(self, job_id: str, status: str, metrics: dict | None, error: JobError | None,
                expect_worker: str | None = None) -> str | None:
        """in_progress (or queued, for failures and cancels) -> a terminal status. Returns the status
        the job ends in (a requested cancel wins over completion), or None if nothing changed.
        With ``expect_worker``, only an in_progress job owned by that worker is finished."""
        now = time.time()
        result: str | None = None
        allowed = ("in_progress",) if status == "completed" else ("queued", "in_progress")

        def fn(h: dict[str, str]) -> dict[str, str] | None:
            nonlocal result
            result = None
            if h["status"] not in allowed:
                return None
            if expect_worker is not None and (h["status"] != "in_progress" or h.get("worker", "") != expect_worker):
                return None
            final = "cancelled" if status == "completed" and h.get("cancel_requested") == "1" else status
            merged = json.loads(h.get("metrics") or "{}")
            merged.update(metrics or {})
            if h.get("started_at"):
                merged["run_seconds"] = now - float(h["started_at"])
            updates = {
                "status": final,
                "completed_at": repr(now),
                "expires_at": repr(now + self.retention_s),
                "metrics": json.dumps(merged),
            }
            if final == "completed":
                updates["progress"] = "100"
            if error is not None:
                updates["error"] = error.model_dump_json()
            result = final
            return updates

        self._transition(job_id, fn)
        if result == "cancelled":
            self.delete_video(job_id)
        return result

    def mark_completed(self, job_id: str, metrics: dict) -> str | None:
        """in_progress -> completed (``metrics`` merged into the record's). If a cancel was requested
        meanwhile the job ends ``cancelled`` and its MP4 is deleted. Returns the final status, or None
        when the job was not in progress (unknown, already finished)."""
        return self._finish(job_id, "completed", metrics, None)

    def mark_failed(self, job_id: str, code: str, message: str, metrics: dict | None = None) -> None:
        """queued/in_progress -> failed with ``error = {code, message}``; finished jobs are left alone."""
        self._finish(job_id, "failed", metrics, JobError(code=code, message=message))

    def mark_cancelled(self, job_id: str) -> None:
        """queued/in_progress -> cancelled (the worker stopped cooperatively); deletes any MP4."""
        self._finish(job_id, "cancelled", None, None)

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """What ``DELETE /v1/videos/{id}`` does. queued -> cancelled at once (and removed from the rq
        queue); in_progress -> ``cancel_requested`` (the worker stops between denoising steps);
        finished -> status unchanged, ``expires_at`` set to now. The MP4, if any, is deleted.
        Returns the updated record, or None for an unknown id."""
        now = time.time()

        def fn(h: dict[str, str]) -> dict[str, str] | None:
            if h["status"] == "queued":
                return {"status": "cancelled", "cancel_requested": "1", "completed_at": repr(now),
                        "expires_at": repr(now + self.retention_s)}
            if h["status"] == "in_progress":
                return {"cancel_requested": "1"}
            return {"expires_at": repr(now)}

        before = self._transition(job_id, fn)
        if before is None:
            return None
        if before["status"] == "queued":
            self._cancel_rq_job(job_id)
        self.delete_video(job_id)
        return self.get(job_id)

    def _cancel_rq_job(self, job_id: str) -> None:
        try:
            Job.fetch(job_id, connection=self.redis).cancel()
        except (NoSuchJobError, InvalidJobOperation):
            pass  # already picked up, expired or cancelled; mark_started refuses it anyway

    def delete_video(self, job_id: str) -> bool:
        """Remove the job's MP4 (and a partial one) and its input image; True if the finished MP4 existed."""
        self.temp_video_path(job_id).unlink(missing_ok=True)
        self.input_path(job_id).unlink(missing_ok=True)
        path = self.video_path(job_id)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    def purge_expired(self, now: float | None = None) -> int:
        """Delete the MP4s of finished jobs whose ``expires_at`` has passed; returns how many were
        removed. Records stay (they are small) so the job can still be read."""
        now = time.time() if now is None else now
        removed = 0
        for path in self.output_dir.glob("video_*.mp4"):
            job_id = path.stem
            if not is_valid_job_id(job_id):
                continue
            raw = self.redis.hget(self._job_key(job_id), "expires_at")
            if raw is None or (raw and float(raw) <= now):
                removed += int(self.delete_video(job_id))
        # input images: with their job's MP4 once it expires, and those left without a record (an API that died
        # between writing the image and creating the job) once they are older than an hour
        for path in self.output_dir.glob("video_*.input.png"):
            job_id = path.name.removesuffix(".input.png")
            if not is_valid_job_id(job_id):
                continue
            raw = self.redis.hget(self._job_key(job_id), "expires_at")
            orphan = raw is None and path.stat().st_mtime < now - ORPHAN_INPUT_AGE_S
            if orphan or (raw and float(raw) <= now):
                path.unlink(missing_ok=True)
        return removed

    def purge_expired_records(self, now: float | None = None) -> int:
        """Delete the records (and any MP4) of finished jobs whose ``expires_at + record_grace_s`` has
        passed; returns how many records were deleted. A job whose expiry moved meanwhile is kept."""
        now = time.time() if now is None else now
        deleted = 0
        for raw_id in self.redis.zrangebyscore(self._expiry_key, "-inf", now):
            job_id = raw_id.decode()
            if not is_valid_job_id(job_id):
                self.redis.zrem(self._expiry_key, raw_id)
                continue
            key = self._job_key(job_id)
            gone = False

            def body(pipe: redis.client.Pipeline, job_id: str = job_id, key: str = key) -> None:
                nonlocal gone
                gone = False
                status, expires_at, owner = pipe.hmget(key, ["status", "expires_at", "owner"])
                pipe.multi()
                if status is None:  # already gone: drop the index entries
                    pipe.zrem(self._expiry_key, job_id)
                    pipe.zrem(self._jobs_key, job_id)
                    return
                if status.decode() not in TERMINAL_STATUSES or not expires_at \
                        or float(expires_at) + self.record_grace_s > now:
                    return  # running again or its expiry moved: keep it (the index is refreshed on finish)
                pipe.delete(key)
                pipe.zrem(self._expiry_key, job_id)
                pipe.zrem(self._jobs_key, job_id)
                pipe.zrem(self._owner_jobs_key((owner or b"").decode()), job_id)
                gone = True

            self.redis.transaction(body, key)
            if gone:
                self.delete_video(job_id)
                deleted += 1
        return deleted

    def requeue_or_fail(self, job_id: str, code: str, message: str, *, expect_worker: str | None = None) -> str | None:
        """A job that was running on a worker that is gone (or stopping): back to ``queued`` with a
        fresh rq job (same id) while it has attempts left (``attempts < max_attempts``), else
        ``failed`` with ``code``. Only an in_progress job (owned by ``expect_worker`` when given) is
        touched. Returns ``"queued"``, ``"failed"`` or None (nothing changed)."""
        key = self._job_key(job_id)
        result: str | None = None

        def body(pipe: redis.client.Pipeline) -> None:
            nonlocal result
            result = None
            raw = pipe.hgetall(key)
            h = _decode(raw) if raw else None
            if h is None or h["status"] != "in_progress" \
                    or (expect_worker is not None and h.get("worker", "") != expect_worker):
                pipe.multi()
                return
            if int(h.get("attempts") or 0) >= self.max_attempts or h.get("cancel_requested") == "1":
                result = "fail"
                pipe.multi()
                return
            pipe.multi()
            updates = {"status": "queued", "worker": "", "progress": "0", "started_at": ""}
            pipe.hset(key, mapping=updates)
            self._index_status(pipe, job_id, h, updates)
            self._drop_started_entries(pipe, h.get("queue", ""), job_id)
            self.queue(h.get("queue", "")).enqueue_call(
                TASK_FUNCTION, args=(job_id,), job_id=job_id, timeout=self.job_timeout_s, result_ttl=3600,
                failure_ttl=self.retention_s, description=f"video {job_id} (retry)", pipeline=pipe,
            )
            result = "queued"

        self.redis.transaction(body, key)
        if result == "fail":
            error = JobError(code=code, message=f"{message} (attempt limit {self.max_attempts} reached)")
            return "failed" if self._finish(job_id, "failed", None, error, expect_worker=expect_worker) == "failed" else None
        return result

    def _drop_started_entries(self, pipe: redis.client.Pipeline, queue: str, job_id: str) -> None:
        """Remove the dead execution(s) of ``job_id`` from rq's started registry, so rq's own
        abandoned-job cleanup never fails the re-queued rq job later."""
        registry_key = StartedJobRegistry(queue, connection=self.redis).key
        stale = [m for m in self.redis.zrange(registry_key, 0, -1) if m.decode().split(":", 1)[0] == job_id]
        if stale:
            pipe.zrem(registry_key, *stale)

    def fail_orphaned_jobs(self) -> list[str]:
        """Recover in_progress jobs whose worker has no live heartbeat (it crashed or was killed: rq's
        SimpleWorker cannot report that itself): re-queued while they have attempts left
        (``max_attempts``), else failed with ``worker_lost``. Returns the ids it changed.

        A worker keeps its heartbeat alive during jobs, so a missing one means the job will never
        finish; without this sweep such a job would read ``in_progress`` forever.
        """
        changed = []
        for raw_id in self.redis.smembers(self._running_key):
            job_id = raw_id.decode()
            if not is_valid_job_id(job_id):
                self.redis.srem(self._running_key, raw_id)
                continue
            status, worker = self.redis.hmget(self._job_key(job_id), ["status", "worker"])
            if status is None or status.decode() != "in_progress":
                self.redis.srem(self._running_key, job_id)
                continue
            name = (worker or b"").decode()
            if name and self.redis.exists(self._worker_key(name)):
                continue
            # Only if the same worker still owns it: a re-delivered job has a new, live owner.
            if self.requeue_or_fail(
                job_id, "worker_lost",
                f"the worker running this job ({name or 'unknown'}) stopped sending heartbeats",
                expect_worker=name,
            ) is not None:
                changed.append(job_id)
        return changed

    # ----------------------------------------------------------------------------- idempotency

    def _idem_key(self, owner: str, idempotency_key: str) -> str:
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        return f"{self.prefix}:idem:{owner}:{digest}"

    def reserve_idempotency_key(self, owner: str, idempotency_key: str, body_sha256: str,
                                ttl_s: int, abandoned_after_s: float = 30.0) -> tuple[str, bool]:
        """Bind ``idempotency_key`` (of ``owner``) to a fresh job id for ``ttl_s`` seconds, or read the
        binding an earlier request made. Returns ``(job_id, new)``; raises :class:`IdempotencyConflict`
        when the earlier request had another body. A binding whose job was never created (the API
        died between the two steps) is taken over after ``abandoned_after_s``."""
        key = self._idem_key(owner, idempotency_key)
        for _ in range(3):
            job_id = new_job_id()
            value = json.dumps({"body": body_sha256, "id": job_id, "at": time.time()})
            if self.redis.set(key, value, nx=True, ex=max(1, int(ttl_s))):
                return job_id, True
            raw = self.redis.get(key)
            if raw is None:  # expired between the two calls: try again
                continue
            bound = json.loads(raw)
            if bound["body"] != body_sha256:
                raise IdempotencyConflict(bound["id"])
            abandoned = time.time() - bound.get("at", 0.0) > abandoned_after_s \
                and not self.redis.exists(self._job_key(bound["id"]))
            if not abandoned:
                return bound["id"], False
            self._drop_if_unchanged(key, raw)
        raise redis.WatchError(f"idempotency key {idempotency_key!r} keeps changing")

    def _drop_if_unchanged(self, key: str, raw: bytes) -> None:
        def body(pipe: redis.client.Pipeline) -> None:
            current = pipe.get(key)
            pipe.multi()
            if current == raw:
                pipe.delete(key)

        self.redis.transaction(body, key)

    def release_idempotency_key(self, owner: str, idempotency_key: str) -> None:
        """Forget a reservation whose job could not be created (so a retry may create it)."""
        self.redis.delete(self._idem_key(owner, idempotency_key))

    # ----------------------------------------------------------------------------- workers

    def heartbeat(self, worker_name: str, info: dict, ttl_s: float) -> None:
        """Say that ``worker_name`` is alive for the next ``ttl_s`` seconds; ``info`` is JSON
        (model, queue, device, current job...)."""
        if not WORKER_NAME_RE.fullmatch(worker_name):
            raise ValueError(f"invalid worker name {worker_name!r}")
        payload = json.dumps({**info, "name": worker_name, "beat_at": time.time()})
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._worker_key(worker_name), payload, px=max(1, int(ttl_s * 1000)))
        pipe.sadd(self._workers_key, worker_name)
        pipe.execute()

    def remove_worker(self, worker_name: str) -> None:
        """Forget a worker at clean shutdown (its heartbeat would otherwise linger until the TTL)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._worker_key(worker_name))
        pipe.srem(self._workers_key, worker_name)
        pipe.execute()

    def live_workers(self) -> list[dict]:
        """The info of every worker whose heartbeat has not expired, sorted by name."""
        names = sorted(n.decode() for n in self.redis.smembers(self._workers_key))
        if not names:
            return []
        values = self.redis.mget([self._worker_key(n) for n in names])
        live, stale = [], []
        for name, value in zip(names, values, strict=True):
            if value is None:
                stale.append(name)
            else:
                live.append(json.loads(value))
        if stale:
            self.redis.srem(self._workers_key, *stale)
        return live
