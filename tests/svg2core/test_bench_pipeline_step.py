"""bench/bench_pipeline_step.py runs end to end at tiny shapes on CPU (``--smoke``), so the GPU run
does not fail on a typo, and its results hold the figures the benchmark report is made of: eager and
regionally compiled (compiled output equal to eager, no recompilation across the timed steps), and
HunyuanVideo's packed-prompt baseline equal to the stock padded, masked call."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.svg2core.bench_modules import load_bench

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_pipeline_step.py"


def _run_bench(tmp_path, *args) -> dict:
    subprocess.run([sys.executable, str(BENCH), "--smoke", "--densities", "0.25", "--out", str(tmp_path), *args],
                   check=True, capture_output=True, timeout=300)
    return json.loads((tmp_path / "pipeline_step_cpu.json").read_text())


def test_enqueue_figures_are_reported_in_the_markdown(tmp_path):
    # GPU-only figures (the host's enqueue while the GPU runs, and while a sleep kernel holds it) grafted onto a CPU
    # smoke run's results: the report lists both, and marks an enqueue that waited out the sleep as blocked
    results = _run_bench(tmp_path, "--reps", "1", "--no-compile", "--models", "smoke-wan")
    (model,) = results["models"]
    model["dense"]["host_enqueue_seconds"] = [0.030]
    model["dense"]["host_enqueue_behind_sleep"] = {"host_seconds": 0.031, "sleep_seconds": 2.0, "blocked": False}
    (sparse,) = model["sparse"]
    sparse["host_enqueue_seconds"] = [0.097]
    sparse["host_enqueue_behind_sleep"] = {"host_seconds": 1.9, "sleep_seconds": 2.0, "blocked": True}
    bench = load_bench("bench_pipeline_step.py")
    bench.write_markdown(str(tmp_path / "grafted.md"), results)
    md = (tmp_path / "grafted.md").read_text()
    assert "- smoke-wan: dense 30 / " in md and "sparse 0.25 97 / " in md
    assert "- smoke-wan: dense 31 ms; sparse 0.25 1900 ms (blocked)" in md


# aot_eager: dynamo's graphs through AOTAutograd without inductor's C++ compilation (tens of seconds
# per model on 2 CPU cores); the inductor test below covers one model.
@pytest.mark.parametrize("mode", [["--no-compile"], ["--compile", "--compile-backend", "aot_eager"]],
                         ids=["eager", "compiled"])
def test_smoke_run_writes_consistent_results(tmp_path, mode):
    results = _run_bench(tmp_path, "--reps", "2", *mode)
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
        if mode == ["--no-compile"]:
            assert model["compile"] is None and model["graphs_compiled_in_timed_forwards"] == 0
        else:
            compiled = model["compile"]
            assert compiled["graphs_first_dense_forward"] > 0  # the blocks were compiled
            assert model["graphs_compiled_in_timed_forwards"] == 0  # and not again across steps
            assert compiled["graphs_cold_sparse_0.25"] == 0  # nor for the sparse runs
            assert all(diff < 1e-5 for diff in compiled["compiled_vs_eager"].values()), compiled
            eager = model["eager_same_process"]  # warm eager steps timed before compiling
            assert len(eager["step_seconds"]["dense"]) == len(eager["step_seconds"]["sparse_0.25"]) == 2
            assert eager["speedup_0.25"] > 0 and eager["dense_step_seconds"] > 0
    assert results["models"][1]["text_tokens"] == 6 and results["models"][1]["text_mask"] == "packed, no mask"
    md = (tmp_path / "pipeline_step_cpu.md").read_text()
    assert "| smoke-wan |" in md
    assert ("regional torch.compile (aot_eager" in md) == (mode != ["--no-compile"])
    assert ("| smoke-wan | sparse 0.25 |" in md) == (mode != ["--no-compile"])  # compile-gain table


def test_inductor_compiled_steps_match_eager_without_recompiling(tmp_path):
    results = _run_bench(tmp_path, "--reps", "3", "--compile", "--models", "smoke-wan")
    (model,) = results["models"]
    assert model["compile"]["backend"] == "inductor" and model["compile"]["graphs_first_dense_forward"] > 0
    assert model["graphs_compiled_in_timed_forwards"] == 0
    assert all(diff < 1e-5 for diff in model["compile"]["compiled_vs_eager"].values()), model["compile"]


def _bench_module():
    return load_bench("bench_pipeline_step.py")


def test_packed_hunyuan_prompt_gives_the_padded_masked_output():
    """Dropping the padded text tokens (and the then all-True mask) changes no video token, dense or sparse."""
    from svg2core import SVG2Config
    from svg2core.integration import SparsityPlan, apply_svg2, svg2_session

    bench = _bench_module()
    spec, cpu = bench.SMOKE["smoke-hunyuan"], torch.device("cpu")
    outputs = {}
    for packed in (False, True):
        torch.manual_seed(0)  # same random weights for both
        model, kwargs, _, _ = bench.build(spec, cpu, torch.float32, packed_text=packed)
        assert kwargs["encoder_hidden_states"].shape[1] == (6 if packed else 8)
        apply_svg2(model, backend="reference")
        router, masks = model._svg2_router, []
        attend = router.attend
        router.attend = lambda *a, _m=masks, _f=attend, **kw: _m.append(kw["attn_mask"]) or _f(*a, **kw)  # spy
        for plan in ("dense", "sparse"):
            config = SVG2Config(mode="dense") if plan == "dense" else bench.sparse_config(0.25, spec)
            with torch.inference_mode(), svg2_session(model, SparsityPlan(config), num_inference_steps=2):
                outputs[packed, plan] = model(**kwargs)[0]
        # packed: the attention call gets no mask (SDPA's unmasked path); padded: the stock mask
        assert len(masks) == 2 * 2 and all((m is None) == packed for m in masks)
    for plan in ("dense", "sparse"):
        torch.testing.assert_close(outputs[True, plan], outputs[False, plan], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(outputs[True, "dense"], outputs[True, "sparse"], atol=1e-4)  # sparse really ran


def test_union_of_kernel_intervals_counts_overlap_once():
    bench = _bench_module()
    union_seconds, category_of = bench.union_seconds, bench.category_of
    # two streams: [0, 10] and [5, 12] overlap, [20, 25] stands alone, [21, 22] lies inside it
    assert union_seconds([(0, 10), (20, 25), (5, 12), (21, 22)]) == pytest.approx(17e-6)
    assert union_seconds([]) == 0.0
    assert category_of("_kmeans_assign_kernel") == "svg2_kmeans"
    assert category_of("triton_poi_fused_select_0") == "compiled_fused"


def test_idle_gaps_between_device_activities():
    bench = _bench_module()
    # "b" ends inside "a" (another stream); the gaps: 10 -> 15 after "a", 20 -> 40 after "c", started by "e"
    idle, gaps = bench.idle_gaps([(0, 10, "a"), (2, 5, "b"), (15, 20, "c"), (16, 18, "d"), (40, 41, "e")], top=1)
    assert idle == pytest.approx(25e-6)
    assert gaps == [{"us": 20, "after": "c", "before": "e"}]
    assert bench.idle_gaps([]) == (0.0, [])


def test_clock_samples_parse_nvidia_smi_lines():
    """bench/gpu_clocks.py reads nvidia-smi's ``clocks.sm, power.draw`` CSV; readings it cannot parse (an "[N/A]",
    a line cut off when the sampler is stopped) are skipped, and no sample gives None."""
    _bench_module()  # puts bench/ on sys.path
    from gpu_clocks import parse_samples

    got = parse_samples("1980, 512.30\n1755, 698.10\n[N/A], [N/A]\n1830, ")
    assert got == {"sm_mhz_mean": 1867.5, "sm_mhz_min": 1755.0, "power_w_mean": 605.2, "samples": 2}
    assert parse_samples("") is None and parse_samples("1980\n") is None


def test_library_settings_are_applied_recorded_and_checked(tmp_path):
    # --set MODULE.NAME=VALUE flips a library knob for the whole run (an A/B of the step) and lands in the results;
    # a name the module lacks stops the run with an error naming it
    results = _run_bench(tmp_path, "--reps", "1", "--no-compile", "--models", "smoke-wan",
                         "--set", "svg2core.ops.kmeans.kmeans.UPDATE_CHUNK=256")
    assert results["settings"] == {"svg2core.ops.kmeans.kmeans.UPDATE_CHUNK": 256}
    assert "UPDATE_CHUNK" in (tmp_path / "pipeline_step_cpu.md").read_text()
    bad = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(tmp_path),
                          "--set", "svg2core.ops.kmeans.kmeans.NO_SUCH_KNOB=1"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "has no NO_SUCH_KNOB" in bad.stderr
