"""Attention fidelity vs density on structured synthetic video attention (CPU or GPU).

A video-like token grid (frames x height x width) holds moving objects over a banded background;
each token's feature is its object's (or band's) embedding plus noise. Heads mix a semantic part
(projections of the features: tokens of one object attend to each other wherever they are) with a
positional part under 3D RoPE (same-frame "spatial", same-position "temporal" and local heads), as
in video DiTs. For each method we measure the relative L2 error of the attention output against
dense attention at the density the method computed:

- svg2: this project (``svg2_attention``, reference backend, k-means query/key clusters), in
  fixed-density mode (a sweep of targets) and top-p mode (a sweep of p);
- position blocks: mean-pooled contiguous raster blocks of 64 tokens, keys blocks kept per query
  block by pooled score until the density target is met (XAttention / SpargeAttn style);
- SVG v1: per head the better (on 64 sampled query rows) of a static spatial mask (frames within
  ``w`` of the query's) and a static temporal mask (positions within a window, all frames).

    python bench/bench_fidelity.py --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svg2core import LayerState, SVG2Config, svg2_attention  # noqa: E402

FRAMES, HEIGHT, WIDTH = 8, 16, 16
HEAD_DIM = 64
BLOCK = 64
# (name, semantic weight, positional weight, rotary axes carrying the positional part)
HEADS = [
    ("semantic", 1.0, 0.0, ()),
    ("semantic", 1.0, 0.2, ("t", "y", "x")),
    ("spatial", 0.4, 1.0, ("t",)),
    ("temporal", 0.4, 1.0, ("y", "x")),
    ("local", 0.5, 1.0, ("t", "y", "x")),
    ("mixed", 1.0, 0.7, ("t", "y", "x")),
]


def video_args(ap: argparse.ArgumentParser) -> None:
    """The synthetic video's size and where it runs, for the probes that rerun it at other sizes: ``--grid``,
    ``--objects``, ``--device``, ``--backend`` (read back with :func:`video_grid`)."""
    ap.add_argument("--grid", default=",".join(map(str, (FRAMES, HEIGHT, WIDTH))), help="frames,height,width")
    ap.add_argument("--objects", type=int, default=6, help="moving objects in the synthetic video")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="reference", choices=("reference", "triton"))


def video_grid(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[int, int, int]:
    """``--grid`` as (frames, height, width); anything else is an error naming the option."""
    try:
        grid = tuple(int(x) for x in args.grid.split(","))
    except ValueError:
        grid = ()
    if len(grid) != 3 or min(grid) < 1:
        ap.error(f"--grid: three positive integers frames,height,width, got {args.grid!r}")
    return grid


def make_video_features(seed: int, num_objects: int = 6, feat_dim: int = 32,
                        grid: tuple[int, int, int] = (FRAMES, HEIGHT, WIDTH), with_classes: bool = False):
    """Token features (N, feat_dim) and grid positions (N, 3) of a synthetic moving-object video (and with
    ``with_classes`` each token's class (N,): band ``0..2`` or object ``3 + o``).

    ``grid``: (frames, height, width); objects' sizes and speeds scale with ``min(height, width) / 16`` (the
    default grid's), so a larger grid holds the same scene at a finer resolution."""
    frames, height, width = grid
    scale = min(height, width) / 16
    g = torch.Generator().manual_seed(seed)
    num_bands = 3
    emb = torch.randn(num_bands + num_objects, feat_dim, generator=g)
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    cls = (y * num_bands // height).clone()  # background bands
    start = torch.rand(num_objects, 2, generator=g) * torch.tensor([height, width])
    vel = (torch.rand(num_objects, 2, generator=g) - 0.5) * 3.0 * scale
    radius = (1.5 + 2.0 * torch.rand(num_objects, generator=g)) * scale
    for o in range(num_objects):
        cy = start[o, 0] + vel[o, 0] * t
        cx = start[o, 1] + vel[o, 1] * t
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= radius[o] ** 2
        cls = torch.where(inside, torch.full_like(cls, num_bands + o), cls)
    feats = emb[cls.flatten()] + 0.35 * torch.randn(cls.numel(), feat_dim, generator=g)
    pos = torch.stack([t.flatten(), y.flatten(), x.flatten()], dim=-1).float()
    return (feats, pos, cls.flatten()) if with_classes else (feats, pos)


def rope_3d(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotary embedding over (t, y, x): head dim split 16 / 24 / 24, pairs rotate by pos * freq."""
    parts, out, start = (16, 24, 24), [], 0
    for axis, width in enumerate(parts):
        seg = x[..., start:start + width]
        half = width // 2
        freq = 1.0 / (100.0 ** (torch.arange(half).float() / half))
        ang = pos[:, axis:axis + 1] * freq  # (N, half)
        cos, sin = ang.cos(), ang.sin()
        a, b = seg[..., :half], seg[..., half:]
        out.append(torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1))
        start += width
    return torch.cat(out, dim=-1)


def make_qkv(seed: int, gain: float = 1.3, feats: torch.Tensor | None = None,
             grid: tuple[int, int, int] = (FRAMES, HEIGHT, WIDTH), num_objects: int = 6):
    """(1, H, N, D) fp16 q, k, v and the (N, 3) grid positions.

    ``feats``: ``(N, feat_dim)`` token features to project instead of ``make_video_features(seed)``'s
    (same positions and per-head projections; used by bench_kmeans_iters.py to simulate denoising).
    ``grid`` / ``num_objects``: ``make_video_features``'.
    """
    clean, pos = make_video_features(seed, num_objects, grid=grid)
    feats = clean if feats is None else feats
    g = torch.Generator().manual_seed(seed + 1)
    fd = feats.shape[1]
    axes_slices = {"t": slice(0, 16), "y": slice(16, 40), "x": slice(40, 64)}
    qs, ks, vs = [], [], []
    for _, sem, posw, axes in HEADS:
        w_q = torch.randn(fd, HEAD_DIM, generator=g) / math.sqrt(fd)
        w_k = w_q + 0.3 * torch.randn(fd, HEAD_DIM, generator=g) / math.sqrt(fd)
        w_v = torch.randn(fd, HEAD_DIM, generator=g) / math.sqrt(fd)
        const = torch.zeros(HEAD_DIM)
        for a in axes:
            const[axes_slices[a]] = 1.0
        q = sem * feats @ w_q + posw * const
        k = sem * feats @ w_k + posw * const
        q, k = rope_3d(q, pos), rope_3d(k, pos)
        # QK-norm-like scaling: every vector has norm gain * sqrt(D)
        q = q / q.norm(dim=-1, keepdim=True) * gain * math.sqrt(HEAD_DIM)
        k = k / k.norm(dim=-1, keepdim=True) * gain * math.sqrt(HEAD_DIM)
        qs.append(q)
        ks.append(k)
        vs.append(feats @ w_v)
    stack = lambda xs: torch.stack(xs)[None].half()
    return stack(qs), stack(ks), stack(vs), pos


def masked_attention(q, k, v, mask):
    """fp32 attention of (1, H, N, D) inputs under a (H, N, N) bool mask; returns (out, density (H,))."""
    s = (q[0].float() @ k[0].float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~mask, float("-inf"))
    out = torch.softmax(s, -1) @ v[0].float()
    return out[None], mask.float().mean(dim=(-1, -2))


def dense_attention(q, k, v, chunk: int = 4096) -> torch.Tensor:
    """fp32 dense attention of (1, H, N, D) inputs, ``chunk`` query rows at a time (no N x N matrix: GPU-sized
    grids); ``masked_attention`` with every pair kept."""
    kf, vf = k[0].float(), v[0].float()
    scale = 1.0 / math.sqrt(q.shape[-1])
    rows = [torch.softmax((q[0, :, i:i + chunk].float() @ kf.transpose(-1, -2)) * scale, -1) @ vf
            for i in range(0, q.shape[2], chunk)]
    return torch.cat(rows, dim=1)[None]


def rel_error(out, dense) -> float:
    return ((out.float() - dense).norm() / dense.norm()).item()


def position_block_mask(q, k, target: float) -> torch.Tensor:
    """Per query block, key blocks by descending pooled probability until target of the keys is kept."""
    _, h, n, d = q.shape
    nb = n // BLOCK
    qb = q[0].float().view(h, nb, BLOCK, d).mean(2)
    kb = k[0].float().view(h, nb, BLOCK, d).mean(2)
    p = torch.softmax(qb @ kb.transpose(-1, -2) / math.sqrt(d), -1)  # (H, nb, nb)
    order = p.argsort(-1, descending=True)
    keep_n = max(1, math.ceil(target * nb))
    block_keep = torch.zeros(h, nb, nb, dtype=torch.bool)
    block_keep.scatter_(-1, order[..., :keep_n], True)
    return block_keep.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)


def svg1_mask(q, k, v, dense, pos, target: float) -> torch.Tensor:
    """SVG v1: per head the better of a static spatial and a static temporal mask at ~target density."""
    h = q.shape[1]
    dt = (pos[:, None, 0] - pos[None, :, 0]).abs()
    dyx = torch.maximum((pos[:, None, 1] - pos[None, :, 1]).abs(), (pos[:, None, 2] - pos[None, :, 2]).abs())
    w_t = max(0, round((target * FRAMES - 1) / 2))
    spatial = dt <= w_t  # whole frames around the query's
    r = 0
    while (dyx <= r + 1).float().mean() <= target and r < max(HEIGHT, WIDTH):
        r += 1
    temporal = dyx <= r  # a window of positions, in every frame
    rows = torch.randperm(q.shape[2], generator=torch.Generator().manual_seed(0))[:64]
    masks = []
    for hi in range(h):
        errs = []
        for m in (spatial, temporal):
            s = (q[0, hi, rows].float() @ k[0, hi].float().T) / math.sqrt(q.shape[-1])
            o = torch.softmax(s.masked_fill(~m[rows], float("-inf")), -1) @ v[0, hi].float()
            errs.append((o - dense[0, hi, rows]).norm().item())
        masks.append(spatial if errs[0] <= errs[1] else temporal)
    return torch.stack(masks)


def run(seeds, targets, top_ps, cq, ck) -> dict:
    rows = []
    for seed in seeds:
        q, k, v, pos = make_qkv(seed)
        n = q.shape[2]
        dense, _ = masked_attention(q, k, v, torch.ones(len(HEADS), n, n, dtype=torch.bool))
        for target in targets:
            cfg = SVG2Config(mode="fixed_density", target_density=target, num_q_clusters=cq, num_k_clusters=ck,
                             kmeans_iters_init=20)
            out, dens = svg2_attention(q, k, v, cfg, LayerState(), backend="reference")
            rows.append(dict(method="svg2 (fixed density)", seed=seed, knob=target, density=dens.mean().item(),
                             error=rel_error(out, dense), head_error=_head_errors(out, dense)))
            out, dens = masked_attention(q, k, v, position_block_mask(q, k, target))
            rows.append(dict(method="position blocks", seed=seed, knob=target, density=dens.mean().item(),
                             error=rel_error(out, dense), head_error=_head_errors(out, dense)))
            out, dens = masked_attention(q, k, v, svg1_mask(q, k, v, dense, pos, target))
            rows.append(dict(method="SVG v1 static", seed=seed, knob=target, density=dens.mean().item(),
                             error=rel_error(out, dense), head_error=_head_errors(out, dense)))
        for p in top_ps:
            cfg = SVG2Config(top_p=p, num_q_clusters=cq, num_k_clusters=ck, kmeans_iters_init=20)
            out, dens = svg2_attention(q, k, v, cfg, LayerState(), backend="reference")
            rows.append(dict(method="svg2 (top-p)", seed=seed, knob=p, density=dens.mean().item(),
                             error=rel_error(out, dense), head_error=_head_errors(out, dense)))
        print(f"seed {seed} done", flush=True)
    return {"rows": rows}


def _head_errors(out, dense) -> dict:
    errs: dict[str, list[float]] = {}
    for hi, (name, *_rest) in enumerate(HEADS):
        e = ((out[0, hi].float() - dense[0, hi]).norm() / dense[0, hi].norm()).item()
        errs.setdefault(name, []).append(e)
    return {k_: sum(v_) / len(v_) for k_, v_ in errs.items()}


def summarize(rows) -> list[dict]:
    """Mean over seeds per (method, knob)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["knob"]), []).append(r)
    out = []
    for (method, knob), rs in sorted(groups.items()):
        heads = {name: sum(r["head_error"][name] for r in rs) / len(rs) for name in rs[0]["head_error"]}
        out.append(dict(method=method, knob=knob, density=sum(r["density"] for r in rs) / len(rs),
                        error=sum(r["error"] for r in rs) / len(rs), head_error=heads))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cq", type=int, default=32)
    ap.add_argument("--ck", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.time()
    targets = [0.05, 0.1, 0.15, 0.2, 0.3, 0.45]
    top_ps = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
    res = run(range(args.seeds), targets, top_ps, args.cq, args.ck)
    summary = summarize(res["rows"])
    meta = dict(grid=[FRAMES, HEIGHT, WIDTH], head_dim=HEAD_DIM, heads=[h[0] for h in HEADS], block=BLOCK,
                num_q_clusters=args.cq, num_k_clusters=args.ck, seeds=args.seeds, device="cpu",
                wall_s=time.time() - t0)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_fidelity.json").write_text(json.dumps({"meta": meta, "summary": summary, **res}, indent=2))
    _plot(summary, out_dir / "bench_fidelity.png")
    lines = ["# Attention fidelity vs density (synthetic video attention, CPU)", "",
             f"Grid {FRAMES}x{HEIGHT}x{WIDTH} = {FRAMES * HEIGHT * WIDTH} tokens, head dim {HEAD_DIM}, heads "
             f"{', '.join(h[0] for h in HEADS)}; svg2 Cq/Ck = {args.cq}/{args.ck}, position blocks of {BLOCK} "
             f"tokens; mean over {args.seeds} seeds. Error = ||O - O_dense|| / ||O_dense||.", "",
             "![error vs density](bench_fidelity.png)", "",
             "| method | knob | density | rel. error | " + " | ".join(sorted(summary[0]["head_error"])) + " |",
             "|---|---|---|---|" + "---|" * len(summary[0]["head_error"])]
    for s in summary:
        lines.append(f"| {s['method']} | {s['knob']} | {s['density']:.3f} | {s['error']:.4f} | "
                     + " | ".join(f"{s['head_error'][k_]:.4f}" for k_ in sorted(s["head_error"])) + " |")
    (out_dir / "bench_fidelity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _plot(summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, marker in (("svg2 (fixed density)", "o"), ("svg2 (top-p)", "^"), ("position blocks", "s"),
                           ("SVG v1 static", "x")):
        pts = sorted((s["density"], s["error"]) for s in summary if s["method"] == method)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=method)
    ax.set_xlabel("density (computed pairs / all pairs)")
    ax.set_ylabel("relative L2 error vs dense")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Attention error vs density, synthetic video attention")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
