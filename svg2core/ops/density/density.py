"""What a call computed, as a density, and its accumulation into a job's accounting: reference + Triton kernels.

``svg2_attention`` returns, per (b, h), the query-key pairs it computed over all pairs of the valid keys, and the
session's accounting adds each call's mean density and computed FLOPs to two fp64 device scalars. In torch these are
~20 small ops a call (casts, a gather, reductions, in-place adds), each its own launch, its own host time and a
short kernel on the call's stream, so the Triton backend does each in one launch: ``selection_density`` (a program
per (b, h)) and ``accumulate_density`` (one program). Both references (reference.py) are the specification, and
both paths compute in fp64 (the pair counts exceed fp32's exact integers at 720p) and never synchronise.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from svg2core.ops.density.reference import accumulate_density_reference, selection_density_reference
from svg2core.ops.select.select import _next_pow2


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _use_triton(x: torch.Tensor) -> bool:
    """Triton runs on CUDA tensors, or anywhere under its interpreter; without Triton (a reference-backend job on a
    machine without it) the torch reference runs."""
    return (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1") and _triton_installed()


def selection_density(q_sizes: torch.Tensor, sel_count: torch.Tensor, sel_cum: torch.Tensor, b: int, h: int,
                      nv: int, t: int, key_padding_mask: torch.Tensor | None, backend: str = "triton") -> torch.Tensor:
    """:func:`selection_density_reference` in one launch with ``backend="triton"`` (CUDA, or the interpreter); the
    result is a fresh ``(B, H)`` fp32 tensor (the caller may keep it)."""
    if backend != "triton" or not _use_triton(q_sizes):
        return selection_density_reference(q_sizes, sel_count, sel_cum, b, h, nv, t, key_padding_mask)
    from svg2core.ops.density.triton_density import _selection_density_kernel

    cq = q_sizes.shape[1]
    for name, x in (("q_sizes", q_sizes), ("sel_count", sel_count), ("sel_cum", sel_cum)):
        if x.stride(-1) != 1:
            raise ValueError(f"{name}: the last axis must be contiguous")
    out = torch.empty(b, h, dtype=torch.float32, device=q_sizes.device)
    has_mask = key_padding_mask is not None and t > 0
    mask = key_padding_mask.view(torch.uint8) if has_mask else out  # never read without HAS_MASK
    _selection_density_kernel[(b * h,)](
        q_sizes, sel_count, sel_cum, mask, out,
        h, cq, nv, t,
        q_sizes.stride(0), sel_count.stride(0), sel_cum.stride(0), sel_cum.stride(1),
        mask.stride(0) if has_mask else 0,
        HAS_MASK=has_mask, BLOCK_CQ=_next_pow2(cq), BLOCK_T=min(_next_pow2(max(t, 1)), 1024), num_warps=4,
    )
    return out


def accumulate_density(totals: torch.Tensor, density: torch.Tensor, n: int, t: int, head_dim: int,
                       key_padding_mask: torch.Tensor | None) -> None:
    """:func:`accumulate_density_reference` in one launch where Triton runs (CUDA, or the interpreter)."""
    if totals.dtype != torch.float64 or totals.shape != (2,) or not totals.is_contiguous():
        raise ValueError("totals: must be a contiguous fp64 tensor of shape (2,)")
    if not _use_triton(density):
        accumulate_density_reference(totals, density, n, t, head_dim, key_padding_mask)
        return
    from svg2core.ops.density.triton_density import _accumulate_density_kernel

    b, h = density.shape
    if density.stride(1) != 1:
        raise ValueError("density: the head axis must be contiguous")
    has_mask = key_padding_mask is not None and t > 0
    mask = key_padding_mask.view(torch.uint8) if has_mask else density  # never read without HAS_MASK
    _accumulate_density_kernel[(1,)](
        density, mask, totals, b, h, n, t, 4.0 * head_dim, density.stride(0),
        mask.stride(0) if has_mask else 0,
        HAS_MASK=has_mask, BLOCK_H=_next_pow2(h), BLOCK_T=min(_next_pow2(max(t, 1)), 1024), num_warps=1,
    )
