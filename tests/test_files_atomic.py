"""Crash-safe output files (hspi_kernels.platform.files): a target is always absent/old-complete
or new-complete, never truncated or half-valid, under SIGKILL at random points, injected
exceptions (KeyboardInterrupt included) and a full disk (injected ENOSPC, and a real small
tmpfs where one can be mounted); no temporary file is left where the writer was not killed.
Negative controls: a plain open()/write() writer under the same faults is caught leaving a
truncated file, so the checker can tell."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hspi_kernels.platform import files

FILES_PY = Path(files.__file__)
KILLS = 120  # SIGKILLs of the atomic writer
CONTROL_KILLS = 40  # SIGKILLs of the non-atomic control writer
INJECTED = 150  # in-process fault injections


def document(version: int, size: int) -> dict:
    """A JSON document that checks itself: 'sha' covers 'version' and 'payload'."""
    payload = hashlib.sha256(str(version).encode()).hexdigest() * (size // 64)
    return {"version": version, "payload": payload,
            "sha": hashlib.sha256(f"{version}:{payload}".encode()).hexdigest()}


def verdict(path: Path) -> str:
    """'absent', 'valid' (a complete self-consistent document) or 'corrupt'."""
    if not path.exists():
        return "absent"
    return verdict_text(path.read_bytes().decode("utf-8", "replace"))


def test_verdict_rejects_truncated_and_altered():
    text = json.dumps(document(3, 4096))
    assert json.loads(text)  # sanity
    for bad in (text[: len(text) // 2], text.replace("3", "4", 1), ""):
        assert verdict_text(bad) == "corrupt"
    assert verdict_text(text) == "valid"


def verdict_text(text: str) -> str:
    try:
        doc = json.loads(text)
        return "valid" if doc["sha"] == hashlib.sha256(f"{doc['version']}:{doc['payload']}".encode()).hexdigest() \
            else "corrupt"
    except (ValueError, KeyError, TypeError):
        return "corrupt"


# -- SIGKILL at random points ------------------------------------------------------------------
WRITER = r"""
import hashlib, importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("files", sys.argv[1])
files = importlib.util.module_from_spec(spec); spec.loader.exec_module(files)
target, mode, size = sys.argv[2], sys.argv[3], int(sys.argv[4])
def document(version):
    payload = hashlib.sha256(str(version).encode()).hexdigest() * (size // 64)
    return {"version": version, "payload": payload,
            "sha": hashlib.sha256(f"{version}:{payload}".encode()).hexdigest()}
docs = [json.dumps(document(v)).encode() for v in range(4)]
sys.stdout.write("ready\n"); sys.stdout.flush()
v = 0
while True:
    data = docs[v % 4]
    if mode == "atomic":
        files.atomic_write_bytes(target, data)
    else:  # the negative control: truncate, then write in chunks
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for i in range(0, len(data), 65536):
            os.write(fd, data[i:i + 65536])
        os.close(fd)
    v += 1
"""


def _kill_runs(tmp_path: Path, mode: str, n: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    outcomes = {"absent": 0, "valid": 0, "corrupt": 0, "temp_left": 0}
    for i in range(n):
        d = tmp_path / f"{mode}-{i}"
        d.mkdir()
        target = d / "out.json"
        if rng.random() < 0.5:  # half the runs start from an existing complete file
            target.write_text(json.dumps(document(99, 1024)))
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(FILES_PY), str(target), mode,
                                 str(rng.choice([64 << 10, 512 << 10, 1 << 20]))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read()
        time.sleep(rng.uniform(0, 0.08))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        outcomes[verdict(target)] += 1
        outcomes["temp_left"] += len(list(d.glob(files.TEMP_GLOB)))
    return outcomes


def test_sigkill_never_leaves_a_truncated_file(tmp_path, record_property):
    out = _kill_runs(tmp_path, "atomic", KILLS, seed=18)
    record_property("sigkill_outcomes", out)
    print("atomic writer under SIGKILL:", out)
    assert out["corrupt"] == 0, out
    assert out["valid"] + out["absent"] == KILLS


def test_sigkill_control_non_atomic_writer_is_caught(tmp_path):
    out = _kill_runs(tmp_path, "plain", CONTROL_KILLS, seed=81)
    print("non-atomic writer under SIGKILL:", out)
    assert out["corrupt"] > 0, f"the checker never saw a truncated file from the plain writer: {out}"


# -- injected exceptions and ENOSPC ------------------------------------------------------------
class Fault(Exception):
    pass


def _plain_write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:65536]):]
    finally:
        os.close(fd)


def _inject(monkeypatch, rng: random.Random):
    """Arm one fault: at the k-th call of os.write / os.fsync / os.replace / os.close, raise
    ENOSPC, EIO, KeyboardInterrupt or an arbitrary exception (os.write may first write part)."""
    target_fn = rng.choice(["write", "write", "fsync", "replace", "close"])
    at = rng.randint(1, 4 if target_fn == "write" else 1)
    exc = rng.choice([OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EIO, "I/O error"),
                      KeyboardInterrupt(), Fault("injected")])
    real = getattr(os, target_fn)
    calls = {"n": 0}

    def faulty(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            if target_fn == "write" and rng.random() < 0.5:  # a short write lands, then the error
                fd, buf = args
                real(fd, bytes(memoryview(buf)[: max(1, len(buf) // 3)]))
            if target_fn == "close":
                real(*args)
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(os, target_fn, faulty)
    return target_fn, type(exc).__name__


def _injection_runs(tmp_path: Path, monkeypatch, writer, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    tally = {"runs": 0, "raised": 0, "old_or_absent": 0, "new": 0, "corrupt": 0, "temp_left": 0}
    for i in range(n):
        d = tmp_path / f"inj-{i}"
        d.mkdir()
        target = d / "out.json"
        old = json.dumps(document(1, 1024)).encode() if rng.random() < 0.6 else None
        if old is not None:
            target.write_bytes(old)
        new = json.dumps(document(2, rng.choice([100, 70_000, 300_000]))).encode()
        with monkeypatch.context() as m:
            _inject(m, rng)
            try:
                writer(target, new)
                raised = False
            except (OSError, KeyboardInterrupt, Fault):
                raised = True
        tally["runs"] += 1
        tally["raised"] += raised
        now = target.read_bytes() if target.exists() else None
        if now == new and not raised:
            tally["new"] += 1
        elif now == old and raised:
            tally["old_or_absent"] += 1
        elif now == new and raised:  # the fault came after the rename (directory fsync): still whole
            tally["new"] += 1
        else:
            tally["corrupt"] += 1
        tally["temp_left"] += len(list(d.glob(files.TEMP_GLOB)))
    return tally


def test_injected_faults_leave_old_or_new_and_no_temp(tmp_path, monkeypatch, record_property):
    tally = _injection_runs(tmp_path, monkeypatch, files.atomic_write_bytes, INJECTED, seed=1818)
    record_property("injection_outcomes", tally)
    print("atomic writer under injected faults:", tally)
    assert tally["corrupt"] == 0 and tally["temp_left"] == 0, tally
    assert tally["raised"] > INJECTED // 2  # the faults did fire


def test_injected_faults_control_plain_writer_is_caught(tmp_path, monkeypatch):
    tally = _injection_runs(tmp_path, monkeypatch, _plain_write, 60, seed=1818)
    assert tally["corrupt"] > 0, tally


def test_real_full_disk_on_a_small_tmpfs(tmp_path):
    """A real ENOSPC: a 256 KiB tmpfs (needs mount privileges; skipped without them)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()[:120]}")
    try:
        target = mnt / "out.json"
        old = json.dumps(document(1, 1024)).encode()
        files.atomic_write_bytes(target, old)
        with pytest.raises(OSError) as info:
            files.atomic_write_bytes(target, json.dumps(document(2, 1 << 20)).encode())
        assert info.value.errno == errno.ENOSPC
        assert target.read_bytes() == old and not list(mnt.glob(files.TEMP_GLOB))
        # control: the plain writer truncates the file when the disk fills
        with pytest.raises(OSError):
            _plain_write(target, json.dumps(document(2, 1 << 20)).encode())
        assert verdict(target) == "corrupt"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# -- the API -----------------------------------------------------------------------------------
def test_atomic_write_json_and_text(tmp_path):
    p = files.atomic_write_json(tmp_path / "b.json", {"x": [1, 2]})
    assert json.loads(p.read_text()) == {"x": [1, 2]}
    with pytest.raises(ValueError):  # NaN is refused before the file is touched
        files.atomic_write_json(p, {"x": float("nan")})
    with pytest.raises(TypeError):
        files.atomic_write_json(p, {"x": object()})
    assert json.loads(p.read_text()) == {"x": [1, 2]} and not list(tmp_path.glob(files.TEMP_GLOB))
    files.atomic_write_text(p, "hello")
    assert p.read_text() == "hello"


def test_atomic_write_keeps_the_mode_of_an_existing_file(tmp_path):
    p = tmp_path / "f"
    p.write_text("old")
    os.chmod(p, 0o640)
    files.atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new" and (p.stat().st_mode & 0o777) == 0o640


def test_check_output_path(tmp_path):
    assert files.check_output_path(tmp_path / "new" / "deep" / "fp.json", kind="fingerprint").parent.is_dir()
    with pytest.raises(files.OutputPathError, match="fingerprint path .* is a directory"):
        files.check_output_path(tmp_path, kind="fingerprint")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(files.OutputPathError, match="not a directory"):
        files.check_output_path(tmp_path / "plain" / "fp.json", kind="trace")
    with pytest.raises(files.OutputPathError, match="does not name a file"):
        files.check_output_path("", kind="trace")
    assert issubclass(files.OutputPathError, ValueError)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write any directory")
def test_check_output_path_unwritable_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    os.chmod(d, 0o500)
    try:
        with pytest.raises(files.OutputPathError, match="not writable"):
            files.check_output_path(d / "x.json", kind="collection")
    finally:
        os.chmod(d, 0o700)
