#!/usr/bin/env bash
# Nsight Compute profile of the kernels' forward+backward (benchmarks/gpu_profile.py).
#
# Run on a lent GPU after gpu_check.sh, when ~3 minutes of device time are
# left: per op, ncu profiles every GPU kernel of one forward+backward at the
# realistic shape (clocks left alone: --clock-control none), then the CSVs
# are summarised into $OUT/gpu-profile.json and a table on stdout.
#
# Usage (from the repository root):  OUT=/some/dir bash benchmarks/gpu_profile.sh
# OPS (default "selective_scan ssd linear_attention"), DTYPE (float32),
# LIMIT (seconds per op, 120), NCU (the ncu binary) override the defaults.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# No autotuning: compiling must launch no kernels of its own into the profile.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
OUT="${OUT:-benchmarks/results}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
NCU="${NCU:-$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n 1)}"
OPS="${OPS:-selective_scan ssd linear_attention}"
DTYPE="${DTYPE:-float32}"
mkdir -p "$OUT"
if [ -z "$NCU" ]; then
    echo "ncu not found (set NCU=/path/to/ncu)" >&2
    exit 2
fi
"$NCU" --version | tail -n 1
profile() {  # op, csv, extra ncu arguments
    local op="$1" csv="$2"
    shift 2
    timeout "${LIMIT:-120}" "$NCU" --clock-control none --csv --page details --print-units base --launch-count 300 \
        --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats "$@" \
        "$PYTHON" -m benchmarks.gpu_profile run --op "$op" --dtype "$DTYPE" > "$csv" 2>> "$OUT/ncu-$op-$DTYPE.log"
}
for op in $OPS; do
    csv="$OUT/ncu-$op-$DTYPE.csv"
    : > "$OUT/ncu-$op-$DTYPE.log"
    # The stall metrics by regex: one per reason, named as ncu names them. If
    # this ncu rejects the regex (no records), the sections alone once more.
    profile "$op" "$csv" --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
    code=$?
    if [ "$(grep -c '^"' "$csv")" -le 1 ] && [ "$code" -ne 124 ]; then
        echo "$op: no records with the stall metrics (exit $code); sections only" | tee -a "$OUT/ncu-$op-$DTYPE.log"
        profile "$op" "$csv"
        code=$?
    fi
    echo "$op $DTYPE: ncu exit $code ($(grep -c '^"' "$csv") CSV lines)"
done
"$PYTHON" -m benchmarks.gpu_profile summarise "$OUT"/ncu-*-"$DTYPE".csv --out "$OUT/gpu-profile-$DTYPE.json"
