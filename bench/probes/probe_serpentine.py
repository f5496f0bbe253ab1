"""The k-means updates and the V gather in reverse head order (``attention.SERPENTINE_HEADS``), timed (GPU).

Each launch of the selection walks the heads in grid order, so the next launch starts on the heads the previous one
read first, long evicted. With the updates and the gather in reverse order, every launch starts on the heads the
launch before it read last: at 480p a head's tokens are 8.4 MB, so a few heads of each chain may still be in the
50 MB L2 (NOTES_selection v16). The result is bit-identical (CPU tests); this times the whole selection (2 warm k-means
iterations on Q and K, scoring, selection, K/V gather; bench_selection's setup), CUDA-graph replay, with and without,
on the same data, in alternating rounds, after checking the two graphs' outputs agree.

    python bench/probes/probe_serpentine.py --out DIR
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import probe_io as P  # noqa: E402

import svg2core.attention as attention  # noqa: E402
from svg2core import SVG2Config  # noqa: E402

SHAPES = (("wan1.3b-480p", 12, 32760, 100, 500), ("wan1.3b-480p", 12, 32760, 200, 1000),
          ("wan14b-720p", 40, 75600, 300, 1000))


def case(name, h, nv, cq, ck, dev, rounds) -> dict:
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, h, nv, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    cfg = SVG2Config(num_q_clusters=cq, num_k_clusters=ck)
    # the switch is read when the graph is captured
    graphs = P.captured_selections(q, k, v, cfg, {"in order": ({}, ((attention, "SERPENTINE_HEADS", False),)),
                                                  "serpentine": ({}, ((attention, "SERPENTINE_HEADS", True),))})
    plans = {}
    for label, (graph, ws, q_cent, k_cent, start) in graphs.items():
        q_cent.copy_(start[0])
        k_cent.copy_(start[1])
        graph.replay()  # one call from the same warm start as the other variant
        torch.cuda.synchronize()
        plans[label] = (q_cent.clone(), k_cent.clone(), ws.buffer("vp", (h, nv, 128), v.dtype, dev).clone())
    same = all(torch.equal(a, b) for a, b in zip(plans["in order"], plans["serpentine"], strict=True))
    times = P.alternating_times({label: g[0].replay for label, g in graphs.items()}, rounds)
    del graphs
    return {"shape": name, "Cq": cq, "Ck": ck, "identical": same, "ms": times,
            "best_ms": {k: min(t) for k, t in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    out = P.ProbeResults(args.out, "probe_serpentine", rows=[])
    P.run_shapes(out, "rows", functools.partial(case, rounds=args.rounds), SHAPES, torch.device("cuda"))
    lines = [f"# The selection with the updates and the V gather in reverse head order ({out.device})", "",
             "Whole selection (2 warm iterations on Q and K, scoring, selection, K/V gather), CUDA-graph replay, "
             "alternating rounds; best ms. identical: centroids and V gather equal after one call from the same "
             "warm start.", "", "| shape | Cq/Ck | identical | in order | serpentine | serpentine / in order |",
             "|---|---|---|---|---|---|"]
    for r in out.data["rows"]:
        a, b = r["best_ms"]["in order"], r["best_ms"]["serpentine"]
        lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | {r['identical']} | {a:.3f} | {b:.3f} | {b / a:.3f} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
