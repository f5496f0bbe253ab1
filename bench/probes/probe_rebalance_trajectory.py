"""What query-tile rebalancing (``SVG2Config.query_tile_rebalance``) costs in accuracy along the simulated trajectory.

bench/probes/probe_tile_rebalance.py measures the moves on cold, one-off clusterings. The product makes them after
every call's warm k-means; this probe runs that path (``svg2_attention`` with the option) along bench_kmeans_iters'
simulated denoising trajectory. Per (mode, knob, rho), over the warm steps: the density, the output's relative L2
error against dense, its paired difference against ``rho = 0`` (same seed and step) and the query tiles' cost
relative to ``rho = 0``'s (128-row tiles, a <= 64-row remainder at 0.69 of a tile, NOTES_sparse_attn.md v9).

    .venv/bin/python bench/probes/probe_rebalance_trajectory.py --out DIR [--rho 16 32]

At Wan 14B 720p's size (GPU, Triton backend):

    python bench/probes/probe_rebalance_trajectory.py --out DIR --grid 21,45,80 --objects 24 --cq 300 --ck 1000 \
        --device cuda --backend triton --seeds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

from bench_fidelity import rel_error, video_args, video_grid  # noqa: E402
from bench_kmeans_iters import (  # noqa: E402
    paired_delta,
    paired_summary,
    trajectory_args,
    trajectory_cases,
    trajectory_setup,
    trajectory_where,
    write_trajectory_probe,
)
from probe_tile_rebalance import sizes_tile_cost  # noqa: E402

from svg2core import LayerState, SVG2Config, svg2_attention  # noqa: E402
from svg2core.attention import REBALANCE_BLOCK  # noqa: E402
from svg2core.state import Workspace  # noqa: E402


def tile_cost(sizes: torch.Tensor, block: int = REBALANCE_BLOCK) -> float:
    """The query tiles' cost of clusters of ``sizes`` (probe_tile_rebalance's model)."""
    return sizes_tile_cost(sizes, block)


def run(seeds, steps, densities, cq, ck, iters, init_iters, sigma_start, step_noise, rhos, backend="reference",
        **where) -> list[dict]:
    """Rows per (seed, step, rho, mode, knob); ``where``: the trajectory's grid, num_objects and device."""
    rows = []
    states = {}
    for seed, step, q, k, v, dense, mode, knob, extra in trajectory_cases(seeds, steps, densities, sigma_start,
                                                                           step_noise, **where):
        for rho in (0, *rhos):
            cfg = SVG2Config(mode=mode, num_q_clusters=cq, num_k_clusters=ck, kmeans_iters_init=init_iters,
                             kmeans_iters=iters, query_tile_rebalance=rho, **extra)
            state, ws = states.setdefault((seed, rho, mode, knob), (LayerState(), Workspace()))
            out, dens = svg2_attention(q, k, v, cfg, state, workspace=ws, backend=backend)
            # the query-cluster sizes the call's kernel ran with (cluster_and_select writes them to the workspace)
            sizes = ws.buffer("q.sizes", (q.shape[0] * q.shape[1], min(cq, q.shape[2])), torch.int32, q.device)
            rows.append(dict(seed=seed, step=step, rho=rho, mode=mode, knob=knob, error=rel_error(out, dense),
                             density=dens.mean().item(), tiles=tile_cost(sizes.long())))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    trajectory_args(ap)
    ap.add_argument("--iters", type=int, default=SVG2Config().kmeans_iters)
    ap.add_argument("--rho", type=int, nargs="+", default=[16, 32])
    video_args(ap)
    args = ap.parse_args()
    grid = video_grid(ap, args)
    rows = run(range(args.seeds), args.steps, args.densities, args.cq, args.ck, args.iters, args.init_iters,
               args.sigma_start, args.step_noise, args.rho, args.backend, grid=grid, num_objects=args.objects,
               device=args.device)
    summary = paired_summary(rows, "rho", [0, *args.rho], 0, ratios=("tiles",))
    card, where = trajectory_where(args)
    stem = f"probe_rebalance_trajectory_{where}_{args.cq}_{args.ck}_" + "{}x{}x{}".format(*grid)
    intro = (trajectory_setup(args, grid, "probe_rebalance_trajectory.py") + f" {REBALANCE_BLOCK}-row query tiles. "
             "rho: `query_tile_rebalance` (0: off). delta: paired error difference against rho = 0 (same seed and "
             "step), mean +- std over seeds; tiles: the query tiles' cost relative to rho = 0's.")
    write_trajectory_probe(Path(args.out), stem, args, summary, rows,
                           f"Query-tile rebalancing: accuracy along the simulated trajectory ({card})", intro,
                           [("rho", lambda r: str(r["rho"])), ("density", lambda r: f"{r['density']:.4f}"),
                            ("error", lambda r: f"{r['error']:.4f}"), ("delta vs rho = 0", paired_delta),
                            ("tiles", lambda r: f"{r['tiles_ratio']:.4f}")])


if __name__ == "__main__":
    main()
