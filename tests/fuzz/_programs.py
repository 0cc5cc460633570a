"""Register programs for _native.run_program / run_program_f64, built from fuzz bytes: mostly
well-formed (ops, registers and list ranges in bounds, a plausible block model) so that the
evaluator runs, with a share of hostile fields (registers, list ranges and n_regs out of range
or near int64 limits, unknown ops, bad models, shapes and dtypes)."""

from __future__ import annotations

import numpy as np

import _native_inputs as I

EXTREMES = [-(1 << 63), -(1 << 62), -(1 << 31) - 1, -1, 0, 1, (1 << 31), (1 << 62), (1 << 63) - 1]


def wild(fdp, lo: int, hi: int) -> int:
    """In [lo, hi] mostly; an extreme or arbitrary int64 rarely."""
    if I.rare(fdp, 24):
        return fdp.PickValueInList(EXTREMES) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(-(1 << 63), (1 << 63) - 1)
    return fdp.ConsumeIntInRange(lo, max(lo, hi))


def model(fdp) -> np.ndarray:
    if I.rare(fdp, 32):
        return np.array([wild(fdp, -5, 5) for _ in range(fdp.ConsumeIntInRange(0, 12))], np.int64)
    G = fdp.PickValueInList([4, 8, 16, 32, 2, 3, 64, 65, 0]) if not I.rare(fdp, 16) else wild(fdp, -2, 70)
    return np.array([G, wild(fdp, 1, 46), wild(fdp, 0, 2), wild(fdp, 0, 1), wild(fdp, 0, 1), wild(fdp, -140, 40),
                     wild(fdp, 0, 13), wild(fdp, 0, 1), wild(fdp, -149, -14), wild(fdp, -149, -14), wild(fdp, 0, 1)],
                    np.int64)


def program(fdp, dtype, allow_chain: bool):
    """(args for run_program, outer)"""
    n = fdp.ConsumeIntInRange(0, 40)
    extra = fdp.ConsumeIntInRange(0, 6)
    n_regs = n + 2 + extra
    if I.rare(fdp, 16):
        n_regs = wild(fdp, -3, n + 10)
    n_instrs = fdp.ConsumeIntInRange(0, 6)
    mdl = model(fdp)
    G = int(mdl[0]) if mdl.size == 11 and 0 < mdl[0] <= 64 else 4
    rows, lists = [], []
    for k in range(n_instrs):
        op = 1 if allow_chain and fdp.ConsumeIntInRange(0, 2) == 0 else 0
        if I.rare(fdp, 32):
            op = wild(fdp, -1, 3)
        start = len(lists)
        if op == 1:
            blocks = fdp.ConsumeIntInRange(0, 3)
            length = blocks * G
            if fdp.ConsumeBool() and n:  # contiguous terms
                base = fdp.ConsumeIntInRange(0, max(0, n - length)) if length <= n else 0
                lists.extend(range(base, base + length))
            else:
                lists.extend(fdp.ConsumeIntInRange(0, max(0, n - 1)) for _ in range(length))
        else:
            length = fdp.ConsumeIntInRange(0, n + 3)
            lists.extend(fdp.ConsumeIntInRange(0, max(0, n_regs - 1)) for _ in range(length))
        out = wild(fdp, n + 2, max(n + 2, n_regs - 1))
        init = wild(fdp, -1, max(-1, n_regs - 1)) if fdp.ConsumeBool() else -1
        row = [op, out, init, wild(fdp, start, start), wild(fdp, length, length), wild(fdp, 0, 1)]
        rows.append(row)
    for i in range(len(lists)):
        if I.rare(fdp, 64):
            lists[i] = wild(fdp, -2, n_regs + 2) & 0xFFFFFFFF
            lists[i] = lists[i] - (1 << 32) if lists[i] >= 1 << 31 else lists[i]
    instrs = np.array(rows, np.int64).reshape(-1, 6)
    # a wild n_regs can draw list entries beyond int32: wrap them (the evaluator sees int32 lists)
    lst = np.array([((v + (1 << 31)) % (1 << 32)) - (1 << 31) for v in lists], np.int32)
    out_reg = wild(fdp, -1, max(-1, n_regs - 1))
    K = n if not I.rare(fdp, 32) else fdp.ConsumeIntInRange(0, n + 2)
    r = fdp.ConsumeIntInRange(0, 5)
    A = I.float_array(fdp, (r, K), dtype)
    dot = fdp.ConsumeIntInRange(0, 3) != 0
    outer = fdp.ConsumeBool() if dot else I.rare(fdp, 16)
    B = None
    if dot:
        s = fdp.ConsumeIntInRange(0, 5) if outer else r
        B = I.float_array(fdp, (s, K), dtype)
    cols = B.shape[0] if outer and B is not None else 1
    C = I.float_array(fdp, (r * cols,), dtype) if fdp.ConsumeBool() else None
    if I.rare(fdp, 24):  # a wrong dtype or rank somewhere
        which = fdp.ConsumeIntInRange(0, 4)
        if which == 0:
            instrs = instrs.astype(np.int32)
        elif which == 1:
            lst = lst.astype(np.int64)
        elif which == 2:
            A = A.astype(np.float64 if dtype == np.float32 else np.float32)
        elif which == 3:
            instrs = instrs.reshape(-1)
        else:
            A = A[:, ::2] if A.shape[1] > 1 else A
    if I.rare(fdp, 64):
        instrs = np.zeros((n_instrs, 5), np.int64)
    return (instrs, lst, n, n_regs, out_reg, mdl, A, B, C, outer)
