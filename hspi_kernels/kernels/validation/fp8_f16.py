"""Hopper wgmma fp8 with an fp16 accumulator (``m64n8k32 .f16.e4m3.e4m3`` / ``.e5m2``): one GPU run
that decides the block model (issue 19).

    python -m hspi_kernels.kernels.validation.fp8_f16 OUT_DIR     # on an H100/H200, after the usual install

For e4m3 and e5m2, every adversarial generator of ``validation.tensor_core`` (random, spread,
cancel, subnormal, gdisc), C = 0 and C != 0 (fp16), K = 32 (one instruction per output) and
K = 128 (a chain of four), 128 x 64 outputs each: the ``wgmma_gemm(out_format="fp16")`` bits are
compared with every candidate model below. Writes ``OUT_DIR/fp8_f16_decide.json`` (per set and
candidate: matches, on all outputs for the preset and for every candidate that matched the
first 8 rows, else on those 8 x 64; the candidates that match every output of every set; the preset's
count) and ``OUT_DIR/fp8_f16_blocks.npz`` (A, B, C, D of each set, keys ``wgmma|fmt|fp16|gen|c|K``
like ``kernels.validation.tc_blocks``) for offline analysis. Exit status 0 iff the preset matches everything.

Candidates (the preset ``sm_90.wgmma/<fmt>->fp16`` is MMA-Sim's wgmma model: G=32, F=13, fp16 RNE):
  block G in {16, 32} x F in {12, 13, 14, 24, 25} x output rounding {RNE, RZ} (sm_90 rules kept);
  the preset with ``subnormal_exponent="actual"`` / ``zero_sign="ieee"`` / no e_max floor;
  "e8m13 then fp16": the fp32-accumulator fp8 preset (c in the block), its e8m13 output rounded
  RNE to fp16; "products e8m13 + HADD c": the fp8 block from +0, then fp16 RNE of (x + c);
  the mma.sync emulation (two fp16 HMMAs over k%4 halves + HADD2; numerics.fp8_emulation).
A negative control is built in: the preset must be rejected on data made by a wrong candidate
(``self_check``; also run on the CPU by tests/test_fp8_f16_decide.py).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from hspi_kernels.kernels.validation import tensor_core as V
from hspi_kernels.numerics import fp8_emulation
from hspi_kernels.numerics.tensor_core import chain, get_preset
from hspi_kernels.platform.files import atomic_write_npz, atomic_write_text

FORMATS = ("e4m3", "e5m2")
GENERATORS = ("random", "spread", "cancel", "subnormal", "gdisc")
KS = (32, 128)
M, N = 128, 64
SUBSET_ROWS = 8  # rows of A scored against every candidate (x N outputs); survivors on all
RESULT = "fp8_f16_decide.json"
BLOCKS = "fp8_f16_blocks.npz"


def _h16(x) -> np.ndarray:
    return np.asarray(x, np.float64).astype(np.float16).astype(np.float32)


def _rows(A, B, C):
    """Per-output rows: a [M*N, K], b [M*N, K], c [M*N]."""
    K = A.shape[1]
    a = np.ascontiguousarray(np.broadcast_to(A[:, None, :], (A.shape[0], B.shape[1], K))).reshape(-1, K)
    b = np.ascontiguousarray(np.broadcast_to(B.T[None, :, :], (A.shape[0], B.shape[1], K))).reshape(-1, K)
    c = np.zeros(a.shape[0], np.float32) if C is None else np.asarray(C, np.float32).reshape(-1)
    return a, b, c


def candidates(fmt: str) -> dict[str, Callable]:
    """name -> f(a, b, c) on per-output rows (c already fp16-representable), float32 [rows]."""
    preset = get_preset("sm_90", fmt, "fp16", "wgmma")
    out: dict[str, Callable] = {"preset": lambda a, b, c, m=preset: chain(m, a, b, c)}
    for G in (16, 32):
        for F in (12, 13, 14, 24, 25):
            for rnd in ("RNE", "RZ"):
                m = dataclasses.replace(preset, name=f"G={G},F={F},{rnd}", G=G, F=F, out_rounding=rnd)
                out[m.name] = lambda a, b, c, m=m: chain(m, a, b, c)
    for field, value in (("subnormal_exponent", "actual"), ("zero_sign", "ieee"), ("emax_floor", None)):
        m = dataclasses.replace(preset, name=f"preset,{field}={value}", **{field: value})
        out[m.name] = lambda a, b, c, m=m: chain(m, a, b, c)
    e8 = get_preset("sm_90", fmt, "e8m13", "wgmma")

    def e8m13_then_fp16(a, b, c):
        acc = c
        for k0 in range(0, a.shape[1], 32):
            acc = _h16(chain(e8, a[:, k0:k0 + 32], b[:, k0:k0 + 32], acc))
        return acc

    def products_then_hadd(a, b, c):
        acc = c
        for k0 in range(0, a.shape[1], 32):
            x = chain(e8, a[:, k0:k0 + 32], b[:, k0:k0 + 32], np.zeros_like(c))
            acc = _h16(x.astype(np.float64) + acc.astype(np.float64))
        return acc

    out["e8m13 then fp16"] = e8m13_then_fp16
    out["products e8m13 + HADD c"] = products_then_hadd
    out["mma.sync emulation (fp16 HMMA x2 + HADD2)"] = (
        lambda a, b, c: fp8_emulation.mma_sync_fp8_chain("sm_90", "fp16", a, b, c))
    return out


def inputs(rng, fmt: str, gen: str, K: int, with_c: bool):
    A, B = V.make_inputs(gen, fmt, M, N, K, rng)
    C = V.make_c(A, B, "fp16", rng) if with_c else None
    return A, B, C


def score(fmt: str, a, b, c, d: np.ndarray, cands: dict[str, Callable] | None = None) -> dict[str, int]:
    cands = cands or candidates(fmt)
    return {name: int(V.same_bits(fn(a, b, c), d).sum()) for name, fn in cands.items()}


def self_check(rng) -> dict:
    """Negative control on the CPU: data made by "G=16,F=13,RNE" must reject the preset and be
    matched by that candidate alone among the block variants it differs from."""
    fmt = "e4m3"
    cands = candidates(fmt)
    A, B, C = inputs(rng, fmt, "gdisc", 64, True)
    a, b, c = _rows(A, B, C)
    fake = cands["G=16,F=13,RNE"](a, b, c)
    counts = score(fmt, a, b, c, fake, cands)
    n = fake.size
    return {"outputs": n, "truth": "G=16,F=13,RNE", "truth_matches": counts["G=16,F=13,RNE"],
            "preset_matches": counts["preset"], "pass": counts["G=16,F=13,RNE"] == n and counts["preset"] < n}


def run(out_dir: str) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261219)
    t0 = time.perf_counter()
    sets, arrays, alive = [], {}, {}
    for fmt in FORMATS:
        cands = candidates(fmt)
        alive[fmt] = set(cands)
        for gen in GENERATORS:
            for K in KS:
                for with_c in (False, True):
                    A, B, C = inputs(rng, fmt, gen, K, with_c)
                    D = V.gpu_gemm("wgmma", A, B, C, fmt, "fp16").astype(np.float32)
                    a, b, c = _rows(A, B, C)
                    n, d = D.size, D.reshape(-1)
                    # every candidate on the first SUBSET_ROWS rows; the preset and the candidates
                    # still matching everything there on all outputs
                    sub = SUBSET_ROWS * N
                    counts = score(fmt, a[:sub], b[:sub], c[:sub], d[:sub], cands)
                    full = {k: fn for k, fn in cands.items() if k == "preset" or counts[k] == sub}
                    counts = {k: (int(V.same_bits(full[k](a, b, c), d).sum()) if k in full else v)
                              for k, v in counts.items()}
                    alive[fmt] &= {k for k, v in counts.items() if k in full and v == n}
                    key = f"wgmma|{fmt}|fp16|{gen}|{'c' if with_c else 'z'}|{K}"
                    for part, arr in zip("ABCD", (A, B, np.zeros((M, N), np.float32) if C is None else C, D)):
                        arrays[f"{key}|{part}"] = np.asarray(arr, np.float32)
                    sets.append({"key": key, "outputs": n, "subset_outputs": sub, "preset": counts["preset"],
                                 "matches": counts, "scored_on_all": sorted(full)})
                    print(f"{key:40s} preset {counts['preset']}/{n}  best {max(counts.values())}", flush=True)
    atomic_write_npz(out / BLOCKS, arrays)
    preset_pass = all(s["preset"] == s["outputs"] for s in sets)
    doc = {
        "what": "wgmma fp8 -> fp16 accumulator: GPU bits vs candidate block models (issue 19)",
        "platform": V._platform(), "M": M, "N": N, "Ks": list(KS), "sets": sets,
        "preset": {f: repr(get_preset("sm_90", f, "fp16", "wgmma")) for f in FORMATS},
        "preset_matches": sum(s["preset"] for s in sets), "outputs": sum(s["outputs"] for s in sets),
        "candidates_matching_everything": {f: sorted(v) for f, v in alive.items()},
        "negative_control": self_check(rng), "preset_pass": preset_pass,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / RESULT, json.dumps(doc, indent=1))
    print("preset", doc["preset_matches"], "/", doc["outputs"], "candidates matching everything:",
          doc["candidates_matching_everything"], "negative control:", doc["negative_control"]["pass"])
    return doc


def main(argv: list[str]) -> int:
    """Exit status 0 iff the preset matches everything and the negative control passes."""
    if len(argv) != 1:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    result = run(argv[0])
    return 0 if result["preset_pass"] and result["negative_control"]["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
