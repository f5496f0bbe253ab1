"""The whole selection with and without candidate lists at more shapes (GPU): bench_selection.time_shape, m = 0 and
each given m, graph replay.

    python bench/probes/probe_candidates_selection.py --out DIR [--m 8 16 32]

Writes DIR/probe_candidates_selection_<card>.json and a markdown table.
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

# name, heads, video tokens, text tokens, Cq, Ck: Wan I2V 480p's public 200 / 1000, HunyuanVideo 720p's 400 / 1000
SHAPES = (("wan1.3b-480p", 12, 32760, 0, 200, 1000), ("hunyuan-720p", 24, 118800, 256, 400, 1000))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--m", type=int, nargs="+", default=[8, 16, 32])
    opts = ap.parse_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(opts.out, "probe_candidates_selection", selection=[])
    for name, h, nv, t, cq, ck in SHAPES:
        for m in (0, *opts.m):
            r = S.time_shape(name, h, nv, t, cq, ck, dev, legacy=False, stages=False, candidates=m)
            out.data["selection"].append(r)
            out.save()
            print(json.dumps(r), flush=True)
            torch.cuda.empty_cache()
    lines = [f"# The whole selection with candidate lists ({out.device})", "",
             "2 warm iterations on Q and K (the second over the lists where m > 0 and C >= 8 m) + scoring + selection "
             "+ K/V gather, CUDA-graph replay, random bf16 inputs.", "",
             "| shape | Cq/Ck | m | dense ms | selection ms | % of dense |", "|---|---|---|---|---|---|"]
    for r in out.data["selection"]:
        dense = r["dense_sdpa_cudnn_ms"]
        lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | {r['kmeans_candidates']} | {dense:.2f} | "
                     f"{r['selection_graph_ms']:.3f} | {100 * r['selection_graph_ms'] / dense:.2f}% |")
    out.finish(lines)


if __name__ == "__main__":
    main()
