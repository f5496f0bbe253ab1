"""The k-means sort stage at many clusters, and where the K/V gather starts, in one run (GPU).

    python bench/probes/probe_sort.py --out DIR [--no-selection]

1. Assign + sort, as batched_kmeans runs them, CUDA-graph replay, at the key and query shapes of the benchmark
   models: ``flat`` (assign, then torch's radix sort of ``bh * C + label`` keys, searchsorted for the offsets),
   ``count/bins`` (the assign writes each block's label histogram with ``tl.histogram``, then a scan and a ranked
   scatter that ranks by a histogram too) and ``count/atomic`` (the assign counts by atomic increments into its
   block's row, the scatter ranks by a scan over the block's sorted labels: no cost per bin). Every variant's
   perm and offsets are checked against ``flat``'s first.
2. Unless --no-selection: the whole selection (bench_selection.time_shape's stages: 2 warm k-means iterations on Q
   and K, scoring, selection, K/V gather; CUDA-graph replay) with
   - ``s6``: session 6's order (the gather after the keys' last update, beside the scoring) and sorts,
   - ``default``: the library as it stands (the gather from the keys' final permutation on, beside the last update),
   - ``count``: the same with the atomic counting sort for every cluster count (``FUSED_SORT_MAX_CLUSTERS``),
   against cuDNN dense attention of the same shape.

Writes DIR/probe_sort_<card>.json and a markdown table.
"""

from __future__ import annotations

import argparse
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

import svg2core.ops.kmeans.kmeans as km  # noqa: E402
import svg2core.ops.permute.permute as pm  # noqa: E402
from svg2core import SVG2Config, Workspace  # noqa: E402
from svg2core.attention import cluster_and_select  # noqa: E402
from svg2core.ops.kmeans import batched_kmeans  # noqa: E402
from svg2core.ops.permute import gather_kv  # noqa: E402
from svg2core.ops.select import select_key_clusters  # noqa: E402

SORT_SHAPES = (  # name, heads, tokens, clusters
    ("wan1.3b-480p Q 100", 12, 32760, 100),
    ("wan1.3b-480p Q 300", 12, 32760, 300),
    ("wan1.3b-480p K 500", 12, 32760, 500),
    ("wan1.3b-480p K 1000", 12, 32760, 1000),
    ("wan14b-720p Q 300", 40, 75600, 300),
    ("wan14b-720p K 1000", 40, 75600, 1000),
    ("hunyuan-720p K 1000", 24, 118800, 1000),
)
SELECTION = (("wan1.3b-480p", 12, 32760, 100, 500), ("wan1.3b-480p", 12, 32760, 300, 1000),
             ("wan14b-720p", 40, 75600, 300, 1000), ("hunyuan-720p", 24, 118800, 300, 1000))


@contextlib.contextmanager
def settings(fused_max: int, bins_max: int):
    saved = km.FUSED_SORT_MAX_CLUSTERS, pm.BIN_HISTOGRAM_MAX_CLUSTERS
    km.FUSED_SORT_MAX_CLUSTERS, pm.BIN_HISTOGRAM_MAX_CLUSTERS = fused_max, bins_max
    try:
        yield
    finally:
        km.FUSED_SORT_MAX_CLUSTERS, pm.BIN_HISTOGRAM_MAX_CLUSTERS = saved


VARIANTS = {"flat": (0, 128), "count/bins": (1 << 20, 1 << 20), "count/atomic": (1 << 20, 0)}


def sort_case(name, h, n, c, dev) -> dict:
    torch.manual_seed(7)
    x = torch.randn(1, h, n, 128, device=dev, dtype=torch.bfloat16)
    start = x[:, :, :: n // c][:, :, :c].float().reshape(h, c, 128).contiguous()
    batched_kmeans(x, start, 3, Workspace(), "w")  # realistic cluster sizes
    row = {"shape": name, "heads": h, "tokens": n, "clusters": c}
    ref = None
    for variant, (fused_max, bins_max) in VARIANTS.items():
        with settings(fused_max, bins_max):
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


def selection_s6(qv, kv, v, q_cent, k_cent, iters, cfg, ws) -> None:
    """Session 6's orchestration: the gather on the query chain's stream after the keys' last update."""
    b, h, nv, _ = qv.shape
    dev = qv.device
    main = torch.cuda.current_stream(dev)
    side = torch.cuda.Stream(dev)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        q_labels, q_perm, q_offsets = batched_kmeans(qv, q_cent, iters, ws, "q")
    k_labels, k_perm, k_offsets = batched_kmeans(kv, k_cent, iters, ws, "k")
    k_sizes = torch.sub(k_offsets[:, 1:], k_offsets[:, :-1],
                        out=ws.buffer("k.sizes", (b * h, k_cent.shape[1]), torch.int32, dev))
    main.wait_stream(side)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        gather_kv(kv, v[:, :, :nv], k_perm, ws)
    select_key_clusters(q_cent, k_cent, k_sizes, cfg, nv, ws)
    main.wait_stream(side)


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
    for variant, fused_max, fn in (("s6", km.FUSED_SORT_MAX_CLUSTERS, selection_s6),
                                   ("default", km.FUSED_SORT_MAX_CLUSTERS, cluster_and_select),
                                   ("count", 1 << 20, cluster_and_select)):
        with settings(fused_max, pm.BIN_HISTOGRAM_MAX_CLUSTERS):
            ws = Workspace()
            qc, kc = q_start.clone(), k_start.clone()
            row[f"{variant}_ms"] = S.graph_ms(lambda fn=fn, ws=ws, qc=qc, kc=kc: fn(q, k, v, qc, kc, 2, cfg, ws))
            row[f"{variant}_pct"] = 100 * row[f"{variant}_ms"] / dense
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-selection", action="store_true")
    opts = ap.parse_args()
    os.makedirs(opts.out, exist_ok=True)
    dev = torch.device("cuda")
    card_name = torch.cuda.get_device_name()
    card = "h200" if "H200" in card_name else "h100" if "H100" in card_name else card_name.replace(" ", "_").lower()
    res = {"device": card_name, "sort": [], "selection": []}
    path = os.path.join(opts.out, f"probe_sort_{card}")

    def save():
        with open(path + ".json", "w") as f:
            json.dump(res, f, indent=1)

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
             "| shape | flat | count/bins | count/atomic |", "|---|---|---|---|"]
    for r in res["sort"]:
        cells = [f"{r[f'{v}_ms']:.3f}{'' if r[f'{v}_equal'] else ' (DIFFERS)'}" for v in VARIANTS]
        lines.append(f"| {r['shape']} ({r['heads']}x{r['tokens']}) | " + " | ".join(cells) + " |")
    if res["selection"]:
        lines += ["", "Selection, 2 warm iterations (CUDA-graph replay, ms and % of cuDNN dense):", "",
                  "| shape | Cq/Ck | dense ms | s6 order | default | count sort everywhere |", "|---|---|---|---|---|---|"]
        for r in res["selection"]:
            lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | {r['dense_ms']:.1f} | "
                         + " | ".join(f"{r[f'{v}_ms']:.3f} ({r[f'{v}_pct']:.1f}%)" for v in ("s6", "default", "count"))
                         + " |")
    save()
    with open(path + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
