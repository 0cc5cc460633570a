"""Parameterised tensor-core block model and per-architecture presets.

One fused block step ``d = c + sum_{i<G} a_i * b_i`` (Fasi et al. 2021; Khattak & Mikaitis 2025,
"Accurate models of NVIDIA tensor cores"; MMA-Sim 2025):

1. products are exact; a product's alignment exponent is ``e_a + e_b`` where ``e_x`` is the
   *actual* exponent ``floor(log2|x|)`` of each operand (``subnormal_exponent="actual"``:
   subnormal inputs are normalised, every product significand lies in [1, 4)), or, with
   ``subnormal_exponent="emin"``, ``max(floor(log2|x|), emin)`` of x's format (a subnormal sits
   at emin with significand 0.xxx, unnormalised; the value itself is unchanged);
2. ``c`` (exponent ``floor(log2|c|)``, with "emin" at least the emin of c's format: fp16 for
   fp16 output, else fp32's -126) joins the same alignment; ``e_max`` is the largest alignment
   exponent over the non-zero terms, raised to ``emax_floor`` when one is set (a zero c or a
   zero product takes no part);
3. every term is truncated toward zero, in sign-magnitude, onto the grid ``2^(e_max - F)``;
   the truncated terms are summed exactly (no sticky bit, no normalisation inside the block);
4. the integer sum is normalised once and rounded to the output format (fp32: RZ; fp16: RNE;
   Hopper fp8: ``e8m13``, fp32 truncated to 13 fraction bits, RZ). Overflow follows
   :mod:`rounding` (RZ: ±max finite; RNE: ±inf).

Special values: any NaN operand, ``0 * inf`` or ``+inf`` meeting ``-inf`` gives NaN (fp32
pattern 0x7FFFFFFF); otherwise an infinite product or ``c`` gives that infinity. A zero sum is
+0 unless every term (each product and ``c``) is -0, then -0 (IEEE's rule for exact sums under
round-to-nearest and toward-zero) with ``zero_sign="ieee"``; with ``zero_sign="positive"`` every
zero result is +0, including a non-zero sum that rounds (underflows) to zero.

A long K is a chain of blocks in order k = 0, G, 2G, ...: each block's output is the next
block's ``c``.

Presets and their sources (the GPU vectors of ``tests/data/tensor_core`` are Khattak &
Mikaitis' published hardware outputs; counts are bit-exact matches out of 5000, measured by
``tests/test_tensor_core.py``):

- sm_70 (Volta) fp16: G=4, F=23 -- Fasi et al. 2021; Khattak & Mikaitis 2025.
  V100 fp16->fp32 5000/5000, fp16->fp16 5000/5000.
- sm_75 (Turing) fp16: G=8, F=24 -- Khattak & Mikaitis 2025 (m16n8k8). No vectors here.
- sm_80/sm_86 (Ampere), sm_89 (Ada) fp16/bf16: G=8, F=24; tf32: G=4, F=24 -- Fasi et al. 2021
  (A100), Khattak & Mikaitis 2025. A100 fp16->fp32 5000/5000, fp16->fp16 5000/5000,
  bf16->fp32 5000/5000, tf32->fp32 5000/5000 (sm_86/sm_89 share the sm_80 model, unmeasured).
- sm_89 fp8 (e4m3/e5m2): G=16, F=13, fp32 output -- MMA-Sim 2025. No vectors here.
- sm_90 (Hopper) mma.sync and wgmma fp16/bf16: G=16, F=25; tf32: G=8, F=25 with the low 13 bits
  of fp32 operands ignored; fp8: G=32, F=13, output e8m13 -- Khattak & Mikaitis 2025, MMA-Sim
  2025. H100 fp16->fp32 5000/5000, bf16->fp32 5000/5000. Our H100 kernels' single-instruction
  blocks: 8192/8192 in all 90 block sets (tf32 G=8/F=25 with the low 13 bits dropped, wgmma
  e4m3 G=32/F=13/e8m13 with c = 0 and c != 0 included) with the three Hopper rules below.
  mma.sync fp8 is not a block on Hopper: ptxas emits two fp16 HMMAs + an fp32 FADD of C, which
  ``validation.tensor_core.fp8_mma_sync_emulated`` reproduces 8192/8192 in all 10 sets.
- sm_100 (Blackwell) fp16/bf16: G=16, F=25; tf32: G=8, F=25; fp8 (tcgen05 path only): G=32,
  F=25 -- MMA-Sim 2025. No vectors. The mma.sync fp8 path on Blackwell differs and is not
  modelled (``get_preset`` refuses it).

Hopper rules measured on our H100 kernels (``tests/data/gpu_blocks/h100_tc_blocks.npz``: one
mma.sync / wgmma instruction per output, K = the instruction's k; 90 block sets of 8192
outputs; ``tests/test_tc_gpu_blocks.py``, ``scripts/analyse_tc_blocks.py``). With the three rules
below every set is 8192/8192 (fp16->fp32, bf16->fp32, tf32->fp32, fp16->fp16, wgmma e4m3->fp32;
random, spread, cancel, subnormal, gdisc; C = 0 and C != 0) and the published H100 vectors stay
5000/5000 (no subnormal, no zero and no result below 2^-126 in them: none of the three rules can
change them). Set on every sm_90 preset; other arches keep the defaults (unmeasured there):

- ``subnormal_exponent="emin"``. Operands: reverting it fails fp16->fp32 subnormal 4819 / 3598
  (mma.sync c / z), 4928 / 3491 (wgmma), wgmma e4m3 subnormal 5248 / 2745 and gdisc 7718 / 7335,
  fp16->fp16 subnormal 8191 / 8191 (mma c / z) and z 8190 (wgmma). c: bf16/tf32 inputs in the
  data are never subnormal but C holds fp32 subnormals; normalising c fails bf16 subnormal/c
  8091 (mma), 8074 (wgmma), tf32 subnormal/c 7862, 7818. Not exercised: the fp16-output c
  (fp16 emin -14 vs fp32 -126 give the same bits on all data), bf16/tf32 subnormal *operands*,
  and e5m2 (no data at all; it follows e4m3).
- ``zero_sign="positive"``: the GPU never wrote -0 in any of the 819,200 outputs, also where the
  sum is negative and rounds to zero (fp32 RZ underflow, fp16 RNE) -- reverting it fails bf16
  subnormal/c 8027 / 8059 (mma / wgmma), tf32 subnormal/c 7901 / 7789, fp16->fp16 subnormal/c
  7666 / 7660, cancel/c 8186 / 8188, subnormal/z 8191 (mma), random/c 8191 (wgmma). No output
  has every term -0 (c = -0 and all products -0): that case rests on the rule, not on data.
- ``emax_floor=-133`` (on the ``e_a + e_b`` alignment exponent; it only matters when c is zero,
  since a non-zero c already puts e_max at >= -126): pinned by two outputs -- no floor or -134
  fails mma.sync bf16 subnormal/z (8191), -132 fails wgmma tf32 subnormal/z (8191), -131 fails 4
  more. One value for the arch (bf16, tf32; fp16/fp8 products never get that low).
Settling dump (the same file, 30 more sets per GPU dump, designed from the open questions above
and predicted by the model *before* they were recorded: 120/120 sets 8192/8192 through numpy and
C++): the floor sweep (lead product 2^T, T in -145..-125, one term 2^(T-d) below it; bf16 and tf32,
mma.sync and wgmma) fails with no floor (7210/8192), -134 (8044) and -132 (8032), so -133 now rests
on ~1000 outputs per set; every product -0 with c = -0 gives +0 in every format and path (IEEE
would give -0: reverting ``zero_sign`` matches 0/8192); fp16-output c is aligned at fp16's emin -14
(the actual exponent matches 4045 / 4343 of 8192); tf32 subnormal operands follow "emin" (actual:
6958 / 6714), bf16 ones give the same bits either way on this data.
Not exercised by any data: fp32-output overflow (modelled as IEEE RZ: ±max finite), NaN/inf.

fp8 presets of issue 19 (``tests/test_fp8_presets.py``; vectors: Khattak & Mikaitis' repository
``north-numerical-computing/MATLAB-tensor-core``, ``model_validation/``, 5000 blocks of K=32 each):

- ``sm_89.mma/{e4m3,e5m2}->e8m13``: G=16, F=13, fp32 register truncated to 13 fraction bits --
  MMA-Sim (``mma``: Ada fp8 F=13, k32 as two k16 halves, output ``f32_e8m13``), KM ``AdaTC.m``
  (fma 16, neab -10, which lowers the output's fraction bits by 10). Published Ada e4m3 5000/5000,
  Ada e5m2 5000/5000, L40S e4m3 5000/5000, L40S e5m2 5000/5000. The older
  ``sm_89.mma/*->fp32`` (full fp32 output) gives 3945 / 4038 of 5000 on those vectors: kept only
  because other code names it.
- ``sm_89.mma/{e4m3,e5m2}->fp16``: G=16, F=13, fp16 RNE after each k16 block -- MMA-Sim, KM
  (frmode rne). Published Ada e4m3 5000/5000, e5m2 5000/5000.
- ``sm_90.wgmma/{e4m3,e5m2}->fp16``: G=32, F=13, fp16 RNE (c aligned at fp16's emin, sm_90 rules)
  -- MMA-Sim's wgmma model (no public vectors: KM's H100/H200 fp8 fp16 files come from mma.sync,
  which ptxas emulates: ``fp8_emulation``, 5000/5000 there). Measured on our H200 wgmma kernels
  (``python -m hspi_kernels.kernels.validation.fp8_f16``, docs/results/h200/fp8_f16_decide.json):
  327680/327680 over e4m3/e5m2, 5 generators, c = 0 and != 0, K = 32 and 128; of 27 candidates
  only G=32/F=13/RNE fits (the e_max floor and zero_sign=ieee variants tie on these data).
- ``sm_100.tcgen05/{e4m3,e5m2}->fp16``: G=32, F=25, fp16 RNE -- MMA-Sim (tcgen05mma). Literature
  only. (KM's B200 fp8 vectors are mma.sync, the ptxas emulation again: 5000/5000 there.)
Other arches: ``emax_floor`` unset; their published vectors (smallest e_max -4, no zeros, no
subnormal operands) cannot decide a floor or the subnormal/zero rules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .formats import FP16, FP32, Format, decode, get_format
from .rounding import decompose, is_representable, round_scaled, round_to_format

__all__ = ["BlockModel", "PRESETS", "get_preset", "block_fma", "chain"]

_IN_FORMATS = ("fp16", "bf16", "tf32", "e4m3", "e5m2")
_OUT_FORMATS = ("fp32", "fp16", "e8m13")
_PATHS = ("mma.sync", "wgmma", "tcgen05")
_NAN32 = 0x7FFFFFFF  # what NVIDIA tensor cores write for a NaN result


@dataclass(frozen=True)
class BlockModel:
    name: str  # e.g. "sm_90.mma/bf16->fp32"
    arch: str  # "sm_90"
    path: str  # "mma.sync" | "wgmma" (| "tcgen05" for sm_100 fp8)
    in_format: str  # "fp16" | "bf16" | "tf32" | "e4m3" | "e5m2"
    out_format: str  # "fp32" | "fp16" | "e8m13"
    G: int  # products per block
    F: int  # fraction bits kept below e_max
    out_rounding: str  # "RZ" | "RNE"
    emax_floor: int | None
    input_low_bits_ignored: int  # low bits of the fp32 operand words the hardware drops
    source: str  # citation
    # Alignment exponent of subnormal operands: "actual" (floor(log2|x|), normalised) or "emin"
    # (the format's minimum normal exponent, significand 0.xxx: a, b in in_format, c in the
    # accumulator format -- fp16 for fp16 output, else fp32).
    subnormal_exponent: str = "actual"
    # Sign of a zero result: "ieee" (+0 unless every term is -0; an underflow keeps the sign of
    # the sum) or "positive" (every zero result is +0).
    zero_sign: str = "ieee"

    def __post_init__(self) -> None:
        if self.in_format not in _IN_FORMATS:
            raise ValueError(f"BlockModel {self.name!r}: in_format must be one of {_IN_FORMATS}")
        if self.out_format not in _OUT_FORMATS:
            raise ValueError(f"BlockModel {self.name!r}: out_format must be one of {_OUT_FORMATS}")
        if self.G < 1 or self.F < 1:
            raise ValueError(f"BlockModel {self.name!r}: G and F must be positive")
        if self.out_rounding not in ("RZ", "RNE"):
            raise ValueError(f"BlockModel {self.name!r}: out_rounding must be 'RZ' or 'RNE'")
        if self.subnormal_exponent not in ("actual", "emin"):
            raise ValueError(f"BlockModel {self.name!r}: subnormal_exponent must be 'actual' or 'emin'")
        if self.zero_sign not in ("ieee", "positive"):
            raise ValueError(f"BlockModel {self.name!r}: zero_sign must be 'ieee' or 'positive'")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "BlockModel":
        return cls(**d)


# -- presets ------------------------------------------------------------------------------
_FASI = "Fasi, Higham, Mikaitis, Pranesh 2021, 'Numerical behavior of NVIDIA tensor cores'"
_KM = "Khattak & Mikaitis 2025, 'Accurate models of NVIDIA tensor cores' (+ their hardware vectors)"
_MMASIM = "MMA-Sim (Microsoft) 2025"
_PATH_TAG = {"mma.sync": "mma", "wgmma": "wgmma", "tcgen05": "tcgen05"}
_H100_BLOCKS = "H100 mma.sync/wgmma single-instruction blocks, tests/data/gpu_blocks/h100_tc_blocks.npz"
_SM90_EMAX_FLOOR = -133


def _model(arch, path, in_format, G, F, source, out_format="fp32", emax_floor=None, low_bits=0):
    out_rounding = "RNE" if out_format == "fp16" else "RZ"
    name = f"{arch}.{_PATH_TAG[path]}/{in_format}->{out_format}"
    extra = {}
    if arch == "sm_90":  # measured on our H100 kernels: tests/data/gpu_blocks (module doc)
        emax_floor = _SM90_EMAX_FLOOR
        extra = {"subnormal_exponent": "emin", "zero_sign": "positive"}
        source = f"{source}; {_H100_BLOCKS}"
    return BlockModel(name, arch, path, in_format, out_format, G, F, out_rounding, emax_floor, low_bits, source,
                      **extra)


def _family(arch, paths, G, F, source, formats=("fp16", "bf16")):
    """fp16/bf16 presets of one arch; fp16 input also gets fp16 (RNE) output."""
    models = []
    for path in paths:
        for in_format in formats:
            models.append(_model(arch, path, in_format, G, F, source))
            if in_format == "fp16":
                models.append(_model(arch, path, in_format, G, F, source, out_format="fp16"))
    return models


def _fp8(arch, paths, G, F, source, out_format="fp32"):
    return [_model(arch, p, f, G, F, source, out_format=out_format) for p in paths for f in ("e4m3", "e5m2")]


def _build_presets() -> dict[str, BlockModel]:
    mma, hopper, blackwell = ("mma.sync",), ("mma.sync", "wgmma"), ("mma.sync", "tcgen05")
    models = [
        *_family("sm_70", mma, 4, 23, f"{_FASI}; {_KM}", formats=("fp16",)),
        *_family("sm_75", mma, 8, 24, _KM, formats=("fp16",)),
    ]
    for arch in ("sm_80", "sm_86", "sm_89"):
        models += _family(arch, mma, 8, 24, f"{_FASI}; {_KM}")
        models.append(_model(arch, "mma.sync", "tf32", 4, 24, f"{_FASI}; {_KM}"))
    models += _fp8("sm_89", mma, 16, 13, _MMASIM)
    models += _family("sm_90", hopper, 16, 25, f"{_KM}; {_MMASIM}")
    models += [_model("sm_90", p, "tf32", 8, 25, f"{_KM}; {_MMASIM}", low_bits=13) for p in hopper]
    models += _fp8("sm_90", hopper, 32, 13, f"{_KM}; {_MMASIM}", out_format="e8m13")
    models += _family("sm_100", blackwell, 16, 25, _MMASIM)
    models += [_model("sm_100", p, "tf32", 8, 25, _MMASIM) for p in blackwell]
    models += _fp8("sm_100", ("tcgen05",), 32, 25, _MMASIM)
    models += _fp8_issue19()
    return {m.name: m for m in models}


# -- issue 19: fp8 presets re-derived from MMA-Sim / Khattak & Mikaitis and their vectors -------
_KM_VECTORS = ("Khattak & Mikaitis' published vectors (github.com/north-numerical-computing/"
               "MATLAB-tensor-core, model_validation/)")


def _fp8_issue19():
    """fp8 presets added for issue 19 (see the module doc, "fp8 presets of issue 19")."""
    ada = f"{_MMASIM} (mma, Ada: F=13, split k32 = 2 x k16, f32_e8m13 / f16 output); {_KM} (AdaTC.m: fma=16, neab=-10)"
    return [
        *_fp8("sm_89", ("mma.sync",), 16, 13, f"{ada}; {_KM_VECTORS} Ada/L40S", out_format="e8m13"),
        *_fp8("sm_89", ("mma.sync",), 16, 13, f"{ada}; {_KM_VECTORS} Ada", out_format="fp16"),
        # Measured on the H200: 327680/327680 (docs/results/h200/fp8_f16_decide.json)
        *_fp8("sm_90", ("wgmma",), 32, 13, f"{_MMASIM} (wgmma fp8: F=13, f16 output RNE); H200 327680/327680",
              out_format="fp16"),
        *_fp8("sm_100", ("tcgen05",), 32, 25, f"{_MMASIM} (tcgen05mma: F=25, f16 output RNE); literature only",
              out_format="fp16"),
    ]


PRESETS: dict[str, BlockModel] = _build_presets()


def get_preset(arch: str, in_format: str, out_format: str = "fp32", path: str = "mma.sync") -> BlockModel:
    """The preset for (arch, input, output, path); ValueError naming the known ones otherwise."""
    for model in PRESETS.values():
        if (model.arch, model.in_format, model.out_format, model.path) == (arch, in_format, out_format, path):
            return model
    same_arch = sorted(m.name for m in PRESETS.values() if m.arch == arch)
    hint = f"presets for {arch}: {same_arch}" if same_arch else f"known archs: {sorted({m.arch for m in PRESETS.values()})}"
    if arch == "sm_100" and path == "mma.sync" and in_format in ("e4m3", "e5m2"):
        hint = "the Blackwell mma.sync fp8 path is not modelled (use path='tcgen05'); " + hint
    raise ValueError(
        f"no tensor-core preset for arch={arch!r}, in_format={in_format!r}, out_format={out_format!r}, "
        f"path={path!r}; {hint}"
    )


# -- the block step -----------------------------------------------------------------------
def _as_float32(x, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != np.float32:
        raise TypeError(f"{what} must be a float32 array, got dtype {arr.dtype}")
    return arr


def _operands(model: BlockModel, x, what: str) -> np.ndarray:
    """float32 operands after dropping the bits the model ignores; ValueError if any is not
    representable in the model's input format."""
    x = _as_float32(x, what)
    if model.input_low_bits_ignored:
        keep_mask = np.uint32((0xFFFFFFFF << model.input_low_bits_ignored) & 0xFFFFFFFF)
        x = (x.view(np.uint32) & keep_mask).view(np.float32)
    ok = is_representable(x, model.in_format)
    if not np.all(ok):
        bad = x[~ok]
        raise ValueError(
            f"{what}: {bad.size} operand(s) not representable in {model.in_format} for {model.name}, "
            f"e.g. {float(bad.flat[0])!r}; round them first (rounding.round_to_format)"
        )
    return x


def _normalised(x: np.ndarray):
    """(sign, significand, exponent, is_zero, is_inf, is_nan) of float32 values with the
    significand normalised to exactly 24 bits, so x = (-1)^s * sig * 2^(exp - 23) and
    exp = floor(log2|x|) for non-zero finite x (subnormals included)."""
    sign, mag, exp, is_inf, is_nan = decompose(x)
    is_zero = (mag == 0) & ~is_inf & ~is_nan
    # Normalise fp32 subnormals (only c can be one: every input format sits inside fp32 normals
    # or zero, except e5m2/fp16 subnormals, which are fp32 normals).
    lead = np.where(is_zero, 23, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int64))
    up = 23 - lead
    return sign, mag << up, exp - up + 23, is_zero, is_inf, is_nan


def _c_format(model: BlockModel) -> Format:
    """The format c arrives in: fp16 for fp16-output blocks, else fp32."""
    return FP16 if model.out_format == "fp16" else FP32


def _c_for_output(model: BlockModel, c: np.ndarray) -> np.ndarray:
    """fp16-output blocks take c rounded to fp16 (RNE) first, as the hardware does."""
    if model.out_format != "fp16":
        return c
    return decode(round_to_format(c, FP16, "RNE"), FP16).astype(np.float32)


def _round_output(model: BlockModel, sign, mag, exp) -> np.ndarray:
    """Exact (-1)^sign * mag * 2^exp rounded to the model's output, as float32."""
    out_fmt: Format = get_format(model.out_format)
    bits = round_scaled(sign, mag, exp, out_fmt, model.out_rounding).astype(np.int64)
    if out_fmt is FP32:
        return bits.astype(np.uint32).view(np.float32)
    # Narrower outputs are subsets of fp32: widen exactly through their float64 values.
    return decode(bits, out_fmt).astype(np.float32)


def _block(model: BlockModel, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """One block on validated float32 operands: a, b [N, G], c [N]."""
    sa, ma, ea, za, ia, na = _normalised(a)
    sb, mb, eb, zb, ib, nb = _normalised(b)
    sc, mc, ec, zc, ic, nc = _normalised(c)
    # Alignment exponents (e_max only; the term values keep their actual exponents): with
    # subnormal_exponent="emin" a subnormal sits at its format's emin, unnormalised.
    align_a, align_b, align_c = ea, eb, ec
    if model.subnormal_exponent == "emin":
        in_emin, c_emin = get_format(model.in_format).emin, _c_format(model).emin
        align_a, align_b, align_c = np.maximum(ea, in_emin), np.maximum(eb, in_emin), np.maximum(ec, c_emin)

    # Products: exact integer significands (< 2^48) at value scale 2^(ea + eb - 46).
    p_sign = sa ^ sb
    p_mag = ma * mb
    p_exp = ea + eb
    p_zero = za | zb
    p_inf = (ia | ib) & ~p_zero
    nan = np.any(na | nb | ((ia | ib) & p_zero), axis=-1) | nc
    pos_inf = np.any(p_inf & (p_sign == 0), axis=-1) | (ic & (sc == 0))
    neg_inf = np.any(p_inf & (p_sign == 1), axis=-1) | (ic & (sc == 1))
    nan |= pos_inf & neg_inf
    finite = ~(ia | ib | na | nb)  # per product: usable in the integer sum

    # e_max over the non-zero finite terms (c included), raised to the arch floor if any.
    very_low = np.iinfo(np.int64).min // 4
    live_products = finite & ~p_zero
    live_c = ~zc & ~ic & ~nc
    p_align = align_a + align_b
    e_max = np.maximum(np.max(np.where(live_products, p_align, very_low), axis=-1),
                       np.where(live_c, align_c, very_low))
    if model.emax_floor is not None:
        e_max = np.maximum(e_max, model.emax_floor)
    all_zero = e_max == very_low
    e_max = np.where(all_zero, 0, e_max)
    grid_exp = e_max - model.F  # every term is cut to a multiple of 2^grid_exp

    def truncated(mag, value_exp, grid_exp):
        """Integer multiples of 2^grid_exp, truncated toward zero (value = mag * 2^value_exp)."""
        shift = value_exp - grid_exp
        down = np.minimum(np.maximum(-shift, 0), 63)
        up = np.maximum(shift, 0)  # at most F - 23 + 2 bits: stays far inside int64
        return (mag >> down) << up

    p_terms = truncated(np.where(live_products, p_mag, 0), p_exp - 46, grid_exp[:, None])
    c_term = truncated(np.where(live_c, mc, 0), ec - 23, grid_exp)
    p_signed = np.where(p_sign == 1, -p_terms, p_terms)
    total = np.sum(p_signed, axis=-1) + np.where(sc == 1, -c_term, c_term)

    out = _round_output(model, (total < 0).astype(np.int64), np.abs(total), grid_exp)

    # Zero sums: +0 unless every term is -0.
    all_terms_negative_zero = np.all(p_zero & (p_sign == 1), axis=-1) & zc & (sc == 1)
    out = np.where(total == 0, np.where(all_terms_negative_zero, np.float32(-0.0), np.float32(0.0)), out)
    if model.zero_sign == "positive":  # also the zeros an underflowing rounding gives
        out = np.where(out == 0, np.float32(0.0), out)
    out = np.where(pos_inf, np.float32(np.inf), out)
    out = np.where(neg_inf, np.float32(-np.inf), out)
    return np.where(nan, np.uint32(_NAN32).view(np.float32), out).astype(np.float32)


def block_fma(model: BlockModel, a, b, c) -> np.ndarray:
    """``d = c + sum_i a_i * b_i`` per block. a, b: float32 [..., G]; c: float32 [...].

    Returns float32 [...] (fp16/e8m13 outputs widened exactly to float32).
    """
    a = _operands(model, a, "a")
    b = _operands(model, b, "b")
    c = _as_float32(c, "c")
    if a.shape != b.shape or a.ndim == 0 or a.shape[-1] != model.G:
        raise ValueError(f"{model.name}: a and b must have the same shape [..., G={model.G}], got {a.shape} and {b.shape}")
    if c.shape != a.shape[:-1]:
        raise ValueError(f"{model.name}: c must have shape {a.shape[:-1]}, got {c.shape}")
    batch = a.shape[:-1]
    c = _c_for_output(model, c)
    d = _block(model, a.reshape(-1, model.G), b.reshape(-1, model.G), c.reshape(-1))
    return d.reshape(batch)


def chain(model: BlockModel, a, b, c=None) -> np.ndarray:
    """A K-long dot product as blocks k = 0..K/G-1 in order, each output feeding the next c."""
    a = _as_float32(a, "a")
    b = _as_float32(b, "b")
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(f"{model.name}: a and b must have the same shape [..., K], got {a.shape} and {b.shape}")
    K = a.shape[-1]
    if K == 0 or K % model.G:
        raise ValueError(f"{model.name}: K={K} is not a positive multiple of the block size G={model.G}")
    acc = np.zeros(a.shape[:-1], dtype=np.float32) if c is None else _as_float32(c, "c")
    for start in range(0, K, model.G):
        acc = block_fma(model, a[..., start : start + model.G], b[..., start : start + model.G], acc)
    return acc
