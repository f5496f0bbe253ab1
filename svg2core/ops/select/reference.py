"""Plain torch reference of cluster scoring and top-p / fixed-density key-cluster selection.

The rule (docs/ARCHITECTURE.md, "Selection rule"): per (b, h, query cluster i), key clusters are
ordered by ``P_ij`` descending (ties, and logits equal to within ``log2(C_POW2)`` low bits: lower cluster id first,
:func:`selection_order`), where ``S = Cq Ck^T / sqrt(D)`` and
``P_ij = |K_j| exp(S_ij) / sum_j |K_j| exp(S_ij)``. With ``cumP`` / ``cumTok`` the probability and key
tokens of the clusters *before* ``j``, cluster ``j`` is kept iff it is non-empty and

- top_p: ``(cumP < top_p or cumTok < min_tokens) and cumTok < max_tokens``
- fixed_density: ``cumTok < target_tokens``

and the first cluster is always kept. The token limits are integers computed once on the host
(:func:`token_limits`), so both backends compare exactly the same numbers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from svg2core.config import SVG2Config


class KeySweep(NamedTuple):
    """How the attention kernel's programs walk the keys, for a selection laid out in sweep order
    (:func:`sweep_starts_reference`): the query-cluster sizes ``(BH, Cq)`` int, the programs in flight, and the query
    rows per program."""

    q_sizes: torch.Tensor
    period: int
    block_m: int


def token_limits(config: SVG2Config, num_video_tokens: int) -> tuple[int, int]:
    """``(min_tokens, max_tokens)`` for the cumulative key-token comparisons of ``config``'s mode.

    ``cumTok < x * Nv`` for integer ``cumTok`` is ``cumTok < ceil(x * Nv)``. In fixed-density mode the
    first limit is unused (0) and the second is the target.
    """
    if config.mode == "fixed_density":
        return 0, math.ceil(config.target_density * num_video_tokens)
    return math.ceil(config.min_density * num_video_tokens), math.ceil(config.max_density * num_video_tokens)


def cluster_logits_reference(q_centroids: torch.Tensor, k_centroids: torch.Tensor,
                             k_sizes: torch.Tensor) -> torch.Tensor:
    """Log of the unnormalised size-weighted cluster probabilities.

    Args:
        q_centroids: ``(BH, Cq, D)`` fp32.
        k_centroids: ``(BH, Ck, D)`` fp32.
        k_sizes: ``(BH, Ck)`` int32 key-cluster sizes.

    Returns:
        ``(BH, Cq, Ck)`` fp32 ``S_ij + log|K_j|`` (``-inf`` for empty key clusters).
    """
    d = q_centroids.shape[-1]
    s = q_centroids.float() @ k_centroids.float().transpose(1, 2) / math.sqrt(d)
    log_size = torch.log(k_sizes.float())  # log 0 = -inf: empty clusters get probability 0
    return s + log_size[:, None, :]


def selection_order(logits: torch.Tensor) -> torch.Tensor:
    """Per row of ``(..., Ck)`` logits, the cluster ids in the selection order: logit descending, lower id first
    among logits whose order-preserving int32 images agree but for their low ``log2(C_POW2)`` bits, ``C_POW2 =
    max(16, next_pow2(Ck))`` (a relative spread of ~2^-13 at 1000 clusters; the kernels sort one int32 key per
    cluster, these bits holding the id)."""
    ck = logits.shape[-1]
    block = max(16, 1 << (ck - 1).bit_length())
    bits = logits.float().contiguous().view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return torch.sort(ordered & -block, dim=-1, descending=True, stable=True).indices


def select_from_logits_reference(
    logits: torch.Tensor, k_sizes: torch.Tensor, config: SVG2Config, num_video_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Selected key clusters per query cluster, literally as the rule reads.

    Args:
        logits: ``(BH, Cq, Ck)`` fp32 from :func:`cluster_logits_reference`.
        k_sizes: ``(BH, Ck)`` int32.
        config: mode and budgets.
        num_video_tokens: ``Nv`` (sum of every row of ``k_sizes``).

    Returns:
        ``sel_idx (BH, Cq, Ck) int32`` (key clusters in :func:`selection_order`, descending ``P``; the first
        ``sel_count`` are kept), ``sel_count (BH, Cq) int32``, ``sel_cum (BH, Cq, Ck + 1) int32`` (key tokens of
        the first ``j`` clusters of ``sel_idx``).
    """
    bh, cq, ck = logits.shape
    order = selection_order(logits)  # (BH, Cq, Ck)
    sorted_logits = torch.gather(logits, -1, order)
    p = torch.exp(sorted_logits - sorted_logits.amax(-1, keepdim=True))
    p = p / p.sum(-1, keepdim=True)
    tok = torch.gather(k_sizes.long()[:, None, :].expand(-1, cq, -1), -1, order)
    cum_p_incl = torch.cumsum(p, -1)
    cum_tok_incl = torch.cumsum(tok, -1)
    # Exclusive sums by shifting the inclusive ones, so that both are the same floating-point values.
    cum_p = torch.cat([torch.zeros_like(cum_p_incl[..., :1]), cum_p_incl[..., :-1]], -1)
    cum_tok = torch.cat([torch.zeros_like(cum_tok_incl[..., :1]), cum_tok_incl[..., :-1]], -1)
    min_tokens, max_tokens = token_limits(config, num_video_tokens)
    if config.mode == "fixed_density":
        keep = cum_tok < max_tokens
    else:
        keep = ((cum_p < config.top_p) | (cum_tok < min_tokens)) & (cum_tok < max_tokens)
    keep[..., 0] = True
    keep &= tok > 0
    sel_count = keep.sum(-1)
    sel_cum = torch.cat([torch.zeros_like(cum_tok_incl[..., :1]), cum_tok_incl], -1)
    return order.to(torch.int32), sel_count.to(torch.int32), sel_cum.to(torch.int32)


def select_key_clusters_reference(
    q_centroids: torch.Tensor, k_centroids: torch.Tensor, k_sizes: torch.Tensor,
    config: SVG2Config, num_video_tokens: int, sweep: KeySweep | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scoring followed by selection; see :func:`select_from_logits_reference` for the outputs. With ``sweep``
    the same selection in sweep order (:func:`selection_in_sweep_order`)."""
    logits = cluster_logits_reference(q_centroids, k_centroids, k_sizes)
    selection = select_from_logits_reference(logits, k_sizes, config, num_video_tokens)
    if sweep is None:
        return selection
    starts = sweep_starts_reference(sweep.q_sizes, sweep.period, sweep.block_m, k_sizes.shape[-1])
    return selection_in_sweep_order(selection[0], selection[1], k_sizes, starts)


def selection_in_id_order(sel_idx: torch.Tensor, sel_count: torch.Tensor,
                          k_sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same selection laid out in cluster-id order (the threshold kernel's layout).

    ``sel_idx[..., :sel_count]`` becomes the kept clusters in ascending id, followed by the other
    clusters in ascending id; ``sel_cum`` is recomputed as the key-token prefix sums in that order.
    The kept set and ``sel_count`` are unchanged.
    """
    return selection_in_sweep_order(sel_idx, sel_count, k_sizes, None)


def sweep_starts_reference(q_sizes: torch.Tensor, period: int, block_m: int, num_k_clusters: int) -> torch.Tensor:
    """Per (b, h, query cluster), the key cluster where its key sweep starts (docs/ARCHITECTURE.md, "Key order").

    The attention kernel runs one program per ``block_m``-row query tile, in the order of the query clusters, and
    about ``period`` of them are in flight at once; in steady state the ``k``-th tile of a head starts about ``1 /
    period`` of a tile's time after the ``(k-1)``-th. A query cluster whose first tile is the ``k``-th of its head
    starts its sweep at key cluster ``floor((k mod period) * Ck / period)`` and walks the ids upwards, wrapping
    around, so the programs in flight all read near the same share of the head's keys.

    Args:
        q_sizes: ``(BH, Cq)`` int query-cluster sizes.
        period: programs in flight (>= 1).
        block_m: query rows per tile.
        num_k_clusters: ``Ck``.

    Returns:
        ``(BH, Cq)`` int64 start ids in ``[0, Ck)``.
    """
    tiles = torch.div(q_sizes.long() + block_m - 1, block_m, rounding_mode="floor")
    first = torch.cumsum(tiles, -1) - tiles
    return torch.div((first % period) * num_k_clusters, period, rounding_mode="floor")


def kept_key_clusters(sel_idx: torch.Tensor, sel_count: torch.Tensor) -> torch.Tensor:
    """``(BH, Cq, Ck)`` bool: query cluster ``c`` keeps key cluster ``j`` (among the first ``sel_count`` of its row).

    A sum, not a scatter of flags: entries past ``sel_count`` may repeat ids (only the first ``sel_count`` are read),
    and a scattered 0 from one of them could overwrite a kept cluster's 1."""
    bh, cq, ck = sel_idx.shape
    rank = torch.arange(ck, device=sel_idx.device)
    return torch.zeros(bh, cq, ck, dtype=torch.int32, device=sel_idx.device).scatter_add_(
        -1, sel_idx.long(), (rank < sel_count[..., None].long()).int().expand(bh, cq, ck)) > 0


def selection_in_sweep_order(sel_idx: torch.Tensor, sel_count: torch.Tensor, k_sizes: torch.Tensor,
                             starts: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same selection laid out in sweep order: per row, the kept clusters in ascending id from ``starts`` (``(BH,
    Cq)``, :func:`sweep_starts_reference`; ``None``: 0) up, then from 0 up to the start, followed by the other clusters
    in ascending id; ``sel_cum`` is recomputed as the key-token prefix sums in that order. The kept set and
    ``sel_count`` are unchanged.
    """
    bh, cq, ck = sel_idx.shape
    rank = torch.arange(ck, device=sel_idx.device)
    kept = kept_key_clusters(sel_idx, sel_count)
    # kept first (in rotated id order), the rest after in ascending id: one stable sort of a composite key
    rotated = rank if starts is None else (rank - starts.long()[..., None]) % ck
    order = torch.sort(torch.where(kept, rotated, ck + rank), dim=-1, stable=True).indices
    tok = torch.gather(k_sizes.long()[:, None, :].expand(-1, cq, -1), -1, order)
    sel_cum = torch.zeros(bh, cq, ck + 1, dtype=torch.int64, device=sel_idx.device)
    sel_cum[..., 1:] = torch.cumsum(tok, -1)
    return order.to(torch.int32), sel_count.clone(), sel_cum.to(torch.int32)
