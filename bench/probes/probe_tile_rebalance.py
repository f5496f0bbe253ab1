"""Would moving a few query tokens between clusters, so that fewer query tiles are partly empty, pay? (CPU)

The kernel computes whole query tiles (128 rows, or 64 for a cluster's last <= 64 rows at ~0.69 of a full tile's
cost, NOTES_sparse_attn.md v9), so a cluster of 130 tokens costs nearly as much as one of 192. This probe tries the
obvious fix on bench_fidelity's synthetic video attention (reference backend, fixed density): every query cluster
whose last tile holds at most ``rho`` "excess" rows (rows past a multiple of the half tile) hands those rows (its
tokens farthest from its centroid) to the nearest other cluster that has room in its own last tile, and only if all
of them find room. It reports the attention error against dense, the density and the tile cost relative to no move.
bench_fidelity's clusters hold ~64 tokens, so the tile is scaled to 32 rows (``--block``), keeping the ratio of
cluster size to tile of the real shapes (~2-2.5).

    python bench/probes/probe_tile_rebalance.py [--block 32]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_fidelity as F  # noqa: E402

from svg2core import SVG2Config  # noqa: E402
from svg2core.attention import cluster_and_select, masked_dense_attention_reference  # noqa: E402
from svg2core.ops.kmeans import init_centroids_strided  # noqa: E402
from svg2core.state import Workspace  # noqa: E402


def sizes_of(labels: torch.Tensor, c: int) -> torch.Tensor:
    return torch.zeros(labels.shape[0], c, dtype=torch.long).scatter_add_(1, labels, torch.ones_like(labels))


def tile_cost(labels: torch.Tensor, c: int, block: int) -> float:
    s = sizes_of(labels, c)
    r = s % block
    return float((s // block + torch.where(r == 0, 0.0, torch.where(r <= block // 2, 0.69, 1.0))).sum())


def rebalance(x: torch.Tensor, labels: torch.Tensor, cent: torch.Tensor, rho: int, block: int) -> torch.Tensor:
    """New labels: the excess rows of each donor cluster moved to the nearest cluster with room (see above)."""
    half = block // 2
    bh, n, d = x.shape
    c = cent.shape[1]
    sizes = sizes_of(labels, c)
    r = sizes % block
    excess = torch.where(r <= half, r, r - half)
    donor = (excess > 0) & (excess <= rho)
    cap = torch.where(donor, 0, torch.where(r == 0, 0, torch.where(r <= half, half - r, block - r)))
    xf = x.float()
    dist = ((xf - torch.gather(cent, 1, labels[..., None].expand(bh, n, d))) ** 2).sum(-1)
    by_dist = torch.argsort(dist, dim=1, descending=True, stable=True)
    srt = torch.gather(by_dist, 1, torch.argsort(torch.gather(labels, 1, by_dist), dim=1, stable=True))
    lab_s = torch.gather(labels, 1, srt)  # tokens by (cluster, distance descending)
    offs = torch.zeros(bh, c + 1, dtype=torch.long)
    offs[:, 1:] = sizes.cumsum(1)
    pos = torch.arange(n)[None, :] - torch.gather(offs, 1, lab_s)
    mover = torch.gather(donor, 1, lab_s) & (pos < torch.gather(excess, 1, lab_s))
    d2 = (cent**2).sum(-1)[:, None, :] - 2 * xf @ cent.transpose(1, 2)
    dest = torch.gather(d2.masked_fill(~(cap > 0)[:, None, :], float("inf")).argmin(-1), 1, srt)
    ok = torch.gather(cap > 0, 1, dest) & mover
    tgt = torch.where(ok, dest, c)
    o3 = torch.argsort(tgt, dim=1, stable=True)
    cnt = sizes_of(tgt, c + 1)
    start = torch.zeros(bh, c + 2, dtype=torch.long)
    start[:, 1:] = cnt.cumsum(1)
    rank = torch.empty_like(o3).scatter_(1, o3, torch.arange(n)[None, :] - torch.gather(start, 1, torch.gather(tgt, 1, o3)))
    acc = ok & (rank < torch.gather(torch.cat([cap, torch.zeros(bh, 1, dtype=torch.long)], 1), 1, tgt))
    full = donor & (torch.zeros(bh, c, dtype=torch.long).scatter_add_(1, lab_s, acc.long()) == excess)
    acc = acc & torch.gather(full, 1, lab_s)
    return torch.empty_like(labels).scatter_(1, srt, torch.where(acc, dest, lab_s))


def gamma_sizes_gain() -> None:
    """At the benchmark models' shapes (bench_sparse_attn's gamma-sized query clusters, 128-row tiles): the tile cost
    saved if every cluster with at most rho excess rows shed them for free, and the share of tokens moved."""
    gen = torch.Generator().manual_seed(0)
    print("\n| shape | rho | tile cost saved | tokens moved |\n|---|---|---|---|")
    for name, nv, c in (("Wan 1.3B 480p", 32760, 100), ("Wan 14B 720p", 75600, 300), ("HunyuanVideo 720p", 118800, 400)):
        w = torch.empty(50, c).exponential_(generator=gen) + torch.empty(50, c).exponential_(generator=gen)
        s = sizes_of(torch.multinomial(w, nv, replacement=True, generator=gen), c)
        r = s % 128
        for rho in (16, 32, 64):
            shed = torch.where((r > 0) & (r <= rho), r, 0) + torch.where((r > 64) & (r - 64 <= rho), r - 64, 0)
            def cost(x):
                rr = x % 128
                return (x // 128 + torch.where(rr == 0, 0.0, torch.where(rr <= 64, 0.69, 1.0))).sum()
            print(f"| {name} | {rho} | {float(1 - cost(s - shed) / cost(s)):.3f} | {float(shed.sum() / s.sum()):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--block", type=int, default=32, help="rows of a query tile, scaled to the benchmark's clusters")
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    cq = ck = 32
    print("| target density | rho | error vs dense | density | tile cost | tokens moved |\n|---|---|---|---|---|---|")
    for target in (0.15, 0.25):
        for rho in (0, a.block // 8, a.block // 4, a.block * 3 // 8):
            errs, dens, costs, moved = [], [], [], []
            for seed in range(a.seeds):
                q, k, v, _ = F.make_qkv(seed)
                h, n = q.shape[1], q.shape[2]
                dense, _ = F.masked_attention(q, k, v, torch.ones(h, n, n, dtype=torch.bool))
                cfg = SVG2Config(mode="fixed_density", target_density=target, num_q_clusters=cq, num_k_clusters=ck,
                                 kmeans_iters_init=20)
                qc, kc = torch.empty(h, cq, q.shape[-1]), torch.empty(h, ck, q.shape[-1])
                init_centroids_strided(q, cq, qc)
                init_centroids_strided(k, ck, kc)
                plan = cluster_and_select(q, k, v, qc, kc, 20, cfg, Workspace(), "reference")
                base = plan.q_labels.long()
                labels = rebalance(q[0], base, qc, rho, a.block) if rho else base
                out = masked_dense_attention_reference(q.float(), k.float(), v.float(), labels.int(), plan.k_labels,
                                                       plan.sel_idx, plan.sel_count, 0, None, q.shape[-1] ** -0.5)
                tok = torch.gather(plan.sel_cum.long(), -1, plan.sel_count.long()[..., None])[..., 0]
                errs.append(F.rel_error(out, dense))
                dens.append(float((sizes_of(labels, cq) * tok).sum()) / (h * n * n))
                costs.append(tile_cost(labels, cq, a.block) / tile_cost(base, cq, a.block))
                moved.append(float((labels != base).float().mean()))
            m = lambda xs: sum(xs) / len(xs)  # noqa: E731
            print(f"| {target} | {rho} | {m(errs):.4f} | {m(dens):.4f} | {m(costs):.3f} | {m(moved):.4f} |")
    gamma_sizes_gain()


if __name__ == "__main__":
    main()
