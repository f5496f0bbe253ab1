"""bench/probes/probe_timeline.py's arithmetic over a trace's kernel intervals (the GPU run reports these figures)."""

from __future__ import annotations

import json

from tests.svg2core.bench_modules import load_bench


def _probe():
    return load_bench("probes/probe_timeline.py")


def test_union_counts_overlaps_once():
    t = _probe()  # bench_pipeline_step's union, in the intervals' own unit
    assert t.union_length([]) == 0
    assert t.union_length([(5, 6), (0, 2), (1, 3)]) == 4  # [0, 3) and [5, 6)
    assert t.union_length([(0, 10), (2, 3)]) == 10


def test_replay_figures_from_a_chrome_trace(tmp_path):
    t = _probe()
    # two replays of three kernels on two streams; the profiler's other events are ignored
    events = []
    for base in (0.0, 100.0):
        events += [{"cat": "kernel", "name": "assign", "ts": base, "dur": 10.0, "args": {"stream": 7}},
                   {"cat": "kernel", "name": "assign_q", "ts": base + 2, "dur": 4.0, "args": {"stream": 9}},
                   {"cat": "kernel", "name": "select", "ts": base + 15, "dur": 5.0, "args": {"stream": 7}},
                   {"cat": "cpu_op", "name": "aten::sub", "ts": base + 1, "dur": 1.0}]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    kernels = t.kernel_events(str(path))
    assert [k["name"] for k in kernels[:3]] == ["assign", "assign_q", "select"]
    replays = t.split_replays(kernels, 3)
    assert len(replays) == 2
    r = t.analyse(replays[1])
    assert r["span_us"] == 20 and r["union_us"] == 15 and r["idle_us"] == 5 and r["sum_us"] == 19
    assert r["main_stream"] == "7" and r["main_kernels"] == 2 and r["main_gap_us_total"] == 5
