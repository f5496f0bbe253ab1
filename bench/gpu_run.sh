#!/usr/bin/env bash
# The standard GPU checks and benchmarks in one call of a fresh GPU machine (the device tool's image: torch and
# Triton present, no network). Carry the wheels the image lacks in .whl/ (pip download --no-deps -d .whl pytest
# pytest-timeout iniconfig pluggy redis diffusers safetensors) and name what to run:
#
#   bash bench/gpu_run.sh OUT tests attn selection     # Hopper tests, then bench_sparse_attn and bench_selection
#   bash bench/gpu_run.sh OUT pipeline                  # bench_pipeline_step (compiled, ~3 min on an H100)
#   bash bench/gpu_run.sh OUT assign                    # the assign's two argmins (bench/probes/probe_assign.py)
#   bash bench/gpu_run.sh OUT sort                      # radix vs counting sort in k-means (probe_sort.py)
#   bash bench/gpu_run.sh OUT tiles                     # the assign's launch shapes (probe_assign_tiles.py)
#   bash bench/gpu_run.sh OUT update                    # the update's launch shapes (probe_update.py)
#   bash bench/gpu_run.sh OUT layout                    # selection stages by token layout and data (probe_layout.py)
#   bash bench/gpu_run.sh OUT text                      # what HunyuanVideo's text tokens cost (probe_text_cost.py)
#   bash bench/gpu_run.sh OUT overlap                   # the selection's side-stream overlap in a graph (probe_overlap.py)
#   bash bench/gpu_run.sh OUT keygather                 # keys gathered by the last key update vs the separate gather (probe_key_gather.py)
#   bash bench/gpu_run.sh OUT timeline                  # every kernel of one captured selection: start, length, stream (probe_timeline.py)
#   bash bench/gpu_run.sh OUT pad                       # the assign with centroid copies padded to whole tiles (probe_assign_pad.py)
#   bash bench/gpu_run.sh OUT select                    # the selection kernel by warps per row (probe_select.py)
#   bash bench/gpu_run.sh OUT logits                    # the cluster-logits kernel: dot precision, block shape (probe_logits.py)
#   bash bench/gpu_run.sh OUT keyhalves                 # each head's keys in one launch or two halves, sustained load
#                                                       # (probe_key_halves.py, ~1 min)
#   bash bench/gpu_run.sh OUT candidates                # the warm assign over candidate lists against every centroid
#                                                       # (probe_candidates_gpu.py: k-means alone, then the selection)
#   bash bench/gpu_run.sh OUT serpentine                # the k-means updates and V gather in reverse head order, for L2
#                                                       # (probe_serpentine.py: the whole selection, graph replay, ~1 min)
#   bash bench/gpu_run.sh OUT rebalance                 # query tokens moved so that fewer query tiles are partly empty:
#                                                       # accuracy at Wan 14B's size (probe_tile_rebalance.py, ~2 min)
#   bash bench/gpu_run.sh OUT host                      # the host's time to queue one warm 480p call, profiled
#                                                       # (probe_host_overhead.py; queued behind a sleeping GPU)
#   bash bench/gpu_run.sh OUT rebalance_cost            # each kernel of a warm Wan 14B-size call with query-tile
#                                                       # rebalancing, rho 0 / bf16 / tf32x3 margins (probe_rebalance_cost.py)
#   bash bench/gpu_run.sh OUT graph480                  # the Wan 1.3B 480p step also captured whole in a CUDA graph:
#                                                       # what the host's launches cost (bench_pipeline_step --cuda-graph)
#   bash bench/gpu_run.sh OUT wan14b wan14b_rebalance   # the Wan 14B 25% step without, then with query-tile
#                                                       # rebalancing (rho = 16; ~90 s each); wan14b_rebalance_bf16:
#                                                       # the same with the margins from one bf16 product;
#                                                       # wan14b_s2_rebalance / w480_s2_rebalance: with
#                                                       # kmeans_subsample 2 as well (the fast preset's 480p clusters
#                                                       # are 100 / 500: 327 rows each, tiles 84% full)
#   bash bench/gpu_run.sh OUT rebalance_trajectory      # its accuracy along the simulated denoising trajectory at
#                                                       # Wan 14B's size (probe_rebalance_trajectory.py)
#   bash bench/gpu_run.sh OUT generate                  # whole jobs through the worker's path (bench_generate.py, ~4 min;
#                                                       # also carry pydantic pydantic-core annotated-types typing-inspection av)
#   bash bench/gpu_run.sh OUT generate14b               # the same for Wan 2.1 14B 720p, 5 steps: dense, 25% with
#                                                       # balanced's 20 cold iterations, with and without the
#                                                       # query-tail union (balanced's since session 27)
#                                                       # (~470 s; builds 28 GB of random weights, loads, 3 jobs; a
#                                                       # dense 720p step is ~22 s, so 20 steps do not fit one call)
#   bash bench/gpu_run.sh OUT generate_warm             # Wan 2.1 1.3B 480p after the worker's start-up warm-up: its
#                                                       # time, and the first sparse steps it leaves (dense, fixed 15%,
#                                                       # fast; 4 steps)
#   bash bench/gpu_run.sh OUT generate14b_warm          # Wan 14B after the worker's own start-up warm-up (every
#                                                       # preset): its time, and the first sparse steps it leaves
#                                                       # (dense, fixed 25%, fast; 4 steps; ~470 s estimated)
#   bash bench/gpu_run.sh OUT generate_hunyuan          # HunyuanVideo 720p 129 frames, 4 steps, dense and 25%, tiled
#                                                       # VAE decode (~440 s; the warm-up jobs alone take ~190 s)
#
#   bash bench/gpu_run.sh OUT tailunion_tests tailunion # the query-tail union: its Hopper test (the stage's kernels against
#                                                       # the reference, the kernel on its layout, a CUDA graph), then
#                                                       # its accuracy, modelled cost and the attention kernel's time on
#                                                       # its tables at Wan 14B's size (probe_tail_union.py);
#                                                       # tailunion480: at 480p's (200 / 1000); w480_tu, wan14b_tu,
#                                                       # hunyuan_tu: the pipeline steps with it; wan14b_s2_tu: with
#                                                       # kmeans_subsample 2 as well (wan14b_s2_tu_c16: and
#                                                       # kmeans_candidates 16); tailstage: the stage's savings
#                                                       # and rows kernels by launch shape (probe_tail_stage.py);
#                                                       # tailunion_low / tailunion480_low: the union at 5% / 10%;
#                                                       # tailunion_hunyuan: at HunyuanVideo's video tokens (33 x 45 x
#                                                       # 80, 400 / 1000, 24 heads; no text tokens) at 5-40%
#   bash bench/gpu_run.sh OUT subsample_trajectory_720p # kmeans_subsample 2's accuracy along the simulated denoising
#                                                       # trajectory at Wan 14B's size (300 / 1000); subsample_trajectory:
#                                                       # at 480p's (200 / 1000, `balanced`'s clusters there; 8 steps).
#                                                       # Since session 29 the cold call runs on every token
#   bash bench/gpu_run.sh OUT selectoverlap             # the selection beside the V projection's GEMM on another stream,
#                                                       # against one after the other (probe_select_overlap.py, CUDA graphs);
#                                                       # wan14b_s2_tu_vbs / w480_s2_vbs: the steps with
#                                                       # apply_svg2(value_beside_selection=True), beside wan14b_s2_tu /
#                                                       # w480_s2
#   bash bench/gpu_run.sh OUT w480 w480_rebalance       # the Wan 1.3B 480p step without, then with rebalancing (rho = 16)
#   bash bench/gpu_run.sh OUT subsample subsample_trajectory   # the selection with the k-means' first iterations on
#                                                       # a token sample (kmeans_subsample 1 / 2 / 4), timed
#                                                       # (probe_kmeans_subsample.py); then its accuracy at 480p's size
#                                                       # (probe_config_trajectory.py); w480_s2 / wan14b_s2: the steps
#   bash bench/gpu_run.sh OUT cold cold_trajectory     # a layer's cold first call: what it adds to a job with 5-50
#                                                       # cold iterations or on a token sample (probe_cold_start.py,
#                                                       # ~2 min); then their accuracy at 480p's size, cold call and
#                                                       # warm steps (probe_config_trajectory.py); cold_trajectory_720p:
#                                                       # at Wan 14B's size (300 / 1000)
#   bash bench/gpu_run.sh OUT persistent                # the Gluon kernel's persistent grid against the default at
#                                                       # 10-25%, where the per-tile fixed cost weighs most
#                                                       # (probe_gluon_ablate.py; lost 4-7% in session 5)
#   bash bench/gpu_run.sh OUT hunyuan hunyuan_s2        # the HunyuanVideo 720p step at 15% / 25%, then with
#                                                       # kmeans_subsample 2 (~3 min each)
#   GPU_RUN_TESTS_K="rebalancing or subsample" bash bench/gpu_run.sh OUT tests   # only the Hopper tests whose names
#                                                       # match (pytest -k)
#
# Steps: tests (tests/svg2core/test_sparse_attn_hopper.py), attn (bench_sparse_attn.py), selection
# (bench_selection.py --no-sweep), pipeline (bench_pipeline_step.py --compile), assign (bench/probes/probe_assign.py), sort (bench/probes/probe_sort.py), tiles (bench/probes/probe_assign_tiles.py),
# update (bench/probes/probe_update.py), layout (bench/probes/probe_layout.py),
# text (bench/probes/probe_text_cost.py), overlap (bench/probes/probe_overlap.py), keygather
# (bench/probes/probe_key_gather.py), timeline (bench/probes/probe_timeline.py), logits (bench/probes/probe_logits.py), select (bench/probes/probe_select.py), pad (bench/probes/probe_assign_pad.py), tiles_nosel (tiles without the selection A/B), generate (bench/bench_generate.py:
# dense and fixed 15% / 25% jobs).
# Results go to OUT/<step>/; with GPU_RUN_PACK=1 they are packed at the end (also after each step, so a run cut short
# keeps what it finished) into OUT/results.tgz, the only file left in OUT (the device tool brings back at most 8
# files, and each step writes three).
set -uo pipefail
out=${1:?usage: bash bench/gpu_run.sh OUT STEP...}
shift
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  pip install -q --no-deps --target /tmp/site .whl/*.whl 2>&1 | grep -v -i "warning" || true
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
status=0
pack_dir=$(mktemp -d)  # GPU_RUN_PACK: the finished steps, packed after each
for step in "$@"; do
  mkdir -p "$out/$step"
  echo "=== $step"
  log="$out/$step/log.txt"
  case $step in
    tests) python -m pytest -q tests/svg2core/test_sparse_attn_hopper.py -p no:cacheprovider ${GPU_RUN_TESTS_K:+-k "$GPU_RUN_TESTS_K"} \
      > "$log" 2>&1 ;;
    attn) python bench/bench_sparse_attn.py --out "$out/$step" > "$log" 2>&1 ;;
    selection) python bench/bench_selection.py --out "$out/$step" --no-sweep > "$log" 2>&1 ;;
    pipeline) python bench/bench_pipeline_step.py --compile --out "$out/$step" > "$log" 2>&1 ;;
    host) python bench/probes/probe_host_overhead.py --out "$out/$step" > "$log" 2>&1 ;;
    rebalance_cost) python bench/probes/probe_rebalance_cost.py --out "$out/$step" > "$log" 2>&1 ;;
    graph480) python bench/bench_pipeline_step.py --compile --cuda-graph --models wan2.1-1.3b-480p \
      --out "$out/$step" > "$log" 2>&1 ;;
    w480) python bench/bench_pipeline_step.py --compile --models wan2.1-1.3b-480p --densities 0.15,0.25 \
      --out "$out/$step" > "$log" 2>&1 ;;
    w480_rebalance) python bench/bench_pipeline_step.py --compile --models wan2.1-1.3b-480p --densities 0.15,0.25 \
      --query-tile-rebalance 16 --out "$out/$step" > "$log" 2>&1 ;;
    wan14b) python bench/bench_pipeline_step.py --compile --models wan2.1-14b-720p --densities 0.25 \
      --out "$out/$step" > "$log" 2>&1 ;;
    wan14b_rebalance) python bench/bench_pipeline_step.py --compile --models wan2.1-14b-720p --densities 0.25 \
      --query-tile-rebalance 16 --out "$out/$step" > "$log" 2>&1 ;;
    rebalance_trajectory) python bench/probes/probe_rebalance_trajectory.py --grid 21,45,80 --objects 24 --cq 300 \
      --ck 1000 --device cuda --backend triton --seeds 2 --out "$out/$step" > "$log" 2>&1 ;;
    subsample) python bench/probes/probe_kmeans_subsample.py --out "$out/$step" > "$log" 2>&1 ;;
    cold) python bench/probes/probe_cold_start.py --out "$out/$step" > "$log" 2>&1 ;;
    cold_trajectory) python bench/probes/probe_config_trajectory.py --grid 21,30,52 --objects 12 --cq 200 \
      --ck 1000 --device cuda --backend triton --seeds 2 --steps 8 --variant kmeans_iters_init=5 \
      --variant kmeans_iters_init=10 --variant kmeans_iters_init=20 --name cold_iters --out "$out/$step" > "$log" 2>&1 ;;
    cold_trajectory_720p) python bench/probes/probe_config_trajectory.py --grid 21,45,80 --objects 24 --cq 300 \
      --ck 1000 --device cuda --backend triton --seeds 2 --steps 6 --variant kmeans_iters_init=10 \
      --variant kmeans_iters_init=20 --name cold_iters --out "$out/$step" > "$log" 2>&1 ;;
    tailunion_tests) python -m pytest -q tests/svg2core/test_sparse_attn_hopper.py -p no:cacheprovider -k tail_union \
      > "$log" 2>&1 ;;
    tailunion) python bench/probes/probe_tail_union.py --grid 21,45,80 --objects 24 --cq 300 --ck 1000 --seeds 1 \
      --targets 0.15 0.25 0.4 --rules product --device cuda --backend triton --time-heads 40 \
      --out "$out/$step" > "$log" 2>&1 ;;
    tailunion_low) python bench/probes/probe_tail_union.py --grid 21,45,80 --objects 24 --cq 300 --ck 1000 --seeds 1 \
      --targets 0.05 0.1 --rules product --device cuda --backend triton --time-heads 40 \
      --out "$out/$step" > "$log" 2>&1 ;;
    tailunion480_low) python bench/probes/probe_tail_union.py --grid 21,30,52 --objects 12 --cq 200 --ck 1000 --seeds 1 \
      --targets 0.05 0.1 --rules product --device cuda --backend triton --time-heads 12 \
      --out "$out/$step" > "$log" 2>&1 ;;
    tailunion_hunyuan) python bench/probes/probe_tail_union.py --grid 33,45,80 --objects 24 --cq 400 --ck 1000 --seeds 1 \
      --targets 0.05 0.1 0.15 0.25 0.4 --rules product --device cuda --backend triton --time-heads 24 \
      --out "$out/$step" > "$log" 2>&1 ;;
    subsample_trajectory) python bench/probes/probe_config_trajectory.py --grid 21,30,52 --objects 12 --cq 200 \
      --ck 1000 --device cuda --backend triton --seeds 2 --steps 8 --variant kmeans_subsample=2 --name subsample \
      --out "$out/$step" > "$log" 2>&1 ;;
    subsample_trajectory_720p) python bench/probes/probe_config_trajectory.py --grid 21,45,80 --objects 24 --cq 300 \
      --ck 1000 --device cuda --backend triton --seeds 2 --steps 6 --variant kmeans_subsample=2 --name subsample \
      --out "$out/$step" > "$log" 2>&1 ;;
    tailunion480) python bench/probes/probe_tail_union.py --grid 21,30,52 --objects 12 --cq 200 --ck 1000 --seeds 1 \
      --targets 0.15 0.25 0.4 --rules product --device cuda --backend triton --time-heads 12 \
      --out "$out/$step" > "$log" 2>&1 ;;
    tailstage) python bench/probes/probe_tail_stage.py --out "$out/$step" > "$log" 2>&1 ;;
    wan14b_s2_tu) python bench/bench_pipeline_step.py --compile --models wan2.1-14b-720p --densities 0.25 \
      --kmeans-subsample 2 --query-tail-union --out "$out/$step" > "$log" 2>&1 ;;
    wan14b_s2_tu_vbs) python bench/bench_pipeline_step.py --compile --models wan2.1-14b-720p --densities 0.25 \
      --kmeans-subsample 2 --query-tail-union --value-beside-selection --out "$out/$step" > "$log" 2>&1 ;;
    w480_s2_vbs) python bench/bench_pipeline_step.py --compile --models wan2.1-1.3b-480p --densities 0.15,0.25 \
      --kmeans-subsample 2 --value-beside-selection --out "$out/$step" > "$log" 2>&1 ;;
    wan14b_s2_tu_c16) python bench/bench_pipeline_step.py --compile --models wan2.1-14b-720p --densities 0.25 \
      --kmeans-subsample 2 --query-tail-union --kmeans-candidates 16 --out "$out/$step" > "$log" 2>&1 ;;
    w480_tu) python bench/bench_pipeline_step.py --compile --models wan2.1-1.3b-480p --densities 0.15,0.25 \
      --query-tail-union --out "$out/$step" > "$log" 2>&1 ;;
    wan14b_tu) python bench/bench_pipeline_step.py --compile --models wan2.1-14b-720p --densities 0.25 \
      --query-tail-union --out "$out/$step" > "$log" 2>&1 ;;
    hunyuan_tu) python bench/bench_pipeline_step.py --compile --models hunyuanvideo-720p --densities 0.15,0.25 \
      --query-tail-union --out "$out/$step" > "$log" 2>&1 ;;
    w480_s2) python bench/bench_pipeline_step.py --compile --models wan2.1-1.3b-480p --densities 0.15,0.25 \
      --kmeans-subsample 2 --out "$out/$step" > "$log" 2>&1 ;;
    hunyuan) python bench/bench_pipeline_step.py --compile --models hunyuanvideo-720p --densities 0.15,0.25 \
      --out "$out/$step" > "$log" 2>&1 ;;
    hunyuan_s2) python bench/bench_pipeline_step.py --compile --models hunyuanvideo-720p --densities 0.15,0.25 \
      --kmeans-subsample 2 --out "$out/$step" > "$log" 2>&1 ;;
    wan14b_s2) python bench/bench_pipeline_step.py --compile --models wan2.1-14b-720p --densities 0.25 \
      --kmeans-subsample 2 --out "$out/$step" > "$log" 2>&1 ;;
    w480_s2_rebalance) python bench/bench_pipeline_step.py --compile --models wan2.1-1.3b-480p --densities 0.15,0.25 \
      --kmeans-subsample 2 --query-tile-rebalance 16 --out "$out/$step" > "$log" 2>&1 ;;
    wan14b_s2_rebalance) python bench/bench_pipeline_step.py --compile --models wan2.1-14b-720p --densities 0.25 \
      --kmeans-subsample 2 --query-tile-rebalance 16 --out "$out/$step" > "$log" 2>&1 ;;
    wan14b_rebalance_bf16) python bench/bench_pipeline_step.py --compile --models wan2.1-14b-720p --densities 0.25 \
      --query-tile-rebalance 16 --set "svg2core.ops.rebalance.rebalance.MARGIN_PRECISION='bf16'" \
      --out "$out/$step" > "$log" 2>&1 ;;
    persistent) python bench/probes/probe_gluon_ablate.py --variants "default=,persistent=gluon_persistent:1" \
      --cases wan1.3b-480p@0.1,wan1.3b-480p@0.15,wan14b-720p@0.15,wan14b-720p@0.25 --reps 3 \
      --out "$out/$step" > "$log" 2>&1 ;;
    assign) python bench/probes/probe_assign.py --out "$out/$step" > "$log" 2>&1 ;;
    sort) python bench/probes/probe_sort.py --out "$out/$step" > "$log" 2>&1 ;;
    tiles) python bench/probes/probe_assign_tiles.py --out "$out/$step" > "$log" 2>&1 ;;
    update) python bench/probes/probe_update.py --out "$out/$step" > "$log" 2>&1 ;;
    layout) python bench/probes/probe_layout.py --out "$out/$step" > "$log" 2>&1 ;;
    text) python bench/probes/probe_text_cost.py --out "$out/$step" > "$log" 2>&1 ;;
    overlap) python bench/probes/probe_overlap.py --out "$out/$step" > "$log" 2>&1 ;;
    keygather) python bench/probes/probe_key_gather.py --out "$out/$step" > "$log" 2>&1 ;;
    timeline) python bench/probes/probe_timeline.py --out "$out/$step" > "$log" 2>&1 ;;
    logits) python bench/probes/probe_logits.py --out "$out/$step" > "$log" 2>&1 ;;
    select) python bench/probes/probe_select.py --out "$out/$step" > "$log" 2>&1 ;;
    pad) python bench/probes/probe_assign_pad.py --out "$out/$step" > "$log" 2>&1 ;;
    tiles_nosel) python bench/probes/probe_assign_tiles.py --no-selection --out "$out/$step" > "$log" 2>&1 ;;
    keyhalves) python bench/probes/probe_key_halves.py --out "$out/$step" > "$log" 2>&1 ;;
    keyrotation) python bench/probes/probe_key_rotation.py --out "$out/$step" > "$log" 2>&1 ;;
    selectoverlap) python bench/probes/probe_select_overlap.py --shapes wan14b,w480,hunyuan --out "$out/$step" > "$log" 2>&1 ;;
    stepkeyorder) python bench/probes/probe_step_key_order.py --out "$out/$step" > "$log" 2>&1 ;;
    candidates) python bench/probes/probe_candidates_gpu.py --out "$out/$step" > "$log" 2>&1 ;;
    serpentine) python bench/probes/probe_serpentine.py --out "$out/$step" > "$log" 2>&1 ;;
    rebalance) python bench/probes/probe_tile_rebalance.py --grid 21,45,80 --objects 24 --cq 300 --ck 1000 \
      --block 128 --rhos 16 32 --alt-cqs 200 --time-heads 40 --device cuda --backend triton --out "$out/$step" > "$log" 2>&1 ;;
    generate) python bench/bench_generate.py --out "$out/$step" --budgets dense,fixed:0.15,fixed:0.25 > "$log" 2>&1 ;;
    generate14b) python bench/bench_generate.py --out "$out/$step" --model wan2.1-t2v-14b --steps 5 \
      --budgets dense,fixed:0.25,fixed:0.25+query_tail_union=false > "$log" 2>&1 ;;
    generate_warm) python bench/bench_generate.py --out "$out/$step" --steps 4 --warmup worker \
      --budgets dense,fixed:0.15,fast > "$log" 2>&1 ;;
    generate14b_warm) python bench/bench_generate.py --out "$out/$step" --model wan2.1-t2v-14b --steps 4 \
      --warmup worker --budgets dense,fixed:0.25,fast > "$log" 2>&1 ;;
    generate14b_warmup) python bench/bench_generate.py --out "$out/$step" --model wan2.1-t2v-14b --steps 2 \
      --warmup worker --budgets dense > "$log" 2>&1 ;;
    generate_hunyuan) python bench/bench_generate.py --out "$out/$step" --model hunyuanvideo --steps 4 \
      --budgets dense,fixed:0.25 > "$log" 2>&1 ;;
    *) echo "unknown step: $step" > "$log"; false ;;
  esac
  rc=$?
  [ $rc -eq 0 ] || status=1
  # the step's summary: table rows and checks, else the end of its log
  grep -E "^\| |dense cuDNN|correctness|graph|passed|failed" "$log" || tail -20 "$log"
  echo "=== $step: exit $rc"
  if [ "${GPU_RUN_PACK:-0}" = 1 ]; then
    cp -r "$out/$step" "$pack_dir/" && rm -rf "${out:?}/$step"
    # without the videos (generate writes three noise MP4s of ~10 MB each, past what the device tool brings back)
    tar czf "$out/results.tgz" --exclude='*.mp4' -C "$pack_dir" .
  fi
done
exit $status
