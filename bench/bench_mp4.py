"""The MP4 write of a finished job (worker/video.py's ``write_mp4``): x264 threading against PyAV's default.

The write runs on the GPU worker's critical path after every job: on an H200 host it took ~3 s of a 40 s Wan 1.3B
480p job (docs/benchmarks/bench_generate_h200_estimate.md; 81 frames of a random-weight model's noise). This times
one write of 81 frames at 832x480 for two contents, smooth synthetic motion (like generated video) and uniform noise
(x264's slowest content), with the writer's frame-parallel threads against PyAV's default slice threading; checks
first that each file decodes to 81 frames equal in size to the input.

    python bench/bench_mp4.py --out DIR [--frames 81] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from worker.video import write_mp4  # noqa: E402

WIDTH, HEIGHT, FPS = 832, 480, 16


def contents(frames: int) -> dict[str, np.ndarray]:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    smooth = np.stack([np.stack([(np.sin((x + 5 * t) / 40) + 1) / 2, (np.cos((y - 3 * t) / 30) + 1) / 2,
                                 ((x + y + 2 * t) % 256) / 255], -1) for t in range(frames)])
    noise = np.random.default_rng(0).random((frames, HEIGHT, WIDTH, 3), dtype=np.float32)
    return {"smooth": (smooth * 255).round().astype(np.uint8), "noise": (noise * 255).round().astype(np.uint8)}


def decoded_frames(path: Path) -> list[tuple[int, int]]:
    with av.open(str(path)) as container:
        return [(f.width, f.height) for f in container.decode(video=0)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, frames in contents(args.frames).items():
            for threads in ("SLICE", "FRAME"):
                path = Path(tmp) / f"{name}_{threads}.mp4"
                size = write_mp4(frames, path, FPS, thread_type=threads)
                ok = decoded_frames(path) == [(WIDTH, HEIGHT)] * args.frames
                times = []
                for _ in range(args.reps):
                    start = time.perf_counter()
                    write_mp4(frames, path, FPS, thread_type=threads)
                    times.append(time.perf_counter() - start)
                rows.append({"content": name, "threads": threads, "seconds": statistics.median(times),
                             "bytes": size, "decodes_to_all_frames": ok})
                print(json.dumps(rows[-1]), flush=True)
    cpus = os.cpu_count()
    result = {"cpus": cpus, "frames": args.frames, "size": f"{WIDTH}x{HEIGHT}", "rows": rows}
    (args.out / f"bench_mp4_cpu{cpus}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# MP4 write of {args.frames} frames at {WIDTH}x{HEIGHT} ({cpus} CPUs)", "",
             f"worker/video.py write_mp4 (x264, crf 18, yuv420p), median of {args.reps} writes.", "",
             "| content | threading | seconds | size KB | decodes to every frame |", "|---|---|---|---|---|"]
    lines += [f"| {r['content']} | {r['threads']} | {r['seconds']:.2f} | {r['bytes'] // 1024} | "
              f"{r['decodes_to_all_frames']} |" for r in rows]
    (args.out / f"bench_mp4_cpu{cpus}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["decodes_to_all_frames"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
