"""Single-instruction tensor-core blocks: the GPU dump (``dump``: A, B, C and the GPU's D of one
instruction per output, on our mma.sync / wgmma kernels) and its analysis against the sm_90
block model (``analyse``).

    python -m hspi_kernels.kernels.validation.tc_blocks dump OUT.npz      (GPU; scripts/tc_dump.py)
    python -m hspi_kernels.kernels.validation.tc_blocks analyse [--show N] [--model M] [--only S]
                                                                         (any CPU; scripts/analyse_tc_blocks.py)

The dump: K equals one instruction's k (16 fp16/bf16, 8 tf32, 32 fp8), so every output is one
instruction applied to one C: the purest view of the unit's arithmetic.

Data: ``tests/data/gpu_blocks/h100_tc_blocks.npz`` (our mma.sync / wgmma kernels on an H100,
nvcc 13.0). Keys ``"{path}|{fmt}|{out}|{gen}|{z|c}|{A,B,C,D}"``; K is one instruction's k, so
``D[i, j]`` is one instruction applied to row ``A[i]``, column ``B[:, j]`` and ``C[i, j]``.

For every set (path, fmt, out, gen, c) this prints ``matches/outputs`` of the current sm_90 preset
through ``tensor_core.chain`` (numpy) and ``evaluate.gemm`` (native C++), and of each rule of the
sm_90 model reverted on its own (the negative controls of tests/test_tc_gpu_blocks.py):

  emin      subnormal operands aligned at their format's emin (reverted: actual exponent)
  zero+     every zero result is +0 (reverted: IEEE sign rules, RZ underflow keeps the sign)
  floor     e_max floored at -133 (reverted: no floor)

``--show N`` lists the first N mismatches of each failing set (model given by ``--model``:
``preset`` or one of the reverted rules): operands, exact products with their alignment
exponents, c, the exact sum, the GPU bits and the model bits.

mma.sync e4m3 is not a single block on Hopper (ptxas emulates it with two fp16 HMMAs and an
fp32 FADD of C); it is compared with ``validation.tensor_core.fp8_mma_sync_emulated``.

"""

from __future__ import annotations

import argparse
import dataclasses
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from hspi_kernels.kernels.validation import tensor_core as V
from hspi_kernels.kernels.validation.tensor_core import fp8_mma_sync_emulated, same_bits
from hspi_kernels.numerics import evaluate as E
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics import tensor_core as T
from hspi_kernels.platform.files import atomic_write_npz, open_npz_bounded, size_limit

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "gpu_blocks" / "h100_tc_blocks.npz"
REVERTED = {  # each sm_90 rule, reverted on its own
    "emin": {"subnormal_exponent": "actual"},
    "zero+": {"zero_sign": "ieee"},
    "floor": {"emax_floor": None},
}


MAX_BLOCKS_BYTES = 256 << 20  # a block-set npz; $HSPI_MAX_BLOCKS_MB overrides
MAX_BLOCKS_ENV = "HSPI_MAX_BLOCKS_MB"


def load(path=DATA) -> dict[str, dict[str, np.ndarray]]:
    """{set key "path|fmt|out|gen|z": {"A", "B", "C", "D"}} (C is all zeros for "z"); a too large
    (``MAX_BLOCKS_BYTES``), truncated or corrupt file is a ValueError naming it."""
    sets: dict[str, dict[str, np.ndarray]] = {}
    with open_npz_bounded(path, size_limit(MAX_BLOCKS_BYTES, MAX_BLOCKS_ENV), kind="block-set file") as npz:
        for key in npz.files:
            if "|" not in key:
                raise ValueError(f"{path}: entry {key!r} is not a 'set|part' block-set key")
            name, part = key.rsplit("|", 1)
            sets.setdefault(name, {})[part] = npz[key]
    return dict(sorted(sets.items()))


def preset_for(path: str, fmt: str, out: str) -> T.BlockModel:
    """The sm_90 preset our kernels declare (fp8 blocks write e8m13 into the fp32 accumulator)."""
    return T.get_preset("sm_90", fmt, "e8m13" if fmt in ("e4m3", "e5m2") else out, path)


def model_numpy(model: T.BlockModel, A, B, C) -> np.ndarray:
    """Every D[i, j] through tensor_core.chain (the blocks of one instruction, k ascending)."""
    M, K = A.shape
    N = B.shape[1]
    a = np.ascontiguousarray(np.broadcast_to(A[:, None, :], (M, N, K)))
    b = np.ascontiguousarray(np.broadcast_to(B.T[None, :, :], (M, N, K)))
    return T.chain(model, a, b, C)


def model_native(model: T.BlockModel, A, B, C) -> np.ndarray:
    """Every D[i, j] through the C++ evaluator (a preset Chain plan with ``model`` swapped in)."""
    K = A.shape[1]
    base = P.Chain(P.TensorCore("sm_70", "fp16", "fp32"), k=4)  # one chain op over K
    prog = dataclasses.replace(P.lower(base, K, True, True), model=model)
    mask = np.uint32((0xFFFFFFFF << model.input_low_bits_ignored) & 0xFFFFFFFF)
    A = (np.ascontiguousarray(A).view(np.uint32) & mask).view(np.float32)
    Bt = (np.ascontiguousarray(B.T).view(np.uint32) & mask).view(np.float32)
    return E._run_native(prog, A, Bt, np.ascontiguousarray(C, dtype=np.float32), True)


def _exp(x: float):
    return None if x == 0 else math.frexp(x)[1] - 1


def describe(model: T.BlockModel, s: dict, i: int, j: int, ours: np.ndarray) -> str:
    A, B, C, D = s["A"], s["B"], s["C"], s["D"]
    c = float(C[i, j])
    prods = [Fraction(float(A[i, k])) * Fraction(float(B[k, j])) for k in range(A.shape[1])]
    exact = sum(prods) + Fraction(c)
    lines = [f"  [{i},{j}] c={c!r} (0x{int(C.view(np.uint32)[i, j]):08x}, e={_exp(c)})  "
             f"gpu=0x{int(D.view(np.uint32)[i, j]):08x} ({float(D[i, j])!r})  "
             f"model=0x{int(ours.view(np.uint32)[i, j]):08x} ({float(ours[i, j])!r})  exact={float(exact)!r}"]
    for k, p in enumerate(prods):
        a, b = float(A[i, k]), float(B[k, j])
        lines.append(f"      k={k:2d} a={a:<13.6g}(e={_exp(a)}) b={b:<13.6g}(e={_exp(b)}) "
                     f"a*b={float(p):<15.9g}(e={_exp(float(p))})")
    return "\n".join(lines)


def analyse(show: int = 0, which: str = "preset", only: str = "") -> dict[str, dict]:
    """matches/outputs per set of the sm_90 preset (numpy and native) and of each rule reverted; printed."""
    report = {}
    for name, s in load().items():
        if only and only not in name:
            continue
        path, fmt, out, gen, z = name.split("|")
        A, B, C, D = s["A"], s["B"], s["C"], s["D"]
        n = D.size
        row = {"outputs": n}
        if path == "mma.sync" and fmt in ("e4m3", "e5m2"):
            emu = fp8_mma_sync_emulated(A, B, C if z == "c" else None, "mod4")
            row["emulation"] = int(same_bits(emu, D).sum())
            report[name] = row
            print(f"{name:32s} {'emulated 2xHMMA+FADD':>22s} {row['emulation']}/{n}")
            continue
        model = preset_for(path, fmt, out)
        numpy_out = model_numpy(model, A, B, C)
        row["numpy"] = int(same_bits(numpy_out, D).sum())
        row["native"] = int(same_bits(model_native(model, A, B, C), D).sum())
        outs = {"preset": numpy_out}
        for rule, change in REVERTED.items():
            outs[rule] = model_numpy(dataclasses.replace(model, **change), A, B, C)
            row[f"without {rule}"] = int(same_bits(outs[rule], D).sum())
        report[name] = row
        print(f"{name:32s} numpy {row['numpy']}/{n} native {row['native']}/{n}  reverted: "
              + "  ".join(f"{r} {row['without ' + r]}" for r in REVERTED))
        if show:
            bad = np.argwhere(~same_bits(outs[which], D))
            for i, j in bad[:show]:
                print(describe(model, s, int(i), int(j), outs[which]))
    return report


# ---------------------------------------------------------------------------------------------
# The GPU dump
# ---------------------------------------------------------------------------------------------
INSTR_K = {"fp16": 16, "bf16": 16, "tf32": 8, "e4m3": 32, "e5m2": 32}


def _signed(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def _settling_sets(rng):
    """Inputs that settle what the first dump could not (see tensor_core.py's docstring):
    the e_max floor (a lead product 2^T, T in -145..-125, and one small term 2^(T-d)), the sign
    of all -0 sums, bf16/tf32 subnormal operands, and which emin the c of an fp16-output block
    uses. Yields (name, fmt, out_fmt, A, B, C) with C always given (zeros included)."""
    M, N = 128, 64
    for fmt in ("bf16", "tf32"):
        K = INSTR_K[fmt]
        T = -145 + (np.arange(M) % 21)                      # lead product exponent per row
        d = 1 + (np.arange(N) % 30)                         # small term d bits below it, per column
        A = np.zeros((M, K)); B = np.zeros((K, N))
        A[:, 0] = np.exp2(T + 69.0); B[0, :] = 2.0**-69
        A[:, 1] = -1.5 * np.exp2(T + 69.0); B[1, :] = np.exp2(-69.0 - d)
        yield "floor", fmt, "fp32", V.to_format(A, fmt), V.to_format(B, fmt), np.zeros((M, N), np.float32)
        # subnormal operands: subnormal x normal products set e_max, subnormal^2 ones truncate
        e = rng.integers(-133, -126, size=(M, K))
        A = _signed(rng, (M, K)) * (1 + rng.random((M, K))) * np.exp2(e)
        Bs = _signed(rng, (K, N)) * (1 + rng.random((K, N))) * np.exp2(rng.integers(-133, -126, size=(K, N)))
        Bn = _signed(rng, (K, N)) * (1 + rng.random((K, N))) * np.exp2(rng.integers(0, 9, size=(K, N)))
        B = np.where(rng.random((K, N)) < 0.5, Bs, Bn)
        yield "opsub", fmt, "fp32", V.to_format(A, fmt), V.to_format(B, fmt), np.zeros((M, N), np.float32)
    for fmt, out_fmt in (("fp16", "fp32"), ("bf16", "fp32"), ("tf32", "fp32"), ("fp16", "fp16"), ("e4m3", "fp32")):
        K = INSTR_K[fmt]
        # every product -0 (a = -0 with b > 0, or a = +0 with b < 0), C = -0: is the sum -0?
        A = np.where(rng.random((M, K)) < 0.5, -0.0, 0.0)
        B = np.where(A[:1, :].T > -1, 1.0, 1.0) * (1 + rng.random((K, N)))
        B = np.where(np.signbit(A[0])[:, None], B, -B)
        A = np.tile(A[:1, :], (M, 1))
        C = np.full((M, N), -0.0, np.float32)
        yield "negzero", fmt, out_fmt, V.to_format(A, fmt), V.to_format(B, fmt), C
    # fp16 output: is c aligned at fp16's emin (-14) or fp32's (-126)? A tie at the output plus
    # tiny products that survive only under one of the two.
    K = 16
    A = np.zeros((M, K)); B = np.zeros((K, N))
    A[:, 0] = 2.0**-14; B[0, :] = 2.0**-11
    A[:, 1:] = (2.0**-24) * rng.integers(1, 4, size=(M, K - 1))
    B[1:, :] = _signed(rng, (K - 1, N)) * (2.0**-18) * (1 + rng.integers(0, 2, size=(K - 1, N)))
    C = ((2.0**-24) * rng.integers(1, 8, size=(M, N))).astype(np.float32)
    yield "cemin", "fp16", "fp16", V.to_format(A, "fp16"), V.to_format(B, "fp16"), V.to_format(C, "fp16")


def dump(out: str) -> None:
    """Run every (path, format, generator, c) set and the settling sets on the GPU; write ``out`` (npz)."""
    rng = np.random.default_rng(7)
    arrays = {}
    M, N = 128, 64
    for path in ("mma.sync", "wgmma"):
        for fmt, out_fmt in (("fp16", "fp32"), ("bf16", "fp32"), ("tf32", "fp32"), ("e4m3", "fp32"),
                             ("fp16", "fp16")):
            for gen in ("random", "spread", "cancel", "subnormal", "gdisc"):
                for with_c in (False, True):
                    K = INSTR_K[fmt]
                    A, B = V.make_inputs(gen, fmt, M, N, K, rng)
                    C = V.make_c(A, B, out_fmt, rng) if with_c else None
                    D = V.gpu_gemm(path, A, B, C, fmt, out_fmt)
                    key = f"{path}|{fmt}|{out_fmt}|{gen}|{'c' if with_c else 'z'}"
                    arrays[key + "|A"] = A.astype(np.float32)
                    arrays[key + "|B"] = B.astype(np.float32)
                    arrays[key + "|C"] = (np.zeros((M, N), np.float32) if C is None else C.astype(np.float32))
                    arrays[key + "|D"] = D.astype(np.float32)
    # issue 19: wgmma fp8 with an fp16 accumulator (no mma.sync kernel: ptxas emulates that path)
    for fmt in ("e4m3", "e5m2"):
        for gen in ("random", "spread", "cancel", "subnormal", "gdisc"):
            for with_c in (False, True):
                A, B = V.make_inputs(gen, fmt, M, N, INSTR_K[fmt], rng)
                C = V.make_c(A, B, "fp16", rng) if with_c else None
                D = V.gpu_gemm("wgmma", A, B, C, fmt, "fp16")
                key = f"wgmma|{fmt}|fp16|{gen}|{'c' if with_c else 'z'}"
                C = np.zeros((M, N), np.float32) if C is None else C
                for part, arr in zip("ABCD", (A, B, C, D)):
                    arrays[f"{key}|{part}"] = np.asarray(arr, np.float32)
    for path in ("mma.sync", "wgmma"):
        for name, fmt, out_fmt, A, B, C in _settling_sets(rng):
            D = V.gpu_gemm(path, A, B, C, fmt, out_fmt)
            key = f"{path}|{fmt}|{out_fmt}|{name}|{'c' if np.any(C.view(np.uint32)) else 'z'}"
            for part, arr in zip("ABCD", (A, B, C, D)):
                arrays[f"{key}|{part}"] = np.asarray(arr, np.float32)
    out = out if str(out).endswith(".npz") else f"{out}.npz"  # (the name np.savez would have used)
    atomic_write_npz(out, arrays)
    print(f"wrote {len(arrays) // 4} block sets to {out}")



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="GPU: write the block sets to OUT.npz")
    d.add_argument("out")
    a = sub.add_parser("analyse", help="CPU: the sets against the sm_90 model")
    a.add_argument("--show", type=int, default=0, help="mismatches to list per set")
    a.add_argument("--model", default="preset", choices=["preset", *REVERTED])
    a.add_argument("--only", default="", help="only sets whose key contains this")
    args = ap.parse_args(argv)
    if args.cmd == "dump":
        dump(args.out)
        return 0
    report = analyse(args.show, args.model, args.only)
    failing = [k for k, r in report.items()
               if r.get("numpy", r.get("emulation")) != r["outputs"] or r.get("native", r["outputs"]) != r["outputs"]]
    print(f"{len(report) - len(failing)}/{len(report)} sets N/N" + (f"; failing: {failing}" if failing else ""))
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
