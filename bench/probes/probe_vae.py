"""What the Wan VAE decode of a job costs, and what cuDNN settings change it (GPU).

A job's decode (Wan 2.1 480p, 81 frames: a (1, 16, 21, 60, 104) latent) took ~5.2 s of a 40 s sparse job on an
H200 (docs/benchmarks/bench_generate_h200.md), 13% of it. This probe times one decode of a random-weight
AutoencoderKLWan (public configuration) per variant, after a short warm-up decode, and reports its difference
from the bf16 default and from fp32:

- bf16: what the worker runs (the pipeline's dtype);
- bf16 + cudnn.benchmark: cuDNN picks conv algorithms by timing them (once per conv shape);
- fp32: the reference for the error columns (the Wan model card decodes in fp32).

    python bench/probes/probe_vae.py --out OUT
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_io import ProbeResults, probe_args  # noqa: E402


def decode_seconds(vae, z: torch.Tensor, reps: int) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        vae.decode(z[:, :, :3])  # warm-up: every conv shape of the first and later chunks
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            out = vae.decode(z).sample
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return min(times), out


def main() -> int:
    args = probe_args()
    from diffusers import AutoencoderKLWan

    dev = torch.device("cuda")
    out = ProbeResults(args.out, "probe_vae", latent=[1, 16, 21, 60, 104])
    torch.manual_seed(0)
    with dev:
        vae = AutoencoderKLWan().eval().requires_grad_(False)
    z = torch.randn(1, 16, 21, 60, 104, device=dev)
    variants = [("fp32", torch.float32, False), ("bf16", torch.bfloat16, False),
                ("bf16 + cudnn.benchmark", torch.bfloat16, True)]
    rows, decoded = [], {}
    for name, dtype, bench in variants:
        torch.backends.cudnn.benchmark = bench
        vae.to(dtype=dtype)
        seconds, sample = decode_seconds(vae, z.to(dtype), reps=2)
        decoded[name] = sample.float()
        row = {"variant": name, "seconds": seconds,
               "max_abs_vs_fp32": float((decoded[name] - decoded["fp32"]).abs().max()),
               "mean_abs_vs_fp32": float((decoded[name] - decoded["fp32"]).abs().mean()),
               "max_abs_vs_bf16": float((decoded[name] - decoded["bf16"]).abs().max()) if "bf16" in decoded else None}
        rows.append(row)
        out.data["rows"] = rows
        out.save()
        print(row, flush=True)
    torch.backends.cudnn.benchmark = False
    lines = [f"# Wan VAE decode, 480p 81 frames ({out.device})", "",
             "One decode of a (1, 16, 21, 60, 104) latent by a random-weight AutoencoderKLWan (public configuration), "
             "best of 2 after a 3-frame warm-up; output in [-1, 1].", "",
             "| variant | seconds | max / mean abs diff vs fp32 | max abs diff vs bf16 |", "|---|---|---|---|"]
    for r in rows:
        vs_bf16 = "-" if r["max_abs_vs_bf16"] is None else f"{r['max_abs_vs_bf16']:.2e}"
        lines.append(f"| {r['variant']} | {r['seconds']:.2f} | {r['max_abs_vs_fp32']:.2e} / {r['mean_abs_vs_fp32']:.2e} "
                     f"| {vs_bf16} |")
    out.finish(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
