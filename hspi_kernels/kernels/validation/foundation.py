"""The foundation check of the CUDA side: bit-exactness counts of the fma probe (both kernels x
both load paths x torch/CuPy inputs) and a JSON record with platform metadata:
``<out>/foundation_<gpu>.json``. Prints a table last.

    python -m hspi_kernels.kernels.validation.foundation --out DIR [--n N] [--pytest-rc RC]

Run by ``scripts/gpu_foundation.sh`` after the package is installed (with the rc of its GPU
pytest run); usable alone too. Needs torch, CuPy and a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from hspi_kernels import platform as hspi_platform
from hspi_kernels.platform.files import atomic_write_text
from hspi_kernels.kernels.cuda import elementwise as ew
from hspi_kernels.kernels.cuda import loader
from hspi_kernels.kernels.validation import record_verdict


def platform_metadata() -> dict:
    """The project's one platform record (hspi_kernels.platform.collect) plus the load-path facts
    this record is about: the CUDA driver API and NVRTC versions CuPy sees."""
    import cupy

    def ver(v: int) -> str:
        return f"{v // 1000}.{(v % 1000) // 10}"

    meta = hspi_platform.collect()
    meta["cuda_load_path"] = {
        "cuda_driver_api": ver(cupy.cuda.runtime.driverGetVersion()),
        "cuda_runtime_cupy": ver(cupy.cuda.runtime.runtimeGetVersion()),
        "nvrtc": ".".join(map(str, loader._nvrtc().getVersion())),
    }
    return meta


def bit_counts(n: int) -> list[dict]:
    """One row per (load path, input framework, kernel): outputs equal to the plan's, of n."""
    import cupy
    import torch

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


def run(out_dir: str | Path, n: int = 1 << 20, pytest_rc: int | None = None) -> tuple[dict, Path]:
    """Count, write ``out_dir/foundation_<gpu>.json`` and return (record, its path)."""
    status = loader.status()
    meta = platform_metadata()
    t0 = time.perf_counter()
    rows = bit_counts(n)
    elapsed = time.perf_counter() - t0

    g = gpu_of(meta)
    gpu_tag = re.sub(r"[^a-z0-9]+", "-", g["name"].lower()).strip("-")
    record = {
        "record": "foundation",
        "schema": 1,
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": meta,
        "cuda_status": status,
        "pytest_rc": pytest_rc,
        "bit_exact": rows,
        "bit_exact_seconds": round(elapsed, 2),
    }
    record_verdict(record, verdict_checks(record))
    path = Path(out_dir) / f"foundation_{gpu_tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")
    return record, path


def verdict_checks(record: dict) -> dict[str, bool | None]:
    """The named checks of the record's verdict (``hspi_kernels.kernels.validation.verdict``):
    every count N/N, and the GPU pytest run clean (None when it was not given)."""
    rc = record["pytest_rc"]
    return {"bit_exact": all(r["equal"] == r["n"] for r in record["bit_exact"]),
            "pytest": None if rc is None else rc == 0}


def gpu_of(meta: dict) -> dict:
    gpus = meta["torch"].get("gpus") or [{"name": "no-gpu", "compute_capability": "?", "sm_count": 0, "l2_bytes": 0}]
    return gpus[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--pytest-rc", type=int, default=None)
    args = ap.parse_args(argv)

    record, path = run(args.out, args.n, args.pytest_rc)
    meta, rows, ok, g = record["platform"], record["bit_exact"], record["passed"], gpu_of(record["platform"])
    load = meta["cuda_load_path"]
    print(f"\n{hspi_platform.platform_label(meta)}  {g['sm_count']} SMs  L2 {(g['l2_bytes'] or 0) >> 20} MiB  "
          f"driver {meta['driver']}  CUDA rt {meta['torch']['cuda_runtime']}  nvrtc {load['nvrtc']}  "
          f"torch {meta['torch']['version']}  cupy {meta['cupy']}  nvcc {meta['build'].get('nvcc_version')}")
    print(f"{'kernel':<18} {'load path':<42} {'inputs':<6} {'equal / n':>17}")
    for r in rows:
        mark = "" if r["equal"] == r["n"] else "  MISMATCH"
        print(f"{r['kernel']:<18} {r['path']:<42} {r['inputs']:<6} {r['equal']:>8}/{r['n']:<8}{mark}")
    print(f"pytest rc={args.pytest_rc}   record: {path}   overall: {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
