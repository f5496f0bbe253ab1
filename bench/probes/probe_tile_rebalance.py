"""Would moving a few query tokens between clusters, so that fewer query tiles are partly empty, pay?

The kernel computes whole query tiles (128 rows, or 64 for a cluster's last <= 64 rows at ~0.69 of a full tile's
cost, NOTES_sparse_attn.md v9), so a cluster of 130 tokens costs nearly as much as one of 192. This probe tries the
obvious fix on bench_fidelity's synthetic video attention (fixed density): every query cluster whose last tile holds
at most ``rho`` "excess" rows (rows past a multiple of the half tile) hands those rows to the nearest other cluster
that has room in its own last tile, and only if all of them find room. Which rows move (``--criteria``):
``farthest``, the donor's tokens farthest from its centroid; ``margin``, those whose nearest cluster with room is
nearly as close as their own (the smallest distance margin). It reports the attention error against dense, the
density and the tile cost relative to no move, and the comparison at equal kernel cost: the moved labels at the
target divided by the tile cost (the saved tiles spent on density), against no moves at the target (the rho = 0
row). For reference it also gives the error without moves at that higher density (what the density alone buys, as
if the moves cost no accuracy). Until session 19 the probe compared the moved plan at the target with that last
figure, which costs 1 / tile cost of the baseline where the moved plan costs the tile cost; that is not equal cost,
and it made the moves look worse than they are (NOTES_sparse_attn.md v20).

On the CPU at the default grid (clusters of ~64 tokens, the tile scaled to 32 rows to keep the real shapes' ratio of
cluster size to tile, ~2-2.5):

    python bench/probes/probe_tile_rebalance.py [--block 32]

At Wan 14B 720p's size (GPU, Triton backend: 75,600 tokens, 300 / 1000 clusters, 128-row tiles):

    python bench/probes/probe_tile_rebalance.py --grid 21,45,80 --objects 24 --cq 300 --ck 1000 --block 128 \
        --device cuda --backend triton --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_fidelity as F  # noqa: E402

from svg2core import SVG2Config  # noqa: E402
from svg2core.attention import cluster_and_select, masked_dense_attention_reference  # noqa: E402
from svg2core.ops.kmeans import init_centroids_strided  # noqa: E402
from svg2core.ops.rebalance.reference import CRITERIA, donors_and_room, rebalance_reference  # noqa: E402
from svg2core.ops.rebalance.reference import cluster_sizes as sizes_of  # noqa: E402
from svg2core.state import Workspace  # noqa: E402


def sizes_tile_cost(sizes: torch.Tensor, block: int) -> float:
    """Query tiles of clusters of ``sizes``: whole tiles, and a remainder at 0.69 of one if it fits half a tile
    (NOTES_sparse_attn.md v9), else a whole one."""
    r = sizes % block
    return float((sizes // block + torch.where(r == 0, 0.0, torch.where(r <= block // 2, 0.69, 1.0))).sum())


def tile_cost(labels: torch.Tensor, c: int, block: int) -> float:
    return sizes_tile_cost(sizes_of(labels, c), block)


rebalance = rebalance_reference  # the moves: the library's rule (svg2core.ops.rebalance)


def attend(q, k, v, plan, labels: torch.Tensor, cq: int, backend: str) -> torch.Tensor:
    """The sparse attention of ``plan``'s selection with the query clusters given by ``labels`` (BH, N)."""
    scale = q.shape[-1] ** -0.5
    if backend == "reference":
        return masked_dense_attention_reference(q.float(), k.float(), v.float(), labels.int(), plan.k_labels,
                                                plan.sel_idx, plan.sel_count, 0, None, scale)
    from svg2core.ops.sparse_attn import sparse_attention

    perm, offsets = layout_of(labels, cq)
    return sparse_attention(q, k, v, plan.kp, plan.vp, perm, offsets, plan.k_offsets, plan.sel_idx,
                            plan.sel_count, plan.sel_cum, scale=scale)


def layout_of(labels: torch.Tensor, cq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's query layout for ``labels`` (BH, N): tokens by cluster (stable) and the cluster offsets."""
    perm = torch.argsort(labels, dim=1, stable=True).int()
    offsets = torch.zeros(labels.shape[0], cq + 1, dtype=torch.int32, device=labels.device)
    offsets[:, 1:] = sizes_of(labels, cq).cumsum(1)
    return perm, offsets


def kernel_ms(plan, layouts: dict, heads: int, head_dim: int, rounds: int = 3, calls: int = 10) -> dict:
    """The attention kernel's time (GPU, the card's default kernel) for each query layout of ``layouts`` (name ->
    labels, BH = the plan's heads), at the product's head shape: ``heads`` heads of ``head_dim``, the plan's layout
    and selection tiled over them (head h takes the plan's head h % BH), random bf16 tokens. Best of ``rounds``
    alternating rounds of ``calls`` back-to-back calls, ms per call. Only the query layout differs between the
    entries, so the ratios are what the moves change in the kernel's work."""
    from svg2core.ops.sparse_attn import sparse_attention

    bh, n = next(iter(layouts.values())).shape
    cq = plan.sel_count.shape[-1]
    dev = plan.sel_idx.device
    src = torch.arange(heads, device=dev) % bh
    q, k, v, kp, vp = random_tokens(heads, n, head_dim, dev)
    tables = [x[src].contiguous() for x in (plan.k_offsets, plan.sel_idx, plan.sel_count, plan.sel_cum)]
    qlay = {name: tuple(t[src].contiguous() for t in layout_of(lab, cq)) for name, lab in layouts.items()}
    out = torch.empty_like(q)

    def call(name):
        perm, offsets = qlay[name]
        sparse_attention(q, k, v, kp, vp, perm, offsets, *tables, out=out)

    return best_of_rounds(call, list(layouts), dev, rounds, calls)


def random_tokens(heads: int, n: int, head_dim: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """Seeded random bf16 ``q, k, v`` (1, heads, n, head_dim) and gathered ``kp, vp`` (heads, n, head_dim): the
    kernel's time does not depend on their values."""
    gen = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, head_dim, device=dev, generator=gen).to(torch.bfloat16) for _ in range(3))
    kp, vp = (torch.randn(heads, n, head_dim, device=dev, generator=gen).to(torch.bfloat16) for _ in range(2))
    return q, k, v, kp, vp


def best_of_rounds(call, names: list, dev: torch.device, rounds: int, calls: int) -> dict:
    """``call(name)`` once for each of ``names`` (compile, caches), then ``rounds`` alternating rounds of ``calls``
    back-to-back calls each: the best ms per call of each name (CUDA events; wall time on the CPU, where the Triton
    interpreter times nothing useful and only the script is checked)."""
    def timed(name) -> float:
        if dev.type != "cuda":
            t = time.perf_counter()
            for _ in range(calls):
                call(name)
            return (time.perf_counter() - t) * 1e3 / calls
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            call(name)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls

    for name in names:
        call(name)
    best = {name: float("inf") for name in names}
    for _ in range(rounds):
        for name in names:
            best[name] = min(best[name], timed(name))
    return best


def plan_at(q, k, v, target: float, cq: int, ck: int, iters: int, backend: str):
    """A cold clustering (``iters`` iterations from the strided start) and fixed-density selection at ``target``:
    the plan and the query centroids."""
    cfg = SVG2Config(mode="fixed_density", target_density=target, num_q_clusters=cq, num_k_clusters=ck)
    h, d = q.shape[1], q.shape[-1]
    qc = torch.empty(h, cq, d, device=q.device)
    kc = torch.empty(h, ck, d, device=q.device)
    init_centroids_strided(q, cq, qc)
    init_centroids_strided(k, ck, kc)
    return cluster_and_select(q, k, v, qc, kc, iters, cfg, Workspace(), backend), qc


def density_of(plan, labels: torch.Tensor, cq: int) -> float:
    """Computed pairs / all pairs of ``plan``'s selection with the query clusters given by ``labels``."""
    tok = torch.gather(plan.sel_cum.long(), -1, plan.sel_count.long()[..., None])[..., 0]
    n = labels.shape[-1]
    return float((sizes_of(labels, cq) * tok).sum()) / (labels.shape[0] * n * n)


def measure(seeds, targets, rhos, criteria, cq: int, ck: int, block: int, grid, objects: int, device: str,
            backend: str, init_iters: int = 20, alt_cqs=(), time_heads: int = 0,
            time_head_dim: int = 128) -> tuple[list[dict], list[dict]]:
    """Rows per (target, rho, criterion) averaged over seeds: error, density, tile cost, tokens moved, the errors at
    equal kernel cost (module docstring) and, with ``time_heads`` (GPU), the kernel's time on each layout at that
    many heads of ``time_head_dim`` (:func:`kernel_ms`) and its ratio to no moves. Second list: per (target, alternative query-cluster
    count), the error at the target, the tile cost against ``cq``'s, and the error at the density that the same
    kernel cost as ``cq`` at the target buys (the target / tile cost)."""
    acc: dict = {}
    acc_cq: dict = {}
    for seed in seeds:
        q, k, v, _ = F.make_qkv(seed, grid=grid, num_objects=objects)
        q, k, v = q.to(device), k.to(device), v.to(device)
        dense = F.dense_attention(q, k, v)

        for target in targets:
            plan, qc = plan_at(q, k, v, target, cq, ck, init_iters, backend)
            base = plan.q_labels.long()
            base_cost = tile_cost(base, cq, block)
            for c_alt in alt_cqs:  # fewer (or more) query clusters: bigger blocks for the kernel, coarser selection
                alt, _ = plan_at(q, k, v, target, c_alt, ck, init_iters, backend)
                cost = tile_cost(alt.q_labels.long(), c_alt, block) / base_cost
                eq, _ = plan_at(q, k, v, min(1.0, target / cost), c_alt, ck, init_iters, backend)
                acc_cq.setdefault((target, c_alt), []).append(dict(
                    error=F.rel_error(attend(q, k, v, alt, alt.q_labels.long(), c_alt, backend), dense),
                    density=density_of(alt, alt.q_labels.long(), c_alt), cost=cost,
                    error_equal_cost=F.rel_error(attend(q, k, v, eq, eq.q_labels.long(), c_alt, backend), dense),
                    density_equal_cost=density_of(eq, eq.q_labels.long(), c_alt)))
            layouts: dict = {}  # (rho, criterion) -> (labels, row), for the kernel's timing
            for rho in rhos:
                for criterion in (criteria if rho else CRITERIA[:1]):
                    labels = rebalance(q[0], base, qc, rho, block, criterion) if rho else base
                    out = attend(q, k, v, plan, labels, cq, backend)
                    cost = tile_cost(labels, cq, block) / base_cost
                    row = dict(error=F.rel_error(out, dense), density=density_of(plan, labels, cq), cost=cost,
                               moved=float((labels != base).float().mean()))
                    layouts[(rho, criterion if rho else "-")] = (labels, row)
                    if rho:  # the tiles the moves save, spent on density: the moved labels at target / cost
                        eq_plan, _ = plan_at(q, k, v, min(1.0, target / cost), cq, ck, init_iters, backend)
                        if not torch.equal(eq_plan.q_labels, plan.q_labels):  # the k-means ignores the density
                            raise RuntimeError("the query clustering changed with the target density")
                        # the moved plan at the baseline's kernel cost: compare with rho = 0 (no moves, at target)
                        row["error_moved_equal_cost"] = F.rel_error(attend(q, k, v, eq_plan, labels, cq, backend),
                                                                    dense)
                        # no moves at the same density: what the extra density alone buys (moves for free)
                        row["error_no_move_denser"] = F.rel_error(
                            attend(q, k, v, eq_plan, eq_plan.q_labels.long(), cq, backend), dense)
                    acc.setdefault((target, rho, criterion if rho else "-"), []).append(row)
            if time_heads:
                ms = kernel_ms(plan, {key: lab for key, (lab, _) in layouts.items()}, time_heads, time_head_dim)
                for key, (_, row) in layouts.items():
                    row["kernel_ms"] = ms[key]
                    row["kernel_ratio"] = ms[key] / ms[(0, "-")]
        print(f"seed {seed} done", flush=True)

    def mean(rs):
        return {key: sum(r[key] for r in rs) / len(rs) for key in rs[0]}

    rows = [dict(target=t, rho=rho, criterion=crit, **mean(rs)) for (t, rho, crit), rs in acc.items()]
    cq_rows = [dict(target=t, cq=c_alt, **mean(rs)) for (t, c_alt), rs in acc_cq.items()]
    return rows, cq_rows


def gamma_sizes_gain() -> None:
    """At the benchmark models' shapes (bench_sparse_attn's gamma-sized query clusters, 128-row tiles): the tile cost
    saved if every cluster with at most rho excess rows shed them for free, and the share of tokens moved."""
    gen = torch.Generator().manual_seed(0)
    print("\n| shape | rho | tile cost saved | tokens moved |\n|---|---|---|---|")
    for name, nv, c in (("Wan 1.3B 480p", 32760, 100), ("Wan 14B 720p", 75600, 300), ("HunyuanVideo 720p", 118800, 400)):
        w = torch.empty(50, c).exponential_(generator=gen) + torch.empty(50, c).exponential_(generator=gen)
        s = sizes_of(torch.multinomial(w, nv, replacement=True, generator=gen), c)
        for rho in (16, 32, 64):
            excess, donor, _ = donors_and_room(s, rho, 128)
            shed = torch.where(donor, excess, 0)
            saved = 1 - sizes_tile_cost(s - shed, 128) / sizes_tile_cost(s, 128)
            print(f"| {name} | {rho} | {saved:.3f} | {float(shed.sum() / s.sum()):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block", type=int, default=32, help="rows of a query tile, scaled to the benchmark's clusters")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cq", type=int, default=32)
    ap.add_argument("--ck", type=int, default=32)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.15, 0.25])
    ap.add_argument("--rhos", type=int, nargs="+", default=None, help="default: block / 8, / 4, 3 / 8")
    ap.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA)
    ap.add_argument("--alt-cqs", type=int, nargs="*", default=[],
                    help="other query-cluster counts to compare with --cq at equal kernel cost (no moves)")
    ap.add_argument("--time-heads", type=int, default=0,
                    help="GPU: also time the attention kernel on each layout at this many heads (e.g. 40, Wan 14B)")
    ap.add_argument("--time-head-dim", type=int, default=128)
    F.video_args(ap)
    ap.add_argument("--out", default=None, help="write the table and rows here (markdown + JSON)")
    a = ap.parse_args()
    grid = F.video_grid(ap, a)
    rhos = [0, *(a.rhos if a.rhos is not None else (a.block // 8, a.block // 4, a.block * 3 // 8))]
    rows, cq_rows = measure(range(a.seeds), a.targets, rhos, a.criteria, a.cq, a.ck, a.block, grid, a.objects,
                            a.device, a.backend, alt_cqs=a.alt_cqs, time_heads=a.time_heads,
                            time_head_dim=a.time_head_dim)
    card = torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else "CPU"
    lines = [f"# Query-tile rebalancing: fidelity and tile cost ({card})", "",
             f"`bench/probes/probe_tile_rebalance.py`, {a.backend} backend, bench_fidelity's synthetic video on a "
             "{} x {} x {} grid".format(*grid) + f" ({grid[0] * grid[1] * grid[2]:,} tokens, {a.objects} objects), "
             f"Cq / Ck = {a.cq} / {a.ck}, {a.block}-row tiles, {a.seeds} seeds. Equal cost: the moved labels at the target "
             "/ tile cost, the baseline's kernel cost (compare with the rho = 0 row); no moves, denser: the same "
             "density without moves (what the density alone buys).", "",
             "| target density | rho | criterion | error vs dense | moved, equal cost | no moves, denser | density | "
             "tile cost | tokens moved |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eq, denser = (f"{r[key]:.4f}" if key in r else "" for key in ("error_moved_equal_cost", "error_no_move_denser"))
        lines.append(f"| {r['target']} | {r['rho']} | {r['criterion']} | {r['error']:.4f} | {eq} | {denser} | "
                     f"{r['density']:.4f} | {r['cost']:.3f} | {r['moved']:.4f} |")
    timed = [r for r in rows if "kernel_ms" in r]
    if timed:
        lines += ["", f"The attention kernel on each query layout at {a.time_heads} heads of {a.time_head_dim} (the "
                  "layouts and selections of the synthetic heads tiled over them, random bf16 tokens; best of 3 "
                  "alternating rounds): is the tile cost what the kernel pays?", "",
                  "| target density | rho | criterion | tile cost | kernel ms | kernel / no moves |", "|---|---|---|---|---|---|"]
        for r in timed:
            lines.append(f"| {r['target']} | {r['rho']} | {r['criterion']} | {r['cost']:.3f} | {r['kernel_ms']:.2f} | "
                         f"{r['kernel_ratio']:.3f} |")
    if cq_rows:
        base = {r["target"]: r["error"] for r in rows if r["rho"] == 0}
        lines += ["", f"Other query-cluster counts, no moves: the error at the target, the tile cost against Cq = {a.cq}'s "
                  "at the target, and the error at the density that Cq's kernel cost buys (the target / tile cost; the "
                  "selection's own cost, which falls with the query clusters, is not counted).", "",
                  "| target density | Cq | error vs dense | tile cost | equal-cost density | equal-cost error | "
                  f"Cq = {a.cq} at the target |", "|---|---|---|---|---|---|---|"]
        for r in cq_rows:
            lines.append(f"| {r['target']} | {r['cq']} | {r['error']:.4f} | {r['cost']:.3f} | "
                         f"{r['density_equal_cost']:.4f} | {r['error_equal_cost']:.4f} | {base[r['target']]:.4f} |")
    print("\n".join(lines))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        where = "cpu" if card == "CPU" else ("h200" if "H200" in card else "h100" if "H100" in card else "gpu")
        stem = os.path.join(a.out, f"probe_tile_rebalance_{where}_" + "{}x{}x{}".format(*grid))
        with open(stem + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(stem + ".json", "w") as f:
            json.dump({"args": vars(a), "rows": rows, "cq_rows": cq_rows}, f, indent=1)
    if a.device == "cpu":
        gamma_sizes_gain()


if __name__ == "__main__":
    main()
