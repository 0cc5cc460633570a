"""AMD CDNA matrix cores (MFMA: MI100 = CDNA1, MI210/MI250 = CDNA2, MI300A/X = CDNA3): literature
models, no hardware bits here (Khattak & Mikaitis publish AMD *model* outputs, not hardware
vectors; nothing in ``shared/``).

Models (MMA-Sim (Microsoft) 2025, ``mmasim/simulator/amd.py`` and ``arithmetic.py``), re-implemented
on integers / IEEE float32 here:

- ``pairwise`` (CDNA1, CDNA2 fp16/bf16): per group of G products (fp16: 4; bf16: 2, CDNA2's
  ``*_1k`` bf16: 4) the exact products are summed as a pairwise tree of fp32 RNE additions, then
  the group sum is added to the accumulator in fp32 RNE. CDNA2 flushes subnormals: inputs and c
  to +0, every partial sum below 2^-126 to a zero of its sign.
  Khattak & Mikaitis' MI100MC.m disagrees for CDNA1: c plus 4 (bf16: 2) exact products rounded
  once (``correct_rounding = 1``); that is :func:`exact_group_candidate`, and the tests carry a
  block on which the two differ. Their MI210/MI250 model is pairwise without subnormals, as here.
- ``fused_rd`` (CDNA3 fp16/bf16, G = 8; xf32, G = 4 on fp32 operands truncated to tf32): the
  products (exact, alignment exponent e_a + e_b with subnormals at the format's emin) are
  truncated toward zero onto ``2^(e - 24)``, e their largest exponent, and summed exactly; then
  the sum and c meet at ``E = max(e, e_c)``: the product sum rounded *down* (toward -inf) onto
  ``2^(E - 31)``, c rounded down onto ``2^(E - 24)``, added exactly, and the result rounded to
  fp32 RNE. c's exponent is max(floor(log2|c|), -126) and -126 for c = 0; a zero element sits at
  exponent -126 too (MMA-Sim's ``extract_significand_exponent``).
- ``fused_rd_evenodd`` (CDNA3 fp8/bf8, G = 16; the fp8 formats are the "fnuz" ones, bias 8 / 16):
  the even-k and the odd-k products each as above (F = 24), both rounded down onto the larger
  exponent's grid and added, then c as above, except that c is dropped when its exponent is
  more than 25 below E.
- ``fma`` (fp32 MFMA on CDNA1-3, fp64 MFMA on CDNA2-3: MI100 has none): an fma chain in k
  order in the accumulation format; the plans ``Sequential("fp32", fma=True)`` /
  ``Sequential("fp64", fma=True)`` (:func:`plan_of`).

Presets: :data:`AMD_PRESETS` (17: CDNA1 fp16/bf16/fp32; CDNA2 fp16/bf16/bf16_1k/fp32/fp64;
CDNA3 fp16/bf16/xf32, the four fp8/bf8 pairings, fp32/fp64). They are not
:class:`tensor_core.BlockModel` s (c joins late with its own rounding, or there is no fused
block at all), so they live here.

Evidence: every preset is *literature only* (no AMD hardware bits checked here). What the tests
show: the CDNA3 integer model equals a line-by-line Fraction transcription of MMA-Sim's
``amd_fused_dot_rd_add`` (``tests/test_amd_presets.py``), and hand blocks separate the candidates:
late c rounded down vs truncated, fp8's dropped c, pairwise vs KM's exact group, CDNA2
flushing. ``hspi card`` (``card.amd_unit``, ``--path emulated:<preset>``) recovers every preset,
closed loop (``tests/test_card_amd.py``): the five pairwise presets as its pairwise family (G,
flushing), the seven CDNA3 fused_rd / fused_rd_evenodd presets (fp16, bf16, xf32, the four fnuz
fp8/bf8 pairings) as its late-c family (``card.LateCModel``: G, the even/odd split, F, the sum's
grid and rounding, c's grid and rounding, the fp8 c drop), the five fma presets as its plan
family (``Sequential(fmt, fma=True)``; fp64 operands pass through the card as float64). That is
the card recovering these models from their own outputs, not evidence about hardware. KM's MI100
model is kept as the candidates :data:`AMD_CANDIDATES` (kind ``exact_group``); the card recovers them
too (its exact-group family for bf16, a wide-alignment block model for fp16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

import ml_dtypes
import numpy as np

from . import plans as P
from .formats import FP32
from .rounding import round_scaled

__all__ = ["AMDModel", "AMD_PRESETS", "AMD_CANDIDATES", "get_amd_preset", "mfma_block", "mfma_chain", "exact_group_candidate"]

_MMASIM = "MMA-Sim (Microsoft) 2025, mmasim/simulator/amd.py (mfma), arithmetic.py (pairwise_dot, amd_fused_dot_rd_add)"
_KM = "Khattak & Mikaitis 2025, MATLAB-tensor-core models/MI100MC.m, MI210MC.m (MI250MC = MI210MC)"
# element formats: (numpy dtype, emin of the alignment exponent)
_ELEM = {"fp16": (np.float16, -14), "bf16": (ml_dtypes.bfloat16, -126), "xf32": (np.float32, -126),
         "fp32": (np.float32, -126), "e4m3fnuz": (ml_dtypes.float8_e4m3fnuz, -7),
         "e5m2fnuz": (ml_dtypes.float8_e5m2fnuz, -15)}


@dataclass(frozen=True)
class AMDModel:
    name: str
    arch: str  # "cdna1" | "cdna2" | "cdna3"
    instruction: str  # an MFMA it covers, e.g. "v_mfma_f32_32x32x8_f16"
    in_format: str  # a's format (and b's unless in_format_b)
    kind: str  # "pairwise" | "fused_rd" | "fused_rd_evenodd" | "fma" | "exact_group" (a candidate)
    G: int
    source: str
    F: int = 24
    flush_denormals: bool = False
    in_format_b: str | None = None
    out_format: str = "fp32"

    @property
    def b_format(self) -> str:
        return self.in_format_b or self.in_format

    def to_json(self) -> dict:
        return asdict(self)


def _build() -> dict[str, AMDModel]:
    ms = []
    for arch, flush, note in (("cdna1", False, f"{_MMASIM}; KM MI100MC.m differs (exact group, one RNE)"),
                              ("cdna2", True, f"{_MMASIM}; {_KM} (pairwise, no subnormals)")):
        ms.append(AMDModel(f"{arch}.mfma/fp16->fp32", arch, "v_mfma_f32_32x32x8f16", "fp16", "pairwise", 4,
                           f"{note}; literature only", flush_denormals=flush))
        ms.append(AMDModel(f"{arch}.mfma/bf16->fp32", arch, "v_mfma_f32_32x32x4bf16", "bf16", "pairwise", 2,
                           f"{note}; literature only", flush_denormals=flush))
    ms.append(AMDModel("cdna2.mfma/bf16_1k->fp32", "cdna2", "v_mfma_f32_32x32x8bf16_1k", "bf16", "pairwise", 4,
                       f"{_MMASIM}; {_KM}; literature only", flush_denormals=True))
    for fmt, G, inst in (("fp16", 8, "v_mfma_f32_32x32x8_f16"), ("bf16", 8, "v_mfma_f32_32x32x8_bf16"),
                         ("xf32", 4, "v_mfma_f32_32x32x4_xf32")):
        ms.append(AMDModel(f"cdna3.mfma/{fmt}->fp32", "cdna3", inst, fmt, "fused_rd", G,
                           f"{_MMASIM} (fused_dot_rd_add, F=24{', tf32-truncated operands' if fmt == 'xf32' else ''}); "
                           "literature only"))
    for fa, fb, tag in (("e4m3fnuz", "e4m3fnuz", "fp8_fp8"), ("e5m2fnuz", "e5m2fnuz", "bf8_bf8"),
                        ("e4m3fnuz", "e5m2fnuz", "fp8_bf8"), ("e5m2fnuz", "e4m3fnuz", "bf8_fp8")):
        ms.append(AMDModel(f"cdna3.mfma/{tag}->fp32", "cdna3", f"v_mfma_f32_16x16x32_{tag}", fa, "fused_rd_evenodd",
                           16, f"{_MMASIM} (fused_dot_rd_add, is_fp8: even/odd halves, F=24); literature only",
                           in_format_b=fb))
    for arch in ("cdna1", "cdna2", "cdna3"):
        ms.append(AMDModel(f"{arch}.mfma/fp32->fp32", arch, "v_mfma_f32_16x16x4f32", "fp32", "fma", 1,
                           f"{_MMASIM} (fma chain); literature only"))
    for arch in ("cdna2", "cdna3"):
        ms.append(AMDModel(f"{arch}.mfma/fp64->fp64", arch, "v_mfma_f64_16x16x4f64", "fp64", "fma", 1,
                           f"{_MMASIM} (fma chain); literature only", out_format="fp64"))
    return {m.name: m for m in ms}


AMD_PRESETS: dict[str, AMDModel] = _build()
# Alternative models of the same units, not presets (one preset per unit): Khattak & Mikaitis'
# MI100 (c plus the group's exact products, one fp32 RNE), which MMA-Sim's pairwise CDNA1 model
# contradicts; ``hspi card --path emulated:<name>`` takes them, so the card can tell which of the two
# a measured MI100 follows.
AMD_CANDIDATES: dict[str, AMDModel] = {
    m.name: m for m in (
        AMDModel("cdna1.km/fp16->fp32", "cdna1", "v_mfma_f32_32x32x8f16", "fp16", "exact_group", 4,
                 f"{_KM} (MI100MC.m, correct_rounding = 1); literature only"),
        AMDModel("cdna1.km/bf16->fp32", "cdna1", "v_mfma_f32_32x32x4bf16", "bf16", "exact_group", 2,
                 f"{_KM} (MI100MC.m, correct_rounding = 1); literature only"))}


def get_amd_preset(name: str) -> AMDModel:
    if name not in AMD_PRESETS:
        raise ValueError(f"no AMD preset {name!r}; known: {sorted(AMD_PRESETS)}")
    return AMD_PRESETS[name]


def plan_of(model: AMDModel) -> P.Plan:
    """The plan of an ``fma`` model; ValueError for the others (not expressible as a plan)."""
    if model.kind != "fma":
        raise ValueError(f"{model.name}: {model.kind} is not a plan; use mfma_chain")
    return P.Sequential(model.out_format, fma=True)


# -- helpers ---------------------------------------------------------------------------------------
def _check(x, fmt):
    x = np.asarray(x, np.float64 if fmt == "fp64" else np.float32)
    if fmt in ("fp32", "fp64"):
        return x
    if fmt == "xf32":  # fp32 operands, the low 13 bits dropped (MMA-Sim truncate_to_tf32)
        return (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    dt = _ELEM[fmt][0]
    back = x.astype(dt).astype(np.float32)
    ok = (back == x) | (np.isnan(back) & np.isnan(x))
    if not ok.all():
        raise ValueError(f"{int((~ok).sum())} operand(s) not representable in {fmt}, e.g. {x[~ok].flat[0]!r}")
    return x


def _flush(x, emin=-126, keep_sign=True):
    tiny = np.abs(x) < np.float32(2.0 ** emin)
    return np.where(tiny, (x * np.float32(0)) if keep_sign else np.float32(0), x).astype(np.float32)


def _parts(x, emin):
    """(signed integer significand M, alignment exponent E) with x = M * 2^(E - 23): float32 input,
    subnormals (below 2^emin) at emin, zero at -126 (MMA-Sim)."""
    x = np.asarray(x, np.float64)
    ax = np.abs(x)
    zero = ax == 0
    _, ex = np.frexp(np.where(zero, 1.0, ax))
    E = np.maximum(ex.astype(np.int64) - 1, emin)
    M = np.ldexp(ax, (23 - E).astype(np.int32)).astype(np.int64)
    E = np.where(zero, -126, E)
    return np.where(np.signbit(x), -M, M), E


def _fused_trunc(P_, E, F):
    """MMA-Sim fused_sum: products P_ (signed, at 2^(E - 46)) truncated toward zero onto
    2^(e - F), e = max E; returns (integer sum S at 2^(e - F), e)."""
    e = np.max(E, axis=-1)
    shift = (E - 46) - (e[:, None] - F)  # <= F - 46 + 2 < 0: always a right shift
    down = np.minimum(-shift, 63)
    mag = np.abs(P_) >> down
    return np.sum(np.where(P_ < 0, -mag, mag), axis=-1), e


def _shift_floor(v, s):
    """floor(v * 2^s) for int64 v (numpy >> floors negatives)."""
    return np.where(s >= 0, v << np.maximum(s, 0), v >> np.minimum(np.maximum(-s, 0), 63))


def _fused_rd_block(model, a, b, c):
    ea_min, eb_min = _ELEM[model.in_format][1], _ELEM[model.b_format][1]
    Ma, Ea = _parts(a, ea_min)
    Mb, Eb = _parts(b, eb_min)
    Pm, Pe = Ma * Mb, Ea + Eb
    F = model.F
    if model.kind == "fused_rd":
        S, e = _fused_trunc(Pm, Pe, F)  # at 2^(e - F)
    else:
        S0, e0 = _fused_trunc(Pm[:, 0::2], Pe[:, 0::2], F)
        S1, e1 = _fused_trunc(Pm[:, 1::2], Pe[:, 1::2], F)
        e = np.maximum(e0, e1)
        S = _shift_floor(S0, e0 - e) + _shift_floor(S1, e1 - e)  # floor onto 2^(e - F)
    Mc, Ec = _parts(c, -126)
    E = np.maximum(e, Ec)
    s2 = _shift_floor(S, (e - F) - (E - 31))  # at 2^(E - 31), rounded down
    c2 = _shift_floor(Mc, (Ec - 23) - (E - 24))  # at 2^(E - 24), rounded down
    if model.kind == "fused_rd_evenodd":
        c2 = np.where(Ec >= E - 25, c2, 0)
    total = s2 + (c2 << 7)
    bits = round_scaled((total < 0).astype(np.int64), np.abs(total), E - 31, FP32, "RNE")
    out = bits.astype(np.uint32).view(np.float32)
    # non-finite: MMA-Sim returns the float64 sum (IEEE rules)
    with np.errstate(all="ignore"):
        ref = (a.astype(np.float64) * b.astype(np.float64)).sum(axis=-1) + c.astype(np.float64)
    special = ~np.isfinite(ref)
    return np.where(special, ref.astype(np.float32), out).astype(np.float32)


def _pairwise(p, flush):
    n = p.shape[-1]
    if n == 1:
        s = p[:, 0]
    else:
        m = n // 2
        s = (_pairwise(p[:, :m], flush) + _pairwise(p[:, m:], flush)).astype(np.float32)
    return _flush(s) if flush else s


def mfma_block(model: AMDModel, a, b, c) -> np.ndarray:
    """One group of G products per row: a, b [N, G], c [N] (float32; float64 for fp64)."""
    a, b = _check(a, model.in_format), _check(b, model.b_format)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != model.G:
        raise ValueError(f"{model.name}: a, b must be [N, G={model.G}], got {a.shape}, {b.shape}")
    c = np.asarray(c, np.float64 if model.out_format == "fp64" else np.float32).reshape(a.shape[0])
    if model.kind == "fma":
        from .evaluate import fma32, fma64

        return (fma64 if model.out_format == "fp64" else fma32)(a[:, 0], b[:, 0], c)
    if model.kind == "pairwise":
        if model.flush_denormals:
            emin = _ELEM[model.in_format][1]
            a, b, c = _flush(a, emin, False), _flush(b, emin, False), _flush(c, -126, False)
        with np.errstate(all="ignore"):
            p = (a * b).astype(np.float32)  # exact for fp16/bf16 (RNE if it underflows fp32)
            s = (c + _pairwise(p, model.flush_denormals)).astype(np.float32)
        return _flush(s) if model.flush_denormals else s
    if model.kind == "exact_group":
        return exact_group_candidate(a, b, c)
    return _fused_rd_block(model, a, b, c)


def mfma_chain(model: AMDModel, a, b, c=None) -> np.ndarray:
    """K-long dot products as groups k = 0, G, 2G, ... in order (each output the next c)."""
    a = np.asarray(a)
    K = a.shape[-1]
    if K % model.G or K == 0:
        raise ValueError(f"{model.name}: K={K} is not a positive multiple of G={model.G}")
    dt = np.float64 if model.out_format == "fp64" else np.float32
    acc = np.zeros(a.shape[0], dt) if c is None else np.asarray(c, dt)
    b = np.asarray(b)
    for k in range(0, K, model.G):
        acc = mfma_block(model, a[:, k:k + model.G], b[:, k:k + model.G], acc)
    return acc


def exact_group_candidate(a, b, c) -> np.ndarray:
    """Khattak & Mikaitis' MI100 model: c plus the group's exact products, one fp32 RNE rounding
    (a zero sum: +0, or -0 when c and every product are -0 / negative zeros, as IEEE addition)."""
    from .exact import round_fraction

    out = []
    for ra, rb, cv in zip(np.asarray(a, np.float32), np.asarray(b, np.float32), np.asarray(c, np.float32)):
        terms = [float(cv)] + [float(x) * float(y) for x, y in zip(ra, rb)]  # products exact in fp64
        s = sum((Fraction(t) for t in terms), Fraction(0))
        neg0 = s == 0 and all(t == 0 and np.signbit(t) for t in terms)
        out.append(round_fraction(s, "fp32", "RNE", negative_zero=bool(neg0)))
    return np.array(out, np.uint32).view(np.float32)
