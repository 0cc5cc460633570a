"""Tensor-core numerics card: the block-model parameters of an unknown MMA path, from feature tests
(Fasi et al. 2021; Khattak & Mikaitis 2025) closed by a fit-and-verify loop.

The black box is a :class:`Unit`: ``mma(a[B, K], b[B, K], c[B]) -> d[B]`` (fp32 bits; K a few
blocks long, the blocks chained in k order). Feature tests (each one batched call):

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
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from hspi_kernels.numerics import tensor_core as TC
from hspi_kernels.numerics.formats import get_format

__all__ = ["Unit", "emulated_unit", "numerics_card", "card_table", "model_params"]

_F32 = np.float32
PARAMS = ("G", "F", "out_format", "out_rounding", "emax_floor", "input_low_bits_ignored",
          "subnormal_exponent", "zero_sign")


@dataclass
class Unit:
    name: str
    in_format: str
    K: int
    mma: Callable  # a[B,K], b[B,K], c[B] float32 -> d[B] float32
    arch: str = "unknown"
    path: str = "unknown"


def emulated_unit(model: TC.BlockModel, blocks: int = 4) -> Unit:
    """The emulator as a simulated GPU: ``chain(model)`` over ``blocks`` blocks."""
    return Unit(f"emulated:{model.name}", model.in_format, model.G * blocks,
                lambda a, b, c: TC.chain(model, a, b, c), model.arch, model.path)


def model_params(model: TC.BlockModel) -> dict:
    return {k: getattr(model, k) for k in PARAMS}


# -- operand construction ---------------------------------------------------------------------------
class _Ops:
    def __init__(self, unit: Unit):
        self.u = unit
        f = get_format(unit.in_format if unit.in_format != "tf32" else "tf32")
        self.emin, self.emax = f.emin, f.emax
        self.frac = f.frac_bits

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
        returns a, b, c float32 (None if a term cannot be built)."""
        B, K = len(rows), self.u.K
        a = np.zeros((B, K), _F32)
        b = np.zeros((B, K), _F32)
        for r, terms in enumerate(rows):
            for idx, sig, e in terms:
                s = self.split(e)
                if s is None:
                    return None
                a[r, idx] = sig * 2.0 ** s[0]
                b[r, idx] = 2.0 ** s[1]
        c = np.zeros(B, _F32) if cs is None else np.asarray(cs, _F32)
        return a, b, c

    def run(self, rows, cs=None):
        ops = self.blocks(rows, cs)
        if ops is None:
            return None
        try:
            return np.asarray(self.u.mma(*ops), dtype=_F32)
        except ValueError:
            return None


# -- feature tests -----------------------------------------------------------------------------------
def _features(unit: Unit) -> dict:
    o = _Ops(unit)
    K = unit.K
    ev: dict = {}
    # product exactness: (1+2^-m)^2 with m the format's last fraction bit
    m = min(o.frac, 7)
    d = o.run([[(0, 1 + 2.0 ** -m, 0), (1, 0.0, 0)]])
    exact = (1 + 2.0 ** -m) ** 2
    if d is not None:  # b = 1 so the product is sig_a^1 ... use a square explicitly
        pa = np.zeros((1, K), _F32); pb = np.zeros((1, K), _F32)
        pa[0, 0] = pb[0, 0] = 1 + 2.0 ** -m
        try:
            d = float(unit.mma(pa, pb, np.zeros(1, _F32))[0])
            ev["product_exact"] = {"value": d == exact, "evidence": f"(1+2^-{m})^2 -> {d!r} (exact {exact!r})"}
        except ValueError as exc:
            ev["product_exact"] = {"value": None, "evidence": str(exc)}
    # block size G: FPRev row with +M at 0 and -M at j
    big = min(o.emax * 2, 60)
    small = max(o.emin * 2, -60) if o.emin * 2 > -60 else 0
    small = 0 if big - 0 >= 40 else max(o.emin * 2, big - 60)
    rows = []
    for j in range(1, K):
        rows.append([(0, 1.0, big), (j, -1.0, big)] + [(i, 1.0, small) for i in range(1, K) if i != j])
    d = o.run(rows)
    G = None
    if d is not None:
        counts = np.round(d.astype(np.float64) / 2.0 ** small).astype(np.int64)
        change = np.flatnonzero(counts != counts[0])
        G = int(change[0] + 1) if change.size else K
        ev["G"] = {"value": G, "evidence": f"ones kept vs j: {counts[:min(len(counts), 2 * G + 2)].tolist()}"}
    # alignment bits F: 1 - 1 + 2^-k
    rows = [[(0, 1.0, 0), (1, -1.0, 0), (2, 1.0, -k)] for k in range(1, 40)]
    d = o.run(rows[:])
    F = None
    if d is not None:
        kept = [k for k, v in zip(range(1, 40), d) if v == 2.0 ** -k]
        F = max(kept) if kept else 0
        ev["F"] = {"value": F, "evidence": f"2^-k survives 1-1 for k <= {F}"}
    if F:
        d = o.run([[(0, 1.0, 0), (1, -1.0, 0), (2, 1.5, -F - 1)], [(0, 1.0, 0), (1, -1.0, 0), (2, -1.5, -F - 1)]])
        if d is not None:
            pos, neg = float(d[0]) / 2.0 ** -F, float(d[1]) / 2.0 ** -F
            mode = {(1.0, -1.0): "truncate toward zero", (1.0, -2.0): "floor", (2.0, -2.0): "nearest"}.get((pos, neg), f"other ({pos}, {neg})")
            ev["term_rounding"] = {"value": mode, "evidence": f"±1.5·2^-(F+1)... -> ({pos}, {neg}) ulps of 2^-F"}
    g = G or 4
    d = o.run([[(i, 1.75, 0) for i in range(g)]])
    if d is not None:
        pa = np.zeros((1, K), _F32); pb = np.zeros((1, K), _F32)
        pa[0, :g] = 1.75; pb[0, :g] = 1.75
        d = float(unit.mma(pa, pb, np.zeros(1, _F32))[0])
        ev["carries"] = {"value": d == g * 3.0625, "evidence": f"{g} x 1.75^2 -> {d!r} (exact {g * 3.0625})"}

    def sq(rows_extra, cs=None):
        """blocks with term 0 = 1.75*1.75 plus extra (index, sig, exp) terms."""
        B = len(rows_extra)
        ops = o.blocks(rows_extra, cs)
        if ops is None:
            return None
        a, b, c = ops
        return a, b, c

    # output fraction bits: 3.0625 + 2^-m
    out_frac = None
    if F:
        ops = o.blocks([[(1, 1.0, -mm)] for mm in range(1, min(F, 30) + 1)])
        if ops is not None:
            a, b, c = ops
            a[:, 0] = 1.75; b[:, 0] = 1.75
            d = unit.mma(a, b, c).astype(np.float64)
            kept = [mm for mm, v in zip(range(1, min(F, 30) + 1), d) if v == 3.0625 + 2.0 ** -mm]
            out_frac = (max(kept) + 1) if kept else None
            ev["out_fraction_bits"] = {"value": out_frac, "evidence": f"3.0625 + 2^-m kept for m <= {max(kept) if kept else None} (F={F})"}
    # output rounding: (g-1) x 3.0625 + 0.75 ulp
    if F and out_frac and g >= 2:
        S = (g - 1) * 3.0625
        E = int(np.floor(np.log2(S)))
        ops = o.blocks([[(g - 1, 1.5, E - out_frac - 1)]])
        if ops is not None and E - out_frac - 2 >= -F:
            a, b, c = ops
            a[0, :g - 1] = 1.75; b[0, :g - 1] = 1.75
            d = float(unit.mma(a, b, c)[0])
            ulp = 2.0 ** (E - out_frac)
            mode = "RZ" if d == S else ("RNE" if d == S + ulp else f"other ({(d - S) / ulp} ulp)")
            ev["out_rounding"] = {"value": mode, "evidence": f"S + 0.75 ulp -> S + {(d - S) / ulp} ulp"}
    # monotonicity: c = 1 - ulp_c(1)/2 vs c = 1, G terms 2^(-1-F)
    if F:
        cfrac = 10 if unit.in_format == "fp16" and out_frac == 10 else 23
        ops = o.blocks([[(i, 1.0, -1 - F) for i in range(g)]] * 2, [1 - 2.0 ** -(cfrac + 1), 1.0])
        if ops is not None:
            d = unit.mma(*ops)
            ev["monotonic"] = {"value": not bool(d[0] > d[1]),
                               "evidence": f"c=1-2^-{cfrac + 1} -> {float(d[0])!r}, c=1 -> {float(d[1])!r}"}
    # subnormal input: smallest subnormal of the format times 2^k
    f = get_format(unit.in_format)
    sub = 2.0 ** (f.emin - f.frac_bits)
    kbig = min(f.emax, 100)
    pa = np.zeros((3, K), _F32); pb = np.zeros((3, K), _F32)
    pa[0, 0] = sub; pb[0, 0] = 2.0 ** kbig
    # alignment of a subnormal: product 2^(emin-4+k) plus 2^(emin+k-F-2)
    if F and f.frac_bits >= 4:
        pa[1, 0] = 2.0 ** (f.emin - 4); pb[1, 0] = 2.0 ** kbig
        s = o.split(f.emin + kbig - F - 2)
        if s is not None:
            pa[1, 1] = 2.0 ** s[0]; pb[1, 1] = 2.0 ** s[1]
    pa[2, 0] = 2.0 ** max(-70, f.emin); pb[2, 0] = 2.0 ** max(-70, f.emin)
    try:
        d = unit.mma(pa, pb, np.zeros(3, _F32)).astype(np.float64)
        ev["subnormal_inputs"] = {"value": "kept" if d[0] == sub * 2.0 ** kbig else "flushed", "evidence": f"{sub}*2^{kbig} -> {d[0]!r}"}
        if F and f.frac_bits >= 4:
            want_actual = 2.0 ** (f.emin - 4 + kbig) + 2.0 ** (f.emin + kbig - F - 2)
            ev["subnormal_exponent"] = {"value": "actual" if d[1] == want_actual else "emin", "evidence": f"-> {d[1]!r}"}
        tiny = 2.0 ** (2 * max(-70, f.emin))
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
    from hspi_kernels.probes.targets import to_format

    rng = np.random.default_rng(seed)
    f = get_format(unit.in_format)
    K = unit.K
    out = []
    per = count // 5
    lo, hi = f.emin - f.frac_bits, f.emax

    def mk(exps, n):
        x = rng.standard_normal(n) * np.exp2(exps)
        x = np.clip(x, -f.max_finite, f.max_finite).astype(np.float32)
        return to_format(x, unit.in_format)

    for kind in range(5):
        shape = (per, K)
        if kind == 0:  # moderate spread
            ea, eb = rng.integers(-8, 8, shape), rng.integers(-8, 8, shape)
            c = (rng.standard_normal(per) * np.exp2(rng.integers(-10, 10, per))).astype(_F32)
        elif kind == 1:  # wide spread
            ea, eb = rng.integers(max(lo, -60), min(hi, 60), shape), rng.integers(max(lo, -60), min(hi, 60), shape)
            c = (rng.standard_normal(per) * np.exp2(rng.integers(-100, 100, per))).astype(_F32)
        elif kind == 2:  # cancellation
            ea, eb = rng.integers(-4, 4, shape), rng.integers(-4, 4, shape)
            c = np.zeros(per, _F32)
        elif kind == 3:  # tiny: products near and below fp32 subnormals, subnormal c
            ea = rng.integers(max(lo, -80), max(lo, -80) + 12, shape)
            eb = rng.integers(max(lo, -80), max(lo, -80) + 12, shape)
            c = (rng.standard_normal(per) * np.exp2(rng.integers(-149, -120, per))).astype(_F32)
        else:  # subnormal operands of the input format
            ea = rng.integers(lo, lo + f.frac_bits + 3, shape)
            eb = rng.integers(0, min(hi, 100), shape)
            c = np.where(rng.random(per) < 0.5, 0, rng.standard_normal(per) * 2.0 ** -100).astype(_F32)
        a, b = mk(ea, shape), mk(eb, shape)
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


def _matches(model: TC.BlockModel, a, b, c, want_bits) -> int:
    try:
        got = TC.chain(model, a, b, c).view(np.uint32)
    except ValueError:
        return -1
    return int(np.sum(got == want_bits))


def _propose(unit: Unit, ev: dict) -> TC.BlockModel:
    get = lambda k, default: ev.get(k, {}).get("value") if ev.get(k, {}).get("value") is not None else default
    out_frac = get("out_fraction_bits", 23)
    out_format = {23: "fp32", 13: "e8m13", 10: "fp16"}.get(out_frac, "fp32")
    if out_frac is not None and out_frac >= 23:
        out_format = "fp32"
    rounding = get("out_rounding", "RZ")
    rounding = rounding if rounding in ("RZ", "RNE") else "RZ"
    return TC.BlockModel(f"card:{unit.name}", unit.arch, unit.path if unit.path in ("mma.sync", "wgmma", "tcgen05") else "mma.sync",
                         unit.in_format, out_format, int(get("G", 16)), int(get("F", 24)), rounding, None,
                         int(get("input_low_bits_ignored", 0)), "hspi card", get("subnormal_exponent", "actual"),
                         get("zero_sign", "ieee"))


FLOOR_CANDIDATES = (None, -126, -127, -133, -134, -149, -150, -160)


def numerics_card(unit: Unit, n_verify: int = 100_000, seed: int = 0, fit_blocks: int = 20_000) -> dict:
    """The card of ``unit``: parameters, per-feature evidence, fit and verification counts."""
    t0 = time.perf_counter()
    ev = _features(unit)
    model = _propose(unit, ev)
    a, b, c = _blocks(unit, fit_blocks, seed)
    want = np.asarray(unit.mma(a, b, c), dtype=_F32).view(np.uint32)
    total = len(want)
    best = _matches(model, a, b, c, want)
    history = [{"model": model_params(model), "matches": best}]
    floors_equal = []
    if best < total:
        alts = []
        for rnd, sub, zs, fl, dF in itertools.product(("RZ", "RNE"), ("actual", "emin"), ("ieee", "positive"),
                                                       FLOOR_CANDIDATES, (0, -1, 1)):
            alts.append(replace(model, out_rounding=rnd, subnormal_exponent=sub, zero_sign=zs, emax_floor=fl, F=model.F + dF))
        proposed = model_params(model)
        # ties go to the model that keeps most of what the feature tests measured
        scored = [(_matches(m, a, b, c, want), sum(model_params(m)[k] == v for k, v in proposed.items()), m) for m in alts]
        score, _, model = max(scored, key=lambda t: (t[0], t[1]))
        best = score
        history.append({"model": model_params(model), "matches": best, "searched": len(alts)})
    # floors the data cannot tell apart
    for fl in FLOOR_CANDIDATES:
        if _matches(replace(model, emax_floor=fl), a, b, c, want) == best:
            floors_equal.append(fl)
    va, vb, vc = _blocks(unit, max(n_verify, 100), seed + 1)
    vwant = np.asarray(unit.mma(va, vb, vc), dtype=_F32).view(np.uint32)
    verified = _matches(model, va, vb, vc, vwant)
    params = model_params(model)
    return {
        "unit": unit.name, "in_format": unit.in_format, "K": unit.K, "params": params,
        "features": ev, "fit": history, "emax_floor_indistinguishable": floors_equal,
        "verify": {"matches": verified, "total": len(vwant)}, "exact": verified == len(vwant),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def card_table(card: dict):
    from rich.table import Table

    t = Table(title=f"numerics card — {card['unit']} ({card['in_format']}), verify "
                    f"{card['verify']['matches']}/{card['verify']['total']}")
    t.add_column("feature / parameter")
    t.add_column("value")
    t.add_column("evidence", overflow="fold")
    for k, v in card["params"].items():
        e = card["features"].get(k, {})
        t.add_row(k, str(v), str(e.get("evidence", "closed-loop fit")))
    for k, e in card["features"].items():
        if k not in card["params"]:
            t.add_row(k, str(e.get("value")), str(e.get("evidence")))
    t.add_row("e_max floor candidates equal on data", str(card["emax_floor_indistinguishable"]), "")
    return t
