"""SIGKILL of the writing verbs at a random point (issue 18): `hspi probe --out`, `hspi trace
run --out` and `hspi model collect --out` killed after a random delay never leave a truncated or half-valid file: the output is
absent, the old file (when one existed) byte for byte, or a new file that loads. A kill after the
verb finished is counted apart (the file must be new and valid then). The per-writer fault
injection with >= 100 runs is tests/test_files_atomic.py; this checks the verbs end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hspi_kernels import fingerprint
from hspi_kernels.models import collect
from hspi_kernels.trace import tracer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL semantics: Linux")

VERBS = {
    "probe": (["probe", "--only", "numpy/", "--server", "off", "--no-cache"], fingerprint.load, "fp.json"),
    "trace": (["trace", "run", "-m", "tiny-llama", "--dtype", "fp32", "--no-profile"], tracer.load, "t.npz"),
    "collect": (["model", "collect", "-m", "tiny-llama", "-e", "fp32.sdpa.b1", "-e", "bf16.sdpa.b1",
                 "--n-random", "8", "--n-text", "0"], collect.load, "c.npz"),
}


def _kill_at(args, delay, env, cwd) -> bool:
    """Run the verb in ``cwd`` (outside the checkout: its source tree must not shadow the installed
    package), SIGKILL it after ``delay`` s (process group); True when it had already ended."""
    p = subprocess.Popen([sys.executable, "-m", "hspi_kernels", *args], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
    try:
        p.wait(timeout=delay)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return False


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_sigkill_never_leaves_a_half_written_output(verb, tmp_path):
    args, load, name = VERBS[verb]
    env = {**os.environ, "HSPI_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "120"}
    out = tmp_path / name
    # one complete run: how long the verb takes here, and an old file for half the kills
    full = []
    for _ in range(2):  # the first run warms the page cache; the kills are timed on the faster one
        t0 = time.perf_counter()
        assert _kill_at([*args, "--out", str(out)], 300, env, tmp_path), f"hspi {verb} did not finish"
        full.append(time.perf_counter() - t0)
    full = min(full)
    old = out.read_bytes()
    load(out)
    rng = np.random.default_rng(18)
    outcomes = {"absent": 0, "old": 0, "new valid": 0, "finished": 0}
    runs = 8
    for i in range(runs):
        target = tmp_path / f"k{i}" / name
        target.parent.mkdir()
        if i % 2:
            target.write_bytes(old)
        finished = _kill_at([*args, "--out", str(target)], float(rng.uniform(0.2, 1.0) * full), env, tmp_path)
        if not target.exists():
            assert not i % 2, "the old file vanished"
            outcomes["absent"] += 1
        elif target.read_bytes() == old and i % 2 and not finished:
            outcomes["old"] += 1
        else:
            load(target)  # raises on a truncated or half-valid file
            outcomes["finished" if finished else "new valid"] += 1
        leftovers = [p.name for p in target.parent.iterdir() if p.name != name]
        assert all(n.endswith(".tmp") for n in leftovers), leftovers  # only temp files, never another name
    assert sum(outcomes.values()) == runs
    assert outcomes["finished"] < runs, f"every kill came too late to test anything: {outcomes}"
