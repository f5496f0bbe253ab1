"""The warm assign over candidate lists (``SVG2Config.kmeans_candidates``) against every centroid, in one run (GPU).

    python bench/probes/probe_candidates_gpu.py --out DIR [--m 16 32] [--no-selection | --parts | --more-shapes]

1. The k-means alone at the benchmark shapes: 2 warm iterations (the second assign over the lists when m > 0), from
   the same warm centroids, CUDA-graph replay, best of 3 alternating rounds. Beside each time: the share of final
   labels equal to m = 0's, and the k-means objective (mean squared distance of the points to their final cluster's
   centroid) relative to m = 0's. The points are random (bf16 N(0, 1)): clusters with little structure, the hard case
   for lists (tokens move farthest).
2. The lists kernel and the list assign alone, once each (graph replay), at the key shapes.
3. Unless --no-selection: the whole selection (bench_selection.time_shape) at 480p 100 / 500 and Wan 14B 300 / 1000,
   m = 0 then each m.

``--parts``: only the list kernel and the list assign alone, by launch shape. ``--more-shapes``: only the whole
selection at Wan I2V 480p 200 / 1000 and HunyuanVideo 720p 400 / 1000 (probe_candidates_selection_<card>).

Writes DIR/probe_candidates_<card>.json and a markdown table.
"""

from __future__ import annotations

import argparse
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
from svg2core.ops.kmeans.kmeans import kmeans_assign_candidates  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

SHAPES = P.kmeans_shapes("wan1.3b-480p Q 100", "wan1.3b-480p K 500", "wan14b-720p Q 300", "wan14b-720p K 1000")


def objective(x: torch.Tensor, cent: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over (head, point) of ``||x - cent[label]||^2``."""
    h, c, d = cent.shape
    rows = torch.gather(cent, 1, labels.long()[:, :, None].expand(-1, -1, d))
    return ((x[0].float() - rows) ** 2).sum(-1).mean().item()


def shape_case(name, h, n, c, dev, ms) -> dict:
    x, start = P.kmeans_problem(h, n, c, dev)
    batched_kmeans(x, start, 3, Workspace(), "w")  # warm centroids, as at a later denoising step
    res, graphs, ref = {"shape": name, "heads": h, "tokens": n, "clusters": c, "variants": {}}, {}, None
    for m in (0, *ms):
        cent, ws = start.clone(), Workspace()
        labels, _, _ = batched_kmeans(x, cent, 2, ws, "w", candidates=m)
        torch.cuda.synchronize()
        row = {"objective": objective(x, cent, labels)}
        if ref is None:
            ref = (labels.clone(), row["objective"])
        row["labels_equal"] = (labels == ref[0]).float().mean().item()
        row["objective_ratio"] = row["objective"] / ref[1]
        cent_g = start.clone()
        graphs[m] = (S.capture_graph(lambda cent_g=cent_g, ws=ws, m=m: batched_kmeans(x, cent_g, 2, ws, "w",
                                                                                      candidates=m)), cent_g, ws)
        res["variants"][m] = row
    times = P.alternating_times({m: g[0].replay for m, g in graphs.items()})
    for m, ts in times.items():
        res["variants"][m]["ms"] = min(ts)
        res["variants"][m]["rounds_ms"] = ts
    # the list kernel and list assign alone (the second iteration's inputs: labels / perm of the first)
    for m in ms:
        cent, ws = start.clone(), Workspace()
        labels, perm, offsets = batched_kmeans(x, cent, 1, ws, "w")
        lab0 = labels.clone()

        def assign(m=m, ws=ws, cent=cent, labels=labels, perm=perm, offsets=offsets, lab0=lab0):
            labels.copy_(lab0)
            kmeans_assign_candidates(x, cent, labels, perm, offsets, m, workspace=ws, name="w")

        res["variants"][m]["list_assign_with_copy_ms"] = S.graph_ms(assign)
    print(json.dumps(res), flush=True)
    return res


# launch shapes of the two kernels timed alone by --parts: list kernel (rows, columns per step, warps); list assign
# (tokens per program, warps)
LIST_SHAPES = ((64, 128, 8), (64, 64, 4), (64, 64, 8), (128, 64, 8), (128, 128, 8), (128, 128, 16), (32, 128, 4))
ASSIGN_SHAPES = ((128, 4), (64, 2), (64, 4), (32, 2))


def parts_case(name, h, n, c, dev, ms) -> dict:
    """The list kernel and the list assign alone (graph replay), by launch shape, on the second iteration's inputs."""
    x, start = P.kmeans_problem(h, n, c, dev)
    batched_kmeans(x, start, 3, Workspace(), "w")
    cent, ws = start.clone(), Workspace()
    labels, perm, offsets = batched_kmeans(x, cent, 1, ws, "w")
    lab0 = labels.clone()
    cent_lp, cent_sq = km._prepare(x, cent, ws, "w", False)
    res = {"shape": name, "heads": h, "tokens": n, "clusters": c, "lists": [], "assign": []}
    for m in ms:
        for rows, block, warps in LIST_SHAPES:
            with P.settings((km, "CANDIDATE_ROWS", rows), (km, "CANDIDATE_LIST_BLOCK", block),
                            (km, "CANDIDATE_LIST_WARPS", warps)):
                ms_ = S.graph_ms(lambda m=m: km.candidate_lists(x, cent_lp, cent_sq, c, m, ws, "w"))
            res["lists"].append({"m": m, "rows": rows, "block": block, "warps": warps, "ms": ms_})
        lists = km.candidate_lists(x, cent_lp, cent_sq, c, m, ws, "w")
        copy_ms = S.graph_ms(lambda: labels.copy_(lab0))
        for block_n, warps in ASSIGN_SHAPES:
            with P.setting(km, "CANDIDATE_TILE", km.AssignTile(block_n, 0, warps, 2)):
                def assign(lists=lists):
                    labels.copy_(lab0)
                    km.assign_over_lists(x, perm, labels, cent_lp, cent_sq, lists, c)
                ms_ = S.graph_ms(assign) - copy_ms
            res["assign"].append({"m": m, "block_n": block_n, "warps": warps, "ms": ms_})
    full = S.graph_ms(lambda: km.kmeans_assign(x, cent, labels, workspace=ws, prepared=True, name="w"))
    res["full_assign_ms"] = full
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--m", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--no-selection", action="store_true")
    ap.add_argument("--parts", action="store_true", help="only the two kernels alone, by launch shape")
    ap.add_argument("--more-shapes", action="store_true",
                    help="only the whole selection, at Wan I2V 480p 200 / 1000 and HunyuanVideo 720p 400 / 1000")
    opts = ap.parse_args()
    dev = torch.device("cuda")
    if opts.more_shapes:  # the whole selection only, at the other public cluster counts
        out = P.ProbeResults(opts.out, "probe_candidates_selection", selection=[])
        time_selection(out, MORE_SHAPES, opts.m, dev)
        out.finish([f"# The whole selection with candidate lists ({out.device})", *selection_lines(
            out.data["selection"])])
        return
    if opts.parts:
        out = P.ProbeResults(opts.out, "probe_candidates_parts", parts=[])
        for shape in P.kmeans_shapes("wan1.3b-480p K 500", "wan14b-720p K 1000", "wan14b-720p Q 300"):
            out.data["parts"].append(parts_case(*shape, dev, opts.m))
            out.save()
            torch.cuda.empty_cache()
        lines = [f"# The list kernel and the list assign alone, by launch shape ({out.device})", "",
                 "CUDA-graph replay; the assign's time less a labels copy's.", "",
                 "| shape | full assign ms | m | kernel | shape | ms |", "|---|---|---|---|---|---|"]
        for r in out.data["parts"]:
            for v in r["lists"]:
                lines.append(f"| {r['shape']} | {r['full_assign_ms']:.4f} | {v['m']} | lists | "
                             f"{v['rows']} rows, {v['block']} cols, {v['warps']} warps | {v['ms']:.4f} |")
            for v in r["assign"]:
                lines.append(f"| {r['shape']} | {r['full_assign_ms']:.4f} | {v['m']} | assign | "
                             f"{v['block_n']} tokens, {v['warps']} warps | {v['ms']:.4f} |")
        out.finish(lines)
        return
    out = P.ProbeResults(opts.out, "probe_candidates", kmeans=[], selection=[])
    for shape in SHAPES:
        out.data["kmeans"].append(shape_case(*shape, dev, opts.m))
        out.save()
        torch.cuda.empty_cache()
    if not opts.no_selection:
        time_selection(out, SELECTION_SHAPES, opts.m, dev)
    lines = [f"# k-means: the warm assign over candidate lists against every centroid ({out.device})", "",
             "2 warm iterations (the second assign over the lists when m > 0), CUDA-graph replay, best of 3 alternating "
             "rounds, random bf16 points. labels equal: share of final labels equal to m = 0's. objective: mean "
             "squared distance to the final cluster's centroid, relative to m = 0's. list assign: the list kernel + "
             "the list assign + a labels copy + the centroid preparation launch, alone.", "",
             "| shape | m | k-means ms | labels equal | objective | list assign ms |", "|---|---|---|---|---|---|"]
    for r in out.data["kmeans"]:
        for m, v in r["variants"].items():
            la = v.get("list_assign_with_copy_ms")
            lines.append(f"| {r['shape']} | {m} | {v['ms']:.4f} | {v['labels_equal']:.4f} | "
                         f"{v['objective_ratio']:.4f} | {'' if la is None else f'{la:.4f}'} |")
    out.finish(lines + selection_lines(out.data["selection"]))


# whole-selection shapes (name, heads, video tokens, text tokens, Cq, Ck): the benchmark's, and with --more-shapes Wan
# I2V 480p's public 200 / 1000 and HunyuanVideo 720p's 400 / 1000
SELECTION_SHAPES = (("wan1.3b-480p", 12, 32760, 0, 100, 500), ("wan14b-720p", 40, 75600, 0, 300, 1000))
MORE_SHAPES = (("wan1.3b-480p", 12, 32760, 0, 200, 1000), ("hunyuan-720p", 24, 118800, 256, 400, 1000))


def time_selection(out, shapes, ms, dev) -> None:
    """bench_selection.time_shape of every shape with m = 0 and each of ``ms``, into ``out.data["selection"]``."""
    for name, h, nv, t, cq, ck in shapes:
        for m in (0, *ms):
            r = S.time_shape(name, h, nv, t, cq, ck, dev, legacy=False, stages=False, candidates=m)
            out.data["selection"].append(r)
            out.save()
            print(json.dumps(r), flush=True)
            torch.cuda.empty_cache()


def selection_lines(rows: list[dict]) -> list[str]:
    """Markdown table of the whole-selection rows (none: no lines)."""
    if not rows:
        return []
    lines = ["", "Whole selection (2 warm iterations on Q and K, the second over the lists where m > 0 and C >= 8 m, "
             "+ scoring + selection + K/V gather, CUDA-graph replay, random bf16 inputs):", "",
             "| shape | Cq/Ck | m | dense ms | selection ms | % of dense |", "|---|---|---|---|---|---|"]
    for r in rows:
        dense = r["dense_sdpa_cudnn_ms"]
        lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | {r['kmeans_candidates']} | {dense:.2f} | "
                     f"{r['selection_graph_ms']:.3f} | {100 * r['selection_graph_ms'] / dense:.2f}% |")
    return lines


if __name__ == "__main__":
    main()
