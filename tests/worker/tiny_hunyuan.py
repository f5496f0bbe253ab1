"""A tiny random HunyuanVideo pipeline (test helper): the worker's generate() and svg2's joint
attention through the real ``HunyuanVideoPipeline``, built in memory in about a second."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

from worker.pipelines.tiny import build_tiny_tokenizer

#: Prompt tokens after the template (the real model uses 256): keeps the joint attention small.
MAX_SEQUENCE_LENGTH = 16


def build_tiny_hunyuan_pipeline(seed: int = 0) -> HunyuanVideoPipeline:
    tokenizer = build_tiny_tokenizer()  # byte-level; ids 0 pad, 1 </s>, 2 unk
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = LlamaModel(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, pad_token_id=0))
        text_encoder_2 = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=16, pad_token_id=0,
            bos_token_id=1, eos_token_id=1))
        vae = AutoencoderKLHunyuanVideo(
            latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
            mid_block_add_attention=False)
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=32,
            pooled_projection_dim=16, rope_axes_dim=(16, 24, 24), guidance_embeds=True)
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer)
    for module in (text_encoder, text_encoder_2, vae, transformer):
        module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
