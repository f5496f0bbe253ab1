"""Cluster scoring and selection: Triton vs reference, and the rule's budgets (p, caps, fixed density)."""

from __future__ import annotations

import pytest
import torch

from svg2core.config import SVG2Config
from svg2core.ops.select import (
    KeySweep,
    cluster_logits,
    cluster_logits_reference,
    select_from_logits,
    select_from_logits_reference,
    select_key_clusters_reference,
    selection_in_id_order,
    selection_in_sweep_order,
    sweep_starts_reference,
)
from svg2core.ops.select import select as select_mod
from svg2core.ops.select.reference import selection_order
from svg2core.state import Workspace


def _problem(bh=3, cq=5, ck=13, d=64, empty=(2, 7), tokens=9):
    cq_c = torch.randn(bh, cq, d)
    ck_c = torch.randn(bh, ck, d)
    sizes = torch.randint(1, tokens, (bh, ck), dtype=torch.int32)
    sizes[:, list(empty)] = 0
    return cq_c, ck_c, sizes, int(sizes[0].sum()) if bh == 1 else None


def _equal_rows(sizes: torch.Tensor) -> torch.Tensor:
    """Make every row sum to the same Nv (the real invariant) by moving the excess into cluster 0."""
    total = int(sizes.sum(-1).max())
    sizes[:, 0] += total - sizes.sum(-1).int()
    return sizes


def _kept_tokens(sel_idx, sel_count, sizes):
    ck = sel_idx.shape[-1]
    rank = torch.arange(ck)
    tok = torch.gather(sizes.long()[:, None, :].expand_as(sel_idx), -1, sel_idx.long())
    return (tok * (rank < sel_count[..., None])).sum(-1)


@pytest.mark.parametrize("ck", [13, 64, 100], ids=lambda c: f"ck{c}")
def test_logits_kernel_equals_reference(ck):
    cq_c, ck_c, sizes, _ = _problem(ck=ck)
    got = cluster_logits(cq_c, ck_c, sizes, Workspace())
    want = cluster_logits_reference(cq_c, ck_c, sizes)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got.nan_to_num(0, 0, 0), want.nan_to_num(0, 0, 0), rtol=1e-5, atol=1e-5)


CONFIGS = [
    pytest.param(SVG2Config(top_p=0.9), id="top_p"),
    pytest.param(SVG2Config(top_p=0.5, min_density=0.3, max_density=0.7), id="top_p-caps"),
    pytest.param(SVG2Config(top_p=1.0), id="top_p=1"),
    pytest.param(SVG2Config(mode="fixed_density", target_density=0.4), id="fixed"),
]


METHODS = [pytest.param(("sort", 4), id="sort"), pytest.param(("threshold", 4), id="threshold"),
           pytest.param(("threshold", 1), id="threshold-1bit"), pytest.param(("threshold", 3), id="threshold-3bit")]


def _run_select(method, logits, sizes, config, nv, ws=None):
    kind, bits = method
    old = select_mod.SELECT_METHOD, select_mod.SELECT_RADIX_BITS
    select_mod.SELECT_METHOD, select_mod.SELECT_RADIX_BITS = kind, bits
    try:
        return select_from_logits(logits, sizes, config, nv, ws or Workspace())
    finally:
        select_mod.SELECT_METHOD, select_mod.SELECT_RADIX_BITS = old


def _want(method, logits, sizes, config, nv):
    want = select_from_logits_reference(logits, sizes, config, nv)
    return want if method[0] == "sort" else selection_in_id_order(want[0], want[1], sizes)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("ck", [13, 100], ids=lambda c: f"ck{c}")
def test_selection_kernel_equals_reference(config, ck, method):
    cq_c, ck_c, sizes, _ = _problem(ck=ck)
    sizes = _equal_rows(sizes)
    nv = int(sizes[0].sum())
    logits = cluster_logits_reference(cq_c, ck_c, sizes)
    ws = Workspace()
    ws.buffer("sel.idx", (3, 5, ck), torch.int32, "cpu").fill_(-1)  # poison: every entry must be written
    ws.buffer("sel.cum", (3, 5, ck + 1), torch.int32, "cpu").fill_(-1)
    got = _run_select(method, logits, sizes, config, nv, ws)
    want = _want(method, logits, sizes, config, nv)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_selection_order_breaks_near_ties_by_id():
    # 13 clusters (C_POW2 16): logits whose order-preserving bits differ only in their low 4 bits count as tied
    row = torch.full((13,), -40.0)
    row[3], row[7] = 2.0, torch.nextafter(torch.tensor(2.0), torch.tensor(3.0))  # 7 is larger by one ulp
    row[5] = -1.5
    row[9] = -1.5 + 2 ** -20 * 100  # ~100 ulps above: no longer tied with 5 (more than 4 bits apart)
    row[11] = float("-inf")
    order = selection_order(row[None]).flatten().tolist()
    assert order[:4] == [3, 7, 9, 5]
    assert order[-1] == 11


@pytest.mark.parametrize("method", METHODS)
def test_selection_kernels_order_near_ties_like_the_reference(method):
    # every logit of a row within a few ulps of the others: the order (and so the kept prefix) is by id
    bh, cq, ck = 2, 4, 100
    base = torch.randn(bh, cq, 1).expand(bh, cq, ck).contiguous()
    bits = base.view(torch.int32) + torch.randint(0, 100, (bh, cq, ck), dtype=torch.int32)
    logits = bits.view(torch.float32)
    sizes = _equal_rows(torch.randint(1, 9, (bh, ck), dtype=torch.int32))
    nv = int(sizes[0].sum())
    # p is ~1/100 per cluster, so the exclusive prefix sums sit at ~j/100: top_p = 0.5 would put the 51st cluster's
    # prefix on the threshold itself, where the kernels' and the reference's float sums (other summation orders) may
    # round to either side; 0.505 keeps 51 clusters with a margin of half a cluster's probability
    config = SVG2Config(top_p=0.505)
    got = _run_select(method, logits, sizes, config, nv)
    want = _want(method, logits, sizes, config, nv)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("config", CONFIGS)
def test_selection_kernel_on_ties_and_empty_clusters(config, method):
    """Constant centroids (every logit of a size tied), one huge cluster, many empty ones: no NaN,
    ties broken by lower id exactly as the reference."""
    bh, cq, ck, d = 2, 3, 20, 64
    cq_c = torch.ones(bh, cq, d)
    ck_c = torch.ones(bh, ck, d)
    sizes = torch.tensor([[3, 0, 3, 3, 0, 1, 1, 0, 3, 3, 2, 2, 0, 0, 1, 3, 3, 0, 2, 1],
                          [30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4]], dtype=torch.int32)
    sizes = _equal_rows(sizes)
    nv = int(sizes[0].sum())
    logits = cluster_logits_reference(cq_c, ck_c, sizes)
    got = _run_select(method, logits, sizes, config, nv)
    want = _want(method, logits, sizes, config, nv)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert torch.all(got[1] >= 1)


def test_id_order_layout_keeps_the_set_and_the_token_sums():
    cq_c, ck_c, sizes, _ = _problem(bh=2, ck=30)
    sizes = _equal_rows(sizes)
    nv = int(sizes[0].sum())
    sel_idx, sel_count, sel_cum = select_key_clusters_reference(cq_c, ck_c, sizes, SVG2Config(top_p=0.7), nv)
    idx2, count2, cum2 = selection_in_id_order(sel_idx, sel_count, sizes)
    assert torch.equal(count2, sel_count)
    for r in range(2):
        for i in range(5):
            n = int(sel_count[r, i])
            assert sorted(sel_idx[r, i, :n].tolist()) == idx2[r, i, :n].tolist()
            assert sorted(idx2[r, i].tolist()) == list(range(30))
            assert int(cum2[r, i, n]) == int(sel_cum[r, i, n])
    assert torch.equal(_kept_tokens(idx2, count2, sizes), _kept_tokens(sel_idx, sel_count, sizes))


def test_sweep_starts_follow_the_query_tiles():
    # tiles per cluster (128 rows): 2, 0, 1, 1, 3 -> first tile 0, 2, 2, 3, 4; period 3, 30 key clusters
    sizes = torch.tensor([[130, 0, 128, 1, 300]], dtype=torch.int32)
    starts = sweep_starts_reference(sizes, period=3, block_m=128, num_k_clusters=30)
    assert starts.tolist() == [[0, 20, 20, 0, 10]]
    assert sweep_starts_reference(sizes, period=1, block_m=128, num_k_clusters=30).tolist() == [[0] * 5]


def test_sweep_order_rotates_the_kept_ids_and_keeps_the_set():
    cq_c, ck_c, sizes, _ = _problem(bh=2, ck=30)
    sizes = _equal_rows(sizes)
    nv = int(sizes[0].sum())
    sel_idx, sel_count, sel_cum = select_key_clusters_reference(cq_c, ck_c, sizes, SVG2Config(top_p=0.7), nv)
    starts = torch.randint(0, 30, (2, 5))
    idx2, count2, cum2 = selection_in_sweep_order(sel_idx, sel_count, sizes, starts)
    assert torch.equal(count2, sel_count)
    for r in range(2):
        for i in range(5):
            n, s0 = int(sel_count[r, i]), int(starts[r, i])
            kept = sorted(sel_idx[r, i, :n].tolist())
            assert idx2[r, i, :n].tolist() == [j for j in kept if j >= s0] + [j for j in kept if j < s0]
            assert idx2[r, i, n:].tolist() == sorted(set(range(30)) - set(kept))
            steps = (cum2[r, i, 1:] - cum2[r, i, :-1]).tolist()
            assert steps == sizes[r, idx2[r, i].long()].tolist()
            assert int(cum2[r, i, n]) == int(sel_cum[r, i, n])
    assert torch.equal(selection_in_sweep_order(sel_idx, sel_count, sizes, torch.zeros(2, 5, dtype=torch.long))[0],
                       selection_in_id_order(sel_idx, sel_count, sizes)[0])


# Not the whole product (each case is ~2 s under the interpreter): each kernel runs every sweep period, and each rule
# two periods, one per kernel.
_SWEEP_PERIODS = (1, 3, 7, 64)
SWEEP_CASES = [
    pytest.param(config.values[0], method.values[0], period, id=f"{period}-{config.id}-{method.id}")
    for i, config in enumerate(CONFIGS)
    for method, period in ((METHODS[0], _SWEEP_PERIODS[i]),
                           (METHODS[1], _SWEEP_PERIODS[(i + 2) % len(_SWEEP_PERIODS)]))
]


@pytest.mark.parametrize(("config", "method", "period"), SWEEP_CASES)
def test_selection_kernels_in_sweep_order_equal_reference(config, method, period):
    """Either kernel with a key sweep: the reference's kept set laid out in sweep order, every entry written; query
    clusters of ragged sizes (empty ones, several tiles, exact multiples of the tile)."""
    bh, cq, ck = 3, 5, 100
    cq_c, ck_c, sizes, _ = _problem(ck=ck)
    sizes = _equal_rows(sizes)
    nv = int(sizes[0].sum())
    q_sizes = torch.tensor([[0, 70, 300, 128, 5], [1, 1, 1, 1, 1], [600, 0, 0, 129, 64]], dtype=torch.int32)
    sweep = KeySweep(q_sizes, period, 64)
    logits = cluster_logits_reference(cq_c, ck_c, sizes)
    ws = Workspace()
    ws.buffer("sel.idx", (bh, cq, ck), torch.int32, "cpu").fill_(-1)
    ws.buffer("sel.cum", (bh, cq, ck + 1), torch.int32, "cpu").fill_(-1)
    kind, bits = method
    old = select_mod.SELECT_METHOD, select_mod.SELECT_RADIX_BITS
    select_mod.SELECT_METHOD, select_mod.SELECT_RADIX_BITS = kind, bits
    try:
        got = select_from_logits(logits, sizes, config, nv, ws, sweep)
    finally:
        select_mod.SELECT_METHOD, select_mod.SELECT_RADIX_BITS = old
    want = select_from_logits_reference(logits, sizes, config, nv)
    starts = sweep_starts_reference(q_sizes, period, 64, ck)
    want = selection_in_sweep_order(want[0], want[1], sizes, starts)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    ref = select_key_clusters_reference(cq_c, ck_c, sizes, config, nv, sweep)
    for g, w in zip(ref, want, strict=True):
        assert torch.equal(g, w)


def test_selection_sweep_is_validated():
    cq_c, ck_c, sizes, _ = _problem(ck=13)
    sizes = _equal_rows(sizes)
    logits = cluster_logits_reference(cq_c, ck_c, sizes)
    with pytest.raises(ValueError, match="sweep: needs period >= 1"):
        select_from_logits(logits, sizes, SVG2Config(), int(sizes[0].sum()), Workspace(),
                           KeySweep(torch.ones(3, 4, dtype=torch.int32), 4, 128))


def test_selection_respects_top_p_and_keeps_the_crossing_cluster():
    cq_c, ck_c, sizes, _ = _problem(bh=2, ck=40, empty=(3,))
    sizes = _equal_rows(sizes)
    cfg = SVG2Config(top_p=0.6)
    sel_idx, sel_count, _ = select_key_clusters_reference(cq_c, ck_c, sizes, cfg, int(sizes[0].sum()))
    logits = cluster_logits_reference(cq_c, ck_c, sizes)
    p = torch.softmax(logits, -1)
    sorted_p = torch.gather(p, -1, sel_idx.long())
    rank = torch.arange(40)
    kept_mass = (sorted_p * (rank < sel_count[..., None])).sum(-1)
    without_last = kept_mass - torch.gather(sorted_p, -1, (sel_count - 1).long()[..., None]).squeeze(-1)
    assert torch.all(kept_mass >= 0.6 - 1e-6)  # reaches p ...
    assert torch.all(without_last < 0.6)  # ... and stops at the crossing cluster
    assert torch.all(torch.diff(sorted_p, dim=-1) <= 0)  # descending order
    for row_idx, row_count in zip(sel_idx.reshape(-1, 40), sel_count.reshape(-1), strict=True):
        assert 3 not in row_idx[:row_count].tolist()  # empty clusters are never selected


def test_density_caps_bound_the_kept_tokens():
    cq_c, ck_c, sizes, _ = _problem(bh=2, ck=60, tokens=5)
    sizes = _equal_rows(sizes)
    nv = int(sizes[0].sum())
    cfg = SVG2Config(top_p=0.05, min_density=0.3, max_density=0.5)
    sel_idx, sel_count, sel_cum = select_key_clusters_reference(cq_c, ck_c, sizes, cfg, nv)
    kept = _kept_tokens(sel_idx, sel_count, sizes)
    assert torch.equal(kept, torch.gather(sel_cum, -1, sel_count.long()[..., None]).squeeze(-1).long())
    last = torch.gather(sel_cum, -1, (sel_count - 1).long()[..., None]).squeeze(-1)
    assert torch.all(kept >= 0.3 * nv)  # the floor overrides the small p
    assert torch.all(last < 0.5 * nv)  # the cap: nothing starts beyond max_density
    cfg_cap = SVG2Config(top_p=1.0, max_density=0.2)
    sel_idx, sel_count, sel_cum = select_key_clusters_reference(cq_c, ck_c, sizes, cfg_cap, nv)
    last = torch.gather(sel_cum, -1, (sel_count - 1).long()[..., None]).squeeze(-1)
    assert torch.all(last < 0.2 * nv) and torch.all(sel_count >= 1)


@pytest.mark.parametrize("target", [0.1, 0.35, 0.8])
def test_fixed_density_hits_target_within_one_cluster(target):
    cq_c, ck_c, sizes, _ = _problem(bh=2, ck=50, tokens=12)
    sizes = _equal_rows(sizes)
    nv = int(sizes[0].sum())
    cfg = SVG2Config(mode="fixed_density", target_density=target)
    logits = cluster_logits_reference(cq_c, ck_c, sizes)
    sel_idx, sel_count, sel_cum = select_from_logits(logits, sizes, cfg, nv, Workspace())
    kept = torch.gather(sel_cum, -1, sel_count.long()[..., None]).squeeze(-1)
    assert torch.equal(kept.long(), _kept_tokens(sel_idx, sel_count, sizes))
    # the crossing cluster is the least probable kept one (the kernel lists the kept set by id)
    rank = torch.arange(50)
    in_set = rank < sel_count[..., None]
    kept_logit = torch.where(in_set, torch.gather(logits, -1, sel_idx.long()), float("inf"))
    crossing = torch.gather(sel_idx, -1, kept_logit.argmin(-1, keepdim=True)).long()
    last_size = torch.gather(sizes.long()[:, None, :].expand(-1, 5, -1), -1, crossing).squeeze(-1)
    assert torch.all(kept >= target * nv)
    assert torch.all(kept - last_size < target * nv)
