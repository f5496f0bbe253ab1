"""bench/bench_generate.py runs end to end on CPU (``--smoke``: the tiny pipeline saved in diffusers format and
loaded back by the worker's loader), so the GPU run does not fail on a typo, and its report holds what the
benchmark is for: every job's checks, speedups against the dense job, and the job's own estimate of the time
saved beside the measured one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_generate.py"


def test_smoke_run_checks_every_job_and_reports_against_the_dense_job(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--budgets",
                           "dense,fixed:0.25,fixed:0.25+kmeans_iters_init=3+dense_layers=0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "bench_generate_cpu.json").read_text())
    dense, sparse, fields = result["jobs"]
    assert (dense["label"], sparse["label"]) == ("dense", "fixed_0.25")
    # budget fields on top of a budget reach the job's resolved settings (and only that job's)
    assert fields["label"] == "fixed_0.25_kmeans_iters_init_3_dense_layers_0"  # a plain file name
    assert (fields["sparsity"]["kmeans_iters_init"], fields["sparsity"]["dense_layers"]) == (3, 0)
    assert fields["sparsity"]["target_density"] == 0.25 and fields["sparsity"]["mode"] == "fixed_density"
    assert (sparse["sparsity"]["kmeans_iters_init"], sparse["sparsity"]["dense_layers"]) == (10, 1)
    assert fields["accounting"]["dense_calls_dense_layers"] == 0 < sparse["accounting"]["dense_calls_dense_layers"]
    for job in (dense, sparse, fields):
        assert job["checks"] and all(job["checks"].values()), job["checks"]
        assert (tmp_path / f"{job['label']}.mp4").stat().st_size == job["mp4_bytes"] > 0
        assert job["wall_seconds"] >= job["denoise_seconds"] + job["decode_seconds"] > 0
    assert {"warmup_calls", "dense_layer_calls", "sparse_calls", "density_on_target"} <= set(sparse["checks"])
    assert dense["speedup_wall"] == 1.0
    assert sparse["speedup_wall"] == dense["wall_seconds"] / sparse["wall_seconds"]
    acc = sparse["accounting"]
    assert 0.25 <= acc["mean_density_sparse"] < 1 and acc["sparse_calls"] > 0
    # the job's dense warm-up calls calibrate its own estimate, on CPU too
    assert acc["estimated_dense_time_source"] == "observed"
    assert sparse["estimated_saved_seconds"] == acc["estimated_attention_seconds_saved"]
    assert sparse["saved_denoise_seconds"] == dense["denoise_seconds"] - sparse["denoise_seconds"]
    md = (tmp_path / "bench_generate_cpu.md").read_text()
    assert "| dense |" in md and "| fixed_0.25 |" in md and "FAILED" not in md


def test_budgets_take_fields_on_top_and_name_a_bad_one():
    import pytest

    from tests.svg2core.bench_modules import load_bench

    bench = load_bench("bench_generate.py")
    assert bench.parse_budget("dense") == "dense"
    assert bench.parse_budget("fast+kmeans_iters_init=50") == {"preset": "fast", "kmeans_iters_init": 50}
    assert bench.parse_budget("fixed:0.15+top_p=0.8") == {"preset": "balanced", "mode": "fixed_density",
                                                          "target_density": 0.15, "top_p": 0.8}
    with pytest.raises(ValueError, match=r"'kmeans_iters_init' in 'fixed:0.25\+kmeans_iters_init' is not field=value"):
        bench.parse_budget("fixed:0.25+kmeans_iters_init")


def test_hunyuan_builder_at_toy_sizes_runs_a_dense_and_a_sparse_job(tmp_path):
    # the HunyuanVideo builder (toy sizes on the CPU): saved, loaded by the worker's loader with VAE tiling, one
    # transformer pass per step (embedded guidance), joint text tokens, and the schedule's call counts
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--model", "hunyuanvideo", "--budgets",
                           "dense,fixed:0.25", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "bench_generate_cpu.json").read_text())
    assert result["model"] == "hunyuanvideo" and "Llama" in result["description"]
    dense, sparse = result["jobs"]
    for job in (dense, sparse):
        assert job["checks"] and all(job["checks"].values()), job["checks"]
    acc = sparse["accounting"]
    assert acc["transformer_forwards"] == sparse["steps"]  # one pass a step
    assert acc["attention_calls"] == 2 * sparse["steps"]  # one double-stream and one single-stream block
    assert sparse["sparsity"]["dense_layers"] == 1 and acc["sparse_calls"] > 0


def test_full_job_projection_carries_measured_steps_to_the_models_step_count():
    from tests.svg2core.bench_modules import load_bench

    bench = load_bench("bench_generate.py")
    # a 5-step run: dense steps of 2 s; the sparse job's first sparse step 1.5 s (cold k-means), later ones 1 s;
    # decode + MP4 write 0.5 s (the dense job's wall minus its encode and denoising)
    dense = {"budget": "dense", "step_seconds": [2.0, 2.0, 2.1, 1.9, 2.0], "wall_seconds": 10.6,
             "encode_seconds": 0.1, "denoise_seconds": 10.0}
    job = {"budget": {"preset": "balanced"}, "first_sparse_step": 1.5, "sparse_step_median": 1.0}
    # 10 steps, 2 dense: 2 x 2 + 1.5 + 7 x 1 + 0.5 = 13 s against 10 x 2 + 0.5 = 20.5 s
    assert abs(bench.project_full_job(dense, job, 10, 2) - 20.5 / 13.0) < 1e-12
    # the cold step weighs less the longer the job
    assert bench.project_full_job(dense, job, 50, 10) > bench.project_full_job(dense, job, 10, 2)
    assert bench.project_full_job(dense, dict(job, sparse_step_median=None), 10, 2) is None
    assert bench.project_full_job(dense, job, 10, 10) is None  # all dense: nothing to project


def test_smoke_run_with_the_workers_warm_up_reports_it(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--warmup", "worker", "--budgets", "dense,fast",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "bench_generate_cpu.json").read_text())
    warm = result["worker_warmup"]
    assert result["warmup"] == "worker" and warm["mode"] == "all" and warm["error"] is None
    budgets = [j["budget"] for j in warm["jobs"]]
    assert budgets[0] == "dense" and "fast" in budgets and all(j["denoisers"] == ["transformer"] for j in warm["jobs"])
    assert result["warmup_job_seconds"] >= warm["seconds"] > 0
    md = (tmp_path / "bench_generate_cpu.md").read_text()
    assert "The worker's warm-up (mode all)" in md and "| fast | 2 | no | transformer |" in md
