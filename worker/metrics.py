"""Prometheus metrics of one long-lived GPU worker, served on the worker's own ``/metrics`` port.

A worker is one process per GPU that lives for many jobs (rq ``SimpleWorker``: no fork per job), so
it keeps ordinary in-process metrics in its own :class:`~prometheus_client.CollectorRegistry` and
serves them with prometheus-client's HTTP server; no multiprocess mode, no files. Prometheus scrapes
every worker directly, so a worker that dies disappears from the scrape (its series go stale) instead
of being counted forever.

The runner calls :class:`WorkerMetrics` at three points (see docs/observability.md, "Wiring")::

    metrics = WorkerMetrics(model="wan2.1-t2v-1.3b", worker="gpu0", presets=entry.resolved_presets())
    start_metrics_server(metrics.registry, port=settings.metrics_port)
    metrics.observe_model_load(seconds)          # after the pipeline is loaded
    metrics.set_device(device)                   # GPU identity (imports torch lazily)
    with metrics.job_running(device):            # busy gauge + CUDA peak-memory reset
        ... run the job, mark it finished in the store ...
    metrics.observe_job(store.get(job_id))       # the finished record: histograms and counters

Everything is read from the finished :class:`~worker.store.JobRecord` (the same record the API
serves), so the numbers on the dashboard are the numbers in the job's ``metrics`` field. Labels are
bounded: model, sparsity preset (``custom`` for explicit budgets), step mode, final status and error
code; never a job id, prompt or user.

Torch is imported only inside the functions that read CUDA state, so importing this module (and
running it in a CPU-only test) never loads torch.
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.spec import PRESET_NAMES, JobSpec
from worker.store import JobRecord

#: Job-level durations: a video job takes from about a second (tiny test model) to an hour (14B 720p
#: dense); roughly 1-2-5 spaced, denser where jobs usually land (1-20 minutes).
JOB_SECONDS_BUCKETS: tuple[float, ...] = (
    0.5, 1, 2.5, 5, 10, 20, 30, 60, 90, 120, 180, 300, 450, 600, 900, 1200, 1800, 2700, 3600,
)
#: One denoising step: milliseconds (tiny model on CPU) to a couple of minutes (14B 720p with CFG).
STEP_SECONDS_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120,
)
#: Attention density and FLOP ratios live in [0, 1]; SVG2 lands around 0.1-0.35.
RATIO_BUCKETS: tuple[float, ...] = (
    0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
)
_GIB = 1024**3
#: Peak GPU memory of a job: the cards this runs on have 24-141 GiB.
MEMORY_BYTES_BUCKETS: tuple[float, ...] = tuple(
    g * _GIB for g in (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 128, 144, 192)
)

#: The preset label of a job whose sparsity was given field by field without a preset.
CUSTOM_PRESET = "custom"
STEP_MODES: tuple[str, ...] = ("dense", "sparse")
FINAL_STATUSES: tuple[str, ...] = ("completed", "failed", "cancelled")
#: The failure codes of worker/runner.py, pre-created so the first failure of a kind is an increase.
ERROR_CODES: tuple[str, ...] = ("invalid_input", "out_of_memory", "timeout", "worker_shutdown", "internal")


class WorkerMetricsSettings(BaseSettings):
    """Where a worker serves its metrics (``SVG2_METRICS_PORT``, ``SVG2_METRICS_ADDR``)."""

    model_config = SettingsConfigDict(env_prefix="SVG2_", extra="ignore")

    metrics_port: int = Field(
        9410, ge=0, le=65535, description="Port of the worker's /metrics (0: serve no metrics)."
    )
    metrics_addr: str = Field("0.0.0.0", description="Address the worker's metrics server binds.")


def preset_label(spec: JobSpec) -> str:
    """The bounded ``preset`` label of a job: its preset name, or ``custom``."""
    return spec.sparsity.preset or CUSTOM_PRESET


@dataclass(frozen=True)
class JobObservation:
    """What the metrics take from one finished job record (all seconds are wall time)."""

    model: str
    preset: str
    status: str
    error_code: str = ""
    queue_wait_seconds: float | None = None
    run_seconds: float | None = None
    latency_seconds: float | None = None
    step_seconds: tuple[float, ...] = ()
    step_modes: tuple[str, ...] = ()
    density: float | None = None
    flops_ratio: float | None = None
    attention_seconds_saved: float | None = None
    frames: int = 0
    peak_gpu_memory_bytes: float | None = None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None  # drop NaN / inf


def step_modes_for(spec: JobSpec, num_steps: int) -> tuple[str, ...]:
    """Mode of each executed denoising step under the spec's schedule: the first
    ``warmup_steps`` run dense, the rest sparse (every step of a ``dense`` budget is dense)."""
    warmup = spec.sparsity.warmup_steps(spec.num_inference_steps)
    return tuple("dense" if i < warmup else "sparse" for i in range(num_steps))


def observation_from_record(record: JobRecord) -> JobObservation:
    """Read a finished job's record into a :class:`JobObservation`.

    Keys of ``record.metrics`` used (every one optional): ``queue_wait_seconds``, ``run_seconds``
    (the store writes both), ``step_seconds`` (list), ``step_modes`` (list of ``dense``/``sparse``;
    when absent: all dense if ``attention`` is ``"dense"``, else the spec's warm-up schedule),
    ``frames``, ``peak_gpu_memory_bytes``,
    and under ``sparsity`` (the svg2core session's accounting; or at top level):
    ``mean_density_sparse`` (or ``density``: mean achieved density of the sparse calls, 0-1),
    ``attention_flops_ratio`` (or ``attention_flops`` over ``attention_flops_dense_equivalent``),
    ``estimated_attention_seconds_saved`` (or ``attention_seconds_saved``; when absent, e.g. on a
    CPU, :func:`estimate_attention_seconds_saved` compares the job's dense and sparse steps).
    """
    m = dict(record.metrics or {})
    sparsity = m.get("sparsity") if isinstance(m.get("sparsity"), dict) else {}

    def pick(*names: str) -> Any:
        for source in (sparsity, m):
            for name in names:
                if source.get(name) is not None:
                    return source[name]
        return None

    steps = tuple(s for s in (_number(v) for v in (m.get("step_seconds") or [])) if s is not None)
    modes_raw = pick("step_modes")
    if isinstance(modes_raw, list) and len(modes_raw) == len(steps) and set(modes_raw) <= set(STEP_MODES):
        modes = tuple(modes_raw)
    elif m.get("attention") == "dense":
        modes = ("dense",) * len(steps)  # the pipeline ran without sparse attention installed
    else:
        modes = step_modes_for(record.spec, len(steps))

    density = _number(pick("density", "mean_density_sparse", "mean_density"))
    computed = _number(pick("attention_flops"))
    dense = _number(pick("dense_attention_flops", "attention_flops_dense_equivalent"))
    flops_ratio = _number(pick("attention_flops_ratio"))
    if flops_ratio is None and computed is not None and dense:
        flops_ratio = computed / dense
    if flops_ratio is None and density is not None and steps:
        # Without FLOP counts: dense steps cost 1, sparse steps cost their density (per step, the
        # attention FLOPs of every call have the same dense-equivalent).
        flops_ratio = sum(1.0 if mode == "dense" else density for mode in modes) / len(modes)
    if flops_ratio is None and steps and all(mode == "dense" for mode in modes):
        flops_ratio = 1.0  # every step dense: computed FLOPs are the dense FLOPs (no density to report)

    latency = None
    if record.status == "completed" and record.completed_at is not None:
        latency = record.completed_at - record.created_at
    return JobObservation(
        model=record.spec.model,
        preset=preset_label(record.spec),
        status=record.status,
        error_code=record.error.code if record.error is not None else "",
        queue_wait_seconds=_number(m.get("queue_wait_seconds")),
        run_seconds=_number(m.get("run_seconds")),
        latency_seconds=latency,
        step_seconds=steps,
        step_modes=modes,
        density=density,
        flops_ratio=flops_ratio,
        attention_seconds_saved=_number(pick("attention_seconds_saved", "estimated_attention_seconds_saved")),
        frames=int(_number(m.get("frames")) or 0),
        peak_gpu_memory_bytes=_number(m.get("peak_gpu_memory_bytes")),
    )


def estimate_attention_seconds_saved(step_seconds: Iterable[float], step_modes: Iterable[str]) -> float | None:
    """Net seconds the sparse steps saved against the job's own dense steps: ``n_sparse x
    median(dense step) - sum(sparse steps)``, floored at 0.

    Dense and sparse steps of one job run the same transformer on the same shapes; they differ
    only in attention (plus the clustering it needs), so the difference is the attention time saved
    net of its overhead. None when the job has no dense or no sparse step to compare.
    """
    pairs = list(zip(step_seconds, step_modes, strict=True))
    dense = [s for s, mode in pairs if mode == "dense"]
    sparse = [s for s, mode in pairs if mode == "sparse"]
    if not dense or not sparse:
        return None
    return max(0.0, len(sparse) * statistics.median(dense) - sum(sparse))


def describe_device(device: str) -> dict[str, str]:
    """Identity labels of the device a worker runs on (imports torch only for CUDA devices)."""
    if not device.startswith("cuda"):
        return {"device": device, "name": platform.processor() or platform.machine() or "cpu",
                "uuid": "", "compute_capability": "", "memory_total_bytes": "0", "cuda": "", "driver": ""}
    import torch  # lazy: only a CUDA worker pays for it here

    props = torch.cuda.get_device_properties(torch.device(device))
    driver = ""
    try:
        driver = str(torch.cuda.driver_version()) if hasattr(torch.cuda, "driver_version") else ""
    except RuntimeError:
        pass
    return {
        "device": device,
        "name": props.name,
        "uuid": str(getattr(props, "uuid", "")),
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_total_bytes": str(int(props.total_memory)),
        "cuda": torch.version.cuda or "",
        "driver": driver,
    }


def _reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(device))


def _peak_memory_bytes(device: str) -> float:
    """Peak bytes allocated by torch on ``device`` since the last reset; 0 on a CPU device (a
    CPU worker uses no GPU memory)."""
    if not device.startswith("cuda"):
        return 0.0
    import torch

    return float(torch.cuda.max_memory_allocated(torch.device(device)))


class WorkerMetrics:
    """The metrics of one worker process, in a registry of its own.

    Args:
        model: the model this worker serves (every series of a worker carries it).
        worker: the worker's name, a label of its info gauges only.
        presets: preset names to pre-create series for, so rates start from zero at the first job
            (Prometheus cannot take a rate of a series that appears with its first sample).
        registry: where to register; a fresh :class:`CollectorRegistry` by default.
        error_codes: failure codes to pre-create ``svg2_jobs_finished_total`` series for.
    """

    def __init__(
        self,
        model: str,
        worker: str = "",
        presets: Iterable[str] = PRESET_NAMES,
        registry: CollectorRegistry | None = None,
        error_codes: Iterable[str] = ERROR_CODES,
    ) -> None:
        self.model = model
        self.worker = worker
        self.registry = registry if registry is not None else CollectorRegistry()
        self.device = "cpu"
        r = self.registry
        job_labels = ("model", "preset")

        self.queue_wait = Histogram(
            "svg2_job_queue_wait_seconds", "Time from job creation to a worker starting it.",
            job_labels, buckets=JOB_SECONDS_BUCKETS, registry=r)
        self.run_time = Histogram(
            "svg2_job_run_seconds", "Time a worker spent on a completed job (start to completion).",
            job_labels, buckets=JOB_SECONDS_BUCKETS, registry=r)
        self.latency = Histogram(
            "svg2_job_latency_seconds", "End-to-end time of a completed job (creation to completion).",
            job_labels, buckets=JOB_SECONDS_BUCKETS, registry=r)
        self.finished = Counter(
            "svg2_jobs_finished_total", "Jobs that reached a final status, by status and error code.",
            ("model", "preset", "status", "error_code"), registry=r)
        self.step_time = Histogram(
            "svg2_denoising_step_seconds", "Duration of one denoising step, by attention mode.",
            ("model", "preset", "mode"), buckets=STEP_SECONDS_BUCKETS, registry=r)
        self.density = Histogram(
            "svg2_attention_density_ratio",
            "Achieved attention density of a job (computed / all query-key pairs of its sparse calls).",
            job_labels, buckets=RATIO_BUCKETS, registry=r)
        self.flops_ratio = Histogram(
            "svg2_attention_flops_ratio",
            "Computed attention FLOPs of a job over its dense-equivalent FLOPs (dense steps included).",
            job_labels, buckets=RATIO_BUCKETS, registry=r)
        self.seconds_saved = Counter(
            "svg2_attention_seconds_saved", "Attention seconds saved by sparse attention, net of its overhead.",
            job_labels, registry=r)
        self.frames = Counter(
            "svg2_frames_generated", "Video frames generated by completed jobs.", job_labels, registry=r)
        self.peak_memory = Histogram(
            "svg2_job_peak_gpu_memory_bytes", "Peak GPU memory allocated during a job (0 on a CPU worker).",
            ("model",), buckets=MEMORY_BYTES_BUCKETS, registry=r)
        self.last_peak_memory = Gauge(
            "svg2_worker_last_job_peak_gpu_memory_bytes", "Peak GPU memory allocated by the last job.",
            ("model",), registry=r)
        self.busy = Gauge("svg2_worker_busy", "1 while the worker runs a job, else 0.", ("model",), registry=r)
        self.model_load = Gauge(
            "svg2_worker_model_load_seconds", "Time the worker took to load its pipeline.", ("model",), registry=r)
        self.warmup = Gauge(
            "svg2_worker_warmup_seconds", "Time the worker's start-up warm-up jobs took (0: none ran).", ("model",),
            registry=r)
        self.gpu_memory_total = Gauge(
            "svg2_worker_gpu_memory_total_bytes", "Total memory of the worker's GPU (0 on CPU).",
            ("model",), registry=r)
        self.gpu = Info("svg2_gpu", "Identity of the device the worker runs on (value is always 1).", registry=r)

        self.busy.labels(model).set(0)
        self.warmup.labels(model).set(0)
        self._error_codes = tuple(error_codes)
        for preset in dict.fromkeys([*presets, CUSTOM_PRESET]):
            self._init_series(preset)

    def _init_series(self, preset: str) -> None:
        """Create the zero-valued series of one (model, preset) so a first job is a visible increase."""
        m = self.model
        for metric in (self.queue_wait, self.run_time, self.latency, self.density, self.flops_ratio,
                       self.seconds_saved, self.frames):
            metric.labels(m, preset)
        for mode in STEP_MODES:
            self.step_time.labels(m, preset, mode)
        self.finished.labels(m, preset, "completed", "")
        self.finished.labels(m, preset, "cancelled", "")
        for code in self._error_codes:
            self.finished.labels(m, preset, "failed", code)
        self.peak_memory.labels(m)

    # ------------------------------------------------------------------ worker lifecycle

    def observe_model_load(self, seconds: float) -> None:
        """Record how long loading this worker's pipeline took."""
        self.model_load.labels(self.model).set(seconds)

    def observe_warmup(self, seconds: float) -> None:
        """Record how long the start-up warm-up took (worker/warmup.py)."""
        self.warmup.labels(self.model).set(seconds)

    def set_device(self, device: str) -> None:
        """Publish the identity of the worker's device (``cuda:0``, ``cpu``) as ``svg2_gpu_info``."""
        self.device = device
        labels = describe_device(device)
        self.gpu.info({**labels, "model": self.model, "worker": self.worker})
        self.gpu_memory_total.labels(self.model).set(float(labels["memory_total_bytes"]))

    @contextmanager
    def job_running(self, device: str | None = None) -> Iterator[None]:
        """Mark the worker busy for the block and reset the CUDA peak-memory counter at its start."""
        device = device or self.device
        _reset_peak_memory(device)
        self.busy.labels(self.model).set(1)
        try:
            yield
        finally:
            self.busy.labels(self.model).set(0)

    # ------------------------------------------------------------------ per job

    def observe_job(self, record: JobRecord, device: str | None = None) -> JobObservation:
        """Record a job that reached a final status (pass the record as stored after the final
        transition). Returns what was observed. Call it once per finished job."""
        obs = observation_from_record(record)
        if obs.status not in FINAL_STATUSES:
            raise ValueError(f"record.status: observe_job takes a finished job, got {obs.status!r}")
        self.observe(obs, device=device)
        return obs

    def observe(self, obs: JobObservation, device: str | None = None) -> None:
        """Record one :class:`JobObservation` (``observe_job`` reads it from a record)."""
        m, p = obs.model, obs.preset
        self.finished.labels(m, p, obs.status, obs.error_code if obs.status == "failed" else "").inc()
        if obs.queue_wait_seconds is not None:
            self.queue_wait.labels(m, p).observe(max(0.0, obs.queue_wait_seconds))
        # Steps that ran are real work whatever the job's outcome; durations and yields below only
        # describe completed jobs, so failures and cancels cannot drag the latency quantiles.
        for seconds, mode in zip(obs.step_seconds, obs.step_modes, strict=True):
            self.step_time.labels(m, p, mode).observe(seconds)
        peak = obs.peak_gpu_memory_bytes
        if peak is None and obs.step_seconds:
            peak = _peak_memory_bytes(device or self.device)
        if peak is not None:
            self.peak_memory.labels(m).observe(peak)
            self.last_peak_memory.labels(m).set(peak)
        if obs.status != "completed":
            return
        if obs.run_seconds is not None:
            self.run_time.labels(m, p).observe(max(0.0, obs.run_seconds))
        if obs.latency_seconds is not None:
            self.latency.labels(m, p).observe(max(0.0, obs.latency_seconds))
        if obs.density is not None:
            self.density.labels(m, p).observe(min(1.0, max(0.0, obs.density)))
        if obs.flops_ratio is not None:
            self.flops_ratio.labels(m, p).observe(min(1.0, max(0.0, obs.flops_ratio)))
        saved = obs.attention_seconds_saved
        if saved is None:
            saved = estimate_attention_seconds_saved(obs.step_seconds, obs.step_modes)
        if saved is not None:
            self.seconds_saved.labels(m, p).inc(max(0.0, saved))
        self.frames.labels(m, p).inc(obs.frames)


def start_metrics_server(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0"):
    """Serve ``registry`` over HTTP (any path, ``/metrics`` by convention) from a daemon thread.

    ``port=0`` picks a free port. Returns the server; ``server.server_port`` is the bound port and
    ``server.shutdown()`` stops it (the worker normally keeps it for its whole life).
    """
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
