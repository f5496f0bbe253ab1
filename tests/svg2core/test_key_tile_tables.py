"""The key-tile lookup tables of the Gluon kernel's producer (svg2core/ops/sparse_attn/tables.py): the Triton
kernel (under the interpreter on CPU) against its torch reference, and the reference against a plain
per-position walk of the selection (the definition in kernel.py)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from test_sparse_attn import DEVICE, make_layout  # noqa: E402

from svg2core.ops.sparse_attn.tables import key_tile_tables, key_tile_tables_reference, max_key_tiles  # noqa: E402


def _tables(bh, nv, cq, ck, density, seed, block_n, empty_clusters=False):
    lay = make_layout(bh, nv, cq, ck, density=density, gen=torch.Generator().manual_seed(seed),
                      empty_clusters=empty_clusters)
    lay = {k: v.to(DEVICE) for k, v in lay.items()}
    return lay, key_tile_tables_reference(lay["sel_idx"], lay["sel_count"], lay["sel_cum"], lay["k_offsets"],
                                          block_n, max_key_tiles(nv, block_n))


@pytest.mark.parametrize("bh,nv,cq,ck,density,block_n,empty", [
    (2, 300, 5, 7, 0.4, 16, False),    # tiles spanning several segments
    (3, 257, 9, 40, 0.2, 32, True),    # empty key clusters (never selected), odd token count
    (1, 100, 4, 3, 1.0, 128, False),   # everything selected, one tile per pair
    (2, 64, 3, 1, 0.5, 16, False),     # one key cluster
])
def test_kernel_matches_reference(bh, nv, cq, ck, density, block_n, empty):
    lay, (seg_base, tile_seg, seg_ok, tile_ok) = _tables(bh, nv, cq, ck, density, 7, block_n, empty)
    seg_out = torch.full((bh * cq, ck), -7, dtype=torch.int32, device=DEVICE)
    tile_out = torch.full((bh * cq, max_key_tiles(nv, block_n) + 1), -7, dtype=torch.int32, device=DEVICE)
    key_tile_tables(lay["sel_idx"], lay["sel_count"], lay["sel_cum"], lay["k_offsets"], block_n, seg_out, tile_out)
    assert torch.equal(seg_out[seg_ok], seg_base[seg_ok])
    assert torch.equal(tile_out[tile_ok], tile_seg[tile_ok])
    assert (seg_out[~seg_ok] == -7).all() and (tile_out[~tile_ok] == -7).all()  # nothing else written


def test_reference_follows_the_per_position_definition():
    bh, nv, cq, ck, block_n = 2, 200, 6, 11, 16
    lay, (seg_base, tile_seg, _, _) = _tables(bh, nv, cq, ck, 0.3, 3, block_n)
    sel_idx, cnt, cum, koff = (lay[k].cpu().long() for k in ("sel_idx", "sel_count", "sel_cum", "k_offsets"))
    for pair in range(bh * cq):
        b, i = divmod(pair, cq)
        rows = []  # kp row of every position, walking the selected clusters in order
        for j in range(int(cnt[b, i])):
            lo, hi = int(koff[b, sel_idx[b, i, j]]), int(koff[b, sel_idx[b, i, j] + 1])
            assert hi - lo == int(cum[b, i, j + 1] - cum[b, i, j])
            rows += [(j, r) for r in range(lo, hi)]
        total = len(rows)
        for p, (j, r) in enumerate(rows):
            assert int(seg_base[pair, j]) + p == r
        for t in range(-(-total // block_n) + 1):
            first = min(t * block_n, total - 1)
            assert int(tile_seg[pair, t]) == rows[first][0]
            # the positions of tile t lie in segments tile_seg[t] .. tile_seg[t + 1]
            if t * block_n < total:
                last = min(t * block_n + block_n, total) - 1
                assert int(tile_seg[pair, t]) <= rows[last][0] <= int(tile_seg[pair, t + 1])


@pytest.mark.parametrize("bh,heads,nv,cq,block_m,tail_m,empty", [
    (2, 2, 300, 5, 16, 0, False),     # several tiles per cluster
    (6, 3, 257, 9, 32, 8, True),      # batch 2: empty query clusters, remainders of <= 8 rows left out
    (1, 1, 40, 6, 128, 0, False),     # every cluster under one tile
])
def test_query_tile_list_matches_reference(bh, heads, nv, cq, block_m, tail_m, empty):
    from svg2core.ops.sparse_attn.kernel import max_video_tiles
    from svg2core.ops.sparse_attn.tables import query_tile_list, query_tile_list_reference

    lay = make_layout(bh, nv, cq, 4, density=0.5, gen=torch.Generator().manual_seed(5), empty_clusters=empty)
    q_off, cnt, cum = (lay[k].to(DEVICE) for k in ("q_offsets", "sel_count", "sel_cum"))
    strides = (9000, 700, 8000, 600, 7000, 500, 6000, 400)  # (b, h) strides of q, k, v, out
    tph = max_video_tiles(nv, cq, block_m)
    ref = query_tile_list_reference(q_off, cnt, cum, heads, strides, block_m, tail_m, tph)
    items = torch.full((bh * tph, 12), -7, dtype=torch.int64, device=DEVICE)
    query_tile_list(q_off, cnt, cum, heads, strides, block_m, tail_m, items)
    active = ref[:, 0] >= 0
    assert torch.equal(items[:, 0], ref[:, 0])
    assert torch.equal(items[active, :11], ref[active, :11])
    # the reference covers every query row exactly once (remainders of <= tail_m rows excepted), and its fields
    # follow the layout: pair = bh * Cq + cluster, cnt / total from the selection, (b, h) offsets from the strides
    for x in range(bh):
        rows = []
        for pair, lo, hi, h, n, total, qb, kb, vb, ob, bb, _ in ref[x * tph:(x + 1) * tph].tolist():
            if pair < 0:
                continue
            c = pair - x * cq
            assert h == x and 0 <= c < cq and (lo, hi)[1] == int(q_off[x, c + 1])
            assert n == int(cnt[x, c]) and total == int(cum[x, c, n])
            b, hh = divmod(x, heads)
            assert bb == b
            assert (qb, kb, vb, ob) == (b * 9000 + hh * 700, b * 8000 + hh * 600, b * 7000 + hh * 500,
                                        b * 6000 + hh * 400)
            rows += list(range(lo, min(lo + block_m, hi)))
        sizes = (q_off[x, 1:] - q_off[x, :-1]).tolist()
        left_out = sum(s % block_m for s in sizes if 0 < s % block_m <= tail_m)
        assert len(rows) == len(set(rows)) == nv - left_out
