"""Fuzz target: hspi_kernels.fingerprint.loads (fingerprint JSON text -> validated dict).
Contract: ValueError with a message for every bad text; a returned fingerprint re-validates and
survives a save/load round trip unchanged."""

import json

import atheris

with atheris.instrument_imports(include=["hspi_kernels.fingerprint"]):
    from hspi_kernels import fingerprint
from _common import Finding, main

ALLOWED = (ValueError,)


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    fp = fingerprint.loads(text)
    again = fingerprint.loads(json.dumps(fp))
    if again != fp:
        raise Finding("a loaded fingerprint does not round-trip")


if __name__ == "__main__":
    main(one_input, ALLOWED)
