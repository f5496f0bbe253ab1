"""Compile the Gluon sparse-attention kernel for sm_90 without a GPU and report what the compiler made.

    python bench/probes/compile_sm90.py [--dump DIR]

Prints registers, spills, shared memory and counts of the instructions that matter (wgmma, cp.async,
mbarrier, bar.sync), so a change can be read before it costs GPU time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource

import svg2core.ops.sparse_attn.gluon_kernel as G
from svg2core.ops.sparse_attn.gluon_kernel import sparse_attn_fwd_gluon


def compile_kernel(head_dim=128, dtype="bf16", num_stages=2, producer_regs=G._PRODUCER_REGS,
                   consumer_regs=G._CONSUMER_REGS, maxnreg=G._MAXNREG, debug=0, pingpong=False, kv_perm=False, block_n=128,
                   pin_wait=False, tile_tables=False, persistent=False, has_kpm_one=False, divisible=()):
    sig = {}
    names = sparse_attn_fwd_gluon.arg_names
    ptr = f"*{dtype}"
    for n in names:
        sig[n] = "i32"
    for n in ("Q", "K", "V", "KP", "VP", "OUT"):
        sig[n] = ptr
    for n in ("QPERM", "QOFF", "KOFF", "SELIDX", "SELCNT", "SELCUM", "KPERM", "SEGBASE", "TILESEG", "ITEMRING",
              "COUNTER"):
        sig[n] = "*i32"
    sig["ITEMS"] = "*i64"
    sig["KPM"] = "*i8"
    sig["qk_scale"] = "fp32"
    consts = dict(HEAD_DIM=head_dim, BLOCK_N=block_n, CQ_BLOCK=512, TAIL_M=64,
                  NUM_STAGES=num_stages, PRODUCER_REGS=producer_regs, CONSUMER_REGS=consumer_regs, PINGPONG=pingpong, DEBUG=debug, KV_PERM=kv_perm, PIN_WAIT=pin_wait,
                  TILE_SEG=tile_tables, PERSISTENT=persistent)
    if has_kpm_one:  # what the JIT compiles for a call with a key padding mask: the int argument 1 specialised
        consts["HAS_KPM_I"] = 1
    for k in consts:
        sig[k] = "constexpr"
    # 16-byte aligned pointers and strides divisible by 16, as the JIT would specialise them
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if sig[n].startswith("*") or n in ("stride_qb", "stride_kb", "stride_vb", "stride_ob", "stride_qh", "stride_qn", "stride_kh", "stride_kn",
                                                 "stride_vh", "stride_vn", "stride_oh", "stride_on")
             or n in divisible}
    src = GluonASTSource(sparse_attn_fwd_gluon, sig, consts, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": 4, "maxnreg": maxnreg})


BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def resources(cubin: bytes) -> dict:
    """Registers, spill stores/loads and shared memory per kernel, from cuobjdump -res-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return dict(zip(("regs", "stack", "static_shared", "local"), map(int, m.groups()), strict=True)) if m else {"raw": out}


def sass(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(BIN / "cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout


def pv_wait_placement(sass_text: str) -> list[dict]:
    """For each consumer key-tile step in the SASS (from the wait for QK, ``DEPBAR.LE gsb0, 0x1``, to the next
    wgmma or branch): how many exponentials (MUFU.EX2) ptxas scheduled before and after the wait for PV
    (``DEPBAR.LE gsb0, 0x0``). All before = the softmax overlaps this warpgroup's own PV matmul."""
    ins = [ln.split(";")[0].split("*/")[-1].strip() for ln in sass_text.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/", ln)]
    steps, i = [], 0
    while i < len(ins):
        if "DEPBAR.LE gsb0, 0x1" in ins[i]:
            j = i + 1
            while j < len(ins) and "DEPBAR.LE gsb0, 0x0" not in ins[j]:
                j += 1
            k = j + 1
            while k < len(ins) and "HGMMA" not in ins[k] and " BRA " not in f" {ins[k]} ":
                k += 1
            steps.append({"ex2_before_wait": sum("MUFU.EX2" in x for x in ins[i:j]),
                          "ex2_after_wait": sum("MUFU.EX2" in x for x in ins[j:k])})
            i = j
        i += 1
    return steps


def report(k) -> dict:
    ptx = k.asm["ptx"]
    counts = {pat: len(re.findall(pat, ptx)) for pat in (
        r"wgmma\.mma_async", r"wgmma\.wait_group", r"cp\.async\.ca|cp\.async\.cg", r"cp\.async\.mbarrier\.arrive",
        r"mbarrier\.try_wait", r"mbarrier\.arrive", r"bar\.sync", r"barrier\.sync", r"setmaxnreg", r"ld\.local|st\.local")}
    meta = dict(shared=k.metadata.shared, **resources(k.asm["cubin"]))
    return {**meta, **counts}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump")
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--pingpong", action="store_true")
    ap.add_argument("--kv-perm", action="store_true")
    ap.add_argument("--block-n", type=int, default=128)
    ap.add_argument("--tile-tables", action="store_true", help="the producer reads tables.py's key-tile tables")
    ap.add_argument("--pin-wait", action="store_true", help="pin the PV wait after the softmax (gluon_pin_wait)")
    ap.add_argument("--persistent", action="store_true", help="one program per SM over a work list")
    ap.add_argument("--divisible", default="", help="int arguments the JIT would see divisible by 16, comma-separated "
                    "(e.g. NV,T at HunyuanVideo's 118,800 + 256 tokens)")
    ap.add_argument("--kpm", action="store_true", help="HAS_KPM_I specialised to 1, as for a call with a key padding mask")
    ap.add_argument("--json", help="also write the report and the setmaxnreg values to this file")
    a = ap.parse_args()
    k = compile_kernel(head_dim=a.head_dim, num_stages=a.stages, pingpong=a.pingpong, kv_perm=a.kv_perm, block_n=a.block_n,
                       pin_wait=a.pin_wait, tile_tables=a.tile_tables,
                       persistent=a.persistent, has_kpm_one=a.kpm,
                       divisible=tuple(filter(None, a.divisible.split(","))))
    rep = report(k)
    rep["setmaxnreg"] = re.findall(r"setmaxnreg\.(inc|dec)\S*\s+(\d+)", k.asm["ptx"])
    rep["atom_shared"] = len(re.findall(r"atom\.shared", k.asm["ptx"]))
    sass_text = sass(k.asm["cubin"])
    rep["pv_wait"] = pv_wait_placement(sass_text)
    rep["spill_stores"] = len(re.findall(r"\bSTL\b", sass_text))  # ptxas's spills (the PTX has no local memory)
    print(rep)
    if a.json:
        Path(a.json).write_text(json.dumps(rep))
    if a.dump:
        d = Path(a.dump)
        d.mkdir(parents=True, exist_ok=True)
        for ext in ("ttgir", "ptx", "llir"):
            (d / f"gluon.{ext}").write_text(k.asm[ext])
        (d / "gluon.sass").write_text(sass(k.asm["cubin"]))
