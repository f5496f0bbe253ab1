"""Launch shapes of the k-means update (segment-mean) kernel, in one run (GPU).

    python bench/probes/probe_update.py --out DIR

One program per cluster piece gathers its rows through ``perm`` in steps of BLOCK_N rows (``kmeans._SEGMENT_BLOCK_N``,
``_SEGMENT_WARPS`` warps, the row loop software-pipelined ``kmeans.UPDATE_STAGES`` deep). Each shape of the benchmark
models gets warm clusters (3 Lloyd iterations), then every launch shape's update is timed (CUDA-graph replay), as
the first update of a call runs it and as the last key update does (also writing the rows in sorted order,
``rows_out``), and its centroids and rows compared with the default's. Unless --no-selection, the whole selection
with the default and with the launch of least total time.

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
# (rows per step, warps, pipeline stages); the first the default
LAUNCHES = ((32, 4, 1), (32, 4, 2), (32, 4, 3), (64, 4, 2), (64, 4, 3), (16, 4, 3), (16, 4, 1), (64, 4, 1))


def launch_name(launch) -> str:
    return f"{launch[0]} rows/{launch[1]}w/{launch[2]}s"


def launch(lc):
    return P.settings((km, "_SEGMENT_BLOCK_N", lc[0]), (km, "_SEGMENT_WARPS", lc[1]), (km, "UPDATE_STAGES", lc[2]))


def shape_case(name, h, n, c, dev) -> dict:
    torch.manual_seed(9)
    x = torch.randn(1, h, n, 128, device=dev, dtype=torch.bfloat16)
    cent = x[:, :, :: n // c][:, :, :c].float().reshape(h, c, 128).contiguous()
    ws = Workspace()
    labels, perm, off = batched_kmeans(x, cent, 3, ws, "k")
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c, "ms": {}, "rows_ms": {}, "max_abs_diff": {},
           "rows_equal": {}}
    ref = ref_rows = None
    for lc in LAUNCHES:
        out = cent.clone()
        rows = torch.empty(h, n, 128, device=dev, dtype=x.dtype)

        def run(out=out):
            km.kmeans_update(x, perm, off, out, labels, workspace=ws, name="k")

        def run_rows(out=out, rows=rows):
            km.kmeans_update(x, perm, off, out, labels, workspace=ws, name="k", rows_out=rows)

        with launch(lc):
            run()
            ref = out.clone() if ref is None else ref
            out.copy_(cent)
            run_rows()
            ref_rows = rows.clone() if ref_rows is None else ref_rows
            key = launch_name(lc)
            row["max_abs_diff"][key] = (out - ref).abs().max().item()
            row["rows_equal"][key] = bool(torch.equal(rows, ref_rows))
            row["ms"][key] = S.graph_ms(run)
            row["rows_ms"][key] = S.graph_ms(run_rows)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    opts = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(opts.out, "probe_update", update=[], selection=[])
    P.run_shapes(out, "update", shape_case, SHAPES, dev)
    keys = [launch_name(lc) for lc in LAUNCHES]
    # the launch of least total time (both forms, every shape) among those that sum and gather like the default
    ok = [lc for lc in LAUNCHES
          if all(r["rows_equal"][launch_name(lc)] and r["max_abs_diff"][launch_name(lc)] < 1e-4 for r in out.data["update"])]
    best = min(ok, key=lambda lc: sum(r["ms"][launch_name(lc)] + r["rows_ms"][launch_name(lc)]
                                      for r in out.data["update"]))
    out.data["best"] = launch_name(best)
    if not opts.no_selection and best != LAUNCHES[0]:
        P.time_selection_ab(out, lambda on: launch(best if on else LAUNCHES[0]), dev)
    lines = [f"# k-means update launch shapes ({out.device})", "",
             "Segment-mean update after 3 warm iterations, CUDA-graph replay, ms: the update alone / with the rows "
             "written in sorted order (the last key update); max |centroid difference| from the first launch shape in "
             f"brackets when not 0, `rows differ` when the written rows do. Least total time: {out.data['best']}.", "",
             "| shape | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in out.data["update"]:
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | " + " | ".join(
            f"{r['ms'][k]:.3f} / {r['rows_ms'][k]:.3f}" + (f" ({r['max_abs_diff'][k]:.1e})" if r["max_abs_diff"][k] else "")
            + ("" if r["rows_equal"][k] else " rows differ") for k in keys) + " |")
    if out.data["selection"]:
        lines += P.selection_ab_lines(out.data["selection"], launch_name(LAUNCHES[0]), out.data["best"])
    out.finish(lines)


if __name__ == "__main__":
    main()
