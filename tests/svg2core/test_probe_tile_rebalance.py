"""bench/probes/probe_tile_rebalance.py: the moves it measures keep their promises (only donors' excess rows move,
only into room, all or nothing per donor, fewer tiles), and the sparse attention it runs on the GPU path with the
moved labels equals the masked reference."""

from __future__ import annotations

import pytest
import torch

from tests.svg2core.bench_modules import load_bench


def _probe():
    return load_bench("probes/probe_tile_rebalance.py")


@pytest.mark.parametrize("criterion", ["farthest", "margin"])
def test_moves_shed_whole_excess_into_room(criterion):
    probe = _probe()
    g = torch.Generator().manual_seed(0)
    bh, n, d, c, block, rho = 2, 700, 16, 12, 32, 8
    x = torch.randn(bh, n, d, generator=g)
    cent = torch.randn(bh, c, d, generator=g)
    # uneven sizes: many clusters end in a few excess rows
    labels = torch.multinomial(torch.rand(bh, c, generator=g) + 0.2, n, replacement=True, generator=g)
    new = probe.rebalance(x, labels, cent, rho, block, criterion)
    half = block // 2
    before, after = probe.sizes_of(labels, c), probe.sizes_of(new, c)
    r = before % block
    excess = torch.where(r <= half, r, r - half)
    donor = (excess > 0) & (excess <= rho)
    moved = new != labels
    assert moved.any()
    for b in range(bh):
        src = labels[b][moved[b]]
        dst = new[b][moved[b]]
        assert donor[b, src].all()  # only donors give
        assert not donor[b, dst].any()  # and never to a donor
        shed = before[b] - after[b]
        gave = torch.bincount(src, minlength=c)
        assert torch.equal(torch.where(gave > 0, gave, 0), torch.where(gave > 0, excess[b], 0))  # all or nothing
        got = torch.bincount(dst, minlength=c)
        room = torch.where(r[b] == 0, 0, torch.where(r[b] <= half, half - r[b], block - r[b]))
        assert (got <= room).all()  # a receiver's last tile does not overflow
        assert torch.equal(shed, gave - got)
    assert probe.tile_cost(new, c, block) < probe.tile_cost(labels, c, block)
    if criterion == "margin":  # in each donor that gave, the moved tokens are those with the smallest margins
        d2 = (cent**2).sum(-1)[:, None, :] - 2 * x @ cent.transpose(1, 2)
        own = torch.gather(d2, 2, labels[..., None])[..., 0]
        cap = torch.where(donor, 0, torch.where(r == 0, 0, torch.where(r <= half, half - r, block - r)))
        margin = d2.masked_fill(~(cap > 0)[:, None, :], float("inf")).min(-1).values - own
        for b in range(bh):
            for cl in labels[b][moved[b]].unique():
                members = labels[b] == cl
                assert margin[b][members & moved[b]].max() <= margin[b][members & ~moved[b]].min()


def test_the_gpu_path_attends_with_the_moved_labels():
    probe = _probe()
    q, k, v, _ = probe.F.make_qkv(1, grid=(2, 8, 8), num_objects=3)
    cq, ck = 8, 8
    plan, qc = probe.plan_at(q, k, v, 0.3, cq, ck, 5, "triton")
    labels = probe.rebalance(q[0], plan.q_labels.long(), qc, 6, 16, "margin")  # a draw where some rows move
    assert (labels != plan.q_labels.long()).any()
    got = probe.attend(q, k, v, plan, labels, cq, "triton")
    want = probe.attend(q, k, v, plan, labels, cq, "reference")
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_other_query_cluster_counts_are_compared_at_equal_kernel_cost():
    probe = _probe()
    rows, cq_rows = probe.measure([0], [0.3], [0], ["margin"], 8, 8, 16, (2, 8, 8), 3, "cpu", "reference",
                                  init_iters=5, alt_cqs=[8, 4])
    base = rows[0]
    same, fewer = (next(r for r in cq_rows if r["cq"] == c) for c in (8, 4))
    # the count of the baseline itself: the same plan, so the same cost, density and error at both densities
    assert same["cost"] == 1.0 and same["density_equal_cost"] == same["density"] == base["density"]
    assert same["error"] == same["error_equal_cost"] == base["error"]
    # half the clusters on 128 tokens: larger clusters fill their 16-row tiles better, and the saved tiles buy density
    assert fewer["cost"] < 1.0
    assert fewer["density_equal_cost"] > fewer["density"]
    assert 0.0 < fewer["error"] < 1.0


def test_the_moves_are_compared_at_the_baselines_kernel_cost():
    probe = _probe()
    rows, _ = probe.measure([1], [0.3], [0, 6], ["margin"], 8, 8, 16, (2, 8, 8), 3, "cpu", "reference", init_iters=5)
    base = next(r for r in rows if r["rho"] == 0)
    moved = next(r for r in rows if r["rho"] == 6)
    assert moved["moved"] > 0 and moved["cost"] < 1.0  # a draw where rows move and tiles are saved
    # both equal-cost figures come from the denser plan (target / cost): more pairs than the moved plan at the target
    for key in ("error_moved_equal_cost", "error_no_move_denser"):
        assert 0.0 < moved[key] < 1.0
    assert moved["error_no_move_denser"] <= base["error"]  # more density, same clusters: no worse
    assert "error_moved_equal_cost" not in base


def test_the_kernel_timing_runs_every_layout_at_the_products_head_shape():
    probe = _probe()
    q, k, v, _ = probe.F.make_qkv(1, grid=(2, 8, 8), num_objects=3)
    plan, qc = probe.plan_at(q, k, v, 0.3, 8, 8, 5, "triton")
    moved = probe.rebalance(q[0], plan.q_labels.long(), qc, 6, 16, "margin")
    # 5 heads over the plan's 3: the layouts and selections tiled, head 3 takes head 0's and head 4 head 1's
    ms = probe.kernel_ms(plan, {"base": plan.q_labels.long(), "moved": moved}, heads=5, head_dim=64, rounds=1, calls=1)
    assert set(ms) == {"base", "moved"} and all(0.0 < t < float("inf") for t in ms.values())


def test_the_trajectory_probe_runs_the_products_path():
    probe = load_bench("probes/probe_rebalance_trajectory.py")
    rows = probe.run([0], 2, [0.25], 16, 64, 2, 5, 0.7, 0.05, [16])
    assert {(r["step"], r["rho"]) for r in rows} == {(0, 0), (0, 16), (1, 0), (1, 16)}
    by = {(r["step"], r["rho"]): r for r in rows}
    for step in (0, 1):  # the moves run fewer query tiles at about the same density
        assert by[(step, 16)]["tiles"] < by[(step, 0)]["tiles"]
        assert abs(by[(step, 16)]["density"] - by[(step, 0)]["density"]) < 0.01
        assert 0.0 < by[(step, 16)]["error"] < 1.0
    assert probe.tile_cost(torch.tensor([128, 130, 200, 0])) == pytest.approx(1 + (1 + 0.69) + (1 + 1) + 0)
