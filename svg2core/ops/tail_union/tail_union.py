"""Query-tail union (the rule: ``reference.py``): the Triton stage and its dispatch."""

from __future__ import annotations

import torch

from svg2core.ops.tail_union.reference import (
    FIXED_KEY_ROWS,
    HALF_TILE_COST_PCT,
    ROUNDS,
    tail_union_reference,
    union_clusters,
)
from svg2core.state import Workspace

_BLOCK_R = 256  # rows per step of a cluster's copy in the permutation kernel
_SAVING_BM = 64  # tails per side of a block of the pair-saving kernel
_SAVING_BK = 64  # key clusters per step of its products
#: the savings kernel's warps: 8 ran 0.71x the time of 4 at Wan 14B's size and 0.65x at 480p's (H100,
#: probe_tail_stage, s28); 8 with a smaller BM ran slower
_SAVING_WARPS = 8
_MATCH_BA, _MATCH_BB = 16, 128  # the matching's tails per program, and columns of savings a step


def tail_union(
    q_labels: torch.Tensor, q_perm: torch.Tensor, q_offsets: torch.Tensor, sel_idx: torch.Tensor,
    sel_count: torch.Tensor, sel_cum: torch.Tensor, k_sizes: torch.Tensor, block: int = 128,
    workspace: Workspace | None = None, name: str = "q", backend: str = "triton", fixed: int = FIXED_KEY_ROWS,
    max_keys: int | None = None, sweep: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Pack pairs of query-cluster tails into shared tiles over the union of their key lists (reference.py's rule).

    Args: as :func:`~svg2core.ops.tail_union.reference.tail_union_reference`, plus ``workspace`` and ``name`` (owner
    and name prefix of the outputs and the scratch) and ``backend``: ``"triton"`` (``6 + 2 * ROUNDS`` launches, no host
    synchronisation, no allocation but the workspace's first; ``q_labels`` is relabelled in place) or
    ``"reference"``. ``sweep``: ``(period, block_m)`` of the attention kernel's key sweep (the selection's
    ``KeySweep``): every row is laid out in sweep order from its first tile in the new layout; None: the clusters'
    rows as given, the slots' in id order.

    Returns:
        ``(q_labels, q_perm, q_offsets, q_sizes, sel_idx, sel_count, sel_cum)`` for ``Cq + Cq // 2`` query clusters.
    """
    bh, cq = sel_count.shape
    ck = k_sizes.shape[-1]
    nv = q_perm.shape[-1]
    if q_offsets.shape != (bh, cq + 1) or q_perm.shape != q_labels.shape or sel_idx.shape != (bh, cq, ck):
        raise ValueError(f"q_offsets, q_perm / q_labels, sel_idx: need ({bh}, {cq + 1}), equal shapes, ({bh}, {cq}, "
                         f"{ck}); got {tuple(q_offsets.shape)}, {tuple(q_perm.shape)} / {tuple(q_labels.shape)}, "
                         f"{tuple(sel_idx.shape)}")
    if ck >= 2048:  # the rows kernel's packed scan holds counts below 2048
        raise ValueError(f"sel_idx: need fewer than 2048 key clusters, got {ck}")
    if block < 2 or block & (block - 1) or block > 1024:
        raise ValueError(f"block: need a power of two of query rows in [2, 1024], got {block}")
    if backend == "reference":
        return tail_union_reference(q_labels, q_perm, q_offsets, sel_idx, sel_count, sel_cum, k_sizes, block, fixed,
                                    max_keys, sweep)
    import triton

    from svg2core.ops.tail_union.triton_tail_union import (
        _tail_best_kernel,
        _tail_layout_kernel,
        _tail_member_kernel,
        _tail_mutual_kernel,
        _tail_number_kernel,
        _tail_perm_kernel,
    )

    ws = Workspace() if workspace is None else workspace
    dev = q_perm.device
    p = cq // 2
    c2 = union_clusters(cq)
    c_pow2 = triton.next_power_of_2(max(2, cq))
    ck_pow2 = triton.next_power_of_2(max(2, ck))
    i32 = torch.int32
    perm2 = ws.buffer(f"{name}.tu_perm", (bh, nv), i32, dev)
    offsets2 = ws.buffer(f"{name}.tu_offsets", (bh, c2 + 1), i32, dev)
    sizes2 = ws.buffer(f"{name}.tu_sizes", (bh, c2), i32, dev)
    idx2 = ws.buffer(f"{name}.tu_sel_idx", (bh, c2, ck), i32, dev)
    count2 = ws.buffer(f"{name}.tu_sel_count", (bh, c2), i32, dev)
    cum2 = ws.buffer(f"{name}.tu_sel_cum", (bh, c2, ck + 1), i32, dev)
    member = ws.buffer(f"{name}.tu_member", (bh, cq, ck), torch.int8, dev)
    saving = ws.buffer(f"{name}.tu_saving", (bh, cq, cq), i32, dev)
    partner = ws.buffer(f"{name}.tu_partner", (bh, cq), i32, dev)
    best = ws.buffer(f"{name}.tu_best", (bh, cq), i32, dev)
    pairs = ws.buffer(f"{name}.tu_pairs", (bh, max(1, p), 2), i32, dev)
    slot = ws.buffer(f"{name}.tu_slot", (bh, cq), i32, dev)
    tile0 = ws.buffer(f"{name}.tu_tile0", (bh, c2), i32, dev)
    period, sweep_m = sweep if sweep is not None else (0, 0)
    if not sweep_m:  # the clusters' own selections are unchanged (with a sweep, the rows kernel lays them out again)
        idx2[:, :cq].copy_(sel_idx)
        count2[:, :cq].copy_(sel_count)
        cum2[:, :cq].copy_(sel_cum)
    _tail_member_kernel[(cq, bh)](
        sel_idx, sel_count, member, ck,
        sel_idx.stride(0), sel_idx.stride(1), sel_count.stride(0), member.stride(0), member.stride(1),
        CK_POW2=ck_pow2,
    )
    launch_saving(q_offsets, sel_count, sel_cum, k_sizes, member, saving, block, fixed, max_keys)
    match_grid = (triton.cdiv(cq, _MATCH_BA), bh)
    for r in range(ROUNDS):
        _tail_best_kernel[match_grid](saving, partner, best, cq, saving.stride(0), saving.stride(1),
                                      partner.stride(0), FIRST=r == 0, BA=_MATCH_BA, BB=_MATCH_BB)
        _tail_mutual_kernel[match_grid](partner, best, cq, partner.stride(0), BA=_MATCH_BA)
    _tail_number_kernel[(bh,)](
        partner, pairs, slot, cq, p, partner.stride(0), pairs.stride(0), slot.stride(0),
        C_POW2=c_pow2, P_POW2=triton.next_power_of_2(max(2, p)),
    )
    _tail_layout_kernel[(bh,)](
        q_offsets, pairs, slot, offsets2, sizes2, tile0, cq, c2,
        q_offsets.stride(0), pairs.stride(0), slot.stride(0), offsets2.stride(0), sizes2.stride(0), tile0.stride(0),
        BLOCK=block, C2_POW2=triton.next_power_of_2(max(2, c2)), SWEEP_M=sweep_m,
    )
    launch_rows(sel_count, k_sizes, member, pairs, tile0, idx2, count2, cum2, period, sweep_m)
    _tail_perm_kernel[(c2, bh)](
        q_offsets, q_perm, q_labels, pairs, offsets2, perm2, cq,
        q_offsets.stride(0), q_perm.stride(0), q_labels.stride(0), pairs.stride(0), offsets2.stride(0),
        perm2.stride(0),
        BLOCK=block, BLOCK_R=_BLOCK_R,
    )
    return q_labels, perm2, offsets2, sizes2, idx2, count2, cum2


def launch_saving(q_offsets: torch.Tensor, sel_count: torch.Tensor, sel_cum: torch.Tensor, k_sizes: torch.Tensor,
                  member: torch.Tensor, saving: torch.Tensor, block: int, fixed: int, max_keys: int | None,
                  bm: int = _SAVING_BM, bk: int = _SAVING_BK, **launch) -> None:
    """The pair-saving kernel into ``saving`` ``(BH, Cq, Cq)`` int32 from the membership rows ``member``; ``bm``,
    ``bk`` and ``launch`` (``num_warps``, ``num_stages``): its launch shape (the stage's defaults
    unless a probe asks otherwise; every shape gives the same savings)."""
    import triton

    from svg2core.ops.tail_union.triton_tail_union import _tail_saving_kernel

    bh, cq = sel_count.shape
    nblk = triton.cdiv(cq, bm)
    launch = {"num_warps": _SAVING_WARPS, **launch}
    _tail_saving_kernel[(nblk, nblk, bh)](
        q_offsets, sel_count, sel_cum, k_sizes, member, saving, cq, k_sizes.shape[-1], fixed,
        2**31 - 1 if max_keys is None else max_keys,
        q_offsets.stride(0), sel_count.stride(0), sel_cum.stride(0), sel_cum.stride(1), k_sizes.stride(0),
        member.stride(0), member.stride(1), saving.stride(0), saving.stride(1),
        BLOCK=block, HALF_PCT=HALF_TILE_COST_PCT, BM=bm, BK=bk, **launch,
    )


def launch_rows(sel_count: torch.Tensor, k_sizes: torch.Tensor, member: torch.Tensor, pairs: torch.Tensor,
                tile0: torch.Tensor, idx2: torch.Tensor, count2: torch.Tensor, cum2: torch.Tensor, period: int,
                sweep_m: int, **launch) -> None:
    """The selection-rows kernel into ``idx2`` / ``count2`` / ``cum2``: every row with a key sweep (``sweep_m`` >
    0), else the slots' only; ``launch``: ``num_warps`` etc. (the stage's defaults unless a probe asks otherwise)."""
    import triton

    from svg2core.ops.tail_union.triton_tail_union import _tail_rows_kernel

    bh, cq = sel_count.shape
    ck = k_sizes.shape[-1]
    c2 = union_clusters(cq)
    first_row = 0 if sweep_m else cq
    if c2 > first_row:
        _tail_rows_kernel[(c2 - first_row, bh)](
            sel_count, k_sizes, member, pairs, tile0, idx2, count2, cum2, cq, ck, max(1, period), first_row,
            sel_count.stride(0), k_sizes.stride(0), member.stride(0), member.stride(1), pairs.stride(0),
            tile0.stride(0), idx2.stride(0), idx2.stride(1), count2.stride(0), cum2.stride(0), cum2.stride(1),
            SWEEP=bool(sweep_m), CK_POW2=triton.next_power_of_2(max(2, ck)), **launch,
        )
