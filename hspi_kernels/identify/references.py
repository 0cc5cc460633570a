"""Which platform produced a fingerprint: comparison against the reference database
(``hspi_kernels/data/*.json``), with evidence per probe and the reason for every difference.

Evidence per probe (``compare_records``), query A against reference B:

==================  ===========================================================  ===========
verdict             when                                                         counts as
==================  ===========================================================  ===========
agrees              both ok, both deterministic, same digest                     agreement
differs             both ok, both deterministic, different digests; or the      difference
                    probe ran on one side and was skipped on the other for lack
                    of a CUDA device (the device class differs)
nondeterministic    ok on both sides, but the digests varied on at least one     neutral
missing             recorded on one side only (older suite, ``--only``), or      neutral
                    skipped on one side for lack of an optional stack (CuPy,
                    Triton, an attention backend)
incomparable        same id, different input spec (a changed probe)              neutral
failed / skipped    failed on either side / skipped on both                      neutral
control             a control probe (e.g. the CUB scan): never evidence          neutral
==================  ===========================================================  ===========

Decision rule (``identify``): with ``agree``/``differ`` the counts above and ``n`` the query's
deterministic fingerprint probes,

- similarity = agree / (agree + differ); coverage = (agree + differ) / n;
  confidence = similarity × coverage (the fraction of the query's fingerprint that this reference
  reproduces bit for bit);
- a reference **matches** when differ = 0 and agree ≥ ``MIN_AGREE``;
- one matching label → ``identified`` as that platform (all matches sharing one label count as
  one); matches with different labels → ``ambiguous``; no match → ``unknown``, reported with the
  references ranked by similarity (nearest neighbours), never forced into a known class.

A single differing deterministic digest is enough to reject a reference: the digests are exact
(xxh3 of the output bits), and a platform that changed one kernel choice *is* a different
platform for the purpose of reproducing outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hspi_kernels import fingerprint
from hspi_kernels.fingerprint import features
from hspi_kernels.fingerprint.sample import sample_array
from hspi_kernels.probes import catalog

__all__ = ["MIN_AGREE", "Reference", "load_database", "compare", "compare_records", "identify", "record_role"]

MIN_AGREE = 3
AGREEMENT = ("agrees",)
DIFFERENCE = ("differs",)
VERDICTS = ("agrees", "differs", "nondeterministic", "missing", "incomparable", "failed", "skipped", "control")


@dataclass(frozen=True)
class Reference:
    id: str                       # file stem, e.g. "cpu-xeon-2core"
    label: str                    # the fingerprint's label
    fingerprint: dict[str, Any]
    path: str


def load_database(paths: Iterable[str | Path] | None = None) -> list[Reference]:
    """The reference fingerprints: ``paths`` (files or folders of *.json), default the shipped
    ``hspi_kernels/data``. Every file is validated; an invalid one is a ValueError naming it."""
    files: list[Path] = []
    if paths is None:
        root = resources.files("hspi_kernels") / "data"
        files = sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".json"))
    else:
        for p in map(Path, paths):
            files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    refs = []
    for f in files:
        fp = fingerprint.load(f)
        refs.append(Reference(id=f.stem, label=fp["label"], fingerprint=fp, path=str(f)))
    return refs


# ---------------------------------------------------------------------------------------------
# one probe, two records
# ---------------------------------------------------------------------------------------------
def record_role(rec: dict[str, Any]) -> str:
    """A record's role; older files lack the field, so the registry of this version decides."""
    if rec.get("role"):
        return rec["role"]
    probe = catalog.get(rec["id"])
    return probe.role if probe is not None else "fingerprint"


def _no_cuda(rec: dict[str, Any]) -> bool:
    return "cuda" in (rec.get("missing") or []) or "no usable CUDA device" in (rec.get("reason") or "")


def _sample_ulp(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """ULP distance of A's sampled output bits from B's (same positions), where both kept one."""
    sa = (a.get("features") or {}).get("sample")
    sb = (b.get("features") or {}).get("sample")
    if not sa or not sb or sa["format"] != sb["format"] or sa["n"] != sb["n"] or sa.get("size") != sb.get("size"):
        return None
    try:
        ua, ub = sample_array(sa), sample_array(sb)
        ulp = features.ulp_distance(ua, ub, fmt=sa["format"])
    except ValueError:
        return None
    d = ulp.distance[ulp.finite]
    if d.size == 0:
        return None
    hist = features.ulp_histogram(ua, ub, fmt=sa["format"], mode="log2")
    return {"n": int(d.size), "equal_fraction": round(float(np.mean(d == 0)), 4),
            "mean_abs": round(float(np.mean(np.abs(d))), 3), "max_abs": int(np.max(np.abs(d))),
            "histogram": [int(c) for c in hist.counts], "format": sa["format"]}


def _plans_text(rec: dict[str, Any]) -> list[str]:
    out = []
    for e in rec.get("explained_by") or []:
        if "error" in e:
            out.append(f"plan not evaluated ({e['error'][:80]})")
        else:
            out.append(f"{e.get('repr', e['plan'].get('kind'))} explains {e['matches']}/{e['total']}")
    return out


def _why_differs(a: dict[str, Any], b: dict[str, Any], ulp: dict[str, Any] | None) -> str:
    parts = [a.get("measures") or b.get("measures") or a["id"]]
    ka, kb = a.get("kernels"), b.get("kernels")
    if ka and kb:
        if ka != kb:
            parts.append(f"kernels {' + '.join(ka)} on A vs {' + '.join(kb)} on B")
        else:
            parts.append(f"same kernels ({' + '.join(ka)}) but different bits: a runtime parameter "
                         "(split-K factor, grid size) or the arithmetic differs")
    pa, pb = _plans_text(a), _plans_text(b)
    if pa or pb:
        parts.append(f"A: {'; '.join(pa) or 'no plan'} / B: {'; '.join(pb) or 'no plan'}")
    oa, ob = a.get("output") or {}, b.get("output") or {}
    if oa and ob and oa != ob:
        parts.append(f"output {oa.get('dtype')}{oa.get('shape')} vs {ob.get('dtype')}{ob.get('shape')}")
    if ulp is not None:
        parts.append(f"sampled outputs: {ulp['equal_fraction']:.0%} equal, max |ULP| {ulp['max_abs']}, "
                     f"mean {ulp['mean_abs']:g}")
    return "; ".join(parts)


def compare_records(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    """Evidence for one probe id: {id, verdict, why, digest_a, digest_b, kernels_a, kernels_b, ulp}."""
    rec = a or b
    row: dict[str, Any] = {"id": rec["id"], "family": rec.get("family"), "measures": rec.get("measures"),
                           "digest_a": (a or {}).get("digest"), "digest_b": (b or {}).get("digest"),
                           "kernels_a": (a or {}).get("kernels"), "kernels_b": (b or {}).get("kernels"),
                           "ulp": None}

    def done(verdict: str, why: str) -> dict[str, Any]:
        row.update(verdict=verdict, why=why)
        return row

    if a is None or b is None:
        return done("missing", f"not recorded on {'A' if a is None else 'B'}")
    if "control" in (record_role(a), record_role(b)):
        return done("control", "control probe (checks the determinism test), not evidence")
    if json.dumps(a.get("inputs"), sort_keys=True) != json.dumps(b.get("inputs"), sort_keys=True):
        return done("incomparable", "same id but different input specs (the probe changed between versions)")
    sa, sb = a["status"], b["status"]
    if "failed" in (sa, sb):
        side = "A" if sa == "failed" else "B"
        return done("failed", f"failed on {side}: {((a if sa == 'failed' else b).get('error') or '')[:120]}")
    if sa == "skipped" and sb == "skipped":
        return done("skipped", "skipped on both")
    if "skipped" in (sa, sb):
        skipped, ran, side = (a, b, "A") if sa == "skipped" else (b, a, "B")
        if _no_cuda(skipped):
            return done("differs", f"device class: ran on {'B' if side == 'A' else 'A'} (CUDA), "
                                   f"no CUDA device on {side}")
        return done("missing", f"skipped on {side}: {skipped.get('reason', '')[:120]}")
    if not (a["deterministic"] and b["deterministic"]):
        sides = "/".join(s for s, r in (("A", a), ("B", b)) if not r["deterministic"])
        return done("nondeterministic", f"digests varied between runs on {sides}")
    if a["digest"] == b["digest"]:
        why = "identical output bits"
        if a.get("kernels") and a.get("kernels") == b.get("kernels"):
            why += f" (kernels {' + '.join(a['kernels'])})"
        return done("agrees", why)
    row["ulp"] = _sample_ulp(a, b)
    return done("differs", _why_differs(a, b, row["ulp"]))


def compare(fp_a: dict[str, Any], fp_b: dict[str, Any]) -> dict[str, Any]:
    """Per-probe comparison of two fingerprints: rows in A's order, then B's extra probes."""
    by_b = {r["id"]: r for r in fp_b["probes"]}
    ids = [r["id"] for r in fp_a["probes"]] + [r["id"] for r in fp_b["probes"] if r["id"] not in
                                               {x["id"] for x in fp_a["probes"]}]
    by_a = {r["id"]: r for r in fp_a["probes"]}
    rows = [compare_records(by_a.get(i), by_b.get(i)) for i in ids]
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    return {"a": fp_a["label"], "b": fp_b["label"], "counts": counts, "rows": rows}


# ---------------------------------------------------------------------------------------------
# identify
# ---------------------------------------------------------------------------------------------
def _fingerprint_probes(fp: dict[str, Any]) -> int:
    return sum(1 for r in fp["probes"] if r["status"] == "ok" and r.get("deterministic")
               and record_role(r) == "fingerprint")


def score(query: dict[str, Any], ref: Reference) -> dict[str, Any]:
    """One candidate: counts, similarity, coverage, confidence, match, and the evidence rows."""
    cmp = compare(query, ref.fingerprint)
    agree, differ = cmp["counts"]["agrees"], cmp["counts"]["differs"]
    n = max(_fingerprint_probes(query), 1)
    similarity = agree / (agree + differ) if agree + differ else 0.0
    coverage = min((agree + differ) / n, 1.0)
    return {
        "id": ref.id, "label": ref.label, "path": ref.path,
        "match": differ == 0 and agree >= MIN_AGREE,
        "similarity": round(similarity, 4), "coverage": round(coverage, 4),
        "confidence": round(similarity * coverage, 4),
        "counts": cmp["counts"], "evidence": cmp["rows"],
    }


def identify(query: dict[str, Any], database: list[Reference]) -> dict[str, Any]:
    """Ranked candidates and the decision (module doc): status identified / ambiguous / unknown."""
    if not database:
        raise ValueError("the reference database is empty")
    candidates = [score(query, ref) for ref in database]
    candidates.sort(key=lambda c: (c["match"], c["confidence"], c["similarity"], c["counts"]["agrees"]),
                    reverse=True)
    matches = [c for c in candidates if c["match"]]
    labels = sorted({c["label"] for c in matches})
    result: dict[str, Any] = {"query": query["label"], "rule": f"match = no differing probe and >= {MIN_AGREE} agreeing",
                              "fingerprint_probes": _fingerprint_probes(query), "candidates": candidates}
    if len(labels) == 1:
        best = matches[0]
        result.update(status="identified", platform=best["label"], reference=best["id"],
                      confidence=best["confidence"],
                      summary=f"{best['label']} ({best['id']}): {best['counts']['agrees']} probes agree, "
                              f"none differ, coverage {best['coverage']:.0%}")
    elif labels:
        result.update(status="ambiguous", platform=None, reference=None, confidence=0.0,
                      summary="matches several platforms: " + ", ".join(labels)
                              + " (no probe that was compared tells them apart)")
    else:
        near = candidates[:3]
        result.update(status="unknown", platform=None, reference=None, confidence=0.0,
                      summary="unknown platform; nearest: " + ", ".join(
                          f"{c['id']} (similarity {c['similarity']:.0%}, {c['counts']['differs']} differ)"
                          for c in near))
    result["nearest"] = [c["id"] for c in candidates[:3]]
    return result
