"""The svg2 processors compute what the stock diffusers processors compute, apart from the attention.

Tiny random Wan 2.1 (T2V, I2V), Wan 2.2 TI2V-style (per-token timestep) and HunyuanVideo
transformers, driven through their forward on CPU with svg2's reference backend.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from svg2core import SVG2Config
from svg2core.integration import SparsityPlan, apply_svg2, remove_svg2, svg2_session
from svg2core.processors import SVG2HunyuanVideoAttnProcessor, SVG2WanAttnProcessor
from svg2core.processors.common import PROBE_HOOK_NAME
from tests.svg2core.processor_models import (
    forward,
    hunyuan_inputs,
    rel_rms,
    small_plan,
    tiny_hunyuan,
    tiny_wan,
    wan_inputs,
)

DENSE = SparsityPlan(SVG2Config(mode="dense"))
WAN_VARIANTS = {
    "t2v": ({}, {}),
    "i2v": ({"i2v": True}, {"i2v": True}),
    "ti2v": ({}, {"per_token_timestep": True}),
}


@pytest.mark.parametrize("variant", list(WAN_VARIANTS))
def test_wan_dense_session_is_bitwise_the_stock_output(variant):
    model_kw, input_kw = WAN_VARIANTS[variant]
    model, inputs = tiny_wan(**model_kw), wan_inputs(**input_kw)
    stock = forward(model, inputs)
    apply_svg2(model, backend="reference")
    assert all(type(b.attn1.processor) is SVG2WanAttnProcessor for b in model.blocks)
    assert all(type(b.attn2.processor) is WanAttnProcessor for b in model.blocks)  # cross-attention untouched
    with svg2_session(model, DENSE, num_inference_steps=1) as session:
        dense = forward(model, inputs)
    assert torch.equal(dense, stock)
    assert session.metrics()["dense_calls"] == len(model.blocks)
    # outside any session the processors are the stock dense attention too
    assert torch.equal(forward(model, inputs), stock)


def test_wan_fused_qkv_projections_are_replicated():
    model, inputs = tiny_wan(), wan_inputs()
    model.fuse_qkv_projections()
    stock = forward(model, inputs)
    apply_svg2(model, backend="reference")
    with svg2_session(model, DENSE, num_inference_steps=1):
        assert torch.equal(forward(model, inputs), stock)
    with svg2_session(model, small_plan(top_p=1.0), num_inference_steps=1):
        assert rel_rms(forward(model, inputs), stock) < 2e-2


@pytest.mark.parametrize("variant", list(WAN_VARIANTS))
def test_wan_top_p_one_matches_dense(variant):
    model_kw, input_kw = WAN_VARIANTS[variant]
    model, inputs = tiny_wan(**model_kw), wan_inputs(**input_kw)
    stock = forward(model, inputs)
    apply_svg2(model, backend="reference")
    with svg2_session(model, small_plan(top_p=1.0), num_inference_steps=1) as session:
        sparse = forward(model, inputs)
    metrics = session.metrics()
    assert metrics["sparse_calls"] == len(model.blocks) and metrics["dense_calls"] == 0
    assert metrics["mean_density_sparse"] > 0.99
    assert rel_rms(sparse, stock) < 2e-2


def test_wan_budget_below_one_reports_density_below_one():
    model, inputs = tiny_wan(), wan_inputs(batch=2)
    stock = forward(model, inputs)
    apply_svg2(model, backend="reference")
    with svg2_session(model, small_plan(mode="fixed_density", target_density=0.25),
                      num_inference_steps=1) as session:
        sparse = forward(model, inputs)
    metrics = session.metrics()
    assert torch.isfinite(sparse.float()).all()
    assert 0.0 < metrics["mean_density_sparse"] < 0.6
    assert metrics["attention_flops"] < 0.6 * metrics["attention_flops_dense_equivalent"]
    assert metrics["mean_density_overall"] == pytest.approx(metrics["mean_density_sparse"])
    assert not torch.equal(sparse, stock)


def test_wan_batch_elements_are_clustered_independently():
    model = tiny_wan()
    pair = wan_inputs(batch=2)
    apply_svg2(model, backend="reference")
    plan = small_plan(top_p=0.5)
    with svg2_session(model, plan, num_inference_steps=1):
        both = forward(model, pair)
    for b in range(2):
        single = {k: (v[b:b + 1] if isinstance(v, torch.Tensor) else v) for k, v in pair.items()}
        with svg2_session(model, plan, num_inference_steps=1):
            alone = forward(model, single)
        assert rel_rms(both[b:b + 1], alone) < 1e-2


def test_hunyuan_dense_session_is_bitwise_the_stock_output():
    model, inputs = tiny_hunyuan(), hunyuan_inputs()
    stock = forward(model, inputs)
    apply_svg2(model, backend="reference")
    refiner = model.context_embedder.token_refiner.refiner_blocks[0].attn
    assert type(refiner.processor).__name__ == "AttnProcessor2_0"  # text-only refiner untouched
    assert type(model.transformer_blocks[0].attn.processor) is SVG2HunyuanVideoAttnProcessor
    assert type(model.single_transformer_blocks[0].attn.processor) is SVG2HunyuanVideoAttnProcessor
    with svg2_session(model, DENSE, num_inference_steps=1):
        dense = forward(model, inputs)
    assert torch.equal(dense, stock)


def test_hunyuan_top_p_one_matches_dense_with_padded_text():
    model, inputs = tiny_hunyuan(), hunyuan_inputs(text_valid=(3, 6))
    stock = forward(model, inputs)
    apply_svg2(model, backend="reference")
    with svg2_session(model, small_plan(top_p=1.0), num_inference_steps=1) as session:
        sparse = forward(model, inputs)
    metrics = session.metrics()
    assert metrics["sparse_calls"] == 2  # the dual-stream and the single-stream block
    assert metrics["mean_density_sparse"] > 0.99
    assert rel_rms(sparse, stock) < 2e-2


def test_hunyuan_padded_text_keys_never_reach_the_video_tokens():
    """The text part of diffusers' joint mask reaches svg2 as the key padding mask: changing the
    content of padded text tokens must not change the video output, at a real sparse budget."""
    model = tiny_hunyuan()
    inputs = hunyuan_inputs(text_valid=(3, 4))
    altered = dict(inputs)
    ehs = inputs["encoder_hidden_states"].clone()
    ehs[0, 3:] = 5.0
    ehs[1, 4:] = -5.0
    altered["encoder_hidden_states"] = ehs
    apply_svg2(model, backend="reference")
    plan = small_plan(mode="fixed_density", target_density=0.3)
    with svg2_session(model, plan, num_inference_steps=1) as session:
        out = forward(model, inputs)
    with svg2_session(model, plan, num_inference_steps=1):
        out_altered = forward(model, altered)
    assert session.metrics()["mean_density_sparse"] < 0.8
    assert torch.isfinite(out.float()).all()
    torch.testing.assert_close(out_altered, out, atol=1e-2, rtol=0)


@pytest.mark.parametrize("kind", ["wan", "wan_i2v", "hunyuan"])
def test_values_made_beside_the_selection_change_no_output(kind):
    """``value_beside_selection``: the processors hand each call their value projection, made inside the call;
    dense and sparse outputs, the selections (the cached centroids) and the call counts are those of the default,
    bit for bit; on CPU the measured sparse time leaves the projection out (it is never negative)."""
    def build():
        if kind == "hunyuan":
            return tiny_hunyuan(), hunyuan_inputs(text_valid=(3, 6))
        return tiny_wan(i2v=kind == "wan_i2v"), wan_inputs(i2v=kind == "wan_i2v")

    plan = small_plan(top_p=0.6, dense_layers=1)
    runs = []
    for beside in (False, True):
        model, inputs = build()
        integration = apply_svg2(model, backend="reference", value_beside_selection=beside)
        assert integration.routers["transformer"].value_beside_selection is beside
        with svg2_session(model, DENSE, num_inference_steps=1):
            dense = forward(model, inputs)
        with svg2_session(model, plan, num_inference_steps=2) as session:
            sparse = [forward(model, inputs, "cond") for _ in range(2)]
            cents = {key: (st.get(0).q.clone(), st.get(0).k.clone()) for key, st in session.layer_states.items()}
        metrics = session.metrics()
        assert metrics["sparse_calls"] > 0 and metrics["sparse_attention_seconds"] >= 0
        runs.append((dense, sparse, cents, metrics["sparse_calls"], metrics["dense_calls"]))
    (dense0, sparse0, cents0, *counts0), (dense1, sparse1, cents1, *counts1) = runs
    assert torch.equal(dense0, dense1) and counts0 == counts1
    assert all(torch.equal(a, b) for a, b in zip(sparse0, sparse1, strict=True))
    assert cents0.keys() == cents1.keys()
    assert all(torch.equal(cents0[key][i], cents1[key][i]) for key in cents0 for i in (0, 1))


def test_value_beside_selection_must_be_a_bool():
    with pytest.raises(ValueError, match="value_beside_selection: must be a bool"):
        apply_svg2(tiny_wan(), backend="reference", value_beside_selection="yes")


def test_remove_restores_the_stock_processors_exactly():
    wan, hv = tiny_wan(), tiny_hunyuan()
    for model, inputs in ((wan, wan_inputs()), (hv, hunyuan_inputs())):
        before = dict(model.attn_processors)
        stock = forward(model, inputs, "cond")
        apply_svg2(model, backend="reference")
        with svg2_session(model, small_plan(top_p=0.5), num_inference_steps=1):
            forward(model, inputs, "cond")
        remove_svg2(model)
        after = model.attn_processors
        assert after.keys() == before.keys()
        assert all(after[name] is before[name] for name in before)
        assert not hasattr(model, "_svg2_router")
        assert not model._forward_pre_hooks and not model._forward_hooks
        assert all(PROBE_HOOK_NAME not in getattr(m, "_diffusers_hook", None).hooks
                   for m in model.modules() if hasattr(m, "_diffusers_hook"))
        assert torch.equal(forward(model, inputs, "cond"), stock)
    assert type(hv.transformer_blocks[0].attn.processor) is HunyuanVideoAttnProcessor2_0


def test_remove_after_first_block_cache_keeps_the_cache_working():
    model, inputs = tiny_wan(num_layers=3), wan_inputs()
    apply_svg2(model, backend="reference")
    model.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    remove_svg2(model)
    first = forward(model, inputs, "cond")  # the cache's own hooks still run (would raise without context)
    assert torch.isfinite(first.float()).all()
    model.disable_cache()


def _spy_masks(model) -> list:
    """Record the (attn_mask, key_padding_mask) each routed HunyuanVideo layer hands to the router."""
    router, seen = model._svg2_router, []
    attend = router.attend

    def spy(*args, **kwargs):
        seen.append((kwargs["attn_mask"], kwargs.get("key_padding_mask")))
        return attend(*args, **kwargs)

    router.attend = spy
    return seen


@pytest.mark.parametrize("plan", [DENSE, small_plan(mode="fixed_density", target_density=0.5)], ids=["dense", "sparse"])
def test_hunyuan_all_valid_text_drops_the_masks_only_when_the_session_says_so(plan, monkeypatch):
    """With ``text_mask_all_valid`` (the caller packed the prompt: every text token valid) neither the
    dense SDPA call nor svg2 gets a mask, and the output is the masked call's; without it, the masks
    are used as given (no per-call check: that would be a device sync)."""
    import svg2core.integration as integration_module

    model = tiny_hunyuan()
    inputs = hunyuan_inputs(text_valid=(6,), text_len=6)  # one prompt, all of its 6 tokens valid
    apply_svg2(model, backend="reference")
    seen = _spy_masks(model)
    received = []  # what the attention functions finally got
    dense_fn, sparse_fn = integration_module.dense_attention, integration_module.SVG2Session._sparse

    def dense_spy(query, key, value, attn_mask, *rest):
        received.append(("dense", attn_mask))
        return dense_fn(query, key, value, attn_mask, *rest)

    def sparse_spy(self, router, layer, branch, query, key, value, num_dense_tokens, key_padding_mask, *rest):
        received.append(("sparse", key_padding_mask))
        return sparse_fn(self, router, layer, branch, query, key, value, num_dense_tokens, key_padding_mask, *rest)

    monkeypatch.setattr(integration_module, "dense_attention", dense_spy)
    monkeypatch.setattr(integration_module.SVG2Session, "_sparse", sparse_spy)
    outputs = {}
    for all_valid in (False, True):
        received.clear()
        with svg2_session(model, plan, num_inference_steps=1, text_mask_all_valid=all_valid) as session:
            outputs[all_valid] = forward(model, inputs)
        kind = "dense" if plan.config.mode == "dense" else "sparse"
        assert [k for k, _ in received] == [kind, kind]  # the dual- and the single-stream block
        assert all((mask is None) == all_valid for _, mask in received)
        assert session.metrics()["attention_calls"] == 2
    # the processors always pass the pipeline's mask on; the session decides
    assert len(seen) == 4 and all(m is not None and kpm is not None for m, kpm in seen)
    torch.testing.assert_close(outputs[True], outputs[False], atol=1e-2, rtol=0)


def test_text_mask_all_valid_must_be_a_bool():
    model = tiny_hunyuan()
    apply_svg2(model, backend="reference")
    with pytest.raises(ValueError, match="text_mask_all_valid: must be a bool"):
        with svg2_session(model, DENSE, num_inference_steps=1, text_mask_all_valid="yes"):
            pass
