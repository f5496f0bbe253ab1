"""Can the selection run beside the value projection? (GPU.)

In a sparse step the self-attention's three projections (``to_q``, ``to_k``, ``to_v``: cuBLAS GEMMs of tokens x C x
C) run first, then the selection (k-means of Q and K, scoring, selection, K/V gather), then the attention kernel. The
k-means needs only Q and K: if the processor started the selection as soon as Q and K exist, the V projection could
run beside it, on the caller's stream, while the two k-means chains run on side streams. Whether that saves anything
depends on how the two share the SMs (the GEMM is tensor-core bound; the k-means' assigns are too, its sorts,
updates, scans and selection are not).

This probe captures, per shape, in CUDA graphs replayed back to back (alternating rounds, best mean ms):

- ``gemm``: the V projection alone (``F.linear`` with bias, tokens x C x C, bf16);
- ``selection``: ``cluster_and_select`` alone (the step's fixed-density config, warm centroids, 2 iterations);
- ``serial``: the V projection, then the selection (what the processor does now);
- ``overlap``: the projection passed to ``cluster_and_select`` as a callable (the library's path for it: both k-means
  chains on side streams, the GEMM on the caller's stream beside them, the gather after it).

If ``overlap`` is well below ``serial`` (and near ``max(gemm, selection)``), splitting the call so that the
selection starts before ``to_v`` is worth building.

    python bench/probes/probe_select_overlap.py --out DIR [--shapes wan14b,w480] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_selection as S  # noqa: E402
import probe_io as P  # noqa: E402

from svg2core import SVG2Config  # noqa: E402
from svg2core.attention import cluster_and_select  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

# name -> heads, video tokens, model width, Cq, Ck, union (the step benchmark's fixed-density configs)
SHAPES = {
    "wan14b": (40, 75600, 5120, 300, 1000, True),
    "w480": (12, 32760, 1536, 200, 1000, False),
    "hunyuan": (24, 118800, 3072, 300, 1000, True),
}


def case(name: str, rounds: int, density: float, dev) -> dict:
    h, nv, width, cq, ck, union = SHAPES[name]
    d = width // h
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, h, nv, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
    x = torch.randn(nv, width, device=dev, dtype=torch.bfloat16)
    w = torch.randn(width, width, device=dev, dtype=torch.bfloat16) / width ** 0.5
    bias = torch.randn(width, device=dev, dtype=torch.bfloat16)
    y = torch.empty(nv, width, device=dev, dtype=torch.bfloat16)
    cfg = SVG2Config(mode="fixed_density", target_density=density, num_q_clusters=cq, num_k_clusters=ck,
                     kmeans_iters=2, kmeans_subsample=2, query_tail_union=union)
    ws = Workspace()
    q_start, k_start = S.warm_centroids(q, k, cq, ck, ws)
    q_cent, k_cent = q_start.clone(), k_start.clone()

    def gemm():
        torch.addmm(bias, x, w.t(), out=y)
        return y.view(1, nv, h, d).transpose(1, 2)  # (1, H, N, D), as a processor's value

    def selection():
        cluster_and_select(q, k, v, q_cent, k_cent, 2, cfg, ws)

    def serial():  # what the processors do by default: the projection, then the call
        cluster_and_select(q, k, gemm(), q_cent, k_cent, 2, cfg, ws)

    def overlap():  # the projection passed as a callable: made on the caller's stream beside both k-means chains
        cluster_and_select(q, k, gemm, q_cent, k_cent, 2, cfg, ws)

    # correctness first: the callable's plan equals the tensor's, from the same centroids
    plans = []
    for value in (gemm(), gemm):
        q_cent.copy_(q_start)
        k_cent.copy_(k_start)
        plan = cluster_and_select(q, k, value, q_cent, k_cent, 2, cfg, ws)
        plans.append({f: getattr(plan, f).clone() for f in ("vp", "kp", "sel_idx", "sel_count", "q_perm")})
    torch.cuda.synchronize()
    same = all(torch.equal(plans[0][f], plans[1][f]) for f in plans[0])
    print(name, "callable value: plan equal to the tensor's:", same, flush=True)
    fns = {"gemm": gemm, "selection": selection, "serial": serial, "overlap": overlap}
    graphs = {}
    for label, fn in fns.items():
        fn()
        torch.cuda.synchronize()
        graphs[label] = S.capture_graph(fn)
    best: dict[str, float] = {}
    per_round = []
    for _ in range(rounds):
        row = {}
        for label, g in graphs.items():
            q_cent.copy_(q_start)
            k_cent.copy_(k_start)
            row[label] = S.bench_ms(g.replay)
            best[label] = min(best.get(label, float("inf")), row[label])
        per_round.append(row)
        print(name, row, flush=True)
    return {"shape": name, "plan_equal": same, "heads": h, "tokens": nv, "width": width, "Cq": cq, "Ck": ck, "union": union,
            "density": density, "rounds": per_round, "best_ms": best,
            "saved_ms": best["serial"] - best["overlap"],
            "bound_ms": max(best["gemm"], best["selection"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="wan14b,w480")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--density", type=float, default=0.25)
    args = ap.parse_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(args.out, "probe_select_overlap", rows=[])
    for name in args.shapes.split(","):
        out.data["rows"].append(case(name, args.rounds, args.density, dev))
        out.save()
        torch.cuda.empty_cache()
    lines = [f"# The selection beside the V projection ({out.device})", "",
             "CUDA-graph replay, best of the rounds (ms). gemm: the V projection (tokens x C x C + bias, bf16); "
             "selection: cluster_and_select (fixed density, warm, 2 iterations, kmeans_subsample 2); serial: one "
             "after the other; overlap: the GEMM as the call's value callable, beside both k-means chains.", "",
             "| shape | Cq/Ck | plan equal | gemm | selection | serial | overlap | saved | max(gemm, selection) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out.data["rows"]:
        b = r["best_ms"]
        lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | {r['plan_equal']} | {b['gemm']:.3f} | {b['selection']:.3f} | "
                     f"{b['serial']:.3f} | {b['overlap']:.3f} | {r['saved_ms']:.3f} | {r['bound_ms']:.3f} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
