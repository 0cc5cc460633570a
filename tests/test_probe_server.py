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


def test_more_hostile_requests_refused_and_serving_goes_on(served):
    """Deep nesting (refused before json recurses), unknown keys, wrong types: an error line each."""
    _, sock, _ = served
    good = {"hello": srv.identity(), "ids": [catalog.all_probes()[0].id]}
    hostile = [b"[" * 100_000 + b"]" * 100_000 + b"\n",
               json.dumps({**good, "ids": [[[[[[[[["x"]]]]]]]]]}).encode() + b"\n",
               json.dumps({**good, "out": "../../etc/passwd"}).encode() + b"\n",
               json.dumps({**good, "ping": "yes", "ids": "all"}).encode() + b"\n",
               b"\xff\xfe\n"]
    for payload in hostile:
        answer = _raw(sock, payload)
        assert "error" in answer and "bad request" in answer["error"], (payload[:40], answer)
    assert srv.request(good["ids"], path=sock)[0][0]["id"] == good["ids"][0]


def test_request_deadline_cuts_off_a_dripping_client():
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b'{"hello": ')  # and never the rest
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="not complete within 0.3 s"):
            srv._read_request(a, deadline_s=0.3)
        assert time.monotonic() - t0 < 5


def test_nesting_depth_ignores_brackets_in_strings():
    assert srv._depth(b'{"a": "[[[[[[[[[[[[[[[[[["}') == 1
    assert srv._depth(b'{"a": [[[1]]]}') == 4
    assert srv._depth(b'{"a": "\\\\"}') == 1


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED") or os.geteuid() != 0,
                    reason="needs SO_PEERCRED and root (to become another user)")
def test_peer_of_another_user_is_refused():
    """Peer credentials, not the file mode: over an abstract-namespace socket (no file, no mode) a
    process that became another user before connecting is refused; this user's own peer is not."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0hspi-test-{os.getpid()}")
    listener.listen(1)
    address = listener.getsockname()
    me = srv.identity()  # computed here: the child cannot read this user's cache as nobody
    rfd, wfd = os.pipe()  # the child's error, if any, for the assertion message
    pid = os.fork()
    if pid == 0:  # the child becomes nobody, then connects (SO_PEERCRED is taken at connect)
        code = 3
        try:
            os.close(rfd)
            listener.close()
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.connect(address)
                srv._send_request(c, {"hello": me, "ping": True})  # the refusal may come before it is read
                answer = json.loads(c.makefile("rb").readline())
            code = 0 if "refused" in answer.get("error", "") else 1
        except BaseException as exc:  # noqa: BLE001 -- reported to the parent
            os.write(wfd, repr(exc).encode()[:2000])
        finally:
            os._exit(code)
    os.close(wfd)
    conn, _ = listener.accept()
    with conn:
        assert srv.peer_uid(conn) == 65534
        srv._handle(conn, me, {})
    listener.close()
    _, status = os.waitpid(pid, 0)
    with os.fdopen(rfd, "rb") as r:
        child_error = r.read().decode(errors="replace")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, \
        f"another user's ping was not refused ({status}): {child_error}"
    # negative control: the same check passes this user's own peer
    a, b = socket.socketpair()
    with a, b:
        assert srv.peer_uid(a) == os.getuid()


def test_peer_check_refusal_message(monkeypatch):
    a, b = socket.socketpair()
    with a, b:
        monkeypatch.setattr(srv, "peer_uid", lambda conn: os.getuid() + 1)
        srv._handle(a, srv.identity(), {})
        assert "refused" in json.loads(b.recv(4096).decode())["error"]


def test_eight_concurrent_clients_get_their_own_records(served, monkeypatch):
    import threading

    tmp_path, sock, _ = served
    monkeypatch.setenv("HSPI_CACHE_DIR", str(tmp_path / "c"))
    cpu = [p for p in catalog.all_probes() if p.backend in ("numpy", "torch-cpu")]
    asks = [[cpu[i % len(cpu)].id, cpu[(i + 3) % len(cpu)].id] for i in range(8)]
    answers: dict[int, list] = {}
    errors: list = []

    def client(i):
        try:
            answers[i] = srv.request(asks[i], path=sock, timeout=600)[0]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert not errors, errors
    local = _digests(runner.run_all([catalog.get(i) for i in {x for a in asks for x in a}], profile_kernels=False))
    for i, records in answers.items():
        assert [r["id"] for r in records] == asks[i]
        assert all(_digests([r])[r["id"]] == local[r["id"]] for r in records)
