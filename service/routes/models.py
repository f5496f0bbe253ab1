"""``/v1/models``: the registered models, their limits, defaults and sparsity presets."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter

from service.deps import RegistryDep, StoreDep
from service.errors import APIError
from service.schemas import ModelList, ModelPublic
from worker.store import JobStore

router = APIRouter(prefix="/v1/models", tags=["models"])


def _workers_per_queue(store: JobStore) -> Counter:
    """Live workers per rq queue (a worker's heartbeat lists the queues it serves)."""
    counts: Counter = Counter()
    for w in store.live_workers():
        queues = w.get("queues") or ([w["queue"]] if w.get("queue") else [])
        counts.update(set(queues))
    return counts


@router.get("", response_model=ModelList, summary="List the served models")
def list_models(registry: RegistryDep, store: StoreDep) -> ModelList:
    per_queue = _workers_per_queue(store)
    return ModelList(data=[ModelPublic.from_entry(m, per_queue[m.queue]) for m in registry.models])


@router.get("/{model_id}", response_model=ModelPublic, summary="Get one model")
def get_model(model_id: str, registry: RegistryDep, store: StoreDep) -> ModelPublic:
    if model_id not in registry.names:
        raise APIError(404, "model_not_found",
                       f"unknown model {model_id!r}; available models: {', '.join(registry.names)}", "model_id")
    entry = registry.get(model_id)
    return ModelPublic.from_entry(entry, _workers_per_queue(store)[entry.queue])
