"""bench/probes/probe_tail_union.py: the packings it measures keep their promises (whole tails, at most a tile, the
union of the members' key lists), its cost model counts tiles as the docstring says, and its GPU path (here under the
Triton interpreter) times the kernel on the library's tables."""

from __future__ import annotations

import torch

from tests.svg2core.bench_modules import load_bench


def _probe():
    return load_bench("probes/probe_tail_union.py")


def test_cost_model_counts_whole_tiles_and_half_tiles():
    probe = _probe()
    # one group of 300 rows (two whole tiles of 128 and a tail of 44: a half tile) over 10 key rows, fixed cost 2
    groups = torch.zeros(300, dtype=torch.long)
    masks = torch.tensor([[True, False]])
    cost, fill = probe.groups_cost(groups, masks, torch.tensor([10, 7]), 128, 2.0)
    assert cost == 2 * (10 + 2) + 0.69 * (10 + 2)
    assert fill == 300 / (3 * 128)


def test_greedy_and_mutual_packings_keep_whole_tails_within_a_tile():
    probe = _probe()
    g = torch.Generator().manual_seed(0)
    cq, ck, block = 12, 20, 32
    rem = torch.randint(0, block, (cq,), generator=g).tolist()
    lists = torch.rand(cq, ck, generator=g) < 0.3
    k_sizes = torch.randint(1, 10, (ck,), generator=g).float()
    for packed in (probe.pack_remainders(rem, lists, k_sizes, block, 6.0, 3),
                   probe.mutual_pairs(rem, lists, k_sizes, block, 6.0)):
        members = [c for tile in packed for c in tile]
        assert sorted(members) == [c for c in range(cq) if rem[c]]  # every tail once
        assert all(sum(rem[c] for c in tile) <= block for tile in packed)
        assert any(len(tile) > 1 for tile in packed)


def test_small_run_on_the_interpreter_times_both_tables():
    probe = _probe()
    rows = probe.measure([0], [0.25, 0.4], cq=4, ck=8, block=32, fixed=6.0, max_members=[2], grid=(2, 16, 16),
                         objects=2, init_iters=3, rules=("greedy", "product"), backend="triton", time_heads=2,
                         time_head_dim=64, time_reps=(1, 1))
    by = {(r["target"], r["plan"]): r for r in rows}
    for target in (0.25, 0.4):
        base, product = by[(target, "baseline")], by[(target, "product")]
        assert base["cost"] == 1.0 and product["cost"] <= 1.0  # pairs form only where they save
        assert product["fill"] >= base["fill"] and product["density"] >= base["density"]
        assert product["kernel_ms"] > 0 and base["kernel_ratio"] == 1.0 and product["stage_ms"] > 0
    assert "| 0.40 | product |" in "\n".join(probe.table(rows))
