"""What the 256 trailing text tokens of HunyuanVideo cost the sparse attention call (H100, 24 x 118,800 + 256,
25% density), on one synthetic layout: the same video queries, keys and selection with and without the text
tokens, the text-query launch (Triton, dense over every key) skipped or alone, and the key padding mask dropped.
(Session 9 also timed torch's SDPA for the text-query rows, a config field since removed: docs/benchmarks/
probe_text_cost_h200.md, NOTES_sparse_attn.md v12.)
Timing only: the variants that skip a launch compute a wrong result by design.

    python bench/probes/probe_text_cost.py --out DIR
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from functools import partial

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_sparse_attn as B  # noqa: E402
import probe_io as P  # noqa: E402

import svg2core.ops.sparse_attn.gluon_kernel as G  # noqa: E402
import svg2core.ops.sparse_attn.wrapper as W  # noqa: E402
from svg2core.ops.sparse_attn import default_config, sparse_attention  # noqa: E402


class _NoLaunch:
    """Stands in for a kernel: its launches do nothing."""

    def __getitem__(self, grid):
        return lambda *a, **k: None


def main() -> None:
    args_ns = P.probe_args()
    out = P.ProbeResults(args_ns.out, "probe_text_cost", rows=[])
    dt = torch.bfloat16
    h, nv, t, cq, ck = B.MODELS["hunyuan-720p"]
    base = default_config(torch.device("cuda"), dt, 128)
    args, kpm, _ = B.make_case(h, nv, t, cq, ck, 0.25, dt, seed=3)
    video_only = {**args, **{x: args[x][:, :, :nv] for x in ("q", "k", "v")}}  # the same layout, no text tokens
    on, off = replace(base, gluon_tile_tables="on"), replace(base, gluon_tile_tables="off")
    variants = {  # name: (arguments, text tokens, key padding mask, config, skip the text-query launch, skip video)
        "no text, tables on": (video_only, 0, None, on, False, False),
        "no text, tables off": (video_only, 0, None, off, False, False),
        "text, tables on": (args, t, kpm, on, False, False),
        "text, tables off": (args, t, kpm, off, False, False),
        "text, tables on, no padding mask": (args, t, None, on, False, False),
        "text, tables on, text-query launch skipped": (args, t, kpm, on, True, False),
        "text, tables on, text-query launch on the main stream": (args, t, kpm, replace(on, text_concurrent=False),
                                                                   False, False),
        "text-query launch alone": (args, t, kpm, on, False, True),
    }
    real_triton, real_gluon = W.sparse_attn_fwd_kernel, G.launch_gluon
    ms: dict[str, list[float]] = {}
    names = list(variants)
    for rep in range(3):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            a, tt, m, cfg, skip_text, skip_video = variants[name]
            W.sparse_attn_fwd_kernel = _NoLaunch() if skip_text else real_triton
            G.launch_gluon = (lambda *x, **y: None) if skip_video else real_gluon
            fn = partial(sparse_attention, **a, num_dense_tokens=tt, key_padding_mask=m, config=cfg)
            fn()
            ms.setdefault(name, []).append(B.time_ms(fn, reps=6))
    W.sparse_attn_fwd_kernel, G.launch_gluon = real_triton, real_gluon
    ref = min(ms["no text, tables on"])
    lines = [f"# What the text tokens cost (HunyuanVideo 720p, 25%, {out.device})", "",
             "One synthetic layout (24 x 118,800 video tokens, 400 / 1000 clusters) with and without its 256 text "
             "tokens (192 valid); ms = best of 3 interleaved rounds. Variants that skip a launch are timing only.", "",
             "| variant | ms | vs no text, tables on |", "|---|---|---|"]
    for name in names:
        best = min(ms[name])
        out.data["rows"].append({"variant": name, "ms": ms[name], "best_ms": best})
        lines.append(f"| {name} | {best:.2f} | {best / ref:.3f} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
