"""Warp-stall samples of the Gluon kernel by partition and by instruction, from bench/probes/ncu_stalls.sh's export.

    python bench/probes/stall_table.py OUT/source.csv [--top 30] [--md FILE]

The kernel's SASS holds three partitions (two consumer warpgroups, one producer), each starting at a
``USETMAXREG`` (the consumers raise their registers to 232 = 0xe8, the producer lowers them to 40 = 0x28). For
each partition: its share of the samples, the stall reasons, and its hottest instructions with their main reasons.
"""

from __future__ import annotations

import argparse
import csv


def _num(x: str) -> float:
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0


def partitions(data: list[list[str]]) -> list[tuple[str, int, int]]:
    """(name, first row, end row) of each partition: a region starts at a USETMAXREG that sets the registers to
    0xe8 (a consumer: raised from the launch's count, or lowered from 256) or lowers them to 0x28 (the producer),
    and ends at the next USETMAXREG."""
    marks = [(i, d[1]) for i, d in enumerate(data) if "USETMAXREG" in d[1]]
    out = []
    for k, (i, text) in enumerate(marks):
        end = marks[k + 1][0] if k + 1 < len(marks) else len(data)
        if text.rstrip().endswith("0xe8"):
            out.append((f"consumer {sum(1 for n, _, _ in out if n.startswith('consumer'))}", i, end))
        elif "DEALLOC" in text and text.rstrip().endswith("0x28"):
            out.append(("producer", i, end))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--md")
    opts = ap.parse_args()
    rows = list(csv.reader(open(opts.csv)))
    hdr, data = rows[1], rows[2:]
    col = {h: i for i, h in enumerate(hdr)}
    reasons = [h for h in hdr if h.startswith("stall_") and "(Not Issued)" not in h]
    samples = col["Warp Stall Sampling (All Samples)"]
    total = sum(_num(d[samples]) for d in data)
    lines = [f"Warp-stall samples: {total:.0f} in all ({rows[0][1] if len(rows[0]) > 1 else ''})", ""]
    for name, a, b in partitions(data):
        seg = data[a:b]
        s = sum(_num(d[samples]) for d in seg) or 1.0
        executed = sum(_num(d[col["Instructions Executed"]]) for d in seg)
        by = sorted(((r, sum(_num(d[col[r]]) for d in seg)) for r in reasons), key=lambda x: -x[1])
        lines += [f"## {name} (SASS rows {a}-{b}): {100 * s / total:.1f}% of the samples, "
                  f"{executed:.3g} warp instructions", "",
                  "Reasons: " + ", ".join(f"{r[6:]} {100 * v / s:.1f}%" for r, v in by[:9]), "",
                  "| row | % of partition | instruction | main reasons |", "|---|---|---|---|"]
        hot = sorted(range(a, b), key=lambda i: -_num(data[i][samples]))[: opts.top]
        for i in sorted(hot):
            d = data[i]
            top = sorted(((r, _num(d[col[r]])) for r in reasons), key=lambda x: -x[1])[:3]
            why = ", ".join(f"{r[6:]} {100 * v / s:.1f}" for r, v in top if v > 0)
            lines.append(f"| {i} | {100 * _num(d[samples]) / s:.1f} | `{d[1].strip()[:72]}` | {why} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if opts.md:
        with open(opts.md, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
