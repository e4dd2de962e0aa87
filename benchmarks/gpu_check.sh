#!/usr/bin/env bash
# The one prepared device check of the Pallas kernels (issue "Kernels", item 6).
#
# Run once on a lent NVIDIA H100/H200 (JAX with CUDA installed; only jax and
# numpy are imported, no grain/TFDS). Finishes in <= 8 minutes: every kernel in
# float32 and bf16 at the realistic shapes of benchmarks/kernels.py, its output
# and gradients against the XLA path, forward and forward+backward times beside
# the XLA path, auto's pick, cuDNN attention and each op's floor.
#
# Usage (from the repository root):  OUT=/some/dir bash benchmarks/gpu_check.sh
# Writes $OUT/gpu-kernels.json and $OUT/gpu-kernels.log (OUT defaults to
# benchmarks/results). The JSON is rewritten after every row, so a run cut by
# the time limit keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT="${OUT:-benchmarks/results}"
# The lent machine's interpreter is python3 (no plain python); PYTHON overrides.
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
# The kernels' share of the 8 minutes; the rest is start-up and the prelude.
LIMIT="${LIMIT:-450}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu-kernels.log"
"$PYTHON" - <<'PY' 2>&1 | tee -a "$OUT/gpu-kernels.log"
import jax
print("jax", jax.__version__, "devices", jax.devices())
PY
PYTHONUNBUFFERED=1 timeout "$LIMIT" "$PYTHON" -m benchmarks.kernels --repeats "${REPEATS:-20}" --out "$OUT/gpu-kernels.json" 2>&1 | tee -a "$OUT/gpu-kernels.log"
echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/gpu-kernels.log"
