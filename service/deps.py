"""Dependencies the routes declare with ``Annotated[..., Depends()]``.

The app factory builds one :class:`AppContext` (settings, Redis client, job store, registry, metrics) and keeps
it on ``app.state.svg2``; nothing is created at import time, so tests can build apps with their own
settings side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis
import redis.asyncio
from fastapi import Depends, Request

from service.auth import KeyStore
from service.config import Settings
from service.metrics import ApiMetrics
from worker.registry import Registry
from worker.store import JobStore


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    registry: Registry
    metrics: ApiMetrics
    keys: KeyStore
    aredis: redis.asyncio.Redis  # the hot paths (key lookup, job polling) without threadpool hops


# async: they only read attributes, and a sync dependency would cost a threadpool hop per request.
async def get_context(request: Request) -> AppContext:
    return request.app.state.svg2


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_settings(ctx: ContextDep) -> Settings:
    return ctx.settings


async def get_store(ctx: ContextDep) -> JobStore:
    return ctx.store


async def get_registry(ctx: ContextDep) -> Registry:
    return ctx.registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
