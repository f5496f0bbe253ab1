"""Configuration of one Sparse VideoGen2 attention call.

The config is a frozen value object: it carries no tensors and no state, so one instance can be
shared by every layer of a pipeline and by concurrent requests without leaking anything between them.
Per-layer caches (k-means centroids) live in :class:`svg2core.state.LayerState`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Mode = Literal["top_p", "fixed_density", "dense"]
MODES: tuple[str, ...] = ("top_p", "fixed_density", "dense")


@dataclass(frozen=True)
class SVG2Config:
    """Budget of one sparse attention call.

    Args:
        mode: ``"top_p"`` keeps, per (head, query cluster), key clusters in descending probability until
            their cumulative probability reaches ``top_p`` (the crossing cluster is kept), bounded by
            ``min_density`` / ``max_density``. ``"fixed_density"`` keeps the most probable key clusters
            of every query cluster until ``target_density`` of the keys is covered (within one
            cluster). ``"dense"`` runs plain dense attention.
        top_p: cumulative probability budget, in (0, 1].
        min_density: floor on the fraction of keys each query cluster attends to, in [0, 1].
        max_density: cap on the fraction of keys each query cluster attends to, in (0, 1]; at least
            one key cluster is always kept.
        target_density: key fraction per query cluster in ``"fixed_density"`` mode, in (0, 1].
        num_q_clusters: k-means clusters of the query vectors, per (batch, head).
        num_k_clusters: k-means clusters of the key vectors, per (batch, head).
        kmeans_iters_init: Lloyd iterations of the first (cold) call of a layer, from evenly strided tokens. 50 by
            default (the public scripts'); on an H100 that is 11.7 s of a Wan 14B 720p job (78 cold calls), and 20
            give nearly the same attention error along a simulated denoising run for 40% of it (the presets' choices:
            docs/presets.md; docs/benchmarks/NOTES_selection.md v21).
        kmeans_iters: Lloyd iterations of later calls, warm-started from the cached centroids.
        kmeans_candidates: ``0``: every assign compares each token with all centroids. ``m > 0``: every assign but
            a call's first compares each token only with the ``m`` centroids nearest its current cluster's (that
            cluster included), a fraction of the distances for nearly the same labels
            (:func:`svg2core.ops.kmeans.kmeans_assign_candidates_reference`); at least the cluster count: all.
        kmeans_subsample: ``1``: every k-means iteration assigns and averages every video token. ``s > 1``: every
            iteration of a warm call but its last runs on every ``s``-th video token only (a strided sample of the token
            grid), and the last one on all of them, so the labels, the permutation and the cached centroids are
            still those of every token, at ``(iters - 1) / s + 1`` passes over the tokens instead of ``iters``
            (:func:`svg2core.ops.kmeans.batched_kmeans`). H100, the warm selection at 480p 100 / 500: 6.0% of dense
            attention at 1, 5.0% at 2, 4.5% at 4; the Wan 1.3B 480p step 4% faster at 2, Wan 14B 720p 1%
            (docs/benchmarks/NOTES_selection.md v19); at 2 the attention error along a simulated trajectory at 480p's
            size rises by 1.5-2% at fixed density, at 4 by 5-7%, as much as one warm iteration less (v20), with
            the cold calls sampled too. A layer's cold first call runs on every token: at Wan 14B's size a sampled
            cold call had +5-10% error, and most of the 2% the warm steps lost was that start, fading over them
            (docs/benchmarks/NOTES_sparse_attn.md v30); with it unsampled, s = 2 costs +0.3-0.9% (v31). 1 by default (the
            public method); the ``balanced`` and ``fast`` presets use 2.
        query_tile_rebalance: ``0``: the query clusters are the k-means'. ``rho > 0``: after the query k-means, a
            cluster whose last 128-row query tile (or half tile) holds at most ``rho`` rows beyond the tile below gives
            them, by smallest distance margin, to the nearest clusters with room in their last tile, so that the
            attention kernel runs fewer partly empty tiles (:func:`svg2core.ops.rebalance.rebalance_reference`). Off
            by default: on an H100 the Wan 14B 25% kernel runs 4.5-6% faster with rho = 16 and the step, with
            ``kmeans_subsample = 2``, 1.2-2% (582 -> 570 / 573 ms, 2.00x / 1.98x) for 0.3-0.5% more attention error
            (docs/benchmarks/NOTES_sparse_attn.md v24, v25).
        query_tail_union: ``False``: each query cluster's last, partly filled tile runs alone over the cluster's own
            key list. ``True``: after the selection, pairs of those tails share one 128-row tile over the union of
            their two key lists where a tile-cost model says that is cheaper, paired per head by mutual best partner
            (:func:`svg2core.ops.tail_union.tail_union_reference`). The rows of a packed tail attend
            to more keys than their own selection: the attention is exact for that larger mask and its pairs count
            in the density (in the top-p mode no union passes ``max_density``; in the fixed-density mode a union may
            pass the target). On an H100 at Wan 14B's size (synthetic video, bench/probes/probe_tail_union.py) the
            query tiles' fill rises from 0.80 to 0.89-0.90, the kernel runs 3-5% faster for a 0.4-0.5 ms stage and
            the attention error at the same target falls 1-2%; the 25% step: Wan 14B 1.93-1.94x -> 1.95-1.96x,
            HunyuanVideo 2.40x -> 2.46x, while the Wan 1.3B 480p 15% step loses (2.03x -> 1.99x). Off here; on in
            the 720p models' quality / balanced presets (docs/benchmarks/NOTES_sparse_attn.md v27, v28).
    """

    mode: Mode = "top_p"
    top_p: float = 0.9
    min_density: float = 0.0
    max_density: float = 1.0
    target_density: float = 0.25
    num_q_clusters: int = 100
    num_k_clusters: int = 500
    kmeans_iters_init: int = 50
    kmeans_iters: int = 2
    kmeans_candidates: int = 0
    kmeans_subsample: int = 1
    query_tile_rebalance: int = 0
    query_tail_union: bool = False

    def __post_init__(self) -> None:
        errors = config_errors(self)
        if errors:
            raise ValueError("; ".join(errors))

    def replace(self, **changes) -> SVG2Config:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


def config_errors(cfg: SVG2Config) -> list[str]:
    """Every rule ``cfg`` breaks, as ``"field: rule"`` strings (empty when valid)."""
    errs: list[str] = []
    if cfg.mode not in MODES:
        errs.append(f"mode: must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if not 0.0 < cfg.top_p <= 1.0:
        errs.append(f"top_p: must be in (0, 1], got {cfg.top_p}")
    if not 0.0 <= cfg.min_density <= 1.0:
        errs.append(f"min_density: must be in [0, 1], got {cfg.min_density}")
    if not 0.0 < cfg.max_density <= 1.0:
        errs.append(f"max_density: must be in (0, 1], got {cfg.max_density}")
    if cfg.min_density > cfg.max_density:
        errs.append(f"min_density: must not exceed max_density ({cfg.min_density} > {cfg.max_density})")
    if not 0.0 < cfg.target_density <= 1.0:
        errs.append(f"target_density: must be in (0, 1], got {cfg.target_density}")
    if not 1 <= cfg.num_q_clusters <= 4096:
        errs.append(f"num_q_clusters: must be in [1, 4096], got {cfg.num_q_clusters}")
    if not 1 <= cfg.num_k_clusters <= 8192:
        errs.append(f"num_k_clusters: must be in [1, 8192], got {cfg.num_k_clusters}")
    if not 1 <= cfg.kmeans_iters_init <= 1000:
        errs.append(f"kmeans_iters_init: must be in [1, 1000], got {cfg.kmeans_iters_init}")
    if not 0 <= cfg.kmeans_iters <= 1000:
        errs.append(f"kmeans_iters: must be in [0, 1000], got {cfg.kmeans_iters}")
    if not 0 <= cfg.kmeans_candidates <= 8192:
        errs.append(f"kmeans_candidates: must be in [0, 8192], got {cfg.kmeans_candidates}")
    if not 1 <= cfg.kmeans_subsample <= 64:
        errs.append(f"kmeans_subsample: must be in [1, 64], got {cfg.kmeans_subsample}")
    if not 0 <= cfg.query_tile_rebalance <= 64:
        errs.append(f"query_tile_rebalance: must be in [0, 64] (rows of half a query tile), got "
                    f"{cfg.query_tile_rebalance}")
    if not isinstance(cfg.query_tail_union, bool):
        errs.append(f"query_tail_union: must be a bool, got {cfg.query_tail_union!r}")
    if cfg.query_tail_union and cfg.query_tile_rebalance:
        errs.append("query_tail_union, query_tile_rebalance: use one of the two (both fill the query tiles' tails)")
    return errs
