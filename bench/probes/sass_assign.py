"""The k-means assign kernel compiled for sm_90 without a GPU: registers and the instruction mix of its tile loop.

    python bench/probes/sass_assign.py [--packed] [--block-n 256] [--block-c 64] [--warps 8] [--stages 2]

Compiles ``triton_kmeans._kmeans_assign_kernel`` (bf16, D = 128, no histogram) with Triton's own ptxas and counts
the SASS instructions from 40 before the first HGMMA to the loop's backward branch: what one centroid tile costs
each warp besides its dot (the argmin epilogue). Run outside the interpreter (TRITON_INTERPRET unset).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from svg2core.ops.kmeans.triton_kmeans import _kmeans_assign_kernel  # noqa: E402


def _compile_triton(opts):
    kern = _kmeans_assign_kernel
    names = kern.arg_names
    sig = {n: "i32" for n in names}
    sig.update(x_ptr="*bf16", cent_ptr="*bf16", cent_sq_ptr="*fp32", labels_ptr="*i32", counts_ptr="*i32")
    consts = dict(D=128, BLOCK_N=opts.block_n, BLOCK_C=opts.block_c, DOT_FP32=False, HIST=False,
                  C_POW2=opts.clusters_pow2, PACKED=opts.packed, EVEN_C=opts.even_c)
    for k in consts:
        sig[k] = "constexpr"
    attrs = {(names.index(n),): [["tt.divisibility", 16]]
             for n in ("x_ptr", "cent_ptr", "cent_sq_ptr", "labels_ptr", "stride_xn", "stride_cc", "stride_xh",
                       "stride_cbh", "stride_xb", "stride_sbh", "stride_lbh")}
    return triton.compile(ASTSource(kern, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": opts.warps, "num_stages": opts.stages})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packed", action="store_true", help="the packed-key argmin (PACKED)")
    ap.add_argument("--even-c", action="store_true", help="centroid buffers padded to whole tiles (EVEN_C)")
    ap.add_argument("--block-n", type=int, default=256)
    ap.add_argument("--block-c", type=int, default=64)
    ap.add_argument("--warps", type=int, default=8)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--clusters-pow2", type=int, default=1024)
    opts = ap.parse_args()
    k = _compile_triton(opts)
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        sass = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
        res = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", f.name], capture_output=True,
                             text=True).stdout
    ins = [ln.split(";")[0].split("*/", 1)[-1].strip() for ln in sass.splitlines()
           if re.search(r"/\*[0-9a-f]{4,}\*/\s+[A-Z@]", ln)]
    hgmma = [i for i, t in enumerate(ins) if "HGMMA" in t]
    end = next(i for i in range(hgmma[-1], len(ins)) if "BRA" in ins[i])
    body = ins[max(0, hgmma[0] - 40): end + 1]
    mix = collections.Counter((t.split()[1] if t.startswith("@") else t.split()[0]) for t in body)
    # matmul waits that leave one group in flight (async overlap); ptxas serialises the matmuls (waits for 0 after
    # each) when a non-wgmma instruction reads an accumulator in flight
    waits_le1 = len(re.findall(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x1", sass))
    out = {"packed": opts.packed, "block_n": opts.block_n, "warps": opts.warps,
           "async_waits": waits_le1, "resources": re.search(r"REG:\d+ STACK:\d+ SHARED:\d+ LOCAL:\d+", res).group(0),
           "registers": int(re.search(r"REG:(\d+)", res).group(1)), "shared_bytes": k.metadata.shared,
           "spill_stores": len(re.findall(r"\bSTL", sass)),
           "loop_instructions": len(body), "hgmma": mix.get("HGMMA.64x64x16.F32.BF16", 0),
           "mix": dict(mix.most_common(16))}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
