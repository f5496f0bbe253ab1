"""The rebalancing margin kernel compiled for sm_90 without a GPU: registers, spills and shared memory per launch
configuration, so a change can be read before it costs GPU time.

    python bench/probes/compile_margin.py [--block-n 64 128] [--block-c 32 64] [--stages 2 3] [--warps 4 8]

Without options it compiles the library's launch (``svg2core.ops.rebalance.rebalance``'s constants). Run outside the
interpreter (TRITON_INTERPRET unset); bf16 points, D = 128, bf16 margins (the default).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compile_sm90 import resources  # noqa: E402

from svg2core.ops.rebalance import rebalance as R  # noqa: E402
from svg2core.ops.rebalance.triton_rebalance import _margin_kernel  # noqa: E402


def compile_margin(block_n: int, block_c: int, stages: int, warps: int, precision: str = "bf16"):
    names = _margin_kernel.arg_names
    sig = {n: "i32" for n in names}
    sig.update(x_ptr="*bf16", perm_ptr="*i32", labels_ptr="*i32", offsets_ptr="*i32", cent_ptr="*fp32",
               cent_lp_ptr="*bf16", cent_sq_ptr="*fp32", margin_ptr="*fp32", dest_ptr="*i32")
    consts = dict(D=128, BLOCK=128, BLOCK_N=block_n, BLOCK_C=block_c, PRECISION=precision)
    for k in consts:
        sig[k] = "constexpr"
    aligned = [n for n in names if sig[n].startswith("*")] + ["stride_xn", "stride_cc", "stride_lpc"]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(_margin_kernel, sig, consts, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--block-n", type=int, nargs="+", default=[R._BLOCK_N])
    ap.add_argument("--block-c", type=int, nargs="+", default=[R._BLOCK_C])
    ap.add_argument("--stages", type=int, nargs="+", default=[R._MARGIN_STAGES])
    ap.add_argument("--warps", type=int, nargs="+", default=[R._MARGIN_WARPS])
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()
    rows = []
    print("| BLOCK_N | BLOCK_C | stages | warps | registers | stack (spill) bytes | shared bytes | programs per SM |")
    print("|---|---|---|---|---|---|---|---|")
    for bn, bc, st, w in itertools.product(a.block_n, a.block_c, a.stages, a.warps):
        k = compile_margin(bn, bc, st, w)
        r = resources(k.asm["cubin"])
        regs, shared = r.get("regs", 0), k.metadata.shared
        fit = min(65536 // max(1, regs * 32 * w), (228 * 1024) // max(1, shared + 1024), 64 // w)
        print(f"| {bn} | {bc} | {st} | {w} | {regs} | {r.get('stack', '?')} | {shared} | {fit} |")
        rows.append(dict(block_n=bn, block_c=bc, stages=st, warps=w, regs=regs, stack=r.get("stack"), shared=shared,
                         programs_per_sm=fit))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
