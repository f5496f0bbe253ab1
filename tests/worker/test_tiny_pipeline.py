"""The built-in tiny Wan pipeline: offline, deterministic, Wan-shaped output."""

from __future__ import annotations

import numpy as np
import torch

from worker.pipelines.run import generate
from worker.pipelines.tiny import build_tiny_pipeline, build_tiny_tokenizer


def _frames(pipe, spec) -> np.ndarray:
    return generate(pipe, spec, call_kwargs={"max_sequence_length": 64}).frames


def test_tokenizer_is_byte_level_with_eos_and_padding():
    tok = build_tiny_tokenizer()
    out = tok(["héllo", "a"], padding="max_length", max_length=8, truncation=True,
              add_special_tokens=True, return_attention_mask=True)
    # "héllo" is 6 UTF-8 bytes, then </s>, then one <pad>.
    assert out["attention_mask"][0] == [1] * 7 + [0]
    assert out["input_ids"][0][6] == tok.eos_token_id and out["input_ids"][0][7] == tok.pad_token_id
    assert tok.unk_token_id not in out["input_ids"][0]
    abc = tok("abc", add_special_tokens=False)["input_ids"]
    assert len(abc) == 3 and abc[1] == abc[0] + 1 and abc[2] == abc[0] + 2  # one token per byte, in order


def test_same_seed_and_request_give_identical_frames_across_builds(tiny_spec):
    spec = tiny_spec(width=64, height=48, num_frames=5, num_inference_steps=2)
    first = _frames(build_tiny_pipeline(), spec)
    second = _frames(build_tiny_pipeline(), spec)
    assert first.shape == (5, 48, 64, 3)
    assert first.dtype == np.float32 and 0.0 <= first.min() and first.max() <= 1.0
    np.testing.assert_array_equal(first, second)


def test_seed_and_prompt_change_the_frames(tiny_model, tiny_spec):
    pipe = tiny_model.pipeline
    base = tiny_spec(num_frames=5, num_inference_steps=2)
    frames = _frames(pipe, base)
    other_seed = _frames(pipe, base.model_copy(update={"seed": base.seed + 1}))
    other_prompt = _frames(pipe, base.model_copy(update={"prompt": "a blue whale"}))
    assert np.abs(frames - other_seed).mean() > 1e-3
    assert np.abs(frames - other_prompt).mean() > 1e-4
    assert frames.std() > 0.01  # not a constant image


def test_building_the_pipeline_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_tiny_pipeline()
    assert torch.equal(torch.rand(3), expected)


def test_output_follows_the_requested_shape(tiny_model, tiny_spec):
    spec = tiny_spec(width=96, height=32, num_frames=9, num_inference_steps=1)
    assert _frames(tiny_model.pipeline, spec).shape == (9, 32, 96, 3)
