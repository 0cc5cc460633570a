"""The resident probe server (hspi serve, hspi_kernels.probes.server): same records as a local run,
refuses stale clients and hostile requests and keeps serving, ends on idle / SIGTERM and removes
its socket; `hspi probe --server on` fails without a server, `auto` probes locally."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from hspi_kernels.probes import catalog, runner
from hspi_kernels.probes import server as srv

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="the probe server needs Unix sockets")


def _env(tmp_path) -> dict:
    return dict(os.environ, HSPI_CACHE_DIR=str(tmp_path / "c"))


def _start(tmp_path, *args) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "hspi_kernels", "serve", "--no-warm", *args], cwd=tmp_path,
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sock = tmp_path / "c" / srv.SOCKET_NAME
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hspi serve ended early: {proc.stdout.read()[-2000:]}")
        try:
            srv.ping(sock)
            return proc
        except srv.ServerUnavailable:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("hspi serve did not answer within 300 s")


def _raw(sock, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(sock))
        try:
            s.sendall(payload)
        except OSError:  # the server may answer (and close) before reading everything
            pass
        return json.loads(s.makefile("rb").readline())


def _digests(records):
    return {r["id"]: (r["status"], r.get("digest"), r.get("deterministic")) for r in records}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("served")
    proc = _start(tmp_path, "--idle-timeout", "300")
    yield tmp_path, tmp_path / "c" / srv.SOCKET_NAME, proc
    proc.terminate()
    proc.wait(timeout=60)


def test_server_records_equal_a_local_run(served, monkeypatch):
    tmp_path, sock, _ = served
    monkeypatch.setenv("HSPI_CACHE_DIR", str(tmp_path / "c"))
    selected = [p for p in catalog.all_probes() if p.backend in ("numpy", "torch-cpu")][:8]
    seen = []
    records, suite, meta = srv.request([p.id for p in selected], path=sock, on_record=lambda r: seen.append(r["id"]))
    assert [r["id"] for r in records] == [p.id for p in selected] and sorted(seen) == sorted(r["id"] for r in records)
    assert _digests(records) == _digests(runner.run_all(selected, profile_kernels=False))
    assert sum(r["status"] == "ok" for r in records) >= 6 and suite["server_run"] > 0
    assert meta["hspi_kernels"] and srv.ping(sock)["pong"] == srv.identity()


def test_server_refuses_stale_and_hostile_requests_and_keeps_serving(served, monkeypatch):
    _, sock, _ = served
    good = {"hello": srv.identity(), "ids": [catalog.all_probes()[0].id]}
    hostile = [b"not json\n", b"[1, 2]\n", json.dumps({"hello": {"version": 1}}).encode() + b"\n",
               json.dumps({**good, "ids": [123]}).encode() + b"\n", json.dumps({**good, "ids": []}).encode() + b"\n",
               json.dumps({**good, "ids": ["no/such/probe"]}).encode() + b"\n",
               json.dumps({**good, "use_cache": "yes"}).encode() + b"\n",
               b"{" + b" " * (srv.MAX_REQUEST_BYTES + 10)]
    for payload in hostile:
        assert "error" in _raw(sock, payload), payload[:60]
    stale = {"version": "0.0.0", "code": "0" * 32}
    assert "stale server" in _raw(sock, json.dumps({**good, "hello": stale}).encode() + b"\n")["error"]
    monkeypatch.setattr(srv, "identity", lambda: stale)
    with pytest.raises(srv.ServerError, match="stale server"):
        srv.request(good["ids"], path=sock)
    monkeypatch.undo()
    records, _, _ = srv.request(good["ids"], path=sock)  # still serving after all of that
    assert records[0]["id"] == good["ids"][0]


def test_cli_probe_through_the_server_and_a_second_server_refused(served):
    tmp_path, sock, _ = served
    out = tmp_path / "fp.json"
    proc = subprocess.run([sys.executable, "-m", "hspi_kernels", "probe", "--server", "on", "--only", "numpy/",
                           "--out", str(out)], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from hspi_kernels import fingerprint

    fp = fingerprint.load(out)
    assert "server" in fp["suite"]["phases"] and "shared_imports" not in fp["suite"]["phases"]
    local = subprocess.run([sys.executable, "-m", "hspi_kernels", "probe", "--server", "off", "--only", "numpy/",
                            "--out", str(tmp_path / "local.json")], cwd=tmp_path, env=_env(tmp_path),
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-2000:]
    assert _digests(fp["probes"]) == _digests(fingerprint.load(tmp_path / "local.json")["probes"])
    second = subprocess.run([sys.executable, "-m", "hspi_kernels", "serve", "--no-warm"], cwd=tmp_path,
                            env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and "already runs" in second.stderr


def test_without_a_server_on_fails_and_auto_probes_here(tmp_path):
    env = _env(tmp_path)
    args = [sys.executable, "-m", "hspi_kernels", "probe", "--only", "numpy/sum", "--out", str(tmp_path / "fp.json")]
    on = subprocess.run(args + ["--server", "on"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert on.returncode == 1 and "no probe server" in on.stderr
    auto = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert auto.returncode == 0, auto.stderr[-2000:]
    with pytest.raises(srv.ServerUnavailable):
        srv.ping(tmp_path / "c" / srv.SOCKET_NAME)


def test_server_ends_on_idle_and_on_sigterm_removing_its_socket(tmp_path):
    sock = tmp_path / "c" / srv.SOCKET_NAME
    proc = _start(tmp_path, "--idle-timeout", "2")
    assert proc.wait(timeout=120) == 0 and not sock.exists()
    proc = _start(tmp_path, "--idle-timeout", "300")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0 and not sock.exists()


def test_socket_path_too_long_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="too long"):
        srv.serve(tmp_path / ("x" * 120) / srv.SOCKET_NAME, warm=False)
