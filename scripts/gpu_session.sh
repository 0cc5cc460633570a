#!/usr/bin/env bash
# One GPU session (H100 or H200): build + install, the foundation record, `hspi env` and
# `hspi probe`, the CUDA kernel validations (bit-exact counts against their plans) and the GPU
# tests. Everything lands in $OUT/results.tgz plus a summary printed last.
#
#   bash scripts/gpu_session.sh [TC_SCALE] [CORE_SCALE]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
TC_SCALE="${1:-0.25}"
CORE_SCALE="${2:-0.3}"
ROOT="${OUT:-/tmp/hspi_out}"
R="$ROOT/r"
mkdir -p "$R"
PY=python3
step() { echo; echo "=== $* ($(date +%T))"; }

step foundation
OUT="$R" bash scripts/gpu_foundation.sh 2>&1 | tail -30

step "hspi env / probe"
hspi env --json > "$R/env.json" 2> "$R/env.err"; echo "env rc=$?"
timeout 240 hspi probe --out "$R/fingerprint.json" > "$R/probe.log" 2>&1; echo "probe rc=$?"
tail -5 "$R/probe.log"

step "tensor-core validation (scale $TC_SCALE)"
timeout 300 $PY -m hspi_kernels.validation.tensor_core "$R/tc" --scale "$TC_SCALE" > "$R/tc.log" 2>&1
echo "tc rc=$?"; tail -40 "$R/tc.log"

step "CUDA-core validation (scale $CORE_SCALE)"
timeout 240 $PY -c "
import json, sys
from hspi_kernels.validation import cuda_core
res = cuda_core.run('$R/core', scale=$CORE_SCALE)
print(json.dumps(res.get('summary', {}), indent=1)[:3000])
" > "$R/core.log" 2>&1
echo "core rc=$?"; tail -30 "$R/core.log"

step "GPU kernel tests"
timeout 240 $PY -m pytest -q -p no:cacheprovider -m "gpu or sm90" tests/ > "$R/gpu_pytest.log" 2>&1
echo "pytest rc=$?"; tail -15 "$R/gpu_pytest.log"

tar czf "$ROOT/results.tgz" -C "$ROOT" r
ls -la "$ROOT"
