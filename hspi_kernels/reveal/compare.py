"""H100 vs H200 (or any two GPUs): do the revealed cuBLAS plans explain the bit differences?

    python python -m hspi_kernels.reveal.compare A/card_reveal.json B/card_reveal.json [--json OUT.json]

For every reveal label present in both records (written by scripts/gpu_card_reveal.py): the
plan revealed on each GPU (split-K factor), whether the op's output bits differ between the GPUs
on the same seeded inputs (digests), and whether the plans explain it: same plan => same bits
expected, different plans => bits must differ; each plan is also evaluated on row 0 of the
seeded inputs here on the CPU and must reproduce that GPU's row-0 bits. Exit 1 if any shape
is not explained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hspi_kernels.platform.files import atomic_write_text, read_json_bounded, size_limit
from hspi_kernels.reveal.order import compare_records

MAX_RECORD_BYTES = 64 << 20  # a card_reveal.json record; $HSPI_MAX_RECORD_MB overrides
MAX_RECORD_ENV = "HSPI_MAX_RECORD_MB"


def load_record(path: str | Path) -> dict:
    """A card/reveal record (JSON object); ValueError naming the file when it is missing, too
    large (``MAX_RECORD_BYTES``), truncated, corrupt or not an object."""
    try:
        record = read_json_bounded(path, size_limit(MAX_RECORD_BYTES, MAX_RECORD_ENV), kind="reveal record")
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a reveal record (a JSON object expected, got {type(record).__name__})")
    return record


def main(argv=None) -> int:

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    ap.add_argument("--no-rows", action="store_true", help="skip the CPU evaluation of row 0")
    args = ap.parse_args(argv)
    try:
        ra, rb = load_record(args.a), load_record(args.b)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = lambda r, p: (r.get("platform", {}).get("torch", {}).get("gpus") or [{"name": p.parent.name}])[0]["name"]
    ga, gb = name(ra, args.a), name(rb, args.b)
    rows = compare_records(ra, rb, check_rows=not args.no_rows)
    print(f"A = {ga}   B = {gb}")
    print(f"{'shape':40s} {'P(A)':>5s} {'P(B)':>5s} {'same plan':>9s} {'bits differ':>11s} {'explained':>9s} {'row0 A/B':>9s}")
    for r in rows:
        row0 = f"{r.get('row0_a_explained', '-')!s:.1}/{r.get('row0_b_explained', '-')!s:.1}"
        print(f"{r['label'][:40]:40s} {r['split_a']!s:>5s} {r['split_b']!s:>5s} {r['same_plan']!s:>9s} "
              f"{r['bits_differ']!s:>11s} {r['explained']!s:>9s} {row0:>9s}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"a": ga, "b": gb, "rows": rows}, indent=1))
    ok = rows and all(r["explained"] and r.get("row0_a_explained", True) and r.get("row0_b_explained", True) for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
