"""Per-call lookup tables of the key tiles, for the Gluon kernel's producer (Hopper).

For query cluster ``i`` of head ``bh`` (``pair = bh * Cq + i``) the selected key clusters ``j = 0..cnt-1``
concatenate into ``total = sel_cum[pair, cnt]`` key positions, visited in tiles of ``block_n``; position
``p`` of segment ``j`` is kp row ``k_offsets[bh, sel_idx[pair, j]] + p - sel_cum[pair, j]``
(svg2core/ops/sparse_attn/kernel.py). Two tables turn that into fewer dependent loads per key tile:

- ``seg_base[pair, j] = k_offsets[bh, sel_idx[pair, j]] - sel_cum[pair, j]`` for ``j < cnt``: the kp row of
  position ``p`` in segment ``j`` is ``seg_base[pair, j] + p`` (one load instead of three);
- ``tile_seg[pair, t]`` for ``t = 0..n_tiles`` (``n_tiles = cdiv(total, block_n)``): the segment of position
  ``min(t * block_n, total - 1)``. The positions of tile ``t`` lie in segments ``tile_seg[t] .. tile_seg[t+1]``,
  so the producer searches that short window, and no tile's search waits for the previous tile's.

Entries past ``cnt`` / ``n_tiles`` are left unwritten (never read). One launch of ``(Cq, B*H)`` programs;
no host synchronisation.

For the persistent Gluon kernel, ``query_tile_list`` writes its work list: entry ``bh * tiles_per_head + i``
describes video query tile ``i`` of head ``bh`` (the mapping of ``kernel._tile_map``: a cluster's tiles in
order, clusters in order) with everything the kernel's partitions need per tile (``ITEM_FIELDS``), so they keep
no size or stride arguments live across tiles; ``pair = -1`` past the head's last tile. One launch of
``(B*H,)`` programs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernel import query_tiles


def max_key_tiles(nv: int, block_n: int) -> int:
    """Upper bound of ``n_tiles`` over all pairs (the selected ranges are disjoint video keys): the
    ``tile_seg`` row length is this + 1."""
    return triton.cdiv(nv, block_n)


@triton.jit
def _key_tile_tables_kernel(SELIDX, SELCNT, SELCUM, KOFF, SEGBASE, TILESEG, CQ, CK, TILE_STRIDE,
                            BLOCK_N: tl.constexpr, CK_BLOCK: tl.constexpr, SEARCH_STEPS: tl.constexpr,
                            T_BLOCK: tl.constexpr):
    c = tl.program_id(0)
    bh = tl.program_id(1)
    pair = bh.to(tl.int64) * CQ + c
    cnt = tl.load(SELCNT + pair)
    cum_row = SELCUM + pair * (CK + 1)
    total = tl.load(cum_row + cnt)
    # seg_base
    for j0 in range(0, cnt, CK_BLOCK):
        j = j0 + tl.arange(0, CK_BLOCK)
        ok = j < cnt
        cl = tl.load(SELIDX + pair * CK + j, mask=ok, other=0)
        base = (tl.load(KOFF + bh.to(tl.int64) * (CK + 1) + cl, mask=ok, other=0)
                - tl.load(cum_row + j, mask=ok, other=0))
        tl.store(SEGBASE + pair * CK + j, base, mask=ok)
    # tile_seg: largest j < cnt with sel_cum[j] <= min(t * BLOCK_N, total - 1), by a branch-free binary search
    # over [0, cnt) (SEARCH_STEPS = log2 of a power of two >= CK)
    n_tiles = tl.cdiv(total, BLOCK_N)
    for t0 in range(0, n_tiles + 1, T_BLOCK):
        t = t0 + tl.arange(0, T_BLOCK)
        pos = tl.minimum(t * BLOCK_N, total - 1)
        lo = t * 0
        for i in tl.static_range(SEARCH_STEPS):
            mid = lo + (1 << (SEARCH_STEPS - 1 - i))
            v = tl.load(cum_row + mid, mask=mid < cnt, other=2147483647)
            lo = tl.where(v <= pos, mid, lo)
        tl.store(TILESEG + pair * TILE_STRIDE + t, lo, mask=t <= n_tiles)


def key_tile_tables(sel_idx: torch.Tensor, sel_count: torch.Tensor, sel_cum: torch.Tensor, k_offsets: torch.Tensor,
                    block_n: int, seg_base: torch.Tensor, tile_seg: torch.Tensor) -> None:
    """Fill ``seg_base`` ``(B*H*Cq, Ck)`` and ``tile_seg`` ``(B*H*Cq, max_key_tiles(Nv, block_n) + 1)`` int32
    (contiguous) from the selection (shapes as in ``sparse_attention``)."""
    bh, cq, ck = sel_idx.shape
    _key_tile_tables_kernel[(cq, bh)](
        sel_idx, sel_count, sel_cum, k_offsets, seg_base, tile_seg, cq, ck, tile_seg.shape[1],
        BLOCK_N=block_n, CK_BLOCK=min(1024, triton.next_power_of_2(ck)),
        SEARCH_STEPS=max(1, (triton.next_power_of_2(ck) - 1).bit_length()), T_BLOCK=128, num_warps=4,
    )


def key_tile_tables_reference(sel_idx: torch.Tensor, sel_count: torch.Tensor, sel_cum: torch.Tensor,
                              k_offsets: torch.Tensor, block_n: int, max_tiles: int
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch reference: ``(seg_base, tile_seg, seg_valid, tile_valid)``; the ``*_valid`` masks mark the entries
    the kernel writes (``j < cnt``, ``t <= n_tiles``); the others are zero here and unspecified there."""
    bh, cq, ck = sel_idx.shape
    cnt = sel_count.long().reshape(-1)
    cum = sel_cum.long().reshape(bh * cq, ck + 1)
    koff = k_offsets.long().repeat_interleave(cq, dim=0)  # (BH*Cq, Ck+1)
    j = torch.arange(ck, device=sel_idx.device)
    seg_valid = j[None, :] < cnt[:, None]
    idx = torch.where(seg_valid, sel_idx.long().reshape(bh * cq, ck), 0)  # unused slots may hold anything
    base = torch.gather(koff, 1, idx) - cum[:, :ck]
    seg_base = torch.where(seg_valid, base, 0).int()
    total = torch.gather(cum, 1, cnt[:, None])[:, 0]
    n_tiles = (total + block_n - 1) // block_n
    t = torch.arange(max_tiles + 1, device=sel_idx.device)
    pos = torch.minimum(t[None, :] * block_n, (total - 1)[:, None])
    # largest j < cnt with cum[j] <= pos (cum[0] = 0 <= pos whenever total > 0); 0 when nothing is selected
    starts = torch.where(seg_valid, cum[:, :ck], torch.iinfo(torch.int64).max)
    tile_seg = ((starts[:, None, :] <= pos[:, :, None]).sum(-1) - 1).clamp_min(0)
    tile_valid = t[None, :] <= n_tiles[:, None]
    return seg_base, torch.where(tile_valid, tile_seg, 0).int(), seg_valid, tile_valid


# fields of a work-list entry (int64 each)
ITEM_FIELDS = ("pair", "q_start", "q_end", "bh", "cnt", "total", "q_base", "k_base", "v_base", "o_base", "b", "pad")


@triton.jit
def _query_tile_list_kernel(QOFF, SELCNT, SELCUM, ITEMS, H, CQ, CK, TILES_PER_HEAD,
                            stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_ob, stride_oh,
                            BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, CQ_BLOCK: tl.constexpr, T_BLOCK: tl.constexpr):
    bh = tl.program_id(0)
    c = tl.arange(0, CQ_BLOCK)
    ok = c < CQ
    row = QOFF + bh.to(tl.int64) * (CQ + 1)
    lo = tl.load(row + c, mask=ok, other=0)
    hi = tl.load(row + c + 1, mask=ok, other=0)
    n_tiles = tl.where(ok, query_tiles(lo, hi, BLOCK_M, TAIL_M), 0)
    first = tl.cumsum(n_tiles, 0) - n_tiles
    pair = bh.to(tl.int64) * CQ + c
    cnt = tl.load(SELCNT + pair, mask=ok, other=0)
    total = tl.load(SELCUM + pair * (CK + 1) + cnt, mask=ok, other=0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    items = ITEMS + bh.to(tl.int64) * TILES_PER_HEAD * 12
    # every cluster writes its own tiles: k-th tile of cluster c at first[c] + k
    for k in range(0, tl.max(n_tiles, 0)):
        w = ok & (k < n_tiles)
        e = items + (first + k) * 12
        tl.store(e, pair, mask=w)
        tl.store(e + 1, lo + k * BLOCK_M, mask=w)
        tl.store(e + 2, hi, mask=w)
        tl.store(e + 3, bh + c * 0, mask=w)
        tl.store(e + 4, cnt, mask=w)
        tl.store(e + 5, total, mask=w)
        tl.store(e + 6, b * stride_qb + h * stride_qh + c * 0, mask=w)
        tl.store(e + 7, b * stride_kb + h * stride_kh + c * 0, mask=w)
        tl.store(e + 8, b * stride_vb + h * stride_vh + c * 0, mask=w)
        tl.store(e + 9, b * stride_ob + h * stride_oh + c * 0, mask=w)
        tl.store(e + 10, b + c * 0, mask=w)
    # the rest of the head's entries: inactive (pair -1)
    for t0 in range(tl.sum(n_tiles, 0), TILES_PER_HEAD, T_BLOCK):
        t = t0 + tl.arange(0, T_BLOCK)
        w = t < TILES_PER_HEAD
        tl.store(items + t * 12, t * 0 - 1, mask=w)


def query_tile_list(q_offsets: torch.Tensor, sel_count: torch.Tensor, sel_cum: torch.Tensor, heads: int,
                    strides: tuple[int, ...], block_m: int, tail_m: int, items: torch.Tensor) -> None:
    """Fill ``items`` ``(B*H * tiles_per_head, 12)`` int64 (contiguous; ``tiles_per_head >=`` the number of tiles
    of any head, e.g. ``kernel.max_video_tiles``) with the video query tiles of every head, fields ``ITEM_FIELDS``:
    ``pair = bh * Cq + cluster`` (-1: no tile), the tile's first sorted row and its cluster's end row, ``bh``, the
    pair's ``sel_count`` and selected key tokens, the (b, h) offsets of q, k, v and out from ``strides`` =
    (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1)),
    and ``b``. Only ``pair`` is written for the entries past a head's last tile. A cluster's remainder of ``<= tail_m``
    rows gets no tile (it runs elsewhere)."""
    bh, cq1 = q_offsets.shape
    _query_tile_list_kernel[(bh,)](q_offsets, sel_count, sel_cum, items, heads, cq1 - 1, sel_cum.shape[-1] - 1,
                                   items.shape[0] // bh, *strides, BLOCK_M=block_m, TAIL_M=tail_m,
                                   CQ_BLOCK=triton.next_power_of_2(cq1 - 1), T_BLOCK=128, num_warps=4)


def query_tile_list_reference(q_offsets: torch.Tensor, sel_count: torch.Tensor, sel_cum: torch.Tensor, heads: int,
                              strides: tuple[int, ...], block_m: int, tail_m: int, tiles_per_head: int
                              ) -> torch.Tensor:
    """Torch reference of ``query_tile_list``: ``(B*H * tiles_per_head, 12)`` int64; the fields after ``pair`` of
    an entry with ``pair == -1`` are zero here and unspecified there."""
    sqb, sqh, skb, skh, svb, svh, sob, soh = strides
    cq = q_offsets.shape[1] - 1
    cnt_all = sel_count.long().reshape(-1).tolist()
    cum_all = sel_cum.long().reshape(-1, sel_cum.shape[-1])
    out = []
    for bh, row in enumerate(q_offsets.long().cpu().tolist()):
        b, h = divmod(bh, heads)
        entries = []
        for c, (lo, hi) in enumerate(zip(row[:-1], row[1:], strict=True)):
            pair = bh * cq + c
            cnt = cnt_all[pair]
            total = int(cum_all[pair, cnt])
            entries += [(pair, lo + k * block_m, hi, bh, cnt, total, b * sqb + h * sqh, b * skb + h * skh,
                         b * svb + h * svh, b * sob + h * soh, b, 0)
                        for k in range((hi - lo + block_m - 1 - tail_m) // block_m)]
        assert len(entries) <= tiles_per_head, "tiles_per_head too small"
        out += entries + [(-1,) + (0,) * 11] * (tiles_per_head - len(entries))
    return torch.tensor(out, dtype=torch.int64, device=q_offsets.device).reshape(-1, 12)
