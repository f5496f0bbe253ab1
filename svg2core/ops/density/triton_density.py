"""Triton kernels of a call's density (one program per (b, h)) and of its accumulation (one program).

Each replaces ~10 small torch ops of the references (casts, a gather, reductions, in-place adds), each of those its
own launch and its own host time, with one launch."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _valid_text_keys(mask_ptr, stride_mb, b, T, HAS_MASK: tl.constexpr, BLOCK_T: tl.constexpr):
    """The valid text keys of batch element ``b`` (fp64): ``T`` without a mask, else the mask row's True count."""
    if HAS_MASK:
        offs_t = tl.arange(0, BLOCK_T)
        tv = tl.zeros((), dtype=tl.int32)
        for start in range(0, T, BLOCK_T):
            valid = tl.load(mask_ptr + b * stride_mb + start + offs_t, mask=start + offs_t < T, other=0)
            tv += tl.sum(valid.to(tl.int32), axis=0)
        tv = tv.to(tl.float64)
    else:
        tv = tl.cast(T, tl.float64)
    return tv


# the sizes are runtime values: no recompile for a size of 1 (Triton's default makes an int argument equal to 1 a
# constant) or per divisibility
@triton.jit(do_not_specialize=["H", "CQ", "NV", "T"])
def _selection_density_kernel(
    qsize_ptr, count_ptr, cum_ptr, mask_ptr, out_ptr,
    H, CQ, NV, T,
    stride_size_bh, stride_count_bh, stride_cum_bh, stride_cum_q, stride_mb,
    HAS_MASK: tl.constexpr, BLOCK_CQ: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """One program per (b, h): the head's computed pairs (exact, int64) and its density (fp64, stored fp32)."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK_CQ)
    m = offs < CQ
    sizes = tl.load(qsize_ptr + pid * stride_size_bh + offs, mask=m, other=0)
    count = tl.load(count_ptr + pid * stride_count_bh + offs, mask=m, other=0)
    kept = tl.load(cum_ptr + pid.to(tl.int64) * stride_cum_bh + offs * stride_cum_q + count, mask=m, other=0)
    video = tl.sum(sizes.to(tl.int64) * kept.to(tl.int64), axis=0).to(tl.float64)
    tv = _valid_text_keys(mask_ptr, stride_mb, pid // H, T, HAS_MASK, BLOCK_T)
    nv = tl.cast(NV, tl.float64)
    t = tl.cast(T, tl.float64)
    density = (video + nv * tv + t * (nv + tv)) / ((nv + t) * (nv + tv))
    tl.store(out_ptr + pid, density.to(tl.float32))


@triton.jit(do_not_specialize=["B", "H", "N", "T"])
def _accumulate_density_kernel(
    density_ptr, mask_ptr, totals_ptr,
    B, H, N, T, flops_per_pair, stride_db, stride_mb,
    HAS_MASK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """One program: the call's mean density and FLOPs, added to ``totals`` (load, add, store: the launches of one
    stream run in order, so no atomics are needed)."""
    offs_h = tl.arange(0, BLOCK_H)
    mean = tl.zeros((), dtype=tl.float64)
    pairs = tl.zeros((), dtype=tl.float64)
    for b in range(0, B):
        row = tl.sum(tl.load(density_ptr + b * stride_db + offs_h, mask=offs_h < H, other=0.0).to(tl.float64),
                     axis=0)
        valid = (N - T) + _valid_text_keys(mask_ptr, stride_mb, b, T, HAS_MASK, BLOCK_T)
        mean += row
        pairs += row * valid
    tl.store(totals_ptr, tl.load(totals_ptr) + mean / (B * H))
    tl.store(totals_ptr + 1, tl.load(totals_ptr + 1) + pairs * tl.cast(N, tl.float64) * flops_per_pair)
