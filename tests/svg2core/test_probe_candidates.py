"""The simulated denoising trajectory at other grid sizes (bench_fidelity / bench_kmeans_iters) and
bench/probes/probe_candidates.py's run over it: what the GPU run at Wan 14B's grid uses, on a small grid."""

from __future__ import annotations

import math

import torch

from tests.svg2core.bench_modules import load_bench


def test_chunked_dense_attention_equals_the_masked_one():
    fid = load_bench("bench_fidelity.py")
    q, k, v, _ = fid.make_qkv(0, grid=(2, 8, 12))
    n = q.shape[2]
    assert n == 2 * 8 * 12
    want, _ = fid.masked_attention(q, k, v, torch.ones(q.shape[1], n, n, dtype=torch.bool))
    got = fid.dense_attention(q, k, v, chunk=50)  # chunks that do not divide the rows
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_larger_grid_holds_the_same_scene_at_a_finer_resolution():
    fid = load_bench("bench_fidelity.py")
    shares = {}
    for grid in ((8, 16, 16), (8, 48, 48)):
        feats, pos, cls = fid.make_video_features(3, grid=grid, with_classes=True)
        assert feats.shape[0] == pos.shape[0] == cls.shape[0] == math.prod(grid)
        assert pos.max(0).values.tolist() == [g - 1 for g in grid]
        shares[grid] = torch.bincount(cls, minlength=9)[3:].float() / cls.numel()  # each object's share of tokens
    # the objects cover about the same share of the frame at both resolutions (scaled radii)
    small, large = shares[(8, 16, 16)], shares[(8, 48, 48)]
    assert small.sum() > 0.05 and abs(small.sum() - large.sum()) < 0.35 * small.sum()
    assert torch.equal(fid.make_video_features(3)[0], fid.make_video_features(3, grid=(8, 16, 16))[0])


def test_probe_candidates_runs_the_trajectory_on_a_given_grid():
    probe = load_bench("probes/probe_candidates.py")
    rows = probe.run([0], 3, [0.25], 4, 32, 2, 5, 0.7, 0.05, [4], "reference", grid=(3, 8, 8), num_objects=3,
                     device="cpu")
    assert len(rows) == 3 * 2 * 2  # steps x (m = 0, 4) x (fixed 25%, top-p)
    for r in rows:
        assert 0.0 < r["error"] < 1.0 and r["obj_q"] > 0 and r["obj_k"] > 0
        if r["mode"] == "fixed_density":
            assert abs(r["density"] - 0.25) < 0.1  # within about one key cluster of 6 tokens in 192
    summary = probe.paired_summary(rows, "m", [0, 4], 0, ratios=("obj_q", "obj_k"))
    base = [s for s in summary if s["m"] == 0]
    assert all(s["delta"] == 0.0 and s["obj_k_ratio"] == 1.0 for s in base)


def test_probe_config_trajectory_runs_variants_and_writes_its_table(tmp_path, monkeypatch, capsys):
    probe = load_bench("probes/probe_config_trajectory.py")
    assert probe.parse_variant("default") == {}
    assert probe.parse_variant("kmeans_subsample=2,top_p=0.8") == {"kmeans_subsample": 2, "top_p": 0.8}
    for bad in ("kmeans_subsample", "mode=dense", "nonsense=1", "kmeans_subsample=two", "top_p=0.8,top_p=high"):
        try:
            probe.parse_variant(bad)
        except ValueError as e:
            assert "--variant" in str(e) and repr(bad.split(",")[-1]) in str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted")
    monkeypatch.setattr("sys.argv", ["probe", "--out", str(tmp_path), "--seeds", "2", "--steps", "2", "--densities",
                                     "0.25", "--grid", "3,8,8", "--objects", "3", "--cq", "4", "--ck", "16",
                                     "--variant", "kmeans_iters=0", "--variant", "kmeans_iters_init=1",
                                     "--name", "t"])
    probe.main()
    text = (tmp_path / "probe_t_trajectory_cpu_4_16_3x8x8.md").read_text()
    main, cold, first_warm = text.split("\nOver ")

    def table_rows(part):
        return [line for line in part.splitlines() if line.startswith("| fixed") or line.startswith("| top_p")]

    def delta(row):
        return float(row.split("|")[6].split()[0])

    rows = table_rows(main)
    assert len(rows) == 6  # (fixed 25%, top-p) x (default, kmeans_iters=0, kmeans_iters_init=1)
    default = [r for r in rows if "| default |" in r]
    assert all("+0.00000 +- 0.00000" in r for r in default)  # the baseline against itself
    # the variant ran (assign-only warm calls give other clusters, so another error, at every knob)
    no_iters = [r for r in rows if "kmeans_iters=0" in r]
    assert len(no_iters) == 2 and all(delta(r) != 0.0 for r in no_iters)
    # the cold call's own table: a warm-call setting leaves step 0 as it was, a cold-call one changes it
    assert cold.startswith("the cold call (step 0)") and first_warm.startswith("the first warm steps (1-3)")
    cold_rows = table_rows(cold)
    assert len(cold_rows) == 6
    assert all(delta(r) == 0.0 for r in cold_rows if "kmeans_iters=0" in r)
    assert all(delta(r) != 0.0 for r in cold_rows if "kmeans_iters_init=1" in r)


def test_probe_cold_start_checks_each_cold_variant(monkeypatch):
    # probe_cold_start's checks on a small problem (Triton kernels interpreted on the CPU): every cold variant and the
    # warm call leave the centroids at their final clusters' means, and the check itself rejects other centroids. The
    # timer is replaced by one call of each variant (timing needs CUDA events; what is checked is the probe's calls).
    probe = load_bench("probes/probe_cold_start.py")
    monkeypatch.setattr(probe, "VARIANTS", {"2": {"kmeans_iters_init": 2},
                                            "3 on s3": {"kmeans_iters_init": 3, "kmeans_subsample": 3}})
    calls = []

    def one_call_each(fns, rounds):
        for fn in fns.values():
            calls.append(fn())
        return {label: [1.0] for label in fns}

    monkeypatch.setattr(probe.P, "alternating_times", one_call_each)
    row = probe.case("tiny", 2, 150, 4, 12, 10, torch.device("cpu"), 1)
    assert row["checks"] == {"2": True, "3 on s3": True, "warm": True}
    assert len(calls) == 3 and row["job_extra_s"] == {"2": 0.0, "3 on s3": 0.0}
    plan = calls[0]
    x = torch.randn(1, 2, 150, 128)
    labels = plan.k_labels
    cent = torch.stack([torch.stack([x[0, h][labels[h] == c].mean(0) if (labels[h] == c).any() else torch.zeros(128)
                                     for c in range(12)]) for h in range(2)])
    assert probe._centroids_are_means(x, labels, cent)
    assert not probe._centroids_are_means(x, labels, cent + 0.01)
