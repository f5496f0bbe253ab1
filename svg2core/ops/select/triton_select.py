"""Triton kernels of cluster scoring and top-p / fixed-density selection.

Two launches: ``_cluster_logits_kernel`` (a small tiled ``Cq Ck^T`` plus ``log|K_j|``) and one
selection kernel per (b, h, query cluster) row, in registers, with no (BH, Cq, Ck) sort buffer and no
host round trip: ``_select_kernel`` (default) sorts the whole row (bitonic) and scans it;
``_select_threshold_kernel`` finds the same kept set by a radix search for the rule's threshold
(measured no faster on H200: docs/benchmarks/NOTES_selection.md).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _ordered_bits(x):
    """int32 image of fp32 values that orders like the floats (both selection kernels sort by it)."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _order_key(logit, offs, BLOCK_K: tl.constexpr):
    """int32 key of the selection order (reference.selection_order): the logit's order-preserving bits with their
    low log2(BLOCK_K) bits replaced by the complemented cluster id, so that one descending integer sort gives
    "logit descending, lower id first among logits equal to within those bits"."""
    return (_ordered_bits(logit) & -BLOCK_K) | (BLOCK_K - 1 - offs)


@triton.jit
def _keep_rule(cum_p, cum_tok, top_p, min_tokens, max_tokens, FIXED: tl.constexpr):
    """Whether a prefix with probability ``cum_p`` and ``cum_tok`` tokens is below the budget (the
    crossing cluster is then added on top): top-p with the min / max token caps, or the fixed-density
    token cap."""
    if FIXED:
        rule = cum_tok < max_tokens
    else:
        rule = ((cum_p < top_p) | (cum_tok < min_tokens)) & (cum_tok < max_tokens)
    return rule


@triton.jit
def _sweep_start(qsize_ptr, stride_zbh, pid_bh, pid_q, CK, period, BLOCK_M: tl.constexpr, BLOCK_CQ: tl.constexpr):
    """Key cluster where query cluster ``pid_q``'s sweep starts (reference.sweep_starts_reference): its first query
    tile's index ``k`` in the head, from the sizes of the clusters before it, then ``floor((k mod period) * CK /
    period)``."""
    offs_c = tl.arange(0, BLOCK_CQ)
    sizes = tl.load(qsize_ptr + pid_bh * stride_zbh + offs_c, mask=offs_c < pid_q, other=0)
    first = tl.sum((sizes + BLOCK_M - 1) // BLOCK_M, axis=0)
    return ((first % period) * CK) // period


@triton.jit
def _store_in_sweep_order(kept, tok, offs, m, start, idx_row, cum_row, count_ptr):
    """Store a row's selection in sweep order (reference.selection_in_sweep_order): the kept clusters (``kept``, by
    id) in ascending id from ``start`` up, then from 0 up to it, then the others in ascending id; ``sel_cum`` the
    token prefix sums (``tok``, by id, 0 past the row) in that order; ``sel_count`` the number kept."""
    kept_i = kept.to(tl.int32)
    count = tl.sum(kept_i, axis=0)
    n_incl = tl.cumsum(kept_i, axis=0)
    before = offs < start
    n_before = tl.sum(tl.where(before, kept_i, 0), axis=0)
    kept_tok = tl.where(kept, tok, 0)
    cum_kept = tl.cumsum(kept_tok, axis=0)
    cum_rest = tl.cumsum(tok - kept_tok, axis=0)
    total = tl.sum(kept_tok, axis=0)
    tok_before = tl.sum(tl.where(before, kept_tok, 0), axis=0)
    pos = tl.where(kept, tl.where(before, count - n_before + n_incl - 1, n_incl - 1 - n_before),
                   count + offs - n_incl)
    cum = tl.where(kept, tl.where(before, total - tok_before + cum_kept, cum_kept - tok_before), total + cum_rest)
    tl.store(idx_row + pos, offs, mask=m)
    tl.store(cum_row + 1 + pos, cum, mask=m)
    tl.store(cum_row, 0)
    tl.store(count_ptr, count)


@triton.jit
def _cluster_logits_kernel(
    cq_ptr, ck_ptr, ksize_ptr, logits_ptr,
    CQ, CK, scale,
    stride_qbh, stride_qc, stride_kbh, stride_kc, stride_sbh, stride_lbh, stride_lq,
    D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr = "ieee",
):
    """logits[bh, i, j] = scale * <cq_i, ck_j> + log|K_j|; grid (cdiv(CQ, BLOCK_Q), cdiv(CK, BLOCK_K), B * H):
    one (BLOCK_Q, BLOCK_K) block per program (a grid over query blocks only ran 48 programs at Wan 1.3B with
    100 query clusters, each looping over every key block), the dot in steps of BLOCK_D of the head dim."""
    pid_q = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_bh = tl.program_id(2)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    mq = offs_q < CQ
    mk = offs_k < CK
    q_ptrs = cq_ptr + pid_bh * stride_qbh + offs_q[:, None] * stride_qc + offs_d[None, :]
    k_ptrs = ck_ptr + pid_bh * stride_kbh + offs_k[:, None] * stride_kc + offs_d[None, :]
    s = tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)
    for d0 in tl.static_range(0, D, BLOCK_D):
        cq = tl.load(q_ptrs + d0, mask=mq[:, None], other=0.0)
        ck = tl.load(k_ptrs + d0, mask=mk[:, None], other=0.0)
        s = tl.dot(cq, tl.trans(ck), s, input_precision=PRECISION)
    size = tl.load(ksize_ptr + pid_bh * stride_sbh + offs_k, mask=mk, other=0).to(tl.float32)
    logit = s * scale + tl.log(size)[None, :]  # log 0 = -inf: empty clusters get probability 0
    tl.store(logits_ptr + pid_bh * stride_lbh + offs_q[:, None] * stride_lq + offs_k[None, :], logit,
             mask=mq[:, None] & mk[None, :])


@triton.jit
def _select_kernel(
    logits_ptr, ksize_ptr, sel_idx_ptr, sel_count_ptr, sel_cum_ptr, qsize_ptr,
    CK, top_p, min_tokens, max_tokens, period,
    stride_lbh, stride_lq, stride_sbh,
    stride_ibh, stride_iq, stride_nbh, stride_cbh, stride_cq, stride_zbh,
    FIXED: tl.constexpr, BLOCK_K: tl.constexpr, SWEEP: tl.constexpr = False, BLOCK_M: tl.constexpr = 128,
    BLOCK_CQ: tl.constexpr = 16,
):
    """One (query cluster, bh) row per program: sort key clusters by logit, scan, count the kept prefix.

    The int32 sort key (``_order_key``) packs the logit's order-preserving bits above the complemented cluster
    id: one descending integer sort gives the reference's order (an int64 key with the full logit sorted twice the
    data).
    With ``incl`` the inclusive sums, cluster ``j >= 1`` is kept iff the rule holds on ``incl[j-1]``
    and it is non-empty; both are prefixes of the order, so the count is
    ``min(1 + #{j: rule(incl[j])}, #non-empty)``.

    With ``SWEEP`` the kept clusters (the ``count`` largest keys) are stored in sweep order instead
    (``_store_in_sweep_order``; ``qsize_ptr`` the query-cluster sizes, ``period`` the programs in flight).
    """
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs = tl.arange(0, BLOCK_K)
    m = offs < CK
    row = logits_ptr + pid_bh * stride_lbh + pid_q * stride_lq
    logit = tl.load(row + offs, mask=m, other=float("-inf"))
    key = tl.sort(_order_key(logit, offs, BLOCK_K), descending=True)
    idx = BLOCK_K - 1 - (key & (BLOCK_K - 1))
    valid = idx < CK
    sorted_logit = tl.load(row + idx, mask=valid, other=float("-inf"))
    tok = tl.load(ksize_ptr + pid_bh * stride_sbh + idx, mask=valid, other=0)
    p = tl.exp(sorted_logit - tl.max(logit, axis=0))
    p = tl.where(valid, p, 0.0)
    p = p / tl.sum(p, axis=0)
    cum_p = tl.cumsum(p, axis=0)
    cum_tok = tl.cumsum(tok, axis=0)
    rule = _keep_rule(cum_p, cum_tok, top_p, min_tokens, max_tokens, FIXED)
    n_rule = tl.sum(rule.to(tl.int32), axis=0)
    n_nonempty = tl.sum((tok > 0).to(tl.int32), axis=0)
    count = tl.minimum(1 + n_rule, n_nonempty)
    idx_row = sel_idx_ptr + pid_bh * stride_ibh + pid_q * stride_iq
    cum_row = sel_cum_ptr + pid_bh * stride_cbh + pid_q * stride_cq
    count_ptr = sel_count_ptr + pid_bh * stride_nbh + pid_q
    if SWEEP:
        # the kept clusters are those whose key is at least the count-th largest (keys are distinct)
        last = tl.sum(tl.where(offs == count - 1, key, 0), axis=0)
        kept = (_order_key(logit, offs, BLOCK_K) >= last) & m
        tok_by_id = tl.load(ksize_ptr + pid_bh * stride_sbh + offs, mask=m, other=0)
        start = _sweep_start(qsize_ptr, stride_zbh, pid_bh, pid_q, CK, period, BLOCK_M, BLOCK_CQ)
        _store_in_sweep_order(kept, tok_by_id, offs, m, start, idx_row, cum_row, count_ptr)
    else:
        tl.store(idx_row + offs, idx, mask=m)
        tl.store(cum_row + 1 + offs, cum_tok, mask=m)
        tl.store(cum_row, 0)
        tl.store(count_ptr, count)


@triton.jit
def _select_threshold_kernel(
    logits_ptr, ksize_ptr, sel_idx_ptr, sel_count_ptr, sel_cum_ptr, qsize_ptr,
    CK, top_p, min_tokens, max_tokens, period,
    stride_lbh, stride_lq, stride_sbh,
    stride_ibh, stride_iq, stride_nbh, stride_cbh, stride_cq, stride_zbh,
    FIXED: tl.constexpr, BLOCK_K: tl.constexpr, RADIX_BITS: tl.constexpr, SWEEP: tl.constexpr = False,
    BLOCK_M: tl.constexpr = 128, BLOCK_CQ: tl.constexpr = 16,
):
    """The same kept set as ``_select_kernel`` without sorting: a radix search for the rule's threshold.

    Every key cluster gets a distinct non-negative int64 key, ordered like the reference order:
    ``_order_key + 2^31``.
    With ``S(T) = {j: key_j >= T}`` (a prefix of that order), ``f(T) = rule(sum_S p, sum_S tok)`` is
    monotone (true for large ``T``), so the number of prefixes that satisfy the rule,
    ``R = |S(T_min)|`` with ``T_min`` the smallest ``T`` where ``f`` holds, follows from a search over
    the key bits: ``RADIX_BITS`` bits per step, all ``2^RADIX_BITS`` candidates of a step evaluated at
    once as one (BLOCK_K, 2^RADIX_BITS) masked reduction. ``count = min(1 + R, #non-empty)`` as in the
    sorting kernel; the kept clusters are the ``count`` largest keys.

    Output order (the only difference from the sorting kernel): ``sel_idx[:count]`` holds the kept
    clusters in ascending id, the rest the others in ascending id; ``sel_cum`` is the token prefix sum
    in that order (with ``SWEEP``, the kept clusters in sweep order, as in ``_select_kernel``). The attention does
    not depend on the order of the selected clusters.
    """
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs = tl.arange(0, BLOCK_K)
    m = offs < CK
    row = logits_ptr + pid_bh * stride_lbh + pid_q * stride_lq
    logit = tl.load(row + offs, mask=m, other=float("-inf"))
    tok = tl.load(ksize_ptr + pid_bh * stride_sbh + offs, mask=m, other=0)
    key = _order_key(logit, offs, BLOCK_K).to(tl.int64) + 2147483648
    p = tl.exp(logit - tl.max(logit, axis=0))
    p = tl.where(m, p, 0.0)
    p = p / tl.sum(p, axis=0)

    # g(T) = not f(T), true for small T. Whole set first: if the rule holds there, T_min = 0.
    all_p = tl.sum(p, axis=0)
    all_tok = tl.sum(tok, axis=0)
    f_all = _keep_rule(all_p, all_tok, top_p, min_tokens, max_tokens, FIXED)
    NUM_CAND: tl.constexpr = 1 << RADIX_BITS
    STEPS: tl.constexpr = (32 + RADIX_BITS - 1) // RADIX_BITS
    digits = tl.arange(0, NUM_CAND).to(tl.int64)
    t = tl.zeros([NUM_CAND], tl.int64)  # every entry holds T (the largest T found so far with g(T))
    for step in tl.static_range(STEPS):
        shift = RADIX_BITS * (STEPS - 1 - step)  # a constexpr (static_range)
        cand = t + (digits << shift)
        in_s = key[:, None] >= cand[None, :]  # (BLOCK_K, NUM_CAND)
        s_tok = tl.sum(tl.where(in_s, tok[:, None], 0), axis=0)
        if FIXED:
            g = s_tok >= max_tokens
        else:
            s_p = tl.sum(tl.where(in_s, p[:, None], 0.0), axis=0)
            g = ((s_p >= top_p) & (s_tok >= min_tokens)) | (s_tok >= max_tokens)
        n_g = tl.maximum(tl.sum(g.to(tl.int32), axis=0), 1)  # g(T | 0 << shift) = g(T) holds
        t = t + ((n_g - 1).to(tl.int64) << shift)
    t_min = tl.where(f_all, 0, tl.max(t, axis=0) + 1)
    # kept = the 1 + R largest keys, R = #{key >= t_min}, capped to the non-empty clusters (empty
    # clusters have logit -inf, so they come after every non-empty one)
    t_next = tl.max(tl.where(key < t_min, key, -1), axis=0)
    kept = (key >= t_next) & (tok > 0)  # t_min == 0 (rule holds on every prefix): t_next = -1, all
    start = 0
    if SWEEP:
        start = _sweep_start(qsize_ptr, stride_zbh, pid_bh, pid_q, CK, period, BLOCK_M, BLOCK_CQ)
    _store_in_sweep_order(kept, tok, offs, m, start, sel_idx_ptr + pid_bh * stride_ibh + pid_q * stride_iq,
                          sel_cum_ptr + pid_bh * stride_cbh + pid_q * stride_cq,
                          sel_count_ptr + pid_bh * stride_nbh + pid_q)
