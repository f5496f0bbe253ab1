"""Triton kernels of batched k-means: fused distance + argmin, and per-cluster segment means.

Launch grids put the flattened ``(batch, head)`` index on axis 1 and a block of tokens (assign) or
one cluster (update) on axis 0. Points are read through ``(batch, head, token)`` strides, so a
``(B, H, N, D)`` view of a ``(B, N, H, D)`` tensor is clustered without a copy.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _prepare_centroids_kernel(
    cent_ptr, cent_lp_ptr, cent_sq_ptr, C, C_STORE,
    stride_cbh, stride_cc, stride_lbh, stride_lc, stride_sbh,
    D: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """cent_lp = cent in the points' dtype (the dot operand), cent_sq = ||cent||^2 in fp32, for the first C_STORE
    rows: the rows from C on (padding to whole assign tiles) get zeros and a norm of +inf (never the argmin)."""
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, D)
    m = offs_c < C
    ms = offs_c < C_STORE
    cent = tl.load(cent_ptr + pid_bh * stride_cbh + offs_c[:, None] * stride_cc + offs_d[None, :],
                   mask=m[:, None], other=0.0)
    tl.store(cent_lp_ptr + pid_bh * stride_lbh + offs_c[:, None] * stride_lc + offs_d[None, :],
             cent.to(cent_lp_ptr.dtype.element_ty), mask=ms[:, None])
    tl.store(cent_sq_ptr + pid_bh * stride_sbh + offs_c, tl.where(m, tl.sum(cent * cent, axis=1), float("inf")),
             mask=ms)


@triton.jit
def _dot_nt(a, b, DOT_FP32: tl.constexpr):
    """``a @ b^T`` accumulated in fp32: exact fp32 products for fp32 points (``DOT_FP32``), tensor-core products of
    the low-precision operands otherwise."""
    if DOT_FP32:
        return tl.dot(a, tl.trans(b), input_precision="ieee")
    return tl.dot(a, tl.trans(b))


@triton.jit
def _kmeans_assign_kernel(
    x_ptr, cent_ptr, cent_sq_ptr, labels_ptr, counts_ptr,
    N, C, H,
    stride_xb, stride_xh, stride_xn,
    stride_cbh, stride_cc, stride_sbh,
    stride_lbh, stride_nbh,
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, DOT_FP32: tl.constexpr,
    HIST: tl.constexpr, C_POW2: tl.constexpr, PACKED: tl.constexpr = False, EVEN_C: tl.constexpr = False,
):
    """labels[bh, n] = argmin_c ||x[bh, n] - cent[bh, c]||^2, over tiles of BLOCK_C centroids.

    ``cent`` is in the points' dtype (tensor-core operand) and ``cent_sq`` holds the fp32 squared
    norms, both from ``_prepare_centroids_kernel``. The (tokens x clusters) distance matrix only ever
    exists as one (BLOCK_N, BLOCK_C) tile in registers; a running (min, argmin) pair carries across
    tiles. Ties keep the lowest cluster id. Grid: (cdiv(N, BLOCK_N), B * H).

    With ``PACKED`` the argmin runs on one int32 key per distance instead of a (value, index) pair: the distance
    plus the block's largest ``||x||^2``, ``||c||^2 - 2 x.c + max_rows ||x||^2 >= ||x - c||^2 >= 0`` (up to
    rounding, so its float bits order like the floats; one FFMA), with its low ``log2(C_POW2)`` mantissa bits
    replaced by the centroid id. One integer min per distance instead of compares and two selects; distances
    within ``2^log2(C_POW2)`` units in the last place of each other count as ties (to the lower id), far below
    the bf16 rounding of the dot's operands.

    With ``HIST`` the program also writes its block's label histogram,
    ``counts[bh, pid_n * C + c]`` (the first stage of the counting sort, blocks of BLOCK_N tokens),
    from the labels still in registers: one atomic increment per token into the block's own row of counts
    (zeroed first; rows of different programs never overlap, so programs never contend). ``tl.histogram`` here
    cost time in proportion to the bins (H100, 40 x 75,600 tokens, 1000 clusters: assign + sort 2.34 ms with it,
    1.82 ms with the increments; docs/benchmarks/probe_sort_h100.md).
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    mask_n = offs_n < N
    x = tl.load(
        x_ptr + b * stride_xb + h * stride_xh + offs_n[:, None] * stride_xn + offs_d[None, :],
        mask=mask_n[:, None], other=0.0,
    )
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    IDX_MASK: tl.constexpr = C_POW2 - 1
    if PACKED:
        # one bias for the block: the largest ||x||^2 of its rows keeps every row's c_sq - 2 x.c + bias >= 0
        # (up to rounding) with one FFMA per distance
        xf = x.to(tl.float32)
        bias = tl.max(tl.sum(xf * xf, axis=1), axis=0)
        best_key = tl.full([BLOCK_N], 0x7FFFFFFF, tl.int32)
    cent_base = cent_ptr + pid_bh * stride_cbh
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        if EVEN_C:  # the prepared buffers are padded to whole tiles (pads: zero rows, norm +inf)
            cent = tl.load(cent_base + offs_c[:, None] * stride_cc + offs_d[None, :])
            cent_sq = tl.load(cent_sq_ptr + pid_bh * stride_sbh + offs_c)
        else:
            cent = tl.load(cent_base + offs_c[:, None] * stride_cc + offs_d[None, :], mask=mask_c[:, None],
                           other=0.0)
            cent_sq = tl.load(cent_sq_ptr + pid_bh * stride_sbh + offs_c, mask=mask_c, other=float("inf"))
        dot = _dot_nt(x, cent, DOT_FP32)  # (BLOCK_N, BLOCK_C) fp32 accumulate
        if PACKED:
            # padded centroids: cent_sq = inf, so their key is above every finite distance's
            dist = (cent_sq + bias)[None, :] - 2.0 * dot
            key = (dist.to(tl.int32, bitcast=True) & ~IDX_MASK) | offs_c[None, :]
            best_key = tl.minimum(best_key, tl.min(key, axis=1))
        else:
            # ||x||^2 is the same for every centroid of a row: leave it out of the argmin.
            dist = cent_sq[None, :] - 2.0 * dot
            tile_min, tile_arg = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = tile_min < best
            best = tl.where(better, tile_min, best)
            best_idx = tl.where(better, tile_arg.to(tl.int32) + c0, best_idx)
    if PACKED:
        best_idx = best_key & IDX_MASK
    tl.store(labels_ptr + pid_bh * stride_lbh + offs_n, best_idx, mask=mask_n)
    if HIST:
        row = counts_ptr + pid_bh * stride_nbh + pid_n * C
        bins = tl.arange(0, C_POW2)
        tl.store(row + bins, tl.zeros([C_POW2], tl.int32), mask=bins < C)
        tl.debug_barrier()  # bar.sync: the zeros are visible to every thread of the program before its increments
        tl.atomic_add(row + best_idx, tl.full([BLOCK_N], 1, tl.int32), mask=mask_n, sem="relaxed")


@triton.jit
def _store_centroid(mean, cent_ptr, cent_lp_ptr, cent_sq_ptr, pid_bh, pid_c, offs_d, stride_cbh, stride_cc,
                    stride_lbh, stride_lc, stride_sbh, PREPARE: tl.constexpr):
    """The new centroid, and with ``PREPARE`` its low-precision copy and squared norm for the next assign."""
    tl.store(cent_ptr + pid_bh * stride_cbh + pid_c * stride_cc + offs_d, mean)
    if PREPARE:
        tl.store(cent_lp_ptr + pid_bh * stride_lbh + pid_c * stride_lc + offs_d, mean.to(cent_lp_ptr.dtype.element_ty))
        tl.store(cent_sq_ptr + pid_bh * stride_sbh + pid_c, tl.sum(mean * mean, axis=0))


@triton.jit
def _kmeans_segment_mean_kernel(
    x_ptr, perm_ptr, labels_ptr, offsets_ptr, cent_ptr, cent_lp_ptr, cent_sq_ptr, part_ptr, ticket_ptr, rows_ptr,
    SLOTS, C, H,
    stride_xb, stride_xh, stride_xn,
    stride_pbh, stride_labh, stride_obh,
    stride_cbh, stride_cc, stride_lbh, stride_lc, stride_sbh, stride_rbh, stride_rn,
    D: tl.constexpr, BLOCK_N: tl.constexpr, PREPARE: tl.constexpr, CHUNK: tl.constexpr, STORE_ROWS: tl.constexpr,
    STAGES: tl.constexpr = 1, REVERSE_BH: tl.constexpr = False,
):
    """cent[bh, c] = mean of x over the tokens perm[offsets[c]:offsets[c+1]]; empty clusters untouched.

    Tokens were stably sorted by label, so each cluster is one contiguous segment of the sorted order: no atomics on
    the sums, and the result does not depend on scheduling. With ``CHUNK = 0`` the grid is ``(C, B*H)``, one
    program per cluster, and the largest cluster's loop sets the launch's time.

    With ``CHUNK = R > 0`` the sorted order is also cut every R tokens, and a cluster is summed in pieces between the
    cuts it contains, so no program sums more than R tokens however uneven the clusters. Grid
    ``(C + cdiv(N, R) - 1, B*H)``: program c < C sums cluster c's first piece (up to the first cut after its start);
    program C + j - 1 sums the piece that starts at cut j * R, when that cut falls strictly inside a cluster
    (``labels[perm[j * R]]`` names it), and exits otherwise. A one-piece cluster's program writes its centroid. The
    pieces of a longer one write their sums to ``part[bh, slot]`` (fp32, ``(B*H, SLOTS, D)``, ``SLOTS = C +
    cdiv(N, R) - 1``: slot c for the first piece, C + j - 1 for the piece at cut j) and take a ticket
    (``ticket[bh, c]``, int32, zero between launches); the piece that draws the last ticket adds every piece in order
    (deterministic: the same order whoever finishes last), writes the centroid and puts the ticket back to zero.
    With ``PREPARE`` the program that writes a centroid also writes what ``_prepare_centroids_kernel`` would (its
    low-precision copy and squared norm), so the next assign needs no preparation launch.

    With ``STORE_ROWS`` every row read is also written to ``rows[bh, i]`` at its sorted position ``i``: the pieces
    partition the sorted order, so that is the gather of ``x`` into ``perm`` order (``(B*H, N, D)``, x's dtype) in
    the pass that already reads every row, instead of a separate gather that reads them again.

    ``STAGES > 1`` software-pipelines the row loop (the compiler's ``cp.async`` ring of that depth: the indices and
    rows of the next steps are in flight while a step is summed); 1: each step waits for its index load, then for
    its row loads.

    ``REVERSE_BH``: the heads in reverse grid order (the last head's programs start first), so that the heads an
    assign over the heads in order read last, still in L2, are the first this update reads; the result is the same.
    """
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    if REVERSE_BH:
        pid_bh = tl.num_programs(1) - 1 - pid_bh
    b = pid_bh // H
    h = pid_bh % H
    if pid < C:  # cluster pid's first piece
        c = pid
        start = tl.load(offsets_ptr + pid_bh * stride_obh + c)
        end = tl.load(offsets_ptr + pid_bh * stride_obh + c + 1)
        lo = start
        active = end > start
    else:  # the piece at cut j (j >= 1), if the cut is inside a cluster
        j = pid - C + 1
        lo = j * CHUNK
        tok0 = tl.load(perm_ptr + pid_bh * stride_pbh + lo)
        c = tl.load(labels_ptr + pid_bh * stride_labh + tok0)
        start = tl.load(offsets_ptr + pid_bh * stride_obh + c)
        end = tl.load(offsets_ptr + pid_bh * stride_obh + c + 1)
        active = start < lo
    if active:
        if CHUNK > 0:
            hi = tl.minimum(end, (lo // CHUNK + 1) * CHUNK)
            first = start // CHUNK
            last = (end - 1) // CHUNK
        else:
            hi = end
            first = 0
            last = 0
        offs_d = tl.arange(0, D)
        x_base = x_ptr + b * stride_xb + h * stride_xh
        acc = tl.zeros([BLOCK_N, D], tl.float32)
        for s in tl.range(lo, hi, BLOCK_N, num_stages=STAGES):
            idx = s + tl.arange(0, BLOCK_N)
            m = idx < hi
            tok = tl.load(perm_ptr + pid_bh * stride_pbh + idx, mask=m, other=0)
            rows = tl.load(x_base + tok[:, None].to(tl.int64) * stride_xn + offs_d[None, :], mask=m[:, None],
                           other=0.0)
            if STORE_ROWS:
                tl.store(rows_ptr + pid_bh.to(tl.int64) * stride_rbh + idx[:, None] * stride_rn + offs_d[None, :],
                         rows, mask=m[:, None])
            acc += rows.to(tl.float32)
        total = tl.sum(acc, axis=0)
        count = (end - start).to(tl.float32)
        if last == first:  # one piece: the whole cluster
            _store_centroid(total / count, cent_ptr, cent_lp_ptr, cent_sq_ptr, pid_bh, c, offs_d, stride_cbh,
                            stride_cc, stride_lbh, stride_lc, stride_sbh, PREPARE)
        else:
            row = part_ptr + pid_bh.to(tl.int64) * SLOTS * D
            tl.store(row + pid * D + offs_d, total)
            tl.debug_barrier()  # bar.sync: every thread's share of the piece is written before the ticket's release
            cell = ticket_ptr + pid_bh * C + c
            drawn = tl.atomic_add(cell, 1, sem="acq_rel")
            if drawn == last - first:  # the last piece to finish: every other piece is visible (acquire)
                total = tl.load(row + c * D + offs_d, cache_modifier=".cg")
                for cut in range(first + 1, last + 1):
                    total += tl.load(row + (C + cut - 1) * D + offs_d, cache_modifier=".cg")
                _store_centroid(total / count, cent_ptr, cent_lp_ptr, cent_sq_ptr, pid_bh, c, offs_d, stride_cbh,
                                stride_cc, stride_lbh, stride_lc, stride_sbh, PREPARE)
                tl.store(cell, 0)


@triton.jit
def _candidate_lists_kernel(
    cent_ptr, cent_sq_ptr, lists_ptr, C, M,
    stride_cbh, stride_cc, stride_sbh, stride_lbh, stride_lc,
    D: tl.constexpr, ROWS: tl.constexpr, K_POW2: tl.constexpr, BLOCK_C: tl.constexpr, C_POW2: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """lists[bh, i, :M] = cluster i, then the M - 1 other clusters whose centroids are nearest centroid i, nearest
    first. Grid ``(cdiv(C, ROWS), B * H)``.

    The centroids are the assign's prepared copies (the points' dtype, fp32 norms), so nearness is measured as the
    assign measures distance, and ranked by the assign's packed int32 keys: ``||c_i - c_j||^2`` (clamped at 0) with
    its low ``log2(C_POW2)`` bits replaced by ``j``, so that distances that close count as ties, to the lower id.
    The columns go by in tiles of BLOCK_C (a multiple of K_POW2 >= M - 1): each tile's K_POW2 smallest keys per row
    (a bitonic top-k on the keys' complements, since Triton 3.6's ``tl.topk`` keeps the largest) are joined with
    the running K_POW2 and cut back to K_POW2."""
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_r = pid_r * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, D)
    offs_k = tl.arange(0, K_POW2)
    offs_t = tl.arange(0, BLOCK_C)
    mask_r = offs_r < C
    IDX_MASK: tl.constexpr = C_POW2 - 1
    cent_base = cent_ptr + pid_bh * stride_cbh
    rows = tl.load(cent_base + offs_r[:, None] * stride_cc + offs_d[None, :], mask=mask_r[:, None], other=0.0)
    row_sq = tl.load(cent_sq_ptr + pid_bh * stride_sbh + offs_r, mask=mask_r, other=0.0)
    best = tl.full([ROWS, K_POW2], ~0x7FFFFFFF, tl.int32)  # complements of the largest key
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + offs_t
        mask_c = offs_c < C
        cols = tl.load(cent_base + offs_c[:, None] * stride_cc + offs_d[None, :], mask=mask_c[:, None], other=0.0)
        col_sq = tl.load(cent_sq_ptr + pid_bh * stride_sbh + offs_c, mask=mask_c, other=0.0)
        dot = _dot_nt(rows, cols, DOT_FP32)
        dist = tl.maximum(row_sq[:, None] + col_sq[None, :] - 2.0 * dot, 0.0)
        key = (dist.to(tl.int32, bitcast=True) & ~IDX_MASK) | offs_c[None, :]
        key = tl.where(mask_c[None, :] & (offs_c[None, :] != offs_r[:, None]), key, 0x7FFFFFFF)  # not itself
        key = ~key
        if BLOCK_C > K_POW2:
            key = tl.topk(key, K_POW2)
        best = tl.topk(tl.reshape(tl.join(best, key), [ROWS, 2 * K_POW2]), K_POW2)
    ids = (~best) & IDX_MASK
    base = lists_ptr + pid_bh * stride_lbh + offs_r[:, None] * stride_lc
    tl.store(base + 1 + offs_k[None, :], ids, mask=mask_r[:, None] & (offs_k[None, :] < M - 1))
    tl.store(lists_ptr + pid_bh * stride_lbh + offs_r * stride_lc, offs_r, mask=mask_r)


@triton.jit
def _kmeans_assign_candidates_kernel(
    x_ptr, perm_ptr, labels_ptr, cent_ptr, cent_sq_ptr, lists_ptr,
    N, H, M,
    stride_xb, stride_xh, stride_xn,
    stride_pbh, stride_lbh, stride_cbh, stride_cc, stride_sbh, stride_tbh, stride_tc,
    D: tl.constexpr, BLOCK_N: tl.constexpr, K_POW2: tl.constexpr, C_POW2: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """labels[bh, n] = the nearest centroid of token n among ``lists[bh, labels[bh, n], :M]`` (its current cluster's
    candidates), for the BLOCK_N tokens at positions ``pid * BLOCK_N ...`` of the sorted order ``perm``.

    Sorted by their current label, a block's tokens belong to a few consecutive clusters, ``c_lo..c_hi``: the program
    walks them, and for each computes the block's distances to that cluster's M candidates (one (BLOCK_N, K_POW2)
    dot) and keeps them for the rows of that cluster only. The argmin is the assign's packed one (distance bits with
    the id in the low ``log2(C_POW2)`` bits, plus the block's largest ``||x||^2``): the same distances and ties as
    :func:`_kmeans_assign_kernel`'s over the same centroids. Every token's labels are read and written by its own
    program only. Grid ``(cdiv(N, BLOCK_N), B * H)``.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_s = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    offs_k = tl.arange(0, K_POW2)
    mask_n = offs_s < N
    mask_k = offs_k < M
    tok = tl.load(perm_ptr + pid_bh * stride_pbh + offs_s, mask=mask_n, other=0)
    lab_ptr = labels_ptr + pid_bh * stride_lbh + tok
    lab = tl.load(lab_ptr, mask=mask_n, other=-1)
    x = tl.load(x_ptr + b * stride_xb + h * stride_xh + tok[:, None] * stride_xn + offs_d[None, :],
                mask=mask_n[:, None], other=0.0)
    xf = x.to(tl.float32)
    bias = tl.max(tl.sum(xf * xf, axis=1), axis=0)
    IDX_MASK: tl.constexpr = C_POW2 - 1
    best_key = tl.full([BLOCK_N], 0x7FFFFFFF, tl.int32)
    c_lo = tl.min(tl.where(mask_n, lab, 0x7FFFFFFF), axis=0)
    c_hi = tl.max(lab, axis=0)
    for c in range(c_lo, c_hi + 1):
        ids = tl.load(lists_ptr + pid_bh * stride_tbh + c * stride_tc + offs_k, mask=mask_k, other=0)
        cent = tl.load(cent_ptr + pid_bh * stride_cbh + ids[:, None] * stride_cc + offs_d[None, :])
        cent_sq = tl.load(cent_sq_ptr + pid_bh * stride_sbh + ids, mask=mask_k, other=float("inf"))
        dot = _dot_nt(x, cent, DOT_FP32)
        dist = (cent_sq + bias)[None, :] - 2.0 * dot
        key = (dist.to(tl.int32, bitcast=True) & ~IDX_MASK) | ids[None, :]
        key = tl.where((lab == c)[:, None], key, 0x7FFFFFFF)
        best_key = tl.minimum(best_key, tl.min(key, axis=1))
    tl.store(lab_ptr, best_key & IDX_MASK, mask=mask_n)
