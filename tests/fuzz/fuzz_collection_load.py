"""Fuzz target: hspi_kernels.models.collect.load (.npz model collection: __meta__ JSON + arrays).
Contract as for traces: a bad file raises ValueError (or numpy's zip/npy errors); a returned
Collection answers runs() (what load_many and every consumer call first)."""

import zipfile

import atheris

with atheris.instrument_imports(include=["hspi_kernels.models.collect"]):
    from hspi_kernels.models import collect
import _npz_inputs
from _common import main

ALLOWED = (ValueError, OSError, EOFError, zipfile.BadZipFile)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    c = collect.load(_npz_inputs.archive(fdp, collect.SCHEMA))
    c.runs()


if __name__ == "__main__":
    main(one_input, ALLOWED)
