"""svg2 on a whole diffusers WanPipeline: CFG through the pipeline's cache contexts, the Wan 2.2
two-expert split of the steps, and model CPU offload across jobs.

The pipelines reuse the tiny text encoder / VAE of ``worker.pipelines.tiny`` with tiny transformers
of head dim 64 (svg2's smallest); outputs stay latent (no VAE decode).
"""

from __future__ import annotations

import torch
from diffusers import WanPipeline

from svg2core.integration import apply_svg2, svg2_session
from tests.svg2core.processor_models import DTYPE, small_plan, tiny_wan
from worker.pipelines.tiny import build_tiny_pipeline

STEPS = 4


def tiny_wan_pipeline(two_experts: bool = False) -> WanPipeline:
    base = build_tiny_pipeline()
    pipe = WanPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler,
        transformer=tiny_wan(seed=0), transformer_2=tiny_wan(seed=1) if two_experts else None,
        boundary_ratio=0.8 if two_experts else None,
    )
    pipe.text_encoder.to(DTYPE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: WanPipeline, callback=None) -> torch.Tensor:
    return pipe(
        "a red fox", negative_prompt="blurry", height=64, width=64, num_frames=5, num_inference_steps=STEPS,
        guidance_scale=5.0, generator=torch.Generator().manual_seed(0), output_type="latent",
        callback_on_step_end=callback,
    ).frames


def states_per_step(session, log: list):
    """A ``callback_on_step_end`` recording which (transformer, layer) hold centroids of which branch."""
    def callback(pipe, step, timestep, callback_kwargs):
        log.append({key: sorted(state.centroids) for key, state in session.layer_states.items()})
        return {}
    return callback


def test_pipeline_cfg_branches_and_warmup_steps():
    pipe = tiny_wan_pipeline()
    apply_svg2(pipe, backend="reference")
    log: list = []
    with svg2_session(pipe, small_plan(top_p=0.5, dense_warmup_steps=2, dense_layers=1),
                      num_inference_steps=STEPS) as session:
        latents = generate(pipe, states_per_step(session, log))
    metrics = session.metrics()
    assert torch.isfinite(latents.float()).all()
    assert metrics["branches"] == ["cond", "uncond"]
    assert metrics["transformer_forwards"] == STEPS * 2
    assert metrics["dense_calls_warmup"] == 2 * 2 * 2                # steps 0-1, both branches, both layers
    assert metrics["dense_calls_dense_layers"] == metrics["sparse_calls"] == 2 * 2  # steps 2-3, layer 0 / 1
    assert log[0] == log[1] == {}
    assert log[2] == log[3] == {("transformer", 1): [0, 1]}


def test_wan22_two_experts_are_both_routed_and_share_the_step_count():
    pipe = tiny_wan_pipeline(two_experts=True)
    integration = apply_svg2(pipe, backend="reference")
    assert sorted(integration.routers) == ["transformer", "transformer_2"]
    log: list = []
    with svg2_session(pipe, small_plan(top_p=0.5, dense_warmup_steps=1), num_inference_steps=STEPS) as session:
        generate(pipe, states_per_step(session, log))
    metrics = session.metrics()
    # Only the first step of the job is warm-up, whichever expert runs the later steps.
    assert metrics["dense_calls_warmup"] == 1 * 2 * 2
    assert metrics["sparse_calls"] == (STEPS - 1) * 2 * 2
    tags = {tag for key in log[-1] for tag in key[:1]}
    assert tags == {"transformer", "transformer_2"}  # both experts ran sparse, each with its own caches


def test_model_cpu_offload_keeps_the_routing_across_jobs():
    pipe = tiny_wan_pipeline()
    pipe.enable_model_cpu_offload(device="cpu")
    apply_svg2(pipe, backend="reference")  # offload re-wraps forward after each call; our hooks stay
    results = []
    for _ in range(2):
        with svg2_session(pipe, small_plan(top_p=0.5, dense_warmup_steps=1), num_inference_steps=STEPS) as session:
            latents = generate(pipe)
        results.append((latents, session.metrics()))
    (first, first_metrics), (second, second_metrics) = results
    assert first_metrics["sparse_calls"] == second_metrics["sparse_calls"] == (STEPS - 1) * 2 * 2
    assert torch.equal(first, second)
