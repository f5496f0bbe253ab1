"""Cluster scoring and key-cluster selection: wrapper over the Triton kernels or the reference."""

from __future__ import annotations

import math

import torch

from svg2core.config import SVG2Config
from svg2core.ops.select.reference import KeySweep, select_key_clusters_reference, token_limits
from svg2core.state import Workspace

# The logits kernel's tile: query x key clusters per program, the dot in head-dim steps of _LOGITS_BLOCK_D, warps.
# H100, kernel alone, graph replay (probe_logits_h100_s14.md), 64 x 32 in steps of 32 against the 32 x 64 tile over
# the whole head dim: 480p 12 x 100 x 500 0.0084 vs 0.0111 ms, 12 x 300 x 1000 0.026 vs 0.038, Wan 14B 40 x 300 x
# 1000 0.089 vs 0.117; largest |error| against fp64 5e-7 vs 8e-7 (the whole-dim 3xTF32 dot spills: 255 registers).
_LOGITS_BLOCK_Q = 64
_LOGITS_BLOCK_K = 32
_LOGITS_BLOCK_D = 32
_LOGITS_WARPS = 4
# The logits kernel's fp32 dot: "tf32x3" (three TF32 tensor-core products of the split operands) or "ieee" (FFMA on
# the CUDA cores). As accurate, and 2.7-3.6x faster: H100, kernel alone, graph replay (probe_logits_h100_s13a.md),
# largest |error| against the fp64 product 8e-7 vs 9e-7; 480p 12 x 100 x 500 0.012 vs 0.032 ms, 12 x 300 x 1000
# 0.041 vs 0.153, Wan 14B 40 x 300 x 1000 0.129 vs 0.470 (where it is on the selection's critical path). Selections
# made from the two differ only where logits tie to within their rounding.
LOGITS_PRECISION = "tf32x3"
SELECT_NUM_WARPS: int | None = None  # warps of the per-row selection kernel; None = by row length
# "sort": bitonic sort of the whole row (kept clusters in descending P, the reference's order), on one int32 key per
# cluster since session 7 (the logit's order bits above the id; an int64 key before): H100, graph, the select stage
# at 40 x 300 x 1000 rows 1.215 -> 0.960 ms, 12 x 300 x 1000 0.385 -> 0.308 (bench_selection_h100.md);
# "threshold": radix search for the rule's threshold (kept clusters in ascending id). Same kept set.
# H200, graph-replayed (docs/benchmarks/bench_selection_h200.json): 40 x 300 x 1000 rows sort 0.75 ms
# (16 warps), threshold 0.78 ms at best (2 bits, 4 warps; 4 bits spill: 3.4-19 ms); 12 x 300 x 1000
# rows 0.233 vs 0.237 ms. The sort stays the default.
SELECT_METHOD = "sort"
SELECT_RADIX_BITS = 2  # key bits decided per step of the threshold search (2^bits candidates at once)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _select_warps(block_row: int, method: str) -> int:
    if method == "threshold":  # fastest of the H200 sweep: 4 warps (8: 0.37 vs 0.24 ms at 12 x 300 x 1000)
        return 4
    # One warp per row up to 1024 clusters: every exchange of the bitonic sort and of the scans is a shuffle or stays
    # in registers, no block barrier (sm_90: 7,176 warp-instructions per 1024-wide row against 16,896 and 39 barriers
    # on 16 warps). H100, kernel alone, graph replay (docs/benchmarks/probe_select_h100_s14.md), ms, against the
    # previous 8 / 16 warps: 12 x 100 x 500 0.015 vs 0.019, 40 x 300 x 1000 0.369 vs 0.396 (top-p 0.417 vs 0.493),
    # 24 x 400 x 1000 0.303 vs 0.316; bit-identical at fixed density. 2 and 4 warps were slower than both.
    # Wider rows keep the earlier sweep's 16 warps (one warp spills from 4,096; 2,048 is untimed).
    return 1 if block_row <= 1024 else 16


def select_key_clusters(
    q_centroids: torch.Tensor, k_centroids: torch.Tensor, k_sizes: torch.Tensor,
    config: SVG2Config, num_video_tokens: int, workspace: Workspace, backend: str = "triton",
    sweep: KeySweep | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (b, h, query cluster), the key clusters to attend to (docs/ARCHITECTURE.md, selection rule).

    Args:
        q_centroids: ``(BH, Cq, D)`` fp32.
        k_centroids: ``(BH, Ck, D)`` fp32.
        k_sizes: ``(BH, Ck)`` int32 key-cluster sizes (each row sums to ``num_video_tokens``).
        config: ``mode`` ("top_p" or "fixed_density") and its budgets.
        num_video_tokens: ``Nv``.
        workspace: owner of the logits and selection buffers.
        backend: ``"triton"`` or ``"reference"``.
        sweep: lay the kept clusters out in the attention kernel's sweep order
            (``reference.selection_in_sweep_order``); ``None``: the rule's order (by the method, see
            :func:`select_from_logits`). The kept set is the same.

    Returns:
        ``sel_idx (BH, Cq, Ck) int32``, ``sel_count (BH, Cq) int32``, ``sel_cum (BH, Cq, Ck + 1) int32``.
    """
    if backend == "reference":
        return select_key_clusters_reference(q_centroids, k_centroids, k_sizes, config, num_video_tokens, sweep)
    logits = cluster_logits(q_centroids, k_centroids, k_sizes, workspace)
    return select_from_logits(logits, k_sizes, config, num_video_tokens, workspace, sweep)


def select_from_logits(logits: torch.Tensor, k_sizes: torch.Tensor, config: SVG2Config,
                       num_video_tokens: int, workspace: Workspace,
                       sweep: KeySweep | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton selection from ``(BH, Cq, Ck)`` logits (one program per row, in registers).

    :data:`SELECT_METHOD` ``"threshold"`` returns the reference's kept set and ``sel_count`` with the
    kept clusters in ascending id (``select_from_logits_reference(...)`` put through
    ``selection_in_id_order``); ``"sort"`` returns the reference's order. With ``sweep``, either method lays the
    kept clusters out in sweep order (``selection_in_sweep_order`` of the reference's selection).
    """
    from svg2core.ops.select.triton_select import _select_kernel, _select_threshold_kernel

    bh, cq, ck = logits.shape
    dev = logits.device
    sel_idx = workspace.buffer("sel.idx", (bh, cq, ck), torch.int32, dev)
    sel_count = workspace.buffer("sel.count", (bh, cq), torch.int32, dev)
    sel_cum = workspace.buffer("sel.cum", (bh, cq, ck + 1), torch.int32, dev)
    min_tokens, max_tokens = token_limits(config, num_video_tokens)
    block_row = max(16, _next_pow2(ck))
    if sweep is not None and not (sweep.period >= 1 and tuple(sweep.q_sizes.shape) == (bh, cq)):
        raise ValueError(f"sweep: needs period >= 1 and q_sizes of shape {(bh, cq)}, got period {sweep.period} and "
                         f"shape {tuple(sweep.q_sizes.shape)}")
    q_sizes = sweep.q_sizes if sweep is not None else k_sizes  # unread without a sweep
    args = (logits, k_sizes, sel_idx, sel_count, sel_cum, q_sizes,
            ck, float(config.top_p), min_tokens, max_tokens, sweep.period if sweep is not None else 1,
            logits.stride(0), logits.stride(1), k_sizes.stride(0),
            sel_idx.stride(0), sel_idx.stride(1), sel_count.stride(0), sel_cum.stride(0), sel_cum.stride(1),
            q_sizes.stride(0))
    layout = dict(SWEEP=sweep is not None, BLOCK_M=sweep.block_m if sweep is not None else 128,
                  BLOCK_CQ=max(16, _next_pow2(cq)) if sweep is not None else 16)
    warps = SELECT_NUM_WARPS or _select_warps(block_row, SELECT_METHOD)
    fixed = config.mode == "fixed_density"
    if SELECT_METHOD == "threshold":
        _select_threshold_kernel[(cq, bh)](
            *args, FIXED=fixed, BLOCK_K=block_row, RADIX_BITS=SELECT_RADIX_BITS, **layout, num_warps=warps,
        )
    elif SELECT_METHOD == "sort":
        _select_kernel[(cq, bh)](*args, FIXED=fixed, BLOCK_K=block_row, **layout, num_warps=warps)
    else:
        raise ValueError(f"SELECT_METHOD: must be 'threshold' or 'sort', got {SELECT_METHOD!r}")
    return sel_idx, sel_count, sel_cum


def cluster_logits(q_centroids: torch.Tensor, k_centroids: torch.Tensor, k_sizes: torch.Tensor,
                   workspace: Workspace) -> torch.Tensor:
    """Triton ``S + log|K|`` logits only (``(BH, Cq, Ck)`` fp32), exposed for kernel tests."""
    from svg2core.ops.select.triton_select import _cluster_logits_kernel

    bh, cq, d = q_centroids.shape
    ck = k_centroids.shape[1]
    logits = workspace.buffer("sel.logits", (bh, cq, ck), torch.float32, q_centroids.device)
    block_k = min(_LOGITS_BLOCK_K, max(16, _next_pow2(ck)))
    precision = LOGITS_PRECISION
    if q_centroids.is_cuda and torch.cuda.get_device_capability(q_centroids.device)[0] < 8:
        precision = "ieee"  # no TF32 tensor cores before Ampere
    _cluster_logits_kernel[((cq + _LOGITS_BLOCK_Q - 1) // _LOGITS_BLOCK_Q, (ck + block_k - 1) // block_k, bh)](
        q_centroids, k_centroids, k_sizes, logits, cq, ck, 1.0 / math.sqrt(d),
        q_centroids.stride(0), q_centroids.stride(1), k_centroids.stride(0), k_centroids.stride(1),
        k_sizes.stride(0), logits.stride(0), logits.stride(1),
        D=d, BLOCK_Q=_LOGITS_BLOCK_Q, BLOCK_K=block_k, BLOCK_D=min(_LOGITS_BLOCK_D, d), PRECISION=precision,
        num_warps=_LOGITS_WARPS,
    )
    return logits
