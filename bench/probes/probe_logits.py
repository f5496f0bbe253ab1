"""The cluster-logits kernel's fp32 dot: IEEE (FMA) against 3xTF32 on the tensor cores, alone and inside the whole
selection (GPU).

    python bench/probes/probe_logits.py --out DIR

The timeline of a captured 480p selection (probe_timeline.py) shows the logits kernel at ~47 us for 12 x 100 x 500
dot products of 128 fp32 values, on the critical path after the key k-means. Per shape: the kernel alone (graph
replay), its largest difference from the fp64 product, whether the selection it leads to is the same, and the whole
selection (bench_selection.time_shape) with each precision.
"""

from __future__ import annotations

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_selection as S  # noqa: E402
import probe_io as P  # noqa: E402

import svg2core.ops.select.select as sm  # noqa: E402
from svg2core import SVG2Config  # noqa: E402
from svg2core.ops.select import cluster_logits, select_from_logits  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

PRECISIONS = ("ieee", "tf32x3")
SHAPES = (("wan1.3b-480p", 12, 32760, 100, 500), ("wan1.3b-480p", 12, 32760, 300, 1000),
          ("wan14b-720p", 40, 75600, 300, 1000))


def case(name, h, nv, cq, ck, dev) -> dict:
    torch.manual_seed(3)
    qc = torch.randn(h, cq, 128, device=dev) * 0.5
    kc = torch.randn(h, ck, 128, device=dev) * 0.5
    sizes = torch.full((h, ck), nv // ck, dtype=torch.int32, device=dev)
    sizes[:, 0] += nv - sizes[0].sum()
    exact = (qc.double() @ kc.double().transpose(1, 2)) / 128 ** 0.5 + torch.log(sizes.double())[:, None, :]
    cfg = SVG2Config(top_p=0.9)
    row = {"shape": name, "Cq": cq, "Ck": ck}
    sel = {}
    for prec in PRECISIONS:
        ws = Workspace()
        with P.setting(sm, "LOGITS_PRECISION", prec):
            got = cluster_logits(qc, kc, sizes, ws)
            row[f"{prec}_max_abs_err"] = (got.double() - exact).abs().max().item()
            sel[prec] = [t.clone() for t in select_from_logits(got, sizes, cfg, nv, ws)]
            row[f"{prec}_ms"] = S.graph_ms(lambda ws=ws: cluster_logits(qc, kc, sizes, ws))
    row["same_selection"] = all(torch.equal(a, b) for a, b in zip(sel["ieee"], sel["tf32x3"], strict=True))
    row["same_count_share"] = (sel["ieee"][1] == sel["tf32x3"][1]).float().mean().item()
    return row


def main() -> None:
    args = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(args.out, "probe_logits", kernel=[], selection=[])
    for name, h, nv, cq, ck in SHAPES:
        out.data["kernel"].append(case(name, h, nv, cq, ck, dev))
        out.save()
        print(json.dumps(out.data["kernel"][-1]), flush=True)
    if not args.no_selection:
        P.time_selection_ab(out, lambda on: P.setting(sm, "LOGITS_PRECISION", "tf32x3" if on else "ieee"), dev)
    lines = [f"# The cluster-logits kernel's dot: IEEE fp32 vs 3xTF32 ({out.device})", "",
             "Kernel alone, CUDA-graph replay; error: largest |logit - fp64 logit|; selection: top-p 0.9 from each "
             "precision's logits.", "",
             "| shape | Cq/Ck | ieee ms | tf32x3 ms | ieee err | tf32x3 err | same selection | same counts |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out.data["kernel"]:
        lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | {r['ieee_ms']:.4f} | {r['tf32x3_ms']:.4f} | "
                     f"{r['ieee_max_abs_err']:.1e} | {r['tf32x3_max_abs_err']:.1e} | {r['same_selection']} | "
                     f"{r['same_count_share']:.4f} |")
    if out.data["selection"]:
        lines += P.selection_ab_lines(out.data["selection"], "ieee", "tf32x3")
    out.finish(lines)


if __name__ == "__main__":
    main()
