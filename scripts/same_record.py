"""Are two JSON result records the same measurement apart from timings and card identity?

Walks both records leaf by leaf. A leaf whose path names a time (``*_s``, ``seconds``, ``elapsed``,
``timings``, ``time``) or a card's ``uuid`` is counted as *timing* and not compared; every other
leaf must be ``==`` in both. Prints the counts (``N/N non-timing leaves equal``) and the first
differences; exits 1 if any non-timing leaf differs or the structures differ.

    python scripts/same_record.py docs/results/blackbox/h100_power_small160_t0_t1.json \\
        docs/results/blackbox/h100_power_small160_t0_t1_card2.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TIMING = re.compile(r"(_s|seconds|elapsed|timings|time|uuid)(/|\[|$)")


def compare(a, b, path: str = "") -> tuple[int, int, list[str]]:
    """(non-timing leaves, timing leaves, differences) of two parsed records."""
    if TIMING.search(path):
        return 0, 1, []
    if isinstance(a, dict) and isinstance(b, dict):
        out = [0, 0, []]
        for k in sorted(set(a) | set(b)):
            if (k not in a or k not in b) and not TIMING.search(f"{path}/{k}"):
                out[0] += 1
                out[2].append(f"{path}/{k}: only in {'the first' if k in a else 'the second'}")
                continue
            if k not in a or k not in b:
                out[1] += 1
                continue
            n, t, d = compare(a[k], b[k], f"{path}/{k}")
            out[0] += n; out[1] += t; out[2] += d
        return out[0], out[1], out[2]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return 1, 0, [f"{path}: lengths {len(a)} vs {len(b)}"]
        out = [0, 0, []]
        for i, (x, y) in enumerate(zip(a, b)):
            n, t, d = compare(x, y, f"{path}[{i}]")
            out[0] += n; out[1] += t; out[2] += d
        return out[0], out[1], out[2]
    return 1, 0, ([] if a == b and type(a) is type(b) else [f"{path}: {a!r:.60} vs {b!r:.60}"])


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: same_record.py A.json B.json", file=sys.stderr)
        return 2
    try:
        a, b = (json.loads(Path(p).read_text()) for p in args)
    except (OSError, ValueError) as e:
        print(f"same_record: cannot read the records: {e}", file=sys.stderr)
        return 2
    n, t, diffs = compare(a, b)
    print(f"{n - len(diffs)}/{n} non-timing leaves equal; {t} timing leaves not compared")
    for d in diffs[:20]:
        print("  differs:", d)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
