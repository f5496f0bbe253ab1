"""Permutation stage: stable sort of tokens by cluster, cluster offsets, K/V gather into cluster order."""

from __future__ import annotations

import torch

from svg2core.ops.permute.reference import gather_rows_reference, sort_by_cluster_reference
from svg2core.state import Workspace

_GATHER_BLOCK_N = 64


def sort_by_cluster(labels: torch.Tensor, num_clusters: int, workspace: Workspace, name: str,
                    backend: str = "triton") -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of tokens by cluster id, and cluster offsets, into workspace buffers.

    Device-only: ``torch.sort(stable=True)`` then a batched ``searchsorted`` of the cluster ids
    ``0..C`` in the sorted labels (no bincount, no host synchronisation).

    Args:
        labels: ``(BH, N)`` int32.
        num_clusters: ``C``.
        workspace: owner of the output and scratch buffers.
        name: buffer-name prefix (``"q"`` / ``"k"``), so query and key results do not collide.
        backend: ``"reference"`` returns freshly computed reference tensors instead.

    Returns:
        ``perm (BH, N) int32`` and ``offsets (BH, C + 1) int32`` (see docs/ARCHITECTURE.md).
    """
    if backend == "reference":
        return sort_by_cluster_reference(labels, num_clusters)
    bh, n = labels.shape
    dev = labels.device
    sorted_labels = workspace.buffer(f"{name}.sorted_labels", (bh, n), torch.int32, dev)
    order = workspace.buffer(f"{name}.sort_order", (bh, n), torch.int64, dev)
    torch.sort(labels, dim=-1, stable=True, out=(sorted_labels, order))
    perm = workspace.buffer(f"{name}.perm", (bh, n), torch.int32, dev)
    perm.copy_(order)
    bounds = workspace.constant_arange("cluster_ids", bh, num_clusters + 1, dev)
    offsets = workspace.buffer(f"{name}.offsets", (bh, num_clusters + 1), torch.int32, dev)
    torch.searchsorted(sorted_labels, bounds, out_int32=True, out=offsets)
    return perm, offsets


def gather_kv(k: torch.Tensor, v: torch.Tensor, perm: torch.Tensor, workspace: Workspace,
              backend: str = "triton") -> tuple[torch.Tensor, torch.Tensor]:
    """K and V video rows in ``perm`` order (cluster-contiguous), written into workspace buffers.

    Args:
        k, v: ``(B, H, N, D)``; only the first ``Nv = perm.shape[1]`` tokens are gathered. The last
            dim must be contiguous; other strides are free.
        perm: ``(B * H, Nv)`` int32.

    Returns:
        ``kp, vp``: ``(B * H, Nv, D)`` of ``k``'s dtype.
    """
    if backend == "reference":
        return gather_rows_reference(k, perm), gather_rows_reference(v, perm)
    from svg2core.ops.permute.triton_permute import _gather_kv_kernel

    b, h, _, d = k.shape
    bh, nv = perm.shape
    kp = workspace.buffer("kp", (bh, nv, d), k.dtype, k.device)
    vp = workspace.buffer("vp", (bh, nv, d), v.dtype, v.device)
    grid = (triton_cdiv(nv, _GATHER_BLOCK_N), bh)
    _gather_kv_kernel[grid](
        k, v, perm, kp, vp, nv, h,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        perm.stride(0), kp.stride(0), kp.stride(1),
        D=d, BLOCK_N=_GATHER_BLOCK_N,
    )
    return kp, vp


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
