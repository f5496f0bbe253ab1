"""Whole sparse attention calls (selection + attention) with the heads in groups: does each group's selection hide
beside the previous group's attention? ``svg2core.attention.HEAD_GROUPS`` = 1 (one selection, then one attention
launch) against 2 and 4 groups, with the groups' selection stream at normal and at high priority
(``HEAD_GROUP_PRIORITY``). The pipeline step's shapes, clusters and fixed densities (bench_pipeline_step), random bf16
q / k / v, warm centroids (2 k-means iterations per call), each variant captured in a CUDA graph; cuDNN dense
attention of the same shape in the same run.

Correctness first: from the same cached centroids, every variant's eager call must give the output, density and
centroids of the ungrouped call bit for bit (every stage is per head). Then the graphs' replays are timed in
alternating rounds (best of 3).

    python bench/probes/probe_head_groups.py --out DIR [--cases wan14b-720p:0.25,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_selection as S  # noqa: E402
import probe_io as P  # noqa: E402

import svg2core.attention as attention  # noqa: E402
from svg2core import LayerState, SVG2Config, Workspace, svg2_attention  # noqa: E402

# name -> heads, video tokens, text tokens (HunyuanVideo: the pipeline's packed prompt, 192 valid of 256), Cq, Ck
SHAPES = {"wan1.3b-480p": (12, 32760, 0, 100, 500), "wan14b-720p": (40, 75600, 0, 300, 1000),
          "hunyuan-720p": (24, 118800, 192, 400, 1000)}
VARIANTS = {"1 group": (1, 0), "2 groups": (2, 0), "2 groups high priority": (2, -1), "4 groups": (4, 0),
            "4 groups high priority": (4, -1)}


def dense_ms(q, k, v) -> float:
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        return S.graph_ms(lambda: F.scaled_dot_product_attention(q, k, v))


def case(name: str, density: float, dev, variants: dict) -> dict:
    h, nv, t, cq, ck = SHAPES[name]
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, h, nv + t, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    cfg = SVG2Config(mode="fixed_density", target_density=density, num_q_clusters=cq, num_k_clusters=ck,
                     kmeans_iters_init=50, kmeans_iters=2)
    state = LayerState()
    svg2_attention(q, k, v, cfg, state, num_dense_tokens=t, workspace=Workspace())  # cold: 50 iterations
    start = (state.get(0).q.clone(), state.get(0).k.clone())

    def restore():
        state.get(0).q.copy_(start[0])
        state.get(0).k.copy_(start[1])

    row: dict = {"shape": name, "heads": h, "video_tokens": nv, "text_tokens": t, "Cq": cq, "Ck": ck,
                 "target_density": density, "variants": {}}
    want = None
    graphs = {}
    keep = []  # each graph's workspace and output stay alive while graphs replay
    for label, (groups, priority) in variants.items():
        with P.settings((attention, "HEAD_GROUPS", groups), (attention, "HEAD_GROUP_PRIORITY", priority)):
            ws = Workspace()
            restore()
            out, dens = svg2_attention(q, k, v, cfg, state, num_dense_tokens=t, workspace=ws)
            got = (out, dens, state.get(0).q.clone(), state.get(0).k.clone())
            if want is None:
                want = got
            equal = all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
            row["variants"][label] = {"groups": groups, "priority": priority, "equal_to_one_group": equal,
                                      "density": dens.mean().item()}
            res = {}

            def call(ws=ws, res=res):
                res["out"] = svg2_attention(q, k, v, cfg, state, num_dense_tokens=t, workspace=ws)

            graphs[label] = S.capture_graph(call)
            keep.append((ws, res))
    # a replay runs the settings captured in its graph: time them alternately
    times = P.alternating_times({label: g.replay for label, g in graphs.items()})
    for label, ms in times.items():
        row["variants"][label].update(ms=min(ms), rounds_ms=ms)
    row["dense_cudnn_ms"] = dense_ms(q, k, v)
    base = row["variants"]["1 group"]["ms"] if "1 group" in row["variants"] else None
    for r in row["variants"].values():
        r["x_dense"] = r["ms"] / row["dense_cudnn_ms"]
        r["vs_one_group"] = r["ms"] / base if base else None
    del graphs, keep
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="wan14b-720p:0.25,hunyuan-720p:0.25,wan1.3b-480p:0.15,wan14b-720p:0.15")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated labels of VARIANTS")
    args = ap.parse_args()
    dev = torch.device("cuda")
    variants = {label: VARIANTS[label] for label in args.variants.split(",")}
    out = P.ProbeResults(args.out, "probe_head_groups", rows=[])
    for spec in args.cases.split(","):
        name, density = spec.split(":")
        row = case(name, float(density), dev, variants)
        print(json.dumps(row), flush=True)
        out.data["rows"].append(row)
        out.save()
        torch.cuda.empty_cache()
    lines = [f"# Whole sparse attention calls with the heads in groups ({out.device})", "",
             "svg2_attention, fixed density, random bf16 q / k / v, warm centroids (2 k-means iterations per call), "
             "CUDA-graph replay, best of 3 alternating rounds. groups: attention.HEAD_GROUPS; high priority: the "
             "groups' selection stream at priority -1. equal: output, density and centroids bit-identical to one "
             "group's from the same start. dense: cuDNN SDPA of the same shape, same run.", "",
             "| shape | density | variant | equal | ms | dense ms | x dense time | vs 1 group |",
             "|---|---|---|---|---|---|---|---|"]
    for row in out.data["rows"]:
        for label, r in row["variants"].items():
            lines.append(f"| {row['shape']} {row['Cq']}/{row['Ck']} | {row['target_density']:.2f} | {label} | "
                         f"{r['equal_to_one_group']} | {r['ms']:.3f} | {row['dense_cudnn_ms']:.3f} | "
                         f"{r['x_dense']:.3f} | {r['vs_one_group']:.3f} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
