"""A resident probe server: ``hspi serve`` keeps one process with torch imported and the CUDA
context, cuBLAS/cuDNN handles, Triton launchers and our cubins loaded; ``hspi probe`` and
``hspi identify`` (``--server auto``, the default) send it the probe ids over a Unix socket and
get the records back, so a warm run pays neither the interpreter's torch import (2.4-4.9 s on
the H100 hosts measured) nor any first-use set-up. The probes themselves still run twice each,
on the device, for every request: the server caches nothing a fingerprint reports.

- Socket: ``<cache dir>/probe-server.sock`` (``$HSPI_CACHE_DIR``, see ``probes.cache``), created
  with mode 0600 in a directory of the user's, and every connection's peer credentials
  (``SO_PEERCRED``) are checked: a process of another user is refused even where the file mode
  would let it in (a shared cache dir, a socket passed on).
- Staleness: every request carries the client's package version and ``cache.package_digest()``
  (a digest of every source file and the native module); a server running other code answers
  ``{"error": "stale server ..."}`` and the client runs the probes itself (``auto``) or fails
  (``on``).
- Protocol: one request line ``{"hello": {"version", "code"}, "ids": [str], "profile_kernels":
  bool, "use_cache": bool}`` (or ``"ping": true``); answers ``{"record": ...}`` per finished probe,
  then ``{"suite": {...}, "platform": {...}}``, or one ``{"error": str}``. Requests are checked
  before anything runs: size <= 1 MiB, read within ``REQUEST_DEADLINE_S`` in all (a client that
  drips bytes is cut off), JSON nesting, known keys and types only, registered ids only; a bad
  one gets an error line and the server keeps serving. One request at a time (the probes share
  one GPU); concurrent clients queue and each gets its own answer.
- Life: ``serve`` runs the whole suite once at start (the cold run: Triton JIT, cubin loads,
  handles), then waits; it ends after ``idle_timeout`` seconds without a request, on SIGINT /
  SIGTERM, and removes its socket.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable

import hspi_kernels
from hspi_kernels import platform as plat
from hspi_kernels.probes import cache, catalog, parallel, runner

__all__ = ["SOCKET_NAME", "DEFAULT_IDLE_S", "ServerError", "ServerUnavailable", "socket_path", "identity", "serve",
           "request", "ping", "peer_uid"]

SOCKET_NAME = "probe-server.sock"
DEFAULT_IDLE_S = 900.0
MAX_REQUEST_BYTES = 1 << 20
MAX_IDS = 10_000
REQUEST_DEADLINE_S = 10.0   # the whole request line must arrive within this
MAX_DEPTH = 8               # JSON nesting of a request (the protocol needs 2)
_KEYS = {"hello", "ids", "ping", "profile_kernels", "use_cache"}
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, with its terminating NUL


class ServerUnavailable(ConnectionError):
    """No server answers at the socket (none started, or it ended)."""


class ServerError(RuntimeError):
    """The server answered with an error (stale code, a bad request, a failure while running)."""


def socket_path() -> Path:
    return cache.cache_dir() / SOCKET_NAME


def identity() -> dict[str, str]:
    """What a client and a server must share: package version and source digest."""
    return {"version": hspi_kernels.__version__, "code": cache.package_digest()}


def _check_path(path: Path) -> None:
    if len(os.fsencode(str(path))) > _UNIX_PATH_MAX:
        raise ValueError(f"probe server socket path is too long for a Unix socket ({len(str(path))} > "
                         f"{_UNIX_PATH_MAX} bytes): {path}; set HSPI_CACHE_DIR to a shorter directory")


# -- server ------------------------------------------------------------------------------------
def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message, default=str) + "\n").encode())


def peer_uid(conn: socket.socket) -> int | None:
    """The user id of the process at the other end of a Unix socket (None where the platform
    has no ``SO_PEERCRED``)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _depth(data: bytes) -> int:
    """Deepest nesting of brackets outside strings: refused before json parses (and recurses)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _read_request(conn: socket.socket, deadline_s: float = REQUEST_DEADLINE_S) -> dict:
    """One JSON request line, checked; ValueError says what is wrong with it."""
    end = time.monotonic() + deadline_s
    data = b""
    while not data.endswith(b"\n"):
        left = end - time.monotonic()
        if left <= 0:
            raise ValueError(f"request not complete within {deadline_s:g} s")
        conn.settimeout(left)
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            raise ValueError(f"request not complete within {deadline_s:g} s") from None
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    if _depth(data) > MAX_DEPTH:
        raise ValueError(f"request nested deeper than {MAX_DEPTH} levels")
    try:
        req = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"request is not one JSON line: {exc}") from None
    if not isinstance(req, dict) or not isinstance(req.get("hello"), dict):
        raise ValueError("request must be an object with a 'hello' object")
    unknown = sorted(set(req) - _KEYS)
    if unknown:
        raise ValueError(f"unknown request keys {unknown[:5]}")
    hello = req["hello"]
    if not all(isinstance(hello.get(k), str) for k in ("version", "code")):
        raise ValueError("hello needs 'version' and 'code' strings")
    if req.get("ping") is True:
        return req
    ids = req.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or not 0 < len(ids) <= MAX_IDS:
        raise ValueError(f"'ids' must be a list of 1..{MAX_IDS} probe id strings")
    for key in ("profile_kernels", "use_cache"):
        if not isinstance(req.get(key, False), bool):
            raise ValueError(f"'{key}' must be a boolean")
    return req


def _handle(conn: socket.socket, me: dict, meta: dict) -> None:
    uid = peer_uid(conn)
    if uid is not None and uid != os.getuid():
        _send(conn, {"error": f"refused: the probe server serves user {os.getuid()} only, not {uid}"})
        return
    try:
        req = _read_request(conn)
    except (ValueError, OSError) as exc:
        _send(conn, {"error": f"bad request: {exc}"})
        return
    if req["hello"] != me:
        _send(conn, {"error": f"stale server: it runs hspi_kernels {me['version']} (code {me['code']}), the client "
                              f"{req['hello']['version']} (code {req['hello']['code']}); restart `hspi serve`"})
        return
    if req.get("ping"):
        _send(conn, {"pong": me, "pid": os.getpid()})
        return
    conn.settimeout(None)
    t0 = time.perf_counter()
    try:
        suite_timing = parallel.run_job(req, lambda message: _send(conn, message))
    except ValueError as exc:  # ids this version does not have: nothing ran
        _send(conn, {"error": f"bad request: {exc}"})
        return
    suite_timing["server_run"] = time.perf_counter() - t0
    _send(conn, {"suite": suite_timing, "platform": meta})


def serve(path: str | os.PathLike | None = None, idle_timeout: float = DEFAULT_IDLE_S, warm: bool = True,
          log: Callable[[str], None] | None = None) -> None:
    """Serve probe requests until ``idle_timeout`` seconds pass without one (module docstring).
    RuntimeError when a server already answers at the socket."""
    log = log or (lambda msg: None)
    path = Path(path) if path is not None else socket_path()
    _check_path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        try:
            ping(path)
        except ServerError:
            raise RuntimeError(f"a probe server of other code already runs at {path}: stop it first") from None
        except ServerUnavailable:
            path.unlink()  # a socket left by a server that died
        else:
            raise RuntimeError(f"a probe server already runs at {path}")
    runner.import_shared_modules()
    meta = plat.collect()
    me = identity()
    if warm:  # the cold run: Triton JIT / cache loads, cubins, cuBLAS and cuDNN handles, CUDA context
        t0 = time.perf_counter()
        runner.run_all(catalog.all_probes(), profile_kernels=False)
        log(f"warm-up suite ran in {time.perf_counter() - t0:.1f} s")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file: rw for this user only
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    server.listen(8)
    server.settimeout(0.5)
    log(f"serving probes at {path} (pid {os.getpid()}, idle timeout {idle_timeout:g} s)")
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_timeout:
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            with conn:
                try:
                    _handle(conn, me, meta)
                except OSError:  # the client went away mid-answer: nothing to tell it
                    pass
                except Exception as exc:  # a failure is the client's answer, not the server's end
                    try:
                        _send(conn, {"error": f"server failure: {type(exc).__name__}: {exc}"[:2000]})
                    except OSError:
                        pass
            last = time.monotonic()
        log("idle timeout: stopping")
    finally:
        server.close()
        try:
            path.unlink()
        except FileNotFoundError:
            pass


# -- client ------------------------------------------------------------------------------------
def _connect(path: Path, timeout: float) -> socket.socket:
    if not path.exists():
        raise ServerUnavailable(f"no probe server socket at {path}")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError as exc:
        s.close()
        raise ServerUnavailable(f"no probe server answers at {path}: {exc}") from None
    return s


def _lines(s: socket.socket):
    buf = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            if buf.strip():
                yield buf
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line


def _send_request(s: socket.socket, req: dict) -> None:
    """Send one request line. The server may answer and close before reading it (a refused peer):
    then the write fails with EPIPE while its answer waits to be read, so that is not an error."""
    try:
        s.sendall((json.dumps(req) + "\n").encode())
    except (BrokenPipeError, ConnectionResetError):
        pass


def ping(path: str | os.PathLike | None = None, timeout: float = 5.0) -> dict:
    """The server's identity and pid; ServerUnavailable / ServerError."""
    path = Path(path) if path is not None else socket_path()
    with _connect(path, timeout) as s:
        _send_request(s, {"hello": identity(), "ping": True})
        for line in _lines(s):
            msg = json.loads(line)
            if "error" in msg:
                raise ServerError(msg["error"])
            return msg
    raise ServerUnavailable(f"the probe server at {path} closed without answering")


def request(ids: list[str], *, profile_kernels: bool = False, use_cache: bool = True,
            on_record: Callable[[dict], None] | None = None, path: str | os.PathLike | None = None,
            timeout: float = 1800.0) -> tuple[list[dict], dict, dict]:
    """Run probes ``ids`` in the server: (records in the order given, the server's suite timings,
    its platform metadata). ServerUnavailable when none answers, ServerError when it refuses or
    fails (including an answer that misses a probe)."""
    path = Path(path) if path is not None else socket_path()
    req = {"hello": identity(), "ids": list(ids), "profile_kernels": profile_kernels, "use_cache": use_cache}
    records: dict[str, dict] = {}
    with _connect(path, 10.0) as s:
        _send_request(s, req)
        s.settimeout(timeout)
        for line in _lines(s):
            msg: dict[str, Any] = json.loads(line)
            if "error" in msg:
                raise ServerError(msg["error"])
            if "record" in msg:
                records[msg["record"]["id"]] = msg["record"]
                if on_record is not None:
                    on_record(msg["record"])
            elif "suite" in msg:
                missing = [i for i in ids if i not in records]
                if missing:
                    raise ServerError(f"the server's answer misses probes {missing[:5]}")
                return [records[i] for i in ids], msg["suite"], msg["platform"]
    raise ServerError(f"the probe server at {path} closed before the end of its answer ({len(records)} records)")


if __name__ == "__main__":  # python -m hspi_kernels.probes.server [SOCKET]
    serve(sys.argv[1] if len(sys.argv) > 1 else None, log=lambda m: print(m, flush=True))
