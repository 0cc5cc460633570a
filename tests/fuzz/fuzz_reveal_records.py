"""Fuzz target: hspi_kernels.reveal.order.plan_from_record and compare_records over card/reveal
record JSON (what `hspi reveal --compare` reads from two files). Contract: ValueError for a
malformed record; otherwise one comparison row per shared label."""

import json

import atheris

with atheris.instrument_imports(include=["hspi_kernels.reveal.order"]):
    from hspi_kernels.reveal import order
from _common import main

ALLOWED = (ValueError,)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    check_rows = fdp.ConsumeBool()
    docs = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes()).split("\x00", 1)
    a = json.loads(docs[0])
    b = json.loads(docs[1]) if len(docs) > 1 else a
    if isinstance(a, dict) and isinstance(a.get("reveals"), list):
        for rec in a["reveals"]:
            order.plan_from_record(rec)
    order.compare_records(a, b, check_rows=check_rows)


if __name__ == "__main__":
    main(one_input, ALLOWED)
