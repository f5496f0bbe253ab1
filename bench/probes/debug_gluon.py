"""Diagnose the Gluon kernel on a GPU step by step (compile, launch, synchronize), tiny case first.

    python bench/probes/debug_gluon.py [tiny|wan|hunyuan]
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time
from dataclasses import replace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_sparse_attn as B  # noqa: E402

from svg2core.ops.sparse_attn import default_config, sparse_attention, sparse_attention_reference  # noqa: E402

faulthandler.dump_traceback_later(int(os.environ.get("DUMP_AFTER", "40")), exit=True)
case = sys.argv[1] if len(sys.argv) > 1 else "tiny"
shapes = {"tiny": (1, 700, 0, 4, 9), "tinytext": (1, 700, 40, 4, 9), "wan": (2, 32760, 0, 100, 500),
          "hunyuan": (2, 118800, 256, 400, 1000)}
h, nv, t, cq, ck = shapes[case]
base = default_config(torch.device("cuda"), torch.bfloat16, 128)
glu = replace(base, impl="gluon", tail_m=int(os.environ.get("TAIL_M", base.tail_m)),
              gluon_stages=int(os.environ.get("STAGES", "2")), gluon_debug=int(os.environ.get("GDEBUG", "0")),
              tail_concurrent=os.environ.get("CONCURRENT", "1") == "1")
n_video_tiles = None
args, kpm, _ = B.make_case(h, nv, t, cq, ck, float(os.environ.get("DENS", "0.3")), torch.bfloat16, seed=1)
tot = torch.gather(args["sel_cum"], 2, args["sel_count"][..., None].long())
print(f"[{case}] case made; sel_count {args['sel_count'].float().mean().item():.1f}, key tiles per query tile "
      f"max {int((tot.max() + 127) // 128)} min {int((tot.min() + 127) // 128)}; {glu}", flush=True)
t0 = time.time()
out = torch.full_like(args["q"], float("nan"))
sparse_attention(**args, num_dense_tokens=t, key_padding_mask=kpm, out=out, config=glu)
print(f"[{case}] launched after {time.time() - t0:.1f} s (compile included)", flush=True)
torch.cuda.synchronize()
print(f"[{case}] synchronized after {time.time() - t0:.1f} s", flush=True)
rows = torch.arange(min(nv, 1024), device="cuda")
if t:
    rows = torch.cat([rows, torch.arange(nv, nv + t, device="cuda")])
ref = sparse_attention_reference(**args, num_dense_tokens=t, key_padding_mask=kpm, query_index=rows, query_chunk=256)
got = out[:, :, rows].float()
print(f"[{case}] NaN {int(torch.isnan(out).sum())}, rel err {((got - ref).norm() / ref.norm()).item():.2e}", flush=True)
