"""The k-means sort stage, radix vs counting sort, in one run (GPU).

    python bench/probes/probe_sort.py --out DIR [--no-selection]

1. Assign + sort, as batched_kmeans runs them, CUDA-graph replay, at the key and query shapes of the benchmark
   models: ``flat`` (assign, then torch's radix sort of ``bh * C + label`` keys, searchsorted for the offsets) and
   ``count`` (the assign counts each block's labels by atomic increments, then a scan and a scatter that ranks by a
   scan over the block's sorted labels). perm and offsets are checked against ``flat``'s.
2. Unless --no-selection: the whole selection (cluster_and_select: 2 warm k-means iterations on Q and K, scoring,
   selection, K/V gather; CUDA-graph replay) with the library's counting sort and with the radix sort for every
   cluster count, against cuDNN dense.

The committed probe_sort_h100.md is from this probe's first version (session 7), which also timed a counting sort
on ``tl.histogram`` (removed: slower at every shape) and a K/V gather started from the keys' last sort (reverted:
slower); its "s6" / "default" selection columns are the gather after / before the last key update.

Writes DIR/probe_sort_<card>.json and a markdown table.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_selection as S  # noqa: E402
from probe_io import ProbeResults, kmeans_shapes, probe_args  # noqa: E402

import svg2core.ops.kmeans.kmeans as km  # noqa: E402
from svg2core import SVG2Config, Workspace  # noqa: E402
from svg2core.attention import cluster_and_select  # noqa: E402
from svg2core.ops.kmeans import batched_kmeans  # noqa: E402

SORT_SHAPES = kmeans_shapes()  # every k-means problem of the benchmark models
SELECTION = (("wan1.3b-480p", 12, 32760, 100, 500), ("wan1.3b-480p", 12, 32760, 300, 1000),
             ("wan14b-720p", 40, 75600, 300, 1000), ("hunyuan-720p", 24, 118800, 300, 1000))


@contextlib.contextmanager
def fused_sort_max(clusters: int):
    saved = km.FUSED_SORT_MAX_CLUSTERS
    km.FUSED_SORT_MAX_CLUSTERS = clusters
    try:
        yield
    finally:
        km.FUSED_SORT_MAX_CLUSTERS = saved


VARIANTS = {"flat": 0, "count": 1 << 20}  # batched_kmeans' counting sort up to these cluster counts


def sort_case(name, h, n, c, dev) -> dict:
    torch.manual_seed(7)
    x = torch.randn(1, h, n, 128, device=dev, dtype=torch.bfloat16)
    start = x[:, :, :: n // c][:, :, :c].float().reshape(h, c, 128).contiguous()
    batched_kmeans(x, start, 3, Workspace(), "w")  # realistic cluster sizes
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c}
    ref = None
    for variant, fused_max in VARIANTS.items():
        with fused_sort_max(fused_max):
            ws = Workspace()
            cent = start.clone()

            def run(ws=ws, cent=cent):  # assign + sort only (0 iterations: centroids untouched)
                return batched_kmeans(x, cent, 0, ws, "k")

            _, perm, off = run()
            if ref is None:
                ref = perm.clone(), off.clone()
            row[f"{variant}_equal"] = bool(torch.equal(perm, ref[0]) and torch.equal(off, ref[1]))
            row[f"{variant}_ms"] = S.graph_ms(run)
    print(json.dumps(row), flush=True)
    return row


def selection_case(name, h, nv, cq, ck, dev) -> dict:
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, h, nv, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        dense = S.bench_ms(lambda: F.scaled_dot_product_attention(q, k, v), warmup=2, rep=5)
    cfg = SVG2Config(num_q_clusters=cq, num_k_clusters=ck)
    q_start = q[:, :, :: nv // cq][:, :, :cq].float().reshape(h, cq, 128).contiguous()
    k_start = k[:, :, :: nv // ck][:, :, :ck].float().reshape(h, ck, 128).contiguous()
    batched_kmeans(q, q_start, 5, Workspace(), "q")
    batched_kmeans(k, k_start, 5, Workspace(), "k")
    row = {"shape": name, "heads": h, "tokens": nv, "Cq": cq, "Ck": ck, "dense_ms": dense}
    for variant, fused_max in VARIANTS.items():
        with fused_sort_max(fused_max):
            ws = Workspace()
            qc, kc = q_start.clone(), k_start.clone()
            row[f"{variant}_ms"] = S.graph_ms(lambda ws=ws, qc=qc, kc=kc: cluster_and_select(q, k, v, qc, kc, 2, cfg, ws))
            row[f"{variant}_pct"] = 100 * row[f"{variant}_ms"] / dense
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    opts = probe_args()
    dev = torch.device("cuda")
    out = ProbeResults(opts.out, "probe_sort", sort=[], selection=[])
    res, save, card_name = out.data, out.save, out.device

    for shape in SORT_SHAPES:
        res["sort"].append(sort_case(*shape, dev))
        save()
        torch.cuda.empty_cache()
    if not opts.no_selection:
        for shape in SELECTION:
            res["selection"].append(selection_case(*shape, dev))
            save()
            torch.cuda.empty_cache()
    lines = [f"# k-means sort stage and K/V gather order ({card_name})", "",
             "Assign + sort (CUDA-graph replay, ms; `=`: perm and offsets equal to flat's):", "",
             "| shape | flat | count |", "|---|---|---|"]
    for r in res["sort"]:
        cells = [f"{r[f'{v}_ms']:.3f}{'' if r[f'{v}_equal'] else ' (DIFFERS)'}" for v in VARIANTS]
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | " + " | ".join(cells) + " |")
    if res["selection"]:
        lines += ["", "Selection, 2 warm iterations (CUDA-graph replay, ms and % of cuDNN dense):", "",
                  "| shape | Cq/Ck | dense ms | radix sort | counting sort (default) |", "|---|---|---|---|---|"]
        for r in res["selection"]:
            lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | {r['dense_ms']:.1f} | "
                         + " | ".join(f"{r[f'{v}_ms']:.3f} ({r[f'{v}_pct']:.1f}%)" for v in VARIANTS)
                         + " |")
    out.finish(lines)


if __name__ == "__main__":
    main()
