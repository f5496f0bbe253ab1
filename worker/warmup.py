"""A worker's start-up warm-up: short jobs at the model's default shape before the first request.

On a GPU the first job of a kind pays compilation: the registry's ``compile: regional`` compiles the
transformer blocks at the first shape (~10-30 s), and each sparsity preset's first sparse step JIT-compiles
the svg2 Triton kernels its settings select (measured on an H100, Wan 2.1 14B 720p: a budget whose kernel
variants were not compiled yet took 24.9 s for its first sparse step against 16.1 s;
``docs/benchmarks/bench_generate_h100_s28_wan14b.md``). The warm-up runs that cost once, at start,
before the worker takes jobs, instead of in the first user's job of each preset:

1. a dense job of one step per transformer of the pipeline (two for the Wan 2.2 two-expert pipelines,
   whose second step goes to the low-noise expert at the public boundaries; at least ``min_steps``), decoded:
   the compiled graphs, the dense attention, the VAE decode; its dense calls also calibrate the time-saved
   estimate of later jobs (:class:`~svg2core.processors.accounting.DenseAttentionCalibration`, observed
   source);
2. per sparse preset (``all``; ``default``: the model's default preset alone), two sparse steps
   (``dense_warmup_steps`` 0, the preset's dense layers kept), not decoded: the cold and the warm
   k-means calls of a job and the preset's kernel variants. The cold call runs
   :data:`WARMUP_COLD_ITERS` k-means iterations instead of the preset's ``kmeans_iters_init`` (20-50): the
   iteration count is a loop on the host, so two launch every kernel variant the preset's count would, and the
   warm-up does not pay ~10 s of cold iterations for ``quality`` at Wan 14B's size.

Each job records which transformers ran (``WarmupJob.denoisers``); one that no job reached is logged.

Every warm-up job runs through :func:`~worker.pipelines.run.generate`, the jobs' own path, with the
model's defaults and a fixed prompt and seed (and, for an image-to-video model, a synthetic test card as the first
frame, :func:`worker.images.synthetic_image`; a ``ti2v`` model warms its text-to-video path, whose transformer calls
its image jobs share); nothing is written to the job store, the MP4 directory
or the job metrics, and every job resets svg2's per-job state as a real one does. The warm-up covers
the default shape and the presets' modes only: another size or frame count compiles at its first job, and so does a
``fixed_density`` budget's selection variant (no preset uses it; ~2 s at Wan 14B on an H100,
``docs/benchmarks/bench_generate_h100_s29_wan14b_warmup.md``) (Triton and inductor
keep their caches on disk; ``deploy/compose.yaml`` puts them on a volume so a restart reuses them).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from worker.images import encode_png, synthetic_image
from worker.pipelines.loading import LoadedModel
from worker.pipelines.run import denoisers, generate, named_denoisers
from worker.registry import Registry, build_job_spec

log = logging.getLogger(__name__)

WarmupMode = Literal["auto", "none", "default", "all"]
WARMUP_PROMPT = "warm-up: a calm lake at dawn, mist over the water"
#: k-means iterations of a warm-up job's cold calls (two: the first assign and the later ones are different launches)
WARMUP_COLD_ITERS = 2


@dataclass
class WarmupJob:
    """One warm-up job: its budget (``dense`` or a preset name), steps, whether it decoded, its seconds."""

    budget: str
    steps: int
    decoded: bool
    seconds: float = 0.0
    sparse_calls: int = 0
    #: the pipeline attributes of the transformers that ran (``transformer``, ``transformer_2``)
    denoisers: list[str] = field(default_factory=list)


@dataclass
class WarmupReport:
    """What a warm-up ran: ``mode`` as resolved (``auto`` becomes ``all`` or ``none``), its jobs, the total
    seconds, and ``error`` (``"<type>: <message>"``) when a job failed and the warm-up stopped there."""

    mode: str
    jobs: list[WarmupJob] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def describe(self) -> dict:
        """JSON-able summary for the heartbeat."""
        return {
            "warmup": self.mode,
            "warmup_seconds": round(self.seconds, 3),
            "warmup_jobs": [f"{j.budget} ({j.steps} step{'s' if j.steps != 1 else ''}, {j.seconds:.1f} s)"
                            for j in self.jobs],
            **({"warmup_error": self.error} if self.error else {}),
        }


def resolve_mode(mode: WarmupMode, device: torch.device) -> str:
    """``auto``: ``all`` on a CUDA device (where there is compilation to pay), ``none`` elsewhere."""
    if mode == "auto":
        return "all" if device.type == "cuda" else "none"
    return mode


def warmup_plan(model: LoadedModel, mode: str) -> list[tuple[str, int, bool]]:
    """``(budget, steps, decode)`` of each warm-up job for a resolved ``mode``; no sparse jobs when svg2 is not
    applied to the pipeline (every job runs stock attention then)."""
    if mode == "none":
        return []
    entry = model.entry
    min_steps = entry.limits.min_steps
    plan = [("dense", max(len(denoisers(model.pipeline)), min_steps), True)]
    if model.svg2 is None:
        return plan
    presets = entry.resolved_presets()
    names = [entry.default_preset] if mode == "default" else list(presets)
    plan += [(name, max(2, min_steps), False) for name in names if presets[name].mode != "dense"]
    return plan


def warmup_sparsity(model: LoadedModel, preset: str) -> dict:
    """The ``sparsity`` of a preset's warm-up job: the preset, sparse from the first step, and at most
    :data:`WARMUP_COLD_ITERS` cold k-means iterations (every other field is the preset's, so its kernels are)."""
    cold = model.entry.resolved_presets()[preset].kmeans_iters_init
    return {"preset": preset, "dense_warmup_steps": 0, "kmeans_iters_init": min(cold, WARMUP_COLD_ITERS)}


def warm_up(registry: Registry, model: LoadedModel, mode: WarmupMode) -> WarmupReport:
    """Run the warm-up jobs of ``mode`` on ``model`` (see the module docstring) and report them.

    A failing job (out of memory at the default shape, say) is logged, its memory released, and the
    warm-up stops there: the worker still serves, and each job reports its own errors as usual."""
    resolved = resolve_mode(mode, model.device)
    report = WarmupReport(mode=resolved)
    start = time.perf_counter()
    named = named_denoisers(model.pipeline)
    ran: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=n: ran.add(name)) for n, m in named.items()]
    try:
        _run_jobs(registry, model, resolved, report, ran)
    finally:
        for hook in hooks:
            hook.remove()
    missed = sorted(set(named) - {d for j in report.jobs for d in j.denoisers})
    if missed and report.jobs and report.error is None:
        log.warning("warm-up: no warm-up job ran %s; its first jobs will compile", ", ".join(missed))
    report.seconds = time.perf_counter() - start
    return report


def _run_jobs(registry: Registry, model: LoadedModel, mode: str, report: WarmupReport, ran: set[str]) -> None:
    image = input_image = None
    if model.entry.task == "i2v":  # image-to-video: a test card as the first frame, at the default size
        dft = model.entry.defaults
        image = synthetic_image(dft.width, dft.height)
        input_image = encode_png(image)[1]
    for budget, steps, decode in warmup_plan(model, mode):
        ran.clear()
        sparsity = "dense" if budget == "dense" else warmup_sparsity(model, budget)
        job = WarmupJob(budget=budget, steps=steps, decoded=decode)
        t = time.perf_counter()
        try:
            spec, _ = build_job_spec(registry, model=model.name, prompt=WARMUP_PROMPT, seed=0,
                                     num_inference_steps=steps, sparsity=sparsity, input_image=input_image)
            result = generate(model.pipeline, spec, call_kwargs=model.call_kwargs, decode=decode, image=image)
        except Exception as exc:  # the worker must come up whatever the warm-up meets
            report.error = f"{type(exc).__name__}: {exc}"
            log.exception("warm-up job %s failed; serving without the rest of the warm-up", budget)
            gc.collect()
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            break
        job.seconds = time.perf_counter() - t
        job.sparse_calls = int((result.metrics.get("sparsity") or {}).get("sparse_calls", 0))
        job.denoisers = sorted(ran)
        report.jobs.append(job)
        log.info("warm-up job %s: %d step(s) in %.1f s (%s)", budget, steps, job.seconds, ", ".join(job.denoisers))
