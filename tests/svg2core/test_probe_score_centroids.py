"""bench/probes/probe_score_centroids.py's variant: the scoring gets the centroids the last assign used."""

from __future__ import annotations

import torch

import svg2core.attention as attention
from svg2core import LayerState, SVG2Config, svg2_attention
from svg2core.state import Workspace
from tests.svg2core.bench_modules import load_bench


def _probe():
    return load_bench("probes/probe_score_centroids.py")


def test_the_scoring_sees_the_centroids_from_before_the_last_iteration():
    p = _probe()
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 200, 64) for _ in range(3))
    cfg = SVG2Config(mode="fixed_density", target_density=0.3, num_q_clusters=4, num_k_clusters=8,
                     kmeans_iters_init=3, kmeans_iters=2)
    seen = []
    select, kmeans = attention.select_key_clusters, attention.batched_kmeans

    def spy(q_cent, k_cent, *args, **kwargs):
        seen.append((q_cent.clone(), k_cent.clone()))
        return select(q_cent, k_cent, *args, **kwargs)

    attention.select_key_clusters = spy
    try:
        state = LayerState()
        svg2_attention(q, k, v, cfg, state, backend="reference")  # cold: 3 iterations
        cold_final = (state.get(0).q.reshape(2, 4, 64).clone(), state.get(0).k.reshape(2, 8, 64).clone())
        with p.score_with_assigned_centroids():
            svg2_attention(q, k, v, cfg, state, backend="reference")  # warm: 2 iterations
        warm_final = (state.get(0).q.reshape(2, 4, 64).clone(), state.get(0).k.reshape(2, 8, 64).clone())
    finally:
        attention.select_key_clusters = select
    # the plain call scores with its final centroids
    assert torch.equal(seen[0][0], cold_final[0]) and torch.equal(seen[0][1], cold_final[1])
    # the variant's scoring got neither the warm start nor the final centroids: one iteration from the warm start
    assert not torch.equal(seen[1][0], warm_final[0]) and not torch.equal(seen[1][0], cold_final[0])
    one = cold_final[0].clone()
    kmeans(q, one, 1, Workspace(), "q", backend="reference")
    assert torch.equal(seen[1][0], one)
    # and the library's functions are back after the block
    assert attention.select_key_clusters is select and attention.batched_kmeans is kmeans
