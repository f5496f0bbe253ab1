"""The specification of a call's density and of its accumulation into a job's accounting (plain torch, any device).

Both compute in fp64: a head's computed pairs exceed fp32's exact integers at 720p."""

from __future__ import annotations

import torch


def text_keys(b: int, t: int, key_padding_mask: torch.Tensor | None, device) -> torch.Tensor:
    """``(B, 1)`` fp64: the valid text keys of each batch element."""
    if key_padding_mask is None:
        return torch.full((b, 1), float(t), dtype=torch.float64, device=device)
    return key_padding_mask.sum(-1, dtype=torch.float64).view(b, 1)


def selection_density_reference(q_sizes: torch.Tensor, sel_count: torch.Tensor, sel_cum: torch.Tensor, b: int,
                                h: int, nv: int, t: int, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, H)`` fp32: computed query-key pairs / all pairs of the valid keys, as documented in ``svg2_attention``:
    ``(sum_i |Q_i| * sel_cum[i, sel_count[i]] + Nv * Tv + T * (Nv + Tv)) / ((Nv + T) * (Nv + Tv))``, ``Tv`` the
    valid text keys of the batch element. ``q_sizes`` / ``sel_count``: ``(B*H, Cq)``; ``sel_cum``: ``(B*H, Cq,
    Ck + 1)`` (int32, the selection's outputs)."""
    sel_tokens = torch.gather(sel_cum, -1, sel_count.long().unsqueeze(-1)).squeeze(-1)  # (BH, Cq)
    video_pairs = (q_sizes.double() * sel_tokens.double()).sum(-1).view(b, h)
    tv = text_keys(b, t, key_padding_mask, q_sizes.device)
    pairs = video_pairs + nv * tv + t * (nv + tv)
    return (pairs / ((nv + t) * (nv + tv))).float()


def accumulate_density_reference(totals: torch.Tensor, density: torch.Tensor, n: int, t: int, head_dim: int,
                                 key_padding_mask: torch.Tensor | None) -> None:
    """Add one call to ``totals`` (fp64 ``(2,)``, in place): ``[0]`` += the mean of ``density`` (``(B, H)``),
    ``[1]`` += its computed FLOPs, ``4 * D * sum_(b,h) density * N * valid_keys(b)`` with ``valid_keys(b) = N - T +``
    the valid text keys of ``b`` (all ``N`` without a mask)."""
    d64 = density.to(torch.float64)
    b = density.shape[0]
    valid = (n - t) + text_keys(b, t, key_padding_mask, density.device)  # (B, 1)
    flops = (d64 * valid).sum() * (n * 4.0 * head_dim)
    totals.add_(torch.stack([d64.mean(), flops]))
