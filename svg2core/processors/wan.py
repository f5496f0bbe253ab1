"""Self-attention processor for the Wan 2.1 / 2.2 transformers (``WanTransformer3DModel``).

Only ``attn1`` (self-attention over the video tokens) is replaced; ``attn2`` (cross-attention to the
text, plus the image keys/values of I2V) keeps its stock processor object. The processor computes
exactly what diffusers 0.42's ``WanAttnProcessor`` computes for self-attention (projections, QK
RMS-norm across heads, Wan's interleaved RoPE, output projection) and differs only in the attention
call, which goes to the router: stock dense attention outside a job, during dense warm-up steps
and in dense layers; svg2 sparse attention otherwise.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanTransformer3DModel,
)

from .common import SVG2ProcessorBase, SVG2Router


def _apply_wan_rotary(hidden_states: torch.Tensor, freqs_cos: torch.Tensor,
                      freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on ``(B, N, H, D)``: channel pairs (2i, 2i+1) rotate by the angle of pair i.

    ``freqs_cos`` / ``freqs_sin``: ``(1, N, 1, D)`` with each angle repeated for both channels of
    its pair. Same operations, in the same order and dtypes, as the stock processor (so a dense
    run is bitwise identical).
    """
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)  # (B, N, H, D/2) each
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


def _wan_value(attn: WanAttention, hidden_states: torch.Tensor) -> torch.Tensor:
    """The values of a Wan self-attention call, ``(B, N, H, D)``: the stock processor's ``to_v``."""
    return attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))


class SVG2WanAttnProcessor(SVG2ProcessorBase):
    """svg2 processor of one Wan self-attention layer (``blocks[layer].attn1``)."""

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("SVG2WanAttnProcessor: encoder_hidden_states must be None (self-attention only)")
        # hidden_states: (B, N, C) -> query/key/value (B, N, H * D)
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            value = value.unflatten(2, (attn.heads, -1))
        else:
            query = attn.to_q(hidden_states)
            key = attn.to_k(hidden_states)
            value = self._values(_wan_value, attn, hidden_states)

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        query = query.unflatten(2, (attn.heads, -1))  # (B, N, H, D)
        key = key.unflatten(2, (attn.heads, -1))

        if rotary_emb is not None:
            query = _apply_wan_rotary(query, *rotary_emb)
            key = _apply_wan_rotary(key, *rotary_emb)

        hidden_states = self.router.attend(
            self.layer, query, key, value,
            attn_mask=attention_mask, backend=self._attention_backend, parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3)  # (B, N, H * D)
        hidden_states = hidden_states.type_as(query)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def is_wan_transformer(transformer: torch.nn.Module) -> bool:
    return isinstance(transformer, WanTransformer3DModel)


def wan_self_attention_layers(transformer: WanTransformer3DModel) -> list[WanAttention]:
    """The self-attention modules of every block, in forward order. Raises ``TypeError`` if one of
    them does not run the stock processor (we replicate that processor, nothing else)."""
    layers = []
    for i, block in enumerate(transformer.blocks):
        attn = block.attn1
        if attn.is_cross_attention or attn.add_k_proj is not None:
            raise TypeError(f"blocks.{i}.attn1: expected a self-attention module")
        if type(attn.processor) is not WanAttnProcessor:
            raise TypeError(
                f"blocks.{i}.attn1.processor: svg2 replaces only the stock WanAttnProcessor, "
                f"found {type(attn.processor).__name__}"
            )
        layers.append(attn)
    return layers


def make_wan_processors(transformer: WanTransformer3DModel, router: SVG2Router
                        ) -> list[tuple[WanAttention, SVG2WanAttnProcessor]]:
    """(module, new processor) for every self-attention layer of a Wan transformer."""
    return [(attn, SVG2WanAttnProcessor(router, i, attn.processor))
            for i, attn in enumerate(wan_self_attention_layers(transformer))]
