"""Writes the committed seed corpora (tests/fuzz/corpus/<target>/): a few valid documents per
loader and byte strings for the structure-aware native harnesses. Re-run after a format change:
python tests/fuzz/make_seeds.py"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
NATIVE = ["features_fields", "features_bit_counts", "features_ulp_distance", "features_ulp_histogram",
          "features_rounding_direction", "run_program", "run_program_f64"]


def put(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def fingerprint_doc() -> dict:
    from hspi_kernels import fingerprint

    probe = {"id": "numpy/sum/fp32/4x8", "family": "reduction", "backend": "numpy",
             "inputs": {"x": {"seed": 1}}, "measures": "m", "status": "ok",
             "digest": "00ff", "digests": ["00ff", "00ff"], "deterministic": True,
             "output": {"dtype": "float32", "shape": [4]}, "time_s": 0.01, "features": {}}
    return fingerprint.build({"cpu_model": "x"}, "CPU: x", [probe])


def npz(meta: dict, arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return buf.getvalue()


def main() -> None:
    rng = random.Random(18)
    for t in NATIVE:
        for i, n in enumerate([0, 8, 64, 256, 1024]):
            put(t, f"random-{i}", bytes(rng.getrandbits(8) for _ in range(n)))
        put(t, "ones", b"\xff" * 300)
        put(t, "ramp", bytes(range(256)))
    fp = fingerprint_doc()
    for t in ("fingerprint_loads", "fingerprint_load"):
        put(t, "valid.json", json.dumps(fp).encode())
        put(t, "valid-indented.json", json.dumps(fp, indent=1).encode())
        put(t, "empty-probes.json", json.dumps(dict(fp, probes=[])).encode())
    from hspi_kernels.models import collect
    from hspi_kernels.trace import tracer

    ops = [{"i": 0, "key": "layer0.q", "op": "linear", "digest": "ab", "fmt": "bf16"}]
    put("trace_load", "valid.npz", npz({"schema": tracer.SCHEMA, "ops": ops, "arrays": {}},
                                       {"s/0/0": np.arange(4, dtype=np.uint16)}))
    put("trace_load", "meta.bin", b"\x01" + json.dumps({"ops": ops, "arrays": {}}).encode())
    run = {"model": "m", "label": "L", "status": "ok", "key": "r0"}
    put("collection_load", "valid.npz", npz({"schema": collect.SCHEMA, "models": {}, "runs": [run], "extra": {}},
                                            {"r0/logits": np.arange(8, dtype=np.uint16)}))
    put("collection_load", "meta.bin", b"\x01" + json.dumps({"runs": [run], "models": {}}).encode())
    from hspi_kernels.numerics import plans as P

    for i, plan in enumerate([P.Sequential("fp32"), P.Pairwise(), P.numpy_sum_plan(),
                              P.Strided(lanes=4, inner=P.Sequential("fp32"), combine=P.Pairwise()),
                              P.Sequential("fp64", fma=True), P.BlockTree(8), P.WarpButterfly(8),
                              P.Chain(block=P.TensorCore("sm_90", "bf16", "fp32"), k=16)]):
        put("plan_json", f"plan-{i}", b"\x07\x01\x00\x00" + json.dumps(P.to_json(plan) if hasattr(P, "to_json")
                                                                      else plan.to_json()).encode())
    rec = {"label": "sum", "n": 4, "revealed": True, "plan": "Sequential('fp32')",
           "plan_json": P.Sequential("fp32").to_json(), "digest": {"sha256": "00"}}
    put("reveal_records", "one.json", b"\x00" + json.dumps({"reveals": [rec]}).encode())
    put("reveal_records", "two.json", b"\x00" + json.dumps({"reveals": [rec]}).encode() + b"\x00" +
        json.dumps({"reveals": [dict(rec, digest={"sha256": "01"})]}).encode())


if __name__ == "__main__":
    main()
