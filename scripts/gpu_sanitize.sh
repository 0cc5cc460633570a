#!/usr/bin/env bash
# compute-sanitizer over every CUDA kernel family of hspi_kernels, tiny shapes; JSON record.
#
#   scripts/gpu_sanitize.sh [OUT_DIR]          (default: $OUT, else ./sanitize_out)
#   SANITIZE_TOOLS="memcheck racecheck"        tools to run (default: memcheck racecheck synccheck initcheck)
#   SANITIZE_WORK=DIR                          logs and per-tool records (default: OUT_DIR/work)
#
# Per tool, one python process runs every case of hspi_kernels.kernels.validation.sanitizer under
# `compute-sanitizer --tool T`; each tool's log, exit code and case record go to OUT_DIR/work/.
# Negative controls (must be flagged): memcheck on our row kernel launched with n past the end
# of its array and on a planted out-of-bounds write; racecheck on a planted shared-memory race.
# The summary (platform metadata, per tool x case x kernel errors, exit codes, controls,
# kernel coverage) is OUT_DIR/gpu_sanitize.json; exit status 0 only when every tool is clean
# and every control is flagged. About 1-2 min on an H100 (the sanitizer slows kernels ~100x).
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-sanitize_out}}"
WORK="${SANITIZE_WORK:-$OUT_DIR/work}"
mkdir -p "$WORK" "$OUT_DIR"
TOOLS="${SANITIZE_TOOLS:-memcheck racecheck synccheck initcheck}"
SAN="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
if [ ! -x "$SAN" ]; then
  echo "gpu_sanitize: compute-sanitizer not found (PATH or /usr/local/cuda/bin)" >&2
  exit 2
fi
PY="${PYTHON:-python3}"
DRIVER="-m hspi_kernels.kernels.validation.sanitizer"
export PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONUNBUFFERED=1

run_one() {  # label tool [driver args...]
  local label=$1 tool=$2; shift 2
  local t0=$SECONDS
  "$SAN" --tool "$tool" --error-exitcode 86 --print-limit 50 --target-processes all \
    "$PY" $DRIVER run "$WORK/$label.cases.json" "$@" >"$WORK/$label.log" 2>&1
  echo $? >"$WORK/$label.rc"
  echo "gpu_sanitize: $label: rc $(cat "$WORK/$label.rc"), $((SECONDS - t0)) s, $(grep -o 'ERROR SUMMARY: [0-9]* error' "$WORK/$label.log" | tail -1)"
}

# warm the NVRTC cache outside the sanitizer (the sanitized runs then only load cubins)
"$PY" $DRIVER list >"$WORK/discover.txt" 2>&1 || echo "gpu_sanitize: discovery failed, see $WORK/discover.txt"
for tool in $TOOLS; do
  run_one "$tool" "$tool"
done
run_one control-oob_ours-memcheck memcheck --control oob_ours
run_one control-oob_planted-memcheck memcheck --control oob_planted
run_one control-race-racecheck racecheck --control race

"$PY" $DRIVER summarize "$WORK" "$OUT_DIR/gpu_sanitize.json"
