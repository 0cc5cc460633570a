"""CPU replay, bit for bit, of the attention forward kernel ``csrc/cuda/attention/flash_fwd.cu``
and of the Triton kernel's exact mode (``hspi_kernels.kernels.triton.attention``, the same order with
wgmma dots, BLOCK_M-row causal tiles and a ``Pairwise()`` row sum: :func:`replay`'s arguments).

The kernel's header states the order; this module is that order in numpy:

- ``Q·Kᵀ`` and ``P·V``: the tensor-core plan of the mma.sync rung
  (:func:`hspi_kernels.numerics.plans.tensor_core_gemm` ``(fmt)`` = ``Chain(TensorCore("sm_90",
  fmt, "fp32", path="mma.sync"), k=16)``, the order ``gemm_tensor_core.plan`` declares) through
  :func:`hspi_kernels.numerics.evaluate.gemm`; P·V starts from ``c = rn(acc · alpha)``;
- every other operation: numpy float32 arithmetic (IEEE RNE, subnormals kept) and the exact
  fma :func:`hspi_kernels.numerics.evaluate.fma32`;
- ``EXP``: :func:`exp_exact` ("exact" mode: the kernel's fixed IEEE sequence) or the recorded
  ``ex2.approx.ftz.f32`` table (:class:`SfuTable`, "native" mode) applied to ``rn(x · L2E)``.

The plan language has no node for softmax, so :func:`describe` returns the order as a dict.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ml_dtypes
import numpy as np

from .evaluate import evaluate, fma32, gemm
from .plans import Sequential, tensor_core_gemm

F32 = np.float32
L2E = np.float32(float.fromhex("0x1.715476p+0"))  # rn32(log2 e)
LN2_HI = np.float32(float.fromhex("0x1.62e430p-1"))
LN2_LO = np.float32(float.fromhex("-0x1.05c610p-29"))
EXP_COEFFS = tuple(np.float32(float.fromhex(h)) for h in
                   ("0x1.a01a02p-13", "0x1.6c16c2p-10", "0x1.111112p-7", "0x1.555556p-5", "0x1.555556p-3",
                    "0x1p-1", "0x1p+0", "0x1p+0"))  # 1/7!, ..., 1/2!, 1, 1 (Horner order)
FORMATS = ("bf16", "fp16")
REPLAY_FORMATS = FORMATS + ("fp32",)  # fp32: an fp32 model's attention (needs ``dot_plan``; P is not rounded)
MODES = ("exact", "native")


# ---------------------------------------------------------------------------------------------
# EXP
# ---------------------------------------------------------------------------------------------
def exp_exact(x) -> np.ndarray:
    """The kernel's exact-mode exp, replayed: clamp to [-104, 89] (fmaxf/fminf: NaN -> -104),
    k = rint(rn(x·L2E)), two-step Cody-Waite reduction with fma, degree-7 Taylor Horner with fma,
    then rn(rn(p · 2^(k>>1)) · 2^(k - (k>>1)))."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(all="ignore"):
        x = np.fmin(np.fmax(x, F32(-104.0)), F32(89.0)).astype(F32)
        kf = np.rint((x * L2E).astype(F32)).astype(F32)
        r = fma32(-kf, LN2_HI, x)
        r = fma32(-kf, LN2_LO, r)
        p = fma32(EXP_COEFFS[0], r, EXP_COEFFS[1])
        for c in EXP_COEFFS[2:]:
            p = fma32(p, r, c)
        k = kf.astype(np.int64)
        k1 = k >> 1
        k2 = k - k1
        s1 = ((k1 + 127) << 23).astype(np.uint32).view(F32)
        s2 = ((k2 + 127) << 23).astype(np.uint32).view(F32)
        return ((p * s1).astype(F32) * s2).astype(F32)


# libdevice __nv_logf (CUDA 13.0 nvvm/libdevice/libdevice.10.bc, llvm-dis): its constants as fp32 bits
_LOGF_POLY = tuple(np.uint32(b).view(F32) for b in (0xBE055027, 0x3E1039F6, 0xBDF8CDCC, 0x3E0F2955, 0xBE2AD8B9,
                                                    0x3E4CED0B, 0xBE7FFF22, 0x3EAAAA78))  # Horner order, then -0.5
_LOGF_LN2 = np.uint32(0x3F317218).view(F32)  # rn32(ln 2)


def cuda_logf(x) -> np.ndarray:
    """CUDA's accurate ``logf`` (libdevice ``__nv_logf``, the non-FTZ branch that a build without
    ``-ftz=true`` / ``--use_fast_math`` selects; max error 1 ulp), bit for bit on float32 arrays,
    transcribed operation by operation from CUDA 13.0's libdevice bitcode:

    ``x < 2^-126`` (subnormals, and every negative: fcmp olt) -> ``x = x·2^23``, ``i = -23`` (else 0);
    ``e = (bits(x) - 0x3f2aaaab) & 0xff800000`` (int32), ``m = float(bits(x) - e)`` in [2/3, 4/3),
    ``fe = fma(float(e), 2^-23, i)``, ``f = m - 1``; ``p`` = Horner with fma of the 8 coefficients
    in f, then ``fma(p, f, -0.5)``; ``q = fma(rn(p·f), f, f)``; ``r = fma(fe, rn32(ln 2), q)``; where
    ``bits(x) >= 0x7f800000`` (+inf, NaN, every negative) ``r = fma(x, inf, inf)`` (inf, or NaN:
    returned as the GPU's canonical 0x7fffffff); ``x == 0`` (either sign) -> -inf. Every fma is
    :func:`fma32` (exact, one rounding)."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(all="ignore"):
        small = x < F32(2.0**-126)
        a = np.where(small, (x * F32(2.0**23)).astype(F32), x).astype(F32)
        i = np.where(small, F32(-23.0), F32(0.0)).astype(F32)
        ab = a.view(np.uint32).astype(np.int64)
        e = ((ab - 0x3F2AAAAB) & 0xFF800000) & 0xFFFFFFFF  # 32-bit wrap-around
        m = ((ab - e) & 0xFFFFFFFF).astype(np.uint32).view(F32)
        fe = fma32(e.astype(np.uint32).view(np.int32).astype(F32), F32(2.0**-23), i)
        f = (m - F32(1.0)).astype(F32)
        p = fma32(_LOGF_POLY[0], f, _LOGF_POLY[1])
        for c in _LOGF_POLY[2:] + (F32(-0.5),):
            p = fma32(p, f, c)
        q = fma32((p * f).astype(F32), f, f)
        r = fma32(fe, _LOGF_LN2, q)
        special = ab >= 0x7F800000
        r = np.where(special, np.where(a == F32(np.inf), F32(np.inf), np.uint32(0x7FFFFFFF).view(F32)), r)
        r = np.where(a == F32(0.0), F32(-np.inf), r)
    return r.astype(F32)


# libdevice __nv_expf (CUDA 13.0 libdevice.10.bc, llvm-dis): its constants as fp32 bits
_EXPF_L2E = np.uint32(0x3FB8AA3B).view(F32)  # rn32(log2 e)
_EXPF_L2E_LO = np.uint32(0x32A57060).view(F32)  # log2 e - rn32(log2 e), rounded
_EXPF_L2E_252 = (_EXPF_L2E / F32(252.0)).astype(F32)  # folded at compile time: rn32(rn32(log2 e) / 252)
_EXPF_C3 = F32(12582912.0)  # 1.5 * 2^23


def cuda_expf(x, ex2: Callable) -> np.ndarray:
    """CUDA's accurate ``expf`` (libdevice ``__nv_expf``, the non-FTZ branch: a build without fast
    math), bit for bit on float32 arrays given ``ex2`` = ``ex2.approx.ftz.f32`` (which the function
    calls unconditionally), transcribed from CUDA 13.0's libdevice bitcode:

    ``t = sat(fma(x, rn32(rn32(log2 e) / 252), 0.5))`` (NaN -> 0), ``j = fma.rm(t, 252, 1.5·2^23 + 1)``
    (an integer plus 1.5·2^23), ``k = j - (1.5·2^23 + 127)`` (= floor(252 t) - 126), ``f = fma(x,
    log2e_lo, fma(x, rn32(log2 e), -k))``, result ``rn(ex2(f) · 2^k)`` (``2^k`` from ``bits(j) << 23``).
    ``f`` lies near [0, 1) for every x (the SFU is asked for positive arguments: a table recorded from
    attention walks, whose ex2 arguments are <= 0, does not hold them)."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(all="ignore"):
        t = fma32(x, _EXPF_L2E_252, F32(0.5))
        t = np.where(np.isnan(t), F32(0), np.clip(t, F32(0), F32(1))).astype(F32)
        # t * 252 is exact in float64 and the sum lies in [2^23, 2^24): fma.rm is the floor there
        j = (np.floor(t.astype(np.float64) * 252.0) + (float(_EXPF_C3) + 1.0)).astype(F32)
        k = (j - (_EXPF_C3 + F32(127.0))).astype(F32)
        f = fma32(x, _EXPF_L2E_LO, fma32(x, _EXPF_L2E, -k))
        s2k = (j.view(np.uint32) << np.uint32(23)).view(F32)
        return (np.asarray(ex2(f), dtype=F32) * s2k).astype(F32)


@dataclasses.dataclass
class SfuTable:
    """Recorded outputs of one SFU op: whole binades plus a list of special inputs.

    ``binades``: {(sign, unbiased exponent e): uint32[2^23] outputs for input bits
    ``sign<<31 | (e+127)<<23 | i``}; ``specials``: {input bits: output bits}.
    ``reduction``: ``"ceil"`` when the GPU was checked to satisfy
    ``op(y) == ftz(2^ceil(y) · op(y - ceil(y)))`` on every recorded negative binade with |y| >= 2
    (then inputs below the recorded binades are reduced that way), else ``None``.
    """

    op: str
    binades: dict
    specials: dict = dataclasses.field(default_factory=dict)
    reduction: str | None = None

    def __post_init__(self):
        self._row = np.full(512, -1, dtype=np.int64)
        keys = sorted(self.binades)
        for i, (sign, e) in enumerate(keys):
            self._row[(sign << 8) | (e + 127)] = i
        self._table = np.stack([np.asarray(self.binades[k], dtype=np.uint32) for k in keys]) if keys else None

    def lookup(self, x) -> tuple[np.ndarray, np.ndarray]:
        """(outputs as float32, found mask) for float32 inputs; not found -> NaN."""
        bits = np.asarray(x, dtype=F32).view(np.uint32)
        out = np.full(bits.shape, 0x7FFFFFFF, dtype=np.uint32)
        found = np.zeros(bits.shape, dtype=bool)
        if self._table is not None:
            row = self._row[(bits >> 23).astype(np.int64)]
            hit = row >= 0
            out[hit] = self._table[row[hit], (bits[hit] & 0x7FFFFF).astype(np.int64)]
            found |= hit
        for k, v in self.specials.items():
            m = bits == np.uint32(k)
            out[m] = np.uint32(v)
            found |= m
        return out.view(F32), found

    def ex2(self, y) -> tuple[np.ndarray, np.ndarray]:
        """ex2 of float32 ``y`` from the table, reducing via the exponent where verified.
        Returns (float32 outputs, miss mask); misses are filled with rn32(2^y)."""
        y = np.asarray(y, dtype=F32)
        out, found = self.lookup(y)
        if self.reduction == "ceil":
            need = ~found & np.isfinite(y) & (y < -1) & (y > -(2.0**22))
            if need.any():
                n = np.ceil(y[need]).astype(F32)
                f = (y[need] - n).astype(F32)  # exact, in (-1, 0]
                of, ff = self.lookup(f)
                val = np.ldexp(of.astype(np.float64), n.astype(np.int64))
                val = np.where(np.abs(val) < 2.0**-126, 0.0, val).astype(F32)  # .ftz output
                sub = out[need]
                sub[ff] = val[ff]
                out[need] = sub
                fnd = found[need]
                fnd[ff] = True
                found[need] = fnd
        miss = ~found
        if miss.any():
            with np.errstate(all="ignore"):
                out[miss] = np.exp2(y[miss].astype(np.float64)).astype(F32)
        return out, miss


class SfuOutputs:
    """Recorded outputs of SFU instructions on a finite set of inputs: ``{op: {input bits: output
    bits}}`` for ops of :mod:`hspi_kernels.kernels.cuda.sfu` (``ex2_ftz``, ``rcp``, ``lg2``, ...).
    ``apply(op, x)`` looks every input up and raises ValueError naming the first one not recorded
    (a replay never falls back to another function silently). ``record=live`` (any object with
    the same ``apply``, e.g. :class:`hspi_kernels.kernels.cuda.sfu.LiveSfu` on a GPU) fills the
    table on the fly: what a replay used can then be stored (:meth:`to_arrays`) and replayed on a
    machine without the GPU."""

    def __init__(self, table: dict | None = None, record=None):
        self.table = {op: dict(d) for op, d in (table or {}).items()}
        self.record = record

    def apply(self, op: str, x) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=F32)
        bits = x.view(np.uint32).reshape(-1)
        known = self.table.setdefault(op, {})
        if self.record is not None:
            new = np.unique(bits[[b not in known for b in bits.tolist()]]) if known else np.unique(bits)
            if new.size:
                got = np.asarray(self.record.apply(op, new.view(F32)), dtype=F32).view(np.uint32)
                known.update(zip(new.tolist(), got.tolist()))
        try:
            out = np.fromiter((known[b] for b in bits.tolist()), dtype=np.uint32, count=bits.size)
        except KeyError as exc:
            raise ValueError(f"SfuOutputs: {op} of 0x{exc.args[0]:08x} was not recorded") from None
        return out.view(F32).reshape(x.shape)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """``{f"{op}_in": uint32, f"{op}_out": uint32}`` (sorted by input) for an npz."""
        out = {}
        for op, d in self.table.items():
            k = np.array(sorted(d), dtype=np.uint32)
            out[f"{op}_in"], out[f"{op}_out"] = k, np.array([d[i] for i in k.tolist()], dtype=np.uint32)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "SfuOutputs":
        table = {}
        for name in arrays:
            if name.endswith("_in"):
                op = name[:-3]
                table[op] = dict(zip(np.asarray(arrays[name]).tolist(), np.asarray(arrays[f"{op}_out"]).tolist()))
        return cls(table)


def make_exp(mode: str, ex2_table: SfuTable | None = None, misses: list | None = None) -> Callable:
    """The EXP of a mode as a float32 -> float32 function (native: ex2 table on rn(x·L2E));
    ``misses`` collects the number of table misses per call."""
    if mode == "exact":
        return exp_exact
    if mode != "native":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if ex2_table is None:
        raise ValueError("native mode needs the recorded ex2.approx.ftz table (SfuTable)")

    def exp_native(x):
        with np.errstate(all="ignore"):
            y = (np.asarray(x, dtype=F32) * L2E).astype(F32)
        out, miss = ex2_table.ex2(y)
        if misses is not None:
            misses.append(int(miss.sum()))
        return out

    return exp_native


# ---------------------------------------------------------------------------------------------
# The order
# ---------------------------------------------------------------------------------------------
def split_chunk(Sk: int, block_n: int, splits: int) -> int:
    """Keys per split: ceil(ceil(Sk / BLOCK_N) / splits) · BLOCK_N."""
    blocks = -(-Sk // block_n)
    return -(-blocks // splits) * block_n


def rowsum_order(p: np.ndarray) -> np.ndarray:
    """fp32 row sums of p[..., BLOCK_N] in the kernel's order: lane t of the quad sums the
    columns n with n % 8 in {2t, 2t+1} sequentially in increasing n; then
    (R_0 + R_1) + (R_2 + R_3) (shuffle butterfly xor 1, xor 2)."""
    bn = p.shape[-1]
    lanes = []
    for t in range(4):
        cols = [n for n in range(bn) if (n % 8) // 2 == t]
        acc = p[..., cols[0]].astype(F32)
        for n in cols[1:]:
            acc = (acc + p[..., n]).astype(F32)
        lanes.append(acc)
    return ((lanes[0] + lanes[1]).astype(F32) + (lanes[2] + lanes[3]).astype(F32)).astype(F32)


def round_to_input(x: np.ndarray, fmt: str) -> np.ndarray:
    """RNE of float32 values to bf16/fp16, as float32 (cvt.rn.bf16x2.f32 / cvt.rn.f16x2.f32);
    fp32: the values unchanged."""
    if fmt == "fp32":
        return np.asarray(x, dtype=F32)
    dt = ml_dtypes.bfloat16 if fmt == "bf16" else np.float16
    return np.asarray(x, dtype=F32).astype(dt).astype(F32)


def _mma_plan(fmt: str, path: str = "mma.sync"):
    """The plan of the kernel's two tensor-core dots (the sm_90 GEMM rungs' order)."""
    return tensor_core_gemm(fmt, "fp32", path=path, arch="sm_90")


def _scores(plan, Q, K, V, Skp: int, backend: str):
    """(S = Q·Kᵀ through ``plan`` over K zero-padded to Skp keys, V zero-padded the same way)."""
    BH, Sk, D = K.shape
    Kp = np.zeros((BH, Skp, D), F32)
    Kp[:, :Sk] = K
    Vp = np.zeros((BH, Skp, D), F32)
    Vp[:, :Sk] = V
    return np.stack([gemm(plan, Q[b], np.ascontiguousarray(Kp[b].T), backend=backend) for b in range(BH)]), Vp



def normalise(acc: np.ndarray, l: np.ndarray, recip: Callable | None, *, guard_div: bool) -> np.ndarray:
    """The end of an attention walk, ``O = acc / l`` per row (float32): with ``recip``,
    ``O = rn(acc · inv)``, ``inv = recip(l)`` and 1 where l is 0 or NaN (the kernels' guard);
    without, ``div_rn(acc, l)``, where ``guard_div`` keeps acc unchanged on those rows (the
    flash-2 kernel's inv_sum = 1) and otherwise lets 0 / NaN propagate (the project's kernels)."""
    bad = (l == 0) | np.isnan(l)
    if recip is None:
        with np.errstate(all="ignore"):
            o = (acc / l[..., None]).astype(F32)
        return np.where(bad[..., None], acc, o).astype(F32) if guard_div else o
    inv = np.where(bad, F32(1), recip(np.where(bad, F32(1), l))).astype(F32)
    return (acc * inv[..., None]).astype(F32)

def replay(Q, K, V, *, fmt: str, mode: str = "exact", block_n: int = 32, splits: int = 1, causal: bool = False,
           scale: float | None = None, ex2_table: SfuTable | None = None, round_p: bool = True,
           stats: dict | None = None, dot_path: str = "mma.sync", tile: int = 16, rowsum=None,
           backend: str = "native", exp: Callable | None = None, dot_plan=None,
           recip: Callable | None = None, rowsum_chunk: int = 0, scale2: float | None = None) -> np.ndarray:
    """O [BH, Sq, D] float32 exactly as the kernel computes it. Q [BH, Sq, D], K, V [BH, Sk, D]
    float32 holding ``fmt`` values. ``round_p=False`` (a negative control) skips the RNE of P.
    ``stats`` (a dict) receives ``ex2_misses`` in native mode.

    The defaults are the CUDA kernel's; the Triton exact mode (``hspi_kernels.kernels.triton.attention``)
    is the same order with ``dot_path="wgmma"`` (both dots), ``tile=BLOCK_M`` (the query rows that
    share one causal loop end) and ``rowsum`` = the plan of its row sum (``Pairwise()``; None:
    :func:`rowsum_order`, the CUDA quad order). ``backend``: the evaluator's ("native" C++ or
    "numpy"; same bits). ``exp`` (a float32 -> float32 function) replaces the mode's EXP (the
    log2-domain orders pass an exp2 and a scale holding log2(e)); ``dot_plan`` replaces the
    tensor-core plan of both dots (required for fmt "fp32"). With ``stats``, splits == 1 also
    stores the final row max ``m`` and row sum ``l`` ([BH, Sq] float32) there. ``recip`` (splits ==
    1; a float32 -> float32 function): ``O = rn(acc · recip(l))`` instead of ``div_rn(acc, l)``
    (kernels that multiply by the reciprocal; 1 where l is 0 or NaN). ``rowsum_chunk`` (0: the whole
    block): the block's row sum as partial sums of that many keys each (``rowsum`` order within
    each), added to ``rn(l · alpha)`` one after the other in key order (the CUTLASS memory-efficient
    kernel: one partial per 32-key warp column, summed through shared memory). ``scale2``: the
    score rounded twice, ``s = rn(rn(S · scale) · scale2)`` (default once, ``rn(S · scale)``)."""
    if fmt not in REPLAY_FORMATS or (fmt == "fp32" and dot_plan is None):
        raise ValueError(f"fmt must be one of {FORMATS} (or fp32 with a dot_plan), got {fmt!r}")
    Q, K, V = (np.asarray(x, dtype=F32) for x in (Q, K, V))
    BH, Sq, D = Q.shape
    Sk = K.shape[1]
    scale = np.float32(1.0 / np.sqrt(D) if scale is None else scale)
    misses: list = []
    EXP = exp if exp is not None else make_exp(mode, ex2_table, misses)
    plan = _mma_plan(fmt, dot_path) if dot_plan is None else dot_plan
    if rowsum is None:
        row_sum = rowsum_order
    else:
        def row_sum(p):
            return evaluate(rowsum, np.ascontiguousarray(p, dtype=F32), backend=backend)
    if not round_p:  # un-rounded P cannot enter the tensor-core model: use a plain fp32 dot
        pv_plan = Sequential("fp32", fma=True)
    else:
        pv_plan = plan

    tiles = -(-Sq // tile)
    Sqp = tiles * tile
    chunk = split_chunk(Sk, block_n, splits)
    Skp = max(Sk, splits * chunk) + block_n
    Qp = np.zeros((BH, Sqp, D), F32)
    Qp[:, :Sq] = Q
    S, Vp = _scores(plan, Qp, K, V, Skp, backend)  # [BH, Sqp, Skp]
    rows = np.arange(Sqp)
    tile_end = (rows // tile) * tile + tile

    parts = []
    neg_inf = F32(-np.inf)
    with np.errstate(all="ignore"):
        for s in range(splits):
            kbeg = s * chunk
            kend = np.full(Sqp, min(Sk, kbeg + chunk))
            if causal:
                kend = np.minimum(kend, tile_end)
            m = np.full((BH, Sqp), neg_inf, F32)
            l = np.zeros((BH, Sqp), F32)
            acc = np.zeros((BH, Sqp, D), F32)
            n0 = kbeg
            while n0 < kend.max(initial=0):
                active = n0 < kend  # per row (the kernel's per-tile loop bound)
                keys = n0 + np.arange(block_n)
                sb = (S[:, :, n0:n0 + block_n] * scale).astype(F32)
                if scale2 is not None:
                    sb = (sb * F32(scale2)).astype(F32)
                masked = keys[None, :] >= kend[:, None]
                if causal:
                    masked |= keys[None, :] > rows[:, None]
                sb = np.where(masked[None], neg_inf, sb)
                m_new = np.fmax(m, sb.max(axis=-1))
                m_use = np.where(m_new == neg_inf, F32(0), m_new).astype(F32)
                alpha = EXP((m - m_use).astype(F32))
                p = EXP((sb - m_use[..., None]).astype(F32))
                if rowsum_chunk:
                    l_new = (l * alpha).astype(F32)
                    for j0 in range(0, block_n, rowsum_chunk):
                        l_new = (l_new + row_sum(p[..., j0:j0 + rowsum_chunk])).astype(F32)
                else:
                    l_new = ((l * alpha).astype(F32) + row_sum(p)).astype(F32)
                P = round_to_input(p, fmt) if round_p else p
                c = (acc * alpha[..., None]).astype(F32)
                acc_new = np.stack([gemm(pv_plan, P[b], Vp[b, n0:n0 + block_n], c[b], backend=backend) for b in range(BH)])
                m = np.where(active[None], m_new, m)
                l = np.where(active[None], l_new, l)
                acc = np.where(active[None, :, None], acc_new, acc)
                n0 += block_n
            parts.append((m, l, acc))

        if splits == 1:
            m, l, acc = parts[0]
            O = normalise(acc, l, recip, guard_div=False)  # the project's kernels: a bare div_rn
            if stats is not None:
                stats["m"], stats["l"] = m[:, :Sq], l[:, :Sq]
        else:
            M = parts[0][0]
            for m, _, _ in parts[1:]:
                M = np.fmax(M, m)
            M_use = np.where(M == neg_inf, F32(0), M).astype(F32)
            L = np.zeros_like(M)
            A = np.zeros_like(parts[0][2])
            for m, l, acc in parts:
                w = EXP((m - M_use).astype(F32))
                L = (L + (l * w).astype(F32)).astype(F32)
                A = (A + (acc * w[..., None]).astype(F32)).astype(F32)
            O = (A / L[..., None]).astype(F32)
    if stats is not None:
        stats["ex2_misses"] = int(sum(misses))
    return O[:, :Sq]


def lane_sums(p: np.ndarray, lanes: list | None, alpha: np.ndarray | None, lane_fma: bool) -> list:
    """The flash-attention-2 row sum's per-lane partials after one key block: lane t of the quad
    owns the columns n with n % 8 in {2t, 2t+1} and adds them to its running partial sequentially
    in increasing n; on the first block the partial starts from its first column (zero_init), on
    later blocks from ``rn(partial · alpha)`` (``lane_fma``: the first add contracted into
    ``fma(partial, alpha, p_first)``, the FFMA nvcc forms of ``row_sum *= s; row_sum += p``)."""
    bn = p.shape[-1]
    out = []
    for t in range(4):
        cols = [n for n in range(bn) if (n % 8) // 2 == t]
        if lanes is None:
            acc, rest = p[..., cols[0]].astype(F32), cols[1:]
        elif lane_fma:
            acc, rest = fma32(lanes[t], alpha, p[..., cols[0]]), cols[1:]
        else:
            acc, rest = (lanes[t] * alpha).astype(F32), cols
        for n in rest:
            acc = (acc + p[..., n]).astype(F32)
        out.append(acc)
    return out


def replay_flash2(Q, K, V, *, fmt: str, block_n: int = 128, tile: int = 128, causal: bool = False,
                  scale_log2: float, ex2: Callable, recip: Callable | None, lane_fma: bool = True,
                  reverse: bool = True, dot_plan=None, stats: dict | None = None,
                  backend: str = "native", splits: int = 1, lse_fn: Callable | None = None,
                  expf: Callable | None = None, logf: Callable | None = None,
                  exp_fma: bool = True) -> np.ndarray:
    """O [BH, Sq, D] float32 in the order of the flash-attention-2 forward kernel (the code PyTorch's
    flash SDPA backend runs on sm_80/sm_90), from Q [BH, Sq, D], K, V [BH, Sk, D] (float32 holding
    ``fmt`` values):

    - ``S = Q·Kᵀ`` raw (no scale) through ``dot_plan`` (default: the mma.sync chain of ``fmt``);
      masked scores -inf (causal top-left, keys >= Sk);
    - key blocks of ``block_n`` per query tile of ``tile`` rows, processed from the tile's last
      block down to block 0 (``reverse``; the kernel reads the one block that needs masking first);
      a causal tile ends at block ceil(min(Sk, tile end) / block_n);
    - per block: ``m_new = max(m, rowmax S)`` on raw scores; ``c`` = ``scale_log2`` (rn32(scale ·
      log2 e)); ``ms = rn(m_new · c)`` (0 if m_new = -inf); ``p = ex2(fma(S, c, -ms))`` (the FFMA the
      kernel's comment asks for; ``exp_fma=False``: ``p = ex2(rn(rn(S · c) - ms))``, the scaled score
      rounded before the subtraction, what the H200 capture's integer-score case int.short shows);
      later blocks ``alpha = ex2(rn(rn(m - m_cur) · c))`` with m_cur = 0
      if -inf; acc from ``c = rn(acc · alpha)`` (first block: +0) ``+ RNE(p)·V`` through the dot;
      the row sum in four lane partials (:func:`lane_sums`);
    - end: ``l = (R0 + R2) + (R1 + R3)`` (shuffle xor 2, then xor 1), ``inv = recip(l)``
      (1 where l is 0 or NaN), ``O = rn(acc · inv)``; ``recip=None``: ``O = div_rn(acc, l)``.

    ``splits`` > 1: the split-KV kernel and its combine kernel (comment in the code); ``lse_fn(m,
    l)`` gives a split's log-sum-exp, ``expf`` / ``logf`` the combine kernel's functions (default
    numpy float32 exp / log).

    ``stats`` receives ``m`` (raw row max) and ``l`` ([BH, Sq]) for the log-sum-exp; with splits,
    ``lse`` (the combine kernel's) instead."""
    if splits > 1 and lse_fn is None:
        raise ValueError("replay_flash2: splits > 1 needs lse_fn (the split kernel's log-sum-exp)")
    expf = expf or (lambda x: np.exp(np.asarray(x, dtype=F32)).astype(F32))
    logf = logf or (lambda x: np.log(np.asarray(x, dtype=F32)).astype(F32))
    if fmt not in REPLAY_FORMATS or (fmt == "fp32" and dot_plan is None):
        raise ValueError(f"fmt must be one of {FORMATS} (or fp32 with a dot_plan), got {fmt!r}")
    Q, K, V = (np.asarray(x, dtype=F32) for x in (Q, K, V))
    BH, Sq, D = Q.shape
    Sk = K.shape[1]
    c = F32(scale_log2)
    plan = _mma_plan(fmt) if dot_plan is None else dot_plan
    nblk = -(-Sk // block_n)
    Skp = nblk * block_n
    S, Vp = _scores(plan, Q, K, V, Skp, backend)  # [BH, Sq, Skp]
    rows = np.arange(Sq)
    keys = np.arange(Skp)
    masked = np.broadcast_to(keys[None, :] >= Sk, (Sq, Skp))
    if causal:
        masked = masked | (keys[None, :] > rows[:, None])
    neg_inf = F32(-np.inf)
    S = np.where(masked[None], neg_inf, S).astype(F32)
    O = np.zeros((BH, Sq, D), F32)
    M = np.full((BH, Sq), neg_inf, F32)
    L = np.zeros((BH, Sq), F32)
    with np.errstate(all="ignore"):
        def part(r, blocks):
            """(m, l, acc) of the query rows r over the key blocks ``blocks`` (in that order)."""
            m = lanes = acc = None
            for j, blk in enumerate(blocks):
                sb = S[:, r, blk * block_n:(blk + 1) * block_n]
                bmax = sb.max(axis=-1)
                m_new = bmax if m is None else np.fmax(m, bmax)
                ms = np.where(m_new == neg_inf, F32(0), (m_new * c).astype(F32)).astype(F32)
                fin = np.isfinite(sb)
                sf = np.where(fin, sb, F32(0))
                arg = (fma32(sf, c, -ms[..., None]) if exp_fma else
                       ((sf * c).astype(F32) - ms[..., None]).astype(F32))
                p = ex2(np.where(fin, arg, sb).astype(F32))  # ex2(-inf) = 0 for masked keys
                P = round_to_input(p, fmt)
                Vb = Vp[:, blk * block_n:(blk + 1) * block_n]
                if j == 0:
                    lanes = lane_sums(p, None, None, lane_fma)
                    cacc = np.zeros((BH, sb.shape[1], D), F32)
                else:
                    m_cur = np.where(m_new == neg_inf, F32(0), m_new).astype(F32)
                    alpha = ex2(((m - m_cur).astype(F32) * c).astype(F32))
                    lanes = lane_sums(p, lanes, alpha, lane_fma)
                    cacc = (acc * alpha[..., None]).astype(F32)
                acc = np.stack([gemm(plan, P[b], Vb[b], cacc[b], backend=backend) for b in range(BH)])
                m = m_new
            l = ((lanes[0] + lanes[2]).astype(F32) + (lanes[1] + lanes[3]).astype(F32)).astype(F32)
            return m, l, normalise(acc, l, recip, guard_div=True)  # flash-2: inv_sum = 1 where l is 0 / NaN

        for t0 in range(0, Sq, tile):
            r = slice(t0, min(Sq, t0 + tile))
            end = min(Sk, t0 + tile) if causal else Sk
            nb = max(1, -(-end // block_n))
            if splits == 1:
                m, l, o = part(r, range(nb - 1, -1, -1) if reverse else range(nb))
                O[:, r], M[:, r], L[:, r] = o, m, l
                continue
            # split-KV: split s owns blocks [s * per, (s + 1) * per) of the whole key range
            # (each walked like the one-split kernel), writes its normalised fp32 O_s and
            # lse_s = lse(m_s, l_s) (-inf when it has no block or l_s = 0); the combine kernel
            # then: lse_max = max_s lse_s (0 if -inf), sum = sum_s expf(rn(lse_s - lse_max)) in
            # split order, LSE = rn(logf(sum) + lse_max) (inf if sum is 0 / NaN),
            # O = fma(expf(rn(lse_s - LSE)), O_s, O) in split order from +0.
            per = -(-(-(-Sk // block_n)) // splits)
            rows = r.stop - r.start
            parts = []
            for sp in range(splits):
                blocks = list(range(sp * per, min((sp + 1) * per, nb)))
                if not blocks:
                    parts.append((np.full((BH, rows), neg_inf, F32), np.zeros((BH, rows, D), F32)))
                    continue
                m, l, o = part(r, blocks[::-1] if reverse else blocks)
                ok = (l != 0) & ~np.isnan(l)
                ls = np.where(ok, lse_fn(np.where(np.isfinite(m), m, F32(0)), np.where(ok, l, F32(1))), neg_inf)
                parts.append((ls.astype(F32), o))
            lmax = parts[0][0]
            for ls, _ in parts[1:]:
                lmax = np.fmax(lmax, ls)
            lmax = np.where(lmax == neg_inf, F32(0), lmax).astype(F32)
            tot = None
            for ls, _ in parts:
                e = expf((ls - lmax).astype(F32))
                tot = e if tot is None else (tot + e).astype(F32)
            bad = (tot == 0) | np.isnan(tot)
            LSE = np.where(bad, F32(np.inf), (logf(np.where(bad, F32(1), tot)) + lmax).astype(F32)).astype(F32)
            acc = np.zeros((BH, rows, D), F32)
            for ls, o in parts:
                w = expf((ls - LSE).astype(F32))
                acc = fma32(np.broadcast_to(w[..., None], o.shape), o, acc)
            O[:, r] = acc
            M[:, r], L[:, r] = LSE, np.nan
    if stats is not None:
        stats["m"], stats["l"] = M, L
        if splits > 1:
            stats["lse"] = M
    return O


def describe(*, fmt: str, mode: str, block_n: int, splits: int, causal: bool) -> dict:
    """The kernel's order as a dict (the plan language has no softmax node)."""
    return {
        "kernel": "csrc/cuda/attention/flash_fwd.cu",
        "qk": repr(_mma_plan(fmt)) + " from +0 over D, then s = rn(S * scale); masked s = -inf",
        "kv_blocks": f"BLOCK_N={block_n} keys per block, in order within each split",
        "splits": f"{splits} contiguous parts of ceil(ceil(Sk/{block_n})/{splits})*{block_n} keys",
        "causal": bool(causal),
        "causal_rule": "top-left: key j visible to query i iff j <= i; loop ends at min(end, tile q0 + 16)",
        "row_max": "m_new = fmaxf(m, max_n s); m_use = m_new, or 0 if -inf",
        "exp": ("exact: clamp [-104, 89], k = rint(rn(x*L2E)), r = fma(-k, LN2_HI, x), r = fma(-k, LN2_LO, r), "
                "Horner fma degree 7 (1/n! rounded to fp32), rn(rn(p*2^(k>>1))*2^(k-(k>>1)))"
                if mode == "exact" else "native: ex2.approx.ftz.f32(rn(x * L2E)) (MUFU.EX2)"),
        "p": "p = EXP(rn(s - m_use)); alpha = EXP(rn(m - m_use))",
        "rowsum": "(R0 + R1) + (R2 + R3), R_t sequential over n with n % 8 in {2t, 2t+1}, increasing n (fp32 p)",
        "l": "l = rn(rn(l * alpha) + rowsum)",
        "pv": f"P = RNE(p) to {fmt}; acc = {_mma_plan(fmt)!r} over the block's keys from c = rn(acc * alpha)",
        "output": "splits == 1: O = div_rn(acc, l)" if splits == 1 else
                  ("combine: M = max m_s, w_s = EXP(rn(m_s - M_use)), L = sum_s rn(l_s w_s) and "
                   "A = sum_s rn(acc_s w_s) sequential from +0 (fp32 RNE), O = div_rn(A, L)"),
        "div": "integer long division, correctly rounded (no MUFU)" if mode == "exact" else "__fdiv_rn (IEEE)",
        "output_dtype": "fp32",
    }
