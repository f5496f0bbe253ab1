"""Triton kernels of query-tile rebalancing (the rule: ``reference.py``).

Four launches (after the k-means' centroid preparation, whose copies the first reads), none of which allocates or
synchronises with the host; each recomputes what it needs of the per-cluster rule (excess, donor, room) from the
cluster offsets of the current sort:

1. ``_margin_kernel`` (persistent grid over chunks of sorted positions): for the rows of donor clusters only, the
   distance to every centroid, the nearest cluster with room and the margin over the row's own centroid; by sorted
   position.
2. ``_choose_kernel`` (grid: clusters x heads): a donor's ``excess`` rows of smallest margin, in order (ties: the lower
   position, i.e. the lower token), written to its slots of the head's candidate list (donors in id order).
3. ``_allocate_kernel`` (grid: clusters x heads): each destination takes the first ``room`` of the candidates naming
   it, in slot order; one flag per slot.
4. ``_apply_kernel`` (grid: clusters x heads): a donor whose candidates were all taken relabels them.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _rule(size, rho, BLOCK: tl.constexpr):
    """Per cluster size: (excess, donor, room) of the rule in reference.py (``BLOCK``: rows of a query tile)."""
    half = BLOCK // 2
    r = size % BLOCK
    excess = tl.where(r <= half, r, r - half)
    donor = (excess > 0) & (excess <= rho)
    room = tl.where(donor | (r == 0), 0, tl.where(r <= half, half - r, BLOCK - r))
    return excess, donor, room


@triton.jit
def _slot_base(off_row, c, C, rho, BLOCK: tl.constexpr, CB: tl.constexpr):
    """The first slot of cluster ``c``'s candidates: the excess rows of the donors before it (all of them when
    ``c = C``: the head's candidate count)."""
    total = 0
    for c0 in range(0, C, CB):
        j = c0 + tl.arange(0, CB)
        jm = j < c
        size = tl.load(off_row + j + 1, mask=jm, other=0) - tl.load(off_row + j, mask=jm, other=0)
        rule = _rule(size, rho, BLOCK)
        total += tl.sum(tl.where(jm & rule[1], rule[0], 0), axis=0)
    return total


@triton.jit
def _margin_kernel(
    x_ptr, perm_ptr, labels_ptr, offsets_ptr, cent_ptr, cent_lp_ptr, cent_sq_ptr, margin_ptr, dest_ptr,
    C, H, N, rho, n_chunks, chunks_per_head,
    stride_xb, stride_xh, stride_xn, stride_pbh, stride_lbh, stride_obh, stride_cbh, stride_cc, stride_lpbh,
    stride_lpc, stride_sqbh, stride_mbh,
    D: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr,
):
    """Persistent over chunks of ``BLOCK_N`` sorted positions of every head (each program takes every
    ``num_programs``-th): a chunk without a row of a donor cluster costs three small gathers; the others score their
    donor rows against every centroid, ``BLOCK_C`` at a time. Chunks, not clusters, so one large donor spreads over
    many programs. The centroid operands come prepared (``cent_lp``: the points' dtype, ``cent_sq``: fp32 norms), or
    in fp32 for the fp32 dots."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_d = tl.arange(0, D)
    for chunk in range(pid, n_chunks, nprog):
        bh = chunk // chunks_per_head
        p = (chunk % chunks_per_head) * BLOCK_N + tl.arange(0, BLOCK_N)
        pm = p < N
        tok = tl.load(perm_ptr + bh * stride_pbh + p, mask=pm, other=0)
        own_c = tl.load(labels_ptr + bh * stride_lbh + tok, mask=pm, other=0)
        off_row = offsets_ptr + bh * stride_obh
        size = tl.load(off_row + own_c + 1, mask=pm, other=0) - tl.load(off_row + own_c, mask=pm, other=0)
        dm = pm & _rule(size, rho, BLOCK)[1]
        if tl.max(dm.to(tl.int32), axis=0) > 0:
            x_row = x_ptr + (bh // H) * stride_xb + (bh % H) * stride_xh
            xt = tl.load(x_row + tok[:, None].to(tl.int64) * stride_xn + offs_d[None, :], mask=dm[:, None], other=0.0)
            if PRECISION == "bf16":
                if xt.dtype == tl.float32:  # fp32 points: both operands rounded to bf16
                    xt = xt.to(tl.bfloat16)
            else:
                xt = xt.to(tl.float32)
            best = tl.full((BLOCK_N,), float("inf"), tl.float32)
            best_j = tl.full((BLOCK_N,), 0, tl.int32)
            own = tl.zeros((BLOCK_N,), tl.float32)
            for c0 in range(0, C, BLOCK_C):
                j = c0 + tl.arange(0, BLOCK_C)
                jm = j < C
                sq = tl.load(cent_sq_ptr + bh * stride_sqbh + j, mask=jm, other=0.0)
                jsize = tl.load(off_row + j + 1, mask=jm, other=0) - tl.load(off_row + j, mask=jm, other=0)
                jroom = _rule(jsize, rho, BLOCK)[2]
                if PRECISION == "bf16":  # one product in the points' 16-bit dtype (the centroids rounded)
                    cen = tl.load(cent_lp_ptr + bh * stride_lpbh + j[:, None] * stride_lpc + offs_d[None, :],
                                  mask=jm[:, None], other=0.0)
                    dot = tl.dot(xt, tl.trans(cen.to(xt.dtype)))
                else:
                    cen = tl.load(cent_ptr + bh * stride_cbh + j[:, None] * stride_cc + offs_d[None, :],
                                  mask=jm[:, None], other=0.0)
                    dot = tl.dot(xt, tl.trans(cen), input_precision=PRECISION)
                dist = sq[None, :] - 2.0 * dot
                own += tl.sum(tl.where(j[None, :] == own_c[:, None], dist, 0.0), axis=1)
                dr = tl.where((jm & (jroom > 0))[None, :], dist, float("inf"))
                tmin = tl.min(dr, axis=1)
                targ = tl.min(tl.where(dr == tmin[:, None], j[None, :], 2147483647), axis=1)
                better = tmin < best  # strictly: an earlier (lower) id keeps a tie
                best_j = tl.where(better, targ, best_j)
                best = tl.where(better, tmin, best)
            tl.store(margin_ptr + bh * stride_mbh + p, best - own, mask=dm)
            tl.store(dest_ptr + bh * stride_mbh + p, best_j, mask=dm)


@triton.jit
def _choose_kernel(
    offsets_ptr, margin_ptr, dest_ptr, cand_pos_ptr, cand_dest_ptr,
    C, rho, stride_obh, stride_mbh, stride_sbh,
    BLOCK: tl.constexpr, BLOCK_P: tl.constexpr, CB: tl.constexpr, POS_BITS: tl.constexpr,
):
    c = tl.program_id(0)
    bh = tl.program_id(1)
    off_row = offsets_ptr + bh * stride_obh
    start = tl.load(off_row + c)
    end = tl.load(off_row + c + 1)
    ex, don, _ = _rule(end - start, rho, BLOCK)
    if don:
        base = _slot_base(off_row, c, C, rho, BLOCK, CB)
        prev = tl.full((), -1, tl.int64)
        for i in range(0, ex):
            best = tl.full((), 9223372036854775807, tl.int64)
            for p0 in range(start, end, BLOCK_P):
                p = p0 + tl.arange(0, BLOCK_P)
                m = p < end
                bits = tl.load(margin_ptr + bh * stride_mbh + p, mask=m, other=0.0).to(tl.int32, bitcast=True)
                b64 = bits.to(tl.int64)
                order = tl.where(b64 >= 0, b64 + 2147483648, -1 - b64)  # float order as an int in [0, 2^32)
                key = (order << POS_BITS) | p.to(tl.int64)
                key = tl.where(m & (key > prev), key, 9223372036854775807)
                best = tl.minimum(best, tl.min(key, axis=0))
            pos = (best & ((1 << POS_BITS) - 1)).to(tl.int32)
            tl.store(cand_pos_ptr + bh * stride_sbh + base + i, pos)
            tl.store(cand_dest_ptr + bh * stride_sbh + base + i, tl.load(dest_ptr + bh * stride_mbh + pos))
            prev = best


@triton.jit
def _allocate_kernel(
    offsets_ptr, cand_dest_ptr, taken_ptr,
    C, rho, stride_obh, stride_sbh,
    BLOCK: tl.constexpr, CB: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """One program per (destination cluster, head): the head's candidates naming this destination, in slot order,
    the first ``room`` of them taken (its rank among them by a running count); every slot is written by its own
    destination's program."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    off_row = offsets_ptr + bh * stride_obh
    total = _slot_base(off_row, C, C, rho, BLOCK, CB)
    room = _rule(tl.load(off_row + c + 1) - tl.load(off_row + c), rho, BLOCK)[2]
    seen = 0
    for s0 in range(0, total, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        sm = s < total
        mine = sm & (tl.load(cand_dest_ptr + bh * stride_sbh + s, mask=sm, other=-1) == c)
        rank = seen + tl.cumsum(mine.to(tl.int32), axis=0) - 1
        tl.store(taken_ptr + bh * stride_sbh + s, (rank < room).to(tl.int32), mask=mine)
        seen += tl.sum(mine.to(tl.int32), axis=0)


@triton.jit
def _apply_kernel(
    offsets_ptr, perm_ptr, labels_ptr, cand_pos_ptr, cand_dest_ptr, taken_ptr,
    C, rho, stride_obh, stride_pbh, stride_lbh, stride_sbh,
    BLOCK: tl.constexpr, CB: tl.constexpr, RHO_POW2: tl.constexpr,
):
    c = tl.program_id(0)
    bh = tl.program_id(1)
    off_row = offsets_ptr + bh * stride_obh
    ex, don, _ = _rule(tl.load(off_row + c + 1) - tl.load(off_row + c), rho, BLOCK)
    if don:
        base = _slot_base(off_row, c, C, rho, BLOCK, CB)
        i = tl.arange(0, RHO_POW2)
        m = i < ex
        taken = tl.load(taken_ptr + bh * stride_sbh + base + i, mask=m, other=1)
        if tl.min(taken, axis=0) > 0:  # all or nothing
            pos = tl.load(cand_pos_ptr + bh * stride_sbh + base + i, mask=m, other=0)
            tok = tl.load(perm_ptr + bh * stride_pbh + pos, mask=m, other=0)
            dst = tl.load(cand_dest_ptr + bh * stride_sbh + base + i, mask=m, other=0)
            tl.store(labels_ptr + bh * stride_lbh + tok, dst, mask=m)
