"""Load a registry entry into a resident diffusers pipeline, strictly offline.

``kind: tiny-wan`` builds the built-in random Wan pipeline (:mod:`worker.pipelines.tiny`).
``kind: diffusers`` loads real weights with ``<pipeline_class>.from_pretrained(path, dtype=...,
local_files_only=True)``: ``path`` is a local directory or a Hugging Face id that must already be in
the local cache. Nothing is ever downloaded; missing weights raise :class:`ModelUnavailable` at once
(code ``model_unavailable``) instead of hanging on the network.

Registry ``options`` understood here: ``flow_shift`` (scheduler shift, e.g. 3.0 at 480p and 5.0 at
720p for Wan), ``max_sequence_length`` (prompt tokens), ``enable_vae_tiling``, ``vae_dtype``,
``svg2`` (default true: route the transformers' self-attention through svg2; false keeps the stock
processors and every job runs dense), ``compile`` (``regional`` or ``none``, the default: see
:func:`compile_transformers`) and ``compile_backend`` (the ``torch.compile`` backend of ``compile:
regional``, default ``inductor``; the CPU tests use ``aot_eager``, which skips inductor's C++ build).

Sparse attention is installed once here, after every other option (``apply_svg2``: Triton kernels
on CUDA, the torch reference on CPU); each job then opens its own ``svg2_session`` with its budget
(:func:`worker.pipelines.run.generate`).
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from packaging.version import Version

from svg2core.integration import SVG2Integration, apply_svg2
from worker.pipelines.tiny import build_tiny_pipeline
from worker.registry import COMPILE_MODES, ModelEntry

log = logging.getLogger(__name__)

# diffusers renamed from_pretrained's torch_dtype to dtype (0.42 warns on the old name).
_DTYPE_KWARG = "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: Registry ``options`` the loader understands; others are reported once at load (a typo must not
#: pass silently, but a newer registry must not stop an older worker either).
KNOWN_OPTIONS = frozenset({"flow_shift", "max_sequence_length", "enable_vae_tiling", "vae_dtype", "svg2",
                           "svg2_value_beside_selection", "compile", "compile_backend"})

#: The tiny text encoder has no use for Wan's 512-token prompts; 64 bytes keeps a step cheap.
TINY_MAX_SEQUENCE_LENGTH = 64


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded here (weights missing, unknown pipeline class, no such device)."""

    code = "model_unavailable"


@dataclass
class LoadedModel:
    """A pipeline resident in this process, and what a job needs to know about it."""

    entry: ModelEntry
    pipeline: diffusers.DiffusionPipeline
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    #: Fixed extra arguments of every pipeline call for this model (from the registry's options).
    call_kwargs: dict = field(default_factory=dict)
    #: The svg2 processors installed on the pipeline (None: stock attention, every job dense).
    svg2: SVG2Integration | None = None
    #: ``regional``: the transformers' repeated blocks are torch.compiled (registry option ``compile``).
    compile: str = "none"
    #: task ``ti2v``: the image-to-video pipeline over ``pipeline``'s modules (requests with an input image)
    image_pipeline: diffusers.DiffusionPipeline | None = None

    def pipeline_for(self, image) -> diffusers.DiffusionPipeline:
        """The pipeline that runs a job with (``image`` not None) or without a first frame: a ``ti2v`` model's image
        pipeline for the former, else the model's own (which refuses what its task does not take)."""
        return self.image_pipeline if image is not None and self.image_pipeline is not None else self.pipeline

    @property
    def name(self) -> str:
        return self.entry.name

    def describe(self) -> dict:
        """JSON-able facts for heartbeats and job metrics."""
        return {"model": self.name, "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}


def resolve_device(requested: str) -> torch.device:
    """``requested`` as a torch device, or :class:`ModelUnavailable` if this machine lacks it."""
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ModelUnavailable(f"device: {requested!r} is not a torch device ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"device: {requested!r} requested but CUDA is not available on this machine")
    return device


def _pipeline_class(name: str) -> type[diffusers.DiffusionPipeline]:
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ModelUnavailable(f"pipeline_class: {name!r} is not a diffusers pipeline class")
    return cls


def _looks_like_local_path(path: str) -> bool:
    # A Hugging Face id is "owner/name"; anything absolute, relative-dotted or home-based is a path.
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().exists()


def _load_from_pretrained(entry: ModelEntry, dtype: torch.dtype) -> diffusers.DiffusionPipeline:
    cls = _pipeline_class(entry.pipeline_class)
    source = entry.path or ""
    if _looks_like_local_path(source):
        local = Path(source).expanduser()
        if not local.is_dir():
            raise ModelUnavailable(
                f"model {entry.name!r}: weights directory {str(local)!r} does not exist; download the "
                "diffusers-format weights there or point the registry's path at them"
            )
        source = str(local)
    try:
        return cls.from_pretrained(source, **{_DTYPE_KWARG: dtype}, local_files_only=True)
    except (OSError, ValueError) as exc:
        # huggingface_hub raises OSError subclasses (LocalEntryNotFoundError, ...) for a missing cache
        # entry; a directory without model_index.json surfaces as OSError or ValueError.
        raise ModelUnavailable(
            f"model {entry.name!r}: cannot load {entry.pipeline_class} from {entry.path!r} offline "
            f"({type(exc).__name__}: {exc}); put the weights in the local Hugging Face cache or a local "
            "directory"
        ) from exc


def _apply_options(entry: ModelEntry, pipe: diffusers.DiffusionPipeline, call_kwargs: dict) -> None:
    options = dict(entry.options)
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        log.warning("model %s: ignoring unknown registry options %s", entry.name, unknown)
    if "flow_shift" in options:
        # Wan's UniPC scheduler calls it flow_shift, flow-matching Euler calls it shift.
        config = pipe.scheduler.config
        key = "flow_shift" if "flow_shift" in config else "shift" if "shift" in config else None
        if key is None:
            raise ModelUnavailable(f"options.flow_shift: scheduler {type(pipe.scheduler).__name__} has no shift")
        pipe.scheduler = type(pipe.scheduler).from_config(config, **{key: float(options["flow_shift"])})
    if "max_sequence_length" in options:
        call_kwargs["max_sequence_length"] = int(options["max_sequence_length"])
    if options.get("enable_vae_tiling"):
        pipe.vae.enable_tiling()
    if "vae_dtype" in options:
        # Wan's model card decodes with an fp32 VAE while the transformer runs in bf16.
        if options["vae_dtype"] not in _DTYPES:
            raise ModelUnavailable(f"options.vae_dtype: must be one of {', '.join(_DTYPES)}, got {options['vae_dtype']!r}")
        pipe.vae.to(dtype=_DTYPES[options["vae_dtype"]])


def load_model(entry: ModelEntry, device: str | None = None) -> LoadedModel:
    """Load ``entry`` onto ``device`` (the entry's own device when None) and keep it resident.

    Raises:
        ModelUnavailable: weights, pipeline class or device missing; never downloads.
    """
    start = time.perf_counter()
    dev = resolve_device(device or entry.device)
    dtype = _DTYPES[entry.dtype]
    call_kwargs: dict = {}
    if entry.kind == "tiny-wan":
        pipe = build_tiny_pipeline(task=entry.task)
        call_kwargs["max_sequence_length"] = TINY_MAX_SEQUENCE_LENGTH
    elif entry.kind == "diffusers":
        pipe = _load_from_pretrained(entry, dtype)
    else:  # the registry's Literal makes this unreachable; keep the error explicit anyway
        raise ModelUnavailable(f"kind: unknown model kind {entry.kind!r}")
    _check_task(entry, pipe)
    compile_mode, compile_backend = _compile_options(entry)  # a bad value fails before the weights load
    _apply_options(entry, pipe, call_kwargs)
    if entry.kind == "tiny-wan" and dtype != torch.float32:
        pipe.to(dtype=dtype)  # built in float32; real weights load in their dtype
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    integration = _apply_svg2(entry, pipe)
    if compile_mode == "regional":
        compile_transformers(pipe, backend=compile_backend)
        log.info("model %s: transformer blocks compiled regionally (backend %s); the first job of each shape "
                 "pays the compilation", entry.name, compile_backend)
    image_pipe = None
    if entry.task == "ti2v":  # after svg2 and compilation: the twin shares the transformers as they now are
        image_pipe = image_pipeline_for(pipe)
        image_pipe.set_progress_bar_config(disable=True)
    return LoadedModel(
        entry=entry,
        pipeline=pipe,
        device=dev,
        dtype=dtype,
        load_seconds=time.perf_counter() - start,
        call_kwargs=call_kwargs,
        svg2=integration,
        compile=compile_mode,
        image_pipeline=image_pipe,
    )


def _check_task(entry: ModelEntry, pipe: diffusers.DiffusionPipeline) -> None:
    """An ``i2v`` entry's pipeline must take the first frame (``image``); a ``t2v`` entry's must not need one; a
    ``ti2v`` entry's is a ``WanPipeline`` (its image-to-video twin is built from it, :func:`image_pipeline_for`)."""
    image = inspect.signature(pipe.__call__).parameters.get("image")
    if entry.task == "i2v" and image is None:
        raise ModelUnavailable(f"model {entry.name!r}: task i2v but {type(pipe).__name__} takes no image; use an "
                               "image-to-video pipeline class (WanImageToVideoPipeline)")
    if entry.task == "t2v" and image is not None and image.default is inspect.Parameter.empty:
        raise ModelUnavailable(f"model {entry.name!r}: {type(pipe).__name__} needs an input image; set task: i2v")
    if entry.task == "ti2v" and not isinstance(pipe, diffusers.WanPipeline):
        raise ModelUnavailable(f"model {entry.name!r}: task ti2v needs pipeline_class WanPipeline (Wan 2.2 TI2V), "
                               f"got {type(pipe).__name__}")


def image_pipeline_for(pipe: diffusers.WanPipeline) -> diffusers.WanImageToVideoPipeline:
    """The image-to-video pipeline over the same modules as a Wan 2.2 TI2V ``WanPipeline``, nothing copied: the same
    transformers (with their svg2 processors and compiled blocks), text encoder, VAE and scheduler, and the same
    ``boundary_ratio`` / ``expand_timesteps`` (with it, the first frame's latent tokens are clean and denoised at
    timestep 0 while the rest follow the schedule)."""
    return diffusers.WanImageToVideoPipeline(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, scheduler=pipe.scheduler,
        transformer=pipe.transformer, transformer_2=getattr(pipe, "transformer_2", None),
        boundary_ratio=pipe.config.get("boundary_ratio"), expand_timesteps=bool(pipe.config.get("expand_timesteps")))


def _compile_options(entry: ModelEntry) -> tuple[str, str]:
    mode = entry.options.get("compile", "none")
    if mode not in COMPILE_MODES:
        raise ModelUnavailable(f"options.compile: must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    backend = entry.options.get("compile_backend", "inductor")
    if not isinstance(backend, str) or backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ModelUnavailable(f"options.compile_backend: must be a torch.compile backend, got {backend!r}")
    return mode, backend


def compile_transformers(pipe: diffusers.DiffusionPipeline, backend: str = "inductor") -> None:
    """Regional ``torch.compile`` (default mode) of the repeated blocks of each transformer of ``pipe``
    (``transformer`` and, for Wan 2.2, ``transformer_2``): diffusers' ``compile_repeated_blocks``.

    Call after :func:`~svg2core.integration.apply_svg2`: the compiled graphs then hold everything
    but the attention call, which ``SVG2Router.attend`` keeps out of them (a graph break per layer), so
    a job's dense/sparse schedule never triggers a recompilation and dense and sparse steps get the
    same fused non-attention kernels. Compilation is lazy: the first job at each new shape pays it
    (seconds to minutes); a new shape recompiles once, then dynamo marks the changed sizes dynamic.
    """
    for attr in ("transformer", "transformer_2"):
        transformer = getattr(pipe, attr, None)
        if transformer is not None:
            transformer.compile_repeated_blocks(backend=backend)


def _apply_svg2(entry: ModelEntry, pipe: diffusers.DiffusionPipeline) -> SVG2Integration | None:
    """Install svg2 on the pipeline's transformers, unless the registry turns it off."""
    if not entry.options.get("svg2", True):
        log.info("model %s: svg2 disabled by the registry; every job runs dense", entry.name)
        return None
    try:
        # the registry's choice: each sparse call makes its values beside its k-means (off unless measured to pay;
        # docs/integration.md)
        return apply_svg2(pipe, value_beside_selection=entry.options.get("svg2_value_beside_selection", False))
    except TypeError as exc:  # a transformer svg2 has no processors for
        log.warning("model %s: sparse attention unavailable, jobs run dense (%s)", entry.name, exc)
        return None
