"""Does a rotated key order keep the CTAs in flight inside one window of a head's keys? (GPU, Hopper.)

NOTES_sparse_attn v16: at HunyuanVideo's head length (K + V 61 MB a head, past the 50 MB L2) the kernel reads ~80x
each key row from DRAM and, at the card's power limit, loses ~6% of its SM clock to that traffic; two launches over
the two halves of every head's keys won 3.8% of the time but need a merge. Listing the selected key clusters by id
(v8) did not raise the hit rate: the CTAs in flight start at different times, so their sweeps do not line up.

This probe lines them up instead. The grid's CTAs start one after another, about ``D / W`` apart (``D`` one query
tile's time, ``W`` the CTAs in flight); if the tile that is ``k``-th in its head's grid sweeps its key clusters in id
order starting from the cluster at share ``frac(k / W)`` of the head, every CTA in flight sits near the same share of
the head's keys at any moment, and the window the wave reads is a small part of the head. The kept set is the same
(the same function up to the order of the online softmax's sums); only the order of ``sel_idx`` / ``sel_cum`` changes.

Variants (per case, each variant's calls back to back for ``--seconds``, alternating rounds; SM clock and power of
each stretch from nvidia-smi):

- ``score``: the selection's own order (descending probability; bench_sparse_attn.make_case draws it at random);
- ``id``: by cluster id (``B.selection_in_key_order``);
- ``rot W``: by id, rotated per query cluster as above with ``W`` CTAs in flight.

    python bench/probes/probe_key_rotation.py --out DIR [--cases hunyuan-720p:0.25,wan14b-720p:0.25]
        [--waves 0,132,264] [--seconds 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_sparse_attn as B  # noqa: E402
import probe_io as P  # noqa: E402
from gpu_clocks import clock_cell  # noqa: E402
from probe_key_halves import best_clocks, sustained_rounds  # noqa: E402

from svg2core.ops.sparse_attn import sparse_attention  # noqa: E402


def case(name: str, density: float, waves: list[int], seconds: float, rounds: int) -> dict:
    h, nv, t, cq, ck = B.MODELS[name]
    args, kpm, st = B.make_case(h, nv, t, cq, ck, density, torch.bfloat16, seed=3)
    sm = torch.cuda.get_device_properties(0).multi_processor_count
    layouts = {"score": args, "id": B.selection_in_key_order(args)}
    for w in waves:
        layouts[f"rot {w or sm}"] = B.selection_in_sweep_layout(args, w or sm)
    outs = {k: torch.empty_like(args["q"]) for k in layouts}
    fns = {k: (lambda a=a, o=outs[k]: sparse_attention(**a, num_dense_tokens=t, key_padding_mask=kpm, out=o))
           for k, a in layouts.items()}
    for fn in fns.values():
        fn()
    torch.cuda.synchronize()
    diff = {k: (outs[k].float() - outs["score"].float()).abs().max().item() for k in outs}
    row = {"shape": name, "density": density, "pairs": st["pairs"], "max_abs_diff_vs_score": diff, "rounds": []}
    print(json.dumps({"shape": name, "max_abs_diff_vs_score": diff}), flush=True)
    row["rounds"], row["best_ms"] = sustained_rounds({k: [fn] for k, fn in fns.items()}, seconds, rounds, {"shape": name})
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="hunyuan-720p:0.25,wan14b-720p:0.25,wan1.3b-480p:0.15")
    ap.add_argument("--waves", default="0,264", help="CTAs in flight for the rotation; 0 = the card's SM count")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    waves = [int(w) for w in args.waves.split(",")]
    out = P.ProbeResults(args.out, "probe_key_rotation", rows=[])
    for spec in args.cases.split(","):
        name, d = spec.split(":")
        out.data["rows"].append(case(name, float(d), waves, args.seconds, args.rounds))
        out.save()
        torch.cuda.empty_cache()
    lines = [f"# Selected key clusters by score, by id, or by id rotated per query tile, under sustained load "
             f"({out.device})", "",
             "Default Gluon kernel, random bf16, fixed density, the same kept sets; each variant's calls back to back "
             "for the given seconds (the card at its power limit), alternating rounds; best mean ms per call, against "
             "the score order, the SM clock and power of that stretch.", "",
             "| shape | density | order | best ms | vs score | SM MHz mean / min | W | max abs diff vs score |",
             "|---|---|---|---|---|---|---|---|"]
    for row in out.data["rows"]:
        base = row["best_ms"]["score"]
        for label, ms in row["best_ms"].items():
            c = best_clocks(row["rounds"], label)
            lines.append(f"| {row['shape']} | {row['density']:.2f} | {label} | {ms:.2f} | {ms / base:.3f} | "
                         f"{clock_cell(c)} | {(c or {}).get('power_w_mean', 0):.0f} | "
                         f"{row['max_abs_diff_vs_score'][label]:.1e} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
