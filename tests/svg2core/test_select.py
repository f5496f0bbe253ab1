"""Cluster scoring and selection: Triton vs reference, and the rule's budgets (p, caps, fixed density)."""

from __future__ import annotations

import pytest
import torch

from svg2core.config import SVG2Config
from svg2core.ops.select import (
    cluster_logits,
    cluster_logits_reference,
    select_from_logits,
    select_from_logits_reference,
    select_key_clusters_reference,
)
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


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("ck", [13, 100], ids=lambda c: f"ck{c}")
def test_selection_kernel_equals_reference(config, ck):
    cq_c, ck_c, sizes, _ = _problem(ck=ck)
    sizes = _equal_rows(sizes)
    nv = int(sizes[0].sum())
    logits = cluster_logits_reference(cq_c, ck_c, sizes)
    ws = Workspace()
    ws.buffer("sel.idx", (3, 5, ck), torch.int32, "cpu").fill_(-1)  # poison: every entry must be written
    ws.buffer("sel.cum", (3, 5, ck + 1), torch.int32, "cpu").fill_(-1)
    got = select_from_logits(logits, sizes, config, nv, ws)
    want = select_from_logits_reference(logits, sizes, config, nv)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


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
    sel_idx, sel_count, sel_cum = select_from_logits(cluster_logits_reference(cq_c, ck_c, sizes), sizes, cfg, nv,
                                                     Workspace())
    kept = torch.gather(sel_cum, -1, sel_count.long()[..., None]).squeeze(-1)
    last_size = kept - torch.gather(sel_cum, -1, (sel_count - 1).long()[..., None]).squeeze(-1)
    assert torch.all(kept >= target * nv)
    assert torch.all(kept - last_size < target * nv)
