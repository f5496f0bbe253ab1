"""svg2 in the worker: jobs through ``generate()`` on the tiny model (head dim 64, reference backend on
CPU) run the sparse path under their own budget, and a real worker process reports the figures."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from worker.pipelines.run import generate

SPARSE_NOW = {"dense_warmup_steps": 0, "dense_layers": 0}  # every call sparse


def _run(model, spec):
    return generate(model.pipeline, spec, call_kwargs=model.call_kwargs)


def test_top_p_1_gives_the_dense_output(tiny_model, tiny_spec):
    dense = _run(tiny_model, tiny_spec(num_frames=5, num_inference_steps=2, sparsity="dense"))
    full = _run(tiny_model, tiny_spec(num_frames=5, num_inference_steps=2,
                                      sparsity={"preset": "balanced", "top_p": 1.0, **SPARSE_NOW}))
    assert dense.metrics["attention"] == "dense" and full.metrics["attention"] == "svg2"
    s = full.metrics["sparsity"]
    assert s["sparse_calls"] == s["attention_calls"] == 2 * 2 * 2  # steps x CFG branches x layers
    assert s["mean_density_sparse"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(full.frames, dense.frames, atol=2e-3)


def test_a_budget_below_1_reports_its_density_and_gives_finite_frames(tiny_model, tiny_spec):
    result = _run(tiny_model, tiny_spec(num_frames=5, num_inference_steps=2,
                                        sparsity={"preset": "fast", "max_density": 0.3, **SPARSE_NOW}))
    s = result.metrics["sparsity"]
    assert s["sparse_calls"] == 8 and s["dense_calls"] == 0
    assert 0 < s["mean_density_sparse"] < 1 and s["attention_flops_ratio"] < 1
    assert s["attention_flops"] < s["attention_flops_dense_equivalent"]
    assert np.isfinite(result.frames).all()
    dense = _run(tiny_model, tiny_spec(num_frames=5, num_inference_steps=2, sparsity="dense"))
    assert not np.allclose(result.frames, dense.frames, atol=1e-4)  # the budget changed the output


def test_warmup_steps_and_dense_layers_run_dense_and_are_counted(tiny_model, tiny_spec):
    spec = tiny_spec(num_frames=5, num_inference_steps=4,
                     sparsity={"preset": "balanced", "dense_warmup_steps": 2, "dense_layers": 1})
    s = _run(tiny_model, spec).metrics["sparsity"]
    # 4 steps x 2 CFG branches x 2 layers = 16 calls: steps 0-1 dense (warm-up), then layer 0 dense.
    assert s["attention_calls"] == 16 and s["transformer_forwards"] == 8
    assert s["dense_calls_warmup"] == 8 and s["dense_calls_dense_layers"] == 4 and s["sparse_calls"] == 4
    assert s["warmup_steps"] == 2 and s["dense_layers"] == 1 and s["branches"] == ["cond", "uncond"]
    assert len(s["step_transformer_seconds"]) == 4
    assert 0 < s["mean_density_sparse"] <= 1
    assert s["mean_density_overall"] == pytest.approx((s["mean_density_sparse"] * 4 + 12) / 16)
    assert s["sparse_attention_seconds"] > 0 and s["dense_attention_seconds"] > 0
    # the job's own 12 dense calls calibrate the dense time of its sparse calls (no GPU probe on CPU)
    assert s["estimated_dense_time_source"] == "observed"
    assert s["estimated_attention_seconds_saved"] == pytest.approx(
        s["estimated_dense_attention_seconds_for_sparse_calls"] - s["sparse_attention_seconds"])
    assert s["estimated_dense_attention_seconds_for_sparse_calls"] > 0


def test_back_to_back_jobs_with_different_budgets_do_not_affect_each_other(tiny_model, tiny_spec):
    tight = tiny_spec(num_frames=5, num_inference_steps=2, sparsity={"preset": "fast", "top_p": 0.3, **SPARSE_NOW})
    loose = tiny_spec(num_frames=5, num_inference_steps=2, seed=7,
                      sparsity={"preset": "quality", "top_p": 0.99, **SPARSE_NOW})
    first = _run(tiny_model, tight)
    other = _run(tiny_model, loose)
    again = _run(tiny_model, tight)
    assert np.array_equal(first.frames, again.frames)
    assert first.metrics["sparsity"]["mean_density_sparse"] == again.metrics["sparsity"]["mean_density_sparse"]
    assert other.metrics["sparsity"]["mean_density_sparse"] > first.metrics["sparsity"]["mean_density_sparse"]


def test_removing_svg2_restores_the_stock_dense_pipeline(registry, tiny_spec):
    from svg2core.integration import find_svg2, remove_svg2
    from worker.pipelines.loading import load_model
    from worker.pipelines.tiny import build_tiny_pipeline

    model = load_model(registry.get("tiny"), device="cpu")  # its own copy: the shared one stays applied
    assert find_svg2(model.pipeline) is model.svg2 is not None
    spec = tiny_spec(num_frames=5, num_inference_steps=2, sparsity={"preset": "fast", **SPARSE_NOW})
    sparse = _run(model, spec)
    remove_svg2(model.pipeline)
    assert find_svg2(model.pipeline) is None
    restored = _run(model, spec)
    assert restored.metrics["attention"] == "dense" and restored.metrics["sparsity"] is None

    stock = build_tiny_pipeline()  # never had svg2
    stock.set_progress_bar_config(disable=True)
    expected = generate(stock, spec, call_kwargs=model.call_kwargs)
    assert np.array_equal(restored.frames, expected.frames)
    assert not np.array_equal(sparse.frames, expected.frames)


def test_registry_option_value_beside_selection_reaches_the_processors_and_changes_no_frame(registry, tiny_spec):
    from worker.pipelines.loading import load_model

    spec = tiny_spec(num_frames=5, num_inference_steps=2, sparsity={"preset": "fast", **SPARSE_NOW})
    runs = []
    for beside in (False, True):
        entry = registry.get("tiny").model_copy(update={"options": {"svg2_value_beside_selection": beside}})
        model = load_model(entry, device="cpu")
        assert all(r.value_beside_selection is beside for r in model.svg2.routers.values())
        runs.append(_run(model, spec))
    assert np.array_equal(runs[0].frames, runs[1].frames)
    assert runs[1].metrics["sparsity"]["sparse_calls"] == runs[0].metrics["sparsity"]["sparse_calls"] > 0


def test_registry_option_svg2_false_keeps_the_stock_processors(registry, tiny_spec):
    from worker.pipelines.loading import load_model

    entry = registry.get("tiny").model_copy(update={"options": {"svg2": False}})
    model = load_model(entry, device="cpu")
    assert model.svg2 is None
    result = _run(model, tiny_spec(num_frames=5, num_inference_steps=1))
    assert result.metrics["attention"] == "dense" and result.metrics["sparsity"] is None


def _wait_terminal(client, video_id: str, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        video = client.get(f"/v1/videos/{video_id}").json()
        if video["status"] in ("completed", "failed", "cancelled"):
            return video
        time.sleep(0.1)
    raise AssertionError(f"video {video_id} not finished within {timeout_s} s")


def test_a_worker_process_reports_density_through_the_api(client, start_worker):
    worker = start_worker()
    worker.wait_for("idle")
    sparse = client.post("/v1/videos", json={"prompt": "a red fox in snow", "model": "tiny", "num_frames": 5,
                                             "num_inference_steps": 3, "sparsity": "balanced"})
    dense = client.post("/v1/videos", json={"prompt": "a red fox in snow", "model": "tiny", "num_frames": 5,
                                            "num_inference_steps": 3, "sparsity": "dense"})
    assert sparse.status_code == dense.status_code == 201, (sparse.text, dense.text)

    video = _wait_terminal(client, sparse.json()["id"])
    assert video["status"] == "completed", video
    m = video["metrics"]
    assert m["attention"] == "svg2"
    s = m["sparsity"]
    assert s["warmup_steps"] == 1 and s["dense_calls_warmup"] == 4  # balanced: 20% of 3 steps
    assert s["sparse_calls"] == 4 and s["dense_calls_dense_layers"] == 4
    assert 0 < s["mean_density_sparse"] < 1 and math.isfinite(s["attention_flops_ratio"])
    assert len(s["step_transformer_seconds"]) == len(m["step_seconds"]) == 3

    video = _wait_terminal(client, dense.json()["id"])
    assert video["status"] == "completed", video
    assert video["metrics"]["attention"] == "dense"
    assert video["metrics"]["sparsity"]["dense_calls_dense_mode"] == 12
    assert video["metrics"]["sparsity"]["attention_flops_ratio"] == 1.0


@pytest.fixture(scope="module")
def tiny_hunyuan():
    from tiny_hunyuan import build_tiny_hunyuan_pipeline

    from svg2core.integration import apply_svg2

    pipe = build_tiny_hunyuan_pipeline()
    apply_svg2(pipe)
    return pipe


def test_hunyuan_video_jobs_run_svg2_joint_attention(tiny_hunyuan, registry):
    from tiny_hunyuan import MAX_SEQUENCE_LENGTH

    from worker.registry import build_job_spec

    def run(sparsity):
        spec, _ = build_job_spec(registry, prompt="a lighthouse at dusk", model="hunyuanvideo", size="64x64",
                                 num_frames=5, num_inference_steps=2, seed=3, sparsity=sparsity)
        return generate(tiny_hunyuan, spec, call_kwargs={"max_sequence_length": MAX_SEQUENCE_LENGTH})

    small = {"num_q_clusters": 8, "num_k_clusters": 16, "kmeans_iters_init": 5, **SPARSE_NOW}
    dense = run("dense")
    full = run({"preset": "balanced", "top_p": 1.0, **small})
    tight = run({"preset": "fast", "top_p": 0.3, **small})
    assert dense.metrics["attention"] == "dense" and full.metrics["attention"] == "svg2"
    # One pass per step (embedded guidance), one dual- and one single-stream block.
    assert full.metrics["sparsity"]["branches"] == ["cond"]
    assert full.metrics["sparsity"]["sparse_calls"] == full.metrics["sparsity"]["attention_calls"] == 4
    assert full.metrics["sparsity"]["mean_density_sparse"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(full.frames, dense.frames, atol=2e-3)
    s = tight.metrics["sparsity"]
    assert s["sparse_calls"] == 4 and 0 < s["mean_density_sparse"] < 1 and s["attention_flops_ratio"] < 1
    assert np.isfinite(tight.frames).all()


#: A template without the system prompt, so that the tiny byte tokenizer leaves padding in 16 tokens.
SHORT_TEMPLATE = {"template": "{}", "crop_start": 0}


@pytest.mark.parametrize("sparsity", ["dense", {"preset": "fast", "max_density": 0.5, "num_q_clusters": 8,
                                                "num_k_clusters": 16, "kmeans_iters_init": 5, **SPARSE_NOW}],
                         ids=["dense", "sparse"])
def test_hunyuan_prompt_is_packed_and_attention_runs_unmasked(tiny_hunyuan, registry, monkeypatch, sparsity):
    """generate() encodes a HunyuanVideo prompt once per job, keeps its valid tokens only and runs the
    job with text_mask_all_valid: the transformer gets 6 text tokens instead of 16 padded ones, no
    attention call gets a mask, and the frames are the stock padded, masked call's."""
    import torch
    from tiny_hunyuan import MAX_SEQUENCE_LENGTH

    import svg2core.integration as integration_module
    from svg2core.integration import svg2_session
    from worker.registry import build_job_spec

    call_kwargs = {"max_sequence_length": MAX_SEQUENCE_LENGTH, "prompt_template": SHORT_TEMPLATE}
    spec, _ = build_job_spec(registry, prompt="a cat", model="hunyuanvideo", size="64x64", num_frames=5,
                             num_inference_steps=2, seed=3, sparsity=sparsity)
    text_tokens, masks = [], []  # per transformer call; per attention call (dense mask or key padding mask)
    hook = tiny_hunyuan.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: text_tokens.append(kwargs["encoder_hidden_states"].shape[1]), with_kwargs=True)
    dense_fn, sparse_fn = integration_module.dense_attention, integration_module.SVG2Session._sparse

    def dense_spy(query, key, value, attn_mask, *rest):
        masks.append(attn_mask)
        return dense_fn(query, key, value, attn_mask, *rest)

    def sparse_spy(self, router, layer, branch, query, key, value, num_dense_tokens, key_padding_mask, *rest):
        masks.append(key_padding_mask)
        return sparse_fn(self, router, layer, branch, query, key, value, num_dense_tokens, key_padding_mask, *rest)

    monkeypatch.setattr(integration_module, "dense_attention", dense_spy)
    monkeypatch.setattr(integration_module.SVG2Session, "_sparse", sparse_spy)
    try:
        packed = generate(tiny_hunyuan, spec, call_kwargs=call_kwargs)
        assert text_tokens == [6, 6] and len(masks) == 4 and all(m is None for m in masks)
        text_tokens.clear(), masks.clear()
        # The stock call: the pipeline encodes the prompt itself, padded to 16 tokens, masked.
        with svg2_session(tiny_hunyuan, spec.sparsity, num_inference_steps=2), torch.inference_mode():
            stock = tiny_hunyuan(prompt="a cat", height=64, width=64, num_frames=5, num_inference_steps=2,
                                 guidance_scale=spec.guidance_scale, output_type="np",
                                 generator=torch.Generator(device="cpu").manual_seed(3), **call_kwargs).frames[0]
        assert text_tokens == [16, 16] and len(masks) == 4 and all(m is not None for m in masks)
    finally:
        hook.remove()
    s = packed.metrics["sparsity"]
    assert s["attention_calls"] == 4 and s["sparse_calls"] == (0 if sparsity == "dense" else 4)
    np.testing.assert_allclose(packed.frames, stock, atol=1e-4)


def test_hunyuan_prompt_packing_applies_only_where_it_is_exact(tiny_hunyuan, tiny_model):
    from tiny_hunyuan import MAX_SEQUENCE_LENGTH

    from worker.pipelines.run import pack_hunyuan_prompt

    base = {"max_sequence_length": MAX_SEQUENCE_LENGTH, "prompt_template": SHORT_TEMPLATE}
    kwargs = {"prompt": "a cat", **base}
    assert pack_hunyuan_prompt(tiny_hunyuan, kwargs)
    assert kwargs["prompt"] is None and kwargs["prompt_embeds"].shape[1] == 6
    assert kwargs["prompt_attention_mask"].shape == (1, 6) and bool(kwargs["prompt_attention_mask"].all())
    full = {"prompt": "a lighthouse at dusk", **base}  # 20 bytes: fills all 16 tokens, nothing to cut
    assert pack_hunyuan_prompt(tiny_hunyuan, full) and full["prompt_embeds"].shape[1] == MAX_SEQUENCE_LENGTH
    # not packed: a Wan pipeline, a true-CFG negative prompt (its mask stays padded), given embeddings
    for pipe, other in ((tiny_model.pipeline, {"prompt": "a cat"}),
                        (tiny_hunyuan, {"prompt": "a cat", "negative_prompt": "blur", "true_cfg_scale": 4.0, **base}),
                        (tiny_hunyuan, {"prompt": None, "prompt_embeds": kwargs["prompt_embeds"], **base})):
        before = dict(other)
        assert not pack_hunyuan_prompt(pipe, other) and other == before
