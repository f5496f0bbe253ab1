"""The whole selection with the assign's centroid prefetch depth (2 or 3 stages) and programmatic dependent launch
(off / on) in every combination, two rounds in alternating order, one run (GPU).

    python bench/probes/probe_selection_combo.py --out DIR

bench_selection.time_shape (graph replay, cuDNN dense of the same shape timed beside it) of each shape of
probe_io.SELECTION_SHAPES under each setting; the markdown table gives the best of the rounds.
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

import svg2core.ops.kmeans.kmeans as km  # noqa: E402
from svg2core.ops import pdl  # noqa: E402

COMBOS = [(2, False), (3, False), (2, True), (3, True)]  # (assign stages, PDL)


@contextlib.contextmanager
def combo(stages: int, use_pdl: bool):
    tile = km.AssignTile(km.ASSIGN_TILE.block_n, km.ASSIGN_TILE.block_c, km.ASSIGN_TILE.num_warps, stages)
    with P.setting(km, "ASSIGN_TILE", tile), P.setting(pdl, "ENABLED", use_pdl):
        yield


def main() -> None:
    args = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(args.out, "probe_selection_combo", rows=[])
    for rnd in range(2):
        order = COMBOS if rnd == 0 else COMBOS[::-1]
        for name, h, nv, t, cq, ck in P.SELECTION_SHAPES:
            for stages, use_pdl in order:
                with combo(stages, use_pdl):
                    r = S.time_shape(name, h, nv, t, cq, ck, dev, legacy=False, stages=False)
                r.update(round=rnd, assign_stages=stages, pdl=use_pdl)
                out.data["rows"].append(r)
                out.save()
                print(json.dumps({k: r[k] for k in ("shape", "Cq", "Ck", "round", "assign_stages", "pdl",
                                                    "selection_graph_ms", "dense_sdpa_cudnn_ms")}), flush=True)
                torch.cuda.empty_cache()
    cols = [f"{s} stages, PDL {'on' if p else 'off'}" for s, p in COMBOS]
    lines = [f"# The whole selection: assign prefetch depth x programmatic dependent launch ({out.device})", "",
             "2 warm iterations on Q and K + scoring + selection + V gather (keys from the last update), CUDA-graph "
             "replay, ms, best of 2 rounds (alternating order); % of cuDNN dense of the same shape (its best).", "",
             "| shape | Cq/Ck | dense ms | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for name, _h, _nv, _t, cq, ck in P.SELECTION_SHAPES:
        rows = [r for r in out.data["rows"] if r["shape"] == name and r["Cq"] == cq and r["Ck"] == ck]
        dense = min(r["dense_sdpa_cudnn_ms"] for r in rows)
        cells = []
        for s, p in COMBOS:
            ms = min(r["selection_graph_ms"] for r in rows if r["assign_stages"] == s and r["pdl"] == p)
            cells.append(f"{ms:.3f} ({100 * ms / dense:.2f}%)")
        lines.append(f"| {name} | {cq}/{ck} | {dense:.2f} | " + " | ".join(cells) + " |")
    out.finish(lines)


if __name__ == "__main__":
    main()
