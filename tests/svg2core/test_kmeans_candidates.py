"""The warm assign over candidate lists (SVG2Config.kmeans_candidates): Triton kernels (interpreter on CPU) vs the
torch reference, the reference's invariants, and the rule that decides which clusterings use them."""

from __future__ import annotations

import pytest
import torch

import svg2core.ops.kmeans.kmeans as km
from svg2core.ops.kmeans import batched_kmeans, kmeans_assign_reference, kmeans_update_reference
from svg2core.ops.kmeans.kmeans import kmeans_assign_candidates, uses_candidate_lists
from svg2core.ops.kmeans.reference import candidate_lists_reference, kmeans_assign_candidates_reference
from svg2core.ops.permute import sort_by_cluster
from svg2core.state import Workspace


@pytest.fixture(autouse=True)
def small_list_tiles(monkeypatch):
    """The list kernel on 16 rows x 32 columns (the interpreter's time grows with the tile: the 128 x 128 default takes
    ~100 s for 300 clusters); several column steps per row still run, and the merge across them."""
    monkeypatch.setattr(km, "CANDIDATE_ROWS", 16)
    monkeypatch.setattr(km, "CANDIDATE_LIST_BLOCK", 32)


def _dist(x: torch.Tensor, cent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    chosen = torch.gather(cent, 1, labels.long()[..., None].expand(-1, -1, x.shape[-1]))
    return ((x.float() - chosen) ** 2).sum(-1)


def _warm_problem(b, h, n, d, c, dtype, seed=0):
    """Points, the labels of a full assign, their sort, and the centroids after one update (moved, so that the list
    assign has tokens to move); centroids rounded to ``dtype`` so the kernels' copies hold the same values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, n, d, generator=g).to(dtype)
    xr = x.reshape(b * h, n, d)
    start = xr[:, torch.randperm(n, generator=g)[:c]].float().contiguous()
    labels = kmeans_assign_reference(xr, start)
    cent = kmeans_update_reference(xr, labels, start).to(dtype).float().contiguous()
    perm, offsets = sort_by_cluster(labels, c, Workspace(), "t", "reference")
    return x, xr, labels, perm.int(), offsets.int(), cent


def test_reference_lists_start_with_the_cluster_and_hold_its_nearest():
    cent = torch.randn(3, 40, 16)
    lists = candidate_lists_reference(cent, 6)
    assert lists.shape == (3, 40, 6) and lists.dtype == torch.int32
    d = torch.cdist(cent, cent) ** 2
    for bh in range(3):
        for i in range(40):
            ids = lists[bh, i].long()
            assert i in ids.tolist() and torch.equal(ids, ids.sort().values)
            others = torch.ones(40, dtype=torch.bool)
            others[ids] = False
            # every listed cluster is at least as near as every one left out
            assert d[bh, i, ids].max() <= d[bh, i, others].min() + 1e-4
    with pytest.raises(ValueError, match="m: must be in"):
        candidate_lists_reference(cent, 41)


def test_reference_assign_over_lists_never_moves_a_point_farther():
    x, xr, labels, _, _, cent = _warm_problem(2, 2, 90, 32, 12, torch.float32)
    new = kmeans_assign_candidates_reference(xr, cent, labels, candidate_lists_reference(cent, 3))
    assert torch.all(_dist(xr, cent, new) <= _dist(xr, cent, labels) + 1e-5)
    assert (new != labels).any()  # the update moved the centroids: some points change cluster
    # lists of every cluster: the full assign
    full = kmeans_assign_candidates_reference(xr, cent, labels, candidate_lists_reference(cent, 12))
    assert torch.equal(full, kmeans_assign_reference(xr, cent))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,h,n,d,c,m,block", [
    pytest.param(1, 2, 300, 64, 24, 5, None, id="one-column-tile"),
    # the list kernel's column tile cut to 16 (from 128), so that 64 clusters take four tiles whose top-m merge (the
    # in-tile top-k, a tile wider than the list, is the one-column-tile case's)
    pytest.param(2, 1, 300, 32, 64, 9, 16, id="four-column-tiles,batch2"),
    pytest.param(1, 1, 50, 64, 20, 1, None, id="m1"),
])
def test_triton_lists_and_assign_equal_the_reference(b, h, n, d, c, m, block, dtype, monkeypatch):
    if block is not None:
        monkeypatch.setattr(km, "CANDIDATE_LIST_BLOCK", block)
    block_c = max(16, km.triton_next_pow2(m - 1), km.CANDIDATE_LIST_BLOCK)  # candidate_lists' BLOCK_C
    assert -(-c // block_c) == (1 if block is None else 4)
    x, xr, labels, perm, offsets, cent = _warm_problem(b, h, n, d, c, dtype)
    want_lists = candidate_lists_reference(cent, m)
    want = kmeans_assign_candidates_reference(xr, cent, labels, want_lists)
    ws = Workspace()
    got = labels.clone()
    kmeans_assign_candidates(x, cent, got, perm, offsets, m, "triton", ws, "t")
    lists = ws.buffer("t.candidates", (b * h, c, m), torch.int32, x.device)
    assert torch.equal(lists[:, :, 0], torch.arange(c, dtype=torch.int32).expand(b * h, c))  # itself first
    # as sets (the kernel lists by distance, the reference by id); a near-tie at the m-th place may differ
    assert (torch.sort(lists, dim=-1).values == want_lists).all(-1).float().mean() >= 0.98
    agree = (got == want).float().mean().item()
    assert agree >= (1.0 if dtype == torch.float32 else 0.99)
    assert torch.all(_dist(xr, cent, got) <= _dist(xr, cent, labels) + 1e-3)  # no point moves farther


def test_the_rule_decides_by_the_share_of_clusters_listed():
    assert not uses_candidate_lists(0, 1000)
    assert uses_candidate_lists(16, 16 * km.CANDIDATE_MIN_RATIO)
    assert not uses_candidate_lists(16, 16 * km.CANDIDATE_MIN_RATIO - 1)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_batched_kmeans_below_the_ratio_is_the_full_assign(backend):
    # 10 clusters, m = 4: 4 * 8 > 10, so every assign compares with all centroids, bit for bit as with m = 0
    x = torch.randn(1, 2, 120, 32).to(torch.bfloat16)
    start = x.reshape(2, 120, 32)[:, :10].float().contiguous()
    runs = []
    for m in (0, 4):
        cent = start.clone()
        labels, perm, offsets = batched_kmeans(x, cent, 3, Workspace(), "q", backend, candidates=m)
        runs.append((labels.clone(), perm.clone(), offsets.clone(), cent))
    for a, z in zip(*runs, strict=True):
        assert torch.equal(a, z)


def test_batched_kmeans_over_lists_agrees_across_backends_on_separated_blobs():
    # 24 blobs far apart, 3 iterations from points of each blob: both backends find the blobs, lists or not
    h, n, d, c = 2, 200, 32, 24
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(h, c, d, generator=g) * 6
    truth = torch.arange(n) % c
    x = (centers[:, truth] + 0.2 * torch.randn(h, n, d, generator=g))[None].to(torch.bfloat16)
    start = x[0, :, :c].float().contiguous() + 0.1
    out = {}
    for backend in ("reference", "triton"):
        cent = start.clone()
        labels, _, offsets = batched_kmeans(x, cent, 3, Workspace(), "k", backend, candidates=3)
        out[backend] = (labels.clone(), offsets.clone(), cent)
    assert torch.equal(out["reference"][0], out["triton"][0])
    assert torch.equal(out["reference"][1], out["triton"][1])
    torch.testing.assert_close(out["reference"][2], out["triton"][2], rtol=1e-3, atol=1e-3)


def test_attention_call_lists_only_in_warm_calls_and_stays_exact_for_its_selection():
    # 16 key clusters and m = 2: the key clustering uses lists (16 >= 8 * 2), the 4 query clusters do not. The
    # layer's cold first call runs every assign over all centroids (the same as m = 0); the warm call's output is the
    # masked dense attention of the selection it made.
    from svg2core import LayerState, SVG2Config, svg2_attention
    from svg2core.attention import masked_dense_attention_reference

    b, h, n, t, d = 2, 1, 60, 4, 64
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(torch.bfloat16) for _ in range(3))
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    base = SVG2Config(num_q_clusters=4, num_k_clusters=16, kmeans_iters_init=2, kmeans_iters=2, top_p=0.7)
    outs = {}
    for m in (0, 2):
        ws, state = Workspace(), LayerState()
        cfg = base.replace(kmeans_candidates=m)
        cold, _ = svg2_attention(q, k, v, cfg, state, workspace=ws, num_dense_tokens=t, key_padding_mask=mask,
                                 backend="triton")
        assert "k.candidates" not in ws._buffers
        warm, density = svg2_attention(q, k, v, cfg, state, workspace=ws, num_dense_tokens=t,
                                       key_padding_mask=mask, backend="triton")
        assert ("k.candidates" in ws._buffers) == (m > 0) and "q.candidates" not in ws._buffers
        outs[m] = cold
        nv, bh = n - t, b * h
        want = masked_dense_attention_reference(
            q, k, v, ws.buffer("q.labels", (bh, nv), torch.int32, "cpu"),
            ws.buffer("k.labels", (bh, nv), torch.int32, "cpu"), ws.buffer("sel.idx", (bh, 4, 16), torch.int32, "cpu"),
            ws.buffer("sel.count", (bh, 4), torch.int32, "cpu"), t, mask, d ** -0.5)
        torch.testing.assert_close(warm.float(), want.float(), rtol=2e-2, atol=2e-2)
        assert torch.all((density > 0) & (density <= 1))
    assert torch.equal(outs[0], outs[2])


def test_config_and_request_fields_refuse_a_negative_count():
    from pydantic import ValidationError

    from svg2core import SVG2Config
    from worker.spec import SparsitySettings

    with pytest.raises(ValueError, match=r"kmeans_candidates: must be in \[0, 8192\], got -1"):
        SVG2Config(kmeans_candidates=-1)
    with pytest.raises(ValidationError, match="kmeans_candidates"):
        SparsitySettings(kmeans_candidates=-1)
    assert SparsitySettings(kmeans_candidates=16).kmeans_candidates == 16
