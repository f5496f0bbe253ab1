"""The selection with its k-means' first iterations on a strided sample of the tokens (``kmeans_subsample``), timed.

``SVG2Config.kmeans_subsample = s`` runs every k-means iteration of a call but the last on every ``s``-th video token
and the last on all of them (svg2core.ops.kmeans.batched_kmeans), so a warm call with 2 iterations reads the tokens
``1 / s + 1`` times instead of twice in its assigns and updates. This times the whole selection (bench_selection's
setup: 2 warm k-means iterations on Q and K, scoring, selection, K/V gather; random bf16 tokens, warm centroids),
CUDA-graph replay, per variant from the same warm start, in alternating rounds, against cuDNN dense attention of the
same shape in the same run. Before timing, each variant's graph replay is checked against the same call run eagerly
from the same start (centroids, query sizes and permuted V bit for bit). Accuracy is not measured here: see
``probe_config_trajectory.py``.

    python bench/probes/probe_kmeans_subsample.py --out DIR [--rounds 4]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import probe_io as P  # noqa: E402

from svg2core import SVG2Config  # noqa: E402
from svg2core.attention import cluster_and_select  # noqa: E402

SHAPES = (("wan1.3b-480p", 12, 32760, 100, 500), ("wan1.3b-480p", 12, 32760, 200, 1000),
          ("wan14b-720p", 40, 75600, 300, 1000), ("hunyuan-720p", 24, 118800, 300, 1000))
# label -> (SVG2Config fields, warm iterations)
VARIANTS = {"s1": ({}, 2), "s2": ({"kmeans_subsample": 2}, 2), "s4": ({"kmeans_subsample": 4}, 2),
            "s4 x3": ({"kmeans_subsample": 4}, 3), "1 iter": ({}, 1)}


def case(name, h, nv, cq, ck, dev, rounds) -> dict:
    import bench_selection as S

    torch.manual_seed(2)
    q, k, v = (torch.randn(1, h, nv, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        dense_ms = S.bench_ms(lambda: F.scaled_dot_product_attention(q, k, v), warmup=2, rep=5)
    cfg = SVG2Config(num_q_clusters=cq, num_k_clusters=ck)
    calls = {label: {"config": cfg.replace(**fields), "iters": iters} for label, (fields, iters) in VARIANTS.items()}
    graphs = P.captured_selections(q, k, v, cfg, {label: (call, ()) for label, call in calls.items()})
    checks = {}
    for label, (graph, ws, q_cent, k_cent, start) in graphs.items():
        results = []
        for replay in (True, False):
            q_cent.copy_(start[0])
            k_cent.copy_(start[1])
            if replay:
                graph.replay()
            else:
                cluster_and_select(q, k, v, q_cent, k_cent, calls[label]["iters"], calls[label]["config"], ws)
            torch.cuda.synchronize()
            results.append((q_cent.clone(), k_cent.clone(), ws.buffer("q.sizes", (h, cq), torch.int32, dev).clone(),
                            ws.buffer("vp", (h, nv, 128), v.dtype, dev).clone()))
        checks[label] = all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    times = P.alternating_times({label: g[0].replay for label, g in graphs.items()}, rounds)
    del graphs
    best = {label: min(t) for label, t in times.items()}
    return {"shape": name, "heads": h, "tokens": nv, "Cq": cq, "Ck": ck, "dense_sdpa_cudnn_ms": dense_ms,
            "graph_equals_eager": checks, "ms": times, "best_ms": best,
            "pct_of_dense": {label: 100 * t / dense_ms for label, t in best.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    out = P.ProbeResults(args.out, "probe_kmeans_subsample", rows=[],
                         variants={k: {"fields": f, "iters": i} for k, (f, i) in VARIANTS.items()})
    P.run_shapes(out, "rows", functools.partial(case, rounds=args.rounds), SHAPES, torch.device("cuda"))
    labels = list(VARIANTS)
    lines = [f"# The selection with the k-means' first iterations on a token sample ({out.device})", "",
             "Whole selection (warm k-means on Q and K, scoring, selection, K/V gather), CUDA-graph replay, alternating "
             "rounds, best ms, and % of cuDNN dense attention (same run). `sN`: `kmeans_subsample = N`, 2 iterations; "
             "`s4 x3`: 3 iterations, the first two on every 4th token; `1 iter`: one full iteration. eager: every "
             "variant's replay equals its eager call from the same warm start.", "",
             "| shape | Cq/Ck | dense ms | " + " | ".join(labels) + " | eager |", "|---|---|---|" + "---|" * (len(labels) + 1)]
    for r in out.data["rows"]:
        cells = " | ".join(f"{r['best_ms'][k]:.3f} ({r['pct_of_dense'][k]:.1f}%)" for k in labels)
        lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | {r['dense_sdpa_cudnn_ms']:.1f} | {cells} | "
                     f"{all(r['graph_equals_eager'].values())} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
