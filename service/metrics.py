"""Prometheus metrics of the API process: HTTP traffic, the queues, and jobs the API itself ends.

Three parts, all bound to one :class:`ApiMetrics` (its own :class:`~prometheus_client.CollectorRegistry`,
created by the app factory, so two apps in one process never share series):

- :class:`PrometheusMiddleware`, a pure ASGI middleware: requests by route template, method and
  status code, and a latency histogram by route (the route *template*, ``/v1/videos/{video_id}``,
  never the raw path, so ids do not become labels; unmatched paths share one ``<unmatched>`` label).
- :class:`QueueCollector`, a custom collector that reads Redis and rq *at scrape time*: jobs waiting
  and running per queue, live and busy workers (from the workers' heartbeats, which expire, so a
  dead worker stops being counted within its heartbeat TTL). Nothing is cached between scrapes.
- :func:`metrics_router`, the ``GET /metrics`` route.

Final job statuses are counted where the transition happens: the workers count the jobs they finish
(``worker/metrics.py``); the API counts the jobs it cancels while they are still queued
(:meth:`ApiMetrics.observe_cancel`). Both export ``svg2_jobs_finished_total``; a dashboard sums them.

Never imports torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from rq import Queue
from rq.registry import StartedJobRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.spec import JobSpec
from worker.store import WORKER_STARTING_STATES, JobRecord

log = logging.getLogger(__name__)

#: HTTP latency: JSON routes take milliseconds, an MP4 download can take tens of seconds.
HTTP_SECONDS_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)
UNMATCHED_ROUTE = "<unmatched>"


class ApiMetrics:
    """The API's metric objects, in a registry of their own (``registry``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "svg2_http_requests_total", "HTTP requests served, by route template, method and status code.",
            ("route", "method", "code"), registry=self.registry)
        self.latency = Histogram(
            "svg2_http_request_duration_seconds", "Time to serve an HTTP request (until its last byte).",
            ("route", "method"), buckets=HTTP_SECONDS_BUCKETS, registry=self.registry)
        self.jobs_finished = Counter(
            "svg2_jobs_finished_total", "Jobs that reached a final status, by status and error code.",
            ("model", "preset", "status", "error_code"), registry=self.registry)

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        self.requests.labels(route, method, str(code)).inc()
        self.latency.labels(route, method).observe(seconds)

    def observe_cancel(self, record: JobRecord | None, requested_at: float) -> bool:
        """Count a job that ``DELETE /v1/videos/{id}`` cancelled while it was still queued.

        ``requested_at`` is ``time.time()`` taken just before ``store.request_cancel``: the job was
        cancelled by *this* request iff it is now cancelled, never started, and its completion time
        is not older than the request (a repeated DELETE finds an older one and counts nothing).
        Jobs cancelled while running are counted by the worker that stops them. Returns whether the
        job was counted.
        """
        if record is None or record.status != "cancelled" or record.started_at is not None:
            return False
        if record.completed_at is None or record.completed_at < requested_at:
            return False
        self.observe_finished(record.spec, "cancelled")
        return True

    def observe_finished(self, spec: JobSpec, status: str, error_code: str = "") -> None:
        """Count a job that the API process itself moved to a final status."""
        preset = spec.sparsity.preset or "custom"
        self.jobs_finished.labels(spec.model, preset, status, error_code if status == "failed" else "").inc()


def route_template(scope: Scope) -> str:
    """The matched route's path template (routing stores the route in the scope), or
    ``<unmatched>`` when no route matched."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


class PrometheusMiddleware:
    """Pure ASGI middleware timing every HTTP request until its response is fully sent.

    Add it with ``app.add_middleware(PrometheusMiddleware, metrics=api_metrics)``. A request whose
    app raises before a response starts is counted as 500.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe_request(
                route_template(scope), scope.get("method", "GET"), status, time.perf_counter() - start
            )


def metrics_router(registry: CollectorRegistry, path: str = "/metrics") -> APIRouter:
    """A router with ``GET {path}`` serving ``registry`` in Prometheus' text format."""
    router = APIRouter()

    @router.get(path, include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


class QueueCollector(Collector):
    """Queue and worker gauges, read from Redis on every scrape.

    Args:
        connection: the Redis client shared with rq (``decode_responses=False``).
        queue_names: callable returning the queues to report (the registry's model queues); every
            other rq queue that exists in Redis is reported too.
        live_workers: callable returning the info dicts of workers whose heartbeat has not expired
            (``JobStore.live_workers``); a worker counts as busy when its info says ``state: busy``
            or names a ``current_job``.
    """

    def __init__(
        self,
        connection: redis.Redis,
        queue_names: Callable[[], Iterable[str]],
        live_workers: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self.connection = connection
        self.queue_names = queue_names
        self.live_workers = live_workers

    def describe(self) -> list:
        return []  # collected lazily: never touch Redis when the collector is registered

    def collect(self):
        up = GaugeMetricFamily("svg2_redis_up", "1 if the API could read the queues from Redis at this scrape.")
        waiting = GaugeMetricFamily("svg2_queue_jobs_waiting", "Jobs waiting in an rq queue.", labels=["queue"])
        running = GaugeMetricFamily(
            "svg2_queue_jobs_running", "Jobs of an rq queue that a worker has started.", labels=["queue"])
        live = GaugeMetricFamily(
            "svg2_workers_live", "Workers with an unexpired heartbeat, by the model they serve.", labels=["model"])
        busy = GaugeMetricFamily(
            "svg2_workers_busy", "Live workers running a job, by the model they serve.", labels=["model"])
        starting = GaugeMetricFamily(
            "svg2_workers_starting", "Live workers not serving yet: loading their model or running their start-up "
            "warm-up, by the model they serve.", labels=["model"])
        try:
            names = dict.fromkeys(self.queue_names())
            names.update(dict.fromkeys(q.name for q in Queue.all(connection=self.connection)))
            for name in sorted(names):
                queue = Queue(name, connection=self.connection)
                waiting.add_metric([name], queue.count)
                running.add_metric([name], StartedJobRegistry(queue=queue).count)
            per_model: dict[str, list[int]] = {}
            for info in self.live_workers():
                counts = per_model.setdefault(str(info.get("model") or ""), [0, 0, 0])
                counts[0] += 1
                counts[1] += int(info.get("state") == "busy" or bool(info.get("current_job")))
                counts[2] += int(info.get("state") in WORKER_STARTING_STATES)
            for model, (n_live, n_busy, n_starting) in sorted(per_model.items()):
                live.add_metric([model], n_live)
                busy.add_metric([model], n_busy)
                starting.add_metric([model], n_starting)
        except redis.RedisError as exc:
            log.warning("metrics: cannot read queues from Redis: %s", exc)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, waiting, running, live, busy, starting]


def install_metrics(
    app: FastAPI,
    metrics: ApiMetrics,
    connection: redis.Redis,
    queue_names: Callable[[], Iterable[str]],
    live_workers: Callable[[], list[dict[str, Any]]],
    path: str = "/metrics",
) -> None:
    """Wire everything into ``app``: the middleware, the queue collector and ``GET {path}``."""
    metrics.registry.register(QueueCollector(connection, queue_names, live_workers))
    app.add_middleware(PrometheusMiddleware, metrics=metrics)
    app.include_router(metrics_router(metrics.registry, path))
