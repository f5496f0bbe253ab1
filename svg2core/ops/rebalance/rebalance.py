"""Query-tile rebalancing (the rule: ``reference.py``): the Triton stage and its dispatch."""

from __future__ import annotations

import torch

from svg2core.ops.kmeans.kmeans import _prepare
from svg2core.ops.rebalance.reference import rebalance_reference
from svg2core.ops.sparse_attn.wrapper import _num_sms
from svg2core.state import Workspace

# The margin kernel's dot: "tf32x3" (three TF32 tensor-core products of the fp32 rows and centroids, as accurate as
# FFMA for these sums; the logits kernel's choice, svg2core.ops.select.select.LOGITS_PRECISION), "ieee" (FFMA), or
# "bf16" (one product in the points' 16-bit dtype, bf16 for fp32 points, the centroids rounded: a near-tie may
# choose another row; the default). H100, Wan 14B 25% step, the kernel of session 19: the stage took 17.8 ms of 4
# blocks with tf32x3 (192 KB of shared memory, one program per SM) and 6.2 ms with bf16 (NOTES_sparse_attn.md v21);
# session 24, one Wan 14B-size call: the margins 1.22 ms (bf16) / 3.18 ms (tf32x3) before the chunked kernel (v25).
MARGIN_PRECISION = "bf16"
_BLOCK_N = 128  # sorted positions per chunk of the margin kernel
# The margin kernel's launch (sm_90, Triton 3.9's ptxas, bf16 margins; bench/probes/compile_margin.py): chunks of 128
# rows against 32 centroids a step in 2 stages, 4 warps: 166 registers, 40 KB of shared memory, no spills, so 3
# programs fit an SM (chunks of 64 took 255 registers and spilled; 64 centroids a step: 189 registers, 2 programs)
_MARGIN_PROGRAMS_PER_SM = 3  # the margin kernel's persistent programs per SM
# fp32 margins (tf32x3, ieee) in chunks of 64 rows: the previous kernel's shape, whose shared memory fit on Triton 3.6
# (192 KB with tf32x3); 128 fp32 rows need ~180 KB on Triton 3.9 and more on 3.6
_BLOCK_N_FP32 = 64
_BLOCK_C = 32  # centroids per step of its loop
_MARGIN_STAGES = 2
_MARGIN_WARPS = 4
_BLOCK_P = 256  # rows per step of a donor's scan in the choose kernel
_CB = 1024  # clusters per step of the slot prefix
_BLOCK_S = 1024  # candidate slots per step of a destination's scan in the allocate kernel


def _margin_programs(device: torch.device) -> int:
    """The margin kernel's persistent grid: ``_MARGIN_PROGRAMS_PER_SM`` per SM (that many under the interpreter)."""
    return _MARGIN_PROGRAMS_PER_SM * (_num_sms(device) if device.type == "cuda" else 1)


def rebalance_query_tiles(x: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor, offsets: torch.Tensor,
                          centroids: torch.Tensor, rho: int, block: int = 128, workspace: Workspace | None = None,
                          name: str = "q", backend: str = "triton", precision: str | None = None) -> torch.Tensor:
    """Move the excess rows of donor query clusters into room (reference.py's rule); ``labels`` updated in place.

    Args:
        x: ``(B, H, N, D)`` the clustered tokens (last dim contiguous).
        labels: ``(B * H, N)`` int32, the clusters of the final assign.
        perm, offsets: their sort (:func:`~svg2core.ops.permute.sort_by_cluster`); not updated: sort the returned
            labels again for the new layout.
        centroids: ``(B * H, C, D)`` fp32, the clusters' centroids.
        rho: the largest excess a donor sheds (0: nothing moves).
        block: rows of the attention kernel's query tile.
        workspace, name: owner and name prefix of the scratch buffers (margins and candidates).
        backend: ``"triton"`` (five launches, no host synchronisation, no allocation but the workspace's first)
            or ``"reference"``.
        precision: the margin kernel's dot (default :data:`MARGIN_PRECISION`).
    """
    b, h, n, d = x.shape
    bh, c = centroids.shape[0], centroids.shape[1]
    if labels.shape != (bh, n) or perm.shape != (bh, n) or offsets.shape != (bh, c + 1):
        raise ValueError(f"labels, perm, offsets: need ({bh}, {n}), ({bh}, {n}), ({bh}, {c + 1}); got "
                         f"{tuple(labels.shape)}, {tuple(perm.shape)}, {tuple(offsets.shape)}")
    if rho < 0 or block < 2 or block % 2:
        raise ValueError(f"rho, block: need rho >= 0 and an even block >= 2, got {rho}, {block}")
    if rho == 0:
        return labels
    if backend == "reference":
        labels.copy_(rebalance_reference(x.reshape(bh, n, d), labels, centroids, rho, block))
        return labels
    import triton

    from svg2core.ops.rebalance.triton_rebalance import (
        _allocate_kernel,
        _apply_kernel,
        _choose_kernel,
        _margin_kernel,
    )

    rho = min(rho, block // 2)  # an excess is at most half a tile
    slots = c * rho  # every donor's excess rows, at most
    if n >= 2**31:
        raise ValueError(f"x: at most 2^31 - 1 tokens per head (int32 positions), got {n}")
    ws = Workspace() if workspace is None else workspace
    dev = x.device
    margin = ws.buffer(f"{name}.rebalance_margin", (bh, n), torch.float32, dev)
    dest = ws.buffer(f"{name}.rebalance_dest", (bh, n), torch.int32, dev)
    cand_pos = ws.buffer(f"{name}.rebalance_cand_pos", (bh, slots), torch.int32, dev)
    cand_dest = ws.buffer(f"{name}.rebalance_cand_dest", (bh, slots), torch.int32, dev)
    taken = ws.buffer(f"{name}.rebalance_taken", (bh, slots), torch.int32, dev)
    # the centroids' copies in the points' dtype and their fp32 norms, in the k-means' own prepared buffers (its next
    # assign prepares them again)
    cent_lp, cent_sq = _prepare(x, centroids, ws, name, prepared=False)
    precision = precision or MARGIN_PRECISION
    block_n = _BLOCK_N if precision == "bf16" else _BLOCK_N_FP32
    chunks_per_head = triton.cdiv(n, block_n)
    n_chunks = bh * chunks_per_head
    _margin_kernel[(min(n_chunks, _margin_programs(dev)),)](
        x, perm, labels, offsets, centroids, cent_lp, cent_sq, margin, dest, c, h, n, rho, n_chunks, chunks_per_head,
        x.stride(0), x.stride(1), x.stride(2), perm.stride(0), labels.stride(0), offsets.stride(0),
        centroids.stride(0), centroids.stride(1), cent_lp.stride(0), cent_lp.stride(1), cent_sq.stride(0),
        margin.stride(0),
        D=d, BLOCK=block, BLOCK_N=block_n, BLOCK_C=_BLOCK_C, PRECISION=precision,
        num_warps=_MARGIN_WARPS, num_stages=_MARGIN_STAGES,
    )
    _choose_kernel[(c, bh)](
        offsets, margin, dest, cand_pos, cand_dest, c, rho, offsets.stride(0), margin.stride(0), cand_pos.stride(0),
        BLOCK=block, BLOCK_P=_BLOCK_P, CB=_CB, POS_BITS=max(1, (n - 1).bit_length()),
    )
    _allocate_kernel[(c, bh)](
        offsets, cand_dest, taken, c, rho, offsets.stride(0), cand_dest.stride(0),
        BLOCK=block, CB=_CB, BLOCK_S=_BLOCK_S,
    )
    _apply_kernel[(c, bh)](
        offsets, perm, labels, cand_pos, cand_dest, taken, c, rho, offsets.stride(0), perm.stride(0),
        labels.stride(0), cand_pos.stride(0), BLOCK=block, CB=_CB, RHO_POW2=triton.next_power_of_2(max(2, rho)),
    )
    return labels
