"""Software-stack settings a fingerprint reveals (issue 17), with the evidence per probe.

The stack probes (``hspi_kernels.probes.stack``) come in setting pairs on the same seeded inputs
(eager / compiled, torch / JAX, flag on / off, cublas / cublaslt, fp8 fast / slow accumulation).
For every axis :func:`infer_stack` reports, from one fingerprint:

- ``distinguishable``: True when the pair's digests differ (the setting changes the bits on
  this platform), False when they are equal, None when a side was not run (with the reason);
- ``explained``: the plans that reproduce a side's bits (``explained_by``, N/N), e.g. inductor's
  CPU row sum ``Strided(16, Sequential, BlockTree(16))``;
- ``reference``: with ``references`` (shipped fingerprints), which reference has the same digest
  on each probe of the axis, so a provider's fingerprint says e.g. "compiled probes equal the
  H200 reference's".

Pure dictionaries in, dictionaries out: no torch import.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["AXES", "infer_stack", "format_stack"]

# axis -> (setting label, probe id) pairs; the first pair member is the default setting
AXES: dict[str, list[tuple[str, str]]] = {
    "compile (CPU inductor)": [
        ("eager", "torch-cpu/sumsq-eager/fp32/64x4097"), ("compiled", "torch-inductor-cpu/sumsq-compiled/fp32/64x4097"),
        ("eager", "torch-cpu/rmsnorm-eager/fp32/64x896"), ("compiled", "torch-inductor-cpu/rmsnorm-compiled/fp32/64x896"),
        ("eager", "torch-cpu/softmax-eager/fp32/64x1000"), ("compiled", "torch-inductor-cpu/softmax-compiled/fp32/64x1000"),
        ("eager", "torch-cpu/residual-rmsnorm-eager/fp32/64x896"),
        ("compiled", "torch-inductor-cpu/residual-rmsnorm-compiled/fp32/64x896"),
    ],
    "framework (CPU)": [
        ("torch", "torch-cpu/matmul/fp32/64x1024x64"), ("jax", "jax-cpu/matmul/fp32/64x1024x64"),
        ("torch", "torch-cpu/sum/fp32/64x4097"), ("jax", "jax-cpu/sum/fp32/64x4097"),
        ("torch", "torch-cpu/softmax/fp32/64x1000"), ("jax", "jax-cpu/softmax/fp32/64x1000"),
        ("torch", "torch-cpu/rmsnorm-eager/fp32/64x896"), ("jax", "jax-cpu/rmsnorm/fp32/64x896"),
    ],
    "compile (CUDA inductor)": [
        ("eager", "torch-cuda/rmsnorm-eager/fp32/64x4096"), ("compiled", "torch-cuda/rmsnorm-compiled/fp32/64x4096"),
        ("eager", "torch-cuda/softmax-eager/fp32/64x1000"), ("compiled", "torch-cuda/softmax-compiled/fp32/64x1000"),
    ],
    "allow_bf16_reduced_precision_reduction": [
        ("on", "torch-cuda/matmul-allow-bf16-reduced-precision-reduction/bf16/256x4096x256/on"),
        ("off", "torch-cuda/matmul-allow-bf16-reduced-precision-reduction/bf16/256x4096x256/off"),
    ],
    "allow_fp16_reduced_precision_reduction": [
        ("on", "torch-cuda/matmul-allow-fp16-reduced-precision-reduction/fp16/256x4096x256/on"),
        ("off", "torch-cuda/matmul-allow-fp16-reduced-precision-reduction/fp16/256x4096x256/off"),
    ],
    "preferred_blas_library": [
        ("cublas", "torch-cuda/matmul-blas-cublas/bf16/8x4096x4096"),
        ("cublaslt", "torch-cuda/matmul-blas-cublaslt/bf16/8x4096x4096"),
        ("cublas", "torch-cuda/matmul-blas-cublas/bf16/256x4096x4096"),
        ("cublaslt", "torch-cuda/matmul-blas-cublaslt/bf16/256x4096x4096"),
    ],
    "fp8 _scaled_mm accumulation": [
        ("fast", "torch-cuda/scaled-mm/e4m3/16x4096x4096/tensor-fast"),
        ("slow", "torch-cuda/scaled-mm/e4m3/16x4096x4096/tensor-slow"),
        ("fast", "torch-cuda/scaled-mm/e4m3/16x4096x4096/row-fast"),
        ("slow", "torch-cuda/scaled-mm/e4m3/16x4096x4096/row-slow"),
    ],
}


def _records(fp: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in fp.get("probes", [])}


def _evidence(rec: dict[str, Any] | None) -> dict[str, Any]:
    if rec is None:
        return {"status": "absent", "reason": "not in this fingerprint (older version or filtered run)"}
    out = {"status": rec.get("status"), "digest": rec.get("digest")}
    if rec.get("status") != "ok":
        out["reason"] = rec.get("reason") or rec.get("error") or ""
    explained = [f"{e['repr']}: {e['matches']}/{e['total']}" for e in rec.get("explained_by") or []]
    if explained:
        out["explained_by"] = explained
    return out


def infer_stack(fp: dict[str, Any], references: Iterable[tuple[str, dict[str, Any]]] = ()) -> list[dict[str, Any]]:
    """One entry per axis: {axis, pairs: [{settings, probes, evidence, distinguishable}], distinguishable,
    summary}; ``references``: (label, fingerprint) pairs whose digests are compared probe by probe."""
    recs = _records(fp)
    refs = [(label, _records(ref)) for label, ref in references]
    out = []
    for axis, members in AXES.items():
        pairs = []
        for (s0, p0), (s1, p1) in zip(members[0::2], members[1::2]):
            e0, e1 = _evidence(recs.get(p0)), _evidence(recs.get(p1))
            both = e0["status"] == e1["status"] == "ok"
            pair = {"settings": [s0, s1], "probes": [p0, p1], "evidence": [e0, e1],
                    "distinguishable": (e0["digest"] != e1["digest"]) if both else None}
            if not both:
                pair["reason"] = "; ".join(sorted({e.get("reason", "") for e in (e0, e1) if e["status"] != "ok"}))
            for e, pid in ((e0, p0), (e1, p1)):
                same = [label for label, r in refs if pid in r and r[pid].get("status") == "ok"
                        and r[pid].get("digest") == e.get("digest")]
                if refs and e["status"] == "ok":
                    e["same_as_references"] = same
            pairs.append(pair)
        verdicts = [p["distinguishable"] for p in pairs if p["distinguishable"] is not None]
        if not verdicts:
            summary, dist = f"not measured here: {pairs[0].get('reason', '')}", None
        else:
            dist = any(verdicts)
            n = sum(verdicts)
            summary = (f"{members[0][0]} vs {members[1][0]}: bits differ on {n}/{len(verdicts)} probe pairs"
                       if dist else f"{members[0][0]} and {members[1][0]} give the same bits on all "
                                    f"{len(verdicts)} probe pairs (indistinguishable here)")
        out.append({"axis": axis, "distinguishable": dist, "summary": summary, "pairs": pairs})
    return out


def format_stack(entries: list[dict[str, Any]]) -> str:
    """A plain-text table: axis, verdict, per-pair evidence."""
    lines = []
    for e in entries:
        lines.append(f"{e['axis']}: {e['summary']}")
        for p in e["pairs"]:
            ev = []
            for s, pid, x in zip(p["settings"], p["probes"], p["evidence"]):
                text = f"{s}={x.get('digest') or x['status']}"
                if x.get("explained_by"):
                    text += f" [{'; '.join(x['explained_by'])}]"
                ev.append(text)
            lines.append(f"  {' | '.join(ev)}")
    return "\n".join(lines)
