"""Bit-exact numpy replay of PyTorch's CPU fused attention kernel
``aten::_scaled_dot_product_flash_attention_for_cpu`` (``cpu_flash_attention`` in
aten/src/ATen/native/cpu/FlashAttentionKernel.cpp): what ``F.scaled_dot_product_attention``
runs on CPU for bf16 / fp16 / fp32 inputs without a mask, GQA (``enable_gqa``) included.

Specific to where it was measured: **torch 2.13.0+cpu** (the PyPI CPU wheel, oneDNN 3.12, MKL
2024.2), ``torch.backends.cpu.get_cpu_capability() == "AVX512"`` (16-lane fp32 vectors), on an
AMD EPYC (Zen 4: avx512f/bw/vl/bf16, no avx512_fp16, no AMX), glibc 2.36 (Debian 12). Another
torch version, the AVX2 path (8 lanes, other exp code), another GEMM library or another libm can
give other bits: :data:`MEASURED` records the platform and the tests compare live results only
there (tests/test_attention_cpu_flash.py; a recorded fixture under tests/data/cpu_flash/ is
checked everywhere).

The order (everything fp32 unless said; ``rn`` = round to nearest even, ``fma`` = one rounding):

- Blocks: q rows in blocks of ``qSplit = 256 if Sq >= 768 else 64 if Sq >= 192 else 32`` (at
  most Sq), keys in blocks of ``kvSplit = 512`` (at most Sk); the last block of each is shorter.
  A q block visits the kv blocks that start below ``num_keys = min(m + qBlock, Sk)`` when causal
  (``Sk`` otherwise); causal masking (row r sees keys ``<= r``, top-left aligned) sets ``-inf``
  in the last visited block only, after the Q·Kᵀ GEMM.
- Both GEMMs (Q·Kᵀ over D, P·V over the block's keys): one ``fma`` chain per output element in
  index order, starting from 0. When the reduction length K is over 192 it is cut into panels of
  ``w = min(192, K // 2)`` (``K // w`` panels of w, then the rest), each an fma chain from 0,
  summed left to right (``C = panel_0``, then ``C = rn(C + panel_i)``). For P·V of kv block
  ``n > 0`` the existing output is the first addend (``C = rn(C + panel_i)`` from panel 0; the
  GEMM's beta = 1). Measured only where every GEMM has ``m >= 12`` and ``n >= 4`` (Q·Kᵀ:
  kv block >= 12 keys, q block >= 4 rows; P·V: D >= 12, q block >= 4): smaller GEMMs take another
  kernel (lane-split dots) that this module does not model, so :func:`flash_cpu` refuses them.
  The GEMMs must also run single-threaded, as they do inside the kernel's ``at::parallel_for``
  over ``B · Hq · qSlices`` work items; a lone work item runs outside the parallel region and
  oneDNN / MKL then thread (re-split) the GEMM itself: replayed only for a 1-thread run.
- The q blocking does not show in the bits: every row's arithmetic is the same whichever q block
  it is in (causal: row r visits exactly the kv blocks that start at or below r, all of them
  unmasked but the last, since 512 is a multiple of every qSplit); it only decides the GEMM
  shapes above, so no test can reject a wrong qSplit.
- Scores: ``s = rn(dot · scale)`` (scale after the GEMM, a separate multiply),
  ``scale = float32(1 / sqrt(D))`` (or ``float32(scale)``); row max over the block, then
  ``m_new = max(m_old, blockmax)``.
- exp of ``x = rn(s - m_new)``: the first ``16 · floor(kvBlock / 16)`` keys of the block through
  the 16-lane vector code, the rest ("tail", < 16 keys) scalar. Vector exp: fp32 inputs
  ``exp_u20`` (range reduction by fma with rn32(ln 2), degree-5 Horner polynomial by fma,
  ``2^(n-1) · 2``), bf16 / fp16 inputs ``fexp_u20`` (Malossi et al.: ``x · log2e``, cubic
  correction polynomial by fma on the fraction, then the bits of ``trunc(2^23 · y + 127 · 2^23)``);
  tail: ``rn32(exp((double) x))`` with glibc's double ``exp`` (measured: glibc ``expf`` misses
  27 of 24576 tail values, numpy's ``np.exp`` 9282).
- Row sum of the block: fp32 inputs one 16-lane accumulator, bf16 / fp16 two (16-key chunks
  alternate: chunk 0, 2, 4… into the first, 1, 3, 5… into the second), lanes added
  ``acc0 + acc1`` then reduced by the butterfly (lane i + lane i+8, then +4, +2, +1); then the tail
  added one by one (``rn``), in key order. The sum uses the unrounded exp values.
- P for the P·V GEMM: the exp values, rounded to bf16 / fp16 (RNE) for reduced inputs, kept fp32
  for fp32.
- Online update per row and kv block: ``alpha = expf(m_old - m_new)`` (glibc float ``expf``),
  ``l = fma(alpha, l_old, blocksum)``, ``O = rn(O · alpha)`` (blocks after the first), then
  ``O += P·V`` as above.
- End: ``l == 0 -> 1``, ``m == -inf -> 0``; ``out = rn_fmt(rn(O · rn(1 / l)))``,
  ``lse = rn(m + logf(l))`` (glibc float ``logf``; lse stays fp32 for every input format).

glibc's ``exp`` / ``expf`` / ``logf`` are called through ctypes (the process's own libm), so the
replay needs a glibc machine; every other step is numpy float32 arithmetic and exact fp32 fma
(:func:`_fma`: float64 product and sum, with the project's exact
:func:`hspi_kernels.numerics.evaluate.fma32` wherever the float64 sum could be double rounded).
Output rounding (and P's) is :func:`hspi_kernels.numerics.attention_ref.round_to_input`.

:class:`CpuFlashOrder` holds the choices above; :func:`replay` takes another order (the tests'
negative controls), :func:`flash_cpu` uses :data:`ORDER` or, given ``torch_version``, that
release's order from :data:`ORDERS` (torch 2.11: :data:`ORDER_2_11`, one row-sum accumulator for
every format; measured on the same host).

How it was established: the exp code is the wheel's own (torch/include/ATen/cpu/vec/vec512/
vec512_float.h, ``exp_u20`` / ``fexp_u20``); the blocking, the dispatch on Sq and the online
update follow FlashAttentionKernel.cpp; everything else (GEMM chains and panels, the two
accumulators of the reduced types, the tail and alpha exps, the fma in ``l``, the small-GEMM and
threading limits) was measured against the live kernel with planted inputs (a lone key's score
read back from the lse, one-hot values reading P back from the output) and then confirmed N/N
on random shapes. ``F.scaled_dot_product_attention`` on 3-D tensors does not run this kernel
(it takes the math path); [H, S, D] inputs here mean one batch of the 4-D kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools

import numpy as np

from .attention_ref import round_to_input
from .evaluate import fma32

__all__ = ["MEASURED", "ORDER", "ORDERS", "CpuFlashOrder", "order_for", "release_of", "flash_cpu", "replay", "check_supported", "platform_mismatch",
           "libm_mismatch",
           "exp_u20", "fexp_u20", "gemm_panels", "q_split_size"]

F32 = np.float32
FORMATS = ("bf16", "fp16", "fp32")

#: Where the order was measured; the live tests run only where torch and the capability match.
MEASURED = {
    "torch": "2.13.0+cpu",
    "cpu_capability": "AVX512",
    "isa": "avx512",
    "cpu": "AMD EPYC (Zen 4 flags: avx512f/bw/vl/bf16, no avx512_fp16, no AMX)",
    "cpu_vendor": "AuthenticAMD",
    "cpu_flags": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16"),
    "glibc": "2.36",
    "onednn": "3.12.0",
}

# The flags whose presence changes the kernels MKL / oneDNN pick for the two GEMMs (AMX tiles and
# avx512_fp16 for the reduced types) or whose absence does (avx512_bf16): a CPU differing in one of
# them, or of another vendor (MKL dispatches on it), runs another order. Measured: on an Intel Xeon
# with AMX (vendor GenuineIntel, amx_bf16, avx512_fp16) torch 2.13's kernel differs from this replay
# in bf16, fp16 and fp32 (tests/test_attention_cpu_flash.py's live cases fail there).
_DECISIVE_FLAGS = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def _vendor_of(model: str | None) -> str | None:
    m = (model or "").lower()
    return "AuthenticAMD" if "amd" in m else "GenuineIntel" if "intel" in m else None


def release_of(version: str | None) -> str | None:
    """``"2.11.0+cu130"`` -> ``"2.11"`` (the key of :data:`ORDERS`); None for no version."""
    if not version:
        return None
    parts = str(version).split("+")[0].split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else None


def platform_mismatch(meta: dict) -> str:
    """'' where the platform ``meta`` (a trace's or fingerprint's ``platform`` record, or
    :func:`hspi_kernels.platform.this_cpu` for this process) is one an order of :data:`ORDERS` was
    measured on (its torch release and CPU), else why not (torch version, CPU vendor, a decisive
    ISA flag). Unknown fields are not held against it; an older record without ``cpu_vendor`` is
    judged by its CPU model's name."""
    why = []
    tv = (meta.get("torch") or {}).get("version")
    rel = release_of(tv)
    where = ORDERS[rel][1] if rel in ORDERS else MEASURED
    if tv and rel not in ORDERS:
        why.append(f"torch {tv}")
    vendor = meta.get("cpu_vendor") or _vendor_of(meta.get("cpu_model"))
    if vendor and vendor != where["cpu_vendor"]:
        why.append(f"a {vendor} CPU ({meta.get('cpu_model') or '?'})")
    flags = meta.get("cpu_flags")
    if flags is not None:
        have, want = set(flags), set(where["cpu_flags"])
        extra = [f for f in _DECISIVE_FLAGS if f in have and f not in want]
        missing = [f for f in _DECISIVE_FLAGS if f in want and f not in have]
        if extra:
            why.append("flags " + ", ".join(extra))
        if missing:
            why.append("no " + ", ".join(missing))
    if not why:
        return ""
    measured = "; ".join(f"torch {m['torch']}" for _, m in ORDERS.values())
    return (f"the CPU flash orders were measured on {measured}, each on {where['cpu']}; "
            f"this platform has {'; '.join(why)}")

# Smallest GEMM (m, n) for which the fma-chain order holds (measured, see module docstring).
MIN_GEMM_M = 12
MIN_GEMM_N = 4


@dataclasses.dataclass(frozen=True)
class CpuFlashOrder:
    """The choices of the replay; :data:`ORDER` is the measured one.

    exp_bulk: "auto" (fp32 -> "exp_u20", bf16/fp16 -> "fexp_u20"), or one of "exp_u20",
    "fexp_u20", "rn_exp" (rn32 of the double exp), "expf" (glibc float expf).
    exp_tail / exp_alpha: same names. sum_accumulators: "auto" (fp32 -> 1, bf16/fp16 -> 2) or
    an int >= 1 (16-lane vector accumulators), or 0 for one sequential sum in key order.
    gemm_panel_max: K-panel cap of both GEMMs, None for plain chains over all of K.
    """

    kv_split: int = 512
    q_splits: tuple = ((768, 256), (192, 64), (0, 32))  # (min Sq, qSplit), first match wins
    lanes: int = 16
    exp_bulk: str = "auto"
    exp_tail: str = "rn_exp"
    exp_alpha: str = "expf"
    sum_accumulators: object = "auto"
    round_p: bool = True
    gemm_panel_max: int | None = 192
    l_fma: bool = True


ORDER = CpuFlashOrder()

#: torch 2.11 on the same host and glibc (the wheel the GPU machines carry, 2.11.0+cu130, oneDNN
#: 3.10.2): everything as :data:`ORDER` but the bf16 / fp16 row sum, which is ONE 16-lane
#: accumulator as for fp32 (torch 2.13 alternates two). Measured with scripts/cpu_flash_capture.py:
#: all 45 probe cases N/N under this order, while :data:`ORDER` misses 3-28 lse values on 5 of the 6
#: long reduced-format cases (fixture tests/data/cpu_flash/amd_torch211.npz, tests/test_attention_cpu_releases.py).
MEASURED_2_11 = {**MEASURED, "torch": "2.11.0+cu130", "onednn": "3.10.2"}
ORDER_2_11 = dataclasses.replace(ORDER, sum_accumulators=1)

#: torch release -> (its order, where that order was measured). A release not listed has no order.
ORDERS = {"2.13": (ORDER, MEASURED), "2.11": (ORDER_2_11, MEASURED_2_11)}


def order_for(torch_version: str | None = None) -> tuple[str, CpuFlashOrder]:
    """(release, order) for a torch version (``torch.__version__`` or a trace's record); None: the
    default, torch 2.13. NotImplementedError for a release no order was measured for."""
    rel = "2.13" if torch_version is None else release_of(torch_version)
    if rel not in ORDERS:
        raise NotImplementedError(f"no CPU flash order was measured for torch {torch_version} "
                                  f"(measured: {', '.join(m['torch'] for _, m in ORDERS.values())})")
    return rel, ORDERS[rel][0]


# -- arithmetic -----------------------------------------------------------------------------
def _fma(a, b, c) -> np.ndarray:
    """Exact ``rn32(a*b + c)`` for float32 arrays (broadcasting).

    The float64 product of two float32 is exact; ``s = fl64(p + c)`` rounds to the same float32
    as the exact sum unless s is itself a float32 rounding boundary (a midpoint: every one is a
    float64 number, so an exact sum on the other side of it cannot round past it in float64), or
    s is outside the normal float32 range. Those elements (rare) go through the exact
    :func:`~hspi_kernels.numerics.evaluate.fma32`. An exact-zero s is exact (same sign rules).
    """
    a, b, c = np.broadcast_arrays(np.asarray(a, F32), np.asarray(b, F32), np.asarray(c, F32))
    with np.errstate(over="ignore", invalid="ignore"):
        s = a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)
        r = s.astype(F32)
        mag = np.abs(s)
    midpoint = (s.view(np.uint64) & np.uint64(0x1FFFFFFF)) == np.uint64(0x10000000)
    suspect = midpoint | ((mag < 2.0 ** -125) & (mag > 0)) | ~np.isfinite(r)
    if suspect.any():
        idx = np.nonzero(suspect)
        r[idx] = fma32(a[idx], b[idx], c[idx])
    return r


def _add(a, b) -> np.ndarray:
    return np.add(a, b, dtype=F32)


def _butterfly(acc: np.ndarray) -> np.ndarray:
    """vec_reduce_all: lane i + lane i + L/2, repeated down to one lane (xor 8, 4, 2, 1)."""
    width = acc.shape[-1]
    while width > 1:
        half = width // 2
        acc = _add(acc[..., :half], acc[..., half:width])
        width = half
    return acc[..., 0]


def _bits(u: int) -> np.float32:
    return np.array(u, dtype=np.uint32).view(F32)[()]


_LOG2E = _bits(0x3FB8AA3B)
_LN2 = _bits(0x3F317218)
_LN_FLT_MIN = _bits(0xC2AEAC50)
_LN_FLT_MAX = _bits(0x42B17218)
_U20 = tuple(F32(c) for c in (0.00828929059, 0.0418978221, 0.166676521, 0.499991506, 0.999999701, 1.0))
_F20 = tuple(F32(c) for c in (-0.079204240219773236, -0.22433836478672356, 0.30354260500649682,
                              0.00010703434948458272))
_TWO23 = F32(2.0 ** 23)
_TWO23_127 = F32(2.0 ** 23 * 127)


def exp_u20(x) -> np.ndarray:
    """``Vectorized<float>::exp_u20`` (AVX512), operation by operation."""
    x = np.asarray(x, F32)
    below = x < _LN_FLT_MIN
    src = np.maximum(np.minimum(x, _LN_FLT_MAX), _LN_FLT_MIN)
    fx = np.floor(_fma(src, _LOG2E, F32(0.5)))  # cvt_roundps_epi32(.., NEG_INF), back to float
    r0 = _fma(-fx, _LN2, src)  # fnmadd
    poly = _fma(r0, _U20[0], _U20[1])
    for c in _U20[2:]:
        poly = _fma(r0, poly, c)
    n1 = (fx - F32(1)).astype(np.int64)  # integral: the conversion is exact
    two = (((n1 + 127) & 0xFFFFFFFF) << 23 & 0xFFFFFFFF).astype(np.uint32).view(F32)
    two = np.where(below, F32(0), two)
    return np.multiply(np.multiply(poly, two, dtype=F32), F32(2), dtype=F32)


def fexp_u20(x) -> np.ndarray:
    """``Vectorized<float>::fexp_u20`` (AVX512, the exp of the bf16 / fp16 softmax), op by op."""
    x = np.asarray(x, F32)
    low, high = x < _LN_FLT_MIN, x > _LN_FLT_MAX
    with np.errstate(invalid="ignore", over="ignore"):
        y = np.multiply(x, _LOG2E, dtype=F32)
        frac = np.subtract(y, np.floor(y), dtype=F32)
        poly = _fma(frac, _F20[0], _F20[1])
        poly = _fma(frac, poly, _F20[2])
        poly = _fma(frac, poly, _F20[3])
        y = np.subtract(y, poly, dtype=F32)
        t = _fma(_TWO23, y, _TWO23_127)
        ok = ~(low | high) & np.isfinite(t)
        ints = np.where(ok, np.trunc(np.where(ok, t, 0)), 0).astype(np.int64)  # cvttps_epi32
    ints = np.where(low, 0, np.where(high, 0x7F800000, ints & 0xFFFFFFFF))
    return ints.astype(np.uint32).view(F32)


@functools.lru_cache(maxsize=1)
def libm_mismatch() -> str:
    """'' on the C library the replay's libm calls (exp / expf / logf, through ctypes) were measured
    on (glibc ``MEASURED["glibc"]``, the same for every order of :data:`ORDERS`), else which library
    this process has: another libm may round a rare value otherwise, which is that libm's answer,
    not a replay error."""
    import platform

    lib, ver = platform.libc_ver()
    if lib != "glibc" or ver != MEASURED["glibc"]:
        return f"the replay's libm calls were measured on glibc {MEASURED['glibc']}; here {lib or '?'} {ver or '?'}"
    return ""


def _libm():
    name = ctypes.util.find_library("m") or "libm.so.6"
    lib = ctypes.CDLL(name)
    funcs = {}
    for fname, ctype in (("exp", ctypes.c_double), ("expf", ctypes.c_float), ("logf", ctypes.c_float)):
        f = getattr(lib, fname)
        f.restype, f.argtypes = ctype, [ctype]
        funcs[fname] = np.frompyfunc(f, 1, 1)
    return funcs


def _libm_call(fname: str, x) -> np.ndarray:
    x = np.asarray(x, F32)
    if x.size == 0:
        return x.copy()
    return _libm()[fname](x.astype(np.float64)).astype(np.float64).astype(F32)


def rn_exp(x) -> np.ndarray:
    """rn32(glibc exp((double) x)): the scalar tail of the softmax."""
    return _libm_call("exp", x)


def expf(x) -> np.ndarray:
    """glibc ``expf``: the rescale factor exp(m_old - m_new)."""
    return _libm_call("expf", x)


def logf(x) -> np.ndarray:
    """glibc ``logf``: the lse."""
    return _libm_call("logf", x)


_EXPS = {"exp_u20": exp_u20, "fexp_u20": fexp_u20, "rn_exp": rn_exp, "expf": expf}


# -- blocking -------------------------------------------------------------------------------
def q_split_size(sq: int, order: CpuFlashOrder = ORDER) -> int:
    for min_sq, size in order.q_splits:
        if sq >= min_sq:
            return min(size, sq)
    raise AssertionError("unreachable: the last q_splits entry has min Sq 0")


def gemm_panels(k: int, panel_max: int | None = 192) -> list[int]:
    """Widths of the K panels of one GEMM (each an fma chain from 0, summed in order)."""
    if panel_max is None or k <= panel_max:
        return [k]
    width = min(panel_max, k // 2)
    widths = [width] * (k // width)
    if k % width:
        widths.append(k % width)
    return widths


def _chain_panels(a, b, k: int, panel_max, c0=None) -> np.ndarray:
    """sum_j a[..., j] * b[..., j] over j < k in the GEMM's order; ``c0`` the beta = 1 addend.

    ``a`` and ``b`` give the j-th factors through callables (broadcasting arrays)."""
    out = c0
    start = 0
    for width in gemm_panels(k, panel_max):
        part = F32(0)
        for j in range(start, start + width):
            part = _fma(a(j), b(j), part)
        out = part if out is None else _add(out, part)
        start += width
    return out


def check_supported(sq: int, sk: int, d: int, *, causal: bool = False, work_items: int = 2,
                    torch_threads: int | None = None, order: CpuFlashOrder = ORDER) -> None:
    """NotImplementedError for shapes where torch's GEMMs leave the modelled fma-chain kernel.

    Every q block needs >= 4 rows, every visited kv block >= 12 keys (causal: the blocks that
    start below the last q block's ``num_keys = min(Sq, Sk)``), and D >= 12 (smaller GEMMs take a
    small-matrix kernel). And the GEMMs must run on one thread: the kernel's
    ``at::parallel_for`` over ``work_items = B · Hq · qSlices`` runs a single work item inline,
    outside a parallel region, where oneDNN / MKL thread the GEMM itself and so split it into
    smaller pieces (measured at 2 threads: bf16 / fp16 miss with kv blocks of 12..23 keys; at 4
    threads fp32 misses too). A single work item is therefore accepted only for
    ``torch_threads == 1`` (the torch thread count of the run being replayed)."""
    qs = q_split_size(sq, order)
    q_last = sq - (-(-sq // qs) - 1) * qs
    ks = min(order.kv_split, sk)
    visited = min(sk, sq) if causal else sk  # the largest num_keys (the last q block)
    kv_sizes = [min(ks, sk - n) for n in range(0, visited, ks)]
    problems = []
    if min(qs, q_last) < MIN_GEMM_N:
        problems.append(f"a q block of {min(qs, q_last)} rows (< {MIN_GEMM_N})")
    if min(kv_sizes) < MIN_GEMM_M:
        problems.append(f"a kv block of {min(kv_sizes)} keys (< {MIN_GEMM_M})")
    if d < MIN_GEMM_M:
        problems.append(f"head dim {d} (< {MIN_GEMM_M})")
    if problems:
        raise NotImplementedError(
            "cpu flash replay: " + ", ".join(problems) + ": those GEMMs use a small-matrix kernel "
            "whose order was not measured (see hspi_kernels.numerics.attention_cpu)")
    if work_items < 2 and torch_threads != 1:
        raise NotImplementedError(
            "cpu flash replay: a single work item (B * Hq * q blocks == 1) runs outside torch's "
            "parallel region, where the GEMM library may thread (and so re-split) each GEMM; "
            "replay it only for a run with torch.set_num_threads(1) (pass torch_threads=1)")


# -- the kernel -----------------------------------------------------------------------------
def _check_inputs(q, k, v, fmt):
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    arrs = []
    for name, x in (("q", q), ("k", k), ("v", v)):
        x = np.asarray(x)
        if x.dtype != F32:
            raise TypeError(f"{name} must be a float32 array (holding {fmt} values), got {x.dtype}")
        if x.ndim not in (3, 4):
            raise ValueError(f"{name} must be [B, H, S, D] or [H, S, D], got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} has non-finite values")
        if fmt != "fp32" and not np.array_equal(round_to_input(x, fmt).view(np.uint32), x.view(np.uint32)):
            raise ValueError(f"{name} holds values that are not {fmt} values")
        arrs.append(x)
    q, k, v = arrs
    if not (q.ndim == k.ndim == v.ndim):
        raise ValueError("q, k, v must have the same number of dimensions")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, got {k.shape} and {v.shape}")
    if q.shape[:-3] != k.shape[:-3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {q.shape} and k {k.shape}: batch and head dim must agree")
    hq, hk = q.shape[-3], k.shape[-3]
    if hk == 0 or hq % hk:
        raise ValueError(f"q heads ({hq}) must be a multiple of kv heads ({hk})")
    return q, k, v


def replay(q, k, v, *, fmt: str, causal: bool, scale=None, order: CpuFlashOrder = ORDER,
           check: bool = True, torch_threads: int | None = None):
    """The kernel under ``order``: (out float32 holding ``fmt`` values, lse float32).

    Shapes as :func:`flash_cpu`. ``check=False`` skips :func:`check_supported` (the result is
    then the fma-chain model where torch uses another GEMM kernel)."""
    q, k, v = _check_inputs(q, k, v, fmt)
    squeeze = q.ndim == 3
    if squeeze:
        q, k, v = q[None], k[None], v[None]
    nb, hq, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    if check:
        work_items = nb * hq * -(-sq // q_split_size(sq, order))
        check_supported(sq, sk, d, causal=causal, work_items=work_items, torch_threads=torch_threads, order=order)
    group = hq // hk
    k = np.repeat(k, group, axis=1)  # enable_gqa: q head h reads kv head h // group
    v = np.repeat(v, group, axis=1)
    sc = F32(1.0 / np.sqrt(float(d))) if scale is None else F32(scale)
    reduced = fmt != "fp32"
    exp_bulk = _EXPS[order.exp_bulk if order.exp_bulk != "auto" else ("fexp_u20" if reduced else "exp_u20")]
    exp_tail, exp_alpha = _EXPS[order.exp_tail], _EXPS[order.exp_alpha]
    n_acc = order.sum_accumulators if order.sum_accumulators != "auto" else (2 if reduced else 1)
    lanes = order.lanes

    # Per row: how many keys its q block visits (causal), and where that block starts.
    qs = q_split_size(sq, order)
    rows = np.arange(sq)
    block_start = (rows // qs) * qs
    block_len = np.minimum(qs, sq - block_start)
    num_keys = np.minimum(block_start + block_len, sk) if causal else np.full(sq, sk)
    ks = min(order.kv_split, sk)

    row_max = np.full((nb, hq, sq), -np.inf, F32)
    row_sum = np.zeros((nb, hq, sq), F32)
    acc = np.zeros((nb, hq, sq, d), F32)
    for n in range(0, int(num_keys.max()), ks):
        kvb = min(ks, sk - n)
        kb, vb = k[:, :, n:n + kvb], v[:, :, n:n + kvb]
        visit = n < num_keys  # [sq]
        # Q·Kᵀ: out[r, c] = sum_d q[r, d] k[c, d]
        s = _chain_panels(lambda j: q[:, :, :, j, None], lambda j: kb[:, :, None, :, j], d, order.gemm_panel_max)
        if causal:
            last = (num_keys - n) <= ks
            masked = last[:, None] & (np.arange(kvb)[None, :] > (rows - n)[:, None])
            s = np.where(masked, F32(-np.inf), s)
        s = np.multiply(s, sc, dtype=F32)
        new_max = np.maximum(row_max, s.max(axis=-1))
        dead = new_max == -np.inf  # the kernel writes P = 0 and keeps max / sum
        with np.errstate(invalid="ignore"):
            x = np.subtract(s, np.where(dead, F32(0), new_max)[..., None], dtype=F32)
        nv = lanes * (kvb // lanes)
        e_bulk = exp_bulk(x[..., :nv])
        e_tail = exp_tail(x[..., nv:])
        if n_acc == 0:
            block_sum = np.zeros(x.shape[:-1], F32)
            for e in (e_bulk, e_tail):
                for j in range(e.shape[-1]):
                    block_sum = _add(block_sum, e[..., j])
        else:
            accs = [np.zeros(x.shape[:-1] + (lanes,), F32) for _ in range(n_acc)]
            for ci, c0 in enumerate(range(0, nv, lanes)):
                accs[ci % n_acc] = _add(accs[ci % n_acc], e_bulk[..., c0:c0 + lanes])
            total = accs[0]
            for extra in accs[1:]:
                total = _add(total, extra)
            block_sum = _butterfly(total)
            for j in range(e_tail.shape[-1]):
                block_sum = _add(block_sum, e_tail[..., j])
        p = np.concatenate([e_bulk, e_tail], axis=-1)
        if reduced and order.round_p:
            p = round_to_input(p, fmt)
        p = np.where(dead[..., None], F32(0), p)
        alpha = exp_alpha(np.where(dead, F32(0), np.subtract(row_max, new_max, dtype=F32)))
        if order.l_fma:
            new_sum = _fma(alpha, row_sum, block_sum)
        else:
            new_sum = _add(block_sum, np.multiply(alpha, row_sum, dtype=F32))
        scaled = np.multiply(acc, alpha[..., None], dtype=F32) if n > 0 else acc
        scaled = np.where(dead[..., None], acc, scaled)
        # P·V: out[r, e] = sum_c p[r, c] v[c, e]; beta = 1 after the first kv block
        new_acc = _chain_panels(lambda j: p[..., j, None], lambda j: vb[:, :, None, j, :], kvb,
                                order.gemm_panel_max, c0=scaled if n > 0 else None)
        upd = visit[None, None, :] & ~dead
        row_sum = np.where(upd, new_sum, row_sum)
        row_max = np.where(upd, new_max, row_max)
        acc = np.where(visit[None, None, :, None], new_acc, acc)
    row_sum = np.where(row_sum == 0, F32(1), row_sum)
    row_max = np.where(row_max == -np.inf, F32(0), row_max)
    recip = np.divide(F32(1), row_sum, dtype=F32)
    out = round_to_input(np.multiply(acc, recip[..., None], dtype=F32), fmt)
    lse = _add(row_max, logf(row_sum))
    if squeeze:
        out, lse = out[0], lse[0]
    return out, lse


def flash_cpu(q, k, v, *, fmt: str, causal: bool, scale=None, isa: str = "avx512",
              torch_threads: int | None = None, torch_version: str | None = None):
    """Replay of ``_scaled_dot_product_flash_attention_for_cpu`` (torch CPU, AVX512).

    q: [B, Hq, Sq, D] or [Hq, Sq, D]; k, v: [B, Hkv, Sk, D] (Hq a multiple of Hkv, as
    ``enable_gqa``); float32 arrays holding ``fmt`` values (fmt: "bf16", "fp16", "fp32").
    Returns (out: float32 values rounded to fmt, shape of q; lse: float32 [B, Hq, Sq]).
    ``torch_version``: the torch whose kernel is replayed (:func:`order_for`; None: 2.13, :data:`ORDER`).
    NotImplementedError for another ``isa``, a torch release without a measured order, or shapes
    outside the measured GEMM regime (:func:`check_supported`; ``torch_threads``: the torch thread
    count of the replayed run, needed only for a single work item, B · Hq · q blocks == 1).
    """
    if isa != MEASURED["isa"]:
        raise NotImplementedError(f"only the {MEASURED['isa']!r} path was measured (torch "
                                  f"{MEASURED['torch']}, capability {MEASURED['cpu_capability']}), not {isa!r}")
    _, order = order_for(torch_version)
    return replay(q, k, v, fmt=fmt, causal=causal, scale=scale, order=order, torch_threads=torch_threads)
