"""The worker's start-up warm-up (worker/warmup.py): which jobs it runs, that it compiles what the first real
job would have compiled, that it leaves no state behind for later jobs, and that a failing warm-up job does not
keep the worker down."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_compile_option import BACKEND, _tiny_with  # tests/worker is on the path (pytest prepend mode)
from torch._dynamo.utils import counters

from worker.pipelines.loading import load_model
from worker.pipelines.run import generate
from worker.registry import Registry, build_job_spec, load_registry
from worker.warmup import resolve_mode, warm_up, warmup_plan


def _sparse_presets(entry) -> list[str]:
    return [name for name, s in entry.resolved_presets().items() if s.mode != "dense"]


def test_auto_warms_every_preset_on_cuda_and_nothing_on_cpu():
    assert resolve_mode("auto", torch.device("cuda", 0)) == "all"
    assert resolve_mode("auto", torch.device("cpu")) == "none"
    assert resolve_mode("default", torch.device("cpu")) == "default"


def test_plan_is_one_dense_job_then_two_sparse_steps_per_preset(tiny_model):
    entry = tiny_model.entry
    sparse = _sparse_presets(entry)
    assert len(sparse) >= 3 and entry.default_preset in sparse
    assert warmup_plan(tiny_model, "all") == [("dense", 1, True)] + [(p, 2, False) for p in sparse]
    assert warmup_plan(tiny_model, "default") == [("dense", 1, True), (entry.default_preset, 2, False)]
    assert warmup_plan(tiny_model, "none") == []


def test_a_pipeline_without_svg2_warms_only_its_dense_job(registry):
    stock = load_model(_tiny_with(registry, svg2=False), device="cpu")
    assert stock.svg2 is None
    assert warmup_plan(stock, "all") == [("dense", 1, True)]


def test_warm_up_runs_each_preset_sparse_and_later_jobs_are_unchanged(registry, tiny_spec):
    model = load_model(registry.get("tiny"), device="cpu")  # its own: the calibration must start empty
    spec = tiny_spec(seed=7, sparsity={"preset": "balanced", "dense_warmup_steps": 0, "dense_layers": 0})
    before = generate(model.pipeline, spec, call_kwargs=model.call_kwargs)
    assert before.metrics["sparsity"]["estimated_dense_time_source"] is None  # no dense call ran yet (CPU)

    report = warm_up(registry, model, "all")
    assert report.mode == "all" and report.error is None
    assert [(j.budget, j.steps, j.decoded) for j in report.jobs] == warmup_plan(model, "all")
    assert report.jobs[0].sparse_calls == 0
    assert all(j.sparse_calls > 0 for j in report.jobs[1:])  # every preset ran its sparse path
    assert report.seconds >= sum(j.seconds for j in report.jobs) > 0
    described = report.describe()
    assert described["warmup"] == "all" and len(described["warmup_jobs"]) == len(report.jobs)

    # Nothing of the warm-up leaks into a job: the same spec gives the same frames after it (svg2's per-job
    # centroid caches are reset), and the warm-up's dense job calibrated the time-saved estimate.
    after = generate(model.pipeline, spec, call_kwargs=model.call_kwargs)
    np.testing.assert_array_equal(after.frames, before.frames)
    s = after.metrics["sparsity"]
    assert s["estimated_dense_time_source"] == "observed" and s["estimated_attention_seconds_saved"] is not None


def test_a_failing_warm_up_job_stops_the_warm_up_and_says_why(tmp_path):
    base = load_registry()
    tiny = base.get("tiny")
    # A default size the registry accepts (multiple of 8) but the pipeline cannot make exactly (16):
    # generate() refuses it, as it would refuse such a job.
    odd = tiny.model_copy(update={
        "limits": tiny.limits.model_copy(update={"size_multiple": 8}),
        "defaults": tiny.defaults.model_copy(update={"width": 72}),
    })
    registry = Registry(default_model="tiny", models=[odd])
    model = load_model(odd, device="cpu")
    report = warm_up(registry, model, "all")
    assert report.jobs == [] and report.error.startswith("InvalidJobInput: ") and "width" in report.error
    assert report.describe()["warmup_error"] == report.error


@pytest.mark.timeout(600)
def test_warm_up_compiles_what_the_first_job_at_the_default_shape_needs(registry, tiny_spec):
    """With ``compile: regional`` the warm-up's jobs compile the blocks; a user's first job at the default
    shape then compiles nothing."""
    torch._dynamo.reset()
    model = load_model(_tiny_with(registry, compile="regional", compile_backend=BACKEND), device="cpu")
    graphs = counters["stats"]["unique_graphs"]
    report = warm_up(registry, model, "default")
    assert report.error is None
    warmed = counters["stats"]["unique_graphs"]
    assert warmed > graphs  # the warm-up did the compiling

    for sparsity in ("dense", model.entry.default_preset):
        spec, _ = build_job_spec(registry, model="tiny", prompt="a red fox", seed=3, sparsity=sparsity)
        result = generate(model.pipeline, spec, call_kwargs=model.call_kwargs)
        assert np.isfinite(result.frames).all()
    assert counters["stats"]["unique_graphs"] == warmed


def test_a_two_expert_pipeline_warms_both_transformers(registry):
    """Wan 2.2's two-expert split: the dense job takes a step per expert, and every job reports which ran."""
    from svg2core.integration import apply_svg2
    from tests.svg2core.test_integration_pipeline import tiny_wan_pipeline
    from worker.pipelines.loading import LoadedModel

    pipe = tiny_wan_pipeline(two_experts=True)
    entry = registry.get("tiny")
    model = LoadedModel(entry=entry, pipeline=pipe, device=torch.device("cpu"), dtype=pipe.transformer.dtype,
                        load_seconds=0.0, svg2=apply_svg2(pipe, backend="reference"))
    hooks = {m: dict(m._forward_pre_hooks) for m in (pipe.transformer, pipe.transformer_2)}  # svg2's own
    report = warm_up(registry, model, "default")
    assert report.error is None
    assert [(j.budget, j.steps) for j in report.jobs] == [("dense", 2), (entry.default_preset, 2)]
    assert all(j.denoisers == ["transformer", "transformer_2"] for j in report.jobs)
    assert report.jobs[1].sparse_calls > 0
    assert {m: dict(m._forward_pre_hooks) for m in hooks} == hooks  # the warm-up's hooks are gone


def test_a_warm_up_job_runs_its_presets_kernels_with_two_cold_iterations(registry, monkeypatch):
    """The cold calls of a warm-up job iterate twice, whatever the preset's ``kmeans_iters_init`` (a host loop: two
    iterations launch every variant); every other field is the preset's, so the warm-up runs its kernels."""
    import svg2core.attention as attention
    from worker.warmup import WARMUP_COLD_ITERS, warmup_sparsity

    tiny_model = load_model(registry.get("tiny"), device="cpu")  # its own: the warm-up calibrates the model it warms
    entry = tiny_model.entry
    presets = entry.resolved_presets()
    for name in _sparse_presets(entry):
        spec, _ = build_job_spec(registry, model="tiny", prompt="x", sparsity=warmup_sparsity(tiny_model, name))
        expected = presets[name].model_copy(update={"kmeans_iters_init": min(presets[name].kmeans_iters_init, 2)})
        assert spec.sparsity.model_dump(exclude={"dense_warmup_steps"}) == expected.model_dump(
            exclude={"dense_warmup_steps"})
        assert spec.sparsity.warmup_steps(2) == 0

    seen: list[int] = []
    real = attention.batched_kmeans

    def counting(x, centroids, iters, *args, **kwargs):  # records each k-means call's iterations, runs it
        seen.append(iters)
        return real(x, centroids, iters, *args, **kwargs)

    monkeypatch.setattr(attention, "batched_kmeans", counting)
    report = warm_up(registry, tiny_model, "default")
    assert report.error is None and report.jobs[-1].sparse_calls > 0
    cold = presets[entry.default_preset].kmeans_iters_init
    assert cold > WARMUP_COLD_ITERS and max(seen) == WARMUP_COLD_ITERS  # the preset's count never ran
    assert set(seen) == {WARMUP_COLD_ITERS, presets[entry.default_preset].kmeans_iters} - {0}


def test_an_image_to_video_model_warms_up_with_a_test_card_as_its_first_frame(registry):
    from worker.pipelines.loading import load_model

    model = load_model(registry.get("tiny-i2v"))
    report = warm_up(registry, model, "all")
    assert report.error is None
    assert [j.budget for j in report.jobs] == ["dense", "quality", "balanced", "fast"]
    assert all(j.sparse_calls > 0 for j in report.jobs[1:])
