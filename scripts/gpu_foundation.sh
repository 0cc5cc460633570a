#!/usr/bin/env bash
# Foundation check on a GPU machine (H100 / H200): build + install, load paths, GPU tests,
# bit-exactness counts of the fma probe, and a JSON record with platform metadata.
#
#   bash scripts/gpu_foundation.sh            # record goes to $OUT (default docs/results)
#
# Needs: python3 with torch + cupy, nvcc, cmake, ninja, scikit-build-core, pybind11 (the GPU
# image has them). Pure-python deps missing there can be carried as wheels in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-docs/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

if compgen -G ".whl/*.whl" > /dev/null; then
  echo "== installing carried wheels from .whl/"
  "$PY" -m pip install -q --no-index --no-deps .whl/*.whl
fi

echo "== building and installing hspi_kernels (nvcc $(command -v nvcc || echo missing))"
t0=$(date +%s)
HSPI_CUDA=ON "$PY" -m pip install -q --no-build-isolation --no-deps -Cbuild-dir=build/gpu -e . \
  2>&1 | tee "$OUT/foundation_install.log" | tail -20
echo "   install took $(( $(date +%s) - t0 )) s"

echo "== GPU tests (tests/test_cuda_gpu.py) and CPU CUDA tests (build, SASS, reference)"
set +e
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_gpu.py tests/test_cuda_build.py \
  tests/test_cuda_reference.py 2>&1 | tee "$OUT/foundation_pytest.log" | tail -25
PYTEST_RC=${PIPESTATUS[0]}
set -e

echo "== bit-exactness counts and platform record"
"$PY" -m hspi_kernels.kernels.validation.foundation --out "$OUT" --pytest-rc "$PYTEST_RC"
