"""What a layer's cold first call costs a job, and how much of it fewer cold iterations or a token sample save.

A layer's first sparse call of a job (per CFG branch) has no cached centroids: it runs ``kmeans_iters_init`` (50,
the public setting) Lloyd iterations on Q and on K from the strided start, where a warm call runs 2. Everything else
in the call (the attention itself) is the same cold or warm, so this times the selection stages of a call
(``cluster_and_select``: both k-means, scoring, selection, K/V gather; random bf16 tokens) cold, from the strided
start, per variant of the cold call's settings (``kmeans_iters_init``; ``kmeans_subsample``, which a cold call takes
too), and warm (2 iterations), in alternating rounds, and gives what the
cold calls add to one job: (cold - warm) x the job's sparse layers x CFG branches.

Checks first, per variant: the cached key and query centroids are the means of the call's final clusters (every
token's: the last iteration runs on all of them whatever the sample), and the selection's sizes add up to the
tokens. Accuracy is not measured here (random tokens): see ``probe_config_trajectory.py`` (``--variant
kmeans_iters_init=20``), whose tables include the cold call itself.

    python bench/probes/probe_cold_start.py --out DIR [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import probe_io as P  # noqa: E402

from svg2core import SVG2Config  # noqa: E402
from svg2core.attention import cluster_and_select  # noqa: E402
from svg2core.ops.kmeans import init_centroids_strided, kmeans_update_reference  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

# name, heads, video tokens, Cq, Ck (the balanced preset's; fast: 100 / 500), the cold calls of a job (blocks less the
# preset's dense layers, x CFG branches)
SHAPES = (("wan1.3b-480p", 12, 32760, 200, 1000, 29 * 2), ("wan1.3b-480p fast", 12, 32760, 100, 500, 29 * 2),
          ("wan14b-720p", 40, 75600, 300, 1000, 39 * 2), ("hunyuan-720p", 24, 118800, 400, 1000, 58 * 1))
# label -> the cold call's SVG2Config fields
VARIANTS = {"50": {}, "30": {"kmeans_iters_init": 30}, "20": {"kmeans_iters_init": 20},
            "10": {"kmeans_iters_init": 10}, "5": {"kmeans_iters_init": 5}, "50 on s8": {"kmeans_subsample": 8}}


def _centroids_are_means(x: torch.Tensor, labels: torch.Tensor, cent: torch.Tensor) -> bool:
    """Whether ``cent`` ``(h, c, d)`` holds the means of ``x``'s ``(1, h, n, d)`` clusters by ``labels`` ``(h, n)``
    (clusters with members; the reference update keeps an empty cluster's centroid)."""
    return torch.allclose(kmeans_update_reference(x[0], labels, cent), cent, rtol=1e-3, atol=1e-3)


def case(name, h, nv, cq, ck, cold_calls, dev, rounds) -> dict:
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, h, nv, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    base = SVG2Config(mode="fixed_density", target_density=0.25, num_q_clusters=cq, num_k_clusters=ck)
    ws = Workspace()
    q_cent = torch.empty(h, cq, 128, device=dev)
    k_cent = torch.empty(h, ck, 128, device=dev)

    def select(fields, cold=True):
        cfg = base.replace(**fields)
        if cold:  # what svg2_attention does on a layer's first call
            init_centroids_strided(q, cq, q_cent)
            init_centroids_strided(k, ck, k_cent)
            return cluster_and_select(q, k, v, q_cent, k_cent, cfg.kmeans_iters_init, cfg, ws, candidates=0)
        return cluster_and_select(q, k, v, q_cent, k_cent, cfg.kmeans_iters, cfg, ws)

    checks = {}
    for label, fields in {**VARIANTS, "warm": None}.items():
        plan = select(fields or {}, cold=fields is not None)
        checks[label] = (_centroids_are_means(k, plan.k_labels, k_cent)
                         and _centroids_are_means(q, plan.q_labels, q_cent)
                         and bool((plan.k_sizes.sum(1) == nv).all()) and bool((plan.q_sizes.sum(1) == nv).all()))
    fns = {label: functools.partial(select, fields) for label, fields in VARIANTS.items()}
    fns["warm"] = functools.partial(select, {}, cold=False)  # from whatever the last call left: warm centroids
    times = P.alternating_times(fns, rounds)
    best = {label: min(t) for label, t in times.items()}
    extra_s = {label: (best[label] - best["warm"]) * cold_calls / 1000 for label in VARIANTS}
    return {"shape": name, "heads": h, "tokens": nv, "Cq": cq, "Ck": ck, "cold_calls": cold_calls,
            "checks": checks, "ms": times, "best_ms": best, "job_extra_s": extra_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    out = P.ProbeResults(args.out, "probe_cold_start", rows=[], variants=VARIANTS)
    P.run_shapes(out, "rows", functools.partial(case, rounds=args.rounds), SHAPES, torch.device("cuda"))
    labels = list(VARIANTS)
    lines = [f"# A layer's cold call: its cost to a job, with fewer cold iterations or on a token sample ({out.device})",
             "",
             "The selection stages of a call (both k-means, scoring, selection, K/V gather; random bf16 tokens, fixed "
             "density 25%), best ms of alternating rounds: cold (from the strided start) per variant, and warm (2 "
             "iterations). `N`: `kmeans_iters_init = N` (50: the public cold start); `50 on s8`: `kmeans_subsample = 8` (49 "
             "iterations on every 8th video token, the last on all). In brackets: what the job's cold "
             "calls add to it, (cold - warm) x cold calls, in seconds. checks: for every variant, the cached centroids "
             "are the final clusters' means and the cluster sizes add up to the tokens.", "",
             "| shape | Cq/Ck | cold calls | warm ms | " + " | ".join(labels) + " | checks |",
             "|---|---|---|---|" + "---|" * (len(labels) + 1)]
    for r in out.data["rows"]:
        cells = " | ".join(f"{r['best_ms'][k]:.1f} ({r['job_extra_s'][k]:.2f} s)" for k in labels)
        lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | {r['cold_calls']} | {r['best_ms']['warm']:.2f} | "
                     f"{cells} | {all(r['checks'].values())} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
