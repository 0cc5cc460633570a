"""One-off converter (run once, 2026-12, issue 14): the old validation records' verdict keys
to the one verdict schema of :mod:`hspi_kernels.kernels.validation`.

    python docs/results/convert_verdicts.py [docs/results]

For every record named below it recomputes the verdict from the record's own data with the
family's ``verdict_checks`` (the function the family's ``run`` uses), refuses to convert when that
disagrees with the old verdict, drops the old verdict key and writes ``passed`` + ``verdict``
last. Measured numbers are not touched; the JSON layout (indent, trailing newline) is kept.
Running it again changes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hspi_kernels.kernels.validation import (attention_sfu, cuda_core, foundation, record_verdict, sanitizer,
                                             tensor_core, triton_kernels)

# record file name -> (the family's verdict_checks, where the old verdict lived: (holder, key))
FAMILIES = {
    "cuda_core_validation.json": (cuda_core.verdict_checks, ("summary", "all_ok")),
    "tensor_core_validation.json": (tensor_core.verdict_checks, (None, "all_pass")),
    "attention_sfu_validation.json": (attention_sfu.verdict_checks, (None, "all_ok")),
    "triton_kernels_validation.json": (triton_kernels.verdict_checks, (None, "passed")),
    "gpu_sanitize.json": (sanitizer.verdict_checks, (None, "all_ok")),
    "foundation.json": (foundation.verdict_checks, (None, "ok")),
}


def convert(path: Path) -> bool:
    """Convert one record in place; True when it changed."""
    text = path.read_text()
    record = json.loads(text)
    indent = len(text.split("\n")[1]) - len(text.split("\n")[1].lstrip())
    checks_of, (holder, key) = FAMILIES[path.name]
    if "verdict" in record:
        return False
    old = (record[holder] if holder else record).pop(key)
    record_verdict(record, checks_of(record))
    if record["passed"] is not bool(old):
        raise SystemExit(f"{path}: recomputed verdict {record['passed']} != recorded {key}={old}")
    path.write_text(json.dumps(record, indent=indent) + ("\n" if text.endswith("\n") else ""))
    return True


def main(root: str = "docs/results") -> int:
    changed = [p for p in sorted(Path(root).rglob("*.json")) if p.name in FAMILIES and convert(p)]
    for p in changed:
        print("converted", p)
    print(f"{len(changed)} records converted")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
