"""Would an FP8 k-means assign cost accuracy? (CPU; a question for the GPU's next assign kernel.)

The assign is the largest piece of the selection (two of its passes hold ~40% of the 480p selection's GPU time) and
runs at about half the bf16 tensor-core rate. Hopper's FP8 matmul is twice as fast. Its operands would be e4m3 with a
scale per token and one per head for the centroids (amax / 448), accumulated in fp32, the centroid norms kept exact. This probe emulates
that assign in the torch reference (``reference.kmeans_assign_fp8_reference``, also ``kmeans.ASSIGN_FP8``'s
specification) and measures, on
bench_fidelity's structured synthetic attention at fixed densities:

- how many labels change in one assign from the same centroids (the converged ones of the exact run);
- the k-means objective (mean squared distance to the assigned centroid) after the whole clustering;
- the attention output's error against dense attention, exact assign vs FP8 assign, at equal density.

    python bench/probes/probe_fp8_assign.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager, nullcontext

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_fidelity as F  # noqa: E402

import svg2core.ops.kmeans.kmeans as km  # noqa: E402
import svg2core.ops.kmeans.reference as kr  # noqa: E402
from svg2core import LayerState, SVG2Config, svg2_attention  # noqa: E402


@contextmanager
def fp8_assign():
    """The FP8 assign in force: ``kmeans.ASSIGN_FP8`` (svg2_attention's reference backend then assigns with
    ``kmeans_assign_fp8_reference``), and the same function behind ``reference.kmeans_reference``'s assign."""
    saved = kr.kmeans_assign_reference, km.ASSIGN_FP8
    kr.kmeans_assign_reference, km.ASSIGN_FP8 = kr.kmeans_assign_fp8_reference, True
    try:
        yield
    finally:
        kr.kmeans_assign_reference, km.ASSIGN_FP8 = saved


def objective(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Mean squared distance of each point to its nearest centroid (exact)."""
    labels = kr.kmeans_assign_reference(x, centroids).long()
    near = torch.gather(centroids, 1, labels[..., None].expand(-1, -1, x.shape[-1]))
    return float(((x.float() - near) ** 2).sum(-1).mean())


def run_case(q, k, v, dense, target, cq, ck, iters_init) -> dict:
    cfg = SVG2Config(mode="fixed_density", target_density=target, num_q_clusters=cq, num_k_clusters=ck,
                     kmeans_iters_init=iters_init)
    res = {}
    for tag in ("exact", "fp8"):
        with fp8_assign() if tag == "fp8" else nullcontext():
            out, dens = svg2_attention(q, k, v, cfg, LayerState(), backend="reference")
        res[tag] = {"error": F.rel_error(out, dense), "density": float(dens.mean())}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cq", type=int, default=32)
    ap.add_argument("--ck", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20, help="k-means iterations (cold start)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    rows = []
    for seed in range(a.seeds):
        q, k, v, _ = F.make_qkv(seed)
        n = q.shape[2]
        dense, _ = F.masked_attention(q, k, v, torch.ones(len(F.HEADS), n, n, dtype=torch.bool))
        # one assign from the exact run's converged key centroids: labels changed, objective of each clustering
        x = k[0].float()
        cent = kr.kmeans_reference(x, kr.init_centroids_strided_reference(x, a.ck), a.iters)[1]
        with fp8_assign():
            cent8 = kr.kmeans_reference(x, kr.init_centroids_strided_reference(x, a.ck), a.iters)[1]
        changed = float((kr.kmeans_assign_reference(x, cent) != kr.kmeans_assign_fp8_reference(x, cent)).float().mean())
        row = {"seed": seed, "labels_changed_one_assign": changed,
               "objective_exact": objective(x, cent), "objective_fp8": objective(x, cent8), "targets": {}}
        for target in (0.1, 0.15, 0.25):
            r = run_case(q, k, v, dense, target, a.cq, a.ck, a.iters)
            row["targets"][target] = {t: {"error": r[t]["error"], "density": r[t]["density"]} for t in r}
        rows.append(row)
        print(row, flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "probe_fp8_assign_cpu.json"), "w") as f:
        json.dump({"cq": a.cq, "ck": a.ck, "iters": a.iters, "rows": rows}, f, indent=1)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    lines = ["# An FP8 k-means assign, emulated (CPU)", "",
             f"bench_fidelity's synthetic attention ({F.FRAMES}x{F.HEIGHT}x{F.WIDTH} tokens, {len(F.HEADS)} heads, head "
             f"dim {F.HEAD_DIM}), Cq/Ck = {a.cq}/{a.ck}, {a.iters} k-means iterations from the strided start, mean over "
             f"{a.seeds} seeds. FP8: e4m3 operands with a scale per token and one per head for the centroids (amax / 448), fp32 "
             "accumulation, exact centroid norms.", "",
             f"- keys' labels changed by one FP8 assign from the same (converged) centroids: "
             f"{100 * mean([r['labels_changed_one_assign'] for r in rows]):.2f}%",
             f"- k-means objective of the keys (mean squared distance), exact / FP8 assign: "
             f"{mean([r['objective_exact'] for r in rows]):.3f} / {mean([r['objective_fp8'] for r in rows]):.3f}", "",
             "| target density | density, exact / FP8 | error vs dense, exact | error, FP8 assign |", "|---|---|---|---|"]
    for target in (0.1, 0.15, 0.25):
        ex = [r["targets"][target]["exact"] for r in rows]
        f8 = [r["targets"][target]["fp8"] for r in rows]
        lines.append(f"| {target} | {mean([e['density'] for e in ex]):.3f} / {mean([e['density'] for e in f8]):.3f} | "
                     f"{mean([e['error'] for e in ex]):.4f} | {mean([e['error'] for e in f8]):.4f} |")
    with open(os.path.join(a.out, "probe_fp8_assign_cpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
