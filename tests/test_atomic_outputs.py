"""Issue #18: every output is written atomically (temp file in the same directory, fsync,
os.replace) and every input is size-bounded and rejected with a clear ValueError when it is too
large, truncated or corrupt.

(a) Writers: ``os.replace`` is made to fail at the moment the new file would take the final name
(the last step of ``platform.files.atomic_write_bytes``); the previous file must be intact, a
new target must not exist, and no temporary file may be left behind.
(b) Loaders: a small limit (the module constant monkeypatched, or its environment variable) makes
an ordinary file "oversize"; a truncated file is an error naming the file; a valid file loads.

Nothing here depends on the terminal width or on the length of the temporary paths: messages are
checked on the exception text (or on the CLI output with its whitespace collapsed)."""

from __future__ import annotations

import errno
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from hspi_kernels.platform import files
from hspi_kernels.platform.files import InputFileError


# -- helpers -------------------------------------------------------------------------------------
class Crash(OSError):
    pass


def fail_rename(monkeypatch, name: str | None = None) -> list[str]:
    """Make os.replace raise when the destination is named ``name`` (any, when None); returns
    the destinations it refused."""
    real = os.replace
    refused: list[str] = []

    def replace(src, dst, *args, **kwargs):
        if name is None or Path(dst).name == name:
            refused.append(str(dst))
            raise Crash(errno.EIO, "simulated crash before the rename")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return refused


def no_temp_files(folder: Path) -> bool:
    return not list(Path(folder).glob(files.TEMP_GLOB))


def assert_untouched(path: Path, before: bytes | None) -> None:
    if before is None:
        assert not path.exists(), f"a partial {path.name} was left under the final name"
    else:
        assert path.read_bytes() == before, f"{path.name} was changed by a failed write"
    assert no_temp_files(path.parent), list(path.parent.glob(files.TEMP_GLOB))


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- the helpers themselves ------------------------------------------------------------------------
def test_atomic_write_npz_keeps_the_old_file_and_writes_exactly_the_name(tmp_path, monkeypatch):
    p = tmp_path / "x.data"  # no .npz appended, unlike np.savez
    files.atomic_write_npz(p, {"a": np.arange(5)})
    before = p.read_bytes()
    with monkeypatch.context() as m:
        fail_rename(m)
        with pytest.raises(Crash):
            files.atomic_write_npz(p, {"a": np.arange(50)})
    assert_untouched(p, before)
    with monkeypatch.context() as m:
        fail_rename(m)
        with pytest.raises(Crash):
            files.atomic_write_npz(tmp_path / "new.npz", {"a": np.arange(3)})
    assert_untouched(tmp_path / "new.npz", None)
    with files.open_npz_bounded(p, 1 << 20) as z:
        assert z["a"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="without pickle"):
        files.npz_bytes({"o": np.array([{}], dtype=object)})


def test_bounded_readers(tmp_path, monkeypatch):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"k": list(range(100))}))
    assert files.read_json_bounded(p, 1 << 20)["k"][-1] == 99
    with pytest.raises(InputFileError, match="larger than the 10-byte limit"):
        files.read_json_bounded(p, 10)
    p.write_text('{"k": [1, 2,')
    with pytest.raises(InputFileError, match="truncated or corrupt JSON file") as info:
        files.read_json_bounded(p, 1 << 20)
    assert str(p) in str(info.value)
    p.write_bytes(b"\xff\xfe{}")
    with pytest.raises(InputFileError, match="not UTF-8"):
        files.read_json_bounded(p, 1 << 20)
    with pytest.raises(FileNotFoundError):
        files.read_json_bounded(tmp_path / "absent.json", 1 << 20)
    with pytest.raises(InputFileError, match="not a regular file"):
        files.read_bytes_bounded(tmp_path, 1 << 20)
    # a zip bomb: small on disk, huge once unpacked
    bomb = tmp_path / "bomb.npz"
    files.atomic_write_npz(bomb, {"z": np.zeros(1 << 20, np.uint8)})
    assert bomb.stat().st_size < 1 << 16
    with pytest.raises(InputFileError, match="unpacks to"):
        files.open_npz_bounded(bomb, 1 << 16, max_unpacked=1 << 16)
    # environment override (MiB), and a bad value is a clear error
    monkeypatch.setenv("HSPI_TEST_LIMIT_MB", "0.5")
    assert files.size_limit(10, "HSPI_TEST_LIMIT_MB") == 1 << 19
    monkeypatch.setenv("HSPI_TEST_LIMIT_MB", "lots")
    with pytest.raises(InputFileError, match="HSPI_TEST_LIMIT_MB"):
        files.size_limit(10, "HSPI_TEST_LIMIT_MB")
    monkeypatch.delenv("HSPI_TEST_LIMIT_MB")
    assert files.size_limit(10, "HSPI_TEST_LIMIT_MB") == 10


# -- traces ----------------------------------------------------------------------------------------
def _trace(n: int = 2000):
    from hspi_kernels.trace import tracer as T

    meta = {"schema": T.SCHEMA, "ops": [], "arrays": {"d0": {"fmt": "fp32"}}, "model": {"name": "m"},
            "run": {"batch": 1}, "policy": {}}
    rng = np.random.default_rng(0)
    return T.Trace(meta, {"a/d0": rng.standard_normal(n).astype(np.float32)})


@pytest.mark.parametrize("kind", ["trace", "collection"])
def test_npz_save_is_atomic(tmp_path, monkeypatch, kind):
    """Trace.save and Collection.save: a crash at the rename leaves the old file byte-identical
    and nothing under a new final name."""
    make, name = (_trace, "t.npz") if kind == "trace" else (_collection, "c.npz")
    p = tmp_path / name
    make(10).save(p)
    before = p.read_bytes()
    with monkeypatch.context() as m:
        fail_rename(m, name)
        with pytest.raises(Crash):
            make(3000).save(p)
        with pytest.raises(Crash):
            make(5).save(tmp_path / "sub" / name)
    assert_untouched(p, before)
    assert_untouched(tmp_path / "sub" / name, None)


def test_trace_load_is_bounded(tmp_path, monkeypatch):
    from hspi_kernels.trace import tracer as T

    p = _trace().save(tmp_path / "t.npz")
    assert T.load(p).arrays["a/d0"].shape == (2000,)  # valid: loads
    monkeypatch.setattr(T, "MAX_TRACE_BYTES", 100)
    with pytest.raises(ValueError, match="larger than the 100-byte limit") as info:
        T.load(p)
    assert str(p) in str(info.value)
    monkeypatch.setenv(T.MAX_TRACE_ENV, "1")  # the environment variable overrides the constant
    assert T.load(p).meta["model"]["name"] == "m"
    monkeypatch.delenv(T.MAX_TRACE_ENV)
    monkeypatch.setattr(T, "MAX_TRACE_BYTES", 1 << 20)
    assert_truncated_refused(p, T.load)


def assert_truncated_refused(path: Path, load) -> None:
    """The first half of a valid file: a ValueError saying so and naming the file."""
    raw = path.read_bytes()
    cut = path.with_name("cut.npz")
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        load(cut)
    assert "cut.npz" in str(info.value)


def test_cli_oversize_trace_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hspi_kernels.cli import app
    from hspi_kernels.trace import tracer as T

    a = _trace().save(tmp_path / "a.npz")
    b = _trace().save(tmp_path / "b.npz")
    monkeypatch.setattr(T, "MAX_TRACE_BYTES", 100)
    r = CliRunner().invoke(app, ["trace", "diff", str(a), str(b)], env={"COLUMNS": "400"})
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output
    assert "larger than the 100-byte limit" in one_line(r.output)


# -- model collections -----------------------------------------------------------------------------
def _collection(n: int = 2000):
    from hspi_kernels.models import collect as mc

    meta = {"schema": mc.SCHEMA, "platform": {}, "platform_label": "test", "models": {}, "runs": [], "extra": {}}
    return mc.Collection(meta, {"m/inputs/x": np.random.default_rng(1).standard_normal(n).astype(np.float32)})


def test_collection_load_is_bounded(tmp_path, monkeypatch):
    from hspi_kernels.models import collect as mc

    p = _collection().save(tmp_path / "c.npz")
    assert mc.load(p).inputs("m")["x"].shape == (2000,)
    monkeypatch.setattr(mc, "MAX_COLLECTION_BYTES", 100)
    with pytest.raises(ValueError, match="larger than the 100-byte limit") as info:
        mc.load(p)
    assert str(p) in str(info.value)
    monkeypatch.setattr(mc, "MAX_COLLECTION_BYTES", 1 << 20)
    assert_truncated_refused(p, mc.load)
    with pytest.raises(ValueError, match="absent.npz"):
        mc.load(tmp_path / "absent.npz")


# -- card/reveal records (reveal.compare) and revealer outputs (trace.explain) --------------------
def _record(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps({"platform": {"torch": {"gpus": [{"name": name}]}}, "reveal": []}))
    return p


def test_reveal_compare_json_output_is_atomic(tmp_path, monkeypatch, capsys):
    from hspi_kernels.reveal import compare

    a, b = _record(tmp_path, "a.json"), _record(tmp_path, "b.json")
    rows = [{"label": "s", "split_a": 1, "split_b": 1, "same_plan": True, "bits_differ": False, "explained": True}]
    monkeypatch.setattr(compare, "compare_records", lambda ra, rb, check_rows=True: rows)
    out = tmp_path / "rows.json"
    assert compare.main([str(a), str(b), "--json", str(out)]) == 0
    before = out.read_bytes()
    assert json.loads(before)["rows"] == rows
    rows.append(dict(rows[0], label="t"))
    with monkeypatch.context() as m:
        fail_rename(m, "rows.json")
        with pytest.raises(Crash):
            compare.main([str(a), str(b), "--json", str(out)])
    assert_untouched(out, before)
    with monkeypatch.context() as m:
        fail_rename(m)
        with pytest.raises(Crash):
            compare.main([str(a), str(b), "--json", str(tmp_path / "new.json")])
    assert_untouched(tmp_path / "new.json", None)


def test_reveal_records_are_bounded(tmp_path, monkeypatch, capsys):
    from hspi_kernels.reveal import compare

    a, b = _record(tmp_path, "a.json"), _record(tmp_path, "b.json")
    assert compare.load_record(a)["reveal"] == []
    monkeypatch.setattr(compare, "MAX_RECORD_BYTES", 10)
    with pytest.raises(ValueError, match="larger than the 10-byte limit"):
        compare.load_record(a)
    assert compare.main([str(a), str(b)]) == 2
    err = one_line(capsys.readouterr().err)
    assert "larger than the 10-byte limit" in err and "Traceback" not in err
    monkeypatch.setattr(compare, "MAX_RECORD_BYTES", 1 << 20)
    text = a.read_text()
    a.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt reveal record") as info:
        compare.load_record(a)
    assert str(a) in str(info.value)
    assert compare.main([str(a), str(b)]) == 2
    assert "truncated" in capsys.readouterr().err
    a.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a reveal record"):
        compare.load_record(a)
    with pytest.raises(ValueError, match="absent.json"):
        compare.load_record(tmp_path / "absent.json")


def test_revealer_outputs_are_bounded(tmp_path, monkeypatch):
    from hspi_kernels.trace import explain as E

    p = tmp_path / "revealed.json"
    p.write_text(json.dumps({"results": [{"plan": "Sequential()"}]}))
    assert len(E.load_revealed([p])) == 1
    monkeypatch.setattr(E, "MAX_REVEALED_BYTES", 10)
    with pytest.raises(ValueError, match="larger than the 10-byte limit"):
        E.load_revealed([p])
    monkeypatch.setattr(E, "MAX_REVEALED_BYTES", 1 << 20)
    p.write_text('{"results": [{"plan": ')
    with pytest.raises(ValueError, match="truncated or corrupt revealer output"):
        E.load_revealed([p])


# -- SFU tables (kernels.cuda.sfu.save_table / load_table) and attention_sfu's index.json ---------
@pytest.fixture()
def small_binades(monkeypatch):
    from hspi_kernels.kernels.cuda import sfu

    monkeypatch.setattr(sfu, "BINADE", 1 << 10)  # 1024 inputs per binade: fast, same code paths
    return sfu


def _rows(sfu, n_bad: int = 3):
    x = sfu.binade_inputs(1, -1)
    bump = (np.arange(x.size) % n_bad == 0)
    return (sfu.reference_bits("ex2_ftz", x).astype(np.int64) + bump).astype(np.uint32)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_sfu_save_table_is_atomic(tmp_path, small_binades, monkeypatch):
    """A table (binade files + index.json) is replaced as a whole: a crash while writing a binade
    file or the index leaves the previous table loadable, bit for bit."""
    sfu = small_binades
    folder = tmp_path / "sfu_ex2_ftz"
    old = _rows(sfu)
    sfu.save_table(tmp_path, "ex2_ftz", [(1, -1)], old[None])
    index = folder / "index.json"
    before_index = index.read_bytes()
    npz = folder / json.loads(before_index)["binades"][0]["file"]
    before_npz = npz.read_bytes()
    for step in ("binade", "index.json"):
        with monkeypatch.context() as m:
            real = os.replace

            def replace(src, dst, *args, **kwargs):
                if (Path(dst).name == "index.json") == (step == "index.json"):
                    raise Crash(errno.EIO, "simulated crash before the rename")
                return real(src, dst, *args, **kwargs)

            m.setattr(os, "replace", replace)
            with pytest.raises(Crash):
                sfu.save_table(tmp_path, "ex2_ftz", [(1, -1)], _rows(sfu, 5)[None])
        assert_untouched(index, before_index)
        assert_untouched(npz, before_npz)
        assert np.array_equal(sfu.load_table(folder).binades[(1, -1)], old)
    new = _rows(sfu, 5)
    sfu.save_table(tmp_path, "ex2_ftz", [(1, -1)], new[None])  # success: the old files are gone
    assert np.array_equal(sfu.load_table(folder).binades[(1, -1)], new)
    assert not npz.exists() and len([p for p in folder.iterdir() if p.suffix == ".npz"]) == 1


def test_sfu_load_table_is_bounded(tmp_path, small_binades, monkeypatch):
    sfu = small_binades
    folder = tmp_path / "sfu_ex2_ftz"
    rows = _rows(sfu)
    sfu.save_table(tmp_path, "ex2_ftz", [(1, -1)], rows[None])
    assert np.array_equal(sfu.load_table(folder).binades[(1, -1)], rows)
    monkeypatch.setattr(sfu, "MAX_TABLE_FILE_BYTES", 64)
    with pytest.raises(ValueError, match="larger than the 64-byte limit") as info:
        sfu.load_table(folder)
    assert "index.json" in str(info.value)
    monkeypatch.setattr(sfu, "MAX_TABLE_FILE_BYTES", 1 << 20)
    npz = folder / json.loads((folder / "index.json").read_text())["binades"][0]["file"]
    raw = npz.read_bytes()
    npz.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        sfu.load_table(folder)
    assert npz.name in str(info.value)
    text = (folder / "index.json").read_text()
    (folder / "index.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt SFU table index"):
        sfu.load_table(folder)
    (folder / "index.json").write_text(json.dumps({"op": "ex2_ftz", "binades": [{"file": "../x.npz", "sign": 1,
                                                                                   "e": -1, "digest": "0"}]}))
    with pytest.raises(ValueError, match="not a plain file name"):
        sfu.load_table(folder)


def test_attention_sfu_index_is_atomic(tmp_path, monkeypatch):
    from hspi_kernels.kernels.validation import attention_sfu as AS

    sfu = AS.sfu
    fake_cupy = types.ModuleType("cupy")
    fake_cupy.asarray = np.asarray
    fake_cupy.asnumpy = np.asarray
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(sfu, "OPS", ("rcp",))
    monkeypatch.setattr(sfu, "DEFAULT_BINADES", {"rcp": ((0, 0),)})
    monkeypatch.setattr(sfu, "binade_outputs", lambda op, binades: np.zeros((len(binades), 4), np.uint32))
    monkeypatch.setattr(sfu, "apply", lambda op, x: np.asarray(x))

    def save_table(out_dir, op, binades, outs, specials, workers=1, extra=None):
        (Path(out_dir) / f"sfu_{op}").mkdir(parents=True, exist_ok=True)
        return {"digest": "d", "summary": {"largest_file_bytes": 1}}

    monkeypatch.setattr(sfu, "save_table", save_table)
    AS.run_sfu(tmp_path, 1)
    index = tmp_path / "sfu_rcp" / "index.json"
    before = index.read_bytes()
    assert json.loads(before)["digest"] == "d"
    with monkeypatch.context() as m:
        fail_rename(m, "index.json")
        with pytest.raises(Crash):
            AS.run_sfu(tmp_path, 1)
    assert_untouched(index, before)


# -- tensor-core block sets (validation.tc_blocks) --------------------------------------------------
def test_tc_blocks_dump_is_atomic_and_load_is_bounded(tmp_path, monkeypatch):
    from hspi_kernels.kernels.validation import tc_blocks as TB

    monkeypatch.setattr(TB.V, "gpu_gemm", lambda path, A, B, C, fmt, out: np.zeros((A.shape[0], B.shape[1]), np.float32))
    TB.dump(str(tmp_path / "blocks"))  # np.savez's name: .npz appended
    p = tmp_path / "blocks.npz"
    before = p.read_bytes()
    sets = TB.load(p)
    assert sets and all(set(v) == set("ABCD") for v in sets.values())
    with monkeypatch.context() as m:
        fail_rename(m, "blocks.npz")
        with pytest.raises(Crash):
            TB.dump(str(p))
    assert_untouched(p, before)
    monkeypatch.setattr(TB, "MAX_BLOCKS_BYTES", 100)
    with pytest.raises(ValueError, match="larger than the 100-byte limit"):
        TB.load(p)
    monkeypatch.setattr(TB, "MAX_BLOCKS_BYTES", 1 << 30)
    (tmp_path / "cut.npz").write_bytes(before[: len(before) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        TB.load(tmp_path / "cut.npz")


# -- compute-sanitizer driver (validation.sanitizer) -------------------------------------------------
def test_sanitizer_outputs_are_atomic(tmp_path, monkeypatch):
    from hspi_kernels.kernels.validation import sanitizer as D

    monkeypatch.setattr(D.platform, "collect", lambda **kw: {"stub": True})
    monkeypatch.setattr(D, "control", lambda kind: {f"control_{kind}": {"kernels": [], "ok": True, "error": None,
                                                                        "seconds": 0.0}})
    cases = tmp_path / "memcheck.cases.json"
    assert D.run(str(cases), None, "race") == 0
    before_cases = cases.read_bytes()
    out = tmp_path / "summary.json"
    D.summarize(str(tmp_path), str(out))
    before_out = out.read_bytes()
    with monkeypatch.context() as m:
        fail_rename(m, "memcheck.cases.json")
        with pytest.raises(Crash):
            D.run(str(cases), None, "oob_ours")
    assert_untouched(cases, before_cases)
    with monkeypatch.context() as m:
        fail_rename(m, "summary.json")
        with pytest.raises(Crash):
            D.summarize(str(tmp_path), str(out))
    assert_untouched(out, before_out)


def test_sanitizer_summarize_rejects_damaged_records(tmp_path, monkeypatch, capsys):
    from hspi_kernels.kernels.validation import sanitizer as D

    monkeypatch.setattr(D.platform, "collect", lambda **kw: {"stub": True})
    (tmp_path / "memcheck.log").write_text("========= ERROR SUMMARY: 0 errors\n")
    (tmp_path / "memcheck.rc").write_text("0\n")
    cases = tmp_path / "memcheck.cases.json"
    cases.write_text(json.dumps({"c": {"kernels": ["k"], "ok": True, "error": None, "seconds": 0.1}}))
    assert D.main(["summarize", str(tmp_path), str(tmp_path / "out.json")]) in (0, 1)
    cases.write_text('{"c": {"kernels": [')
    assert D.main(["summarize", str(tmp_path), str(tmp_path / "out.json")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "truncated or corrupt sanitizer cases record" in err and "Traceback" not in err
    cases.write_text("{}")
    monkeypatch.setattr(D, "MAX_LOG_BYTES", 8)
    with pytest.raises(ValueError, match="larger than the 8-byte limit"):
        D.summarize(str(tmp_path), str(tmp_path / "out.json"))
