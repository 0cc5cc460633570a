#!/usr/bin/env bash
# Third GPU pass: tensor-core validation with the corrected model, settling block dumps,
# attention + SFU validation. Results in $OUT/results3.tgz (+ the npz and SFU tables).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
ROOT="${OUT:-/tmp/hspi_out}"; R="$ROOT/r"; mkdir -p "$R"
step() { echo; echo "=== $* ($(date +%T))"; }
if ! python3 -c "import hspi_kernels._native, typer" 2>/dev/null; then
  step install
  python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
fi
HSPI_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps -Cbuild-dir=build/gpu -e . 2>&1 | tail -5
step "tensor-core validation scale ${TC_SCALE:-1}"
timeout 240 python3 -m hspi_kernels.validation.tensor_core "$R/tc" --scale "${TC_SCALE:-1}" > "$R/tc.log" 2>&1; echo "rc=$?"; tail -16 "$R/tc.log"
step "tc dump"; timeout 120 python3 scripts/tc_dump.py "$ROOT/tc_blocks.npz"; echo "rc=$?"
step "attention + SFU"
timeout 240 python3 -m hspi_kernels.validation.attention_sfu "$R/attn" > "$R/attn.log" 2>&1; echo "rc=$?"; tail -40 "$R/attn.log"
du -sh "$R"/*
tar czf "$ROOT/results3.tgz" -C "$ROOT" r
