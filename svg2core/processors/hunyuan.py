"""Joint-attention processor for HunyuanVideo (``HunyuanVideoTransformer3DModel``).

HunyuanVideo attends jointly over ``[video tokens, text tokens]`` in both its dual-stream blocks
(text has its own projections ``add_{q,k,v}_proj``) and its single-stream blocks (video and text
were concatenated before the shared projections). RoPE applies to the video tokens only; the text
tail is padded, and the transformer passes a ``(B, 1, 1, N)`` bool key mask whose text part marks
the valid text tokens (the video part is all True).

The processor computes exactly what diffusers 0.42's ``HunyuanVideoAttnProcessor2_0`` computes and
differs only in the attention call: svg2 treats the video tokens sparsely and the ``T`` trailing text
tokens densely (``num_dense_tokens=T``, ``key_padding_mask`` = the text part of the mask). The token
refiner's attention (text only) keeps its stock processor.

All-valid text: diffusers builds the mask even when no text token is padded, and any mask takes SDPA
off its unmasked (fastest cuDNN) path. Whether the mask is all True cannot be read here without a
host-device sync per call (this code runs inside the compiled blocks and may be CUDA-graph captured),
so the processor always passes the mask on, and the decision is made once per job on the host: the
worker packs the prompt to its valid tokens before denoising (``worker.pipelines.run.pack_hunyuan_prompt``)
and opens the session with ``text_mask_all_valid=True``, whose ``attend`` (outside the compiled graphs)
then drops ``attn_mask`` and ``key_padding_mask``: dense calls run unmasked SDPA, sparse calls get no
key padding mask.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import (
    HunyuanVideoAttnProcessor2_0,
    HunyuanVideoTransformer3DModel,
)

from .common import SVG2ProcessorBase, SVG2Router


def text_key_padding_mask(attention_mask: torch.Tensor | None, num_text: int) -> torch.Tensor | None:
    """The ``(B, T)`` bool validity of the trailing ``T`` text keys from the joint mask diffusers
    passes (``(B, 1, 1, N)`` or ``(B, N)`` bool, True = attend)."""
    if attention_mask is None or num_text == 0:
        return None
    if attention_mask.dtype != torch.bool:
        raise ValueError(
            f"attention_mask: svg2 needs a bool key mask (True = valid), got dtype {attention_mask.dtype}"
        )
    if attention_mask.dim() == 4:
        if attention_mask.shape[1] != 1 or attention_mask.shape[2] != 1:
            raise ValueError(
                f"attention_mask: svg2 needs a key-only mask of shape (B, 1, 1, N), got {tuple(attention_mask.shape)}"
            )
        attention_mask = attention_mask[:, 0, 0]
    return attention_mask[:, -num_text:]


def _hunyuan_value(attn: Attention, hidden_states: torch.Tensor,
                   encoder_hidden_states: torch.Tensor | None) -> torch.Tensor:
    """The values of a HunyuanVideo joint-attention call, ``(B, N, H, D)``: ``to_v`` of the (joint, in a
    single-stream block) tokens, then in a dual-stream block the text's ``add_v_proj`` appended."""
    value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
    if encoder_hidden_states is not None:
        encoder_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
        value = torch.cat([value, encoder_value], dim=1)
    return value


class SVG2HunyuanVideoAttnProcessor(SVG2ProcessorBase):
    """svg2 processor of one HunyuanVideo joint-attention layer (dual- or single-stream block)."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        single_stream = attn.add_q_proj is None and encoder_hidden_states is not None
        num_text = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
        if single_stream:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)  # (B, Nv + T, C)

        # 1. QKV projections: (B, N, C) -> (B, N, H, D)
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        dual_stream = attn.add_q_proj is not None and encoder_hidden_states is not None
        value = self._values(_hunyuan_value, attn, hidden_states, encoder_hidden_states if dual_stream else None)

        # 2. QK normalization
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # 3. RoPE on the video tokens only
        if image_rotary_emb is not None:
            if single_stream:
                query = torch.cat([apply_rotary_emb(query[:, :-num_text], image_rotary_emb, sequence_dim=1),
                                   query[:, -num_text:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-num_text], image_rotary_emb, sequence_dim=1),
                                 key[:, -num_text:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # 4. Text projections of the dual-stream blocks, appended after the video tokens (the values' in
        # _hunyuan_value)
        if dual_stream:
            encoder_query = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_key = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                encoder_query = attn.norm_added_q(encoder_query)
            if attn.norm_added_k is not None:
                encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)

        # 5. Attention: video tokens sparse, the trailing text tokens dense
        hidden_states = self.router.attend(
            self.layer, query, key, value,
            attn_mask=attention_mask, backend=self._attention_backend, parallel_config=self._parallel_config,
            num_dense_tokens=num_text, key_padding_mask=text_key_padding_mask(attention_mask, num_text),
        )
        hidden_states = hidden_states.flatten(2, 3)  # (B, N, H * D)
        hidden_states = hidden_states.to(query.dtype)

        # 6. Output projections
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, :-num_text],
                hidden_states[:, -num_text:],
            )
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)

        return hidden_states, encoder_hidden_states


def is_hunyuan_video_transformer(transformer: torch.nn.Module) -> bool:
    return isinstance(transformer, HunyuanVideoTransformer3DModel)


def hunyuan_joint_attention_layers(transformer: HunyuanVideoTransformer3DModel) -> list[Attention]:
    """The joint-attention modules of the dual-stream then the single-stream blocks, in forward
    order. Raises ``TypeError`` if one does not run the stock processor."""
    layers = []
    named = [(f"transformer_blocks.{i}", b) for i, b in enumerate(transformer.transformer_blocks)]
    named += [(f"single_transformer_blocks.{i}", b) for i, b in enumerate(transformer.single_transformer_blocks)]
    for name, block in named:
        attn = block.attn
        if type(attn.processor) is not HunyuanVideoAttnProcessor2_0:
            raise TypeError(
                f"{name}.attn.processor: svg2 replaces only the stock HunyuanVideoAttnProcessor2_0, "
                f"found {type(attn.processor).__name__}"
            )
        layers.append(attn)
    return layers


def make_hunyuan_processors(transformer: HunyuanVideoTransformer3DModel, router: SVG2Router
                            ) -> list[tuple[Attention, SVG2HunyuanVideoAttnProcessor]]:
    """(module, new processor) for every joint-attention layer of a HunyuanVideo transformer."""
    return [(attn, SVG2HunyuanVideoAttnProcessor(router, i, attn.processor))
            for i, attn in enumerate(hunyuan_joint_attention_layers(transformer))]
