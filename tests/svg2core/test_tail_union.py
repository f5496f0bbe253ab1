"""Query-tail union: the rule's reference keeps its promises, and the Triton stage (under the interpreter on CPU)
computes exactly the reference's tables."""

from __future__ import annotations

import pytest
import torch

from svg2core.ops.tail_union import tail_pairs_reference, tail_union, tail_union_reference, union_clusters
from svg2core.ops.tail_union.reference import FIXED_KEY_ROWS, pair_savings_reference, tile_cost
from svg2core.state import Workspace
from tests.svg2core.bench_modules import load_bench

#: random clusterings and selections in the product's format (the stage probe's inputs)
layout = load_bench("probes/probe_tail_stage.py").layout

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


ARGS = ("q_labels", "q_perm", "q_offsets", "sel_idx", "sel_count", "sel_cum", "k_sizes")


def test_pairs_by_mutual_best_partner():
    # savings of four tails: 0 and 1 name each other (10); 2 names 1 (8) but 1 prefers 0, so 2 and 3 pair in the
    # second round, once 0 and 1 are taken (2's best free partner is then 3, and 3's is 2)
    s = torch.tensor([[[0, 10, 2, 0], [10, 0, 8, 0], [2, 8, 0, 3], [0, 0, 3, 0]]])
    assert tail_pairs_reference(s, rounds=2).tolist() == [[[0, 1], [2, 3]]]
    assert tail_pairs_reference(s, rounds=1).tolist() == [[[0, 1], [-1, -1]]]
    # ties: the lower id is named; numbering by the lower id of each pair
    s = torch.tensor([[[0, 0, 0, 0, 0], [0, 0, 0, 5, 5], [0, 0, 0, 0, 0], [0, 5, 0, 0, 0], [0, 5, 0, 0, 0]]])
    assert tail_pairs_reference(s).tolist() == [[[1, 3], [-1, -1]]]


def test_savings_follow_the_cost_model():
    # block 32 (half 16). Tails: 0: 20 rows, 1: 8, 2: 10, 3: none. Lists (key rows): 0: {0} 10, 1: {0, 1} 30, 2: {2} 5
    sizes = torch.tensor([[52, 8, 42, 64]])
    k_sizes = torch.tensor([[10, 20, 5, 7]], dtype=torch.int32)
    sel_idx = torch.tensor([[[0, 1, 2, 3], [0, 1, 2, 3], [2, 0, 1, 3], [3, 0, 1, 2]]], dtype=torch.int32)
    sel_count = torch.tensor([[1, 2, 1, 1]], dtype=torch.int32)
    sel_cum = torch.cat([torch.zeros(1, 4, 1, dtype=torch.int32),
                         torch.gather(k_sizes[:, None].expand(1, 4, 4), 2, sel_idx.long()).cumsum(2).int()], 2)
    got = pair_savings_reference(sizes, sel_count, sel_cum, sel_idx, k_sizes, 32, fixed=4)
    f = 4
    # (0, 1): 28 rows, union {0, 1} 30 keys; (0, 2): 30 rows, {0, 2} 15; (1, 2): 18 rows, {0, 1, 2} 35
    want01 = 100 * (10 + f) + 69 * (30 + f) - 100 * (30 + f)
    want02 = 100 * (10 + f) + 69 * (5 + f) - 100 * (15 + f)
    want12 = 69 * (30 + f) + 69 * (5 + f) - 100 * (35 + f)
    assert want01 > 0 and want12 < 0
    assert got[0, 0, 1] == got[0, 1, 0] == want01
    assert got[0, 0, 2] == max(want02, 0) and got[0, 1, 2] == 0  # no saving: not a candidate
    assert torch.all(got[0, 3] == 0) and torch.all(got[0, :, 3] == 0)  # no tail
    assert torch.all(torch.diagonal(got[0]) == 0)
    # a density cap (top-p mode): no union of more key rows than it allows
    capped = pair_savings_reference(sizes, sel_count, sel_cum, sel_idx, k_sizes, 32, fixed=4, max_keys=29)
    assert capped[0, 0, 1] == 0 and capped[0, 0, 2] == got[0, 0, 2]  # unions of 30 and 15 key rows


@pytest.mark.parametrize("seed,bh,nv,cq,ck,block,empty", [(0, 2, 700, 11, 24, 32, False),
                                                          (1, 3, 513, 16, 40, 16, True),
                                                          (2, 1, 300, 12, 9, 64, False)],
                         ids=["two-heads", "empty-clusters", "few-large-tails"])
def test_reference_keeps_its_promises(seed, bh, nv, cq, ck, block, empty):
    t = layout(seed, bh, nv, cq, ck, empty=empty)
    labels, perm, offsets, sizes, sel_idx, sel_count, sel_cum = tail_union_reference(*(t[a] for a in ARGS),
                                                                                       block=block, fixed=8)
    c2 = union_clusters(cq)
    assert offsets.shape == (bh, c2 + 1) and sel_idx.shape == (bh, c2, ck)
    old_sizes = t["q_offsets"][:, 1:] - t["q_offsets"][:, :-1]
    packed = 0
    for i in range(bh):
        assert torch.equal(perm[i].sort().values, torch.arange(nv, dtype=perm.dtype))  # every row once
        for v in range(c2):  # the labels name the new clusters' rows
            rows = perm[i, offsets[i, v]:offsets[i, v + 1]].long()
            assert torch.all(labels[i, rows] == v)
        for k in range(cq // 2):
            v = cq + k
            if sel_count[i, v] == 0:
                assert sizes[i, v] == 0
                continue
            packed += 1
            # the two clusters whose tails the slot holds (the lower id's first): the old labels of its rows
            rows = perm[i, offsets[i, v]:offsets[i, v + 1]].long()
            a = int(t["q_labels"][i, rows[0]])
            (b,) = set(t["q_labels"][i, rows].tolist()) - {a}
            ra, rb = int(old_sizes[i, a]) % block, int(old_sizes[i, b]) % block
            assert sizes[i, v] == ra + rb <= block and a < b
            assert sizes[i, a] == old_sizes[i, a] - ra and sizes[i, a] % block == 0
            # the tails are the clusters' last rows in the old permutation, in order
            tail_a = t["q_perm"][i, t["q_offsets"][i, a + 1] - ra:t["q_offsets"][i, a + 1]]
            assert torch.equal(perm[i, offsets[i, v]:offsets[i, v] + ra], tail_a)
            # the slot keeps the union of the two selections, in id order, with its key-token prefix sums
            want = set(t["sel_idx"][i, a, :t["sel_count"][i, a]].tolist()) | set(
                t["sel_idx"][i, b, :t["sel_count"][i, b]].tolist())
            got = sel_idx[i, v, :sel_count[i, v]].tolist()
            assert got == sorted(want)
            assert sorted(sel_idx[i, v].tolist()) == list(range(ck))
            cum = torch.cat([torch.zeros(1), t["k_sizes"][i, sel_idx[i, v].long()].cumsum(0)])
            assert torch.equal(sel_cum[i, v].long(), cum.long())
            # and the union tile costs less than the two tails alone
            union = int(t["k_sizes"][i, sorted(want)].sum())
            alone = (tile_cost(ra, int(t["sel_cum"][i, a, t["sel_count"][i, a]]), block, 8)
                     + tile_cost(rb, int(t["sel_cum"][i, b, t["sel_count"][i, b]]), block, 8))
            assert tile_cost(ra + rb, union, block, 8) < alone
    assert packed > 0  # a draw where tails pack
    assert torch.equal(sel_idx[:, :cq], t["sel_idx"]) and torch.equal(sel_count[:, :cq], t["sel_count"])
    assert sizes.sum(1).tolist() == [nv] * bh


def test_a_pair_whose_union_costs_more_stays_apart():
    # tails of 20 and 8 rows (block 32: a full tile and a half tile) whose key lists of 10 key rows each share
    # nothing: the union tile costs 100 x (20 + f) against 100 x (10 + f) + 69 x (10 + f) alone, so the pair is
    # packed only where the fixed cost f saved outweighs the keys added
    t = layout(0, 1, 60, 2, 4)
    t["q_offsets"] = torch.tensor([[0, 52, 60]], dtype=torch.int32)  # tails 20 and 8
    t["q_labels"] = torch.tensor([[0] * 52 + [1] * 8], dtype=torch.int32)
    t["q_perm"] = torch.arange(60, dtype=torch.int32)[None]
    t["k_sizes"] = torch.tensor([[10, 10, 20, 20]], dtype=torch.int32)
    t["sel_idx"] = torch.tensor([[[0, 2, 3, 1], [1, 2, 3, 0]]], dtype=torch.int32)
    t["sel_count"] = torch.tensor([[1, 1]], dtype=torch.int32)
    t["sel_cum"] = torch.tensor([[[0, 10, 30, 50, 60], [0, 10, 30, 50, 60]]], dtype=torch.int32)
    # 100 (20 + f) < 100 (10 + f) + 69 (10 + f)  <=>  1000 < 69 (10 + f)  <=>  f > 4.49
    for fixed, cap, want in ((4, None, 0), (5, None, 2), (5, 19, 0)):  # cap 19: the union's 20 key rows exceed it
        out = tail_union_reference(*(t[a] for a in ARGS), block=32, fixed=fixed, max_keys=cap)
        assert int(out[5][0, 2]) == want, fixed
        got = tail_union(*(t[a].clone() for a in ARGS), block=32, workspace=Workspace(), fixed=fixed, max_keys=cap)
        assert int(got[5][0, 2]) == want, fixed


@pytest.mark.parametrize("seed,bh,nv,cq,ck,block,empty", [(0, 2, 700, 11, 24, 32, False),
                                                          (1, 3, 513, 16, 40, 16, True),
                                                          (3, 2, 1000, 20, 33, 32, False),
                                                          (4, 1, 50, 1, 5, 16, False)],
                         ids=["two-heads", "empty-clusters", "odd-key-count", "one-cluster"])
@pytest.mark.parametrize("sweep", [None, (3, 16)], ids=["id-order", "key-sweep"])
def test_triton_equals_the_reference(seed, bh, nv, cq, ck, block, empty, sweep):
    t = layout(seed, bh, nv, cq, ck, empty=empty)
    want = tail_union_reference(*(t[a] for a in ARGS), block=block, fixed=8, sweep=sweep)
    args = [t[a].clone().to(DEVICE) for a in ARGS]
    ws = Workspace()
    for _ in range(2):  # twice on the same workspace: nothing of the first call leaks into the second
        args[0].copy_(t["q_labels"])
        got = tail_union(*args, block=block, workspace=ws, fixed=8, sweep=sweep)
        names = ("labels", "perm", "offsets", "sizes", "sel_idx", "sel_count", "sel_cum")
        for name, w, g in zip(names, want, got, strict=True):
            assert torch.equal(g.cpu(), w), name


def test_triton_savings_are_exact_for_large_key_clusters_and_many_tails():
    # key clusters of up to ~10^5 tokens (all three base-128 digits of the int8 products in use) and more tails than
    # one block of the saving kernel (the mirrored blocks): the savings and the whole result equal the reference's
    t = layout(6, 2, 3000, 70, 40)
    scale = 2477
    t["k_sizes"] = t["k_sizes"] * scale
    tok = torch.gather(t["k_sizes"][:, None].expand(2, 70, 40).long(), 2, t["sel_idx"].long())
    t["sel_cum"][..., 1:] = tok.cumsum(2).int()
    assert int(t["k_sizes"].max()) >= 2**14 and int(t["sel_cum"].max()) < 2**31 // 200
    fixed = FIXED_KEY_ROWS * 20
    want = tail_union_reference(*(t[a] for a in ARGS), block=64, fixed=fixed)
    sizes = (t["q_offsets"][:, 1:] - t["q_offsets"][:, :-1]).long()
    want_saving = pair_savings_reference(sizes, t["sel_count"], t["sel_cum"], t["sel_idx"], t["k_sizes"], 64, fixed)
    assert (want_saving > 0).sum() > 100 and (want[0] >= 70).any()  # many candidates, and pairs formed
    ws = Workspace()
    got = tail_union(*(t[a].clone().to(DEVICE) for a in ARGS), block=64, workspace=ws, fixed=fixed)
    saving = ws.buffer("q.tu_saving", (2, 70, 70), torch.int32, torch.device(DEVICE))
    assert torch.equal(saving.cpu().long(), want_saving)
    for w, g in zip(want, got, strict=True):
        assert torch.equal(g.cpu(), w)


def test_the_key_sweep_follows_the_new_layout():
    # with a key sweep every row, the clusters' own included, starts where its first tile in the new layout puts it
    from svg2core.ops.select.reference import sweep_starts_reference

    t = layout(5, 2, 900, 14, 30)
    plain = tail_union_reference(*(t[a] for a in ARGS), block=32, fixed=8)
    swept = tail_union_reference(*(t[a] for a in ARGS), block=32, fixed=8, sweep=(4, 16))
    assert all(torch.equal(a, b) for a, b in zip(plain[:4], swept[:4], strict=True))  # the same layout
    assert torch.equal(plain[5], swept[5])  # and the same kept sets, laid out otherwise
    starts = sweep_starts_reference(swept[3], 4, 16, 30)
    for i in range(2):
        for v in range(swept[5].shape[1]):
            n = int(swept[5][i, v])
            got = swept[4][i, v, :n].tolist()
            assert sorted(got) == sorted(plain[4][i, v, :n].tolist())
            s0 = int(starts[i, v])
            assert got == sorted(x for x in got if x >= s0) + sorted(x for x in got if x < s0)
    assert (starts > 0).any()


def test_bad_shapes_and_block_are_named():
    t = layout(0, 1, 100, 4, 6)
    with pytest.raises(ValueError, match="block: need a power of two"):
        tail_union(*(t[a] for a in ARGS), block=48)
    with pytest.raises(ValueError, match="q_offsets, q_perm / q_labels, sel_idx"):
        tail_union(t["q_labels"], t["q_perm"], t["q_offsets"][:, :-1], *(t[a] for a in ARGS[3:]))


def test_svg2_attention_with_tail_union_on_both_backends():
    import math

    from svg2core import SVG2Config
    from svg2core.attention import REBALANCE_BLOCK, cluster_and_select, svg2_attention
    from svg2core.ops.kmeans import init_centroids_strided
    from svg2core.state import LayerState

    # well-separated query blobs of 140, 100, 150 and 30 tokens (128-row tiles: tails 12, 100, 22, 30), so that two
    # pairs fit; well-separated key blobs, so that both backends' k-means agree
    g = torch.Generator().manual_seed(0)
    h, d, cq, ck = 2, 64, 4, 4
    sizes = (140, 100, 150, 30)
    centres = torch.randn(1, h, cq, d, generator=g) * 8
    blob = torch.repeat_interleave(torch.arange(cq), torch.tensor(sizes))[torch.randperm(sum(sizes), generator=g)]
    n = blob.numel()
    for i, pos in enumerate(c * n // cq for c in range(cq)):  # the strided cold start's tokens: one in each blob
        j = int(torch.nonzero(blob == i)[0])
        blob[pos], blob[j] = blob[j].clone(), blob[pos].clone()
    q = (centres[:, :, blob] + 0.5 * torch.randn(1, h, n, d, generator=g)).to(torch.bfloat16)
    k = (torch.randn(1, h, ck, d, generator=g) * 8).repeat_interleave(n // ck, dim=2)
    k = (k + 0.5 * torch.randn(1, h, n, d, generator=g)).to(torch.bfloat16)
    v = torch.randn(1, h, n, d, generator=g).to(torch.bfloat16)
    base = SVG2Config(mode="fixed_density", target_density=0.3, num_q_clusters=cq, num_k_clusters=ck,
                      kmeans_iters_init=5)
    cfg = base.replace(query_tail_union=True)

    # what the union must compute, from the plan without it: a packed tail's rows attend to both clusters' keys
    qc, kc = torch.empty(h, cq, d), torch.empty(h, ck, d)
    init_centroids_strided(q, cq, qc)
    init_centroids_strided(k, ck, kc)
    plan = cluster_and_select(q, k, v, qc, kc, 5, base, Workspace(), "reference")
    sizes_now = (plan.q_offsets[:, 1:] - plan.q_offsets[:, :-1])
    assert sorted(sizes_now[0].tolist()) == sorted(sizes)
    want = torch.empty(1, h, n, d)
    packed = 0
    for i in range(h):
        keys = [set(plan.sel_idx[i, c, :plan.sel_count[i, c]].tolist()) for c in range(cq)]
        allowed_of = [set(x) for x in keys]
        row_sets = [keys[int(c)] for c in plan.q_labels[i]]
        pairs = tail_pairs_reference(pair_savings_reference(
            sizes_now[i:i + 1], plan.sel_count[i:i + 1], plan.sel_cum[i:i + 1], plan.sel_idx[i:i + 1],
            plan.k_sizes[i:i + 1], REBALANCE_BLOCK, FIXED_KEY_ROWS))[0]
        for a, b in pairs.tolist():
            if a < 0:
                continue
            packed += 1
            union = allowed_of[a] | allowed_of[b]
            for c in (a, b):
                r = int(sizes_now[i, c]) % REBALANCE_BLOCK
                for tok in plan.q_perm[i, int(plan.q_offsets[i, c + 1]) - r:int(plan.q_offsets[i, c + 1])].tolist():
                    row_sets[tok] = union
        allowed = torch.tensor([[int(plan.k_labels[i, m]) in row_sets[t] for m in range(n)] for t in range(n)])
        s = (q[0, i].float() @ k[0, i].float().T) / math.sqrt(d)
        want[0, i] = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v[0, i].float()
    # tails 12 (cluster 0) and 22 (cluster 2) name each other (their union tile saves the most); 100 and 30 do not fit
    # one tile together: one pair a head
    assert packed == h
    outs = {}
    for backend in ("reference", "triton"):
        state, ws = LayerState(), Workspace()
        outs[backend] = svg2_attention(q, k, v, cfg, state, workspace=ws, backend=backend)
    dense_off, d_off = svg2_attention(q, k, v, base, LayerState(), workspace=Workspace(), backend="reference")
    torch.testing.assert_close(outs["reference"][0].float(), want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(outs["triton"][0].float(), want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(outs["triton"][1], outs["reference"][1])
    assert torch.all(outs["reference"][1] >= d_off) and torch.any(outs["reference"][1] > d_off)  # the union's pairs


def test_with_a_key_sweep_the_plan_is_the_union_of_the_swept_selection():
    # with the union on, the selection writes its rows in id order (the stage lays them all out again): the plan must
    # still be exactly the stage's reference applied to the plan without the union, in sweep order
    from svg2core import SVG2Config
    from svg2core.attention import REBALANCE_BLOCK, cluster_and_select
    from svg2core.ops.kmeans import init_centroids_strided

    g = torch.Generator().manual_seed(4)
    h, n, d, cq, ck, sweep = 2, 400, 64, 6, 8, (3, 16)
    q, k, v = (torch.randn(1, h, n, d, generator=g).to(torch.bfloat16) for _ in range(3))
    base = SVG2Config(mode="fixed_density", target_density=0.3, num_q_clusters=cq, num_k_clusters=ck)

    def plan(cfg):
        qc, kc = torch.empty(h, cq, d), torch.empty(h, ck, d)
        init_centroids_strided(q, cq, qc)
        init_centroids_strided(k, ck, kc)
        return cluster_and_select(q, k, v, qc, kc, 3, cfg, Workspace(), "triton", sweep=sweep)

    plain, union = plan(base), plan(base.replace(query_tail_union=True))
    want = tail_union_reference(plain.q_labels, plain.q_perm, plain.q_offsets, plain.sel_idx, plain.sel_count,
                                plain.sel_cum, plain.k_sizes, REBALANCE_BLOCK, FIXED_KEY_ROWS, sweep=sweep)
    got = (union.q_labels, union.q_perm, union.q_offsets, union.q_sizes, union.sel_idx, union.sel_count,
           union.sel_cum)
    for name, w, x in zip(("labels", "perm", "offsets", "sizes", "sel_idx", "sel_count", "sel_cum"), want, got,
                          strict=True):
        assert torch.equal(x, w), name
    assert union.sel_count.shape[1] > cq and int(union.q_sizes[:, cq:].sum()) > 0  # pairs formed


def test_tail_union_with_text_tokens_as_hunyuanvideo_runs_it():
    # HunyuanVideo's layout: video tokens then dense text tokens (some padded). The union changes the video rows'
    # masks only: the text rows attend to every valid key with or without it, on both backends, and the padded text
    # keys stay unattended. (Random tokens: the two backends' k-means may part on near ties, so their video rows are
    # compared by the blob test above, not here.)
    from svg2core import SVG2Config
    from svg2core.state import LayerState

    g = torch.Generator().manual_seed(3)
    h, nv, t, d = 1, 384, 16, 64
    q, k, v = (torch.randn(1, h, nv + t, d, generator=g).to(torch.bfloat16) for _ in range(3))
    mask = torch.ones(1, t, dtype=torch.bool)
    mask[0, -5:] = False
    base = SVG2Config(mode="fixed_density", target_density=0.3, num_q_clusters=6, num_k_clusters=8,
                      kmeans_iters_init=5)
    cfg = base.replace(query_tail_union=True)
    outs = {(c.query_tail_union, backend): svg2_run(q, k, v, c, LayerState(), t, mask, backend)
            for c in (base, cfg) for backend in ("reference", "triton")}
    for backend in ("reference", "triton"):
        on, off = outs[(True, backend)], outs[(False, backend)]
        torch.testing.assert_close(on[0][:, :, nv:], off[0][:, :, nv:])  # the text rows
        assert not torch.equal(on[0][:, :, :nv], off[0][:, :, :nv])  # the packed tails' rows changed
        assert torch.all(on[1] >= off[1]) and torch.any(on[1] > off[1])  # and attend to more keys
    torch.testing.assert_close(outs[(True, "triton")][0][:, :, nv:].float(),
                               outs[(True, "reference")][0][:, :, nv:].float(), atol=2e-2, rtol=2e-2)
    # a padded text key changes nothing: perturb it and every row stays
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 5
    v2[:, :, -1] -= 7
    again = svg2_run(q, k2, v2, cfg, LayerState(), t, mask, "reference")
    torch.testing.assert_close(again[0], outs[(True, "reference")][0])


def test_tail_union_in_a_batch_equals_each_element_alone():
    # a batch of two (e.g. two requests' latents, or CFG's two branches batched): the stage works per (batch, head)
    # row, so each element's output and density are those of a call with that element alone
    from svg2core import SVG2Config
    from svg2core.state import LayerState

    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 1, 384, 64, generator=g).to(torch.bfloat16) for _ in range(3))
    cfg = SVG2Config(mode="fixed_density", target_density=0.3, num_q_clusters=6, num_k_clusters=8,
                     kmeans_iters_init=5, query_tail_union=True)
    both, d_both = svg2_run(q, k, v, cfg, LayerState(), 0, None, "triton")
    plain = svg2_run(q, k, v, cfg.replace(query_tail_union=False), LayerState(), 0, None, "triton")[1]
    assert torch.any(d_both > plain)  # pairs were packed
    for b in range(2):
        one, d_one = svg2_run(q[b:b + 1], k[b:b + 1], v[b:b + 1], cfg, LayerState(), 0, None, "triton")
        torch.testing.assert_close(both[b:b + 1], one)
        torch.testing.assert_close(d_both[b:b + 1], d_one)


def svg2_run(q, k, v, cfg, state, t, mask, backend):
    from svg2core.attention import svg2_attention

    return svg2_attention(q, k, v, cfg, state, workspace=Workspace(), num_dense_tokens=t, key_padding_mask=mask,
                          backend=backend)


def test_the_config_names_the_field():
    from svg2core import SVG2Config

    with pytest.raises(ValueError, match="query_tail_union: must be a bool"):
        SVG2Config(query_tail_union=1)
    with pytest.raises(ValueError, match="query_tail_union, query_tile_rebalance: use one of the two"):
        SVG2Config(query_tail_union=True, query_tile_rebalance=16)


def test_a_request_sets_the_tail_union_and_the_job_runs_it():
    # the request field: validated by name (a bool, not with rebalancing), resolved over a preset, carried into the
    # config the job runs
    from pydantic import ValidationError

    from svg2core.integration import SparsityPlan
    from worker.spec import SparsitySettings, resolve_sparsity

    with pytest.raises(ValidationError, match="query_tail_union"):
        resolve_sparsity({"preset": "fast", "query_tail_union": "yes"})
    with pytest.raises(ValidationError, match="query_tail_union, query_tile_rebalance: use one of the two"):
        resolve_sparsity({"preset": "fast", "query_tail_union": True, "query_tile_rebalance": 16})
    settings = resolve_sparsity({"preset": "fast", "query_tail_union": True})
    assert settings.query_tail_union is True and settings.top_p == 0.8  # the rest is the preset's
    assert SparsityPlan.from_settings(settings).config.query_tail_union is True
    assert SparsitySettings().query_tail_union is False  # off unless asked for
