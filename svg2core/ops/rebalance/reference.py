"""Query-tile rebalancing, the torch reference (the specification of the Triton stage).

The attention kernel computes whole query tiles of ``block`` rows, or a half tile for a cluster's last ``<= block / 2``
rows (at ~0.69 of a full tile's cost, docs/benchmarks/NOTES_sparse_attn.md v9), so a query cluster of 130 tokens costs
nearly as much as one of 192. Rebalancing moves a few rows so that fewer tiles are partly empty:

- a cluster's *excess* is the number of rows its last tile holds beyond the tile below it: with ``r = size % block``,
  ``r`` if ``r <= block / 2`` (the last tile is a half tile; shedding ``r`` rows drops it) and ``r - block / 2`` above
  (shedding them turns a full last tile into a half tile); a cluster whose excess is in ``[1, rho]`` is a *donor*;
- every other cluster has *room*: the free rows of its last tile or half tile (``block / 2 - r`` or ``block - r``;
  none when ``r = 0``);
- each donor's ``excess`` rows with the smallest *margin* move, the margin of a row being how much farther it is from
  the nearest cluster with room than from its own centroid (``criterion="farthest"``, an alternative measured in
  bench/probes/probe_tile_rebalance.py: its rows farthest from its own centroid), each to that nearest cluster with
  room;
- a destination takes the candidates in the order (donor cluster, margin, token), up to its room; a donor moves only
  if all of its rows are taken (all or nothing), otherwise none of them (their places stay unused).

Distances are squared Euclidean up to the row's own norm, ``|c|^2 - 2 <x, c>`` in fp32. Ties: the lower token index
moves first, the lower cluster id is the nearer.
"""

from __future__ import annotations

import torch

CRITERIA = ("margin", "farthest")


def cluster_sizes(labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """``(BH, C)`` int64 counts of ``labels`` ``(BH, N)``."""
    return torch.zeros(labels.shape[0], num_clusters, dtype=torch.long, device=labels.device).scatter_add_(
        1, labels.long(), torch.ones_like(labels, dtype=torch.long))


def donors_and_room(sizes: torch.Tensor, rho: int, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per cluster (``sizes`` ``(BH, C)``): the excess rows, the donor flag and the room (module docstring)."""
    half = block // 2
    r = sizes % block
    excess = torch.where(r <= half, r, r - half)
    donor = (excess > 0) & (excess <= rho)
    room = torch.where(donor | (r == 0), 0, torch.where(r <= half, half - r, block - r))
    return excess, donor, room


def rebalance_reference(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, rho: int, block: int = 128,
                        criterion: str = "margin") -> torch.Tensor:
    """New labels ``(BH, N)`` (the dtype of ``labels``) after the moves; ``x`` ``(BH, N, D)``, ``labels`` ``(BH, N)``,
    ``centroids`` ``(BH, C, D)``. Materialises the ``(BH, N, C)`` distances: a specification for tests and probes."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion: one of {CRITERIA}, got {criterion!r}")
    if rho < 0 or block < 2 or block % 2:
        raise ValueError(f"rho, block: need rho >= 0 and an even block >= 2, got {rho}, {block}")
    bh, n, _ = x.shape
    c = centroids.shape[1]
    dev = labels.device
    lab = labels.long()
    excess, donor, room = donors_and_room(cluster_sizes(lab, c), rho, block)
    cent = centroids.float()
    d2 = (cent**2).sum(-1)[:, None, :] - 2 * x.float() @ cent.transpose(1, 2)  # (BH, N, C), up to |x|^2
    own = torch.gather(d2, 2, lab[..., None])[..., 0]
    with_room = d2.masked_fill(~(room > 0)[:, None, :], float("inf"))
    near = with_room.min(-1).values  # the distance to the nearest cluster with room (inf: none has room)
    near_idx = (with_room == near[..., None]).to(torch.uint8).argmax(-1)  # its lowest id (argmax: the first)
    score = -own if criterion == "farthest" else near - own  # lower moves first
    # tokens by (cluster, score, token): the candidates of a donor are its first `excess`
    by_score = torch.argsort(score, dim=1, stable=True)
    srt = torch.gather(by_score, 1, torch.argsort(torch.gather(lab, 1, by_score), dim=1, stable=True))
    lab_s = torch.gather(lab, 1, srt)
    offs = torch.zeros(bh, c + 1, dtype=torch.long, device=dev)
    offs[:, 1:] = cluster_sizes(lab, c).cumsum(1)
    pos = torch.arange(n, device=dev)[None, :] - torch.gather(offs, 1, lab_s)
    mover = torch.gather(donor, 1, lab_s) & (pos < torch.gather(excess, 1, lab_s))
    dest = torch.gather(near_idx, 1, srt)
    ok = torch.gather(room > 0, 1, dest) & mover
    tgt = torch.where(ok, dest, c)
    # rank of each candidate among its destination's, in (donor, score, token) order
    o3 = torch.argsort(tgt, dim=1, stable=True)
    start = torch.zeros(bh, c + 2, dtype=torch.long, device=dev)
    start[:, 1:] = cluster_sizes(tgt, c + 1).cumsum(1)
    rank = torch.empty_like(o3).scatter_(
        1, o3, torch.arange(n, device=dev)[None, :] - torch.gather(start, 1, torch.gather(tgt, 1, o3)))
    room_or_0 = torch.cat([room, torch.zeros(bh, 1, dtype=torch.long, device=dev)], 1)
    taken = ok & (rank < torch.gather(room_or_0, 1, tgt))
    whole = donor & (torch.zeros(bh, c, dtype=torch.long, device=dev).scatter_add_(1, lab_s, taken.long()) == excess)
    taken = taken & torch.gather(whole, 1, lab_s)
    return torch.empty_like(labels).scatter_(1, srt, torch.where(taken, dest, lab_s).to(labels.dtype))
