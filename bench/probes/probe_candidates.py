"""What the warm assign over candidate lists (``SVG2Config.kmeans_candidates``) costs in accuracy (CPU, reference).

With ``kmeans_candidates = m``, every assign of a call but the first compares each token only with the ``m``
centroids nearest its current cluster's, instead of all of them (a fraction of the distances: the assign's matmul and
argmin are most of the selection's time at 720p). This probe asks what that changes along bench_kmeans_iters'
simulated denoising trajectory (the cold first call too: its ``kmeans_iters_init`` iterations use the lists).

Per (mode, knob, m), over the warm steps: the output's relative L2 error against dense, its paired difference against
``m = 0`` (every centroid), and the k-means objective of Q and K (mean squared distance to the nearest cached
centroid) relative to ``m = 0``'s.

    .venv/bin/python bench/probes/probe_candidates.py --out DIR [--m 4 8 16 --seeds 4 --steps 24]

At the real cluster counts (GPU, Triton backend; Wan 14B 720p's latent grid of 21 x 45 x 80 = 75,600 tokens, the
public 300 / 1000 clusters; the synthetic video's objects and speeds scaled to the grid, more objects):

    python bench/probes/probe_candidates.py --out DIR --grid 21,45,80 --objects 24 --cq 300 --ck 1000 \
        --device cuda --backend triton --m 8 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

from bench_fidelity import FRAMES, HEIGHT, WIDTH, rel_error, video_args, video_grid  # noqa: E402
from bench_kmeans_iters import (  # noqa: E402
    kmeans_objective,
    paired_delta,
    paired_summary,
    trajectory_args,
    trajectory_cases,
    trajectory_setup,
    trajectory_where,
    write_trajectory_probe,
)

from svg2core import LayerState, SVG2Config, svg2_attention  # noqa: E402


def run(seeds, steps, densities, cq, ck, iters, init_iters, sigma_start, step_noise, ms, backend="reference",
        **where) -> list[dict]:
    """Rows per (seed, step, m, mode, knob); ``where``: the trajectory's grid, num_objects and device."""
    rows = []
    variants = [0, *ms]
    states = {}
    for seed, step, q, k, v, dense, mode, knob, extra in trajectory_cases(seeds, steps, densities, sigma_start,
                                                                           step_noise, **where):
        for m in variants:
            cfg = SVG2Config(mode=mode, num_q_clusters=cq, num_k_clusters=ck, kmeans_iters_init=init_iters,
                             kmeans_iters=iters, kmeans_candidates=m, **extra)
            state = states.setdefault((seed, m, mode, knob), LayerState())
            out, dens = svg2_attention(q, k, v, cfg, state, backend=backend)
            cent = state.get(0)
            rows.append(dict(seed=seed, step=step, m=m, mode=mode, knob=knob, error=rel_error(out, dense),
                             density=dens.mean().item(), obj_q=kmeans_objective(q, cent.q),
                             obj_k=kmeans_objective(k, cent.k)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    trajectory_args(ap)
    ap.add_argument("--iters", type=int, default=SVG2Config().kmeans_iters)
    ap.add_argument("--m", type=int, nargs="+", default=[4, 8, 16])
    video_args(ap)
    args = ap.parse_args()
    grid = video_grid(ap, args)
    rows = run(range(args.seeds), args.steps, args.densities, args.cq, args.ck, args.iters, args.init_iters,
               args.sigma_start, args.step_noise, args.m, args.backend, grid=grid, num_objects=args.objects,
               device=args.device)
    summary = paired_summary(rows, "m", [0, *args.m], 0, ratios=("obj_q", "obj_k"))
    card, where = trajectory_where(args)
    stem = (f"probe_candidates_{where}" + ("" if (args.cq, args.ck) == (16, 64) else f"_{args.cq}_{args.ck}")
            + ("" if grid == (FRAMES, HEIGHT, WIDTH) else "_{}x{}x{}".format(*grid)))
    intro = (trajectory_setup(args, grid, "probe_candidates.py") + " m: candidates per cluster (0: every centroid). "
             "error: relative L2 error of the output against dense over the warm steps; delta: paired difference "
             "against m = 0 (same seed and step), mean +- std over seeds; objective: the k-means objective relative "
             "to m = 0's.")
    write_trajectory_probe(Path(args.out), stem, args, summary, rows,
                           f"The warm assign over candidate lists: accuracy along the simulated trajectory ({card})",
                           intro, [("m", lambda r: str(r["m"])), ("density", lambda r: f"{r['density']:.4f}"),
                                   ("error", lambda r: f"{r['error']:.4f}"), ("delta vs m = 0", paired_delta),
                                   ("Q objective", lambda r: f"{r['obj_q_ratio']:.4f}"),
                                   ("K objective", lambda r: f"{r['obj_k_ratio']:.4f}")])


if __name__ == "__main__":
    main()
