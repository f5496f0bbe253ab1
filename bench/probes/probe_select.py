"""The per-row selection kernel (``_select_kernel``: bitonic sort of a row of key clusters, then the keep rule) by
warps per row, alone and inside the whole selection (GPU).

    python bench/probes/probe_select.py --out DIR [--no-selection]

Until now a 1024-wide row (1,000 key clusters) ran on 16 warps (bench_selection's sweep tried 4, 8 and 16 and took
the fastest: 0.92 ms against 1.36 with 4 warps at 40 x 300 x 1000, H100), about 1 ms of the Wan 14B selection's 7.5.
The sm_90 compile (Triton 3.6) says why fewer warps could win by much: 16 warps execute 16,896 warp-instructions per
row with 39 block barriers and shared-memory exchanges; one warp 7,176 with no barrier and no shared memory (155
registers, no spills: every exchange of the sort is a shuffle or in registers). The earlier sweep never tried fewer
than 4. Per row shape, mode (fixed density 25%, as the benchmarks; top-p 0.9 with the 10% floor, the default) and
warp count: the kernel alone (graph replay), whether its output is bit-identical to the default's (fixed density:
integer sums, must be; top-p: the probability sums' order may move a count at a row whose prefix lands within
rounding of p), then the whole selection with the default and with the fastest variant.
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

WARPS = (None, 16, 8, 2)  # None: the library's default (_select_warps: 1 up to 1024-wide rows; 16, 8: the defaults until session 14)
# rows: name, heads, video tokens, query clusters, key clusters
ROWS = (("wan1.3b-480p", 12, 32760, 100, 500), ("wan1.3b-480p", 12, 32760, 300, 1000),
        ("wan14b-720p", 40, 75600, 300, 1000), ("hunyuan-720p", 24, 118800, 400, 1000))
MODES = {"fixed 25%": SVG2Config(mode="fixed_density", target_density=0.25), "top-p 0.9": SVG2Config(top_p=0.9)}


def warps_name(w) -> str:
    return "default" if w is None else f"{w}w"


@contextlib.contextmanager
def variant(w):
    with P.setting(sm, "SELECT_NUM_WARPS", w):
        yield


def case(name, h, nv, cq, ck, dev) -> dict:
    qc, kc, sizes = P.cluster_problem(h, nv, cq, ck, dev, seed=4)
    logits = cluster_logits(qc, kc, sizes, Workspace()).clone()
    row = {"shape": name, "rows": f"{h}x{cq}x{ck}", "modes": {}}
    for mode, cfg in MODES.items():
        ref = None
        cells = {}
        for w in WARPS:
            ws = Workspace()
            with variant(w):
                got = [t.clone() for t in select_from_logits(logits, sizes, cfg, nv, ws)]
                if ref is None:
                    ref = got
                cells[warps_name(w)] = {
                    "identical": all(torch.equal(a, b) for a, b in zip(ref, got, strict=True)),
                    "count_mismatch_frac": (ref[1] != got[1]).float().mean().item(),
                    "ms": S.graph_ms(lambda ws=ws, cfg=cfg: select_from_logits(logits, sizes, cfg, nv, ws))}
        row["modes"][mode] = cells
    return row


def _agreement(cell: dict) -> str:
    return "same" if cell["identical"] else f"counts differ {cell['count_mismatch_frac']:.4f}"


def main() -> None:
    args = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(args.out, "probe_select", kernel=[], selection=[])
    for shape in ROWS:
        out.data["kernel"].append(case(*shape, dev))
        out.save()
        print(json.dumps(out.data["kernel"][-1]), flush=True)
    names = [warps_name(w) for w in WARPS]

    # the fastest warp count in total over the fixed-density rows, among those bit-identical there
    def total(w):
        cells = [r["modes"]["fixed 25%"][warps_name(w)] for r in out.data["kernel"]]
        return sum(c["ms"] for c in cells) if all(c["identical"] for c in cells) else float("inf")

    best = min(WARPS, key=total)
    out.data["best"] = warps_name(best)
    if not args.no_selection and best is not None:
        P.time_selection_ab(out, lambda on: variant(best if on else None), dev)
    lines = [f"# The selection kernel by warps per row ({out.device})", "",
             "`_select_kernel` alone, CUDA-graph replay, ms; \"same\": output bit-identical to the default's "
             "(otherwise the share of rows whose count differs). Fastest bit-identical at fixed density: "
             f"{out.data['best']}.", "",
             "| shape | rows | mode | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for r in out.data["kernel"]:
        for mode, cells in r["modes"].items():
            txt = [f"{c['ms']:.4f} ({_agreement(c)})" for c in (cells[n] for n in names)]
            lines.append(f"| {r['shape']} | {r['rows']} | {mode} | " + " | ".join(txt) + " |")
    if out.data["selection"]:
        lines += P.selection_ab_lines(out.data["selection"], "default", out.data["best"])
    out.finish(lines)


if __name__ == "__main__":
    main()
