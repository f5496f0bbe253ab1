"""Launch shapes of the k-means update (segment-mean) kernel, in one run (GPU).

    python bench/probes/probe_update.py --out DIR

One program per cluster gathers its rows through ``perm`` in steps of BLOCK_N rows (``kmeans._SEGMENT_BLOCK_N``,
``_SEGMENT_WARPS`` warps). Each shape of the benchmark models gets warm clusters (3 Lloyd iterations), then every
launch shape's update is timed (CUDA-graph replay) and its centroids compared with the default's.

Writes DIR/probe_update_<card>.json and a markdown table.
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
from svg2core.ops.kmeans import batched_kmeans  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

SHAPES = P.kmeans_shapes("wan1.3b-480p Q 100", "wan1.3b-480p K 500", "wan14b-720p Q 300", "wan14b-720p K 1000",
                       "hunyuan-720p K 1000")
LAUNCHES = ((32, 4), (16, 4), (64, 4), (32, 2), (16, 2), (64, 8))  # (rows per step, warps); the first the default


def shape_case(name, h, n, c, dev) -> dict:
    torch.manual_seed(9)
    x = torch.randn(1, h, n, 128, device=dev, dtype=torch.bfloat16)
    cent = x[:, :, :: n // c][:, :, :c].float().reshape(h, c, 128).contiguous()
    ws = Workspace()
    labels, perm, off = batched_kmeans(x, cent, 3, ws, "k")
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c, "ms": {}, "max_abs_diff": {}}
    ref = None
    for block_n, warps in LAUNCHES:
        out = cent.clone()

        def run(out=out):
            km.kmeans_update(x, perm, off, out, labels, workspace=ws, name="k")

        with P.setting(km, "_SEGMENT_BLOCK_N", block_n), P.setting(km, "_SEGMENT_WARPS", warps):
            run()
            ref = out.clone() if ref is None else ref
            key = f"{block_n} rows/{warps}w"
            row["max_abs_diff"][key] = (out - ref).abs().max().item()
            row["ms"][key] = S.graph_ms(run)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    opts = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(opts.out, "probe_update", update=[])
    P.run_shapes(out, "update", shape_case, SHAPES, dev)
    keys = [f"{b} rows/{w}w" for b, w in LAUNCHES]
    lines = [f"# k-means update launch shapes ({out.device})", "",
             "Segment-mean update after 3 warm iterations, CUDA-graph replay, ms (max |centroid difference| from the "
             "first launch shape in brackets when not 0).", "",
             "| shape | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in out.data["update"]:
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | " + " | ".join(
            f"{r['ms'][k]:.3f}" + (f" ({r['max_abs_diff'][k]:.1e})" if r["max_abs_diff"][k] else "") for k in keys)
            + " |")
    out.finish(lines)


if __name__ == "__main__":
    main()
