"""Wire formats of the API (OpenAI video-API shaped), separate from the internal job record.

``VideoCreate`` is what clients send; :meth:`VideoCreate.to_job_spec` resolves it against the model
registry. ``VideoPublic`` is what every video endpoint returns.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.registry import ModelEntry, Registry, build_job_spec
from worker.spec import InputImage, JobSpec, SparsitySettings
from worker.store import JobRecord


class VideoCreate(BaseModel):
    """Body of ``POST /v1/videos`` (JSON or multipart/form-data). Anything left out takes the model's
    default; ``seconds`` and ``num_frames`` are alternatives, as are ``size`` and ``width``/``height``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., description="What the video shows.")
    model: str | None = Field(None, description="A model from GET /v1/models (default: the registry's default).")
    seconds: float | str | None = Field(None, description="Duration; converted to the nearest 4k+1 frame count.")
    num_frames: int | None = Field(None, description="Frame count, of the form 4k+1.")
    size: str | None = Field(None, description="'WIDTHxHEIGHT', e.g. '832x480'.")
    width: int | None = None
    height: int | None = None
    fps: int | None = None
    seed: int | None = Field(None, description="Random seed (default: drawn at random and returned).")
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    sparsity: str | dict[str, Any] | None = Field(
        None,
        description="Sparse-attention budget: a preset name (dense, quality, balanced, fast) or an object "
        "of fields (preset, mode, top_p, min_density, max_density, target_density, num_q_clusters, "
        "num_k_clusters, kmeans_iters_init, kmeans_iters, kmeans_candidates, kmeans_subsample, query_tile_rebalance, "
        "query_tail_union, dense_warmup_fraction, dense_warmup_steps, dense_layers).",
    )

    @field_validator("seconds", mode="before")
    @classmethod
    def _seconds_scalar(cls, value: object) -> object:
        # Checked here so a wrong type reads "seconds: ..." rather than naming a union member.
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float | str)):
            raise ValueError("must be a number or a numeric string")
        return value

    @field_validator("sparsity", mode="before")
    @classmethod
    def _sparsity_shape(cls, value: object) -> object:
        if value is not None and not isinstance(value, str | dict):
            raise ValueError("must be a preset name or an object of budget fields")
        return value

    def to_job_spec(self, registry: Registry, input_image: InputImage | None = None) -> tuple[JobSpec, ModelEntry]:
        """Resolve against the registry (raises ``SpecError`` naming the field); ``input_image``: the request's
        ``input_reference``, decoded (worker/images.py)."""
        return build_job_spec(registry, **self.model_dump(), input_image=input_image)


class ErrorDetail(BaseModel):
    code: str = Field(..., description="Machine-readable code, e.g. invalid_value, rate_limit_exceeded.")
    message: str
    param: str | None = Field(..., description="The field at fault, e.g. sparsity.top_p.")
    type: str = Field(..., description="invalid_request_error, authentication_error, rate_limit_error or "
                      "server_error.")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


#: Documented on every route (the one error shape; 429 and 503 carry Retry-After).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in {
        400: "Invalid request (the field is named in error.param).",
        401: "Missing, unknown or revoked API key.",
        404: "Unknown route or video (another key's video reads as unknown).",
        405: "Method not allowed.",
        409: "Conflict (video not completed; Idempotency-Key reused).",
        410: "The MP4 was deleted or has expired.",
        413: "Request body too large.",
        415: "Unsupported content type.",
        429: "Rate limit or queue cap reached; see Retry-After.",
        503: "The job store (Redis) is unavailable; see Retry-After.",
    }.items()
}


class VideoErrorPublic(BaseModel):
    code: str
    message: str


class VideoPublic(BaseModel):
    """A video job as clients see it."""

    id: str
    object: Literal["video"] = "video"
    status: Literal["queued", "in_progress", "completed", "failed", "cancelled"]
    progress: int = Field(..., ge=0, le=100, description="Percent of denoising steps done.")
    created_at: int
    started_at: int | None
    completed_at: int | None = Field(..., description="When the job finished (completed, failed or cancelled).")
    expires_at: int | None = Field(..., description="When the MP4 is deleted.")
    model: str
    prompt: str
    negative_prompt: str
    size: str = Field(..., description="'WIDTHxHEIGHT'.")
    seconds: str = Field(..., description="Duration in seconds, num_frames / fps (a string, as in OpenAI's API).")
    width: int
    height: int
    num_frames: int
    fps: int
    seed: int
    num_inference_steps: int
    guidance_scale: float
    sparsity: SparsitySettings
    input_reference: InputImage | None = Field(
        None, description="Image-to-video: the first frame as stored (its SHA-256, size and uploaded format).")
    cancel_requested: bool
    error: VideoErrorPublic | None
    metrics: dict[str, Any] = Field(..., description="queue_wait_seconds, run_seconds, step_seconds, ...")

    @classmethod
    def from_record(cls, rec: JobRecord) -> VideoPublic:
        s = rec.spec
        return cls(
            id=rec.id,
            status=rec.status,
            progress=int(math.floor(rec.progress)),
            created_at=int(rec.created_at),
            started_at=_int_or_none(rec.started_at),
            completed_at=_int_or_none(rec.completed_at),
            expires_at=_int_or_none(rec.expires_at),
            model=s.model,
            prompt=s.prompt,
            negative_prompt=s.negative_prompt,
            size=s.size,
            seconds=f"{s.seconds:g}",
            width=s.width,
            height=s.height,
            num_frames=s.num_frames,
            fps=s.fps,
            seed=s.seed,
            num_inference_steps=s.num_inference_steps,
            guidance_scale=s.guidance_scale,
            sparsity=s.sparsity,
            input_reference=s.input_image,
            cancel_requested=rec.cancel_requested,
            error=VideoErrorPublic(**rec.error.model_dump()) if rec.error else None,
            metrics=rec.metrics,
        )


class VideoDeletedPublic(VideoPublic):
    """Answer of ``DELETE``: the job after the cancel, plus OpenAI's ``deleted`` flag."""

    deleted: bool = True


def _int_or_none(t: float | None) -> int | None:
    return None if t is None else int(t)


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoPublic]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "svg2"
    description: str
    kind: str
    task: str = Field(..., description="t2v: text-to-video; i2v: image-to-video (requests need input_reference); "
                      "ti2v: either (input_reference optional).")
    pipeline_class: str
    queue: str
    limits: dict[str, Any]
    defaults: dict[str, Any]
    default_preset: str
    presets: dict[str, SparsitySettings]
    live_workers: int

    @classmethod
    def from_entry(cls, entry: ModelEntry, live_workers: int) -> ModelPublic:
        return cls(
            id=entry.name,
            description=entry.description.strip(),
            kind=entry.kind,
            task=entry.task,
            pipeline_class=entry.pipeline_class,
            queue=entry.queue,
            limits=entry.limits.model_dump(),
            defaults=entry.defaults.model_dump(),
            default_preset=entry.default_preset,
            presets=entry.resolved_presets(),
            live_workers=live_workers,
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]
