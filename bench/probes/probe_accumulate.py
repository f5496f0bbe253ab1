"""The k-means update without a sort (``kmeans.ACCUMULATE_MAX_CLUSTERS``) against the sorted one, in one run (GPU).

    python bench/probes/probe_accumulate.py --out DIR [--no-selection]

With it, each assign program also sums its blocks' points per cluster (a one-hot matmul into a (C_POW2, D) fp32
register accumulator) and a small kernel adds the programs' partials in program order; an iteration reads the points
once and skips the count-scan, the scatter and the segment-mean pass (the call's last assign still writes labels and
block counts for the one sort the permutation needs). Only clusterings of up to 128 clusters without ``rows_out``: at
the benchmark shapes, the 480p query side (100 clusters).

1. Correctness on every shape, from the same warm centroids, 2 iterations: the share of labels equal to the sorted
   path's (the centroids differ by fp32 summation order, so near-ties may flip), the largest centroid difference
   relative to the centroids' scale, perm / offsets equal to a sort of the path's own labels, and a second run bit
   for bit equal to the first.
2. The k-means alone (2 iterations, CUDA-graph replay), both paths, 3 alternating rounds.
3. Unless --no-selection: the whole selection at 480p 100 / 500 (bench_selection.time_shape), off then on.

Writes DIR/probe_accumulate_<card>.json and a markdown table.
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
from svg2core.ops.permute import sort_by_cluster_reference  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

# (name, heads, tokens, clusters): the 480p query side, and two more counts the accumulator holds
SHAPES = (("wan1.3b-480p Q 100", 12, 32760, 100), ("wan1.3b-480p Q 64", 12, 32760, 64),
          ("wan14b-720p Q 128", 40, 75600, 128))


def accumulate(on: bool):
    return P.setting(km, "ACCUMULATE_MAX_CLUSTERS", km.ACCUMULATE_LIMIT if on else 0)


def shape_case(name, h, n, c, dev) -> dict:
    x, start = P.kmeans_problem(h, n, c, dev)
    batched_kmeans(x, start, 3, Workspace(), "q")  # warm centroids, as at a later denoising step
    runs, graphs = {}, {}
    for on in (False, True, True):
        with accumulate(on):
            cent = start.clone()
            ws = Workspace()
            labels, perm, offsets = batched_kmeans(x, cent, 2, ws, "q")
            torch.cuda.synchronize()
            runs.setdefault(on, []).append((labels.clone(), perm.clone(), offsets.clone(), cent.clone()))
            if on not in graphs:
                cent_g = start.clone()
                graphs[on] = (S.capture_graph(lambda cent_g=cent_g, ws=ws: batched_kmeans(x, cent_g, 2, ws, "q")),
                              cent_g, ws)
    (l0, _, _, c0), (l1, p1, o1, c1), second = runs[False][0], runs[True][0], runs[True][1]
    p_ref, o_ref = sort_by_cluster_reference(l1, c)
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c,
           "labels_equal": (l0 == l1).float().mean().item(),
           "centroid_max_rel_diff": ((c1 - c0).abs().max() / c0.abs().max()).item(),
           "perm_offsets_equal_sort": bool(torch.equal(p1, p_ref) and torch.equal(o1, o_ref)),
           "repeatable": all(torch.equal(a, z) for a, z in zip(runs[True][0], second, strict=True))}
    row["ok"] = (row["labels_equal"] > 0.99 and row["centroid_max_rel_diff"] < 1e-2 and row["perm_offsets_equal_sort"]
                 and row["repeatable"])
    times = P.alternating_times({on: g[0].replay for on, g in graphs.items()})
    row["sorted_ms"], row["accumulate_ms"] = min(times[False]), min(times[True])
    row["rounds_ms"] = {str(k): v for k, v in times.items()}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    opts = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(opts.out, "probe_accumulate", kmeans=[], selection=[])
    P.run_shapes(out, "kmeans", shape_case, SHAPES, dev)
    ok = all(r["ok"] for r in out.data["kmeans"])
    if not ok:
        print("the update without a sort disagrees with the sorted one: no selection timing", flush=True)
    elif not opts.no_selection:
        P.time_selection_ab(out, accumulate, dev, shapes=(("wan1.3b-480p", 12, 32760, 0, 100, 500),))
    lines = [f"# k-means update without a sort vs the sorted update ({out.device})", "",
             "2 warm iterations, CUDA-graph replay, best of 3 alternating rounds. labels equal: share of tokens with "
             "the sorted path's label (centroids differ by fp32 summation order). rel diff: largest centroid "
             "difference / largest centroid entry.", "",
             "| shape | labels equal | centroid rel diff | perm / offsets = sort | repeatable | sorted ms | "
             "without a sort ms |", "|---|---|---|---|---|---|---|"]
    for r in out.data["kmeans"]:
        lines.append(f"| {r['shape']} | {r['labels_equal']:.5f} | {r['centroid_max_rel_diff']:.1e} | "
                     f"{r['perm_offsets_equal_sort']} | {r['repeatable']} | {r['sorted_ms']:.4f} | "
                     f"{r['accumulate_ms']:.4f} |")
    if out.data["selection"]:
        lines += P.selection_ab_lines(out.data["selection"], "sorted", "without a sort")
    out.finish(lines)


if __name__ == "__main__":
    main()
