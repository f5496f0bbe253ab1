"""Liveness and readiness probes."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.deps import ContextDep
from worker.store import WORKER_STARTING_STATES

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is up")
def healthz() -> dict:
    return {"status": "ok"}


class ReadyStatus(BaseModel):
    status: str = Field(..., description="ready, no_workers or unavailable.")
    redis: str
    serving: int = Field(0, description="Live workers taking jobs now; the others are still loading their model or "
                                        "running their start-up warm-up (jobs queue meanwhile).")
    workers: list[dict]


@router.get("/readyz", summary="Redis answers and at least one worker is alive", response_model=ReadyStatus,
            responses={503: {"model": ReadyStatus, "description": "Not ready: Redis down or no live worker."}})
def readyz(ctx: ContextDep) -> JSONResponse:
    try:
        ctx.redis.ping()
        workers = ctx.store.live_workers()
    except redis.RedisError as exc:
        return JSONResponse(status_code=503, content={"status": "unavailable", "redis": f"error: {exc}",
                                                      "workers": []})
    ready = bool(workers)
    serving = sum(w.get("state") not in WORKER_STARTING_STATES for w in workers)
    return JSONResponse(
        status_code=200 if ready else 503,
        content={"status": "ready" if ready else "no_workers", "redis": "ok", "serving": serving, "workers": workers},
    )
