"""A/B of the warp-specialised Gluon kernel against the Triton kernel (Hopper), in one run.

    python bench/probes/probe_gluon.py --out DIR [--check-only] [--models ...]

1. correctness of the Gluon path vs the fp32 reference (Wan 1.3B shape with 2 heads, HunyuanVideo shape
   with 2 heads + 256 text tokens and a padding mask, fp16), NaN-poisoned output;
2. a CUDA-graph capture + replay of a Gluon call (replay == eager);
3. timings: SDPA cuDNN dense, the Triton kernel (current default) and the Gluon kernel, interleaved, at the
   densities below. Writes DIR/probe_gluon_<card>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from functools import partial

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_sparse_attn as B  # noqa: E402

from svg2core.ops.sparse_attn import default_config, sparse_attention  # noqa: E402

CASES = {"wan1.3b-480p": (0.10, 0.15, 0.25, 0.40), "wan14b-720p": (0.15, 0.25), "hunyuan-720p": (0.25,)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--stages", type=int, default=2)
    opts = ap.parse_args()
    os.makedirs(opts.out, exist_ok=True)
    dev_name = torch.cuda.get_device_name()
    card = "h200" if "H200" in dev_name else "h100" if "H100" in dev_name else "gpu"
    dtype = torch.bfloat16
    base = replace(default_config(torch.device("cuda"), dtype, 128), impl="triton")
    glu = replace(base, impl="gluon", gluon_stages=opts.stages)
    res = {"device": dev_name, "base": base.__dict__, "gluon": glu.__dict__, "correctness": [], "timings": []}
    path = os.path.join(opts.out, f"probe_gluon_{card}.json")

    def save():
        with open(path, "w") as f:
            json.dump(res, f, indent=1)

    t0 = time.time()
    ok = B.check_correctness("wan1.3b-480p", 2, 32760, 0, 100, 500, dtype, glu, res)
    print(f"[compile+check] {time.time() - t0:.1f} s", flush=True)
    ok &= B.check_correctness("hunyuan-720p", 2, 118800, 256, 400, 1000, dtype, glu, res)
    ok &= B.check_correctness("wan1.3b-480p", 2, 32760, 0, 100, 500, torch.float16, glu, res)
    ok &= B.check_correctness("wan14b-720p", 2, 75600, 0, 300, 1000, dtype, glu, res)
    save()
    # CUDA graph
    args, kpm, _ = B.make_case(4, 118800, 256, 400, 1000, 0.15, dtype, seed=5)
    res["graph_replay_equals_eager"] = B.graph_replay_equals_eager(args, kpm, 256, glu)
    print(f"[graph] replay == eager: {res['graph_replay_equals_eager']}", flush=True)
    del args
    save()
    if opts.check_only or not ok:
        return
    for name in opts.models.split(","):
        h, nv, t, cq, ck = B.MODELS[name]
        dense_ms, dense_tf = B.dense_cudnn(h, nv + t, dtype)
        for density in CASES[name]:
            args, kpm, st = B.make_case(h, nv, t, cq, ck, density, dtype, seed=3)
            row = {"model": name, "density": density, "dense_ms": dense_ms, "dense_tflops": dense_tf}
            for _rep in range(2):
                for label, cfg in (("triton", base), ("gluon", glu)):
                    fn = partial(sparse_attention, **args, num_dense_tokens=t, key_padding_mask=kpm, config=cfg)
                    fn()
                    ms = B.time_ms(fn, reps=B.reps_for(dense_ms * density))
                    row.setdefault(f"{label}_ms", []).append(ms)
            for label in ("triton", "gluon"):
                ms = min(row[f"{label}_ms"])
                tf = B.tflops(st["pairs"], ms)
                row[f"{label}_tflops"] = tf
                row[f"{label}_x_cudnn"] = tf / dense_tf
            row.update(B.tile_waste(args, 128, 128, base.tail_m))
            res["timings"].append(row)
            print(f"[time] {name} d={density:.2f}: dense {dense_ms:.2f} ms {dense_tf:.0f} TF | triton "
                  f"{row['triton_ms']} {row['triton_tflops']:.0f} TF {row['triton_x_cudnn']:.2f}x | gluon "
                  f"{row['gluon_ms']} {row['gluon_tflops']:.0f} TF {row['gluon_x_cudnn']:.2f}x | "
                  f"q fill {row['query_tile_fill']:.2f}", flush=True)
            save()
            del args
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
