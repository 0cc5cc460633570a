"""The compute-sanitizer check of the CUDA kernels: every kernel family of hspi_kernels on tiny
shapes (the cases), the negative controls, the log parser and the summary record.

Driven by scripts/gpu_sanitize.sh, which runs ``run`` once per tool under
``compute-sanitizer --tool {memcheck,racecheck,synccheck,initcheck}`` and then ``summarize``:

    python -m hspi_kernels.kernels.validation.sanitizer list     # cases and discovered kernels
    python -m hspi_kernels.kernels.validation.sanitizer run CASES.json [--only SUBSTR] [--control oob_ours|oob_planted|race]
    python -m hspi_kernels.kernels.validation.sanitizer summarize DIR OUT.json   # DIR: <tool>.log, <tool>.rc, <tool>.cases.json

Kernels are *discovered*: every ``csrc/cuda/**/*.cu`` is loaded through the package loader
(cubin or NVRTC, as the package would) and its entry points are read from the ELF symbol table of
the loaded cubin; each case declares the kernels it launches (from the wrappers' own naming
functions), and ``summarize`` reports discovered kernels no case launched. CuPy's memory pool
is switched off so every array is its own cudaMalloc and memcheck sees exact bounds.

Negative controls (one process each, they must be reported as errors): ``--control oob_ours``
launches our own row-reduction kernel with n one larger than the array (an out-of-bounds read
memcheck must flag), ``oob_planted`` a planted kernel writing one element past its array,
``race`` a planted shared-memory race (racecheck must flag it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import struct
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from hspi_kernels import platform
from hspi_kernels.kernels.cuda import loader
from hspi_kernels.kernels.validation import record_verdict
from hspi_kernels.kernels.cuda import reduction as R
from hspi_kernels.platform.files import atomic_write_text, read_bytes_bounded, read_json_bounded

MAX_CASES_BYTES = 64 << 20   # a <tool>.cases.json record read back by summarize
MAX_LOG_BYTES = 1 << 30      # a compute-sanitizer log (racecheck can be verbose)
MAX_CUBIN_BYTES = 256 << 20

MARK = "@@HSPI-CASE"
CHECKOUT_SOURCES = Path(__file__).resolve().parents[3] / "csrc" / "cuda"


# ---------------------------------------------------------------------------------------------
# Discovery: entry points of a cubin (ELF64 .symtab, global FUNC symbols)
# ---------------------------------------------------------------------------------------------
def cubin_kernels(path: str) -> list[str]:
    data = read_bytes_bounded(path, MAX_CUBIN_BYTES, kind="cubin")
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]
        for off in range(sh[4], sh[4] + sh[5], 24):
            st_name, st_info, _other, st_shndx = struct.unpack_from("<IBBH", data, off)
            if (st_info & 0xF) == 2 and (st_info >> 4) == 1 and st_shndx != 0:  # global FUNC, defined
                start = strtab[4] + st_name
                names.append(data[start:data.index(b"\0", start)].decode())
    return sorted(set(names))


def sources() -> list[str]:
    """Every .cu of the package: the checkout's csrc/cuda, else the installed cuda_src/."""
    base = CHECKOUT_SOURCES if CHECKOUT_SOURCES.is_dir() else loader.package_root() / "cuda_src"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*.cu"))


def discover() -> dict:
    """{source: {"kernels": [...]} or {"error": ...}} for every .cu of the package."""
    out = {}
    for src in sources():
        try:
            module = loader.load_module(src)
            out[src] = {"kernels": cubin_kernels(module.cubin_file), "path_taken": module.path_taken}
        except Exception as exc:  # noqa: BLE001 - a source that cannot load is a finding
            out[src] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# ---------------------------------------------------------------------------------------------
# Cases: (name, kernels it launches, function); tiny shapes, any values
# ---------------------------------------------------------------------------------------------
def _cupy():
    import cupy

    cupy.cuda.set_allocator(None)  # one cudaMalloc per array: exact bounds for memcheck
    cupy.cuda.set_pinned_memory_allocator(None)
    return cupy


def _rand(cupy, shape, dtype=np.float32, seed=0):
    return cupy.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def _bits(cupy, shape, dtype, seed=0, mask=None):
    """Random raw bit patterns of an integer dtype (finite for 16-bit floats: exponent bits capped)."""
    info = np.iinfo(dtype)
    raw = np.random.default_rng(seed).integers(0, info.max, shape, dtype=dtype)
    if mask is not None:
        raw &= dtype(mask)
    return cupy.asarray(raw)


def cases() -> list[tuple[str, list[str], object]]:
    """(name, kernels it launches, function) per case; the wrappers are imported here, so that a
    wrapper that fails to import is one failed case, not a failed run."""
    out = []
    try:
        A, E, G, T, R, S = (importlib.import_module(f"hspi_kernels.kernels.cuda.{m}") for m in
                            ("attention", "elementwise", "gemm_cuda_core", "gemm_tensor_core", "reduction", "sfu"))
    except Exception as exc:  # noqa: BLE001 - a wrapper that does not import is one failed case
        def failed(exc=exc):
            raise exc
        return [("import.hspi_kernels.kernels.cuda", [], failed)]

    def add(name, kernels, fn):
        out.append((name, list(kernels), fn))

    def elementwise():
        cp = _cupy()
        a, b, c = (_rand(cp, 1000, seed=s) for s in range(3))
        for fused in (True, False):
            E.fma(a, b, c, fused)
    add("elementwise.fma_probe", E.KERNELS.values(), elementwise)

    def cuda_core():
        cp = _cupy()
        for dtype, np_dtype in (("fp32", np.float32), ("fp64", np.float64)):
            A_, B_ = _rand(cp, (33, 13), np_dtype, 1), _rand(cp, (13, 17), np_dtype, 2)
            for order in G.ORDERS:
                for fused in (True, False):
                    G.gemm(A_, B_, order, fused, lanes=8, parts=3)
    add("gemm.cuda_core", G.all_kernel_names(), cuda_core)

    for path in ("mma.sync", "wgmma"):
        combos = [(f, "fp32") for f in T.K_INST] + [("fp16", "fp16")]
        if path == "wgmma":  # fp8 inputs with an fp16 accumulator: wgmma only (issue 19 rung)
            combos += [("e4m3", "fp16"), ("e5m2", "fp16")]

        def tensor_core(path=path, combos=combos):
            cp = _cupy()
            fn = T.mma_sync_gemm if path == "mma.sync" else T.wgmma_gemm
            for fmt, out_fmt in combos:
                M, N, K = 2 * T.TILE_M[path], 16, 2 * T.K_INST[fmt]
                if fmt in ("fp16", "bf16"):
                    A_, B_ = _bits(cp, (M, K), np.uint16, 1, 0x3BFF), _bits(cp, (K, N), np.uint16, 2, 0x3BFF)
                elif fmt == "tf32":
                    A_, B_ = _rand(cp, (M, K), seed=1), _rand(cp, (K, N), seed=2)
                else:
                    A_, B_ = _bits(cp, (M, K), np.uint8, 1, 0x3F), _bits(cp, (K, N), np.uint8, 2, 0x3F)
                for split_k in ((1, 2) if out_fmt == "fp32" else (1,)):  # split-K: fp32 combine only
                    fn(A_, B_, None, in_format=fmt, out_format=out_fmt, split_k=split_k)
        names = []
        for fmt, out_fmt in combos:
            try:
                names.append(T.kernel_name(path, fmt, out_fmt))
            except ValueError:
                pass
        add(f"gemm.{path}", names, tensor_core)

    if hasattr(T, "wgmma_fast_gemm"):
        def wgmma_fast():
            cp = _cupy()
            bm, bn, bk = T.FAST_TILE
            clusters = [{"cluster": c} for c in getattr(T, "FAST_CLUSTERS", ())] or [{}]
            for fmt in T.FAST_FORMATS:
                A_ = _bits(cp, (2 * bm, 2 * bk), np.uint16, 1, 0x3BFF)  # M = 2 tiles: cluster 2 allowed
                B_ = _bits(cp, (bn, 2 * bk), np.uint16, 2, 0x3BFF)
                C_ = _rand(cp, (2 * bm, bn), seed=3)
                for kw in clusters:
                    T.wgmma_fast_gemm(A_, B_, None, in_format=fmt, **kw)
                    T.wgmma_fast_gemm(A_, B_, C_, in_format=fmt, **kw)
        add("gemm.wgmma_fast", getattr(T, "_FAST_KERNEL", {}).values(), wgmma_fast)

    def rows():
        cp = _cupy()
        x = _rand(cp, (37, 301), seed=4)
        for variant, params in (("sequential", {}), ("block_tree", {"block": 64}), ("warp_xor", {"width": 32}),
                                ("warp_xor", {"width": 4}), ("warp_down", {"width": 32}), ("warp_down", {"width": 8})):
            R.reduce_rows(x, variant, **params)
    add("reduction.rows", [k for v in R.ROW_VARIANTS for k in R.KERNELS[v]], rows)

    def vector():
        cp = _cupy()
        for n in (1, 1000, 70_001):
            x = _rand(cp, n, seed=n)
            R.reduce_vector(x, blocks=16, block=128)
            R.reduce_vector_atomic(x, blocks=16, block=128)
            for u in R.FAST_UNROLLS:
                R.reduce_vector_fast(x, blocks=8, block=64, unroll=u)
            R.reduce_vector_fast(x)  # the wrapper's fixed G x B
    add("reduction.vector", [*R.KERNELS["grid_two_pass"], *R.KERNELS["atomic"], R.KERNELS["vec4"][1],
                             *(R.vec4_kernel(u) for u in R.FAST_UNROLLS)], vector)

    def attention():
        cp = _cupy()
        for fmt in A.FORMATS:
            for D in A.HEAD_DIMS:
                dt = np.float16 if fmt == "fp16" else np.uint16
                mk = (lambda s, shape: _rand(cp, shape, np.float16, s)) if fmt == "fp16" else \
                    (lambda s, shape: _bits(cp, shape, np.uint16, s, 0x3BFF))
                Q, K, V = mk(1, (2, 19, D)), mk(2, (2, 37, D)), mk(3, (2, 37, D))
                assert Q.dtype == dt
                for mode in A.MODES:
                    for block_n in A.BLOCK_NS:
                        A.attention_forward(Q, K, V, fmt=fmt, mode=mode, block_n=block_n)
                    A.attention_forward(Q, K, V, fmt=fmt, mode=mode, block_n=32, splits=2, causal=True)
    add("attention.flash_fwd", [A.kernel_name(f, m, d, b) for f in A.FORMATS for m in A.MODES
                                for d in A.HEAD_DIMS for b in A.BLOCK_NS]
        + [f"hspi_attn_combine_{m}" for m in A.MODES], attention)  # splits=2 runs the combine

    def sfu():
        cp = _cupy()
        x = cp.asarray(S.SPECIAL_INPUTS.astype(np.float32))
        for op in S.OPS:
            S.apply(op, x)
            S.binade_outputs(op, binades=[S.DEFAULT_BINADES[op][0]])
    add("sfu.probe", [f"hspi_sfu_{op}_{kind}" for op in S.OPS for kind in ("list", "binades")], sfu)
    return out


# ---------------------------------------------------------------------------------------------
# Negative controls: the checker must flag these
# ---------------------------------------------------------------------------------------------
_PLANTED = r'''
extern "C" __global__ void planted_oob_write(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) x[i] = 1.0f;               /* i == n: one element past the array */
}
extern "C" __global__ void planted_smem_race(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = (float)threadIdx.x;
  /* no __syncthreads(): thread t reads what thread 63 - t wrote */
  out[threadIdx.x] = s[63 - threadIdx.x];
}
'''


def control(kind: str) -> dict:
    """One negative control per process (an invalid access under memcheck ends the context)."""
    cp = _cupy()

    module = cp.RawModule(code=_PLANTED, options=("-fmad=false",))
    name = f"control.{kind}"
    _mark(name, "BEGIN")
    err = None
    try:
        if kind == "oob_ours":
            # our row kernel told the row is one element longer than it is: reads x[100] (OOB)
            x, out = cp.zeros((1, 100), cp.float32), cp.empty(1, cp.float32)
            loader.load_module(R.ROW_SOURCE).function(R.KERNELS["sequential"][0])(
                (1,), (32,), (x, out, np.int64(1), np.int64(101)))
        elif kind == "oob_planted":
            module.get_function("planted_oob_write")((1,), (128,), (cp.zeros(100, cp.float32), np.int32(100)))
        elif kind == "race":
            module.get_function("planted_smem_race")((1,), (64,), (cp.zeros(64, cp.float32),))
        else:
            raise SystemExit(f"unknown control {kind!r}")
        cp.cuda.Device().synchronize()
    except Exception as exc:  # noqa: BLE001 - the sanitizer may abort the faulty launch
        err = f"{type(exc).__name__}: {exc}"
    _mark(name, "END")
    return {name: {"kernels": [], "ok": True, "error": err, "seconds": 0.0}}


def _mark(name: str, what: str) -> None:
    print(f"{MARK} {name} {what}", flush=True)


def run(cases_json: str, only: str | None, control_kind: str | None) -> int:
    record: dict = {}
    if control_kind:
        record = control(control_kind)
    else:
        cp = _cupy()
        record["_discovered"] = discover()
        for name, kernels, fn in cases():
            if only and only not in name:
                continue
            _mark(name, "BEGIN")
            t = time.perf_counter()
            err = None
            try:
                fn()
                cp.cuda.Device().synchronize()
            except Exception as exc:  # noqa: BLE001 - a failing case is recorded, the others still run
                err = f"{type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stdout)
            record[name] = {"kernels": kernels, "ok": err is None, "error": err,
                            "seconds": round(time.perf_counter() - t, 2)}
            _mark(name, "END " + ("ok" if err is None else "failed"))
    atomic_write_text(cases_json, json.dumps(record, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------
# Parsing compute-sanitizer output
# ---------------------------------------------------------------------------------------------
_ERROR_START = re.compile(r"^========= (?! )(?!ERROR SUMMARY|RACECHECK SUMMARY|COMPUTE-SANITIZER|Target application"
                          r"|Program hit|Saved host backtrace|Host Frame|Warning)(\S.*)$")
_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) error")
_RACE_SUMMARY = re.compile(r"RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?, (\d+) warnings?\)")
_NAME = re.compile(r"\b((?:hspi|planted)_\w+?)(?:\+0x[0-9a-f]+|\b)")


def parse_log(text: str) -> dict:
    """Per case: error blocks and the kernels they name; whole run: the summary counts."""
    per_case: dict = {}
    current = "_outside_cases"
    block_kernels: list | None = None
    for line in text.splitlines():
        if line.startswith(MARK):
            _, name, what, *_ = line.split() + [""]
            current = name if what == "BEGIN" else "_outside_cases"
            block_kernels = None
            continue
        m = _ERROR_START.match(line)
        if m and not line.startswith("=========     "):
            entry = per_case.setdefault(current, {"errors": 0, "kernels": {}, "first": []})
            entry["errors"] += 1
            if len(entry["first"]) < 3:
                entry["first"].append(m.group(1)[:200])
            block_kernels = entry["kernels"]
            names = _NAME.findall(line)
            if names:
                block_kernels[names[0]] = block_kernels.get(names[0], 0) + 1
                block_kernels = None
            continue
        if block_kernels is not None and line.startswith("=========  "):
            names = _NAME.findall(line)
            if names:
                block_kernels[names[0]] = block_kernels.get(names[0], 0) + 1
                block_kernels = None
    summary = [int(x) for x in _SUMMARY.findall(text)]
    race = _RACE_SUMMARY.findall(text)
    races = [{"errors": int(e), "warnings": int(w)} for e, w in race]
    # racecheck reports through its own summary line, the other tools through ERROR SUMMARY
    if summary:
        total = summary[-1]
    elif races:
        total = sum(r["errors"] for r in races)
    else:
        total = None
    return {"per_case": per_case, "error_summary": summary[-1] if summary else None,
            "racecheck_summary": races, "errors_total": total}


def verdict_checks(result: dict) -> dict[str, bool | None]:
    """The named checks of the summary's verdict (``hspi_kernels.kernels.validation.verdict``):
    every tool clean, every negative control flagged, and at least one of each ran."""
    checks: dict[str, bool | None] = {f"tool:{k}": bool(v["clean"]) for k, v in result["tools"].items()}
    checks.update({f"control:{k}": bool(v["flagged"]) for k, v in result["controls"].items()})
    checks.update(tools_ran=bool(result["tools"]), controls_ran=bool(result["controls"]))
    return checks


def summarize(folder: str, out_json: str) -> int:
    folder_p = Path(folder)
    result: dict = {"format": "hspi-sanitize/1", "tools": {}, "controls": {}}
    try:
        result["platform"] = platform.collect(import_torch=False)
    except Exception as exc:  # noqa: BLE001
        result["platform"] = {"error": str(exc)}
    discovered: dict = {}
    for log in sorted(folder_p.glob("*.log")):
        label = log.stem  # <tool> or control-<kind>-<tool>
        rc_file, cases_file = log.with_suffix(".rc"), log.with_suffix(".cases.json")
        rc = int(read_bytes_bounded(rc_file, 4096, kind="exit-code file").decode("ascii", "replace").strip()) \
            if rc_file.is_file() else None
        cases_rec = read_json_bounded(cases_file, MAX_CASES_BYTES, kind="sanitizer cases record") \
            if cases_file.is_file() else {}
        if not isinstance(cases_rec, dict):
            raise ValueError(f"{cases_file}: not a sanitizer cases record (a JSON object expected)")
        discovered = cases_rec.pop("_discovered", discovered) or discovered
        parsed = parse_log(read_bytes_bounded(log, MAX_LOG_BYTES, kind="sanitizer log").decode("utf-8", "replace"))
        per_kernel: dict = {}
        for case, info in cases_rec.items():
            found = parsed["per_case"].get(case, {"errors": 0, "kernels": {}, "first": []})
            per_kernel[case] = {"kernels": info["kernels"], "case_ok": info["ok"], "case_error": info["error"],
                                "seconds": info["seconds"], "errors": found["errors"],
                                "errors_by_kernel": found["kernels"], "first_errors": found["first"]}
        entry = {"exit_code": rc, "error_summary": parsed["error_summary"], "errors_total": parsed["errors_total"],
                 "racecheck_summary": parsed["racecheck_summary"], "cases": per_kernel,
                 "errors_outside_cases": parsed["per_case"].get("_outside_cases", {}).get("errors", 0)}
        if label.startswith("control-"):
            flagged = bool(parsed["errors_total"]) and rc not in (0, None)
            entry["flagged"] = flagged  # a control must be reported as an error
            result["controls"][label] = entry
        else:
            clean = (parsed["errors_total"] == 0 and rc == 0 and bool(per_kernel)
                     and all(c["case_ok"] and c["errors"] == 0 for c in per_kernel.values()))
            entry["clean"] = clean
            result["tools"][label] = entry
    launched = {k for t in result["tools"].values() for c in t["cases"].values() if c["case_ok"] for k in c["kernels"]}
    found = {k: src for src, info in discovered.items() for k in info.get("kernels", [])}
    result["discovered"] = discovered
    result["coverage"] = {"kernels_discovered": len(found), "kernels_launched": len(launched & set(found)),
                          "not_launched": sorted(set(found) - launched),
                          "declared_but_not_discovered": sorted(launched - set(found)),
                          "sources_not_loaded": sorted(s for s, i in discovered.items() if "error" in i)}
    record_verdict(result, verdict_checks(result))
    atomic_write_text(out_json, json.dumps(result, indent=1, default=str))
    print(json.dumps({"passed": result["passed"],
                      "tools": {k: {"clean": v["clean"], "errors": v["errors_total"], "rc": v["exit_code"]}
                                for k, v in result["tools"].items()},
                      "controls": {k: {"flagged": v["flagged"], "errors": v["errors_total"]}
                                   for k, v in result["controls"].items()},
                      "coverage": {k: v for k, v in result["coverage"].items() if k != "not_launched"},
                      "not_launched": result["coverage"]["not_launched"][:20]}, indent=1))
    return 0 if result["passed"] else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    r = sub.add_parser("run")
    r.add_argument("cases_json")
    r.add_argument("--only")
    r.add_argument("--control", choices=("oob_ours", "oob_planted", "race"))
    s = sub.add_parser("summarize")
    s.add_argument("folder")
    s.add_argument("out_json")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for name, kernels, _ in cases():
            print(f"{name}: {len(kernels)} kernels")
        print(json.dumps(discover(), indent=1))
        return 0
    if args.cmd == "run":
        return run(args.cases_json, args.only, args.control)
    try:
        return summarize(args.folder, args.out_json)
    except ValueError as exc:  # a too large, truncated or corrupt record or log: a message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
