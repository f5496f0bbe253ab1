"""Dense attention with trailing text tokens (torch only, no Triton): the dense mode of ``svg2_attention`` and the
reference's key mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def valid_key_mask(b: int, nv: int, t: int, key_padding_mask: torch.Tensor | None, device) -> torch.Tensor | None:
    """``(B, Nv + T)`` bool valid-key mask (video keys always valid), or None when every key is valid."""
    if key_padding_mask is None or t == 0:
        return None
    return torch.cat([torch.ones(b, nv, dtype=torch.bool, device=device), key_padding_mask.bool()], dim=1)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_dense_tokens: int,
                    key_padding_mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Plain SDPA of ``q`` over every key of ``k`` / ``v`` (the last ``num_dense_tokens`` of them text keys, the
    invalid ones masked out). ``q`` may hold any subset of the query rows, e.g. the text queries only."""
    b, _, n, _ = k.shape
    keys = valid_key_mask(b, n - num_dense_tokens, num_dense_tokens, key_padding_mask, q.device)
    mask = None if keys is None else keys[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
