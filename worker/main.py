"""``svg2-worker``: a long-lived GPU worker that owns one resident pipeline.

One process per GPU. At start it loads its model once (from the registry entry named by
``SVG2_MODEL``), runs its warm-up jobs (on a GPU by default: :mod:`worker.warmup`, so no user's first
job pays the compilation), then serves the model's rq queue with :class:`VideoWorker`, an rq ``SimpleWorker``
(no fork per job: CUDA does not survive ``fork``) that binds the resident model around each job.

Liveness: rq's SimpleWorker sends no heartbeats while a job runs, so a daemon thread writes the
store's ``svg2:worker:{name}`` key every ``heartbeat_interval_s`` (TTL ``heartbeat_ttl_s``) from the
moment loading starts until the process exits: while loading, warming up, idle and during jobs, with the job
being run. Cancellation is cooperative, between denoising steps (see :mod:`worker.runner`).

Run it with ``svg2-worker`` or ``python -m worker.main``; configure it with ``SVG2_*`` environment
variables (:class:`worker.config.WorkerSettings`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import redis
from rq import Queue, SimpleWorker
from rq.job import Job

from worker.config import WorkerSettings
from worker.metrics import WorkerMetrics, WorkerMetricsSettings, start_metrics_server
from worker.pipelines.loading import ModelUnavailable, load_model
from worker.registry import load_registry
from worker.runner import JobRunner
from worker.store import JobStore
from worker.tasks import bind_runner
from worker.warmup import resolve_mode, warm_up

log = logging.getLogger("svg2.worker")


@dataclass
class WorkerState:
    """What the heartbeat reports; written by the main thread, read by the heartbeat thread
    (single attribute assignments, atomic under the GIL)."""

    model: str
    queues: list[str]
    phase: str = "loading"  # loading | warming | idle | busy
    current_job: str | None = None
    jobs_done: int = 0
    started_at: float = field(default_factory=time.time)
    details: dict = field(default_factory=dict)

    def info(self) -> dict:
        return {
            "model": self.model,
            "queues": list(self.queues),
            "state": self.phase,
            "current_job": self.current_job,
            "jobs_done": self.jobs_done,
            "started_at": self.started_at,
            "pid": os.getpid(),
            **self.details,
        }


class HeartbeatThread(threading.Thread):
    """Writes the worker's heartbeat every ``interval_s`` until :meth:`stop`; a failed write (Redis
    briefly away) is logged and retried on the next beat instead of ending the thread."""

    def __init__(self, store: JobStore, name: str, state: WorkerState, interval_s: float, ttl_s: float) -> None:
        super().__init__(name="svg2-heartbeat", daemon=True)
        self.store = store
        self.worker_name = name
        self.state = state
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self._stopped = threading.Event()
        self._wake = threading.Event()

    def beat(self) -> None:
        self.store.heartbeat(self.worker_name, self.state.info(), self.ttl_s)

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:  # Redis briefly away: one line per beat, not a traceback
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # noqa: BLE001 - keep beating through anything else too
                log.warning("heartbeat failed", exc_info=True)
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def poke(self) -> None:
        """Beat now (the state changed) instead of at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self.join(timeout=self.interval_s + 5)


class VideoWorker(SimpleWorker):
    """rq ``SimpleWorker`` that runs every job in this process with the resident model bound.

    Overrides only ``execute_job``: it marks the worker busy for the heartbeat and binds the
    :class:`~worker.runner.JobRunner` that :func:`worker.tasks.run_video_job` looks up.
    """

    def __init__(
        self, queues, *, runner: JobRunner, state: WorkerState, heartbeat: HeartbeatThread,
        shutdown_grace_s: float = 0.0, **kwargs
    ) -> None:
        super().__init__(queues, **kwargs)
        self.svg2_runner = runner
        self.svg2_state = state
        self.svg2_heartbeat = heartbeat
        self.svg2_shutdown_grace_s = shutdown_grace_s
        self.svg2_stopping = False
        self.svg2_interrupted_job: str | None = None  # a job whose run ended in a Redis error
        self.svg2_force_stop: threading.Timer | None = None

    def request_stop(self, signum, frame):
        """Warm shutdown (first SIGTERM/SIGINT): the running job may finish within
        ``shutdown_grace_s``; then a second signal to ourselves turns it into rq's cold shutdown,
        in which the runner re-queues the job (or fails it with ``worker_shutdown`` past its attempts)."""
        self.svg2_stopping = True
        if self.svg2_shutdown_grace_s > 0 and self.svg2_state.current_job is not None:
            # rq ignores a second signal within 1 s of the first
            timer = threading.Timer(max(self.svg2_shutdown_grace_s, 1.5), os.kill, (os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timer.start()
            self.svg2_force_stop = timer
        return super().request_stop(signum, frame)

    def unsubscribe(self) -> None:
        """rq's unsubscribe from the worker's pubsub channel, with the listening thread told to stop first.

        rq (3.0) sends UNSUBSCRIBE and then calls the thread's ``stop()``, which since redis-py 8.2 joins the thread
        with no timeout. A thread that read the UNSUBSCRIBE reply before ``stop()`` cleared its run flag is back in
        ``get_message(timeout=60)`` waiting for a subscription, and the join, so every shutdown, waited up to 60 s
        (seen as a SIGTERM taking 30 s and more). With the flag cleared before the command, the thread leaves as
        soon as it has the reply.
        """
        thread = self.pubsub_thread
        if thread is not None:
            try:
                thread.stop(timeout=0)  # redis-py >= 8.2: clear the flag, no wait
            except TypeError:  # earlier redis-py: stop() only clears the flag
                thread.stop()
        super().unsubscribe()

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.svg2_state.current_job = job.id
        self.svg2_state.phase = "busy"
        self.svg2_heartbeat.poke()
        try:
            with bind_runner(self.svg2_runner):
                super().execute_job(job, queue)
        except redis.RedisError:
            self.svg2_interrupted_job = job.id  # Redis went away mid-job: re-queued once it is back
            raise
        finally:
            if self.svg2_force_stop is not None:  # the job ended within the grace: no forced stop
                self.svg2_force_stop.cancel()
                self.svg2_force_stop = None
            self.svg2_state.current_job = None
            self.svg2_state.phase = "idle"
            self.svg2_state.jobs_done += 1
            self.svg2_heartbeat.poke()


def serve(settings: WorkerSettings) -> int:
    """Load the model, then serve its queue until stopped; returns the process exit code."""
    registry = load_registry(settings.registry_path)
    entry = registry.get(settings.model)
    queues = settings.queues or [entry.queue]
    connection = redis.Redis.from_url(settings.redis_url)
    store = JobStore(connection, settings.output_dir, retention_s=settings.retention_s,
                     max_attempts=settings.max_attempts)
    state = WorkerState(model=entry.name, queues=queues, details={"device": settings.device or entry.device})
    heartbeat = HeartbeatThread(
        store, settings.worker_name, state, settings.heartbeat_interval_s, settings.heartbeat_ttl_s
    )
    heartbeat.start()
    # SIGTERM before serving (loading, warm-up; rq installs its own handlers once it serves): a clean exit whose
    # `finally` removes the heartbeat at once, instead of the default kill that leaves it until its TTL.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: _stop_while_starting(settings.worker_name, state))
    metrics = WorkerMetrics(model=entry.name, worker=settings.worker_name, presets=entry.effective_presets())
    metrics_settings = WorkerMetricsSettings()
    try:
        if metrics_settings.metrics_port:  # before loading: the healthcheck answers while a big model loads
            try:
                start_metrics_server(metrics.registry, metrics_settings.metrics_port, metrics_settings.metrics_addr)
            except OSError as exc:
                log.error("worker %s: cannot serve metrics on %s:%d: %s", settings.worker_name,
                          metrics_settings.metrics_addr, metrics_settings.metrics_port, exc)
                return 3
        log.info("worker %s: loading model %s", settings.worker_name, entry.name)
        try:
            model = load_model(entry, settings.device)
        except ModelUnavailable as exc:
            log.error("worker %s: %s [%s]", settings.worker_name, exc, exc.code)
            return 2
        state.details = {**model.describe(), "load_seconds": model.load_seconds}
        metrics.observe_model_load(model.load_seconds)
        metrics.set_device(str(model.device))
        if resolve_mode(settings.warmup, model.device) != "none":
            state.phase = "warming"
            heartbeat.poke()
            log.info("worker %s: warm-up (%s)", settings.worker_name, settings.warmup)
            report = warm_up(registry, model, settings.warmup)
            state.details = {**state.details, **report.describe()}
            metrics.observe_warmup(report.seconds)
            log.info("worker %s: warm-up of %d job(s) in %.1f s%s", settings.worker_name, len(report.jobs),
                     report.seconds, f" (stopped: {report.error})" if report.error else "")
        state.phase = "idle"
        heartbeat.poke()  # announce "idle" now rather than at the next interval
        log.info("worker %s: %s loaded in %.2f s on %s; serving %s",
                 settings.worker_name, entry.name, model.load_seconds, model.device, ", ".join(queues))
        worker = VideoWorker(
            queues,
            connection=connection,
            name=settings.worker_name,
            runner=JobRunner(store, model, settings.worker_name, metrics=metrics),
            state=state,
            heartbeat=heartbeat,
            shutdown_grace_s=settings.shutdown_grace_s,
        )
        # rq's loop quits on some Redis errors; serve on (reconnecting) until asked to stop.
        while True:
            try:
                worker.work(logging_level=settings.log_level.upper())
            except redis.RedisError:  # rq's own teardown can fail the same way
                log.warning("worker %s: Redis error in the rq loop", settings.worker_name, exc_info=True)
            if worker.svg2_stopping:
                return 0
            log.error("worker %s: the rq loop ended (Redis unreachable?); reconnecting", settings.worker_name)
            _recover_interrupted_job(store, worker, settings.worker_name)
    finally:
        heartbeat.stop()
        try:
            store.remove_worker(settings.worker_name)
        except redis.RedisError:
            log.warning("could not remove heartbeat of %s", settings.worker_name, exc_info=True)


def _stop_while_starting(name: str, state: WorkerState) -> None:
    log.warning("worker %s: SIGTERM while %s; exiting", name, state.phase)
    raise SystemExit(0)


def _recover_interrupted_job(store: JobStore, worker: VideoWorker, name: str, wait_s: float = 1.0) -> None:
    """Wait until Redis answers, then re-queue (or fail, past its attempts) a job whose run ended in a
    Redis error: its record may still read in_progress on this live worker, which no sweep recovers."""
    while not worker.svg2_stopping:
        try:
            store.redis.ping()
            worker.register_death()  # rq's teardown could not say it: re-registering would be refused
            if worker.svg2_interrupted_job is not None:
                store.requeue_or_fail(worker.svg2_interrupted_job, "internal",
                                      "the job store was unreachable while the job ran", expect_worker=name)
                worker.svg2_interrupted_job = None
            return
        except redis.RedisError:
            time.sleep(wait_s)


def run() -> None:
    """Console entry point ``svg2-worker``."""
    settings = WorkerSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(serve(settings))


if __name__ == "__main__":
    run()
