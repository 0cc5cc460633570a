"""Fuzz driver: runs each target (tests/fuzz/fuzz_<target>.py) in its own process for N
executions or S seconds, whichever comes first, on a scratch copy of its committed seed
corpus, and writes a JSON summary per target: executions, seconds, crashes (sanitizer reports,
fatal signals, uncaught exceptions), UB reports, leak reports attributed to _native, and the
unexpected-exception findings the harness recorded.

    python tests/fuzz/run.py --runs 1000000 --seconds 600 --out docs/results/reliability/fuzz.json \
        --sanitize build/sanitize            # native targets use the ASan+UBSan build

With --sanitize, native targets run under LD_PRELOAD=<gcc's libasan.so> (python itself is not
instrumented, so the ASan runtime must be loaded first) with
ASAN_OPTIONS=detect_leaks=1:... ; leaks are counted only where a stack frame is in _native.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NATIVE_TARGETS = ["features_fields", "features_bit_counts", "features_ulp_distance", "features_ulp_histogram",
                  "features_rounding_direction", "run_program", "run_program_f64"]
LOADER_TARGETS = ["fingerprint_loads", "fingerprint_load", "trace_load", "collection_load", "plan_json",
                  "reveal_records"]
TARGETS = NATIVE_TARGETS + LOADER_TARGETS
# plan_json evaluates through the package's native module: it runs on the sanitised build too
USES_NATIVE = set(NATIVE_TARGETS) | {"plan_json"}


def sanitizer_env(build_dir: Path) -> dict[str, str]:
    so = sorted(glob.glob(str(build_dir / "_native*.so")))
    if not so:
        raise SystemExit(f"no _native*.so in {build_dir}: build it first (tests/fuzz/README.md)")
    lib = lambda name: subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True,
                                      text=True).stdout.strip()
    # libasan first (python is not instrumented); libstdc++ preloaded too, else ASan's
    # __cxa_throw interceptor finds no real __cxa_throw (CHECK failed at the first C++ throw)
    return {"HSPI_FUZZ_NATIVE": so[0], "LD_PRELOAD": f"{lib('libasan.so')}:{lib('libstdc++.so')}",
            "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:symbolize=1:allocator_may_return_null=0:"
                            "handle_segv=1:detect_stack_use_after_return=0",
            # the exit-time leak report is read by parse(), not turned into a failure: CPython and
            # pybind11's module-init records (never freed, by design) leak at exit
            "LSAN_OPTIONS": "exitcode=0",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}


def parse(log: str) -> dict:
    done = re.findall(r"Done (\d+) runs in (\d+) second", log)
    execs = int(done[-1][0]) if done else max([int(m) for m in re.findall(r"^#(\d+)\s", log, re.M)] or [0])
    asan = len(re.findall(r"ERROR: AddressSanitizer", log))
    ubsan = len(re.findall(r"runtime error:", log))
    # LeakSanitizer reports at exit; count the leak records with a frame in _native
    # (pybind11's function records made by register_features/register_evaluator at import are
    # not leaks of a call: excluded)
    leaks = 0
    for block in re.split(r"\n(?=(?:Direct|Indirect) leak of)", log):
        stack = block.split("\n\n")[0]
        if not block.startswith(("Direct leak", "Indirect leak")) or "/csrc/" not in stack:
            continue
        if not re.search(r"register_features|register_evaluator|pybind11_init__native|pybind11_exec__native", stack):
            leaks += 1
    fatal = len(re.findall(r"deadly signal|Uncaught Python exception|==\d+==ERROR: libFuzzer", log))
    return {"executions": execs, "asan_reports": asan, "ubsan_reports": ubsan, "native_leak_reports": leaks,
            "fatal": fatal}


def run_target(target: str, runs: int, seconds: int, sanitize: Path | None, workdir: Path,
               python: str) -> dict:
    corpus = workdir / target
    shutil.copytree(HERE / "corpus" / target, corpus, dirs_exist_ok=True)
    findings = workdir / f"{target}.findings.jsonl"
    findings.unlink(missing_ok=True)
    # no empty PYTHONPATH entry: it would put the working directory first, and in a source
    # checkout the uncompiled package there shadows the installed one (no _native: CI failed so)
    path = [str(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, HSPI_FUZZ_FINDINGS=str(findings), HSPI_FUZZ_KEEP_GOING="1",
               PYTHONPATH=os.pathsep.join(path))
    sanitized = sanitize is not None and target in USES_NATIVE
    if sanitized:
        env.update(sanitizer_env(sanitize))
    cmd = [python, str(HERE / f"fuzz_{target}.py"), f"-runs={runs}", f"-max_total_time={seconds}",
           "-rss_limit_mb=4096", "-timeout=60", "-detect_leaks=0", "-print_final_stats=1", f"-artifact_prefix={workdir}/{target}-",
           str(corpus)]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace",
                          timeout=seconds + 300, cwd=workdir)
    wall = time.time() - t0
    log = proc.stdout + proc.stderr
    res = parse(log)
    found = [json.loads(l) for l in findings.read_text().splitlines()] if findings.exists() else []
    # a non-zero exit without a report (killed, aborted) counts as one crash
    reported = res["asan_reports"] + res["ubsan_reports"] + res["fatal"]
    crashes = reported + (proc.returncode != 0 and reported == 0)
    (workdir / f"{target}.log").write_text(log[-200_000:])
    return {"target": target, "sanitized_native": sanitized, "executions": res["executions"],
            "seconds": round(wall, 1), "exec_per_s": round(res["executions"] / max(wall, 1e-9)),
            "returncode": proc.returncode, "crashes": int(crashes), "asan_reports": res["asan_reports"],
            "ubsan_reports": res["ubsan_reports"], "native_leak_reports": res["native_leak_reports"],
            "unexpected_exceptions": found, "log": str(workdir / f"{target}.log")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=int, default=600, help="time box per target")
    ap.add_argument("--sanitize", type=Path, default=None, help="build dir of the ASan+UBSan _native")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hspi-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for t in args.targets.split(","):
        r = run_target(t, args.runs, args.seconds, args.sanitize, workdir, sys.executable)
        results.append(r)
        print(f"{t:30s} {r['executions']:>9d} execs {r['seconds']:>7.1f}s crashes={r['crashes']} "
              f"ub={r['ubsan_reports']} leaks={r['native_leak_reports']} findings={len(r['unexpected_exceptions'])}",
              flush=True)
        if args.out:  # written after every target: a time-boxed run keeps what it finished
            _write(args, results)
    return 0 if all(r["crashes"] == 0 and r["native_leak_reports"] == 0 and not r["unexpected_exceptions"]
                    for r in results) else 1


def _write(args, results) -> None:
    import platform

    import numpy

    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"kind": "hspi-fuzz/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "runs_per_target": args.runs, "seconds_per_target": args.seconds,
           "sanitizer": "ASan+UBSan (gcc, -fno-sanitize-recover=all)" if args.sanitize else None,
           "platform": {"python": sys.version.split()[0], "numpy": numpy.__version__, "machine": platform.machine(),
                        "cpu_count": os.cpu_count()},
           "targets": results}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
