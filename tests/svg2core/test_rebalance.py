"""Query-tile rebalancing: the rule's reference keeps its promises, and the Triton stage (under the interpreter on
CPU) moves exactly the reference's rows."""

from __future__ import annotations

import pytest
import torch

from svg2core.ops.permute import sort_by_cluster_reference
from svg2core.ops.rebalance import cluster_sizes, donors_and_room, rebalance_reference
from svg2core.ops.rebalance.rebalance import rebalance_query_tiles
from svg2core.state import Workspace


def _clustered(seed: int, b: int, h: int, n: int, c: int, d: int, dtype=torch.float32):
    """Tokens around ``c`` random centres per head, their nearest-centre labels and the centres' means."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(b * h, c, d, generator=g) * 3
    pick = torch.randint(0, c, (b * h, n), generator=g)
    x = (torch.gather(centres, 1, pick[..., None].expand(-1, -1, d)) + torch.randn(b * h, n, d, generator=g))
    x = x.to(dtype)
    xf = x.float()
    labels = ((centres**2).sum(-1)[:, None, :] - 2 * xf @ centres.transpose(1, 2)).argmin(-1).int()
    sums = torch.zeros(b * h, c, d).scatter_add_(1, labels.long()[..., None].expand(-1, -1, d), xf)
    cent = sums / cluster_sizes(labels, c).clamp_min(1)[..., None]
    return x.reshape(b, h, n, d), labels, cent.contiguous()


def test_the_rule_per_cluster():
    sizes = torch.tensor([[0, 3, 16, 17, 20, 31, 32, 33, 40, 48]])
    excess, donor, room = donors_and_room(sizes, rho=4, block=32)
    assert excess.tolist() == [[0, 3, 16, 1, 4, 15, 0, 1, 8, 16]]  # the rows of the last tile or half tile
    assert donor.tolist() == [[False, True, False, True, True, False, False, True, False, False]]
    assert room.tolist() == [[0, 0, 0, 0, 0, 1, 0, 0, 8, 0]]


@pytest.mark.parametrize("b,h,n,c,block,rho,dtype", [(1, 2, 300, 12, 32, 8, torch.float32),
                                                     (2, 1, 517, 20, 32, 6, torch.bfloat16),
                                                     (1, 3, 200, 9, 16, 4, torch.float16)],
                         ids=["two-heads", "batch-2-ragged-bf16", "small-tiles-fp16"])
def test_triton_moves_the_references_rows(b, h, n, c, block, rho, dtype):
    x, labels, cent = _clustered(b * 10 + h, b, h, n, c, 64, dtype)
    want = rebalance_reference(x.reshape(b * h, n, 64), labels, cent, rho, block)
    assert (want != labels).any()  # a draw where rows move
    perm, offsets = sort_by_cluster_reference(labels, c)
    got = labels.clone()
    rebalance_query_tiles(x, got, perm, offsets, cent, rho, block, Workspace(), precision="ieee")
    assert torch.equal(got, want)
    # fewer partly filled tiles, nothing else changed: donors shed all their excess or nothing
    before, after = cluster_sizes(labels, c), cluster_sizes(got, c)
    excess, donor, room = donors_and_room(before, rho, block)
    shed = before - after
    assert torch.all(~donor | (shed == 0) | (shed == excess))  # a donor sheds all of its excess or nothing
    assert torch.all(donor | ((shed <= 0) & (-shed <= room)))  # the others only take rows, up to their room
    assert (shed > 0).any()


def test_allocation_over_several_blocks_of_slots(monkeypatch):
    # each destination counts its candidates block by block (BLOCK_S slots a step): with 4-slot blocks the ranks
    # carry across many blocks, and the moves are still the reference's
    from svg2core.ops.rebalance import rebalance as R

    monkeypatch.setattr(R, "_BLOCK_S", 4)
    x, labels, cent = _clustered(12, 1, 2, 300, 12, 64)
    want = rebalance_reference(x.reshape(2, 300, 64), labels, cent, 8, 32)
    perm, offsets = sort_by_cluster_reference(labels, 12)
    excess, donor, _ = donors_and_room(cluster_sizes(labels, 12), 8, 32)
    assert (excess * donor).sum(1).min() > 3 * 4  # the candidates span more than three blocks in every head
    got = labels.clone()
    rebalance_query_tiles(x, got, perm, offsets, cent, 8, 32, Workspace(), precision="ieee")
    assert (want != labels).any() and torch.equal(got, want)


def test_nothing_moves_without_room_or_with_rho_0():
    x, _, cent = _clustered(3, 1, 1, 50, 2, 64)
    # 33 and 17 rows in 16-row tiles: both clusters hold one row past a tile, both donors, so no cluster has room
    labels = torch.cat([torch.zeros(1, 33, dtype=torch.int32), torch.ones(1, 17, dtype=torch.int32)], 1)
    _, donor, room = donors_and_room(cluster_sizes(labels, 2), 1, 16)
    assert donor.all() and (room == 0).all()
    perm, offsets = sort_by_cluster_reference(labels, 2)
    for rho in (0, 1):
        got = labels.clone()
        rebalance_query_tiles(x, got, perm, offsets, cent, rho, 16, Workspace(), precision="ieee")
        assert torch.equal(got, labels)
    assert torch.equal(rebalance_reference(x.reshape(1, 50, 64), labels, cent, 1, 16), labels)


@pytest.mark.parametrize("precision", ["ieee", "bf16"])
def test_margins_by_chunks_of_sorted_positions_skip_and_span_clusters(precision):
    # the product's 128-row tiles: per head, a 256-row cluster (no donor, no room) fills the margin kernel's first
    # chunks of sorted positions (128 rows with bf16 margins, 64 with fp32 ones: skipped), a donor of 130 rows (2 past
    # a tile) spans the next ones, and the others have room or not; labels need not be the nearest centroids' for the
    # rule, so each head's are shuffled at random
    from svg2core.ops.rebalance.rebalance import _BLOCK_N

    g = torch.Generator().manual_seed(4)
    h, d, sizes = 2, 64, (256, 130, 100, 150, 64)
    assert sizes[0] == 2 * _BLOCK_N
    n, c = sum(sizes), len(sizes)
    base = torch.repeat_interleave(torch.arange(c), torch.tensor(sizes))
    labels = torch.stack([base[torch.randperm(n, generator=g)] for _ in range(h)]).int()
    x = torch.randn(1, h, n, d, generator=g).to(torch.bfloat16)
    xf = x[0].float()
    cent = (torch.zeros(h, c, d).scatter_add_(1, labels.long()[..., None].expand(-1, -1, d), xf)
            / cluster_sizes(labels, c)[..., None])
    excess, donor, room = donors_and_room(cluster_sizes(labels, c), 16, 128)
    assert donor.tolist() == [[False, True, False, False, False]] * h and room[0].tolist() == [0, 0, 28, 42, 0]
    want = rebalance_reference(xf, labels, cent, 16, 128)
    assert ((want != labels).sum(1) == 2).all()  # each head's donor sheds its 2 rows
    perm, offsets = sort_by_cluster_reference(labels, c)
    got = labels.clone()
    rebalance_query_tiles(x, got, perm, offsets, cent, 16, 128, Workspace(), precision=precision)
    assert torch.equal(got, want)  # these rows have no near-tie, so the bf16 margins choose them too


def test_svg2_attention_with_rebalancing_on_both_backends():
    from svg2core import SVG2Config
    from svg2core.attention import REBALANCE_BLOCK, cluster_and_select, svg2_attention
    from svg2core.ops.kmeans import batched_kmeans, init_centroids_strided
    from svg2core.state import LayerState

    # well-separated query blobs of 140, 100 and 64 tokens (128-row tiles): the first holds 12 rows past a tile (a
    # donor), the second has room for 28, the third fills its half tile; well-separated key blobs, so that both
    # backends' k-means agree
    g = torch.Generator().manual_seed(0)
    h, d = 2, 64
    sizes = (140, 100, 64)
    q_centres = torch.randn(1, h, 3, d, generator=g) * 8
    blob = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))[torch.randperm(sum(sizes), generator=g)]
    n = blob.numel()
    for i, pos in enumerate(c * n // 3 for c in range(3)):  # the strided cold start's tokens: one in each blob
        j = int(torch.nonzero(blob == i)[0])
        blob[pos], blob[j] = blob[j].clone(), blob[pos].clone()
    q = (q_centres[:, :, blob] + 0.5 * torch.randn(1, h, n, d, generator=g)).to(torch.bfloat16)
    k = (torch.randn(1, h, 4, d, generator=g) * 8).repeat_interleave(n // 4, dim=2)
    k = (k + 0.5 * torch.randn(1, h, n, d, generator=g)).to(torch.bfloat16)
    v = torch.randn(1, h, n, d, generator=g).to(torch.bfloat16)
    cfg = SVG2Config(mode="fixed_density", target_density=0.5, num_q_clusters=3, num_k_clusters=4,
                     kmeans_iters_init=5, query_tile_rebalance=16)
    # the plan's query clusters are the k-means' moved by the rule, and the kernel's layout follows them
    qc, kc = torch.empty(h, 3, d), torch.empty(h, 4, d)
    init_centroids_strided(q, 3, qc)
    init_centroids_strided(k, 4, kc)
    km_labels, _, _ = batched_kmeans(q, qc.clone(), 3, Workspace(), "q", "reference")
    plan = cluster_and_select(q, k, v, qc, kc, 3, cfg, Workspace(), "reference")
    want = rebalance_reference(q.reshape(h, n, d), km_labels, qc, 16, REBALANCE_BLOCK)
    assert sorted(cluster_sizes(km_labels, 3)[0].tolist()) == [64, 100, 140]
    assert (want != km_labels).sum() == 2 * 12  # each head's donor sheds its 12 rows into the 100-token blob
    assert torch.equal(plan.q_labels, want)
    perm, offsets = sort_by_cluster_reference(want, 3)
    assert torch.equal(plan.q_perm, perm) and torch.equal(plan.q_offsets, offsets)
    # both backends: the same density and output, cold and warm
    outs = {}
    for backend in ("reference", "triton"):
        state, ws = LayerState(), Workspace()
        outs[backend] = [svg2_attention(q, k, v, cfg, state, workspace=ws, backend=backend) for _ in range(2)]
    for (o_ref, d_ref), (o_tri, d_tri) in zip(outs["reference"], outs["triton"], strict=True):
        torch.testing.assert_close(d_tri, d_ref)
        torch.testing.assert_close(o_tri.float(), o_ref.float(), atol=2e-2, rtol=2e-2)


def test_the_config_names_the_field_and_the_rule():
    from svg2core import SVG2Config

    with pytest.raises(ValueError, match=r"query_tile_rebalance: must be in \[0, 64\]"):
        SVG2Config(query_tile_rebalance=65)


def test_a_request_sets_rebalancing_and_the_job_runs_it():
    # the request field: validated by name, resolved over a preset, and carried into the config the job runs
    from pydantic import ValidationError

    from svg2core.integration import SparsityPlan
    from worker.spec import SparsitySettings, resolve_sparsity

    with pytest.raises(ValidationError, match="query_tile_rebalance"):
        resolve_sparsity({"preset": "fast", "query_tile_rebalance": 65})
    settings = resolve_sparsity({"preset": "fast", "query_tile_rebalance": 16})
    assert settings.query_tile_rebalance == 16 and settings.top_p == 0.8  # the rest is the preset's
    assert SparsityPlan.from_settings(settings).config.query_tile_rebalance == 16
    assert SparsitySettings().query_tile_rebalance == 0  # off unless asked for


def test_bf16_margins_keep_the_rule():
    # one bf16 product per distance (MARGIN_PRECISION="bf16"): the rule's invariants hold and nearly every row moves
    # as in the fp32 reference (a near-tie may choose another row)
    x, labels, cent = _clustered(12, 1, 2, 300, 12, 64, torch.bfloat16)
    perm, offsets = sort_by_cluster_reference(labels, 12)
    got = labels.clone()
    rebalance_query_tiles(x, got, perm, offsets, cent, 8, 32, Workspace(), precision="bf16")
    want = rebalance_reference(x.reshape(2, 300, 64), labels, cent, 8, 32)
    assert (want != labels).any() and (got != labels).any()
    assert (got != want).float().mean() < 0.02
    before, after = cluster_sizes(labels, 12), cluster_sizes(got, 12)
    excess, donor, room = donors_and_room(before, 8, 32)
    shed = before - after
    assert torch.all(~donor | (shed == 0) | (shed == excess))
    assert torch.all(donor | ((shed <= 0) & (-shed <= room)))


def test_the_margin_kernels_launch_fits_an_sm_without_spills(tmp_path, compiler_env):
    # bench/probes/compile_margin.py compiles the library's launch (its defaults) for sm_90 with Triton's own ptxas
    # (no GPU needed)
    import json
    import subprocess
    import sys
    from pathlib import Path

    from svg2core.ops.rebalance import rebalance as R

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "margin.json"
    subprocess.run([sys.executable, str(root / "bench" / "probes" / "compile_margin.py"), "--json", str(out)],
                   check=True, capture_output=True, env=compiler_env, timeout=300, cwd=root)
    (row,) = json.loads(out.read_text())
    assert (row["block_n"], row["block_c"], row["stages"], row["warps"]) == (R._BLOCK_N, R._BLOCK_C,
                                                                             R._MARGIN_STAGES, R._MARGIN_WARPS)
    assert row["stack"] == 0  # no spills
    assert row["programs_per_sm"] >= R._MARGIN_PROGRAMS_PER_SM  # the persistent grid's programs are all resident
