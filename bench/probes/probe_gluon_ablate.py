"""Ablations of the Gluon sparse-attention kernel (Hopper): which part of a key tile costs what, in one run.

    python bench/probes/probe_gluon_ablate.py --out DIR [--variants name=field:value+field:value,...]

Each variant is the Hopper default config with some fields replaced (``gluon_stages``, ``gluon_pingpong``,
``gluon_debug``). Variants without bisect hooks (``gluon_debug == 0``) are first checked against the fp32
reference (Wan 1.3B and HunyuanVideo shapes, 2 heads); the bisect hooks give wrong results by design and only
tell where the time goes (1: no wgmma in the key loop, 4: contiguous key rows, 8: synchronous wgmma). Then
every variant and SDPA cuDNN dense are timed, interleaved, on the shapes below. Writes
DIR/probe_gluon_ablate_<card>.json and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from functools import partial

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_sparse_attn as B  # noqa: E402

from svg2core.ops.sparse_attn import default_config, sparse_attention  # noqa: E402

DEFAULT_VARIANTS = ("default=,stages3=gluon_stages:3,pingpong=gluon_pingpong:1,"
                    "pingpong_stages3=gluon_pingpong:1+gluon_stages:3,"
                    "no_wgmma=gluon_debug:1,contiguous_rows=gluon_debug:4,sync_wgmma=gluon_debug:8")
CASES = (("wan1.3b-480p", 0.15), ("wan1.3b-480p", 0.25), ("wan14b-720p", 0.25), ("hunyuan-720p", 0.25))


def parse_variants(text: str, base) -> dict:
    """name=field:value+field:value,... -> {name: (config, kv_perm, key_order)}; the pseudo-field ``kv_perm:1``
    calls with kp = vp = None and k_perm (K/V read in place) instead of the gathered copies, ``key_order:1``
    with each query cluster's selected key clusters listed by id instead of by score (same set)."""
    out = {}
    for item in text.split(","):
        name, _, fields = item.partition("=")
        kw = {}
        kv_perm = key_order = False
        for f in filter(None, fields.split("+")):
            key, _, val = f.partition(":")
            if key == "kv_perm":
                kv_perm = bool(int(val))
                continue
            if key == "key_order":
                key_order = bool(int(val))
                continue
            kind = type(getattr(base, key))
            kw[key] = val if kind is str else kind(int(val))
        out[name] = (replace(base, **kw), kv_perm, key_order)
    return out



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--cases", default=",".join(f"{m}@{d}" for m, d in CASES))
    ap.add_argument("--reps", type=int, default=2,
                    help="timed rounds per case; each round starts at the next variant (order effects cancel)")
    opts = ap.parse_args()
    os.makedirs(opts.out, exist_ok=True)
    dev_name = torch.cuda.get_device_name()
    card = "h200" if "H200" in dev_name else "h100" if "H100" in dev_name else "gpu"
    dtype = torch.bfloat16
    base = default_config(torch.device("cuda"), dtype, 128)
    variants = parse_variants(opts.variants, base)
    res = {"device": dev_name,
           "variants": {k: {**v.__dict__, "kv_perm": p, "key_order": o} for k, (v, p, o) in variants.items()},
           "correctness": [], "timings": []}
    path = os.path.join(opts.out, f"probe_gluon_ablate_{card}.json")

    def save():
        with open(path, "w") as f:
            json.dump(res, f, indent=1)

    ok_variants = {}
    for name, (cfg, kv_perm, key_order) in variants.items():
        if cfg.gluon_debug:
            ok_variants[name] = (cfg, kv_perm, key_order)
            continue
        kw = dict(kv_perm=kv_perm, key_order=key_order)
        ok = B.check_correctness("wan1.3b-480p", 2, 32760, 0, 100, 500, dtype, cfg, res, **kw)
        ok &= B.check_correctness("hunyuan-720p", 2, 118800, 256, 400, 1000, dtype, cfg, res, **kw)
        res["correctness"][-1]["variant"] = res["correctness"][-2]["variant"] = name
        if ok:
            ok_variants[name] = (cfg, kv_perm, key_order)
        else:
            print(f"[skip] {name}: wrong results", flush=True)
        save()
    for case in opts.cases.split(","):
        model, _, dens = case.partition("@")
        density = float(dens)
        h, nv, t, cq, ck = B.MODELS[model]
        dense_ms, dense_tf = B.dense_cudnn(h, nv + t, dtype)
        args, kpm, st = B.make_case(h, nv, t, cq, ck, density, dtype, seed=3)
        args_by_id = B.selection_in_key_order(args) if any(v[2] for v in ok_variants.values()) else None
        row = {"model": model, "density": density, "dense_ms": dense_ms, "dense_tflops": dense_tf, "ms": {}}
        names = list(ok_variants)
        for rep in range(opts.reps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                cfg, kv_perm, key_order = ok_variants[name]
                fn = partial(sparse_attention, **B.call_args(args_by_id if key_order else args, st, kv_perm),
                             num_dense_tokens=t,
                             key_padding_mask=kpm, config=cfg)
                fn()
                ms = B.time_ms(fn, reps=B.reps_for(dense_ms * density))
                row["ms"].setdefault(name, []).append(ms)
        row["x_cudnn"] = {name: B.tflops(st["pairs"], min(v)) / dense_tf for name, v in row["ms"].items()}
        row.update(B.tile_waste(args, 128, 128, base.tail_m))
        res["timings"].append(row)
        print(f"[time] {model} d={density:.2f} dense {dense_ms:.2f} ms {dense_tf:.0f} TF | "
              + " | ".join(f"{n} {min(v):.3f} ms {row['x_cudnn'][n]:.3f}x" for n, v in row["ms"].items()), flush=True)
        save()
        del args, args_by_id
        torch.cuda.empty_cache()
    lines = [f"# Gluon kernel ablation ({dev_name})", "",
             f"x cuDNN = effective throughput (computed pairs / best of {opts.reps} interleaved rounds) over SDPA "
             "cuDNN dense of the same run; "
             "debug variants compute wrong results (timing only).", "",
             "| case | " + " | ".join(ok_variants) + " |", "|---|" + "---|" * len(ok_variants)]
    for row in res["timings"]:
        lines.append(f"| {row['model']} {row['density']:.2f} | "
                     + " | ".join(f"{row['x_cudnn'][n]:.3f}" for n in ok_variants) + " |")
    with open(os.path.join(opts.out, f"probe_gluon_ablate_{card}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
