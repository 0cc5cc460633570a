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
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["OutputPathError", "check_output_path", "check_output_dir", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "TEMP_GLOB"]

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
