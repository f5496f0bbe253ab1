"""Compile the selection's k-means assign kernel for sm_90 without a GPU, with and without its PDL flag, and report
where the grid-dependency instructions sit in the PTX (svg2core.ops.pdl).

    python bench/probes/compile_pdl.py [--json FILE]

Run outside the interpreter (TRITON_INTERPRET unset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from svg2core.ops.kmeans.triton_kmeans import _kmeans_assign_kernel  # noqa: E402


def compile_assign(pdl: bool):
    kern = _kmeans_assign_kernel
    sig = {n: "i32" for n in kern.arg_names}
    sig.update(x_ptr="*bf16", cent_ptr="*bf16", cent_sq_ptr="*fp32", labels_ptr="*i32", counts_ptr="*i32")
    consts = dict(D=128, BLOCK_N=256, BLOCK_C=64, DOT_FP32=False, HIST=True, C_POW2=512, PACKED=True, PDL=pdl)
    sig.update({k: "constexpr" for k in consts})
    options = {"num_warps": 8, "num_stages": 2}
    if pdl:
        options["launch_pdl"] = True
    return triton.compile(ASTSource(kern, sig, consts), target=GPUTarget("cuda", 90, 32), options=options)


def report(pdl: bool) -> dict:
    k = compile_assign(pdl)
    lines = [ln.strip() for ln in k.asm["ptx"].splitlines()]

    def first(pattern: str) -> int:
        return next((i for i, ln in enumerate(lines) if pattern in ln), -1)

    return {"pdl": pdl, "launch_pdl": bool(k.metadata.launch_pdl),
            "wait_line": first("griddepcontrol.wait"), "launch_dependents_line": first("griddepcontrol.launch_dependents"),
            "first_global_load_line": first("ld.global"), "first_global_store_line": first("st.global")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    out = [report(False), report(True)]
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
