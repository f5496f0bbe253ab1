"""The model registry: which models this deployment serves, where their weights are, their limits.

Torch-free (the API reads it to validate requests). A registry is a YAML file (the bundled default
is ``worker/models.yaml``; point ``SVG2_REGISTRY_PATH`` at another one)::

    default_model: tiny
    models:
      - name: wan2.1-t2v-1.3b
        kind: diffusers                 # "tiny-wan": built-in random-init Wan; "diffusers": real weights
        pipeline_class: WanPipeline
        path: /models/Wan2.1-T2V-1.3B-Diffusers   # local dir or HF cache id, loaded offline
        device: cuda
        dtype: bfloat16
        queue: wan-1.3b
        limits: {max_width: 832, max_height: 832, max_frames: 81, max_steps: 100}
        defaults: {width: 832, height: 480, num_frames: 81, fps: 16, num_inference_steps: 50,
                   guidance_scale: 5.0}
        presets: {balanced: {num_q_clusters: 100}}    # per-model overrides of DEFAULT_PRESETS
        default_preset: balanced

:func:`build_job_spec` turns a request's fields into a fully resolved :class:`JobSpec`, filling the
model's defaults and enforcing its limits; every rule it enforces raises :class:`SpecError` naming
the field.
"""

from __future__ import annotations

import math
import secrets
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.spec import DEFAULT_PRESETS, InputImage, JobSpec, SparsitySettings, resolve_sparsity

DEFAULT_REGISTRY_PATH = Path(__file__).with_name("models.yaml")
MAX_SEED = 2**63 - 1

#: Values of the registry option ``options.compile`` (worker/pipelines/loading.py): ``regional``
#: torch.compiles the transformers' repeated blocks once at load; ``none`` runs them eager.
COMPILE_MODES = ("regional", "none")


class SpecError(ValueError):
    """A request field breaks a rule. ``param`` is the field path (``"size"``, ``"sparsity.top_p"``)."""

    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message
        self.code = code


class ModelLimits(BaseModel):
    """What a model accepts. Sizes are multiples of ``size_multiple``; frame counts are
    ``frame_step * k + 1``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_width: int = Field(16, ge=1)
    max_width: int = Field(..., ge=1)
    min_height: int = Field(16, ge=1)
    max_height: int = Field(..., ge=1)
    size_multiple: int = Field(16, ge=1)
    min_frames: int = Field(1, ge=1)
    max_frames: int = Field(..., ge=1)
    frame_step: int = Field(4, ge=1)
    min_fps: int = Field(1, ge=1)
    max_fps: int = Field(60, ge=1)
    min_steps: int = Field(1, ge=1)
    max_steps: int = Field(100, ge=1)
    min_guidance: float = 0.0
    max_guidance: float = 20.0
    max_prompt_chars: int = Field(2000, ge=1)


class ModelDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int
    height: int
    num_frames: int
    fps: int
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str = ""


class ModelEntry(BaseModel):
    """One servable model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    kind: Literal["tiny-wan", "diffusers"]
    task: Literal["t2v", "i2v", "ti2v"] = Field(
        "t2v", description="t2v: text-to-video, requests carry no image. i2v: image-to-video, every request carries "
        "its first frame (input_reference); the pipeline class takes an image (WanImageToVideoPipeline). ti2v: "
        "either (Wan 2.2 TI2V 5B): the pipeline class is the text-to-video one, and a request with an image runs "
        "the same weights through WanImageToVideoPipeline.")
    pipeline_class: str = "WanPipeline"
    path: str | None = Field(None, description="Local directory or HF cache id (diffusers kind).")
    device: str = "cuda"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    queue: str = Field(..., pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    limits: ModelLimits
    defaults: ModelDefaults
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    default_preset: str = "balanced"
    options: dict[str, Any] = Field(
        default_factory=dict, description="Pipeline-specific settings for the worker (e.g. flow_shift)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        if self.kind == "diffusers" and not self.path:
            raise ValueError(f"model {self.name}: a diffusers model needs a path")
        presets = self.effective_presets()
        if self.default_preset not in presets:
            raise ValueError(f"model {self.name}: default_preset {self.default_preset!r} is not a preset")
        for preset in presets:
            resolve_sparsity(preset, presets)  # every preset must validate
        self._check_options()
        # The defaults must themselves pass the limits (a bad registry fails at load, not per request).
        d = self.defaults
        try:
            check_size(self.limits, d.width, d.height, "defaults.size")
            check_frames(self.limits, d.num_frames, "defaults.num_frames")
            check_range("defaults.fps", d.fps, self.limits.min_fps, self.limits.max_fps)
            check_range("defaults.num_inference_steps", d.num_inference_steps, self.limits.min_steps,
                        self.limits.max_steps)
            check_range("defaults.guidance_scale", d.guidance_scale, self.limits.min_guidance,
                        self.limits.max_guidance)
        except SpecError as exc:
            raise ValueError(f"model {self.name}: {exc}") from exc
        return self

    def _check_options(self) -> None:
        """The worker options whose values are known here (torch-free): a bad value fails at registry
        load, naming the model and the field, not when a worker loads the weights."""
        mode = self.options.get("compile", "none")
        if not isinstance(mode, str) or mode not in COMPILE_MODES:
            raise ValueError(f"model {self.name}: options.compile must be one of {', '.join(COMPILE_MODES)}, "
                             f"got {mode!r}")
        beside = self.options.get("svg2_value_beside_selection", False)
        if not isinstance(beside, bool):
            raise ValueError(f"model {self.name}: options.svg2_value_beside_selection must be true or false, "
                             f"got {beside!r}")
        backend = self.options.get("compile_backend", "inductor")
        if not isinstance(backend, str) or not backend:
            # Which backends exist is torch's to say (checked at load, worker/pipelines/loading.py).
            raise ValueError(f"model {self.name}: options.compile_backend must be the name of a torch.compile "
                             f"backend, got {backend!r}")

    def effective_presets(self) -> dict[str, dict[str, Any]]:
        """``DEFAULT_PRESETS`` with this model's per-preset overrides merged in (and its extra presets)."""
        names = list(DEFAULT_PRESETS) + [n for n in self.presets if n not in DEFAULT_PRESETS]
        return {n: {**DEFAULT_PRESETS.get(n, {}), **self.presets.get(n, {})} for n in names}

    def resolved_presets(self) -> dict[str, SparsitySettings]:
        """Every preset of this model, resolved."""
        presets = self.effective_presets()
        return {n: resolve_sparsity(n, presets) for n in presets}


class Registry(BaseModel):
    """The models of one deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_model: str
    models: list[ModelEntry]

    @model_validator(mode="after")
    def _unique(self) -> Registry:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in {names}")
        if self.default_model not in names:
            raise ValueError(f"default_model {self.default_model!r} is not one of {names}")
        return self

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str | None) -> ModelEntry:
        """The entry called ``name`` (the default model for None); :class:`SpecError` listing the
        models otherwise."""
        name = self.default_model if name is None else name
        for m in self.models:
            if m.name == name:
                return m
        raise SpecError("model", f"unknown model {name!r}; available models: {', '.join(self.names)}",
                        code="model_not_found")


def load_registry(path: str | Path | None = None) -> Registry:
    """Read and validate a registry file (the bundled ``worker/models.yaml`` when ``path`` is None).

    Raises ``ValueError`` naming the file and the problem.
    """
    path = Path(path) if path is not None else DEFAULT_REGISTRY_PATH
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read model registry {path}: {exc}") from exc
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid model registry {path}: {exc}") from exc


# --------------------------------------------------------------------------------- request rules


def check_range(param: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise SpecError(param, f"must be between {lo} and {hi} for this model, got {value}")


def check_size(limits: ModelLimits, width: int, height: int, param: str = "size") -> None:
    m = limits.size_multiple
    if width % m or height % m:
        raise SpecError(param, f"width and height must be multiples of {m}, got {width}x{height}")
    if not limits.min_width <= width <= limits.max_width:
        raise SpecError(param, f"width must be between {limits.min_width} and {limits.max_width}, got {width}")
    if not limits.min_height <= height <= limits.max_height:
        raise SpecError(param, f"height must be between {limits.min_height} and {limits.max_height}, got {height}")


def check_frames(limits: ModelLimits, num_frames: int, param: str = "num_frames") -> None:
    s = limits.frame_step
    if (num_frames - 1) % s:
        raise SpecError(param, f"must be of the form {s}k+1 (e.g. {s * 4 + 1}), got {num_frames}")
    if not limits.min_frames <= num_frames <= limits.max_frames:
        raise SpecError(param, f"must be between {limits.min_frames} and {limits.max_frames} for this model, "
                               f"got {num_frames}")


def parse_size(size: str) -> tuple[int, int]:
    """``"832x480"`` -> (832, 480)."""
    parts = size.lower().split("x") if isinstance(size, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SpecError("size", f"must look like 'WIDTHxHEIGHT' (e.g. '832x480'), got {size!r}")
    return int(parts[0]), int(parts[1])


def frames_for_seconds(seconds: float, fps: int, frame_step: int) -> int:
    """The ``frame_step * k + 1`` frame count closest to ``seconds * fps`` (at least 1)."""
    k = max(0, round((seconds * fps - 1) / frame_step))
    return frame_step * k + 1


def build_job_spec(
    registry: Registry,
    *,
    prompt: str,
    model: str | None = None,
    negative_prompt: str | None = None,
    size: str | None = None,
    width: int | None = None,
    height: int | None = None,
    seconds: float | str | None = None,
    num_frames: int | None = None,
    fps: int | None = None,
    seed: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    sparsity: str | dict | None = None,
    input_image: InputImage | None = None,
) -> tuple[JobSpec, ModelEntry]:
    """Resolve a request against ``registry``: fill the model's defaults, enforce its limits.

    Returns the spec and the model entry (whose ``queue`` the job goes to). Raises
    :class:`SpecError` naming the first field that breaks a rule.
    """
    entry = registry.get(model)
    lim, dft = entry.limits, entry.defaults
    if entry.task == "t2v" and input_image is not None:
        raise SpecError("input_reference", f"model {entry.name!r} is text-to-video and takes no input image; "
                                           "use an image-to-video model (GET /v1/models: task i2v or ti2v)")
    if entry.task == "i2v" and input_image is None:
        raise SpecError("input_reference", f"required: model {entry.name!r} is image-to-video; send the first "
                                           "frame as input_reference (a PNG, JPEG or WebP image)")

    if not isinstance(prompt, str) or not prompt.strip():
        raise SpecError("prompt", "must be a non-empty string")
    if len(prompt) > lim.max_prompt_chars:
        raise SpecError("prompt", f"must be at most {lim.max_prompt_chars} characters, got {len(prompt)}")
    if negative_prompt is not None and len(negative_prompt) > lim.max_prompt_chars:
        raise SpecError("negative_prompt", f"must be at most {lim.max_prompt_chars} characters, "
                                           f"got {len(negative_prompt)}")

    if size is not None and (width is not None or height is not None):
        raise SpecError("size", "give either size or width/height, not both")
    if size is not None:
        width, height = parse_size(size)
        check_size(lim, width, height, "size")
    else:
        width = dft.width if width is None else width
        height = dft.height if height is None else height
        param = "width" if width % lim.size_multiple or not lim.min_width <= width <= lim.max_width else "height"
        check_size(lim, width, height, param)

    fps = dft.fps if fps is None else fps
    check_range("fps", fps, lim.min_fps, lim.max_fps)

    if seconds is not None and num_frames is not None:
        raise SpecError("seconds", "give either seconds or num_frames, not both")
    if seconds is not None:
        try:
            secs = float(seconds)
        except (TypeError, ValueError):
            raise SpecError("seconds", f"must be a number of seconds, got {seconds!r}") from None
        if not math.isfinite(secs) or secs <= 0:
            raise SpecError("seconds", f"must be a positive number of seconds, got {seconds!r}")
        max_s = lim.max_frames / fps
        # Compare before rounding: an absurd duration must not overflow the frame arithmetic.
        num_frames = frames_for_seconds(min(secs, 2 * max_s), fps, lim.frame_step)
        if secs > 2 * max_s or num_frames > lim.max_frames or num_frames < lim.min_frames:
            raise SpecError("seconds", f"{secs:g} s at {fps} fps is {secs * fps:.0f} frames; this model allows "
                                       f"{lim.min_frames}-{lim.max_frames} frames (at most {max_s:g} s)")
    else:
        num_frames = dft.num_frames if num_frames is None else num_frames
        check_frames(lim, num_frames, "num_frames")

    steps = dft.num_inference_steps if num_inference_steps is None else num_inference_steps
    check_range("num_inference_steps", steps, lim.min_steps, lim.max_steps)
    guidance = dft.guidance_scale if guidance_scale is None else guidance_scale
    if not math.isfinite(guidance):
        raise SpecError("guidance_scale", "must be a finite number")
    check_range("guidance_scale", guidance, lim.min_guidance, lim.max_guidance)

    if seed is None:
        seed = secrets.randbelow(2**31)
    elif not 0 <= seed <= MAX_SEED:
        raise SpecError("seed", f"must be between 0 and {MAX_SEED}, got {seed}")

    settings = resolve_request_sparsity(entry, sparsity)
    spec = JobSpec(
        prompt=prompt,
        negative_prompt=dft.negative_prompt if negative_prompt is None else negative_prompt,
        model=entry.name,
        width=width,
        height=height,
        num_frames=num_frames,
        fps=fps,
        seed=seed,
        num_inference_steps=steps,
        guidance_scale=guidance,
        sparsity=settings,
        input_image=input_image,
    )
    return spec, entry


def resolve_request_sparsity(entry: ModelEntry, sparsity: str | dict | None) -> SparsitySettings:
    """A request's ``sparsity`` (preset name, object of fields, or None) resolved with the model's
    presets; :class:`SpecError` with ``param`` = ``sparsity`` / ``sparsity.<field>``."""
    if isinstance(sparsity, dict) and "preset" not in sparsity:
        # Explicit fields refine the model's default budget (its cluster counts etc.).
        sparsity = {"preset": entry.default_preset, **sparsity}
    if isinstance(sparsity, dict) and not isinstance(sparsity.get("preset"), str | None):
        raise SpecError("sparsity.preset", "must be a preset name")
    try:
        return resolve_sparsity(sparsity, entry.effective_presets(), entry.default_preset)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if not loc:  # a cross-field rule ("field[, field]: rule", svg2core's config_errors): name its first field
            first = msg.partition(": ")[0].split(", ")[0]
            loc = first if first in SparsitySettings.model_fields else ""
        param = f"sparsity.{loc}" if loc else "sparsity"
        if err.get("type") == "extra_forbidden":
            raise SpecError(param, "unknown field", code="unknown_parameter") from None
        raise SpecError(param, msg) from None
    except ValueError as exc:
        msg = str(exc)
        param, _, rule = msg.partition(": ")
        if not param.startswith("sparsity"):
            param, rule = "sparsity", msg
        raise SpecError(param, rule) from None
