"""svg2_attention: backends agree, dense limits, density, state per branch / batch element, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from svg2core import LayerState, SVG2Config, Workspace, svg2_attention
from svg2core.attention import masked_dense_attention_reference
from svg2core.ops.density import selection_density_reference

SMALL = SVG2Config(num_q_clusters=4, num_k_clusters=7, kmeans_iters_init=2, kmeans_iters=1, top_p=0.7)


def _qkv(b, h, n, d, dtype=torch.bfloat16):
    return [torch.randn(b, h, n, d).to(dtype) for _ in range(3)]


def _dense_reference(q, k, v, t, mask):
    b, _, n, _ = q.shape
    keys = torch.ones(b, n, dtype=torch.bool)
    if mask is not None:
        keys[:, n - t:] = mask
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=keys[:, None, None, :])


def _mask(b, t, valid):
    m = torch.zeros(b, t, dtype=torch.bool)
    for i, nvalid in enumerate(valid):
        m[i, :nvalid] = True
    return m


@pytest.mark.parametrize("t", [0, 5])
def test_reference_with_top_p_1_equals_dense(t):
    q, k, v = _qkv(2, 2, 41, 64)
    mask = _mask(2, t, [t, 2]) if t else None
    cfg = SMALL.replace(top_p=1.0)
    out, density = svg2_attention(q, k, v, cfg, LayerState(), num_dense_tokens=t, key_padding_mask=mask,
                                  backend="reference")
    torch.testing.assert_close(out.float(), _dense_reference(q, k, v, t, mask), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(density, torch.ones(2, 2), rtol=1e-6, atol=1e-6)


def test_masked_reference_reads_only_the_first_sel_count_entries():
    """Entries past ``sel_count`` are not part of the selection, even when they repeat a kept id (a scatter of
    flags would let such a repeat un-keep the cluster)."""
    torch.manual_seed(0)
    q, k, v = _qkv(1, 1, 24, 64, torch.float32)
    q_labels = (torch.arange(24) % 3).int()[None]
    k_labels = (torch.arange(24) // 6).int()[None]  # 4 key clusters of 6 tokens
    # every row keeps clusters 0 and 2; the unread tail repeats them
    sel_idx = torch.tensor([[[0, 2, 0, 2], [2, 0, 0, 0], [0, 2, 2, 2]]], dtype=torch.int32)
    sel_count = torch.tensor([[2, 2, 2]], dtype=torch.int32)
    got = masked_dense_attention_reference(q, k, v, q_labels, k_labels, sel_idx, sel_count, 0, None, 64 ** -0.5)
    allowed = torch.isin(k_labels[0], torch.tensor([0, 2]))[None, :].expand(24, 24)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[None, None])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _reference_for_the_selection(ws, q, k, v, t, mask):
    """The masked dense attention of the selection a SMALL call left in ``ws`` (its labels and kept clusters)."""
    b, h, n, d = q.shape
    nv, bh = n - t, b * h
    q_labels = ws.buffer("q.labels", (bh, nv), torch.int32, "cpu")
    k_labels = ws.buffer("k.labels", (bh, nv), torch.int32, "cpu")
    sel_idx = ws.buffer("sel.idx", (bh, 4, 7), torch.int32, "cpu")
    sel_count = ws.buffer("sel.count", (bh, 4), torch.int32, "cpu")
    return masked_dense_attention_reference(q, k, v, q_labels, k_labels, sel_idx, sel_count, t, mask, d ** -0.5)


CASES = [  # B, H, N, T, D, dtype, valid text per batch element
    pytest.param(1, 2, 33, 0, 64, torch.bfloat16, None, id="odd-tokens-bf16"),
    pytest.param(2, 1, 45, 6, 64, torch.float16, [6, 3], id="text-padding-batch2-fp16"),
    pytest.param(1, 1, 30, 3, 128, torch.bfloat16, [1], id="d128-text"),
]


@pytest.mark.parametrize("b,h,n,t,d,dtype,valid", CASES)
def test_triton_backend_equals_reference_for_its_selection(b, h, n, t, d, dtype, valid):
    q, k, v = _qkv(b, h, n, d, dtype)
    mask = _mask(b, t, valid) if valid else None
    ws = Workspace()
    out, density = svg2_attention(q, k, v, SMALL, LayerState(), workspace=ws, num_dense_tokens=t,
                                  key_padding_mask=mask, backend="triton")
    want = _reference_for_the_selection(ws, q, k, v, t, mask)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2)
    assert torch.all((density > 0) & (density <= 1))


@pytest.mark.parametrize("b,h,n,t,d,dtype,valid", CASES[1:2])  # batch 2, text keys (K's video rows are a view)
def test_keys_gathered_by_the_last_update_equal_the_separate_gather(b, h, n, t, d, dtype, valid, monkeypatch):
    # FUSE_KEY_GATHER: the key k-means' last update writes the permuted keys; the call's output, density and
    # permuted K / V are bit-identical to those of the separate K/V gather (text tokens: K's video rows are a view)
    import svg2core.attention as attention

    q, k, v = _qkv(b, h, n, d, dtype)
    mask = _mask(b, t, valid) if valid else None
    results = {}
    for fused in (False, True):
        monkeypatch.setattr(attention, "FUSE_KEY_GATHER", fused)
        ws = Workspace()
        out, density = svg2_attention(q, k, v, SMALL, LayerState(), workspace=ws, num_dense_tokens=t,
                                      key_padding_mask=mask, backend="triton")
        kp = ws.buffer("kp", (b * h, n - t, d), dtype, "cpu").clone()
        vp = ws.buffer("vp", (b * h, n - t, d), dtype, "cpu").clone()
        results[fused] = (out, density, kp, vp)
    for a, z in zip(results[False], results[True], strict=True):
        assert torch.equal(a, z)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("mode", ["top_p", "dense"])
def test_values_from_a_callable_equal_the_values_passed(backend, mode):
    # ``v`` as a callable (the processors' value projection, made beside the k-means): called once, the same output,
    # density, selection and cached centroids as the tensor, bit for bit (text tokens and a padding mask included)
    b, h, n, t, d = 2, 2, 67, 5, 64
    q, k, v = _qkv(b, h, n, d)
    mask = _mask(b, t, (5, 2))
    config = SMALL if mode == "top_p" else SVG2Config(mode="dense")
    calls = []

    def make_v():
        calls.append(1)
        return v.clone()

    results = []
    for value in (v, make_v):
        state, ws = LayerState(), Workspace()
        out, density = svg2_attention(q, k, value, config, state, workspace=ws, num_dense_tokens=t,
                                      key_padding_mask=mask, backend=backend)
        cent = state.get(0)
        results.append((out, density) + ((cent.q, cent.k) if cent is not None else ()))
    assert len(calls) == 1
    for a, z in zip(*results, strict=True):
        assert torch.equal(a, z)


@pytest.mark.parametrize("bad,message", [
    (lambda: torch.randn(1, 1, 8, 64, dtype=torch.float64), "v: dtype"),
    (lambda: torch.randn(1, 1, 9, 64).to(torch.bfloat16), "v: shape must equal q"),
    (lambda: "values", "v: must be a torch.Tensor"),
])
@pytest.mark.parametrize("mode", ["top_p", "dense"])
def test_a_value_callable_that_returns_bad_values_is_refused_naming_v(bad, message, mode):
    q, k, _ = _qkv(1, 1, 8, 64)
    config = SMALL if mode == "top_p" else SVG2Config(mode="dense")
    with pytest.raises(ValueError, match=message):
        svg2_attention(q, k, bad, config, LayerState(), backend="reference")


def test_key_sweep_lays_out_the_same_selection_in_sweep_order(monkeypatch):
    # KEY_SWEEP with a period (the CPU has none of its own): the kept sets, counts, density and output are those of
    # the call without it, the layout is the reference's sweep order of that selection, and the kernel's output
    # equals the reference for its selection
    import svg2core.ops.sparse_attn as sparse_attn
    from svg2core.ops.select import selection_in_sweep_order, sweep_starts_reference

    b, h, n, t, d = 1, 2, 300, 5, 64
    q, k, v = _qkv(b, h, n, d)
    mask = _mask(b, t, [3])
    cfg = SMALL.replace(num_q_clusters=6, num_k_clusters=12)
    runs = {}
    for period in (0, 3):
        monkeypatch.setattr(sparse_attn, "key_sweep_layout", lambda dev, dtype, hd, nv, p=period: (p, 16))
        ws = Workspace()
        out, density = svg2_attention(q, k, v, cfg, LayerState(), workspace=ws, num_dense_tokens=t,
                                      key_padding_mask=mask, backend="triton")
        sel = [ws.buffer(name, shape, torch.int32, "cpu").clone() for name, shape in
               (("sel.idx", (b * h, 6, 12)), ("sel.count", (b * h, 6)), ("sel.cum", (b * h, 6, 13)))]
        q_sizes = ws.buffer("q.sizes", (b * h, 6), torch.int32, "cpu").clone()
        k_sizes = ws.buffer("k.sizes", (b * h, 12), torch.int32, "cpu").clone()
        runs[period] = (out, density, sel, q_sizes, k_sizes)
    out0, density0, sel0, q_sizes, k_sizes = runs[0]
    out3, density3, sel3, _, _ = runs[3]
    assert torch.equal(density3, density0)
    want = selection_in_sweep_order(sel0[0], sel0[1], k_sizes, sweep_starts_reference(q_sizes, 3, 16, 12))
    for g, w in zip(sel3, want, strict=True):
        assert torch.equal(g, w)
    assert not torch.equal(sel3[0], sel0[0])  # some row is laid out differently
    torch.testing.assert_close(out3.float(), out0.float(), rtol=1e-2, atol=1e-2)


def test_serpentine_head_order_changes_nothing_but_the_schedule(monkeypatch):
    # SERPENTINE_HEADS: the k-means updates and the V gather run the heads in reverse grid order; a warm call's
    # output, density, cached centroids and permuted K / V are bit-identical to the default's
    import svg2core.attention as attention

    b, h, n, t, d = 2, 2, 200, 3, 64
    q, k, v = _qkv(b, h, n, d)
    cfg = SMALL.replace(num_q_clusters=5, num_k_clusters=9)
    runs = []
    for serpentine in (False, True):
        monkeypatch.setattr(attention, "SERPENTINE_HEADS", serpentine)
        state, ws = LayerState(), Workspace()
        for _ in range(2):  # cold, then warm
            out, density = svg2_attention(q, k, v, cfg, state, workspace=ws, num_dense_tokens=t, backend="triton")
        cent = state.get(0)
        runs.append((out, density, cent.q.clone(), cent.k.clone(), ws.buffer("vp", (b * h, n - t, d), v.dtype, "cpu")))
    for a, c in zip(*runs, strict=True):
        assert torch.equal(a, c)


def test_backends_agree_on_well_separated_clusters():
    # blobs far apart: the k-means of both backends find the same clusters, so the calls are equal
    b, h, n, d = 1, 2, 48, 64
    centers = torch.randn(b, h, 4, d) * 8
    blobs = lambda: (centers.repeat_interleave(12, dim=2) + 0.05 * torch.randn(b, h, n, d)).to(torch.bfloat16)
    q, k, v = blobs(), blobs(), torch.randn(b, h, n, d).to(torch.bfloat16)
    cfg = SMALL.replace(num_k_clusters=4, top_p=0.5)
    out_t, dens_t = svg2_attention(q, k, v, cfg, LayerState(), backend="triton")
    out_r, dens_r = svg2_attention(q, k, v, cfg, LayerState(), backend="reference")
    torch.testing.assert_close(out_t.float(), out_r.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(dens_t, dens_r)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_constant_inputs_give_no_nan(backend):
    q = torch.full((1, 1, 24, 64), 0.25, dtype=torch.bfloat16)
    v = torch.full((1, 1, 24, 64), -1.5, dtype=torch.bfloat16)
    state = LayerState()
    out, density = svg2_attention(q, q, v, SMALL, state, num_dense_tokens=2, backend=backend)
    assert torch.isfinite(out).all() and torch.isfinite(density).all()
    assert torch.isfinite(state.get(0).q).all() and torch.isfinite(state.get(0).k).all()
    torch.testing.assert_close(out.float(), v.float())


def test_density_counts_the_computed_pairs():
    b, h, n, t = 2, 2, 40, 4
    q, k, v = _qkv(b, h, n, 64)
    mask = _mask(b, t, [4, 1])
    ws = Workspace()
    _, density = svg2_attention(q, k, v, SMALL, LayerState(), workspace=ws, num_dense_tokens=t,
                                key_padding_mask=mask, backend="reference")
    nv = n - t
    for bi in range(b):
        valid_keys = nv + int(mask[bi].sum())
        assert 0 < density[bi].min() and density[bi].max() <= 1
        # lower bound: every query attends at least to all valid text keys
        assert torch.all(density[bi] >= (n * int(mask[bi].sum()) + t * nv) / (n * valid_keys) - 1e-6)
    # the formula itself, on a hand-made selection: 2 query clusters of 3 and 1 tokens
    q_sizes = torch.tensor([[3, 1]], dtype=torch.int32)
    sel_count = torch.tensor([[1, 2]], dtype=torch.int32)
    sel_cum = torch.tensor([[[0, 2, 4], [0, 1, 4]]], dtype=torch.int32)
    got = selection_density_reference(q_sizes, sel_count, sel_cum, 1, 1, 4, 2, torch.tensor([[True, False]]))
    pairs = 3 * 2 + 1 * 4 + 4 * 1 + 2 * (4 + 1)
    torch.testing.assert_close(got, torch.tensor([[pairs / (6 * 5)]]))


def test_fixed_density_mode_hits_its_target():
    q, k, v = _qkv(1, 2, 60, 64)
    cfg = SMALL.replace(mode="fixed_density", target_density=0.4, num_k_clusters=10)
    _, density = svg2_attention(q, k, v, cfg, LayerState(), backend="reference")
    assert torch.all(density >= 0.4)
    assert torch.all(density < 0.4 + 0.6)  # within one cluster; the per-row bound is tested in test_select


def test_dense_mode_is_sdpa_with_the_padding_mask():
    q, k, v = _qkv(2, 2, 20, 64)
    mask = _mask(2, 5, [5, 2])
    out, density = svg2_attention(q, k, v, SMALL.replace(mode="dense"), LayerState(), num_dense_tokens=5,
                                  key_padding_mask=mask, backend="reference")
    torch.testing.assert_close(out.float(), _dense_reference(q, k, v, 5, mask), rtol=2e-2, atol=2e-2)
    assert torch.equal(density, torch.ones(2, 2))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_warm_start_with_zero_iterations_changes_nothing(backend):
    q, k, v = _qkv(1, 1, 30, 64)
    state = LayerState()
    cfg = SMALL.replace(kmeans_iters=0)
    svg2_attention(q, k, v, cfg, state, backend=backend)
    before = (state.get(0).q.clone(), state.get(0).k.clone())
    svg2_attention(q, k, v, cfg, state, backend=backend)
    assert torch.equal(state.get(0).q, before[0]) and torch.equal(state.get(0).k, before[1])


def test_state_is_per_branch_and_per_batch_element():
    q, k, v = _qkv(2, 2, 36, 64)
    state = LayerState()
    out_0, _ = svg2_attention(q, k, v, SMALL, state, branch=0, backend="reference")
    cond = state.get(0).q.clone()
    q2, k2, v2 = _qkv(2, 2, 36, 64)
    svg2_attention(q2, k2, v2, SMALL, state, branch=1, backend="reference")
    assert len(state) == 2
    assert torch.equal(state.get(0).q, cond)  # the other branch did not touch branch 0
    assert not torch.equal(state.get(1).q, cond)
    assert state.get(0).q.shape == (2, 2, 4, 64)
    # batch elements are clustered independently: element 1 alone gives the same output
    out_1, _ = svg2_attention(q[1:], k[1:], v[1:], SMALL, LayerState(), backend="reference")
    torch.testing.assert_close(out_0[1:], out_1)


def test_reset_makes_the_next_call_cold():
    q, k, v = _qkv(1, 2, 30, 64)
    state = LayerState()
    first, _ = svg2_attention(q, k, v, SMALL, state, backend="reference")
    svg2_attention(q, k, v, SMALL, state, backend="reference")
    state.reset()
    assert len(state) == 0 and state.get(0) is None
    again, _ = svg2_attention(q, k, v, SMALL, state, backend="reference")
    assert torch.equal(again, first)


def test_workspace_is_sized_once():
    q, k, v = _qkv(1, 1, 26, 64)
    ws, state = Workspace(), LayerState()
    svg2_attention(q, k, v, SMALL, state, workspace=ws, backend="triton")
    allocated = ws.allocations
    svg2_attention(q, k, v, SMALL, state, workspace=ws, backend="triton")
    assert ws.allocations == allocated


BAD = [
    (dict(q=torch.randn(1, 1, 8, 64, dtype=torch.float64)), "q: dtype"),
    (dict(q=torch.randn(1, 1, 8, 64), backend="triton"), "q: dtype"),  # fp32: reference backend only
    (dict(q=torch.randn(1, 8, 64).to(torch.bfloat16)), "q: must have shape"),
    (dict(k=torch.randn(1, 1, 9, 64).to(torch.bfloat16)), "k: shape"),
    (dict(q=torch.randn(1, 1, 8, 32).to(torch.bfloat16)), "q: head_dim"),
    (dict(config="top_p"), "config:"),
    (dict(state={}), "state:"),
    (dict(num_dense_tokens=8), "num_dense_tokens:"),
    (dict(num_dense_tokens=2, key_padding_mask=torch.ones(1, 3, dtype=torch.bool)), "key_padding_mask: shape"),
    (dict(num_dense_tokens=2, key_padding_mask=torch.ones(1, 2)), "key_padding_mask: must be a bool"),
    (dict(backend="cuda"), "backend:"),
    (dict(scale=-1.0), "scale:"),
    (dict(branch="cond"), "branch:"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_names_the_argument(bad, message):
    q, k, v = _qkv(1, 1, 8, 64)
    args = dict(q=q, k=k, v=v, config=SMALL, state=LayerState())
    kwargs = dict(backend="reference")
    for key, value in bad.items():
        (args if key in args else kwargs)[key] = value
    if "q" in bad and "k" not in bad:
        args["k"] = args["v"] = bad["q"]
    with pytest.raises(ValueError, match=message):
        svg2_attention(args["q"], args["k"], args["v"], args["config"], args["state"], **kwargs)


def test_float32_runs_on_the_reference_backend_and_top_p_1_is_dense():
    q, k, v = _qkv(1, 2, 20, 64, torch.float32)
    out, density = svg2_attention(q, k, v, SMALL.replace(top_p=1.0), LayerState(), backend="reference")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert torch.all(density == 1.0)


def test_more_clusters_than_video_tokens_are_clamped():
    q, k, v = _qkv(1, 2, 12, 64, torch.float32)  # 10 video tokens, 2 text tokens
    cfg = SVG2Config(num_q_clusters=64, num_k_clusters=500, top_p=0.5, kmeans_iters_init=3)
    state = LayerState()
    out, density = svg2_attention(q, k, v, cfg, state, num_dense_tokens=2, backend="reference")
    assert torch.isfinite(out).all() and out.shape == q.shape
    assert torch.all((density > 0) & (density <= 1))
    entry = state.get(0)
    assert entry.q.shape[-2] == 10 and entry.k.shape[-2] == 10
