"""The Hopper default path of the sparse attention (Gluon kernel for D=128, Triton for the rest) against
the torch reference, on a Hopper GPU only (skipped elsewhere, so not in CPU CI).

    python -m pytest -q tests/svg2core/test_sparse_attn_hopper.py      # on an H100 / H200

Cases chosen from what broke or is untested: many surplus programs with 3+ key tiles per query tile
(the v5 hang: a producer waiting for consumers that had nothing to do), batch > 1 with text tokens and a
padding mask, fp16, D=64 (Triton), remainder tiles that leave one consumer warpgroup idle (with and
without the ping-pong hand-off), the PV wait pinned after the softmax, the key-tile tables, the persistent kernel, K/V read in place through k_perm, and a CUDA-graph replay. A hang fails the test through pytest-timeout
instead of blocking the run.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

if not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9):
    pytest.skip("needs a Hopper GPU (compute capability 9.x)", allow_module_level=True)

from test_sparse_attn import make_inputs, rel_rms  # noqa: E402

from svg2core.ops.sparse_attn import default_config, sparse_attention, sparse_attention_reference  # noqa: E402
from svg2core.state import Workspace  # noqa: E402


def _check(b, h, nv, t, d, cq, ck, dtype, density, seed, tol, config=None, kv_perm=False, empty_clusters=False):
    args, kpm, k_perm = make_inputs(b, h, nv, t, d, cq, ck, dtype=dtype, density=density, seed=seed,
                                    return_perm=True, empty_clusters=empty_clusters)
    out = torch.full_like(args["q"], float("nan"))
    call = {**args, "kp": None, "vp": None, "k_perm": k_perm} if kv_perm else args
    sparse_attention(**call, num_dense_tokens=t, key_padding_mask=kpm, out=out, config=config)
    torch.cuda.synchronize()
    assert not torch.isnan(out).any()
    # the reference's fp32 (B*H, rows, N) scores in chunks of 2048 query rows: the 16 x 20,000 case needs 26 GB at once
    ref = sparse_attention_reference(**args, num_dense_tokens=t, key_padding_mask=kpm, query_chunk=2048)
    assert rel_rms(out, ref) < tol
    return args, kpm


@pytest.mark.timeout(180, method="thread")
def test_default_is_gluon_for_head_dim_128():
    assert default_config(torch.device("cuda"), torch.bfloat16, 128).impl == "gluon"


@pytest.mark.timeout(180, method="thread")
@pytest.mark.parametrize("density", [0.05, 0.5, 1.0])
def test_surplus_programs_and_many_key_tiles(density):
    # 64 query clusters over 3000 tokens: the static grid has far more programs than tiles; up to 24 key tiles
    _check(1, 2, 3000, 0, 128, 64, 40, torch.bfloat16, density, seed=1, tol=2e-2)


@pytest.mark.timeout(180, method="thread")
def test_batch_two_with_text_and_padding_mask():
    _check(2, 3, 2500, 77, 128, 20, 30, torch.bfloat16, 0.3, seed=2, tol=2e-2)


@pytest.mark.timeout(180, method="thread")
def test_fp16_and_head_dim_64():
    _check(1, 2, 2000, 0, 128, 16, 24, torch.float16, 0.4, seed=3, tol=5e-3)
    _check(1, 2, 2000, 16, 64, 16, 24, torch.bfloat16, 0.4, seed=4, tol=2e-2)


@pytest.mark.timeout(180, method="thread")
def test_small_remainders_on_one_warpgroup_and_ping_pong():
    # 300 query clusters over 6000 tokens: most tiles are a cluster's remainder of <= 64 rows, where the
    # second consumer warpgroup only passes the stages on (tail_m=0 default); then the same with the
    # ping-pong hand-off, which that idle warpgroup must keep passing
    base = default_config(torch.device("cuda"), torch.bfloat16, 128)
    assert base.tail_m == 0
    _check(1, 2, 6000, 0, 128, 300, 40, torch.bfloat16, 0.3, seed=6, tol=2e-2)
    _check(1, 2, 6000, 33, 128, 300, 40, torch.bfloat16, 0.3, seed=7, tol=2e-2,
           config=replace(base, gluon_pingpong=True))


@pytest.mark.timeout(180, method="thread")
def test_pv_wait_pinned_after_the_softmax():
    # gluon_pin_wait: the row sums' shared-memory store before each PV wait (same function, another schedule)
    cfg = replace(default_config(torch.device("cuda"), torch.bfloat16, 128), gluon_pin_wait=True)
    _check(1, 2, 6000, 33, 128, 300, 40, torch.bfloat16, 0.3, seed=9, tol=2e-2, config=cfg)
    _check(1, 2, 3000, 0, 128, 64, 40, torch.bfloat16, 1.0, seed=11, tol=2e-2, config=cfg, empty_clusters=True)


@pytest.mark.timeout(180, method="thread")
def test_key_tile_tables():
    # gluon_tile_tables: the producer reads each tile's segment window and the segments' row bases from the
    # tables of tables.py; tiles spanning many segments (300 key clusters), few, empty clusters, text keys
    # with a padding mask, batch 2, K/V read in place
    cfg = replace(default_config(torch.device("cuda"), torch.bfloat16, 128), gluon_tile_tables="on")
    _check(1, 2, 6000, 0, 128, 40, 300, torch.bfloat16, 0.3, seed=13, tol=2e-2, config=cfg)
    _check(2, 3, 2500, 77, 128, 20, 7, torch.bfloat16, 0.3, seed=14, tol=2e-2, config=cfg)
    _check(1, 2, 3000, 0, 128, 64, 40, torch.bfloat16, 1.0, seed=15, tol=2e-2, config=cfg, empty_clusters=True)
    _check(2, 2, 2500, 77, 128, 40, 30, torch.bfloat16, 0.3, seed=16, tol=2e-2, config=cfg, kv_perm=True)
    off = replace(cfg, gluon_tile_tables="off")
    _check(1, 2, 6000, 0, 128, 40, 300, torch.bfloat16, 0.3, seed=13, tol=2e-2, config=off)


@pytest.mark.timeout(180, method="thread")
def test_persistent_work_list():
    # gluon_persistent: one program per SM takes the query tiles from a shared counter; the stage ring and the
    # item ring run on across items. Many surplus work-list entries and key tiles, remainders that leave one
    # warpgroup idle, text keys with a padding mask and batch 2, the tables on and off, empty clusters, K/V
    # read in place, more tiles than programs by far, and a CUDA graph replayed twice (the counter is reset)
    cfg = replace(default_config(torch.device("cuda"), torch.bfloat16, 128), gluon_persistent=True)
    _check(1, 2, 3000, 0, 128, 64, 40, torch.bfloat16, 0.05, seed=22, tol=2e-2, config=cfg)
    _check(1, 2, 3000, 0, 128, 64, 40, torch.bfloat16, 1.0, seed=23, tol=2e-2, config=cfg, empty_clusters=True)
    _check(1, 2, 6000, 33, 128, 300, 40, torch.bfloat16, 0.3, seed=24, tol=2e-2, config=cfg)
    _check(2, 3, 2500, 77, 128, 20, 30, torch.bfloat16, 0.3, seed=25, tol=2e-2,
           config=replace(cfg, gluon_tile_tables="on"))
    _check(2, 2, 2500, 77, 128, 40, 30, torch.bfloat16, 0.3, seed=26, tol=2e-2, config=cfg, kv_perm=True)
    _check(1, 16, 20000, 0, 128, 100, 200, torch.bfloat16, 0.2, seed=27, tol=2e-2, config=cfg)
    _check_graph_replay(0, seed=28, config=cfg)


@pytest.mark.timeout(180, method="thread")
def test_k_v_read_in_place_through_k_perm():
    _check(2, 2, 2500, 77, 128, 40, 30, torch.bfloat16, 0.3, seed=8, tol=2e-2, kv_perm=True)


@pytest.mark.timeout(180, method="thread")
@pytest.mark.parametrize("t", [40, 0])
def test_cuda_graph_replay_equals_eager(t):
    # the default builds the key-tile tables (gluon_tile_tables="on") in the workspace's buffers, with and without
    # text tokens
    _check_graph_replay(t, seed=5)


def _check_graph_replay(t, seed, config=None):
    """A call captured in a CUDA graph (its workspace warmed up by eager calls) replays to the eager output,
    allocating nothing during capture."""
    args, kpm = make_inputs(1, 2, 3000, t, 128, 24, 32, dtype=torch.bfloat16, density=0.3, seed=seed)
    ws = Workspace()
    call = dict(num_dense_tokens=t, key_padding_mask=kpm, config=config, workspace=ws)
    eager = sparse_attention(**args, **call).clone()
    out = torch.empty_like(eager)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        sparse_attention(**args, **call, out=out)
    torch.cuda.current_stream().wait_stream(side)
    allocations = ws.allocations
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sparse_attention(**args, **call, out=out)
    assert ws.allocations == allocations  # nothing allocated during capture
    for _ in range(2):  # a second replay finds the call's per-call state (e.g. a work counter) reset
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)


@pytest.mark.timeout(180, method="thread")
def test_kmeans_over_candidate_lists_on_the_gpu():
    # the list kernel and the list assign against the reference, then the k-means over lists in a CUDA graph:
    # replays equal the eager run, nothing allocated in capture
    from svg2core.ops.kmeans import batched_kmeans
    from svg2core.ops.kmeans.kmeans import kmeans_assign_candidates

    torch.manual_seed(3)
    h, n, c, m = 4, 20000, 300, 16
    x = torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16)
    start = x[0, :, :: n // c][:, :c].float().contiguous()
    batched_kmeans(x, start, 3, Workspace(), "w")
    labels, perm, offsets = (t.clone() for t in batched_kmeans(x, start.clone(), 1, Workspace(), "w"))
    cent = start.to(torch.bfloat16).float()  # the kernels' copies hold the same values
    got = labels.clone()
    kmeans_assign_candidates(x, cent, got, perm, offsets, m, workspace=Workspace(), name="w")
    want = labels.cpu()
    kmeans_assign_candidates(x.cpu(), cent.cpu(), want, perm.cpu(), offsets.cpu(), m, "reference")
    assert (got.cpu() == want).float().mean() > 0.999
    ws = Workspace()
    cent_e = start.clone()
    eager = [t.clone() for t in batched_kmeans(x, cent_e, 2, ws, "w", candidates=m)]
    cent_g = start.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        batched_kmeans(x, cent_g, 2, ws, "w", candidates=m)
    torch.cuda.current_stream().wait_stream(side)
    allocations = ws.allocations
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        res = batched_kmeans(x, cent_g, 2, ws, "w", candidates=m)
    assert ws.allocations == allocations
    cent_g.copy_(start)
    graph.replay()
    torch.cuda.synchronize()
    for a, z in zip(eager, res, strict=True):
        assert torch.equal(a, z)
    torch.testing.assert_close(cent_g, cent_e, rtol=0, atol=0)


@pytest.mark.timeout(180, method="thread")
def test_selection_in_sweep_order_on_the_gpu(monkeypatch):
    # svg2_attention with the Gluon kernel lays its selection out in sweep order with the SM count as the period:
    # the reference's sweep order of the call without it, the same density, the output equal to rounding; then a
    # warm call in a CUDA graph replays to the eager one, allocating nothing during capture
    import svg2core.attention as attention
    from svg2core import LayerState, SVG2Config, svg2_attention
    from svg2core.ops.select import selection_in_sweep_order, sweep_starts_reference
    from svg2core.ops.sparse_attn import key_sweep_layout

    torch.manual_seed(4)
    b, h, n, t, d, cq, ck = 1, 4, 60000, 64, 128, 60, 200  # K + V 31 MB a head: past half the L2, so it sweeps
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    kpm = torch.ones(b, t, dtype=torch.bool, device="cuda")
    kpm[:, 40:] = False
    cfg = SVG2Config(num_q_clusters=cq, num_k_clusters=ck, mode="fixed_density", target_density=0.25)
    period, block_m = key_sweep_layout(q.device, q.dtype, d, n - t)
    assert (period, block_m) == (torch.cuda.get_device_properties(0).multi_processor_count, 128)
    assert key_sweep_layout(q.device, q.dtype, d, 20000)[0] == 0  # 10 MB a head: the L2 holds it, no sweep
    runs = {}
    for sweep in (False, True):
        monkeypatch.setattr(attention, "KEY_SWEEP", sweep)
        ws = Workspace()
        out, density = svg2_attention(q, k, v, cfg, LayerState(), workspace=ws, num_dense_tokens=t,
                                      key_padding_mask=kpm)
        allocated = ws.allocations
        # "cuda" names the call's own buffers (on cuda:0): nothing new is allocated
        sel = [ws.buffer(name, shape, torch.int32, "cuda").clone() for name, shape in
               (("sel.idx", (h, cq, ck)), ("sel.count", (h, cq)), ("sel.cum", (h, cq, ck + 1)))]
        runs[sweep] = (out, density, sel, ws.buffer("q.sizes", (h, cq), torch.int32, "cuda"),
                       ws.buffer("k.sizes", (h, ck), torch.int32, "cuda"))
        assert ws.allocations == allocated
    out0, density0, sel0, q_sizes, k_sizes = runs[False]
    out1, density1, sel1, _, _ = runs[True]
    assert torch.equal(density1, density0)
    want = selection_in_sweep_order(sel0[0], sel0[1], k_sizes, sweep_starts_reference(q_sizes, period, block_m, ck))
    for g, w in zip(sel1, want, strict=True):
        assert torch.equal(g, w)
    assert rel_rms(out1, out0) < 5e-3  # the online softmax sums in another order: bf16 rounding only

    monkeypatch.setattr(attention, "KEY_SWEEP", True)
    _warm_call_in_a_graph_equals_eager(q, k, v, cfg, num_dense_tokens=t, key_padding_mask=kpm)


def _warm_call_in_a_graph_equals_eager(q, k, v, cfg, **call) -> None:
    """A warm ``svg2_attention`` call captured in a CUDA graph (after a cold call and a warm one on a side stream):
    nothing is allocated during the capture, and a replay from the same cached centroids equals the eager call."""
    from svg2core import LayerState, svg2_attention

    state, ws = LayerState(), Workspace()
    call["workspace"] = ws
    svg2_attention(q, k, v, cfg, state, **call)  # cold: sizes the workspace, creates the centroids
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        svg2_attention(q, k, v, cfg, state, **call)
    torch.cuda.current_stream().wait_stream(side)
    cent = [x.clone() for x in (state.get(0).q, state.get(0).k)]
    allocations = ws.allocations
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_g, density_g = svg2_attention(q, k, v, cfg, state, **call)
    assert ws.allocations == allocations
    for x, c in zip((state.get(0).q, state.get(0).k), cent, strict=True):
        x.copy_(c)
    eager_out, eager_density = (x.clone() for x in svg2_attention(q, k, v, cfg, state, **call))
    for x, c in zip((state.get(0).q, state.get(0).k), cent, strict=True):
        x.copy_(c)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out_g, eager_out) and torch.equal(density_g, eager_density)


@pytest.mark.timeout(240, method="thread")
def test_values_made_beside_the_selection_on_the_gpu():
    # svg2_attention with the values as a callable (a GEMM on the caller's stream while both k-means chains run on
    # side streams, the gather waiting for it): the cold and the warm call equal the tensor's bit for bit (text
    # tokens, the token sample, the tail union), and a warm call with it replays in a CUDA graph
    from svg2core import LayerState, SVG2Config, svg2_attention

    torch.manual_seed(8)
    h, n, t, d = 8, 20000, 64, 128
    x = torch.randn(n + t, h * d, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(h * d, h * d, device="cuda", dtype=torch.bfloat16) / (h * d) ** 0.5

    def make_v():
        return (x @ w.t()).view(1, n + t, h, d).transpose(1, 2)

    q, k = (torch.randn(1, h, n + t, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    cfg = SVG2Config(num_q_clusters=100, num_k_clusters=200, mode="fixed_density", target_density=0.25,
                     kmeans_iters_init=5, kmeans_subsample=2, query_tail_union=True)
    v = make_v()
    runs = []
    for value in (v, make_v):
        state, ws = LayerState(), Workspace()
        calls = [[y.clone() for y in svg2_attention(q, k, value, cfg, state, workspace=ws, num_dense_tokens=t)]
                 for _ in range(2)]  # cold, warm
        runs.append([y for call in calls for y in call] + [state.get(0).q.clone(), state.get(0).k.clone()])
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    _warm_call_in_a_graph_equals_eager(q, k, make_v, cfg, num_dense_tokens=t)


def test_query_tile_rebalancing_on_the_gpu():
    # the four rebalancing kernels against the reference at 8 heads x 20,000 tokens (bf16 tokens; tf32x3 and bf16
    # margins: a near-tie may move another row), then a warm svg2_attention call with
    # query_tile_rebalance in a CUDA graph: no allocation during capture, replay equal to eager
    from svg2core import SVG2Config
    from svg2core.ops.permute import sort_by_cluster_reference
    from svg2core.ops.rebalance import cluster_sizes, donors_and_room, rebalance_reference
    from svg2core.ops.rebalance.rebalance import rebalance_query_tiles

    torch.manual_seed(6)
    h, n, d, c = 8, 20000, 128, 100
    x = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16)
    cent = torch.randn(h, c, d, device="cuda") * 0.3
    labels = ((cent**2).sum(-1)[:, None] - 2 * x[0].float() @ cent.transpose(1, 2)).argmin(-1).int()
    perm, offsets = sort_by_cluster_reference(labels, c)
    want = rebalance_reference(x[0], labels, cent, 16)
    assert (want != labels).sum() > 100
    excess, donor, room = donors_and_room(cluster_sizes(labels, c), 16, 128)
    # tf32x3 margins: as accurate as fp32, at most a few rows differ; bf16 (the default): the rule holds, and the
    # rows chosen differ only at near-ties
    for precision, most in (("tf32x3", 2e-3), ("bf16", 2e-2)):
        got = labels.clone()
        rebalance_query_tiles(x, got, perm, offsets, cent, 16, 128, Workspace(), precision=precision)
        assert (got != want).float().mean() < most, precision
        shed = cluster_sizes(labels, c) - cluster_sizes(got, c)
        assert torch.all(~donor | (shed == 0) | (shed == excess)), precision
        assert torch.all(donor | ((shed <= 0) & (-shed <= room))), precision
        assert (shed > 0).any(), precision

    cfg = SVG2Config(num_q_clusters=c, num_k_clusters=200, mode="fixed_density", target_density=0.25,
                     query_tile_rebalance=16)
    q, k, v = (torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    _warm_call_in_a_graph_equals_eager(q, k, v, cfg)


@pytest.mark.timeout(240, method="thread")
def test_query_tail_union_on_the_gpu():
    # the tail-union stage's kernels against the reference at 4 heads x 20,000 tokens, 150 / 400 clusters (the tables
    # must agree exactly: integer rule), the Gluon kernel on the union layout against the torch reference of the same
    # tables, then a warm svg2_attention call with query_tail_union in a CUDA graph
    from test_tail_union import ARGS, layout

    from svg2core import SVG2Config
    from svg2core.ops.tail_union import tail_union, tail_union_reference

    t = layout(11, 4, 20000, 150, 400, density=0.2)
    for sweep in ((132, 128), None):  # with the key sweep (the product's default on a GPU) and without
        want = tail_union_reference(*(t[a] for a in ARGS), sweep=sweep)
        got = tail_union(*(t[a].clone().cuda() for a in ARGS), workspace=Workspace(), sweep=sweep)
        for name, w, g in zip(("labels", "perm", "offsets", "sizes", "sel_idx", "sel_count", "sel_cum"), want, got,
                              strict=True):
            assert torch.equal(g.cpu(), w), (name, sweep)
    assert int((want[5][:, 150:] > 0).sum()) > 100  # tails were packed
    # the kernel on the union layout (the reference attends by the same tables)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 4, 20000, 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    k_off = torch.zeros(4, 401, dtype=torch.int32, device="cuda")
    k_off[:, 1:] = t["k_sizes"].cuda().cumsum(1)
    kp, vp = (torch.randn(4, 20000, 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
    args = dict(q=q, k=k, v=v, kp=kp, vp=vp, q_perm=got[1], q_offsets=got[2], k_offsets=k_off, sel_idx=got[4],
                sel_count=got[5], sel_cum=got[6])
    out = sparse_attention(**args, partial_tiles=150)
    ref = sparse_attention_reference(**args, query_chunk=2048)
    assert rel_rms(out, ref) < 1e-2

    cfg = SVG2Config(num_q_clusters=150, num_k_clusters=400, mode="fixed_density", target_density=0.25,
                     query_tail_union=True)
    q, k, v = (torch.randn(1, 8, 20000, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    _warm_call_in_a_graph_equals_eager(q, k, v, cfg)


def test_kmeans_subsample_on_the_gpu():
    # kmeans_subsample: the Triton k-means (sampled iterations, then a full one) against the reference at 8 heads x
    # 20,000 tokens in 300 blobs, 100 clusters (bf16 dots: a near-tie may go the other way and move a cluster's mean,
    # so most centroids agree closely, not all), then a warm svg2_attention call with it in a CUDA graph
    from svg2core import SVG2Config
    from svg2core.ops.kmeans import batched_kmeans, init_centroids_strided

    torch.manual_seed(7)
    h, n, d, c = 8, 20000, 128, 100
    centres = torch.randn(h, 3 * c, d, device="cuda")
    blob = torch.randint(0, 3 * c, (n,), device="cuda")
    x = (centres[:, blob] + 0.5 * torch.randn(h, n, d, device="cuda"))[None].to(torch.bfloat16)
    start = torch.empty(h, c, d, device="cuda")
    init_centroids_strided(x, c, start)
    runs = {}
    for backend in ("triton", "reference"):
        cent = start.clone()
        labels = batched_kmeans(x, cent, 3, Workspace(), "k", backend, subsample=2)[0].clone()
        runs[backend] = (labels, cent)
    (lt, ct), (lr, cr) = runs["triton"], runs["reference"]
    assert (lt == lr).float().mean() > 0.99
    assert ((ct - cr).norm(dim=-1) / cr.norm(dim=-1) < 1e-2).float().mean() > 0.8
    plain = start.clone()
    batched_kmeans(x, plain, 3, Workspace(), "k")
    assert not torch.allclose(plain, ct, atol=1e-3)  # the sampled iterations ran on the sample

    cfg = SVG2Config(num_q_clusters=c, num_k_clusters=200, mode="fixed_density", target_density=0.25,
                     kmeans_subsample=2)
    q, k, v = (torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    _warm_call_in_a_graph_equals_eager(q, k, v, cfg)


def test_density_and_its_accumulation_on_the_gpu():
    # the density kernel (fp64 in a program per head) and the accounting's accumulation (one program) against their
    # references at Wan 14B's cluster counts, with a text mask; then a warm call with text in a CUDA graph (its
    # density equals the eager call's)
    from test_density import _mask, _selection

    from svg2core import SVG2Config
    from svg2core.ops.density import (
        accumulate_density,
        accumulate_density_reference,
        selection_density,
        selection_density_reference,
    )

    b, h, cq, ck, nv, t = 2, 40, 300, 1000, 75600, 226
    sel = [x.cuda() for x in _selection(b * h, cq, ck, nv, seed=5)]
    mask = _mask(b, t, seed=5).cuda()
    for m in (None, mask):
        want = selection_density_reference(*sel, b, h, nv, t, m)
        got = selection_density(*sel, b, h, nv, t, m, backend="triton")
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        totals, ref = (torch.zeros(2, dtype=torch.float64, device="cuda") for _ in range(2))
        for _ in range(3):
            accumulate_density(totals, got, nv + t, t, 128, m)
            accumulate_density_reference(ref, got, nv + t, t, 128, m)
        torch.testing.assert_close(totals, ref, rtol=1e-12, atol=0)

    cfg = SVG2Config(num_q_clusters=50, num_k_clusters=100, mode="fixed_density", target_density=0.25)
    q, k, v = (torch.randn(2, 4, 4096 + 64, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    _warm_call_in_a_graph_equals_eager(q, k, v, cfg, num_dense_tokens=64, key_padding_mask=_mask(2, 64, 1).cuda())
