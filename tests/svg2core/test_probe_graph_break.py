"""bench/probes/probe_graph_break.py on CPU: the three arrangements of the routed attention in a compiled block give
the eager block's output and a host time each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_arrangement_is_compiled_checked_and_timed(tmp_path):
    # the probe asserts compiled == eager per arrangement before timing; a failure exits non-zero
    subprocess.run([sys.executable, str(ROOT / "bench/probes/probe_graph_break.py"), "--out", str(tmp_path),
                    "--calls", "20", "--rounds", "2"], check=True, capture_output=True, timeout=600)
    res = json.loads((tmp_path / "probe_graph_break_cpu.json").read_text())
    assert set(res["us_per_block"]) == {"graph break (compiler.disable)", "custom op", "inline (floor)"}
    assert all(len(r) == 2 and all(0 < us < 1e6 for us in r) for r in res["rounds_us"].values())
    assert res["us_per_block"] == {k: min(v) for k, v in res["rounds_us"].items()}
    assert "| custom op |" in (tmp_path / "probe_graph_break_cpu.md").read_text()
