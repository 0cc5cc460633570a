"""Regression tests for what fuzzing found in hspi_kernels._native (tests/fuzz/): each hostile
call is now a ValueError instead of a crash, undefined behaviour or a silently wrong answer.
Each case was a process abort (std::terminate from an exception inside an OpenMP region), an
out-of-bounds access, a signed overflow, or a wrong result before the fix."""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels import _native as N
from hspi_kernels.numerics import evaluate as E
from hspi_kernels.numerics import plans as P

U32 = np.arange(16, dtype=np.uint32)


def _prog(plan=P.Sequential("fp32"), n=4, dot=False):
    return P.lower(plan, n, dot, False)


def _run(prog, A, B=None, **override):
    args = dict(instrs=prog.instrs, lists=prog.lists, n=prog.n, n_regs=prog.n_regs, out=prog.out,
                model=np.zeros(0, np.int64), A=A, B=B, C=None, outer=False)
    args.update(override)
    return N.run_program(**args)


def test_a_valid_program_still_runs():
    prog = _prog()
    A = np.ones((2, 4), np.float32)
    assert _run(prog, A).tolist() == [4.0, 4.0]


@pytest.mark.parametrize("n_regs_delta", [-1, -2, -10, 1, 100, 1 << 40])
def test_run_program_rejects_n_regs_out_of_range(n_regs_delta):
    """n_regs < n + 2 used to size the scratch registers negatively: std::length_error thrown
    inside the OpenMP region, which terminates the process; a huge n_regs allocated per thread."""
    prog = _prog()
    with pytest.raises(ValueError, match="malformed program"):  # n_regs, or the out register beyond it
        _run(prog, np.ones((2, 4), np.float32), n_regs=prog.n_regs + n_regs_delta)


def test_run_program_rejects_an_empty_program_with_no_registers():
    prog = _prog()
    with pytest.raises(ValueError, match="n_regs"):
        _run(prog, np.ones((1, 4), np.float32), instrs=np.zeros((0, 6), np.int64), n_regs=prog.n)


@pytest.mark.parametrize("out", [0, 3, -2, 10**6, -(1 << 62)])
def test_run_program_rejects_an_out_register_out_of_range(out):
    """out was never checked: R[out - n] read outside the register file."""
    prog = _prog()
    with pytest.raises(ValueError, match="out register"):
        _run(prog, np.ones((1, 4), np.float32), out=out)


def test_run_program_rejects_list_ranges_that_overflow():
    """list_start + list_len overflowed int64 and passed the bounds check."""
    prog = _prog()
    instrs = np.array(prog.instrs)
    instrs[0, 3], instrs[0, 4] = 1, (1 << 63) - 1
    with pytest.raises(ValueError, match="malformed"):
        _run(prog, np.ones((1, 4), np.float32), instrs=instrs)


def _chain_args(**model_override):
    tc = P.Chain(block=P.TensorCore("sm_90", "bf16", "fp32"), k=16)
    prog = P.lower(tc, 16, True, False)
    m = [16, 25, 0, 0, 0, 0, 0, 0, -133, -126, 0]
    for k, v in model_override.items():
        m[int(k[1:])] = v
    return prog, np.array(m, np.int64)


@pytest.mark.parametrize("override, msg", [({"m6": 32}, "low bits"), ({"m6": -1}, "low bits"),
                                           ({"m4": 1, "m5": (1 << 31) - 1}, "floor"),
                                           ({"m4": 1, "m5": -(1 << 40)}, "floor"),
                                           ({"m8": -(1 << 32) - 5}, "emin")])
def test_run_program_rejects_block_models_out_of_range(override, msg):
    """low_bits >= 32 was a shift by >= the width; an e_max floor near INT_MAX overflowed int."""
    prog, model = _chain_args(**override)
    A = np.ones((1, 16), np.float32)
    with pytest.raises(ValueError, match=msg):
        _run(prog, A, A, model=model)


def test_all_zero_block_gives_zero():
    """All products and c zero: the grid shift of a zero product came out negative (UB)."""
    prog, model = _chain_args()
    A = np.zeros((1, 16), np.float32)
    B = np.ones((1, 16), np.float32)
    out = _run(prog, A, B, model=model)
    assert out.tobytes() == np.zeros(1, np.float32).tobytes()


def test_fields_rejects_exponent_fields_wider_than_16_bits():
    """The exponent output is u8/u16: a 49-bit field was silently truncated."""
    x = np.arange(8, dtype=np.uint64) << np.uint64(20)
    with pytest.raises(ValueError, match="wider than 16 bits"):
        N.features_fields(x, 64, 49, 14, True)
    s, e, f = N.features_fields(x, 64, 11, 52, True)  # fp64 still works
    assert e.dtype == np.uint16


@pytest.mark.parametrize("dtype", [object, np.complex64, "S4", "V4"])
def test_bit_inputs_must_be_numeric(dtype):
    """Object arrays' "bits" were their element pointers."""
    x = np.zeros(4, dtype=dtype) if dtype is not object else np.array([1, 2, 3, 4], dtype=object)
    if x.itemsize * 8 not in (8, 16, 32, 64):
        pytest.skip("itemsize not a format width")
    w = x.itemsize * 8
    fmt = {8: (4, 3), 16: (5, 10), 32: (8, 23), 64: (11, 52)}[w]
    with pytest.raises(ValueError, match="numeric array"):
        N.features_bit_counts(x, w, *fmt, True)


def test_fields_out_must_be_a_tuple_and_must_not_alias():
    x = U32.copy()
    outs = (np.zeros(16, np.uint8), np.zeros(16, np.uint8), np.zeros(16, np.uint32))
    N.features_fields(x, 32, 8, 23, True, outs)
    with pytest.raises(ValueError, match="tuple"):
        N.features_fields(x, 32, 8, 23, True, list(outs))
    with pytest.raises(ValueError, match="tuple"):
        N.features_fields(x, 32, 8, 23, True, 5)
    with pytest.raises(ValueError, match="overlap"):  # the input as the fraction output
        N.features_fields(x, 32, 8, 23, True, (outs[0], outs[1], x))
    with pytest.raises(ValueError, match="overlap"):
        N.features_fields(x, 32, 8, 23, True, (outs[0], outs[0], outs[2]))


def test_rounding_direction_rejects_non_ieee_wide_formats_and_integer_references():
    low = np.zeros(4, np.uint32)
    ref = np.zeros(4, np.float64)
    N.features_rounding_direction(low, ref, 32, 8, 23, True, 64)
    with pytest.raises(ValueError, match="IEEE"):  # was silently decoded as binary32
        N.features_rounding_direction(low, ref, 32, 5, 26, True, 64)
    with pytest.raises(ValueError, match="float32/float64"):
        N.features_rounding_direction(low, np.zeros(4, np.uint64), 32, 8, 23, True, 64)


def test_native_and_numpy_still_agree_after_the_checks():
    rng = np.random.default_rng(0)
    for plan in (P.Sequential("fp32"), P.Pairwise(), P.numpy_sum_plan(), P.Sequential("fp64", fma=True)):
        dt = np.float64 if P.plan_format(plan) == "fp64" else np.float32
        a, b = rng.standard_normal((2, 5, 33)).astype(dt)
        for ops in (a, (a, b)):
            assert E.evaluate(plan, ops, backend="native").tobytes() == \
                E.evaluate(plan, ops, backend="numpy").tobytes()
