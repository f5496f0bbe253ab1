"""Plain torch reference of batched k-means (fp32 math): the specification of the Triton kernels.

Every array carries a leading ``BH`` axis (batch x heads flattened); each ``(b, h)`` is clustered
independently. One Lloyd iteration is *assign, then update*: the labels returned by
:func:`kmeans_reference` are those of the last assignment, and (when ``iters >= 1``) the returned
centroids are exactly the means of those labels' clusters, so the centroids used for cluster scoring
describe the clusters actually attended to. An empty cluster keeps its centroid.
"""

from __future__ import annotations

import torch


def init_centroids_strided_reference(x: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Deterministic cold start: centroid ``c`` is token ``floor(c * N / C)``.

    Args:
        x: ``(BH, N, D)`` points.
        num_clusters: ``C``.

    Returns:
        ``(BH, C, D)`` fp32 centroids (duplicates when ``N < C``; the duplicates stay empty).
    """
    n = x.shape[1]
    idx = torch.arange(num_clusters, device=x.device, dtype=torch.int64) * n // num_clusters
    return x[:, idx].float()


def kmeans_assign_reference(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid (Euclidean) of every point; ties go to the lowest cluster id.

    Args:
        x: ``(BH, N, D)`` points, any float dtype.
        centroids: ``(BH, C, D)`` fp32.

    Returns:
        ``(BH, N)`` int32 labels.
    """
    xf = x.float()
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is constant per row, so it cannot change the argmin.
    dist = (centroids * centroids).sum(-1)[:, None, :] - 2.0 * xf @ centroids.transpose(1, 2)  # (BH, N, C)
    return dist.argmin(dim=-1).to(torch.int32)


def kmeans_update_reference(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cluster means of ``x`` under ``labels``; an empty cluster keeps its centroid.

    Args:
        x: ``(BH, N, D)`` points.
        labels: ``(BH, N)`` int32 cluster ids.
        centroids: ``(BH, C, D)`` fp32, the previous centroids.

    Returns:
        ``(BH, C, D)`` fp32 new centroids.
    """
    bh, _, d = x.shape
    c = centroids.shape[1]
    sums = torch.zeros(bh, c, d, dtype=torch.float32, device=x.device)
    sums.scatter_add_(1, labels.long()[:, :, None].expand(-1, -1, d), x.float())
    counts = torch.zeros(bh, c, dtype=torch.float32, device=x.device)
    counts.scatter_add_(1, labels.long(), torch.ones_like(labels, dtype=torch.float32))
    means = sums / counts.clamp(min=1.0)[:, :, None]
    return torch.where(counts[:, :, None] > 0, means, centroids.float())


def kmeans_reference(
    x: torch.Tensor, centroids: torch.Tensor, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``iters`` Lloyd iterations (assign, update) from ``centroids``.

    Args:
        x: ``(BH, N, D)`` points.
        centroids: ``(BH, C, D)`` fp32 starting centroids.
        iters: iterations; ``0`` only assigns (centroids returned unchanged).

    Returns:
        ``(labels (BH, N) int32, centroids (BH, C, D) fp32)``.
    """
    cent = centroids.float()
    labels = kmeans_assign_reference(x, cent)
    for it in range(iters):
        if it > 0:
            labels = kmeans_assign_reference(x, cent)
        cent = kmeans_update_reference(x, labels, cent)
    return labels, cent


def candidate_lists_reference(centroids: torch.Tensor, m: int) -> torch.Tensor:
    """For every cluster, the ``m`` clusters whose centroids are nearest its own (itself always included), listed
    by ascending cluster id: the candidates of :func:`kmeans_assign_candidates_reference`.

    Nearness is ``||c_j||^2 - 2 c_i.c_j`` (the squared distance less ``||c_i||^2``), ties to the lower id; cluster
    ``i`` itself is placed first whatever its distance (duplicate centroids).

    Args:
        centroids: ``(BH, C, D)`` fp32.
        m: list length, in ``[1, C]``.

    Returns:
        ``(BH, C, m)`` int32 cluster ids, ascending along the last axis.
    """
    bh, c, _ = centroids.shape
    if not 1 <= m <= c:
        raise ValueError(f"m: must be in [1, {c}], got {m}")
    cent = centroids.float()
    near = (cent * cent).sum(-1)[:, None, :] - 2.0 * cent @ cent.transpose(1, 2)  # (BH, C, C)
    eye = torch.eye(c, dtype=torch.bool, device=cent.device)
    near = near.masked_fill(eye, float("-inf"))
    order = torch.sort(near, dim=-1, stable=True).indices[:, :, :m]
    return torch.sort(order, dim=-1).values.to(torch.int32)


def kmeans_assign_candidates_reference(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor,
                                       candidates: torch.Tensor) -> torch.Tensor:
    """Nearest centroid of every point among the candidates of its current cluster: ``argmin`` over
    ``candidates[labels[n]]`` of ``||c||^2 - 2 x.c``, ties to the lowest cluster id.

    A warm iteration's assign: after an update the points of a cluster move to clusters whose centroids are near its
    own, so comparing each point with its cluster's ``m`` nearest centroids (:func:`candidate_lists_reference`) instead
    of all ``C`` finds the same label for almost every point at a fraction of the distances. A point keeps a label
    at least as near as its current one (that cluster is its own first candidate).

    Args:
        x: ``(BH, N, D)`` points.
        centroids: ``(BH, C, D)`` fp32 (the centroids the candidates were listed from).
        labels: ``(BH, N)`` int32, the points' current clusters.
        candidates: ``(BH, C, m)`` int32 from :func:`candidate_lists_reference`.

    Returns:
        ``(BH, N)`` int32 labels.
    """
    bh, n, d = x.shape
    cent = centroids.float()
    cand = torch.gather(candidates.long(), 1, labels.long()[:, :, None].expand(-1, -1, candidates.shape[2]))
    rows = torch.gather(cent, 1, cand.reshape(bh, -1, 1).expand(-1, -1, d)).reshape(bh, n, -1, d)  # (BH, N, m, D)
    dist = (rows * rows).sum(-1) - 2.0 * (rows @ x.float()[:, :, :, None])[..., 0]  # (BH, N, m)
    best = dist.argmin(dim=-1, keepdim=True)  # first minimum: the lowest id (candidates ascend)
    return torch.gather(cand, 2, best)[:, :, 0].to(torch.int32)
