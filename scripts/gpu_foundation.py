"""Bit-exactness counts of the fma probe (both kernels x both load paths x torch/CuPy inputs)
and a JSON record with platform metadata: ``<out>/foundation_<gpu>.json``. Prints a table last.

Run by ``scripts/gpu_foundation.sh`` after the package is installed; usable alone too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as exc:  # noqa: BLE001 - metadata is best effort
        return f"unavailable: {exc}"


def platform_metadata() -> dict:
    import cupy
    import torch

    import hspi_kernels
    from hspi_kernels import _build_info
    from hspi_kernels.cuda import loader

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]

    def ver(v: int) -> str:
        return f"{v // 1000}.{(v % 1000) // 10}"

    return {
        "gpu": {
            "name": name,
            "cc": f"{props['major']}.{props['minor']}",
            "sm_count": props["multiProcessorCount"],
            "l2_bytes": props["l2CacheSize"],
            "memory_bytes": props["totalGlobalMem"],
            "clock_khz": props.get("clockRate"),
            "device_count": cupy.cuda.runtime.getDeviceCount(),
        },
        "driver": {
            "cuda_driver_api": ver(cupy.cuda.runtime.driverGetVersion()),
            "nvidia_smi": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        },
        "cuda_runtime": ver(cupy.cuda.runtime.runtimeGetVersion()),
        "nvrtc": ".".join(map(str, loader._nvrtc().getVersion())),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cupy": cupy.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "host": {"machine": platform.machine(), "kernel": platform.release()},
        "hspi_kernels": hspi_kernels.__version__,
        "git_commit": _run(["git", "rev-parse", "HEAD"]) or None,
        "build": {
            "nvcc_version": _build_info.NVCC_VERSION,
            "cuda_archs": _build_info.CUDA_ARCHS,
            "cubins": _build_info.CUBINS,
        },
    }


def bit_counts(n: int) -> list[dict]:
    import cupy
    import torch

    from hspi_kernels.cuda import elementwise as ew
    from hspi_kernels.cuda import loader

    host = ew.sample_inputs(n, seed=0)
    refs = {fused: ew.reference(*host, fused=fused) for fused in (True, False)}
    rows = []
    for prefer in ("cubin", "nvrtc"):
        t0 = time.perf_counter()
        try:
            module = loader.load_module(ew.SOURCE, prefer=prefer)
        except loader.CudaUnavailable as exc:
            for fused in (True, False):
                rows.append({"kernel": ew.KERNELS[fused], "path": f"{prefer} FAILED", "arch": None,
                             "inputs": "-", "equal": 0, "n": n, "error": str(exc)})
            print(f"load path {prefer} failed: {exc}", file=sys.stderr)
            continue
        load_s = time.perf_counter() - t0
        for kind in ("torch", "cupy"):
            dev = [torch.from_numpy(x).cuda() for x in host] if kind == "torch" else [cupy.asarray(x) for x in host]
            for fused in (True, False):
                out = ew.fma(*dev, fused=fused, prefer=prefer)
                got = out.cpu().numpy() if kind == "torch" else cupy.asnumpy(out)
                equal = int(np.count_nonzero(got.view(np.uint32) == refs[fused].view(np.uint32)))
                rows.append({
                    "kernel": ew.KERNELS[fused], "path": module.path_taken, "arch": module.arch,
                    "inputs": kind, "equal": equal, "n": n, "load_s": round(load_s, 4),
                    "options": module.options, "plan": repr(ew.plan(fused)),
                })
    # negative control: the unfused reference must not explain the fused kernel
    rows_fused = [r for r in rows if r["kernel"] == ew.KERNELS[True]]
    wrong = int(np.count_nonzero(refs[True].view(np.uint32) != refs[False].view(np.uint32)))
    for r in rows_fused:
        r["negative_control_mismatches"] = wrong
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--pytest-rc", type=int, default=None)
    args = ap.parse_args()

    from hspi_kernels.cuda import loader

    status = loader.status()
    meta = platform_metadata()
    t0 = time.perf_counter()
    rows = bit_counts(args.n)
    elapsed = time.perf_counter() - t0
    ok = all(r["equal"] == r["n"] for r in rows) and args.pytest_rc in (0, None)

    gpu_tag = re.sub(r"[^a-z0-9]+", "-", meta["gpu"]["name"].lower()).strip("-")
    record = {
        "record": "foundation",
        "schema": 1,
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": meta,
        "cuda_status": status,
        "pytest_rc": args.pytest_rc,
        "bit_exact": rows,
        "bit_exact_seconds": round(elapsed, 2),
        "ok": ok,
    }
    path = Path(args.out) / f"foundation_{gpu_tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")

    g = meta["gpu"]
    print(f"\n{g['name']}  sm_{g['cc'].replace('.', '')}  {g['sm_count']} SMs  L2 {g['l2_bytes'] >> 20} MiB  "
          f"driver {meta['driver']['nvidia_smi']}  CUDA rt {meta['cuda_runtime']}  nvrtc {meta['nvrtc']}  "
          f"torch {meta['torch']}  cupy {meta['cupy']}  nvcc {meta['build']['nvcc_version']}")
    print(f"{'kernel':<18} {'load path':<42} {'inputs':<6} {'equal / n':>17}")
    for r in rows:
        mark = "" if r["equal"] == r["n"] else "  MISMATCH"
        print(f"{r['kernel']:<18} {r['path']:<42} {r['inputs']:<6} {r['equal']:>8}/{r['n']:<8}{mark}")
    print(f"pytest rc={args.pytest_rc}   record: {path}   overall: {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
