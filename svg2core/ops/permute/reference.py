"""Plain torch reference of the permutation stage: stable sort by cluster, offsets, row gather."""

from __future__ import annotations

import torch


def sort_by_cluster_reference(labels: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens sorted by cluster id (stable) and the cluster boundaries.

    Args:
        labels: ``(BH, N)`` int32 cluster ids in ``[0, C)``.
        num_clusters: ``C``.

    Returns:
        ``perm (BH, N) int32`` (token ids, cluster-contiguous, ties in token order) and
        ``offsets (BH, C + 1) int32`` (cluster ``c`` is ``perm[offsets[c]:offsets[c + 1]]``).
    """
    perm = torch.argsort(labels.long(), dim=-1, stable=True)
    counts = torch.zeros(labels.shape[0], num_clusters, dtype=torch.int64, device=labels.device)
    counts.scatter_add_(1, labels.long(), torch.ones_like(labels, dtype=torch.int64))
    offsets = torch.zeros(labels.shape[0], num_clusters + 1, dtype=torch.int64, device=labels.device)
    offsets[:, 1:] = counts.cumsum(-1)
    return perm.to(torch.int32), offsets.to(torch.int32)


def gather_rows_reference(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` in ``perm`` order.

    Args:
        x: ``(B, H, N', D)`` with ``N' >= N`` (only the first ``N`` rows can be addressed).
        perm: ``(B * H, N)`` int32 token ids.

    Returns:
        ``(B * H, N, D)`` tensor of ``x``'s dtype.
    """
    b, h, _, d = x.shape
    xf = x.reshape(b * h, x.shape[2], d) if x.is_contiguous() else x.contiguous().reshape(b * h, -1, d)
    return torch.gather(xf, 1, perm.long()[:, :, None].expand(-1, -1, d))
