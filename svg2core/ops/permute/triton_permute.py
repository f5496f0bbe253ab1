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
    D: tl.constexpr, BLOCK_N: tl.constexpr, GATHER_K: tl.constexpr, REVERSE_BH: tl.constexpr = False,
):
    """kp[bh, i] = k[b, h, perm[bh, i]] (with ``GATHER_K``) and the same for v; grid (cdiv(N, BLOCK_N), B * H).

    Reads are row gathers (D contiguous elements each); writes are fully contiguous. ``REVERSE_BH``: the heads in
    reverse grid order (the first head is written last, so the attention kernel, which starts there, finds it in L2).
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    if REVERSE_BH:
        pid_bh = tl.num_programs(1) - 1 - pid_bh
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    m = offs_n < N
    tok = tl.load(perm_ptr + pid_bh * stride_pbh + offs_n, mask=m, other=0).to(tl.int64)
    out_off = pid_bh * stride_obh + offs_n[:, None] * stride_on + offs_d[None, :]
    if GATHER_K:
        krow = tl.load(k_ptr + b * stride_kb + h * stride_kh + tok[:, None] * stride_kn + offs_d[None, :],
                       mask=m[:, None], other=0.0)
        tl.store(kp_ptr + out_off, krow, mask=m[:, None])
    vrow = tl.load(v_ptr + b * stride_vb + h * stride_vh + tok[:, None] * stride_vn + offs_d[None, :],
                   mask=m[:, None], other=0.0)
    tl.store(vp_ptr + out_off, vrow, mask=m[:, None])


@triton.jit
def _block_histogram_kernel(
    labels_ptr, counts_ptr, N, C,
    stride_lbh, stride_cbh,
    BLOCK: tl.constexpr, C_POW2: tl.constexpr,
):
    """counts[bh, blk * C + c] = tokens of block ``blk`` with label ``c``; grid (NB, B * H).

    Block-major layout: one program writes one contiguous row of C counts. The k-means assign kernel
    writes the same array itself when asked (``kmeans_assign(..., block_counts=...)``), which saves
    this launch.
    """
    blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    lab = tl.load(labels_ptr + pid_bh * stride_lbh + offs, mask=m, other=0)
    hist = tl.histogram(lab, C_POW2, mask=m)
    bins = tl.arange(0, C_POW2)
    tl.store(counts_ptr + pid_bh * stride_cbh + blk * C + bins, hist, mask=bins < C)


@triton.jit
def _count_scan_kernel(
    counts_ptr, starts_ptr, totals_ptr, C, NB,
    stride_cbh, stride_sbh, stride_tbh,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per cluster, the exclusive scan of the block counts over the blocks; grid (cdiv(C, BLOCK_C), B * H).

    ``starts[bh, blk * C + c]`` = tokens of cluster ``c`` in blocks before ``blk``;
    ``totals[bh, c]`` = the size of cluster ``c``. Tiles of (BLOCK_B blocks, BLOCK_C clusters) with a
    running carry per cluster.
    """
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = offs_c < C
    carry = tl.zeros([BLOCK_C], tl.int32)
    for b0 in range(0, NB, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        m = (offs_b < NB)[:, None] & mc[None, :]
        off = offs_b[:, None] * C + offs_c[None, :]
        cnt = tl.load(counts_ptr + pid_bh * stride_cbh + off, mask=m, other=0)
        incl = tl.cumsum(cnt, axis=0)
        tl.store(starts_ptr + pid_bh * stride_sbh + off, incl - cnt + carry[None, :], mask=m)
        carry += tl.sum(cnt, axis=0)
    tl.store(totals_ptr + pid_bh * stride_tbh + offs_c, carry, mask=mc)


@triton.jit
def _run_start(lab_a, start_a, lab_b, start_b):
    """Combine of an inclusive scan over sorted labels: the position where the current label's run starts (for
    sorted labels, equal labels at both ends of two adjacent ranges mean the right range is one run)."""
    return lab_b, tl.where(lab_a == lab_b, start_a, start_b)


@triton.jit
def _counting_scatter_kernel(
    labels_ptr, starts_ptr, totals_ptr, perm_ptr, offsets_ptr, N, C,
    stride_lbh, stride_sbh, stride_tbh, stride_pbh, stride_obh,
    BLOCK: tl.constexpr, C_POW2: tl.constexpr,
):
    """perm[bh, offsets[c] + starts[bh, blk * C + c] + rank] = token, for every token of block ``blk``.

    ``offsets`` (the exclusive scan of the cluster sizes ``totals``) is recomputed by every program
    (C_POW2 values in registers) and written by block 0. ``rank`` is the token's position among the
    block's tokens of the same label, in token order (an in-register sort of the packed keys
    ``label * BLOCK + local index``), which makes the whole sort stable: the sorted position minus that of the
    label's first token in the block, found by a scan over the sorted labels for the start of each run (a
    histogram of the block's labels did the same at a cost that grows with the bins). Grid (NB, B * H).
    """
    blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bins = tl.arange(0, C_POW2)
    tot = tl.load(totals_ptr + pid_bh * stride_tbh + bins, mask=bins < C, other=0)
    cluster_start = tl.cumsum(tot, axis=0) - tot
    if blk == 0:
        tl.store(offsets_ptr + pid_bh * stride_obh + bins, cluster_start, mask=bins < C)
        tl.store(offsets_ptr + pid_bh * stride_obh + C, N)
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
    _, run_start = tl.associative_scan((lab_s, local), 0, _run_start)
    rank = local - run_start
    start = tl.load(starts_ptr + pid_bh * stride_sbh + blk * C + lab_c, mask=valid, other=0)
    start += tl.gather(cluster_start, lab_c, 0)
    tl.store(perm_ptr + pid_bh * stride_pbh + start + rank, blk * BLOCK + tok_s, mask=valid)
