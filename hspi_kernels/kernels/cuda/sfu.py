"""SFU probes (``csrc/cuda/sfu/sfu_probe.cu``): approximate PTX special functions over whole fp32
binades, the tables that fingerprint a GPU's special-function unit, and their compressed storage.

Ops (PTX -> sm_90a SASS): ``ex2`` (ex2.approx.f32: FSETP/FMUL scaling around MUFU.EX2),
``ex2_ftz`` (ex2.approx.ftz.f32: a bare MUFU.EX2), ``lg2`` (MUFU.LG2), ``rcp`` (MUFU.RCP),
``rsqrt`` (MUFU.RSQ), ``sin`` (MUFU.SIN), ``cos`` (MUFU.COS), ``tanh`` (MUFU.TANH, sm_75+).

A binade ``(sign, e)`` is the 2^23 fp32 patterns ``sign<<31 | (e+127)<<23 | i``, i.e.
``±[2^e, 2^(e+1))``. :func:`binade_outputs` returns the uint32 outputs ``[n_binades, 2^23]``;
:func:`apply` runs an op on a torch/CuPy float32 array. Storage (:func:`save_table`): per binade,
``savez_compressed`` of the output bits minus the bits of the correctly rounded fp64 reference
(int8 when every delta fits, else int32) plus the xxh3 digest (:func:`hspi_kernels.numerics.bits.digest`)
of the uint32 outputs; :func:`load_table` rebuilds the outputs and refuses a digest mismatch
(a platform whose libm gives a different fp64 reference would be caught there).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from hspi_kernels.numerics.bits import digest
from hspi_kernels.platform.files import atomic_write_npz, atomic_write_text, open_npz_bounded, read_json_bounded, size_limit
from hspi_kernels.kernels.cuda.loader import LaunchContext, import_cupy, load_module
from hspi_kernels.numerics.attention_ref import SfuTable

SOURCE = "sfu/sfu_probe.cu"
BINADE = 1 << 23
OPS = ("ex2", "ex2_ftz", "lg2", "rcp", "rsqrt", "sin", "cos", "tanh")
MUFU = {"ex2": "MUFU.EX2", "ex2_ftz": "MUFU.EX2", "lg2": "MUFU.LG2", "rcp": "MUFU.RCP", "rsqrt": "MUFU.RSQ",
        "sin": "MUFU.SIN", "cos": "MUFU.COS", "tanh": "MUFU.TANH"}
PTX = {"ex2": "ex2.approx.f32", "ex2_ftz": "ex2.approx.ftz.f32", "lg2": "lg2.approx.f32", "rcp": "rcp.approx.f32",
       "rsqrt": "rsqrt.approx.f32", "sin": "sin.approx.f32", "cos": "cos.approx.f32", "tanh": "tanh.approx.f32"}


def _binades(neg=(), pos=()) -> tuple[tuple[int, int], ...]:
    return tuple((1, e) for e in neg) + tuple((0, e) for e in pos)


# Default binades per op. ex2_ftz feeds native attention (arguments rn((s - m)·log2e) <= 0): every
# negative binade from [-2^-23, -2^-24) to [-16, -8), and [0.25, 2) for the floor-reduction check.
DEFAULT_BINADES = {
    "ex2_ftz": _binades(neg=range(-24, 4), pos=(-2, -1, 0)),
    "ex2": _binades(neg=(-1, 0), pos=(-1, 0)),
    "lg2": _binades(pos=(-1, 0, 1)),
    "rcp": _binades(neg=(0,), pos=(0, 1)),
    "rsqrt": _binades(pos=(0, 1, 2)),
    "sin": _binades(neg=(0,), pos=(-2, -1, 0, 1)),
    "cos": _binades(neg=(0,), pos=(-2, -1, 0, 1)),
    "tanh": _binades(neg=(0,), pos=(-3, -2, -1, 0, 1)),
}
# Inputs recorded one by one next to the binades (zeros, infinities, NaN, subnormals, extremes).
SPECIAL_INPUTS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 2.0**-149, -(2.0**-149), 2.0**-126, -(2.0**-126),
                           1e-30, -1e-30, 2.0**-30, -(2.0**-30), 1.0, -1.0, 2.0, -2.0, 100.0, -100.0, 126.0, -126.0,
                           127.0, 128.0, -149.0, -150.0, -1000.0, 1000.0, 3.4e38, -3.4e38], dtype=np.float32)


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")


def binade_base(sign: int, e: int) -> int:
    """Bits of the first pattern of binade ``(sign, e)`` (normal binades only: -126 <= e <= 127)."""
    if sign not in (0, 1):
        raise ValueError(f"sign must be 0 or 1, got {sign!r}")
    if not -126 <= int(e) <= 127:
        raise ValueError(f"binade exponent must be in [-126, 127], got {e!r}")
    return (int(sign) << 31) | ((int(e) + 127) << 23)


def binade_inputs(sign: int, e: int) -> np.ndarray:
    """The 2^23 float32 inputs of a binade, in pattern order."""
    return (np.uint32(binade_base(sign, e)) | np.arange(BINADE, dtype=np.uint32)).view(np.float32)


def plan(op: str) -> dict:
    """What a probe launch computes (no accumulation: the plan language has no node for it)."""
    _check_op(op)
    return {"op": op, "ptx": PTX[op], "sass": MUFU[op], "kernel_binades": f"hspi_sfu_{op}_binades",
            "kernel_list": f"hspi_sfu_{op}_list", "inputs": "every fp32 pattern of each binade",
            "default_binades": [list(b) for b in DEFAULT_BINADES[op]]}


def binade_outputs(op: str, binades=None, *, device: int | None = None, prefer: str | None = None) -> np.ndarray:
    """uint32 outputs ``[len(binades), 2^23]`` of ``op`` on every pattern of each binade (CuPy)."""
    _check_op(op)
    binades = DEFAULT_BINADES[op] if binades is None else tuple(tuple(b) for b in binades)
    if not binades:
        raise ValueError("binades must be non-empty")
    bases = np.array([binade_base(s, e) for s, e in binades], dtype=np.uint32)
    cupy = import_cupy()
    with cupy.cuda.Device(device if device is not None else cupy.cuda.Device().id) as dev:
        module = load_module(SOURCE, prefer=prefer, device=dev.id)
        kernel = module.function(f"hspi_sfu_{op}_binades")
        d_bases = cupy.asarray(bases)
        out = cupy.empty((len(binades), BINADE), dtype=cupy.uint32)
        kernel((1024, len(binades), 1), (256, 1, 1), (d_bases, out, np.int32(len(binades))))
        return cupy.asnumpy(out)


def apply(op: str, x: Any, *, prefer: str | None = None) -> Any:
    """``op`` applied elementwise to a contiguous float32 torch CUDA tensor or CuPy array."""
    _check_op(op)
    kind = type(x).__module__.split(".")[0]
    if kind not in ("torch", "cupy"):
        raise ValueError(f"x: expected a torch CUDA tensor or a CuPy array, got {type(x).__name__}")
    if str(x.dtype).replace("torch.", "") != "float32":
        raise ValueError(f"x: expected float32, got {x.dtype}")
    if not (x.is_contiguous() if kind == "torch" else x.flags.c_contiguous):
        raise ValueError("x: expected a contiguous array")
    with LaunchContext(x) as lc:
        module = load_module(SOURCE, prefer=prefer, device=lc.device_id)
        kernel = module.function(f"hspi_sfu_{op}_list")
        y = lc.empty_like(x)
        n = int(np.prod(x.shape, dtype=np.int64))
        if n:
            kernel((min((n + 255) // 256, 1 << 16),), (256,), (lc.view(x), lc.view(y), np.int64(n)))
    return y


class LiveSfu:
    """:meth:`apply` on numpy float32 arrays through this GPU's SFU (the ``_list`` kernels): the
    ``record`` source of :class:`hspi_kernels.numerics.attention_ref.SfuOutputs` on a GPU."""

    def __init__(self, device: int = 0):
        import torch

        self.device = torch.device("cuda", device)

    def apply(self, op: str, x) -> np.ndarray:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return apply(op, t).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Correctly rounded references, error statistics, storage (CPU)
# ---------------------------------------------------------------------------------------------
def exact64(op: str, x: np.ndarray) -> np.ndarray:
    """The mathematical function in float64 (the reference the approximations are measured by)."""
    _check_op(op)
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    with np.errstate(all="ignore"):
        if op in ("ex2", "ex2_ftz"):
            return np.exp2(x)
        if op == "lg2":
            return np.log2(x)
        if op == "rcp":
            return 1.0 / x
        if op == "rsqrt":
            return 1.0 / np.sqrt(x)
        return {"sin": np.sin, "cos": np.cos, "tanh": np.tanh}[op](x)


def reference_bits(op: str, x: np.ndarray) -> np.ndarray:
    """uint32 bits of the fp64 function rounded to fp32 (RNE; the storage baseline)."""
    with np.errstate(all="ignore"):
        return exact64(op, x).astype(np.float32).view(np.uint32)


def error_stats(op: str, x: np.ndarray, out_bits: np.ndarray) -> dict:
    """Max / mean error in fp32 ulps of the fp64 value, the share of correctly rounded outputs,
    and monotonicity violations: adjacent inputs where the output moves against the fp64 function."""
    ref = exact64(op, x)
    out = np.asarray(out_bits, dtype=np.uint32).view(np.float32).astype(np.float64)
    finite = np.isfinite(ref) & np.isfinite(out) & (np.abs(ref) >= 2.0**-126)
    with np.errstate(all="ignore"):
        ulp = np.exp2(np.floor(np.log2(np.abs(ref))) - 23)
        err = np.abs(out - ref) / ulp
    cr = reference_bits(op, x) == out_bits
    d_ref = np.sign(np.diff(ref))
    d_out = np.sign(np.diff(out))
    both = np.isfinite(np.diff(ref)) & np.isfinite(np.diff(out))
    viol = int(np.sum(both & (d_out != 0) & (d_ref != 0) & (d_out != d_ref)))
    return {"outputs": int(out_bits.size), "finite_compared": int(finite.sum()),
            "max_ulp": float(err[finite].max()) if finite.any() else None,
            "mean_ulp": float(err[finite].mean()) if finite.any() else None,
            "correctly_rounded": int(cr.sum()), "monotonicity_violations": viol}


def _save_binade(args) -> dict:
    """Compress one binade and measure it (a process-pool task)."""
    op, sign, e, row, folder = args
    x = binade_inputs(sign, e)
    delta = row.astype(np.int64) - reference_bits(op, x).astype(np.int64)
    small = np.abs(delta).max() <= 127
    row_digest = digest(np.ascontiguousarray(row, dtype=np.uint32))
    # named by content: until the new index.json replaces the old one, the old index still
    # points at its own, untouched files (a table is replaced as a whole or not at all)
    name = f"{'n' if sign else 'p'}{e}.{row_digest}.npz"
    atomic_write_npz(Path(folder) / name, {"delta": delta.astype(np.int8 if small else np.int32)})
    return {"sign": sign, "e": e, "file": name, "bytes": (Path(folder) / name).stat().st_size,
            "digest": row_digest,
            "max_abs_delta_bits": int(np.abs(delta).max()), "stats": error_stats(op, x, row)}


def save_table(out_dir: str | Path, op: str, binades, outputs: np.ndarray, specials: dict | None = None,
               *, workers: int = 1, extra: dict | None = None) -> dict:
    """Write ``<out_dir>/sfu_<op>/<s><e>.<digest>.npz`` per binade and ``index.json`` (digests, sizes,
    error statistics per binade, ``extra`` fields); returns the index. ``workers`` > 1 uses a
    process pool (the fp64 references and zlib dominate the time)."""
    folder = Path(out_dir) / f"sfu_{op}"
    folder.mkdir(parents=True, exist_ok=True)
    index = {"op": op, "ptx": PTX[op], "encoding": "delta = int64(output bits) - int64(rn32(fp64 op)) per binade",
             "binades": [], "specials": {f"0x{k:08x}": f"0x{v:08x}" for k, v in (specials or {}).items()}}
    tasks = [(op, int(s), int(e), np.ascontiguousarray(row), str(folder)) for (s, e), row in zip(binades, outputs)]
    if workers > 1 and len(tasks) > 1:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(min(workers, len(tasks)), mp_context=mp.get_context("fork")) as pool:
            index["binades"] = list(pool.map(_save_binade, tasks))
    else:
        index["binades"] = [_save_binade(t) for t in tasks]
    combined = np.array([int(b["digest"], 16) for b in index["binades"]], dtype=np.uint64)
    index["digest"] = digest(combined)
    stats = [b["stats"] for b in index["binades"]]
    index["summary"] = {
        "max_ulp": max((s["max_ulp"] for s in stats if s["max_ulp"] is not None), default=None),
        "correctly_rounded": sum(s["correctly_rounded"] for s in stats),
        "outputs": sum(s["outputs"] for s in stats),
        "monotonicity_violations": sum(s["monotonicity_violations"] for s in stats),
        "bytes": sum(b["bytes"] for b in index["binades"]),
        "largest_file_bytes": max(b["bytes"] for b in index["binades"]),
    }
    index.update(extra or {})
    atomic_write_text(folder / "index.json", json.dumps(index, indent=1))  # the commit point
    keep = {b["file"] for b in index["binades"]}
    for stale in folder.glob("*.npz"):  # binade files of the table this one replaced
        if stale.name not in keep and _BINADE_FILE.match(stale.name):
            stale.unlink(missing_ok=True)
    return index


_BINADE_FILE = re.compile(r"^[np]-?\d+(\.[0-9a-f]{16})?\.npz$")


MAX_TABLE_FILE_BYTES = 64 << 20  # index.json and each binade npz (2^23 int32 deltas unpack to 32 MiB);
MAX_TABLE_ENV = "HSPI_MAX_SFU_TABLE_MB"  # overrides it


def load_table(folder: str | Path):
    """An :class:`~hspi_kernels.numerics.attention_ref.SfuTable` from :func:`save_table`'s folder;
    ValueError when a rebuilt binade's digest differs from the recorded one."""
    folder = Path(folder)
    limit = size_limit(MAX_TABLE_FILE_BYTES, MAX_TABLE_ENV)
    try:
        index = read_json_bounded(folder / "index.json", limit, kind="SFU table index")
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(index, dict) or not isinstance(index.get("binades"), list) or index.get("op") not in PTX:
        raise ValueError(f"{folder}/index.json: not an SFU table index (needs 'op' and a 'binades' list)")
    binades = {}
    for b in index["binades"]:
        try:
            name, sign, e, want = b["file"], int(b["sign"]), int(b["e"]), b["digest"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{folder}/index.json: damaged binade entry {str(b)[:80]}") from None
        if not isinstance(name, str) or Path(name).name != name:
            raise ValueError(f"{folder}/index.json: binade file {name!r} is not a plain file name")
        x = binade_inputs(sign, e)
        try:
            with open_npz_bounded(folder / name, limit, kind="SFU binade file") as z:
                delta = z["delta"].astype(np.int64)
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
        except KeyError:
            raise ValueError(f"{folder}/{name}: SFU binade file has no 'delta' array") from None
        if delta.shape != x.shape:
            raise ValueError(f"{folder}/{name}: {delta.size} deltas, expected {x.size}")
        row = (reference_bits(index["op"], x).astype(np.int64) + delta).astype(np.uint32)
        if digest(row) != want:
            raise ValueError(f"{folder}/{b['file']}: rebuilt outputs do not match the recorded digest "
                             "(this platform's fp64 reference differs from the recording one's)")
        binades[(sign, e)] = row
    specials = {int(k, 16): int(v, 16) for k, v in index.get("specials", {}).items()}
    return SfuTable(index["op"], binades, specials, index.get("reduction"))
