#!/usr/bin/env bash
# Second GPU pass: tensor-core block dumps for offline analysis, CUDA-core validation at full
# scale, Triton tests + validation. Results in $OUT/results2.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
ROOT="${OUT:-/tmp/hspi_out}"; R="$ROOT/r"; mkdir -p "$R"
step() { echo; echo "=== $* ($(date +%T))"; }
if ! python3 -c "import hspi_kernels._native, typer" 2>/dev/null; then
  step install
  python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
  HSPI_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps -Cbuild-dir=build/gpu -e . 2>&1 | tail -5
fi
step "tc dump"; timeout 120 python3 scripts/tc_dump.py "$R/tc_blocks.npz"; echo "rc=$?"
step "cuda-core validation scale 1.0"
timeout 200 python3 -c "
import json
from hspi_kernels.validation import cuda_core
res = cuda_core.run('$R/core', scale=1.0)
print(json.dumps(res.get('summary', {}), indent=1))" > "$R/core.log" 2>&1; echo "rc=$?"; tail -14 "$R/core.log"
step "triton tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py > "$R/triton_pytest.log" 2>&1; echo "rc=$?"; tail -8 "$R/triton_pytest.log"
step "triton validation scale ${TRITON_SCALE:-0.1}"
timeout 200 python3 -c "
from hspi_kernels.validation import triton_kernels as V
r = V.run('$R/triton', scale=${TRITON_SCALE:-0.1}); print('passed', r.get('passed'), r.get('seconds'))" > "$R/triton.log" 2>&1; echo "rc=$?"; tail -40 "$R/triton.log"
tar czf "$ROOT/results2.tgz" -C "$ROOT" r
