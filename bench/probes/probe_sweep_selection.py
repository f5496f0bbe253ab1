"""What the sweep order costs the selection (GPU): the whole selection (2 warm k-means iterations on Q and K, scoring,
selection, K/V gather; bench_selection's setup), CUDA-graph replay, with and without ``KeySweep`` on the same data,
alternating rounds (NOTES_sparse_attn v18: bench_selection's 480p 100 / 500 row read 0.76 ms with the sweep against
0.68 in sessions 15 and 16, on another machine).

    python bench/probes/probe_sweep_selection.py --out DIR
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

from svg2core import SVG2Config  # noqa: E402

SHAPES = (("wan1.3b-480p", 12, 32760, 100, 500), ("wan1.3b-480p", 12, 32760, 300, 1000),
          ("wan14b-720p", 40, 75600, 300, 1000))


def case(name, h, nv, cq, ck, dev, rounds) -> dict:
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, h, nv, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    cfg = SVG2Config(num_q_clusters=cq, num_k_clusters=ck)
    period = torch.cuda.get_device_properties(dev).multi_processor_count  # timed at every shape, 480p included
    graphs = P.captured_selections(q, k, v, cfg, {"rule order": ({"sweep": (0, 128)}, ()),
                                                  "sweep": ({"sweep": (period, 128)}, ())})
    times = P.alternating_times({label: g[0].replay for label, g in graphs.items()}, rounds)
    del graphs
    return {"shape": name, "Cq": cq, "Ck": ck, "period": period, "ms": times,
            "best_ms": {k: min(t) for k, t in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    out = P.ProbeResults(args.out, "probe_sweep_selection", rows=[])
    P.run_shapes(out, "rows", functools.partial(case, rounds=args.rounds), SHAPES, torch.device("cuda"))
    lines = [f"# The selection with and without the sweep order ({out.device})", "",
             "Whole selection (2 warm iterations on Q and K, scoring, selection, K/V gather), CUDA-graph replay, "
             "alternating rounds; best ms.", "", "| shape | Cq/Ck | rule order | sweep | sweep / rule |",
             "|---|---|---|---|---|"]
    for r in out.data["rows"]:
        a, b = r["best_ms"]["rule order"], r["best_ms"]["sweep"]
        lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | {a:.3f} | {b:.3f} | {b / a:.3f} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
