"""npz archives (trace and model-collection files) from fuzz bytes: either the bytes as the
archive itself, or a well-formed archive whose __meta__ JSON and arrays come from the bytes (so
the fuzzer reaches the loaders' handling of the metadata, not only zip parsing)."""

from __future__ import annotations

import io
import json

import numpy as np

import _native_inputs as I


def archive(fdp, schema: str) -> io.BytesIO:
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        return io.BytesIO(fdp.ConsumeBytes(fdp.remaining_bytes()))
    meta_bytes = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2048))
    if mode == 1:  # a JSON document around the schema, with fuzzed content
        try:
            obj = json.loads(meta_bytes.decode("utf-8", "replace"))
        except ValueError:
            obj = meta_bytes.decode("utf-8", "replace")
        meta = {"schema": schema, "x": obj} if not isinstance(obj, dict) else dict(obj, schema=schema)
        if I.rare(fdp, 4):
            meta = obj
        meta_bytes = json.dumps(meta).encode()
    arrays = {}
    for i in range(fdp.ConsumeIntInRange(0, 3)):
        name = fdp.ConsumeUnicodeNoSurrogates(12) or f"a{i}"
        dt = fdp.PickValueInList([np.uint8, np.uint16, np.float32, np.int64, "V4", "U3"])
        arrays[name] = I.float_array(fdp, (fdp.ConsumeIntInRange(0, 8),), dt) if dt not in ("V4", "U3") \
            else np.zeros(2, dtype=dt)
    buf = io.BytesIO()
    try:
        np.savez(buf, __meta__=np.frombuffer(meta_bytes, np.uint8), **arrays)
    except (ValueError, TypeError):  # a name numpy's writer refuses: plain archive
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.frombuffer(meta_bytes, np.uint8))
    buf.seek(0)
    return buf
