"""Would splitting each head's keys in two launches pay under sustained load? (GPU, Hopper.)

NOTES_sparse_attn v16: at HunyuanVideo's head length (K + V 61 MB a head, past the 50 MB L2) the attention kernel
reads 3x the DRAM bytes of half-length heads and runs at a 12% lower SM clock; one launch that may select only half
of each head's keys gets the short heads' L2 hit rate, but gained only 4-5% in a single call, where the card was
less power-bound. This probe times, back to back for a few seconds each (the card at its power limit, as in a
pipeline step), at the same computed pairs:

- ``one launch``: every key cluster selectable, density d;
- ``two launches``: the first half of the key clusters at d / 2, then the second half at d / 2 (two calls of the
  default kernel into two outputs): what a two-launch key split costs without its merge (an upper bound of its gain);
- ``first half twice``: the first half's call twice (only the working-set effect, no second set of keys).

Alternating rounds, the mean time per call and the SM clock / power of each stretch (nvidia-smi).

    python bench/probes/probe_key_halves.py --out DIR [--cases hunyuan-720p:0.25,wan14b-720p:0.25] [--seconds 3]

Results: docs/benchmarks/probe_key_halves_h100_s15.md (NOTES_sparse_attn v16).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_sparse_attn as B  # noqa: E402
import probe_io as P  # noqa: E402
from gpu_clocks import GpuClocks  # noqa: E402

from svg2core.ops.sparse_attn import sparse_attention  # noqa: E402

SHAPES = {"hunyuan-720p": (24, 118800, 0, 400, 1000), "wan14b-720p": (40, 75600, 0, 300, 1000)}


def sustained_ms(calls, seconds: float) -> float:
    """Mean milliseconds of one round of ``calls`` (functions queued back to back), over ``seconds`` of rounds."""
    for fn in calls:  # warm
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    rounds, t_end = 0, time.perf_counter() + seconds
    a.record()
    while time.perf_counter() < t_end:
        for _ in range(5):
            for fn in calls:
                fn()
        rounds += 5
        torch.cuda.synchronize()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / rounds


def sustained_rounds(variants: dict, seconds: float, rounds: int, tag: dict) -> tuple[list[dict], dict]:
    """Each variant (name -> a list of functions queued back to back) timed by :func:`sustained_ms` for ``seconds``
    per round, in alternating order (as given, then reversed, ...), with the SM clock and power of each stretch: the
    rounds' records (each printed with ``tag``) and the best mean ms per variant."""
    names = list(variants)
    records = []
    for rnd in range(rounds):
        for label in (names if rnd % 2 == 0 else names[::-1]):
            with GpuClocks(torch.device("cuda")) as clocks:
                ms = sustained_ms(variants[label], seconds)
            records.append({"variant": label, "round": rnd, "ms": ms, "gpu_clocks": clocks.summary()})
            print(json.dumps({**tag, **records[-1]}), flush=True)
    return records, {k: min(r["ms"] for r in records if r["variant"] == k) for k in names}


def best_clocks(records: list[dict], label: str) -> dict | None:
    """The SM clock / power summary of ``label``'s fastest round among :func:`sustained_rounds`' records."""
    return min((r for r in records if r["variant"] == label), key=lambda r: r["ms"])["gpu_clocks"]


def case(name: str, density: float, seconds: float, rounds: int) -> dict:
    h, nv, t, cq, ck = SHAPES[name]

    def call_of(window, d):
        args, kpm, st = B.make_case(h, nv, t, cq, ck, d, torch.bfloat16, seed=3, key_window=window)
        out = torch.empty_like(args["q"])
        return (lambda: sparse_attention(**args, num_dense_tokens=t, key_padding_mask=kpm, out=out)), st["pairs"]

    full, pairs_full = call_of(1.0, density)
    first, pairs_first = call_of((0.0, 0.5), density / 2)
    second, pairs_second = call_of((0.5, 1.0), density / 2)
    variants = {"one launch": [full], "two launches": [first, second], "first half twice": [first, first]}
    row = {"shape": name, "density": density, "pairs": {"one launch": pairs_full,
                                                        "two launches": pairs_first + pairs_second,
                                                        "first half twice": 2 * pairs_first}, "rounds": []}
    row["rounds"], best = sustained_rounds(variants, seconds, rounds, {"shape": name})
    row["best_ms"] = best
    # time per computed pair relative to one launch (the pairs differ by the selections' last-cluster overshoot)
    base = best["one launch"] / pairs_full
    row["per_pair_vs_one_launch"] = {k: (v / row["pairs"][k]) / base for k, v in best.items()}
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="hunyuan-720p:0.25,wan14b-720p:0.25")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    out = P.ProbeResults(args.out, "probe_key_halves", rows=[])
    for spec in args.cases.split(","):
        name, d = spec.split(":")
        out.data["rows"].append(case(name, float(d), args.seconds, args.rounds))
        out.save()
        torch.cuda.empty_cache()
    lines = [f"# Each head's keys in one launch or in two halves, under sustained load ({out.device})", "",
             "Default Gluon kernel, random bf16, fixed density; each variant's calls back to back for the given "
             "seconds (the card at its power limit), alternating rounds; best mean ms per round of calls, time per "
             "computed pair against one launch, SM clock of that stretch.", "",
             "| shape | density | variant | best ms | per pair vs one launch | SM MHz mean / min | W |",
             "|---|---|---|---|---|---|---|"]
    for row in out.data["rows"]:
        for label, ms in row["best_ms"].items():
            c = best_clocks(row["rounds"], label) or {}
            lines.append(f"| {row['shape']} | {row['density']:.3f} | {label} | {ms:.2f} | "
                         f"{row['per_pair_vs_one_launch'][label]:.3f} | {c.get('sm_mhz_mean', 0):.0f} / "
                         f"{c.get('sm_mhz_min', 0):.0f} | {c.get('power_w_mean', 0):.0f} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
