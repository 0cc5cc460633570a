"""GPU validation of the SFU probes and of the attention forward kernel: GPU bits == replay bits.

    python -m hspi_kernels.kernels.validation.attention_sfu OUT_DIR [--scale 1.0] [--workers 12]

1. SFU tables: every op of :mod:`hspi_kernels.kernels.cuda.sfu` on every pattern of its default binades
   and on a list of special inputs; per op ``OUT_DIR/sfu_<op>/`` holds one compressed npz per
   binade (delta against rn32 of the fp64 function) and ``index.json`` (xxh3 digests, sizes,
   max ulp error, correctly rounded share, monotonicity violations). For ex2.approx.ftz the
   exponent reductions ``ex2(y) == ftz(2^n · ex2(y - n))`` are checked on the GPU's own outputs
   for n = ceil(y) and n = floor(y) over the binades [-16, -2); the replay reduces inputs below
   the recorded binades only by a rule that held everywhere.
2. Attention, exact mode: several shapes (causal, Sk not a multiple of BLOCK_N, split-KV 1/2/4,
   bf16/fp16, D 32/64/128) against :func:`attention_ref.replay`, N/N the only pass.
3. Attention, native mode: the same shapes replayed with the recorded ex2.approx.ftz table;
   matches, and ex2 table misses (inputs outside the recorded set, filled with rn32(2^y)), reported.
4. Negative controls: the replay with a wrong BLOCK_N and with un-rounded P must mismatch.

Output: ``OUT_DIR/attention_sfu_validation.json`` (the returned dict); the verdict (``passed``) covers 1, 2, 4;
``native_all_pass`` reports 3 separately. Needs CuPy and a GPU (sm_90a cubins).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from hspi_kernels.kernels.validation import record_verdict
from hspi_kernels.kernels.validation.tensor_core import same_bits
from hspi_kernels.kernels.cuda import sfu
from hspi_kernels.kernels.cuda.attention import attention_forward
from hspi_kernels.kernels.cuda.sfu import binade_inputs
from hspi_kernels.numerics import attention_ref as R
from hspi_kernels.numerics.attention_ref import SfuTable
from hspi_kernels.numerics.attention_ref import round_to_input
from hspi_kernels.platform.files import atomic_write_text

RESULT_FILE = "attention_sfu_validation.json"
MAX_FILE_BYTES = 16 << 20
# (fmt, BH, Sq, Sk, D, block_n, splits, causal)
SHAPES = (
    ("bf16", 2, 64, 128, 64, 32, 1, False),
    ("bf16", 2, 77, 200, 64, 32, 2, True),
    ("fp16", 2, 50, 130, 32, 16, 4, False),
    ("fp16", 1, 128, 128, 128, 64, 1, True),
    ("bf16", 2, 33, 300, 128, 64, 4, True),
    ("bf16", 2, 64, 100, 32, 16, 2, False),
    ("fp16", 2, 96, 257, 64, 32, 1, False),
)


def _ex2_reduction_checks(tables: dict, specials: dict) -> dict:
    """Check ex2(y) == ftz(2^n · ex2(y - n)) on the recorded binades [-16, -2) (GPU outputs)."""

    out = {}
    base = {k: v for k, v in tables.items() if k[1] < 1 or k[0] == 0}  # the fraction tables only
    t = SfuTable("ex2_ftz", base, specials)
    for rule in ("ceil", "floor"):
        total = found = agree = 0
        for e in (1, 2, 3):
            if (1, e) not in tables:
                continue
            y = binade_inputs(1, e)
            n = (np.ceil(y) if rule == "ceil" else np.floor(y)).astype(np.float32)
            f = (y - n).astype(np.float32)
            of, ff = t.lookup(f)
            pred = np.ldexp(of.astype(np.float64), n.astype(np.int64))
            pred = np.where(np.abs(pred) < 2.0**-126, 0.0, pred).astype(np.float32)
            gpu = tables[(1, e)].view(np.float32)
            total += y.size
            found += int(ff.sum())
            agree += int(same_bits(gpu[ff], pred[ff]).sum())
        out[rule] = {"inputs": total, "fraction_in_table": found, "agree": agree,
                     "holds": found > 0 and agree == found}
    return out


def run_sfu(out_dir: Path, workers: int) -> tuple[dict, dict]:
    """Record every op's tables; returns (report, ex2_ftz SfuTable pieces)."""
    import cupy


    report, ex2 = {}, {}
    for op in sfu.OPS:
        t0 = time.perf_counter()
        binades = sfu.DEFAULT_BINADES[op]
        outs = sfu.binade_outputs(op, binades)
        x = cupy.asarray(sfu.SPECIAL_INPUTS)
        y = cupy.asnumpy(sfu.apply(op, x))
        specials = {int(a): int(b) for a, b in zip(sfu.SPECIAL_INPUTS.view(np.uint32), y.view(np.uint32))}
        extra = {}
        if op == "ex2_ftz":
            tables = {tuple(b): row for b, row in zip(binades, outs)}
            checks = _ex2_reduction_checks(tables, specials)
            extra = {"reduction_checks": checks,
                     "reduction": "ceil" if checks["ceil"]["holds"] else ("floor" if checks["floor"]["holds"] else None)}
            ex2 = {"binades": tables, "specials": specials, "reduction": extra["reduction"]}
        index = sfu.save_table(out_dir, op, binades, outs, specials, workers=workers, extra=extra)
        index["seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_text(out_dir / f"sfu_{op}" / "index.json", json.dumps(index, indent=1))
        report[op] = {"digest": index["digest"], "binades": len(binades), **index["summary"], **extra,
                      "files_ok": index["summary"]["largest_file_bytes"] < MAX_FILE_BYTES,
                      "seconds": index["seconds"]}
    return report, ex2


def _inputs(fmt, BH, Sq, Sk, D, rng):

    Q = round_to_input(rng.standard_normal((BH, Sq, D)) * 1.5, fmt)
    K = round_to_input(rng.standard_normal((BH, Sk, D)), fmt)
    V = round_to_input(rng.standard_normal((BH, Sk, D)), fmt)
    return Q, K, V


def _device_bits(x: np.ndarray, fmt: str):
    import cupy
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if fmt == "bf16" else np.float16
    return cupy.asarray(np.ascontiguousarray(x.astype(dt).view(np.uint16)))


def gpu_attention(Q, K, V, fmt, mode, block_n, splits, causal) -> np.ndarray:
    import cupy


    O = attention_forward(_device_bits(Q, fmt), _device_bits(K, fmt), _device_bits(V, fmt), fmt=fmt, mode=mode,
                          block_n=block_n, splits=splits, causal=causal)
    return cupy.asnumpy(O)


def run(out_dir: str | os.PathLike, scale: float = 1.0, *, seed: int = 20251123, workers: int | None = None) -> dict:
    """Run everything (see the module doc); ``scale`` multiplies the batch·heads of each shape."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or max(1, min(16, (os.cpu_count() or 2) - 2))
    t0 = time.perf_counter()
    sfu_report, ex2 = run_sfu(out, workers)
    table = R.SfuTable("ex2_ftz", ex2["binades"], ex2["specials"], ex2["reduction"])

    rng = np.random.default_rng(seed)
    variants, negatives = [], {}
    for i, (fmt, BH, Sq, Sk, D, bn, sp, causal) in enumerate(SHAPES):
        BH = max(1, int(round(BH * scale)))
        Q, K, V = _inputs(fmt, BH, Sq, Sk, D, rng)
        for mode in ("exact", "native"):
            t1 = time.perf_counter()
            gpu = gpu_attention(Q, K, V, fmt, mode, bn, sp, causal)
            st: dict = {}
            ref = R.replay(Q, K, V, fmt=fmt, mode=mode, block_n=bn, splits=sp, causal=causal,
                           ex2_table=table if mode == "native" else None, stats=st)
            ok = same_bits(gpu, ref)
            rec = {"fmt": fmt, "BH": BH, "Sq": Sq, "Sk": Sk, "D": D, "block_n": bn, "splits": sp, "causal": causal,
                   "mode": mode, "outputs": int(ok.size), "matches": int(ok.sum()), "pass": bool(ok.all()),
                   "max_abs_diff": float(np.nanmax(np.abs(gpu - ref))) if ok.size else 0.0}
            if mode == "native":
                rec["ex2_table_misses"] = st.get("ex2_misses", 0)
            if not ok.all():
                j = tuple(int(v) for v in np.argwhere(~ok)[0])
                rec["first_mismatch"] = {"index": j, "gpu": f"0x{int(gpu.view(np.uint32)[j]):08x}",
                                         "replay": f"0x{int(ref.view(np.uint32)[j]):08x}"}
            if i == 0 and mode == "exact":
                wrong_bn = 16 if bn != 16 else 32
                for name, kw in (("wrong_block_n", {"block_n": wrong_bn}), ("unrounded_p", {"round_p": False})):
                    args = dict(fmt=fmt, mode=mode, block_n=bn, splits=sp, causal=causal)
                    args.update(kw)
                    n = int(same_bits(gpu, R.replay(Q, K, V, **args)).sum())
                    negatives[name] = {"outputs": int(ok.size), "matches": n, "rejected": n < ok.size}
            rec["seconds"] = round(time.perf_counter() - t1, 2)
            variants.append(rec)

    exact_ok = all(v["pass"] for v in variants if v["mode"] == "exact")
    native_ok = all(v["pass"] for v in variants if v["mode"] == "native")
    sfu_ok = all(r["files_ok"] for r in sfu_report.values())
    doc = {
        "what": "SFU tables (fingerprint) + online-softmax attention (exact / native) vs the CPU replay",
        "platform": _platform(), "scale": scale, "seed": seed, "sfu": sfu_report, "attention": variants,
        "negative_controls": negatives, "exact_all_pass": exact_ok, "native_all_pass": native_ok,
        "sfu_ok": sfu_ok, "seconds": round(time.perf_counter() - t0, 1),
    }
    record_verdict(doc, verdict_checks(doc))
    atomic_write_text(out / RESULT_FILE, json.dumps(doc, indent=1))
    return doc


def verdict_checks(doc: dict) -> dict[str, bool | None]:
    """The named checks of a record's verdict (``hspi_kernels.kernels.validation.verdict``): exact
    attention N/N, the SFU table files, the negative controls rejected. The native-mode replay is
    reported (``native_all_pass``) but not part of the verdict."""
    negatives = doc["negative_controls"]
    return {"exact_attention": all(v["pass"] for v in doc["attention"] if v["mode"] == "exact"),
            "sfu_tables": all(r["files_ok"] for r in doc["sfu"].values()),
            "negative_controls_rejected": bool(negatives) and all(n["rejected"] for n in negatives.values())}


def _platform() -> dict:
    out = {"python": platform.python_version(), "host": platform.node()}
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        out.update(cupy=cupy.__version__, device=name, capability=f"{props['major']}.{props['minor']}",
                   driver=cupy.cuda.runtime.driverGetVersion(), runtime=cupy.cuda.runtime.runtimeGetVersion())
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        out["cupy_error"] = str(exc)
    return out


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    doc = run(args.out_dir, args.scale, workers=args.workers)
    for op, r in doc["sfu"].items():
        print(f"sfu {op:8s} digest {r['digest']} max_ulp {r['max_ulp']:.3f} CR {r['correctly_rounded']}/{r['outputs']} "
              f"monotonicity violations {r['monotonicity_violations']} bytes {r['bytes']} ({r['seconds']} s)"
              + (f" reduction {r.get('reduction')} {r.get('reduction_checks')}" if op == "ex2_ftz" else ""))
    for v in doc["attention"]:
        print(f"attn {v['mode']:6s} {v['fmt']} BH={v['BH']} Sq={v['Sq']} Sk={v['Sk']} D={v['D']} BN={v['block_n']} "
              f"splits={v['splits']} causal={v['causal']}: {v['matches']}/{v['outputs']}"
              + (f" ex2 misses {v['ex2_table_misses']}" if v["mode"] == "native" else "")
              + ("" if v["pass"] else f" FAIL {v.get('first_mismatch')}"))
    print("negative controls:", doc["negative_controls"])
    print("exact_all_pass", doc["exact_all_pass"], "native_all_pass", doc["native_all_pass"], "sfu_ok", doc["sfu_ok"],
          "passed", doc["passed"], f"({doc['seconds']} s)")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
