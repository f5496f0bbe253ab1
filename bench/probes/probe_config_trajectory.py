"""What an ``SVG2Config`` setting costs in accuracy along bench_kmeans_iters' simulated denoising trajectory.

Each variant is a set of SVG2Config fields (``--variant kmeans_subsample=2``, ``--variant kmeans_iters=1``, or several
fields joined by commas); the first variant is the baseline (default: the config's own values, named ``default``).
Every variant keeps one LayerState per (seed, mode, knob) across the steps, as a pipeline does: step 0 is the layer's
cold call, later steps warm-start from the cached centroids. Per (mode, knob, variant), over the warm steps: the
density, the output's relative L2 error against dense, and its paired difference against the baseline (same seed
and step), mean +- std over the seeds, with the share of (seed, step) pairs where the variant is worse.

    .venv/bin/python bench/probes/probe_config_trajectory.py --out DIR --grid 8,32,32 --cq 25 --ck 125 \\
        --variant kmeans_subsample=2 --variant kmeans_subsample=4 --variant kmeans_iters=1

(8 x 32 x 32 = 8,192 tokens at Cq / Ck = 25 / 125: 328 / 66 tokens per cluster, Wan 1.3B 480p's 32,760 at 100 / 500.)
At a real model's size on a GPU: ``--grid 21,30,52 --cq 100 --ck 500 --device cuda --backend triton``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

from bench_fidelity import rel_error, video_args, video_grid  # noqa: E402
from bench_kmeans_iters import (  # noqa: E402
    paired_delta,
    paired_summary,
    trajectory_args,
    trajectory_cases,
    trajectory_setup,
    trajectory_table,
    trajectory_where,
    write_trajectory_probe,
)

from svg2core import LayerState, SVG2Config, svg2_attention  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

_INT_FIELDS = {f.name for f in dataclasses.fields(SVG2Config) if f.type in ("int", int)}
_FLOAT_FIELDS = {f.name for f in dataclasses.fields(SVG2Config) if f.type in ("float", float)}


def parse_variant(text: str) -> dict:
    """``"field=value,field=value"`` -> the SVG2Config fields it sets (``"default"``: none); ValueError names the bad
    part."""
    if text == "default":
        return {}
    fields = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or name not in _INT_FIELDS | _FLOAT_FIELDS:
            raise ValueError(f"--variant: {part!r} is not FIELD=VALUE with FIELD a numeric SVG2Config field "
                             f"({', '.join(sorted(_INT_FIELDS | _FLOAT_FIELDS))})")
        kind = int if name in _INT_FIELDS else float
        try:
            fields[name] = kind(value)
        except ValueError:
            raise ValueError(f"--variant: {part!r}: {name} takes {'an int' if kind is int else 'a number'}, "
                             f"not {value!r}") from None
    return fields


def run(seeds, steps, densities, cq, ck, iters, init_iters, sigma_start, step_noise, variants: dict,
        backend="reference", **where) -> list[dict]:
    """Rows per (seed, step, variant, mode, knob); ``variants``: label -> SVG2Config fields; ``where``: the
    trajectory's grid, num_objects and device."""
    rows = []
    states = {}
    for seed, step, q, k, v, dense, mode, knob, extra in trajectory_cases(seeds, steps, densities, sigma_start,
                                                                           step_noise, **where):
        for label, fields in variants.items():
            cfg = SVG2Config(mode=mode, num_q_clusters=cq, num_k_clusters=ck, kmeans_iters_init=init_iters,
                             kmeans_iters=iters, **extra).replace(**fields)
            state, ws = states.setdefault((seed, label, mode, knob), (LayerState(), Workspace()))
            out, dens = svg2_attention(q, k, v, cfg, state, workspace=ws, backend=backend)
            rows.append(dict(seed=seed, step=step, variant=label, mode=mode, knob=knob, error=rel_error(out, dense),
                             density=dens.mean().item()))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    trajectory_args(ap)
    ap.add_argument("--iters", type=int, default=SVG2Config().kmeans_iters)
    ap.add_argument("--baseline", default="default", help="the variant the others are compared with")
    ap.add_argument("--variant", action="append", default=[], help="FIELD=VALUE[,FIELD=VALUE...] (repeatable)")
    ap.add_argument("--name", default="config", help="the result files' stem: probe_<name>_trajectory_...")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    video_args(ap)
    args = ap.parse_args()
    grid = video_grid(ap, args)
    try:
        variants = {label: parse_variant(label) for label in (args.baseline, *args.variant)}
    except ValueError as e:
        ap.error(str(e))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    rows = run(seeds, args.steps, args.densities, args.cq, args.ck, args.iters, args.init_iters,
               args.sigma_start, args.step_noise, variants, args.backend, grid=grid, num_objects=args.objects,
               device=args.device)
    summary = paired_summary(rows, "variant", list(variants), args.baseline)
    card, where = trajectory_where(args)
    stem = f"probe_{args.name}_trajectory_{where}_{args.cq}_{args.ck}_" + "{}x{}x{}".format(*grid)
    intro = (trajectory_setup(args, grid, "probe_config_trajectory.py") + " Variants set the fields they name. "
             f"delta: paired error difference against `{args.baseline}` (same seed and step), mean +- std over seeds; "
             "worse: share of (seed, step) pairs where the variant's error is larger.")
    columns = [("variant", lambda r: r["variant"]), ("density", lambda r: f"{r['density']:.4f}"),
               ("error", lambda r: f"{r['error']:.4f}"), (f"delta vs {args.baseline}", paired_delta),
               ("worse", lambda r: f"{r['worse_share']:.2f}")]
    write_trajectory_probe(Path(args.out), stem, args, summary, rows,
                           f"SVG2Config variants: accuracy along the simulated trajectory ({card})", intro, columns)
    # the cold call itself, and the first warm steps after it (where a cheaper cold start would still show)
    early = {"the cold call (step 0)": range(1), "the first warm steps (1-3)": range(1, 4)}
    tables = {title: paired_summary(rows, "variant", list(variants), args.baseline, steps=steps)
              for title, steps in early.items()}
    lines = []
    for title, table in tables.items():
        lines += ["", f"Over {title} only:", "", *trajectory_table(table, columns)]
    with open(Path(args.out) / f"{stem}.md", "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
