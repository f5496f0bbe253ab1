"""The k-means assign with its centroid copies padded to whole tiles (``kmeans.ASSIGN_PAD_C``), in one run (GPU).

    python bench/probes/probe_assign_pad.py --out DIR [--no-selection]

With the copies padded (zero rows, norm +inf) the assign's tile loop loads the centroid norms without masks
(``EVEN_C``): sm_90, Triton 3.6, the default 256 x 64 tile with the packed argmin (bench/probes/sass_assign.py
--even-c), 396 -> 313 instructions per tile and warp besides the 16 HGMMAs, 128 -> 115 registers. Per k-means
problem of the benchmark models: the assign with the counting sort's block histograms (as batched_kmeans runs it),
CUDA-graph replay, off and on in alternating order (best of 3 rounds), labels and counts checked equal; then, unless
--no-selection, the whole selection off and on (bench_selection.time_shape) against cuDNN dense.
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


def shape_case(name, h, n, c, dev) -> dict:
    x, cent = P.kmeans_problem(h, n, c, dev)
    tile = km.ASSIGN_TILE
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c}
    graphs, outs = {}, {}
    for pad in (False, True):
        with P.setting(km, "ASSIGN_PAD_C", pad):
            ws = Workspace()
            lab = torch.full((h, n), -1, dtype=torch.int32, device=dev)
            counts = torch.empty(h, -(-n // tile.block_n) * c, dtype=torch.int32, device=dev)

            def run(ws=ws, lab=lab, counts=counts):
                km.kmeans_assign(x, cent, lab, workspace=ws, tile=tile, block_counts=counts)

            graphs[pad] = S.capture_graph(run)  # runs once eagerly first, with the setting in force
            outs[pad] = (lab, counts)
    row["equal"] = all(torch.equal(a, b) for a, b in zip(outs[False], outs[True], strict=True))
    times = P.alternating_times({pad: graphs[pad].replay for pad in (False, True)})
    row["default_ms"], row["pad_ms"] = min(times[False]), min(times[True])
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    opts = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(opts.out, "probe_assign_pad", assign=[], selection=[])
    P.run_shapes(out, "assign", shape_case, P.kmeans_shapes(), dev)
    if not opts.no_selection and all(r["equal"] for r in out.data["assign"]):
        P.time_selection_ab(out, lambda on: P.setting(km, "ASSIGN_PAD_C", on), dev)
    lines = [f"# k-means assign with the centroid copies padded to whole tiles ({out.device})", "",
             "Assign with the block histograms, CUDA-graph replay, best of 3 alternating rounds, ms; `=`: labels and "
             "counts equal with and without the padding.", "",
             "| shape | default | padded (EVEN_C) | change | = |", "|---|---|---|---|---|"]
    for r in out.data["assign"]:
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | {r['default_ms']:.3f} | {r['pad_ms']:.3f} | "
                     f"{100 * (r['pad_ms'] / r['default_ms'] - 1):+.1f}% | {r['equal']} |")
    if out.data["selection"]:
        lines += P.selection_ab_lines(out.data["selection"], "default", "padded")
    out.finish(lines)


if __name__ == "__main__":
    main()
