"""MP4 writing: H.264 yuv420p at the requested fps, exact frame count and size, atomic rename."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from worker.video import frames_to_uint8, write_mp4


def _gradient_clip(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth moving gradients in [0, 1], easy for H.264 to keep close to the source."""
    t = np.arange(num_frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    shape = (num_frames, height, width)
    # At most ~3 levels of 255 per pixel: chroma is subsampled 2x2, steep colour edges would blur.
    r = np.broadcast_to((x + 2 * t) / (max(width, 96) + 2 * num_frames), shape)
    g = np.broadcast_to(y / max(height, 96), shape)
    b = np.full(shape, 0.5)
    return np.stack([r, g, b], axis=-1).astype(np.float32)


def _decode(path: Path) -> tuple[list[np.ndarray], dict]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": stream.average_rate,
        }
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return frames, info


@pytest.mark.parametrize("num_frames,height,width,fps", [(9, 64, 96, 8), (17, 48, 32, 16), (1, 16, 16, 24)])
def test_round_trip_keeps_frames_size_and_fps(tmp_path, num_frames, height, width, fps):
    clip = _gradient_clip(num_frames, height, width)
    path = tmp_path / "clip.mp4"
    size = write_mp4(clip, path, fps=fps)

    frames, info = _decode(path)
    assert size == path.stat().st_size > 0
    assert info == {"codec": "h264", "pix_fmt": "yuv420p", "width": width, "height": height, "fps": fps}
    assert len(frames) == num_frames
    assert frames[0].shape == (height, width, 3)
    decoded = np.stack(frames).astype(np.float32)
    assert np.abs(decoded - frames_to_uint8(clip).astype(np.float32)).mean() < 4.0  # of 255


def test_frame_order_is_preserved(tmp_path):
    clip = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    for i in range(5):
        clip[i] = 40 * i + 30  # one flat grey level per frame
    write_mp4(clip, tmp_path / "grey.mp4", fps=4)
    frames, _ = _decode(tmp_path / "grey.mp4")
    means = [f.mean() for f in frames]
    assert means == sorted(means)
    assert all(abs(m - (40 * i + 30)) < 3 for i, m in enumerate(means))


def test_only_the_final_file_remains_and_replaces_an_old_one(tmp_path):
    path = tmp_path / "video_x.mp4"
    path.write_bytes(b"old")
    write_mp4(_gradient_clip(5, 32, 32), path, fps=8, tmp_path=tmp_path / ".video_x.partial.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video_x.mp4"]
    assert _decode(path)[1]["codec"] == "h264"


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(_gradient_clip(5, 33, 32), tmp_path / "odd.mp4", fps=8)
    with pytest.raises(ValueError, match="fps"):
        write_mp4(_gradient_clip(5, 32, 32), tmp_path / "nofps.mp4", fps=0)
    with pytest.raises(ValueError, match="shape"):
        write_mp4(np.zeros((32, 32, 3)), tmp_path / "flat.mp4", fps=8)
    with pytest.raises(ValueError, match="thread_type"):
        write_mp4(_gradient_clip(5, 32, 32), tmp_path / "threads.mp4", fps=8, thread_type="AUTO")
    assert list(tmp_path.iterdir()) == []


def test_frame_and_slice_threading_write_the_same_clip(tmp_path):
    # the writer's frame-parallel x264 threads (default) keep every frame, in order, like PyAV's slice threading
    clip = _gradient_clip(33, 64, 96)
    decoded = {}
    for threads in ("FRAME", "SLICE"):
        write_mp4(clip, tmp_path / f"{threads}.mp4", fps=16, thread_type=threads)
        frames, info = _decode(tmp_path / f"{threads}.mp4")
        assert len(frames) == 33 and info["fps"] == 16
        decoded[threads] = np.stack(frames).astype(np.float32)
    assert np.abs(decoded["FRAME"] - decoded["SLICE"]).mean() < 2.0  # of 255: the same clip, both near the source


def test_float_frames_are_clipped_to_the_byte_range():
    frames = np.array([-0.5, 0.0, 0.5, 1.0, 1.5], dtype=np.float32).reshape(5, 1, 1, 1).repeat(3, axis=-1)
    assert frames_to_uint8(frames)[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]
