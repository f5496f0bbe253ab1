"""Query-tail union, the torch reference (the specification of the Triton stage).

The attention kernel runs each query cluster as whole tiles of ``block`` rows; the cluster's last tile holds its
*tail* (``size % block`` rows) and costs a whole tile's key loop, or ~0.69 of one when the tail fits half a tile
(docs/benchmarks/NOTES_sparse_attn.md v9). The tails leave 16-20% of the computed query rows empty at the benchmark
shapes. This stage packs pairs of tails into one tile whose key list is the union of the two clusters' lists: the
rows of both tails attend to every key cluster either selected (more pairs than their own selection, all computed
and counted in the density), and a loaded key tile feeds up to ``block`` rows instead of two part-empty tiles.

The rule, per (batch, head), with ``r_c = size_c % block`` the tail of query cluster ``c``, ``w_c`` the key rows of
its list (the sizes of its selected key clusters, summed) and ``o_ab`` the key rows the lists of ``a`` and ``b``
share:

- the integer cost model of one tile is ``cost(rows, keys) = (69 if rows <= block // 2 else 100) * (keys + fixed)``
  (``fixed``: a tile's fixed cost in key rows, :data:`FIXED_KEY_ROWS`); a pair of tails ``a != b``, both non-empty,
  that fits one tile (``r_a + r_b <= block``), and whose union holds at most ``max_keys`` key rows (the top-p mode's
  density cap; none in the fixed-density mode), *saves* ``cost(r_a, w_a) + cost(r_b, w_b) - cost(r_a + r_b, w_a + w_b
  - o_ab)``, and is a candidate if that is positive;
- pairs form by mutual best partner, in :data:`ROUNDS` rounds: in each round every tail not yet paired names the
  candidate partner of largest saving among those not yet paired (ties: the lower id), and two tails that name each
  other pair up (a greedy matching whose rounds are parallel, unlike a sequential packing);
- the result has ``Cq + Cq // 2`` query clusters: cluster ``c < Cq`` keeps its first ``size_c - r_c`` rows when its
  tail is paired (all of them otherwise); slot ``Cq + k`` holds the ``k``-th pair in order of its lower cluster id,
  that cluster's tail first, then its partner's (empty if there are fewer pairs). Within a cluster the rows keep
  their order, and a tail is the cluster's last rows in the query permutation;
- the selection of clusters ``c < Cq`` is unchanged; slot ``Cq + k`` keeps the union of its two clusters' key
  clusters, laid out in ascending id followed by the other key clusters in ascending id (the id-order layout of
  :func:`svg2core.ops.select.reference.selection_in_id_order`), with ``sel_cum`` its key-token prefix sums; an empty
  slot's row has count 0. With the attention kernel's key sweep, every row (the clusters' too) is then laid out
  again in sweep order from its first tile in the new layout (:func:`tail_union_reference`'s ``sweep``).

The cost model and its constants come from the kernel's measured costs (NOTES_sparse_attn.md v9, v12); the probe
``bench/probes/probe_tail_union.py`` gives the accuracy and modelled cost of this rule on synthetic video attention.
"""

from __future__ import annotations

import torch

from svg2core.ops.select.reference import kept_key_clusters, selection_in_sweep_order, sweep_starts_reference

#: A tile's fixed cost in key rows (prologue, epilogue, first loads: about three 128-row key tiles' time,
#: NOTES_sparse_attn.md v12), for the keep-or-not test of a pair.
FIXED_KEY_ROWS = 384
#: A tail of at most half a tile runs on one warpgroup at ~0.69 of a full tile's time (NOTES_sparse_attn.md v9); in
#: hundredths, so that the test is integer arithmetic on both backends.
HALF_TILE_COST_PCT = 69
#: Rounds of the mutual-best-partner matching (on synthetic video attention at Wan 14B's cluster sizes, four rounds
#: pair about as many tails as a sequential greedy packing, bench/probes/probe_tail_union.py).
ROUNDS = 4


def union_clusters(cq: int) -> int:
    """Query clusters after the stage: the ``cq`` clusters and ``cq // 2`` pair slots."""
    return cq + cq // 2


def tile_cost(rows, keys, block: int, fixed: int):
    """The integer cost model of one query tile (module docstring); ``rows`` and ``keys`` ints or int tensors."""
    return (HALF_TILE_COST_PCT + (100 - HALF_TILE_COST_PCT) * (rows > block // 2)) * (keys + fixed)


def pair_savings_reference(q_sizes: torch.Tensor, sel_count: torch.Tensor, sel_cum: torch.Tensor,
                           sel_idx: torch.Tensor, k_sizes: torch.Tensor, block: int, fixed: int,
                           max_keys: int | None = None) -> torch.Tensor:
    """``(BH, Cq, Cq)`` int64 saving of every pair of tails (the rule's first point); 0 where not a candidate, and
    where the union would hold more than ``max_keys`` key rows (the top-p mode's density cap)."""
    cq = sel_count.shape[1]
    member = kept_key_clusters(sel_idx, sel_count).long()
    ks = k_sizes.long()
    # in float64, exact for integers below 2^53 (CUDA has no integer matmul)
    overlap = ((member * ks[:, None, :]).double() @ member.transpose(1, 2).double()).long()
    w = torch.gather(sel_cum.long(), 2, sel_count.long()[..., None])[..., 0]
    r = q_sizes.long() % block
    alone = tile_cost(r, w, block, fixed)
    rows = r[:, :, None] + r[:, None, :]
    saving = alone[:, :, None] + alone[:, None, :] - tile_cost(rows, w[:, :, None] + w[:, None, :] - overlap, block,
                                                               fixed)
    ok = (r[:, :, None] > 0) & (r[:, None, :] > 0) & (rows <= block)
    ok &= ~torch.eye(cq, dtype=torch.bool, device=q_sizes.device)[None]
    if max_keys is not None:
        ok &= w[:, :, None] + w[:, None, :] - overlap <= max_keys
    return torch.where(ok & (saving > 0), saving, 0)


def tail_pairs_reference(saving: torch.Tensor, rounds: int = ROUNDS) -> torch.Tensor:
    """``(BH, Cq // 2, 2)`` int32 pairs from the savings (the rule's second and third points; -1 in empty slots)."""
    bh, cq, _ = saving.shape
    pairs = torch.full((bh, cq // 2, 2), -1, dtype=torch.int32, device=saving.device)
    idx = torch.arange(cq, device=saving.device)
    for i in range(bh):
        partner = torch.full((cq,), -1, dtype=torch.long, device=saving.device)
        for _ in range(rounds):
            free = partner < 0
            s = torch.where(free[:, None] & free[None, :], saving[i], 0)
            best = s.argmax(1)  # the first (lowest id) of the largest
            named = free & (s.max(1).values > 0)
            mutual = named & (best[best] == idx) & named[best]
            partner = torch.where(mutual, best, partner)
        low = torch.nonzero(partner > idx).flatten()  # each pair by its lower id, in id order
        pairs[i, :low.numel(), 0] = low.int()
        pairs[i, :low.numel(), 1] = partner[low].int()
    return pairs


def tail_union_reference(
    q_labels: torch.Tensor, q_perm: torch.Tensor, q_offsets: torch.Tensor, sel_idx: torch.Tensor,
    sel_count: torch.Tensor, sel_cum: torch.Tensor, k_sizes: torch.Tensor, block: int = 128,
    fixed: int = FIXED_KEY_ROWS, max_keys: int | None = None, sweep: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, ...]:
    """The stage's result for ``Cq' = Cq + Cq // 2`` query clusters (module docstring).

    Args:
        q_labels: ``(BH, Nv)`` int32 query clusters; q_perm: ``(BH, Nv)`` int32 their stable sort; q_offsets:
            ``(BH, Cq + 1)`` int32.
        sel_idx, sel_count, sel_cum: the selection, ``(BH, Cq, Ck)``, ``(BH, Cq)``, ``(BH, Cq, Ck + 1)`` int32.
        k_sizes: ``(BH, Ck)`` int32 key-cluster sizes.
        block: rows of the attention kernel's query tile; fixed: a tile's fixed cost in key rows.
        max_keys: no union of more key rows than this (the top-p mode's density cap, ``max_density * Nv`` rounded
            up); None: no cap.
        sweep: ``(period, block_m)`` of the attention kernel's key sweep: every row of the result, the clusters' and
            the slots', is laid out again in sweep order (:func:`~svg2core.ops.select.reference.selection_in_sweep_order`)
            from its first ``block_m``-row tile in the new layout (the selection's sweep starts assume the old one).

    Returns:
        ``(q_labels, q_perm, q_offsets, q_sizes, sel_idx, sel_count, sel_cum)`` for the ``Cq'`` clusters (new int32
        tensors; a packed tail's rows are labelled ``Cq + k``).
    """
    bh, cq = sel_count.shape
    ck = k_sizes.shape[-1]
    c2 = union_clusters(cq)
    dev = q_labels.device
    sizes = (q_offsets[:, 1:] - q_offsets[:, :-1]).long()
    pairs = tail_pairs_reference(pair_savings_reference(sizes, sel_count, sel_cum, sel_idx, k_sizes, block, fixed,
                                                        max_keys))
    labels2 = q_labels.clone()
    perm2 = torch.empty_like(q_perm)
    offsets2 = torch.zeros(bh, c2 + 1, dtype=torch.int32, device=dev)
    sel_idx2 = torch.empty(bh, c2, ck, dtype=torch.int32, device=dev)
    sel_count2 = torch.zeros(bh, c2, dtype=torch.int32, device=dev)
    sel_cum2 = torch.empty(bh, c2, ck + 1, dtype=torch.int32, device=dev)
    sel_idx2[:, :cq], sel_count2[:, :cq], sel_cum2[:, :cq] = sel_idx, sel_count, sel_cum
    ids = torch.arange(ck, device=dev)
    member = kept_key_clusters(sel_idx, sel_count)
    for i in range(bh):
        ks = k_sizes[i].long()
        rem = sizes[i] % block
        kept = torch.zeros(cq, dtype=torch.bool, device=dev)  # the cluster's tail is in a kept pair
        slot_rows = [0] * (cq // 2)
        for k in range(cq // 2):
            a, b = int(pairs[i, k, 0]), int(pairs[i, k, 1])
            union = torch.zeros(ck, dtype=torch.bool, device=dev)  # an empty slot's row
            if a >= 0:
                union = member[i, a] | member[i, b]
                kept[a] = kept[b] = True
                slot_rows[k] = int(rem[a] + rem[b])
            order = torch.cat([ids[union], ids[~union]])
            sel_idx2[i, cq + k] = order.int()
            sel_count2[i, cq + k] = int(union.sum())
            sel_cum2[i, cq + k, 0] = 0
            sel_cum2[i, cq + k, 1:] = ks[order].cumsum(0).int()
        new_sizes = torch.cat([sizes[i] - torch.where(kept, rem, 0), torch.tensor(slot_rows, device=dev).long()])
        offsets2[i, 1:] = new_sizes.cumsum(0).int()
        for c in range(cq):
            start, keep = int(q_offsets[i, c]), int(new_sizes[c])
            perm2[i, int(offsets2[i, c]):int(offsets2[i, c]) + keep] = q_perm[i, start:start + keep]
        for k in range(cq // 2):
            if not slot_rows[k]:
                continue
            at = int(offsets2[i, cq + k])
            for c in (int(pairs[i, k, 0]), int(pairs[i, k, 1])):
                tail = q_perm[i, int(q_offsets[i, c + 1]) - int(rem[c]):int(q_offsets[i, c + 1])]
                perm2[i, at:at + tail.numel()] = tail
                labels2[i, tail.long()] = cq + k
                at += tail.numel()
    sizes2 = (offsets2[:, 1:] - offsets2[:, :-1]).int()
    if sweep is not None:
        starts = sweep_starts_reference(sizes2, sweep[0], sweep[1], ck)
        sel_idx2, sel_count2, sel_cum2 = selection_in_sweep_order(sel_idx2, sel_count2, k_sizes, starts)
    return labels2, perm2, offsets2, sizes2, sel_idx2, sel_count2, sel_cum2
