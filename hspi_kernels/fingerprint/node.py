"""``hspi probe --all-gpus``: the suite on every GPU of the node at once, one fingerprint per
GPU and a node summary (are the GPUs bit-identical on every probe they ran?).

Each GPU gets its own ``hspi probe`` process (``CUDA_VISIBLE_DEVICES=<index>``, ``--server off``:
a resident probe server holds one GPU), started together; a GPU whose run fails is recorded with
its exit code and the tail of its log, the others still finish. The summary (schema
``hspi-node/1``) lists per GPU its fingerprint file, label, probe counts and wall time, and per
GPU the probes whose digest differs from the first GPU that succeeded (``schema.digest_differences``).
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from hspi_kernels.fingerprint import schema
from hspi_kernels.platform.files import atomic_write_json

__all__ = ["NODE_SCHEMA", "gpu_indices", "per_gpu_path", "run"]

NODE_SCHEMA = "hspi-node/1"


def gpu_indices() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries ([] without CUDA)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    n = torch.cuda.device_count()
    if visible:
        entries = [v.strip() for v in visible.split(",") if v.strip()]
        return entries[:n]
    return [str(i) for i in range(n)]


def _hspi_command() -> list[str]:
    """The installed ``hspi`` script next to this interpreter (``python -m`` would put the current
    folder first on sys.path: run from a source checkout, the child would import the checkout's
    uncompiled package instead of the installed one); ``python -m hspi_kernels`` without it."""
    script = Path(sys.executable).parent / "hspi"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "hspi_kernels"]


def per_gpu_path(out: Path, device: str) -> Path:
    """fingerprint.json -> fingerprint.gpu<device>.json (next to the node summary)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in device)
    return out.with_name(f"{out.stem}.gpu{safe}{out.suffix or '.json'}")


def run(devices: Sequence[str], out: Path, probe_args: Sequence[str] = (), *,
        on_done: Callable[[dict], None] | None = None, timeout: float = 3600.0) -> dict[str, Any]:
    """Probe every device in parallel; the node summary (also written to ``out``). ``probe_args``
    are passed to each ``hspi probe`` (``--only``, ``--suite``, ...)."""
    if not devices:
        raise ValueError("no GPU to probe")
    out = Path(out)
    t0 = time.perf_counter()
    procs = []
    for dev in devices:
        path = per_gpu_path(out, dev)
        log = path.with_suffix(".log")
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": dev, "COLUMNS": "120"}
        cmd = [*_hspi_command(), "probe", "--out", str(path), "--server", "off", *probe_args]
        fh = open(log, "wb")
        procs.append((dev, path, log, fh, time.perf_counter(),
                      subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)))
    gpus: list[dict] = []
    for dev, path, log, fh, started, proc in procs:
        try:
            rc = proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        fh.close()
        entry: dict[str, Any] = {"device": dev, "fingerprint": path.name, "log": log.name, "exit_code": rc,
                                 "wall_s": round(time.perf_counter() - started, 2)}
        try:
            fp = schema.load(path)
            counts: dict[str, int] = {}
            for r in fp["probes"]:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            entry.update(label=fp["label"], probes=counts, status="ok" if rc in (0, 1) else "failed")
            entry["_fp"] = fp
        except (OSError, ValueError) as exc:
            tail = log.read_bytes()[-1500:].decode("utf-8", "replace") if log.exists() else ""
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:300], log_tail=tail)
        gpus.append(entry)
        if on_done is not None:
            on_done({k: v for k, v in entry.items() if k != "_fp"})
    ref = next((g for g in gpus if "_fp" in g), None)
    for g in gpus:
        if "_fp" in g and ref is not None:
            diff = schema.digest_differences(ref["_fp"], g["_fp"])
            g["differs_from"] = ref["device"]
            g["differing_probes"] = [pid for pid, _, _ in diff]
    ok = [g for g in gpus if "_fp" in g]
    summary = {
        "schema": NODE_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "devices": list(devices),
        "probe_args": list(probe_args),
        "gpus": [{k: v for k, v in g.items() if k != "_fp"} for g in gpus],
        "all_ran": len(ok) == len(gpus),
        "bit_identical": bool(ok) and len(ok) == len(gpus) and all(not g["differing_probes"] for g in ok),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(out, summary)
    return summary
