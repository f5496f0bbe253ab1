"""bench/probes/probe_host_overhead.py on CPU: with the Triton launches stubbed out it counts the launches of a
warm call and reports the host time of this project's Python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stubbed_launches_are_counted_and_the_host_time_reported(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, str(ROOT / "bench/probes/probe_host_overhead.py"), "--out", str(tmp_path),
                    "--stub-launches", "--calls", "3"], check=True, env=env, capture_output=True, timeout=600)
    res = json.loads((tmp_path / "probe_host_overhead_cpu_stubbed.json").read_text())
    launches = res["triton_launches_per_call"]
    # a warm call at kmeans_iters=2: two assigns, sorts and updates per chain, then gather, logits, select, attention
    assert launches["_kmeans_assign_kernel"] == 4 and launches["_kmeans_segment_mean_kernel"] == 4
    assert launches["_select_kernel"] == 1 and launches["sparse_attn_fwd_kernel"] == 1
    assert 0.0 < res["host_ms_per_call"] < 1000.0
    assert "svg2_attention" in res["profile"]
