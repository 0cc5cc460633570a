"""fp8 GEMMs (``torch._scaled_mm``, cuBLASLt / CUTLASS): which plan gives their bits.

fp8 inputs cannot carry the masking values of :mod:`.order` (2^39 is far beyond e4m3's 448, and
the scales act after the accumulation), so the order is found by *replay*: the op's outputs on
random fp8 operands are compared bit for bit with a small family of plans built from the Hopper
wgmma fp8 block (G = 32 products per instruction, F = 13 fraction bits of its accumulator: the
``e8m13`` output of ``TensorCore("sm_90", fmt, "e8m13", path="wgmma")``):

- ``Chain(block, k=32)`` over all of K: the fp8 "fast accumulation" (the wgmma accumulator is
  never widened), and Triton's default;
- ``SplitK(K/t, tile=t, inner=Chain(block), combine=Sequential("fp32", init="zero"))``: the
  accumulator is *promoted* every t products (every t/32 wgmma k-steps) into an fp32 register
  sum: what cuBLAS / CUTLASS do without fast accumulation ("mma promotion interval") and what
  large fp8 trainings call fine-grained accumulation;
- either of them under an outer cuBLAS split-K of ``s`` contiguous parts combined in fp32.

Candidates are screened on a few hundred outputs and the survivors replayed on all of them; the
epilogue (fp32 result times the scales, rounded to the output format) is a separate, explicit
list of candidate orders (:data:`EPILOGUES`). Nothing here imports torch.
"""

from __future__ import annotations

import numpy as np

from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import gemm
from hspi_kernels.reveal.targets import to_format

__all__ = ["block", "promotion_plan", "family", "operands", "EPILOGUES", "epilogue", "find_plans"]


def block(fmt: str = "e4m3", arch: str = "sm_90") -> P.TensorCore:
    """The wgmma fp8 block: 32 products per instruction into a 13-fraction-bit accumulator."""
    return P.TensorCore(arch, fmt, "e8m13", path="wgmma")


def promotion_plan(K: int, interval: int | None, split_k: int = 1, fmt: str = "e4m3", arch: str = "sm_90",
                   split_tile: int = 128) -> P.Plan:
    """Chain of wgmma k32 steps; ``interval``: products per promotion to fp32 (None: never);
    ``split_k``: outer contiguous parts of whole ``split_tile``-term K tiles (cuBLAS's split-K:
    ceil(tiles / split_k) tiles per part, so K = 8192 in 3 parts is 2816 + 2816 + 2560), their
    fp32 results added in order 0, 1, ..."""
    chain = P.Chain(block(fmt, arch), k=32)

    def promoted(length: int) -> P.Plan:
        if interval is None or interval >= length:
            return chain
        return P.SplitK(-(-length // interval), inner=chain, combine=P.Sequential("fp32", init="zero"), tile=interval)

    if split_k == 1:
        return promoted(K)
    part = -(-(-(-K // split_tile)) // split_k) * split_tile  # the longest part
    return P.SplitK(split_k, inner=promoted(part), combine=P.Sequential("fp32"), tile=split_tile)


def family(K: int, fmt: str = "e4m3", split_ks=range(1, 9), arch: str = "sm_90") -> list[tuple[dict, P.Plan]]:
    """(description, plan) for every promotion interval 32 .. K/2 (powers of two) and never,
    under each outer split-K factor (parts of whole 128-term tiles). Left out: plans whose
    promotion interval would straddle a part's end, and factors that leave as many non-empty
    parts as a smaller one (K = 1024 in 5, 6 or 7 parts of 2 tiles is 4 parts). One identity
    stays: no promotion under split-K s equals promotion every K/s without split-K (bits equal
    except the sign of a zero sum)."""
    out = []
    intervals = [None] + [1 << e for e in range(5, max(5, K.bit_length()))]
    for s in split_ks:
        if s > 1 and (K % 128 or K // 128 < s):
            continue
        q = -(-(K // 128) // s)  # tiles per part
        if s > 1 and -(-(K // 128) // q) != s:
            continue  # fewer non-empty parts: the same plan as that smaller factor
        part = q * 128 if s > 1 else K
        for t in intervals:
            if t is not None and (t >= part or (s > 1 and 128 % t and part % t)):
                continue
            out.append(({"promotion_interval": t, "split_k": s}, promotion_plan(K, t, s, fmt, arch)))
    return out


def operands(rng, M: int, K: int, N: int, fmt: str = "e4m3", jitter: int = 2):
    """Random fp8 operands A[M,K], B[K,N] (as float32): random signs and mantissas; the exponents
    of each run of 32 terms along K share a random offset (A and B alike), plus +-``jitter``.
    So the partial sums that get promoted or split span many binades and their fp32 additions
    round: with uniform exponents every promoted partial has about the same magnitude and ~14
    significant bits, their fp32 sums are exact, and the promotion / split-K orders agree."""
    from hspi_kernels.numerics.formats import get_format

    f = get_format(fmt)
    emin, emax = 1 - f.bias, int(np.floor(np.log2(f.max_finite)))
    span = (emax - emin) // 2 - jitter
    mid = (emax + emin) // 2
    offset = np.repeat(rng.integers(-span, span + 1, -(-K // 32)), 32)[:K]

    def draw(shape, off):
        mant = 1.0 + rng.integers(0, 1 << f.frac_bits, shape) / float(1 << f.frac_bits)
        e = np.clip(mid + off + rng.integers(-jitter, jitter + 1, shape), emin, emax)
        x = np.ldexp(mant, e.astype(np.int32)) * rng.choice([-1.0, 1.0], shape)
        return np.clip(x, -f.max_finite, f.max_finite).astype(np.float32)

    return draw((M, K), offset[None, :]), draw((K, N), offset[:, None])


# the epilogue: the fp32 accumulator ``acc`` times the scales, rounded to the output format.
# sa, sb are fp32 (scalars, or a column [M,1] / row [1,N] for row-wise scaling)
def _ab_first(acc, sa, sb):  # alpha = sa * sb in fp32, then acc * alpha (cuBLASLt's alpha)
    return acc * (sa * sb).astype(np.float32)


def _a_then_b(acc, sa, sb):  # (acc * sa) * sb, two fp32 roundings
    return ((acc * sa).astype(np.float32) * sb).astype(np.float32)


def _exact_then_round(acc, sa, sb):  # acc * sa * sb exactly (fp64 holds it), one rounding
    return (acc.astype(np.float64) * sa.astype(np.float64) * sb.astype(np.float64)).astype(np.float32)


EPILOGUES = {"fp32(sa*sb) * acc": _ab_first, "(acc*sa)*sb": _a_then_b, "acc*sa*sb exact, one rounding": _exact_then_round}


def epilogue(name: str, acc: np.ndarray, sa, sb, out_format: str) -> np.ndarray:
    sa = np.asarray(sa, dtype=np.float32)
    sb = np.asarray(sb, dtype=np.float32)
    with np.errstate(over="ignore"):
        y = np.asarray(EPILOGUES[name](np.asarray(acc, np.float32), sa, sb), dtype=np.float32)
    return to_format(y, out_format)


def find_plans(D: np.ndarray, A: np.ndarray, B: np.ndarray, candidates, out_format: str = "fp32",
               screen: tuple[int, int] = (4, 128), seed: int = 0, full_rows: int | None = None):
    """Replay every candidate (description, plan) against the op's output ``D`` of ``A @ B``
    (fp8 values as float32, unit scales). Screen on ``screen`` = (rows, cols) random outputs, then
    replay each survivor on ``full_rows`` rows (None: all) x all columns. Returns a list of dicts
    (description, plan repr, screen and full N/N), best first; a plan is exact when its full
    count is N/N."""
    rng = np.random.default_rng(seed)
    M, N = D.shape
    rows = np.sort(rng.choice(M, min(M, screen[0]), replace=False))
    cols = np.sort(rng.choice(N, min(N, screen[1]), replace=False))
    want = np.ascontiguousarray(D[np.ix_(rows, cols)], dtype=np.float32).view(np.uint32)
    results = []
    for desc, plan in candidates:
        got = gemm(plan, A[rows], B[:, cols])
        got = to_format(got, out_format)
        m = int(np.sum(got.view(np.uint32) == want))
        results.append({**desc, "plan": repr(plan), "plan_json": plan.to_json(), "screen": f"{m}/{want.size}",
                        "_m": m, "_plan": plan})
    results.sort(key=lambda r: -r["_m"])
    fr = np.arange(M) if full_rows is None else np.sort(rng.choice(M, min(M, full_rows), replace=False))
    want_full = np.ascontiguousarray(D[fr], dtype=np.float32).view(np.uint32)
    for r in results:
        if r["_m"] == want.size:
            got = gemm(r["_plan"], A[fr], B)
            got = to_format(got, out_format)
            r["full"] = f"{int(np.sum(got.view(np.uint32) == want_full))}/{want_full.size}"
        r.pop("_m")
        r.pop("_plan")
    return results
