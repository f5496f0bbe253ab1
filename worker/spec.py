"""The job contract shared by the API (service/) and the GPU workers (worker/).

Torch-free on purpose: the API process imports it to validate and store requests, the worker reads
the stored JSON back into the same models. A :class:`JobSpec` is fully resolved: every default has
been filled in from the model registry and the sparsity preset, so a worker never has to guess.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from svg2core.config import config_errors

PRESET_NAMES: tuple[str, ...] = ("dense", "quality", "balanced", "fast")


class SparsitySettings(BaseModel):
    """A resolved per-request sparse-attention budget (maps onto ``svg2core.SVG2Config`` plus the
    dense warm-up schedule that the pipeline integration applies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = Field(None, description="Preset the settings started from, if any.")
    mode: Literal["top_p", "fixed_density", "dense"] = "top_p"
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    min_density: float = Field(0.0, ge=0.0, le=1.0)
    max_density: float = Field(1.0, gt=0.0, le=1.0)
    target_density: float = Field(0.25, gt=0.0, le=1.0, description="fixed_density mode only")
    num_q_clusters: int = Field(100, ge=1, le=4096)
    num_k_clusters: int = Field(500, ge=1, le=8192)
    kmeans_iters_init: int = Field(50, ge=1, le=1000)
    kmeans_iters: int = Field(2, ge=0, le=1000)
    kmeans_candidates: int = Field(
        0, ge=0, le=8192, description="0: every warm k-means assign compares each token with all centroids; m: the "
        "second and later assigns of a warm call only with the m nearest its current cluster's (clusterings of at "
        "least 8 m clusters)."
    )
    kmeans_subsample: int = Field(
        1, ge=1, le=64, description="1: every k-means iteration uses every video token. s: every iteration of a "
        "warm call but its last uses every s-th token only; the last uses all, so the clusters are still every "
        "token's. A layer's cold first call of a job uses every token."
    )
    query_tile_rebalance: int = Field(
        0, ge=0, le=64, description="0: the query clusters are the k-means'. rho: a query cluster whose last 128-row "
        "tile (or half tile) holds at most rho rows beyond the tile below gives them to the nearest clusters with "
        "room, so the attention kernel runs fewer partly empty tiles."
    )
    query_tail_union: bool = Field(
        False, strict=True, description="true: pairs of query clusters' last, partly filled 128-row tiles share one "
        "tile over the union of their key lists where that is cheaper; their rows attend to more keys (counted in "
        "the density). Not with query_tile_rebalance."
    )
    dense_warmup_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="Fraction of the first denoising steps that run dense."
    )
    dense_warmup_steps: int | None = Field(
        None, ge=0, le=1000, description="If set, overrides dense_warmup_fraction with a step count."
    )
    dense_layers: int = Field(1, ge=0, le=1000, description="The first N transformer blocks always run dense.")

    @model_validator(mode="after")
    def _cross_field_rules(self) -> SparsitySettings:
        # the fields carry their own ranges; svg2core's rules between fields (min <= max density, one way of
        # filling the query tiles' tails) are the library's, checked on these same field names
        errors = config_errors(self)
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def warmup_steps(self, num_inference_steps: int) -> int:
        """How many of the first denoising steps run dense."""
        if self.mode == "dense":
            return num_inference_steps
        if self.dense_warmup_steps is not None:
            return min(self.dense_warmup_steps, num_inference_steps)
        return min(num_inference_steps, round(self.dense_warmup_fraction * num_inference_steps))


#: Built-in presets, from the public Sparse VideoGen2 settings (see docs). The model registry may
#: override any field per model. ``quality`` keeps more probability mass and a longer dense warm-up;
#: ``fast`` trades fidelity for speed with a lower p and a density cap.
DEFAULT_PRESETS: dict[str, dict] = {
    "dense": {"mode": "dense"},
    "quality": {
        "mode": "top_p", "top_p": 0.95, "num_q_clusters": 100, "num_k_clusters": 500,
        "dense_warmup_fraction": 0.3, "dense_layers": 1,
    },
    "balanced": {
        "mode": "top_p", "top_p": 0.9, "num_q_clusters": 100, "num_k_clusters": 500,
        "dense_warmup_fraction": 0.2, "dense_layers": 1,
        # a layer's cold first call: 20 iterations instead of the public 50, nearly the same clusters for 40% of the
        # cost (Wan 14B 720p: the job's cold calls 11.7 s -> 4.4 s on an H100; docs/presets.md)
        "kmeans_iters_init": 20,
        # a warm call's first k-means iteration on every 2nd token (the cold call on all): +0.3-0.6% attention error
        # along a simulated denoising run, the 25% Wan 14B step 1.95-1.96x -> 1.98-1.99x and the 480p selection
        # 6% -> 5% of dense attention on an H100 (docs/presets.md)
        "kmeans_subsample": 2,
    },
    "fast": {
        "mode": "top_p", "top_p": 0.8, "max_density": 0.3, "num_q_clusters": 100, "num_k_clusters": 500,
        "dense_warmup_fraction": 0.12, "dense_layers": 1, "kmeans_iters_init": 10,
        # a warm call's first k-means iteration on every 2nd token: the 480p step 4% faster on an H100 (docs/presets.md)
        "kmeans_subsample": 2,
    },
}


def resolve_sparsity(
    request: str | dict | None,
    presets: dict[str, dict] | None = None,
    default_preset: str = "balanced",
) -> SparsitySettings:
    """Turn a request's ``sparsity`` value into resolved settings.

    ``request`` is a preset name, a dict of explicit fields (optionally with ``"preset"`` as the
    starting point), or ``None`` for the model's default preset. Raises ``ValueError`` (unknown
    preset) or ``pydantic.ValidationError`` (a field breaks its rule); both name the field.
    """
    presets = {**DEFAULT_PRESETS, **(presets or {})}
    if request is None:
        request = default_preset
    if isinstance(request, str):
        request = {"preset": request}
    if not isinstance(request, dict):
        raise ValueError("sparsity: must be a preset name or an object of budget fields")
    name = request.get("preset")
    base: dict = {}
    if name is not None:
        if name not in presets:
            raise ValueError(f"sparsity.preset: unknown preset {name!r}; known presets: {', '.join(sorted(presets))}")
        base = dict(presets[name])
    overrides = {k: v for k, v in request.items() if k != "preset"}
    # Explicit fields without a mode mean a sparse budget, not whatever mode the preset had.
    if name == "dense" and overrides and "mode" not in overrides:
        base.pop("mode", None)
    # Rebalancing asked for on a preset that runs the tail union (the two fill the same tails): the request's
    # choice wins, unless it asks for both
    if overrides.get("query_tile_rebalance") and "query_tail_union" not in overrides:
        base.pop("query_tail_union", None)
    return SparsitySettings(**{**base, **overrides, "preset": name})


class InputImage(BaseModel):
    """The first frame of an image-to-video job (the request's ``input_reference``), as the API stored it: an RGB
    PNG beside the job's MP4 (``JobStore.input_path``), identified by its SHA-256 (worker/images.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the stored PNG.")
    width: int = Field(..., ge=1)
    height: int = Field(..., ge=1)
    source_format: str = Field(..., description="The uploaded format: png, jpeg or webp.")


class JobSpec(BaseModel):
    """A fully resolved generation job, as stored in Redis and run by a worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    negative_prompt: str = ""
    model: str
    width: int
    height: int
    num_frames: int
    fps: int
    seed: int
    num_inference_steps: int
    guidance_scale: float
    sparsity: SparsitySettings
    #: image-to-video: the first frame (None: text-to-video)
    input_image: InputImage | None = None

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps
