"""Tensor-core numerics card: the block-model parameters of an unknown MMA path, from feature tests
(Fasi et al. 2021; Khattak & Mikaitis 2025) closed by a fit-and-verify loop.

The black box is a :class:`Unit`: ``mma(a[B, K], b[B, K], c[B]) -> d[B]`` (fp32 bits, fp64 for
an fp64 unit; K a few blocks long, the blocks chained in k order). Feature tests (each one batched call):

- product exactness, block size G (FPRev row: +M at 0, -M at j, ones elsewhere: the count drops
  in steps of G), alignment bits F (1 - 1 + 2^-k survives iff k <= F), term rounding
  (±1.5·2^-F: truncation toward zero / floor / nearest), carries (G terms of 1.75²), output
  fraction bits and rounding (a carried sum plus 0.75 ulp: RZ vs RNE), monotonicity (c = 1-ulp vs
  c = 1 with G terms 2^(-1-F)), subnormal inputs/outputs and their alignment exponent, zero sign,
  low operand bits ignored (tf32);
- closed loop: the proposed :class:`BlockModel` is checked on random and adversarial blocks
  (wide exponent spreads, cancellation, tiny/subnormal values); on a mismatch the parameters the
  tests left uncertain (output rounding, subnormal alignment, zero sign, e_max floor, F±1) are
  searched and the best model kept; the final model is verified on >= 10^5 blocks. Floors that
  no block tells apart are reported as a set.
- second family, pairwise (AMD CDNA1/CDNA2 MFMA, :mod:`hspi_kernels.numerics.amd`): when no
  block model verifies, fp16/bf16 units are fitted, closed loop, against the pairwise unit
  (exact products, a pairwise fp32-RNE tree per group of G, the group sum added to the
  accumulator in fp32 RNE; subnormals kept or flushed): G over the divisors of K, flush both
  ways.
- third family, late c (AMD CDNA3 MFMA, amd's ``fused_rd`` / ``fused_rd_evenodd``;
  :class:`LateCModel`): when neither verifies, fp16/bf16/tf32 units, and the fnuz fp8 units
  (e4m3fnuz, e5m2fnuz, mixed "<a>x<b>"; decoded with ml_dtypes, the feature tests run on the
  exponents both operands hold, no block model), are fitted against a group of G truncated
  products whose sum meets c late: probes of one group (c's rounding down / trunc / RNE from an
  odd significand, the gap past which c is dropped, the sum's grid and rounding where it meets
  c, the even/odd split) propose the parameters, G is fitted over the divisors of K, then a
  coordinate search over every parameter (G, split, F, sum_bits, sum_rounding, c_bits,
  c_rounding, c_drop) on the fit blocks and probes, verified on fresh blocks, mismatches fed back.
- fourth family, plans (fp32 / fp64 operands: AMD fp32/fp64 MFMA): no feature tests; the fma
  chain in k order seeded with c (``numerics.plans.Sequential(fmt, fma=True)``), rn(a*b) then
  add, the reversed order, c added last, and one rounding of the exact sum, scored on random and
  adversarial fp32/fp64 blocks (an fp64 unit takes and returns float64; bits compared as
  uint64), the best verified on fresh blocks.
  The AMD families (pairwise, late c) are not tried on a unit whose path is an NVIDIA one
  (``NVIDIA_PATHS``). The card's ``family`` says which family verified; ``described`` False with
  a ``reason`` when none does, or when the input format is none the families take: such a card
  runs no feature tests and never claims a model.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Callable

import ml_dtypes
import numpy as np

from hspi_kernels.numerics import amd as A
from hspi_kernels.numerics import evaluate as E
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics import tensor_core as TC
from hspi_kernels.numerics.formats import FP32, get_format
from hspi_kernels.numerics.rounding import round_scaled
from hspi_kernels.reveal.targets import to_format

__all__ = ["Unit", "emulated_unit", "amd_unit", "numerics_card", "card_table", "model_params", "LateCModel",
           "late_c_chain", "late_c_of"]

_F32 = np.float32
PARAMS = ("G", "F", "out_format", "out_rounding", "emax_floor", "input_low_bits_ignored",
          "subnormal_exponent", "zero_sign")


@dataclass
class Unit:
    name: str
    in_format: str  # an element format, "fp32" / "fp64", or "<a>x<b>" for mixed fnuz fp8 operands
    K: int
    mma: Callable  # a[B,K], b[B,K], c[B] float32 -> d[B] float32 (float64 throughout for an fp64 unit)
    arch: str = "unknown"
    path: str = "unknown"


@dataclass(frozen=True)
class _Elem:
    """What the card's operand builders need of an element format: exponent range, fraction
    bits, largest finite value, and the RNE cast of float32 values into it."""
    name: str
    emin: int
    emax: int
    frac_bits: int
    max_finite: float

    def cast(self, x):
        if self.name in _FNUZ:  # ml_dtypes: RNE, NaN past the range (callers clip first)
            return np.asarray(x, _F32).astype(_FNUZ[self.name]).astype(_F32)
        return to_format(x, self.name)


# the AMD CDNA3 fp8 formats ("fnuz": bias 8 / 16, no -0, one NaN, no inf): ml_dtypes decodes them
_FNUZ = {"e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "e5m2fnuz": ml_dtypes.float8_e5m2fnuz}


def _elem(name: str) -> _Elem:
    if name in _FNUZ:
        fi = ml_dtypes.finfo(_FNUZ[name])
        return _Elem(name, int(fi.minexp), int(fi.maxexp) - 1, int(fi.nmant), float(fi.max))
    f = get_format(name)
    return _Elem(name, f.emin, f.emax, f.frac_bits, float(f.max_finite))


def _operand_formats(unit: Unit) -> tuple[str, str]:
    """(a's, b's) element format of ``unit``: "<a>x<b>" (mixed fnuz fp8 operands) or one format."""
    fa, sep, fb = unit.in_format.partition("x")
    if sep and fa in _FNUZ and fb in _FNUZ:
        return fa, fb
    return unit.in_format, unit.in_format


def _is_fnuz(unit: Unit) -> bool:
    return all(f in _FNUZ for f in _operand_formats(unit))


def emulated_unit(model: TC.BlockModel, blocks: int = 4) -> Unit:
    """The emulator as a simulated GPU: ``chain(model)`` over ``blocks`` blocks."""
    return Unit(f"emulated:{model.name}", model.in_format, model.G * blocks,
                lambda a, b, c: TC.chain(model, a, b, c), model.arch, model.path)


def amd_unit(model: A.AMDModel, blocks: int = 4) -> Unit:
    """An AMD MFMA preset as a simulated GPU: ``amd.mfma_chain(model)`` over ``blocks`` groups
    (xf32 operands are tf32 words to the card; an fp64 unit takes and returns float64)."""
    fmt = {"xf32": "tf32"}.get(model.in_format, model.in_format)
    if model.in_format_b not in (None, model.in_format):
        fmt = f"{model.in_format}x{model.in_format_b}"  # mixed operands: no single input format
    return Unit(f"emulated:{model.name}", fmt, model.G * blocks, lambda a, b, c: A.mfma_chain(model, a, b, c),
                model.arch, "mfma")


def model_params(model: TC.BlockModel) -> dict:
    return {k: getattr(model, k) for k in PARAMS}


def _chain(model: TC.BlockModel, a, b, c, checked: bool = False) -> np.ndarray:
    """``TC.chain(model, a, b, c)`` through the C++ evaluator (one OP_CHAIN register program: the
    same block arithmetic, property-tested equal to the numpy one), numpy when it is not built.
    ``checked``: the operands were already validated for this model's input format."""
    K = a.shape[-1]
    try:
        E._native()
    except Exception:  # no compiled evaluator: the numpy reference
        return TC.chain(model, a, b, c)
    if K % model.G:
        raise ValueError(f"{model.name}: K={K} is not a multiple of G={model.G}")
    if not checked:
        a = E._check_block_operands(model, np.ascontiguousarray(a, _F32), "a")
        b = E._check_block_operands(model, np.ascontiguousarray(b, _F32), "b")
    prog = P.Program(K, K + 3, K + 2, np.array([[P.OP_CHAIN, K + 2, K + 1, 0, K, 0]], np.int64),
                     np.arange(K, dtype=np.int32), model)
    return E._run_native(prog, np.ascontiguousarray(a, _F32), np.ascontiguousarray(b, _F32),
                         np.ascontiguousarray(c, _F32), False)


# -- operand construction ---------------------------------------------------------------------------
class _Ops:
    def __init__(self, unit: Unit):
        self.u = unit
        # mixed operands: the exponents and fraction bits both formats hold
        fa, fb = (_elem(f) for f in _operand_formats(unit))
        self.emin, self.emax = max(fa.emin, fb.emin), min(fa.emax, fb.emax)
        self.frac = min(fa.frac_bits, fb.frac_bits)
        # index of the first term: the tests put their terms in the *last* block once G is known,
        # so no later block re-aligns (and cuts) the result as its c
        self.offset = 0

    def split(self, e: int):
        """(ea, eb) with ea + eb = e, both normal exponents of the input format, or None."""
        ea = max(self.emin, min(self.emax, e - max(self.emin, min(self.emax, e // 2))))
        ea = max(self.emin, min(self.emax, e // 2 + (e % 2)))
        eb = e - ea
        if not self.emin <= eb <= self.emax:
            ea = max(self.emin, min(self.emax, e - self.emin if e - self.emin <= self.emax else self.emax))
            eb = e - ea
        return (ea, eb) if self.emin <= eb <= self.emax and self.emin <= ea <= self.emax else None

    def blocks(self, rows: list[list[tuple]], cs=None):
        """rows: per block a list of (index, sig_a, exponent) terms a*b = sig_a * 2^exponent;
        returns a, b, c float32 and a mask of the blocks that could be built (a term whose
        exponent is no sum of two normal exponents of the input format leaves its block unbuilt;
        that block is all zeros)."""
        B, K = len(rows), self.u.K
        a = np.zeros((B, K), _F32)
        b = np.zeros((B, K), _F32)
        ok = np.ones(B, bool)
        for r, terms in enumerate(rows):
            for idx, sig, e in terms:
                s = self.split(e)
                # a term past the unit's K (a test needs more terms than the unit has, or more
                # than fit after the offset) leaves its block unbuilt as well
                if s is None or not 0 <= self.offset + idx < K:
                    ok[r] = False
                    a[r] = 0
                    break
                a[r, self.offset + idx] = sig * 2.0 ** s[0]
                b[r, self.offset + idx] = 2.0 ** s[1]
        c = np.zeros(B, _F32) if cs is None else np.asarray(cs, _F32)
        return a, b, c, ok

    def run(self, rows, cs=None):
        """Outputs (float64) of the blocks; NaN where a block could not be built."""
        a, b, c, ok = self.blocks(rows, cs)
        if not ok.any():
            return None
        try:
            d = np.asarray(self.u.mma(a, b, c), dtype=_F32).astype(np.float64)
        except ValueError:
            return None
        return np.where(ok, d, np.nan)


# Tests that probe the block with large terms sit at 2^E0: every input format builds products
# 2^(E0 +- 26) from normal operands (e4m3: 2^7 * 2^7 = 2^14 ... 2^-6 * 2^-6), and every output
# (fp16 included: 2^14 * 3.0625 < 65504, 2^(E0-28) = 2^-14 normal) holds the results.
E0 = 14


def _features(unit: Unit) -> dict:
    o = _Ops(unit)
    K = unit.K
    ev: dict = {}
    # product exactness: (1+2^-m)^2 = 1 + 2^(1-m) + 2^-2m with 2m <= 10 (fits every output)
    m = max(1, min(o.frac, 5))
    pa = np.zeros((1, K), _F32); pb = np.zeros((1, K), _F32)
    pa[0, 0] = pb[0, 0] = 1 + 2.0 ** -m
    exact = (1 + 2.0 ** -m) ** 2
    try:
        d = float(unit.mma(pa, pb, np.zeros(1, _F32))[0])
        ev["product_exact"] = {"value": d == exact, "evidence": f"(1+2^-{m})^2 -> {d!r} (exact {exact!r})"}
    except ValueError as exc:
        ev["product_exact"] = {"value": None, "evidence": str(exc)}
    # block size G: FPRev row with +M at 0 and -M at j, ones elsewhere. M = 2^15 fits an fp16
    # output (the block holding +M hands M on as c); the ones at 2^small stay exact counts in
    # every output (fp16: multiples of its smallest subnormal 2^-24) and fall below M's grid.
    big = min(15, 2 * o.emax - 1)
    small = max(-24, 2 * o.emin)
    rows = []
    for j in range(1, K):
        rows.append([(0, 1.0, big), (j, -1.0, big)] + [(i, 1.0, small) for i in range(1, K) if i != j])
    d = o.run(rows)
    G = None
    if d is not None and np.all(np.isfinite(d)):
        counts = np.round(d / 2.0 ** small).astype(np.int64)
        change = np.flatnonzero(counts != counts[0])
        G = int(change[0] + 1) if change.size else K
        ev["G"] = {"value": G, "evidence": f"ones kept vs j: {counts[:min(len(counts), 2 * G + 2)].tolist()}"}
    # alignment bits F: 2^E0 - 2^E0 + 2^(E0-k) keeps the last term iff k <= F
    ks = list(range(1, 40))
    d = o.run([[(0, 1.0, E0), (1, -1.0, E0), (2, 1.0, E0 - k)] for k in ks])
    F = None
    if d is not None:
        kept = [k for k, v in zip(ks, d) if v == 2.0 ** (E0 - k)]
        tested = [k for k, v in zip(ks, d) if np.isfinite(v)]
        F = max(kept) if kept else 0
        bound = "" if F < max(tested) else f" (lower bound: 2^(E0-k) buildable for k <= {max(tested)} only)"
        ev["F"] = {"value": F, "evidence": f"2^{E0}-2^{E0}+2^({E0}-k) keeps the last term for k <= {F}{bound}"}
    if F:
        d = o.run([[(0, 1.0, E0), (1, -1.0, E0), (2, 1.5, E0 - F - 1)],
                   [(0, 1.0, E0), (1, -1.0, E0), (2, -1.5, E0 - F - 1)]])
        if d is not None and np.all(np.isfinite(d)):
            pos, neg = float(d[0]) / 2.0 ** (E0 - F), float(d[1]) / 2.0 ** (E0 - F)
            mode = {(1.0, -1.0): "truncate toward zero", (1.0, -2.0): "floor", (2.0, -2.0): "nearest"}.get((pos, neg), f"other ({pos}, {neg})")
            ev["term_rounding"] = {"value": mode, "evidence": f"±1.5·2^(E0-F-1) after 2^E0-2^E0 -> ({pos}, {neg}) ulps of 2^(E0-F)"}
    g = G or 4
    # the last block, or, where a block holds fewer than the 3 terms the tests below place (a
    # pairwise unit with G = 2 measures G = 1 or 2), the last 3 slots
    o.offset = max(0, K - max(g, 3)) if K % g == 0 else 0
    pa = np.zeros((1, K), _F32); pb = np.zeros((1, K), _F32)
    pa[0, o.offset:o.offset + g] = 1.75; pb[0, o.offset:o.offset + g] = 1.75
    try:
        d = float(unit.mma(pa, pb, np.zeros(1, _F32))[0])
        ev["carries"] = {"value": d == g * 3.0625, "evidence": f"{g} x 1.75^2 -> {d!r} (exact {g * 3.0625})"}
    except ValueError as exc:
        ev["carries"] = {"value": None, "evidence": str(exc)}

    def with_square(extra_rows, cs=None):
        """blocks whose term 0 is (1.75 * 2^(E0/2))^2 = 3.0625 * 2^E0, plus the given terms."""
        a, b, c, ok = o.blocks(extra_rows, cs)
        a[:, o.offset] = 1.75 * 2.0 ** (E0 // 2); b[:, o.offset] = 1.75 * 2.0 ** (E0 - E0 // 2)
        return np.where(ok, np.asarray(unit.mma(a, b, c), np.float64), np.nan)

    # output fraction bits: S = 3.0625 * 2^E0 plus 2^(E0-m) is kept iff m < out_frac (and m <= F)
    out_frac = None
    S = 3.0625 * 2.0 ** E0
    if F:
        ms = list(range(1, min(F, 30) + 1))
        d = with_square([[(1, 1.0, E0 - mm)] for mm in ms])
        kept = [mm for mm, v in zip(ms, d) if v == S + 2.0 ** (E0 - mm)]
        top = max(kept) if kept else 0
        out_frac = top + 1
        limited = top == F  # every bit above the alignment grid survived: the output is wider than F
        ev["out_fraction_bits"] = {"value": out_frac, "evidence": f"3.0625·2^{E0} + 2^({E0}-m) kept for m <= {top} (F={F})"
                                   + (": output holds at least F+1 bits" if limited else "")}
    # output rounding of S (exponent E0+1, ulp u = 2^(E0+1-out_frac)): with bits below u above
    # the grid, S + 0.75u (RZ -> S, RNE -> S + u); with exactly one bit there, the tie S + 1.5u
    # (S + u is odd: RZ -> S + u, RNE -> S + 2u); with none, rounding never shows in one block.
    if F and out_frac:
        u = 2.0 ** (E0 + 1 - out_frac)
        lowest = E0 - F  # grid exponent
        if E0 - out_frac - 1 >= lowest:
            d = float(with_square([[(1, 1.0, E0 - out_frac), (2, 1.0, E0 - out_frac - 1)]])[0])
            mode = "RZ" if d == S else ("RNE" if d == S + u else f"other ({(d - S) / u} ulp)")
            ev["out_rounding"] = {"value": mode, "evidence": f"S + 0.75 ulp -> S + {(d - S) / u} ulp"}
        elif E0 - out_frac >= lowest:
            d = float(with_square([[(1, 1.0, E0 + 1 - out_frac), (2, 1.0, E0 - out_frac)]])[0])
            mode = "RZ" if d == S + u else ("RNE" if d == S + 2 * u else f"other ({(d - S) / u} ulp)")
            ev["out_rounding"] = {"value": mode, "evidence": f"tie S + 1.5 ulp (odd) -> S + {(d - S) / u} ulp"}
        else:
            ev["out_rounding"] = {"value": None, "evidence": f"unobservable: the output keeps every bit above the "
                                                            f"alignment grid (out_frac {out_frac} > F {F})"}
    # monotonicity: c = 2^E0 (1 - 2^-(p+1)) vs c = 2^E0 with G terms t = 2^(E0-1-F): a unit that
    # aligns to e_max keeps the terms only under the smaller c and can return more for it.
    # That shows only when G*t exceeds the output's step below 2^E0; otherwise (fp16 output, or
    # F so large that nothing is cut) t = that step: no violation can then be seen, and the
    # evidence says so.
    if F and out_frac:
        cfrac = 10 if out_frac == 10 else 23  # c arrives in fp16 for fp16-output units
        visible = g * 2.0 ** (-1 - F) > 2.0 ** -(out_frac + 1)
        t_exp = E0 - 1 - F if visible else E0 - out_frac - 1
        o.offset = 0  # c enters the first block
        a, b, c, ok = o.blocks([[(i, 1.0, t_exp) for i in range(g)]] * 2,
                               [2.0 ** E0 * (1 - 2.0 ** -(cfrac + 1)), 2.0 ** E0])
        if ok.all():
            d = unit.mma(a, b, c)
            note = "" if visible else " (the grid effect is below the output step here: a pass only means none seen)"
            ev["monotonic"] = {"value": not bool(d[0] > d[1]),
                               "evidence": f"{g} x 2^{t_exp - E0}·2^{E0} with c=2^{E0}(1-2^-{cfrac + 1}) -> {float(d[0])!r}, "
                                           f"c=2^{E0} -> {float(d[1])!r}{note}"}
    # subnormal input: smallest subnormal of the format times 2^k
    f = _elem(_operand_formats(unit)[0])  # the subnormal sits in a; b's powers of two in both ranges
    sub = 2.0 ** (f.emin - f.frac_bits)
    kbig = min(o.emax, 100)
    shift = max(1, min(f.frac_bits, 4))  # the subnormal probe sits `shift` binades below emin
    pa = np.zeros((3, K), _F32); pb = np.zeros((3, K), _F32)
    q = max(0, K - max(g, 2)) if K % g == 0 else 0  # the last block (2 slots at least)
    pa[0, q] = sub; pb[0, q] = 2.0 ** kbig
    # alignment of a subnormal: product 2^(emin-shift+kbig) (aligned there, "actual", or at
    # emin+kbig, "emin") plus 2^(emin+kbig-F-1), which only the finer grid of "actual" keeps
    sub_probe = False
    if F and q + 1 < K:
        pa[1, q] = 2.0 ** (f.emin - shift); pb[1, q] = 2.0 ** kbig
        s = o.split(f.emin + kbig - F - 1)
        if s is not None:
            pa[1, q + 1] = 2.0 ** s[0]; pb[1, q + 1] = 2.0 ** s[1]
            sub_probe = True
    pa[2, q] = 2.0 ** max(-70, o.emin); pb[2, q] = 2.0 ** max(-70, o.emin)
    try:
        d = unit.mma(pa, pb, np.zeros(3, _F32)).astype(np.float64)
        ev["subnormal_inputs"] = {"value": "kept" if d[0] == sub * 2.0 ** kbig else "flushed", "evidence": f"{sub}*2^{kbig} -> {d[0]!r}"}
        if sub_probe:
            want_actual = 2.0 ** (f.emin - shift + kbig) + 2.0 ** (f.emin + kbig - F - 1)
            want_emin = 2.0 ** (f.emin - shift + kbig)
            if out_frac is not None and F + 1 - shift > out_frac:
                ev["subnormal_exponent"] = {"value": None, "evidence": f"unobservable at {out_frac} output bits"}
            else:
                value = "actual" if d[1] == want_actual else ("emin" if d[1] == want_emin else None)
                ev["subnormal_exponent"] = {"value": value, "evidence": f"-> {d[1]!r} (actual {want_actual!r}, emin {want_emin!r})"}
        tiny = 2.0 ** (2 * max(-70, o.emin))
        ev["subnormal_output"] = {"value": "kept" if d[2] == np.float32(tiny) and tiny < 2.0 ** -126 else ("n/a" if tiny >= 2.0 ** -126 else "flushed"),
                                  "evidence": f"{tiny!r} -> {d[2]!r}"}
    except ValueError as exc:
        ev["subnormal_inputs"] = {"value": None, "evidence": str(exc)}
    # zero sign: all -0
    a = np.full((1, K), -0.0, _F32); b = np.ones((1, K), _F32)
    d = unit.mma(a, b, np.full(1, -0.0, _F32))
    ev["zero_sign"] = {"value": "ieee" if np.signbit(d[0]) else "positive", "evidence": f"all -0 -> {float(d[0])!r}"}
    # low operand bits (tf32 in fp32 words)
    if unit.in_format == "tf32":
        a = np.zeros((1, K), _F32); b = np.zeros((1, K), _F32)
        a[0, 0] = 1 + 2.0 ** -20; b[0, 0] = 1.0
        try:
            d = float(unit.mma(a, b, np.zeros(1, _F32))[0])
            ev["input_low_bits_ignored"] = {"value": 13 if d == 1.0 else 0, "evidence": f"1+2^-20 -> {d!r}"}
        except ValueError:
            ev["input_low_bits_ignored"] = {"value": 0, "evidence": "non-tf32 operand rejected"}
    return ev


# -- random and adversarial blocks -------------------------------------------------------------------
def _blocks(unit: Unit, count: int, seed: int):
    rng = np.random.default_rng(seed)
    fa, fb = (_elem(x) for x in _operand_formats(unit))
    K = unit.K
    out = []
    per = count // 5
    lo, hi = fa.emin - fa.frac_bits, fa.emax  # a's range (b's: lob, hib; the same for one format)
    lob, hib = fb.emin - fb.frac_bits, fb.emax

    def mk(exps, n, f):
        x = rng.standard_normal(n) * np.exp2(exps)
        x = np.clip(x, -f.max_finite, f.max_finite).astype(np.float32)
        return f.cast(x)

    for kind in range(5):
        shape = (per, K)
        if kind == 0:  # moderate spread
            ea, eb = rng.integers(-8, 8, shape), rng.integers(-8, 8, shape)
            c = (rng.standard_normal(per) * np.exp2(rng.integers(-10, 10, per))).astype(_F32)
        elif kind == 1:  # wide spread
            ea, eb = rng.integers(max(lo, -60), min(hi, 60), shape), rng.integers(max(lob, -60), min(hib, 60), shape)
            c = (rng.standard_normal(per) * np.exp2(rng.integers(-100, 100, per))).astype(_F32)
        elif kind == 2:  # cancellation
            ea, eb = rng.integers(-4, 4, shape), rng.integers(-4, 4, shape)
            c = np.zeros(per, _F32)
        elif kind == 3:  # tiny: products near and below fp32 subnormals, subnormal c
            ea = rng.integers(max(lo, -80), max(lo, -80) + 12, shape)
            eb = rng.integers(max(lob, -80), max(lob, -80) + 12, shape)
            c = (rng.standard_normal(per) * np.exp2(rng.integers(-149, -120, per))).astype(_F32)
        else:  # subnormal operands of the input format
            ea = rng.integers(lo, lo + fa.frac_bits + 3, shape)
            eb = rng.integers(0, min(hib, 100), shape)
            c = np.where(rng.random(per) < 0.5, 0, rng.standard_normal(per) * 2.0 ** -100).astype(_F32)
        a, b = mk(ea, shape, fa), mk(eb, shape, fb)
        if kind == 2:
            half = K // 2
            a[:, half:2 * half] = -a[:, :half]
            b[:, half:2 * half] = b[:, :half]
        zero = rng.random(shape) < 0.1
        a = np.where(zero, 0, a).astype(_F32)
        if unit.in_format == "tf32":
            pass
        out.append((a, b, c))
    a = np.concatenate([x[0] for x in out]); b = np.concatenate([x[1] for x in out]); c = np.concatenate([x[2] for x in out])
    return a, b, c


EPILOGUES = ("fused", "fp32_add")


def _predict(model: TC.BlockModel, epilogue: str, a, b, c) -> np.ndarray:
    """The unit's output under (model, epilogue): ``fused``: c enters the first block as its
    accumulator (the tensor core adds C); ``fp32_add``: the core runs from c = 0 and C is added
    after it in one fp32 RNE addition (a library epilogue: cuBLAS/Triton ``A @ B`` then ``+ C``)."""
    if epilogue == "fused":
        return _chain(model, a, b, c, checked=True)
    core = _chain(model, a, b, np.zeros_like(c), checked=True)
    return (core + c).astype(_F32)


def _matches(model: TC.BlockModel, a, b, c, want_bits, epilogue: str = "fused") -> int:
    try:
        got = _predict(model, epilogue, a, b, c).view(np.uint32)
    except ValueError:
        return -1
    return int(np.sum(got == want_bits))


def _propose(unit: Unit, ev: dict) -> TC.BlockModel:
    get = lambda k, default: ev.get(k, {}).get("value") if ev.get(k, {}).get("value") is not None else default
    out_frac = get("out_fraction_bits", 23)
    F = int(get("F", 24))
    # an output that kept every bit above the grid is at least F+1 bits wide: fp32 unless F+1 <= 13
    if out_frac == F + 1 and out_frac > 13:
        out_frac = 23
    out_format = {10: "fp16", 13: "e8m13"}.get(out_frac, "fp32")
    rounding = get("out_rounding", "RNE" if out_format == "fp16" else "RZ")
    rounding = rounding if rounding in ("RZ", "RNE") else "RZ"
    path = unit.path if unit.path in ("mma.sync", "wgmma", "tcgen05") else "mma.sync"
    return TC.BlockModel(f"card:{unit.name}", unit.arch, path, unit.in_format, out_format, int(get("G", 16)), F,
                         rounding, None, int(get("input_low_bits_ignored", 0)), "hspi card",
                         get("subnormal_exponent", "actual"), get("zero_sign", "ieee"))


FLOOR_CANDIDATES = (None, -126, -127, -133, -134, -149, -150, -160)
# the parameters the closed loop searches (the feature tests fix G, F, the output format and the
# ignored operand bits); for each, the card lists every value that fits the data equally well
SEARCHED = {"out_rounding": ("RZ", "RNE"), "subnormal_exponent": ("actual", "emin"),
            "zero_sign": ("ieee", "positive"), "emax_floor": FLOOR_CANDIDATES}


def _validated(model: TC.BlockModel, a, b):
    return (E._check_block_operands(model, np.ascontiguousarray(a, _F32), "a"),
            E._check_block_operands(model, np.ascontiguousarray(b, _F32), "b"))


# -- the pairwise family (AMD CDNA1/CDNA2 MFMA) ------------------------------------------------------
PAIRWISE_FORMATS = ("fp16", "bf16")
PAIRWISE_G = (1, 2, 4, 8, 16, 32, 64)
PAIRWISE_PARAMS = ("G", "flush_denormals")


def _verify(unit: Unit, predict, va, vb, vc):
    """One verification round of a closed loop: (ok per fresh block: the prediction's bits == the
    unit's, the unit's bits)."""
    vwant = np.asarray(unit.mma(va, vb, vc), dtype=_F32).view(np.uint32)
    return np.asarray(predict(va, vb, vc), dtype=_F32).view(np.uint32) == vwant, vwant


def _grow(unit: Unit, fit_data, va, vb, vc, vwant, bad):
    """The fit data (a, b, c, want_c, want_0) grown by the mismatching blocks ``bad``, with the
    unit's bits for them with their c and with c = 0."""
    a, b, c, want_c, want_0 = fit_data
    zero_c = np.asarray(unit.mma(va[bad], vb[bad], np.zeros(int(bad.sum()), _F32)), dtype=_F32).view(np.uint32)
    return (np.concatenate([a, va[bad]]), np.concatenate([b, vb[bad]]), np.concatenate([c, vc[bad]]),
            np.concatenate([want_c, vwant[bad]]), np.concatenate([want_0, zero_c]))


def _pairwise_model(unit: Unit, G: int, flush: bool) -> A.AMDModel:
    return A.AMDModel(f"card:{unit.name}", unit.arch, "unknown", unit.in_format, "pairwise", G, "hspi card",
                      flush_denormals=flush)


def _pairwise_candidates(unit: Unit) -> list[A.AMDModel]:
    return [_pairwise_model(unit, G, fl) for G in PAIRWISE_G if unit.K % G == 0 for fl in (False, True)]


def _pairwise_card(unit: Unit, a, b, c, want_c, want_0, n_verify: int, seed: int, rounds: int = 2) -> dict:
    """Closed loop over the pairwise family (:func:`_family_card`)."""
    return _family_card(unit, _pairwise_candidates(unit), PAIRWISE_PARAMS, a, b, c, want_c, want_0, n_verify, seed,
                        rounds)


# -- the exact-group family (Khattak & Mikaitis' MI100 model: numerics.amd exact_group) ---------------
EXACT_GROUP_PARAMS = ("G",)


def _exact_group_candidates(unit: Unit) -> list[A.AMDModel]:
    return [A.AMDModel(f"card:{unit.name}", unit.arch, "unknown", unit.in_format, "exact_group", G, "hspi card")
            for G in PAIRWISE_G if unit.K % G == 0]


def _family_card(unit: Unit, cands: list, params: tuple, a, b, c, want_c, want_0, n_verify: int, seed: int,
                 rounds: int = 2) -> dict:
    """Closed loop over one family of AMD models (``amd.mfma_chain`` candidates): every candidate
    scored on the fit blocks (c = 0 and with c), the best verified on fresh blocks; mismatching
    blocks join the fit data (at most ``rounds`` times) and the search runs again."""
    zero = np.zeros_like(c)

    def score(m):
        return (int(np.sum(A.mfma_chain(m, a, b, zero).view(np.uint32) == want_0))
                + int(np.sum(A.mfma_chain(m, a, b, c).view(np.uint32) == want_c)))

    history = []
    for r in range(rounds + 1):
        scores = [score(m) for m in cands]
        best = max(scores)
        model = cands[scores.index(best)]
        history.append({"model": {k: getattr(model, k) for k in params}, "matches": best,
                        "of": 2 * len(c), "searched": len(cands)})
        va, vb, vc = _blocks(unit, max(n_verify, 100), seed + 101 + r)
        ok, vwant = _verify(unit, lambda x, y, z: A.mfma_chain(model, x, y, z), va, vb, vc)
        if ok.all() or r == rounds:
            break
        a, b, c, want_c, want_0 = _grow(unit, (a, b, c, want_c, want_0), va, vb, vc, vwant, ~ok)
        zero = np.zeros_like(c)
    tied = [m for m, s_ in zip(cands, scores) if s_ == best]
    same = {k: sorted({getattr(m, k) for m in tied}) for k in params}
    return {"model": model, "fit": history, "indistinguishable": same, "ok": ok, "vc": vc, "rounds": r + 1}


# -- the late-c family (AMD CDNA3 MFMA: numerics.amd fused_rd / fused_rd_evenodd) --------------------
LATE_C_FORMATS = ("fp16", "bf16", "tf32", "e4m3fnuz", "e5m2fnuz")
# NVIDIA tensor-core paths: the AMD families (pairwise, late_c) are not tried on a unit that says
# it is one (a failing block model there stays "not described" rather than an AMD model)
NVIDIA_PATHS = ("mma.sync", "wgmma", "tcgen05")


@dataclass(frozen=True)
class LateCModel:
    """One group of G products per step, c joining *late* with its own rounding (the CDNA3 MFMA
    model of :mod:`hspi_kernels.numerics.amd`, its constants made parameters). The products (exact,
    a subnormal operand aligned at its format's emin, a zero at -126) are truncated toward zero
    onto 2^(e - F), e their largest exponent, and summed (``split="evenodd"``: the even-k and the
    odd-k products each so, both floored onto the larger exponent's grid and added); the sum and
    c meet at E = max(e, e_c): the sum rounded (``sum_rounding``: "down" | "trunc") onto
    2^(E - sum_bits), c rounded (``c_rounding``: "down" | "trunc" | "RNE") onto 2^(E - c_bits),
    or dropped when e_c < E - ``c_drop`` (None: never); the exact total rounded to fp32 RNE.
    MMA-Sim's CDNA3: F 24, sum 31 down, c 24 down; fp8/bf8: evenodd, c_drop 25."""

    G: int
    a_format: str
    b_format: str
    F: int = 24
    split: str = "none"
    sum_bits: int = 31
    sum_rounding: str = "down"
    c_bits: int = 24
    c_rounding: str = "down"
    c_drop: int | None = None


LATE_C_PARAMS = ("G", "split", "F", "sum_bits", "sum_rounding", "c_bits", "c_rounding", "c_drop")
# every searched parameter's values (G: the divisors of K in PAIRWISE_G)
LATE_C_SEARCHED = {"split": ("none", "evenodd"), "F": (23, 24, 25), "sum_bits": (30, 31, 32),
                   "sum_rounding": ("down", "trunc"), "c_bits": (23, 24, 25), "c_rounding": ("down", "trunc", "RNE"),
                   "c_drop": (None, 24, 25, 26)}


def _round_shift(v, s, mode: str):
    """v * 2^s for int64 v, onto the integers: exact for s >= 0, else rounded "down" (floor),
    "trunc" (toward zero) or "RNE"."""
    v = np.asarray(v, np.int64)
    s = np.asarray(s, np.int64)
    up = v << np.clip(s, 0, 62)
    n = np.clip(-s, 0, 63)
    if mode == "down":
        dn = v >> n
    else:
        mag = np.abs(v)
        q = mag >> n
        if mode == "RNE":
            r = mag - (q << n)
            half = np.where(n > 0, np.int64(1) << np.maximum(n - 1, 0), 0)
            q = q + ((n > 0) & ((r > half) | ((r == half) & ((q & 1) == 1)))).astype(np.int64)
        elif mode != "trunc":
            raise ValueError(f"rounding {mode!r}: one of down, trunc, RNE")
        dn = np.where(v < 0, -q, q)
    return np.where(s >= 0, up, dn)


def _late_c_block(m: LateCModel, a, b, c) -> np.ndarray:
    Ma, Ea = A._parts(a, _elem(m.a_format).emin)
    Mb, Eb = A._parts(b, _elem(m.b_format).emin)
    Pm, Pe = Ma * Mb, Ea + Eb
    F = m.F
    if m.split == "evenodd":
        if a.shape[1] < 2:
            raise ValueError("evenodd needs G >= 2")
        S0, e0 = A._fused_trunc(Pm[:, 0::2], Pe[:, 0::2], F)
        S1, e1 = A._fused_trunc(Pm[:, 1::2], Pe[:, 1::2], F)
        e = np.maximum(e0, e1)
        S = A._shift_floor(S0, e0 - e) + A._shift_floor(S1, e1 - e)
    else:
        S, e = A._fused_trunc(Pm, Pe, F)
    Mc, Ec = A._parts(c, -126)
    E = np.maximum(e, Ec)
    s2 = _round_shift(S, (e - F) - (E - m.sum_bits), m.sum_rounding)
    c2 = _round_shift(Mc, (Ec - 23) - (E - m.c_bits), m.c_rounding)
    if m.c_drop is not None:
        c2 = np.where(Ec >= E - m.c_drop, c2, 0)
    low = max(m.sum_bits, m.c_bits)
    total = (s2 << (low - m.sum_bits)) + (c2 << (low - m.c_bits))
    bits = round_scaled((total < 0).astype(np.int64), np.abs(total), E - low, FP32, "RNE")
    out = bits.astype(np.uint32).view(_F32)
    with np.errstate(all="ignore"):  # non-finite: IEEE rules (as numerics.amd)
        ref = (a.astype(np.float64) * b.astype(np.float64)).sum(axis=-1) + c.astype(np.float64)
    return np.where(np.isfinite(ref), out, ref.astype(_F32)).astype(_F32)


def late_c_chain(m: LateCModel, a, b, c) -> np.ndarray:
    """K-long dot products as groups of G in k order, each output the next group's c."""
    a, b = np.asarray(a, _F32), np.asarray(b, _F32)
    if "tf32" in (m.a_format, m.b_format):  # tf32 words: the low 13 bits are not read
        a = (a.view(np.uint32) & np.uint32(0xFFFFE000)).view(_F32) if m.a_format == "tf32" else a
        b = (b.view(np.uint32) & np.uint32(0xFFFFE000)).view(_F32) if m.b_format == "tf32" else b
    K = a.shape[-1]
    if K % m.G or K == 0:
        raise ValueError(f"K={K} is not a positive multiple of G={m.G}")
    acc = np.asarray(c, _F32).reshape(a.shape[0])
    for k in range(0, K, m.G):
        acc = _late_c_block(m, a[:, k:k + m.G], b[:, k:k + m.G], acc)
    return acc


def late_c_of(model: A.AMDModel) -> LateCModel:
    """The late-c parameters of a CDNA3 preset of numerics.amd (the ones its code hard-wires)."""
    if model.kind not in ("fused_rd", "fused_rd_evenodd"):
        raise ValueError(f"{model.name}: {model.kind} has no late c")
    fmt = lambda f: {"xf32": "tf32"}.get(f, f)
    eo = model.kind == "fused_rd_evenodd"
    return LateCModel(model.G, fmt(model.in_format), fmt(model.b_format), model.F, "evenodd" if eo else "none",
                      c_drop=25 if eo else None)


def _late_c_features(unit: Unit, ev: dict):
    """Single-group probes of the late c (group 0; the zero groups after it pass the result on
    exactly): c's rounding, the exponent gap past which c is dropped, the grid of the product sum
    where it meets c and that sum's rounding, the even/odd split. Returns (evidence, the probe
    blocks a, b, c)."""
    o = _Ops(unit)
    F = int((ev.get("F") or {}).get("value") or 24)
    x = max(2 * o.emin + 14, -20)  # products 2^x .. 2^(x - 13) are sums of two normal exponents
    u = 2.0 ** (x - 24)
    out: dict = {}
    rows, cs, tags = [], [], []

    def add(tag, terms, cv):
        rows.append(terms); cs.append(cv); tags.append(tag)

    # c's rounding from an odd significand (products 2^xr + 2^(xr-23): one fp32 ulp is two steps
    # of c's grid u) and c = -/+0.75u, both a single binade below the grid (never dropped)
    xr = max(2 * o.emin + 23, -20)
    ur = 2.0 ** (xr - 24)
    add("c_rounding", [(0, 1.0, xr), (1, 1.0, xr - 23)], -0.75 * ur)
    add("c_rounding", [(0, 1.0, xr), (1, 1.0, xr - 23)], 0.75 * ur)
    drops = list(range(25, 61))
    for d in drops:
        add("c_drop", [(0, 1.0, x)], -2.0 ** (x - d))
    ms = list(range(1, 13))
    for mm in ms:
        add("sum_bits", [(0, 1.0, x), (1, 1.0, x - mm)], 2.0 ** (x + 24))
    add("sum_rounding", [(0, -1.0, x - 1), (1, -1.0, x - 13)], 2.0 ** (x + 24))
    xs = max(2 * o.emin + F + 1, -20)
    add("split", [(0, 1.0, xs), (1, -1.0, xs - F - 1)], 0.0)
    add("split", [(0, 1.0, xs), (2, -1.0, xs - F - 1)], 0.0)
    o.offset = 0
    a, b, c, ok = o.blocks(rows, cs)
    try:
        d = np.where(ok, np.asarray(unit.mma(a, b, c), _F32).astype(np.float64), np.nan)
    except ValueError as exc:
        return {"late_c": {"value": None, "evidence": str(exc)}}, (a[:0], b[:0], c[:0])
    tags = np.array(tags)
    got = lambda tag: d[tags == tag]
    v = got("c_rounding")
    base = 2.0 ** xr + 2.0 ** (xr - 23)
    sym = lambda y: {base - 2 * ur: "-2u", base: "0", base + 2 * ur: "+2u"}.get(float(y), repr(float(y)))
    pat = (sym(v[0]), sym(v[1]))
    mode = {("-2u", "0"): "down", ("0", "0"): "trunc", ("-2u", "+2u"): "RNE"}.get(pat)
    out["c_rounding"] = {"value": mode, "evidence": f"s = 2^{xr} + 2^({xr}-23) (odd), c = -0.75u, +0.75u, u = 2^({xr}-24): "
                                                    f"s + ({pat[0]}, {pat[1]}) (down: -2u, 0; trunc: 0, 0; RNE: -2u, +2u)"}
    v = got("c_drop")
    kept = [dd for dd, y in zip(drops, v) if y == 2.0 ** x - u]
    if mode != "down":
        out["c_drop"] = {"value": None, "evidence": "unobservable with this probe (c is not rounded down: a tiny negative c gives 0 either way)"}
    elif len(kept) == len(drops):
        out["c_drop"] = {"value": None, "evidence": f"c = -2^({x}-d) rounded down to -u for every d <= {drops[-1]}: never dropped there"}
    else:
        first = next(dd for dd, y in zip(drops, v) if y != 2.0 ** x - u)
        out["c_drop"] = {"value": first - 1, "evidence": f"c = -2^({x}-d) counts (-u) for d < {first}, dropped from d = {first}"}
    v = got("sum_bits")
    kept = [mm for mm, y in zip(ms, v) if y == 2.0 ** (x + 24) + 2.0 ** (x + 1)]
    top = max(kept) if kept else 0
    out["sum_bits"] = {"value": top + 24 if 0 < top < ms[-1] else None,
                       "evidence": f"c = 2^({x}+24) plus the tie 2^{x} + 2^({x}-m): the sticky 2^({x}-m) kept for m <= {top}"
                                   + (" (out of the probe's range)" if not 0 < top < ms[-1] else "")}
    y = float(got("sum_rounding")[0])
    top2 = 2.0 ** (x + 24)
    out["sum_rounding"] = {"value": {top2 - 2.0 ** x: "down", top2: "trunc"}.get(y),
                           "evidence": f"2^({x}+24) - 2^({x}-1) - 2^({x}-13) -> {y!r} (down: 2^({x}+24) - 2^{x}, trunc: the tie to even 2^({x}+24))"}
    v = got("split")
    one, uu = 2.0 ** xs, 2.0 ** (xs - F)
    split = {(one - uu, one): "evenodd", (one, one): "none"}.get((float(v[0]), float(v[1])))
    out["split"] = {"value": split, "evidence": f"2^{xs} - 2^({xs}-{F}-1) at k = 1 -> {float(v[0])!r}, at k = 2 -> {float(v[1])!r}"
                                                f" (evenodd: the odd half floored to -2^({xs}-{F}) at k = 1 only)"}
    keep = ok & np.isfinite(d)
    return out, (a[keep], b[keep], c[keep])


def _late_c_card(unit: Unit, ev: dict, a, b, c, want_c, want_0, n_verify: int, seed: int, rounds: int = 2) -> dict:
    """Closed loop over the late-c family: a proposal from the feature tests (G, F) and the late-c
    probes (the rest), a coordinate search over every parameter scored on the fit blocks and the
    probes (c = 0 and with c), the best verified on fresh blocks; mismatching blocks join the fit
    data (at most ``rounds`` times) and the search runs again."""
    fa, fb = _operand_formats(unit)
    feats, (pa, pb, pc) = _late_c_features(unit, ev)
    if len(pc):
        pwc = np.asarray(unit.mma(pa, pb, pc), _F32).view(np.uint32)
        pw0 = np.asarray(unit.mma(pa, pb, np.zeros_like(pc)), _F32).view(np.uint32)
        a, b, c = np.concatenate([a, pa]), np.concatenate([b, pb]), np.concatenate([c, pc])
        want_c, want_0 = np.concatenate([want_c, pwc]), np.concatenate([want_0, pw0])
    val = lambda k, default: (feats.get(k) or ev.get(k) or {}).get("value", default) or default
    space = {"G": tuple(g for g in PAIRWISE_G if unit.K % g == 0), **LATE_C_SEARCHED}
    space["F"] = tuple(sorted({*space["F"], int(val("F", 24))}))
    G0 = val("G", None)
    if G0 not in space["G"]:
        G0 = 16 if 16 in space["G"] else space["G"][-1]
    model = LateCModel(int(G0), fa, fb, int(val("F", 24)), val("split", "none"), int(val("sum_bits", 31)),
                       val("sum_rounding", "down"), 24, val("c_rounding", "down"), feats.get("c_drop", {}).get("value"))
    proposal = model
    cache: dict = {}

    def score(m):
        if m not in cache:
            try:
                cache[m] = (int(np.sum(late_c_chain(m, a, b, zero).view(np.uint32) == want_0))
                            + int(np.sum(late_c_chain(m, a, b, c).view(np.uint32) == want_c)))
            except ValueError:
                cache[m] = -1
        return cache[m]

    def search(m):
        best = score(m)
        for _ in range(4):
            changed = False
            for k, values in space.items():
                for v in values:
                    s_ = score(replace(m, **{k: v}))
                    if s_ > best:
                        m, best, changed = replace(m, **{k: v}), s_, True
            if not changed:
                break
        return m, best

    # G from the fit: every divisor of K scored at the probes' other parameters (the block-model
    # feature test reads an even/odd split as G = 2 where the halves' grids differ)
    zero = np.zeros_like(c)
    by_G = {g: score(replace(model, G=g)) for g in space["G"]}
    G_fit = max(by_G, key=lambda g: (by_G[g], g == model.G))
    feats["G"] = {"value": G_fit, "evidence": f"fit matches per G (of {2 * len(c)}): {by_G}; the block-model feature "
                                              f"test read G = {(ev.get('G') or {}).get('value')}"}
    model = replace(model, G=G_fit)
    history = []
    for r in range(rounds + 1):
        zero = np.zeros_like(c)
        cache.clear()
        model, best = search(model)
        history.append({"model": {k: getattr(model, k) for k in LATE_C_PARAMS}, "matches": best, "of": 2 * len(c),
                        "searched": len(cache), "family": "late_c"})
        va, vb, vc = _blocks(unit, max(n_verify, 100), seed + 201 + r)
        ok, vwant = _verify(unit, lambda x, y, z: late_c_chain(model, x, y, z), va, vb, vc)
        if ok.all() or r == rounds:
            break
        a, b, c, want_c, want_0 = _grow(unit, (a, b, c, want_c, want_0), va, vb, vc, vwant, ~ok)
    same = {k: [v for v in values if v == getattr(model, k) or score(replace(model, **{k: v})) == best]
            for k, values in space.items()}
    return {"model": model, "proposal": proposal, "features": feats, "fit": history, "indistinguishable": same,
            "ok": ok, "vc": vc, "rounds": r + 1}


def _late_c_params(m: LateCModel) -> dict:
    return {"family": "late_c", "in_format": m.a_format, "in_format_b": m.b_format, "out_format": "fp32",
            "out_rounding": "RNE", **{k: getattr(m, k) for k in LATE_C_PARAMS}}


def _late_c_words(m: LateCModel) -> str:
    drop = f", c dropped more than {m.c_drop} binades below E" if m.c_drop is not None else ""
    half = " (even-k and odd-k products apart)" if m.split == "evenodd" else ""
    return (f"groups of G = {m.G} products truncated onto 2^(e-{m.F}){half}, the sum rounded {m.sum_rounding} onto "
            f"2^(E-{m.sum_bits}) and c {m.c_rounding} onto 2^(E-{m.c_bits}) at E = max(e, e_c){drop}, fp32 RNE")


# -- the plan family (fp32 / fp64 MFMA: an fma chain, numerics.plans) ----------------------------------
PLAN_FORMATS = ("fp32", "fp64")
# (order, fma, c): the fma chain in k order seeded with c (AMD fp32/fp64 MFMA, DMMA) and its rivals:
# rn(a*b) then add, the reversed order, c added after the chain, one rounding of the exact sum
PLAN_CANDIDATES = tuple((o, f, cj) for o in ("k", "reversed") for f in (True, False) for cj in ("seed", "last")) \
    + (("fused", None, "seed"),)


def _plan_words(fmt: str, cand) -> str:
    order, fma, cj = cand
    if order == "fused":
        return f"c + the exact products, one {fmt} RNE rounding"
    step = "fma(a_k, b_k, acc)" if fma else "acc + rn(a_k*b_k)"
    seed = "seeded with c" if cj == "seed" else "from +0, c added last"
    return f"{fmt} {step} in {'k' if order == 'k' else 'reversed k'} order, {seed}"


def _plan_of(fmt: str, cand) -> str | None:
    order, fma, cj = cand
    return repr(P.Sequential(fmt, fma=fma)) if (order, cj) == ("k", "seed") else None


def _fused_once(fmt: str, a, b, c) -> np.ndarray:
    from fractions import Fraction

    from hspi_kernels.numerics.exact import round_fraction

    out = []
    for ra, rb, cv in zip(a.tolist(), b.tolist(), c.tolist()):
        s = Fraction(cv) + sum(Fraction(x) * Fraction(y) for x, y in zip(ra, rb))
        out.append(float(s) if fmt == "fp64" else round_fraction(s, "fp32", "RNE"))
    return np.array(out, np.float64) if fmt == "fp64" else np.array(out, np.uint32).view(_F32)


def _plan_predict(fmt: str, cand, a, b, c) -> np.ndarray:
    order, fma, cj = cand
    if order == "fused":
        return _fused_once(fmt, a, b, c)
    if order == "reversed":
        a, b = np.ascontiguousarray(a[:, ::-1]), np.ascontiguousarray(b[:, ::-1])
    if cj == "seed":
        return E.evaluate(P.Sequential(fmt, fma=fma), (a, b), c=c)
    core = E.evaluate(P.Sequential(fmt, fma=fma, init="zero"), (a, b))
    with np.errstate(all="ignore"):
        return (core + c).astype(c.dtype)


def _plan_blocks(unit: Unit, count: int, seed: int):
    """Random and adversarial fp32 / fp64 blocks: moderate and wide spreads, cancellation (the
    second half of the row the negated first), products near underflow, c dominant (products
    about its ulp); a tenth of the elements zero."""
    rng = np.random.default_rng(seed)
    f64 = unit.in_format == "fp64"
    dt = np.float64 if f64 else _F32
    wide, tiny, ulp = (300, -540, 52) if f64 else (60, -75, 23)
    K, per = unit.K, count // 5
    mk = lambda lo, hi, shape: np.ldexp(rng.standard_normal(shape), rng.integers(lo, hi, shape).astype(np.int32)).astype(dt)
    out = []
    for kind in range(5):
        shape = (per, K)
        if kind == 0:
            a, b, c = mk(-8, 8, shape), mk(-8, 8, shape), mk(-10, 10, per)
        elif kind == 1:
            a, b, c = mk(-wide, wide, shape), mk(-wide, wide, shape), mk(-2 * wide, 2 * wide, per)
        elif kind == 2:
            a, b = mk(-4, 4, shape), mk(-4, 4, shape)
            half = K // 2
            a[:, half:2 * half] = -a[:, :half]
            b[:, half:2 * half] = b[:, :half]
            c = np.where(rng.random(per) < 0.5, 0, mk(-30, 0, per)).astype(dt)
        elif kind == 3:
            a, b, c = mk(tiny, tiny + 12, shape), mk(tiny, tiny + 12, shape), mk(2 * tiny, 2 * tiny + 30, per)
        else:
            lo = -(ulp + 14) // 2
            a, b, c = mk(lo, lo + 6, shape), mk(lo, lo + 6, shape), mk(0, 10, per)
        a = np.where(rng.random(shape) < 0.1, 0, a).astype(dt)
        out.append((a, b, c))
    return tuple(np.concatenate([x[i] for x in out]) for i in range(3))


def _plan_card(unit: Unit, n_verify: int, seed: int, fit_blocks: int, t0: float, rounds: int = 1) -> dict:
    """The plan family, closed loop: every candidate of PLAN_CANDIDATES scored on fit blocks
    (c = 0 and with c), the best verified on fresh blocks (bits: uint32, uint64 for fp64)."""
    fmt = unit.in_format
    dt, ut = (np.float64, np.uint64) if fmt == "fp64" else (_F32, np.uint32)
    run = lambda x, y, z: np.asarray(unit.mma(x, y, z), dt).view(ut)
    a, b, c = _plan_blocks(unit, fit_blocks, seed)
    zero = np.zeros_like(c)
    want_c, want_0 = run(a, b, c), run(a, b, zero)

    def score(cand):
        try:
            return (int(np.sum(_plan_predict(fmt, cand, a, b, zero).view(ut) == want_0))
                    + int(np.sum(_plan_predict(fmt, cand, a, b, c).view(ut) == want_c)))
        except ValueError:
            return -1

    history = []
    for r in range(rounds + 1):
        scores = [score(cd) for cd in PLAN_CANDIDATES]
        best = max(scores)
        cand = PLAN_CANDIDATES[scores.index(best)]
        history.append({"candidates": {_plan_words(fmt, cd): s_ for cd, s_ in zip(PLAN_CANDIDATES, scores)},
                        "model": _plan_words(fmt, cand), "matches": best, "of": 2 * len(c),
                        "searched": len(PLAN_CANDIDATES), "family": "plan"})
        va, vb, vc = _plan_blocks(unit, max(n_verify, 100), seed + 301 + r)
        vwant = run(va, vb, vc)
        ok = _plan_predict(fmt, cand, va, vb, vc).view(ut) == vwant
        if ok.all() or r == rounds:
            break
        bad = ~ok
        a, b, c = np.concatenate([a, va[bad]]), np.concatenate([b, vb[bad]]), np.concatenate([c, vc[bad]])
        zero = np.zeros_like(c)
        want_c = np.concatenate([want_c, vwant[bad]])
        want_0 = np.concatenate([want_0, run(va[bad], vb[bad], np.zeros(int(bad.sum()), dt))])
    order, fma, cj = cand
    plan = _plan_of(fmt, cand)
    params = {"family": "plan", "in_format": fmt, "out_format": fmt, "order": order, "fma": fma, "c": cj,
              "plan": plan}
    tied = [_plan_words(fmt, cd) for cd, s_ in zip(PLAN_CANDIDATES, scores) if s_ == best]
    described = bool(ok.all())
    words = _plan_words(fmt, cand)
    reason = (f"{fmt} operands take no block alignment: the plan family (summation plans on full {fmt} operands) "
              f"describes the unit as {words}" + (f" = numerics.plans.{plan} with c as its seed" if plan else "")
              + f", verify {int(ok.sum())}/{ok.size}; the other {len(PLAN_CANDIDATES) - len(tied)} candidates "
                f"mismatch on the fit blocks")
    if not described:
        reason = (f"not described: the best plan candidate ({words}) verifies {int(ok.sum())}/{ok.size} "
                  f"({fmt} operands are no input format of the block or pairwise models)")
    return {"unit": unit.name, "in_format": fmt, "K": unit.K, "family": "plan", "described": described,
            "reason": reason, "params": params, "features": {}, "fit": history,
            "indistinguishable": {"candidate": tied}, "emax_floor_indistinguishable": [], **_counts(ok, vc),
            "exact": described, "verify_rounds": r + 1, "seconds": round(time.perf_counter() - t0, 3)}


def _counts(ok, vc) -> dict:
    c0 = vc == 0
    return {"verify": {"matches": int(ok.sum()), "total": int(ok.size)},
            "verify_c0": {"matches": int(ok[c0].sum()), "total": int(c0.sum())},
            "verify_c": {"matches": int(ok[~c0].sum()), "total": int((~c0).sum())}}


def _format_reason(fmt: str) -> str:
    """Why no family of the card takes input format ``fmt``."""
    takes = (f"the block model takes {', '.join(TC._IN_FORMATS)}; the pairwise family {', '.join(PAIRWISE_FORMATS)}; "
             f"the late-c family {', '.join(LATE_C_FORMATS)} (and mixed fnuz pairs '<a>x<b>'); the plan family "
             f"{', '.join(PLAN_FORMATS)}")
    return f"input format {fmt!r} is none of the card's families' ({takes}); no feature test was run and no model is claimed"


def _undescribed(unit: Unit, reason: str, t0: float) -> dict:
    empty = {"matches": 0, "total": 0}
    return {"unit": unit.name, "in_format": unit.in_format, "K": unit.K, "family": None, "described": False,
            "reason": reason, "params": {}, "features": {}, "fit": [], "indistinguishable": {},
            "emax_floor_indistinguishable": [], "verify": dict(empty), "verify_c0": dict(empty),
            "verify_c": dict(empty), "exact": False, "verify_rounds": 0,
            "seconds": round(time.perf_counter() - t0, 3)}


def _fnuz_card(unit: Unit, n_verify: int, seed: int, fit_blocks: int, t0: float) -> dict:
    """fnuz fp8 operands (CDNA3 fp8/bf8 MFMA): no block model or pairwise unit takes them; the
    feature tests run (G, F, ... on the formats both operands hold) and the late-c family is
    fitted and verified, closed loop."""
    ev = _features(unit)
    a, b, c = _blocks(unit, fit_blocks, seed)
    want_c = np.asarray(unit.mma(a, b, c), dtype=_F32).view(np.uint32)
    want_0 = np.asarray(unit.mma(a, b, np.zeros_like(c)), dtype=_F32).view(np.uint32)
    lc = _late_c_card(unit, ev, a, b, c, want_c, want_0, max(n_verify, 100), seed)
    lok, lm = lc["ok"], lc["model"]
    described = bool(lok.all())
    pre = (f"{unit.in_format}: fnuz fp8 operands (bias 8 / 16, no -0, one NaN, no inf; decoded with ml_dtypes) "
           f"are no input format of the block or pairwise models")
    reason = (f"{pre}; the late-c unit ({_late_c_words(lm)}) verifies {int(lok.sum())}/{lok.size}" if described else
              f"not described: {pre}; the best late-c unit "
              f"({', '.join(f'{k} = {getattr(lm, k)}' for k in LATE_C_PARAMS)}) {int(lok.sum())}/{lok.size}")
    return {"unit": unit.name, "in_format": unit.in_format, "K": unit.K, "family": "late_c" if described else None,
            "described": described, "reason": reason, "params": _late_c_params(lm), "features": ev,
            "late_c_features": lc["features"], "fit": lc["fit"], "indistinguishable": lc["indistinguishable"],
            "emax_floor_indistinguishable": [], **_counts(lok, lc["vc"]), "exact": described,
            "verify_rounds": lc["rounds"], "seconds": round(time.perf_counter() - t0, 3)}


def numerics_card(unit: Unit, n_verify: int = 100_000, seed: int = 0, fit_blocks: int = 20_000,
                  epilogue: str = "auto") -> dict:
    """The card of ``unit``: parameters, per-feature evidence, fit and verification counts.

    The core parameters are fitted on the blocks with c = 0 and on the same blocks with their c;
    ``epilogue`` (``auto``: both tried, ``fused`` preferred on a tie) says how c joins: inside
    the first block, or added in fp32 after the core (library GEMMs computing ``A @ B + C``).
    Verification counts are reported for all blocks and separately for those with c = 0.

    When no block model verifies, an fp16/bf16 unit is fitted against the pairwise family, then
    an fp16/bf16/tf32 unit against the late-c family (module docstring; neither on a unit whose
    path is an NVIDIA one); fnuz fp8 units go to the late-c family (after the feature tests),
    fp32/fp64 units to the plan family. ``family`` is the family that verified ("block" |
    "pairwise" | "late_c" | "plan"), ``described`` whether one did, ``reason`` why not (also for
    input formats no family takes: then no test runs). A pairwise / late-c card's ``params`` are
    that family's; ``block_model`` keeps the best block model the closed loop found, with its
    verification counts."""
    t0 = time.perf_counter()
    if unit.in_format in PLAN_FORMATS:
        return _plan_card(unit, n_verify, seed, fit_blocks, t0)
    if _is_fnuz(unit):
        return _fnuz_card(unit, n_verify, seed, fit_blocks, t0)
    if unit.in_format not in TC._IN_FORMATS:
        return _undescribed(unit, _format_reason(unit.in_format), t0)
    ev = _features(unit)
    proposal = _propose(unit, ev)
    a, b, c = _blocks(unit, fit_blocks, seed)
    a, b = _validated(proposal, a, b)
    zero = np.zeros_like(c)
    want_c = np.asarray(unit.mma(a, b, c), dtype=_F32).view(np.uint32)
    want_0 = np.asarray(unit.mma(a, b, zero), dtype=_F32).view(np.uint32)
    epilogues = EPILOGUES if epilogue == "auto" else (epilogue,)
    history: list = []

    def score(m, ep):
        m0 = _matches(m, a, b, zero, want_0)
        return -1 if m0 < 0 else m0 + _matches(m, a, b, c, want_c, ep)

    def fit(model):
        total = 2 * len(c)
        best, ep = max(((score(model, e), e) for e in epilogues), key=lambda t: t[0])
        history.append({"model": model_params(model), "epilogue": ep, "matches": best, "of": total})
        if best < total:
            proposed = model_params(proposal)
            alts = [replace(model, out_rounding=rnd, subnormal_exponent=sub, zero_sign=zs, emax_floor=fl,
                            F=proposal.F + dF)
                    for rnd, sub, zs, fl, dF in itertools.product(*SEARCHED.values(), (0, -1, 1))]
            # ties go to the model that keeps most of what the feature tests measured, then "fused"
            cands = [(score(m, e), sum(model_params(m)[k] == v for k, v in proposed.items()), e == "fused", m, e)
                     for m in alts for e in epilogues]
            best, _, _, model, ep = max(cands, key=lambda t: t[:3])
            history.append({"model": model_params(model), "epilogue": ep, "matches": best, "of": total,
                            "searched": len(cands)})
        return model, ep, best

    # closed loop: fit, verify on fresh blocks; on a mismatch the mismatching blocks join the fit
    # data and the search runs again (at most `rounds` times), then a fresh set verifies
    model, ep, best = fit(proposal)
    rounds = 3
    for r in range(rounds + 1):
        va, vb, vc = _blocks(unit, max(n_verify, 100), seed + 1 + r)
        va, vb = _validated(model, va, vb)
        ok, vwant = _verify(unit, lambda x, y, z: _predict(model, ep, x, y, z), va, vb, vc)
        if ok.all() or r == rounds:
            break
        a, b, c, want_c, want_0 = _grow(unit, (a, b, c, want_c, want_0), va, vb, vc, vwant, ~ok)
        zero = np.zeros_like(c)
        model, ep, best = fit(model)
    # values the data cannot tell apart
    same: dict = {}
    for key, values in SEARCHED.items():
        same[key] = [v for v in values if v == getattr(model, key) or score(replace(model, **{key: v}), ep) == best]
    same["epilogue"] = [e for e in epilogues if e == ep or score(model, e) == best]
    params = model_params(model)
    params["epilogue"] = ep
    card = {
        "unit": unit.name, "in_format": unit.in_format, "K": unit.K, "family": "block",
        "described": bool(ok.all()), "reason": None, "params": params,
        "features": ev, "fit": history, "indistinguishable": same,
        "emax_floor_indistinguishable": same["emax_floor"],
        **_counts(ok, vc),
        "exact": bool(ok.all()), "verify_rounds": r + 1,
    }
    if not ok.all():
        block = f"the best block model verifies {int(ok.sum())}/{ok.size} blocks"
        amd = unit.path not in NVIDIA_PATHS
        misses = []
        if amd and unit.in_format in PAIRWISE_FORMATS:
            pw = _pairwise_card(unit, a, b, c, want_c, want_0, max(n_verify, 100), seed)
            pok, pm = pw["ok"], pw["model"]
            if pok.all():
                card.update({
                    "family": "pairwise", "described": True, "exact": True,
                    "params": {"family": "pairwise", "in_format": unit.in_format, "out_format": "fp32",
                               "G": pm.G, "flush_denormals": pm.flush_denormals},
                    "block_model": {"params": params, **_counts(ok, vc)},
                    "fit": history + pw["fit"], "indistinguishable": pw["indistinguishable"],
                    "emax_floor_indistinguishable": [], **_counts(pok, pw["vc"]), "verify_rounds": pw["rounds"],
                    "reason": f"no block model describes the unit ({block}); the pairwise unit (a pairwise "
                              f"fp32-RNE tree per group of G = {pm.G} products, each group sum added to the "
                              f"accumulator in fp32 RNE, subnormals {'flushed' if pm.flush_denormals else 'kept'}) "
                              f"verifies {int(pok.sum())}/{pok.size}"})
                card["seconds"] = round(time.perf_counter() - t0, 3)
                return card
            misses.append(f"the best pairwise unit (G = {pm.G}, flush_denormals = {pm.flush_denormals}) "
                          f"{int(pok.sum())}/{pok.size}")
            card["pairwise"] = {"params": {k: getattr(pm, k) for k in PAIRWISE_PARAMS}, **_counts(pok, pw["vc"])}
            eg = _family_card(unit, _exact_group_candidates(unit), EXACT_GROUP_PARAMS, a, b, c, want_c, want_0,
                              max(n_verify, 100), seed)
            eok, em = eg["ok"], eg["model"]
            if eok.all():
                card.update({
                    "family": "exact_group", "described": True, "exact": True,
                    "params": {"family": "exact_group", "in_format": unit.in_format, "out_format": "fp32", "G": em.G},
                    "block_model": {"params": params, **_counts(ok, vc)},
                    "fit": history + pw["fit"] + eg["fit"], "indistinguishable": eg["indistinguishable"],
                    "emax_floor_indistinguishable": [], **_counts(eok, eg["vc"]), "verify_rounds": eg["rounds"],
                    "reason": f"no block model describes the unit ({block}), nor the pairwise family ({misses[0]}); "
                              f"the exact-group unit (c plus each group of G = {em.G} exact products rounded once "
                              f"to fp32 RNE, groups in k order) verifies {int(eok.sum())}/{eok.size}"})
                card["seconds"] = round(time.perf_counter() - t0, 3)
                return card
            misses.append(f"the best exact-group unit (G = {em.G}) {int(eok.sum())}/{eok.size}")
            card["exact_group"] = {"params": {"G": em.G}, **_counts(eok, eg["vc"])}
        if amd and unit.in_format in LATE_C_FORMATS:
            lc = _late_c_card(unit, ev, a, b, c, want_c, want_0, max(n_verify, 100), seed)
            lok, lm = lc["ok"], lc["model"]
            if lok.all():
                card.update({
                    "family": "late_c", "described": True, "exact": True, "params": _late_c_params(lm),
                    "block_model": {"params": params, **_counts(ok, vc)}, "late_c_features": lc["features"],
                    "fit": history + lc["fit"], "indistinguishable": lc["indistinguishable"],
                    "emax_floor_indistinguishable": [], **_counts(lok, lc["vc"]), "verify_rounds": lc["rounds"],
                    "reason": f"no block model describes the unit ({block})"
                              + (f", nor the pairwise family ({misses[0]})" if misses else "")
                              + f"; the late-c unit ({_late_c_words(lm)}) verifies {int(lok.sum())}/{lok.size}"})
                card["seconds"] = round(time.perf_counter() - t0, 3)
                return card
            misses.append(f"the best late-c unit ({', '.join(f'{k} = {getattr(lm, k)}' for k in LATE_C_PARAMS)}) "
                          f"{int(lok.sum())}/{lok.size}")
            card["late_c"] = {"params": _late_c_params(lm), "features": lc["features"], **_counts(lok, lc["vc"])}
        if not amd:
            misses.append(f"the AMD families (pairwise, late_c) are not tried on an NVIDIA path ({unit.path})")
        elif unit.in_format not in PAIRWISE_FORMATS + LATE_C_FORMATS:
            misses.append(f"the pairwise family takes {', '.join(PAIRWISE_FORMATS)} only, the late-c family "
                          f"{', '.join(LATE_C_FORMATS)}")
        card["reason"] = f"not described by the card's parameter models: {block}; " + "; ".join(misses)
    card["seconds"] = round(time.perf_counter() - t0, 3)
    return card


def card_table(card: dict):
    from rich.table import Table

    t = Table(title=f"numerics card — {card['unit']} ({card['in_format']}), verify "
                    f"{card['verify']['matches']}/{card['verify']['total']}"
                    + (f", family {card['family']}" if card.get("family") else ""))
    t.add_column("feature / parameter")
    t.add_column("value")
    t.add_column("evidence", overflow="fold")
    block = card.get("family", "block") == "block"
    late = card.get("late_c_features", {})
    for k, v in card["params"].items():
        # a pairwise / plan card's params: the fit alone; a late-c card's: its probes (G, F: the
        # feature tests), then the fit
        e = card["features"].get(k, {}) if block else late.get(k) or (card["features"].get(k, {}) if late and k in ("G", "F") else {})
        t.add_row(k, str(v), str(e.get("evidence", "closed-loop fit")) + ("" if block or not e else "; closed-loop fit"))
    if block:
        for k, e in card["features"].items():
            if k not in card["params"]:
                t.add_row(k, str(e.get("value")), str(e.get("evidence")))
    elif card["features"]:  # the block model's feature tests measure its parameters, not this family's
        t.add_row("block-model feature tests", "not this family's", "in the JSON card ('features', 'block_model')")
    for k, values in card.get("indistinguishable", {}).items():
        if len(values) > 1:
            t.add_row(f"{k}: equal on the data", str(values), "")
    if card.get("reason"):
        t.add_row("described" if card.get("described") else "NOT DESCRIBED", str(card.get("described", True)),
                  card["reason"])
    t.add_row("verify c = 0 / c != 0", f"{card['verify_c0']['matches']}/{card['verify_c0']['total']} / "
                                       f"{card['verify_c']['matches']}/{card['verify_c']['total']}", "")
    return t
