#!/usr/bin/env bash
# Kernel cost on a fresh GPU machine, installed as a user would (host overhead included):
# install, the launch-cache bit-equality test, then `hspi_kernels.kernels.bench` over every case.
#   OUT=DIR bash scripts/gpu_bench.sh      # bench_cli.json, bench_cli.png, bench.log in DIR
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/hspi_bench}"; mkdir -p "$OUT"
if [ -z "${SKIP_INSTALL:-}" ]; then
  /usr/bin/time -f "install wall %e s" env HSPI_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -25
fi
python3 -m pytest -q -p no:cacheprovider tests/test_triton_gpu.py 2>&1 | tail -25
python3 - "$OUT" ${ONLY:-} <<'PY' 2>&1 | tee "$OUT/bench.log"
import json, sys, time
from pathlib import Path
from hspi_kernels.kernels import bench as B
out = Path(sys.argv[1])
t0 = time.perf_counter()
rec = B.run(only=[a for a in sys.argv[2:]] or None, progress=lambda m: print("..", m, flush=True))
rec["wall_s"] = time.perf_counter() - t0
(out / "bench_cli.json").write_text(json.dumps(rec, indent=1, default=str))
B.plot(rec, out / "bench_cli.png")
print(f"{'case':44s} {'dev ms':>9s} {'dev x':>7s} {'host ms':>9s} {'host x':>7s} {'roof':>6s} {'generic-launch host ms':>22s}")
for r in rec["cases"]:
    if r["status"] != "ok":
        print(f"{r['name']:44s} {r['status']}: {r.get('reason') or r.get('error')}"); continue
    d, h = r["device"], r["host"]
    v = r.get("variant", {}).get("host_ms")
    print(f"{r['name']:44s} {d['ms']:9.4f} {d['ratio']:7.3f} {h['ms']:9.4f} {h['ratio']:7.3f} {r['roofline'] or 0:6.3f} {v or float('nan'):22.4f}")
print("summary", json.dumps(rec["summary"]))
PY
