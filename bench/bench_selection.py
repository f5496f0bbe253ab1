"""Selection overhead of svg2 vs dense attention (GPU). One command: correctness first, then timing.

Selection overhead = 2 warm k-means iterations on Q and on K + cluster scoring + selection +
permutation (K/V gather), as a percentage of SDPA cuDNN dense attention measured in the same run.
Also captures a whole ``svg2_attention`` call in a CUDA graph and checks replay == eager.

    PYTHONUNBUFFERED=1 python bench/bench_selection.py --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sparse_attn import time_ms  # noqa: E402

import svg2core.ops.kmeans.kmeans as km  # noqa: E402
import svg2core.ops.permute.permute as pm  # noqa: E402
import svg2core.ops.select.select as sm  # noqa: E402
from svg2core import LayerState, SVG2Config, Workspace, svg2_attention  # noqa: E402
from svg2core.attention import cluster_and_select  # noqa: E402
from svg2core.ops.kmeans import (  # noqa: E402
    batched_kmeans,
    kmeans_assign,
    kmeans_assign_reference,
    kmeans_update,
    kmeans_update_reference,  # noqa: E402
)
from svg2core.ops.permute import (  # noqa: E402
    gather_kv,
    gather_rows_reference,
    sort_by_cluster,
    sort_by_cluster_reference,  # noqa: E402
)
from svg2core.ops.select import (  # noqa: E402
    cluster_logits,
    cluster_logits_reference,
    select_from_logits,
    select_from_logits_reference,
    select_key_clusters,
    selection_in_id_order,
)
from svg2core.ops.select.reference import kept_key_clusters  # noqa: E402

SHAPES = [  # name, heads, video tokens, text tokens
    ("wan1.3b-480p", 12, 32760, 0),
    ("wan14b-720p", 40, 75600, 0),
    ("hunyuan-720p", 24, 118800, 256),
]
CLUSTERS = [(100, 500), (300, 1000)]
SWEEP_SHAPE = (40, 75600, 300, 1000)  # heads, tokens, Cq, Ck of the sweep (Wan 14B 720p)
SWEEP_SMALL = (12, 32760)  # heads, tokens of the second sweep shape (Wan 1.3B 480p)


def bench_ms(fn, warmup=3, rep=10) -> float:
    """Median of ``rep`` event-timed runs queued back to back after warm-up (``bench_sparse_attn.time_ms``: no
    idle gaps between timed runs; until session 5 every run was followed by a host synchronisation)."""
    return time_ms(fn, reps=rep, warmup=warmup)


def check_correctness(dev) -> dict:
    """Every Triton stage vs its reference on one mid-size random problem, then a whole call."""
    torch.manual_seed(0)
    b, h, n, d, c = 2, 3, 3001, 128, 37
    x = torch.randn(b, h, n, d, device=dev).to(torch.bfloat16)
    ws = Workspace()
    cent = x[:, :, ::61][:, :, :c].float().reshape(b * h, c, d).contiguous()
    labels = torch.empty(b * h, n, dtype=torch.int32, device=dev)
    kmeans_assign(x, cent, labels)
    ref = kmeans_assign_reference(x.reshape(b * h, n, d), cent)
    xf = x.reshape(b * h, n, d).float()
    dist = lambda lab: ((xf - torch.gather(cent, 1, lab.long()[..., None].expand(-1, -1, d))) ** 2).sum(-1)
    gap = (dist(labels) - dist(ref)).max().item()
    perm, off = sort_by_cluster(labels, c, ws, "q")
    p_ref, o_ref = sort_by_cluster_reference(labels, c)
    # the fused path (used for few clusters): the assign kernel's block histograms feed the counting sort
    tile = km.ASSIGN_TILE
    counts = torch.empty(b * h, -(-n // tile.block_n) * c, dtype=torch.int32, device=dev)
    lab_f = torch.empty_like(labels)
    kmeans_assign(x, cent, lab_f, tile=tile, block_counts=counts)
    pf, of = sort_by_cluster(lab_f, c, Workspace(), "f", method="count", count_block=tile.block_n, block_counts=counts)
    pf_ref, of_ref = sort_by_cluster_reference(lab_f, c)
    cent2 = cent.clone()
    kmeans_update(x, perm, off, cent2, labels)
    upd_err = (cent2 - kmeans_update_reference(x.reshape(b * h, n, d), labels, cent)).abs().max().item()
    kp, vp = gather_kv(x, x, perm, ws)
    sizes = (off[:, 1:] - off[:, :-1]).contiguous()
    cq = torch.randn(b * h, 11, d, device=dev)
    lg = cluster_logits(cq, cent2, sizes, ws).clone()
    lg_ref = cluster_logits_reference(cq, cent2, sizes)
    cfg = SVG2Config(top_p=0.8, min_density=0.05, max_density=0.6)
    sel = select_from_logits(lg_ref, sizes, cfg, n, ws)
    sel_ref = select_from_logits_reference(lg_ref, sizes, cfg, n)
    if sm.SELECT_METHOD == "threshold":  # kept clusters listed by id
        sel_ref = selection_in_id_order(sel_ref[0], sel_ref[1], sizes)
    res = {
        "assign_max_distance_gap": gap,
        "sort_equal": bool(torch.equal(perm, p_ref) and torch.equal(off, o_ref)),
        "fused_assign_sort_equal": bool(torch.equal(lab_f, labels) and torch.equal(pf, pf_ref)
                                        and torch.equal(of, of_ref)),
        "update_max_abs_err": upd_err,
        "gather_equal": bool(torch.equal(kp, gather_rows_reference(x, perm))),
        "logits_max_abs_err": (lg - lg_ref).nan_to_num(0, 0, 0).abs().max().item(),
        "selection_method": sm.SELECT_METHOD,
        "selection_equal": all(bool(torch.equal(u, w)) for u, w in zip(sel, sel_ref, strict=True)),
    }
    # whole call, triton vs reference backend (same selection: fresh states from the same data)
    q, k, v = (torch.randn(1, 2, 2048 + 16, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    mask = torch.ones(1, 16, dtype=torch.bool, device=dev)
    mask[:, 10:] = False
    cfg = SVG2Config(num_q_clusters=20, num_k_clusters=64, kmeans_iters_init=5)
    kw = dict(num_dense_tokens=16, key_padding_mask=mask)
    o_t, d_t = svg2_attention(q, k, v, cfg, LayerState(), workspace=Workspace(), backend="triton", **kw)
    o_r, d_r = svg2_attention(q, k, v, cfg, LayerState(), backend="reference", **kw)
    res["call_max_abs_err"] = (o_t.float() - o_r.float()).abs().max().item()
    res["call_density_err"] = (d_t - d_r).abs().max().item()
    return res


def check_cuda_graph(dev) -> dict:
    """Capture one warm svg2_attention call in a CUDA graph; replay must equal the eager call."""
    torch.manual_seed(1)
    b, h, n, t, d = 1, 4, 8192, 64, 128
    q, k, v = (torch.randn(b, h, n + t, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
    mask = torch.ones(b, t, dtype=torch.bool, device=dev)
    mask[:, 40:] = False
    cfg = SVG2Config(num_q_clusters=32, num_k_clusters=128, kmeans_iters_init=10, kmeans_iters=2)
    state, ws = LayerState(), Workspace()
    kw = dict(workspace=ws, num_dense_tokens=t, key_padding_mask=mask)
    svg2_attention(q, k, v, cfg, state, **kw)  # cold call: creates state and sizes the workspace
    saved = {n_: getattr(state.get(0), n_).clone() for n_ in ("q", "k")}
    out_e, dens_e = svg2_attention(q, k, v, cfg, state, **kw)
    allocs = ws.allocations
    for n_ in ("q", "k"):  # rewind the centroids so that the replay starts from the same state
        getattr(state.get(0), n_).copy_(saved[n_])
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out_g, dens_g = svg2_attention(q, k, v, cfg, state, **kw)
    torch.cuda.current_stream().wait_stream(s)
    for n_ in ("q", "k"):
        getattr(state.get(0), n_).copy_(saved[n_])
    g.replay()
    torch.cuda.synchronize()
    return {
        "graph_equal_eager": bool(torch.equal(out_g, out_e) and torch.equal(dens_g, dens_e)),
        "graph_max_abs_diff": (out_g.float() - out_e.float()).abs().max().item(),
        "workspace_allocations_during_capture": ws.allocations - allocs,
    }


@contextlib.contextmanager
def legacy_settings():
    """The v1 pipeline (radix sort "flat", bitonic-sort selection, a preparation launch per assign)."""
    saved = pm.SORT_METHOD, sm.SELECT_METHOD, sm.SELECT_NUM_WARPS, km.FUSE_PREPARE, km.FUSED_SORT_MAX_CLUSTERS
    pm.SORT_METHOD, sm.SELECT_METHOD, sm.SELECT_NUM_WARPS, km.FUSE_PREPARE, km.FUSED_SORT_MAX_CLUSTERS = (
        "flat", "sort", None, False, 0)
    try:
        yield
    finally:
        pm.SORT_METHOD, sm.SELECT_METHOD, sm.SELECT_NUM_WARPS, km.FUSE_PREPARE, km.FUSED_SORT_MAX_CLUSTERS = saved


def capture_graph(fn) -> torch.cuda.CUDAGraph:
    """``fn`` run once eagerly (sizing its workspace), then captured in a CUDA graph on a side stream."""
    fn()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    return g


def graph_ms(fn) -> float:
    """``fn`` captured once in a CUDA graph, replay timed."""
    return bench_ms(capture_graph(fn).replay)


def warm_centroids(q, k, cq, ck, ws, iters=5):
    """Centroids of the video queries and keys ``(1, H, Nv, D)``: every ``Nv // C``-th token, refined by ``iters``
    k-means iterations, so that the timed iterations start warm (as at a later denoising step)."""
    h, nv, d = q.shape[1:]
    q_cent = q[:, :, :: nv // cq][:, :, :cq].float().reshape(h, cq, d).contiguous()
    k_cent = k[:, :, :: nv // ck][:, :, :ck].float().reshape(h, ck, d).contiguous()
    batched_kmeans(q, q_cent, iters, ws, "q")
    batched_kmeans(k, k_cent, iters, ws, "k")
    return q_cent, k_cent


def time_shape(name, h, nv, t, cq, ck, dev, iters=2, legacy=True, stages=True, candidates=0) -> dict:
    d = 128
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, h, nv + t, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        dense_ms = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v), warmup=2, rep=5)
    cfg = SVG2Config(num_q_clusters=cq, num_k_clusters=ck, kmeans_candidates=candidates)
    bh = h
    ws = Workspace()
    qv, kv = q[:, :, :nv], k[:, :, :nv]
    q_start, k_start = warm_centroids(qv, kv, cq, ck, ws)
    q_cent, k_cent = q_start.clone(), k_start.clone()

    def selection(concurrent=True):  # what svg2_attention runs before the attention kernel
        cluster_and_select(qv, kv, v, q_cent, k_cent, iters, cfg, ws, concurrent=concurrent)

    res = {"shape": name, "heads": h, "video_tokens": nv, "text_tokens": t, "Cq": cq, "Ck": ck,
           "kmeans_iters": iters, "kmeans_candidates": candidates, "dense_sdpa_cudnn_ms": dense_ms}
    if legacy:  # the v1 pipeline, same run, same data
        with legacy_settings():
            q_cent.copy_(q_start)
            k_cent.copy_(k_start)
            res["legacy_selection_ms"] = bench_ms(partial(selection, False))
            res["legacy_selection_graph_ms"] = graph_ms(partial(selection, False))
            res["legacy_overhead_graph_pct"] = 100 * res["legacy_selection_graph_ms"] / dense_ms
    q_cent.copy_(q_start)
    k_cent.copy_(k_start)
    res["selection_ms"] = bench_ms(selection)
    res["selection_graph_ms"] = graph_ms(selection)
    # the same stages one after the other on one stream (the query k-means not beside the key chain)
    res["sequential_graph_ms"] = graph_ms(partial(selection, False))
    res["sequential_graph_pct"] = 100 * res["sequential_graph_ms"] / dense_ms
    res["overhead_pct"] = 100 * res["selection_ms"] / dense_ms
    res["overhead_graph_pct"] = 100 * res["selection_graph_ms"] / dense_ms
    if stages:  # per-stage breakdown (one iteration's pieces, graph-replayed: no launch gaps)
        tile = km.ASSIGN_TILE
        fused = ck <= km.FUSED_SORT_MAX_CLUSTERS
        counts = ws.buffer("k.block_counts", (bh, -(-nv // tile.block_n) * ck), torch.int32, dev) if fused else None
        lab = ws.buffer("k.labels", (bh, nv), torch.int32, dev)
        qlab = ws.buffer("q.labels", (bh, nv), torch.int32, dev)

        def sort_k():
            if fused:
                return sort_by_cluster(lab, ck, ws, "k", method="count", count_block=tile.block_n, block_counts=counts)
            return sort_by_cluster(lab, ck, ws, "k")

        res["assign_k_ms"] = graph_ms(lambda: kmeans_assign(kv, k_cent, lab, workspace=ws, block_counts=counts))
        res["assign_q_ms"] = graph_ms(lambda: kmeans_assign(qv, q_cent, qlab, workspace=ws))
        res["sort_k_ms"] = graph_ms(sort_k)
        perm, off = sort_k()
        res["update_k_ms"] = graph_ms(lambda: kmeans_update(kv, perm, off, k_cent, lab, workspace=ws, name="k"))
        sizes = (off[:, 1:] - off[:, :-1]).contiguous()
        res["select_ms"] = graph_ms(lambda: select_key_clusters(q_cent, k_cent, sizes, cfg, nv, ws))
        res["gather_kv_ms"] = graph_ms(lambda: gather_kv(k, v, perm, ws))
    return res


def sweep(dev) -> dict:
    """Pick the assign tile, the sort method and the selection kernel on the shapes that matter."""
    out: dict = {"assign": [], "sort": [], "assign_sort": [], "select": []}
    torch.manual_seed(3)
    (h, nv, cq, ck), d = SWEEP_SHAPE, 128
    x = torch.randn(1, h, nv, d, device=dev, dtype=torch.bfloat16)
    cent = x[:, :, :: nv // ck][:, :, :ck].float().reshape(h, ck, d).contiguous()
    ws = Workspace()
    lab = ws.buffer("k.labels", (h, nv), torch.int32, dev)
    ref = kmeans_assign(x, cent, lab.clone(), workspace=ws)
    for tile in (km.AssignTile(128, 64, 8, 2), km.AssignTile(128, 128, 8, 2), km.AssignTile(256, 64, 8, 2),
                 km.AssignTile(256, 128, 8, 3), km.AssignTile(128, 128, 4, 3), km.AssignTile(128, 64, 4, 3),
                 km.AssignTile(64, 128, 4, 3)):
        counts = torch.empty(h, -(-nv // tile.block_n) * ck, dtype=torch.int32, device=dev)
        try:
            kmeans_assign(x, cent, lab, workspace=ws, tile=tile, block_counts=counts)
            same = bool((lab == ref).float().mean().item() > 0.999)  # near-ties may flip
            ms = bench_ms(lambda t=tile, c_=counts: kmeans_assign(x, cent, lab, workspace=ws, tile=t, block_counts=c_))
            ms_plain = bench_ms(lambda t=tile: kmeans_assign(x, cent, lab, workspace=ws, tile=t))
        except Exception as exc:  # a tile that does not fit the card's shared memory
            out["assign"].append({"tile": tile.__dict__, "error": str(exc)[:200]})
            continue
        tflops = 2 * h * nv * ck * d / ms / 1e9
        out["assign"].append({"tile": tile.__dict__, "ms_with_histogram": ms, "ms_without": ms_plain,
                              "tflops": tflops, "labels_equal": same})
        print("assign", tile, f"{ms:.3f} ms (without histogram {ms_plain:.3f}) {tflops:.0f} TFLOP/s equal={same}",
              flush=True)
        del counts
    best = min((r for r in out["assign"] if "ms_without" in r and r["labels_equal"]),
               key=lambda r: r["ms_without"], default=None)
    if best is not None:
        km.ASSIGN_TILE = km.AssignTile(**best["tile"])
    tile = km.ASSIGN_TILE
    # standalone sorts of random labels, then assign + sort as batched_kmeans runs them
    for hh, n in (SWEEP_SMALL, (h, nv)):
        labels = torch.randint(0, ck, (hh, n), device=dev, dtype=torch.int32)
        p_ref, o_ref = sort_by_cluster_reference(labels, ck)
        for method in ("rows", "flat", "count"):
            p, o = sort_by_cluster(labels, ck, ws, f"s{hh}", method=method)
            ok = bool(torch.equal(p, p_ref) and torch.equal(o, o_ref))
            ms = graph_ms(lambda m=method, lab_=labels, hh_=hh: sort_by_cluster(lab_, ck, ws, f"s{hh_}", method=m))
            out["sort"].append({"bh": hh, "n": n, "method": method, "graph_ms": ms, "equal": ok})
            print("sort", hh, n, method, f"{ms:.3f} ms equal={ok}", flush=True)
    for hh, n, c in ((*SWEEP_SMALL, ck), (*SWEEP_SMALL, cq // 3), (h, nv, ck), (h, nv, cq)):
        xs = x[:, :hh, :n]
        cs = xs[:, :, :: n // c][:, :, :c].float().reshape(hh, c, d).contiguous()
        lab_s = torch.empty(hh, n, dtype=torch.int32, device=dev)
        counts = torch.empty(hh, -(-n // tile.block_n) * c, dtype=torch.int32, device=dev)

        def fused(xs=xs, cs=cs, lab_s=lab_s, counts=counts, c=c):
            kmeans_assign(xs, cs, lab_s, workspace=ws, block_counts=counts)
            return sort_by_cluster(lab_s, c, ws, "as", method="count", count_block=tile.block_n, block_counts=counts)

        def flat(xs=xs, cs=cs, lab_s=lab_s, c=c):
            kmeans_assign(xs, cs, lab_s, workspace=ws)
            return sort_by_cluster(lab_s, c, ws, "as", method="flat")

        p1, o1 = (t_.clone() for t_ in flat())
        try:
            p2, o2 = fused()
            ok = bool(torch.equal(p1, p2) and torch.equal(o1, o2))
            fused_ms = graph_ms(fused)
        except Exception as exc:
            print("assign+sort fused error", repr(exc)[:300], flush=True)
            ok, fused_ms = False, float("inf")
        row = {"bh": hh, "n": n, "clusters": c, "flat_graph_ms": graph_ms(flat), "count_fused_graph_ms": fused_ms,
               "equal": ok}
        out["assign_sort"].append(row)
        print("assign+sort", row, flush=True)
    # the largest cluster count that still gets the fused histogram: least total time over the rows
    total = {m: sum(r["count_fused_graph_ms"] if r["clusters"] <= m and r["equal"] else r["flat_graph_ms"]
                    for r in out["assign_sort"]) for m in (0, 128, 512, 1024)}
    out["fused_sort_totals"] = {str(m): t_ for m, t_ in total.items()}
    km.FUSED_SORT_MAX_CLUSTERS = min(total, key=total.get)
    # selection kernels on the 720p and 480p query x key cluster rows (uniform cluster sizes)
    cfg = SVG2Config()
    sel_total: dict = {}
    for hh, n in ((h, nv), SWEEP_SMALL):
        sizes = torch.full((hh, ck), n // ck, dtype=torch.int32, device=dev)
        sizes[:, 0] += n - sizes.sum(-1).int()
        qc = torch.randn(hh, cq, d, device=dev)
        lg = cluster_logits(qc, cent[:hh], sizes, ws).clone()
        want = select_from_logits_reference(lg, sizes, cfg, n)
        want_kept = kept_key_clusters(want[0], want[1])
        variants = [("sort", 16, 4), ("threshold", 16, 4)] + [("threshold", w, bits) for bits in (1, 2, 4) for w in (4, 8)]
        for method, warps, bits in variants:
            sm.SELECT_METHOD, sm.SELECT_NUM_WARPS, sm.SELECT_RADIX_BITS = method, warps, bits
            try:
                got = select_from_logits(lg, sizes, cfg, n, ws)
            except Exception as exc:
                out["select"].append({"bh": hh, "method": method, "num_warps": warps, "radix_bits": bits,
                                      "error": repr(exc)[:300]})
                print("select", method, warps, bits, "error", repr(exc)[:300], flush=True)
                key = (method, warps, bits)
                sel_total[key] = float("inf")
                continue
            # a count may differ where cumP lands within rounding of top_p (tree vs sequential sums)
            count_diff = (got[1] - want[1]).abs()
            same_count = count_diff == 0
            kept_ok = bool((kept_key_clusters(got[0], got[1]) == want_kept).all(-1)[same_count].all())
            cum_ok = bool(torch.equal(torch.gather(got[2], -1, got[1].long()[..., None]).squeeze(-1)[same_count],
                                      torch.gather(want[2], -1, want[1].long()[..., None]).squeeze(-1)[same_count]))
            stats = {"kept_set_equal_where_count_equal": kept_ok, "kept_tokens_equal": cum_ok,
                     "count_mismatch_frac": (~same_count).float().mean().item(),
                     "count_max_diff": count_diff.max().item()}
            ok = kept_ok and cum_ok and stats["count_max_diff"] <= 1 and stats["count_mismatch_frac"] < 1e-3
            ms = graph_ms(lambda lg=lg, sizes=sizes, n=n: select_from_logits(lg, sizes, cfg, n, ws))
            out["select"].append({"bh": hh, "method": method, "num_warps": warps, "radix_bits": bits,
                                  "graph_ms": ms, **stats})
            print("select", hh, method, warps, bits, f"{ms:.3f} ms", stats, flush=True)
            key = (method, warps, bits)
            sel_total[key] = sel_total.get(key, 0.0) + (ms if ok else float("inf"))
    best_sel = min(sel_total, key=sel_total.get)
    sm.SELECT_METHOD, sm.SELECT_NUM_WARPS, sm.SELECT_RADIX_BITS = best_sel
    out["chosen"] = {"assign_tile": km.ASSIGN_TILE.__dict__, "sort_method": pm.SORT_METHOD,
                     "fused_sort_max_clusters": km.FUSED_SORT_MAX_CLUSTERS,
                     "select_method": sm.SELECT_METHOD, "select_num_warps": sm.SELECT_NUM_WARPS,
                     "select_radix_bits": sm.SELECT_RADIX_BITS}
    print("chosen", out["chosen"], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--name", default="auto",
                    help="output file stem (<name>.json / <name>.md); auto: bench_selection, "
                         "bench_selection_h200 on an H200")
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    ap.add_argument("--no-sweep", action="store_true", help="use the library's default launch settings")
    ap.add_argument("--no-legacy", action="store_true", help="skip the v1 pipeline timings")
    args = ap.parse_args()
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name()
    if args.name == "auto":
        args.name = "bench_selection_h200" if "H200" in card else "bench_selection"
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every stage, so that a failure later keeps what was measured
        (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))

    result = {"card": card, "torch": torch.__version__}
    try:
        result["correctness"] = check_correctness(dev)
    except Exception as exc:  # keep going: the sweep and timings still say which variants work
        result["correctness"] = {"error": repr(exc)[:500]}
    save()
    print("correctness", json.dumps(result["correctness"]), flush=True)
    if not args.no_sweep:
        result["sweep"] = sweep(dev)
        save()
        torch.cuda.empty_cache()
        result["correctness_after_sweep"] = check_correctness(dev)  # with the chosen settings
        print("correctness after sweep", json.dumps(result["correctness_after_sweep"]), flush=True)
    result["cuda_graph"] = check_cuda_graph(dev)
    print("cuda graph", json.dumps(result["cuda_graph"]), flush=True)
    rows = []
    for name, h, nv, t in SHAPES:
        if name not in args.shapes.split(","):
            continue
        for cq, ck in CLUSTERS:
            row = time_shape(name, h, nv, t, cq, ck, dev, legacy=not args.no_legacy)
            rows.append(row)
            result["timings"] = rows
            save()
            torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
        if name == "wan1.3b-480p":  # the config alternative: one warm iteration instead of two
            for cq, ck in CLUSTERS:
                row = time_shape(name, h, nv, t, cq, ck, dev, iters=1, legacy=False, stages=False)
                rows.append(row)
                print(json.dumps(row), flush=True)
    result["timings"] = rows
    result["wall_s"] = time.time() - t0
    save()
    lines = [f"# Selection overhead vs dense attention ({card})", "",
             "k-means warm iterations on Q and K (2 unless stated) + scoring + selection + K/V permutation, "
             "vs SDPA cuDNN dense attention of the same shape (bf16, D=128, batch 1). v1 = the previous "
             "pipeline (radix sort, bitonic-sort selection, a preparation launch per assign), timed in the "
             "same run on the same data. eager / graph: the library's stages (`svg2core.attention.cluster_and_select`: "
             "the query k-means on a side stream beside the key k-means and the K/V gather); one stream: the same "
             "stages one after the other.", "",
             "| shape | Cq/Ck | iters | dense ms | v1 graph ms | v1 % | one stream graph ms | one stream % | eager ms | "
             "eager % | graph ms | graph % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v1 = (f"{r['legacy_selection_graph_ms']:.2f} | {r['legacy_overhead_graph_pct']:.1f}%"
              if "legacy_selection_graph_ms" in r else "- | -")
        lines.append(f"| {r['shape']} ({r['heads']}x{r['video_tokens']}+{r['text_tokens']}) | {r['Cq']}/{r['Ck']} | "
                     f"{r['kmeans_iters']} | {r['dense_sdpa_cudnn_ms']:.1f} | {v1} | {r['sequential_graph_ms']:.2f} | "
                     f"{r['sequential_graph_pct']:.1f}% | {r['selection_ms']:.2f} | "
                     f"{r['overhead_pct']:.1f}% | {r['selection_graph_ms']:.2f} | {r['overhead_graph_pct']:.1f}% |")
    lines += ["", "Per-stage (one launch sequence each, CUDA-graph replay, ms): assign K / assign Q / sort K / "
              "update K / select (logits + selection) / gather K,V", ""]
    for r in rows:
        if "assign_k_ms" in r:
            lines.append(f"- {r['shape']} {r['Cq']}/{r['Ck']}: " + " / ".join(
                f"{r[k_]:.3f}" for k_ in ("assign_k_ms", "assign_q_ms", "sort_k_ms", "update_k_ms", "select_ms",
                                          "gather_kv_ms")))
    if "sweep" in result:
        lines += ["", f"Launch settings chosen by this run's sweep: `{json.dumps(result['sweep']['chosen'])}`"]
    lines += ["", f"Correctness: `{json.dumps(result.get('correctness_after_sweep', result['correctness']))}`", "",
              f"CUDA graph of a whole call: `{json.dumps(result['cuda_graph'])}`", ""]
    (out / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
