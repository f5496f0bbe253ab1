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
from probe_io import ProbeResults, kmeans_shapes, probe_args, selection_ab_lines  # noqa: E402

import svg2core.ops.kmeans.kmeans as km  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

SHAPES = kmeans_shapes()
SELECTION = (("wan1.3b-480p", 12, 32760, 0, 100, 500), ("wan1.3b-480p", 12, 32760, 0, 300, 1000),
             ("wan14b-720p", 40, 75600, 0, 300, 1000))


def assign_case(name, h, n, c, dev) -> dict:
    torch.manual_seed(5)
    x = torch.randn(1, h, n, 128, device=dev, dtype=torch.bfloat16)
    cent = x[:, :, :: n // c][:, :, :c].float().reshape(h, c, 128).contiguous() + 0.01
    block = km.ASSIGN_TILE.block_n
    nb = -(-n // block)
    ws = Workspace()
    out = {}
    for flag in (False, True):
        km.GLUON_ASSIGN = flag
        lab = torch.full((h, n), -1, dtype=torch.int32, device=dev)
        counts = torch.full((h, nb * c), -1, dtype=torch.int32, device=dev)

        def run(lab=lab, counts=counts):
            km.kmeans_assign(x, cent, lab, workspace=ws, block_counts=counts)

        run()
        torch.cuda.synchronize()
        out[flag] = (lab.clone(), counts.clone(), S.graph_ms(run))
    km.GLUON_ASSIGN = False
    (lab_t, _, ms_t), (lab_g, counts_g, ms_g) = out[False], out[True]
    valid = bool(((lab_g >= 0) & (lab_g < c)).all().item())
    hist = torch.zeros(h, nb, c, dtype=torch.int32, device=dev)
    if valid:
        blk = (torch.arange(n, device=dev) // block).expand(h, n)
        hist.view(h, -1).scatter_add_(1, (blk * c + lab_g.long()), torch.ones_like(lab_g))
    xs = x[0, :2].float()
    d = torch.cdist(xs, cent[:2]) ** 2
    gap = (torch.gather(d, 2, lab_g[:2, :, None].long().clamp(0, c - 1))
           - torch.gather(d, 2, lab_t[:2, :, None].long())).abs()
    tf = 2 * h * n * c * 128 / 1e9
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c, "labels_valid": valid,
           "labels_equal": (lab_t == lab_g).float().mean().item(), "max_gap": gap.max().item(),
           "mean_dist": d.mean().item(), "counts_equal": bool(torch.equal(counts_g, hist.view(h, -1))),
           "triton_ms": ms_t, "gluon_ms": ms_g, "triton_tflops": tf / ms_t, "gluon_tflops": tf / ms_g}
    row["ok"] = valid and row["counts_equal"] and row["labels_equal"] > 0.99 and row["max_gap"] <= 1e-2 * row["mean_dist"]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    opts = probe_args()
    dev = torch.device("cuda")
    out = ProbeResults(opts.out, "probe_assign_gluon", assign=[], selection=[])
    for shape in SHAPES:
        out.data["assign"].append(assign_case(*shape, dev))
        out.save()
        torch.cuda.empty_cache()
    if not all(r["ok"] for r in out.data["assign"]):
        print("the Gluon assign disagrees with the Triton kernel: no selection timing", flush=True)
    elif not opts.no_selection:
        for name, h, nv, t, cq, ck in SELECTION:
            for flag in (False, True):
                km.GLUON_ASSIGN = flag
                r = S.time_shape(name, h, nv, t, cq, ck, dev, legacy=False, stages=False)
                r["gluon_assign"] = flag
                out.data["selection"].append(r)
                out.save()
                print(json.dumps(r), flush=True)
                torch.cuda.empty_cache()
        km.GLUON_ASSIGN = False
    lines = [f"# k-means assign: Triton vs Gluon (packed keys, async matmuls) ({out.device})", "",
             "| shape | labels equal | max gap / mean dist | counts equal | Triton ms | Gluon ms | Triton TFLOP/s | "
             "Gluon TFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for r in out.data["assign"]:
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | {r['labels_equal']:.5f} | "
                     f"{r['max_gap'] / r['mean_dist']:.1e} | {r['counts_equal']} | {r['triton_ms']:.3f} | "
                     f"{r['gluon_ms']:.3f} | {r['triton_tflops']:.0f} | {r['gluon_tflops']:.0f} |")
    if out.data["selection"]:
        lines += selection_ab_lines(out.data["selection"], "Triton assign", "Gluon assign")
    out.finish(lines)


if __name__ == "__main__":
    main()
