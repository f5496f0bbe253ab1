"""Probe (GPU): which fast dense kernels could run the packed per-query-cluster attention.

Checks whether torch exposes a variable-length (ragged) attention entry point and how fast it is
against SDPA cuDNN on the Wan 1.3B 480p shape, and whether Triton's Gluon dialect (for a
FlashAttention-3-style warp-specialised kernel) imports. Prints a short report; informs the kernel
plan in docs/benchmarks/NOTES_sparse_attn.md.
"""
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

rep = {"torch": torch.__version__, "device": torch.cuda.get_device_name()}


def bench(fn, n=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n


H, N, D = 12, 32760, 128
q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    t = bench(lambda: F.scaled_dot_product_attention(q, k, v))
rep["cudnn_dense_ms"] = t
rep["cudnn_dense_tflops"] = 4 * H * N * N * D / t / 1e9

# ragged: 100 query clusters x 12 heads, each with ~15% of keys (packed), as one varlen batch
try:
    from torch.nn.attention import varlen as V
    rep["varlen_module"] = [n for n in dir(V) if not n.startswith("_")]
    nseq = H * 100
    lq = torch.full((nseq,), N // 100, dtype=torch.int32, device="cuda")
    lk = torch.full((nseq,), int(0.15 * N), dtype=torch.int32, device="cuda")
    cq = F.pad(lq.cumsum(0), (1, 0)).int()
    ck = F.pad(lk.cumsum(0), (1, 0)).int()
    tq, tk = int(lq.sum()), int(lk.sum())
    qq = torch.randn(tq, 1, D, device="cuda", dtype=torch.bfloat16)
    kk = torch.randn(tk, 1, D, device="cuda", dtype=torch.bfloat16)
    vv = torch.randn(tk, 1, D, device="cuda", dtype=torch.bfloat16)
    fn = lambda: V.varlen_attn(qq, kk, vv, cq, ck, int(lq.max()), int(lk.max()))
    t = bench(fn)
    rep["varlen_ms"] = t
    rep["varlen_tflops"] = 4 * float((lq.double() * lk.double()).sum()) * D / t / 1e9
except Exception as ex:  # noqa: BLE001 - a probe reports whatever failed
    rep["varlen_error"] = repr(ex)[:300]

try:
    from triton.experimental import gluon  # noqa: F401
    from triton.experimental.gluon.language.nvidia import hopper
    rep["gluon_hopper"] = [n for n in dir(hopper) if not n.startswith("_")][:40]
except Exception as ex:  # noqa: BLE001
    rep["gluon_error"] = repr(ex)[:300]

out = os.environ.get("OUT", ".")
json.dump(rep, open(os.path.join(out, "probe_varlen.json"), "w"), indent=1)
print(json.dumps(rep, indent=1))
