"""python -m hspi_kernels.kernels.validation {cuda|triton|all|NAME...} --out DIR [--scale S]"""

from __future__ import annotations

import argparse
import json
import sys

from hspi_kernels.kernels.validation import GROUPS, REGISTRY, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hspi_kernels.kernels.validation")
    parser.add_argument("names", nargs="+", help=f"groups {sorted(GROUPS)} or names {sorted(REGISTRY)}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    try:
        results = run(args.names, args.out, args.scale)
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
