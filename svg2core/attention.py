"""``svg2_attention``: Sparse VideoGen2 attention of one layer call (the one public entry point).

Stages (docs/ARCHITECTURE.md, "the tensors passed between the stages"): k-means of the video
queries and keys (warm-started from the layer state), cluster scoring and top-p / fixed-density
selection, stable permutation of the keys/values into cluster-contiguous order, then
variable-block sparse attention over the selected (query cluster, key cluster) pairs, plus dense
attention to and from the trailing text tokens. Everything after input validation runs on the
device without host synchronisation, so a whole call can be captured in a CUDA graph (after one
eager call has sized the workspace and created the layer state).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from svg2core.config import SVG2Config
from svg2core.ops.dense import dense_attention, valid_key_mask
from svg2core.ops.density import selection_density
from svg2core.ops.kmeans import batched_kmeans, init_centroids_strided
from svg2core.ops.permute import gather_kv, key_rows_buffer, sort_by_cluster
from svg2core.ops.rebalance.rebalance import rebalance_query_tiles
from svg2core.ops.select import KeySweep, select_key_clusters
from svg2core.ops.select.reference import kept_key_clusters, token_limits
from svg2core.ops.tail_union import tail_union
from svg2core.state import BranchCentroids, LayerState, Workspace

BACKENDS = ("triton", "reference")
_HEAD_DIMS = (64, 128)
_DTYPES = (torch.bfloat16, torch.float16)
#: Triton backend, warm or cold k-means (iters >= 1): the key k-means' last update, which reads every key row in the
#: final permutation's order anyway, also writes them there (``kp``), and the gather copies only V: one read of the
#: keys less per call. False: the gather copies both (docs/benchmarks/NOTES_selection.md v8).
FUSE_KEY_GATHER = True
#: Triton backend on CUDA: the selection lists each query cluster's kept key clusters in the attention kernel's sweep
#: order (``selection_in_sweep_order``), so that the kernel's programs in flight read one window of a head's keys
#: together (L2 hits instead of DRAM reads: faster at 720p where a head's K and V outgrow the L2). False: the rule's
#: order. The kept set, and so the result up to summation order, is the same (docs/benchmarks/NOTES_sparse_attn.md v18).
KEY_SWEEP = True
#: Triton backend: the k-means updates and the V gather run the heads in reverse grid order, so that each starts on
#: the heads the launch before it (an assign over the heads in order) read last, which may still be in L2; the
#: attention kernel then starts on the head the gather wrote last. The result is the same (bit for bit). H100, whole
#: selection, graph replay (probe_serpentine_h100_s19.md): 480p 100 / 500 0.680 -> 0.675 ms, 200 / 1000 1.071 ->
#: 1.066, Wan 14B 300 / 1000 7.145 -> 7.136: small, the same sign everywhere (NOTES_selection.md v17).
SERPENTINE_HEADS = True
#: Rows of the query tile that ``SVG2Config.query_tile_rebalance`` and ``query_tail_union`` fill (the Hopper kernel's,
#: on every backend, so that both compute the same function).
REBALANCE_BLOCK = 128


def svg2_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | Callable[[], torch.Tensor],
    config: SVG2Config,
    state: LayerState,
    *,
    branch: int = 0,
    workspace: Workspace | None = None,
    num_dense_tokens: int = 0,
    key_padding_mask: torch.Tensor | None = None,
    backend: str = "triton",
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantic-aware-permutation sparse attention of one layer.

    Args:
        q, k, v: ``(B, H, N, D)`` bf16 or fp16 (fp32 too with ``backend="reference"``), ``D`` 64 or
            128, after QK-norm and RoPE. The last ``T = num_dense_tokens`` tokens are dense (text)
            tokens; the first ``Nv = N - T`` are video tokens, the only ones clustered. The last dim must be contiguous; other strides are free.
        config: the budget (:class:`SVG2Config`); ``mode="dense"`` runs plain SDPA. Cluster counts
            above ``Nv`` are clamped to ``Nv``.
        state: this layer's :class:`LayerState`; the centroids of ``branch`` are read (warm start) and
            updated in place. A branch's first call (or a shape change) starts cold.
        branch: CFG branch id (e.g. 0 conditional, 1 unconditional): branches never share centroids.
        workspace: reusable buffers, shared by the layers of a pipeline. ``None`` allocates a fresh
            one (fine for a single call; pass one in steady state and for CUDA graphs).
        num_dense_tokens: ``T``, in ``[0, N)``.
        key_padding_mask: ``(B, T)`` bool, True = valid text token; ``None`` = all valid. Invalid
            text keys are never attended to.
        backend: ``"triton"`` (CUDA, or the Triton interpreter): Triton stages and the
            variable-block sparse flash-attention kernel (svg2core.ops.sparse_attn); ``"reference"``:
            pure torch stages and masked dense attention. Both compute the same function for the same
            selection (the k-means assignment may differ on near-ties: the kernel's dot is bf16/fp16).
        scale: softmax scale of the attention, default ``1 / sqrt(D)`` (cluster scoring always uses
            ``1 / sqrt(D)``).

    Returns:
        ``out``: ``(B, H, N, D)`` of ``q``'s dtype, in the original token order.
        ``density``: ``(B, H)`` fp32 device tensor, computed query-key pairs / all query-key pairs:
        ``(sum_i |Q_i| * sel_cum[i, sel_count[i]] + Nv * Tv + T * (Nv + Tv)) / (N * (Nv + Tv))`` with
        ``|Q_i|`` the query-cluster sizes, ``Tv`` the valid text tokens of that batch element (video
        queries attend to their selected key tokens plus every valid text key; the ``T`` text queries
        attend to every valid key). Dense mode returns ones.

    Example:
        >>> cfg = SVG2Config(top_p=0.9, num_q_clusters=100, num_k_clusters=500)
        >>> state, ws = LayerState(), Workspace()
        >>> out, density = svg2_attention(q, k, v, cfg, state, branch=0, workspace=ws)
    """
    _validate(q, k, v, config, state, branch, workspace, num_dense_tokens, key_padding_mask, backend, scale)
    b, h, n, d = q.shape
    t = num_dense_tokens
    nv = n - t
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if config.mode == "dense":
        v = value_of(v, q)
        return dense_attention(q, k, v, t, key_padding_mask, scale), torch.ones(b, h, device=q.device)
    ws = Workspace() if workspace is None else workspace
    # More clusters than video tokens would only add empty clusters: clamp (static shapes, no sync).
    cq, ck = min(config.num_q_clusters, nv), min(config.num_k_clusters, nv)
    q_video, k_video = q[:, :, :nv], k[:, :, :nv]

    # The branch's cached centroids: the warm start of the k-means (a cold start on a first call or a shape change).
    entry = state.get(branch)
    if entry is None or not entry.matches(b, h, cq, ck, d, q.device):
        entry = BranchCentroids(
            q=torch.empty(b, h, cq, d, dtype=torch.float32, device=q.device),
            k=torch.empty(b, h, ck, d, dtype=torch.float32, device=q.device),
        )
        init_centroids_strided(q_video, cq, entry.q.view(b * h, cq, d))
        init_centroids_strided(k_video, ck, entry.k.view(b * h, ck, d))
        state.put(branch, entry)
        # a cold start's clusters move far: every centroid, and every token (a token sample in the cold iterations
        # costs the cold call +5-10% of attention error at Wan 14B's size, which the next warm steps inherit;
        # docs/benchmarks/NOTES_selection.md v21, NOTES_sparse_attn.md v30)
        iters, candidates, subsample = config.kmeans_iters_init, 0, 1
    else:
        iters, candidates, subsample = config.kmeans_iters, config.kmeans_candidates, config.kmeans_subsample
    q_cent = entry.q.view(b * h, cq, d)
    k_cent = entry.k.view(b * h, ck, d)
    # 1-3. k-means of queries and keys (video tokens only, in place on those centroids), cluster scoring and
    # selection, K and V gathered into cluster-contiguous order.
    plan = cluster_and_select(q_video, k_video, v, q_cent, k_cent, iters, config, ws, backend, candidates=candidates,
                              subsample=subsample, value_check=q)
    v = plan.v  # a callable ``v``'s values, made beside the k-means
    sel_idx, sel_count, sel_cum = plan.sel_idx, plan.sel_count, plan.sel_cum
    density = selection_density(plan.q_sizes, sel_count, sel_cum, b, h, nv, t, key_padding_mask, backend)

    # 4. Attention over the selected (query cluster, key cluster) blocks, output in token order.
    if backend == "reference":
        out = masked_dense_attention_reference(
            q, k, v, plan.q_labels, plan.k_labels, sel_idx, sel_count, t, key_padding_mask, scale
        )
    else:
        from svg2core.ops.sparse_attn import sparse_attention

        out = sparse_attention(
            q, k, v, plan.kp, plan.vp, plan.q_perm, plan.q_offsets, plan.k_offsets, sel_idx, sel_count, sel_cum,
            num_dense_tokens=t, key_padding_mask=key_padding_mask if t > 0 else None, scale=scale, workspace=ws,
            partial_tiles=cq if config.query_tail_union else None,
        )
    return out, density


def cluster_sizes(offsets: torch.Tensor, ws: Workspace, name: str) -> torch.Tensor:
    """Each cluster's token count from its ``(B*H, C+1)`` offsets, into the workspace's ``<name>.sizes`` buffer."""
    rows, c = offsets.shape[0], offsets.shape[1] - 1
    return torch.sub(offsets[:, 1:], offsets[:, :-1], out=ws.buffer(f"{name}.sizes", (rows, c), torch.int32,
                                                                      offsets.device))


class Plan(NamedTuple):
    """What the selection stages hand to the attention kernel (docs/ARCHITECTURE.md): the clusterings of the
    video queries and keys (labels, stable permutation, offsets, sizes; ``(B*H, ...)`` int32), the selected key
    clusters per query cluster, and the keys/values in cluster-contiguous order (``kp``, ``vp``)."""

    q_labels: torch.Tensor
    q_perm: torch.Tensor
    q_offsets: torch.Tensor
    q_sizes: torch.Tensor
    k_labels: torch.Tensor
    k_perm: torch.Tensor
    k_offsets: torch.Tensor
    k_sizes: torch.Tensor
    sel_idx: torch.Tensor
    sel_count: torch.Tensor
    sel_cum: torch.Tensor
    kp: torch.Tensor
    vp: torch.Tensor
    #: the full ``(B, H, N, D)`` values the gather read (made by the callable, when ``v`` was one)
    v: torch.Tensor | None = None


def cluster_and_select(q_video: torch.Tensor, k_video: torch.Tensor, v: torch.Tensor | Callable[[], torch.Tensor],
                       q_cent: torch.Tensor, k_cent: torch.Tensor, iters: int, config: SVG2Config, ws: Workspace,
                       backend: str = "triton", concurrent: bool = True, candidates: int | None = None,
                       sweep: tuple[int, int] | None = None, subsample: int | None = None,
                       value_check: torch.Tensor | None = None) -> Plan:
    """Stages 1-3 of a call: k-means of the video queries and keys (``iters`` iterations, in place on the
    ``(B*H, C, D)`` fp32 centroids), cluster scoring and selection, and the gather of K and V into
    cluster-contiguous order (``v``: the full ``(B, H, N, D)`` values; its first ``Nv`` tokens are gathered).

    With ``concurrent`` (Triton backend, CUDA), the two k-means chains run on two streams (a side stream forked
    from and joined back to the caller's, so graph-capturable; the query chain on the side stream): they are
    independent until the scoring, and at 480p each launch of one chain leaves SMs idle. The K/V
    gather then runs beside the scoring and selection (docs/benchmarks/NOTES_selection.md); with
    :data:`FUSE_KEY_GATHER` the key k-means' last update has already written the permuted keys and the gather
    copies V only. ``candidates``: the k-means' warm assigns over candidate lists (``batched_kmeans``); None:
    ``config.kmeans_candidates`` (``svg2_attention`` passes 0 for a layer's cold first call). ``subsample``: the
    k-means' token sample (``batched_kmeans``); None: ``config.kmeans_subsample`` (``svg2_attention`` passes 1 for a
    cold call). ``v`` may be a callable that returns the values: it is called once on the caller's stream after
    both k-means chains are queued, and on CUDA (Triton, ``concurrent``) the key chain then also runs on a side
    stream, so that whatever makes the values (the layer's value projection, a GEMM) runs beside the two chains; the
    gather waits for it. ``value_check``: the queries, against which a callable's values are checked (shape, dtype,
    device, as ``svg2_attention`` checks a tensor; layout and head dim are always checked). ``sweep``: the
    selection's key sweep, ``(period, block_m)`` (``KeySweep``: the attention kernel's programs in flight, 0 = none,
    and its query rows a program); None: the default kernel's (``key_sweep_layout``) with the Triton backend and
    :data:`KEY_SWEEP`, else none.
    """
    b, h, nv, _ = q_video.shape
    cq = q_cent.shape[1]
    dev = q_video.device
    candidates = config.kmeans_candidates if candidates is None else candidates
    subsample = config.kmeans_subsample if subsample is None else subsample
    if sweep is None:
        sweep = (0, 0)
        if KEY_SWEEP and backend == "triton":
            from svg2core.ops.sparse_attn import key_sweep_layout

            sweep = key_sweep_layout(dev, q_video.dtype, q_video.shape[-1], nv)
    sweep_period, sweep_block_m = sweep
    fuse_keys = FUSE_KEY_GATHER and backend == "triton" and iters >= 1
    value_fn = None if isinstance(v, torch.Tensor) else v
    side = main = key_side = None
    if concurrent and backend == "triton" and q_video.is_cuda:
        main = torch.cuda.current_stream(dev)
        # from torch's stream pools (one per priority): no stream is created per call
        side = torch.cuda.Stream(dev)
        side.wait_stream(main)  # the side stream sees everything queued before this call
        if value_fn is not None:  # the key chain leaves the caller's stream to the values' maker
            key_side = torch.cuda.Stream(dev)
            key_side.wait_stream(main)

    def on(stream):
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    def query_chain():
        q_labels, q_perm, q_offsets = batched_kmeans(q_video, q_cent, iters, ws, "q", backend,
                                                     candidates=candidates, reverse_heads=SERPENTINE_HEADS,
                                                     subsample=subsample)
        if config.query_tile_rebalance:  # fewer partly empty query tiles; the cached centroids stay the k-means'
            rebalance_query_tiles(q_video, q_labels, q_perm, q_offsets, q_cent, config.query_tile_rebalance,
                                  REBALANCE_BLOCK, ws, "q", backend)
            # the counting sort, as in the k-means (all its scratch in the workspace; faster than the radix sort)
            q_perm, q_offsets = sort_by_cluster(q_labels, cq, ws, "q", backend, method="count")
        q_sizes = cluster_sizes(q_offsets, ws, "q")
        return q_labels, q_perm, q_offsets, q_sizes

    def key_chain():
        k_rows = key_rows_buffer(k_video, nv, ws) if fuse_keys else None
        k_labels, k_perm, k_offsets = batched_kmeans(k_video, k_cent, iters, ws, "k", backend, rows_out=k_rows,
                                                     candidates=candidates, reverse_heads=SERPENTINE_HEADS,
                                                     subsample=subsample)
        k_sizes = cluster_sizes(k_offsets, ws, "k")
        return k_labels, k_perm, k_offsets, k_sizes

    # The key chain first on a high-priority stream (the query chain filling what it leaves) was measured and removed:
    # 480p 0.680 ms either way, Wan 14B 7.02-7.73 against 6.99 (docs/benchmarks/probe_timeline_h100_s14.md).
    with on(side):
        q_labels, q_perm, q_offsets, q_sizes = query_chain()
    with on(key_side):
        k_labels, k_perm, k_offsets, k_sizes = key_chain()
    if value_fn is not None:  # on the caller's stream, beside both chains
        v = value_of(value_fn, value_check)
    scoring, gathering = key_side or main, side
    if side is not None:
        scoring.wait_stream(side)  # the scoring reads both chains' centroids, the gather the key permutation
        side.wait_stream(scoring)
        if key_side is not None:
            side.wait_stream(main)  # and the values
    with on(gathering):  # the V (and K) gather, memory-bound, beside the scoring and selection
        kp, vp = gather_kv(k_video, v[:, :, :nv], k_perm, ws, backend, gather_k=not fuse_keys,
                           reverse_heads=SERPENTINE_HEADS)
    with on(scoring):
        # with the tail union the stage lays every row out in sweep order from its kept set: the selection's own
        # order would be discarded, so it writes the cheaper id order
        key_sweep = (KeySweep(q_sizes, sweep_period, sweep_block_m) if sweep_period and not config.query_tail_union
                     else None)
        sel_idx, sel_count, sel_cum = select_key_clusters(q_cent, k_cent, k_sizes, config, nv, ws, backend,
                                                          key_sweep)
        if config.query_tail_union:  # pairs of query-cluster tails in shared tiles over their key lists' union
            # the top-p mode's density cap bounds a union too; the fixed-density mode's target does not (the union's
            # extra pairs are what it buys)
            cap = token_limits(config, nv)[1] if config.mode == "top_p" else None
            # the key sweep's starts follow the new layout's tiles (the selection's assumed the old one)
            q_labels, q_perm, q_offsets, q_sizes, sel_idx, sel_count, sel_cum = tail_union(
                q_labels, q_perm, q_offsets, sel_idx, sel_count, sel_cum, k_sizes, REBALANCE_BLOCK, ws, "q",
                backend, max_keys=cap, sweep=(sweep_period, sweep_block_m) if sweep_period else None)
    if side is not None:
        main.wait_stream(side)  # the caller's stream sees everything
        if key_side is not None:
            main.wait_stream(key_side)
    return Plan(q_labels, q_perm, q_offsets, q_sizes, k_labels, k_perm, k_offsets, k_sizes,
                sel_idx, sel_count, sel_cum, kp, vp, v)


def masked_dense_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    q_labels: torch.Tensor, k_labels: torch.Tensor, sel_idx: torch.Tensor, sel_count: torch.Tensor,
    num_dense_tokens: int, key_padding_mask: torch.Tensor | None, scale: float,
) -> torch.Tensor:
    """The sparse attention as masked dense attention in fp32 (the specification; O(N^2) memory per head).

    Video query ``n`` (cluster ``i = q_labels[n]``) attends to video key ``m`` iff ``k_labels[m]`` is
    among ``sel_idx[i, :sel_count[i]]``, and to every valid text key; text queries attend to every
    valid key.
    """
    b, h, n, d = q.shape
    t = num_dense_tokens
    nv = n - t
    keys = valid_key_mask(b, nv, t, key_padding_mask, q.device)
    out = torch.empty_like(q)
    kept = kept_key_clusters(sel_idx, sel_count)  # (BH, Cq, Ck); entries past sel_count are never read
    for bi in range(b):
        for hi in range(h):
            bh = bi * h + hi
            chosen = kept[bh]
            allowed = torch.ones(n, n, dtype=torch.bool, device=q.device)
            allowed[:nv, :nv] = chosen[q_labels[bh].long()][:, k_labels[bh].long()]
            if keys is not None:
                allowed &= keys[bi][None, :]
            s = (q[bi, hi].float() @ k[bi, hi].float().T) * scale
            s = s.masked_fill(~allowed, float("-inf"))
            out[bi, hi] = (torch.softmax(s, dim=-1) @ v[bi, hi].float()).to(q.dtype)
    return out


def value_of(v, q: torch.Tensor | None) -> torch.Tensor:
    """``v``, or what the callable ``v`` returns, checked as a ``v`` tensor is (against the queries ``q``, if
    given)."""
    if not isinstance(v, torch.Tensor):
        v = v()
        _check_tensor("v", v, None)
        if q is not None:
            _check_like("v", v, q)
    return v


def _check_tensor(name: str, x, backend: str | None) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: must have shape (batch, heads, tokens, head_dim), got {tuple(x.shape)}")
    if x.dtype not in _DTYPES and not (backend in ("reference", None) and x.dtype == torch.float32):
        raise ValueError(f"{name}: dtype must be bfloat16 or float16 (float32 also with backend "
                         f"'reference'), got {x.dtype}")
    if x.shape[-1] not in _HEAD_DIMS:
        raise ValueError(f"{name}: head_dim must be 64 or 128, got {x.shape[-1]}")
    if x.stride(-1) != 1:
        raise ValueError(f"{name}: the head_dim axis must be contiguous (stride 1), got stride {x.stride(-1)}")


def _check_like(name: str, x: torch.Tensor, q: torch.Tensor) -> None:
    if x.shape != q.shape:
        raise ValueError(f"{name}: shape must equal q's {tuple(q.shape)}, got {tuple(x.shape)}")
    if x.dtype != q.dtype:
        raise ValueError(f"{name}: dtype must equal q's {q.dtype}, got {x.dtype}")
    if x.device != q.device:
        raise ValueError(f"{name}: device must equal q's {q.device}, got {x.device}")


def _validate(q, k, v, config, state, branch, workspace, num_dense_tokens, key_padding_mask, backend, scale) -> None:
    """``v`` may be a callable (checked by :func:`value_of` once called)."""
    value_later = not isinstance(v, torch.Tensor) and callable(v)
    for name, x in (("q", q), ("k", k)) + ((("v", v),) if not value_later else ()):
        _check_tensor(name, x, backend)
    for name, x in (("k", k),) + ((("v", v),) if not value_later else ()):
        _check_like(name, x, q)
    if not isinstance(config, SVG2Config):
        raise ValueError(f"config: must be an SVG2Config, got {type(config).__name__}")
    if not isinstance(state, LayerState):
        raise ValueError(f"state: must be a LayerState, got {type(state).__name__}")
    if isinstance(branch, bool) or not isinstance(branch, int):
        raise ValueError(f"branch: must be an int, got {branch!r}")
    if workspace is not None and not isinstance(workspace, Workspace):
        raise ValueError(f"workspace: must be a Workspace or None, got {type(workspace).__name__}")
    b, _, n, _ = q.shape
    if isinstance(num_dense_tokens, bool) or not isinstance(num_dense_tokens, int) or not 0 <= num_dense_tokens < n:
        raise ValueError(f"num_dense_tokens: must be an int in [0, {n}) (at least one video token), "
                         f"got {num_dense_tokens!r}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise ValueError("key_padding_mask: must be a bool tensor (True = valid)")
        if tuple(key_padding_mask.shape) != (b, num_dense_tokens):
            raise ValueError(f"key_padding_mask: shape must be (batch, num_dense_tokens) = {(b, num_dense_tokens)}, "
                             f"got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask: device must equal q's {q.device}, got {key_padding_mask.device}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "triton" and config.mode != "dense" and not q.is_cuda and not _triton_interpreting():
        raise ValueError("backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1); use 'reference' on CPU")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: must be a positive finite number or None, got {scale!r}")


def _triton_interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"
