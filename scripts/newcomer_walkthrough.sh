#!/usr/bin/env bash
# The newcomer walk-through (issue 16): every `hspi` verb as a new user runs it on a CPU machine,
# the tool already installed (README install commands in a fresh venv are too slow for CI), good
# input first, then bad input. Each command is echoed with its exit status; the whole output is
# teed to OUT (default docs/results/cpu/newcomer_walkthrough.txt) with the scratch folder shown
# as <work>. Usage: scripts/newcomer_walkthrough.sh [OUT]   (PYTHON=.venv/bin/python for a venv; HSPI="hspi" for the entry point)
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/docs/results/cpu/newcomer_walkthrough.txt}
HSPI=${HSPI:-"${PYTHON:-python} -m hspi_kernels"}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export COLUMNS=${COLUMNS:-100} HSPI_CACHE_DIR="$WORK/cache" TERM=dumb
mkdir -p "$(dirname "$OUT")"
cd "$WORK"
cp "$REPO/hspi_kernels/data/cpu-xeon-2core.json" "$REPO/docs/results/h100/fingerprint.json" .
mv fingerprint.json h100.json

step() {  # step "what a newcomer tries" command...
    echo
    echo "### $1"
    shift
    echo "\$ hspi $*"
    $HSPI "$@" 2>&1
    echo "[exit $?]"
}

{
echo "# hspi newcomer walk-through — $(date -u +%Y-%m-%d), $(uname -m), $(nproc) cores, no GPU"
echo "## the jobs"
step "versions and what works here" env
step "the main job: fingerprint this machine" probe --jobs 1 --out fp.json
step "name the platform of that fingerprint" identify fp.json
step "what differs from the H100 reference (differing probes only)" compare fp.json h100.json
step "HTML report" report fp.json h100.json --out report.html
step "a tensor-core numerics card, emulated" card --path "emulated:sm_90.mma/bf16->fp32" --verify 1000
step "numpy.sum's summation order" reveal numpy.sum --n 64 --replay 200
step "kernel cost (needs a GPU)" bench
step "model collection: tiny-llama, two EQCs" model collect --model tiny-llama --eqc fp32.b1 --eqc bf16.b1 --n-random 4 --n-text 4 --length 8 --out coll.npz
step "which EQC produced it" model identify coll.npz --ref coll.npz
step "trace a forward pass" trace run --model tiny-llama --dtype fp32 --length 8 --no-profile --out a.npz
step "trace it with one GEMM computed by another plan" trace run --model tiny-llama --length 8 --no-profile --dtype fp32 --inject "model.layers.0.mlp.down_proj:mm#0=SplitK(4)" --out b.npz
step "first diverging op" trace diff a.npz b.npz
echo
echo "## bad input (each: one line, exit 2 for usage, 1 at run time, nothing written)"
step "output folder missing: created" probe --only numpy/sum --jobs 1 --out nodir/sub/fp.json
touch afile
step "output under a regular file" probe --out afile/sub/fp.json
step "output is a directory" probe --out nodir
step "--save where it cannot be written" identify --save afile/x/fp.json
step "validation folder cannot be created" validate cuda --out afile/v
step "no terms" reveal numpy.sum --n 0
step "negative terms" reveal numpy.sum --n -5
step "too many terms" reveal numpy.sum --n 10000000000
step "no replay" reveal numpy.sum --replay 0
step "unknown card path" card --path nonsense
step "too few verification blocks" card --verify 0
step "unknown format" card --format bogus
step "unknown bench case" bench --only nope
step "missing fingerprint" identify missing.json
step "empty fingerprint" compare fp.json /dev/null
step "missing collection" model identify missing.npz --ref missing.npz
step "missing traces" trace diff missing.npz missing.npz
step "unknown model" trace run --model nope
echo "(a missing transformers install prints: model tiny-llama needs transformers, which is not importable (...): pip install 'hspi_kernels[models]' — tests/test_cli_bad_input.py)"
HSPI_CACHE_DIR="$WORK/afile" step "cache dir is a file: a warning, the run goes on" probe --only numpy/sum --jobs 1 --out fp3.json
echo
echo "files left in the scratch folder: $(find . -type f -not -path './cache/*' | sort | tr '\n' ' ')"
} 2>&1 | sed -e "s#$WORK#<work>#g" -e "s#$REPO#<repo>#g" | tee "$OUT"
