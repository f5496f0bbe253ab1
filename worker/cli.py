"""``svg2``: generate a clip offline, in this process, without Redis or a queue.

Example::

    svg2 generate --model tiny --prompt "a red fox in snow" --out clip.mp4
    svg2 generate --model wan2.1-t2v-1.3b --prompt "..." --size 832x480 --num-frames 81 \\
        --sparsity balanced --out fox.mp4

The request goes through the same registry rules as the API (defaults, limits, sparsity presets)
and the same pipeline runner as the worker; progress is a tqdm bar on stderr and the job's metrics
are printed as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from worker.registry import SpecError, build_job_spec, load_registry


def _sparsity_arg(value: str) -> str | dict:
    """A preset name, or a JSON object of budget fields."""
    if value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svg2", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate one clip to an MP4 file")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--out", required=True, type=Path, help="MP4 file to write")
    gen.add_argument("--model", default=None, help="registry name (default: the registry's default model)")
    gen.add_argument("--registry", type=Path, default=None, help="registry YAML (default: bundled)")
    gen.add_argument("--device", default=None, help="torch device (default: the model's device)")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--size", default=None, help="WIDTHxHEIGHT, e.g. 832x480")
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--num-frames", type=int, default=None)
    gen.add_argument("--seconds", type=float, default=None)
    gen.add_argument("--fps", type=int, default=None)
    gen.add_argument("--steps", dest="num_inference_steps", type=int, default=None)
    gen.add_argument("--guidance-scale", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None, help="default: random (printed in the metrics)")
    gen.add_argument("--image", type=Path, default=None,
                     help="first frame (PNG, JPEG or WebP) for an image-to-video model; center-cropped to the size")
    gen.add_argument("--sparsity", type=_sparsity_arg, default=None,
                     help="preset name (dense, quality, balanced, fast) or a JSON object of fields")
    return parser


def generate_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    # torch and diffusers load slowly: import them only once the arguments are known to be valid.
    registry = load_registry(args.registry)
    image = input_image = None
    try:
        if args.image is not None:
            from PIL import Image

            from worker.images import FIELD, decode_input_image, load_stored_image

            try:
                raw = args.image.read_bytes()
            except OSError as exc:
                raise SpecError(FIELD, f"cannot read --image {str(args.image)!r}: {exc.strerror}") from None
            png, input_image = decode_input_image(raw, max_bytes=len(raw), max_pixels=Image.MAX_IMAGE_PIXELS)
            image = load_stored_image(png, input_image)
        spec, entry = build_job_spec(
            registry,
            prompt=args.prompt,
            model=args.model,
            negative_prompt=args.negative_prompt,
            size=args.size,
            width=args.width,
            height=args.height,
            seconds=args.seconds,
            num_frames=args.num_frames,
            fps=args.fps,
            seed=args.seed,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            sparsity=args.sparsity,
            input_image=input_image,
        )
    except SpecError as exc:
        print(f"svg2: error: {exc}", file=sys.stderr)
        return 2
    if args.out.suffix.lower() != ".mp4":
        print(f"svg2: error: --out: must end in .mp4, got {str(args.out)!r}", file=sys.stderr)
        return 2

    from worker.pipelines.loading import ModelUnavailable, load_model
    from worker.pipelines.run import InvalidJobInput, generate
    from worker.video import write_mp4

    try:
        model = load_model(entry, args.device)
    except ModelUnavailable as exc:
        print(f"svg2: error: {exc}", file=sys.stderr)
        return 3
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=spec.num_inference_steps, desc=f"{spec.model} {spec.size}x{spec.num_frames}",
              unit="step", file=sys.stderr) as bar:
        try:
            result = generate(model.pipeline_for(image), spec, on_step=lambda step, total, seconds: bar.update(1),
                              call_kwargs=model.call_kwargs, image=image)
        except InvalidJobInput as exc:
            print(f"svg2: error: {exc}", file=sys.stderr)
            return 2
    write_start = time.perf_counter()
    size = write_mp4(result.frames, args.out, fps=spec.fps)
    metrics = {
        **model.describe(),
        "load_seconds": model.load_seconds,
        **result.metrics,
        "write_seconds": time.perf_counter() - write_start,
        "output_bytes": size,
        "seed": spec.seed,
        "out": str(args.out),
    }
    print(json.dumps(metrics))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svg2``."""
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return generate_command(args)
    raise AssertionError(args.command)  # argparse enforces the subcommand


if __name__ == "__main__":
    sys.exit(main())
