"""Execute one video job against the job store with the worker's resident model.

The life of a job here: ``mark_started`` (refused when the job was cancelled while queued) → the
pipeline runs, reporting progress and polling for a cancel after every denoising step → the MP4 is
written under a temporary name and renamed → ``mark_completed`` with the metrics. Every failure ends
in the store (``mark_failed`` with a code, or ``mark_cancelled``) and never escapes as an exception,
so the worker process stays up and takes the next job.

Error codes: ``invalid_input`` (the spec does not fit the model), ``out_of_memory``
(``torch.OutOfMemoryError``), ``timeout`` (rq's job timeout), ``worker_shutdown`` (the process was
stopped mid-job and the job has no attempts left; otherwise it is re-queued), ``output_unwritable``
(the MP4 could not be written: disk full, read-only or missing output directory), ``internal`` (anything else; the traceback goes to the worker log).
"""

from __future__ import annotations

import gc
import logging
import time

import av
import torch
from rq.timeouts import JobTimeoutException

from worker.images import load_stored_image
from worker.metrics import WorkerMetrics
from worker.pipelines.loading import LoadedModel
from worker.pipelines.run import InvalidJobInput, JobCancelled, generate
from worker.store import JobStore
from worker.video import write_mp4

log = logging.getLogger(__name__)


class OutputUnwritable(RuntimeError):
    """The MP4 could not be written (disk full, read-only or missing output directory)."""


class JobRunner:
    """Runs jobs for one resident model; holds no per-job state between calls.

    Args:
        store: the job store (records + output directory).
        model: the loaded pipeline this worker owns.
        worker_name: recorded on the job as the worker that ran it.
        metrics: the worker's Prometheus metrics; every job that ran is observed from its final record.
    """

    def __init__(
        self, store: JobStore, model: LoadedModel, worker_name: str, metrics: WorkerMetrics | None = None
    ) -> None:
        self.store = store
        self.model = model
        self.worker_name = worker_name
        self.metrics = metrics

    def run(self, video_id: str) -> str:
        """Run the job ``video_id`` (see :meth:`_run`) and record the finished job in the metrics."""
        if self.metrics is None:
            return self._run(video_id)
        with self.metrics.job_running(str(self.model.device)):
            status = "failed"  # if _run raises (worker shutdown), the job was marked failed
            try:
                status = self._run(video_id)
                return status
            finally:
                record = self.store.get(video_id) if status != "skipped" else None
                if record is not None and record.is_terminal:
                    self.metrics.observe_job(record)

    def _run(self, video_id: str) -> str:
        """Run the job ``video_id``; returns the status it ended in (``"skipped"`` when the store
        refused to start it: cancelled while queued, already finished, or unknown)."""
        record = self.store.mark_started(video_id, self.worker_name)
        if record is None:
            log.info("job %s: not started (cancelled, finished or unknown)", video_id)
            return "skipped"
        spec = record.spec
        metrics: dict = {
            "worker": self.worker_name,
            **self.model.describe(),
            "load_seconds": self.model.load_seconds,
        }
        try:
            if spec.model != self.model.name:
                raise InvalidJobInput(
                    f"model: job asks for {spec.model!r} but this worker serves {self.model.name!r}"
                )
            image = self._input_image(video_id, spec) if spec.input_image is not None else None
            result = generate(
                self.model.pipeline_for(image),
                spec,
                image=image,
                on_step=lambda step, total, seconds: self.store.set_progress(video_id, step, total, seconds),
                should_cancel=lambda: self.store.is_cancel_requested(video_id),
                call_kwargs=self.model.call_kwargs,
            )
            metrics.update(result.metrics)
            write_start = time.perf_counter()
            try:
                metrics["output_bytes"] = write_mp4(
                    result.frames,
                    self.store.video_path(video_id),
                    fps=spec.fps,
                    tmp_path=self.store.temp_video_path(video_id),
                )
            except (OSError, av.FFmpegError) as exc:  # disk full, unwritable or missing output directory
                raise OutputUnwritable(f"cannot write the video to {self.store.output_dir}: {exc}") from exc
            metrics["write_seconds"] = time.perf_counter() - write_start
        except JobCancelled:
            log.info("job %s: cancelled between denoising steps", video_id)
            self.store.mark_cancelled(video_id)
            return "cancelled"
        except InvalidJobInput as exc:
            return self._fail(video_id, "invalid_input", str(exc), metrics)
        except OutputUnwritable as exc:  # write_mp4 removed its temp file: nothing looks complete
            return self._fail(video_id, "output_unwritable", str(exc), metrics)
        except torch.OutOfMemoryError as exc:
            self._release_memory()
            return self._fail(video_id, "out_of_memory", f"out of device memory: {exc}", metrics)
        except JobTimeoutException as exc:
            return self._fail(video_id, "timeout", f"job exceeded its time limit: {exc}", metrics)
        except (KeyboardInterrupt, SystemExit):
            # Stopped mid-job (cold shutdown): another worker takes it while it has attempts left.
            final = self.store.requeue_or_fail(video_id, "worker_shutdown",
                                               "the worker was stopped while running this job",
                                               expect_worker=self.worker_name)
            log.warning("job %s: worker stopped mid-job; job %s", video_id, final)
            raise
        except Exception as exc:
            log.exception("job %s: failed", video_id)
            return self._fail(video_id, "internal", f"{type(exc).__name__}: {exc}", metrics)
        status = self.store.mark_completed(video_id, metrics)
        log.info("job %s: %s in %.2f s of denoising", video_id, status, metrics.get("denoise_seconds", 0.0))
        return status or "skipped"

    def _input_image(self, video_id: str, spec):
        """The job's stored first frame, checked against its spec; a file deleted by a cancel reads as the cancel."""
        try:
            data = self.store.input_path(video_id).read_bytes()
        except FileNotFoundError:
            if self.store.is_cancel_requested(video_id):
                raise JobCancelled() from None
            raise InvalidJobInput(f"input_reference: the job's image {self.store.input_path(video_id).name} is "
                                  "missing from the output directory") from None
        try:
            return load_stored_image(data, spec.input_image)
        except ValueError as exc:
            raise InvalidJobInput(str(exc)) from None

    def _fail(self, video_id: str, code: str, message: str, metrics: dict) -> str:
        log.warning("job %s: failed (%s): %s", video_id, code, message)
        self.store.mark_failed(video_id, code, message, metrics)
        return "failed"

    def _release_memory(self) -> None:
        # Drop the failed job's activations so the next job starts with the pipeline's memory only.
        gc.collect()
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
