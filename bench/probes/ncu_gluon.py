"""One Gluon sparse-attention call at a benchmark shape, for Nsight Compute (Hopper).

    ncu --clock-control none -k regex:sparse_attn_fwd_gluon -c 1 -s 1 --section ... \
        python bench/probes/ncu_gluon.py [--model wan1.3b-480p | --shape H,NV,T,CQ,CK] [--density 0.15] [--debug 0]
        [--key-order] [--key-window 0.5]

Runs the call twice (the first compiles; ``-s 1`` skips it) and prints the time of a third.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_sparse_attn as B  # noqa: E402

from svg2core.ops.sparse_attn import default_config, sparse_attention  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="wan1.3b-480p")
ap.add_argument("--shape", default="", help="heads,video tokens,text tokens,Cq,Ck instead of a --model (e.g. "
                "48,59400,0,200,500: HunyuanVideo's work in heads of half the tokens, NOTES_sparse_attn v11)")
ap.add_argument("--density", type=float, default=0.15)
ap.add_argument("--debug", type=int, default=0)
ap.add_argument("--stages", type=int, default=0)
ap.add_argument("--key-order", action="store_true", help="selected key clusters listed by id (B.selection_in_key_order)")
ap.add_argument("--key-window", type=float, default=1.0, help="only the first share of the key clusters (by id) "
                "selectable: one launch of a split of each head's keys (B.make_case)")
ap.add_argument("--persistent", action="store_true", help="gluon_persistent")
ap.add_argument("--tables", default="", help="gluon_tile_tables: on / off (default: the config's)")
opts = ap.parse_args()
h, nv, t, cq, ck = tuple(int(x) for x in opts.shape.split(",")) if opts.shape else B.MODELS[opts.model]
cfg = default_config(torch.device("cuda"), torch.bfloat16, 128)
cfg = replace(cfg, gluon_debug=opts.debug, gluon_stages=opts.stages or cfg.gluon_stages,
              gluon_tile_tables=opts.tables or cfg.gluon_tile_tables, gluon_persistent=opts.persistent)
args, kpm, st = B.make_case(h, nv, t, cq, ck, opts.density, torch.bfloat16, seed=3, key_window=opts.key_window)
if opts.key_order:
    args = B.selection_in_key_order(args)
for _ in range(3):
    sparse_attention(**args, num_dense_tokens=t, key_padding_mask=kpm, config=cfg)
torch.cuda.synchronize()
print("pairs", st["pairs"], "ms", B.time_ms(lambda: sparse_attention(**args, num_dense_tokens=t, key_padding_mask=kpm,
                                                                   config=cfg), reps=3, warmup=0, busy_ms=0))
