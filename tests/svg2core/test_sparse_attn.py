"""Sparse attention: reference vs dense attention, and the Triton kernel vs the reference.

On a machine without a GPU the kernel runs under the Triton interpreter (TRITON_INTERPRET=1, set
before the kernel module is imported), so the shapes here are small.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from svg2core.ops.sparse_attn import (  # noqa: E402
    KernelConfig,
    sparse_attention,
    sparse_attention_mask,
    sparse_attention_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)


def make_layout(bh: int, nv: int, cq: int, ck: int, *, density: float, gen: torch.Generator,
                empty_clusters: bool = False) -> dict[str, torch.Tensor]:
    """Random cluster layout and selection in the contract's format (independent of the real stages)."""
    def clusters(c: int) -> tuple[torch.Tensor, torch.Tensor]:
        # uneven cluster sizes: labels drawn from a skewed distribution
        weights = torch.rand(bh, c, generator=gen) ** 3 + 0.02
        if empty_clusters and c > 2:
            weights[:, : c // 3] = 0.0  # these clusters get no tokens
        labels = torch.multinomial(weights, nv, replacement=True, generator=gen)  # (BH, Nv)
        perm = torch.sort(labels, dim=1, stable=True).indices
        sizes = torch.stack([torch.bincount(row, minlength=c) for row in labels])
        offsets = torch.zeros(bh, c + 1, dtype=torch.long)
        offsets[:, 1:] = sizes.cumsum(1)
        return perm, offsets

    q_perm, q_off = clusters(cq)
    k_perm, k_off = clusters(ck)
    k_sizes = k_off[:, 1:] - k_off[:, :-1]
    # per query cluster: a random order of the non-empty key clusters, keep a prefix of ~density tokens
    scores = torch.rand(bh, cq, ck, generator=gen).masked_fill(k_sizes[:, None, :] == 0, -1.0)
    order = scores.argsort(dim=2, descending=True)
    tok = torch.gather(k_sizes[:, None, :].expand(bh, cq, ck), 2, order)
    before = tok.cumsum(2) - tok
    keep = (before < density * nv) & (tok > 0)
    keep[..., 0] = True
    count = keep.sum(2)
    sel_idx = torch.where(keep, order, torch.full_like(order, 1 << 24))  # unused slots hold junk
    sel_cum = torch.zeros(bh, cq, ck + 1, dtype=torch.long)
    sel_cum[..., 1:] = (tok * keep).cumsum(2)
    return {
        "q_perm": q_perm.int(), "q_offsets": q_off.int(), "k_offsets": k_off.int(), "k_perm": k_perm,
        "sel_idx": sel_idx.int(), "sel_count": count.int(), "sel_cum": sel_cum.int(),
    }


def make_inputs(b, h, nv, t, d, cq, ck, *, dtype, density, seed, empty_clusters=False, return_perm=False):
    gen = torch.Generator().manual_seed(seed)
    n = nv + t
    q, k, v = (torch.randn(b, h, n, d, generator=gen).to(dtype) for _ in range(3))
    lay = make_layout(b * h, nv, cq, ck, density=density, gen=gen, empty_clusters=empty_clusters)
    k_perm = lay.pop("k_perm")
    idx = k_perm[..., None].expand(b * h, nv, d)
    kp = torch.gather(k[:, :, :nv].reshape(b * h, nv, d), 1, idx).contiguous()
    vp = torch.gather(v[:, :, :nv].reshape(b * h, nv, d), 1, idx).contiguous()
    kpm = None
    if t:
        kpm = torch.rand(b, t, generator=gen) < 0.7
        kpm[:, 0] = True
    args = dict(q=q, k=k, v=v, kp=kp, vp=vp, **lay)
    args = {key: x.to(DEVICE) for key, x in args.items()}
    kpm = kpm.to(DEVICE) if kpm is not None else None
    if return_perm:
        return args, kpm, k_perm.int().contiguous().to(DEVICE)
    return args, kpm


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref.float()).pow(2).mean().sqrt() / ref.float().pow(2).mean().sqrt()).item()


# ---------------------------------------------------------------------------------------- reference


def test_reference_with_everything_selected_is_dense_attention():
    b, h, nv, d = 1, 2, 40, 64
    args, _ = make_inputs(b, h, nv, 0, d, 4, 6, dtype=torch.float32, density=1.0, seed=0)
    assert bool((args["sel_count"] == (args["k_offsets"][:, 1:] > args["k_offsets"][:, :-1]).sum(1)[:, None]).all())
    ref = sparse_attention_reference(**args)
    dense = torch.nn.functional.scaled_dot_product_attention(args["q"], args["k"], args["v"])
    torch.testing.assert_close(ref, dense, atol=1e-5, rtol=1e-5)


def test_reference_matches_masked_dense_attention_with_text_tokens():
    b, h, nv, t, d = 2, 2, 37, 9, 64
    args, kpm = make_inputs(b, h, nv, t, d, 5, 7, dtype=torch.float32, density=0.3, seed=1)
    ref = sparse_attention_reference(**args, num_dense_tokens=t, key_padding_mask=kpm)
    # build the mask independently, over the ORIGINAL key order, token by token
    mask = torch.zeros(b * h, nv + t, nv + t, dtype=torch.bool)
    for bh in range(b * h):
        qo, ko = args["q_offsets"][bh].tolist(), args["k_offsets"][bh].tolist()
        k_perm = torch.empty(nv, dtype=torch.long)
        # kp row r is original key token k_perm[r]: recover it by matching rows of k
        kflat = args["k"].reshape(b * h, nv + t, d)[bh, :nv]
        for r in range(nv):
            k_perm[r] = int((kflat == args["kp"][bh, r]).all(1).nonzero()[0])
        for i in range(len(qo) - 1):
            selected = args["sel_idx"][bh, i, : args["sel_count"][bh, i]].tolist()
            for tok in args["q_perm"][bh, qo[i]:qo[i + 1]].tolist():
                for c in selected:
                    mask[bh, tok, k_perm[ko[c]:ko[c + 1]]] = True
        mask[bh, nv:, :nv] = True  # text queries see all video keys
        mask[bh, :, nv:] = kpm[bh // h][None, :]  # everyone sees the valid text keys
    s = torch.einsum("bqd,bkd->bqk", args["q"].reshape(b * h, -1, d), args["k"].reshape(b * h, -1, d)) / math.sqrt(d)
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
    expected = torch.einsum("bqk,bkd->bqd", p, args["v"].reshape(b * h, -1, d)).reshape(b, h, nv + t, d)
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=1e-5)


def test_reference_mask_rows_follow_query_index():
    args, kpm = make_inputs(1, 2, 30, 4, 64, 3, 5, dtype=torch.float32, density=0.4, seed=2)
    lay = {key: args[key] for key in ("q_perm", "q_offsets", "k_offsets", "sel_idx", "sel_count")}
    full = sparse_attention_mask(**lay, num_dense_tokens=4, key_padding_mask=kpm, heads=2)
    rows = torch.tensor([33, 0, 17, 29])
    part = sparse_attention_mask(**lay, num_dense_tokens=4, key_padding_mask=kpm, heads=2, query_index=rows)
    assert torch.equal(part, full[:, rows])
    assert 0.1 < full[:, :30, :30].float().mean().item() < 0.9  # a real sparse mask, not all or nothing


# ------------------------------------------------------------------------------------------- kernel

KERNEL_CASES = [
    # id, (b, h, nv, t, d, cq, ck, density, dtype, config, empty_clusters)
    ("clusters-smaller-than-tile", (1, 2, 70, 0, 64, 9, 12, 0.35, torch.float16, SMALL, False)),
    ("clusters-larger-than-tile", (1, 1, 90, 0, 64, 2, 3, 0.5, torch.bfloat16, SMALL, False)),
    ("ragged-empty-clusters-odd-n", (1, 2, 53, 0, 64, 7, 11, 0.3, torch.bfloat16, SMALL, True)),
    ("text-tokens-padding-mask", (1, 2, 41, 19, 64, 4, 6, 0.3, torch.float16, SMALL, False)),
    ("batch2-text-bf16", (2, 1, 33, 6, 64, 3, 5, 0.4, torch.bfloat16, SMALL, True)),
    ("d128-fp16", (1, 1, 45, 0, 128, 3, 9, 0.3, torch.float16, SMALL, False)),
    ("d128-bf16-text", (1, 1, 29, 5, 128, 4, 4, 0.5, torch.bfloat16, SMALL, False)),
    ("tiny-key-clusters-span-whole-tile", (1, 1, 64, 0, 64, 2, 48, 0.6, torch.float16, SMALL, False)),
    ("block64-config", (1, 1, 150, 7, 64, 3, 10, 0.3, torch.bfloat16, KernelConfig(64, 32, 4, 1), False)),
    ("hopper-default-tiles", (1, 1, 300, 7, 128, 2, 9, 0.5, torch.bfloat16, KernelConfig(128, 128, 8, 3, tail_m=64), False)),
]


@pytest.mark.parametrize("case", [c for _, c in KERNEL_CASES], ids=[i for i, _ in KERNEL_CASES])
def test_kernel_matches_reference(case):
    b, h, nv, t, d, cq, ck, density, dtype, cfg, empty = case
    args, kpm = make_inputs(b, h, nv, t, d, cq, ck, dtype=dtype, density=density, seed=nv + cq, empty_clusters=empty)
    out = torch.full_like(args["q"], float("nan"))  # any row the kernel fails to write stays NaN
    got = sparse_attention(**args, num_dense_tokens=t, key_padding_mask=kpm, out=out, config=cfg)
    assert got is out
    assert not torch.isnan(got).any()
    ref = sparse_attention_reference(**args, num_dense_tokens=t, key_padding_mask=kpm)
    assert rel_rms(got, ref) < 1e-2
    torch.testing.assert_close(got.float(), ref, atol=2e-2, rtol=2e-2)


KV_PERM_CASES = [c for c in KERNEL_CASES if c[0] in (
    "ragged-empty-clusters-odd-n", "text-tokens-padding-mask", "batch2-text-bf16", "d128-bf16-text",
    "tiny-key-clusters-span-whole-tile", "hopper-default-tiles")]


@pytest.mark.parametrize("case", [c for _, c in KV_PERM_CASES], ids=[i for i, _ in KV_PERM_CASES])
def test_kernel_reads_kv_in_place_through_k_perm(case):
    # kp = vp = None: video K/V rows are read from k / v through k_perm, no gathered copy; same function
    b, h, nv, t, d, cq, ck, density, dtype, cfg, empty = case
    args, kpm, k_perm = make_inputs(b, h, nv, t, d, cq, ck, dtype=dtype, density=density, seed=nv + cq + 1,
                                    empty_clusters=empty, return_perm=True)
    out = torch.full_like(args["q"], float("nan"))
    got = sparse_attention(**{**args, "kp": None, "vp": None}, k_perm=k_perm, num_dense_tokens=t,
                           key_padding_mask=kpm, out=out, config=cfg)
    assert not torch.isnan(got).any()
    ref = sparse_attention_reference(**args, num_dense_tokens=t, key_padding_mask=kpm)
    assert rel_rms(got, ref) < 1e-2
    torch.testing.assert_close(got.float(), ref, atol=2e-2, rtol=2e-2)


def test_kernel_k_perm_mode_rejects_bad_inputs_naming_the_field():
    args, _, k_perm = make_inputs(1, 1, 20, 0, 64, 2, 3, dtype=torch.float16, density=0.5, seed=9, return_perm=True)
    with pytest.raises(ValueError, match="k_perm: required"):
        sparse_attention(**{**args, "kp": None, "vp": None}, config=SMALL)
    with pytest.raises(ValueError, match="kp, vp"):
        sparse_attention(**{**args, "vp": None}, k_perm=k_perm, config=SMALL)
    with pytest.raises(ValueError, match="k_perm"):
        sparse_attention(**{**args, "kp": None, "vp": None}, k_perm=k_perm.long(), config=SMALL)


def test_kernel_with_text_and_no_padding_mask_and_strided_qkv():
    b, h, nv, t, d = 1, 2, 30, 5, 64
    args, _, k_perm = make_inputs(b, h, nv, t, d, 3, 4, dtype=torch.float16, density=0.5, seed=7, return_perm=True)
    # (B, N, H, D) storage seen as (B, H, N, D), as diffusers processors produce it
    for key in ("q", "k", "v"):
        args[key] = args[key].transpose(1, 2).contiguous().transpose(1, 2)
    got = sparse_attention(**args, num_dense_tokens=t, config=SMALL)
    ref = sparse_attention_reference(**args, num_dense_tokens=t)
    assert rel_rms(got, ref) < 1e-2
    # the same with K/V read in place through k_perm (uses k's and v's strides)
    got = sparse_attention(**{**args, "kp": None, "vp": None}, k_perm=k_perm, num_dense_tokens=t, config=SMALL)
    assert rel_rms(got, ref) < 1e-2


def test_kernel_constant_inputs_give_no_nan():
    b, h, nv, t, d = 1, 1, 40, 3, 64
    args, kpm = make_inputs(b, h, nv, t, d, 3, 5, dtype=torch.bfloat16, density=0.3, seed=8)
    for key in ("q", "k", "kp"):
        args[key] = torch.full_like(args[key], 3.0)
    args["v"] = torch.full_like(args["v"], 0.5)
    args["vp"] = torch.full_like(args["vp"], 0.5)
    got = sparse_attention(**args, num_dense_tokens=t, key_padding_mask=kpm, config=SMALL)
    assert torch.allclose(got.float(), torch.full_like(got.float(), 0.5))


def test_kernel_rejects_bad_inputs_naming_the_field():
    args, _ = make_inputs(1, 1, 20, 0, 64, 2, 3, dtype=torch.float16, density=0.5, seed=9)
    with pytest.raises(ValueError, match="sel_cum"):
        sparse_attention(**{**args, "sel_cum": args["sel_cum"].long()}, config=SMALL)
    with pytest.raises(ValueError, match="head dim"):
        bad = {key: args[key][..., :32] if key in ("q", "k", "v") else args[key] for key in args}
        sparse_attention(**bad, config=SMALL)
    with pytest.raises(ValueError, match="kp"):
        sparse_attention(**{**args, "kp": args["kp"][:, :-1]}, config=SMALL)
    with pytest.raises(ValueError, match="num_dense_tokens"):
        sparse_attention(**args, num_dense_tokens=20, config=SMALL)


def test_kernel_single_token_key_clusters_fill_whole_tiles():
    # every key cluster holds one token: a key tile spans exactly BLOCK_N segments and every tile
    # boundary is also a segment boundary (the widest window the segment lookup must cover)
    b, h, nv, d = 1, 1, 48, 64
    args, _ = make_inputs(b, h, nv, 0, d, 3, 4, dtype=torch.float16, density=0.5, seed=11)
    gen = torch.Generator().manual_seed(12)
    k_perm = torch.randperm(nv, generator=gen)
    k = args["k"][0, 0, :nv].cpu()
    v = args["v"][0, 0, :nv].cpu()
    cq = args["q_offsets"].shape[1] - 1
    order = torch.stack([torch.randperm(nv, generator=gen) for _ in range(cq)])[None]  # (1, Cq, Ck=Nv)
    count = torch.tensor([[32, 7, 48]], dtype=torch.int32)[:, :cq]  # 32, 48: whole tiles; 48: every cluster
    sel_cum = torch.zeros(1, cq, nv + 1, dtype=torch.int32)
    sel_cum[..., 1:] = torch.minimum(torch.arange(1, nv + 1), count[..., None])
    args.update(kp=k[k_perm][None].contiguous(), vp=v[k_perm][None].contiguous(),
                k_offsets=torch.arange(nv + 1, dtype=torch.int32)[None], sel_idx=order.int(), sel_count=count,
                sel_cum=sel_cum)
    args = {key: x.to(DEVICE) for key, x in args.items()}
    got = sparse_attention(**args, config=SMALL)
    ref = sparse_attention_reference(**args)
    assert rel_rms(got, ref) < 1e-2


TAILS = KernelConfig(block_m=32, block_n=16, num_warps=4, num_stages=1, tail_m=16, tail_n=16, tail_warps=4,
                     tail_stages=1)


@pytest.mark.parametrize("t", [0, 6], ids=["video-only", "with-text"])
def test_kernel_remainder_tiles_cover_every_query_row(t):
    # query clusters whose remainders (size % 32) hit every case of the two-launch split: 0 (full tiles
    # only), 1 and 16 (tail launch), 17 and 31 (padded main tile), and clusters smaller than a tail tile
    sizes = [32, 1, 16, 17, 31, 64, 33, 48, 5, 49, 0, 40]
    b, h, nv, d = 1, 2, sum(sizes), 64
    args, kpm = make_inputs(b, h, nv, t, d, len(sizes), 7, dtype=torch.bfloat16, density=0.4, seed=13)
    q_off = torch.zeros(len(sizes) + 1, dtype=torch.int32)
    q_off[1:] = torch.tensor(sizes).cumsum(0)
    args["q_offsets"] = q_off.expand(b * h, -1).contiguous().to(DEVICE)
    # the selection was drawn for the random sizes; any selection is valid for these sizes except that an
    # empty query cluster must not matter: the kernel never reads it
    out = torch.full_like(args["q"], float("nan"))
    sparse_attention(**args, num_dense_tokens=t, key_padding_mask=kpm, out=out, config=TAILS)
    assert not torch.isnan(out).any()
    ref = sparse_attention_reference(**args, num_dense_tokens=t, key_padding_mask=kpm)
    assert rel_rms(out, ref) < 1e-2
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    # same function as the one-launch scheme (remainders padded to full tiles)
    single = sparse_attention(**args, num_dense_tokens=t, key_padding_mask=kpm,
                              config=KernelConfig(block_m=32, block_n=16, num_warps=4, num_stages=1))
    torch.testing.assert_close(out, single, atol=1e-2, rtol=1e-2)


def test_config_and_scale_are_validated():
    with pytest.raises(ValueError, match="tail_m"):
        KernelConfig(block_m=64, tail_m=64)
    with pytest.raises(ValueError, match="tail_m"):
        KernelConfig(block_m=128, tail_m=48)
    args, _ = make_inputs(1, 1, 20, 0, 64, 2, 3, dtype=torch.float16, density=0.5, seed=9)
    with pytest.raises(ValueError, match="scale"):
        sparse_attention(**args, scale=-0.1, config=SMALL)


