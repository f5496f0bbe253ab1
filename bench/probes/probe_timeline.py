"""Where the selection's time goes inside one CUDA-graph replay: every kernel's start, duration and stream.

bench_selection times the whole captured call and each stage alone; their sum exceeds the call (the side stream
overlaps) and neither says how long the GPU waits between kernels or which chain sets the call's length. This probe
replays the captured selection (``cluster_and_select``, 2 warm iterations) under the profiler, reads each kernel's
interval from the trace, and reports per replay: the span, each stream's busy time, the time covered by at least one
kernel (the union), the idle gaps of the span, and the gaps between consecutive kernels of the last kernel's stream.

    python bench/probes/probe_timeline.py --out DIR [--shapes wan1.3b-480p:100:500,...]

(Session 14 also compared the key chain first on a high-priority stream: probe_timeline_h100_s14.md; session 15 the
scoring on the centroids the last assign used: probe_timeline_h100_s15.md. Both measured and removed.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_selection as S  # noqa: E402
import probe_io as P  # noqa: E402
from bench_pipeline_step import union_length  # noqa: E402

from svg2core import SVG2Config  # noqa: E402
from svg2core.attention import cluster_and_select  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

MODELS = {"wan1.3b-480p": (12, 32760), "wan14b-720p": (40, 75600), "hunyuan-720p": (24, 118800)}


def kernel_events(trace_path: str) -> list[dict]:
    """The trace's GPU kernels as ``{name, stream, ts, dur}`` (microseconds), sorted by start."""
    with open(trace_path) as f:
        trace = json.load(f)
    out = [{"name": e["name"], "stream": e.get("args", {}).get("stream", e.get("tid")), "ts": float(e["ts"]),
            "dur": float(e["dur"])}
           for e in trace.get("traceEvents", []) if e.get("cat") == "kernel" and "dur" in e]
    return sorted(out, key=lambda e: e["ts"])


def split_replays(events: list[dict], per_replay: int) -> list[list[dict]]:
    return [events[i:i + per_replay] for i in range(0, len(events) - per_replay + 1, per_replay)]


def analyse(replay: list[dict]) -> dict:
    t0 = replay[0]["ts"]
    end = max(e["ts"] + e["dur"] for e in replay)
    span = end - t0
    streams: dict = {}
    for e in replay:
        streams.setdefault(e["stream"], []).append(e)
    busy = {str(s): sum(e["dur"] for e in ev) for s, ev in streams.items()}
    union = union_length([(e["ts"], e["ts"] + e["dur"]) for e in replay])
    # a replay runs the graph's branches on streams of its own: "main" is the stream of the last kernel (the selection)
    main = replay[-1]["stream"]
    chain = streams[main]
    gaps = [b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(chain, chain[1:], strict=False)]
    return {"span_us": span, "union_us": union, "idle_us": span - union, "busy_us_by_stream": busy,
            "sum_us": sum(busy.values()), "main_stream": str(main), "main_kernels": len(chain),
            "main_gap_us_total": sum(g for g in gaps if g > 0), "main_gaps_us": [round(g, 2) for g in gaps]}


def timeline(name: str, cq: int, ck: int, dev, replays: int, trace_dir: str) -> dict:
    h, nv = MODELS[name]
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, h, nv, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    cfg = SVG2Config(num_q_clusters=cq, num_k_clusters=ck)
    ws = Workspace()
    q_cent, k_cent = S.warm_centroids(q, k, cq, ck, ws)

    def call():
        cluster_and_select(q, k, v, q_cent, k_cent, 2, cfg, ws)

    g = S.capture_graph(call)
    for _ in range(5):
        g.replay()
    torch.cuda.synchronize()
    graph_ms = S.bench_ms(g.replay)
    # how many kernels one call launches: count them in one profiled replay
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        g.replay()
        torch.cuda.synchronize()
    path = os.path.join(trace_dir, f"{name}_{cq}_{ck}_one.json")
    prof.export_chrome_trace(path)
    per_replay = len(kernel_events(path))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            g.replay()
            torch.cuda.synchronize()  # replays apart: each one's span is its own
    path = os.path.join(trace_dir, f"{name}_{cq}_{ck}.json")
    prof.export_chrome_trace(path)
    reps = split_replays(kernel_events(path), per_replay)
    stats = [analyse(r) for r in reps]
    med = {key: statistics.median(st[key] for st in stats)
           for key in ("span_us", "union_us", "idle_us", "sum_us", "main_gap_us_total")}
    # the kernel list of the median-span replay
    mid = sorted(range(len(stats)), key=lambda i: stats[i]["span_us"])[len(stats) // 2]
    t0 = reps[mid][0]["ts"]
    kernels = [{"name": e["name"][:60], "stream": str(e["stream"]), "start_us": round(e["ts"] - t0, 2),
                "dur_us": round(e["dur"], 2)} for e in reps[mid]]
    return {"shape": name, "Cq": cq, "Ck": ck, "graph_ms": graph_ms, "kernels_per_call": per_replay,
            "replays": len(stats), "median": med, "median_replay": stats[mid], "kernels": kernels}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="wan1.3b-480p:100:500,wan1.3b-480p:200:1000,wan14b-720p:300:1000")
    ap.add_argument("--replays", type=int, default=20)
    args = ap.parse_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(args.out, "probe_timeline", rows=[])
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.shapes.split(","):
            name, cq, ck = spec.split(":")
            row = timeline(name, int(cq), int(ck), dev, args.replays, tmp)
            print(json.dumps({k: v for k, v in row.items() if k != "kernels"}), flush=True)
            out.data["rows"].append(row)
            out.save()
            torch.cuda.empty_cache()
    lines = [f"# The selection's kernels inside one CUDA-graph replay ({out.device})", "",
             "cluster_and_select, 2 warm iterations, random bf16 data, D = 128. Profiled replays one at a time "
             "(median over them, microseconds): span = first kernel's start to last kernel's end; union = time "
             "covered by at least one kernel; sum = the kernels' durations added; main gaps = time between "
             "consecutive kernels of the last kernel's stream (waiting for the other stream included; a replay puts the "
             "graph's two branches on streams of its own).", "",
             "| shape | Cq/Ck | graph ms (timed) | kernels | span us | union us | idle us | sum us | main gaps us |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out.data["rows"]:
        m = r["median"]
        lines.append(f"| {r['shape']} | {r['Cq']}/{r['Ck']} | {r['graph_ms']:.3f} | {r['kernels_per_call']} | "
                     f"{m['span_us']:.1f} | {m['union_us']:.1f} | {m['idle_us']:.1f} | {m['sum_us']:.1f} | "
                     f"{m['main_gap_us_total']:.1f} |")
    for r in out.data["rows"]:
        lines += ["", f"## {r['shape']} {r['Cq']}/{r['Ck']}: the median replay", "",
                  "| start us | dur us | stream | kernel |", "|---|---|---|---|"]
        lines += [f"| {k['start_us']:.1f} | {k['dur_us']:.1f} | {k['stream']} | `{k['name']}` |" for k in r["kernels"]]
    out.finish(lines)


if __name__ == "__main__":
    main()
