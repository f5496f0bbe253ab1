"""Hopper (sm_90) Gluon kernel of the k-means assign: the next centroid tile's matmul overlaps this tile's argmin.

Same function as ``triton_kmeans._kmeans_assign_kernel`` without the block histogram (``HIST``): labels[bh, n] =
argmin_c ||x[bh, n] - cent[bh, c]||^2 over the low-precision centroids and their fp32 squared norms. The Triton
kernel waits for each tile's dot before its argmin (Triton 3.6 issues ``wgmma.wait_group 0`` right after the
dot: the distance epilogue and the tensor cores take turns, ~390 TFLOP/s at the Wan 14B key shape on an H100).
Here the dot of centroid tile t is issued asynchronously, then the argmin of tile t - 1 runs while it computes
(``warpgroup_mma_wait(1)``):

- one program = BLOCK_N = 128 tokens (two warpgroups of 64 rows, 8 warps), staged once in shared memory;
- centroid tiles of BLOCK_C rows go through a ring of 3 shared-memory buffers: tile t is loaded into registers
  one iteration ahead, stored, fenced, and a CTA barrier precedes its dot; with 3 buffers the buffer written
  in iteration t was last read by the dot of tile t - 3, which every warp waited for before the barrier of
  iteration t - 1;
- the argmin keeps the lowest centroid id on ties (as the Triton kernel and the reference).

No interpreter runs Gluon: the CPU tests compile it for sm_90 (tests/svg2core/test_kmeans_gluon.py), and the GPU
check compares its labels with the Triton kernel's (bench/probes/probe_assign.py).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_wait,
)

_barrier = getattr(gl, "barrier", None) or gl.thread_barrier  # ``thread_barrier`` in Triton 3.6


@gluon.constexpr_function
def _acc_layout(num_warps, block_c):
    """Accumulator layout of a (16 * num_warps) x block_c wgmma: 16 rows per warp, a warpgroup per 64 rows."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[int(num_warps), 1],
                                     instr_shape=[16, int(block_c), 16])


@gluon.constexpr_function
def _load_layout(num_warps, d):
    """Rows x d tiles in 16-byte vectors (8 x 16-bit elements)."""
    tpw_d = min(int(d) // 8, 32)
    return gl.BlockedLayout([1, 8], [32 // tpw_d, tpw_d], [int(num_warps), 1], [1, 0])


@gluon.jit
def _argmin_combine(v1, i1, v2, i2):
    """(min, argmin) of two candidates, ties to the lower id."""
    first = (v1 < v2) | ((v1 == v2) & (i1 < i2))
    return gl.where(first, v1, v2), gl.where(first, i1, i2)


@gluon.jit
def _argmin_tile(s, csq, cols, c0, best, best_idx):
    """Fold the distances of centroid tile c0 (``csq - 2 s``; padded centroids have csq = inf) into the running
    (min, argmin), ties to the lower id. ``cols``: 0 .. BLOCK_C - 1 in the tile's column layout (Gluon's
    ``min(return_indices=True)`` needs an index layout it cannot infer)."""
    dist = csq[None, :] - 2.0 * s
    idx = gl.zeros_like(dist).to(gl.int32) + cols[None, :]
    tile_min, tile_arg = gl.reduce((dist, idx), 1, _argmin_combine)
    better = tile_min < best
    best = gl.where(better, tile_min, best)
    best_idx = gl.where(better, tile_arg.to(gl.int32) + c0, best_idx)
    return best, best_idx


@gluon.jit
def kmeans_assign_gluon_kernel(
    x_ptr, cent_ptr, cent_sq_ptr, labels_ptr,
    N, C, H,
    stride_xb, stride_xh, stride_xn,
    stride_cbh, stride_cc, stride_sbh, stride_lbh,
    D: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_C: gl.constexpr,
):
    """Grid (cdiv(N, BLOCK_N), B * H), num_warps = BLOCK_N // 16 (8 for 128 tokens). ``cent`` in the points'
    dtype, ``cent_sq`` fp32, both from the preparation kernel (or the previous update)."""
    NW: gl.constexpr = gl.num_warps()
    NBUF: gl.constexpr = 3
    pid_n = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    dtype: gl.constexpr = x_ptr.dtype.element_ty
    acc_lay: gl.constexpr = _acc_layout(NW, BLOCK_C)
    ld_lay: gl.constexpr = _load_layout(NW, D)
    row_lay: gl.constexpr = gl.SliceLayout(1, acc_lay)
    col_lay: gl.constexpr = gl.SliceLayout(0, acc_lay)
    x_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, D], gl.NVMMASharedLayout.get_default_for([BLOCK_N, D], dtype))
    c_smem = gl.allocate_shared_memory(dtype, [NBUF, BLOCK_C, D],
                                       gl.NVMMASharedLayout.get_default_for([BLOCK_C, D], dtype))

    offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, ld_lay))
    rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld_lay))
    x = gl.load(x_ptr + b.to(gl.int64) * stride_xb + h.to(gl.int64) * stride_xh
                + rows.to(gl.int64)[:, None] * stride_xn + offs_d[None, :], mask=(rows < N)[:, None], other=0.0)
    x_smem.store(x)
    cent_base = cent_ptr + pid_bh.to(gl.int64) * stride_cbh
    csq_base = cent_sq_ptr + pid_bh.to(gl.int64) * stride_sbh
    crow = gl.arange(0, BLOCK_C, layout=gl.SliceLayout(1, ld_lay))
    ccol = gl.arange(0, BLOCK_C, layout=col_lay)
    c_regs = gl.load(cent_base + crow[:, None] * stride_cc + offs_d[None, :], mask=(crow < C)[:, None], other=0.0)
    c_smem.index(0).store(c_regs)
    fence_async_shared()
    _barrier()
    s_prev = warpgroup_mma(x_smem, c_smem.index(0).permute((1, 0)), gl.zeros([BLOCK_N, BLOCK_C], gl.float32, acc_lay),
                           use_acc=False, is_async=True)
    # tile 1's centroids, one iteration ahead of their store
    c_regs = gl.load(cent_base + (BLOCK_C + crow)[:, None] * stride_cc + offs_d[None, :],
                     mask=(BLOCK_C + crow < C)[:, None], other=0.0)
    best = gl.full([BLOCK_N], float("inf"), gl.float32, row_lay)
    best_idx = gl.zeros([BLOCK_N], gl.int32, row_lay)
    n_tiles = gl.cdiv(C, BLOCK_C)
    for t in range(1, n_tiles):
        buf = c_smem.index(t % NBUF)
        buf.store(c_regs)
        fence_async_shared()
        _barrier()
        s_cur = warpgroup_mma(x_smem, buf.permute((1, 0)), gl.zeros([BLOCK_N, BLOCK_C], gl.float32, acc_lay),
                              use_acc=False, is_async=True)
        nxt = (t + 1) * BLOCK_C + crow
        c_regs = gl.load(cent_base + nxt[:, None] * stride_cc + offs_d[None, :], mask=(nxt < C)[:, None], other=0.0)
        c0 = (t - 1) * BLOCK_C
        csq = gl.load(csq_base + c0 + ccol, mask=c0 + ccol < C, other=float("inf"))
        s_prev = warpgroup_mma_wait(1, deps=(s_prev, ))
        best, best_idx = _argmin_tile(s_prev, csq, ccol, c0, best, best_idx)
        s_prev = s_cur
    c0 = (n_tiles - 1) * BLOCK_C
    csq = gl.load(csq_base + c0 + ccol, mask=c0 + ccol < C, other=float("inf"))
    s_prev = warpgroup_mma_wait(0, deps=(s_prev, ))
    best, best_idx = _argmin_tile(s_prev, csq, ccol, c0, best, best_idx)
    out_rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=row_lay)
    gl.store(labels_ptr + pid_bh.to(gl.int64) * stride_lbh + out_rows, best_idx, mask=out_rows < N)
