"""Platform metadata: what machine, GPU and software stack produced a set of outputs.

Everything here is best effort and never raises: a missing torch, GPU, driver or tool is
recorded as ``None`` (with the reason where it helps), because a fingerprint of a GPU-less
machine is still a fingerprint. Heavy modules (torch) are imported only when asked for.
"""

from __future__ import annotations

import ctypes
import glob
import importlib
import importlib.metadata
import os
import platform as _platform
import shutil
import subprocess
import sys
from typing import Any

import numpy as np

from hspi_kernels import __version__


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_dist_version(*names: str) -> str | None:
    for name in names:
        version = _dist_version(name)
        if version:
            return version
    return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine()


#: /proc/cpuinfo flags that decide which CPU kernels (MKL, oneDNN, torch's vector code) run, and so
#: which accumulation order a CPU op has: recorded with every trace and fingerprint
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def cpu_vendor_flags() -> tuple[str | None, list[str] | None]:
    """(vendor_id, the :data:`ISA_FLAGS` this CPU has) from /proc/cpuinfo; (None, None) where there
    is none (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            vendor, flags = None, None
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and vendor is None:
                    vendor = val.strip()
                elif key == "flags" and flags is None:
                    have = set(val.split())
                    flags = [x for x in ISA_FLAGS if x in have]
                if vendor is not None and flags is not None:
                    break
            return vendor, flags
    except OSError:
        return None, None


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def nvcc_runtime_version() -> str | None:
    """`nvcc --version` of the nvcc on PATH now (may differ from the one that built the cubins)."""
    out = _run(["nvcc", "--version"])
    if not out:
        return None
    for line in out.splitlines():
        if "release" in line:
            return line.split("release", 1)[1].strip()
    return out.splitlines()[-1]


def build_info() -> dict[str, Any]:
    """The generated build-info module as a dict (empty with a reason when the build lacks it)."""
    try:
        info = importlib.import_module("hspi_kernels._build_info")
    except ImportError as exc:
        return {"available": False, "reason": f"hspi_kernels._build_info missing: {exc}"}
    return {
        "available": True,
        "cuda_mode": info.HSPI_CUDA_MODE,
        "nvcc": info.NVCC,
        "nvcc_version": info.NVCC_VERSION,
        "cuda_archs": list(info.CUDA_ARCHS),
        "cxx_compiler": info.CXX_COMPILER,
        "openmp": bool(info.OPENMP),
        "cubins": [dict(c) for c in info.CUBINS],
    }


def driver_version() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def cublas_version(torch_module: Any | None = None) -> str | None:
    """cuBLAS version of the library torch loads, read with cublasGetProperty (no handle needed)."""
    candidates = []
    if torch_module is not None:
        torch_lib = os.path.join(os.path.dirname(torch_module.__file__), "lib")
        candidates += glob.glob(os.path.join(torch_lib, "libcublas.so*"))
    for site in sys.path:
        candidates += glob.glob(os.path.join(site, "nvidia", "*", "lib", "libcublas.so*"))
        candidates += glob.glob(os.path.join(site, "nvidia", "cublas", "lib", "libcublas.so*"))
    candidates += ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        parts = []
        for prop in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            value = ctypes.c_int()
            if lib.cublasGetProperty(prop, ctypes.byref(value)) != 0:
                break
            parts.append(str(value.value))
        if len(parts) == 3:
            return ".".join(parts)
    return None


def torch_info(import_torch: bool = True) -> tuple[dict[str, Any], Any | None]:
    """(torch section, torch module or None). Importing torch is the caller's explicit choice."""
    version = _dist_version("torch")
    if version is None or not import_torch:
        return {"version": version, "cuda_runtime": None, "gpus": []}, None
    try:
        import torch
    except Exception as exc:  # a broken torch install must not break the fingerprint
        return {"version": version, "error": f"import failed: {exc}", "gpus": []}, None
    section: dict[str, Any] = {
        "version": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": None,
        "num_threads": torch.get_num_threads(),
        "gpus": [],
    }
    try:
        if torch.cuda.is_available():
            section["cudnn"] = torch.backends.cudnn.version()
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                section["gpus"].append(
                    {
                        "index": index,
                        "name": props.name,
                        "compute_capability": f"{props.major}.{props.minor}",
                        "sm_count": props.multi_processor_count,
                        "l2_bytes": getattr(props, "L2_cache_size", None),
                        "memory_bytes": props.total_memory,
                        "uuid": str(getattr(props, "uuid", "")) or None,
                    }
                )
    except Exception as exc:
        section["cuda_error"] = str(exc)
    return section, torch


def collect(import_torch: bool = True) -> dict[str, Any]:
    """Platform metadata for fingerprints, `hspi env` and benchmark records."""
    torch_section, torch_module = torch_info(import_torch)
    gpus = torch_section.get("gpus", [])
    vendor, flags = cpu_vendor_flags()
    return {
        "hspi_kernels": __version__,
        "python": sys.version.split()[0],
        "os": f"{_platform.system()} {_platform.release()}",
        "machine": _platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_vendor": vendor,
        "cpu_flags": flags,
        "numpy": np.__version__,
        "ml_dtypes": _dist_version("ml_dtypes"),
        "torch": torch_section,
        "triton": _dist_version("triton"),
        "cupy": _first_dist_version("cupy-cuda13x", "cupy-cuda12x", "cupy"),
        "nvcc_runtime": nvcc_runtime_version(),
        "driver": driver_version() if gpus else None,
        "cublas": cublas_version(torch_module) if gpus else None,
        "build": build_info(),
    }


def platform_label(meta: dict[str, Any]) -> str:
    """A short human name: the first GPU's name, else the CPU model."""
    gpus = meta.get("torch", {}).get("gpus") or []
    if gpus:
        return f"{gpus[0]['name']} (sm_{gpus[0]['compute_capability'].replace('.', '')})"
    return f"CPU: {meta.get('cpu_model', 'unknown')}"


def this_cpu() -> dict:
    """This process's CPU and torch, in the fields of a ``platform`` record that order checks
    read (``cpu_vendor``, ``cpu_flags``, ``cpu_model``, ``torch.version``)."""
    vendor, flags = cpu_vendor_flags()
    return {"cpu_vendor": vendor, "cpu_flags": flags, "cpu_model": cpu_model(),
            "torch": {"version": torch_info()[0]["version"]}}
