"""Launch shapes of the k-means assign kernel with the packed-key argmin, in one run (GPU).

    python bench/probes/probe_assign_tiles.py --out DIR [--no-selection]

The packed argmin (kmeans.ASSIGN_PACKED_ARGMIN, on since session 7) changed the kernel's registers: the sm_90
compile of bench/probes/sass_assign.py gives 255 per thread at the default 256 tokens x 64 centroids, 8 warps (one
CTA per SM) but 127 at 128 x 64, 8 warps (two). So the tile chosen for the (value, index) argmin is timed again:
1. every tile of TILES on each shape of SHAPES, with the block histograms the counting sort uses (as
   batched_kmeans runs it), labels checked against the default tile's (equal: the same argmin, other blocking);
2. unless --no-selection, the whole selection (bench_selection.time_shape, graph replay) with the default tile
   and with the tile of least total assign time, against cuDNN dense (both columns the default when it is the
   fastest).

Writes DIR/probe_assign_tiles_<card>.json and a markdown table.
"""

from __future__ import annotations

import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_selection as S  # noqa: E402
import probe_io as P  # noqa: E402

import svg2core.ops.kmeans.kmeans as km  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

# session 12: the centroid tiles' prefetch depth at the default shape (sm_90, Triton 3.6: with 2 stages the next
# tile's cp.async is issued after the epilogue and waited for at the top of the next step, so its latency is exposed;
# with 3 the copy runs a whole step ahead; 128 registers and 112 KB of shared memory, still two CTAs per SM; 4 stages,
# 128 KB, leave one)
TILES = (km.AssignTile(256, 64, 8, 2), km.AssignTile(256, 64, 8, 3), km.AssignTile(256, 64, 8, 4),
         km.AssignTile(128, 64, 8, 3), km.AssignTile(128, 64, 4, 3), km.AssignTile(256, 32, 8, 3))
SHAPES = P.kmeans_shapes()  # every k-means problem of the benchmark models


def tile_name(t: km.AssignTile) -> str:
    return f"{t.block_n}x{t.block_c}/{t.num_warps}w/{t.num_stages}s"


def shape_case(name, h, n, c, dev) -> dict:
    x, cent = P.kmeans_problem(h, n, c, dev)
    ws = Workspace()
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c, "ms": {}, "labels_equal": {}}
    ref = None
    for tile in TILES:
        lab = torch.full((h, n), -1, dtype=torch.int32, device=dev)
        counts = torch.empty(h, -(-n // tile.block_n) * c, dtype=torch.int32, device=dev)

        def run(tile=tile, lab=lab, counts=counts):
            km.kmeans_assign(x, cent, lab, workspace=ws, tile=tile, block_counts=counts)

        run()
        if ref is None:
            ref = lab.clone()
        row["labels_equal"][tile_name(tile)] = (lab == ref).float().mean().item()
        row["ms"][tile_name(tile)] = S.graph_ms(run)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    opts = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(opts.out, "probe_assign_tiles", default_tile=tile_name(km.ASSIGN_TILE), assign=[], selection=[])
    res, card_name = out.data, out.device
    P.run_shapes(out, "assign", shape_case, SHAPES, dev)
    ok = [t for t in TILES if all(r["labels_equal"][tile_name(t)] > 0.998 for r in res["assign"])]
    best = min(ok, key=lambda t: sum(r["ms"][tile_name(t)] for r in res["assign"]))
    res["best_tile"] = tile_name(best)
    default = km.ASSIGN_TILE
    if not opts.no_selection:
        P.time_selection_ab(out, lambda on: P.setting(km, "ASSIGN_TILE", best if on else default), dev)
    names = [tile_name(t) for t in TILES]
    lines = [f"# k-means assign launch shapes, packed-key argmin ({card_name})", "",
             "Assign with the counting sort's block histograms, CUDA-graph replay, ms (labels: share equal to the "
             f"first tile's, near-ties of the packed keys may differ); fastest in total: {res['best_tile']}.", "",
             "| shape | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in res["assign"]:
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | "
                     + " | ".join(f"{r['ms'][n]:.3f}" + ("" if r["labels_equal"][n] > 0.998 else " (labels differ)")
                                  for n in names) + " |")
    if res["selection"]:
        lines += P.selection_ab_lines(res["selection"], f"default tile {tile_name(default)}", f"fastest {res['best_tile']}")
    out.finish(lines)


if __name__ == "__main__":
    main()
