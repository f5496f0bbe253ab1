"""The Gluon k-means assign (``kmeans.GLUON_ASSIGN``: packed keys, async matmuls, 64 tokens per program) against the
Triton kernel, in one run (GPU, Hopper).

    python bench/probes/probe_assign_gluon.py --out DIR [--no-selection]

1. Correctness on every k-means problem of the benchmark models: the share of labels equal to the Triton kernel's
   (the packed keys' bias is the largest ``||x||^2`` of a program's block, 64 tokens here and 256 there, so
   near-ties may differ), the largest fp32 distance gap of a disagreement, and the block counts (blocks of 256
   tokens, the counting sort's) equal to a histogram of the Gluon kernel's own labels.
2. The assign alone, both kernels with the block counts (as batched_kmeans runs them), CUDA-graph replay.
3. Unless --no-selection: the whole selection (bench_selection.time_shape, graph replay) with the flag off and on,
   against cuDNN dense.

Writes DIR/probe_assign_gluon_<card>.json and a markdown table.
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

SHAPES = P.kmeans_shapes()


def assign_case(name, h, n, c, dev) -> dict:
    x, cent = P.kmeans_problem(h, n, c, dev)
    block = km.ASSIGN_TILE.block_n
    nb = -(-n // block)
    ws = Workspace()
    out = {}
    for gluon in (False, True):
        lab = torch.full((h, n), -1, dtype=torch.int32, device=dev)
        counts = torch.full((h, nb * c), -1, dtype=torch.int32, device=dev)

        def run(lab=lab, counts=counts):
            km.kmeans_assign(x, cent, lab, workspace=ws, block_counts=counts)

        with P.setting(km, "GLUON_ASSIGN", gluon):
            run()
            out[gluon] = (lab, counts, S.graph_ms(run))
    (lab_t, _, ms_t), (lab_g, counts_g, ms_g) = out[False], out[True]
    agree = P.label_agreement(x, cent, lab_t, lab_g)
    hist = torch.zeros(h, nb, c, dtype=torch.int32, device=dev)
    if agree["labels_valid"]:
        blk = (torch.arange(n, device=dev) // block).expand(h, n)
        hist.view(h, -1).scatter_add_(1, (blk * c + lab_g.long()), torch.ones_like(lab_g))
    tf = 2 * h * n * c * 128 / 1e9
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c, **agree,
           "counts_equal": bool(torch.equal(counts_g, hist.view(h, -1))),
           "triton_ms": ms_t, "gluon_ms": ms_g, "triton_tflops": tf / ms_t, "gluon_tflops": tf / ms_g}
    row["ok"] = (agree["labels_valid"] and row["counts_equal"] and row["labels_equal"] > 0.99
                 and row["max_gap"] <= 1e-2 * row["mean_dist"])
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    opts = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(opts.out, "probe_assign_gluon", assign=[], selection=[])
    P.run_shapes(out, "assign", assign_case, SHAPES, dev)
    if not all(r["ok"] for r in out.data["assign"]):
        print("the Gluon assign disagrees with the Triton kernel: no selection timing", flush=True)
    elif not opts.no_selection:
        P.time_selection_ab(out, lambda on: P.setting(km, "GLUON_ASSIGN", on), dev)
    lines = [f"# k-means assign: Triton vs Gluon (packed keys, async matmuls) ({out.device})", "",
             "| shape | labels equal | max gap / mean dist | counts equal | Triton ms | Gluon ms | Triton TFLOP/s | "
             "Gluon TFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for r in out.data["assign"]:
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | {r['labels_equal']:.5f} | "
                     f"{r['max_gap'] / r['mean_dist']:.1e} | {r['counts_equal']} | {r['triton_ms']:.3f} | "
                     f"{r['gluon_ms']:.3f} | {r['triton_tflops']:.0f} | {r['gluon_tflops']:.0f} |")
    if out.data["selection"]:
        lines += P.selection_ab_lines(out.data["selection"], "Triton assign", "Gluon assign")
    out.finish(lines)


if __name__ == "__main__":
    main()
