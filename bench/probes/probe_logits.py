"""The cluster-logits kernel: its fp32 dot (IEEE on the CUDA cores, or 3xTF32 on the tensor cores) and its block
shape, alone and inside the whole selection (GPU).

    python bench/probes/probe_logits.py --out DIR

The timeline of a captured 480p selection (probe_timeline.py) shows the logits kernel at ~47 us for 12 x 100 x 500
dot products of 128 fp32 values, on the critical path after the key k-means. Per shape: the kernel alone (graph
replay) in each variant (VARIANTS), its largest difference from the fp64 product, whether the selection it leads to
equals the default's, and the whole selection (bench_selection.time_shape) with the default and with the fastest
variant that selects the same.
"""

from __future__ import annotations

import contextlib
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

# (dot precision, query clusters per program, key clusters per program); the first is the default
VARIANTS = (("ieee", 32, 64), ("ieee", 16, 64), ("ieee", 32, 32), ("ieee", 16, 32), ("tf32x3", 32, 64))


def variant_name(v) -> str:
    return f"{v[0]} {v[1]}x{v[2]}"


@contextlib.contextmanager
def variant(v):
    """The library's logits settings for variant ``v``, for the duration."""
    with (P.setting(sm, "LOGITS_PRECISION", v[0]), P.setting(sm, "_LOGITS_BLOCK_Q", v[1]),
          P.setting(sm, "_LOGITS_BLOCK_K", v[2])):
        yield


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
    row = {"shape": name, "Cq": cq, "Ck": ck, "variants": {}}
    ref = None
    for v in VARIANTS:
        ws = Workspace()
        with variant(v):
            got = cluster_logits(qc, kc, sizes, ws)
            sel = [t.clone() for t in select_from_logits(got, sizes, cfg, nv, ws)]
            if ref is None:  # the default's selection
                ref = sel
            row["variants"][variant_name(v)] = {
                "max_abs_err": (got.double() - exact).abs().max().item(),
                "same_selection": all(torch.equal(a, b) for a, b in zip(ref, sel, strict=True)),
                "same_count_share": (ref[1] == sel[1]).float().mean().item(),
                "ms": S.graph_ms(lambda ws=ws: cluster_logits(qc, kc, sizes, ws))}
    return row


def main() -> None:
    args = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(args.out, "probe_logits", kernel=[], selection=[])
    for name, h, nv, cq, ck in SHAPES:
        out.data["kernel"].append(case(name, h, nv, cq, ck, dev))
        out.save()
        print(json.dumps(out.data["kernel"][-1]), flush=True)
    names = [variant_name(v) for v in VARIANTS]
    # the fastest variant in total whose selection equals the default's at every shape
    same = [v for v in VARIANTS if all(r["variants"][variant_name(v)]["same_selection"] for r in out.data["kernel"])]
    best = min(same, key=lambda v: sum(r["variants"][variant_name(v)]["ms"] for r in out.data["kernel"]))
    out.data["best"] = variant_name(best)
    if not args.no_selection and best != VARIANTS[0]:
        P.time_selection_ab(out, lambda on: variant(best if on else VARIANTS[0]), dev)
    lines = [f"# The cluster-logits kernel: dot precision and block shape ({out.device})", "",
             "Kernel alone, CUDA-graph replay, ms; err: largest |logit - fp64 logit|; \"same\": the top-p 0.9 "
             f"selection equals the default's ({names[0]}). Fastest with the same selection: {out.data['best']}.", "",
             "| shape | Cq/Ck | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in out.data["kernel"]:
        cells = [f"{c['ms']:.4f} (err {c['max_abs_err']:.0e}{'' if c['same_selection'] else ', differs'})"
                 for c in (r["variants"][n] for n in names)]
        lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | " + " | ".join(cells) + " |")
    if out.data["selection"]:
        lines += P.selection_ab_lines(out.data["selection"], names[0], out.data["best"])
    out.finish(lines)


if __name__ == "__main__":
    main()
