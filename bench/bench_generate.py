"""Whole jobs through the product's own path on one GPU: a full-size random-weight pipeline saved to a
local directory, loaded by the worker's loader (``from_pretrained``, offline, svg2 installed, regional
compile from the registry entry), then jobs with different budgets back to back on the resident
pipeline, as a worker runs them; every MP4 written by the worker's writer and read back.

    python bench/bench_generate.py --out OUT                      # Wan 2.1 1.3B 480p 81 frames, 50 steps
    python bench/bench_generate.py --out OUT --steps 20 --budgets dense,fixed:0.15
    python bench/bench_generate.py --out OUT --smoke              # CPU: the tiny model's shapes (checks the script)
    python bench/bench_generate.py --out OUT --model wan2.1-t2v-14b --steps 20 \
        --budgets dense,fixed:0.25,fixed:0.25+kmeans_iters_init=50  # Wan 2.1 14B 720p (~5 min on an H100)
    python bench/bench_generate.py --out OUT --model hunyuanvideo --steps 12 --budgets dense,fixed:0.25
    python bench/bench_generate.py --out OUT --model hunyuanvideo --smoke   # CPU: its builder at toy sizes

What it answers that ``bench_pipeline_step.py`` cannot: the measured end-to-end speedup of a real job
(prompt encoding, dense warm-up steps, the cold k-means of each job's first sparse step, CFG, VAE
decode, MP4 write) against that benchmark's projection from single steps, and whether the job's own
accounting (``estimated_attention_seconds_saved``, calibrated per shape on this GPU) matches the
time the job really saved.

Weights are random (no weights can be downloaded here), so the output is noise and top-p finds little
sparsity: the ``fixed:<density>`` budgets use the fixed-density mode; ``balanced`` shows what the
top-p preset selects on random weights. The text encoder is a 2-layer UMT5 of the real width (its
cost is one call per job) and the tokenizer the tiny model's byte vocabulary; transformer, VAE and
scheduler have the public checkpoint's configuration. HunyuanVideo: its transformer, VAE and scheduler at
the public configuration, a 3-layer Llama and a 1-layer CLIP text model of the real widths (4096, 768)
with the byte vocabulary (the prompt template alone fills the 256 text tokens, all valid), and the
registry entry's VAE tiling.

Checks first (every budget): frames finite and of the requested shape, the MP4 decodes to that many
frames, warm-up / dense-layer / sparse call counts as the schedule says, fixed-density jobs within
one point of their target. Writes ``bench_generate_<card>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_pipeline_step import HUNYUAN, WAN_13B, WAN_14B, card_name  # noqa: E402
from gpu_clocks import GpuClocks, clock_cell  # noqa: E402

from worker.registry import DEFAULT_REGISTRY_PATH, build_job_spec, load_registry  # noqa: E402

PROMPT = "A red fox trots through fresh snow at dawn, breath steaming, pine trees behind it."
# the registry entries with a random-weight builder: their transformer's public configuration
TRANSFORMERS = {"wan2.1-t2v-1.3b": WAN_13B, "wan2.1-t2v-14b": WAN_14B, "hunyuanvideo": HUNYUAN}
TEXT_ENCODERS = {"wan2.1-t2v-1.3b": "2-layer UMT5 of the real width", "wan2.1-t2v-14b": "2-layer UMT5 of the real width",
                 "hunyuanvideo": "3-layer Llama and 1-layer CLIP text models of the real widths, 256 text tokens"}


@contextlib.contextmanager
def built_on(device: torch.device, dtype: torch.dtype):
    """Modules made inside are created on ``device`` in ``dtype`` (the default dtype is restored after)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(old)


def build_pipeline_dir(path: Path, smoke: bool, model: str = "wan2.1-t2v-1.3b") -> None:
    """Save a random-weight Wan 2.1 pipeline in diffusers format under ``path``.

    Full: the transformer of ``model`` (Wan 2.1 T2V 1.3B or 14B, bf16) and the VAE at the public configurations,
    UniPC with flow prediction as in the public repository, a 2-layer UMT5 text encoder of the real width (4096).
    Smoke: the built-in tiny pipeline, saved the same way; HunyuanVideo's builder at toy sizes on the CPU."""
    from worker.pipelines.tiny import build_tiny_pipeline, build_tiny_tokenizer

    if model == "hunyuanvideo":
        build_hunyuan_dir(path, smoke)
        return
    if smoke:
        build_tiny_pipeline().save_pretrained(path)
        return
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = build_tiny_tokenizer()
    device = torch.device("cuda")
    torch.manual_seed(0)
    with built_on(device, torch.bfloat16):  # initialised on the GPU: seconds instead of minutes on the host
        transformer = WanTransformer3DModel(**TRANSFORMERS[model])
        vae = AutoencoderKLWan()
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=WAN_13B["text_dim"], d_kv=64, d_ff=1024, num_layers=2,
            num_heads=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)
    pipe.save_pretrained(path)
    del pipe, transformer, vae, text_encoder
    torch.cuda.empty_cache()


def build_hunyuan_dir(path: Path, smoke: bool) -> None:
    """Save a random-weight HunyuanVideo pipeline in diffusers format under ``path``: the transformer (bf16), VAE
    and scheduler at the public configurations, a 3-layer Llama (the pipeline takes its third-to-last hidden
    state) and a 1-layer CLIP text model of the real widths, both on the byte tokenizer. Smoke: the same on the
    CPU at toy sizes (fp32)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from worker.pipelines.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    if smoke:
        config = {**HUNYUAN, "num_attention_heads": 2, "attention_head_dim": 64, "num_layers": 1,
                  "num_single_layers": 1, "num_refiner_layers": 1, "text_embed_dim": 32,
                  "pooled_projection_dim": 16, "rope_axes_dim": (16, 24, 24), "in_channels": 4, "out_channels": 4}
        vae_config = dict(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)
        text_width, clip_width, device, dtype = 32, 16, torch.device("cpu"), torch.float32
    else:
        config, vae_config = HUNYUAN, {}
        text_width, clip_width, device, dtype = 4096, 768, torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    with built_on(device, dtype):
        transformer = HunyuanVideoTransformer3DModel(**config)
        vae = AutoencoderKLHunyuanVideo(**vae_config)
        text_encoder = LlamaModel(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=1024, num_hidden_layers=3,
            num_attention_heads=32 if not smoke else 4, num_key_value_heads=8 if not smoke else 4,
            max_position_embeddings=1024, pad_token_id=0))
        text_encoder_2 = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=clip_width, intermediate_size=1024, num_hidden_layers=1,
            num_attention_heads=12 if not smoke else 2, max_position_embeddings=77,
            projection_dim=clip_width, pad_token_id=0, bos_token_id=1, eos_token_id=1))
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer)
    pipe.save_pretrained(path)
    del pipe, transformer, vae, text_encoder, text_encoder_2
    if not smoke:
        torch.cuda.empty_cache()


def write_registry(path: Path, weights: Path, model: str, smoke: bool) -> Path:
    """A registry holding the bundled entry of ``model`` with its ``path`` pointed at ``weights``."""
    bundled = yaml.safe_load(DEFAULT_REGISTRY_PATH.read_text())
    source = "tiny" if smoke and model != "hunyuanvideo" else model
    entry = dict(next(m for m in bundled["models"] if m["name"] == source))
    entry.update(name=model, kind="diffusers", path=str(weights))
    if smoke and model == "hunyuanvideo":  # the builder's toy sizes, on the CPU: the tiny model's limits
        tiny = next(m for m in bundled["models"] if m["name"] == "tiny")
        entry.update(device="cpu", dtype="float32", limits=tiny["limits"], presets=tiny["presets"],
                     defaults={**tiny["defaults"], "guidance_scale": 6.0},
                     options={"enable_vae_tiling": True, "max_sequence_length": 16})
    elif smoke:  # the tiny entry is built in memory; as a directory it needs its class and a short prompt
        entry.update(pipeline_class="WanPipeline", options={"max_sequence_length": 64, "flow_shift": 3.0})
    registry = path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"default_model": model, "models": [entry]}, sort_keys=False))
    return registry


def parse_budget(text: str) -> str | dict:
    """``dense`` / a preset name, or ``fixed:<density>`` (the balanced preset in fixed-density mode), either with
    ``+field=value`` budget fields on top (``fixed:0.25+kmeans_iters_init=50``; values are YAML scalars)."""
    head, *extras = text.split("+")
    fields = {}
    for extra in extras:
        name, sep, value = extra.partition("=")
        if not sep or not name:
            raise ValueError(f"--budgets: {extra!r} in {text!r} is not field=value")
        fields[name] = yaml.safe_load(value)
    if head.startswith("fixed:"):
        budget = {"preset": "balanced", "mode": "fixed_density", "target_density": float(head.split(":", 1)[1])}
    elif not fields:
        return head
    else:
        budget = {"preset": head}
    return {**budget, **fields}


def read_back_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def run_job(model, registry, budget, steps: int, seed: int, out_dir: Path, label: str, device) -> dict:
    """One job as the worker runs it: resolve, generate, write the MP4; its metrics and checks."""
    import numpy as np

    from worker.pipelines.run import generate
    from worker.video import write_mp4

    spec, _ = build_job_spec(registry, prompt=PROMPT, num_inference_steps=steps, seed=seed, sparsity=budget)
    with GpuClocks(device) as clocks:
        start = time.perf_counter()
        result = generate(model.pipeline, spec, call_kwargs=model.call_kwargs)
        mp4 = out_dir / f"{label}.mp4"
        size = write_mp4(result.frames, mp4, fps=spec.fps)
        wall = time.perf_counter() - start
    m = result.metrics
    sparsity = m["sparsity"] or {}
    warm = spec.sparsity.warmup_steps(steps)
    step_s = m["step_seconds"]
    sparse_steps = step_s[warm:] if spec.sparsity.mode != "dense" else []
    frames = result.frames
    checks = {
        "frames_finite": bool(np.isfinite(frames).all()),
        "frame_shape": list(frames.shape) == [spec.num_frames, spec.height, spec.width, 3],
        "mp4_frames": read_back_frames(mp4) == spec.num_frames,
    }
    if spec.sparsity.mode != "dense" and sparsity:
        # the routed self-attention layers and the transformer passes a step makes (CFG or embedded guidance)
        passes = sparsity["transformer_forwards"] // steps
        layers = sparsity["attention_calls"] // sparsity["transformer_forwards"]
        dense_layers = min(spec.sparsity.dense_layers, layers)
        checks["warmup_calls"] = sparsity["dense_calls_warmup"] == warm * passes * layers
        checks["dense_layer_calls"] = sparsity["dense_calls_dense_layers"] == (steps - warm) * passes * dense_layers
        checks["sparse_calls"] = sparsity["sparse_calls"] == (steps - warm) * passes * (layers - dense_layers)
        if spec.sparsity.mode == "fixed_density":
            # about one key cluster (the mode's granularity; clusters vary in size), at least a point; joint text
            # tokens (HunyuanVideo) are dense and add up to their share of the pairs
            tol = max(0.01, 2.0 / spec.sparsity.num_k_clusters)
            video = ((spec.num_frames - 1) // 4 + 1) * (spec.height // 16) * (spec.width // 16)
            text = model.call_kwargs.get("max_sequence_length", 256) if model.entry.pipeline_class.startswith(
                "Hunyuan") else 0
            text_share = 1.0 - (video / (video + text)) ** 2
            d, target = sparsity["mean_density_sparse"], spec.sparsity.target_density
            checks["density_on_target"] = target - tol <= d <= target + tol + text_share
    return {
        "label": label,
        "budget": budget,
        "sparsity": spec.sparsity.model_dump(),
        "steps": steps,
        "warmup_steps": warm if spec.sparsity.mode != "dense" else steps,
        # the dense steps of the same job at the model's own step count (project_full_job)
        "full_warmup_steps": spec.sparsity.warmup_steps(model.entry.defaults.num_inference_steps),
        "wall_seconds": wall,
        "encode_seconds": m["encode_seconds"],
        "denoise_seconds": m["denoise_seconds"],
        "decode_seconds": m["decode_seconds"],
        "mp4_bytes": size,
        "step_seconds": step_s,
        "dense_step_median": statistics.median(step_s[:warm]) if warm else None,
        "first_sparse_step": sparse_steps[0] if sparse_steps else None,
        "sparse_step_median": statistics.median(sparse_steps[1:]) if len(sparse_steps) > 1 else None,
        "accounting": sparsity,
        "clocks": clocks.summary(),
        "checks": checks,
    }


def project_full_job(dense: dict, job: dict, full_steps: int, full_warmup: int) -> float | None:
    """The speedup of a job of ``full_steps`` steps with ``full_warmup`` dense ones, from this run's measured
    steps: the dense job's median step, this job's first sparse step (its cold k-means) and its median later
    sparse step; decode and MP4 write as measured. A call of the device tool is too short for a whole 50-step
    job at 720p (a Wan 14B dense step is ~22 s), so the runs there are a few steps long and this carries them
    to the length a user runs."""
    if not job["sparse_step_median"] or not job["first_sparse_step"] or full_warmup >= full_steps:
        return None
    dense_step = statistics.median(dense["step_seconds"])
    tail = dense["wall_seconds"] - dense["encode_seconds"] - dense["denoise_seconds"]  # decode + MP4 write
    sparse_total = (full_warmup * dense_step + job["first_sparse_step"]
                    + (full_steps - full_warmup - 1) * job["sparse_step_median"])
    return (full_steps * dense_step + tail) / (sparse_total + tail)


def summarise(jobs: list[dict], full_steps: int | None = None) -> None:
    """Speedups against the dense job of the same run, and the accounting's estimate against the time
    the job really saved (dense job's denoising minus this job's). With ``full_steps``, also each job's
    projection to that many steps (``project_full_job``; its warm-up from the job's own schedule)."""
    dense = next((j for j in jobs if j["budget"] == "dense"), None)
    if dense is None:
        return
    dense_step = statistics.median(dense["step_seconds"])
    for j in jobs:
        if full_steps and j["budget"] != "dense":
            j["full_steps"] = full_steps
            j["projected_full_job_speedup"] = project_full_job(dense, j, full_steps, j["full_warmup_steps"])
        j["speedup_wall"] = dense["wall_seconds"] / j["wall_seconds"]
        j["speedup_denoise"] = dense["denoise_seconds"] / j["denoise_seconds"]
        est = (j["accounting"] or {}).get("estimated_attention_seconds_saved")
        j["saved_denoise_seconds"] = dense["denoise_seconds"] - j["denoise_seconds"]
        j["estimated_saved_seconds"] = est
        if j["sparse_step_median"]:
            # the bench_pipeline_step projection, from this run's own step times
            steps, warm = j["steps"], j["warmup_steps"]
            projected = (steps * dense_step + dense["decode_seconds"]) / (
                warm * dense_step + (steps - warm) * j["sparse_step_median"] + dense["decode_seconds"])
            j["projected_speedup_from_steps"] = projected


def full_job_cell(job: dict) -> str:
    x = job.get("projected_full_job_speedup")
    return "-" if x is None else f"{x:.2f}x ({job['full_steps']} steps, {job['full_warmup_steps']} dense)"


def write_markdown(path: Path, result: dict) -> None:
    lines = [f"# Whole jobs through the worker's path ({result['card']})", "",
             f"{result['description']}", "",
             "| budget | mean density (sparse calls) | wall s | encode s | denoise s | decode s | MP4 write s | dense step s | "
             "first sparse step s | sparse step s | speedup (wall) | speedup (denoise) | projected from steps | "
             "projected full job | saved s (measured) | saved s (job's estimate) | its dense time | clock | checks |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    for j in result["jobs"]:
        acc = j["accounting"] or {}
        ok = all(j["checks"].values())
        lines.append("| " + " | ".join([
            j["label"], f(acc.get("mean_density_sparse"), "{:.3f}"), f(j["wall_seconds"]), f(j["encode_seconds"]),
            f(j["denoise_seconds"]), f(j["decode_seconds"]),
            f(j["wall_seconds"] - j["encode_seconds"] - j["denoise_seconds"] - j["decode_seconds"]),
            f(j["dense_step_median"], "{:.3f}"), f(j["first_sparse_step"], "{:.3f}"),
            f(j["sparse_step_median"], "{:.3f}"), f(j.get("speedup_wall"), "{:.2f}x"),
            f(j.get("speedup_denoise"), "{:.2f}x"), f(j.get("projected_speedup_from_steps"), "{:.2f}x"),
            full_job_cell(j), f(j.get("saved_denoise_seconds")), f(j.get("estimated_saved_seconds")),
            acc.get("estimated_dense_time_source") or "-", clock_cell(j["clocks"]),
            "ok" if ok else "FAILED: " + ", ".join(k for k, v in j["checks"].items() if not v),
        ]) + " |")
    lines += ["", "decode s: VAE decode and the pipeline's post-processing to frames; MP4 write s: the worker's H.264 "
              "writer (x264 at its default preset; random weights produce noise, x264's slowest content).",
              "", f"Load (from_pretrained offline + svg2 + regional compile set-up): {result['load_seconds']:.1f} s; "
              f"warm-up job (compilation, calibration; not in the table): {result['warmup_job_seconds']:.1f} s.", ""]
    warm = result.get("worker_warmup")
    if warm:  # --warmup worker: the worker's start-up warm-up, job by job
        lines += [f"The worker's warm-up (mode {warm['mode']}): {warm['seconds']:.1f} s"
                  + (f", stopped: {warm['error']}" if warm["error"] else "") + ".", "",
                  "| warm-up job | steps | decoded | transformers | s |", "|---|---|---|---|---|"]
        lines += [f"| {j['budget']} | {j['steps']} | {'yes' if j['decoded'] else 'no'} | {', '.join(j['denoisers'])} "
                  f"| {j['seconds']:.1f} |" for j in warm["jobs"]]
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--smoke", action="store_true", help="the tiny model on CPU (checks the script)")
    parser.add_argument("--model", default="wan2.1-t2v-1.3b", help="registry entry whose settings the jobs use")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the entry's)")
    parser.add_argument("--budgets", default="dense,fixed:0.15,fixed:0.25,balanced",
                        help="comma-separated: dense, a preset name, or fixed:<density>")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", choices=("jobs", "worker"), default="jobs",
                        help="jobs: a 2-step dense and a 2-step fixed-25%% job before the table (compiles, calibrates); "
                             "worker: the worker's own start-up warm-up (worker/warmup.py, mode all), timed and "
                             "reported, so the table's first sparse steps show what it leaves to a first job")
    parser.add_argument("--weights-dir", type=Path, default=None, help="reuse / keep the saved pipeline here")
    args = parser.parse_args()
    if args.model not in TRANSFORMERS:
        parser.error(f"--model: a random-weight builder exists for {', '.join(TRANSFORMERS)} only")
    if not args.smoke and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --smoke)")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.smoke else "cuda")

    from worker.pipelines.loading import load_model

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights_dir or Path(tmp) / "weights"
        t = time.perf_counter()
        if not (weights / "model_index.json").exists():
            build_pipeline_dir(weights, args.smoke, args.model)
        build_seconds = time.perf_counter() - t
        registry = load_registry(write_registry(Path(tmp), weights, args.model, args.smoke))
        entry = registry.get(args.model)
        steps = args.steps or entry.defaults.num_inference_steps
        model = load_model(entry, str(device))
        print(f"built {build_seconds:.1f} s, loaded {model.load_seconds:.1f} s", flush=True)

        # Compile every graph, measure the dense calibration, warm the kernels: a 2-step dense + sparse job, or the
        # worker's own warm-up.
        t = time.perf_counter()
        warmup_report = None
        if args.warmup == "worker":
            from worker.warmup import warm_up

            report = warm_up(registry, model, "all")
            warmup_report = {"mode": report.mode, "seconds": report.seconds, "error": report.error,
                             "jobs": [vars(j) for j in report.jobs]}
        else:
            warm_budget = {"preset": "balanced", "mode": "fixed_density", "target_density": 0.25,
                           "dense_warmup_steps": 1}
            for budget in ("dense", warm_budget):
                spec, _ = build_job_spec(registry, prompt=PROMPT, num_inference_steps=2, seed=0, sparsity=budget)
                from worker.pipelines.run import generate
                generate(model.pipeline, spec, call_kwargs=model.call_kwargs)
        warmup_job_seconds = time.perf_counter() - t
        print(f"warm-up jobs {warmup_job_seconds:.1f} s", flush=True)

        jobs = []
        for text in args.budgets.split(","):
            label = re.sub(r"[^A-Za-z0-9_.-]", "_", text)  # a plain file name (the device tool leaves out odd ones)
            job = run_job(model, registry, parse_budget(text), steps, args.seed, args.out, label, device)
            jobs.append(job)
            print(f"{label}: wall {job['wall_seconds']:.1f} s, denoise {job['denoise_seconds']:.1f} s, "
                  f"checks {job['checks']}", flush=True)
    summarise(jobs, entry.defaults.num_inference_steps)
    card = card_name(device)
    result = {
        "card": card,
        "torch": torch.__version__,
        "model": args.model,
        "width": entry.defaults.width, "height": entry.defaults.height, "frames": entry.defaults.num_frames,
        "description": (
            f"{args.model} random weights (public configurations; {TEXT_ENCODERS[args.model]}), "
            f"{entry.defaults.width}x{entry.defaults.height}, {entry.defaults.num_frames} frames, {steps} steps, "
            f"CFG {entry.defaults.guidance_scale}, registry options {entry.options}; loaded with the worker's "
            "loader and run with the worker's generate() and MP4 writer, one resident pipeline, jobs back to back. "
            "fixed:<d> = the balanced preset (its clusters, warm-up and dense layers) in fixed-density mode; "
            "balanced = top-p on random weights (near-uniform attention). Speedups against the dense job of the "
            "same run; 'projected from steps' = bench_pipeline_step's projection from this run's median dense and "
            "sparse step times; saved s (measured) = dense job's denoising minus this job's; the job's estimate = "
            "its metrics' estimated_attention_seconds_saved (dense time per call from the dense calls the jobs ran, else "
            "a probe; 'its dense time' says which; minus the sparse calls' CUDA-event time)."),
        "load_seconds": model.load_seconds,
        "build_seconds": build_seconds,
        "warmup_job_seconds": warmup_job_seconds,
        "warmup": args.warmup,
        "worker_warmup": warmup_report,
        "jobs": jobs,
    }
    (args.out / f"bench_generate_{card}.json").write_text(json.dumps(result, indent=1, default=str))
    write_markdown(args.out / f"bench_generate_{card}.md", result)
    print((args.out / f"bench_generate_{card}.md").read_text())
    return 0 if all(all(j["checks"].values()) for j in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
