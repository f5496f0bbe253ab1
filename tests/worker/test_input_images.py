"""Image-to-video's first frame: decoding and checking an upload (worker/images.py), the registry's task rule, the
tiny image-to-video pipeline, and the store's input files."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from worker.images import (
    decode_data_url,
    decode_input_image,
    encode_png,
    fit_to_size,
    load_stored_image,
    synthetic_image,
)
from worker.registry import SpecError, build_job_spec

MB = 1 << 20


def encoded(img: Image.Image, fmt: str, **save) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    img = Image.new("RGB", (width, height), (255, 0, 0))
    img.paste((0, 0, 255), (width // 2, 0, width, height))
    return img


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_each_accepted_format_is_stored_as_an_rgb_png_with_its_digest(fmt):
    raw = encoded(halves(40, 24), fmt)
    png, meta = decode_input_image(raw, max_bytes=MB, max_pixels=10**6)
    stored = Image.open(io.BytesIO(png))
    assert stored.format == "PNG" and stored.mode == "RGB" and stored.size == (40, 24)
    assert (meta.width, meta.height, meta.source_format) == (40, 24, fmt.lower())
    assert meta.sha256 == hashlib.sha256(png).hexdigest()
    left, right = np.asarray(stored)[12, 5], np.asarray(stored)[12, 35]
    assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60


def test_transparency_is_composited_over_white_and_exif_orientation_applied():
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((0, 128, 0, 255), (0, 0, 10, 20))
    png, _ = decode_input_image(encoded(rgba, "PNG"), MB, 10**6)
    px = np.asarray(Image.open(io.BytesIO(png)))
    assert tuple(px[5, 15]) == (255, 255, 255) and tuple(px[5, 5]) == (0, 128, 0)

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    raw = encoded(Image.new("RGB", (40, 20), (10, 20, 30)), "JPEG", exif=exif)
    _, meta = decode_input_image(raw, MB, 10**6)
    assert (meta.width, meta.height) == (20, 40)


@pytest.mark.parametrize("raw, words", [
    (b"", "empty"),
    (b"GIF89a" + b"\0" * 100, "readable"),
    (encoded(noise(64, 64), "PNG")[:2000], "decoded"),  # a whole header, truncated pixel data
    (encoded(Image.new("RGB", (20, 20)), "GIF"), "PNG, JPEG or WebP"),
    (encoded(Image.new("RGB", (20, 20)), "BMP"), "PNG, JPEG or WebP"),
    (encoded(Image.new("RGB", (8, 40)), "PNG"), "at least 16 pixels"),
    (encoded(Image.new("RGB", (200, 200)), "PNG"), "at most 30000 pixels"),
], ids=["empty", "garbage", "truncated", "gif", "bmp", "too-thin", "too-many-pixels"])
def test_bad_images_are_refused_naming_the_field_and_the_rule(raw, words):
    with pytest.raises(SpecError) as err:
        decode_input_image(raw, max_bytes=MB, max_pixels=30_000)
    assert err.value.param == "input_reference" and words in err.value.message


def test_byte_limit_is_checked_before_decoding():
    raw = encoded(synthetic_image(64, 64), "PNG")
    with pytest.raises(SpecError, match=f"at most {len(raw) - 1} bytes"):
        decode_input_image(raw, max_bytes=len(raw) - 1, max_pixels=10**6)


def test_data_urls():
    raw = encoded(synthetic_image(32, 16), "PNG")
    assert decode_data_url("data:image/png;base64," + base64.b64encode(raw).decode()) == raw
    for bad, words in [("http://example.com/a.png", "data URL"), ("data:image/png;base64,@@@", "base64"),
                       (42, "data URL string")]:
        with pytest.raises(SpecError) as err:
            decode_data_url(bad)
        assert err.value.param == "input_reference" and words in err.value.message


def test_fit_crops_to_the_aspect_ratio_instead_of_stretching():
    img = halves(200, 100)  # a narrow target keeps the middle: both colours, the boundary in the centre
    out = np.asarray(fit_to_size(img, 50, 100))
    assert out.shape == (100, 50, 3)
    assert out[50, 2, 0] > 200 and out[50, 47, 2] > 200  # red left, blue right: cropped, not squeezed
    wide = np.asarray(fit_to_size(halves(100, 100), 64, 16))
    assert wide.shape == (16, 64, 3) and wide[8, 2, 0] > 200 and wide[8, 61, 2] > 200


def test_the_stored_image_must_match_the_specs_digest():
    png, meta = encode_png(synthetic_image(32, 32))
    assert load_stored_image(png, meta).size == (32, 32)
    other, _ = encode_png(synthetic_image(32, 16))
    with pytest.raises(ValueError, match="input_reference: the stored image does not match"):
        load_stored_image(other, meta)


def test_registry_task_rules(registry):
    meta = encode_png(synthetic_image(32, 32))[1]
    with pytest.raises(SpecError) as err:
        build_job_spec(registry, model="tiny", prompt="x", input_image=meta)
    assert err.value.param == "input_reference" and "text-to-video" in err.value.message
    with pytest.raises(SpecError) as err:
        build_job_spec(registry, model="tiny-i2v", prompt="x")
    assert err.value.param == "input_reference" and "required" in err.value.message
    spec, entry = build_job_spec(registry, model="tiny-i2v", prompt="x", input_image=meta)
    assert entry.task == "i2v" and spec.input_image == meta
    assert {m.name: m.task for m in registry.models}["wan2.1-i2v-14b-720p"] == "i2v"


def test_store_keeps_an_input_until_its_job_expires_and_removes_orphans(store, registry):
    from worker.store import ORPHAN_INPUT_AGE_S

    png, _ = encode_png(synthetic_image(16, 16))
    spec, _ = build_job_spec(registry, prompt="x", model="tiny")
    live = store.create(spec, "tiny")
    store.save_input_image(live.id, png)
    orphan = store.input_path("video_" + "ab" * 16)
    orphan.write_bytes(png)
    young = store.input_path("video_" + "cd" * 16)
    young.write_bytes(png)
    old = time.time() - ORPHAN_INPUT_AGE_S - 10
    os.utime(orphan, (old, old))
    store.purge_expired()
    assert store.input_path(live.id).read_bytes() == png and not orphan.exists() and young.exists()
    assert not list(store.output_dir.glob(".*partial"))
    store.request_cancel(live.id)  # cancelled while queued: its input goes with its (absent) MP4
    assert not store.input_path(live.id).exists()


def test_tiny_image_to_video_follows_its_first_frame(registry):
    from worker.pipelines.loading import ModelUnavailable, _check_task, load_model
    from worker.pipelines.run import InvalidJobInput, generate

    model = load_model(registry.get("tiny-i2v"))
    card = synthetic_image(64, 64)
    meta = encode_png(card)[1]
    spec, _ = build_job_spec(registry, model="tiny-i2v", prompt="a boat", seed=3, num_inference_steps=2,
                             num_frames=5, sparsity={"preset": "balanced", "dense_warmup_steps": 0},
                             input_image=meta)

    def run(image):
        return generate(model.pipeline, spec, call_kwargs=model.call_kwargs, image=image)

    first = run(card)
    assert first.frames.shape == (5, 64, 64, 3) and np.isfinite(first.frames).all()
    assert first.metrics["attention"] == "svg2" and first.metrics["sparsity"]["sparse_calls"] > 0
    assert np.array_equal(run(card).frames, first.frames)  # same frame, same seed: same video
    assert not np.allclose(run(card.rotate(90)).frames, first.frames, atol=1e-4)  # the frame conditions it
    with pytest.raises(InvalidJobInput, match="input_reference: required"):
        run(None)
    tiny = load_model(registry.get("tiny"))
    with pytest.raises(InvalidJobInput, match="input_reference: .*takes no input image"):
        generate(tiny.pipeline, spec.model_copy(update={"model": "tiny", "input_image": None}), image=card)
    with pytest.raises(ModelUnavailable, match="takes no image"):
        _check_task(registry.get("tiny-i2v"), tiny.pipeline)
    with pytest.raises(ModelUnavailable, match="set task: i2v"):
        _check_task(registry.get("tiny"), model.pipeline)


def test_a_ti2v_model_serves_text_and_image_jobs_from_one_copy_of_its_weights(registry):
    """Wan 2.2 TI2V's layout (expand_timesteps, z input channels): without an image the WanPipeline runs, with one
    the WanImageToVideoPipeline over the same modules; the image is optional in the registry's rules."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    from worker.pipelines.loading import ModelUnavailable, _check_task, load_model
    from worker.pipelines.run import generate
    from worker.registry import Registry

    entry = registry.get("tiny").model_copy(update={"name": "tiny-ti2v", "task": "ti2v", "queue": "tiny-ti2v"})
    reg = Registry(default_model="tiny", models=[*registry.models, entry])
    model = load_model(entry)
    assert isinstance(model.pipeline, WanPipeline) and isinstance(model.image_pipeline, WanImageToVideoPipeline)
    assert model.image_pipeline.transformer is model.pipeline.transformer
    assert model.image_pipeline.config.expand_timesteps and model.image_pipeline.vae is model.pipeline.vae
    card = synthetic_image(64, 64)
    common = dict(model="tiny-ti2v", prompt="a boat", seed=2, num_frames=5, num_inference_steps=2,
                  sparsity={"preset": "balanced", "dense_warmup_steps": 0})
    text_spec, _ = build_job_spec(reg, **common)
    image_spec, _ = build_job_spec(reg, **common, input_image=encode_png(card)[1])

    def run(spec, image):
        return generate(model.pipeline_for(image), spec, call_kwargs=model.call_kwargs, image=image).frames

    text = run(text_spec, None)
    with_card = run(image_spec, card)
    assert text.shape == with_card.shape == (5, 64, 64, 3)
    assert not np.allclose(text, with_card, atol=1e-4)
    assert not np.allclose(run(image_spec, card.rotate(90)), with_card, atol=1e-4)
    assert np.array_equal(run(image_spec, card), with_card)
    with pytest.raises(ModelUnavailable, match="task ti2v needs pipeline_class WanPipeline"):
        _check_task(entry, load_model(registry.get("tiny-i2v")).pipeline)
    assert registry.get("wan2.2-ti2v-5b").task == "ti2v" and registry.get("wan2.2-ti2v-5b").limits.size_multiple == 32
