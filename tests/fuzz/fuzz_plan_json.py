"""Fuzz target: hspi_kernels.numerics.plans.plan_from_json, then lowering and evaluation of the
plan it returns on a few small inputs. Contract: ValueError for every bad plan (at parse, lower
or evaluate time); a plan that evaluates gives the same bits on the native and numpy paths
(a differential check of the C++ evaluator on real lowered programs)."""

import json

import atheris
import numpy as np

with atheris.instrument_imports(include=["hspi_kernels.numerics.plans"]):
    from hspi_kernels.numerics import evaluate as E
    from hspi_kernels.numerics import plans as P
from _common import Finding, load_native, main

load_native()
ALLOWED = (ValueError,)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    n = fdp.ConsumeIntInRange(1, 33)
    dot = fdp.ConsumeBool()
    seed = fdp.ConsumeIntInRange(0, 1 << 16)
    d = json.loads(fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes()))
    plan = P.plan_from_json(d)
    rng = np.random.default_rng(seed)
    fmt = P.plan_format(plan)
    dt = np.float64 if fmt == "fp64" else np.float32
    x = rng.standard_normal((3, n)).astype(dt)
    ops = (x, rng.standard_normal((3, n)).astype(dt)) if dot else x
    native = E.evaluate(plan, ops, backend="native")
    ref = E.evaluate(plan, ops, backend="numpy")
    if native.tobytes() != ref.tobytes():
        raise Finding(f"native and numpy evaluation differ for {plan!r}")


if __name__ == "__main__":
    main(one_input, ALLOWED)
