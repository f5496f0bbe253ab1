"""k-means kernels on a CUDA GPU against their torch references, where the CPU interpreter cannot stand in: the FP8
assign (``kmeans.ASSIGN_FP8``) with the GPU's own e4m3 conversion (the interpreter's carries wrongly between binades).
Skipped without a GPU, so not in CPU CI.

    python -m pytest -q tests/svg2core/test_kmeans_gpu.py
"""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import svg2core.ops.kmeans.kmeans as km  # noqa: E402
from svg2core.ops.kmeans import (  # noqa: E402
    batched_kmeans,
    init_centroids_strided_reference,
    kmeans_assign,
    kmeans_assign_fp8_reference,
    kmeans_assign_reference,
)
from svg2core.state import Workspace  # noqa: E402


def _dist(x, cent, labels):
    chosen = torch.gather(cent, 1, labels.long()[..., None].expand(-1, -1, x.shape[-1]))
    return ((x.float() - chosen) ** 2).sum(-1)


@pytest.mark.parametrize("packed", [False, True], ids=["pair-argmin", "packed-argmin"])
@pytest.mark.parametrize("n,c", [(5000, 100), (4099, 1000)])
def test_fp8_assign_equals_its_reference_on_the_gpu(n, c, packed, monkeypatch):
    monkeypatch.setattr(km, "ASSIGN_FP8", True)
    monkeypatch.setattr(km, "ASSIGN_PACKED_ARGMIN", packed)
    gen = torch.Generator(device="cuda").manual_seed(n + c)
    b, h, d = 1, 4, 128
    x = torch.randn(b, h, n, d, device="cuda", generator=gen).to(torch.bfloat16)
    cent = x.reshape(b * h, n, d)[:, torch.randperm(n, device="cuda", generator=gen)[:c]].float()
    cent += 0.1 * torch.randn(cent.shape, device="cuda", generator=gen)
    labels = torch.full((b * h, n), -1, dtype=torch.int32, device="cuda")
    kmeans_assign(x, cent, labels)
    xr = x.reshape(b * h, n, d)
    ref = kmeans_assign_fp8_reference(xr, cent)
    exact = kmeans_assign_reference(xr, cent)
    assert labels.min() >= 0 and labels.max() < c
    # the same e4m3 conversion (round to nearest even) and scales: only near-ties of the fp32 sums (summed in another
    # order, and the packed keys' low bits) differ, so under the reference's own FP8 distances the choice is as near
    from svg2core.ops.kmeans.reference import e4m3_rows

    assert (labels == ref).float().mean() > 0.99
    xq, xs = e4m3_rows(xr.float())
    cq, cs = e4m3_rows(cent, (-2, -1))
    fp8_dist = (cent**2).sum(-1)[:, None, :] - 2.0 * (xq @ cq.transpose(1, 2)) * xs * cs
    pick = lambda lab: torch.gather(fp8_dist, 2, lab.long()[..., None])[..., 0]  # noqa: E731
    assert (pick(labels) - pick(ref)).max() <= 1e-3 * _dist(xr, cent, exact).mean()
    # against the exact assign: a point changes cluster only near a boundary, where both are nearly as near
    assert (labels == exact).float().mean() > 0.95
    gap = _dist(xr, cent, labels) - _dist(xr, cent, exact)
    assert gap.max() <= 3e-2 * _dist(xr, cent, exact).mean()


def test_batched_kmeans_with_the_fp8_assign_on_the_gpu(monkeypatch):
    gen = torch.Generator(device="cuda").manual_seed(5)
    b, h, n, d, c = 1, 4, 8000, 128, 200
    x = torch.randn(b, h, n, d, device="cuda", generator=gen).to(torch.bfloat16)
    start = init_centroids_strided_reference(x.reshape(b * h, n, d), c)
    exact, fp8 = start.clone(), start.clone()
    batched_kmeans(x, exact, 3, Workspace(), "e")
    monkeypatch.setattr(km, "ASSIGN_FP8", True)
    labels, perm, offsets = batched_kmeans(x, fp8, 3, Workspace(), "f")
    xr = x.reshape(b * h, n, d)
    inertia = lambda cc: _dist(xr, cc, kmeans_assign_reference(xr, cc)).mean()  # noqa: E731
    assert torch.isfinite(fp8).all()
    assert inertia(fp8) <= 1.01 * inertia(exact)
    assert torch.equal(offsets[:, -1], torch.full((b * h,), n, dtype=offsets.dtype, device="cuda"))
