"""Registry option ``compile: regional``: the worker compiles the transformer's repeated blocks once at
load (after svg2), and jobs give the frames of the eager pipeline, dense and sparse, without
recompiling from one job (or step, or budget) to the next."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from worker.pipelines.loading import ModelUnavailable, load_model
from worker.pipelines.run import generate

# inductor, the production backend (~25 s on 2 CPU cores with a cold inductor cache, C++ build
# included); SVG2_TEST_COMPILE_BACKEND=aot_eager skips the C++ build where that is too slow.
BACKEND = os.environ.get("SVG2_TEST_COMPILE_BACKEND", "inductor")


def _tiny_with(registry, **options):
    entry = registry.get("tiny")
    return entry.model_copy(update={"options": {**entry.options, **options}})


@pytest.fixture(scope="module")
def compiled_tiny():
    from worker.registry import load_registry

    return load_model(_tiny_with(load_registry(), compile="regional", compile_backend=BACKEND), device="cpu")


def test_compiled_jobs_match_eager_dense_and_sparse_without_recompiling(tiny_model, compiled_tiny, tiny_spec):
    assert compiled_tiny.compile == "regional" and tiny_model.compile == "none"
    blocks = compiled_tiny.pipeline.transformer.blocks
    assert all(block._compiled_call_impl is not None for block in blocks)
    jobs = [tiny_spec(num_frames=5, num_inference_steps=2, sparsity="dense"),
            tiny_spec(num_frames=5, num_inference_steps=3,
                      sparsity={"preset": "balanced", "dense_warmup_steps": 1, "dense_layers": 0})]
    graphs = [counters["stats"]["unique_graphs"]]
    for spec in jobs:
        eager = generate(tiny_model.pipeline, spec, call_kwargs=tiny_model.call_kwargs)
        compiled = generate(compiled_tiny.pipeline, spec, call_kwargs=compiled_tiny.call_kwargs)
        graphs.append(counters["stats"]["unique_graphs"])
        np.testing.assert_allclose(compiled.frames, eager.frames, atol=1e-4)
        assert compiled.metrics["attention"] == eager.metrics["attention"]
        for key in ("sparse_calls", "dense_calls", "dense_calls_warmup"):
            assert compiled.metrics["sparsity"][key] == eager.metrics["sparsity"][key]
    assert graphs[1] > graphs[0]  # the blocks were compiled by the first job...
    assert graphs[2] == graphs[1]  # ...and the sparse job's steps and budget recompiled nothing
    assert eager.metrics["sparsity"]["sparse_calls"] == 2 * 2 * 2  # the second job did run sparse


def test_bad_compile_options_fail_the_load_naming_the_option(registry):
    with pytest.raises(ModelUnavailable, match=r"options.compile: must be one of regional, none, got 'max'"):
        load_model(_tiny_with(registry, compile="max"), device="cpu")
    with pytest.raises(ModelUnavailable, match=r"options.compile_backend: must be a torch.compile backend"):
        load_model(_tiny_with(registry, compile="regional", compile_backend="nope"), device="cpu")


def test_compiled_hunyuan_video_jobs_match_eager(registry):
    """HunyuanVideo's four compiled block classes (dual- and single-stream, patch embedding, token
    refiner) with svg2's joint attention: the frames of the eager pipeline, dense and sparse."""
    from tiny_hunyuan import MAX_SEQUENCE_LENGTH, build_tiny_hunyuan_pipeline

    from svg2core.integration import apply_svg2
    from worker.pipelines.loading import compile_transformers
    from worker.registry import build_job_spec

    eager_pipe, compiled_pipe = build_tiny_hunyuan_pipeline(), build_tiny_hunyuan_pipeline()
    for pipe in (eager_pipe, compiled_pipe):
        apply_svg2(pipe)
    compile_transformers(compiled_pipe, backend=BACKEND)
    small = {"num_q_clusters": 8, "num_k_clusters": 16, "kmeans_iters_init": 5, "dense_warmup_steps": 0,
             "dense_layers": 0}
    graphs = [counters["stats"]["unique_graphs"]]
    for sparsity in ("dense", {"preset": "fast", "top_p": 0.3, **small}):
        spec, _ = build_job_spec(registry, prompt="a lighthouse at dusk", model="hunyuanvideo", size="64x64",
                                 num_frames=5, num_inference_steps=2, seed=3, sparsity=sparsity)
        eager, compiled = (generate(pipe, spec, call_kwargs={"max_sequence_length": MAX_SEQUENCE_LENGTH})
                           for pipe in (eager_pipe, compiled_pipe))
        graphs.append(counters["stats"]["unique_graphs"])
        np.testing.assert_allclose(compiled.frames, eager.frames, atol=1e-4)
        assert compiled.metrics["sparsity"]["sparse_calls"] == eager.metrics["sparsity"]["sparse_calls"]
    assert eager.metrics["sparsity"]["sparse_calls"] == 4 and eager.metrics["sparsity"]["mean_density_sparse"] < 1
    assert graphs[1] > graphs[0] and graphs[2] == graphs[1]  # compiled by the first job, not again


def test_packed_hunyuan_prompts_of_new_lengths_recompile_once(registry):
    """generate() packs each HunyuanVideo prompt to its valid tokens, so the text length changes from
    job to job: the second length recompiles the blocks once (dynamic text length), later lengths
    compile nothing, and the frames stay the eager pipeline's. (aot_eager: recompilation is dynamo's
    business, and inductor's C++ builds of the dynamic graphs take two minutes on 2 CPU cores.)"""
    from tiny_hunyuan import MAX_SEQUENCE_LENGTH, build_tiny_hunyuan_pipeline

    from svg2core.integration import apply_svg2
    from worker.pipelines.loading import compile_transformers
    from worker.registry import build_job_spec

    # Dynamo remembers the sizes each block's code saw in this process (other tests compiled the same
    # block classes): start from a clean slate so that the first job here compiles static graphs.
    torch._dynamo.reset()
    eager_pipe, compiled_pipe = build_tiny_hunyuan_pipeline(), build_tiny_hunyuan_pipeline()
    for pipe in (eager_pipe, compiled_pipe):
        apply_svg2(pipe)
    compile_transformers(compiled_pipe, backend="aot_eager")
    call_kwargs = {"max_sequence_length": MAX_SEQUENCE_LENGTH, "prompt_template": {"template": "{}", "crop_start": 0}}
    graphs = [counters["stats"]["unique_graphs"]]
    for prompt in ("a cat", "a red fox", "a small boat", "two owls"):  # 6, 10, 13, 9 valid tokens
        spec, _ = build_job_spec(registry, prompt=prompt, model="hunyuanvideo", size="64x64", num_frames=5,
                                 num_inference_steps=2, seed=3, sparsity="dense")
        eager, compiled = (generate(pipe, spec, call_kwargs=call_kwargs) for pipe in (eager_pipe, compiled_pipe))
        graphs.append(counters["stats"]["unique_graphs"])
        np.testing.assert_allclose(compiled.frames, eager.frames, atol=1e-4)
    new = [b - a for a, b in zip(graphs, graphs[1:], strict=False)]
    assert new[0] > 0 and new[1] > 0 and new[2] == new[3] == 0, new
