"""The k-means sort stage, radix vs counting sort and the counting sort's scatter by warps, in one run (GPU).

    python bench/probes/probe_sort.py --out DIR [--no-selection]

1. Assign + sort, as batched_kmeans runs them, CUDA-graph replay, at the key and query shapes of the benchmark
   models: ``flat`` (assign, then torch's radix sort of ``bh * C + label`` keys, searchsorted for the offsets) and
   ``count`` (the assign counts each block's labels by atomic increments, then a scan and a scatter that ranks by a
   scan over the block's sorted labels), and ``count Nw``: the same with the scatter on N warps
   (``permute.SCATTER_NUM_WARPS``; latency-bound at 14-20 us per launch at 480p, H100). perm and offsets are
   checked against ``flat``'s. ``scan BxC``: the counting sort's scan on tiles of B blocks x C clusters
   (``permute._SCAN_BLOCK_B`` / ``_SCAN_BLOCK_C``; default 32 x 128).
2. Unless --no-selection: the whole selection (bench_selection.time_shape: 2 warm k-means iterations on Q and K, scoring,
   selection, K/V gather; CUDA-graph replay) with the library's counting sort and with the fastest counting-sort variant
   that sorts the same, against cuDNN dense.

The committed probe_sort_h100.md is from this probe's first version (session 7), which also timed a counting sort
on ``tl.histogram`` (removed: slower at every shape) and a K/V gather started from the keys' last sort (reverted:
slower); its "s6" / "default" selection columns are the gather after / before the last key update.

Writes DIR/probe_sort_<card>.json and a markdown table.
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
import svg2core.ops.permute.permute as pm  # noqa: E402
from svg2core import Workspace  # noqa: E402
from svg2core.ops.kmeans import batched_kmeans  # noqa: E402

SORT_SHAPES = P.kmeans_shapes()  # every k-means problem of the benchmark models
# the benchmark's selection shapes and HunyuanVideo's video tokens (text tokens left out: the sort does not see them)
SELECTION = P.SELECTION_SHAPES + (("hunyuan-720p", 24, 118800, 0, 300, 1000),)


# batched_kmeans' counting sort up to these cluster counts (0: the radix sort), the scatter's warps (None: default),
# the scan's tile (blocks x clusters a program, it loops over the blocks; None: the default 32 x 128). At 480p the
# scan is latency-bound (9-14 us a launch on the key chain's critical path, probe_timeline_h100_s14.md: 4 dependent
# steps over 128 blocks in 12 x 4 programs); a taller, narrower tile takes all blocks in one step, in more programs.
VARIANTS = {"flat": (0, None, None), "count": (1 << 20, None, None), "count 1w": (1 << 20, 1, None),
            "count 2w": (1 << 20, 2, None), "scan 128x32": (1 << 20, None, (128, 32)),
            "scan 64x64": (1 << 20, None, (64, 64)), "scan 256x16": (1 << 20, None, (256, 16))}


def variant(name: str):
    fused_max, warps, scan = VARIANTS[name]
    scan_b, scan_c = scan or (pm._SCAN_BLOCK_B, pm._SCAN_BLOCK_C)
    return P.settings((km, "FUSED_SORT_MAX_CLUSTERS", fused_max), (pm, "SCATTER_NUM_WARPS", warps),
                      (pm, "_SCAN_BLOCK_B", scan_b), (pm, "_SCAN_BLOCK_C", scan_c))


def sort_case(name, h, n, c, dev) -> dict:
    torch.manual_seed(7)
    x = torch.randn(1, h, n, 128, device=dev, dtype=torch.bfloat16)
    start = x[:, :, :: n // c][:, :, :c].float().reshape(h, c, 128).contiguous()
    batched_kmeans(x, start, 3, Workspace(), "w")  # realistic cluster sizes
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c}
    ref = None
    for name_v in VARIANTS:
        with variant(name_v):
            ws = Workspace()
            cent = start.clone()

            def run(ws=ws, cent=cent):  # assign + sort only (0 iterations: centroids untouched)
                return batched_kmeans(x, cent, 0, ws, "k")

            _, perm, off = run()
            if ref is None:
                ref = perm.clone(), off.clone()
            row[f"{name_v}_equal"] = bool(torch.equal(perm, ref[0]) and torch.equal(off, ref[1]))
            row[f"{name_v}_ms"] = S.graph_ms(run)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    opts = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(opts.out, "probe_sort", sort=[], selection=[])
    res, card_name = out.data, out.device
    P.run_shapes(out, "sort", sort_case, SORT_SHAPES, dev)
    # the fastest counting-sort variant (scatter warps, scan tile) in total among those that sort like flat everywhere
    counts = [v for v in VARIANTS if v != "flat" and all(r[f"{v}_equal"] for r in res["sort"])]
    best = min(counts, key=lambda v: sum(r[f"{v}_ms"] for r in res["sort"]), default="count")
    res["best_count"] = best
    if not opts.no_selection and best != "count":
        P.time_selection_ab(out, lambda on: variant(best if on else "count"), dev, SELECTION)
    lines = [f"# k-means sort stage and K/V gather order ({card_name})", "",
             "Assign + sort (CUDA-graph replay, ms; `=`: perm and offsets equal to flat's):", "",
             "| shape | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    for r in res["sort"]:
        cells = [f"{r[f'{v}_ms']:.3f}{'' if r[f'{v}_equal'] else ' (DIFFERS)'}" for v in VARIANTS]
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | " + " | ".join(cells) + " |")
    if res["selection"]:
        lines += P.selection_ab_lines(res["selection"], "counting sort (default)", f"{best}")
    out.finish(lines)


if __name__ == "__main__":
    main()
