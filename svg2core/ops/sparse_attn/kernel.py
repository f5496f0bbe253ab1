"""Triton kernel of the variable-block sparse flash attention.

One program computes one tile of up to BLOCK_M query rows. The grid is static (a bound that needs no
knowledge of the cluster sizes), so a call has no host-device synchronisation and can be captured in
a CUDA graph:

    grid = (num_text_tiles + max_video_tiles, B * H)

- ``pid < num_text_tiles``: a tile of trailing text queries; dense attention over every video key
  (taken from ``kp``, any key order gives the same result) and every valid text key.
- otherwise a video tile: ``tile = pid - num_text_tiles`` is mapped to (query cluster, tile inside the
  cluster) from ``q_offsets`` in registers: ``cum = cumsum(ceil(size / BLOCK_M))`` and the cluster is
  the number of entries ``<= tile``. Programs past the last tile of their head exit at once
  (``max_video_tiles = min(cdiv(Nv, BLOCK_M) + Cq, ...)`` is an upper bound).

Remainder tiles (``TAIL_M > 0``): a cluster's last ``r = size % BLOCK_M`` rows, when ``0 < r <= TAIL_M``,
are not padded to a BLOCK_M tile here; a second launch with ``TAIL_ONLY`` (BLOCK_M == TAIL_M, grid
``(Cq, B * H)``, one program per query cluster, ``MAIN_M`` = the first launch's BLOCK_M) computes them.
With BLOCK_M=128, TAIL_M=64 this cuts the padded query rows about in half (NOTES_sparse_attn.md, v4).

Video tile: query rows ``q_perm[q_offsets[i] + tile * BLOCK_M + r]`` are gathered from the original
``q`` and outputs are stored straight to those token rows of ``out`` (no inverse-permutation pass).
The selected key clusters ``j = 0..sel_count-1`` of cluster ``i`` are the ragged ranges
``kp[k_offsets[sel_idx[j]] : k_offsets[sel_idx[j] + 1]]``; concatenated they span
``sel_cum[sel_count]`` positions, visited in full BLOCK_N tiles (a tile may span several clusters):
position ``p`` of segment ``j`` is kp row ``k_offsets[sel_idx[j]] + p - sel_cum[j]``. The segment of
each position follows from a window of ``sel_cum`` that starts at the tile's first segment ``j0``
(carried from the previous tile; see ``_key_tile_rows``). Selected clusters are never empty, so a
tile spans at most BLOCK_N segments and a window of BLOCK_N entries is always enough. The rows of
tile t+1 are computed while tile t is loaded, so their small gathers hide behind its MMAs.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Finite "minus infinity" for the running max: exp2(m_old - m_new) stays 1 (not NaN) while a row has
# seen only masked keys.
_NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit
def query_tiles(c_lo, c_hi, BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr):
    """Video query tiles of the clusters with sorted rows ``c_lo .. c_hi``: ceil(size / BLOCK_M), except that a
    remainder of <= TAIL_M rows is left to the TAIL_ONLY launch (TAIL_M == 0: every remainder is a padded
    BLOCK_M tile). The work list of tables.query_tile_list follows the same rule."""
    return (c_hi - c_lo + BLOCK_M - 1 - TAIL_M) // BLOCK_M


@triton.jit
def _attend_tile(acc, m_i, l_i, q, k, v, qk_scale, col_valid, MASKED: tl.constexpr):
    """One online-softmax step: q (BM, D), k and v (BN, D); m_i, l_i in the log2 domain."""
    qk = tl.dot(q, tl.trans(k))  # (BM, BN) fp32, unscaled
    if MASKED:
        qk = tl.where(col_valid[None, :], qk, float("-inf"))
    # max of the raw scores, then scale and shift in one FFMA per score (qk_scale > 0, checked by the
    # wrapper, so max(qk) * scale == max(qk * scale))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def _key_tile_rows(sel_cum_row, sel_idx_row, k_off_bh, j0, cnt, p0, BLOCK_N: tl.constexpr):
    """kp rows (BN,) of the concatenated positions ``p0 .. p0 + BN - 1`` whose first one lies in segment
    ``j0``, and the segment in which the next tile (position ``p0 + BN``) starts.

    The starts of the following segments that fall inside the tile are histogrammed onto the tile's
    positions (a 0/1 vector) and prefix-summed: ``seg(p) = j0 + #starts <= p``; each position then reads
    its segment's start and key cluster (L1-resident gathers): row = ``k_offsets[sel_idx[seg]] + p -
    sel_cum[seg]``. O(BN) work per tile; a (BN, BN) compare-and-reduce costs ~1.7x the whole kernel
    at BLOCK_N=64 (docs/benchmarks/NOTES_sparse_attn.md, v2).
    """
    m = tl.arange(0, BLOCK_N)
    pos = p0 + m
    jn = j0 + 1 + m
    bounds = tl.load(sel_cum_row + jn, mask=jn < cnt, other=2147483647)  # > p0: segment j0 holds p0
    rel = bounds - p0
    starts = tl.histogram(rel, BLOCK_N, mask=rel < BLOCK_N)
    seg = j0 + tl.cumsum(starts, 0)
    # seg == cnt only for a prefetched tile past the end (unused): never read sel_idx[cnt], which may
    # be junk or lie past the tensor
    real = seg < cnt
    cluster = tl.load(sel_idx_row + seg, mask=real, other=0)
    rows = tl.load(k_off_bh + cluster, mask=real, other=0) + pos - tl.load(sel_cum_row + seg, mask=real, other=0)
    j_next = j0 + tl.sum((bounds <= p0 + BLOCK_N).to(tl.int32), 0)
    return rows, j_next


@triton.jit
def _video_kv(K, V, KP, VP, KPERM, k_base, v_base, kp_base, bh, NV, stride_kn, stride_vn, rows, offs_d, valid,
              MASKED: tl.constexpr, TOKEN_ORDER: tl.constexpr, KV_PERM: tl.constexpr, HEAD_DIM: tl.constexpr):
    """K and V tiles of cluster-ordered video key rows ``rows`` (int64): from the gathered copies kp / vp, or
    (KV_PERM) from k / v themselves through ``k_perm`` (no gathered copy). TOKEN_ORDER: the rows are
    token positions (text queries attend to every video key, in any order). MASKED: rows with ``valid``
    False read zeros (they may lie past the tensors)."""
    if KV_PERM:
        if TOKEN_ORDER:
            tok = rows
        else:
            if MASKED:
                tok = tl.load(KPERM + bh.to(tl.int64) * NV + rows, mask=valid, other=0).to(tl.int64)
            else:
                tok = tl.load(KPERM + bh.to(tl.int64) * NV + rows).to(tl.int64)
        k_ptr = K + k_base + tok[:, None] * stride_kn + offs_d[None, :]
        v_ptr = V + v_base + tok[:, None] * stride_vn + offs_d[None, :]
    else:
        k_ptr = KP + kp_base + rows[:, None] * HEAD_DIM + offs_d[None, :]
        v_ptr = VP + kp_base + rows[:, None] * HEAD_DIM + offs_d[None, :]
    if MASKED:
        k = tl.load(k_ptr, mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr, mask=valid[:, None], other=0.0)
    else:
        k = tl.load(k_ptr)
        v = tl.load(v_ptr)
    return k, v


@triton.jit
def _dense_text_keys(acc, m_i, l_i, q, K, V, KPM, kv_base_k, kv_base_v, stride_kn, stride_vn, b, NV, T,
                     qk_scale, offs_d, HAS_KPM: tl.constexpr, BLOCK_N: tl.constexpr):
    """Attend to the T trailing text keys (original k/v rows Nv..N-1), skipping invalid ones."""
    for t0 in range(0, T, BLOCK_N):
        cols = t0 + tl.arange(0, BLOCK_N)
        in_range = cols < T
        valid = in_range
        if HAS_KPM:
            valid = valid & (tl.load(KPM + b * T + cols, mask=in_range, other=0) != 0)
        rows = (NV + cols).to(tl.int64)
        k = tl.load(K + kv_base_k + rows[:, None] * stride_kn + offs_d[None, :], mask=in_range[:, None], other=0.0)
        v = tl.load(V + kv_base_v + rows[:, None] * stride_vn + offs_d[None, :], mask=in_range[:, None], other=0.0)
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k, v, qk_scale, valid, True)
    return acc, m_i, l_i


@triton.jit
def sparse_attn_fwd_kernel(
    Q, K, V, KP, VP, OUT,  # q/k/v/out (B, H, N, D) strided, kp/vp (BH, Nv, D) contiguous (unread if KV_PERM)
    QPERM, QOFF, KOFF, SELIDX, SELCNT, SELCUM, KPM,  # int32 layout tensors, KPM (B, T) bool as int8
    KPERM,  # (BH, Nv) int32: token of each cluster-ordered key row; read instead of kp / vp when KV_PERM
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    H, NV, T, CQ, CK, num_text_tiles,
    qk_scale,  # softmax scale * log2(e)
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CQ_BLOCK: tl.constexpr,
    HAS_KPM: tl.constexpr, SKIP_KEY_INDEX: tl.constexpr,
    TAIL_M: tl.constexpr, TAIL_ONLY: tl.constexpr, MAIN_M: tl.constexpr, KV_PERM: tl.constexpr = False,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    o_base = b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    k_base = b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    kp_base = bh.to(tl.int64) * NV * HEAD_DIM

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], _NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    if pid < num_text_tiles:
        # ---- text queries: dense over all video keys (kp order) and the valid text keys
        r = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        row_valid = r < T
        tok = (NV + r).to(tl.int64)
        q = tl.load(Q + q_base + tok[:, None] * stride_qn + offs_d[None, :], mask=row_valid[:, None], other=0.0)
        n_full = NV // BLOCK_N
        for t in range(0, n_full):
            rows = (t * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            k, v = _video_kv(K, V, KP, VP, KPERM, k_base, v_base, kp_base, bh, NV, stride_kn, stride_vn, rows,
                             offs_d, rows < NV, False, True, KV_PERM, HEAD_DIM)
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k, v, qk_scale, rows < NV, False)
        if n_full * BLOCK_N < NV:
            rows = (n_full * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            valid = rows < NV
            k, v = _video_kv(K, V, KP, VP, KPERM, k_base, v_base, kp_base, bh, NV, stride_kn, stride_vn, rows,
                             offs_d, valid, True, True, KV_PERM, HEAD_DIM)
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k, v, qk_scale, valid, True)
        acc, m_i, l_i = _dense_text_keys(acc, m_i, l_i, q, K, V, KPM, k_base, v_base, stride_kn, stride_vn,
                                         b, NV, T, qk_scale, offs_d, HAS_KPM, BLOCK_N)
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(OUT + o_base + tok[:, None] * stride_on + offs_d[None, :], out.to(OUT.dtype.element_ty),
                 mask=row_valid[:, None])
    else:
        # ---- video queries: map the program to (query cluster, rows q_start .. q_end - 1)
        qoff_bh = QOFF + bh * (CQ + 1)
        if TAIL_ONLY:
            # one program per query cluster: its last size % MAIN_M rows when 0 < that <= BLOCK_M (== TAIL_M)
            cl = pid
            c_lo = tl.load(qoff_bh + cl)
            q_end = tl.load(qoff_bh + cl + 1)
            rem = (q_end - c_lo) % MAIN_M
            active = (rem > 0) & (rem <= BLOCK_M)
            q_start = q_end - rem
        else:
            tile = pid - num_text_tiles
            offs_c = tl.arange(0, CQ_BLOCK)
            c_ok = offs_c < CQ
            c_lo = tl.load(qoff_bh + offs_c, mask=c_ok, other=0)
            c_hi = tl.load(qoff_bh + offs_c + 1, mask=c_ok, other=0)
            n_tiles = query_tiles(c_lo, c_hi, BLOCK_M, TAIL_M)  # (CQ_BLOCK,)
            cum_tiles = tl.cumsum(n_tiles, 0)
            cl = tl.sum((cum_tiles <= tile).to(tl.int32), 0)  # query cluster of this tile
            active = cl < CQ
            first_tile = tl.sum(tl.where(offs_c < cl, n_tiles, 0), 0)
            q_start = tl.sum(tl.where(offs_c == cl, c_lo, 0), 0) + (tile - first_tile) * BLOCK_M
            q_end = tl.sum(tl.where(offs_c == cl, c_hi, 0), 0)
        if active:
            srt = q_start + tl.arange(0, BLOCK_M)
            row_valid = srt < q_end
            tok = tl.load(QPERM + bh.to(tl.int64) * NV + srt, mask=row_valid, other=0).to(tl.int64)
            q = tl.load(Q + q_base + tok[:, None] * stride_qn + offs_d[None, :], mask=row_valid[:, None], other=0.0)

            pair = bh.to(tl.int64) * CQ + cl
            sel_cum_row = SELCUM + pair * (CK + 1)
            sel_idx_row = SELIDX + pair * CK
            k_off_bh = KOFF + bh * (CK + 1)
            cnt = tl.load(SELCNT + pair)
            total = tl.load(sel_cum_row + cnt)  # concatenated length of the selected key ranges
            n_full = total // BLOCK_N
            # rows of tile t+1 are computed while tile t is in flight (their loads hide behind its MMAs)
            rows, j_next = _key_tile_rows(sel_cum_row, sel_idx_row, k_off_bh, cnt * 0, cnt, 0, BLOCK_N)
            for t in range(0, n_full):
                pos = t * BLOCK_N + tl.arange(0, BLOCK_N)
                if SKIP_KEY_INDEX:  # benchmark-only: contiguous rows, wrong result, measures the indexing cost
                    rows = pos % NV
                rows64 = rows.to(tl.int64)
                k, v = _video_kv(K, V, KP, VP, KPERM, k_base, v_base, kp_base, bh, NV, stride_kn, stride_vn,
                                 rows64, offs_d, pos < total, False, False, KV_PERM, HEAD_DIM)
                if not SKIP_KEY_INDEX:
                    rows, j_next = _key_tile_rows(sel_cum_row, sel_idx_row, k_off_bh, j_next, cnt,
                                                  (t + 1) * BLOCK_N, BLOCK_N)
                acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k, v, qk_scale, pos < total, False)
            if n_full * BLOCK_N < total:
                pos = n_full * BLOCK_N + tl.arange(0, BLOCK_N)
                valid = pos < total
                rows64 = rows.to(tl.int64)
                k, v = _video_kv(K, V, KP, VP, KPERM, k_base, v_base, kp_base, bh, NV, stride_kn, stride_vn,
                                 rows64, offs_d, valid, True, False, KV_PERM, HEAD_DIM)
                acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k, v, qk_scale, valid, True)
            acc, m_i, l_i = _dense_text_keys(acc, m_i, l_i, q, K, V, KPM, k_base, v_base, stride_kn, stride_vn,
                                             b, NV, T, qk_scale, offs_d, HAS_KPM, BLOCK_N)
            l_safe = tl.where(l_i > 0.0, l_i, 1.0)
            out = acc / l_safe[:, None]
            tl.store(OUT + o_base + tok[:, None] * stride_on + offs_d[None, :], out.to(OUT.dtype.element_ty),
                     mask=row_valid[:, None])


def max_video_tiles(nv: int, cq: int, block_m: int) -> int:
    """Upper bound on sum_i ceil(size_i / BLOCK_M) over the Cq query clusters of Nv tokens."""
    # each cluster wastes < 1 tile, and at most min(Cq, Nv) clusters are non-empty
    return min(triton.cdiv(nv, block_m) + min(cq, nv), (nv + min(cq, nv) * (block_m - 1)) // block_m)
