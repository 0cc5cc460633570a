"""Check a fresh fingerprint against a shipped reference of the same platform: per probe, the
digest and the recorded CUDA kernel names must be the same (the suite's speed work must not
change either). Prints a JSON summary; exit 1 when a deterministic digest or a kernel list differs.

    python bench/probe_vs_reference.py NEW.json hspi_kernels/data/h100-80gb-hbm3.json
"""

from __future__ import annotations

import json
import sys

from hspi_kernels import fingerprint


def compare(new: dict, ref: dict) -> dict:
    a = {r["id"]: r for r in new["probes"] if r["status"] == "ok"}
    b = {r["id"]: r for r in ref["probes"] if r["status"] == "ok"}
    common = sorted(set(a) & set(b))
    both_det = [p for p in common if a[p]["deterministic"] and b[p]["deterministic"]]
    digest_diff = [p for p in both_det if a[p]["digest"] != b[p]["digest"]]
    with_kernels = [p for p in common if b[p].get("kernels") is not None]
    kernel_diff = {p: {"new": a[p].get("kernels"), "ref": b[p]["kernels"]} for p in with_kernels
                   if a[p].get("kernels") != b[p]["kernels"]}
    return {"common_ok": len(common), "both_deterministic": len(both_det), "digests_differ": digest_diff,
            "nondeterministic_new": [p for p in common if not a[p]["deterministic"]],
            "kernel_lists_compared": len(with_kernels), "kernel_lists_differ": kernel_diff,
            "only_in_new": sorted(set(a) - set(b)), "only_in_ref": sorted(set(b) - set(a)),
            "suite": new.get("suite")}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    new, ref = fingerprint.load(argv[0]), fingerprint.load(argv[1])
    summary = compare(new, ref)
    print(json.dumps(summary, indent=1))
    return 1 if summary["digests_differ"] or summary["kernel_lists_differ"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
