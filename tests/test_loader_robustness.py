"""Open bugs found by fuzzing (tests/fuzz/) in loaders owned by the package redesign: a hostile
file must be rejected with ValueError, never crash with AttributeError/KeyError/TypeError.
Each test is xfail(strict=True): it fails today, and turns into an XPASS failure when the loader
is fixed, so whoever fixes it removes the marker (fixes described in
docs/results/reliability.md). test_fingerprint_loader_is_robust is the passing control."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

OPEN = pytest.mark.xfail(strict=True, reason="open loader bug (docs/results/reliability.md); ValueError expected")


def _npz(meta) -> io.BytesIO:
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    buf.seek(0)
    return buf


def test_fingerprint_loader_is_robust():
    from hspi_kernels import fingerprint

    for text in ('"a string"', "[1, 2]", '{"schema": 5}', "{" * 100000, '{"a": 1, "a": 2}'):
        with pytest.raises(ValueError):
            fingerprint.loads(text)


@OPEN
def test_trace_load_rejects_non_object_meta():
    from hspi_kernels.trace import tracer

    with pytest.raises(ValueError):  # today: AttributeError 'str' object has no attribute 'get'
        tracer.load(_npz("hspi-trace/1"))


@OPEN
def test_trace_load_rejects_meta_without_ops():
    from hspi_kernels.trace import tracer

    with pytest.raises(ValueError):  # today: accepted; Trace.ops then raises KeyError
        tracer.load(_npz({"schema": tracer.SCHEMA, "ops": "not a list"}))


@OPEN
def test_collection_load_rejects_non_object_meta():
    from hspi_kernels.models import collect

    with pytest.raises(ValueError):  # today: AttributeError
        collect.load(_npz(["hspi-model-collection/1"]))


@OPEN
def test_collection_load_rejects_meta_without_runs():
    from hspi_kernels.models import collect

    with pytest.raises(ValueError):  # today: accepted; runs() raises KeyError 'runs'
        collect.load(_npz({"schema": collect.SCHEMA})).runs()


@OPEN
def test_compare_records_rejects_malformed_records():
    from hspi_kernels.reveal import order

    with pytest.raises(ValueError):  # today: AttributeError 'int' object has no attribute 'get'
        order.compare_records({"reveals": [1]}, {"reveals": []})
