"""The rq job function, ``worker.tasks.run_video_job(video_id)``.

rq calls it with the job's arguments only, so it finds the process's resident pipeline through a
context variable that :class:`worker.main.VideoWorker` binds around each job it executes. The
variable holds the worker's :class:`~worker.runner.JobRunner` (the model, the store), never any
request setting, and is unset outside a job.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from worker.runner import JobRunner

_current_runner: ContextVar[JobRunner | None] = ContextVar("svg2_current_runner", default=None)


class NoResidentPipeline(RuntimeError):
    """``run_video_job`` ran outside an svg2 worker (e.g. a plain ``rq worker``), with no model loaded."""


@contextmanager
def bind_runner(runner: JobRunner) -> Iterator[None]:
    """Make ``runner`` the one :func:`run_video_job` uses for the duration of the block."""
    token = _current_runner.set(runner)
    try:
        yield
    finally:
        _current_runner.reset(token)


def run_video_job(video_id: str) -> str:
    """Generate the video ``video_id`` with this worker's resident model; returns its final status."""
    runner = _current_runner.get()
    if runner is None:
        raise NoResidentPipeline(
            "run_video_job must run inside svg2-worker (python -m worker.main), which loads the model "
            "once and binds it; a plain `rq worker` has no resident pipeline"
        )
    return runner.run(video_id)
