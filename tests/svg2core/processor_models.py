"""Tiny random-init Wan and HunyuanVideo transformers (and inputs) for the processor tests.

Head dim 64 (what svg2_attention accepts), 2 heads, bf16 (svg2 runs in bf16/fp16); a few dozen
video tokens so the reference backend runs a call in tens of milliseconds on CPU.
"""

from __future__ import annotations

import warnings

import torch
from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

from svg2core import SVG2Config
from svg2core.integration import SparsityPlan

DTYPE = torch.bfloat16
HEAD_DIM = 64
WAN_TEXT_DIM = 32  # the tiny pipeline's text encoder width (worker/pipelines/tiny.py)


def small_config(**changes) -> SVG2Config:
    """A budget sized for a few dozen tokens: few clusters, few k-means iterations."""
    base = dict(num_q_clusters=4, num_k_clusters=8, kmeans_iters_init=3, kmeans_iters=1)
    return SVG2Config(**{**base, **changes})


def small_plan(**changes) -> SparsityPlan:
    schedule = {k: changes.pop(k) for k in ("dense_warmup_steps", "dense_warmup_fraction", "dense_layers")
                if k in changes}
    return SparsityPlan(small_config(**changes), **schedule)


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.eval().requires_grad_(False).to(DTYPE)


def tiny_wan(num_layers: int = 2, seed: int = 0, i2v: bool = False) -> WanTransformer3DModel:
    """A Wan 2.1-style transformer (``i2v``: with the image projection and added image K/V in attn2)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=HEAD_DIM, in_channels=4,
            out_channels=4, text_dim=WAN_TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=num_layers,
            rope_max_seq_len=64, image_dim=16 if i2v else None, added_kv_proj_dim=2 * HEAD_DIM if i2v else None,
        )
    return _finish(model)


def wan_inputs(batch: int = 1, frames: int = 3, size: int = 8, seed: int = 1, i2v: bool = False,
               per_token_timestep: bool = False) -> dict:
    """Forward kwargs of :func:`tiny_wan`: ``frames * (size/2)^2`` video tokens.

    ``i2v``: image embeddings, and the 512 text tokens Wan's I2V attn2 assumes. ``per_token_timestep``:
    a ``(B, tokens)`` timestep, as the Wan 2.2 TI2V 5B pipeline passes.
    """
    g = torch.Generator().manual_seed(seed)
    text_len = 512 if i2v else 8
    kwargs = {
        "hidden_states": torch.randn(batch, 4, frames, size, size, generator=g).to(DTYPE),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
        "encoder_hidden_states": torch.randn(batch, text_len, WAN_TEXT_DIM, generator=g).to(DTYPE),
        "return_dict": False,
    }
    if per_token_timestep:
        tokens = frames * (size // 2) ** 2
        kwargs["timestep"] = torch.full((batch, tokens), 500, dtype=torch.long)
    if i2v:
        kwargs["encoder_hidden_states_image"] = torch.randn(batch, 4, 16, generator=g).to(DTYPE)
    return kwargs


def tiny_hunyuan(seed: int = 0) -> HunyuanVideoTransformer3DModel:
    """A HunyuanVideo transformer with one dual-stream and one single-stream block."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=HEAD_DIM, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, mlp_ratio=1.0, patch_size=2, patch_size_t=1,
            text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(16, 24, 24), guidance_embeds=True,
        )
    return _finish(model)


def hunyuan_inputs(text_valid: tuple[int, ...] = (4, 6), text_len: int = 6, frames: int = 3, size: int = 8,
                   seed: int = 1) -> dict:
    """Forward kwargs of :func:`tiny_hunyuan`; batch element ``b`` has ``text_valid[b]`` valid text tokens."""
    g = torch.Generator().manual_seed(seed)
    batch = len(text_valid)
    mask = torch.zeros(batch, text_len, dtype=torch.long)
    for b, valid in enumerate(text_valid):
        mask[b, :valid] = 1
    return {
        "hidden_states": torch.randn(batch, 4, frames, size, size, generator=g).to(DTYPE),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
        "encoder_hidden_states": torch.randn(batch, text_len, 16, generator=g).to(DTYPE),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(batch, 8, generator=g).to(DTYPE),
        "guidance": torch.full((batch,), 6000.0),
        "return_dict": False,
    }


def forward(model: torch.nn.Module, inputs: dict, branch: str | None = None) -> torch.Tensor:
    """One transformer call, inside ``cache_context(branch)`` when a branch name is given."""
    if branch is None:
        return model(**inputs)[0]
    with model.cache_context(branch):
        return model(**inputs)[0]


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error of ``a`` against ``b``."""
    a, b = a.float(), b.float()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-12)).item()
