"""worker/metrics.py: what a finished job record turns into, and the worker's own /metrics server.

Jobs go through the real job store (Redis) exactly as a worker moves them, then the finished record
is observed; values are read back from the registry and over HTTP.
"""

from __future__ import annotations

import sys

import httpx
import pytest
from prometheus_client import generate_latest

from worker.metrics import (
    CUSTOM_PRESET,
    WorkerMetrics,
    WorkerMetricsSettings,
    estimate_attention_seconds_saved,
    observation_from_record,
    start_metrics_server,
    step_modes_for,
)
from worker.registry import build_job_spec


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def run_job(store, registry, *, steps=(0.5, 0.2, 0.25, 0.3), sparsity="balanced", extra_metrics=None,
            finish="completed"):
    """Create a tiny-model job and move it like a worker does; returns the final record."""
    spec, entry = build_job_spec(registry, prompt="a red fox", model="tiny", num_inference_steps=len(steps),
                                 sparsity=sparsity)
    record = store.create(spec, entry.queue)
    assert store.mark_started(record.id, "test-worker") is not None
    for i, seconds in enumerate(steps, start=1):
        store.set_progress(record.id, i, len(steps), seconds)
    if finish == "completed":
        assert store.mark_completed(record.id, {"frames": spec.num_frames, **(extra_metrics or {})}) == "completed"
    elif finish == "failed":
        store.mark_failed(record.id, "out_of_memory", "out of device memory", extra_metrics)
    else:
        store.mark_cancelled(record.id)
    return store.get(record.id)


def test_completed_job_fills_job_step_and_attention_metrics(store, registry):
    sparsity = {"mean_density_sparse": 0.2, "attention_flops": 40.0, "attention_flops_dense_equivalent": 100.0,
                "estimated_attention_seconds_saved": 1.5}
    record = run_job(store, registry, extra_metrics={"sparsity": sparsity, "peak_gpu_memory_bytes": 3 * 2**30})
    metrics = WorkerMetrics(model="tiny", worker="w0")
    obs = metrics.observe_job(record)

    labels = {"model": "tiny", "preset": "balanced"}
    assert obs.step_modes == ("dense", "sparse", "sparse", "sparse")  # balanced: 20% of 4 steps dense
    assert sample(metrics, "svg2_jobs_finished_total", status="completed", error_code="", **labels) == 1
    assert sample(metrics, "svg2_job_run_seconds_count", **labels) == 1
    assert sample(metrics, "svg2_job_run_seconds_sum", **labels) == pytest.approx(record.metrics["run_seconds"])
    assert sample(metrics, "svg2_job_latency_seconds_sum", **labels) == pytest.approx(
        record.completed_at - record.created_at)
    assert sample(metrics, "svg2_job_queue_wait_seconds_count", **labels) == 1
    assert sample(metrics, "svg2_denoising_step_seconds_count", mode="dense", **labels) == 1
    assert sample(metrics, "svg2_denoising_step_seconds_sum", mode="dense", **labels) == pytest.approx(0.5)
    assert sample(metrics, "svg2_denoising_step_seconds_count", mode="sparse", **labels) == 3
    assert sample(metrics, "svg2_denoising_step_seconds_sum", mode="sparse", **labels) == pytest.approx(0.75)
    assert sample(metrics, "svg2_attention_density_ratio_sum", **labels) == pytest.approx(0.2)
    assert sample(metrics, "svg2_attention_density_ratio_bucket", le="0.2", **labels) == 1
    assert sample(metrics, "svg2_attention_density_ratio_bucket", le="0.15", **labels) == 0
    assert sample(metrics, "svg2_attention_flops_ratio_sum", **labels) == pytest.approx(0.4)
    assert sample(metrics, "svg2_attention_seconds_saved_total", **labels) == pytest.approx(1.5)
    assert sample(metrics, "svg2_frames_generated_total", **labels) == record.spec.num_frames
    assert sample(metrics, "svg2_job_peak_gpu_memory_bytes_sum", model="tiny") == 3 * 2**30
    assert sample(metrics, "svg2_worker_last_job_peak_gpu_memory_bytes", model="tiny") == 3 * 2**30


def test_failed_job_counts_its_code_and_steps_but_no_latency(store, registry):
    record = run_job(store, registry, finish="failed")
    metrics = WorkerMetrics(model="tiny")
    metrics.observe_job(record)

    labels = {"model": "tiny", "preset": "balanced"}
    assert sample(metrics, "svg2_jobs_finished_total", status="failed", error_code="out_of_memory", **labels) == 1
    assert sample(metrics, "svg2_jobs_finished_total", status="completed", error_code="", **labels) == 0
    assert sample(metrics, "svg2_denoising_step_seconds_count", mode="sparse", **labels) == 3
    assert sample(metrics, "svg2_job_run_seconds_count", **labels) == 0
    assert sample(metrics, "svg2_job_latency_seconds_count", **labels) == 0
    assert sample(metrics, "svg2_frames_generated_total", **labels) == 0
    # A CPU worker used no GPU memory, and says so rather than leaving the series empty.
    assert sample(metrics, "svg2_job_peak_gpu_memory_bytes_count", model="tiny") == 1
    assert sample(metrics, "svg2_job_peak_gpu_memory_bytes_sum", model="tiny") == 0


def test_cancelled_job_and_custom_budget_are_labelled(store, registry):
    spec, entry = build_job_spec(registry, prompt="a red fox", model="tiny")
    # A budget given field by field with no preset to start from (possible with another registry).
    spec = spec.model_copy(update={"sparsity": spec.sparsity.model_copy(update={"preset": None})})
    record = store.create(spec, entry.queue)
    store.mark_started(record.id, "test-worker")
    store.mark_cancelled(record.id)
    metrics = WorkerMetrics(model="tiny")
    metrics.observe_job(store.get(record.id))
    assert sample(metrics, "svg2_jobs_finished_total", model="tiny", preset=CUSTOM_PRESET,
                  status="cancelled", error_code="") == 1


def test_failure_codes_and_presets_exist_before_the_first_job():
    metrics = WorkerMetrics(model="tiny", presets=["balanced", "turbo"])
    for preset in ("balanced", "turbo", CUSTOM_PRESET):
        assert sample(metrics, "svg2_jobs_finished_total", model="tiny", preset=preset,
                      status="failed", error_code="internal") == 0
        assert sample(metrics, "svg2_job_latency_seconds_count", model="tiny", preset=preset) == 0
    assert sample(metrics, "svg2_worker_busy", model="tiny") == 0


def test_observe_job_refuses_a_running_job(store, registry):
    spec, entry = build_job_spec(registry, prompt="x", model="tiny")
    record = store.create(spec, entry.queue)
    with pytest.raises(ValueError, match="record.status"):
        WorkerMetrics(model="tiny").observe_job(record)


def test_explicit_step_modes_win_over_the_schedule(store, registry):
    record = run_job(store, registry, extra_metrics={"step_modes": ["dense", "dense", "sparse", "sparse"]})
    assert observation_from_record(record).step_modes == ("dense", "dense", "sparse", "sparse")


def test_a_pipeline_without_sparse_attention_runs_dense_steps(store, registry):
    record = run_job(store, registry, extra_metrics={"attention": "dense", "sparsity": None})
    obs = observation_from_record(record)
    assert obs.step_modes == ("dense",) * 4
    assert obs.flops_ratio == 1.0 and obs.density is None


def test_step_modes_follow_the_warmup_schedule(registry):
    dense_spec, _ = build_job_spec(registry, prompt="x", model="tiny", num_inference_steps=5, sparsity="dense")
    assert step_modes_for(dense_spec, 5) == ("dense",) * 5
    spec, _ = build_job_spec(registry, prompt="x", model="tiny", num_inference_steps=10, sparsity="quality")
    assert step_modes_for(spec, 10) == ("dense",) * 3 + ("sparse",) * 7  # quality: 30% dense


def test_seconds_saved_estimate_from_the_jobs_own_steps():
    # median dense step 1.0 s; three sparse steps of 0.5 s save 1.5 s
    assert estimate_attention_seconds_saved([1.0, 3.0, 1.0, 0.5, 0.5, 0.5], ["dense"] * 3 + ["sparse"] * 3) == 1.5
    assert estimate_attention_seconds_saved([1.0, 2.0], ["dense", "sparse"]) == 0.0  # slower: nothing saved
    assert estimate_attention_seconds_saved([1.0, 1.0], ["dense", "dense"]) is None


def test_worker_serves_its_registry_over_http():
    metrics = WorkerMetrics(model="tiny", worker="w0")
    metrics.set_device("cpu")
    metrics.observe_model_load(2.5)
    before_warmup = generate_latest(metrics.registry).decode()
    metrics.observe_warmup(41.5)
    server = start_metrics_server(metrics.registry, port=0, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with metrics.job_running("cpu"):
            busy_text = httpx.get(url, timeout=5).text
        idle_text = httpx.get(url, timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
    assert 'svg2_worker_busy{model="tiny"} 1.0' in busy_text
    assert 'svg2_worker_busy{model="tiny"} 0.0' in idle_text
    assert 'svg2_worker_model_load_seconds{model="tiny"} 2.5' in idle_text
    assert 'svg2_worker_warmup_seconds{model="tiny"} 0.0' in before_warmup
    assert 'svg2_worker_warmup_seconds{model="tiny"} 41.5' in idle_text
    assert 'svg2_gpu_info{' in idle_text and 'device="cpu"' in idle_text and 'worker="w0"' in idle_text


def test_metrics_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("SVG2_METRICS_PORT", "9555")
    assert WorkerMetricsSettings().metrics_port == 9555
    monkeypatch.setenv("SVG2_METRICS_PORT", "70000")
    with pytest.raises(ValueError, match="metrics_port"):
        WorkerMetricsSettings()


def test_importing_worker_metrics_does_not_load_torch():
    import subprocess

    code = "import sys, worker.metrics; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
