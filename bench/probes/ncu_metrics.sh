#!/usr/bin/env bash
# Nsight Compute counters of one Gluon sparse-attention call per case (Hopper; ncu on PATH or in /usr/local/cuda).
#
#   bash bench/probes/ncu_metrics.sh "--model wan14b-720p --density 0.25" "--model wan14b-720p --density 0.25 --key-order"
#
# Each argument is one case: the options of bench/probes/ncu_gluon.py. Prints the time under ncu and the counters
# below (L2 hit rate, DRAM / L2 throughput, warp stall reasons, instructions, CTAs launched); NOTES_sparse_attn v8
# quotes them.
set -euo pipefail
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
M=gpu__time_duration.sum,sm__cycles_active.avg,smsp__inst_executed.sum,sm__ctas_launched.sum
M=$M,lts__t_sector_hit_rate.pct,lts__throughput.avg.pct_of_peak_sustained_elapsed
M=$M,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sectors_srcunit_tex_op_read.sum
M=$M,smsp__warp_issue_stalled_long_scoreboard_per_warp_active.pct,smsp__warp_issue_stalled_barrier_per_warp_active.pct
M=$M,smsp__warp_issue_stalled_wait_per_warp_active.pct,smsp__warp_issue_stalled_lg_throttle_per_warp_active.pct
cd "$(dirname "$0")/../.."
for case in "$@"; do
  echo "=== $case"
  # shellcheck disable=SC2086
  timeout 300 "$NCU" --clock-control none -k regex:sparse_attn_fwd_gluon -c 1 -s 1 --metrics "$M" \
    python bench/probes/ncu_gluon.py $case 2>&1 | grep -E "^\s+(gpu__|lts__|dram__|smsp__|sm__)|^pairs|rror" || true
done
