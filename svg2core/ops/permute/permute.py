"""Permutation stage: stable sort of tokens by cluster, cluster offsets, K/V gather into cluster order."""

from __future__ import annotations

import torch

from svg2core.ops.permute.reference import gather_rows_reference, sort_by_cluster_reference
from svg2core.state import Workspace

_GATHER_BLOCK_N = 64


def sort_by_cluster(labels: torch.Tensor, num_clusters: int, workspace: Workspace, name: str,
                    backend: str = "triton", method: str | None = None,
                    count_block: int | None = None,
                    block_counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of tokens by cluster id, and cluster offsets, into workspace buffers.

    Device-only: a stable ``torch.sort`` then a ``searchsorted`` of the cluster ids ``0..C`` in the
    sorted labels (no bincount, no host synchronisation). ``method="rows"`` sorts each ``(b, h)`` row
    (a segmented sort); ``"flat"`` sorts one flat array of keys ``bh * C + label`` (one device-wide
    radix sort) and shifts the results back per row; ``"count"`` is a Triton counting sort (block
    histograms, a per-cluster scan over the blocks, and a ranked scatter that also writes the
    offsets): 3 launches, or 2 when the k-means assign kernel already wrote the block histograms.

    Args:
        labels: ``(BH, N)`` int32.
        num_clusters: ``C``.
        workspace: owner of the output and scratch buffers.
        name: buffer-name prefix (``"q"`` / ``"k"``), so query and key results do not collide.
        backend: ``"reference"`` returns freshly computed reference tensors instead.
        method: ``"rows"``, ``"flat"`` or ``"count"``; default :data:`SORT_METHOD`.
        count_block: tokens per block of the counting sort (a power of two; default: up to 2048).
        block_counts: ``(BH, cdiv(N, count_block) * C)`` int32 block histograms already computed
            (``kmeans_assign(..., block_counts=...)``, same ``count_block``); ``"count"`` only.

    Returns:
        ``perm (BH, N) int32`` and ``offsets (BH, C + 1) int32`` (see docs/ARCHITECTURE.md).
    """
    if backend == "reference":
        return sort_by_cluster_reference(labels, num_clusters)
    bh, n = labels.shape
    c = num_clusters
    dev = labels.device
    perm = workspace.buffer(f"{name}.perm", (bh, n), torch.int32, dev)
    offsets = workspace.buffer(f"{name}.offsets", (bh, c + 1), torch.int32, dev)
    method = method or SORT_METHOD
    if method == "count":
        block = count_block or min(_COUNT_BLOCK, max(16, 1 << (n - 1).bit_length()))
        return _counting_sort(labels, c, workspace, name, perm, offsets, block, block_counts)
    if block_counts is not None:
        raise ValueError(f"block_counts: only used by method 'count', got method {method!r}")
    sorted_keys = workspace.buffer(f"{name}.sorted_labels", (bh, n), torch.int32, dev)
    order = workspace.buffer(f"{name}.sort_order", (bh, n), torch.int64, dev)
    if method == "rows":
        torch.sort(labels, dim=-1, stable=True, out=(sorted_keys, order))
        perm.copy_(order)
        bounds = workspace.constant(
            f"cluster_ids:{bh}x{c}:{dev}",
            lambda: torch.arange(c + 1, dtype=torch.int32, device=dev).repeat(bh, 1))
        torch.searchsorted(sorted_keys, bounds, out_int32=True, out=offsets)
        return perm, offsets
    # flat: keys bh * C + label order the tokens by row first, then by label, so row r's tokens land
    # in positions [r * N, (r + 1) * N) of the flat order.

    def rows() -> torch.Tensor:  # (BH, 1) row ids, built once per size by the constants below
        return torch.arange(bh, device=dev).view(bh, 1)

    key_base = workspace.constant(f"key_base:{bh}x{c}:{dev}", lambda: (rows() * c).int())
    flat_bounds = workspace.constant(
        f"flat_bounds:{bh}x{c}:{dev}",
        lambda: (rows() * c + torch.arange(c + 1, device=dev)).int())
    tok_base = workspace.constant(f"tok_base:{bh}x{n}:{dev}", lambda: rows() * n)
    tok_base32 = workspace.constant(f"tok_base32:{bh}x{n}:{dev}", lambda: (rows() * n).int())
    keys = workspace.buffer(f"{name}.sort_keys", (bh, n), torch.int32, dev)
    torch.add(labels, key_base, out=keys)
    torch.sort(keys.view(-1), stable=True, out=(sorted_keys.view(-1), order.view(-1)))
    order.sub_(tok_base)
    perm.copy_(order)
    torch.searchsorted(sorted_keys.view(-1), flat_bounds.view(-1), out_int32=True, out=offsets.view(-1))
    offsets.sub_(tok_base32)
    return perm, offsets


# bench/bench_selection.py sweep on H100 (ms, 12 x 32,760 / 40 x 75,600 labels, 1000 clusters), v1
# counting sort (cumsum over cluster-major block counts): rows 0.21 / 0.36, flat 0.24 / 0.32,
# count 0.17 / 0.47. Graph-replayed on H200 with the current counting sort (block 2048): rows
# 0.088 / 0.282, flat 0.073 / 0.232, count 0.081 / 0.320 (then with tl.histogram in the scatter's ranking; a scan
# since session 7). "flat" stays the default of a standalone sort; batched_kmeans uses the counting sort with the
# assign kernel's block counts at every cluster count (kmeans.FUSED_SORT_MAX_CLUSTERS).
SORT_METHOD = "flat"
_COUNT_BLOCK = 2048
_SCAN_BLOCK_B = 32
_SCAN_BLOCK_C = 128
#: warps of the counting sort's scatter (one program per block of tokens); None: 4, or 8 for large blocks x clusters.
#: bench/probes/probe_sort.py times fewer (sm_90, 256-token blocks, 512 clusters: 4 warps 2,912 warp-instructions and
#: 20 block barriers per program, one warp 2,040 and 2).
SCATTER_NUM_WARPS: int | None = None


def count_blocks(n: int, block: int) -> int:
    """Blocks of the counting sort for ``n`` tokens."""
    return triton_cdiv(n, block)


def _counting_sort(labels: torch.Tensor, c: int, workspace: Workspace, name: str, perm: torch.Tensor,
                   offsets: torch.Tensor, block: int,
                   block_counts: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable counting sort: block histograms (unless given), a per-cluster scan, a ranked scatter."""
    from svg2core.ops.permute.triton_permute import (
        _block_histogram_kernel,
        _count_scan_kernel,
        _counting_scatter_kernel,
    )

    bh, n = labels.shape
    dev = labels.device
    nb = count_blocks(n, block)
    c_pow2 = max(16, 1 << (c - 1).bit_length())
    warps = 4 if block * c_pow2 <= 256 * 1024 else 8
    if block_counts is None:
        block_counts = workspace.buffer(f"{name}.block_counts", (bh, nb * c), torch.int32, dev)
        _block_histogram_kernel[(nb, bh)](
            labels, block_counts, n, c, labels.stride(0), block_counts.stride(0),
            BLOCK=block, C_POW2=c_pow2, num_warps=warps,
        )
    elif tuple(block_counts.shape) != (bh, nb * c) or block_counts.dtype != torch.int32:
        raise ValueError(f"block_counts: must be ({bh}, {nb * c}) int32 for {n} tokens in blocks of {block}, "
                         f"got {tuple(block_counts.shape)} {block_counts.dtype}")
    starts = workspace.buffer(f"{name}.block_starts", (bh, nb * c), torch.int32, dev)
    totals = workspace.buffer(f"{name}.cluster_sizes", (bh, c), torch.int32, dev)
    block_c = min(_SCAN_BLOCK_C, c_pow2)
    _count_scan_kernel[(triton_cdiv(c, block_c), bh)](
        block_counts, starts, totals, c, nb, block_counts.stride(0), starts.stride(0), totals.stride(0),
        BLOCK_B=_SCAN_BLOCK_B, BLOCK_C=block_c, num_warps=4,
    )
    _counting_scatter_kernel[(nb, bh)](
        labels, starts, totals, perm, offsets, n, c,
        labels.stride(0), starts.stride(0), totals.stride(0), perm.stride(0), offsets.stride(0),
        BLOCK=block, C_POW2=c_pow2, num_warps=SCATTER_NUM_WARPS or warps,
    )
    return perm, offsets


def key_rows_buffer(k: torch.Tensor, nv: int, workspace: Workspace) -> torch.Tensor:
    """The workspace buffer :func:`gather_kv` returns as ``kp``: ``(B * H, Nv, D)`` of ``k``'s dtype."""
    b, h, _, d = k.shape
    return workspace.buffer("kp", (b * h, nv, d), k.dtype, k.device)


def gather_kv(k: torch.Tensor, v: torch.Tensor, perm: torch.Tensor, workspace: Workspace,
              backend: str = "triton", gather_k: bool = True,
              reverse_heads: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V video rows in ``perm`` order (cluster-contiguous), written into workspace buffers.

    Args:
        k, v: ``(B, H, N, D)``; only the first ``Nv = perm.shape[1]`` tokens are gathered. The last
            dim must be contiguous; other strides are free.
        perm: ``(B * H, Nv)`` int32.
        gather_k: False when :func:`key_rows_buffer` already holds K's rows in ``perm`` order (the key
            k-means' last update wrote them: ``batched_kmeans(..., rows_out=...)``); only V is gathered.
        reverse_heads: (Triton) run the heads in reverse grid order; the same result (an L2 schedule,
            ``svg2core.attention.SERPENTINE_HEADS``).

    Returns:
        ``kp, vp``: ``(B * H, Nv, D)`` of ``k``'s dtype.
    """
    if backend == "reference":
        kp = gather_rows_reference(k, perm) if gather_k else key_rows_buffer(k, perm.shape[1], workspace)
        return kp, gather_rows_reference(v, perm)
    from svg2core.ops.permute.triton_permute import _gather_kv_kernel

    b, h, _, d = k.shape
    bh, nv = perm.shape
    kp = key_rows_buffer(k, nv, workspace)
    vp = workspace.buffer("vp", (bh, nv, d), v.dtype, v.device)
    grid = (triton_cdiv(nv, _GATHER_BLOCK_N), bh)
    _gather_kv_kernel[grid](
        k, v, perm, kp, vp, nv, h,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        perm.stride(0), kp.stride(0), kp.stride(1),
        D=d, BLOCK_N=_GATHER_BLOCK_N, GATHER_K=gather_k, REVERSE_BH=reverse_heads,
    )
    return kp, vp


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
