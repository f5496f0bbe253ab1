"""Triton gather of K and V rows into cluster-contiguous layout."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _gather_kv_kernel(
    k_ptr, v_ptr, perm_ptr, kp_ptr, vp_ptr,
    N, H,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_pbh,
    stride_obh, stride_on,
    D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """kp[bh, i] = k[b, h, perm[bh, i]] and the same for v; grid (cdiv(N, BLOCK_N), B * H).

    Reads are row gathers (D contiguous elements each); writes are fully contiguous.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    m = offs_n < N
    tok = tl.load(perm_ptr + pid_bh * stride_pbh + offs_n, mask=m, other=0).to(tl.int64)
    krow = tl.load(k_ptr + b * stride_kb + h * stride_kh + tok[:, None] * stride_kn + offs_d[None, :],
                   mask=m[:, None], other=0.0)
    vrow = tl.load(v_ptr + b * stride_vb + h * stride_vh + tok[:, None] * stride_vn + offs_d[None, :],
                   mask=m[:, None], other=0.0)
    out_off = pid_bh * stride_obh + offs_n[:, None] * stride_on + offs_d[None, :]
    tl.store(kp_ptr + out_off, krow, mask=m[:, None])
    tl.store(vp_ptr + out_off, vrow, mask=m[:, None])
