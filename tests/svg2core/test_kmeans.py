"""Batched k-means: Triton kernels (interpreter on CPU) vs the torch reference, and k-means invariants."""

from __future__ import annotations

import pytest
import torch

import svg2core.ops.kmeans.kmeans as km
from svg2core.ops.kmeans import (
    AssignTile,
    batched_kmeans,
    init_centroids_strided,
    init_centroids_strided_reference,
    kmeans_assign,
    kmeans_assign_reference,
    kmeans_reference,
    kmeans_update,
    kmeans_update_reference,
)
from svg2core.ops.permute import gather_rows_reference, sort_by_cluster, sort_by_cluster_reference
from svg2core.state import Workspace

SHAPES = [  # B, H, N, D, C
    pytest.param(1, 1, 37, 64, 5, id="odd-tokens"),
    pytest.param(2, 3, 65, 64, 9, id="batch2"),
    pytest.param(1, 2, 20, 128, 33, id="more-clusters-than-block,empty"),
]


def _dist(x: torch.Tensor, cent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    chosen = torch.gather(cent, 1, labels.long()[..., None].expand(-1, -1, d))
    return ((x.float() - chosen) ** 2).sum(-1)


@pytest.fixture(params=[False, True], ids=["pair-argmin", "packed-argmin"])
def packed(request, monkeypatch):
    """Both argmins of the assign kernel: (value, index) pairs, and packed (distance bits | id) int32 keys."""
    monkeypatch.setattr(km, "ASSIGN_PACKED_ARGMIN", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("b,h,n,d,c", SHAPES)
def test_assign_kernel_picks_a_nearest_centroid(b, h, n, d, c, dtype, packed):
    x = torch.randn(b, h, n, d).to(dtype)
    cent = torch.randn(b * h, c, d)
    labels = torch.full((b * h, n), -7, dtype=torch.int32)
    kmeans_assign(x, cent, labels)
    ref = kmeans_assign_reference(x.reshape(b * h, n, d), cent)
    assert labels.min() >= 0 and labels.max() < c
    xr = x.reshape(b * h, n, d)
    # the kernel's dot runs on low-precision centroids: near-ties may differ, distances may not
    gap = _dist(xr, cent, labels) - _dist(xr, cent, ref)
    assert gap.max() <= 1e-2 * _dist(xr, cent, ref).mean()
    assert (labels == ref).float().mean() > 0.9


def test_packed_argmin_breaks_ties_to_the_lower_id(monkeypatch):
    # duplicated centroids: the same distance to both copies, so the lower id must win, as in the reference
    monkeypatch.setattr(km, "ASSIGN_PACKED_ARGMIN", True)
    x = torch.randn(1, 2, 40, 64).to(torch.bfloat16)
    base = torch.randn(2, 6, 64)
    cent = torch.cat([base, base], dim=1)  # centroid j and j + 6 are equal
    labels = torch.empty(2, 40, dtype=torch.int32)
    kmeans_assign(x, cent, labels)
    assert labels.max() < 6
    assert torch.equal(labels, kmeans_assign_reference(x.reshape(2, 40, 64), cent))


def test_assign_kernel_reads_strided_views():
    base = torch.randn(2, 30, 3, 64).to(torch.bfloat16)  # (B, N, H, D): the diffusers layout
    x = base.transpose(1, 2)  # (B, H, N, D) view, not contiguous
    cent = torch.randn(6, 4, 64)
    labels = torch.empty(6, 30, dtype=torch.int32)
    kmeans_assign(x, cent, labels)
    ref = kmeans_assign_reference(x.contiguous().reshape(6, 30, 64), cent)
    assert (labels == ref).float().mean() > 0.9


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("b,h,n,d,c", SHAPES)
def test_segment_mean_kernel_equals_reference(b, h, n, d, c, dtype):
    x = torch.randn(b, h, n, d).to(dtype)
    labels = torch.randint(0, max(1, c - 2), (b * h, n), dtype=torch.int32)  # last clusters empty
    cent = torch.randn(b * h, c, d)
    perm, offsets = sort_by_cluster(labels, c, Workspace(), "t")
    got = cent.clone()
    kmeans_update(x, perm, offsets, got, labels)
    want = kmeans_update_reference(x.reshape(b * h, n, d), labels, cent)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[:, c - 2:], cent[:, c - 2:])  # empty clusters keep their centroid


@pytest.mark.parametrize("chunk", [16, 64])
def test_segment_mean_in_pieces_equals_reference(chunk, monkeypatch):
    # UPDATE_CHUNK = R: clusters are summed in pieces between cuts of the sorted order every R tokens, and the last
    # piece of a cluster to take a ticket adds them; uneven clusters (one holding most tokens over many cuts, small
    # ones within one piece or across one cut, empty ones), the prepared copies for the next assign, and the
    # tickets back at zero for the next launch
    import svg2core.ops.kmeans.kmeans as km

    monkeypatch.setattr(km, "UPDATE_CHUNK", chunk)
    b, h, n, d, c = 2, 2, 301, 64, 9
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(b, h, n, d, generator=gen).to(torch.bfloat16)
    big = torch.rand(b * h, n, generator=gen) < 0.7
    labels = torch.where(big, 0, torch.randint(1, c - 2, (b * h, n), generator=gen)).int()  # 7, 8 empty
    cent = torch.randn(b * h, c, d, generator=gen)
    perm, offsets = sort_by_cluster(labels, c, Workspace(), "t")
    ws = Workspace()
    kmeans_assign(x, cent, torch.empty_like(labels), workspace=ws)  # prepares the old centroids
    got = cent.clone()
    kmeans_update(x, perm, offsets, got, labels, workspace=ws, prepare=True)
    want = kmeans_update_reference(x.reshape(b * h, n, d), labels, cent)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[:, c - 2:], cent[:, c - 2:])  # empty clusters keep their centroid
    ticket = ws.constant(f"kmeans.update_ticket:{b * h}x{c}:cpu", lambda: None)
    assert ticket is not None and not ticket.any()
    again = cent.clone()  # a second launch with the same workspace (tickets reused) gives the same centroids
    kmeans_update(x, perm, offsets, again, labels, workspace=ws, prepare=True)
    assert torch.equal(again, got)
    fresh = Workspace()
    kmeans_assign(x, got, torch.empty_like(labels), workspace=fresh)
    lp = f"kmeans.cent_lp.{x.dtype}"
    assert torch.equal(ws.buffer(lp, (b * h, c, d), x.dtype, "cpu"), fresh.buffer(lp, (b * h, c, d), x.dtype, "cpu"))
    # the same centroids as one program per cluster, up to the order of the additions
    monkeypatch.setattr(km, "UPDATE_CHUNK", 0)
    whole = cent.clone()
    kmeans_update(x, perm, offsets, whole)
    torch.testing.assert_close(got, whole, rtol=1e-6, atol=1e-6)


def test_batched_kmeans_updates_in_parts_from_the_callers_workspace(monkeypatch):
    # every update of a call, the last included, takes its part sums and tickets from the caller's workspace: a
    # second call of the same shape allocates nothing (the sparse path must run inside a CUDA graph)
    import svg2core.ops.kmeans.kmeans as km

    monkeypatch.setattr(km, "UPDATE_CHUNK", 16)
    b, h, n, d, c = 1, 2, 200, 64, 3
    gen = torch.Generator().manual_seed(6)
    # well separated blobs of uneven sizes (no near-ties for the low-precision dots), each summed in several parts
    centers = torch.randn(b * h, c, d, generator=gen) * 10
    which = torch.tensor([0] * 120 + [1] * 50 + [2] * 30)[torch.randperm(n, generator=gen)]
    x = (centers[:, which] + 0.1 * torch.randn(b * h, n, d, generator=gen)).reshape(b, h, n, d).to(torch.bfloat16)
    ws = Workspace()
    cent = centers + torch.randn(b * h, c, d, generator=gen)  # one start near each blob
    batched_kmeans(x, cent, 2, ws, "q")
    allocations = ws.allocations
    assert ws.buffer("q.update_parts", (b * h, c + 12, d), torch.float32, "cpu") is not None
    assert ws.allocations == allocations  # the parts buffer is the call's own
    start = cent.clone()
    labels, _, _ = batched_kmeans(x, cent, 2, ws, "q")
    assert ws.allocations == allocations
    ref_labels, ref_cent = kmeans_reference(x.reshape(b * h, n, d), start, 2)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(cent, ref_cent, rtol=1e-5, atol=1e-5)


def test_batched_kmeans_matches_reference_iterations():
    b, h, n, d, c = 1, 2, 48, 64, 4
    # well separated blobs: no near-ties, so low-precision dots cannot change an assignment
    centers = torch.randn(b * h, c, d) * 10
    x = (centers.repeat_interleave(n // c, dim=1) + 0.1 * torch.randn(b * h, n, d)).reshape(b, h, n, d).half()
    start = init_centroids_strided_reference(x.reshape(b * h, n, d), c)
    cent = start.clone()
    labels, perm, offsets = batched_kmeans(x, cent, 3, Workspace(), "q")
    ref_labels, ref_cent = kmeans_reference(x.reshape(b * h, n, d), start, 3)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(cent, ref_cent, rtol=1e-5, atol=1e-5)
    sizes = offsets[:, 1:] - offsets[:, :-1]
    assert torch.equal(sizes, torch.stack([torch.bincount(r.long(), minlength=c) for r in labels]).int())


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_constant_tokens_give_finite_centroids(backend):
    x = torch.full((1, 2, 21, 64), 0.5, dtype=torch.bfloat16)
    cent = torch.empty(2, 6, 64)
    init_centroids_strided(x, 6, cent)
    labels, _, offsets = batched_kmeans(x, cent, 2, Workspace(), "q", backend)
    assert torch.isfinite(cent).all()
    assert torch.all(labels == 0)  # all distances tie: the lowest cluster id wins
    assert torch.equal(offsets[:, 1], torch.full((2,), 21, dtype=torch.int32))
    torch.testing.assert_close(cent, torch.full_like(cent, 0.5))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_zero_iterations_only_assign(backend):
    x = torch.randn(1, 1, 30, 64).to(torch.bfloat16)
    cent = torch.randn(1, 5, 64)
    before = cent.clone()
    labels, _, _ = batched_kmeans(x, cent, 0, Workspace(), "k", backend)
    assert torch.equal(cent, before)
    assert labels.shape == (1, 30)


def test_strided_init_is_deterministic_and_matches_reference():
    x = torch.randn(2, 2, 50, 64).to(torch.bfloat16)
    out = torch.empty(4, 7, 64)
    init_centroids_strided(x, 7, out)
    assert torch.equal(out, init_centroids_strided_reference(x.reshape(4, 50, 64), 7))
    assert torch.equal(out[:, 0], x.reshape(4, 50, 64)[:, 0].float())


def test_iterations_reduce_inertia():
    x = torch.randn(1, 1, 200, 64).to(torch.bfloat16)
    start = torch.empty(1, 8, 64)
    init_centroids_strided(x, 8, start)
    inertia = []
    for iters in (0, 3):
        cent = start.clone()
        labels, _, _ = batched_kmeans(x, cent, iters, Workspace(), "q", "reference")
        inertia.append(_dist(x.reshape(1, 200, 64), cent, labels).sum())
    assert inertia[1] < inertia[0]


@pytest.mark.parametrize("b,h,n,d,c", SHAPES)
def test_assign_kernel_writes_block_histograms(b, h, n, d, c, packed):
    x = torch.randn(b, h, n, d).to(torch.bfloat16)
    cent = torch.randn(b * h, c, d)
    tile = AssignTile(block_n=16, block_c=16, num_warps=4, num_stages=1)
    nb = -(-n // 16)
    counts = torch.full((b * h, nb * c), -1, dtype=torch.int32)
    labels = torch.empty(b * h, n, dtype=torch.int32)
    kmeans_assign(x, cent, labels, tile=tile, block_counts=counts)
    want = torch.stack([
        torch.stack([torch.bincount(labels[r, i * 16:(i + 1) * 16].long(), minlength=c) for i in range(nb)])
        for r in range(b * h)
    ]).int().reshape(b * h, nb * c)
    assert torch.equal(counts, want)
    with pytest.raises(ValueError, match="block_counts"):
        kmeans_assign(x, cent, labels, tile=tile, block_counts=counts[:, :-1])


def test_update_prepares_the_next_assign():
    """kmeans_update(prepare=True) leaves the same centroid copies the preparation kernel writes."""
    b, h, n, d, c = 1, 2, 50, 64, 6
    x = torch.randn(b, h, n, d).to(torch.bfloat16)
    cent = torch.randn(b * h, c, d)
    labels = torch.randint(0, c - 1, (b * h, n), dtype=torch.int32)  # last cluster empty
    ws = Workspace()
    kmeans_assign(x, cent, torch.empty_like(labels), workspace=ws)  # prepares the old centroids
    perm, offsets = sort_by_cluster(labels, c, Workspace(), "t")
    kmeans_update(x, perm, offsets, cent, workspace=ws, prepare=True)
    got_lp = ws.buffer(f"kmeans.cent_lp.{x.dtype}", (b * h, c, d), x.dtype, "cpu").clone()
    got_sq = ws.buffer("kmeans.cent_sq", (b * h, c), torch.float32, "cpu").clone()
    fresh = Workspace()
    kmeans_assign(x, cent, torch.empty_like(labels), workspace=fresh)
    assert torch.equal(got_lp, fresh.buffer(f"kmeans.cent_lp.{x.dtype}", (b * h, c, d), x.dtype, "cpu"))
    torch.testing.assert_close(got_sq, fresh.buffer("kmeans.cent_sq", (b * h, c), torch.float32, "cpu"),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("iters,c", [(0, 40), (1, 40), (3, 40), (1, 1500)],
                         ids=["0-iters", "1-iter", "3-iters", "1500-clusters"])
def test_fused_counting_sort_path_equals_radix_sort_path(iters, c, monkeypatch):
    # 1500 clusters over 300 tokens: most clusters empty, 2048 histogram bins per block
    import svg2core.ops.kmeans.kmeans as km

    x = torch.randn(1, 2, 300, 64).to(torch.bfloat16)
    start = torch.randn(2, c, 64) if c > 300 else torch.empty(2, c, 64)
    if c <= 300:
        init_centroids_strided(x, c, start)
    out = {}
    for method, max_clusters in (("flat", 0), ("count", 1 << 20)):
        monkeypatch.setattr(km, "FUSED_SORT_MAX_CLUSTERS", max_clusters)
        cent = start.clone()
        labels, perm, offsets = batched_kmeans(x, cent, iters, Workspace(), "k")
        out[method] = (labels.clone(), perm.clone(), offsets.clone(), cent)
    for a, bb in zip(out["flat"], out["count"], strict=True):
        assert torch.equal(a, bb)
    p_ref, o_ref = sort_by_cluster_reference(out["count"][0], c)
    assert torch.equal(out["count"][1], p_ref) and torch.equal(out["count"][2], o_ref)


@pytest.mark.parametrize("chunk", [0, 16])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_update_writes_the_rows_in_perm_order(chunk, backend, monkeypatch):
    # rows_out: the update's reads of x (every row once, in the sorted order, whether a cluster is summed whole or
    # in pieces) also written at their sorted position: exactly the permutation's gather, from a strided view of
    # x (the video tokens of a longer sequence), with empty and uneven clusters
    monkeypatch.setattr(km, "UPDATE_CHUNK", chunk)
    b, h, n, d, c = 2, 2, 301, 64, 9
    gen = torch.Generator().manual_seed(8)
    full = torch.randn(b, h, n + 7, d, generator=gen).to(torch.bfloat16)
    x = full[:, :, :n]
    big = torch.rand(b * h, n, generator=gen) < 0.6
    labels = torch.where(big, 0, torch.randint(1, c - 2, (b * h, n), generator=gen)).int()  # 7, 8 empty
    perm, offsets = sort_by_cluster(labels, c, Workspace(), "t")
    cent = torch.randn(b * h, c, d, generator=gen)
    rows = torch.full((b * h, n, d), float("nan"), dtype=x.dtype)
    got = cent.clone()
    kmeans_update(x, perm, offsets, got, labels, backend, Workspace(), rows_out=rows)
    assert torch.equal(rows, gather_rows_reference(x, perm))
    plain = cent.clone()
    kmeans_update(x, perm, offsets, plain, labels, backend, Workspace())
    assert torch.equal(got, plain)  # the centroids do not change
    with pytest.raises(ValueError, match="rows_out"):
        kmeans_update(x, perm, offsets, got, labels, backend, Workspace(), rows_out=rows.float())


@pytest.mark.parametrize("chunk", [0, 32], ids=["whole-clusters", "pieces"])
def test_update_in_reverse_head_order_is_the_same(chunk, monkeypatch):
    # reverse_heads (an L2 schedule: the heads in reverse grid order) changes neither the centroids, nor the rows
    # written, nor the tickets of the pieces (back to zero for the next launch)
    monkeypatch.setattr(km, "UPDATE_CHUNK", chunk)
    b, h, n, d, c = 2, 3, 257, 64, 6
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(b, h, n, d, generator=gen).to(torch.bfloat16)
    labels = torch.randint(0, c - 1, (b * h, n), generator=gen).int()  # cluster 5 empty
    perm, offsets = sort_by_cluster(labels, c, Workspace(), "t")
    cent = torch.randn(b * h, c, d, generator=gen)
    results = []
    for reverse in (False, True):
        ws = Workspace()
        got, rows = cent.clone(), torch.empty(b * h, n, d, dtype=x.dtype)
        kmeans_update(x, perm, offsets, got, labels, "triton", ws, name="t", rows_out=rows, reverse_heads=reverse)
        kmeans_update(x, perm, offsets, got, labels, "triton", ws, name="t", reverse_heads=reverse)  # tickets reset
        results.append((got, rows))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert torch.equal(results[1][1], gather_rows_reference(x, perm))


def test_batched_kmeans_writes_the_rows_of_its_final_perm():
    b, h, n, d, c = 1, 2, 200, 64, 5
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(b, h, n, d, generator=gen).to(torch.bfloat16)
    ws = Workspace()
    cent = init_centroids_strided_reference(x.reshape(b * h, n, d), c)
    rows = torch.empty(b * h, n, d, dtype=x.dtype)
    _, perm, _ = batched_kmeans(x, cent, 2, ws, "k", rows_out=rows)
    assert torch.equal(rows, gather_rows_reference(x, perm))
    with pytest.raises(ValueError, match="iters must be >= 1"):
        batched_kmeans(x, cent, 0, ws, "k", rows_out=rows)


@pytest.mark.parametrize("c,tile", [(5, None), (70, None), (70, AssignTile(16, 32, 4, 2))],
                         ids=["one-tile", "two-tiles", "32-centroid-tiles"])
def test_centroid_copies_padded_to_whole_tiles_change_nothing(c, tile, monkeypatch):
    # ASSIGN_PAD_C: the prepared centroid copies padded to whole tiles (zero rows, norm +inf) let the assign load
    # them without masks (EVEN_C); labels, block counts, and whole k-means runs (whose updates write the next
    # assign's copies into the padded buffers) are the same as unpadded
    b, h, n, d = 1, 2, 150, 64
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(b, h, n, d, generator=gen).to(torch.bfloat16)
    start = init_centroids_strided_reference(x.reshape(b * h, n, d), c)
    tile = tile or km.ASSIGN_TILE
    results = {}
    for pad in (False, True):
        monkeypatch.setattr(km, "ASSIGN_PAD_C", pad)
        labels = torch.empty(b * h, n, dtype=torch.int32)
        counts = torch.empty(b * h, -(-n // tile.block_n) * c, dtype=torch.int32)
        ws = Workspace()
        kmeans_assign(x, start, labels, workspace=ws, tile=tile, block_counts=counts)
        sq = ws.buffer("kmeans.cent_sq", (b * h, km._prepared_rows(c)), torch.float32, "cpu")
        assert sq.shape[1] == (64 * -(-c // 64) if pad else c) and bool(torch.isinf(sq[:, c:]).all())
        cent = start.clone()
        out = batched_kmeans(x, cent, 3, Workspace(), "k")
        results[pad] = (labels, counts, *out, cent)
    for a, z in zip(results[False], results[True], strict=True):
        assert torch.equal(a, z)


def _blobs(b, h, n, d, c, seed, spread=0.1):
    """Points in ``c`` well separated blobs, tokens interleaved, and a start near the blob centres (one centroid per
    blob: no near-ties, so low-precision dots cannot change an assignment)."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(b * h, c, d, generator=gen) * 10
    idx = torch.arange(n) % c
    x = centers[:, idx] + spread * torch.randn(b * h, n, d, generator=gen)
    return x.reshape(b, h, n, d).half(), centers + 0.5 * torch.randn(b * h, c, d, generator=gen)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("s,iters", [(2, 3), (4, 2)])
def test_subsampled_iterations_then_one_full_iteration(backend, s, iters):
    # kmeans_subsample: iterations 1..iters-1 on x[:, :, ::s], the last on every token. On unclustered data (where
    # the sample's means differ from all tokens'): the same as running the two parts one after the other on the same
    # backend, not what iters plain iterations give, and the clustering returned is all tokens' (its sizes sum to N,
    # the centroids are its clusters' means)
    b, h, n, d, c = 1, 2, 97, 64, 5
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(b, h, n, d, generator=gen).half()
    start = init_centroids_strided_reference(x.reshape(b * h, n, d), c)
    cent = start.clone()
    labels, perm, offsets = batched_kmeans(x, cent, iters, Workspace(), "q", backend, subsample=s)
    two_parts = start.clone()
    batched_kmeans(x[:, :, ::s], two_parts, iters - 1, Workspace(), "q", backend)
    parts_labels, _, parts_offsets = batched_kmeans(x, two_parts, 1, Workspace(), "q", backend)
    assert labels.shape == (b * h, n) and torch.equal(labels, parts_labels)
    assert torch.equal(offsets, parts_offsets) and torch.equal(offsets[:, -1], torch.full((b * h,), n, dtype=torch.int32))
    assert torch.equal(cent, two_parts)
    plain = start.clone()
    batched_kmeans(x, plain, iters, Workspace(), "q", backend)
    assert not torch.allclose(cent, plain, atol=1e-3)  # the sampled iterations did run on the sample
    xf = x.reshape(b * h, n, d).float()
    for bh in range(b * h):
        for j in range(c):
            members = xf[bh][labels[bh] == j]
            if len(members):
                torch.testing.assert_close(cent[bh, j], members.mean(0), rtol=1e-4, atol=1e-4)
    assert torch.equal(torch.sort(perm, dim=-1).values, torch.arange(n, dtype=torch.int32).expand(b * h, n))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_subsample_changes_nothing_below_two_iterations(backend):
    x, start = _blobs(1, 2, 60, 64, 4, seed=4, spread=1.0)
    for iters in (0, 1):
        plain, sampled = start.clone(), start.clone()
        a = [t.clone() for t in batched_kmeans(x, plain, iters, Workspace(), "k", backend)]
        b_ = batched_kmeans(x, sampled, iters, Workspace(), "k", backend, subsample=4)
        assert all(torch.equal(u, w) for u, w in zip(a, b_, strict=True)) and torch.equal(plain, sampled)


def test_subsample_in_a_triton_call_matches_the_reference_call():
    # the Triton path shares the workspace buffers of the sampled and the full iterations (different sizes, one
    # after the other), and the last sampled update prepares the full assign's centroid copies: with the rows it
    # writes (fused key gather), equal to the reference on blobs
    b, h, n, d, c = 2, 2, 130, 64, 6
    x, start = _blobs(b, h, n, d, c, seed=5)
    ws = Workspace()
    for _ in range(2):  # the second call runs on the buffers the first sized
        cent = start.clone()
        rows = torch.empty(b * h, n, d, dtype=x.dtype)
        labels, perm, _ = batched_kmeans(x, cent, 3, ws, "k", rows_out=rows, subsample=3)
        ref_cent = start.clone()
        ref_labels, _, _ = batched_kmeans(x, ref_cent, 3, Workspace(), "k", "reference", subsample=3)
        assert torch.equal(labels, ref_labels)
        torch.testing.assert_close(cent, ref_cent, rtol=1e-5, atol=1e-5)
        assert torch.equal(rows, gather_rows_reference(x, perm))
    with pytest.raises(ValueError, match="subsample: must be an int >= 1"):
        batched_kmeans(x, start.clone(), 2, ws, "k", subsample=0)


def test_a_call_with_kmeans_subsample_on_both_backends():
    # svg2_attention with kmeans_subsample: the query and key k-means both take it; both backends give the same density
    # and output, cold and warm, and the cached centroids are the means of the call's final clusters (every token's)
    from svg2core import LayerState, SVG2Config, svg2_attention

    b, h, n, d = 1, 2, 120, 64
    q, cq = _blobs(b, h, n, d, 3, seed=6)
    k, ck = _blobs(b, h, n, d, 4, seed=7)
    v = torch.randn(b, h, n, d, generator=torch.Generator().manual_seed(8)).half()
    cfg = SVG2Config(mode="fixed_density", target_density=0.5, num_q_clusters=3, num_k_clusters=4,
                     kmeans_iters_init=4, kmeans_iters=2, kmeans_subsample=3)
    outs = {}
    for backend in ("reference", "triton"):
        state, ws = LayerState(), Workspace()
        outs[backend] = [svg2_attention(q, k, v, cfg, state, workspace=ws, backend=backend) for _ in range(2)]
        cent = state.get(0)
        labels = ws.buffer("q.labels", (b * h, n), torch.int32, q.device) if backend == "triton" else None
        if labels is not None:  # the Triton path's final query labels are every token's
            for j in range(3):
                members = q.reshape(b * h, n, d)[0][labels[0] == j].float()
                torch.testing.assert_close(cent.q[0, 0, j], members.mean(0), rtol=1e-4, atol=1e-4)
    for (o_ref, d_ref), (o_tri, d_tri) in zip(outs["reference"], outs["triton"], strict=True):
        torch.testing.assert_close(d_tri, d_ref)
        torch.testing.assert_close(o_tri.float(), o_ref.float(), atol=2e-2, rtol=2e-2)


def test_a_request_sets_kmeans_subsample():
    from pydantic import ValidationError

    from svg2core import SVG2Config
    from svg2core.integration import SparsityPlan
    from worker.spec import SparsitySettings, resolve_sparsity

    with pytest.raises(ValueError, match=r"kmeans_subsample: must be in \[1, 64\]"):
        SVG2Config(kmeans_subsample=0)
    with pytest.raises(ValidationError, match="kmeans_subsample"):
        resolve_sparsity({"preset": "balanced", "kmeans_subsample": 65})
    settings = resolve_sparsity({"preset": "balanced", "kmeans_subsample": 2})
    assert SparsityPlan.from_settings(settings).config.kmeans_subsample == 2
    assert SparsitySettings().kmeans_subsample == 1


def test_kmeans_subsample_leaves_a_layers_cold_call_on_every_token():
    # A layer's cold call clusters every token whatever kmeans_subsample (a sampled cold start costs the cold call
    # accuracy that the next warm steps inherit); its warm calls take the sample.
    from svg2core import LayerState, SVG2Config, svg2_attention

    b, h, n, d, cq = 1, 2, 96, 64, 6
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(b, h, n, d, generator=gen).half() for _ in range(3))
    full = SVG2Config(mode="fixed_density", target_density=0.5, num_q_clusters=cq, num_k_clusters=8,
                      kmeans_iters_init=5, kmeans_iters=3)
    sampled = full.replace(kmeans_subsample=3)
    states = {"full": LayerState(), "sampled": LayerState()}
    cold = {name: svg2_attention(q, k, v, cfg, states[name], backend="reference")
            for name, cfg in (("full", full), ("sampled", sampled))}
    assert torch.equal(cold["full"][0], cold["sampled"][0])
    assert torch.equal(states["full"].get(0).q, states["sampled"].get(0).q)
    assert torch.equal(states["full"].get(0).k, states["sampled"].get(0).k)

    start = states["sampled"].get(0).q.view(b * h, cq, d).clone()
    svg2_attention(q, k, v, sampled, states["sampled"], backend="reference")
    svg2_attention(q, k, v, full, states["full"], backend="reference")
    expected = {s: start.clone() for s in (1, 3)}
    for s, cent in expected.items():
        batched_kmeans(q, cent, 3, Workspace(), "q", "reference", subsample=s)
    assert not torch.equal(expected[1], expected[3])  # the sample changes this data's clusters
    torch.testing.assert_close(states["sampled"].get(0).q.view(b * h, cq, d), expected[3])
    torch.testing.assert_close(states["full"].get(0).q.view(b * h, cq, d), expected[1])
