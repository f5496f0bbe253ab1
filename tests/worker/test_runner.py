"""JobRunner against a real Redis job store: progress, cancellation, failures, metrics, the MP4."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import av
import pytest
import torch
from rq.timeouts import JobTimeoutException

from worker.runner import JobRunner


@contextmanager
def on_transformer_call(model, fn: Callable[[int], None]) -> Iterator[None]:
    """Call ``fn(call_index)`` before every transformer forward of the resident pipeline (two per
    denoising step with classifier-free guidance), the way a slow GPU step would interleave with
    the API."""
    calls = iter(range(10**6))
    handle = model.pipeline.transformer.register_forward_pre_hook(lambda module, args: fn(next(calls)))
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture
def runner(store, tiny_model) -> JobRunner:
    return JobRunner(store, tiny_model, "test-worker")


def _decode(path) -> tuple[int, int, int, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return frames, stream.codec_context.width, stream.codec_context.height, float(stream.average_rate)


def test_completed_job_has_its_mp4_and_metrics(store, runner, tiny_spec):
    spec = tiny_spec(width=96, height=64, num_frames=13, fps=12, num_inference_steps=3)
    job = store.create(spec, "tiny")

    assert runner.run(job.id) == "completed"

    record = store.get(job.id)
    assert record.status == "completed" and record.progress == 100 and record.error is None
    assert record.worker == "test-worker" and record.attempts == 1
    assert _decode(store.video_path(job.id)) == (13, 96, 64, 12.0)
    assert not store.temp_video_path(job.id).exists()
    m = record.metrics
    assert len(m["step_seconds"]) == 3 and m["denoise_seconds"] == pytest.approx(sum(m["step_seconds"]))
    for key in ("queue_wait_seconds", "run_seconds", "load_seconds", "encode_seconds", "decode_seconds",
                "write_seconds"):
        assert m[key] >= 0, key
    assert m["run_seconds"] >= m["denoise_seconds"]
    assert (m["frames"], m["width"], m["height"]) == (13, 96, 64)
    assert m["attention"] == "svg2" and m["model"] == "tiny" and m["output_bytes"] > 0
    assert m["sparsity"]["sparse_calls"] > 0 and m["sparsity"]["num_inference_steps"] == 3  # the model's default preset


def test_progress_increases_step_by_step(store, runner, tiny_model, tiny_spec):
    job = store.create(tiny_spec(num_frames=5, num_inference_steps=4), "tiny")
    seen = []
    with on_transformer_call(tiny_model, lambda i: seen.append(store.get(job.id).progress) if i % 2 == 0 else None):
        assert runner.run(job.id) == "completed"
    # Read at the start of each step: the store shows the steps finished so far.
    assert seen == [0.0, 25.0, 50.0, 75.0]
    assert store.get(job.id).progress == 100.0


def test_cancel_while_running_stops_between_steps(store, runner, tiny_model, tiny_spec):
    job = store.create(tiny_spec(num_frames=5, num_inference_steps=8), "tiny")

    def cancel_during_step_three(call: int) -> None:
        if call == 4:  # first transformer call of step 3
            assert store.request_cancel(job.id).status == "in_progress"

    with on_transformer_call(tiny_model, cancel_during_step_three):
        assert runner.run(job.id) == "cancelled"

    record = store.get(job.id)
    assert record.status == "cancelled" and record.error is None
    assert len(record.metrics["step_seconds"]) == 3  # step 3 finished, then the cancel was seen
    assert record.progress == pytest.approx(37.5)
    assert not store.video_path(job.id).exists() and not store.temp_video_path(job.id).exists()


def test_job_cancelled_while_queued_never_runs(store, runner, tiny_model, tiny_spec):
    job = store.create(tiny_spec(), "tiny")
    store.request_cancel(job.id)
    calls = []
    with on_transformer_call(tiny_model, calls.append):
        assert runner.run(job.id) == "skipped"
    assert calls == []
    assert store.get(job.id).status == "cancelled"
    assert not store.video_path(job.id).exists()


@pytest.mark.parametrize(
    "error,code",
    [(RuntimeError("boom"), "internal"), (torch.OutOfMemoryError("CUDA out of memory"), "out_of_memory"),
     (JobTimeoutException("Task exceeded maximum timeout value (60 seconds)"), "timeout")],
    ids=["internal", "out_of_memory", "rq_timeout"],
)
def test_exception_fails_the_job_with_a_code_and_the_runner_goes_on(store, runner, tiny_model, tiny_spec, error, code):
    bad = store.create(tiny_spec(num_frames=5, num_inference_steps=3), "tiny")

    def raise_in_step_two(call: int) -> None:
        if call == 2:
            raise error

    with on_transformer_call(tiny_model, raise_in_step_two):
        assert runner.run(bad.id) == "failed"
    record = store.get(bad.id)
    assert record.status == "failed" and record.error.code == code
    assert str(error) in record.error.message
    assert len(record.metrics["step_seconds"]) == 1
    assert not store.video_path(bad.id).exists()

    good = store.create(tiny_spec(num_frames=5, num_inference_steps=2), "tiny")
    assert runner.run(good.id) == "completed"
    assert store.video_path(good.id).exists()


def test_spec_that_does_not_fit_the_model_is_invalid_input(store, runner, tiny_spec):
    job = store.create(tiny_spec().model_copy(update={"num_frames": 6}), "tiny")
    assert runner.run(job.id) == "failed"
    error = store.get(job.id).error
    assert error.code == "invalid_input" and error.message.startswith("num_frames:")


def test_job_for_another_model_is_invalid_input(store, runner, tiny_spec):
    job = store.create(tiny_spec().model_copy(update={"model": "wan2.1-t2v-1.3b"}), "tiny")
    assert runner.run(job.id) == "failed"
    error = store.get(job.id).error
    assert error.code == "invalid_input" and "this worker serves 'tiny'" in error.message


def test_same_request_twice_gives_identical_videos(store, runner, tiny_spec):
    spec = tiny_spec(num_frames=5, num_inference_steps=2)
    first, second = store.create(spec, "tiny"), store.create(spec, "tiny")
    assert runner.run(first.id) == runner.run(second.id) == "completed"
    decoded = []
    for job in (first, second):
        with av.open(str(store.video_path(job.id))) as c:
            decoded.append([f.to_ndarray(format="rgb24").tobytes() for f in c.decode(video=0)])
    assert decoded[0] == decoded[1]


def test_runner_records_every_finished_job_in_the_worker_metrics(store, tiny_model, tiny_spec):
    from worker.metrics import WorkerMetrics

    metrics = WorkerMetrics(model="tiny", worker="test-worker")
    runner = JobRunner(store, tiny_model, "test-worker", metrics=metrics)
    done = store.create(tiny_spec(num_frames=5, num_inference_steps=2, sparsity="dense"), "tiny")
    bad = store.create(tiny_spec(sparsity="dense").model_copy(update={"num_frames": 6}), "tiny")
    skipped = store.create(tiny_spec(sparsity="dense"), "tiny")
    store.request_cancel(skipped.id)

    assert [runner.run(j.id) for j in (done, bad, skipped)] == ["completed", "failed", "skipped"]

    def finished(status: str, code: str = "") -> float | None:
        return metrics.registry.get_sample_value(
            "svg2_jobs_finished_total", {"model": "tiny", "preset": "dense", "status": status, "error_code": code})

    assert finished("completed") == 1 and finished("failed", "invalid_input") == 1
    assert finished("cancelled") == 0  # cancelled while queued: the worker never ran it
    assert metrics.registry.get_sample_value("svg2_frames_generated_total", {"model": "tiny", "preset": "dense"}) == 5
    assert metrics.registry.get_sample_value("svg2_worker_busy", {"model": "tiny"}) == 0


def test_cold_shutdown_mid_job_marks_it_failed_and_stops_the_worker(store, runner, tiny_model, tiny_spec):
    store.max_attempts = 1  # no attempts left: failed (with attempts left it is re-queued, see test_faults)
    job = store.create(tiny_spec(num_frames=5, num_inference_steps=3), "tiny")

    def second_signal(call: int) -> None:  # rq's cold-shutdown handler raises SystemExit in the job
        if call == 2:
            raise SystemExit()

    with on_transformer_call(tiny_model, second_signal), pytest.raises(SystemExit):
        runner.run(job.id)
    record = store.get(job.id)
    assert record.status == "failed" and record.error.code == "worker_shutdown"
    assert not store.video_path(job.id).exists()


def _i2v_runner_and_job(store, registry):
    """A runner of the built-in tiny-i2v model, a 64 x 64 test card as PNG and an image-to-video spec naming it."""
    from worker.images import encode_png, synthetic_image
    from worker.pipelines.loading import load_model
    from worker.registry import build_job_spec

    runner = JobRunner(store, load_model(registry.get("tiny-i2v")), "test-worker")
    png, meta = encode_png(synthetic_image(64, 64))
    spec, _ = build_job_spec(registry, model="tiny-i2v", prompt="x", num_frames=5, num_inference_steps=2,
                             input_image=meta)
    return runner, png, spec


def test_an_image_to_video_job_whose_stored_frame_is_gone_or_changed_fails_naming_the_field(store, registry):
    """The first frame is read from the output directory and checked against the spec's digest."""
    from worker.images import encode_png, synthetic_image

    runner, png, spec = _i2v_runner_and_job(store, registry)

    ok = store.create(spec, "tiny-i2v")
    store.save_input_image(ok.id, png)
    assert runner.run(ok.id) == "completed"

    missing = store.create(spec, "tiny-i2v")
    assert runner.run(missing.id) == "failed"
    error = store.get(missing.id).error
    assert error.code == "invalid_input" and error.message.startswith("input_reference: the job's image")

    changed = store.create(spec, "tiny-i2v")
    store.save_input_image(changed.id, encode_png(synthetic_image(64, 32))[0])
    assert runner.run(changed.id) == "failed"
    assert "does not match" in store.get(changed.id).error.message


def test_an_image_to_video_job_cancelled_just_after_it_started_ends_cancelled_not_failed(store, registry,
                                                                                         monkeypatch):
    """DELETE between the worker's start and its read of the stored frame: the request deleted the image, and the
    job ends ``cancelled`` (the user's doing), not ``failed`` with a missing-file error."""
    runner, png, spec = _i2v_runner_and_job(store, registry)
    job = store.create(spec, "tiny-i2v")
    store.save_input_image(job.id, png)
    started = store.mark_started

    def start_then_delete(job_id, worker_name):  # the API's DELETE lands right after the worker took the job
        record = started(job_id, worker_name)
        assert store.request_cancel(job_id).status == "in_progress"
        return record

    monkeypatch.setattr(store, "mark_started", start_then_delete)
    assert runner.run(job.id) == "cancelled"
    record = store.get(job.id)
    assert record.status == "cancelled" and record.error is None
    assert not store.input_path(job.id).exists() and not store.video_path(job.id).exists()
