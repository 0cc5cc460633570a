"""Kernel cost: every kernel family's time against its library baseline and this GPU's roofline.

``run(only=..., rounds=3)`` times each case of :data:`CASES` and its baseline in one process, in
alternating rounds (ours, baseline, ours, baseline, ...: clock and thermal drift hit both sides),
and reports per case the median of each side's rounds under two clocks:

- ``device``: ``platform.timing.gpu_time_ms`` (CUDA events around each call, L2 flushed before
  it, median): what the GPU spends, with the launch hidden behind the flush;
- ``host``: wall time per call of ``calls`` back-to-back calls from Python, synchronised once at
  the end, as a user's loop sees it (launcher, argument checks and config lookup included).

``ratio`` is baseline time / our time (> 1: ours is faster). ``roofline`` is the time the case
needs at this GPU's datasheet peak (dense tensor-core FLOP/s of its format or HBM bandwidth,
whichever binds: :data:`PEAKS`) divided by the measured time; ``ceiling`` does the same against
the ceilings measured in the same run (cuBLAS bf16 8192^3 and a device copy), for GPUs the
table does not know. Correctness is checked after timing (close to the baseline, bitwise
repeatable), so a fast wrong kernel fails its case.

Needs a CUDA GPU with torch; the families also need CuPy (our CUDA kernels) or Triton. A case
whose stack is missing is reported as skipped with the reason; :class:`BenchUnavailable` is
raised when nothing can run here.
"""

from __future__ import annotations

import io
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hspi_kernels import platform
from hspi_kernels.platform.files import atomic_write_bytes
from hspi_kernels.platform.timing import gpu_time_ms
from hspi_kernels.kernels.cuda import attention as CA
from hspi_kernels.kernels.cuda import gemm_tensor_core as tc
from hspi_kernels.kernels.cuda import reduction as R
from hspi_kernels.kernels.triton import attention as A
from hspi_kernels.kernels.triton import gemm as G
from hspi_kernels.kernels.triton import reduction as TR

__all__ = ["BenchUnavailable", "Case", "CASES", "PEAKS", "case_names", "run", "geomean", "plot"]


class BenchUnavailable(RuntimeError):
    """No case can run on this machine (no CUDA GPU, or torch missing)."""


# Datasheet peaks (dense, no sparsity) per GPU name substring: TFLOP/s per input format, HBM TB/s.
PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9, "e4m3": 1978.9, "hbm_tbps": 4.8},
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9, "e4m3": 1978.9, "hbm_tbps": 3.35},
}


@dataclass(frozen=True)
class Case:
    """One timed comparison. ``setup(torch)`` builds the inputs once and returns
    ``(ours, baseline, check)``: two zero-argument callables and ``check(out, ref)`` raising
    AssertionError when our output is wrong; ``flop``/``bytes`` feed the roofline."""
    name: str
    family: str
    baseline: str
    fmt: str
    flop: float
    bytes: float
    setup: Callable[[Any], tuple[Callable[[], Any], Callable[[], Any], Callable[[Any, Any], None]]]
    needs: tuple[str, ...] = ()
    tags: tuple[str, ...] = field(default=())
    # optional: ``variant(torch)`` -> our call done another way, timed beside (e.g. without the
    # Triton launch cache), to show where host time goes
    variant: Callable[[Any], Callable[[], Any]] | None = None


def _close(rel_tol: float) -> Callable[[Any, Any], None]:
    def check(out, ref):
        o, r = out.float(), ref.float()
        rel = ((o - r).norm() / r.norm().clamp_min(1e-30)).item()
        assert rel < rel_tol, f"output differs from the baseline after timing: relative error {rel:.3g}"
    return check


def _randn(torch, *shape, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, device="cuda", generator=g).to(dtype)


def _triton_gemm(M: int, N: int, K: int) -> Case:
    def setup(torch):

        a, b = _randn(torch, M, K, dtype=torch.bfloat16), _randn(torch, K, N, dtype=torch.bfloat16, seed=1)
        return (lambda: G.matmul(a, b)), (lambda: torch.matmul(a, b)), _close(1e-2)

    def generic(torch):
        """Our call with Triton's generic launcher every time (the launch cache off)."""

        ours, _, _ = setup(torch)

        def call():
            G.LAUNCH_CACHE = False
            try:
                return ours()
            finally:
                G.LAUNCH_CACHE = True
        return call
    tags = ("decode",) if M <= 256 else ()
    return Case(f"triton_gemm_bf16_{M}x{N}x{K}", "gemm.triton", "cuBLAS (torch.matmul)", "bf16", 2.0 * M * N * K,
                2.0 * (M * K + K * N + M * N), setup, needs=("triton",), tags=("gemm_geomean",) + tags,
                variant=generic)


def _wgmma_fast(M: int, N: int, K: int) -> Case:
    def setup(torch):

        a, b_nk = _randn(torch, M, K, dtype=torch.bfloat16), _randn(torch, N, K, dtype=torch.bfloat16, seed=1)
        return (lambda: tc.wgmma_fast_gemm(a, b_nk)), (lambda: torch.matmul(a, b_nk.t())), _close(1e-2)
    return Case(f"cuda_wgmma_fast_bf16_{M}x{N}x{K}", "gemm.cuda_wgmma", "cuBLAS (torch.matmul)", "bf16", 2.0 * M * N * K,
                2.0 * (M * K + K * N) + 4.0 * M * N, setup, needs=("cupy", "sm90"))


def _no_worse_than_baseline(x, dim=None, k: float = 4.0) -> Callable[[Any, Any], None]:
    """Sums: our error against the fp64 sum at most ``k`` times the fp32 baseline's (plus one
    fp32 ulp of the sum of |x|), the flash-attention convention instead of a magic tolerance."""
    def check(out, ref):
        exact = x.double().sum() if dim is None else x.double().sum(dim=dim)
        scale = (x.double().abs().sum() if dim is None else x.double().abs().sum(dim=dim)) * 2.0**-24
        ours, theirs = (out.double() - exact).abs(), (ref.double() - exact).abs()
        bad = (ours > k * theirs + scale).sum().item()
        assert bad == 0, f"{bad} sums are more than {k}x further from the fp64 sum than the baseline's"
    return check


def _vec4_sum(n: int) -> Case:
    def setup(torch):

        x = _randn(torch, n, dtype=torch.float32)
        return (lambda: R.reduce_vector_fast(x)), (lambda: torch.sum(x)), _no_worse_than_baseline(x)
    return Case(f"cuda_vec4_sum_fp32_{n}", "reduction.cuda_vec4", "torch.sum", "fp32", float(n), 4.0 * n, setup,
                needs=("cupy",))


def _triton_row_sum(rows: int, cols: int) -> Case:
    def setup(torch):

        x = _randn(torch, rows, cols, dtype=torch.float32)
        return (lambda: TR.row_sum(x)), (lambda: torch.sum(x, dim=1)), _no_worse_than_baseline(x, dim=1)
    return Case(f"triton_row_sum_fp32_{rows}x{cols}", "reduction.triton", "torch.sum(dim=1)", "fp32",
                float(rows * cols), 4.0 * rows * cols, setup, needs=("triton",))


def _sdpa_fastest(torch, q, k, v, causal):
    """The fastest SDPA backend for these inputs (device clock), as a callable."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    best = None
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        def call(backend=backend):
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        try:
            ms = gpu_time_ms(call, rep_ms=50)
        except RuntimeError:
            continue  # backend not available for these inputs
        if best is None or ms < best[0]:
            best = (ms, call)
    if best is None:
        raise RuntimeError("no SDPA backend runs these inputs")
    return best[1]


def _triton_attention(B: int, H: int, S: int, D: int) -> Case:
    def setup(torch):

        q, k, v = (_randn(torch, B, H, S, D, dtype=torch.bfloat16, seed=s) for s in range(3))
        base = _sdpa_fastest(torch, q, k, v, True)
        return (lambda: A.attention(q, k, v, causal=True)), base, _close(2e-2)
    flop = 4.0 * B * H * S * S * D / 2  # causal: half the score matrix
    return Case(f"triton_attention_bf16_causal_{B}x{H}x{S}x{D}", "attention.triton", "fastest SDPA backend", "bf16",
                flop, 2.0 * 4 * B * H * S * D, setup, needs=("triton",))


def _cuda_attention(B: int, H: int, S: int, D: int) -> Case:
    def setup(torch):

        q, k, v = (_randn(torch, B, H, S, D, dtype=torch.bfloat16, seed=s) for s in range(3))
        base = _sdpa_fastest(torch, q, k, v, False)
        return (lambda: CA.attention_forward(q, k, v, mode="native")), base, _close(2e-2)
    flop = 4.0 * B * H * S * S * D
    return Case(f"cuda_flash_attention_bf16_{B}x{H}x{S}x{D}", "attention.cuda", "fastest SDPA backend", "bf16", flop,
                2.0 * 4 * B * H * S * D, setup, needs=("cupy",))


CASES: list[Case] = [
    *(_triton_gemm(M, 4096, 4096) for M in (1, 16, 64, 256)),
    _triton_gemm(4096, 4096, 4096), _triton_gemm(8192, 8192, 8192),
    _wgmma_fast(8192, 8192, 8192),
    _vec4_sum(1 << 28),
    _triton_row_sum(8192, 8192),
    _triton_attention(4, 16, 4096, 128),
    _cuda_attention(1, 16, 1024, 64),
]


def case_names() -> list[str]:
    return [c.name for c in CASES]


def select(only: list[str] | None) -> list[Case]:
    """Cases whose name or family contains one of ``only`` (all when empty); ValueError naming the
    patterns that match nothing."""
    if not only:
        return list(CASES)
    unmatched = [p for p in only if not any(p in c.name or p in c.family for c in CASES)]
    if unmatched:
        raise ValueError(f"--only {', '.join(unmatched)} matches no case; cases: {', '.join(case_names())}")
    return [c for c in CASES if any(p in c.name or p in c.family for p in only)]


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _host_ms(torch, fn, calls: int) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e3


def _stack(torch) -> dict[str, str | None]:
    """Why each optional stack is missing (None when usable)."""
    why: dict[str, str | None] = {"sm90": None if torch.cuda.get_device_capability(0) == (9, 0) else "needs sm_90"}
    try:
        import triton  # noqa: F401
        why["triton"] = None
    except ImportError as exc:
        why["triton"] = f"triton not importable ({exc})"
    try:
        import cupy  # noqa: F401
        why["cupy"] = None
    except ImportError as exc:
        why["cupy"] = f"cupy not importable ({exc})"
    return why


def _ceilings(torch) -> dict[str, float]:
    """Same-run ceilings: cuBLAS bf16 8192^3 TFLOP/s and device-copy TB/s (read + write)."""
    a, b = _randn(torch, 8192, 8192, dtype=torch.bfloat16), _randn(torch, 8192, 8192, dtype=torch.bfloat16, seed=1)
    gemm_ms = gpu_time_ms(lambda: torch.matmul(a, b))
    x = torch.empty(1 << 28, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    copy_ms = gpu_time_ms(lambda: y.copy_(x))
    return {"cublas_bf16_tflops": 2 * 8192**3 / gemm_ms / 1e9, "copy_tbps": 2 * 4 * (1 << 28) / copy_ms / 1e9}


def _peaks(gpu_name: str) -> dict[str, float] | None:
    return next((v for k, v in PEAKS.items() if k in gpu_name), None)


def _roofline_ms(case: Case, flops_tflops: float | None, bw_tbps: float | None) -> float | None:
    if not flops_tflops or not bw_tbps:
        return None
    return max(case.flop / (flops_tflops * 1e9), case.bytes / (bw_tbps * 1e9))


def run(only: list[str] | None = None, *, rounds: int = 3, host_calls: int = 50,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time the selected cases (see the module docstring); returns the record (JSON-ready)."""
    if rounds < 1 or host_calls < 1:
        raise ValueError("rounds and host_calls must be >= 1")
    cases = select(only)
    try:
        import torch
    except ImportError as exc:
        raise BenchUnavailable(f"hspi bench needs torch with CUDA ({exc})") from None
    if not torch.cuda.is_available():
        raise BenchUnavailable("hspi bench needs a CUDA GPU (torch.cuda.is_available() is False)")
    say = progress or (lambda _msg: None)
    meta = platform.collect()
    gpu = torch.cuda.get_device_name(0)
    peaks = _peaks(gpu)
    why = _stack(torch)
    say("ceilings (cuBLAS bf16 8192^3, device copy)")
    ceilings = _ceilings(torch)
    results = []
    for case in cases:
        missing = [why[n] for n in case.needs if why.get(n)]
        entry: dict[str, Any] = {"name": case.name, "family": case.family, "baseline": case.baseline,
                                 "format": case.fmt, "flop": case.flop, "bytes": case.bytes, "tags": list(case.tags)}
        if missing:
            results.append({**entry, "status": "skipped", "reason": "; ".join(missing)})
            continue
        say(case.name)
        try:
            ours, base, check = case.setup(torch)
            ours(), base()  # compile / warm up outside the clocks
            clocks = {"device": ([], []), "host": ([], [])}
            for _ in range(rounds):  # alternating rounds: ours, baseline, ours, baseline, ...
                clocks["device"][0].append(gpu_time_ms(ours))
                clocks["device"][1].append(gpu_time_ms(base))
                clocks["host"][0].append(_host_ms(torch, ours, host_calls))
                clocks["host"][1].append(_host_ms(torch, base, host_calls))
            if case.variant is not None:
                other = case.variant(torch)
                other()
                variant = {"device_ms": statistics.median(gpu_time_ms(other) for _ in range(rounds)),
                           "host_ms": statistics.median(_host_ms(torch, other, host_calls) for _ in range(rounds))}
                assert torch.equal(other(), ours()), "the variant's bits differ from our call's"
                entry["variant"] = {**variant, "doc": (case.variant.__doc__ or "").strip()}
            out, ref = ours(), base()
            check(out, ref)
            assert torch.equal(out, ours()), "our kernel is not bitwise repeatable"
        except Exception as exc:  # one failing case is recorded; the others still run
            results.append({**entry, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        for clock, (o, b) in clocks.items():
            o_ms, b_ms = statistics.median(o), statistics.median(b)
            entry[clock] = {"ms": o_ms, "baseline_ms": b_ms, "ratio": b_ms / o_ms, "ms_rounds": o,
                            "baseline_ms_rounds": b}
        dev_ms = entry["device"]["ms"]
        entry["tflops"] = case.flop / dev_ms / 1e9
        entry["gbps"] = case.bytes / dev_ms / 1e6
        spec = _roofline_ms(case, peaks and peaks.get(case.fmt), peaks and peaks.get("hbm_tbps"))
        entry["roofline"] = spec / dev_ms if spec else None
        measured = _roofline_ms(case, ceilings["cublas_bf16_tflops"] if case.fmt == "bf16" else None,
                                ceilings["copy_tbps"])
        if case.fmt == "fp32":  # bandwidth-bound families: the copy ceiling alone
            measured = case.bytes / (ceilings["copy_tbps"] * 1e9)
        entry["ceiling"] = measured / dev_ms if measured else None
        results.append({**entry, "status": "ok"})
    ok = [r for r in results if r["status"] == "ok"]
    geo = [r for r in ok if "gemm_geomean" in r["tags"]]
    summary = {
        "cases": len(results), "ok": len(ok), "failed": sum(r["status"] == "failed" for r in results),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "triton_gemm_geomean_host": geomean([r["host"]["ratio"] for r in geo]),
        "triton_gemm_geomean_device": geomean([r["device"]["ratio"] for r in geo]),
        "triton_gemm_geomean_shapes": [r["name"] for r in geo],
    }
    return {"schema": "hspi-bench/1", "platform": meta, "label": platform.platform_label(meta), "gpu": gpu,
            "peaks": peaks, "ceilings": ceilings, "rounds": rounds, "host_calls": host_calls,
            "cases": results, "summary": summary}


def plot(record: dict[str, Any], path: str | Path) -> Path:
    """Bar chart: per case, ratio to its baseline (device and host clocks) and fraction of the roofline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in record["cases"] if r["status"] == "ok"]
    if not ok:
        raise ValueError("no case ran: nothing to plot")
    names = [r["name"] for r in ok]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(ok)), 4.5))
    xs = range(len(ok))
    width = 0.27
    ax.bar([x - width for x in xs], [r["device"]["ratio"] for r in ok], width, label="vs baseline (device)")
    ax.bar(list(xs), [r["host"]["ratio"] for r in ok], width, label="vs baseline (host-inclusive)")
    ax.bar([x + width for x in xs], [r["roofline"] or 0 for r in ok], width, label="fraction of roofline")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("ratio")
    ax.set_title(f"hspi bench — {record['gpu']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getbuffer())
