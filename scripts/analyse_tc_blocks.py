"""Analyse the H100 single-instruction tensor-core blocks against the sm_90 block model.

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

Usage: python scripts/analyse_tc_blocks.py [--show N] [--model preset|emin|zero+|floor] [--only SUBSTR]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from hspi_kernels.numerics import evaluate as E
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics import tensor_core as T
from hspi_kernels.kernels.validation.tensor_core import same_bits

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "gpu_blocks" / "h100_tc_blocks.npz"
REVERTED = {  # each sm_90 rule, reverted on its own
    "emin": {"subnormal_exponent": "actual"},
    "zero+": {"zero_sign": "ieee"},
    "floor": {"emax_floor": None},
}


def load(path=DATA) -> dict[str, dict[str, np.ndarray]]:
    """{set key "path|fmt|out|gen|z": {"A", "B", "C", "D"}} (C is all zeros for "z")."""
    npz = np.load(path)
    sets: dict[str, dict[str, np.ndarray]] = {}
    for key in npz.files:
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
    from hspi_kernels.kernels.validation.tensor_core import fp8_mma_sync_emulated

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--show", type=int, default=0, help="mismatches to list per set")
    ap.add_argument("--model", default="preset", choices=["preset", *REVERTED])
    ap.add_argument("--only", default="", help="only sets whose key contains this")
    args = ap.parse_args(argv)
    report = analyse(args.show, args.model, args.only)
    failing = [k for k, r in report.items()
               if r.get("numpy", r.get("emulation")) != r["outputs"] or r.get("native", r["outputs"]) != r["outputs"]]
    print(f"{len(report) - len(failing)}/{len(report)} sets N/N" + (f"; failing: {failing}" if failing else ""))
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
