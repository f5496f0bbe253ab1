"""Hopper (sm_90) Gluon kernel of the k-means assign: packed-key argmin, each centroid tile's matmul overlapping the
previous tile's argmin (``kmeans.GLUON_ASSIGN``, off until timed on a GPU).

Session 12 brought it back from the history (commit 22ec417, where one warpgroup of 64 tokens per program measured
14-31% slower than the Triton kernel, H100, docs/benchmarks/probe_assign_gluon_h100.md) with several warpgroups per
program sharing one centroid ring: the likely cause of that loss was that every centroid tile was read from L2 once
per 64 tokens, four times as often as by the Triton kernel's 256-token programs. BLOCK_N = 64 x warpgroups x R
tokens now (``num_warps`` 4 or 8); each warpgroup issues the matmul of its own rows.

Same function as ``triton_kmeans._kmeans_assign_kernel`` with ``PACKED`` (and ``HIST``): labels[bh, n] = argmin_c
``||x - c||^2`` over the low-precision centroids and their fp32 squared norms, each distance keyed as one int32 (the
float bits of ``||c||^2 - 2 x.c + max_rows ||x||^2`` with the low log2(C_POW2) bits replaced by the centroid id),
ties to the lower id. The Triton kernel waits for each centroid tile's dot before that tile's argmin (two CTAs of 8
warps per SM at its default tile, 128 registers with Triton 3.6: one CTA's argmin can run beside the other's dot),
and reaches 370-460 TFLOP/s on an H100 with the packed keys (docs/benchmarks/NOTES_selection.md). Here:

- one program = BLOCK_N tokens on ``num_warps`` warps, staged once in shared memory (at 64 tokens on one warpgroup:
  x 16 KB + 3 centroid tiles of 16 KB, several programs per SM);
- centroid tiles of BLOCK_C rows arrive by ``cp.async`` into a ring of 3 buffers, two tiles ahead; each thread
  arrives on the buffer's mbarrier when its copies have landed (count: the program's threads);
- the matmul of tile t is issued asynchronously, then ``warpgroup_mma_wait(1)`` waits only for tile t - 1's, whose
  buffer is refilled with tile t + 2 before tile t - 1's argmin runs under tile t's matmul; two accumulators take
  turns (a register copy of an accumulator in flight makes ptxas serialise every matmul);
- with ``HIST`` every token adds one to ``counts[bh, (n // COUNT_BLOCK) * C + label]`` (atomically: several programs
  share a counting-sort block; the caller zeroes ``counts`` first).

Session 6's Gluon assign (commit 617f40b, 1.7x slower than the Triton kernel) had a generic (value, index) reduce
per distance, 176 registers (one CTA per SM) and centroid tiles staged through registers with a CTA barrier per
tile; the packed keys make the argmin ~3 instructions per distance.

No interpreter runs Gluon: the CPU tests compile it for sm_90 (tests/svg2core/test_gluon_kernel.py); on the GPU,
bench/probes/probe_assign_gluon.py compares its labels and block counts with the Triton kernel's and times both.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy,
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from svg2core.ops.gluon_hopper import barrier as _barrier
from svg2core.ops.gluon_hopper import copy_layout as _load_layout
from svg2core.ops.gluon_hopper import cp_async as _cp_async
from svg2core.ops.gluon_hopper import wgmma_layout as _acc_layout

_NBUF: gl.constexpr = gl.constexpr(3)


@gluon.jit
def _load_tile(c_smem, ready, cent_base, stride_cc, C, t, crow, offs_d, BLOCK_C: gl.constexpr):
    """cp.async of centroid tile t (rows t*BLOCK_C .., zero past C) into ring buffer t % 3, once every warp has
    waited for the matmul that last read it; every thread arrives on the buffer's barrier once its copies have
    landed."""
    rows = t * BLOCK_C + crow
    buf = t % _NBUF
    _barrier()  # every warp is past its wait for the matmul that last read this buffer
    _cp_async(c_smem.index(buf), cent_base + rows[:, None] * stride_cc + offs_d[None, :], mask=(rows < C)[:, None])
    async_copy.mbarrier_arrive(ready.index(buf), increment_count=False)


@gluon.jit
def _fold_tile(s, csq_base, C, c0, cols, bias, best, IDX_MASK: gl.constexpr):
    """Fold centroid tile c0's packed keys (distance bits | centroid id) into the running row minimum ``best``."""
    csq = gl.load(csq_base + c0 + cols, mask=c0 + cols < C, other=float("inf"))  # padded centroids: never chosen
    dist = (csq + bias)[None, :] - 2.0 * s
    key = (dist.to(gl.int32, bitcast=True) & ~IDX_MASK) | (c0 + cols)[None, :]
    return gl.minimum(best, gl.min(key, axis=1))


@gluon.jit
def kmeans_assign_gluon_kernel(
    x_ptr, cent_ptr, cent_sq_ptr, labels_ptr, counts_ptr,
    N, C, H,
    stride_xb, stride_xh, stride_xn,
    stride_cbh, stride_cc, stride_sbh, stride_lbh, stride_nbh,
    D: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_C: gl.constexpr, C_POW2: gl.constexpr, HIST: gl.constexpr,
    COUNT_BLOCK: gl.constexpr,
):
    """Grid (cdiv(N, BLOCK_N), B * H), 4 or 8 warps, BLOCK_N a multiple of 16 x num_warps (64 rows per
    warpgroup per matmul repetition). ``cent`` in the points' dtype and ``cent_sq`` fp32 (the preparation kernel's,
    or the previous update's); ``counts`` (HIST) zeroed by the caller."""
    IDX_MASK: gl.constexpr = C_POW2 - 1
    WARPS: gl.constexpr = gl.num_warps()
    pid_n = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    dtype: gl.constexpr = x_ptr.dtype.element_ty
    acc_lay: gl.constexpr = _acc_layout(BLOCK_C, WARPS)
    ld_lay: gl.constexpr = _load_layout(D, WARPS)
    row_lay: gl.constexpr = gl.SliceLayout(1, acc_lay)
    cols = gl.arange(0, BLOCK_C, layout=gl.SliceLayout(0, acc_lay))
    x_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, D], gl.NVMMASharedLayout.get_default_for([BLOCK_N, D], dtype))
    c_smem = gl.allocate_shared_memory(dtype, [_NBUF, BLOCK_C, D],
                                       gl.NVMMASharedLayout.get_default_for([BLOCK_C, D], dtype))
    ready = gl.allocate_shared_memory(gl.int64, [_NBUF, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(_NBUF):
        mbarrier.init(ready.index(i), count=32 * WARPS)  # every thread arrives (cp.async.mbarrier.arrive)

    cent_base = cent_ptr + pid_bh.to(gl.int64) * stride_cbh
    csq_base = cent_sq_ptr + pid_bh.to(gl.int64) * stride_sbh
    offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, ld_lay))
    crow = gl.arange(0, BLOCK_C, layout=gl.SliceLayout(1, ld_lay))
    n_tiles = gl.cdiv(C, BLOCK_C)
    _load_tile(c_smem, ready, cent_base, stride_cc, C, 0, crow, offs_d, BLOCK_C)
    if n_tiles > 1:
        _load_tile(c_smem, ready, cent_base, stride_cc, C, 1, crow, offs_d, BLOCK_C)
    # the block's points (under the first tiles' copies), and the bias that keeps every key's float bits >= 0
    rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld_lay))
    x = gl.load(x_ptr + b.to(gl.int64) * stride_xb + h.to(gl.int64) * stride_xh
                + rows.to(gl.int64)[:, None] * stride_xn + offs_d[None, :], mask=(rows < N)[:, None], other=0.0)
    xf = x.to(gl.float32)
    bias = gl.max(gl.sum(xf * xf, axis=1), axis=0)
    x_smem.store(x)
    fence_async_shared()
    _barrier()

    best = gl.full([BLOCK_N], 0x7FFFFFFF, gl.int32, row_lay)
    # Two accumulators take turns (no register copy of a matmul in flight, which makes ptxas serialise them): tile
    # t's matmul goes into one while tile t - 1's argmin reads the other.
    mbarrier.wait(ready.index(0), 0)
    acc_a = warpgroup_mma(x_smem, c_smem.index(0).permute((1, 0)), gl.zeros([BLOCK_N, BLOCK_C], gl.float32, acc_lay),
                          use_acc=False, is_async=True)
    if n_tiles > 2:  # buffer 2 is still unused
        _load_tile(c_smem, ready, cent_base, stride_cc, C, 2, crow, offs_d, BLOCK_C)
    for t in range(1, n_tiles - 1, 2):  # tiles t (into b) and t + 1 (into a); argmins of t - 1 and t
        mbarrier.wait(ready.index(t % _NBUF), (t // _NBUF) & 1)
        acc_b = warpgroup_mma(x_smem, c_smem.index(t % _NBUF).permute((1, 0)),
                              gl.zeros([BLOCK_N, BLOCK_C], gl.float32, acc_lay), use_acc=False, is_async=True)
        acc_a = warpgroup_mma_wait(1, deps=(acc_a, ))  # tile t - 1's matmul is done: its buffer is free
        if t + 2 < n_tiles:
            _load_tile(c_smem, ready, cent_base, stride_cc, C, t + 2, crow, offs_d, BLOCK_C)
        best = _fold_tile(acc_a, csq_base, C, (t - 1) * BLOCK_C, cols, bias, best, IDX_MASK)
        mbarrier.wait(ready.index((t + 1) % _NBUF), ((t + 1) // _NBUF) & 1)
        acc_a = warpgroup_mma(x_smem, c_smem.index((t + 1) % _NBUF).permute((1, 0)),
                              gl.zeros([BLOCK_N, BLOCK_C], gl.float32, acc_lay), use_acc=False, is_async=True)
        acc_b = warpgroup_mma_wait(1, deps=(acc_b, ))
        if t + 3 < n_tiles:
            _load_tile(c_smem, ready, cent_base, stride_cc, C, t + 3, crow, offs_d, BLOCK_C)
        best = _fold_tile(acc_b, csq_base, C, t * BLOCK_C, cols, bias, best, IDX_MASK)
    # acc_a holds the last tile issued, n_tiles - 1 (odd count) or n_tiles - 2 (even count: one tile left)
    last = n_tiles - 1 - (1 - n_tiles % 2)
    if n_tiles % 2 == 0:
        t = n_tiles - 1
        mbarrier.wait(ready.index(t % _NBUF), (t // _NBUF) & 1)
        acc_last = warpgroup_mma(x_smem, c_smem.index(t % _NBUF).permute((1, 0)),
                                 gl.zeros([BLOCK_N, BLOCK_C], gl.float32, acc_lay), use_acc=False, is_async=True)
        s_a = warpgroup_mma_wait(1, deps=(acc_a, ))
        best = _fold_tile(s_a, csq_base, C, last * BLOCK_C, cols, bias, best, IDX_MASK)
        s_last = warpgroup_mma_wait(0, deps=(acc_last, ))
        best = _fold_tile(s_last, csq_base, C, t * BLOCK_C, cols, bias, best, IDX_MASK)
    else:
        s_a = warpgroup_mma_wait(0, deps=(acc_a, ))
        best = _fold_tile(s_a, csq_base, C, last * BLOCK_C, cols, bias, best, IDX_MASK)
    label = best & IDX_MASK
    out_rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=row_lay)
    ok = out_rows < N
    gl.store(labels_ptr + pid_bh.to(gl.int64) * stride_lbh + out_rows, label, mask=ok)
    if HIST:
        gl.atomic_add(counts_ptr + pid_bh.to(gl.int64) * stride_nbh + (out_rows // COUNT_BLOCK) * C + label,
                      gl.full([BLOCK_N], 1, gl.int32, row_lay), mask=ok, sem="relaxed")
