"""Settings of a worker process, read from the environment (prefix ``SVG2_``) once, at start.

The names shared with the API (``SVG2_REDIS_URL``, ``SVG2_REGISTRY_PATH``, ``SVG2_OUTPUT_DIR``,
``SVG2_RETENTION_S``) must agree between the two processes (see ``service/config.py``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.store import DEFAULT_RETENTION_S, WORKER_NAME_RE


def default_worker_name() -> str:
    """``<host>-<pid>``: unique among live workers (rq refuses two live workers with one name)."""
    host = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())[:80] or "host"
    return f"{host}-{os.getpid()}"


class WorkerSettings(BaseSettings):
    """Everything a worker process is configured with."""

    model_config = SettingsConfigDict(env_prefix="SVG2_", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the job records and rq queues.")
    registry_path: Path | None = Field(None, description="Model registry YAML; default: the bundled worker/models.yaml.")
    output_dir: Path = Field(Path("var/outputs"), description="Where MP4s are written (shared with the API).")
    retention_s: int = Field(DEFAULT_RETENTION_S, ge=1, description="How long a finished video's MP4 is kept.")
    model: str | None = Field(
        None, description="Registry name of the model this worker serves; default: the registry's default_model."
    )
    device: str | None = Field(None, description="Torch device for the model; default: the registry entry's device.")
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="rq queues to serve, comma-separated; default: the model's queue from the registry.",
    )
    worker_name: str = Field(default_factory=default_worker_name, description="Name in rq and in heartbeats.")
    heartbeat_interval_s: float = Field(5.0, gt=0.0, description="Seconds between liveness heartbeats.")
    heartbeat_ttl_s: float = Field(30.0, gt=0.0, description="A heartbeat older than this means the worker is gone.")
    log_level: str = Field("INFO", description="Python logging level of the worker.")
    max_attempts: int = Field(
        3, ge=1, description="Starts a job may have; a job stopped mid-run is re-queued until this many.")
    warmup: Literal["auto", "none", "default", "all"] = Field(
        "auto",
        description="Warm-up jobs at start, before serving (worker/warmup.py): 'all' (a dense job and every sparse "
        "preset at the model's default shape, so no user's first job of a preset pays the compilation), "
        "'default' (the dense job and the default preset), 'none', or 'auto' ('all' on a CUDA device, else "
        "'none').")
    shutdown_grace_s: float = Field(
        90.0, ge=0.0,
        description="After SIGTERM, how long the running job may go on before it is stopped and re-queued "
        "(0: wait for it however long it takes).")

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, value: object) -> object:
        if isinstance(value, str):
            return [q.strip() for q in value.split(",") if q.strip()]
        return value

    @field_validator("worker_name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not WORKER_NAME_RE.fullmatch(value):
            raise ValueError("must be 1-128 characters of letters, digits and _.:@-")
        return value

    @model_validator(mode="after")
    def _ttl_covers_interval(self) -> WorkerSettings:
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"heartbeat_ttl_s must exceed heartbeat_interval_s "
                f"({self.heartbeat_ttl_s} <= {self.heartbeat_interval_s}), or a live worker looks dead"
            )
        return self
