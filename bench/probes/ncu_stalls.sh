#!/usr/bin/env bash
# Where the Gluon sparse-attention kernel's warps stall, per SASS instruction (Nsight Compute source counters).
#
#   bash bench/probes/ncu_stalls.sh OUT "--model wan14b-720p --density 0.25"
#
# Profiles one call (bench/probes/ncu_gluon.py with the given options) with the SourceCounters and WarpStateStats
# sections, then exports the per-instruction page (OUT/source.csv: SASS with its warp-stall samples by reason) and
# the details page (OUT/details.csv). bench/probes/stall_table.py reads them.
set -euo pipefail
out=${1:?usage: bash bench/probes/ncu_stalls.sh OUT "ncu_gluon.py options"}
case_args=${2:-"--model wan14b-720p --density 0.25"}
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
cd "$(dirname "$0")/../.."
mkdir -p "$out"
# shellcheck disable=SC2086
timeout 400 "$NCU" --clock-control none --section SourceCounters --section WarpStateStats \
  -k regex:sparse_attn_fwd_gluon -c 1 -s 1 -f -o "$out/report" python bench/probes/ncu_gluon.py $case_args 2>&1 | tail -5
"$NCU" --import "$out/report.ncu-rep" --page source --csv --print-source sass > "$out/source.csv"
"$NCU" --import "$out/report.ncu-rep" --page details --csv > "$out/details.csv"
rm -f "$out/report.ncu-rep"
wc -l "$out/source.csv" "$out/details.csv"
head -2 "$out/source.csv" | cut -c1-600
