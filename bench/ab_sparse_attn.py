"""A/B timing of sparse-attention kernel versions in one run (the v4 sweeps of NOTES_sparse_attn.md).

    git show c7cdcf3:svg2core/ops/sparse_attn/kernel.py > /tmp/v3_kernel.py
    python bench/ab_sparse_attn.py --out DIR --baseline-kernel /tmp/v3_kernel.py [--reps 2]

1. correctness of every variant (Wan 1.3B shape with 2 heads, HunyuanVideo shape with 1 head and its
   256 text tokens; 1024 sampled video rows + all text rows vs the fp32 reference; NaN-poisoned output);
2. timings at Wan 1.3B 10/25/40% and Wan 14B 15% with SDPA cuDNN dense of the same run, each variant
   ``--reps`` times in interleaved order (v4 tail, baseline, v4 tail on a second stream, v4 no tail), so
   the spread between repeats of one variant can be compared with the differences between variants.

The baseline is a kernel.py with the v3 signature (no TAIL_* constexprs), loaded from a file. Writes
ab.json (every row) and best.json (KernelConfig fields of the fastest correct current-code variant,
summed over all timings; ``bench_sparse_attn.py --config best.json`` takes it) under DIR.
Without a GPU it runs tiny shapes under TRITON_INTERPRET=1 as a smoke test of the script itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from functools import partial

import torch
import triton

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_sparse_attn as B  # noqa: E402

from svg2core.ops.sparse_attn import KernelConfig, sparse_attention, sparse_attention_reference  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TIMED = (("wan1.3b-480p", (0.10, 0.25, 0.40)), ("wan14b-720p", (0.15,)))


def use_cpu_smoke_shapes() -> None:
    """Tiny shapes, wall-clock timing and the interpreter's bf16 dot fix (tests/svg2core/conftest.py)."""
    B.MODELS = {"wan1.3b-480p": (2, 300, 0, 3, 9), "wan14b-720p": (1, 200, 0, 2, 7), "hunyuan-720p": (1, 200, 16, 2, 7)}
    make_case = B.make_case
    B.make_case = lambda *a, **k: make_case(*a, dev="cpu", **k)

    def wall_ms(fn, reps=1, warmup=0):
        t0 = time.time()
        fn()
        return (time.time() - t0) * 1e3

    B.time_ms = wall_ms
    torch.cuda.synchronize = lambda: None
    sys.path.insert(0, os.path.join(ROOT, "tests", "svg2core"))
    import conftest

    conftest._patch_interpreter_bf16_dot()


def baseline_attention(module):
    """A launcher of an older kernel module with the v3 signature (one launch, remainders padded)."""

    def run(q, k, v, kp, vp, q_perm, q_offsets, k_offsets, sel_idx, sel_count, sel_cum, *, num_dense_tokens=0,
            key_padding_mask=None, out=None, config=None):
        b, h, n, d = q.shape
        t = num_dense_tokens
        nv = n - t
        cq, ck = q_offsets.shape[1] - 1, k_offsets.shape[1] - 1
        kpm = key_padding_mask.contiguous().view(torch.int8) if key_padding_mask is not None else q_perm
        out = torch.empty_like(q) if out is None else out
        text_tiles = triton.cdiv(t, config.block_m) if t else 0
        grid = (text_tiles + module.max_video_tiles(nv, cq, config.block_m), b * h)
        module.sparse_attn_fwd_kernel[grid](
            q, k, v, kp, vp, out, q_perm, q_offsets, k_offsets, sel_idx, sel_count, sel_cum, kpm,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            h, nv, t, cq, ck, text_tiles, (1.0 / math.sqrt(d)) * 1.4426950408889634,
            HEAD_DIM=d, BLOCK_M=config.block_m, BLOCK_N=config.block_n, CQ_BLOCK=triton.next_power_of_2(cq),
            HAS_KPM=key_padding_mask is not None, SKIP_KEY_INDEX=config.skip_key_index,
            num_warps=config.num_warps, num_stages=config.num_stages)
        return out

    return run


def check(fn, cfg, model: str) -> dict:
    h, nv, t, cq, ck = B.MODELS[model]
    h = min(h, 1 if t else 2)
    args, kpm, _ = B.make_case(h, nv, t, cq, ck, 0.15, torch.bfloat16, seed=1)
    out = torch.full_like(args["q"], float("nan"))
    fn(**args, num_dense_tokens=t, key_padding_mask=kpm, out=out, config=cfg)
    torch.cuda.synchronize()
    nan = int(torch.isnan(out).sum())
    rows = torch.randperm(nv, device=DEV)[:1024]
    if t:
        rows = torch.cat([rows, torch.arange(nv, nv + t, device=DEV)])
    ref = sparse_attention_reference(**args, num_dense_tokens=t, key_padding_mask=kpm, query_index=rows,
                                     query_chunk=256)
    rel = ((out[:, :, rows].float() - ref).norm() / ref.norm()).item()
    return {"model": model, "rel_err": rel, "nan": nan, "ok": nan == 0 and rel < 1e-2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--baseline-kernel", required=True, help="kernel.py of the older version (v3 signature)")
    ap.add_argument("--reps", type=int, default=2)
    opts = ap.parse_args()
    if DEV == "cpu":
        use_cpu_smoke_shapes()
    os.makedirs(opts.out, exist_ok=True)
    spec = importlib.util.spec_from_file_location("baseline_kernel", opts.baseline_kernel)
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    K = KernelConfig
    variants = []
    for rep in range(1, opts.reps + 1):
        variants += [
            (f"v4b tail64 64x64/4w/3s sequential #{rep}", sparse_attention, K(128, 128, 8, 3, tail_m=64)),
            (f"baseline 128x128/8w/3s #{rep}", baseline_attention(baseline), K(128, 128, 8, 3)),
            (f"v4g tail64 64x64/4w/3s concurrent stream #{rep}", sparse_attention,
             K(128, 128, 8, 3, tail_m=64, tail_concurrent=True)),
            (f"v4a FFMA fold, no tail #{rep}", sparse_attention, K(128, 128, 8, 3)),
        ]
    res = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu smoke", "torch": torch.__version__,
           "triton": triton.__version__, "baseline_kernel": opts.baseline_kernel, "dense": {}, "variants": []}

    def save():
        with open(os.path.join(opts.out, "ab.json"), "w") as f:
            json.dump(res, f, indent=1)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    cases = {}
    for model, densities in TIMED:
        h, nv, t, cq, ck = B.MODELS[model]
        q, k, v = (torch.randn(1, h, nv + t, 128, device=DEV, dtype=torch.bfloat16) for _ in range(3))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION if DEV == "cuda" else SDPBackend.MATH):
            dense = partial(torch.nn.functional.scaled_dot_product_attention, q, k, v)
            dense()
            ms = B.time_ms(dense, reps=10 if nv < 50000 else 4)
        res["dense"][model] = {"ms": ms, "tflops": B.tflops(h * (nv + t) ** 2, ms)}
        print(f"[dense] {model} {ms:.2f} ms {res['dense'][model]['tflops']:.0f} TFLOP/s", flush=True)
        del q, k, v
        for density in densities:
            cases[(model, density)] = B.make_case(h, nv, t, cq, ck, density, torch.bfloat16, seed=3)

    for label, fn, cfg in variants:
        row = {"label": label, "config": cfg.__dict__, "times": {}}
        try:
            if label.endswith("#1"):
                row["check"] = [check(fn, cfg, m) for m in ("wan1.3b-480p", "hunyuan-720p")]
                print(f"[check] {label}: {row['check']}", flush=True)
            for (model, density), (args, kpm, st) in cases.items():
                call = partial(fn, **args, key_padding_mask=kpm, config=cfg)
                call()
                ms = B.time_ms(call, reps=B.reps_for(res["dense"][model]["ms"] * density))
                tf = B.tflops(st["pairs"], ms)
                fill = B.tile_waste(args, cfg.block_m, cfg.block_n, cfg.tail_m if fn is sparse_attention else 0)
                row["times"][f"{model}@{density}"] = {
                    "ms": ms, "tflops": tf, "ratio": tf / res["dense"][model]["tflops"],
                    "q_fill": fill["query_tile_fill"], "per_computed_tile_tflops": tf / fill["tile_fill"]}
        except Exception as e:  # a variant that fails is recorded, not fatal
            row["error"] = repr(e)[:400]
            print(f"[error] {label}: {row['error']}", flush=True)
        res["variants"].append(row)
        save()

    totals: dict[str, list] = {}
    for r in res["variants"]:
        if r["label"].startswith("v4") and "error" not in r and all(c["ok"] for c in r.get("check", [])):
            key = json.dumps(r["config"], sort_keys=True)
            totals.setdefault(key, [r, 0.0])[1] += sum(x["ms"] for x in r["times"].values())
    best = min(totals.values(), key=lambda x: x[1])[0]
    with open(os.path.join(opts.out, "best.json"), "w") as f:
        json.dump(best["config"], f)
    print(f"[best] {best['label']} {best['config']}")
    print("| variant | " + " | ".join(best["times"]) + " |")
    for r in res["variants"]:
        cells = " | ".join(f"{x['ms']:.2f} ms {x['ratio']:.3f}x" for x in r["times"].values())
        print(f"| {r['label']} | {cells} |")


if __name__ == "__main__":
    main()
