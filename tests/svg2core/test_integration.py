"""Per-job sessions: budgets, dense warm-up and dense layers, CFG branches, job isolation, caching
hooks, torch.compile, and the accounting, on tiny random transformers (CPU, reference backend)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig

from svg2core import SVG2Config
from svg2core.integration import SparsityPlan, apply_svg2, remove_svg2, svg2_session
from tests.svg2core.processor_models import forward, small_plan, tiny_wan, wan_inputs
from worker.spec import SparsitySettings, resolve_sparsity


def test_plan_from_sparsity_settings_follows_the_settings_warmup_rule():
    for request in ({"dense_warmup_fraction": 0.2}, {"dense_warmup_steps": 7}, {"preset": "dense"},
                    {"dense_warmup_fraction": 0.35, "dense_layers": 3, "top_p": 0.8}):
        settings = resolve_sparsity(request)
        plan = SparsityPlan.from_settings(settings)
        assert plan.dense_layers == settings.dense_layers
        assert plan.config.mode == settings.mode and plan.config.top_p == settings.top_p
        for steps in (1, 3, 10, 50):
            assert plan.warmup_steps(steps) == settings.warmup_steps(steps)


def test_warmup_steps_and_dense_layers_run_dense():
    model = tiny_wan(num_layers=2)
    apply_svg2(model, backend="reference")
    settings = SparsitySettings(top_p=0.5, num_q_clusters=4, num_k_clusters=8, kmeans_iters_init=3,
                                kmeans_iters=1, dense_warmup_fraction=0.4, dense_layers=1)
    inputs = wan_inputs()
    seen_states = []
    with svg2_session(model, settings, num_inference_steps=3) as session:  # 0.4 * 3 -> 1 warm-up step
        for _ in range(3):
            forward(model, inputs, "cond")
            forward(model, inputs, "uncond")
            seen_states.append({key: sorted(state.centroids) for key, state in session.layer_states.items()})
    metrics = session.metrics()
    assert metrics["warmup_steps"] == 1 and metrics["branches"] == ["cond", "uncond"]
    assert metrics["dense_calls_warmup"] == 1 * 2 * 2      # step 0: both branches, both layers
    assert metrics["dense_calls_dense_layers"] == 2 * 2 * 1  # steps 1-2: both branches, layer 0
    assert metrics["sparse_calls"] == 2 * 2 * 1              # steps 1-2: both branches, layer 1
    assert metrics["skipped_calls"] == 0 and metrics["attention_calls"] == 12
    # No layer ever ran svg2 in the warm-up step or in the dense layer: no centroids there.
    assert seen_states[0] == {}
    assert seen_states[1] == seen_states[2] == {("transformer", 1): [0, 1]}


def test_cfg_branches_keep_separate_centroid_caches():
    """The conditional branch's step-2 output is the same whether or not an unconditional call
    with other inputs ran in between: the branches never share centroids."""
    model = tiny_wan()
    apply_svg2(model, backend="reference")
    cond, uncond = wan_inputs(seed=1), wan_inputs(seed=2)
    cond_next = wan_inputs(seed=3)
    plan = small_plan(top_p=0.5)
    with svg2_session(model, plan, num_inference_steps=2) as with_uncond:
        forward(model, cond, "cond")
        forward(model, uncond, "uncond")
        states = with_uncond.layer_states[("transformer", 0)].centroids
        assert sorted(states) == [0, 1] and not torch.equal(states[0].q, states[1].q)
        out_interleaved = forward(model, cond_next, "cond")
    with svg2_session(model, plan, num_inference_steps=2):
        forward(model, cond, "cond")
        out_alone = forward(model, cond_next, "cond")
    assert torch.equal(out_interleaved, out_alone)


def test_passes_per_step_tells_branches_apart_without_cache_context():
    model = tiny_wan()
    apply_svg2(model, backend="reference")
    inputs = wan_inputs()
    with svg2_session(model, small_plan(top_p=0.5, dense_warmup_steps=1), num_inference_steps=2,
                      passes_per_step=2) as session:
        for _ in range(4):  # step 0 cond, step 0 uncond, step 1 cond, step 1 uncond
            forward(model, inputs)
        assert sorted(session.layer_states[("transformer", 0)].centroids) == [0, 1]
    metrics = session.metrics()
    assert metrics["branches"] == ["pass0", "pass1"]
    assert metrics["dense_calls_warmup"] == 4 and metrics["sparse_calls"] == 4


def test_back_to_back_jobs_do_not_affect_each_other():
    model = tiny_wan()
    apply_svg2(model, backend="reference")
    inputs = wan_inputs()

    def job(plan):
        with svg2_session(model, plan, num_inference_steps=2) as session:
            outs = [forward(model, inputs, "cond") for _ in range(2)]
        return outs, session.metrics()

    low = small_plan(mode="fixed_density", target_density=0.25)
    first, first_metrics = job(low)
    other, other_metrics = job(small_plan(top_p=1.0))
    again, again_metrics = job(low)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # nothing of the jobs in between leaked
    assert other_metrics["mean_density_sparse"] > 0.99 > first_metrics["mean_density_sparse"]
    assert again_metrics["mean_density_sparse"] == pytest.approx(first_metrics["mean_density_sparse"])
    assert first_metrics["sparse_calls"] == again_metrics["sparse_calls"] == 4


def test_session_is_detached_even_when_the_job_fails():
    model = tiny_wan()
    inputs = wan_inputs()
    stock = forward(model, inputs)
    integration = apply_svg2(model, backend="reference")
    with pytest.raises(RuntimeError, match="boom"):
        with svg2_session(model, small_plan(top_p=0.5), num_inference_steps=1) as session:
            forward(model, inputs)
            raise RuntimeError("boom")
    assert integration.session is None and all(r.session is None for r in integration.routers.values())
    assert session.layer_states == {}
    assert torch.equal(forward(model, inputs), stock)
    with svg2_session(model, small_plan(top_p=0.5), num_inference_steps=1) as again:
        forward(model, inputs)
    assert again.metrics()["sparse_calls"] == 2


@pytest.mark.parametrize("cache_first", [False, True], ids=["svg2-then-cache", "cache-then-svg2"])
def test_calls_skipped_by_first_block_cache_are_counted_as_skipped(cache_first):
    model, inputs = tiny_wan(num_layers=3), wan_inputs()
    if cache_first:
        model.enable_cache(FirstBlockCacheConfig(threshold=1e9))  # after the first call, always reuse
        apply_svg2(model, backend="reference")
    else:
        apply_svg2(model, backend="reference")
        model.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    with svg2_session(model, small_plan(top_p=0.5, dense_layers=1), num_inference_steps=3) as session:
        for _ in range(3):
            forward(model, inputs, "cond")
    metrics = session.metrics()
    # step 0 runs the 3 layers; steps 1-2 run only the head block (layer 0, dense) and skip layers 1-2
    assert metrics["skipped_calls"] == 4
    assert metrics["dense_calls_dense_layers"] == 3 and metrics["sparse_calls"] == 2
    assert metrics["attention_calls"] == 9
    model.disable_cache()


@pytest.mark.parametrize("beside", [False, True], ids=["values", "value_beside_selection"])
def test_torch_compile_matches_eager_and_does_not_recompile_per_step(beside):
    model, inputs = tiny_wan(), wan_inputs()
    apply_svg2(model, backend="reference", value_beside_selection=beside)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=counting_backend)
    plan = small_plan(top_p=0.5, dense_warmup_steps=1, dense_layers=1)
    results = {}
    for name, runner in (("eager", model), ("compiled", compiled)):
        with svg2_session(model, plan, num_inference_steps=3) as session:
            outs = []
            for step in range(3):
                with model.cache_context("cond"):  # the pipeline calls it on the model, not the wrapper
                    outs.append(runner(**inputs)[0])
                if name == "compiled" and step == 0:
                    graphs_after_first_step = len(graphs)
        results[name] = (outs, session.metrics())
    with svg2_session(model, small_plan(mode="fixed_density", target_density=0.3), num_inference_steps=2):
        for _ in range(2):  # another job, another budget
            with model.cache_context("cond"):
                compiled(**inputs)
    assert graphs and len(graphs) == graphs_after_first_step  # steps, jobs, budgets: no recompile
    assert all(torch.equal(a, b) for a, b in zip(results["eager"][0], results["compiled"][0], strict=True))
    for key in ("dense_calls_warmup", "dense_calls_dense_layers", "sparse_calls"):
        assert results["compiled"][1][key] == results["eager"][1][key]
    assert results["compiled"][1]["sparse_calls"] == 2


def test_accounting_on_cpu_reports_wall_clock_and_estimates_savings_from_observed_dense_calls():
    model, inputs = tiny_wan(), wan_inputs()
    integration = apply_svg2(model, backend="reference")
    calibration = integration.calibration
    # Job 1: one dense warm-up step (2 layers: 2 dense calls, fewer than the calibration's minimum).
    with svg2_session(model, small_plan(top_p=0.5, dense_warmup_steps=1), num_inference_steps=2) as session:
        forward(model, inputs, "cond")
        forward(model, inputs, "cond")
    metrics = session.metrics()
    assert metrics["sparse_attention_seconds"] > 0 and metrics["dense_attention_seconds"] > 0
    assert len(metrics["step_transformer_seconds"]) == 2 and all(s > 0 for s in metrics["step_transformer_seconds"])
    # No probe on CPU and too few observed dense calls: no estimate.
    assert metrics["estimated_attention_seconds_saved"] is None
    assert metrics["estimated_dense_time_source"] is None
    # Job 2: two dense warm-up steps; with job 1's calls the shape has 6 observed dense calls.
    with svg2_session(model, small_plan(top_p=0.5, dense_warmup_steps=2), num_inference_steps=3) as session2:
        for _ in range(3):
            forward(model, inputs, "cond")
    m2 = session2.metrics()
    (key,) = calibration._observed
    assert len(calibration._observed[key]) == 6 and calibration.source(key) == "observed"
    # the observations are the two jobs' own timed dense calls, and the estimate uses their median
    assert sum(calibration._observed[key]) == pytest.approx(metrics["dense_attention_seconds"] + m2["dense_attention_seconds"])
    dense_call = calibration.seconds(key)
    assert min(calibration._observed[key]) <= dense_call <= max(calibration._observed[key])
    assert m2["estimated_dense_attention_seconds_for_sparse_calls"] == pytest.approx(dense_call * m2["sparse_calls"])
    assert m2["estimated_attention_seconds_saved"] == pytest.approx(
        m2["estimated_dense_attention_seconds_for_sparse_calls"] - m2["sparse_attention_seconds"])
    assert m2["estimated_dense_time_source"] == "observed"
    # Job 3 runs no dense call: the earlier jobs' observations still calibrate its shape.
    with svg2_session(model, small_plan(top_p=0.5), num_inference_steps=1) as session3:
        forward(model, inputs, "cond")
    m3 = session3.metrics()
    assert m3["dense_calls"] == 0 and m3["estimated_dense_time_source"] == "observed"
    assert m3["estimated_dense_attention_seconds_for_sparse_calls"] == pytest.approx(calibration.seconds(key) * 2)
    with svg2_session(model, small_plan(top_p=0.5), num_inference_steps=1, timing=False) as untimed:
        forward(model, inputs, "cond")
    untimed_metrics = untimed.metrics()
    assert untimed_metrics["sparse_calls"] == 2
    assert untimed_metrics["sparse_attention_seconds"] is None and untimed_metrics["step_transformer_seconds"] is None
    n, d, heads = 3 * 4 * 4, 64, 2
    per_call = 4 * heads * n * n * d
    assert metrics["attention_flops_dense_equivalent"] == 4 * per_call
    assert metrics["attention_flops"] == pytest.approx(per_call * (2 + 2 * metrics["mean_density_sparse"]))
    assert metrics["mean_density_overall"] == pytest.approx((2 + 2 * metrics["mean_density_sparse"]) / 4)


def test_bad_use_gets_clear_errors():
    model = tiny_wan()
    with pytest.raises(TypeError, match="unsupported transformer"):
        apply_svg2(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="backend"):
        apply_svg2(model, backend="cuda")
    with pytest.raises(ValueError, match="not applied"):
        svg2_session(model, num_inference_steps=1)
    apply_svg2(model, backend="reference")
    with pytest.raises(ValueError, match="already applied"):
        apply_svg2(model)
    with pytest.raises(ValueError, match="num_inference_steps"):
        with svg2_session(model, num_inference_steps=0):
            pass
    with pytest.raises(ValueError, match="dense_layers"):
        SparsityPlan(SVG2Config(), dense_layers=-1)
    with svg2_session(model, num_inference_steps=1) as session:
        with pytest.raises(RuntimeError, match="once the session has ended"):
            session.metrics()
        with pytest.raises(RuntimeError, match="already active"):
            with svg2_session(model, num_inference_steps=1):
                pass
        with pytest.raises(RuntimeError, match="session is active"):
            remove_svg2(model)
    remove_svg2(model)


def test_two_transformers_share_the_step_count_without_step_index():
    """Wan 2.2 I2V-style: the pipeline names the branch but not the step; the step is the count of
    earlier calls of that branch over both experts, so the low-noise expert's first step is step 1."""
    experts = SimpleNamespace(transformer=tiny_wan(seed=0), transformer_2=tiny_wan(seed=1))
    apply_svg2(experts, backend="reference")
    inputs = wan_inputs()
    with svg2_session(experts, small_plan(top_p=0.5, dense_warmup_steps=1), num_inference_steps=2) as session:
        for branch in ("cond", "uncond"):
            forward(experts.transformer, inputs, branch)      # step 0: high-noise expert, warm-up
        for branch in ("cond", "uncond"):
            forward(experts.transformer_2, inputs, branch)    # step 1: low-noise expert, sparse
    metrics = session.metrics()
    assert metrics["dense_calls_warmup"] == 2 * 2 and metrics["sparse_calls"] == 2 * 2
    assert metrics["branches"] == ["cond", "uncond"]


@pytest.mark.parametrize("beside", [False, True], ids=["values", "value_beside_selection"])
def test_regional_compile_matches_eager_across_jobs(beside):
    model, inputs = tiny_wan(), wan_inputs()
    apply_svg2(model, backend="reference", value_beside_selection=beside)
    plan = small_plan(top_p=0.5)
    with svg2_session(model, plan, num_inference_steps=2):
        eager = [forward(model, inputs, "cond") for _ in range(2)]
    graphs = []
    model.compile_repeated_blocks(backend=lambda gm, example_inputs: graphs.append(gm) or gm.forward)
    counts = []
    for _ in range(2):
        with svg2_session(model, plan, num_inference_steps=2) as session:
            compiled = [forward(model, inputs, "cond") for _ in range(2)]
        counts.append(len(graphs))
        assert all(torch.equal(a, b) for a, b in zip(eager, compiled, strict=True))
        assert session.metrics()["sparse_calls"] == 4
    assert counts[0] > 0 and counts[1] == counts[0]


def test_jobs_in_and_out_of_inference_mode_follow_each_other():
    """Nothing a job allocates under torch.inference_mode (centroids, scratch buffers) is written
    by a later job that runs outside it."""
    model, inputs = tiny_wan(), wan_inputs()
    apply_svg2(model, backend="reference")
    with svg2_session(model, small_plan(top_p=0.5), num_inference_steps=1):
        with torch.inference_mode():
            inference = forward(model, inputs, "cond")
    with svg2_session(model, small_plan(top_p=0.5), num_inference_steps=1):
        with torch.no_grad():
            plain = forward(model, inputs, "cond")
    assert torch.equal(inference, plain)


def test_scratch_workspace_is_one_per_pipeline_and_reused_by_later_jobs():
    """The sparse calls' scratch buffers are allocated by the first job and reused by later jobs
    (same buffers, nothing allocated), whether those run under inference_mode or no_grad; removing
    svg2 releases them. (Reference backend: the Triton one takes the same Workspace, but minutes under
    the CPU interpreter.)"""
    model, inputs = tiny_wan(), wan_inputs()
    integration = apply_svg2(model, backend="reference")
    workspace = integration.workspace
    plan = small_plan(mode="fixed_density", target_density=0.5)

    def job(mode):
        with svg2_session(model, plan, num_inference_steps=2) as session, mode():
            outs = [forward(model, inputs, "cond") for _ in range(2)]
        assert session.metrics()["sparse_calls"] == 4
        return outs

    first = job(torch.inference_mode)
    allocations = workspace.allocations
    buffers = {name: buf.data_ptr() for name, buf in workspace._buffers.items()}
    assert allocations > 0 and buffers and workspace.nbytes() > 0
    # Normal tensors, although the first job allocated them under inference_mode.
    assert not any(buf.is_inference() for buf in [*workspace._buffers.values(), *workspace._constants.values()])
    for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        again = job(mode)
        assert integration.workspace is workspace and workspace.allocations == allocations
        assert {name: buf.data_ptr() for name, buf in workspace._buffers.items()} == buffers
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # nothing carried over
    remove_svg2(model)
    assert workspace.nbytes() == 0


def test_dense_calibration_prefers_observed_calls_and_keeps_the_newest():
    from svg2core.processors.accounting import DenseAttentionCalibration

    cal = DenseAttentionCalibration(min_observed=3, keep=4)
    key = (1, 2, 48, 64, "float32", "cpu")
    assert cal.source(key) == "probe" and cal.seconds(key) is None  # no probe on CPU
    cal.observe(key, [1.0, 2.0])
    assert cal.source(key) == "probe" and cal.seconds(key) is None  # fewer than min_observed
    cal.observe(key, [3.0])
    assert cal.source(key) == "observed" and cal.seconds(key) == 2.0  # median
    cal.observe(key, [10.0, 10.0, 10.0])  # keeps the newest 4: 3, 10, 10, 10
    assert cal.seconds(key) == 10.0
    assert cal.seconds((1, 2, 96, 64, "float32", "cpu")) is None  # other shapes are separate
