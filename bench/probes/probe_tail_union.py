"""Would packing the query clusters' last, partly empty tiles together pay, each packed tile visiting the union of
its clusters' key lists?

The kernel runs each query cluster as whole 128-row tiles; a cluster's last tile holds its remainder (size mod 128
rows) and costs a whole tile's key loop (0.69 of one when the remainder fits half a tile, NOTES_sparse_attn.md v9),
so 13-20% of the rows the kernel computes are padding (query-tile fill 0.80-0.84 at the benchmark shapes, lower with
`balanced`'s 200 query clusters at 480p). Every earlier attempt spent producer work per computed row to use those
rows (paired remainders with two key lists, v10; a one-warpgroup launch, v13) and lost, and moving tokens between
clusters (rebalancing, v20-v26) gains 0.7-2%. This packs whole remainders of several clusters into one tile that
both warpgroups run over one key list, the union of its members' lists: a loaded key tile still feeds 128 rows, and
the rows of a packed tile attend to more keys than their own selection (the union mask is computed exactly, so the
output is the attention of that larger mask, and its pairs count in the density).

Two packing rules: ``greedy<=m`` packs the remainders by the tile-cost model, largest first, each into the open tile
whose union it raises least if that costs less than running it alone, at most ``m`` clusters a tile (an exploration:
sequential per head); ``product`` is the library's rule (``svg2core.ops.tail_union``: mutual best partner by
the modelled saving, four rounds; parallel, what the Triton stage runs).
Cost model per query tile: its key rows (the union's key-cluster sizes: the kernel packs ragged key ranges into full
tiles) plus a fixed cost of ``--fixed`` key rows per tile (about 3 key tiles, NOTES_sparse_attn.md v12), times 0.69
for <= half a tile of rows.

It reports, per fixed-density target, the baseline and the packed plan: attention error against dense, achieved
density, modelled kernel cost (relative to the baseline at that target), query-tile fill; then the comparison at
equal modelled cost: the baseline's error interpolated (log error, linear in cost) at the packed plan's cost. A
packed plan that is cheaper and more accurate than the baseline at its own target wins outright.

CPU, a grid scaled to Wan 14B's ratios (clusters of ~256 query rows against 128-row tiles; key clusters of ~75):

    python bench/probes/probe_tail_union.py --grid 8,32,32 --cq 32 --ck 110 --out DIR

`balanced`'s 480p ratio (~164 rows a query cluster): ``--cq 50 --ck 250``. At Wan 14B 720p's size on the GPU, with the
attention kernel timed on both tables at 40 heads (the Triton stage's own tables, and its time):

    python bench/probes/probe_tail_union.py --grid 21,45,80 --objects 24 --cq 300 --ck 1000 --rules product \
        --device cuda --backend triton --time-heads 40 --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_fidelity as F  # noqa: E402
from probe_tile_rebalance import best_of_rounds, plan_at, random_tokens  # noqa: E402

from svg2core.ops.select.reference import kept_key_clusters  # noqa: E402
from svg2core.ops.tail_union import tail_union_reference  # noqa: E402
from svg2core.ops.tail_union.reference import HALF_TILE_COST_PCT  # noqa: E402

HALF_TILE_COST = HALF_TILE_COST_PCT / 100  # a tail of <= half a tile runs on one warpgroup (NOTES_sparse_attn.md v9)


def row_factor(rows: int, block: int) -> float:
    return HALF_TILE_COST if rows <= block // 2 else 1.0


def tile_cost(rows: int, key_rows: float, block: int, fixed: float) -> float:
    return row_factor(rows, block) * (key_rows + fixed)


def pack_remainders(rem: list[int], lists: torch.Tensor, k_sizes: torch.Tensor, block: int, fixed: float,
                    max_members: int) -> list[list[int]]:
    """One head's remainders (``rem[c]`` rows of cluster c, 0 = none) packed into tiles of at most ``block`` rows:
    a list of member lists. ``lists`` (Cq, Ck) bool, ``k_sizes`` (Ck,) float. Greedy, largest first: a remainder
    joins the open tile whose union it costs least to join, if that beats running alone; else it opens a tile."""
    order = sorted((c for c in range(len(rem)) if rem[c]), key=lambda c: -rem[c])
    tiles: list[dict] = []
    for c in order:
        own = lists[c]
        alone = tile_cost(rem[c], float(k_sizes[own].sum()), block, fixed)
        best, best_delta = None, 0.0
        for t in tiles:
            if t["rows"] + rem[c] > block or len(t["members"]) >= max_members:
                continue
            union_rows = float(k_sizes[t["union"] | own].sum())
            delta = tile_cost(t["rows"] + rem[c], union_rows, block, fixed) - t["cost"] - alone
            if delta < best_delta:
                best, best_delta = t, delta
        if best is None:
            tiles.append(dict(rows=rem[c], union=own.clone(), members=[c], cost=alone))
        else:
            best["rows"] += rem[c]
            best["union"] |= own
            best["members"].append(c)
            best["cost"] = tile_cost(best["rows"], float(k_sizes[best["union"]].sum()), block, fixed)
    return [t["members"] for t in tiles]


def mutual_pairs(rem: list[int], lists: torch.Tensor, k_sizes: torch.Tensor, block: int, fixed: float,
                 rounds: int = 4) -> list[list[int]]:
    """One head's tails paired by mutual best partner, a rule with parallel rounds: every pair that fits one tile
    has its saving (its two tails alone minus its union tile, by the cost model; the union's key rows from the
    overlap matrix ``L diag(k_sizes) L^T``); in each round every unpaired tail names its partner of largest positive
    saving (ties: lower id), and the tails that name each other pair up."""
    c = len(rem)
    r = torch.tensor(rem, dtype=torch.float64)
    lf = lists.double()
    w = lf @ k_sizes.double()  # (C,) key rows of each list
    overlap = (lf * k_sizes.double()[None]) @ lf.T
    union = w[:, None] + w[None, :] - overlap

    def cost(rows, keys):
        return torch.where(rows <= block // 2, HALF_TILE_COST, 1.0) * (keys + fixed)

    alone = cost(r, w)
    saving = alone[:, None] + alone[None, :] - cost(r[:, None] + r[None, :], union)
    has = r > 0
    ok = has[:, None] & has[None, :] & (r[:, None] + r[None, :] <= block) & ~torch.eye(c, dtype=torch.bool)
    saving = torch.where(ok & (saving > 0), saving, float("-inf"))
    free = has.clone()
    tiles = []
    for _ in range(rounds):
        s = torch.where(free[:, None] & free[None, :], saving, float("-inf"))
        best = s.argmax(1)  # the first (lowest id) of the largest
        valid = torch.isfinite(s.max(1).values)
        idx = torch.arange(c)
        mutual = valid & (best[best] == idx) & (idx < best)
        for a in torch.nonzero(mutual).flatten().tolist():
            b = int(best[a])
            tiles.append([a, b])
            free[a] = free[b] = False
        if not mutual.any():
            break
    return tiles + [[a] for a in torch.nonzero(free).flatten().tolist()]


RULES = ("greedy", "product", "mutual")


def groups_cost(groups: torch.Tensor, masks: torch.Tensor, k_sizes: torch.Tensor, block: int,
                fixed: float) -> tuple[float, float]:
    """The modelled kernel cost and query-tile fill of one head whose query rows form ``groups`` (each group's rows
    in tiles of ``block``, over the key rows of its mask in ``masks`` (G, Ck))."""
    sizes = torch.bincount(groups.long(), minlength=masks.shape[0])
    key_rows = (masks.float() * k_sizes.float()[None]).sum(1)
    cost, tiles = 0.0, 0
    for g in torch.nonzero(sizes).flatten().tolist():
        full, r = divmod(int(sizes[g]), block)
        cost += full * tile_cost(block, float(key_rows[g]), block, fixed)
        if r:
            cost += tile_cost(r, float(key_rows[g]), block, fixed)
        tiles += full + (r > 0)
    return cost, groups.numel() / (tiles * block)


def packed_groups(plan, hi: int, chosen: torch.Tensor, block: int, fixed: float, max_members: int,
                  rule: str) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Head ``hi`` of ``plan``: each query row's group and the groups' key masks (G, Ck), the modelled kernel cost
    and the query-tile fill. ``rule``: "none" (the kernel as it is: every cluster alone), "greedy"
    (:func:`pack_remainders` with ``max_members``; a cluster's tail is its last rows in token order) or "product"
    (the library's rule, ``svg2core.ops.tail_union.tail_union_reference``, with this fixed cost)."""
    labels, ks = plan.q_labels[hi].long(), plan.k_sizes[hi]
    cq = chosen.shape[0]
    if rule == "none":
        groups, masks = labels, chosen
    elif rule == "product":
        out = tail_union_reference(*(x[hi:hi + 1] for x in (plan.q_labels, plan.q_perm, plan.q_offsets, plan.sel_idx,
                                                             plan.sel_count, plan.sel_cum, plan.k_sizes)),
                                   block=block, fixed=round(fixed))
        groups, masks = out[0][0].long(), kept_key_clusters(out[4], out[5])[0]
    else:
        sizes = torch.bincount(labels, minlength=cq)
        rem = [int(s) % block for s in sizes]
        if rule == "mutual":
            packed = mutual_pairs(rem, chosen, ks.float(), block, fixed)
        else:
            packed = pack_remainders(rem, chosen, ks.float(), block, fixed, max_members)
        order = torch.argsort(labels, stable=True)
        ends = sizes.cumsum(0)
        groups = labels.clone()
        extra = []
        for t, members in enumerate(packed):
            union = torch.zeros_like(chosen[0])
            for c in members:
                union |= chosen[c]
                groups[order[int(ends[c]) - rem[c]:int(ends[c])]] = cq + t
            extra.append(union)
        masks = torch.cat([chosen, torch.stack(extra)]) if extra else chosen
    cost, fill = groups_cost(groups, masks, ks, block, fixed)
    return groups, masks, cost, fill


def grouped_attention(q, k, v, groups: torch.Tensor, masks: torch.Tensor, k_labels: torch.Tensor,
                      chunk: int = 2048) -> tuple[torch.Tensor, float]:
    """One head's fp32 attention, query row n attending to key m iff ``masks[groups[n], k_labels[m]]``, ``chunk``
    rows at a time; the output and the kept pairs' share."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    kf, vf = k.float(), v.float()
    kl = k_labels.long()
    out, kept = [], 0
    for i in range(0, q.shape[0], chunk):
        allowed = masks[groups[i:i + chunk]][:, kl]
        kept += int(allowed.sum())
        s = (q[i:i + chunk].float() @ kf.T) * scale
        out.append(torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ vf)
    return torch.cat(out), kept / (q.shape[0] * k.shape[0])


def kernel_ms(plan, heads: int, head_dim: int, block: int, rounds: int = 3, calls: int = 10) -> dict:
    """GPU: the attention kernel's time on ``plan``'s tables and on their tail union (the library's Triton stage),
    both in the key sweep the product uses at that head shape, and the stage's own time, at the product's head shape: ``heads`` heads of ``head_dim`` (head h takes the plan's
    head h % BH), random bf16 tokens. Best of ``rounds`` alternating rounds of ``calls`` back-to-back calls, ms."""
    from svg2core.ops.select.reference import selection_in_sweep_order, sweep_starts_reference
    from svg2core.ops.sparse_attn import key_sweep_layout, sparse_attention
    from svg2core.ops.tail_union import tail_union
    from svg2core.state import Workspace

    bh, n = plan.q_labels.shape
    cq = plan.sel_count.shape[-1]
    dev = plan.sel_idx.device
    src = torch.arange(heads, device=dev) % bh
    q, k, v, kp, vp = random_tokens(heads, n, head_dim, dev)
    tiled = {name: getattr(plan, name)[src].contiguous() for name in
             ("q_labels", "q_perm", "q_offsets", "k_offsets", "sel_idx", "sel_count", "sel_cum", "k_sizes")}
    ws = Workspace()
    # the key sweep the product runs at the timed head shape (the plan's own follows the synthetic heads' kernel):
    # both tables laid out in it, the baseline from its clusters' tiles, the union by the stage from its new layout
    period, sweep_m = key_sweep_layout(dev, torch.bfloat16, head_dim, n)
    sweep = (period, sweep_m) if period else None
    if sweep is not None:
        q_sizes = tiled["q_offsets"][:, 1:] - tiled["q_offsets"][:, :-1]
        tiled["sel_idx"], tiled["sel_count"], tiled["sel_cum"] = selection_in_sweep_order(
            tiled["sel_idx"], tiled["sel_count"], tiled["k_sizes"],
            sweep_starts_reference(q_sizes, period, sweep_m, tiled["k_sizes"].shape[-1]))

    def stage():
        return tail_union(tiled["q_labels"].clone(), tiled["q_perm"], tiled["q_offsets"], tiled["sel_idx"],
                          tiled["sel_count"], tiled["sel_cum"], tiled["k_sizes"], block, ws, "q", sweep=sweep)

    union = stage()
    tables = {"baseline": (tiled["q_perm"], tiled["q_offsets"], tiled["sel_idx"], tiled["sel_count"],
                           tiled["sel_cum"], None),
              "product": (union[1], union[2], union[4], union[5], union[6], cq)}
    out = torch.empty_like(q)

    def call(name):
        if name == "stage":
            return stage()
        perm, offsets, idx, count, cum, partial = tables[name]
        return sparse_attention(q, k, v, kp, vp, perm, offsets, tiled["k_offsets"], idx, count, cum, out=out,
                                partial_tiles=partial)

    best = best_of_rounds(call, ["baseline", "product", "stage"], dev, rounds, calls)
    for name in ("baseline", "product"):  # the computed pairs of the tiled heads' tables
        perm, offsets, idx, count, cum, _ = tables[name]
        keys = torch.gather(cum.long(), -1, count.long()[..., None])[..., 0]
        best[f"{name}_density"] = float(((offsets[:, 1:] - offsets[:, :-1]).long() * keys).sum()) / (heads * n * n)
    if dev.type == "cuda":  # dense attention on cuDNN at the same shape, the benchmark's baseline; the stage by kernel
        from bench_sparse_attn import dense_cudnn
        from probe_rebalance_cost import profile_call

        best["dense"] = dense_cudnn(heads, n, torch.bfloat16)[0]
        best["stage_kernels"] = profile_call(stage, calls)[0]
    return best


def measure(seeds, targets, cq: int, ck: int, block: int, fixed: float, max_members: list[int], grid, objects: int,
            init_iters: int, rules=("greedy",), device: str = "cpu", backend: str = "reference",
            time_heads: int = 0, time_head_dim: int = 128, time_reps: tuple[int, int] = (3, 10)) -> list[dict]:
    """Rows per (target, plan), averaged over seeds: error, density, cost relative to the baseline at the target,
    query-tile fill. Plans: "baseline", "greedy<=m" for each cap m, and "product" (the library's rule). With
    ``time_heads`` (GPU): the kernel's time on the baseline's and the product's tables (:func:`kernel_ms`, best of
    ``time_reps`` = (rounds, calls)), their ratio, and the stage's time."""
    acc: dict = {}
    profiles: dict = {}
    for seed in seeds:
        q, k, v, _ = F.make_qkv(seed, grid=grid, num_objects=objects)
        q, k, v = q.to(device), k.to(device), v.to(device)
        dense = F.dense_attention(q, k, v)[0]
        h = q.shape[1]
        for target in targets:
            plan, _ = plan_at(q, k, v, target, cq, ck, init_iters, backend)
            ms = kernel_ms(plan, time_heads, time_head_dim, block, *time_reps) if time_heads else {}
            if "stage_kernels" in ms:  # the first seed's profile of the stage, per kernel
                profiles.setdefault(target, ms.pop("stage_kernels"))
            chosen = kept_key_clusters(plan.sel_idx, plan.sel_count)
            variants = [("baseline", 0, "none")]
            variants += [(f"greedy<={m}", m, "greedy") for m in max_members if "greedy" in rules]
            variants += [(rule, 2, rule) for rule in ("product", "mutual") if rule in rules]
            base_cost = None
            for name, m, rule in variants:
                outs, dens, cost, fill = [], [], 0.0, 0.0
                for hi in range(h):
                    groups, masks, c, f = packed_groups(plan, hi, chosen[hi], block, fixed, m, rule)
                    o, d = grouped_attention(q[0, hi], k[0, hi], v[0, hi], groups, masks, plan.k_labels[hi])
                    outs.append(o)
                    dens.append(d)
                    cost += c
                    fill += f / h
                out = torch.stack(outs)
                base_cost = cost if base_cost is None else base_cost
                row = dict(error=((out - dense).norm() / dense.norm()).item(), density=sum(dens) / h,
                           cost=cost / base_cost, abs_cost=cost, fill=fill)
                if name in ms:
                    row.update(kernel_ms=ms[name], kernel_ratio=ms[name] / ms["baseline"], stage_ms=ms["stage"])
                    if "dense" in ms:  # effective rate per computed pair against cuDNN's per pair
                        row["x_cudnn"] = ms[f"{name}_density"] * ms["dense"] / ms[name]
                acc.setdefault((target, name), []).append(row)
        print(f"seed {seed} done", flush=True)
    rows = []
    for (target, name), rs in acc.items():
        rows.append(dict(target=target, plan=name, **{key: sum(r[key] for r in rs) / len(rs) for key in rs[0]}))
        if name == "product" and target in profiles:
            rows[-1]["stage_kernels"] = profiles[target]
    return rows


def equal_cost_error(rows: list[dict], cost: float) -> float | None:
    """The baseline's error at modelled cost ``cost`` (absolute), interpolated between its targets (log error, linear
    in cost); None outside the measured range."""
    base = sorted((r["abs_cost"], r["error"]) for r in rows if r["plan"] == "baseline")
    for (c0, e0), (c1, e1) in zip(base, base[1:], strict=False):
        if c0 <= cost <= c1:
            w = (cost - c0) / (c1 - c0) if c1 > c0 else 0.0
            return math.exp((1 - w) * math.log(e0) + w * math.log(e1))
    return None


def table(rows: list[dict]) -> list[str]:
    timed = any("kernel_ms" in r for r in rows)
    lines = ["| target | plan | error | density | cost vs baseline | query-tile fill | baseline error at equal cost |"
             + (" kernel ms | kernel vs baseline | stage ms | x cuDNN per computed pair |" if timed else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|---|---|" if timed else "")]
    for r in rows:
        eq = equal_cost_error(rows, r["abs_cost"]) if r["plan"] != "baseline" else None
        line = (f"| {r['target']:.2f} | {r['plan']} | {r['error']:.4f} | {r['density']:.3f} | {r['cost']:.3f} | "
                f"{r['fill']:.3f} | {'-' if eq is None else f'{eq:.4f}'} |")
        if timed:
            line += (f" {r['kernel_ms']:.3f} | {r['kernel_ratio']:.3f} | {r['stage_ms']:.3f} | "
                     f"{r['x_cudnn']:.3f} |" if "x_cudnn" in r else
                     f" {r['kernel_ms']:.3f} | {r['kernel_ratio']:.3f} | {r['stage_ms']:.3f} | - |" if "kernel_ms" in r
                     else " - | - | - | - |")
        lines.append(line)
    return lines


def stage_table(rows: list[dict]) -> list[str]:
    """The stage's GPU time per kernel (torch.profiler, mean per call), one column per target; empty off the GPU."""
    prof = [(r["target"], r["stage_kernels"]) for r in rows if "stage_kernels" in r]
    if not prof:
        return []
    names = sorted({k for _, p in prof for k in p}, key=lambda k: -prof[0][1].get(k, 0.0))
    lines = ["", "The stage by kernel (ms per call):", "",
             "| kernel | " + " | ".join(f"{t:.2f}" for t, _ in prof) + " |", "|---|" + "---|" * len(prof)]
    lines += [f"| {k} | " + " | ".join(f"{p.get(k, 0.0):.3f}" for _, p in prof) + " |" for k in names]
    lines.append("| total | " + " | ".join(f"{sum(p.values()):.3f}" for _, p in prof) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block", type=int, default=128, help="rows of a query tile")
    ap.add_argument("--fixed", type=float, default=None,
                    help="a tile's fixed cost in key rows (default: 3 key tiles at Wan 14B's 75,600 tokens, scaled "
                         "to the grid's token count)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--cq", type=int, default=32)
    ap.add_argument("--ck", type=int, default=110)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.10, 0.15, 0.20, 0.25, 0.30, 0.40])
    ap.add_argument("--max-members", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--init-iters", type=int, default=20)
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    ap.add_argument("--time-heads", type=int, default=0,
                    help="GPU: also time the attention kernel on the baseline's and the product's tables at this many "
                         "heads (e.g. 40, Wan 14B), and the stage")
    ap.add_argument("--time-head-dim", type=int, default=128)
    F.video_args(ap)
    ap.add_argument("--out", default=None, help="write the table and rows here (markdown + JSON)")
    a = ap.parse_args()
    grid = F.video_grid(ap, a)
    n = grid[0] * grid[1] * grid[2]
    fixed = a.fixed if a.fixed is not None else 3 * 128 * n / 75600
    rows = measure(range(a.seeds), a.targets, a.cq, a.ck, a.block, fixed, a.max_members, grid, a.objects,
                   a.init_iters, a.rules, a.device, a.backend, a.time_heads, a.time_head_dim)
    card = torch.cuda.get_device_name() if a.device == "cuda" else a.device
    head = [f"# Packed query-tile remainders with their clusters' key-list union ({n} tokens, {a.cq} / {a.ck} "
            f"clusters, {a.block}-row tiles, fixed cost {fixed:.0f} key rows a tile, {a.seeds} seeds, {card}, {a.backend} backend)",
            "", "Cost: the modelled kernel time (module docstring), relative to the baseline at the same target. "
            "Baseline error at equal cost: the baseline's error interpolated at this plan's cost.", ""]
    text = "\n".join(head + table(rows) + stage_table(rows)) + "\n"
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        name = f"probe_tail_union_{a.cq}_{a.ck}_{'x'.join(map(str, grid))}"
        with open(os.path.join(a.out, name + ".md"), "w") as f:
            f.write(text)
        with open(os.path.join(a.out, name + ".json"), "w") as f:
            json.dump(dict(args=vars(a), fixed=fixed, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
