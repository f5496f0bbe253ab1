"""Batched k-means over (batch x heads): the wrapper that runs the Triton kernels or the reference.

One call clusters every ``(b, h)`` independently, in place on a centroid tensor owned by the caller
(the layer state), with a fixed iteration count and no host synchronisation. Each iteration is
assign (fused distance + argmin), stable sort by label (which is also the permutation stage), and
per-cluster segment means. The labels, ``perm`` and ``offsets`` returned are those of the last
assignment, and after ``iters >= 1`` iterations the centroids are exactly those clusters' means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from svg2core.ops.kmeans.reference import (
    candidate_lists_reference,
    kmeans_assign_candidates_reference,
    kmeans_assign_reference,
    kmeans_update_reference,
)
from svg2core.ops.permute import gather_rows_reference, sort_by_cluster
from svg2core.state import Workspace

_SEGMENT_BLOCK_N = 32  # rows per step of the segment-mean (update) kernel, and its warps
_SEGMENT_WARPS = 4
# Software-pipeline depth of the update's row loop (the kernel's STAGES; 1: none). sm_90 (Triton 3.6): with 1 each
# step of 32 rows waits for its index load and then for its row loads (two memory latencies per 8 KB read: the
# 480p query update reads 100 MB in ~50 us, ~2 TB/s); with 2-4 the compiler keeps the next steps' rows in flight in a
# cp.async ring (8-25 KB of shared memory). None: by the mean rows per cluster, 3 stages from
# UPDATE_STAGES_MIN_ROWS on, else 1. H100, graph replay (docs/benchmarks/probe_update_h100_s14.md), 1 / 3 stages, ms:
# long clusters gain (480p Q 100, 328 rows each: 0.053 / 0.046; Wan 14B Q 300, 252 rows: 0.286 / 0.273), short ones
# lose (480p K 500, 66 rows: 0.055 / 0.066; Wan 14B K 1000, 76 rows: 0.338 / 0.414); the centroids are bit-identical.
UPDATE_STAGES: int | None = None
UPDATE_STAGES_MIN_ROWS = 200
# The update sums a cluster in pieces between cuts of the sorted order every UPDATE_CHUNK tokens, one program per
# piece, and the last piece of a cluster to finish adds them in order; 0: one program per cluster, whose loop over the
# largest cluster then sets the update's time, which uneven clusters make long. H200 (docs/benchmarks/NOTES_selection.md
# v5-v6, probe_layout_h200*.md), 480p selection, one program per cluster / cuts every 256 / every 512: clustered data
# ("runs") 0.868 / 0.692 / 0.668 ms, skewed clusters 2.068 / 0.691 / 0.686, i.i.d. data 0.670 / 0.690 / 0.670. Every
# 512 tokens fewer clusters straddle a cut (the ticket path), and a piece is still short.
UPDATE_CHUNK = 512


@dataclass(frozen=True)
class AssignTile:
    """Launch shape of the assign kernel: tokens per program, centroids per tile, warps, stages."""

    block_n: int = 256
    block_c: int = 64
    num_warps: int = 8
    num_stages: int = 3


# 256 tokens x 64 centroids, 8 warps: the fastest of bench/bench_selection.py's sweep on H100 at the Wan 14B key shape
# (docs/benchmarks/bench_selection_h100_v1.md) and of probe_assign_tiles (H100, packed argmin). 3 stages since session
# 12: with 2 the next centroid tile's cp.async was issued after the epilogue and waited for at the top of the next
# step (sm_90, Triton 3.6); with 3 it runs a step ahead, in 112 KB of shared memory, still two CTAs per SM.
# H100, graph replay (docs/benchmarks/probe_assign_tiles_h100_s12.md), 2 -> 3 stages: 480p K 500 0.136 -> 0.134 ms,
# Wan 14B K 1000 1.718 -> 1.683, HunyuanVideo K 1000 1.601 -> 1.570; whole selection (probe_selection_combo_h100.md)
# 480p 100/500 0.698 -> 0.684, Wan 14B 300/1000 7.70 -> 7.56. 4 stages (one CTA per SM) were 15-20% slower.
ASSIGN_TILE = AssignTile()
# Clusters up to which the assign kernel writes the counting sort's block histograms (the sort is then a scan + a
# ranked scatter); above it, sort_by_cluster's default method (a radix sort). Every cluster count the config allows:
# with the histogram counted by atomic increments and the scatter ranking by a scan, assign + sort beat assign +
# radix sort at every shape measured (H100, graph, docs/benchmarks/probe_sort_h100.md): 12 x 32,760 tokens, 100
# clusters 0.073 vs 0.131 ms, 500 0.156 vs 0.215, 1000 0.261 vs 0.311; 40 x 75,600 tokens, 300 clusters 0.743 vs
# 0.875, 1000 1.821 vs 1.909. (The tl.histogram version of the counting sort lost above ~300 clusters: 2.34 ms at
# 40 x 75,600 x 1000; this was 128 until then.)
FUSED_SORT_MAX_CLUSTERS = 8192
# The assign's argmin on packed (distance bits, centroid id) int32 keys (triton_kmeans._kmeans_assign_kernel,
# PACKED): fewer instructions per distance in the epilogue that serialises with each tile's dot. H100, against the
# (value, index) argmin in one run (docs/benchmarks/probe_assign_packed_h100.md): the assign 8-15% faster (Wan 14B
# keys, 1000 clusters 1.93 -> 1.68 ms), labels equal but for near-ties (99.94-99.98% of tokens).
ASSIGN_PACKED_ARGMIN = True
# The assign's prepared centroid copies padded to whole tiles of ASSIGN_PAD rows (pads: zero rows, norm +inf), so
# that its tile loop loads them without masks (the kernel's EVEN_C). sm_90 (Triton 3.6, 256 x 64 tiles, packed argmin,
# bench/probes/sass_assign.py --even-c): 396 -> 313 instructions per tile and warp besides the 16 HGMMAs (the 16
# masked scalar norm loads, their compares and +inf defaults become 8 unmasked 64-bit loads), 128 -> 115 registers.
# H100, graph replay, best of 3 alternating rounds (docs/benchmarks/probe_assign_pad_h100_s14.md): the assign 2-5%
# faster (480p K 500 0.135 -> 0.130 ms, Wan 14B K 1000 1.692 -> 1.620; 480p Q 100 0.058 / 0.059, within noise),
# the whole selection 480p 0.687 -> 0.679 ms, Wan 14B 7.217 -> 7.042; labels and counts identical.
ASSIGN_PAD_C = True
ASSIGN_PAD = 64
# The warm assign over candidate lists (SVG2Config.kmeans_candidates, kmeans_assign_candidates): cluster rows,
# centroid columns per step and warps of the list kernel, and the list assign's launch shape (block_c unused: a
# cluster's candidates are one tile). H100, graph replay, m = 16 / 32 (docs/benchmarks/probe_candidates_parts_h100_s16.md):
# lists 128 x 128 on 8 warps 0.187 / 0.250 ms at Wan 14B K 1000 (32 rows on 4 warps: 1.48 / 2.22; int64 keys and 16
# rows: 1.66 / 2.41), 0.034 / 0.045 at 480p K 500; the assign on 64 tokens and 2 warps 0.358 / 0.428 at Wan 14B K
# 1000 (128 tokens on 4 warps 0.390 / 0.450) against the full assign's 1.62.
CANDIDATE_MIN_RATIO = 8  # clusters per candidate from which a clustering uses the lists (uses_candidate_lists)
CANDIDATE_ROWS = 128
CANDIDATE_LIST_BLOCK = 128  # centroid columns per step of the list kernel (each step's top-m merged into the rows')
CANDIDATE_LIST_WARPS = 8
CANDIDATE_TILE = AssignTile(block_n=64, block_c=0, num_warps=2, num_stages=2)
# Every update but the last of a call writes the next assign's low-precision centroids and norms
# (one preparation launch less per extra iteration); False: a preparation launch per assign.
FUSE_PREPARE = True


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _as_bh(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, D)`` -> ``(B * H, N, D)`` for the reference (copies when the strides require it)."""
    b, h, n, d = x.shape
    return x.reshape(b * h, n, d)


def init_centroids_strided(x: torch.Tensor, num_clusters: int, out: torch.Tensor) -> torch.Tensor:
    """Cold start: ``out[bh, c] = x[b, h, floor(c * N / C)]`` (deterministic evenly strided tokens).

    Args:
        x: ``(B, H, N, D)`` points.
        num_clusters: ``C``.
        out: ``(B * H, C, D)`` fp32, written in place and returned.
    """
    n = x.shape[2]
    idx = torch.arange(num_clusters, device=x.device, dtype=torch.int64) * n // num_clusters
    out.copy_(_as_bh(x[:, :, idx]))
    return out


def _prepared_rows(c: int) -> int:
    """Rows of the prepared centroid copies for ``c`` clusters (:data:`ASSIGN_PAD_C`: whole tiles)."""
    return _cdiv(c, ASSIGN_PAD) * ASSIGN_PAD if ASSIGN_PAD_C else c


def _prepared_centroids(ws: Workspace, name: str, bh: int, c: int, d: int, x: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The workspace buffers of clustering ``name`` that the assign reads and the update prepares: the centroids in
    the points' dtype ``(BH, R, D)`` (the dot operand) and their fp32 squared norms ``(BH, R)``, ``R`` =
    :func:`_prepared_rows` (``C``, or ``C`` padded to whole tiles)."""
    rows = _prepared_rows(c)
    return (ws.buffer(f"{name}.cent_lp.{x.dtype}", (bh, rows, d), x.dtype, x.device),
            ws.buffer(f"{name}.cent_sq", (bh, rows), torch.float32, x.device))


def _prepare(x: torch.Tensor, centroids: torch.Tensor, workspace: Workspace | None, name: str, prepared: bool
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The assign's prepared centroid copies and norms (:func:`_prepared_centroids`), written by a preparation launch
    unless ``prepared`` (an update of the same call already wrote them)."""
    from svg2core.ops.kmeans.triton_kmeans import _prepare_centroids_kernel

    bh, c, d = centroids.shape
    ws = Workspace() if workspace is None else workspace
    cent_lp, cent_sq = _prepared_centroids(ws, name, bh, c, d, x)
    rows = cent_sq.shape[1]
    if not prepared:
        _prepare_centroids_kernel[(_cdiv(rows, 32), bh)](
            centroids, cent_lp, cent_sq, c, rows,
            centroids.stride(0), centroids.stride(1), cent_lp.stride(0), cent_lp.stride(1), cent_sq.stride(0),
            D=d, BLOCK_C=32, num_warps=4,
        )
    return cent_lp, cent_sq


def kmeans_assign(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor,
                  backend: str = "triton", workspace: Workspace | None = None,
                  tile: AssignTile | None = None, block_counts: torch.Tensor | None = None,
                  prepared: bool = False, name: str = "kmeans") -> torch.Tensor:
    """Nearest centroid of every point, written into ``labels``.

    Args:
        x: ``(B, H, N, D)`` points (bf16/fp16/fp32; last dim contiguous).
        centroids: ``(B * H, C, D)`` fp32 contiguous.
        labels: ``(B * H, N)`` int32 output.
        workspace: holds the low-precision copy of the centroids and their norms (a fresh one
            when None).
        tile: launch shape of the Triton kernel (benchmarks), and the block size of ``block_counts``; None:
            ``ASSIGN_TILE``.
        block_counts: optional ``(B * H, cdiv(N, tile.block_n) * C)`` int32 output: the label
            histogram of every block of ``tile.block_n`` tokens (block-major), for
            ``sort_by_cluster(method="count", block_counts=..., count_block=tile.block_n)``.
        prepared: the workspace's low-precision centroids and norms already hold ``centroids``
            (written by ``kmeans_update(..., prepare=True)``): skip the preparation launch.
        name: prefix of the workspace buffers (clusterings that may run concurrently need their own).
    """
    if backend == "reference":
        labels.copy_(kmeans_assign_reference(_as_bh(x), centroids))
        return labels
    from svg2core.ops.kmeans.triton_kmeans import _kmeans_assign_kernel

    b, h, n, d = x.shape
    bh, c, _ = centroids.shape
    cent_lp, cent_sq = _prepare(x, centroids, workspace, name, prepared)
    rows = cent_sq.shape[1]
    tile = tile or ASSIGN_TILE
    c_pow2 = max(16, triton_next_pow2(c))
    block_c = min(tile.block_c, c_pow2)
    nb = _cdiv(n, tile.block_n)
    if block_counts is not None and (tuple(block_counts.shape) != (bh, nb * c) or block_counts.dtype != torch.int32):
        raise ValueError(f"block_counts: must be ({bh}, {nb * c}) int32 for {n} tokens in blocks of "
                         f"{tile.block_n}, got {tuple(block_counts.shape)} {block_counts.dtype}")
    args = (x, cent_lp, cent_sq, labels, labels if block_counts is None else block_counts, n, c, h,
            x.stride(0), x.stride(1), x.stride(2), cent_lp.stride(0), cent_lp.stride(1), cent_sq.stride(0),
            labels.stride(0), 0 if block_counts is None else block_counts.stride(0))
    _kmeans_assign_kernel[(nb, bh)](
        *args, D=d, BLOCK_N=tile.block_n, BLOCK_C=block_c, DOT_FP32=x.dtype == torch.float32,
        HIST=block_counts is not None, C_POW2=c_pow2, PACKED=ASSIGN_PACKED_ARGMIN,
        EVEN_C=ASSIGN_PAD_C and rows >= _cdiv(c, block_c) * block_c,  # every tile's rows are in the buffers
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return labels


def kmeans_update(x: torch.Tensor, perm: torch.Tensor, offsets: torch.Tensor, centroids: torch.Tensor,
                  labels: torch.Tensor | None = None, backend: str = "triton",
                  workspace: Workspace | None = None, name: str = "kmeans", prepare: bool = False,
                  rows_out: torch.Tensor | None = None, reverse_heads: bool = False) -> torch.Tensor:
    """Replace every non-empty cluster's centroid by the mean of its points, in place.

    Args:
        x: ``(B, H, N, D)`` points.
        perm, offsets: ``(B * H, N)`` / ``(B * H, C + 1)`` int32 from :func:`sort_by_cluster`.
        centroids: ``(B * H, C, D)`` fp32, updated in place.
        labels: ``(B * H, N)`` int32, the labels ``perm`` sorts (the Triton update in pieces reads the cluster of
            each cut from them).
        workspace: the buffers of the update in pieces (UPDATE_CHUNK > 0); a new one per call when None
            (allocations: pass the caller's on the hot path).
        name: the workspace buffers' prefix, as given to the assign.
        prepare: also write the updated clusters' low-precision copies and squared norms into the
            workspace's assign buffers, so that the next ``kmeans_assign(..., prepared=True)`` can skip
            its preparation launch. The workspace must already hold this ``centroids``' prepared copy
            (from an assign of the same call): empty clusters are not rewritten.
        rows_out: ``(B * H, N, D)`` of ``x``'s dtype, or None: also write ``x``'s rows in ``perm`` order there
            (:func:`~svg2core.ops.permute.gather_rows_reference`), from the reads the update makes anyway.
        reverse_heads: (Triton) run the heads in reverse grid order, so that the heads the assign before read last
            (still in L2) are read first; the same result (``svg2core.attention.SERPENTINE_HEADS``).
    """
    if rows_out is not None and (rows_out.shape != (perm.shape[0], perm.shape[1], x.shape[-1])
                                 or rows_out.dtype != x.dtype or rows_out.stride(-1) != 1):
        raise ValueError(f"rows_out: must be a ({perm.shape[0]}, {perm.shape[1]}, {x.shape[-1]}) {x.dtype} tensor "
                         f"with a contiguous last dim, got {tuple(rows_out.shape)} {rows_out.dtype}")
    if backend == "reference":
        centroids.copy_(kmeans_update_reference(_as_bh(x), labels, centroids))
        if rows_out is not None:
            rows_out.copy_(gather_rows_reference(x, perm))
        return centroids
    from svg2core.ops.kmeans.triton_kmeans import _kmeans_segment_mean_kernel

    b, h, _, d = x.shape
    c = centroids.shape[1]
    if prepare and workspace is None:
        raise ValueError("prepare: needs the workspace that holds the assign's prepared centroids")
    ws = workspace if workspace is not None else Workspace()
    if prepare:
        cent_lp, cent_sq = _prepared_centroids(ws, name, b * h, c, d, x)
    else:
        cent_lp, cent_sq = centroids, centroids  # unused (PREPARE=False)
    chunk = UPDATE_CHUNK
    n = perm.shape[1]
    cuts = _cdiv(n, chunk) - 1 if chunk else 0  # cuts of the sorted order, each a possible piece start
    if cuts > 0:  # the pieces' sums, (B*H, C + cuts, D) fp32, and a ticket per cluster (zero between launches)
        if labels is None:
            raise ValueError("labels: the update in pieces (UPDATE_CHUNK > 0) reads the cluster of each cut")
        part = ws.buffer(f"{name}.update_parts", (b * h, c + cuts, d), torch.float32, x.device)
        ticket = ws.constant(f"{name}.update_ticket:{b * h}x{c}:{x.device}",
                             lambda: torch.zeros(b * h, c, dtype=torch.int32, device=x.device))
    else:
        chunk = 0
        part = ticket = centroids  # never touched
    lab = labels if labels is not None else perm  # read only with cuts
    rows = rows_out if rows_out is not None else centroids  # never touched without STORE_ROWS
    _kmeans_segment_mean_kernel[(c + cuts, b * h)](
        x, perm, lab, offsets, centroids, cent_lp, cent_sq, part, ticket, rows, c + cuts, c, h,
        x.stride(0), x.stride(1), x.stride(2),
        perm.stride(0), lab.stride(0), offsets.stride(0), centroids.stride(0), centroids.stride(1),
        cent_lp.stride(0), cent_lp.stride(1), cent_sq.stride(0), rows.stride(0), rows.stride(1),
        D=d, BLOCK_N=_SEGMENT_BLOCK_N, PREPARE=prepare, CHUNK=chunk, STORE_ROWS=rows_out is not None,
        STAGES=_update_stages(n, c), REVERSE_BH=reverse_heads, num_warps=_SEGMENT_WARPS,
    )
    return centroids


def _update_stages(n: int, c: int) -> int:
    """The update's row-loop pipeline depth for ``n`` tokens in ``c`` clusters (:data:`UPDATE_STAGES`)."""
    if UPDATE_STAGES is not None:
        return UPDATE_STAGES
    return 3 if n >= UPDATE_STAGES_MIN_ROWS * c else 1


def batched_kmeans(x: torch.Tensor, centroids: torch.Tensor, iters: int, workspace: Workspace,
                   name: str, backend: str = "triton", rows_out: torch.Tensor | None = None,
                   candidates: int = 0, reverse_heads: bool = False,
                   subsample: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``iters`` Lloyd iterations on every ``(b, h)``, updating ``centroids`` in place.

    Args:
        x: ``(B, H, N, D)`` points (video tokens only).
        centroids: ``(B * H, C, D)`` fp32 contiguous, the warm or cold start; updated in place.
        iters: iterations (``0``: assign only; centroids untouched).
        workspace: buffers for labels / perm / offsets.
        name: buffer-name prefix (``"q"`` / ``"k"``).
        backend: ``"triton"`` or ``"reference"``.
        rows_out: ``(B*H, N, D)`` of ``x``'s dtype, or None: the last update also writes ``x``'s rows in the
            returned ``perm`` order there (the permutation's gather, fused into the pass that reads them); needs
            ``iters >= 1``.
        candidates: ``m > 0``: every assign but the first compares each token only with the ``m`` centroids nearest
            its current cluster's (:func:`kmeans_assign_candidates`), when the lists are a small share of the
            clusters (:func:`uses_candidate_lists`); ``0``: with all.
        reverse_heads: the updates run the heads in reverse grid order (:func:`kmeans_update`); the same result.
        subsample: ``s > 1``: every iteration but the last runs on every ``s``-th point only (``x[:, :, ::s]``, a
            strided view: no copy), and the last one assigns and updates with every point, as a full assign (the
            candidate lists, if any, apply among the sampled iterations). The returned clustering, and so the
            centroids (the means of its clusters), are those of all points, at ``(iters - 1) / s + 1`` passes over
            them instead of ``iters`` (``SVG2Config.kmeans_subsample``).

    Returns:
        ``labels (B*H, N) int32``, ``perm (B*H, N) int32``, ``offsets (B*H, C+1) int32``.
    """
    if rows_out is not None and iters < 1:
        raise ValueError(f"rows_out: the rows are written by the last update, so iters must be >= 1, got {iters}")
    if isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1:
        raise ValueError(f"subsample: must be an int >= 1, got {subsample!r}")
    fuse_prepare = _fuses_prepare(backend)
    if subsample > 1 and iters > 1:
        # the sampled iterations share the workspace buffers of the full one (same stream, one after the other); the
        # last sampled update prepares the full assign's centroid copies
        _lloyd(x[:, :, ::subsample], centroids, iters - 1, workspace, name, backend, None, candidates, reverse_heads,
               prepared_first=False, prepare_last=fuse_prepare)
        return _lloyd(x, centroids, 1, workspace, name, backend, rows_out, 0, reverse_heads,
                      prepared_first=fuse_prepare, prepare_last=False)
    return _lloyd(x, centroids, iters, workspace, name, backend, rows_out, candidates, reverse_heads,
                  prepared_first=False, prepare_last=False)


def _fuses_prepare(backend: str) -> bool:
    """Whether each update but the last of a k-means writes the next assign's centroid copies (:data:`FUSE_PREPARE`;
    the Triton backend only)."""
    return backend != "reference" and FUSE_PREPARE


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, iters: int, workspace: Workspace, name: str, backend: str,
           rows_out: torch.Tensor | None, candidates: int, reverse_heads: bool, prepared_first: bool,
           prepare_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`batched_kmeans` on the points ``x`` (all of them or a sample). ``prepared_first``: the workspace's
    prepared centroid copies already hold ``centroids`` (skip the first assign's preparation launch);
    ``prepare_last``: the last update also writes them (for an assign that follows this call)."""
    b, h, n, _ = x.shape
    c = centroids.shape[1]
    labels = workspace.buffer(f"{name}.labels", (b * h, n), torch.int32, x.device)
    fuse_prepare = _fuses_prepare(backend)
    if backend == "reference":
        def assign_and_sort(first: bool) -> tuple[torch.Tensor, torch.Tensor]:
            kmeans_assign(x, centroids, labels, backend)
            return sort_by_cluster(labels, c, workspace, name, backend)
    else:
        # Triton: with few clusters the assign kernel writes the counting sort's block histograms,
        # and every update but the last prepares the next assign's centroid copies.
        fused = c <= FUSED_SORT_MAX_CLUSTERS
        tile = ASSIGN_TILE
        counts = (workspace.buffer(f"{name}.block_counts", (b * h, _cdiv(n, tile.block_n) * c), torch.int32,
                                   x.device) if fused else None)

        def assign_and_sort(first: bool) -> tuple[torch.Tensor, torch.Tensor]:
            kmeans_assign(x, centroids, labels, backend, workspace, tile, block_counts=counts,
                          prepared=prepared_first if first else fuse_prepare, name=name)
            if fused:
                return sort_by_cluster(labels, c, workspace, name, method="count", count_block=tile.block_n,
                                       block_counts=counts)
            return sort_by_cluster(labels, c, workspace, name)

    if uses_candidate_lists(candidates, c):
        def assign_and_sort(first: bool, full=assign_and_sort) -> tuple[torch.Tensor, torch.Tensor]:
            if first:
                return full(True)
            kmeans_assign_candidates(x, centroids, labels, perm, offsets, candidates, backend, workspace, name,
                                     prepared=fuse_prepare)
            return sort_by_cluster(labels, c, workspace, name, backend, method="count")

    perm, offsets = assign_and_sort(True)
    for it in range(iters):
        if it > 0:
            perm, offsets = assign_and_sort(False)
        last = it == iters - 1
        kmeans_update(x, perm, offsets, centroids, labels, backend, workspace, name=name,
                      prepare=fuse_prepare and (prepare_last or not last), rows_out=rows_out if last else None,
                      reverse_heads=reverse_heads)
    return labels, perm, offsets


def uses_candidate_lists(m: int, c: int) -> bool:
    """Whether a clustering of ``c`` clusters takes its warm assigns over lists of ``m`` candidates: ``m > 0`` and
    ``m * CANDIDATE_MIN_RATIO <= c``. Both backends apply the rule, so it is part of the computed function. Below
    the ratio the full assign is about as cheap. H100, 2 warm iterations, m = 16
    (docs/benchmarks/probe_candidates_h100_s16b.md): 480p Q 100 clusters 0.227 -> 0.288 ms, K 500 0.390 -> 0.396,
    Wan 14B Q 300 1.936 -> 1.760, K 1000 4.06 -> 3.14.
    """
    return m > 0 and m * CANDIDATE_MIN_RATIO <= c


def kmeans_assign_candidates(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor,
                             offsets: torch.Tensor, m: int, backend: str = "triton",
                             workspace: Workspace | None = None, name: str = "kmeans",
                             prepared: bool = False) -> torch.Tensor:
    """A warm assign: each token's nearest centroid among the ``m`` nearest its current cluster's
    (:func:`~svg2core.ops.kmeans.reference.kmeans_assign_candidates_reference`), ``labels`` updated in place.

    Args:
        x: ``(B, H, N, D)`` points.
        centroids: ``(B * H, C, D)`` fp32, the updated centroids.
        labels: ``(B * H, N)`` int32: the tokens' current clusters in, their new ones out.
        perm, offsets: the sort of the current ``labels`` (:func:`sort_by_cluster`): the Triton kernel takes the
            tokens cluster by cluster, so that a block of tokens shares few candidate lists.
        m: candidates per cluster, in ``[1, C]``.
        workspace, name: as for :func:`kmeans_assign` (the candidate lists live there too).
        prepared: the workspace's low-precision centroids and norms already hold ``centroids``.
    """
    bh, c, d = centroids.shape
    if not 1 <= m <= c:
        raise ValueError(f"m: must be in [1, {c}], got {m}")
    if backend == "reference":
        lists = candidate_lists_reference(centroids, m)
        labels.copy_(kmeans_assign_candidates_reference(_as_bh(x), centroids, labels, lists))
        return labels
    ws = Workspace() if workspace is None else workspace
    cent_lp, cent_sq = _prepare(x, centroids, ws, name, prepared)
    lists = candidate_lists(x, cent_lp, cent_sq, c, m, ws, name)
    return assign_over_lists(x, perm, labels, cent_lp, cent_sq, lists, c)


def candidate_lists(x: torch.Tensor, cent_lp: torch.Tensor, cent_sq: torch.Tensor, c: int, m: int, ws: Workspace,
                    name: str) -> torch.Tensor:
    """The Triton list kernel: ``(B * H, C, m)`` int32 in the workspace, each cluster's ``m`` nearest clusters
    (itself first, then by distance) from the assign's prepared centroid copies ``cent_lp`` / ``cent_sq``."""
    from svg2core.ops.kmeans.triton_kmeans import _candidate_lists_kernel

    bh, d = cent_lp.shape[0], cent_lp.shape[2]
    lists = ws.buffer(f"{name}.candidates", (bh, c, m), torch.int32, x.device)
    k_pow2 = max(16, triton_next_pow2(m - 1))
    _candidate_lists_kernel[(_cdiv(c, CANDIDATE_ROWS), bh)](
        cent_lp, cent_sq, lists, c, m, cent_lp.stride(0), cent_lp.stride(1), cent_sq.stride(0), lists.stride(0),
        lists.stride(1), D=d, ROWS=CANDIDATE_ROWS, K_POW2=k_pow2, BLOCK_C=max(k_pow2, CANDIDATE_LIST_BLOCK),
        C_POW2=max(16, triton_next_pow2(c)), DOT_FP32=x.dtype == torch.float32, num_warps=CANDIDATE_LIST_WARPS,
    )
    return lists


def assign_over_lists(x: torch.Tensor, perm: torch.Tensor, labels: torch.Tensor, cent_lp: torch.Tensor,
                      cent_sq: torch.Tensor, lists: torch.Tensor, c: int) -> torch.Tensor:
    """The Triton list assign: ``labels`` (current in, new out) over ``lists`` (:func:`candidate_lists`), the
    tokens taken in ``perm``'s order."""
    from svg2core.ops.kmeans.triton_kmeans import _kmeans_assign_candidates_kernel

    _, h, n, d = x.shape
    bh, _, m = lists.shape
    tile = CANDIDATE_TILE
    _kmeans_assign_candidates_kernel[(_cdiv(n, tile.block_n), bh)](
        x, perm, labels, cent_lp, cent_sq, lists, n, h, m,
        x.stride(0), x.stride(1), x.stride(2), perm.stride(0), labels.stride(0), cent_lp.stride(0), cent_lp.stride(1),
        cent_sq.stride(0), lists.stride(0), lists.stride(1),
        D=d, BLOCK_N=tile.block_n, K_POW2=max(16, triton_next_pow2(m)), C_POW2=max(16, triton_next_pow2(c)),
        DOT_FP32=x.dtype == torch.float32, num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return labels


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
