"""Crash-safe output files: one helper for every file the tool writes (fingerprints, traces,
model collections, card/reveal records, benchmark JSON).

- :func:`check_output_path` runs *before* any work: the parent directory exists or can be
  created, the path is not a directory, and the directory is writable. A job that would fail
  to save after an hour of probing fails in the first millisecond instead.
- :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json` write the
  whole content to a temporary file in the same directory, ``fsync`` it, ``os.replace`` it
  over the target and ``fsync`` the directory. A reader sees the old complete file or the new
  complete file, never a prefix, whatever happens to the writer (exception, KeyboardInterrupt,
  full disk, SIGKILL, power loss after the call returned). On any failure the temporary file is
  removed; only a SIGKILL (or a crash of the machine) can leave one behind, named
  ``.<name>.<random>.tmp`` next to the target (:data:`TEMP_GLOB` finds them).
- :func:`npz_bytes` / :func:`atomic_write_npz`: a whole ``np.savez_compressed`` archive built in
  memory, then written with :func:`atomic_write_bytes` (the target name is used as given: no
  ``.npz`` is appended, unlike ``np.savez``).

Bounded inputs: every file the tool reads back (traces, model collections, card/reveal records,
SFU tables, sanitizer case records) goes through :func:`check_input_size` before a byte of it is
read, so a huge or hostile file is an :class:`InputFileError` (a ValueError: the CLI prints it as
a message) instead of an out-of-memory kill. Each loader declares its limit as a module constant
(``MAX_TRACE_BYTES``...) that an environment variable overrides in MiB (:func:`size_limit`, e.g.
``HSPI_MAX_TRACE_MB=4096``). :func:`open_npz_bounded` also bounds the *uncompressed* size of an
npz (a zip bomb is small on disk) and never unpickles; :func:`read_json_bounded` turns truncated
or corrupt JSON into an InputFileError naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

__all__ = ["OutputPathError", "check_output_path", "check_output_dir", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "npz_bytes", "atomic_write_npz", "InputFileError", "size_limit", "check_input_size", "read_bytes_bounded",
           "read_json_bounded", "open_npz_bounded", "NPZ_UNPACK_RATIO", "TEMP_GLOB"]

TEMP_GLOB = ".*.tmp"


class OutputPathError(ValueError):
    """An output path that cannot be written (raised before any work is done)."""


def check_output_path(path: str | os.PathLike, *, kind: str = "output") -> Path:
    """``path`` as a Path when a file can be written there, creating missing parent directories;
    :class:`OutputPathError` (a ValueError) naming ``kind`` and the reason otherwise."""
    p = Path(path)
    if str(path) == "" or p.name in ("", ".", ".."):
        raise OutputPathError(f"{kind} path {str(path)!r} does not name a file")
    if p.is_dir():
        raise OutputPathError(f"{kind} path {p} is a directory")
    if p.exists() and not p.is_file():
        raise OutputPathError(f"{kind} path {p} exists and is not a regular file")
    parent = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputPathError(f"{kind} path {p}: {parent} exists and is not a directory") from None
    except OSError as exc:
        raise OutputPathError(f"{kind} path {p}: cannot create directory {parent} ({exc.strerror})") from None
    if not parent.is_dir():
        raise OutputPathError(f"{kind} path {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{kind} path {p}: directory {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK) and not os.access(parent, os.W_OK):
        raise OutputPathError(f"{kind} path {p} is not writable")
    _try_create(parent, f"{kind} path {p}: directory {parent}")
    return p


def _try_create(directory: Path, what: str) -> None:
    """Create and remove a temporary file in ``directory``: permission bits say nothing for root,
    and a read-only mount or /proc only shows itself on an actual create."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".hspi-check.", suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputPathError(f"{what} is not writable ({exc.strerror or exc})") from None


def check_output_dir(path: str | os.PathLike, *, kind: str = "output folder") -> Path:
    """``path`` as a Path when files can be written in it (created with its parents when
    missing); :class:`OutputPathError` naming ``kind`` and the reason otherwise."""
    p = Path(path)
    if str(path) == "":
        raise OutputPathError(f"{kind} path '' does not name a folder")
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{kind} {p} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputPathError(f"{kind} {p}: a part of the path is not a directory") from None
    except OSError as exc:
        raise OutputPathError(f"{kind} {p}: cannot create it ({exc.strerror})") from None
    _try_create(p, f"{kind} {p}")
    return p


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows: directories cannot be opened; rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # fs without dir fsync
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring)."""
    p = Path(path)
    directory = p.parent if str(p.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=directory)
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if p.exists():  # keep the target's permission bits (mkstemp makes 0600)
            os.chmod(tmp, p.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except BaseException:  # KeyboardInterrupt and SystemExit included: never leave the temp file
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return p


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, **dumps_kwargs) -> Path:
    """``json.dumps`` first (a non-serialisable object raises before the file is touched), then
    :func:`atomic_write_text`. ``allow_nan`` is False unless asked: the loaders reject NaN."""
    dumps_kwargs.setdefault("allow_nan", False)
    text = json.dumps(obj, indent=indent, **dumps_kwargs) + "\n"
    return atomic_write_text(path, text)


def npz_bytes(arrays: Mapping[str, Any], *, compressed: bool = True) -> memoryview:
    """The bytes of an ``np.savez[_compressed]`` archive of ``arrays`` (name -> array), built in
    memory: no pickled objects (an object array raises ValueError before anything is written)."""
    import io

    import numpy as np

    for name, value in arrays.items():
        if np.asarray(value).dtype.hasobject:
            raise ValueError(f"npz entry {name!r}: object arrays cannot be written without pickle")
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getbuffer()


def atomic_write_npz(path: str | os.PathLike, arrays: Mapping[str, Any], *, compressed: bool = True) -> Path:
    """:func:`npz_bytes` of ``arrays`` written to exactly ``path`` with :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, npz_bytes(arrays, compressed=compressed))


# -- bounded inputs -------------------------------------------------------------------------------
NPZ_UNPACK_RATIO = 64  # an npz may unpack to at most this many times its size limit


class InputFileError(ValueError):
    """An input file that is too large, truncated or corrupt (the message names the file)."""


def size_limit(default: int, env: str | None = None) -> int:
    """``default`` bytes, or ``$env`` MiB when that variable is set (a positive number)."""
    raw = os.environ.get(env, "").strip() if env else ""
    if not raw:
        return int(default)
    try:
        mib = float(raw)
    except ValueError:
        mib = float("nan")
    if not mib > 0 or mib == float("inf"):
        raise InputFileError(f"${env}={raw!r}: expected a positive size in MiB")
    return int(mib * 2**20)


def check_input_size(path: str | os.PathLike, max_bytes: int, *, kind: str = "input file") -> int:
    """The size of ``path`` when it is a regular file of at most ``max_bytes`` bytes;
    :class:`InputFileError` otherwise (FileNotFoundError when it does not exist)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {kind}") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read {kind} ({exc.strerror or exc})") from None
    import stat as _stat

    if not _stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{path}: {kind} is not a regular file")
    if st.st_size > max_bytes:
        raise InputFileError(f"{path}: {kind} of {st.st_size} bytes is larger than the {max_bytes}-byte limit")
    return st.st_size


def read_bytes_bounded(path: str | os.PathLike, max_bytes: int, *, kind: str = "input file") -> bytes:
    """The bytes of ``path`` after :func:`check_input_size`; never more than ``max_bytes`` are read
    (a file that grows meanwhile is rejected, not read on)."""
    check_input_size(path, max_bytes, kind=kind)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read {kind} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise InputFileError(f"{path}: {kind} is larger than the {max_bytes}-byte limit")
    return data


def read_json_bounded(path: str | os.PathLike, max_bytes: int, *, kind: str = "JSON file") -> Any:
    """The JSON value of ``path`` (UTF-8, size-bounded); a truncated or corrupt file is an
    :class:`InputFileError` naming the file and the position of the damage."""
    data = read_bytes_bounded(path, max_bytes, kind=kind)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: {kind} is not UTF-8 text") from None
    except RecursionError:
        raise InputFileError(f"{path}: {kind} is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}: truncated or corrupt {kind} (invalid JSON at line {exc.lineno} column {exc.colno}: "
                             f"{exc.msg})") from None


def open_npz_bounded(path: str | os.PathLike, max_bytes: int, *, kind: str = "npz file",
                     max_unpacked: int | None = None):
    """``np.load(path, allow_pickle=False)`` after :func:`check_input_size`, also refusing an
    archive whose members unpack to more than ``max_unpacked`` bytes (default
    ``NPZ_UNPACK_RATIO * max_bytes``). A file that is not a zip archive (truncated: the central
    directory is at its end) is an :class:`InputFileError`. Use it as a context manager."""
    import zipfile

    import numpy as np

    is_file_object = not isinstance(path, (str, os.PathLike))
    if not is_file_object:
        check_input_size(path, max_bytes, kind=kind)
    else:  # an open binary file (BytesIO...): the same bound on what is left of it
        start = path.tell()
        size = path.seek(0, os.SEEK_END) - start
        path.seek(start)
        if size > max_bytes:
            raise InputFileError(f"{path}: {kind} of {size} bytes is larger than the {max_bytes}-byte limit")
    limit = NPZ_UNPACK_RATIO * max_bytes if max_unpacked is None else max_unpacked
    try:
        with zipfile.ZipFile(path) as zf:
            unpacked = sum(info.file_size for info in zf.infolist())
        if is_file_object:
            path.seek(start)  # back to where np.load must start reading
    except _npz_damage() as exc:
        raise InputFileError(f"{path}: truncated or corrupt {kind}, not a readable npz archive "
                             f"({type(exc).__name__}: {exc})") from None
    if unpacked > limit:
        raise InputFileError(f"{path}: {kind} unpacks to {unpacked} bytes, more than the {limit}-byte limit")
    try:
        z = np.load(path, allow_pickle=False)
    except _npz_damage() as exc:
        raise InputFileError(f"{path}: truncated or corrupt {kind} ({type(exc).__name__}: {exc})") from None
    if not hasattr(z, "files"):  # a bare .npy: not an archive of named arrays
        raise InputFileError(f"{path}: {kind} is a single .npy array, not an npz archive")
    return BoundedNpz(z, path, kind)


def _npz_damage() -> tuple[type[BaseException], ...]:
    """What reading a damaged npz archive or member raises (numpy's header checks: ValueError;
    zipfile: BadZipFile, NotImplementedError for an unknown version or compression method; zlib:
    error; a cut file: EOFError / OSError)."""
    import zipfile
    import zlib

    return (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError, zlib.error)


class BoundedNpz:
    """An open npz archive whose member reads turn what a damaged member raises (a bad CRC, an
    unknown compression or zip version, a cut deflate stream, a bad .npy header) into an
    :class:`InputFileError` naming the file and the member; a missing member stays a KeyError."""

    def __init__(self, npz, path, kind: str):
        self._npz, self._path, self._kind = npz, path, kind
        self.files = list(npz.files)

    def __getitem__(self, key: str):
        if key not in self.files:
            raise KeyError(key)
        try:
            return self._npz[key]
        except _npz_damage() as exc:
            if isinstance(exc, InputFileError):
                raise
            raise InputFileError(f"{self._path}: corrupt {self._kind}, member {key!r} is unreadable "
                                 f"({type(exc).__name__}: {str(exc)[:120]})") from None

    def __contains__(self, key) -> bool:
        return key in self.files

    def __iter__(self):
        return iter(self.files)

    def keys(self):
        return list(self.files)

    def close(self) -> None:
        self._npz.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
