"""Write generated frames to an H.264 MP4 with PyAV, atomically.

The file is encoded under a hidden temporary name in the destination folder and renamed onto the
final name only when the container is closed, so a reader that sees ``<id>.mp4`` always sees a
complete file (``os.replace`` is atomic within one filesystem).
"""

from __future__ import annotations

import os
import uuid
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

#: x264 constant-rate-factor: 18 is visually near-lossless for generated video at modest size.
DEFAULT_CRF = 18


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """Convert ``(F, H, W, 3)`` frames to uint8 RGB.

    Float frames are taken to be in ``[0, 1]`` (diffusers' ``output_type="np"``) and are clipped;
    uint8 frames pass through unchanged.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected shape (frames, height, width, 3), got {tuple(frames.shape)}")
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_mp4(
    frames: np.ndarray,
    path: str | os.PathLike,
    fps: int,
    crf: int = DEFAULT_CRF,
    tmp_path: str | os.PathLike | None = None,
    thread_type: str = "FRAME",
) -> int:
    """Encode ``frames`` (``(F, H, W, 3)``, uint8 or float in [0, 1]) to ``path`` as H.264 yuv420p.

    Args:
        frames: the clip, RGB; height and width must be even (yuv420p subsamples chroma 2x2).
        path: destination; its folder must exist. Written via a temporary file and renamed.
        fps: frames per second stored in the stream (exact: the time base is ``1/fps``).
        crf: x264 quality (lower is better; 0 is lossless luma).
        tmp_path: where to encode before the rename (must be on the same filesystem as ``path``);
            a hidden unique name beside ``path`` when None.
        thread_type: the encoder's threading, ``"FRAME"`` (x264's frame-parallel threads on every core, the
            default) or ``"SLICE"`` (PyAV's own default, x264's sliced threads; bench/bench_mp4.py compares them).

    Returns:
        The size of the written file in bytes.
    """
    rgb = frames_to_uint8(np.asarray(frames))
    num_frames, height, width, _ = rgb.shape
    if num_frames < 1:
        raise ValueError("frames: need at least one frame")
    if height % 2 or width % 2:
        raise ValueError(f"frames: width and height must be even for yuv420p, got {width}x{height}")
    if thread_type not in ("FRAME", "SLICE"):
        raise ValueError(f"thread_type: must be 'FRAME' or 'SLICE', got {thread_type!r}")
    if fps < 1:
        raise ValueError(f"fps: must be >= 1, got {fps}")

    final = Path(path)
    tmp = Path(tmp_path) if tmp_path is not None else final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=Fraction(fps, 1))
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            # x264's own frame-parallel threads on every core (PyAV's default for encoders is slice threading,
            # x264's slower sliced-threads mode); the encode is on the GPU worker's critical path after each job.
            stream.codec_context.thread_type = thread_type
            stream.codec_context.thread_count = 0
            for rgb_frame in rgb:
                frame = av.VideoFrame.from_ndarray(rgb_frame, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final.stat().st_size
