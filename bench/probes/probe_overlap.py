"""Does the selection's side stream overlap the key chain in a CUDA graph, every time? bench_selection timed the 480p
selection at 0.69 ms with the query k-means on a side stream against 0.78 on one stream (session 9), and at 0.77
against 0.77 in session 10, while probe_layout timed the same call at 0.67 in that run. This probe times both
orders alternately, several rounds, before and after a stretch of dense attention (which brings the card to its
power limit), records the SM clock of each measurement, and the streams the captured call forked (the capture
stream and the side stream must differ, or the fork is a no-op).

    python bench/probes/probe_overlap.py --out DIR
"""

from __future__ import annotations

import os
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_selection as S  # noqa: E402
import probe_io as P  # noqa: E402
from gpu_clocks import GpuClocks, clock_cell  # noqa: E402

from svg2core import SVG2Config  # noqa: E402
from svg2core.attention import cluster_and_select  # noqa: E402
from svg2core.state import Workspace  # noqa: E402


class StreamLog:
    """torch.cuda.Stream wrapped: each stream made, with the stream current when it was made (the fork's parent)."""

    def __init__(self):
        self.made: list[tuple[int, int]] = []
        self._real = torch.cuda.Stream

    def __enter__(self):
        real, made, busy = self._real, self.made, []

        def stream(*args, **kwargs):
            s = real(*args, **kwargs)
            if not busy:  # current_stream() builds a Stream through this name too
                busy.append(1)
                made.append((s.cuda_stream, torch.cuda.current_stream().cuda_stream))
                busy.pop()
            return s

        torch.cuda.Stream = stream
        return self

    def __exit__(self, *exc):
        torch.cuda.Stream = self._real


def heat(q, k, v, seconds: float) -> None:
    """Dense cuDNN attention back to back for ``seconds`` (the card near its power limit, as in a pipeline step)."""
    end = time.perf_counter() + seconds
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        while time.perf_counter() < end:
            for _ in range(10):
                F.scaled_dot_product_attention(q, k, v)
            torch.cuda.synchronize()


def main() -> None:
    args = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(args.out, "probe_overlap", rows=[])
    h, nv, cq, ck, d = 12, 32760, 100, 500, 128
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, h, nv, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
    cfg = SVG2Config(num_q_clusters=cq, num_k_clusters=ck)
    ws = Workspace()
    q_cent, k_cent = S.warm_centroids(q, k, cq, ck, ws)

    def selection(concurrent=True):
        cluster_and_select(q, k, v, q_cent, k_cent, 2, cfg, ws, concurrent=concurrent)

    for phase in ("cool", "after dense attention"):
        if phase != "cool":
            heat(q, k, v, 3.0)
        for rnd in range(3):
            for order in ("two streams", "one stream"):
                with StreamLog() as log, GpuClocks(dev) as clocks:
                    ms = S.graph_ms(partial(selection, order == "two streams"))
                row = {"phase": phase, "round": rnd, "order": order, "graph_ms": ms, "gpu_clocks": clocks.summary(),
                       # graph_ms makes the capture stream, then the captured call its side stream (two streams)
                       "streams": log.made}
                out.data["rows"].append(row)
                out.save()
                print(row, flush=True)
    lines = [f"# Side-stream overlap of the 480p selection in a CUDA graph ({out.device})", "",
             "Wan 1.3B 480p, 100/500 clusters, 2 warm iterations, graph replay (bench_selection.graph_ms). \"after dense "
             "attention\": 3 s of cuDNN dense attention first. Streams: (stream, current stream when it was made).", "",
             "| phase | round | order | ms | SM clock mean / min MHz | streams made |", "|---|---|---|---|---|---|"]
    for r in out.data["rows"]:
        lines.append(f"| {r['phase']} | {r['round']} | {r['order']} | {r['graph_ms']:.3f} | {clock_cell(r['gpu_clocks'])} | "
                     f"{r['streams']} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
