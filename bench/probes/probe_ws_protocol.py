"""Minimal repro of the Gluon kernel's producer/consumer protocol (no wgmma), to separate the mbarrier
handshake from the rest of the kernel (NOTES_sparse_attn.md, v5).

    python bench/probes/probe_ws_protocol.py            # needs a Hopper GPU

Three partitions like gluon_kernel.py: two consumer warpgroups (default + worker) and a producer
warpgroup; a ring of NUM_STAGES stages; "full" mbarriers (producer -> consumers) and "empty" mbarriers
(consumers -> producer, count 2). Per tile the producer copies a (ROWS, 64) fp16 block into the stage;
each consumer waits, sums the stage, and releases it. Variants: the producer signals "full" with
cp.async.mbarrier.arrive.noinc from every thread (MODE 0, as in the kernel) or, after waiting for its
own copies, with one elected plain arrive (MODE 1, count 1).
"""

from __future__ import annotations

import faulthandler
import os
import sys

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import async_copy, mbarrier

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from svg2core.ops.sparse_attn.gluon_kernel import _barrier, _cp_async  # noqa: E402


@gluon.jit
def _producer(args):
    X, OUT, n_tiles, mode, bufs, full_bars, empty_bars, rows_smem = args
    NUM_STAGES: gl.constexpr = bufs.type.shape[0]
    ROWS: gl.constexpr = bufs.type.shape[1]
    lay: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    idx_lay: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    r = gl.arange(0, ROWS, layout=gl.SliceLayout(1, lay))
    c = gl.arange(0, 64, layout=gl.SliceLayout(0, lay))
    for t in range(n_tiles):
        s = t % NUM_STAGES
        if (mode & 2) != 0:  # rows staged through shared memory between two partition barriers (the kernel's way)
            _barrier()
            rows_smem.store(t * ROWS + gl.arange(0, ROWS, layout=idx_lay))
            _barrier()
        mbarrier.wait(empty_bars.index(s), ((t // NUM_STAGES) & 1) ^ 1)
        if (mode & 2) != 0:
            rr = rows_smem.load(gl.SliceLayout(1, lay))
        else:
            rr = t * ROWS + r
        _cp_async(bufs.index(s), X + rr[:, None] * 64 + c[None, :])
        if (mode & 1) == 0:
            async_copy.mbarrier_arrive(full_bars.index(s), increment_count=False)
        else:
            async_copy.commit_group()
            async_copy.wait_group(0)
            _barrier()
            mbarrier.arrive(full_bars.index(s), count=1)
    async_copy.commit_group()
    async_copy.wait_group(0)


@gluon.jit
def _consumer(args, WG: gl.constexpr):
    X, OUT, n_tiles, mode, bufs, full_bars, empty_bars, rows_smem = args
    NUM_STAGES: gl.constexpr = bufs.type.shape[0]
    ROWS: gl.constexpr = bufs.type.shape[1]
    lay: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    acc = gl.zeros([ROWS, 64], gl.float32, lay)
    for t in range(n_tiles):
        s = t % NUM_STAGES
        mbarrier.wait(full_bars.index(s), (t // NUM_STAGES) & 1)
        acc += bufs.index(s).load(lay).to(gl.float32)
        mbarrier.arrive(empty_bars.index(s), count=1)
    r = gl.arange(0, ROWS, layout=gl.SliceLayout(1, lay))
    c = gl.arange(0, 64, layout=gl.SliceLayout(0, lay))
    gl.store(OUT + WG * ROWS * 64 + r[:, None] * 64 + c[None, :], acc)


@gluon.jit
def _consumer0(args):
    _consumer(args, 0)


@gluon.jit
def _consumer1(args):
    _consumer(args, 1)


@gluon.jit
def protocol_kernel(X, OUT, n_tiles, mode, NUM_STAGES: gl.constexpr, ROWS: gl.constexpr, MODE: gl.constexpr,
                    CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):
    smem_lay: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, 64], gl.float16)
    bufs = gl.allocate_shared_memory(gl.float16, [NUM_STAGES, ROWS, 64], smem_lay)
    full_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(full_bars.index(i), count=128 if MODE % 2 == 0 else 1)
        mbarrier.init(empty_bars.index(i), count=2)
    rows_smem = gl.allocate_shared_memory(gl.int32, [ROWS], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    args = (X, OUT, n_tiles, mode, bufs, full_bars, empty_bars, rows_smem)
    gl.warp_specialize([(_consumer0, (args, )), (_consumer1, (args, )), (_producer, (args, ))], [4, 4],
                       [CONSUMER_REGS, PRODUCER_REGS])


def main() -> None:
    faulthandler.dump_traceback_later(int(os.environ.get("DUMP_AFTER", "20")), exit=True)
    mode = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    n_tiles = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    rows = 32
    x = torch.randn(n_tiles * rows, 64, device="cuda", dtype=torch.float16)
    out = torch.zeros(2 * rows, 64, device="cuda", dtype=torch.float32)
    regs = os.environ.get("REGS")  # "232,40,168": consumer, producer, maxnreg (the kernel's budget)
    cr, pr, mx = map(int, regs.split(",")) if regs else (128, 64, None)
    kw = {"maxnreg": mx} if mx else {}
    protocol_kernel[(132,)](x, out, n_tiles, mode, NUM_STAGES=2, ROWS=rows, MODE=mode, CONSUMER_REGS=cr,
                            PRODUCER_REGS=pr, num_warps=4, **kw)
    torch.cuda.synchronize()
    ref = x.float().view(n_tiles, rows, 64).sum(0)
    ok = torch.allclose(out[:rows], ref, atol=1e-2) and torch.allclose(out[rows:], ref, atol=1e-2)
    print(f"mode {mode} tiles {n_tiles} regs {regs}: finished, sums correct = {ok}", flush=True)


if __name__ == "__main__":
    main()
