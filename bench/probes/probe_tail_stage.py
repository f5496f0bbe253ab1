"""The query-tail union stage's two heaviest kernels by launch shape (GPU).

    python bench/probes/probe_tail_stage.py --out DIR            # Wan 14B's and 480p's sizes, ~1 min on an H100

Session 27 profiled the reworked stage at Wan 14B's size (40 heads, 75,600 tokens, 300 / 1000 clusters; H100): the
pair savings 0.22 ms, the selection rows 0.16 ms, everything else 0.08 ms of 0.47 ms (NOTES_sparse_attn.md v28). At
480p the stage (~0.13 ms) costs more than the attention kernel saves at 15%. The savings kernel does ~8 G int8 MACs
at Wan 14B's size, microseconds of tensor-core time, so its 0.22 ms looks like latency: few programs (15
upper-triangle blocks a head), each a serial loop over the key clusters. This probe times both kernels in other
launch shapes:

- savings: 16- and 32-row blocks (16x / 4x the programs; 32 also with 2 warps, or 128 key clusters a step), 128 key
  clusters a step, 4 warps (the product has 8 since session 28), 2 / 4 pipeline stages (skipping the digit products
  that are 0 for every key cluster of a step was a variant until session 29: within noise, removed);
- rows: 2 / 8 / 16 warps for its 1,024-wide scan.

Inputs: random query clusterings and selections at the given sizes (:func:`layout`: skewed cluster sizes, each
query cluster keeping random key clusters up to the density), with the product's key sweep. First every variant's
output is checked against the product's (and the product's savings against ``pair_savings_reference``): equal, or
the probe stops. Then each is timed: best of alternating rounds of back-to-back launches (CUDA events). Writes
``probe_tail_stage_<card>.json/.md``. On the CPU (the interpreter) only the checks mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from probe_tile_rebalance import best_of_rounds  # noqa: E402

from svg2core.ops.tail_union.reference import FIXED_KEY_ROWS, pair_savings_reference  # noqa: E402
from svg2core.ops.tail_union.tail_union import launch_rows, launch_saving, tail_union  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

#: name -> (heads, video tokens, query clusters, key clusters) at the product's head dim 128
SHAPES = {"wan14b": (40, 75600, 300, 1000), "480p": (12, 32760, 200, 1000)}
SAVING_VARIANTS = {
    "product": {}, "bm32": dict(bm=32), "bk128": dict(bk=128), "warps4": dict(num_warps=4), "stages2": dict(num_stages=2),
    "stages4": dict(num_stages=4), "bm16": dict(bm=16), "bm32_bk128": dict(bm=32, bk=128),
    "bm32_warps2": dict(bm=32, num_warps=2), "bm32_warps4": dict(bm=32, num_warps=4),
    "bm16_warps4": dict(bm=16, num_warps=4), "bk128_warps4": dict(bk=128, num_warps=4),
}
ROWS_VARIANTS = {"product": {}, "warps2": dict(num_warps=2), "warps8": dict(num_warps=8),
                 "warps16": dict(num_warps=16)}
ARGS = ("q_labels", "q_perm", "q_offsets", "sel_idx", "sel_count", "sel_cum", "k_sizes")


def layout(seed: int, bh: int, nv: int, cq: int, ck: int, density: float = 0.3, empty: bool = False) -> dict:
    """A random clustering and a selection in the product's format (CPU tensors): ``sel_idx`` rows are whole orders
    of the key clusters, the first ``sel_count`` kept (the random ones up to ``density`` of the tokens, at least
    one), ``sel_cum`` their key-token prefix sums. ``empty``: a quarter of the clusters empty."""
    g = torch.Generator().manual_seed(seed)

    def clusters(c):
        w = torch.rand(bh, c, generator=g) ** 2 + 0.05
        if empty and c > 3:
            w[:, : c // 4] = 0.0
        labels = torch.multinomial(w, nv, replacement=True, generator=g)
        perm = torch.sort(labels, dim=1, stable=True).indices
        sizes = torch.stack([torch.bincount(r, minlength=c) for r in labels])
        offsets = torch.zeros(bh, c + 1, dtype=torch.long)
        offsets[:, 1:] = sizes.cumsum(1)
        return labels.int(), perm.int(), offsets.int(), sizes.int()

    q_labels, q_perm, q_off, _ = clusters(cq)
    _, _, _, k_sizes = clusters(ck)
    order = torch.rand(bh, cq, ck, generator=g).masked_fill(k_sizes[:, None] == 0, -1).argsort(2, descending=True)
    tok = torch.gather(k_sizes[:, None].expand(bh, cq, ck).long(), 2, order)
    keep = ((tok.cumsum(2) - tok) < density * nv) & (tok > 0)
    keep[..., 0] = True
    sel_cum = torch.zeros(bh, cq, ck + 1, dtype=torch.long)
    sel_cum[..., 1:] = tok.cumsum(2)
    return dict(q_labels=q_labels, q_perm=q_perm, q_offsets=q_off, sel_idx=order.int(),
                sel_count=keep.sum(2).int(), sel_cum=sel_cum.int(), k_sizes=k_sizes)


def measure(shape: tuple[int, int, int, int], density: float, device: str, sweep: tuple[int, int] | None,
            rounds: int = 3, calls: int = 20, block: int = 128, fixed: int = FIXED_KEY_ROWS,
            saving_variants: dict | None = None, rows_variants: dict | None = None) -> dict:
    """Check, then time, the savings and rows kernels' variants at ``shape`` (``SHAPES``' tuple); ms per launch."""
    saving_variants = SAVING_VARIANTS if saving_variants is None else saving_variants
    rows_variants = ROWS_VARIANTS if rows_variants is None else rows_variants
    bh, nv, cq, ck = shape
    dev = torch.device(device)
    t = {k: v.to(dev) for k, v in layout(0, bh, nv, cq, ck, density).items()}
    ws = Workspace()
    out = tail_union(*(t[a].clone() for a in ARGS), block=block, workspace=ws, fixed=fixed, sweep=sweep)
    c2 = out[4].shape[1]
    buf = {n: ws.buffer(f"q.tu_{n}", s, dt, dev) for n, s, dt in (
        ("member", (bh, cq, ck), torch.int8), ("saving", (bh, cq, cq), torch.int32),
        ("pairs", (bh, max(1, cq // 2), 2), torch.int32), ("tile0", (bh, c2), torch.int32))}
    sizes = (t["q_offsets"][:, 1:] - t["q_offsets"][:, :-1]).long()
    heads = slice(0, min(bh, 4))  # the reference on a few heads (float64 products)
    want = pair_savings_reference(sizes[heads], t["sel_count"][heads], t["sel_cum"][heads], t["sel_idx"][heads],
                                  t["k_sizes"][heads], block, fixed)
    if not torch.equal(buf["saving"][heads].long(), want):
        raise SystemExit("the product's savings differ from pair_savings_reference")
    saving = {name: torch.zeros_like(buf["saving"]) for name in saving_variants}
    rows = {name: tuple(x.clone() for x in out[4:7]) for name in rows_variants}
    period, sweep_m = sweep if sweep is not None else (0, 0)

    def call_saving(name):
        launch_saving(t["q_offsets"], t["sel_count"], t["sel_cum"], t["k_sizes"], buf["member"], saving[name], block,
                      fixed, None, **saving_variants[name])

    def call_rows(name):
        launch_rows(t["sel_count"], t["k_sizes"], buf["member"], buf["pairs"], buf["tile0"], *rows[name], period,
                    sweep_m, **rows_variants[name])

    failed = {}  # a launch shape the compiler or the card rejects: reported, not timed (a wrong result stops all)

    def launches(name, call) -> bool:
        if name == "product":
            call(name)
            return True
        try:
            call(name)
        except Exception as exc:  # noqa: BLE001 (any compile or launch error of a variant)
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            return False
        return True

    for name in saving_variants:
        if launches(name, call_saving) and not torch.equal(saving[name], buf["saving"]):
            raise SystemExit(f"savings variant {name} differs from the product's")
    for name in rows_variants:
        for x in rows[name]:
            x.fill_(-7)  # every entry the kernel owns must be rewritten
        if sweep_m == 0:
            for x, y in zip(rows[name], out[4:7], strict=True):
                x[:, :cq] = y[:, :cq]
        if launches(name, call_rows) and not all(torch.equal(x, y) for x, y in zip(rows[name], out[4:7], strict=True)):
            raise SystemExit(f"rows variant {name} differs from the product's")
    ms_saving = best_of_rounds(call_saving, [n for n in saving_variants if n not in failed], dev, rounds, calls)
    ms_rows = best_of_rounds(call_rows, [n for n in rows_variants if n not in failed], dev, rounds, calls)
    return dict(shape=dict(heads=bh, tokens=nv, cq=cq, ck=ck), density=density, sweep=sweep,
                saving_ms=ms_saving, rows_ms=ms_rows, failed=failed)


def table(name: str, r: dict) -> list[str]:
    s = r["shape"]
    lines = [f"## {name}: {s['heads']} heads, {s['tokens']} tokens, {s['cq']} / {s['ck']} clusters, density "
             f"{r['density']}, key sweep {r['sweep']}", "", "| kernel | variant | ms | vs product |", "|---|---|---|---|"]
    for kernel in ("saving", "rows"):
        ms = r[f"{kernel}_ms"]
        lines += [f"| {kernel} | {v} | {m:.4f} | {m / ms['product']:.3f} |" for v, m in ms.items()]
    lines += [f"| - | {v} | failed: {why} | - |" for v, why in r.get("failed", {}).items()]
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--density", type=float, default=0.25)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", default=None, help="write the tables and rows here (markdown + JSON)")
    a = ap.parse_args()
    from svg2core.ops.sparse_attn import key_sweep_layout

    results = {}
    for name in a.shapes:
        shape = SHAPES[name]
        period, sweep_m = key_sweep_layout(torch.device(a.device), torch.bfloat16, 128, shape[1])
        results[name] = measure(shape, a.density, a.device, (period, sweep_m) if period else None, a.rounds, a.calls)
        print(f"{name} done", flush=True)
    card = torch.cuda.get_device_name() if a.device == "cuda" else a.device
    text = "\n".join([f"# The tail-union stage's savings and rows kernels by launch shape ({card})", ""]
                     + [line for name, r in results.items() for line in table(name, r)])
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        tag = card.lower().replace("nvidia ", "").replace(" ", "_")
        with open(os.path.join(a.out, f"probe_tail_stage_{tag}.md"), "w") as f:
            f.write(text)
        with open(os.path.join(a.out, f"probe_tail_stage_{tag}.json"), "w") as f:
            json.dump(dict(args=vars(a), card=card, results=results), f, indent=1)


if __name__ == "__main__":
    main()
