"""Damaged npz archives (a zip version from the future, an unknown compression method, a bad CRC,
a reserved deflate block type) are a ValueError naming the file from every npz loader: the bounded opener,
collections, traces and the tensor-core block sets. Found by the short fuzz run of
collection_load ("zip file version 15.0" escaped as NotImplementedError); the member-level
damages are raised only when a member is read, after the archive opened fine."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from hspi_kernels.kernels.validation import tc_blocks
from hspi_kernels.models import collect
from hspi_kernels.platform import files
from hspi_kernels.trace import tracer

X = np.arange(4096, dtype=np.float32)


def _archive(meta: dict | None) -> bytes:
    arrays = {"x|A": X}
    if meta is not None:
        arrays = {"__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8), "x": X}
    return bytes(files.npz_bytes(arrays))


def _headers(data: bytes, sig: bytes) -> list[int]:
    out, i = [], data.find(sig)
    while i >= 0:
        out.append(i)
        i = data.find(sig, i + 1)
    return out


def _damage(data: bytes, how: str) -> bytes:
    b = bytearray(data)
    local, central = _headers(data, b"PK\x03\x04"), _headers(data, b"PK\x01\x02")
    if how == "zip version 15.0":
        for c in central:
            struct.pack_into("<H", b, c + 6, 150)
    elif how == "compression method 99":
        for p in local:
            struct.pack_into("<H", b, p + 8, 99)
        for c in central:
            struct.pack_into("<H", b, c + 10, 99)
    elif how == "bad crc":
        for p in local:
            struct.pack_into("<I", b, p + 14, struct.unpack_from("<I", b, p + 14)[0] ^ 1)
        for c in central:
            struct.pack_into("<I", b, c + 16, struct.unpack_from("<I", b, c + 16)[0] ^ 1)
    elif how == "bad deflate block":
        p = local[-1]  # the last member's first deflate block header: BFINAL=1, BTYPE=11 (reserved)
        n, m = struct.unpack_from("<HH", b, p + 26)
        b[p + 30 + n + m] = 0x07
    else:
        raise AssertionError(how)
    return bytes(b)


DAMAGES = ["zip version 15.0", "compression method 99", "bad crc", "bad deflate block"]


def _read_all(path):
    with files.open_npz_bounded(path, 1 << 24) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("how", DAMAGES)
def test_the_bounded_opener_names_the_file(tmp_path, how):
    path = tmp_path / "a.npz"
    path.write_bytes(_damage(_archive({"schema": "x"}), how))
    with pytest.raises(files.InputFileError, match="a.npz"):
        _read_all(path)


def test_negative_control_the_undamaged_archive_reads_back(tmp_path):
    path = tmp_path / "a.npz"
    path.write_bytes(_archive({"schema": "x"}))
    got = _read_all(path)
    assert np.array_equal(got["x"], X) and set(got) == {"__meta__", "x"}
    with files.open_npz_bounded(path, 1 << 24) as z:
        assert "x" in z and list(z) == z.files == z.keys()
        with pytest.raises(KeyError):  # a missing member stays a KeyError (callers name it)
            z["nope"]


def test_negative_control_each_damage_breaks_plain_numpy(tmp_path):
    """The damages are real: numpy's own loader raises something other than ValueError on each."""
    for how in DAMAGES:
        path = tmp_path / f"{how.replace(' ', '_')}.npz"
        path.write_bytes(_damage(_archive({"schema": "x"}), how))
        with pytest.raises(Exception) as info:
            with np.load(path) as z:
                [z[k] for k in z.files]
        assert not isinstance(info.value, ValueError), (how, info.value)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("loader,meta", [(collect.load, {"schema": collect.SCHEMA, "models": {}, "runs": []}),
                                         (tracer.load, {"schema": tracer.SCHEMA}),
                                         (tc_blocks.load, None)],
                         ids=["collection", "trace", "tc_blocks"])
def test_every_npz_loader_gives_a_value_error_naming_the_file(tmp_path, how, loader, meta):
    path = tmp_path / "damaged.npz"
    path.write_bytes(_damage(_archive(meta), how))
    with pytest.raises(ValueError, match="damaged.npz"):
        loader(path)
