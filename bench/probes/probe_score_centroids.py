"""Which centroids the cluster scoring should use, measured on fidelity (CPU, reference backend).

The call scores clusters with the centroids of the last k-means update (the means of the final clusters). The final
labels and cluster sizes are known one update earlier, right after the last assign, and the centroids that assign used
are the previous update's. Scoring with those ("assigned") would let the logits and the selection run beside the last
updates and the V gather on the GPU instead of after them (NOTES_selection v11: ~25-30 us of the 480p call, ~0.4 ms of
Wan 14B's). This probe asks what that costs in accuracy before anything is built.

Setup: bench_kmeans_iters.py's simulated denoising trajectory (bench_fidelity's synthetic video, features drifting
over the steps), one LayerState per (variant, mode) across the steps, warm calls with ``kmeans_iters`` iterations.
"assigned" runs the same k-means (the cache receives the same final centroids) but hands the scoring a copy of the
centroids taken before the last iteration: ``batched_kmeans`` and ``select_key_clusters`` of svg2core.attention are
wrapped for that variant only (the probe's own switch; the library has no such option).

    .venv/bin/python bench/probes/probe_score_centroids.py --out DIR [--seeds 4 --steps 24 --iters 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

from bench_fidelity import rel_error  # noqa: E402
from bench_kmeans_iters import paired_summary, trajectory_args, trajectory_cases  # noqa: E402

import svg2core.attention as attention  # noqa: E402
from svg2core import LayerState, SVG2Config, svg2_attention  # noqa: E402

VARIANTS = ("updated", "assigned")


@contextlib.contextmanager
def score_with_assigned_centroids():
    """Within the block, the scoring gets the centroids as they were before each k-means run's last iteration."""
    kmeans, select = attention.batched_kmeans, attention.select_key_clusters
    before: dict[int, torch.Tensor] = {}  # id of the live centroid tensor -> its copy before the last iteration

    def batched_kmeans(x, centroids, iters, workspace, name, backend="triton", rows_out=None, **kw):
        if iters >= 1:
            if iters > 1:
                kmeans(x, centroids, iters - 1, workspace, name, backend, **kw)
            before[id(centroids)] = centroids.clone()
            return kmeans(x, centroids, 1, workspace, name, backend, rows_out=rows_out, **kw)
        return kmeans(x, centroids, iters, workspace, name, backend, rows_out=rows_out, **kw)

    def select_key_clusters(q_cent, k_cent, k_sizes, config, nv, ws, backend="triton", sweep=None):
        return select(before.get(id(q_cent), q_cent), before.get(id(k_cent), k_cent), k_sizes, config, nv, ws,
                      backend, sweep)

    attention.batched_kmeans, attention.select_key_clusters = batched_kmeans, select_key_clusters
    try:
        yield
    finally:
        attention.batched_kmeans, attention.select_key_clusters = kmeans, select


def run(seeds, steps, densities, cq, ck, iters, init_iters, sigma_start, step_noise) -> list[dict]:
    rows = []
    states = {}
    for seed, step, q, k, v, dense, mode, knob, extra in trajectory_cases(seeds, steps, densities, sigma_start,
                                                                           step_noise):
        cfg = SVG2Config(mode=mode, num_q_clusters=cq, num_k_clusters=ck, kmeans_iters_init=init_iters,
                         kmeans_iters=iters, **extra)
        for variant in VARIANTS:
            ctx = score_with_assigned_centroids() if variant == "assigned" else contextlib.nullcontext()
            with ctx:
                out, dens = svg2_attention(q, k, v, cfg, states.setdefault((seed, variant, mode, knob), LayerState()),
                                           backend="reference")
            rows.append(dict(seed=seed, step=step, variant=variant, mode=mode, knob=knob,
                             error=rel_error(out, dense), density=dens.mean().item()))
    return rows


def summarize(rows) -> list[dict]:
    """Per (mode, knob, variant), over the warm steps (>= 1): mean error and density, and the paired error difference
    against "updated" (same seed and step), mean +- std over seeds."""
    return paired_summary(rows, "variant", VARIANTS, "updated")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    trajectory_args(ap)
    ap.add_argument("--iters", type=int, default=SVG2Config().kmeans_iters)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = run(range(args.seeds), args.steps, args.densities, args.cq, args.ck, args.iters, args.init_iters,
               args.sigma_start, args.step_noise)
    summary = summarize(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe_score_centroids_cpu.json").write_text(json.dumps(
        {"args": vars(args), "summary": summary, "rows": rows}, indent=1))
    lines = ["# Cluster scoring with the last update's centroids or the ones the last assign used (CPU)", "",
             f"`bench/probes/probe_score_centroids.py`, reference backend, bench_kmeans_iters' trajectory "
             f"({args.seeds} seeds x {args.steps} steps, Cq / Ck = {args.cq} / {args.ck}, {args.iters} warm iterations "
             f"per call). error: relative L2 error of the output against dense, mean over the warm steps; delta: the "
             f"paired difference against `updated` (same seed and step), mean +- std over seeds; worse: share of "
             f"(seed, step) pairs where the variant's error is larger.", "",
             "| mode | knob | scoring centroids | density | error | delta vs updated | worse |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['mode']} | {r['knob']} | {r['variant']} | {r['density']:.4f} | {r['error']:.4f} | "
                     f"{r['delta']:+.5f} +- {r['delta_std']:.5f} | {r['worse_share']:.2f} |")
    (out / "probe_score_centroids_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
