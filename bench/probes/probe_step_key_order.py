"""Why does the sweep order speed up HunyuanVideo's pipeline step but not Wan 14B's? (GPU, Hopper.)

NOTES_sparse_attn v18: laid out in sweep order, the kernel ran 6.1% (HunyuanVideo 720p) and 3.7% (Wan 14B 720p)
faster on bench_sparse_attn's synthetic selections (random kept sets), and HunyuanVideo's pipeline step gained
2.2-2.7%, but Wan 14B's step did not move. This probe takes the attention calls of the pipeline step itself: it builds
bench_pipeline_step's full-width random-weight transformer, runs one cold and one warm sparse forward (fixed density,
the step's cluster counts) with the rule's key order, records the last layer's ``sparse_attention`` arguments of the
warm forward, and then

- times that call in the rule's order and in sweep order (each back to back for ``--seconds``, the card at its power
  limit, alternating rounds; SM clock and power of each stretch), and
- describes the selection: how unequal the key clusters are (largest / mean size, the tokens in the largest 10%),
  and how much the kept sets of the query tiles in flight overlap (``window coverage``: the share of a head's key
  tokens that the query clusters of one wave of ``W`` tiles keep between them, against the same for kept sets drawn
  independently at the same density: ``1 - (1 - d)^n``).

If the step's kept sets overlap far more than random ones, the rule's order already reads a small window and the sweep
has nothing to add.

    python bench/probes/probe_step_key_order.py --out DIR [--models wan2.1-14b-720p,hunyuanvideo-720p]
        [--density 0.25] [--seconds 3] [--rounds 2]
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

import bench_pipeline_step as BP  # noqa: E402
import bench_sparse_attn as B  # noqa: E402
import probe_io as P  # noqa: E402
from gpu_clocks import clock_cell  # noqa: E402
from probe_key_halves import best_clocks, sustained_rounds  # noqa: E402

import svg2core.attention as attention  # noqa: E402
import svg2core.ops.sparse_attn as sparse_attn  # noqa: E402
from svg2core.integration import SparsityPlan, apply_svg2, svg2_session  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

CALL_TENSORS = ("q", "k", "v", "kp", "vp", "q_perm", "q_offsets", "k_offsets", "sel_idx", "sel_count", "sel_cum")


def record_last_call(model, kwargs, plan) -> dict:
    """The arguments of the last ``sparse_attention`` call of a warm forward (after a cold one), rule order."""
    real = sparse_attn.sparse_attention
    seen: dict = {}

    def recorder(*args, **kw):
        seen.clear()
        seen.update(dict(zip(CALL_TENSORS, args, strict=False)), **kw)
        seen.update({k: seen[k].clone() for k in CALL_TENSORS if isinstance(seen.get(k), torch.Tensor)})
        return real(*args, **kw)

    old_sweep = attention.KEY_SWEEP
    attention.KEY_SWEEP = False
    try:
        with torch.inference_mode(), svg2_session(model, plan, num_inference_steps=100):
            model(**kwargs)  # cold: k-means from scratch
            sparse_attn.sparse_attention = recorder
            model(**kwargs)
    finally:
        sparse_attn.sparse_attention = real
        attention.KEY_SWEEP = old_sweep
    return dict(seen)


def selection_stats(args: dict, period: int, density: float, block_m: int = 128) -> dict:
    """Key-cluster size skew and the kept sets' overlap over windows of ``period`` query tiles (head 0 and the
    middle head)."""
    k_sizes = (args["k_offsets"][:, 1:] - args["k_offsets"][:, :-1]).long()
    q_sizes = (args["q_offsets"][:, 1:] - args["q_offsets"][:, :-1]).long()
    bh, ck = k_sizes.shape
    nv = int(k_sizes[0].sum())
    top = k_sizes.sort(dim=1, descending=True).values
    out = {"k_largest_over_mean": (top[:, 0].double() / k_sizes.double().mean(1)).mean().item(),
           "k_tokens_in_largest_10pct": (top[:, : max(1, ck // 10)].sum(1).double() / nv).mean().item(),
           "q_largest_over_mean": (q_sizes.max(1).values.double() / q_sizes.double().mean(1)).mean().item()}
    coverage, expected = [], []
    for head in sorted({0, bh // 2}):
        cnt = args["sel_count"][head].long()
        rank = torch.arange(ck, device=cnt.device)
        kept = torch.zeros(q_sizes.shape[1], ck, dtype=torch.int32, device=cnt.device).scatter_add_(
            1, args["sel_idx"][head].long(), (rank < cnt[:, None]).int()) > 0  # (Cq, Ck)
        tiles = (q_sizes[head] + block_m - 1) // block_m
        first = torch.cumsum(tiles, 0) - tiles
        n_windows = int(first[-1].item()) // period + 1
        for w in range(n_windows):
            in_wave = (first >= w * period) & (first < (w + 1) * period)
            n = int(in_wave.sum())
            if n < 2:
                continue
            covered = kept[in_wave].any(0)
            coverage.append((k_sizes[head] * covered).sum().item() / nv)
            expected.append(1 - (1 - density) ** n)
    out["window_coverage"] = sum(coverage) / max(1, len(coverage))
    out["window_coverage_if_independent"] = sum(expected) / max(1, len(expected))
    return out


def case(name: str, density: float, seconds: float, rounds: int, device, waves=(), by_offset=False) -> dict:
    spec = BP.MODELS[name]
    model, kwargs, _, _ = BP.build(spec, device, torch.bfloat16)
    apply_svg2(model, backend="triton")
    args = record_last_call(model, kwargs, SparsityPlan(BP.sparse_config(density, spec)))
    del model
    torch.cuda.empty_cache()
    n, t = args["q"].shape[2], args.get("num_dense_tokens", 0)
    period, block_m = sparse_attn.key_sweep_layout(device, torch.bfloat16, 128, n - t)
    period = period or torch.cuda.get_device_properties(device).multi_processor_count
    call = {k: args[k] for k in CALL_TENSORS}
    rest = {k: v for k, v in args.items() if k not in CALL_TENSORS and k not in ("out", "workspace")}
    layouts = {"rule order": call, "sweep": B.selection_in_sweep_layout(call, period, block_m)}
    for w in waves:  # other periods, and the start by token offset instead of cluster id
        if w != period:
            layouts[f"sweep {w}"] = B.selection_in_sweep_layout(call, w, block_m)
    if by_offset:
        layouts["sweep by offset"] = B.selection_in_sweep_layout(call, period, block_m, by="offset")
    outs = {k: torch.empty_like(call["q"]) for k in layouts}  # several copies of a 0.7 GB output at HunyuanVideo
    spaces = {k: Workspace() for k in layouts}
    fns = {k: (lambda a=a, o=outs[k], w=spaces[k]: sparse_attn.sparse_attention(**a, **rest, out=o, workspace=w))
           for k, a in layouts.items()}
    for fn in fns.values():
        fn()
    torch.cuda.synchronize()
    row = {"model": name, "density": density, "shape": list(call["q"].shape), "period": period,
           "max_abs_diff": max((o.float() - outs["rule order"].float()).abs().max().item() for o in outs.values()),
           "selection": selection_stats(call, period, density), "rounds": []}
    print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), flush=True)
    row["rounds"], row["best_ms"] = sustained_rounds({k: [fn] for k, fn in fns.items()}, seconds, rounds, {"model": name})
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="wan2.1-14b-720p,hunyuanvideo-720p")
    ap.add_argument("--density", type=float, default=0.25)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--waves", default="", help="further sweep periods to time (comma-separated), e.g. 120,150")
    ap.add_argument("--by-offset", action="store_true",
                    help="also time sweeps that start by token offset instead of cluster id")
    args = ap.parse_args()
    waves = [int(w) for w in args.waves.split(",") if w]
    device = torch.device("cuda")
    out = P.ProbeResults(args.out, "probe_step_key_order", rows=[])
    for name in args.models.split(","):
        out.data["rows"].append(case(name, args.density, args.seconds, args.rounds, device, waves, args.by_offset))
        out.save()
        torch.cuda.empty_cache()
    lines = [f"# The pipeline step's own attention call in the rule's key order and in sweep order ({out.device})", "",
             "bench_pipeline_step's full-width random-weight transformer, fixed density, warm k-means; the last "
             "layer's call of the second forward, timed back to back for the given seconds (the card at its power "
             "limit), alternating rounds: best mean ms per call, SM clock and power of that stretch.", "",
             "| model | order | best ms | vs rule order | SM MHz mean / min | W |", "|---|---|---|---|---|---|"]
    for row in out.data["rows"]:
        base = row["best_ms"]["rule order"]
        for label, ms in row["best_ms"].items():
            c = best_clocks(row["rounds"], label)
            lines.append(f"| {row['model']} | {label} | {ms:.2f} | {ms / base:.3f} | {clock_cell(c)} | "
                         f"{(c or {}).get('power_w_mean', 0):.0f} |")
    lines += ["", "| model | key clusters: largest / mean | tokens in the largest 10% | query clusters: largest / mean "
              "| window coverage | if independent |", "|---|---|---|---|---|---|"]
    for row in out.data["rows"]:
        s = row["selection"]
        lines.append(f"| {row['model']} | {s['k_largest_over_mean']:.1f} | {s['k_tokens_in_largest_10pct']:.2f} | "
                     f"{s['q_largest_over_mean']:.1f} | {s['window_coverage']:.2f} | "
                     f"{s['window_coverage_if_independent']:.2f} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
