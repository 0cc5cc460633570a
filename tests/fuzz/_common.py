"""Shared by the fuzz harnesses (tests/fuzz/fuzz_<target>.py): loading the sanitised native
module, the oracle (which exceptions are a clean rejection), and the atheris entry point.

A harness defines ``one_input(data: bytes)`` that either returns, raises an exception of its
target's ``ALLOWED`` tuple (a clean rejection: the contract is ValueError/TypeError with a
message), or raises something else (a finding). Memory errors and undefined behaviour in the
native code are caught by ASan/UBSan in the instrumented build (HSPI_FUZZ_NATIVE) and abort the
process: the driver (run.py) counts those as crashes.

Environment:
  HSPI_FUZZ_NATIVE      path of an instrumented _native*.so to use instead of the installed one
  HSPI_FUZZ_FINDINGS    file to append one JSON line per new unexpected-exception signature
  HSPI_FUZZ_KEEP_GOING  1 (default): record a finding and go on (so a run reaches its execution
                        count); 0: re-raise, atheris stops and writes the crashing input.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_native():
    """hspi_kernels._native, replaced by the instrumented build when HSPI_FUZZ_NATIVE is set
    (also for the package's own lazy imports, which read sys.modules)."""
    import hspi_kernels

    path = os.environ.get("HSPI_FUZZ_NATIVE")
    if path:
        spec = importlib.util.spec_from_file_location("hspi_kernels._native", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules["hspi_kernels._native"] = mod
        hspi_kernels._native = mod
    from hspi_kernels import _native

    return _native


class Finding(Exception):
    """A wrong answer (a differential check failed): always a finding, never allowed."""


_seen: set[str] = set()


def _signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "hspi_kernels" in f.filename] or frames
    f = ours[-1]
    return f"{type(exc).__name__} at {Path(f.filename).name}:{f.lineno} ({f.name})"


def _record(exc: BaseException, data: bytes) -> None:
    sig = _signature(exc)
    if sig in _seen:
        return
    _seen.add(sig)
    out = os.environ.get("HSPI_FUZZ_FINDINGS")
    line = json.dumps({"signature": sig, "message": str(exc)[:300], "input_hex": data[:512].hex()})
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")
    print(f"FINDING {line}", file=sys.stderr, flush=True)


def guarded(one_input, allowed: tuple[type[BaseException], ...]):
    keep_going = os.environ.get("HSPI_FUZZ_KEEP_GOING", "1") != "0"

    def test_one_input(data: bytes) -> None:
        try:
            one_input(data)
        except Finding as exc:
            _record(exc, data)
            if not keep_going:
                raise
        except allowed:
            pass
        except RecursionError as exc:  # never a clean rejection: the loader must bound depth
            _record(exc, data)
            if not keep_going:
                raise
        except Exception as exc:
            _record(exc, data)
            if not keep_going:
                raise

    return test_one_input


def main(one_input, allowed: tuple[type[BaseException], ...]) -> None:
    import atheris

    atheris.Setup(sys.argv, guarded(one_input, allowed))
    atheris.Fuzz()


def run_corpus(one_input, allowed, corpus: Path) -> int:
    """Replay every file of a corpus directory through the guarded harness (no atheris): the
    number of inputs run. Used by tests to check the seeds themselves."""
    fn = guarded(one_input, allowed)
    n = 0
    for p in sorted(corpus.iterdir()):
        if p.is_file():
            fn(p.read_bytes())
            n += 1
    return n
