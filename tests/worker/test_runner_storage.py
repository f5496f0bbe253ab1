"""The MP4 cannot be written (disk full, output directory gone): the job fails with
``output_unwritable``, no file is left that could pass for a finished video, and the runner takes
the next job."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from worker.runner import JobRunner
from worker.store import JobStore


def _assert_failed_cleanly(store: JobStore, job_id: str) -> None:
    record = store.get(job_id)
    assert record.status == "failed" and record.error.code == "output_unwritable", record.error
    assert str(store.output_dir) in record.error.message
    assert not store.video_path(job_id).exists() and not store.temp_video_path(job_id).exists()


def test_missing_output_directory_fails_the_job_and_the_next_one_runs(store, tiny_model, tiny_spec):
    runner = JobRunner(store, tiny_model, "test-worker")
    job = store.create(tiny_spec(num_frames=5, num_inference_steps=2), "tiny")
    shutil.rmtree(store.output_dir)
    store.output_dir.write_bytes(b"")  # a file where the directory was: every write fails (ENOTDIR)
    assert runner.run(job.id) == "failed"
    store.output_dir.unlink()
    _assert_failed_cleanly(store, job.id)
    store.output_dir.mkdir()
    nxt = store.create(tiny_spec(num_frames=5, num_inference_steps=2), "tiny")
    assert runner.run(nxt.id) == "completed" and store.video_path(nxt.id).stat().st_size > 0


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 64 KiB tmpfs filled to the last byte (needs mount rights; skipped without them)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        try:
            with open(mount / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:  # ENOSPC: full
            pass
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # lazy: a handle PyAV may still hold


def test_disk_full_fails_the_job_without_a_partial_file(redis_client, full_disk, tiny_model, tiny_spec):
    store = JobStore(redis_client, full_disk)
    runner = JobRunner(store, tiny_model, "test-worker")
    job = store.create(tiny_spec(num_frames=5, num_inference_steps=2), "tiny")
    assert runner.run(job.id) == "failed"
    _assert_failed_cleanly(store, job.id)
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
    (full_disk / "filler").unlink()  # space again: the same runner goes on
    nxt = store.create(tiny_spec(num_frames=5, num_inference_steps=2), "tiny")
    assert runner.run(nxt.id) == "completed"
