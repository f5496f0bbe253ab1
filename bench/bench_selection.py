"""Selection overhead of svg2 vs dense attention (GPU). One command: correctness first, then timing.

Selection overhead = 2 warm k-means iterations on Q and on K + cluster scoring + selection +
permutation (K/V gather), as a percentage of SDPA cuDNN dense attention measured in the same run.
Also captures a whole ``svg2_attention`` call in a CUDA graph and checks replay == eager.

    PYTHONUNBUFFERED=1 python bench/bench_selection.py --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svg2core import LayerState, SVG2Config, Workspace, svg2_attention  # noqa: E402
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
)

SHAPES = [  # name, heads, video tokens, text tokens
    ("wan1.3b-480p", 12, 32760, 0),
    ("wan14b-720p", 40, 75600, 0),
    ("hunyuan-720p", 24, 118800, 256),
]
CLUSTERS = [(100, 500), (300, 1000)]


def bench_ms(fn, warmup=3, rep=10) -> float:
    """Median of ``rep`` event-timed runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


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
    cent2 = cent.clone()
    kmeans_update(x, perm, off, cent2)
    upd_err = (cent2 - kmeans_update_reference(x.reshape(b * h, n, d), labels, cent)).abs().max().item()
    kp, vp = gather_kv(x, x, perm, ws)
    sizes = (off[:, 1:] - off[:, :-1]).contiguous()
    cq = torch.randn(b * h, 11, d, device=dev)
    lg = cluster_logits(cq, cent2, sizes, ws).clone()
    lg_ref = cluster_logits_reference(cq, cent2, sizes)
    cfg = SVG2Config(top_p=0.8, min_density=0.05, max_density=0.6)
    sel = select_from_logits(lg_ref, sizes, cfg, n, ws)
    sel_ref = select_from_logits_reference(lg_ref, sizes, cfg, n)
    res = {
        "assign_max_distance_gap": gap,
        "sort_equal": bool(torch.equal(perm, p_ref) and torch.equal(off, o_ref)),
        "update_max_abs_err": upd_err,
        "gather_equal": bool(torch.equal(kp, gather_rows_reference(x, perm))),
        "logits_max_abs_err": (lg - lg_ref).nan_to_num(0, 0, 0).abs().max().item(),
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


def time_shape(name, h, nv, t, cq, ck, dev) -> dict:
    d = 128
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, h, nv + t, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        dense_ms = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v), warmup=2, rep=5)
    cfg = SVG2Config(num_q_clusters=cq, num_k_clusters=ck)
    bh = h
    ws = Workspace()
    qv, kv = q[:, :, :nv], k[:, :, :nv]
    q_cent = qv[:, :, :: nv // cq][:, :, :cq].float().reshape(bh, cq, d).contiguous()
    k_cent = kv[:, :, :: nv // ck][:, :, :ck].float().reshape(bh, ck, d).contiguous()
    batched_kmeans(qv, q_cent, 5, ws, "q")  # a few iterations so the timed ones are "warm"
    batched_kmeans(kv, k_cent, 5, ws, "k")

    def selection():
        _, _, q_off = batched_kmeans(qv, q_cent, 2, ws, "q")
        _, k_perm, k_off = batched_kmeans(kv, k_cent, 2, ws, "k")
        k_sizes = torch.sub(k_off[:, 1:], k_off[:, :-1], out=ws.buffer("k.sizes", (bh, ck), torch.int32, dev))
        select_key_clusters(q_cent, k_cent, k_sizes, cfg, nv, ws)
        gather_kv(k, v, k_perm, ws)

    sel_ms = bench_ms(selection)
    # per-stage breakdown (one iteration's pieces)
    lab = ws.buffer("k.labels", (bh, nv), torch.int32, dev)
    stages = {
        "assign_k_ms": bench_ms(lambda: kmeans_assign(kv, k_cent, lab)),
        "assign_q_ms": bench_ms(lambda: kmeans_assign(qv, q_cent, ws.buffer("q.labels", (bh, nv), torch.int32, dev))),
        "sort_k_ms": bench_ms(lambda: sort_by_cluster(lab, ck, ws, "k")),
    }
    perm, off = sort_by_cluster(lab, ck, ws, "k")
    stages["update_k_ms"] = bench_ms(lambda: kmeans_update(kv, perm, off, k_cent))
    sizes = (off[:, 1:] - off[:, :-1]).contiguous()
    stages["select_ms"] = bench_ms(lambda: select_key_clusters(q_cent, k_cent, sizes, cfg, nv, ws))
    stages["gather_kv_ms"] = bench_ms(lambda: gather_kv(k, v, perm, ws))
    # the same selection replayed from a CUDA graph (launch gaps removed)
    selection()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            selection()
    torch.cuda.current_stream().wait_stream(s)
    graph_ms = bench_ms(g.replay)
    res = {
        "shape": name, "heads": h, "video_tokens": nv, "text_tokens": t, "Cq": cq, "Ck": ck,
        "dense_sdpa_cudnn_ms": dense_ms, "selection_ms": sel_ms, "selection_graph_ms": graph_ms,
        "overhead_pct": 100 * sel_ms / dense_ms, "overhead_graph_pct": 100 * graph_ms / dense_ms,
        **stages,
    }
    return res


def sweep(dev) -> dict:
    """Pick the assign tile, the sort method and the selection warps on the shapes that matter."""
    import svg2core.ops.kmeans.kmeans as km
    import svg2core.ops.permute.permute as pm
    import svg2core.ops.select.select as sm

    out: dict = {"assign": [], "sort": [], "select": []}
    torch.manual_seed(3)
    h, nv, d, cq, ck = 40, 75600, 128, 300, 1000
    x = torch.randn(1, h, nv, d, device=dev, dtype=torch.bfloat16)
    cent = x[:, :, :: nv // ck][:, :, :ck].float().reshape(h, ck, d).contiguous()
    ws = Workspace()
    lab = ws.buffer("k.labels", (h, nv), torch.int32, dev)
    ref = kmeans_assign(x, cent, lab.clone(), workspace=ws)
    for tile in (km.AssignTile(128, 64, 8, 2), km.AssignTile(128, 128, 8, 2), km.AssignTile(256, 64, 8, 2),
                 km.AssignTile(256, 128, 8, 3), km.AssignTile(128, 128, 4, 3), km.AssignTile(128, 64, 4, 3),
                 km.AssignTile(64, 128, 4, 3)):
        try:
            kmeans_assign(x, cent, lab, workspace=ws, tile=tile)
            same = bool((lab == ref).float().mean().item() > 0.999)  # near-ties may flip
            ms = bench_ms(lambda t=tile: kmeans_assign(x, cent, lab, workspace=ws, tile=t))
        except Exception as exc:  # a tile that does not fit the card's shared memory
            out["assign"].append({"tile": tile.__dict__, "error": str(exc)[:200]})
            continue
        tflops = 2 * h * nv * ck * d / ms / 1e9
        out["assign"].append({"tile": tile.__dict__, "ms": ms, "tflops": tflops, "labels_equal": same})
        print("assign", tile, f"{ms:.3f} ms {tflops:.0f} TFLOP/s equal={same}", flush=True)
    best = min((r for r in out["assign"] if "ms" in r and r["labels_equal"]), key=lambda r: r["ms"])
    km.ASSIGN_TILE = km.AssignTile(**best["tile"])
    total = {"rows": 0.0, "flat": 0.0, "count": 0.0}
    for hh, n in ((12, 32760), (40, 75600)):
        labels = torch.randint(0, ck, (hh, n), device=dev, dtype=torch.int32)
        p_ref, o_ref = sort_by_cluster_reference(labels, ck)
        for method in ("rows", "flat", "count"):
            p, o = sort_by_cluster(labels, ck, ws, f"s{hh}", method=method)
            ok = bool(torch.equal(p, p_ref) and torch.equal(o, o_ref))
            ms = bench_ms(lambda m=method, lab_=labels, hh_=hh: sort_by_cluster(lab_, ck, ws, f"s{hh_}", method=m))
            total[method] += ms if ok else float("inf")
            out["sort"].append({"bh": hh, "n": n, "method": method, "ms": ms, "equal": ok})
            print("sort", hh, n, method, f"{ms:.3f} ms equal={ok}", flush=True)
    pm.SORT_METHOD = min(total, key=total.get)
    sizes = torch.full((h, ck), nv // ck, dtype=torch.int32, device=dev)
    sizes[:, 0] += nv - sizes.sum(-1).int()
    qc = torch.randn(h, cq, d, device=dev)
    cfg = SVG2Config()
    lg = cluster_logits(qc, cent, sizes, ws)
    want = select_from_logits_reference(lg, sizes, cfg, nv)
    sel_best = None
    for warps in (4, 8, 16):
        sm.SELECT_NUM_WARPS = warps
        got = select_from_logits(lg, sizes, cfg, nv, ws)
        # the order must match exactly; a count may differ where cumP lands within rounding of top_p
        # (the kernel's tree-shaped cumsum rounds differently from torch's sequential one)
        count_diff = (got[1] - want[1]).abs()
        stats = {"order_equal": bool(torch.equal(got[0], want[0])),
                 "count_mismatch_frac": (count_diff > 0).float().mean().item(),
                 "count_max_diff": count_diff.max().item()}
        ok = stats["order_equal"] and stats["count_max_diff"] <= 1 and stats["count_mismatch_frac"] < 1e-3
        ms = bench_ms(lambda: select_from_logits(lg, sizes, cfg, nv, ws))
        out["select"].append({"num_warps": warps, "ms": ms, **stats})
        print("select warps", warps, f"{ms:.3f} ms", stats, flush=True)
        if ok and (sel_best is None or ms < sel_best[1]):
            sel_best = (warps, ms)
    sm.SELECT_NUM_WARPS = sel_best[0]
    out["chosen"] = {"assign_tile": km.ASSIGN_TILE.__dict__, "sort_method": pm.SORT_METHOD,
                     "select_num_warps": sm.SELECT_NUM_WARPS}
    print("chosen", out["chosen"], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    ap.add_argument("--no-sweep", action="store_true", help="use the library's default launch settings")
    args = ap.parse_args()
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name()
    t0 = time.time()
    result = {"card": card, "torch": torch.__version__, "correctness": check_correctness(dev)}
    print("correctness", json.dumps(result["correctness"]), flush=True)
    if not args.no_sweep:
        result["sweep"] = sweep(dev)
        torch.cuda.empty_cache()
    result["cuda_graph"] = check_cuda_graph(dev)
    print("cuda graph", json.dumps(result["cuda_graph"]), flush=True)
    rows = []
    for name, h, nv, t in SHAPES:
        if name not in args.shapes.split(","):
            continue
        for cq, ck in CLUSTERS:
            row = time_shape(name, h, nv, t, cq, ck, dev)
            rows.append(row)
            torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
    result["timings"] = rows
    result["wall_s"] = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_selection.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Selection overhead vs dense attention ({card})", "",
             "2 warm k-means iterations on Q and K + scoring + selection + K/V permutation, "
             "vs SDPA cuDNN dense attention of the same shape (bf16, D=128, batch 1).", "",
             "| shape | Cq/Ck | dense ms | selection ms (eager) | % | selection ms (graph) | % |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} ({r['heads']}x{r['video_tokens']}+{r['text_tokens']}) | {r['Cq']}/{r['Ck']} | "
                     f"{r['dense_sdpa_cudnn_ms']:.1f} | {r['selection_ms']:.2f} | {r['overhead_pct']:.1f}% | "
                     f"{r['selection_graph_ms']:.2f} | {r['overhead_graph_pct']:.1f}% |")
    lines += ["", "Per-stage (one call each, ms): assign K / assign Q / sort K / update K / select / gather K,V", ""]
    for r in rows:
        lines.append(f"- {r['shape']} {r['Cq']}/{r['Ck']}: " + " / ".join(
            f"{r[k_]:.2f}" for k_ in ("assign_k_ms", "assign_q_ms", "sort_k_ms", "update_k_ms", "select_ms", "gather_kv_ms")))
    if "sweep" in result:
        lines += ["", f"Launch settings chosen by this run's sweep (Wan 14B K shape): `{json.dumps(result['sweep']['chosen'])}`"]
    lines += ["", f"Correctness: `{json.dumps(result['correctness'])}`", "",
              f"CUDA graph of a whole call: `{json.dumps(result['cuda_graph'])}`", ""]
    (out / "bench_selection.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
