"""bench/bench_sparse_attn.py's synthetic calls (the cases every kernel benchmark and Nsight probe times): their
selections are valid, hit the density, and with ``key_window`` stay in the first share of the key clusters."""

from __future__ import annotations

import pytest
import torch

from tests.svg2core.bench_modules import load_bench


def _bench():
    return load_bench("bench_sparse_attn.py")


@pytest.mark.parametrize("window", [1.0, 0.5, 0.25, (0.5, 1.0)])
def test_cases_select_within_the_key_window_at_the_density(window):
    b = _bench()
    h, nv, cq, ck, density = 2, 3000, 20, 40, 0.1
    args, _, stats = b.make_case(h, nv, 0, cq, ck, density, torch.float32, seed=1, dev="cpu", key_window=window)
    sel, count, cum = args["sel_idx"], args["sel_count"], args["sel_cum"]
    k_sizes = args["k_offsets"][:, 1:] - args["k_offsets"][:, :-1]
    for hh in range(h):
        for i in range(cq):
            chosen = sel[hh, i, : count[hh, i]].long()
            assert len(set(chosen.tolist())) == len(chosen)  # no key cluster twice
            lo, hi = (0.0, window) if isinstance(window, float) else window
            assert ck * lo <= int(chosen.min()) and int(chosen.max()) < ck * hi  # only the window's clusters
            # sel_cum holds the running token count of the chosen clusters, in selection order
            assert int(cum[hh, i, count[hh, i]]) == int(k_sizes[hh, chosen].sum())
    # each query cluster keeps keys up to the density, overshooting by at most its last cluster
    assert density <= stats["density_video"] < density + k_sizes.max().item() / nv


def test_sweep_layout_keeps_each_selection_and_its_output():
    # the timed calls' sweep layout (bench_sparse_attn --key-order sweep): the same kept sets and token totals, the
    # kept clusters in ascending id from each query cluster's start, and the reference output unchanged
    from svg2core.ops.select import sweep_starts_reference
    from svg2core.ops.sparse_attn import sparse_attention_reference

    b = _bench()
    args, _, _ = b.make_case(2, 1500, 0, 12, 30, 0.3, torch.float32, seed=2, dev="cpu")
    swept = b.selection_in_sweep_layout(args, 5, block_m=64)
    q_sizes = args["q_offsets"][:, 1:] - args["q_offsets"][:, :-1]
    starts = sweep_starts_reference(q_sizes, 5, 64, 30)
    assert starts.unique().numel() > 1
    for hh in range(2):
        for i in range(12):
            n = int(args["sel_count"][hh, i])
            kept = sorted(args["sel_idx"][hh, i, :n].tolist())
            s0 = int(starts[hh, i])
            assert swept["sel_idx"][hh, i, :n].tolist() == [j for j in kept if j >= s0] + [j for j in kept if j < s0]
            assert int(swept["sel_cum"][hh, i, n]) == int(args["sel_cum"][hh, i, n])
    torch.testing.assert_close(sparse_attention_reference(**swept), sparse_attention_reference(**args))
    assert b.selection_in_sweep_layout(args, 0) is args
    # the experiment's start by token offset: the first key cluster starting at or after the same share of the tokens
    by_offset = b.selection_in_sweep_layout(args, 5, block_m=64, by="offset")
    k_off = args["k_offsets"].long()
    for hh in range(2):
        for i in range(12):
            n = int(args["sel_count"][hh, i])
            target = int(starts[hh, i]) * 1500 // 30
            s0 = min(int(torch.searchsorted(k_off[hh, :-1], torch.tensor(target))), 29)
            kept = sorted(args["sel_idx"][hh, i, :n].tolist())
            assert by_offset["sel_idx"][hh, i, :n].tolist() == [j for j in kept if j >= s0] + [j for j in kept if j < s0]
    torch.testing.assert_close(sparse_attention_reference(**by_offset), sparse_attention_reference(**args))
