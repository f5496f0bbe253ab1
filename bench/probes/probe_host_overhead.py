"""The host's time to queue one warm ``svg2_attention`` call, and where it goes.

    python bench/probes/probe_host_overhead.py --out DIR                 # GPU: the real launches, 480p shape
    python bench/probes/probe_host_overhead.py --out DIR --stub-launches  # CPU: Triton launches stubbed out

On a GPU the device is first given a long sleep kernel, so the calls queue behind it and the host's wall time per
call is its own cost: Python, argument checks, Triton's launcher, streams and events (pipeline_step_h100_compile_graph
_s20_480p.md: the 480p sparse step queued in 143 of its 258 ms, and the same step replayed as one CUDA graph ran 2-4%
faster). With ``--stub-launches`` (CPU, under TRITON_INTERPRET=1) every Triton launch returns at once and the torch
ops run on small CPU tensors, so what is left is this project's Python; the launches per call are counted.

Both print the call's host milliseconds and the top functions by own time (cProfile). Writes
``probe_host_overhead_<where>.json/.md``.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--stub-launches", action="store_true", help="CPU: Triton launches return at once (interpreter)")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=32760)
    ap.add_argument("--cq", type=int, default=100)
    ap.add_argument("--ck", type=int, default=500)
    ap.add_argument("--calls", type=int, default=20)
    a = ap.parse_args()
    if a.stub_launches:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from svg2core import LayerState, SVG2Config, Workspace, svg2_attention

    launches: collections.Counter = collections.Counter()
    if a.stub_launches:
        from triton.runtime.interpreter import InterpretedFunction

        real_run = InterpretedFunction.run

        def stub(self, *args, **kwargs):
            launches[self.fn.__name__] += 1

        device = torch.device("cpu")
        heads, tokens, cq, ck = 2, 256, max(2, a.cq // 8), max(4, a.ck // 8)  # small: the torch ops cost ~nothing
    else:
        device = torch.device("cuda")
        heads, tokens, cq, ck = a.heads, a.tokens, a.cq, a.ck
    q, k, v = (torch.randn(1, heads, tokens, 128, dtype=torch.bfloat16, device=device) for _ in range(3))
    cfg = SVG2Config(mode="fixed_density", target_density=0.15, num_q_clusters=cq, num_k_clusters=ck,
                     kmeans_iters=2, kmeans_iters_init=2 if a.stub_launches else 20)
    state, ws = LayerState(), Workspace()

    def call():
        return svg2_attention(q, k, v, cfg, state, workspace=ws)

    call()  # cold (real kernels)
    if a.stub_launches:
        InterpretedFunction.run = stub
    call()
    launches.clear()
    call()
    per_call_launches = dict(launches)

    def host_ms(n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda._sleep(int(2e9))  # ~1 s of GPU time at ~2 GHz: the calls below only queue
        t = time.perf_counter()
        for _ in range(n):
            call()
        ms = (time.perf_counter() - t) / n * 1e3
        if device.type == "cuda":
            torch.cuda.synchronize()
        return ms

    host_ms(3)
    ms = min(host_ms(a.calls) for _ in range(3))
    prof = cProfile.Profile()
    if device.type == "cuda":
        torch.cuda._sleep(int(2e9))
    prof.enable()
    for _ in range(a.calls):
        call()
    prof.disable()
    if device.type == "cuda":
        torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    where = "cpu_stubbed" if a.stub_launches else torch.cuda.get_device_name().lower().replace(" ", "_")
    res = {"where": where, "shape": list(q.shape), "clusters": [cq, ck], "host_ms_per_call": ms,
           "triton_launches_per_call": per_call_launches, "profile": buf.getvalue()}
    if a.stub_launches:
        InterpretedFunction.run = real_run
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"probe_host_overhead_{where}")
    with open(stem + ".json", "w") as fh:
        json.dump(res, fh, indent=1)
    text = (f"# Host time of one warm svg2_attention call ({where})\n\n{tuple(q.shape)} bf16, {cq} / {ck} clusters, "
            f"fixed density 0.15: **{ms:.3f} ms** of host time per call (best of 3 x {a.calls} calls"
            + (", queued behind a sleeping GPU" if device.type == "cuda" else ", Triton launches stubbed") + "); "
            f"Triton launches per call: {sum(per_call_launches.values()) or 'not counted'}"
            + (f" {per_call_launches}" if per_call_launches else "") + ".\n\n```\n" + buf.getvalue()[:6000] + "\n```\n")
    with open(stem + ".md", "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
