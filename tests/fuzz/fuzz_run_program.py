"""Fuzz target: _native.run_program (fp32 register programs: OP_SEQ and tensor-core OP_CHAIN,
reductions, paired and outer dot products). Oracle: ASan/UBSan (instrumented build) for memory
and UB; ValueError/TypeError for malformed programs; the result has one value per output."""

import atheris
import numpy as np

with atheris.instrument_imports():
    import _programs
    from _common import Finding, load_native, main

N = load_native()
ALLOWED = (ValueError, TypeError)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    args = _programs.program(fdp, np.float32, allow_chain=True)
    out = N.run_program(*args)
    A, B, outer = args[6], args[7], args[9]
    want = (A.shape[0], B.shape[0]) if outer else (A.shape[0],)
    if out.shape != want or out.dtype != np.float32:
        raise Finding(f"result shape {out.shape} {out.dtype}, expected {want} float32")


if __name__ == "__main__":
    main(one_input, ALLOWED)
