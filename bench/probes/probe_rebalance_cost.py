"""What query-tile rebalancing costs per kernel inside one warm ``svg2_attention`` call (GPU).

    python bench/probes/probe_rebalance_cost.py --out DIR [--heads 40 --grid 21,45,80 --cq 300 --ck 1000]

Inputs: bench_fidelity's synthetic video (``make_qkv``: structured tokens, so the query clusters have realistic
sizes), each token's 64 features twice (head dim 128), tiled over ``--heads`` heads. Per variant (rho = 0; rho with each margin precision) the probe first checks the output against
rho = 0 (same density; relative error printed), then profiles ``--calls`` warm calls with torch.profiler and reports
every kernel's mean time per call, sorted, plus the call's GPU time. Writes ``probe_rebalance_cost_<card>.json/.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from bench_fidelity import make_qkv  # noqa: E402

import svg2core.ops.rebalance.rebalance as rb  # noqa: E402
from svg2core import LayerState, SVG2Config, Workspace, svg2_attention  # noqa: E402


def inputs(heads: int, grid: tuple[int, int, int], objects: int, seed: int):
    q, k, v, _ = make_qkv(seed, grid=grid, num_objects=objects)
    reps = -(-heads // q.shape[1])
    widen = 128 // q.shape[-1]  # the product's head dim: each token's features repeated (same clusters)
    return [x.repeat(1, reps, 1, widen)[:, :heads].to("cuda", torch.bfloat16).contiguous() for x in (q, k, v)]


def profile_call(fn, calls: int) -> tuple[dict, float]:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per = defaultdict(float)
    for e in prof.events():
        if str(getattr(e, "device_type", "")).endswith("CUDA"):
            per[e.name[:60]] += e.device_time_total / 1e3 / calls if hasattr(e, "device_time_total") else 0.0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return dict(sorted(per.items(), key=lambda kv: -kv[1])), start.elapsed_time(end) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--grid", default="21,45,80")
    ap.add_argument("--objects", type=int, default=24)
    ap.add_argument("--cq", type=int, default=300)
    ap.add_argument("--ck", type=int, default=1000)
    ap.add_argument("--density", type=float, default=0.25)
    ap.add_argument("--rho", type=int, default=16)
    ap.add_argument("--calls", type=int, default=5)
    a = ap.parse_args()
    grid = tuple(int(x) for x in a.grid.split(","))
    q, k, v = inputs(a.heads, grid, a.objects, seed=0)
    card = torch.cuda.get_device_name().lower().replace(" ", "_")
    results = {"card": torch.cuda.get_device_name(), "shape": list(q.shape), "cq": a.cq, "ck": a.ck,
               "density": a.density, "rho": a.rho, "variants": {}}
    ref = None
    for tag, rho, precision in (("rho0", 0, None), ("bf16", a.rho, "bf16"), ("tf32x3", a.rho, "tf32x3")):
        if precision:
            rb.MARGIN_PRECISION = precision
        cfg = SVG2Config(mode="fixed_density", target_density=a.density, num_q_clusters=a.cq, num_k_clusters=a.ck,
                         kmeans_iters_init=20, kmeans_iters=2, query_tile_rebalance=rho)
        state, ws = LayerState(), Workspace()
        svg2_attention(q, k, v, cfg, state, workspace=ws)  # cold
        out, _ = svg2_attention(q, k, v, cfg, state, workspace=ws)
        torch.cuda.synchronize()
        if ref is None:
            ref = out.float().clone()
        err = ((out.float() - ref).norm() / ref.norm()).item()
        kernels, call_ms = profile_call(
            lambda cfg=cfg, state=state, ws=ws: svg2_attention(q, k, v, cfg, state, workspace=ws), a.calls)
        results["variants"][tag] = {"call_ms": call_ms, "kernels_ms": kernels, "rel_diff_vs_rho0": err}
        print(f"{tag}: call {call_ms:.2f} ms, vs rho0 {err:.3e}; top: "
              + ", ".join(f"{n} {t:.3f}" for n, t in list(kernels.items())[:8]), flush=True)
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"probe_rebalance_cost_{card}")
    with open(stem + ".json", "w") as fh:
        json.dump(results, fh, indent=1)
    names = sorted({n for r in results["variants"].values() for n in r["kernels_ms"]},
                   key=lambda n: -max(r["kernels_ms"].get(n, 0) for r in results["variants"].values()))
    tags = list(results["variants"])
    lines = [f"# Query-tile rebalancing, cost per kernel ({results['card']})", "",
             f"One warm svg2_attention call, {tuple(q.shape)} bf16, {a.cq} / {a.ck} clusters, fixed density "
             f"{a.density}, rho = {a.rho}; mean of {a.calls} profiled calls (ms).", "",
             "| kernel | " + " | ".join(tags) + " |", "|---|" + "---|" * len(tags),
             "| **call (CUDA events)** | " + " | ".join(f"{results['variants'][t]['call_ms']:.3f}" for t in tags) + " |"]
    for n in names[:25]:
        lines.append(f"| `{n}` | " + " | ".join(f"{results['variants'][t]['kernels_ms'].get(n, 0):.3f}" for t in tags)
                     + " |")
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
