"""What a query tile of 64 rows costs against one of 128 rows (Hopper default kernel), in one run.

    python bench/probes/probe_tile_cost.py --out DIR [--heads 8] [--tokens 76800] [--density 0.25]

Every query cluster has exactly S tokens (S = 64, 128, 192, 256, 320), so the kernel runs only full 128-row
tiles (S = 128, 256), only 64-row tiles (S = 64: one consumer warpgroup idle), or one of each per cluster
(S = 192, 320). Key clusters and their selection are the benchmark's (gamma sizes, random order kept up to the
density), so every query tile visits about ``density x tokens`` keys. From the times:

- ``us_per_key_tile_128``: time per (128-row query tile x 128-key tile) at S = 128;
- ``cost_64_vs_128``: the time of a 64-row tile over that of a 128-row tile with the same keys (1.0: a remainder
  tile costs a full tile; 0.5: it costs what its rows do).

Correctness first (S = 64 and 192 against the fp32 reference on two heads). Writes DIR/probe_tile_cost_<card>.json
and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_sparse_attn as B  # noqa: E402
from probe_gluon_ablate import parse_variants  # noqa: E402

from svg2core.ops.sparse_attn import default_config, sparse_attention, sparse_attention_reference  # noqa: E402

SIZES = (64, 128, 192, 256, 320)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=76800)
    ap.add_argument("--key-clusters", type=int, default=1000)
    ap.add_argument("--density", type=float, default=0.25)
    ap.add_argument("--variants", default="", help="name=field:value+field:value,... (KernelConfig fields)")
    opts = ap.parse_args()
    os.makedirs(opts.out, exist_ok=True)
    dev = torch.cuda.get_device_name()
    card = "h200" if "H200" in dev else "h100" if "H100" in dev else dev.replace(" ", "_").lower()
    h, nv, ck, dens = opts.heads, opts.tokens, opts.key_clusters, opts.density
    cfg = default_config(torch.device("cuda"), torch.bfloat16, 128)
    # the default config, and any variants of it to compare in the same run (--variants, as probe_gluon_ablate's).
    # Session 6 compared gluon_ksplit here (a <= 64-row tile split by key tiles between the two warpgroups, commit
    # 3144b6a): slower, removed (docs/benchmarks/probe_tile_cost_h100.md, NOTES_sparse_attn.md v9)
    variants = {"default": cfg, **{k: c for k, (c, _, _) in parse_variants(opts.variants, cfg).items()}}
    res = {"device": dev, "heads": h, "tokens": nv, "key_clusters": ck, "density": dens, "config": cfg.__dict__,
           "variants": list(variants), "correctness": [], "rows": []}

    for s in (64, 192):
        args, _, _ = B.make_case(2, 4096, 0, 0, 64, dens, torch.bfloat16, seed=s, q_cluster_size=s)
        ref = sparse_attention_reference(**args, query_chunk=1024)
        for name, c in variants.items():
            out = sparse_attention(**args, config=c)
            rel = ((out.float() - ref).norm() / ref.norm()).item()
            res["correctness"].append({"size": s, "variant": name, "rel_err": rel, "ok": rel < 1e-2})
            print(f"[check] S={s} {name}: rel err {rel:.2e}", flush=True)
    if not all(c["ok"] for c in res["correctness"]):
        raise SystemExit("correctness check failed")

    dense_ms, dense_tf = B.dense_cudnn(h, nv, torch.bfloat16)
    res["dense_ms"] = dense_ms
    for s in SIZES:
        args, _, st = B.make_case(h, nv, 0, 0, ck, dens, torch.bfloat16, seed=7, q_cluster_size=s)
        ms_v = {}
        for _ in range(2):  # interleaved rounds, best of each
            for name, c in variants.items():
                t_ms = B.time_ms(lambda a=args, c=c: sparse_attention(**a, config=c), reps=10)
                ms_v[name] = min(ms_v.get(name, t_ms), t_ms)
        ms = ms_v["default"]
        sizes = (args["q_offsets"][:, 1:] - args["q_offsets"][:, :-1]).double()
        cnt = args["sel_count"].long()
        sel_tokens = torch.gather(args["sel_cum"].long(), 2, cnt[..., None])[..., 0].double()
        key_tiles = torch.ceil(sel_tokens / cfg.gluon_block_n)
        full = torch.floor(sizes / 128)
        rem = sizes - full * 128
        half = ((rem > 0) & (rem <= 64)).double()
        full = full + ((rem > 64).double())
        row = {"size": s, "ms": ms, "x_cudnn": B.tflops(st["pairs"], ms) / dense_tf, "ms_variants": ms_v,
               "x_cudnn_variants": {k: B.tflops(st["pairs"], v) / dense_tf for k, v in ms_v.items()},
               "full_tile_key_tiles": (full * key_tiles).sum().item(),
               "half_tile_key_tiles": (half * key_tiles).sum().item(),
               "tflops": B.tflops(st["pairs"], ms)}
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
    # per (query tile x key tile) times: t128 from S = 128 (full tiles only); t64 from S = 64 (half tiles only)
    by = {r["size"]: r for r in res["rows"]}
    t128 = by[128]["ms"] / by[128]["full_tile_key_tiles"]
    t64 = by[64]["ms"] / by[64]["half_tile_key_tiles"]
    res["us_per_key_tile_128"] = t128 * 1e3
    res["us_per_key_tile_64"] = t64 * 1e3
    res["cost_64_vs_128"] = t64 / t128
    res["cost_64_vs_128_variants"] = {k: by[64]["ms_variants"][k] / by[64]["half_tile_key_tiles"] / t128
                                      for k in variants}
    for r in res["rows"]:  # the mixed sizes predicted from the two
        r["predicted_ms"] = r["full_tile_key_tiles"] * t128 + r["half_tile_key_tiles"] * t64
    path = os.path.join(opts.out, f"probe_tile_cost_{card}")
    with open(path + ".json", "w") as f:
        json.dump(res, f, indent=1)
    lines = [f"# Query-tile cost by cluster size ({dev}; {h} x {nv} tokens, {ck} key clusters, density {dens})", "",
             f"cuDNN dense {dense_ms:.2f} ms. 128-row tile x 128 keys: {t128 * 1e3:.3f} us of the whole GPU; "
             f"64-row tile: {t64 * 1e3:.3f} us = **{t64 / t128:.2f}** of a 128-row tile"
             + "".join(f"; {k}: {v:.2f}" for k, v in res["cost_64_vs_128_variants"].items() if k != "default")
             + ".", "",
             "| cluster size | ms | x cuDNN | TFLOP/s | predicted ms (from S=64, 128) |"
             + "".join(f" {k} ms | {k} x cuDNN |" for k in variants if k != "default"),
             "|---|---|---|---|---|" + "---|---|" * (len(variants) - 1)]
    for r in res["rows"]:
        lines.append(f"| {r['size']} | {r['ms']:.2f} | {r['x_cudnn']:.3f} | {r['tflops']:.0f} | {r['predicted_ms']:.2f} |"
                     + "".join(f" {r['ms_variants'][k]:.2f} | {r['x_cudnn_variants'][k]:.3f} |"
                               for k in variants if k != "default"))
    with open(path + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
