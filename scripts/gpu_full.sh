#!/usr/bin/env bash
# A full GPU session for one machine (H100 or H200), in stages selected by $STAGES:
#   found  foundation record (build, load paths, fma probe N/N)    env   hspi env --json
#   probe  full probe suite -> fingerprint (for the reference DB)  valid cuda + triton validations
#   dump   single-instruction tensor-core block dumps              models model-level collections
#   ident  10x `hspi identify --expect $EXPECT` against the DB     card  card + reveal script
#   trace  model traces                                            sanit compute-sanitizer, 4 tools
#   attn   Triton attention validation only (exact-mode replay)    bench bench/ (GEMM, reduction, Triton)
#   fp8    wgmma fp8 -> fp16 block-model decision (kernels.validation.fp8_f16)
#   gtest  the GPU tests (pytest -m 'gpu or sm90')                  cost  hspi bench -> bench_cli.json/png
#   sdpa   fused-SDPA orders (trace.sdpa_orders, live SFU)           cmap  eager vs compile per module (cuda)
#   fwops  PyTorch vs JAX per op (trace.frameworks, cuda)           cov   coverage pairs missing so far (qwen, gpt2 b1:b8)
#   bbax   sampled-text curves of the compile and framework axes (models.gpu_blackbox, T = 0.7)
#   bbpr   generated probes vs random prompts for the small-block pairs (cuBLAS vs fixed b8, b16 vs b8)
#   covp   one coverage pair in $COVP_N parts at once (COVP_ARGS, e.g. llama CPU vs GPU; merge: coverage_derive.py)
#   amiss  fused-attention ops no fitted plan reproduces: one-field variants per layer (scripts/gpu_attn_miss.py)
#   cpuat  the host CPU's torch flash-attention bits (scripts/cpu_flash_capture.py; no GPU used) -> \$OUT/cpu_flash_capture.npz
# VALID="cuda_core tensor_core attention_sfu triton" picks the validations of `valid`.
# Records go to $OUT/rec.tgz; large outputs (dumps, collections) to their own files in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
ROOT="${OUT:-/tmp/hspi_out}"; R="$ROOT/rec"; mkdir -p "$R"
STAGES="${STAGES:-found env probe valid dump}"
has() { [[ " $STAGES " == *" $1 "* ]]; }
step() { echo; echo "=== $* ($(date +%T))"; }
if ! python3 -c "import typer, ml_dtypes, xxhash" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
fi
if [ -z "${SKIP_INSTALL:-}" ]; then  # SKIP_INSTALL=1: an earlier call installed it (parallel stage groups)
  step install
  HSPI_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps -Cbuild-dir=build/gpu -e . 2>&1 | tail -3
  python3 -c "import hspi_kernels._native" >/dev/null 2>&1
fi
if has found; then step foundation; OUT="$R/found" bash scripts/gpu_foundation.sh 2>&1 | tail -12; fi
if has env; then step env; hspi env --json > "$R/env.json" 2> "$R/env.err"; echo "rc=$?"; fi
if has probe; then
  # cold = empty Triton and probe caches; warm = a new process with both caches filled
  export TRITON_CACHE_DIR=/tmp/hspi_tc HSPI_CACHE_DIR=/tmp/hspi_hc; rm -rf /tmp/hspi_tc /tmp/hspi_hc
  for n in cold warm1 warm2; do
    step "probe ($n)"; /usr/bin/time -f "probe $n wall %e s" timeout 200 hspi probe --timings --out "$R/fingerprint_$n.json" > "$R/probe_$n.log" 2>&1; echo "rc=$?"; tail -2 "$R/probe_$n.log"
  done
  step "probe (--kernels: reference form)"; /usr/bin/time -f "probe kernels wall %e s" timeout 200 hspi probe --kernels --out "$R/fingerprint.json" > "$R/probe_kernels.log" 2>&1; echo "rc=$?"; tail -2 "$R/probe_kernels.log"
fi
if has ident; then
  step "identify x10 (expect $EXPECT)"
  for i in $(seq 10); do timeout 120 hspi identify --json --expect "$EXPECT" > "$R/identify_$i.json" 2> "$R/identify_$i.err"; echo "run $i rc=$?" | tee -a "$ROOT/ident_summary.txt"; done
fi
if has valid; then
  step "validations"
  timeout "${VALID_TIMEOUT:-420}" python3 -m hspi_kernels.kernels.validation ${VALID:-cuda_core tensor_core attention_sfu triton} --out "$R/valid" --scale "${SCALE:-1}" > "$R/valid.log" 2>&1; echo "rc=$?"; tail -30 "$R/valid.log"
  grep -E "PASS|FAIL|passed" "$R/valid"/*/*.log 2>/dev/null | tail -5
  # SFU tables: keep the ex2 ones (native-mode replay); the rest are summarised by their digests
  if [ -d "$R/valid/attention_sfu" ]; then
    mkdir -p "$ROOT/sfu"; cp -r "$R"/valid/attention_sfu/sfu_ex2* "$ROOT/sfu/" 2>/dev/null
    rm -rf "$R"/valid/attention_sfu/sfu_*
    (cd "$ROOT" && tar czf sfu_ex2.tgz sfu && rm -rf sfu)
  fi
fi
if has attn; then
  step "triton attention validation"
  timeout "${ATTN_TIMEOUT:-200}" python3 -c "from hspi_kernels.kernels.validation import triton_kernels as V; r = V.run('$R/attn', sections=['attention']); print('attention passed:', r['passed'])" > "$R/attn.log" 2>&1; echo "rc=$?"; tail -3 "$R/attn.log"
fi
if has sanit; then
  step "compute-sanitizer"; SANITIZE_WORK=/tmp/hspi_sanwork timeout "${SANIT_TIMEOUT:-300}" bash scripts/gpu_sanitize.sh "$R/sanit" > "$R/sanit.log" 2>&1; echo "rc=$?"; tail -25 "$R/sanit.log"
  tar czf "$R/sanit/logs.tgz" -C /tmp hspi_sanwork 2>/dev/null
fi
if has bench; then
  step "bench"; timeout 200 python3 -m pytest -q -s -p no:cacheprovider bench/bench_cuda_gemm.py bench/bench_cuda_reduction.py bench/bench_triton.py --benchmark-json "$R/bench.json" > "$R/bench.log" 2>&1; echo "rc=$?"; tail -30 "$R/bench.log"
fi
if has dump; then step "tc dump"; timeout 150 python3 scripts/tc_dump.py "$ROOT/tc_blocks.npz"; echo "rc=$?"; fi
if has card; then step "card + reveal"; timeout "${CARD_TIMEOUT:-300}" python3 scripts/gpu_card_reveal.py "$R/card" ${CARD_ARGS:-} > "$R/card.log" 2>&1; echo "rc=$?"; tail -30 "$R/card.log"; fi
if has trace; then step "trace"; timeout 300 python3 scripts/gpu_trace.py "$ROOT/trace" ${TRACE_ARGS:-} > "$R/trace.log" 2>&1; echo "rc=$?"; tail -20 "$R/trace.log"; ls -la "$ROOT/trace"; for f in "$ROOT"/trace/*; do mv "$f" "$ROOT/t_$(basename "$f")"; done; rmdir "$ROOT/trace"; fi
if has models; then step "models"; timeout "${MODELS_TIMEOUT:-330}" python3 scripts/gpu_models.py "$ROOT/models" ${MODELS_ARGS:-} > "$R/models.log" 2>&1; echo "rc=$?"; tail -25 "$R/models.log"; ls -la "$ROOT/models"; for f in "$ROOT"/models/*; do mv "$f" "$ROOT/m_$(basename "$f")"; done; rmdir "$ROOT/models"; fi
if has fp8; then step "fp8 -> fp16 decision"; timeout "${FP8_TIMEOUT:-240}" python3 -m hspi_kernels.kernels.validation.fp8_f16 "$R/fp8" > "$R/fp8.log" 2>&1; echo "rc=$?"; tail -4 "$R/fp8.log"; [ -f "$R/fp8/fp8_f16_blocks.npz" ] && mv "$R/fp8/fp8_f16_blocks.npz" "$ROOT/"; fi
if has gtest; then step "GPU tests"; timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_triton_gpu.py > "$R/gtest_triton.log" 2>&1; echo "rc=$?"; tail -2 "$R/gtest_triton.log"; timeout "${GTEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -m "gpu or sm90" -o addopts="" --ignore=tests/test_triton_gpu.py tests/ > "$R/gtest.log" 2>&1; echo "rc=$?"; tail -6 "$R/gtest.log"; fi
if has sdpa; then step "sdpa orders"; timeout "${SDPA_TIMEOUT:-240}" python3 -m hspi_kernels.trace.sdpa_orders "$R/sdpa" --budget-s "${SDPA_BUDGET:-180}" > "$R/sdpa.log" 2>&1; echo "rc=$?"; tail -25 "$R/sdpa.log"; [ -f "$R/sdpa/sdpa_orders_cases.npz" ] && mv "$R/sdpa/sdpa_orders_cases.npz" "$ROOT/"; [ -f "$R/sdpa/sdpa_orders_sfu_long.npz" ] && mv "$R/sdpa/sdpa_orders_sfu_long.npz" "$ROOT/"; fi
if has cmap; then step "compile map (cuda)"; for m in ${CMAP_MODELS:-qwen2.5-0.5b}; do timeout "${CMAP_TIMEOUT:-240}" python3 -m hspi_kernels.trace.compiled "$R/cmap_$m" --model "$m" --device cuda > "$R/cmap_$m.log" 2>&1; echo "rc=$?"; tail -4 "$R/cmap_$m.log"; done; fi
if has fwops; then step "framework ops (cuda)"; timeout "${FWOPS_TIMEOUT:-200}" python3 -m hspi_kernels.trace.frameworks "$R/fwops" --device cuda > "$R/fwops.log" 2>&1; echo "rc=$?"; tail -16 "$R/fwops.log"; fi
if has cov; then step "coverage (missing pairs)"; timeout "${COV_TIMEOUT:-420}" python3 -m hspi_kernels.trace.coverage "$R/cov" ${COV_ARGS:---models qwen2.5-0.5b,gpt2-small --pairs b1:b8 --budget-s 300} > "$R/cov.log" 2>&1; echo "rc=$?"; grep -v "^  " "$R/cov.log" | tail -12; fi
if has bbax; then step "blackbox: compile + framework axes"; timeout "${BBAX_TIMEOUT:-540}" python3 -m hspi_kernels.models.gpu_blackbox "$R/bbax" ${BBAX_ARGS:---budget-s 500 --stacks bf16.torch.batched.compile,bf16.jax.batched --small-pairs "" --temperatures 0.7 --probe-small-pairs "" --probe-pool 0} > "$R/bbax.log" 2>&1; echo "rc=$?"; tail -20 "$R/bbax.log"; fi
if has bbpr; then step "blackbox: small-block probes"; timeout "${BBPR_TIMEOUT:-500}" python3 -m hspi_kernels.models.gpu_blackbox "$R/bbpr" ${BBPR_ARGS:---budget-s 470 --stacks bf16.fixed.batched --small-pairs bf16.torch.b8:bf16.fixed.b8,bf16.torch.b16:bf16.torch.b8 --small-rows 16 --temperatures 0.7 --queries 1,2,4 --probe-small-pairs bf16.torch.b8:bf16.fixed.b8,bf16.torch.b16:bf16.torch.b8 --probe-pool 0 --probe-temperatures 0.7,0} > "$R/bbpr.log" 2>&1; echo "rc=$?"; tail -24 "$R/bbpr.log"; fi
if has covp; then step "coverage in ${COVP_N:-3} parallel parts"; n=${COVP_N:-3}
  for i in $(seq 0 $((n - 1))); do timeout "${COVP_TIMEOUT:-500}" python3 -m hspi_kernels.trace.coverage "$R/covp$i" ${COVP_ARGS:---models llama-3.2-1b --pairs cpu:b1 --budget-s 480} --part "$i/$n" > "$R/covp$i.log" 2>&1 & done
  wait; for i in $(seq 0 $((n - 1))); do echo "part $i/$n:"; grep -v "^  " "$R/covp$i.log" | tail -5; done; fi
if has amiss; then step "attention misses"; timeout "${AMISS_TIMEOUT:-240}" python3 scripts/gpu_attn_miss.py "$R/amiss" ${AMISS_ARGS:-} > "$R/amiss.log" 2>&1; echo "rc=$?"; tail -40 "$R/amiss.log"; for f in "$R"/amiss/*_flash.npz "$R"/amiss/*_cudnn.npz; do [ -f "$f" ] && mv "$f" "$ROOT/"; done; fi
if has cpuat; then step "host CPU flash attention capture"; timeout "${CPUAT_TIMEOUT:-180}" python3 scripts/cpu_flash_capture.py "$ROOT" > "$R/cpuat.log" 2>&1; echo "rc=$?"; tail -52 "$R/cpuat.log"; fi
if has cost; then step "hspi bench"; SKIP_INSTALL=1 OUT="$R/cost" timeout "${COST_TIMEOUT:-300}" bash scripts/gpu_bench.sh > "$R/cost.log" 2>&1; echo "rc=$?"; tail -16 "$R/cost.log"; fi
if [ -n "$(ls -A "$R")" ]; then tar czf "$ROOT/rec.tgz" -C "$ROOT" rec; fi
rm -rf "$R"
ls -la "$ROOT"
