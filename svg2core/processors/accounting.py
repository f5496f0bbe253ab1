"""Per-job accounting of the routed attention calls, and the dense-attention time calibration.

Everything recorded in the hot path stays on the device or in host-side lists: densities are added
into device scalars, timings are CUDA events recorded on the current stream. Nothing is read back
until :meth:`AttentionAccounting.metrics` runs at the end of the job, which is where the one
synchronisation of the job happens.

On CPU the attention and forward times are wall-clock (``time.perf_counter``; CPU kernels run
synchronously, so that is the real time). The time-saved estimate needs a dense time per call shape
(:class:`DenseAttentionCalibration`): the dense calls jobs really ran, else (GPU only) a probe; on CPU
a job whose shapes never ran dense has no estimate (``None``).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# (batch, heads, tokens, head_dim, dtype name, device) of one attention call
ShapeKey = tuple[int, int, int, int, str, str]

DENSE_REASONS = ("warmup", "dense_layer", "dense_mode")


def shape_key(query_bnhd: torch.Tensor) -> ShapeKey:
    """The calibration key of a call whose query is ``(B, N, H, D)`` (diffusers layout)."""
    b, n, h, d = query_bnhd.shape
    return (b, h, n, d, str(query_bnhd.dtype).removeprefix("torch."), str(query_bnhd.device))


def attention_flops(key: ShapeKey) -> float:
    """FLOPs of dense attention of that shape: ``4 * N^2 * D`` per (batch, head) (QK^T and PV).

    Dense attention computes every pair, masked (padded text) keys included, so that is also the
    dense-equivalent of a sparse call."""
    b, h, n, d = key[:4]
    return 4.0 * b * h * n * n * d


class _Timer:
    """Measures one span of device work without synchronising: two CUDA events, or wall-clock on CPU. An
    inner span marked with :meth:`exclude` (the value projection a sparse call runs inside, beside its k-means) is
    not counted."""

    __slots__ = ("start", "end", "seconds", "_excluded")

    def __init__(self, device: torch.device) -> None:
        self.seconds: float | None = None
        self._excluded: list = []  # (start, end) pairs of events, or seconds on CPU
        if device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record()
        elif device.type == "cpu":
            self.start = time.perf_counter()
            self.end = None
        else:  # capturing a CUDA graph, or an unsupported device: no timing
            self.start = self.end = None

    @contextlib.contextmanager
    def exclude(self):
        """Leave the work queued inside this block on the current stream out of the span."""
        if isinstance(self.start, float):
            t0 = time.perf_counter()
            yield
            self._excluded.append(time.perf_counter() - t0)
        elif self.start is not None:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            yield
            b.record()
            self._excluded.append((a, b))
        else:
            yield

    def stop(self) -> None:
        if isinstance(self.start, float):
            self.seconds = time.perf_counter() - self.start - sum(self._excluded)
        elif self.start is not None:
            self.end.record()

    def read(self) -> float | None:
        """Seconds of the span less its excluded parts (synchronises with the end event on CUDA)."""
        if self.seconds is None and self.end is not None:
            self.end.synchronize()
            excluded = sum(a.elapsed_time(b) for a, b in self._excluded)
            self.seconds = (self.start.elapsed_time(self.end) - excluded) / 1000.0
        return self.seconds


class DenseAttentionCalibration:
    """Dense attention time per call shape on this machine, for the time-saved estimate.

    Owned by one :class:`~svg2core.integration.SVG2Integration` (one pipeline, one device) and shared by
    its jobs: a dense call's time is a property of the hardware and the shape, not of a request. Two
    sources, per shape ``(B, H, N, D, dtype, device)``:

    1. **Observed**: the timed dense calls that jobs on this pipeline really ran (warm-up steps, dense
       layers), fed in by :meth:`AttentionAccounting.metrics` through :meth:`observe`. Once
       ``min_observed`` of them are there, their median (over the last ``keep``) is the answer: measured
       inside real steps, at the clock the card holds while it works (on an H200 a busy step runs
       power-capped at ~1.6-1.75 GHz, where a short probe runs at ~1.98 GHz), in the layout and through
       the dispatch the model uses. Works on CPU too (wall-clock timers).
    2. **Probe** (GPU only), for shapes no job has run dense yet: ``dense_fn`` (the pipeline's own dense
       call, ``(B, N, H, D)`` inputs) on random inputs, two warm-up calls, then ``repeats`` timed calls
       between CUDA events, averaged; cached. None on CPU, and when the probe runs out of memory.
    """

    def __init__(self, dense_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 repeats: int = 5, min_observed: int = 3, keep: int = 512) -> None:
        self.dense_fn = dense_fn or _sdpa_bnhd
        self.repeats = repeats
        self.min_observed = min_observed
        self.keep = keep
        self._observed: dict[ShapeKey, deque[float]] = {}
        self._probed: dict[ShapeKey, float | None] = {}

    def observe(self, key: ShapeKey, seconds: Iterable[float]) -> None:
        """Record measured dense-call times of shape ``key`` (the newest ``keep`` are kept)."""
        self._observed.setdefault(key, deque(maxlen=self.keep)).extend(seconds)

    def source(self, key: ShapeKey) -> str:
        """``"observed"`` when :meth:`seconds` answers from observed calls, else ``"probe"``."""
        return "observed" if len(self._observed.get(key, ())) >= self.min_observed else "probe"

    def seconds(self, key: ShapeKey) -> float | None:
        """Dense seconds of one call of shape ``key``: observed median, else the (cached) probe."""
        if self.source(key) == "observed":
            return statistics.median(self._observed[key])
        if key not in self._probed:
            self._probed[key] = self._measure(key)
        return self._probed[key]

    def _measure(self, key: ShapeKey) -> float | None:
        b, h, n, d, dtype_name, device_name = key
        device = torch.device(device_name)
        if device.type != "cuda":
            return None
        dtype = getattr(torch, dtype_name)
        try:
            q, k, v = (torch.randn(b, n, h, d, dtype=dtype, device=device) for _ in range(3))
            for _ in range(2):  # warm-up: backend selection, plans, workspace
                self.dense_fn(q, k, v)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.repeats):
                self.dense_fn(q, k, v)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0 / self.repeats
        except torch.cuda.OutOfMemoryError:
            return None
        finally:
            q = k = v = None


def _sdpa_bnhd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain SDPA on ``(B, N, H, D)`` inputs (the calibration's default dense call)."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


@dataclass
class _ForwardRecord:
    step: int
    branch: int
    timer: _Timer | None
    expected_calls: int
    calls: int = 0


@dataclass
class AttentionAccounting:
    """Counts, densities and timings of one job's routed self-attention calls."""

    timing: bool = True  # False: no timers were recorded, every seconds figure is None
    dense_calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DENSE_REASONS, 0))
    sparse_calls: int = 0
    skipped_calls: int = 0
    dense_flops: float = 0.0
    dense_equivalent_flops: float = 0.0  # of every routed call that ran (dense and sparse)
    # device -> fp64 (2,): the sum of the sparse calls' mean densities, and their computed FLOPs (accumulated on the
    # device without synchronising)
    _sparse_totals: dict[str, torch.Tensor] = field(default_factory=dict)
    _sparse_timers: list[tuple[ShapeKey, _Timer]] = field(default_factory=list)
    _dense_timers: list[tuple[ShapeKey, _Timer]] = field(default_factory=list)
    _forwards: list[_ForwardRecord] = field(default_factory=list)

    # ---- hot path (no host-device synchronisation) ----

    def begin_forward(self, step: int, branch: int, expected_calls: int, device: torch.device | None,
                      timing: bool) -> _ForwardRecord:
        timer = _Timer(device) if timing and device is not None else None
        record = _ForwardRecord(step, branch, timer, expected_calls)
        self._forwards.append(record)
        return record

    def end_forward(self, record: _ForwardRecord) -> None:
        if record.timer is not None:
            record.timer.stop()
        # A cache hook (first-block cache, pyramid broadcast, ...) skipped the calls that never came.
        self.skipped_calls += max(0, record.expected_calls - record.calls)

    def start_timer(self, device: torch.device, timing: bool) -> _Timer | None:
        return _Timer(device) if timing else None

    def record_dense(self, key: ShapeKey, reason: str, timer: _Timer | None) -> None:
        self.dense_calls[reason] += 1
        flops = attention_flops(key)
        self.dense_flops += flops
        self.dense_equivalent_flops += flops
        if timer is not None:
            timer.stop()
            self._dense_timers.append((key, timer))

    def record_sparse(self, key: ShapeKey, density: torch.Tensor, num_dense_tokens: int,
                      key_padding_mask: torch.Tensor | None, timer: _Timer | None) -> None:
        """``density``: ``(B, H)`` fp32 on the device, computed query-key pairs over the pairs of the valid keys
        (``svg2_attention``'s); ``key_padding_mask``: ``(B, T)`` bool of the ``num_dense_tokens`` text keys (True =
        valid), None = all valid. One launch on a GPU (svg2core.ops.density.accumulate_density)."""
        from svg2core.ops.density import accumulate_density

        self.sparse_calls += 1
        b, h, n, d = key[:4]
        self.dense_equivalent_flops += attention_flops(key)
        dev = key[5]
        totals = self._sparse_totals.get(dev)
        if totals is None:
            totals = self._sparse_totals[dev] = torch.zeros(2, dtype=torch.float64, device=density.device)
        accumulate_density(totals, density, n, num_dense_tokens, d, key_padding_mask)
        if timer is not None:
            timer.stop()
            self._sparse_timers.append((key, timer))

    # ---- end of job (synchronises) ----

    def metrics(self, calibration: DenseAttentionCalibration | None = None) -> dict:
        """The job's accounting as a plain JSON-able dict (reads device accumulators and events)."""
        dense_total = sum(self.dense_calls.values())
        totals = [t.tolist() for t in self._sparse_totals.values()]
        density_sum = sum(t[0] for t in totals)
        sparse_flops = sum(t[1] for t in totals)
        ran = dense_total + self.sparse_calls
        computed_flops = self.dense_flops + sparse_flops

        sparse_seconds = _sum_seconds(self._sparse_timers) if self.timing else None
        dense_seconds = _sum_seconds(self._dense_timers) if self.timing else None

        per_step: dict[int, float] = defaultdict(float)
        step_timed = self.timing
        for rec in self._forwards:
            sec = rec.timer.read() if rec.timer is not None else None
            if sec is None:
                step_timed = False
            else:
                per_step[rec.step] += sec
        steps = sorted({rec.step for rec in self._forwards})

        calibration = calibration if self.timing else None
        if calibration is not None:  # this job's dense calls calibrate its own estimate (and later jobs')
            observed: dict[ShapeKey, list[float]] = defaultdict(list)
            for key, timer in self._dense_timers:
                sec = timer.read()
                if sec is not None:
                    observed[key].append(sec)
            for key, secs in observed.items():
                calibration.observe(key, secs)
        saved, dense_estimate = _time_saved(self._sparse_timers, calibration)
        sources = sorted({calibration.source(key) for key, _ in self._sparse_timers}) if calibration else []
        return {
            "attention_calls": ran + self.skipped_calls,
            "dense_calls": dense_total,
            "dense_calls_warmup": self.dense_calls["warmup"],
            "dense_calls_dense_layers": self.dense_calls["dense_layer"],
            "dense_calls_dense_mode": self.dense_calls["dense_mode"],
            "sparse_calls": self.sparse_calls,
            "skipped_calls": self.skipped_calls,
            "mean_density_sparse": density_sum / self.sparse_calls if self.sparse_calls else None,
            "mean_density_overall": (density_sum + dense_total) / ran if ran else None,
            "attention_flops": computed_flops,
            "attention_flops_dense_equivalent": self.dense_equivalent_flops,
            "attention_flops_ratio": (computed_flops / self.dense_equivalent_flops
                                      if self.dense_equivalent_flops else None),
            "sparse_attention_seconds": sparse_seconds,
            "dense_attention_seconds": dense_seconds,
            "transformer_forwards": len(self._forwards),
            "step_transformer_seconds": [per_step[s] for s in steps] if (step_timed and steps) else None,
            "estimated_dense_attention_seconds_for_sparse_calls": dense_estimate,
            "estimated_attention_seconds_saved": saved,
            # where the dense time of the estimate came from: "observed" (dense calls of this shape that
            # jobs ran here), "probe" (timed dense calls on random inputs), both, or None (no estimate)
            "estimated_dense_time_source": ("+".join(sources) or None) if dense_estimate else None,
        }


def _sum_seconds(timers: list[tuple[ShapeKey, _Timer]]) -> float | None:
    if not timers:
        return 0.0
    total = 0.0
    for _, timer in timers:
        sec = timer.read()
        if sec is None:
            return None
        total += sec
    return total


def _time_saved(sparse_timers: list[tuple[ShapeKey, _Timer]],
                calibration: DenseAttentionCalibration | None) -> tuple[float | None, float | None]:
    """(dense estimate - measured sparse time, dense estimate) over the sparse calls, or Nones when
    there is no calibration (CPU) or a call was not timed."""
    if calibration is None or not sparse_timers:
        return (0.0, 0.0) if calibration is not None and not sparse_timers else (None, None)
    dense_total = 0.0
    sparse_total = 0.0
    for key, timer in sparse_timers:
        dense = calibration.seconds(key)
        sec = timer.read()
        if dense is None or sec is None:
            return None, None
        dense_total += dense
        sparse_total += sec
    return dense_total - sparse_total, dense_total
