"""The model registry file and the request -> JobSpec resolution it drives."""

from __future__ import annotations

import re

import pytest
import yaml

from worker.registry import (
    DEFAULT_REGISTRY_PATH,
    SpecError,
    build_job_spec,
    frames_for_seconds,
    load_registry,
)
from worker.spec import DEFAULT_PRESETS


def test_bundled_registry_has_tiny_default_and_real_models(registry):
    assert registry.default_model == "tiny"
    tiny = registry.get(None)
    assert tiny.name == "tiny" and tiny.kind == "tiny-wan" and tiny.device == "cpu" and tiny.dtype == "float32"
    assert tiny.queue == "tiny"
    wan13 = registry.get("wan2.1-t2v-1.3b")
    assert (wan13.defaults.width, wan13.defaults.height, wan13.defaults.num_frames, wan13.defaults.fps) == (
        832, 480, 81, 16)
    assert wan13.defaults.num_inference_steps == 50 and wan13.defaults.guidance_scale == 5.0
    assert wan13.pipeline_class == "WanPipeline" and wan13.kind == "diffusers"
    wan14 = registry.get("wan2.1-t2v-14b")
    assert (wan14.defaults.width, wan14.defaults.height) == (1280, 720)
    hy = registry.get("hunyuanvideo")
    assert hy.pipeline_class == "HunyuanVideoPipeline"
    assert (hy.defaults.num_frames, hy.defaults.fps, hy.defaults.guidance_scale) == (129, 24, 6.0)
    assert len({m.queue for m in registry.models}) == len(registry.models)


def test_model_presets_override_only_the_fields_they_name(registry):
    hy = registry.get("hunyuanvideo").resolved_presets()
    assert hy["balanced"].num_q_clusters == 400 and hy["balanced"].dense_warmup_fraction == 0.1
    assert hy["fast"].max_density == DEFAULT_PRESETS["fast"]["max_density"]
    assert hy["dense"].mode == "dense"


def test_the_720p_presets_run_the_tail_union_and_a_rebalancing_request_replaces_it(registry):
    # the 720p models' quality / balanced presets pack query tails (measured faster there); 480p and fast do not
    for name in ("wan2.1-t2v-14b", "hunyuanvideo", "wan2.2-t2v-a14b"):
        presets = registry.get(name).resolved_presets()
        assert presets["balanced"].query_tail_union and presets["quality"].query_tail_union, name
        assert not presets["fast"].query_tail_union, name
    assert not registry.get("wan2.1-t2v-1.3b").resolved_presets()["balanced"].query_tail_union
    # a request for rebalancing on such a preset gets rebalancing instead (the two fill the same tails) ...
    spec, _ = build_job_spec(registry, prompt="x", model="hunyuanvideo", sparsity={"query_tile_rebalance": 16})
    assert spec.sparsity.query_tile_rebalance == 16 and not spec.sparsity.query_tail_union
    assert spec.sparsity.num_q_clusters == 400  # the rest is still the preset's
    # ... and asking for both is still an error naming the field
    with pytest.raises(SpecError) as err:
        build_job_spec(registry, prompt="x", model="hunyuanvideo",
                       sparsity={"query_tile_rebalance": 16, "query_tail_union": True})
    assert err.value.param == "sparsity.query_tail_union"


def test_unknown_model_lists_the_models(registry):
    with pytest.raises(SpecError) as err:
        registry.get("sora-2")
    assert err.value.param == "model" and "tiny" in err.value.message and "hunyuanvideo" in err.value.message


def _write(tmp_path, data) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _bundled() -> dict:
    return yaml.safe_load(DEFAULT_REGISTRY_PATH.read_text())


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["models"].append(dict(d["models"][0])), "duplicate"),
        (lambda d: d.update(default_model="nope"), "default_model"),
        (lambda d: d["models"][0].update(default_preset="nope"), "default_preset"),
        (lambda d: d["models"][0]["defaults"].update(num_frames=10), "defaults.num_frames"),
        (lambda d: d["models"][0]["defaults"].update(width=1024), "defaults.size"),
        (lambda d: next(m for m in d["models"] if m["kind"] == "diffusers").pop("path"), "needs a path"),
        (lambda d: d["models"][0]["presets"].update(balanced={"top_p": 3}), "top_p"),
        (lambda d: d["models"][0].update(colour="red"), "colour"),
    ],
    ids=["duplicate", "default-model", "default-preset", "defaults-frames", "defaults-size", "no-path",
         "bad-preset", "unknown-key"],
)
def test_invalid_registry_files_are_rejected_with_the_reason(tmp_path, mutate, needle):
    data = _bundled()
    mutate(data)
    with pytest.raises(ValueError, match=needle):
        load_registry(_write(tmp_path, data))


@pytest.mark.parametrize("value", ["max", "Regional", True, False, None, 1])
def test_unknown_compile_option_values_are_rejected_naming_model_and_field(tmp_path, value):
    data = _bundled()
    hunyuan = next(m for m in data["models"] if m["name"] == "hunyuanvideo")
    hunyuan.setdefault("options", {})["compile"] = value
    with pytest.raises(ValueError, match=r"model hunyuanvideo: options\.compile must be one of regional, none, "
                                         rf"got {re.escape(repr(value))}"):
        load_registry(_write(tmp_path, data))


def test_compile_backend_must_be_a_name(tmp_path):
    data = _bundled()
    data["models"][0]["options"] = {"compile": "regional", "compile_backend": 3}
    with pytest.raises(ValueError, match=r"model tiny: options\.compile_backend must be the name of a "
                                         r"torch\.compile backend, got 3"):
        load_registry(_write(tmp_path, data))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_value_beside_selection_option_must_be_a_bool(tmp_path, value):
    data = _bundled()
    data["models"][0]["options"] = {"svg2_value_beside_selection": value}
    with pytest.raises(ValueError, match=r"model tiny: options\.svg2_value_beside_selection must be true or false, "
                                         rf"got {re.escape(repr(value))}"):
        load_registry(_write(tmp_path, data))


def test_compile_option_values_load(tmp_path):
    data = _bundled()
    data["models"][0]["options"] = {"compile": "regional", "compile_backend": "aot_eager"}
    data["models"][1]["options"] = {**data["models"][1].get("options", {}), "compile": "none"}
    registry = load_registry(_write(tmp_path, data))
    assert registry.models[0].options["compile"] == "regional" and registry.models[1].options["compile"] == "none"


def test_registry_file_that_is_not_yaml_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models: [")
    with pytest.raises(ValueError, match="cannot read model registry"):
        load_registry(path)


@pytest.mark.parametrize(("seconds", "fps", "frames"), [(5, 16, 81), (4, 16, 65), (1, 8, 9), (0.01, 8, 1), (2, 8, 17)])
def test_seconds_become_the_nearest_4k_plus_1_frames(seconds, fps, frames):
    assert frames_for_seconds(seconds, fps, 4) == frames


def test_defaults_fill_every_field_and_a_seed_is_drawn(registry):
    spec, entry = build_job_spec(registry, prompt="x")
    assert entry.name == "tiny"
    assert (spec.width, spec.height, spec.num_frames, spec.fps, spec.num_inference_steps) == (64, 64, 9, 8, 4)
    assert spec.sparsity.preset == "balanced" and spec.sparsity.num_q_clusters == 8
    assert 0 <= spec.seed < 2**31


def test_explicit_sparsity_fields_refine_the_models_default_preset(registry):
    spec, _ = build_job_spec(registry, prompt="x", sparsity={"top_p": 0.7, "dense_layers": 0})
    assert spec.sparsity.top_p == 0.7 and spec.sparsity.dense_layers == 0
    assert spec.sparsity.num_k_clusters == 16  # from the tiny model's balanced preset
    dense = build_job_spec(registry, prompt="x", sparsity="dense")[0].sparsity
    assert dense.mode == "dense"


def test_size_and_seconds_resolve(registry):
    spec, _ = build_job_spec(registry, prompt="x", size="128x96", seconds="2", fps=8)
    assert (spec.width, spec.height, spec.num_frames) == (128, 96, 17)
