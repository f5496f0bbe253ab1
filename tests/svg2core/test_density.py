"""A call's density and its accumulation into the accounting: the Triton kernels (interpreter) against the references,
and the references against counts made by hand."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from svg2core.ops.density import (  # noqa: E402
    accumulate_density,
    accumulate_density_reference,
    selection_density,
    selection_density_reference,
)


def _selection(bh: int, cq: int, ck: int, nv: int, seed: int):
    """A random but consistent selection: query-cluster sizes summing to ``nv``, each row's kept count and its
    token prefix sums over key clusters whose sizes sum to ``nv``."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.randint(0, nv + 1, (bh, cq - 1), generator=g), dim=1).values
    bounds = torch.cat([torch.zeros(bh, 1, dtype=torch.long), cuts, torch.full((bh, 1), nv)], dim=1)
    q_sizes = (bounds[:, 1:] - bounds[:, :-1]).to(torch.int32)
    k_sizes = torch.randint(0, 2 * nv // ck + 1, (bh, cq, ck), generator=g)
    sel_cum = torch.cat([torch.zeros(bh, cq, 1, dtype=torch.long), k_sizes.cumsum(-1)], dim=-1).to(torch.int32)
    sel_count = torch.randint(0, ck + 1, (bh, cq), generator=g, dtype=torch.int32)
    return q_sizes, sel_count, sel_cum


def _mask(b: int, t: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=g) < 0.6
    mask[0] = True  # one batch element with every text key valid
    return mask


CASES = [  # b, h, cq, ck, nv, t, masked
    (1, 3, 5, 9, 40, 0, False),
    (2, 2, 7, 12, 64, 6, False),
    (2, 3, 100, 37, 2000, 9, True),  # cq not a power of two, a mask row with invalid keys
    (3, 1, 1, 1, 17, 1, True),  # a single cluster, a single text token
]


@pytest.mark.parametrize("b,h,cq,ck,nv,t,masked", CASES)
def test_triton_density_equals_the_reference(b, h, cq, ck, nv, t, masked):
    q_sizes, sel_count, sel_cum = _selection(b * h, cq, ck, nv, seed=cq + t)
    mask = _mask(b, t, seed=b) if masked else None
    want = selection_density_reference(q_sizes, sel_count, sel_cum, b, h, nv, t, mask)
    got = selection_density(q_sizes, sel_count, sel_cum, b, h, nv, t, mask, backend="triton")
    assert got.dtype == torch.float32 and got.shape == (b, h)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # by hand: every video query attends to its kept key tokens and every valid text key; text queries to all
    for bi in range(b):
        tv = t if mask is None else int(mask[bi].sum())
        for hi in range(h):
            bh = bi * h + hi
            video = sum(int(q_sizes[bh, i]) * int(sel_cum[bh, i, int(sel_count[bh, i])]) for i in range(cq))
            assert float(got[bi, hi]) == pytest.approx((video + nv * tv + t * (nv + tv)) / ((nv + t) * (nv + tv)),
                                                       rel=1e-6)


def test_density_kernel_reads_strided_selections():
    """The selection's outputs may be views (e.g. one batch element's rows); only their last axis is contiguous."""
    q_sizes, sel_count, sel_cum = _selection(4, 6, 8, 50, seed=3)
    want = selection_density_reference(q_sizes[::2], sel_count[::2], sel_cum[::2], 2, 1, 50, 0, None)
    got = selection_density(q_sizes[::2], sel_count[::2], sel_cum[::2], 2, 1, 50, 0, None, backend="triton")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="sel_cum: the last axis must be contiguous"):
        selection_density(q_sizes, sel_count, sel_cum[..., ::2], 4, 1, 50, 0, None, backend="triton")


@pytest.mark.parametrize("b,h,n,t,masked", [(1, 12, 300, 0, False), (2, 5, 90, 7, True), (3, 40, 33, 1, True)])
def test_triton_accumulation_equals_the_reference(b, h, n, t, masked):
    g = torch.Generator().manual_seed(b * h)
    totals, want = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    mask = _mask(b, t, seed=h) if masked else None
    for _ in range(3):  # accumulates: three calls add up
        density = torch.rand(b, h, generator=g)
        accumulate_density(totals, density, n, t, 128, mask)
        accumulate_density_reference(want, density, n, t, 128, mask)
    torch.testing.assert_close(totals, want, rtol=1e-12, atol=0)
    # the reference by hand, for the last call
    valid = [n - t + (t if mask is None else int(mask[i].sum())) for i in range(b)]
    one = torch.zeros(2, dtype=torch.float64)
    accumulate_density_reference(one, density, n, t, 128, mask)
    flops = sum(float(density[i, j]) * n * valid[i] * 4 * 128 for i in range(b) for j in range(h))
    assert one.tolist() == pytest.approx([float(density.double().mean()), flops], rel=1e-12)


def test_accumulation_rejects_a_wrong_totals_tensor():
    with pytest.raises(ValueError, match="totals: must be a contiguous fp64 tensor of shape"):
        accumulate_density(torch.zeros(2), torch.rand(1, 2), 10, 0, 64, None)


def test_without_triton_the_references_run(monkeypatch):
    # a reference-backend job where Triton is not installed: the accounting must not need it
    import svg2core.ops.density.density as D

    monkeypatch.setattr(D, "_triton_installed", lambda: False)
    calls = []
    real = D.accumulate_density_reference
    monkeypatch.setattr(D, "accumulate_density_reference", lambda *a: calls.append(1) or real(*a))
    totals = torch.zeros(2, dtype=torch.float64)
    D.accumulate_density(totals, torch.full((1, 2), 0.5), 10, 0, 64, None)
    assert calls == [1] and totals.tolist() == pytest.approx([0.5, 0.5 * 2 * 10 * 10 * 4 * 64])
    q_sizes, sel_count, sel_cum = _selection(2, 3, 4, 30, seed=1)
    torch.testing.assert_close(D.selection_density(q_sizes, sel_count, sel_cum, 1, 2, 30, 0, None),
                               selection_density_reference(q_sizes, sel_count, sel_cum, 1, 2, 30, 0, None))
