"""Run one :class:`~worker.spec.JobSpec` on a loaded diffusers video pipeline.

The pipeline object is long-lived and shared by every job of a worker; everything that belongs to
one request (generator, step timer, callbacks, hooks) is created here per call and removed before
returning, so nothing of one job can leak into the next.

Per denoising step, through diffusers' ``callback_on_step_end``, the runner reports progress and
asks whether the job was cancelled; a cancel raises :class:`JobCancelled` out of the pipeline call
(instead of ``pipe._interrupt``, which would still decode the VAE for a result nobody wants).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from svg2core.integration import find_svg2, svg2_session
from worker.images import fit_to_size
from worker.spec import JobSpec

#: ``on_step(step, total_steps, step_seconds)``, ``step`` 1-based, called after every denoising step.
StepCallback = Callable[[int, int, float], None]


class JobCancelled(Exception):
    """Raised between denoising steps when the job's cancel was requested."""


class InvalidJobInput(ValueError):
    """The spec cannot run on this pipeline (the message names the field and the rule)."""


@dataclass
class GenerationResult:
    """Frames of one clip plus the metrics of producing them.

    ``metrics`` keys (all seconds are wall time, CUDA-synchronised on GPU):
    ``encode_seconds`` (prompt encoding and latent setup, up to the first transformer call),
    ``step_seconds`` (list, one per denoising step), ``denoise_seconds`` (their sum),
    ``decode_seconds`` (VAE decode and post-processing), ``frames``, ``width``, ``height``,
    ``attention`` (``"svg2"`` when svg2 is applied to the pipeline and the budget is sparse, else
    ``"dense"``) and ``sparsity`` (the svg2 session's accounting, ``SVG2Session.metrics()``: call
    counts, densities, FLOPs, attention times; ``None`` when svg2 is not applied to the pipeline).
    A run without decoding (``generate(..., decode=False)``) has no frames and no ``frames`` / ``width`` /
    ``height``.
    """

    frames: np.ndarray | None  # (F, H, W, 3) float32 in [0, 1]; None when not decoded
    metrics: dict = field(default_factory=dict)


def spatial_and_temporal_multiples(pipe) -> tuple[int, int]:
    """(pixel multiple of width/height, temporal factor) of a Wan- or HunyuanVideo-style pipeline."""
    spatial = int(getattr(pipe, "vae_scale_factor_spatial", 8))
    temporal = int(getattr(pipe, "vae_scale_factor_temporal", 4))
    patch = getattr(denoisers(pipe)[0].config, "patch_size", 1)
    patch_hw = int(patch[-1]) if isinstance(patch, (list, tuple)) else int(patch)
    return spatial * patch_hw, temporal


def validate_spec_for_pipeline(pipe, spec: JobSpec) -> None:
    """Reject shapes the pipeline would silently round (the MP4 must have exactly what was asked)."""
    multiple, temporal = spatial_and_temporal_multiples(pipe)
    problems = []
    if spec.width % multiple:
        problems.append(f"width: must be a multiple of {multiple} for model {spec.model!r}, got {spec.width}")
    if spec.height % multiple:
        problems.append(f"height: must be a multiple of {multiple} for model {spec.model!r}, got {spec.height}")
    if spec.num_frames < 1 or (spec.num_frames - 1) % temporal:
        problems.append(
            f"num_frames: must be {temporal}k+1 (e.g. {4 * temporal + 1}) for model {spec.model!r}, "
            f"got {spec.num_frames}"
        )
    if problems:
        raise InvalidJobInput("; ".join(problems))


class _StepTimer:
    """Marks the start of each denoising step (first transformer call after the previous step's
    callback) so per-step times exclude prompt encoding before step 0."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.call_start = time.perf_counter()
        self.first_step_start: float | None = None
        self.step_start: float | None = None
        self.last_step_end: float | None = None

    def transformer_pre_hook(self, module, args) -> None:
        if self.step_start is None:
            self.sync()
            self.step_start = time.perf_counter()
            if self.first_step_start is None:
                self.first_step_start = self.step_start

    def end_step(self) -> float:
        self.sync()
        now = time.perf_counter()
        start = self.step_start if self.step_start is not None else (self.last_step_end or self.call_start)
        self.step_start = None
        self.last_step_end = now
        return now - start


def _sync_fn(pipe) -> Callable[[], None]:
    device = getattr(pipe, "_execution_device", torch.device("cpu"))
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def named_denoisers(pipe) -> dict[str, torch.nn.Module]:
    """The pipeline's transformers by attribute: ``transformer``, and ``transformer_2`` of the Wan 2.2 two-expert
    pipelines."""
    return {name: m for name in ("transformer", "transformer_2") if (m := getattr(pipe, name, None)) is not None}


def denoisers(pipe) -> list[torch.nn.Module]:
    """The pipeline's transformers (:func:`named_denoisers`' modules)."""
    return list(named_denoisers(pipe).values())


def _is_hunyuan_video(pipe) -> bool:
    from diffusers import HunyuanVideoPipeline

    return isinstance(pipe, HunyuanVideoPipeline)


def pack_hunyuan_prompt(pipe, kwargs: dict) -> bool:
    """Encode a HunyuanVideo prompt here and keep only its valid tokens; True when packed.

    The pipeline pads the prompt to ``max_sequence_length`` (256) tokens and every attention call then
    gets a ``(B, 1, 1, N)`` key mask, which takes SDPA off its unmasked cuDNN path (~1.45x slower dense
    attention at 720p on an H200) and hands svg2 a key padding mask. Padded text tokens are masked as
    keys everywhere (joint attention, token refiner, pooled text), so dropping them changes no video
    token. Here, once per job and before denoising, the prompt is encoded (what the pipeline would
    do), its mask read on the host (the job's only sync for it), and the embeddings and mask cut to
    the valid length; the pipeline then gets ``prompt_embeds`` / ``pooled_prompt_embeds`` /
    ``prompt_attention_mask`` instead of ``prompt``. Packed only when the result is all valid (the
    valid tokens are a prefix), so the svg2 session may drop the masks (``text_mask_all_valid``).

    Not packed (False, ``kwargs`` untouched): other pipelines, caller-given embeddings, or a
    true-CFG negative prompt (its padded mask would reach the same layers).
    """
    if not _is_hunyuan_video(pipe) or kwargs.get("prompt_embeds") is not None or not kwargs.get("prompt"):
        return False
    if kwargs.get("true_cfg_scale", 1.0) > 1.0 and (kwargs.get("negative_prompt") or
                                                     kwargs.get("negative_prompt_embeds") is not None):
        return False
    encode = {"max_sequence_length": kwargs["max_sequence_length"]} if "max_sequence_length" in kwargs else {}
    if "prompt_template" in kwargs:
        encode["prompt_template"] = kwargs["prompt_template"]
    embeds, pooled, mask = pipe.encode_prompt(prompt=kwargs["prompt"], prompt_2=kwargs.get("prompt_2"),
                                              device=pipe._execution_device, **encode)
    valid = mask.bool().cpu()  # (B, T): one small copy to the host per job, before denoising
    length = int(valid.sum(dim=1).max())
    if length == 0 or not bool(valid[:, :length].all()):
        return False  # not a prefix, or batch elements of different lengths: keep the padded, masked call
    kwargs.update(prompt=None, prompt_2=None, prompt_embeds=embeds[:, :length], pooled_prompt_embeds=pooled,
                  prompt_attention_mask=mask[:, :length])
    return True


def generate(
    pipe,
    spec: JobSpec,
    *,
    on_step: StepCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    call_kwargs: dict | None = None,
    decode: bool = True,
    image=None,
) -> GenerationResult:
    """Generate the clip of ``spec`` with ``pipe``.

    Args:
        pipe: a loaded diffusers video pipeline (``WanPipeline``, ``HunyuanVideoPipeline``...).
        spec: the resolved job; ``seed`` seeds a CPU ``torch.Generator`` so the same spec gives the
            same frames on any device of the same kind.
        on_step: progress report after each denoising step.
        should_cancel: polled after each denoising step (and once before starting); True stops the
            job with :class:`JobCancelled`.
        call_kwargs: model-specific extra arguments of the pipeline call (e.g. ``max_sequence_length``).
        decode: False: stop at the denoised latents (the pipeline's ``output_type="latent"``), no VAE
            decode and no frames (the worker's start-up warm-up of its sparse presets).
        image: image-to-video pipelines (those whose call takes ``image``): the first frame, a PIL image,
            center-cropped and resized to the spec's size here (:func:`worker.images.fit_to_size`).

    Raises:
        InvalidJobInput: the spec's shape does not fit the model.
        JobCancelled: ``should_cancel`` returned True.
    """
    validate_spec_for_pipeline(pipe, spec)
    if should_cancel is not None and should_cancel():
        raise JobCancelled()

    total_steps = spec.num_inference_steps
    timer = _StepTimer(_sync_fn(pipe))
    step_seconds: list[float] = []

    def on_step_end(pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        seconds = timer.end_step()
        step_seconds.append(seconds)
        if on_step is not None:
            on_step(step_index + 1, total_steps, seconds)
        if should_cancel is not None and should_cancel():
            raise JobCancelled()
        return {}

    kwargs = dict(
        prompt=spec.prompt,
        height=spec.height,
        width=spec.width,
        num_frames=spec.num_frames,
        num_inference_steps=total_steps,
        guidance_scale=spec.guidance_scale,
        generator=torch.Generator(device="cpu").manual_seed(spec.seed),
        output_type="np" if decode else "latent",
        return_dict=True,
        callback_on_step_end=on_step_end,
    )
    accepted = inspect.signature(pipe.__call__).parameters
    if "image" in accepted:
        if image is None:
            raise InvalidJobInput(f"input_reference: required: model {spec.model!r} is image-to-video")
        kwargs["image"] = fit_to_size(image.convert("RGB"), spec.width, spec.height)
    elif image is not None:
        raise InvalidJobInput(f"input_reference: model {spec.model!r} is text-to-video and takes no input image")
    if "negative_prompt" in accepted:
        kwargs["negative_prompt"] = spec.negative_prompt or None
    kwargs.update(call_kwargs or {})

    # HunyuanVideo: the prompt packed to its valid tokens (host side, once per job, before denoising),
    # so the attention calls need no text mask; counted in encode_seconds like the pipeline's own encoding.
    with torch.inference_mode():
        packed_text = pack_hunyuan_prompt(pipe, kwargs)

    # The job's budget reaches the svg2 processors only through this session (no global state);
    # without svg2 applied (a model it does not support) the pipeline runs its stock attention.
    integration = find_svg2(pipe)
    session_cm = (svg2_session(integration, spec.sparsity, num_inference_steps=total_steps,
                               text_mask_all_valid=packed_text)
                  if integration is not None else contextlib.nullcontext())
    hooks = [m.register_forward_pre_hook(timer.transformer_pre_hook) for m in denoisers(pipe)]
    try:
        with session_cm as session, torch.inference_mode():
            output = pipe(**kwargs)
        timer.sync()
        end = time.perf_counter()
    finally:
        for hook in hooks:
            hook.remove()

    frames = np.asarray(output.frames[0]) if decode else None  # (F, H, W, 3): batch of one
    first = timer.first_step_start if timer.first_step_start is not None else timer.call_start
    last = timer.last_step_end if timer.last_step_end is not None else first
    metrics = {
        "encode_seconds": first - timer.call_start,
        "step_seconds": step_seconds,
        "denoise_seconds": float(sum(step_seconds)),
        "decode_seconds": end - last,
        **({"frames": int(frames.shape[0]), "height": int(frames.shape[1]), "width": int(frames.shape[2])}
           if frames is not None else {}),
        "attention": "svg2" if session is not None and spec.sparsity.mode != "dense" else "dense",
        "sparsity": session.metrics() if session is not None else None,
    }
    return GenerationResult(frames=frames, metrics=metrics)
