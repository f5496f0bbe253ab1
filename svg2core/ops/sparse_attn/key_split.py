"""The key range of every head split in two, for heads whose K and V do not fit the L2 cache (Hopper, Gluon kernel).

A head's video keys sit in ``kp`` / ``vp`` in key-cluster order. When a head's K + V (``2 * Nv * D`` elements) is
larger than the L2 cache, the 132 programs of one wave (all on the same head, each reading its own selection) miss
in L2 far more often: at HunyuanVideo's 118,800 tokens a head runs ~9% slower per computed pair than at 59,400
(docs/benchmarks/NOTES_sparse_attn.md, v11). Splitting keeps each launch's working set under half of that:

1. ``split_selection``: each query cluster's selected key clusters, stably partitioned into those whose kp rows
   start in the first half of the head's rows (``k_offsets[c] < Nv // 2``) and the rest, as two selections of the
   same shapes (``sel_idx``, ``sel_count``, ``sel_cum``), either of which may be empty for a query cluster;
2. the kernel runs once per half (the second one with the text keys), each writing its rows normalised and the
   log2-sum-exp of their scores (``lse``: ``m + log2(l)`` in the kernel's exp2 units, ``-inf`` for a row that saw no
   key);
3. ``merge_halves``: ``out = (o_0 * 2^(lse_0 - M) + o_1 * 2^(lse_1 - M)) / (2^(lse_0 - M) + 2^(lse_1 - M))`` with
   ``M = max(lse_0, lse_1)``, over the video rows (the text-query rows come from their own dense launch).

Exact up to the rounding of the two partial outputs to the output dtype. No host synchronisation; the buffers come
from the caller's workspace.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _split_selection_kernel(SELIDX, SELCNT, SELCUM, KOFF, IDX0, CNT0, CUM0, IDX1, CNT1, CUM1, CQ, CK, MID,
                            CK_BLOCK: tl.constexpr):
    c = tl.program_id(0)
    bh = tl.program_id(1)
    pair = bh.to(tl.int64) * CQ + c
    cnt = tl.load(SELCNT + pair)
    koff = KOFF + bh.to(tl.int64) * (CK + 1)
    n0 = cnt * 0  # clusters of each half so far
    n1 = cnt * 0
    s0 = cnt * 0  # their key tokens so far
    s1 = cnt * 0
    for j0 in range(0, cnt, CK_BLOCK):
        j = j0 + tl.arange(0, CK_BLOCK)
        ok = j < cnt
        cl = tl.load(SELIDX + pair * CK + j, mask=ok, other=0)
        start = tl.load(koff + cl, mask=ok, other=0)
        size = tl.load(koff + cl + 1, mask=ok, other=0) - start
        first = ok & (start < MID)
        second = ok & (start >= MID)
        f0 = first.to(tl.int32)
        f1 = second.to(tl.int32)
        pos0 = n0 + tl.cumsum(f0, 0) - f0  # rank among this half's clusters, in list order
        pos1 = n1 + tl.cumsum(f1, 0) - f1
        cum0 = s0 + tl.cumsum(size * f0, 0) - size * f0  # tokens of this half before it
        cum1 = s1 + tl.cumsum(size * f1, 0) - size * f1
        tl.store(IDX0 + pair * CK + pos0, cl, mask=first)
        tl.store(CUM0 + pair * (CK + 1) + pos0, cum0, mask=first)
        tl.store(IDX1 + pair * CK + pos1, cl, mask=second)
        tl.store(CUM1 + pair * (CK + 1) + pos1, cum1, mask=second)
        n0 += tl.sum(f0, 0)
        n1 += tl.sum(f1, 0)
        s0 += tl.sum(size * f0, 0)
        s1 += tl.sum(size * f1, 0)
    tl.store(CNT0 + pair, n0)
    tl.store(CNT1 + pair, n1)
    tl.store(CUM0 + pair * (CK + 1) + n0, s0)
    tl.store(CUM1 + pair * (CK + 1) + n1, s1)


def split_midpoint(nv: int) -> int:
    """The kp row that divides a head's keys: clusters starting before it go to the first half."""
    return nv // 2


def split_selection(sel_idx: torch.Tensor, sel_count: torch.Tensor, sel_cum: torch.Tensor, k_offsets: torch.Tensor,
                    nv: int, halves: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]) -> None:
    """Write the two halves' selections into ``halves = ((sel_idx_0, sel_count_0, sel_cum_0), (..._1))``, each of the
    shapes of the input selection (contiguous). Entries past a half's count are left unwritten (never read)."""
    bh, cq, ck = sel_idx.shape
    (idx0, cnt0, cum0), (idx1, cnt1, cum1) = halves
    _split_selection_kernel[(cq, bh)](
        sel_idx, sel_count, sel_cum, k_offsets, idx0, cnt0, cum0, idx1, cnt1, cum1, cq, ck, split_midpoint(nv),
        CK_BLOCK=min(1024, triton.next_power_of_2(ck)), num_warps=4,
    )


def split_selection_reference(sel_idx: torch.Tensor, sel_count: torch.Tensor, sel_cum: torch.Tensor,
                              k_offsets: torch.Tensor, nv: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Torch reference of ``split_selection``: ``[(sel_idx_h, sel_count_h, sel_cum_h) for h in (0, 1)]`` with zeros
    past each count (the kernel leaves those entries unwritten)."""
    bh, cq, ck = sel_idx.shape
    j = torch.arange(ck, device=sel_idx.device)
    valid = j[None, None, :] < sel_count[..., None].long()
    idx = torch.where(valid, sel_idx.long(), 0)
    koff = k_offsets.long()[:, None, :].expand(bh, cq, ck + 1)
    start = torch.gather(koff, 2, idx)
    size = torch.gather(koff, 2, idx + 1) - start
    out = []
    for half in (start < split_midpoint(nv), start >= split_midpoint(nv)):
        keep = valid & half
        # stable partition: this half's clusters first, in list order
        order = torch.sort((~keep).to(torch.int8), dim=2, stable=True).indices
        kept = torch.gather(keep, 2, order)
        h_idx = torch.where(kept, torch.gather(idx, 2, order), 0)
        h_size = torch.where(kept, torch.gather(size, 2, order), 0)
        h_cum = torch.zeros(bh, cq, ck + 1, dtype=torch.long, device=sel_idx.device)
        h_cum[..., 1:] = h_size.cumsum(2)
        count = keep.sum(2)
        h_cum = torch.where(torch.arange(ck + 1, device=sel_idx.device) <= count[..., None], h_cum, 0)
        out.append((h_idx.int(), count.int(), h_cum.int()))
    return out


@triton.jit
def _merge_halves_kernel(OUT0, LSE0, OUT, LSE1, NV, H, stride_0b, stride_0h, stride_0n, stride_ob, stride_oh,
                         stride_on, D: tl.constexpr, BLOCK: tl.constexpr):
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < NV
    d = tl.arange(0, D)
    lse0 = tl.load(LSE0 + bh.to(tl.int64) * NV + rows, mask=ok, other=float("-inf"))
    lse1 = tl.load(LSE1 + bh.to(tl.int64) * NV + rows, mask=ok, other=float("-inf"))
    m = tl.maximum(lse0, lse1)
    seen = m > float("-inf")
    m = tl.where(seen, m, 0.0)
    w0 = tl.exp2(lse0 - m)  # 0 for a half that saw no key
    w1 = tl.exp2(lse1 - m)
    den = tl.where(seen, w0 + w1, 1.0)
    p0 = OUT0 + b.to(tl.int64) * stride_0b + h.to(tl.int64) * stride_0h + rows[:, None].to(tl.int64) * stride_0n + d
    p1 = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + rows[:, None].to(tl.int64) * stride_on + d
    o0 = tl.load(p0, mask=ok[:, None], other=0.0).to(tl.float32)
    o1 = tl.load(p1, mask=ok[:, None], other=0.0).to(tl.float32)
    o = (o0 * (w0 / den)[:, None] + o1 * (w1 / den)[:, None])
    tl.store(p1, o.to(OUT.dtype.element_ty), mask=ok[:, None])


def merge_halves(out0: torch.Tensor, lse0: torch.Tensor, out: torch.Tensor, lse1: torch.Tensor, nv: int) -> None:
    """``out[:, :, :nv] = merge(out0, lse0, out[:, :, :nv], lse1)`` in place (``out0``: ``(B, H, >= Nv, D)``,
    ``lse*``: ``(B*H, Nv)`` fp32); the rows past ``nv`` of ``out`` are left as they are."""
    b, h, _, d = out.shape
    block = 32
    _merge_halves_kernel[(triton.cdiv(nv, block), b * h)](
        out0, lse0, out, lse1, nv, h, out0.stride(0), out0.stride(1), out0.stride(2), out.stride(0), out.stride(1),
        out.stride(2), D=d, BLOCK=block, num_warps=4,
    )


def merge_halves_reference(out0: torch.Tensor, lse0: torch.Tensor, out1: torch.Tensor, lse1: torch.Tensor
                           ) -> torch.Tensor:
    """Torch reference of the merge for ``(B, H, Nv, D)`` partial outputs and ``(B*H, Nv)`` lse: fp32 result."""
    b, h, nv, _ = out0.shape
    l0, l1 = lse0.view(b, h, nv, 1).float(), lse1.view(b, h, nv, 1).float()
    m = torch.maximum(l0, l1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w0, w1 = torch.exp2(l0 - m), torch.exp2(l1 - m)
    den = torch.where(w0 + w1 > 0, w0 + w1, torch.ones_like(w0))
    return (out0.float() * w0 + out1.float() * w1) / den
