"""Running a JobSpec on a pipeline (per-step callbacks, cancellation, shape rules) and offline loading."""

from __future__ import annotations

import time

import pytest
import torch

from worker.pipelines.loading import ModelUnavailable, load_model
from worker.pipelines.run import InvalidJobInput, JobCancelled, generate


def test_reports_every_step_and_returns_metrics(tiny_model, tiny_spec):
    spec = tiny_spec(num_inference_steps=3, num_frames=5)
    calls = []
    result = generate(tiny_model.pipeline, spec, on_step=lambda *a: calls.append(a),
                      call_kwargs=tiny_model.call_kwargs)
    assert [(s, t) for s, t, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    m = result.metrics
    assert m["step_seconds"] == [sec for _, _, sec in calls]
    assert all(s > 0 for s in m["step_seconds"])
    assert m["denoise_seconds"] == pytest.approx(sum(m["step_seconds"]))
    assert m["encode_seconds"] > 0 and m["decode_seconds"] > 0
    assert (m["frames"], m["height"], m["width"]) == (5, spec.height, spec.width)
    # The tiny model runs svg2 (balanced preset: the first step dense, then sparse).
    assert m["attention"] == "svg2"
    assert m["sparsity"]["warmup_steps"] == 1 and m["sparsity"]["sparse_calls"] > 0


def test_without_decoding_the_steps_run_and_no_frames_come_back(tiny_model, tiny_spec):
    spec = tiny_spec(num_inference_steps=2, num_frames=5)
    decoded = generate(tiny_model.pipeline, spec, call_kwargs=tiny_model.call_kwargs)
    latent = generate(tiny_model.pipeline, spec, call_kwargs=tiny_model.call_kwargs, decode=False)
    assert latent.frames is None and decoded.frames is not None
    assert "frames" not in latent.metrics and "width" not in latent.metrics
    assert len(latent.metrics["step_seconds"]) == 2
    assert latent.metrics["sparsity"]["sparse_calls"] == decoded.metrics["sparsity"]["sparse_calls"] > 0
    assert latent.metrics["decode_seconds"] < decoded.metrics["decode_seconds"]


def test_cancel_stops_between_steps(tiny_model, tiny_spec):
    spec = tiny_spec(num_inference_steps=6, num_frames=5)
    steps = []
    with pytest.raises(JobCancelled):
        generate(tiny_model.pipeline, spec, on_step=lambda s, t, sec: steps.append(s),
                 should_cancel=lambda: len(steps) >= 2, call_kwargs=tiny_model.call_kwargs)
    assert steps == [1, 2]


def test_cancel_before_start_runs_nothing(tiny_model, tiny_spec):
    steps = []
    with pytest.raises(JobCancelled):
        generate(tiny_model.pipeline, tiny_spec(), on_step=lambda *a: steps.append(a), should_cancel=lambda: True)
    assert steps == []


def test_no_hooks_or_state_survive_a_job(tiny_model, tiny_spec):
    transformer = tiny_model.pipeline.transformer
    before = dict(transformer._forward_pre_hooks)
    generate(tiny_model.pipeline, tiny_spec(num_frames=5, num_inference_steps=1), call_kwargs=tiny_model.call_kwargs)
    with pytest.raises(JobCancelled):
        generate(tiny_model.pipeline, tiny_spec(num_frames=5, num_inference_steps=3),
                 should_cancel=lambda: True if transformer._forward_pre_hooks else False)
    assert dict(transformer._forward_pre_hooks) == before


def test_a_cancelled_job_does_not_change_the_next_result(tiny_model, tiny_spec):
    spec = tiny_spec(num_frames=5, num_inference_steps=2)
    before = generate(tiny_model.pipeline, spec, call_kwargs=tiny_model.call_kwargs).frames
    with pytest.raises(JobCancelled):
        generate(tiny_model.pipeline, spec.model_copy(update={"seed": 99, "num_inference_steps": 4}),
                 on_step=lambda *a: None, should_cancel=iter([False, True]).__next__,
                 call_kwargs=tiny_model.call_kwargs)
    after = generate(tiny_model.pipeline, spec, call_kwargs=tiny_model.call_kwargs).frames
    assert torch.equal(torch.from_numpy(before), torch.from_numpy(after))


@pytest.mark.parametrize(
    "update,field",
    [({"width": 72}, "width: must be a multiple of 16"), ({"height": 40}, "height: must be a multiple of 16"),
     ({"num_frames": 8}, r"num_frames: must be 4k\+1")],
)
def test_shapes_the_model_would_round_are_rejected(tiny_model, tiny_spec, update, field):
    spec = tiny_spec().model_copy(update=update)  # bypasses the registry, as a stale record could
    with pytest.raises(InvalidJobInput, match=field):
        generate(tiny_model.pipeline, spec)


def test_missing_local_weights_fail_fast_with_model_unavailable(registry, tmp_path):
    entry = registry.get("wan2.1-t2v-1.3b").model_copy(update={"path": str(tmp_path / "no-such-dir")})
    start = time.monotonic()
    with pytest.raises(ModelUnavailable, match="does not exist") as info:
        load_model(entry, device="cpu")
    assert info.value.code == "model_unavailable"
    assert time.monotonic() - start < 5


def test_uncached_hub_id_fails_offline_instead_of_downloading(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached here
    entry = registry.get("hunyuanvideo").model_copy(update={"path": "no-such-owner/no-such-model"})
    start = time.monotonic()
    with pytest.raises(ModelUnavailable, match="offline"):
        load_model(entry, device="cpu")
    assert time.monotonic() - start < 10


def test_directory_without_a_pipeline_is_unavailable(registry, tmp_path):
    entry = registry.get("wan2.1-t2v-1.3b").model_copy(update={"path": str(tmp_path)})
    with pytest.raises(ModelUnavailable, match="cannot load WanPipeline"):
        load_model(entry, device="cpu")


def test_unknown_pipeline_class_and_missing_device_are_unavailable(registry, tmp_path):
    entry = registry.get("wan2.1-t2v-1.3b").model_copy(update={"pipeline_class": "NoSuchPipeline"})
    with pytest.raises(ModelUnavailable, match="pipeline_class"):
        load_model(entry, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailable, match="CUDA is not available"):
            load_model(registry.get("tiny"), device="cuda")


def test_a_diffusers_directory_loads_offline_with_its_options(registry, tiny_model, tiny_spec, tmp_path):
    import numpy as np

    from worker.pipelines.tiny import build_tiny_pipeline

    build_tiny_pipeline().save_pretrained(tmp_path / "tiny-diffusers")
    entry = registry.get("wan2.1-t2v-1.3b").model_copy(update={
        "path": str(tmp_path / "tiny-diffusers"), "dtype": "float32",
        "options": {"flow_shift": 5.0, "max_sequence_length": 64, "vae_dtype": "float32"},
    })
    loaded = load_model(entry, device="cpu")
    assert type(loaded.pipeline).__name__ == "WanPipeline"
    assert loaded.pipeline.scheduler.config.shift == 5.0  # flow-matching Euler calls flow_shift "shift"
    assert loaded.call_kwargs == {"max_sequence_length": 64}

    # Same weights, same request: the loaded copy reproduces the built-in model's frames.
    spec = tiny_spec(num_frames=5, num_inference_steps=2)
    restored = loaded.pipeline
    restored.scheduler = type(restored.scheduler).from_config(restored.scheduler.config, shift=3.0)
    frames = generate(restored, spec, call_kwargs=loaded.call_kwargs).frames
    expected = generate(tiny_model.pipeline, spec, call_kwargs=tiny_model.call_kwargs).frames
    np.testing.assert_allclose(frames, expected, atol=1e-5)
