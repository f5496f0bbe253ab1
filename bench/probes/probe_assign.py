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

import bench_selection as S  # noqa: E402
from bench_sparse_attn import time_ms  # noqa: E402
from probe_io import ProbeResults, kmeans_shapes, probe_args, selection_ab_lines  # noqa: E402

import svg2core.ops.kmeans.kmeans as km  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

SHAPES = kmeans_shapes()  # every k-means problem of the benchmark models
SELECTION = (("wan1.3b-480p", 12, 32760, 0, 100, 500), ("wan1.3b-480p", 12, 32760, 0, 300, 1000),
             ("wan14b-720p", 40, 75600, 0, 300, 1000))


def assign_case(name, h, n, c, dev, res):
    torch.manual_seed(5)
    x = torch.randn(1, h, n, 128, device=dev, dtype=torch.bfloat16)
    cent = x[:, :, :: n // c][:, :, :c].float().reshape(h, c, 128).contiguous() + 0.01
    ws = Workspace()
    lab_t = torch.empty(h, n, dtype=torch.int32, device=dev)
    lab_g = torch.empty_like(lab_t)
    default = km.ASSIGN_PACKED_ARGMIN
    km.ASSIGN_PACKED_ARGMIN = False
    km.kmeans_assign(x, cent, lab_t, workspace=ws)
    ms_t = time_ms(lambda: km.kmeans_assign(x, cent, lab_t, workspace=ws), reps=20)
    km.ASSIGN_PACKED_ARGMIN = True
    lab_g.fill_(-1)
    km.kmeans_assign(x, cent, lab_g, workspace=ws)
    ms_g = time_ms(lambda: km.kmeans_assign(x, cent, lab_g, workspace=ws), reps=20)
    km.ASSIGN_PACKED_ARGMIN = default
    same = (lab_t == lab_g).float().mean().item()
    valid = bool(((lab_g >= 0) & (lab_g < c)).all().item())
    xs = x[0, :2].float()  # two heads: fp32 distances of both kernels' choices
    d = torch.cdist(xs, cent[:2]) ** 2
    gap = (torch.gather(d, 2, lab_g[:2, :, None].long()) - torch.gather(d, 2, lab_t[:2, :, None].long())).abs()
    tf = 2 * h * n * c * 128 / 1e9
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c, "labels_equal": same, "labels_valid": valid,
           "max_gap": gap.max().item(), "mean_dist": d.mean().item(), "pair_ms": ms_t, "packed_ms": ms_g,
           "pair_tflops": tf / ms_t, "packed_tflops": tf / ms_g}
    row["ok"] = valid and same > 0.99 and row["max_gap"] <= 1e-2 * row["mean_dist"]
    res["assign"].append(row)
    print(json.dumps(row), flush=True)


def main() -> None:
    opts = probe_args()
    dev = torch.device("cuda")
    out = ProbeResults(opts.out, "probe_assign_packed", assign=[], selection=[])
    res, save, card_name = out.data, out.save, out.device

    for shape in SHAPES:
        assign_case(*shape, dev, res)
        save()
    if not all(r["ok"] for r in res["assign"]):
        print("the packed argmin disagrees with the pair argmin: no selection timing", flush=True)
    elif not opts.no_selection:
        default = km.ASSIGN_PACKED_ARGMIN
        for name, h, nv, t, cq, ck in SELECTION:
            for flag in (False, True):
                km.ASSIGN_PACKED_ARGMIN = flag
                r = S.time_shape(name, h, nv, t, cq, ck, dev, legacy=False, stages=False)
                r["packed_argmin"] = flag
                res["selection"].append(r)
                save()
                print(json.dumps(r), flush=True)
                torch.cuda.empty_cache()
        km.ASSIGN_PACKED_ARGMIN = default
    lines = [f"# k-means assign: (value, index) argmin vs packed int32 keys ({card_name})", "",
             "| shape | labels equal | max gap / mean dist | pair ms | packed ms | pair TFLOP/s | packed TFLOP/s |",
             "|---|---|---|---|---|---|---|"]
    for r in res["assign"]:
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | {r['labels_equal']:.5f} | "
                     f"{r['max_gap'] / r['mean_dist']:.1e} | {r['pair_ms']:.3f} | {r['packed_ms']:.3f} | "
                     f"{r['pair_tflops']:.0f} | {r['packed_tflops']:.0f} |")
    if res["selection"]:
        lines += selection_ab_lines(res["selection"], "pair argmin", "packed argmin")
    out.finish(lines)


if __name__ == "__main__":
    main()
