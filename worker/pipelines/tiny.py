"""The built-in ``tiny`` model: a random-initialised Wan-architecture pipeline built from configs.

It exercises exactly the code path of the real Wan 2.1 models (diffusers ``WanPipeline`` with a
``WanTransformer3DModel``, an ``AutoencoderKLWan`` and a ``UMT5EncoderModel``) but with layers a few
channels wide, so a short clip takes about a second on CPU. Nothing is downloaded: the tokenizer is
a byte-level vocabulary built in memory with the ``tokenizers`` library. Weights come from a fixed
seed inside a forked RNG, so every process builds the same model and the global RNG is untouched.

The VAE keeps Wan's 4x temporal / 8x spatial compression and the transformer Wan's 1x2x2 patches, so
the tiny model accepts the same shapes as the real ones: ``num_frames = 4k + 1`` and width / height
multiples of 16.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

#: Seed of the random weights; part of the model's identity (changing it changes every output).
TINY_WEIGHTS_SEED = 0

_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in T5 vocabularies
_LATENT_CHANNELS = 4
_TEXT_DIM = 32


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (3 special tokens + 256 byte tokens) that needs no vocabulary file.

    Any prompt text maps to tokens (one per UTF-8 byte), and ``</s>`` is appended like the T5
    tokenizer the real Wan models use.
    """
    vocab = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
    # Sorted: alphabet() comes from a hash set, and token ids must be the same in every process.
    for byte_char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[byte_char] = len(vocab)
    # A BPE without merges over the byte alphabet: every byte is its own token.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_tiny_pipeline(seed: int = TINY_WEIGHTS_SEED, task: str = "t2v") -> WanPipeline | WanImageToVideoPipeline:
    """Build the tiny random Wan pipeline (float32, on CPU; move it with ``.to(device)``).

    ``task="i2v"``: a ``WanImageToVideoPipeline`` in Wan 2.2 I2V's layout (no CLIP image encoder): the first frame,
    VAE-encoded, and its mask are concatenated to the noise latents, so the transformer takes ``2 z + 4`` input
    channels (``z`` latent channels, 4 = the mask over the VAE's temporal factor). ``task="ti2v"``: Wan 2.2 TI2V 5B's
    layout, a ``WanPipeline`` with ``expand_timesteps`` (a timestep per token: the first frame's tokens, when an
    image is given, are clean) over a transformer of ``z`` input channels; its image-to-video twin is
    :func:`worker.pipelines.loading.image_pipeline_for`."""
    if task not in ("t2v", "i2v", "ti2v"):
        raise ValueError(f"task: must be 't2v', 'i2v' or 'ti2v', got {task!r}")
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=_TEXT_DIM,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=32,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=_LATENT_CHANNELS,
            dim_mult=[1, 2, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * _LATENT_CHANNELS,
            latents_std=[1.0] * _LATENT_CHANNELS,
        )
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=64,  # svg2 needs head dim 64 or 128: the tiny model runs the sparse path
            in_channels=2 * _LATENT_CHANNELS + 4 if task == "i2v" else _LATENT_CHANNELS,
            out_channels=_LATENT_CHANNELS,
            text_dim=_TEXT_DIM,
            freq_dim=32,
            ffn_dim=256,
            num_layers=2,
            rope_max_seq_len=64,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    cls = WanImageToVideoPipeline if task == "i2v" else WanPipeline
    pipe = cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer,
               **({"expand_timesteps": True} if task == "ti2v" else {}))
    for module in (text_encoder, vae, transformer):
        module.eval().requires_grad_(False)
    return pipe
