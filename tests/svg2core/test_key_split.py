"""The key split of the Gluon path (svg2core/ops/sparse_attn/key_split.py): the selection split into two halves of
each head's keys, and the merge of the two partial results. On CPU the Triton kernels run under the interpreter;
the Gluon launches themselves are checked on a Hopper GPU (test_sparse_attn_hopper.py)."""

from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from test_sparse_attn import make_inputs  # noqa: E402

from svg2core.ops.sparse_attn import sparse_attention_mask, sparse_attention_reference  # noqa: E402
from svg2core.ops.sparse_attn.key_split import (  # noqa: E402
    merge_halves,
    merge_halves_reference,
    split_midpoint,
    split_selection,
    split_selection_reference,
)
from svg2core.ops.sparse_attn.reference import selected_cluster_mask  # noqa: E402
from svg2core.ops.sparse_attn.wrapper import KernelConfig, key_split_applies  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _layout(seed, nv=300, cq=5, ck=37, density=0.4, empty_clusters=False):
    args, _ = make_inputs(1, 2, nv, 0, 64, cq, ck, dtype=torch.float32, density=density, seed=seed,
                          empty_clusters=empty_clusters)
    return args


@pytest.mark.parametrize("seed,ck,density,empty", [(0, 37, 0.4, False), (1, 9, 1.0, True), (2, 37, 0.05, False),
                                                   (3, 1500, 0.5, False)])
def test_split_selection_matches_its_reference(seed, ck, density, empty):
    # ck = 1500: rows longer than one block of 1024 (the kernel carries its counts across blocks)
    a = _layout(seed, nv=3000 if ck > 1000 else 300, ck=ck, density=density, empty_clusters=empty)
    bh, cq, _ = a["sel_idx"].shape
    nv = a["q_perm"].shape[1]
    got = tuple((torch.full((bh, cq, ck), -7, dtype=torch.int32, device=DEVICE),
                 torch.full((bh, cq), -7, dtype=torch.int32, device=DEVICE),
                 torch.full((bh, cq, ck + 1), -7, dtype=torch.int32, device=DEVICE)) for _ in (0, 1))
    split_selection(a["sel_idx"], a["sel_count"], a["sel_cum"], a["k_offsets"], nv, got)
    ref = split_selection_reference(a["sel_idx"], a["sel_count"], a["sel_cum"], a["k_offsets"], nv)
    j = torch.arange(ck + 1, device=DEVICE)
    for (idx, cnt, cum), (r_idx, r_cnt, r_cum) in zip(got, ref, strict=True):
        assert torch.equal(cnt, r_cnt)
        used = j[:ck] < cnt[..., None]
        assert torch.equal(torch.where(used, idx, 0), r_idx)
        assert torch.equal(torch.where(j <= cnt[..., None], cum, 0), r_cum)
    # some query clusters select keys on both sides of the midpoint (the cases are not trivial)
    assert bool(((got[0][1] > 0) & (got[1][1] > 0)).any())


def test_halves_partition_the_selection_at_the_midpoint():
    a = _layout(4, ck=37, density=0.6)
    nv = a["q_perm"].shape[1]
    (i0, c0, s0), (i1, c1, s1) = split_selection_reference(a["sel_idx"], a["sel_count"], a["sel_cum"],
                                                           a["k_offsets"], nv)
    full = selected_cluster_mask(a["sel_idx"], a["sel_count"])
    m0, m1 = selected_cluster_mask(i0, c0), selected_cluster_mask(i1, c1)
    assert torch.equal(m0 | m1, full) and not bool((m0 & m1).any())
    starts = a["k_offsets"][:, :-1].long()[:, None, :].expand_as(full)
    assert bool((starts[m0] < split_midpoint(nv)).all()) and bool((starts[m1] >= split_midpoint(nv)).all())
    # each half's selected tokens add up to the whole selection's
    total = torch.gather(a["sel_cum"], 2, a["sel_count"].long()[..., None])[..., 0]
    halves = (torch.gather(s0, 2, c0.long()[..., None])[..., 0] + torch.gather(s1, 2, c1.long()[..., None])[..., 0])
    assert torch.equal(halves, total)


def _attention_with_lse(q, k, v, kp, vp, layout, sel, t, kpm, scale):
    """fp32 attention of every query row under one selection (+ text keys when t > 0), and each row's log2-sum-exp
    in the kernel's units (scores x scale x log2 e), -inf for rows without keys."""
    b, h, n, d = q.shape
    nv = n - t
    mask = sparse_attention_mask(layout["q_perm"], layout["q_offsets"], layout["k_offsets"], sel[0], sel[1],
                                 num_dense_tokens=t, key_padding_mask=kpm, heads=h)  # (BH, N, Nv + T)
    keys = torch.cat([kp, k.reshape(b * h, n, d)[:, nv:]], 1) if t else kp
    vals = torch.cat([vp, v.reshape(b * h, n, d)[:, nv:]], 1) if t else vp
    s = torch.einsum("bqd,bkd->bqk", q.reshape(b * h, n, d).float(), keys.float()) * scale / math.log(2)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s * math.log(2), -1) / math.log(2)
    p = torch.softmax(s * math.log(2), -1).nan_to_num(0.0)
    return torch.einsum("bqk,bkd->bqd", p, vals.float()).view(b, h, n, d), lse[:, :nv]


@pytest.mark.parametrize("t", [0, 5])
def test_merging_the_two_halves_gives_the_whole_attention(t):
    b, h, nv, d = 2, 2, 70, 64
    args, kpm = make_inputs(b, h, nv, t, d, 4, 9, dtype=torch.float32, density=0.6, seed=7 + t)
    scale = 1 / math.sqrt(d)
    halves = split_selection_reference(args["sel_idx"], args["sel_count"], args["sel_cum"], args["k_offsets"], nv)
    # the first half over the video rows only, the second with the text keys (as the two launches run)
    video = [args[x][:, :, :nv] for x in ("q", "k", "v")]
    o0, l0 = _attention_with_lse(*video, args["kp"], args["vp"], args, halves[0], 0, None, scale)
    o1, l1 = _attention_with_lse(args["q"], args["k"], args["v"], args["kp"], args["vp"], args, halves[1], t, kpm,
                                 scale)
    merged = merge_halves_reference(o0[:, :, :nv], l0, o1[:, :, :nv], l1)
    whole = sparse_attention_reference(**args, num_dense_tokens=t, key_padding_mask=kpm)
    torch.testing.assert_close(merged, whole[:, :, :nv].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_merge_kernel_matches_its_reference(dtype):
    gen = torch.Generator().manual_seed(3)
    b, h, nv, t, d = 2, 3, 45, 4, 64
    out0 = torch.randn(b, h, nv, d, generator=gen).to(dtype)
    out = torch.randn(b, h, nv + t, d, generator=gen).to(dtype)
    lse0 = torch.randn(b * h, nv, generator=gen) * 20
    lse1 = torch.randn(b * h, nv, generator=gen) * 20
    lse0[0, :5] = float("-inf")  # rows that saw no key in one half, or in both
    lse1[0, 3:8] = float("-inf")
    want = merge_halves_reference(out0.float(), lse0, out[:, :, :nv].float(), lse1)
    text_rows = out[:, :, nv:].clone()
    out0, out, lse0, lse1 = (x.to(DEVICE) for x in (out0, out, lse0, lse1))
    merge_halves(out0, lse0, out, lse1, nv)
    out = out.cpu()
    torch.testing.assert_close(out[:, :, :nv].float(), want, atol=2e-2, rtol=2e-2)
    assert torch.equal(out[:, :, nv:], text_rows)  # text rows untouched
    assert torch.equal(out[0, 0, 3:5], torch.zeros_like(out[0, 0, 3:5]))  # no key in either half: zeros


def test_auto_splits_heads_larger_than_the_l2_budget():
    auto = KernelConfig(impl="gluon", block_m=128, gluon_key_split="auto")
    assert key_split_applies(auto, 118800, 128, 2)  # HunyuanVideo 720p: 61 MB of K + V per head
    assert not key_split_applies(auto, 75600, 128, 2)  # Wan 2.1 14B 720p: 39 MB
    assert key_split_applies(KernelConfig(impl="gluon", block_m=128, gluon_key_split="on"), 1000, 128, 2)
    assert not key_split_applies(KernelConfig(impl="gluon", block_m=128, gluon_key_split="on", gluon_tile_tables="off"), 1000,
                                 128, 2)
    assert not key_split_applies(KernelConfig(impl="triton", gluon_key_split="on"), 118800, 128, 2)
    with pytest.raises(ValueError, match="gluon_key_split: must be 'auto', 'on' or 'off'"):
        KernelConfig(gluon_key_split="yes")
