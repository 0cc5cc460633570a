"""Fuzz target: hspi_kernels.fingerprint.load (a fingerprint file on disk: size limit, UTF-8,
JSON, schema). Contract: ValueError for every bad file (never UnicodeError, OSError or a
crash)."""

import os
import tempfile

import atheris

with atheris.instrument_imports(include=["hspi_kernels.fingerprint"]):
    from hspi_kernels import fingerprint
from _common import main

ALLOWED = (ValueError,)
_DIR = tempfile.mkdtemp(prefix="hspi-fuzz-fp-")
_PATH = os.path.join(_DIR, "fp.json")


def one_input(data: bytes) -> None:
    with open(_PATH, "wb") as fh:
        fh.write(data)
    fingerprint.load(_PATH)


if __name__ == "__main__":
    main(one_input, ALLOWED)
