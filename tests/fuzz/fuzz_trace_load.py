"""Fuzz target: hspi_kernels.trace.tracer.load (.npz trace: __meta__ JSON + arrays).
Contract: a bad file raises ValueError (also for bad zip / npy data, which numpy reports as
ValueError, OSError subclasses (BadZipFile is not one) or EOFError); a returned Trace has a dict
meta with a list of op dicts (what every consumer indexes)."""

import zipfile

import atheris

with atheris.instrument_imports(include=["hspi_kernels.trace"]):
    from hspi_kernels.trace import tracer
import _npz_inputs
from _common import Finding, main

ALLOWED = (ValueError, OSError, EOFError, zipfile.BadZipFile)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    t = tracer.load(_npz_inputs.archive(fdp, tracer.SCHEMA))
    if not isinstance(t.meta, dict) or not isinstance(t.meta.get("ops"), list) \
            or not all(isinstance(o, dict) for o in t.meta["ops"]):
        raise Finding("load accepted a trace without a list of op records")


if __name__ == "__main__":
    main(one_input, ALLOWED)
