"""Loader bugs found by fuzzing (tests/fuzz/), fixed: a hostile file must be rejected with
ValueError, never crash with AttributeError/KeyError/TypeError (the comments say what each did
before the fix). test_fingerprint_loader_is_robust was the passing control."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest



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


def test_trace_load_rejects_non_object_meta():
    from hspi_kernels.trace import tracer

    with pytest.raises(ValueError):  # before the fix: AttributeError 'str' object has no attribute 'get'
        tracer.load(_npz("hspi-trace/1"))


def test_trace_load_rejects_meta_without_ops():
    from hspi_kernels.trace import tracer

    with pytest.raises(ValueError):  # before the fix: accepted; Trace.ops then raises KeyError
        tracer.load(_npz({"schema": tracer.SCHEMA, "ops": "not a list"}))


def test_collection_load_rejects_non_object_meta():
    from hspi_kernels.models import collect

    with pytest.raises(ValueError):  # before the fix: AttributeError
        collect.load(_npz(["hspi-model-collection/1"]))


def test_collection_load_rejects_meta_without_runs():
    from hspi_kernels.models import collect

    with pytest.raises(ValueError):  # before the fix: accepted; runs() raises KeyError 'runs'
        collect.load(_npz({"schema": collect.SCHEMA})).runs()


def test_compare_records_rejects_malformed_records():
    from hspi_kernels.reveal import order

    with pytest.raises(ValueError):  # before the fix: AttributeError 'int' object has no attribute 'get'
        order.compare_records({"reveals": [1]}, {"reveals": []})
