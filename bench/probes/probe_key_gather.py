"""The keys gathered by the key k-means' last update (``svg2core.attention.FUSE_KEY_GATHER``) against the separate
K/V gather: the update reads every key row in the final permutation's order anyway, so writing them there saves the
gather one read of the keys (at 480p 100 MB of the ~500 MB the update and the gather move).

Checks first (per shape): the permutation, the gathered K and V are bit-identical with the switch off and on. Then
the whole selection (2 warm iterations on Q and K + scoring + selection + gather, CUDA-graph replay), off and on in
alternating order, three rounds, with the SM clock of each.

    python bench/probes/probe_key_gather.py --out DIR
"""

from __future__ import annotations

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_selection as S  # noqa: E402
import probe_io as P  # noqa: E402
from gpu_clocks import GpuClocks, clock_cell  # noqa: E402

import svg2core.attention as A  # noqa: E402
from svg2core import SVG2Config  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

# name, heads, video tokens, Cq, Ck: the benchmark shapes and the 480p balanced preset's clusters
SHAPES = (("wan1.3b-480p", 12, 32760, 100, 500), ("wan1.3b-480p", 12, 32760, 200, 1000),
          ("wan14b-720p", 40, 75600, 300, 1000), ("hunyuan-720p", 24, 118800, 400, 1000))
ROUNDS = 3


def case(name, h, nv, cq, ck, dev) -> dict:
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, h, nv, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    cfg = SVG2Config(num_q_clusters=cq, num_k_clusters=ck)
    ws = Workspace()
    q_start, k_start = S.warm_centroids(q, k, cq, ck, ws)
    q_cent, k_cent = q_start.clone(), k_start.clone()

    def selection():
        return A.cluster_and_select(q, k, v, q_cent, k_cent, 2, cfg, ws)

    plans = {}
    for on in (False, True):
        with P.setting(A, "FUSE_KEY_GATHER", on):
            q_cent.copy_(q_start)
            k_cent.copy_(k_start)
            plan = selection()
            plans[on] = tuple(x.clone() for x in (plan.k_perm, plan.kp, plan.vp))
    equal = all(torch.equal(a, b) for a, b in zip(plans[False], plans[True], strict=True))
    res = {"shape": name, "heads": h, "video_tokens": nv, "Cq": cq, "Ck": ck, "perm_kp_vp_equal": equal,
           "rounds": []}
    for r in range(ROUNDS):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            with P.setting(A, "FUSE_KEY_GATHER", on), GpuClocks(dev) as clocks:
                q_cent.copy_(q_start)
                k_cent.copy_(k_start)
                ms = S.graph_ms(selection)
            res["rounds"].append({"round": r, "fused": on, "graph_ms": ms, "clock": clocks.summary()})
    for on in (False, True):
        res["fused_ms" if on else "separate_ms"] = min(x["graph_ms"] for x in res["rounds"] if x["fused"] == on)
    return res


def main() -> int:
    args = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(args.out, "probe_key_gather", rounds=ROUNDS)
    out.data["cases"] = []
    P.run_shapes(out, "cases", case, SHAPES, dev)
    lines = [f"# Keys gathered by the last key update vs the separate gather ({out.device})", "",
             "Whole selection (2 warm iterations on Q and K + scoring + selection + K/V gather), CUDA-graph replay, "
             f"best of {ROUNDS} rounds in alternating order; every round's time and SM clock in the JSON.", "",
             "| shape | Cq/Ck | perm, K, V equal | separate gather ms | fused ms | change | SM clock, last round: separate / fused (mean / min MHz) |",
             "|---|---|---|---|---|---|---|"]
    for c in out.data["cases"]:
        last = [x for x in c["rounds"] if x["round"] == ROUNDS - 1]
        clocks = " / ".join(clock_cell(x["clock"]) for x in sorted(last, key=lambda x: x["fused"]))
        lines.append(f"| {c['shape']} ({c['heads']}x{c['video_tokens']}) | {c['Cq']}/{c['Ck']} | "
                     f"{c['perm_kp_vp_equal']} | {c['separate_ms']:.3f} | {c['fused_ms']:.3f} | "
                     f"{100 * (c['fused_ms'] / c['separate_ms'] - 1):+.1f}% | {clocks} |")
    out.finish(lines)
    return 0 if all(c["perm_kp_vp_equal"] for c in out.data["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
