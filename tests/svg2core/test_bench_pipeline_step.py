"""bench/bench_pipeline_step.py runs end to end at tiny shapes on CPU (``--smoke``), so the GPU run
does not fail on a typo, and its results hold the figures the benchmark report is made of."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_writes_consistent_results(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_pipeline_step.py"), "--smoke", "--densities", "0.25",
                    "--reps", "1", "--out", str(tmp_path)], check=True, capture_output=True, timeout=300)
    results = json.loads((tmp_path / "pipeline_step_cpu.json").read_text())
    assert [m["model"] for m in results["models"]] == ["smoke-wan", "smoke-hunyuan"]
    for model in results["models"]:
        assert 0 < model["dense"]["attention_share"] < 1
        (sparse,) = model["sparse"]
        assert 0.25 <= sparse["achieved_density"] < 1  # fixed density keeps at least the target
        share, d = model["dense"]["attention_share"], sparse["achieved_density"]
        # (share and density are stored rounded to 4 digits, the ideal to 3)
        assert abs(sparse["amdahl_ideal"] - 1 / ((1 - share) + share * d)) < 2e-3
        e2e = sparse["end_to_end"]
        assert math.isfinite(e2e["speedup"]) and e2e["dense_job_seconds"] > 0
    assert "| smoke-wan |" in (tmp_path / "pipeline_step_cpu.md").read_text()
