"""The API app factory and the ``svg2-api`` console entry point.

``create_app(settings)`` reads settings (once, here; never at import), connects to Redis, loads the
model registry and mounts the routes. ``run()`` serves it with uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis
import redis.asyncio
from fastapi import Depends, FastAPI

from service.auth import KeyStore, get_principal
from service.config import Settings
from service.deps import AppContext
from service.errors import install_error_handlers
from service.limits import BodySizeLimitMiddleware
from service.metrics import ApiMetrics, install_metrics
from service.routes import health, models, videos
from service.schemas import ERROR_RESPONSES
from worker.registry import load_registry
from worker.store import JobStore

log = logging.getLogger(__name__)


def _maintain(store: JobStore) -> None:
    """One maintenance pass: re-queue (or fail, past max_attempts) jobs whose worker died, delete
    expired MP4s and records."""
    lost = store.fail_orphaned_jobs()
    if lost:
        log.warning("recovered %d jobs whose worker stopped sending heartbeats: %s", len(lost), ", ".join(lost))
    removed = store.purge_expired()
    if removed:
        log.info("deleted %d expired videos", removed)
    records = store.purge_expired_records()
    if records:
        log.info("deleted %d expired job records", records)


async def _maintenance_loop(store: JobStore, interval_s: float) -> None:
    """Run :func:`_maintain` every ``interval_s`` (off the event loop: it touches Redis and the disk).
    Every pass is idempotent, so several API replicas may run it side by side."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(_maintain, store)
        except Exception:  # a Redis hiccup must not kill the loop
            log.exception("maintenance pass failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. ``settings`` defaults to the environment (``SVG2_*``)."""
    settings = settings if settings is not None else Settings()
    registry = load_registry(settings.registry_path)
    # Short timeouts: while Redis is down a request gets its 503 within seconds, not minutes.
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5,
                                  health_check_interval=30)
    store = JobStore(client, settings.output_dir, retention_s=settings.retention_s,
                     job_timeout_s=settings.job_timeout_s, record_grace_s=settings.record_grace_s,
                     max_attempts=settings.max_attempts)
    metrics = ApiMetrics()  # a registry per app: two apps in one process share no series
    aclient = redis.asyncio.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5,
                                           health_check_interval=30)
    ctx = AppContext(settings=settings, redis=client, store=store, registry=registry, metrics=metrics,
                     keys=KeyStore(client), aredis=aclient)
    if settings.auth_disabled:
        log.warning("!" * 78)
        log.warning("AUTH IS DISABLED (SVG2_AUTH_DISABLED=1): anyone who can reach %s:%d sees and deletes "
                    "every job. Local development only.", settings.host, settings.port)
        log.warning("!" * 78)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        interval = settings.maintenance_interval_s
        task = asyncio.create_task(_maintenance_loop(store, interval)) if interval else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            client.close()
            await aclient.aclose()

    app = FastAPI(
        title="svg2",
        version="0.1.0",
        summary="Video generation with Sparse VideoGen2 sparse attention (OpenAI video-API shaped).",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.svg2 = ctx
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.include_router(health.router)
    # Every /v1 route needs a key (get_principal is cached per request, so routes that take
    # PrincipalDep themselves do not look it up twice).
    app.include_router(videos.router, dependencies=[Depends(get_principal)])
    app.include_router(models.router, dependencies=[Depends(get_principal)])
    # Outermost middleware (added last): requests refused by the body limit are counted too.
    install_metrics(app, metrics, client, queue_names=lambda: [m.queue for m in registry.models],
                    live_workers=store.live_workers)
    return app


def run() -> None:
    """``svg2-api``: serve the API with uvicorn on ``SVG2_HOST:SVG2_PORT``."""
    import uvicorn

    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:  # each process builds its app from the same environment
        uvicorn.run("service.main:create_app", factory=True, workers=settings.workers, host=settings.host,
                    port=settings.port, log_level=settings.log_level)
    else:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    run()
