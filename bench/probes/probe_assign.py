"""The k-means assign's two argmins, (value, index) pairs and packed int32 keys (``ASSIGN_PACKED_ARGMIN``), in one
run (GPU).

    python bench/probes/probe_assign.py --out DIR [--no-selection]

1. Correctness: on each shape, the labels of both variants for the same points and centroids: the share that
   agree, and the largest distance gap of a disagreement over the fp32 distances of two heads (near-ties may flip).
2. The assign alone, both variants, timed back to back (bench_sparse_attn.time_ms), TFLOP/s of its dot.
3. Unless --no-selection: the whole selection (bench_selection.time_shape: 2 warm k-means iterations on Q and K,
   scoring, selection, K/V gather, CUDA-graph replay) with the packed argmin off and on, against cuDNN dense.

Session 6 used this harness for a Gluon assign (commit 617f40b: 1.7x slower, removed; probe_assign_h100.md).

Writes DIR/probe_assign_<card>.json and a markdown table.
"""

from __future__ import annotations

import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import probe_io as P  # noqa: E402
from bench_sparse_attn import time_ms  # noqa: E402

import svg2core.ops.kmeans.kmeans as km  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

SHAPES = P.kmeans_shapes()  # every k-means problem of the benchmark models


def assign_case(name, h, n, c, dev) -> dict:
    x, cent = P.kmeans_problem(h, n, c, dev)
    ws = Workspace()
    labels, ms = {}, {}
    for packed in (False, True):
        lab = torch.full((h, n), -1, dtype=torch.int32, device=dev)
        with P.setting(km, "ASSIGN_PACKED_ARGMIN", packed):
            km.kmeans_assign(x, cent, lab, workspace=ws)
            ms[packed] = time_ms(lambda lab=lab: km.kmeans_assign(x, cent, lab, workspace=ws), reps=20)
        labels[packed] = lab
    tf = 2 * h * n * c * 128 / 1e9
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c, **P.label_agreement(x, cent, labels[False], labels[True]),
           "pair_ms": ms[False], "packed_ms": ms[True], "pair_tflops": tf / ms[False], "packed_tflops": tf / ms[True]}
    row["ok"] = row["agrees"]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    opts = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(opts.out, "probe_assign_packed", assign=[], selection=[])
    res, card_name = out.data, out.device
    P.run_shapes(out, "assign", assign_case, SHAPES, dev)
    if not all(r["ok"] for r in res["assign"]):
        print("the packed argmin disagrees with the pair argmin: no selection timing", flush=True)
    elif not opts.no_selection:
        P.time_selection_ab(out, lambda on: P.setting(km, "ASSIGN_PACKED_ARGMIN", on), dev)
    lines = [f"# k-means assign: (value, index) argmin vs packed int32 keys ({card_name})", "",
             "| shape | labels equal | max gap / mean dist | pair ms | packed ms | pair TFLOP/s | packed TFLOP/s |",
             "|---|---|---|---|---|---|---|"]
    for r in res["assign"]:
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | {r['labels_equal']:.5f} | "
                     f"{r['max_gap'] / r['mean_dist']:.1e} | {r['pair_ms']:.3f} | {r['packed_ms']:.3f} | "
                     f"{r['pair_tflops']:.0f} | {r['packed_tflops']:.0f} |")
    if res["selection"]:
        lines += P.selection_ab_lines(res["selection"], "pair argmin", "packed argmin")
    out.finish(lines)


if __name__ == "__main__":
    main()
