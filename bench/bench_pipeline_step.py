"""End-to-end speed of svg2 in real diffusers transformers: one denoising step, dense vs sparse.

    python bench/bench_pipeline_step.py --compile --out DIR     # GPU: the three models below (reported table)
    python bench/bench_pipeline_step.py --no-compile --out DIR  # GPU: eager, as the first H200 run
    python bench/bench_pipeline_step.py --smoke --out DIR       # CPU: tiny shapes, checks the script

Per model, a full-width transformer is built from the real diffusers config with random weights,
directly on the GPU in bf16 (``torch.device("cuda")`` as default device: no slow CPU init), with fewer
blocks than the real model where noted (``layers`` in the results; per-block time is the same in
every block of a model, so step time scales linearly with the block count and the projection
multiplies up to the real count). ``apply_svg2`` routes its self-attention; then, in one process:

1. dense: the svg2 processors in ``dense`` mode, i.e. the stock attention call through diffusers'
   ``dispatch_attention_fn`` (SDPA; backends in the priority cuDNN, flash, efficient, math for every
   run). One warm-up forward, then timed forwards; the session's accounting gives the time of the
   routed attention calls (CUDA events around each), hence the attention share of the dense step.
2. sparse at each density (``fixed_density`` mode; random weights give near-uniform attention, so
   top-p would find little sparsity): one cold forward (k-means from scratch, 50 iterations), then
   timed warm forwards (2 iterations from the cached centroids). No dense warm-up and no dense
   layers here: this is the time of a sparse step.
3. per-step speedup, Amdahl ideal ``1 / ((1 - share) + share * density)`` with the achieved mean
   density, fraction of ideal achieved; a kernel-level profile (torch.profiler) of one warm dense and
   one warm sparse forward, by category (attention, svg2 clustering / selection / permutation, rest).
4. projected end-to-end speedup: 50 steps x CFG passes, 20% dense warm-up, all blocks, plus the VAE
   decode (measured for Wan 480p with a random-weight Wan VAE; the others scaled by pixels x frames:
   an estimate, marked as such). Prompt encoding is left out (well under 1% of a job).

Compilation (``--compile``, the default): after the eager reference forwards below, the transformer's
repeated blocks are compiled regionally (diffusers' ``compile_repeated_blocks``: ``torch.compile`` per
block class, default mode, backend ``--compile-backend``), once per model and identically for the dense
and the sparse runs. The svg2 attention call stays a graph break (``SVG2Router.attend`` is wrapped in
``torch.compiler.disable``), so the compiled graphs hold everything but attention: norms, RoPE,
modulation, projections, FFN. Compile time is reported separately (the first compiled dense forward
minus a warm one; the cold sparse forward also holds any recompilation), as is the number of graphs
dynamo compiled during the timed forwards (must be 0: no recompilation across steps). Before compiling,
one eager dense forward and each density's cold eager sparse forward are kept; the first compiled
forward of each is compared with them (``compiled_vs_eager`` in the results: max abs difference
relative to the output's max abs). Each of them is followed by ``--reps`` warm eager forwards, timed
(``eager_same_process``): the compile gain and the eager speedups measured in the same process, on the
same card, with the same kernels. ``--no-compile`` runs everything eager.

HunyuanVideo's text: real prompts are padded to 256 tokens and diffusers then passes a ``(B, 1, 1, N)``
key mask, which takes SDPA off its fastest (unmasked cuDNN) path. The padded text tokens are never
attended to (masked as keys; the refiner masks them too), so dropping them changes no video token:
by default the benchmark packs the prompt (its ``3/4 x 256`` valid tokens, no padding) and, as the mask
diffusers builds is then all True, drops it before the attention call (a forward pre-hook on each
joint-attention module) for the dense and the sparse runs alike: the dense baseline is the fastest exact
dense path. ``--padded-text`` restores the stock padded prompt and masked call (the first H200 run).

CUDA graphs (``--cuda-graph``): after the runs above, each step (dense, and each density's warm sparse step in a
fresh session) is also captured whole in one CUDA graph and replayed (:func:`graph_steps`): the same kernels without
the host's launches, so the difference to the launched step is what queueing them from Python costs.

Dense and sparse runs use the same modules and kernels except the attention call. Writes
``pipeline_step_<card>.json`` and ``.md`` under ``--out`` (after every model, so a run cut short
keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_clocks import GpuClocks, clock_cell  # noqa: E402

from svg2core import SVG2Config  # noqa: E402
from svg2core.integration import SparsityPlan, apply_svg2, svg2_session  # noqa: E402

STEPS, WARMUP_FRACTION = 50, 0.2

# name: transformer class, config, bench layers, real layers, latent (C, F, H, W), text tokens, CFG
# passes, VAE pixels x frames. Configs: the diffusers-format configs of the public checkpoints.
WAN_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
               out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
               cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_14B = {**WAN_13B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
HUNYUAN = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128,
               num_layers=20, num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2,
               patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096,
               pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56))

MODELS = {
    "wan2.1-1.3b-480p": dict(kind="wan", config=WAN_13B, layers=30, latent=(16, 21, 60, 104), text=512,
                             passes=2, clusters=(100, 500), vae_pixels=(81, 480, 832)),
    "hunyuanvideo-720p": dict(kind="hunyuan", config=HUNYUAN, layers=(2, 4), latent=(16, 33, 90, 160),
                              text=256, passes=1, clusters=(400, 1000), vae_pixels=(129, 720, 1280)),
    "wan2.1-14b-720p": dict(kind="wan", config=WAN_14B, layers=4, latent=(16, 21, 90, 160), text=512,
                            passes=2, clusters=(300, 1000), vae_pixels=(81, 720, 1280)),
}
SMOKE = {
    "smoke-wan": dict(kind="wan", config={**WAN_13B, "num_attention_heads": 2, "attention_head_dim": 64,
                                          "ffn_dim": 64, "text_dim": 32, "freq_dim": 32, "num_layers": 3,
                                          "in_channels": 4, "out_channels": 4},
                      layers=2, latent=(4, 3, 8, 8), text=8, passes=2, clusters=(8, 16), vae_pixels=(9, 64, 64)),
    "smoke-hunyuan": dict(kind="hunyuan", config={**HUNYUAN, "num_attention_heads": 2, "attention_head_dim": 64,
                                                  "num_layers": 2, "num_single_layers": 2, "num_refiner_layers": 1,
                                                  "text_embed_dim": 32, "pooled_projection_dim": 16,
                                                  "in_channels": 4, "out_channels": 4, "rope_axes_dim": (16, 24, 24)},
                          layers=(1, 1), latent=(4, 3, 8, 8), text=8, passes=1, clusters=(8, 16),
                          vae_pixels=(9, 64, 64)),
}


def build(spec: dict, device: torch.device, dtype: torch.dtype, packed_text: bool = True):
    """(transformer, forward kwargs, bench block count, real block count) at the model's full width.

    HunyuanVideo's prompt has ``3/4`` of ``spec["text"]`` valid tokens: padded to ``spec["text"]`` with
    its key mask (``packed_text=False``, the stock call), or packed (only the valid tokens, and no mask
    reaches the attention call: see :func:`drop_all_true_text_mask`)."""
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    cfg = dict(spec["config"])
    c, f, h, w = spec["latent"]
    if spec["kind"] == "wan":
        real = cfg["num_layers"]
        cfg["num_layers"] = bench = spec["layers"]
        cls = WanTransformer3DModel
    else:
        real = cfg["num_layers"] + cfg["num_single_layers"]
        cfg["num_layers"], cfg["num_single_layers"] = spec["layers"]
        bench = sum(spec["layers"])
        cls = HunyuanVideoTransformer3DModel
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:  # parameters are created (and randomly initialised) on the GPU
            model = cls(**cfg).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(old)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    text = spec["text"]
    valid_text = text * 3 // 4 if spec["kind"] == "hunyuan" else text
    text_tokens = valid_text if packed_text else text
    kwargs = dict(hidden_states=randn(1, c, f, h, w), timestep=torch.tensor([500.0], device=device),
                  encoder_hidden_states=randn(1, text, cfg.get("text_dim", cfg.get("text_embed_dim")))[:, :text_tokens],
                  return_dict=False)
    if spec["kind"] == "hunyuan":
        mask = torch.ones(1, text_tokens, dtype=torch.int64, device=device)
        mask[:, valid_text:] = 0  # padded: a real prompt's tail; packed: nothing to mask
        if packed_text:
            drop_all_true_text_mask(model)
        kwargs.update(encoder_attention_mask=mask, pooled_projections=randn(1, cfg["pooled_projection_dim"]),
                      guidance=torch.tensor([6000.0], device=device))
    return model, kwargs, bench, real


def drop_all_true_text_mask(model) -> None:
    """Pass no mask to HunyuanVideo's joint attention (a forward pre-hook on each joint-attention module).

    Only for a packed prompt (every text token valid): diffusers 0.42 still builds a ``(B, 1, 1, N)``
    all-True key mask, and SDPA given any mask leaves its unmasked cuDNN path. Without the mask the
    dense call is plain SDPA and svg2 gets no ``key_padding_mask``; both exact here, as every key is valid.
    """
    def no_mask(module, args, kwargs):
        return args, {**kwargs, "attention_mask": None}

    for block in list(model.transformer_blocks) + list(model.single_transformer_blocks):
        block.attn.register_forward_pre_hook(no_mask, with_kwargs=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_forward(model, kwargs, device, host: list[float] | None = None) -> tuple[float, torch.Tensor]:
    """Seconds of one synchronised forward (CUDA events on GPU, wall clock on CPU), and its output. On GPU,
    ``host`` (a list) gets the seconds the host took to queue the forward: close to the forward's own time means
    the host, not the GPU, sets the pace (the profiled forward's GPU idle time can come from the profiler's own
    cost per launch, so it does not tell this alone)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t = time.perf_counter()
        start.record()
        out = model(**kwargs)[0]
        end.record()
        if host is not None:
            host.append(time.perf_counter() - t)
        end.synchronize()
        return start.elapsed_time(end) / 1000.0, out
    t = time.perf_counter()
    out = model(**kwargs)[0]
    return time.perf_counter() - t, out


def enqueue_behind_sleep(model, kwargs, device, sleep_s: float = 2.0) -> dict | None:
    """The host's time to queue one forward while the GPU is held by a sleep kernel (CUDA only; None elsewhere).

    With the GPU busy, nothing the forward queues can start, so the wall time is the host's own work, unless the
    forward queues more than the driver holds ahead: the host then waits for the sleep to end (``blocked``: the
    enqueue took at least half the sleep). Against ``host_enqueue_seconds`` (queued while the GPU runs) this tells
    host work from the launch queue's back-pressure."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(100_000_000)
    end.record()
    end.synchronize()
    cycles_per_s = 100_000_000 / (start.elapsed_time(end) / 1000.0)  # the sleep's clock, measured
    torch.cuda._sleep(int(sleep_s * cycles_per_s))
    t = time.perf_counter()
    model(**kwargs)
    host = time.perf_counter() - t
    torch.cuda.synchronize(device)
    return {"host_seconds": host, "sleep_seconds": sleep_s, "blocked": host >= 0.5 * sleep_s}


def enqueue_behind_sleep_in(model, kwargs, device, plan) -> dict | None:
    """:func:`enqueue_behind_sleep` in a session of its own (the timed session's accounting stays the timed
    forwards')."""
    with svg2_session(model, plan, num_inference_steps=100):
        return enqueue_behind_sleep(model, kwargs, device)


def timed_forwards(model, kwargs, n: int, device, host: list[float] | None = None) -> list[float]:
    """Seconds of ``n`` forwards (each synchronised); ``host``: see :func:`timed_forward`."""
    return [timed_forward(model, kwargs, device, host)[0] for _ in range(n)]


def graph_forwards(model, kwargs, n: int, device) -> dict:
    """The forward captured once in a CUDA graph, then ``n`` replays timed (CUDA events): the step without the
    host's launch overhead. The forward is warmed on a side stream first (allocator, cuDNN plans), as
    ``torch.cuda.graph`` asks. Returns ``{"step_seconds", "out"}``, or ``{"error"}`` when the forward cannot be
    captured (a host synchronisation in the model's own code, for one)."""
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            model(**kwargs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(**kwargs)[0]
        times = []
        for _ in range(n):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        result = {"step_seconds": times, "out": out.clone()}
        del graph, out
        return result
    except Exception as exc:  # noqa: BLE001 - a model that cannot be captured is a result, not a crash
        torch.cuda.synchronize(device)
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}


def graph_steps(model, kwargs, device, reps: int, densities, spec: dict, fields: dict, dense_plan, sdpa_ctx,
                res: dict) -> dict:
    """Dense and each sparse step captured in a CUDA graph (fresh sessions without timers; a sparse session runs
    its cold forward eagerly first, then the capture is of a warm forward), ``reps`` replays each. The speedup
    of the graphs against each other, and against the eager-launched steps of ``res``, says how much of the
    step the host's launches cost."""
    out: dict = {}
    with torch.inference_mode(), sdpa_ctx():
        with svg2_session(model, dense_plan, num_inference_steps=100, timing=False):
            model(**kwargs)
            dense = graph_forwards(model, kwargs, reps, device)
        dense.pop("out", None)  # the dense replay's output is not compared with anything
        out["dense"] = dense
        for density in densities:
            with svg2_session(model, SparsityPlan(sparse_config(density, spec, **fields)),
                              num_inference_steps=100, timing=False):
                model(**kwargs)  # cold: k-means from scratch
                eager_out = model(**kwargs)[0].clone()  # warm, launched from the host
                g = graph_forwards(model, kwargs, reps, device)
            graph_out = g.pop("out", None)
            if graph_out is not None:
                g["vs_eager_warm"] = relative_difference(graph_out, eager_out)
            out[f"sparse_{density}"] = g
    if "step_seconds" in out["dense"]:
        dense_step = statistics.median(out["dense"]["step_seconds"])
        for s in res["sparse"]:
            g = out[f"sparse_{s['target_density']}"]
            if "step_seconds" in g:
                g["speedup"] = round(dense_step / statistics.median(g["step_seconds"]), 3)
                g["fraction_of_ideal"] = round(g["speedup"] / s["amdahl_ideal"], 3)
    for tag, g in out.items():
        print(f"  cuda graph {tag}: " + (f"{statistics.median(g['step_seconds']) * 1e3:.1f} ms"
                                         + (f", {g['speedup']:.2f}x" if "speedup" in g else "")
                                         if "step_seconds" in g else g["error"]), flush=True)
    return out


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (0 when nothing was compiled)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def eager_summary(times: dict[str, list[float]], densities) -> dict:
    """Warm eager step times (the compiled run's references) and the eager per-step speedups."""
    dense = statistics.median(times["dense"])
    out: dict = {"step_seconds": times, "dense_step_seconds": dense}
    for density in densities:
        out[f"speedup_{density}"] = round(dense / statistics.median(times[f"sparse_{density}"]), 3)
    return out


def relative_difference(out: torch.Tensor, reference: torch.Tensor) -> float:
    """max |out - reference| / max |reference| (fp32 math)."""
    ref = reference.float()
    return float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


CATEGORIES = (  # first match wins; kernel names of svg2core.ops and of SDPA / cuDNN backends
    # inductor's generated kernels (--compile) are named after the fused ops ("triton_poi_fused_select_..."):
    # matched first so that an op name in them is not taken for an svg2 kernel
    ("compiled_fused", ("triton_poi_", "triton_red_", "triton_per_", "triton_tem_")),
    ("svg2_attention_kernel", ("sparse_attn", "key_tile_tables")),
    ("svg2_kmeans", ("kmeans",)),
    ("svg2_select", ("cluster_logits", "_select", "_tail_")),  # _tail_: the query-tail union's stage
    ("svg2_permute", ("gather_kv", "histogram", "counting_scatter", "sort", "cumsum", "scan")),
    ("dense_attention", ("flash", "fmha", "cudnn", "attention", "sdpa", "efficient")),
    ("gemm", ("gemm", "sm90_xmma", "cutlass", "nvjet", "matmul")),
)


def category_of(kernel_name: str) -> str:
    name = kernel_name.lower()
    return next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")


SELECTION_CATEGORIES = ("svg2_kmeans", "svg2_select", "svg2_permute")


def union_length(intervals) -> float:
    """Length of the union of ``(start, end)`` intervals, in their unit: the time during which at least one of them
    runs (kernels that overlap on two streams count once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def union_seconds(intervals) -> float:
    """:func:`union_length` of intervals in microseconds, in seconds."""
    return union_length(intervals) / 1e6


def idle_gaps(intervals, top: int = 5) -> tuple[float, list[dict]]:
    """Where the GPU ran nothing during a forward: ``intervals`` of ``(start_us, end_us, name)`` device activities
    (kernels, copies, memsets, any stream). Returns the idle seconds between the first start and the last end, and
    the ``top`` longest gaps: ``{"us", "after", "before"}`` (the activity that ended last before the gap, the one that
    starts it)."""
    gaps, idle, end, last = [], 0.0, None, None
    for a, b, name in sorted(intervals):
        if end is not None and a > end:
            idle += a - end
            gaps.append({"us": round(a - end, 1), "after": last, "before": name})
        if end is None or b > end:
            end, last = b, name
    gaps.sort(key=lambda g: -g["us"])
    return idle / 1e6, gaps[:top]


def kernel_profile(model, kwargs, device) -> dict:
    """GPU kernel time of one forward by category (torch.profiler), seconds: the sum of the kernels' durations per
    category, and ``svg2_selection_span``, the time during which at least one selection kernel (k-means, scoring,
    permutation) runs. The selection's two chains run on two streams, so their kernels can overlap and the sum of
    their durations can exceed the time they occupy."""
    if device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start.record()
        model(**kwargs)
        end.record()
        sync(device)
    totals: dict[str, float] = {}
    for evt in prof.key_averages():
        t = getattr(evt, "self_device_time_total", 0) or 0
        if t <= 0:
            continue
        cat = category_of(evt.key)
        totals[cat] = totals.get(cat, 0.0) + t / 1e6
    totals["total"] = sum(totals.values())
    device_events = [e for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]
    spans = [(e.time_range.start, e.time_range.end) for e in device_events if category_of(e.name) in SELECTION_CATEGORIES]
    if spans:
        totals["svg2_selection_span"] = union_seconds(spans)
    # the GPU's idle time inside the forward, and its longest gaps (a host synchronisation, or the host falling
    # behind, shows here; the step time minus the kernels' sum mixes both with the overlap of streams)
    idle, gaps = idle_gaps([(e.time_range.start, e.time_range.end, e.name[:60]) for e in device_events])
    totals["gpu_idle"] = idle
    # the profiled forward's own time and the time some kernel runs in it: the sparse step's median exceeded the
    # kernels' sum by ~10 ms at Wan 14B while dense matched (NOTES_sparse_attn v19); these say whether the profiled
    # forward shows that gap
    totals["forward"] = start.elapsed_time(end) / 1000.0
    totals["gpu_busy"] = union_seconds([(e.time_range.start, e.time_range.end) for e in device_events])
    out = {k: round(v, 5) for k, v in totals.items()}
    out["longest_gaps"] = gaps
    return out


def vae_decode_seconds(device, dtype, smoke: bool) -> float | None:
    """Measured: one decode of a 480p 81-frame latent by a random-weight Wan 2.1 VAE (real config)."""
    if smoke or device.type != "cuda":
        return None
    from diffusers import AutoencoderKLWan

    with device:
        vae = AutoencoderKLWan().to(dtype=torch.float32).eval().requires_grad_(False)
    z = torch.randn(1, 16, 21, 60, 104, device=device)
    with torch.inference_mode():
        vae.decode(z[:, :, :2])  # warm-up (cuDNN conv plans)
        sync(device)
        t = time.perf_counter()
        vae.decode(z)
        sync(device)
        seconds = time.perf_counter() - t
    del vae
    torch.cuda.empty_cache()
    return seconds


def sparse_config(density: float, spec: dict, **fields) -> SVG2Config:
    """The sparse steps' config: fixed ``density``, the model's cluster counts, 2 warm k-means iterations (50 cold),
    and ``fields``, the run's other SVG2Config settings (its command-line options)."""
    cq, ck = spec["clusters"]
    return SVG2Config(mode="fixed_density", target_density=density, num_q_clusters=cq, num_k_clusters=ck,
                      kmeans_iters_init=50, kmeans_iters=2, **fields)


def bench_model(name: str, spec: dict, device, dtype, densities, reps: int, vae_480p: float | None,
                sdpa_ctx, compile_backend: str | None = None, packed_text: bool = True, fields: dict | None = None,
                cuda_graph: bool = False, value_beside_selection: bool = False) -> dict:
    """Dense and sparse steps of one model; ``compile_backend``: regional torch.compile (None: eager); ``fields``:
    SVG2Config settings of the sparse steps besides :func:`sparse_config`'s;
    ``cuda_graph``: also each step captured whole in a CUDA graph and replayed (:func:`graph_steps`);
    ``value_beside_selection``: ``apply_svg2``'s option (the sparse calls make the values beside their k-means)."""
    fields = fields or {}
    t0 = time.perf_counter()
    model, kwargs, layers, real_layers = build(spec, device, dtype, packed_text)
    apply_svg2(model, estimate_savings=device.type == "cuda", value_beside_selection=value_beside_selection)
    res: dict = {"model": name, "layers": layers, "real_layers": real_layers, "latent": spec["latent"],
                 "text_tokens": kwargs["encoder_hidden_states"].shape[1], "cfg_passes": spec["passes"],
                 "text_mask": "packed, no mask" if spec["kind"] == "hunyuan" and packed_text else
                 "padded, masked" if spec["kind"] == "hunyuan" else "none (Wan)",
                 "build_seconds": round(time.perf_counter() - t0, 2)}
    dense_plan = SparsityPlan(SVG2Config(mode="dense"))
    with torch.inference_mode(), sdpa_ctx():
        compile_info = None
        if compile_backend is not None:
            # Eager references (fresh sessions: the cold sparse forward is k-means from scratch), then
            # ``reps`` warm eager forwards of each: the eager step times of this process, for the compile gain.
            with svg2_session(model, dense_plan, num_inference_steps=100):
                eager_dense = model(**kwargs)[0].clone()
                eager_times = {"dense": timed_forwards(model, kwargs, reps, device)}
            eager_sparse = {}
            for density in densities:
                with svg2_session(model, SparsityPlan(sparse_config(density, spec, **fields)),
                                  num_inference_steps=100):
                    eager_sparse[density] = model(**kwargs)[0].clone()
                    eager_times[f"sparse_{density}"] = timed_forwards(model, kwargs, reps, device)
            res["eager_same_process"] = eager_summary(eager_times, densities)
            torch._dynamo.reset()  # each model compiles static graphs of its own shapes
            graphs_before = graphs_compiled()
            model.compile_repeated_blocks(backend=compile_backend)
            with svg2_session(model, dense_plan, num_inference_steps=100):
                first_dense, out = timed_forward(model, kwargs, device)  # compiles the blocks
            compile_info = {"backend": compile_backend, "mode": "default", "first_dense_forward_seconds": first_dense,
                            "graphs_first_dense_forward": graphs_compiled() - graphs_before,
                            "compiled_vs_eager": {"dense": relative_difference(out, eager_dense)}}
            del out
        with svg2_session(model, dense_plan, num_inference_steps=100):
            model(**kwargs)  # warm-up: cuDNN plans, allocator
        sync(device)
        graphs_before = graphs_compiled()
        dense_host: list[float] = []
        with svg2_session(model, dense_plan, num_inference_steps=100) as s, GpuClocks(device) as clocks:
            dense_times = timed_forwards(model, kwargs, reps, device, dense_host)
        graphs_in_timed = graphs_compiled() - graphs_before
        dm = s.metrics()
        dense_step = statistics.median(dense_times)
        attn_share = dm["dense_attention_seconds"] / sum(dm["step_transformer_seconds"])
        res["dense"] = {"step_seconds": dense_times, "host_enqueue_seconds": dense_host,
                        "host_enqueue_behind_sleep": enqueue_behind_sleep_in(model, kwargs, device, dense_plan),
                        "attention_share": round(attn_share, 4),
                        "attention_seconds_per_step": dm["dense_attention_seconds"] / reps,
                        "gpu_clocks": clocks.summary(),
                        "kernel_profile": kernel_profile(model, kwargs, device)}
        if compile_info is not None:
            compile_info["dense_compile_seconds"] = round(compile_info["first_dense_forward_seconds"] - dense_step, 3)
        res["sparse"] = []
        for density in densities:
            with svg2_session(model, SparsityPlan(sparse_config(density, spec, **fields)),
                              num_inference_steps=100) as s:
                graphs_before = graphs_compiled()
                cold, out = timed_forward(model, kwargs, device)
                graphs_cold = graphs_compiled() - graphs_before
                warm_host: list[float] = []
                with GpuClocks(device) as clocks:
                    warm = timed_forwards(model, kwargs, reps, device, warm_host)
                graphs_in_timed += graphs_compiled() - graphs_before - graphs_cold
                behind_sleep = enqueue_behind_sleep(model, kwargs, device)
                profile = kernel_profile(model, kwargs, device)
            if compile_info is not None:
                compile_info["compiled_vs_eager"][f"sparse_{density}"] = relative_difference(out, eager_sparse[density])
                compile_info[f"graphs_cold_sparse_{density}"] = graphs_cold
            del out
            sm = s.metrics()
            # per-call attention time of the warm timed forwards only (the session's CUDA events)
            warm_calls = [t.read() for _, t in s.accounting._sparse_timers[layers:layers * (1 + reps)]]
            step = statistics.median(warm)
            d = sm["mean_density_sparse"]
            ideal = 1.0 / ((1.0 - attn_share) + attn_share * d)
            speedup = dense_step / step
            calls = sm["sparse_calls"]
            entry = {
                "target_density": density, "achieved_density": round(d, 4), "cold_step_seconds": cold,
                "step_seconds": warm, "host_enqueue_seconds": warm_host, "host_enqueue_behind_sleep": behind_sleep,
                "speedup": round(speedup, 3),
                "amdahl_ideal": round(ideal, 3), "fraction_of_ideal": round(speedup / ideal, 3),
                # per-call attention (clustering + selection + permutation + kernel) vs dense SDPA,
                # from the session's CUDA events, warm calls
                "sparse_attention_seconds_per_call": statistics.mean(warm_calls),
                "sparse_calls": calls,
                "dense_attention_seconds_per_call": dm["dense_attention_seconds"] / (reps * layers),
                "calibrated_sdpa_seconds_per_call": (sm["estimated_dense_attention_seconds_for_sparse_calls"] / calls
                                                     if sm["estimated_dense_attention_seconds_for_sparse_calls"]
                                                     else None),
                "kernel_profile": profile,
                "gpu_clocks": clocks.summary(),
            }
            entry["attention_time_ratio"] = round(entry["sparse_attention_seconds_per_call"]
                                                  / entry["dense_attention_seconds_per_call"], 3)
            entry["end_to_end"] = project(dense_step, step, layers, real_layers, spec, vae_480p)
            res["sparse"].append(entry)
            print(f"  {name} density {density}: achieved {d:.3f}, step {step * 1e3:.1f} ms vs dense "
                  f"{dense_step * 1e3:.1f} ms -> {speedup:.2f}x (ideal {ideal:.2f}x, share {attn_share:.2f}); "
                  f"e2e {entry['end_to_end']['speedup']:.2f}x", flush=True)
    if cuda_graph and device.type == "cuda":
        res["cuda_graph"] = graph_steps(model, kwargs, device, reps, densities, spec, fields, dense_plan,
                                        sdpa_ctx, res)
    res["compile"] = compile_info
    # graphs dynamo compiled during the timed dense and warm sparse forwards: 0 = no recompilation
    res["graphs_compiled_in_timed_forwards"] = graphs_in_timed
    if compile_info is not None:
        print(f"  {name} compile ({compile_backend}): first dense forward {compile_info['first_dense_forward_seconds']:.1f} s, "
              f"{compile_info['graphs_first_dense_forward']} graphs; compiled vs eager {compile_info['compiled_vs_eager']}; "
              f"graphs in timed forwards {graphs_in_timed}", flush=True)
    del model, kwargs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def project(dense_step: float, sparse_step: float, layers: int, real_layers: int, spec: dict,
            vae_480p: float | None) -> dict:
    """Projected job time: 50 steps x CFG passes at the real block count, 20% dense warm-up, + VAE."""
    scale = real_layers / layers
    passes = spec["passes"]
    warm = round(WARMUP_FRACTION * STEPS)
    dense_fwd, sparse_fwd = dense_step * scale, sparse_step * scale
    vae, vae_source = None, "none"
    if vae_480p is not None:
        f, h, w = spec["vae_pixels"]
        vae = vae_480p * (f * h * w) / (81 * 480 * 832)
        vae_source = "measured (Wan VAE, 480p 81 frames)" if (f, h, w) == (81, 480, 832) else \
            "estimated: Wan VAE 480p measurement x pixels x frames"
    dense_job = STEPS * passes * dense_fwd + (vae or 0.0)
    sparse_job = (warm * passes * dense_fwd + (STEPS - warm) * passes * sparse_fwd + (vae or 0.0))
    return {"dense_job_seconds": round(dense_job, 2), "sparse_job_seconds": round(sparse_job, 2),
            "speedup": round(dense_job / sparse_job, 3), "vae_decode_seconds": vae, "vae_source": vae_source,
            "transformer_only_speedup": round(STEPS * dense_fwd / (warm * dense_fwd + (STEPS - warm) * sparse_fwd), 3)}


def card_name(device) -> str:
    if device.type != "cuda":
        return "cpu"
    return torch.cuda.get_device_name(device).replace("NVIDIA ", "").replace(" ", "_").lower()


def _per_run_line(r: dict, key: str, cell) -> str:
    """``- model: dense <cell>; sparse 0.15 <cell>; ...`` over the model's runs that hold ``key``."""
    runs = [("dense", r["dense"])] + [(f"sparse {s['target_density']}", s) for s in r["sparse"]]
    return f"- {r['model']}: " + "; ".join(f"{name} {cell(x)}" for name, x in runs if x.get(key))


def write_markdown(path: str, results: dict) -> None:
    lines = [f"# One denoising step, dense vs svg2 ({results['card']})", "",
             f"torch {results['torch']}, {results['dtype']}, {results['execution']}, random weights, `fixed_density` mode "
             "(random weights give near-uniform attention: top-p would find little sparsity). Dense = "
             "SDPA via diffusers' dispatch (priority cuDNN > flash > efficient > math). Warm k-means "
             "(2 iterations from cached centroids; the cold first call excluded). Blocks: bench / real. "
             f"HunyuanVideo text: {results['hunyuan_text']}."
             + (f" Library settings (--set): {results['settings']}." if results.get("settings") else "")
             + (f" k-means over candidate lists: `kmeans_candidates={results['kmeans_candidates']}`."
                if results.get("kmeans_candidates") else "")
             + (f" Query-tile rebalancing: `query_tile_rebalance={results['query_tile_rebalance']}`."
                if results.get("query_tile_rebalance") else "")
             + (" Query-tail union: `query_tail_union=True` (the sparse steps' densities include its extra pairs)."
                if results.get("query_tail_union") else "")
             + (" Values made beside the selection: `apply_svg2(value_beside_selection=True)` (the value projection "
                "runs inside each sparse call, beside its k-means chains)." if results.get("value_beside_selection")
                else "")
             + (f" k-means iterations but the last on a token sample: `kmeans_subsample={results['kmeans_subsample']}`."
                if results.get("kmeans_subsample", 1) > 1 else ""),
             "",
             "| model | blocks | attn share (dense) | density | dense step | sparse step | speedup | Amdahl ideal | "
             "of ideal | attn time sparse/dense | e2e 50 steps, 20% warm-up, + VAE |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["models"]:
        for s in r["sparse"]:
            e2e = s["end_to_end"]
            lines.append(
                f"| {r['model']} | {r['layers']} / {r['real_layers']} | {r['dense']['attention_share']:.2f} | "
                f"{s['target_density']:.2f} (achieved {s['achieved_density']:.3f}) | "
                f"{statistics.median(r['dense']['step_seconds']) * 1e3:.0f} ms | "
                f"{statistics.median(s['step_seconds']) * 1e3:.0f} ms | {s['speedup']:.2f}x | "
                f"{s['amdahl_ideal']:.2f}x | {s['fraction_of_ideal']:.2f} | {s['attention_time_ratio']:.2f} | "
                f"{e2e['speedup']:.2f}x (VAE {e2e['vae_source']}) |")
    compiled = [r for r in results["models"] if r.get("compile")]
    if compiled:
        lines += ["", "Compilation (regional, once per model; not in the step times):", ""]
        for r in compiled:
            c = r["compile"]
            diffs = ", ".join(f"{k} {v:.1e}" for k, v in c["compiled_vs_eager"].items())
            lines.append(f"- {r['model']}: first dense forward {c['first_dense_forward_seconds']:.1f} s "
                         f"(compile ~{c['dense_compile_seconds']:.1f} s, {c['graphs_first_dense_forward']} graphs); "
                         f"graphs compiled in the timed forwards: {r['graphs_compiled_in_timed_forwards']}; "
                         f"compiled vs eager (max abs diff / max abs): {diffs}")
    eager = [r for r in results["models"] if r.get("eager_same_process")]
    if eager:
        lines += ["", "Compiled vs eager step in this process (eager: warm forwards before compiling, same "
                  "modules and kernels; median):", "",
                  "| model | step | eager | compiled | compile gain | eager speedup | compiled speedup |",
                  "|---|---|---|---|---|---|---|"]
        for r in eager:
            e = r["eager_same_process"]
            dense = statistics.median(r["dense"]["step_seconds"])
            lines.append(f"| {r['model']} | dense | {e['dense_step_seconds'] * 1e3:.0f} ms | {dense * 1e3:.0f} ms | "
                         f"{e['dense_step_seconds'] / dense:.2f}x | | |")
            for s in r["sparse"]:
                d = s["target_density"]
                es = statistics.median(e["step_seconds"][f"sparse_{d}"])
                cs = statistics.median(s["step_seconds"])
                lines.append(f"| {r['model']} | sparse {d:.2f} | {es * 1e3:.0f} ms | {cs * 1e3:.0f} ms | "
                             f"{es / cs:.2f}x | {e[f'speedup_{d}']:.2f}x | {s['speedup']:.2f}x |")
    lines += ["", "Kernel time of one warm forward by category (seconds, torch.profiler):", ""]
    for r in results["models"]:
        lines.append(f"- {r['model']} dense: {r['dense']['kernel_profile']}")
        for s in r["sparse"]:
            lines.append(f"- {r['model']} sparse {s['target_density']}: {s['kernel_profile']}")
    queued = [r for r in results["models"] if r["dense"].get("host_enqueue_seconds")]
    if queued:
        lines += ["", "Host time to queue a timed forward against the forward's GPU time (medians; close to 1 means the "
                  "host sets the pace):", ""]
        lines += [_per_run_line(r, "host_enqueue_seconds",
                                lambda x: f"{statistics.median(x['host_enqueue_seconds']) * 1e3:.0f} / "
                                          f"{statistics.median(x['step_seconds']) * 1e3:.0f} ms") for r in queued]
        slept = [r for r in queued if r["dense"].get("host_enqueue_behind_sleep")]
        if slept:
            lines += ["", "Host time to queue one forward while a sleep kernel holds the GPU (the host's own work; "
                      "`blocked`: it waited for the sleep to end, i.e. the forward queues more than the driver holds "
                      "ahead):", ""]
            lines += [_per_run_line(r, "host_enqueue_behind_sleep",
                                    lambda x: f"{x['host_enqueue_behind_sleep']['host_seconds'] * 1e3:.0f} ms"
                                              f"{' (blocked)' if x['host_enqueue_behind_sleep']['blocked'] else ''}")
                      for r in slept]
    graphed = [r for r in results["models"] if r.get("cuda_graph")]
    if graphed:
        lines += ["", "Each step captured whole in one CUDA graph and replayed (no host launches; median; speedup and "
                  "fraction of the Amdahl ideal against the graphed dense step):", "",
                  "| model | step | launched | graph | speedup (graph) | of ideal (graph) |", "|---|---|---|---|---|---|"]
        for r in graphed:
            g = r["cuda_graph"]
            runs = [("dense", r["dense"], g["dense"])] + [(f"sparse {s['target_density']:.2f}", s,
                                                           g[f"sparse_{s['target_density']}"]) for s in r["sparse"]]
            for tag, eager, gr in runs:
                launched = f"{statistics.median(eager['step_seconds']) * 1e3:.0f} ms"
                if "step_seconds" not in gr:
                    lines.append(f"| {r['model']} | {tag} | {launched} | not captured: {gr['error']} | | |")
                    continue
                lines.append(f"| {r['model']} | {tag} | {launched} | {statistics.median(gr['step_seconds']) * 1e3:.0f} ms"
                             f" | {gr['speedup']:.2f}x | {gr['fraction_of_ideal']:.2f} |" if "speedup" in gr else
                             f"| {r['model']} | {tag} | {launched} | "
                             f"{statistics.median(gr['step_seconds']) * 1e3:.0f} ms | | |")
    clocked = [r for r in results["models"] if r["dense"].get("gpu_clocks")]
    if clocked:
        lines += ["", "SM clock and power during the timed forwards (nvidia-smi every 100 ms: mean / min MHz, mean W):",
                  ""]
        for r in clocked:
            runs = [("dense", r["dense"]["gpu_clocks"])] + [(f"sparse {s['target_density']}", s.get("gpu_clocks"))
                                                             for s in r["sparse"]]
            lines.append(f"- {r['model']}: " + "; ".join(
                f"{tag} {clock_cell(c)} MHz, {c['power_w_mean']:.0f} W"
                for tag, c in runs if c))
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def config_fields(args: argparse.Namespace) -> dict:
    """The SVG2Config settings of the sparse steps given on the command line."""
    return {"kmeans_candidates": args.kmeans_candidates, "query_tile_rebalance": args.query_tile_rebalance,
            "kmeans_subsample": args.kmeans_subsample, "query_tail_union": args.query_tail_union}


def apply_settings(specs: list[str]) -> dict:
    """``MODULE.NAME=VALUE`` strings (VALUE a Python literal) set on their modules: the library knobs an A/B of the
    whole step flips. Returns them as ``{"MODULE.NAME": value}``; an unknown module or name, or a value that is not a
    literal, is an error naming the spec."""
    import ast
    import importlib

    out = {}
    for spec in specs:
        target, sep, raw = spec.partition("=")
        module_name, _, name = target.rpartition(".")
        if not sep or not module_name:
            raise SystemExit(f"--set {spec!r}: must be MODULE.NAME=VALUE")
        try:
            module = importlib.import_module(module_name)
            value = ast.literal_eval(raw)
        except (ImportError, ValueError, SyntaxError) as exc:
            raise SystemExit(f"--set {spec!r}: {exc}") from None
        if not hasattr(module, name):
            raise SystemExit(f"--set {spec!r}: {module_name} has no {name}")
        setattr(module, name, value)
        out[target] = value
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (checks the script)")
    parser.add_argument("--models", default=None, help="comma-separated subset")
    parser.add_argument("--densities", default="0.15,0.25")
    parser.add_argument("--reps", type=int, default=5, help="timed forwards per step (median); single H200 forwards "
                        "of one step spread by ~3%% at the power limit")
    parser.add_argument("--time-budget-s", type=float, default=420.0, help="skip models that would start later")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="regional torch.compile of the transformer blocks, dense and sparse alike (default); "
                             "--no-compile: eager")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (default inductor; aot_eager for quick CPU checks)")
    parser.add_argument("--padded-text", action="store_true",
                        help="HunyuanVideo: the stock padded prompt and masked attention call instead of the packed prompt")
    parser.add_argument("--query-tile-rebalance", type=int, default=0, metavar="RHO",
                        help="the sparse steps' SVG2Config.query_tile_rebalance (0: off, the default)")
    parser.add_argument("--query-tail-union", action="store_true",
                        help="the sparse steps' SVG2Config.query_tail_union (off by default)")
    parser.add_argument("--kmeans-candidates", type=int, default=0, metavar="M",
                        help="the sparse steps' SVG2Config.kmeans_candidates (0: every centroid, the default)")
    parser.add_argument("--kmeans-subsample", type=int, default=1, metavar="S",
                        help="the sparse steps' SVG2Config.kmeans_subsample (1: every token in every iteration, the "
                             "default)")
    parser.add_argument("--value-beside-selection", action="store_true",
                        help="apply_svg2(value_beside_selection=True): each sparse call makes its values (the value "
                             "projection) on the caller's stream beside its k-means chains")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also capture each step (dense, sparse) whole in a CUDA graph and time its replays: "
                             "what the host's launches cost the step")
    parser.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE",
                        help="set a library knob for the whole run (repeatable), e.g. "
                             "svg2core.ops.kmeans.kmeans.UPDATE_CHUNK=256; recorded in the results")
    args = parser.parse_args()
    settings = apply_settings(args.set)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    models = SMOKE if args.smoke else MODELS
    if args.models:
        models = {k: models[k] for k in args.models.split(",")}
    densities = [float(x) for x in args.densities.split(",")]
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]

        def sdpa_ctx():
            return sdpa_kernel(order, set_priority=True)
    else:
        sdpa_ctx = nullcontext
    card = card_name(device)
    compile_backend = args.compile_backend if args.compile else None
    results = {"card": card, "torch": torch.__version__, "dtype": str(dtype), "models": [], "skipped": [],
               "settings": settings, "kmeans_candidates": args.kmeans_candidates,
               "query_tile_rebalance": args.query_tile_rebalance, "kmeans_subsample": args.kmeans_subsample,
               "query_tail_union": args.query_tail_union, "value_beside_selection": args.value_beside_selection,
               "execution": (f"regional torch.compile ({compile_backend}, default mode) of the blocks, dense and "
                             "sparse alike" if compile_backend else "eager"),
               "hunyuan_text": ("padded prompt, masked attention call (stock)" if args.padded_text else
                                "packed prompt (3/4 of the padded length, all valid), no mask")}
    vae = vae_decode_seconds(device, dtype, args.smoke)
    results["vae_decode_seconds_wan_480p_81f"] = vae
    print(f"card {card}; VAE decode (Wan 480p 81 frames): {vae}", flush=True)
    stem = os.path.join(args.out, f"pipeline_step_{card}" + (f"_m{args.kmeans_candidates}" if args.kmeans_candidates
                                                              else "")
                        + (f"_r{args.query_tile_rebalance}" if args.query_tile_rebalance else "")
                        + (f"_s{args.kmeans_subsample}" if args.kmeans_subsample > 1 else "")
                        + ("_tu" if args.query_tail_union else "")
                        + ("_vbs" if args.value_beside_selection else ""))
    for name, spec in models.items():
        if time.perf_counter() - start > args.time_budget_s:
            results["skipped"].append(name)
            continue
        results["models"].append(bench_model(name, spec, device, dtype, densities, args.reps, vae, sdpa_ctx,
                                             compile_backend, packed_text=not args.padded_text,
                                             fields=config_fields(args),
                                             cuda_graph=args.cuda_graph,
                                             value_beside_selection=args.value_beside_selection))
        results["elapsed_seconds"] = round(time.perf_counter() - start, 1)
        with open(stem + ".json", "w") as fh:
            json.dump(results, fh, indent=1)
        write_markdown(stem + ".md", results)
    print(open(stem + ".md").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
