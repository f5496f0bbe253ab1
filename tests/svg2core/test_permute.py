"""Permutation stage: stable sort + offsets (device path vs reference) and the Triton K/V gather."""

from __future__ import annotations

import pytest
import torch

from svg2core.ops.permute import gather_kv, gather_rows_reference, sort_by_cluster, sort_by_cluster_reference
from svg2core.state import Workspace


@pytest.mark.parametrize("method", ["rows", "flat", "count", "count-multiblock"])
@pytest.mark.parametrize("bh,n,c", [(1, 1, 1), (3, 41, 7), (2, 100, 130)], ids=["single", "ragged", "empty-clusters"])
def test_sort_by_cluster_equals_reference_and_is_stable(bh, n, c, method):
    labels = torch.randint(0, max(1, c // 3), (bh, n), dtype=torch.int32)  # many clusters left empty
    block = 16 if method == "count-multiblock" else None  # several blocks per row: cross-block order
    perm, offsets = sort_by_cluster(labels, c, Workspace(), "q", method=method.split("-")[0], count_block=block)
    p_ref, o_ref = sort_by_cluster_reference(labels, c)
    assert torch.equal(perm, p_ref) and torch.equal(offsets, o_ref)
    assert torch.all(offsets[:, -1] == n)
    for r in range(bh):
        sorted_labels = labels[r][perm[r].long()]
        assert torch.all(torch.diff(sorted_labels) >= 0)
        for cl in range(c):  # each segment holds exactly that cluster's tokens, in token order
            seg = perm[r, offsets[r, cl]:offsets[r, cl + 1]]
            assert torch.equal(seg, torch.nonzero(labels[r] == cl).flatten().int())


@pytest.mark.parametrize("scan", [(32, 128), (128, 32), (256, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_counting_sort_by_scan_tile(monkeypatch, scan):
    # the scan's tile (blocks x clusters a program; probe_sort times the shapes): 40 blocks of 16 tokens and 130
    # clusters, so that every tile takes several programs over the clusters, and the default one several steps
    import svg2core.ops.permute.permute as pm

    monkeypatch.setattr(pm, "_SCAN_BLOCK_B", scan[0])
    monkeypatch.setattr(pm, "_SCAN_BLOCK_C", scan[1])
    labels = torch.randint(0, 130, (2, 40 * 16 - 3), dtype=torch.int32)
    perm, offsets = sort_by_cluster(labels, 130, Workspace(), "k", method="count", count_block=16)
    p_ref, o_ref = sort_by_cluster_reference(labels, 130)
    assert torch.equal(perm, p_ref) and torch.equal(offsets, o_ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("b,h,n,nv,d", [(1, 1, 7, 7, 64), (2, 3, 70, 65, 128)], ids=["tiny", "text-tail"])
def test_gather_kernel_equals_reference(b, h, n, nv, d, dtype):
    k = torch.randn(b, n, h, d).to(dtype).transpose(1, 2)  # strided (B, H, N, D) view
    v = torch.randn(b, h, n, d).to(dtype)
    perm = torch.stack([torch.randperm(nv) for _ in range(b * h)]).int()
    ws = Workspace()
    ws.buffer("kp", (b * h, nv, d), dtype, "cpu").fill_(float("nan"))  # poison
    kp, vp = gather_kv(k, v, perm, ws)
    assert torch.equal(kp, gather_rows_reference(k, perm))
    assert torch.equal(vp, gather_rows_reference(v, perm))


@pytest.mark.parametrize("gather_k", [True, False], ids=["k-and-v", "v-only"])
def test_gather_in_reverse_head_order_writes_the_same_rows(gather_k):
    # reverse_heads only changes which head's programs start first (an L2 schedule)
    b, h, n, d = 2, 3, 70, 64
    k, v = (torch.randn(b, h, n, d).to(torch.bfloat16) for _ in range(2))
    perm = torch.stack([torch.randperm(n) for _ in range(b * h)]).int()
    ws = Workspace()
    ws.buffer("kp", (b * h, n, d), k.dtype, "cpu").zero_()
    _, vp = gather_kv(k, v, perm, ws, gather_k=gather_k, reverse_heads=True)
    assert torch.equal(vp, gather_rows_reference(v, perm))
    kp = ws.buffer("kp", (b * h, n, d), k.dtype, "cpu")
    assert torch.equal(kp, gather_rows_reference(k, perm)) if gather_k else not kp.any()


def test_workspace_reuses_buffers_across_calls():
    ws = Workspace()
    sort_by_cluster(torch.randint(0, 5, (2, 50), dtype=torch.int32), 5, ws, "q")
    allocated = ws.allocations
    perm, _ = sort_by_cluster(torch.randint(0, 5, (2, 50), dtype=torch.int32), 5, ws, "q")
    assert ws.allocations == allocated  # same shape: nothing new
    small, _ = sort_by_cluster(torch.randint(0, 5, (2, 30), dtype=torch.int32), 5, ws, "q")
    assert small.data_ptr() == perm.data_ptr()  # a smaller shape fits in the same buffer


def test_workspace_hands_out_one_view_per_request_until_it_grows():
    ws = Workspace()
    a = ws.buffer("x", (4, 8), torch.int32, "cpu")
    assert ws.buffer("x", (4, 8), torch.int32, "cpu") is a  # the same request: the same view, nothing allocated
    assert ws.buffer("x", [4, 8], torch.int32, "cpu") is a  # a list names the same shape
    b = ws.buffer("x", (2, 8), torch.int32, "cpu")
    assert b is not a and b.shape == (2, 8) and b.data_ptr() == a.data_ptr()
    big = ws.buffer("x", (64, 8), torch.int32, "cpu")  # re-allocated: the old views are forgotten
    assert ws.allocations == 2 and big.data_ptr() != a.data_ptr()
    again = ws.buffer("x", (4, 8), torch.int32, "cpu")
    assert again is not a and again.data_ptr() == big.data_ptr()
    ws.clear()
    assert ws.buffer("x", (4, 8), torch.int32, "cpu") is not again and ws.allocations == 3  # cleared: a new buffer


def test_a_workspace_view_from_inference_mode_is_written_outside_it():
    # one workspace serves jobs under inference_mode and under no_grad: the view handed out in the first is the
    # one the second writes
    ws = Workspace()
    with torch.inference_mode():
        inside = ws.buffer("x", (3,), torch.float32, "cpu")
        inside.fill_(1.0)
    with torch.no_grad():
        outside = ws.buffer("x", (3,), torch.float32, "cpu")
        outside.fill_(2.0)
    assert outside is inside and not inside.is_inference() and inside.tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("bh,n,c,block", [(2, 1000, 130, 16), (1, 300, 3, 64), (3, 17, 1, 16)],
                         ids=["blocks>scan-tile,clusters>scan-tile", "few-clusters", "one-cluster"])
def test_counting_sort_with_given_block_counts(bh, n, c, block):
    """The scan over many blocks (more than one scan tile) and a caller-provided histogram."""
    labels = torch.randint(0, max(1, c - 2), (bh, n), dtype=torch.int32)  # last clusters empty
    nb = -(-n // block)
    counts = torch.stack([
        torch.stack([torch.bincount(labels[r, i * block:(i + 1) * block].long(), minlength=c) for i in range(nb)])
        for r in range(bh)
    ]).int().reshape(bh, nb * c)  # block-major: counts[r, blk * C + c]
    ws = Workspace()
    ws.buffer("q.perm", (bh, n), torch.int32, "cpu").fill_(-1)  # poison
    ws.buffer("q.offsets", (bh, c + 1), torch.int32, "cpu").fill_(-1)
    perm, offsets = sort_by_cluster(labels, c, ws, "q", method="count", count_block=block, block_counts=counts)
    p_ref, o_ref = sort_by_cluster_reference(labels, c)
    assert torch.equal(perm, p_ref) and torch.equal(offsets, o_ref)
    own, _ = sort_by_cluster(labels, c, Workspace(), "q", method="count", count_block=block)
    assert torch.equal(own, p_ref)


def test_counting_sort_rejects_a_mis_sized_histogram():
    labels = torch.zeros(1, 40, dtype=torch.int32)
    with pytest.raises(ValueError, match="block_counts"):
        sort_by_cluster(labels, 4, Workspace(), "q", method="count", count_block=16,
                        block_counts=torch.zeros(1, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="block_counts"):
        sort_by_cluster(labels, 4, Workspace(), "q", method="flat", block_counts=torch.zeros(1, 12, dtype=torch.int32))
