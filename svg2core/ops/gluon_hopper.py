"""Helpers for the Hopper (sm_90) Gluon kernels: shims over the Gluon API of the Triton versions in use, and the
register layouts of a warpgroup's matmul accumulator and of its 16-byte row copies."""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import async_copy

# cp.async into shared memory: ``async_copy_global_to_shared`` in Triton 3.6 (the GPU image's), renamed
# ``async_load`` later (the old name then raises)
cp_async = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
# CTA (or, inside a partition, partition-wide) barrier: ``thread_barrier`` in 3.6, ``barrier`` later
barrier = getattr(gl, "barrier", None) or gl.thread_barrier


@gluon.constexpr_function
def wgmma_layout(n):
    """Accumulator layout of a 64 x n wgmma over one warpgroup."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, int(n), 16])


@gluon.constexpr_function
def copy_layout(head_dim):
    """Rows x head_dim tile over 4 warps in 16-byte vectors (8 x 16-bit elements)."""
    tpw_d = min(int(head_dim) // 8, 32)
    return gl.BlockedLayout([1, 8], [32 // tpw_d, tpw_d], [4, 1], [1, 0])
