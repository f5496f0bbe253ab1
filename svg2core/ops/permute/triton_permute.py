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


@triton.jit
def _block_histogram_kernel(
    labels_ptr, counts_ptr, N, C, NB,
    stride_lbh, stride_cbh,
    BLOCK: tl.constexpr, C_POW2: tl.constexpr,
):
    """counts[bh, c * NB + blk] = tokens of block ``blk`` with label ``c``; grid (NB, B * H).

    Cluster-major layout, so one inclusive cumsum over a row gives every (cluster, block) segment's
    end in the stably sorted order.
    """
    blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    lab = tl.load(labels_ptr + pid_bh * stride_lbh + offs, mask=m, other=0)
    hist = tl.histogram(lab, C_POW2, mask=m)
    bins = tl.arange(0, C_POW2)
    tl.store(counts_ptr + pid_bh * stride_cbh + bins * NB + blk, hist, mask=bins < C)


@triton.jit
def _counting_scatter_kernel(
    labels_ptr, starts_ptr, perm_ptr, N, C, NB,
    stride_lbh, stride_sbh, stride_pbh,
    BLOCK: tl.constexpr, C_POW2: tl.constexpr,
):
    """perm[bh, starts[bh, c * NB + blk] + rank] = token, for every token of block ``blk``.

    ``starts`` is the exclusive scan of the block histograms; ``rank`` is the token's position among
    the block's tokens of the same label, in token order (an in-register sort of the packed keys
    ``label * BLOCK + local index``), which makes the whole sort stable. Grid (NB, B * H).
    """
    blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    local = tl.arange(0, BLOCK)
    offs = blk * BLOCK + local
    m = offs < N
    lab = tl.load(labels_ptr + pid_bh * stride_lbh + offs, mask=m, other=0)
    key = tl.where(m, lab * BLOCK + local, C_POW2 * BLOCK + local)  # padding sorts last
    key = tl.sort(key)
    lab_s = key // BLOCK
    tok_s = key % BLOCK
    valid = lab_s < C
    lab_c = tl.minimum(lab_s, C_POW2 - 1)
    hist = tl.histogram(lab, C_POW2, mask=m)
    first = tl.cumsum(hist, axis=0) - hist  # sorted position of each label's first token in the block
    rank = local - tl.gather(first, lab_c, 0)
    start = tl.load(starts_ptr + pid_bh * stride_sbh + lab_c * NB + blk, mask=valid, other=0)
    tl.store(perm_ptr + pid_bh * stride_pbh + start + rank, blk * BLOCK + tok_s, mask=valid)
