"""Settings of the API process, read from the environment (prefix ``SVG2_``) once, in the app factory.

The names shared with the worker (``SVG2_REDIS_URL``, ``SVG2_REGISTRY_PATH``, ``SVG2_OUTPUT_DIR``,
``SVG2_RETENTION_S``) must agree between the two processes; the README documents every setting.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the API process is configured with."""

    model_config = SettingsConfigDict(env_prefix="SVG2_", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the job records and rq queues.")
    registry_path: Path | None = Field(
        None, description="Model registry YAML; default: the bundled worker/models.yaml."
    )
    output_dir: Path = Field(Path("var/outputs"), description="Where workers write MP4s (shared with the API).")
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API listens on.")
    max_body_bytes: int = Field(
        16 << 20, ge=1024,
        description="Largest accepted request body (larger: 413); room for an input_reference image, base64 in JSON.")
    max_input_image_bytes: int = Field(
        10 << 20, ge=1024, description="Largest input_reference image file (image-to-video), as uploaded.")
    max_input_image_pixels: int = Field(
        40_000_000, ge=256, description="Most pixels of an input_reference image (checked before it is decoded).")
    retention_s: int = Field(24 * 3600, ge=1, description="How long a finished video's MP4 is kept.")
    job_timeout_s: int = Field(4 * 3600, ge=1, description="rq timeout of one video job.")
    maintenance_interval_s: float = Field(
        10.0, ge=0.0,
        description="How often the API re-queues (or fails) jobs whose worker died and deletes expired "
        "MP4s and records (0: never).",
    )
    list_max_limit: int = Field(100, ge=1, description="Largest `limit` of GET /v1/videos.")
    auth_disabled: bool = Field(
        False, description="Serve without API keys (everyone is one anonymous admin): local development only.")
    rate_limit_rps: int = Field(50, ge=0, description="Requests per second per API key (429 above; 0: no limit).")
    max_queued_per_key: int = Field(100, ge=1, description="Jobs one API key may have queued at once (429 above).")
    max_queued_total: int = Field(2000, ge=1, description="Jobs queued at once over all keys (429 above).")
    idempotency_ttl_s: int = Field(24 * 3600, ge=1, description="How long an Idempotency-Key is remembered.")
    record_grace_s: float = Field(
        24 * 3600, ge=0.0, description="How long a job record outlives its MP4 (deleted at expires_at + this).")
    max_attempts: int = Field(
        3, ge=1, description="Starts a job may have: a job whose worker died is re-queued until this many.")
    log_level: str = Field("info", description="uvicorn log level.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes of svg2-api (each builds its own app).")
