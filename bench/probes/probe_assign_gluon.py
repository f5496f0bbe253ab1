"""The Gluon k-means assign (``kmeans.GLUON_ASSIGN``: packed keys, async matmuls) in several launch shapes
(``GLUON_TILES``: tokens per program, warps, register cap) against the Triton kernel, in one run (GPU, Hopper).

    python bench/probes/probe_assign_gluon.py --out DIR [--no-selection]

1. Correctness on every k-means problem of the benchmark models, each Gluon shape: the share of labels equal to
   the Triton kernel's (the packed keys' bias is the largest ``||x||^2`` of a program's block, so near-ties may
   differ), the largest fp32 distance gap of a disagreement, and the block counts (blocks of 256 tokens, the
   counting sort's) equal to a histogram of the Gluon kernel's own labels.
2. The assign alone, the Triton kernel and each Gluon shape with the block counts (as batched_kmeans runs them),
   CUDA-graph replay.
3. Unless --no-selection: the whole selection (bench_selection.time_shape, graph replay) with the Triton assign and
   with the fastest correct Gluon shape, against cuDNN dense.

Writes DIR/probe_assign_gluon_<card>.json and a markdown table.
"""

from __future__ import annotations

import contextlib
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

SHAPES = P.kmeans_shapes()
GLUON_TILES = (km.AssignTile(64, 64, 4, 3), km.AssignTile(128, 64, 8, 3), km.AssignTile(128, 64, 8, 3, maxnreg=128),
               km.AssignTile(256, 64, 8, 3))


def tile_name(t: km.AssignTile) -> str:
    return f"{t.block_n}/{t.num_warps}w" + (f"/r{t.maxnreg}" if t.maxnreg else "")


def assign_case(name, h, n, c, dev) -> dict:
    x, cent = P.kmeans_problem(h, n, c, dev)
    block = km.ASSIGN_TILE.block_n
    nb = -(-n // block)
    ws = Workspace()
    tf = 2 * h * n * c * 128 / 1e9
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c, "gluon": {}}

    def run_assign(gluon_tile):
        lab = torch.full((h, n), -1, dtype=torch.int32, device=dev)
        counts = torch.full((h, nb * c), -1, dtype=torch.int32, device=dev)

        def run():
            km.kmeans_assign(x, cent, lab, workspace=ws, block_counts=counts)

        with P.setting(km, "GLUON_ASSIGN", gluon_tile is not None), \
                P.setting(km, "GLUON_ASSIGN_TILE", gluon_tile or km.GLUON_ASSIGN_TILE):
            run()
            return lab, counts, S.graph_ms(run)

    lab_t, _, row["triton_ms"] = run_assign(None)
    row["triton_tflops"] = tf / row["triton_ms"]
    for tile in GLUON_TILES:
        lab_g, counts_g, ms_g = run_assign(tile)
        agree = P.label_agreement(x, cent, lab_t, lab_g)
        hist = torch.zeros(h, nb, c, dtype=torch.int32, device=dev)
        if agree["labels_valid"]:
            blk = (torch.arange(n, device=dev) // block).expand(h, n)
            hist.view(h, -1).scatter_add_(1, (blk * c + lab_g.long()), torch.ones_like(lab_g))
        g = {**agree, "counts_equal": bool(torch.equal(counts_g, hist.view(h, -1))), "ms": ms_g, "tflops": tf / ms_g}
        g["ok"] = agree["agrees"] and g["counts_equal"]
        row["gluon"][tile_name(tile)] = g
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    opts = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(opts.out, "probe_assign_gluon", assign=[], selection=[])
    P.run_shapes(out, "assign", assign_case, SHAPES, dev)
    names = [tile_name(t) for t in GLUON_TILES]
    ok = [t for t in GLUON_TILES if all(r["gluon"][tile_name(t)]["ok"] for r in out.data["assign"])]
    if not ok:
        print("no Gluon shape agrees with the Triton kernel: no selection timing", flush=True)
    elif not opts.no_selection:
        best = min(ok, key=lambda t: sum(r["gluon"][tile_name(t)]["ms"] for r in out.data["assign"]))
        out.data["selection_gluon_tile"] = tile_name(best)

        @contextlib.contextmanager
        def switch(on):
            with P.setting(km, "GLUON_ASSIGN", on), P.setting(km, "GLUON_ASSIGN_TILE", best):
                yield

        P.time_selection_ab(out, switch, dev)
    lines = [f"# k-means assign: Triton vs Gluon (packed keys, async matmuls) ({out.device})", "",
             "Assign with the counting sort's block counts, CUDA-graph replay, ms (TFLOP/s); Gluon shapes: tokens per "
             "program / warps / register cap. A Gluon cell is marked when its labels or counts disagree with the "
             "Triton kernel's beyond near-ties.", "",
             "| shape | Triton | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in out.data["assign"]:
        cells = [f"{r['gluon'][n]['ms']:.3f} ({r['gluon'][n]['tflops']:.0f})" + ("" if r["gluon"][n]["ok"] else " WRONG")
                 for n in names]
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | {r['triton_ms']:.3f} ({r['triton_tflops']:.0f}) | "
                     + " | ".join(cells) + " |")
    if out.data["selection"]:
        lines += P.selection_ab_lines(out.data["selection"], "Triton assign",
                                      f"Gluon assign {out.data['selection_gluon_tile']}")
    out.finish(lines)


if __name__ == "__main__":
    main()
