"""Add the probes of a later fingerprint (same platform software and GPU model) to a shipped
reference, e.g. the H200 stack-suite probes into hspi_kernels/data/h200.json:

    python scripts/merge_reference.py hspi_kernels/data/h200.json docs/results/stack/h200_stack_fingerprint.json

The base file is rewritten atomically after the result validates; failed probes are left out
(listed under ``merged[].left_out``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hspi_kernels import fingerprint
from hspi_kernels.fingerprint.merge import merge


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    base_path, extra_path = Path(argv[0]), Path(argv[1])
    try:
        base, extra = fingerprint.load(base_path), fingerprint.load(extra_path)
        out = merge(base, extra, extra_path.as_posix())
        fingerprint.validate(out, "merged")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    fingerprint.save(out, base_path)
    m = out["merged"][-1]
    print(f"{base_path}: +{len(m['probes'])} probes from {extra_path} (left out: {', '.join(m['left_out']) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
