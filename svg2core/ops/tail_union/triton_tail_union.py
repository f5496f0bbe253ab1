"""Triton kernels of the query-tail union (the rule: ``reference.py``).

Launches (six kinds; the matching is two per round), none of which allocates or synchronises with the host:

1. ``_tail_member_kernel`` (grid: clusters x heads): each query cluster's row of a 0/1 membership matrix over the
   key clusters (int8).
2. ``_tail_saving_kernel`` (grid: blocks of the Cq x Cq pair matrix x heads; the upper triangle computes, and
   writes its mirror): the key rows two lists share, as int8 products of membership rows weighted by base-128
   digits of the key-cluster sizes (int32 accumulation, exact), and each pair's saving by the cost model (0 where
   not a candidate).
3. The matching, per round ``_tail_best_kernel`` (grid: blocks of tails x heads: each free tail names its best free
   partner) then ``_tail_mutual_kernel`` (the same grid: two tails that name each other pair up); then
   ``_tail_number_kernel`` (one program per head): the pairs numbered by their lower cluster id and each paired
   cluster's slot.
4. ``_tail_layout_kernel`` (one program per head): every cluster's and slot's new size, the new offsets and, with a
   key sweep, each row's first query tile.
5. ``_tail_rows_kernel`` (grid: rows x heads): each slot's selection row, the union of its pair's membership rows
   (with a key sweep, every row: the clusters' own kept sets laid out again from their new sweep starts).
6. ``_tail_perm_kernel`` (grid: clusters and slots x heads): copies each cluster's rows to its new place in the query
   permutation and each pair's two tails into its slot, relabelling the tails' tokens.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _cost(rows, keys, fixed, BLOCK: tl.constexpr, HALF_PCT: tl.constexpr):
    """The integer tile-cost model of reference.py."""
    return tl.where(rows <= BLOCK // 2, HALF_PCT, 100) * (keys + fixed)


@triton.jit
def _tail_member_kernel(
    sel_idx_ptr, sel_count_ptr, member_ptr, CK,
    stride_ibh, stride_ic, stride_nbh, stride_mbh, stride_mc,
    CK_POW2: tl.constexpr,
):
    """One query cluster's row of the membership matrix: 1 at its selected key clusters, 0 elsewhere."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    j = tl.arange(0, CK_POW2)
    row = member_ptr + bh * stride_mbh + c * stride_mc
    tl.store(row + j, tl.zeros((CK_POW2,), tl.int8), mask=j < CK)
    tl.debug_barrier()  # bar.sync: the row is clear before any thread marks it
    cnt = tl.load(sel_count_ptr + bh * stride_nbh + c)
    idx = tl.load(sel_idx_ptr + bh * stride_ibh + c * stride_ic + j, mask=j < cnt, other=0)
    tl.store(row + idx, tl.full((CK_POW2,), 1, tl.int8), mask=j < cnt)


@triton.jit
def _tail_saving_kernel(
    offsets_ptr, sel_count_ptr, sel_cum_ptr, k_sizes_ptr, member_ptr, saving_ptr,
    C, CK, fixed, max_keys,
    stride_obh, stride_nbh, stride_cbh, stride_cc, stride_kbh, stride_mbh, stride_mc, stride_sbh, stride_sc,
    BLOCK: tl.constexpr, HALF_PCT: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
):
    """A ``BM x BM`` block of the head's pair savings and its mirror (the matrix is symmetric: blocks below the
    diagonal return at once). The shared key rows are three int8 products with int32 accumulation, exact: the
    membership rows against the same rows weighted by one base-128 digit of the key-cluster sizes (sizes below
    2^21 tokens), then the cost model. (Skipping a step's digit products that are 0 for every key cluster of the
    step was measured and removed: 0.96-0.98x the time, within noise; NOTES_sparse_attn.md v29.)"""
    pa = tl.program_id(0)
    pb = tl.program_id(1)
    if pa <= pb:
        bh = tl.program_id(2)
        a = pa * BM + tl.arange(0, BM)
        b = pb * BM + tl.arange(0, BM)
        am, bm = a < C, b < C
        ov0 = tl.zeros((BM, BM), tl.int32)
        ov1 = tl.zeros((BM, BM), tl.int32)
        ov2 = tl.zeros((BM, BM), tl.int32)
        m_row = member_ptr + bh * stride_mbh
        for j0 in range(0, CK, BK):
            j = j0 + tl.arange(0, BK)
            jm = j < CK
            ks = tl.load(k_sizes_ptr + bh * stride_kbh + j, mask=jm, other=0)
            ma = tl.load(m_row + a[:, None] * stride_mc + j[None, :], mask=am[:, None] & jm[None, :], other=0)
            mbt = tl.load(m_row + b[None, :] * stride_mc + j[:, None], mask=bm[None, :] & jm[:, None], other=0)
            ov0 = tl.dot(ma * (ks & 127).to(tl.int8)[None, :], mbt, ov0, out_dtype=tl.int32)
            ov1 = tl.dot(ma * ((ks >> 7) & 127).to(tl.int8)[None, :], mbt, ov1, out_dtype=tl.int32)
            ov2 = tl.dot(ma * ((ks >> 14) & 127).to(tl.int8)[None, :], mbt, ov2, out_dtype=tl.int32)
        overlap = ov0 + (ov1 << 7) + (ov2 << 14)
        off_row = offsets_ptr + bh * stride_obh
        ra = (tl.load(off_row + a + 1, mask=am, other=0) - tl.load(off_row + a, mask=am, other=0)) % BLOCK
        rb = (tl.load(off_row + b + 1, mask=bm, other=0) - tl.load(off_row + b, mask=bm, other=0)) % BLOCK
        ca = tl.load(sel_count_ptr + bh * stride_nbh + a, mask=am, other=0)
        cb = tl.load(sel_count_ptr + bh * stride_nbh + b, mask=bm, other=0)
        wa = tl.load(sel_cum_ptr + bh * stride_cbh + a * stride_cc + ca, mask=am, other=0)
        wb = tl.load(sel_cum_ptr + bh * stride_cbh + b * stride_cc + cb, mask=bm, other=0)
        rows = ra[:, None] + rb[None, :]
        union = wa[:, None] + wb[None, :] - overlap
        saving = (_cost(ra, wa, fixed, BLOCK, HALF_PCT)[:, None] + _cost(rb, wb, fixed, BLOCK, HALF_PCT)[None, :]
                  - _cost(rows, union, fixed, BLOCK, HALF_PCT))
        ok = (ra[:, None] > 0) & (rb[None, :] > 0) & (rows <= BLOCK) & (a[:, None] != b[None, :]) & (saving > 0)
        ok = ok & (union <= max_keys)
        saving = tl.where(ok, saving, 0)
        s_row = saving_ptr + bh * stride_sbh
        both = am[:, None] & bm[None, :]
        tl.store(s_row + a[:, None] * stride_sc + b[None, :], saving, mask=both)
        tl.store(s_row + b[None, :] * stride_sc + a[:, None], saving, mask=both)


@triton.jit
def _tail_best_kernel(
    saving_ptr, partner_ptr, best_ptr, C,
    stride_sbh, stride_sc, stride_rbh,
    FIRST: tl.constexpr, BA: tl.constexpr, BB: tl.constexpr,
):
    """One round's first half, for ``BA`` tails of a head: each tail not yet paired names the partner of largest
    saving among those not yet paired (ties: the lower id; -1: none). FIRST: the first round (every tail free; the
    partners are cleared)."""
    bh = tl.program_id(1)
    a = tl.program_id(0) * BA + tl.arange(0, BA)
    am = a < C
    partner = partner_ptr + bh * stride_rbh
    if FIRST:
        free_a = am
        tl.store(partner + a, tl.full((BA,), -1, tl.int32), mask=am)
    else:
        free_a = am & (tl.load(partner + a, mask=am, other=0) < 0)
    top = tl.zeros((BA,), tl.int32)
    arg = tl.full((BA,), -1, tl.int32)
    for b0 in range(0, C, BB):
        b = b0 + tl.arange(0, BB)
        bm = b < C
        if FIRST:
            free_b = bm
        else:
            free_b = bm & (tl.load(partner + b, mask=bm, other=0) < 0)
        s = tl.load(saving_ptr + bh * stride_sbh + a[:, None] * stride_sc + b[None, :],
                    mask=free_a[:, None] & free_b[None, :], other=0)
        blk = tl.max(s, axis=1)
        blk_arg = tl.min(tl.where(s == blk[:, None], b[None, :], 2147483647), axis=1)
        better = blk > top  # strictly: an earlier (lower) id keeps a tie
        arg = tl.where(better, blk_arg, arg)
        top = tl.where(better, blk, top)
    tl.store(best_ptr + bh * stride_rbh + a, arg, mask=am)


@triton.jit
def _tail_mutual_kernel(partner_ptr, best_ptr, C, stride_rbh, BA: tl.constexpr):
    """One round's second half, for ``BA`` tails of a head: two tails that named each other pair up."""
    bh = tl.program_id(1)
    a = tl.program_id(0) * BA + tl.arange(0, BA)
    am = a < C
    best = best_ptr + bh * stride_rbh
    b = tl.load(best + a, mask=am, other=-1)
    named = am & (b >= 0)
    back = tl.load(best + b, mask=named, other=-1)
    tl.store(partner_ptr + bh * stride_rbh + a, b, mask=named & (back == a))


@triton.jit
def _tail_number_kernel(
    partner_ptr, pair_ptr, slot_ptr, C, P,
    stride_rbh, stride_pbh, stride_tbh,
    C_POW2: tl.constexpr, P_POW2: tl.constexpr,
):
    """One program per head: the pairs numbered by their lower cluster id, and each paired cluster's slot."""
    bh = tl.program_id(0)
    c_all = tl.arange(0, C_POW2)
    p = tl.load(partner_ptr + bh * stride_rbh + c_all, mask=c_all < C, other=-1)
    low = (c_all < C) & (p > c_all)
    k = tl.cumsum(low.to(tl.int32), axis=0) - 1
    kk = tl.arange(0, P_POW2)
    tl.store(pair_ptr + bh * stride_pbh + 2 * kk, tl.full((P_POW2,), -1, tl.int32), mask=kk < P)
    tl.store(pair_ptr + bh * stride_pbh + 2 * kk + 1, tl.full((P_POW2,), -1, tl.int32), mask=kk < P)
    tl.store(slot_ptr + bh * stride_tbh + c_all, tl.full((C_POW2,), -1, tl.int32), mask=c_all < C)
    tl.debug_barrier()  # bar.sync: the slots are cleared before the pairs are written
    tl.store(pair_ptr + bh * stride_pbh + 2 * k, c_all, mask=low)
    tl.store(pair_ptr + bh * stride_pbh + 2 * k + 1, p, mask=low)
    tl.store(slot_ptr + bh * stride_tbh + c_all, k, mask=low)
    tl.store(slot_ptr + bh * stride_tbh + p, k, mask=low)


@triton.jit
def _tail_rows_kernel(
    sel_count_ptr, k_sizes_ptr, member_ptr, pair_ptr, tile0_ptr, idx2_ptr, count2_ptr, cum2_ptr,
    C, CK, period, first_row,
    stride_nbh, stride_kbh, stride_mbh, stride_mc, stride_pbh, stride_t0bh, stride_i2bh, stride_i2c, stride_n2bh,
    stride_c2bh, stride_c2c,
    SWEEP: tl.constexpr, CK_POW2: tl.constexpr,
):
    """Row ``first_row + program_id(0)`` of the new selection: a cluster's kept key clusters (its membership row) or
    a slot's union (its pair's two rows), first in ascending id from the row's sweep start (SWEEP: from its first
    tile in the new layout, as ``sweep_starts_reference``; else from 0), wrapping around, then the rest in ascending
    id, with the key-token prefix sums."""
    v = first_row + tl.program_id(0)
    bh = tl.program_id(1)
    j = tl.arange(0, CK_POW2)
    jm = j < CK
    m_row = member_ptr + bh * stride_mbh
    if v < C:
        kept = jm & (tl.load(m_row + v * stride_mc + j, mask=jm, other=0) > 0)
    else:
        a = tl.load(pair_ptr + bh * stride_pbh + 2 * (v - C))
        b = tl.load(pair_ptr + bh * stride_pbh + 2 * (v - C) + 1)
        live = jm & ((j * 0 + a) >= 0)  # a vector compare (the interpreter rejects a scalar-broadcast mask)
        in_a = tl.load(m_row + tl.maximum(a, 0) * stride_mc + j, mask=live, other=0) > 0
        in_b = tl.load(m_row + tl.maximum(b, 0) * stride_mc + j, mask=live, other=0) > 0
        kept = in_a | in_b
    start = 0
    if SWEEP:
        start = ((tl.load(tile0_ptr + bh * stride_t0bh + v) % period) * CK) // period
    ks = tl.load(k_sizes_ptr + bh * stride_kbh + j, mask=jm, other=0)
    # one scan of three packed fields: kept key clusters (bits 0-10), their tokens (11-36), all tokens (37-62);
    # no field carries into the next (fewer than 2048 key clusters and 2^26 key tokens)
    kept_i = kept.to(tl.int64)
    packed = kept_i + ((ks.to(tl.int64) * kept_i) << 11) + (ks.to(tl.int64) << 37)
    incl = tl.cumsum(packed, axis=0)
    total = tl.sum(packed, axis=0)
    before = tl.sum(tl.where(j < start, packed, 0), axis=0)  # the key clusters below the sweep start
    f26 = (1 << 26) - 1
    kc = (incl & 2047).to(tl.int32)  # inclusive prefixes: kept count, kept tokens, all tokens
    kt = ((incl >> 11) & f26).to(tl.int32)
    at = ((incl >> 37) & f26).to(tl.int32)
    n_kept = (total & 2047).to(tl.int32)
    w_kept = ((total >> 11) & f26).to(tl.int32)
    n_lo = (before & 2047).to(tl.int32)
    w_lo = ((before >> 11) & f26).to(tl.int32)
    hi = kept & (j >= start)
    lo = kept & (j < start)
    # kept from the start up (hi), then kept below it (lo), then the rest in ascending id
    pos = tl.where(hi, kc - n_lo - 1, tl.where(lo, n_kept - n_lo + kc - 1, n_kept + j - kc))
    cum = tl.where(hi, kt - ks - w_lo, tl.where(lo, w_kept - w_lo + kt - ks, w_kept + at - kt - ks))
    tl.store(idx2_ptr + bh * stride_i2bh + v * stride_i2c + pos, j, mask=jm)
    tl.store(cum2_ptr + bh * stride_c2bh + v * stride_c2c + pos, cum, mask=jm)
    tl.store(cum2_ptr + bh * stride_c2bh + v * stride_c2c + CK, ((total >> 37) & f26).to(tl.int32))
    tl.store(count2_ptr + bh * stride_n2bh + v, n_kept)


@triton.jit
def _new_size(offsets_ptr, pair_ptr, slot_ptr, bh, v, vm, C, stride_obh, stride_pbh, stride_sbh,
              BLOCK: tl.constexpr):
    """The size of cluster or slot ``v`` after the stage (``vm``: the lanes in range)."""
    off_row = offsets_ptr + bh * stride_obh
    is_c = vm & (v < C)
    size = tl.load(off_row + v + 1, mask=is_c, other=0) - tl.load(off_row + v, mask=is_c, other=0)
    paired = tl.load(slot_ptr + bh * stride_sbh + v, mask=is_c, other=-1) >= 0
    keep = size - tl.where(paired, size % BLOCK, 0)
    is_s = vm & (v >= C)
    k = v - C
    a = tl.load(pair_ptr + bh * stride_pbh + 2 * k, mask=is_s, other=-1)
    b = tl.load(pair_ptr + bh * stride_pbh + 2 * k + 1, mask=is_s, other=-1)
    kept = is_s & (a >= 0)  # the matching writes formed pairs only
    ra = (tl.load(off_row + a + 1, mask=kept, other=0) - tl.load(off_row + a, mask=kept, other=0)) % BLOCK
    rb = (tl.load(off_row + b + 1, mask=kept, other=0) - tl.load(off_row + b, mask=kept, other=0)) % BLOCK
    return tl.where(is_c, keep, tl.where(kept, ra + rb, 0))


@triton.jit
def _tail_layout_kernel(
    offsets_ptr, pair_ptr, slot_ptr, offsets2_ptr, sizes2_ptr, tile0_ptr, C, C2,
    stride_obh, stride_pbh, stride_sbh, stride_o2bh, stride_s2bh, stride_t0bh,
    BLOCK: tl.constexpr, C2_POW2: tl.constexpr, SWEEP_M: tl.constexpr,
):
    """Every cluster's and slot's new size, the new offsets, and (SWEEP_M > 0) the index of each one's first query
    tile of SWEEP_M rows in the new layout (the key sweep's phase)."""
    bh = tl.program_id(0)
    v = tl.arange(0, C2_POW2)
    vm = v < C2
    size = _new_size(offsets_ptr, pair_ptr, slot_ptr, bh, v, vm, C, stride_obh, stride_pbh, stride_sbh, BLOCK)
    incl = tl.cumsum(size, axis=0)
    tl.store(offsets2_ptr + bh * stride_o2bh + v + 1, incl, mask=vm)
    tl.store(offsets2_ptr + bh * stride_o2bh + v, incl - size, mask=v == 0)
    tl.store(sizes2_ptr + bh * stride_s2bh + v, size, mask=vm)
    if SWEEP_M > 0:
        tiles = (size + SWEEP_M - 1) // SWEEP_M
        tl.store(tile0_ptr + bh * stride_t0bh + v, tl.cumsum(tiles, axis=0) - tiles, mask=vm)


@triton.jit
def _tail_perm_kernel(
    offsets_ptr, perm_ptr, labels_ptr, pair_ptr, offsets2_ptr, perm2_ptr, C,
    stride_obh, stride_pmbh, stride_lbh, stride_pbh, stride_o2bh, stride_p2bh,
    BLOCK: tl.constexpr, BLOCK_R: tl.constexpr,
):
    v = tl.program_id(0)
    bh = tl.program_id(1)
    off_row = offsets_ptr + bh * stride_obh
    dst = tl.load(offsets2_ptr + bh * stride_o2bh + v)
    n_new = tl.load(offsets2_ptr + bh * stride_o2bh + v + 1) - dst
    perm_row = perm_ptr + bh * stride_pmbh
    perm2_row = perm2_ptr + bh * stride_p2bh
    if v < C:  # the cluster's rows but a packed tail, in place order
        src = tl.load(off_row + v)
        for i0 in range(0, n_new, BLOCK_R):
            i = i0 + tl.arange(0, BLOCK_R)
            m = i < n_new
            tl.store(perm2_row + dst + i, tl.load(perm_row + src + i, mask=m, other=0), mask=m)
    elif n_new > 0:  # a kept pair: its two tails, relabelled
        k = v - C
        i = tl.arange(0, BLOCK)
        at = dst
        for e in tl.static_range(2):
            c = tl.load(pair_ptr + bh * stride_pbh + 2 * k + e)
            end = tl.load(off_row + c + 1)
            r = (end - tl.load(off_row + c)) % BLOCK
            m = i < r
            tok = tl.load(perm_row + end - r + i, mask=m, other=0)
            tl.store(perm2_row + at + i, tok, mask=m)
            tl.store(labels_ptr + bh * stride_lbh + tok, tl.full((BLOCK,), 0, tl.int32) + v, mask=m)
            at += r
