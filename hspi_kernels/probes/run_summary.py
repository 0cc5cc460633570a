"""Summarise a GPU session's `hspi probe` runs into one small JSON record for docs/results:
per run the wall time (/usr/bin/time), the suite phases, and the fingerprint's agreement with
the shipped reference (from `hspi compare --json`); the identify runs' verdicts.

    python python -m hspi_kernels.probes.run_summary REC_DIR OUT.json

REC_DIR holds fp_<run>.json, probe_<run>.log (with the "probe <run> (jobs J) wall S s" line of
/usr/bin/time), cmp_<run>.json and identify_<i>.json, as .dev/gpu3/run.sh leaves them.
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

from hspi_kernels.platform.files import atomic_write_json


def main(rec: str, out: str) -> None:
    rec_dir = Path(rec)
    runs = {}
    for log in sorted(rec_dir.glob("probe_*.log")):
        name = log.stem[len("probe_"):]
        m = re.search(r"probe \S+ (?:\(jobs (\d+)\) )?wall ([\d.]+) s", log.read_text(errors="replace"))
        fp_path = rec_dir / f"fp_{name}.json"
        if not fp_path.exists():
            continue
        fp = json.loads(fp_path.read_text())
        status = collections.Counter(r["status"] for r in fp["probes"])
        entry = {"wall_s": float(m.group(2)) if m else None, "jobs": int(m.group(1)) if m and m.group(1) else None,
                 "suite": fp.get("suite"), "probes": dict(status),
                 "nondeterministic": [r["id"] for r in fp["probes"] if r["status"] == "ok" and not r["deterministic"]]}
        cmp_path = rec_dir / f"cmp_{name}.json"
        if cmp_path.exists():
            cmp = json.loads(cmp_path.read_text())
            entry["vs_reference"] = {"reference": cmp.get("b"), "verdicts": dict(collections.Counter(r["verdict"] for r in cmp["rows"]))}
        runs[name] = entry
    idents = []
    for path in sorted(rec_dir.glob("identify_*.json")):
        try:
            r = json.loads(path.read_text())
        except ValueError:
            idents.append({"file": path.name, "error": "no JSON"})
            continue
        idents.append({"file": path.name, "status": r.get("status"), "platform": r.get("platform"),
                       "reference": r.get("reference"), "summary": r.get("summary")})
    env = json.loads((rec_dir / "env.json").read_text()) if (rec_dir / "env.json").exists() else None
    atomic_write_json(out, {"kind": "hspi_probe_runs", "platform": env, "runs": runs, "identify": idents},
                      allow_nan=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
