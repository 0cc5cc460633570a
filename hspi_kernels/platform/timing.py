"""GPU timing used by benchmarks and validation scripts: CUDA events, L2 flushed before every
call, median of the repetitions (the DESIGN.md benchmark convention)."""

from __future__ import annotations


def gpu_time_ms(fn, warmup_ms: float = 25, rep_ms: float = 200) -> float:
    """Median GPU time of ``fn()`` in ms: triton.testing.do_bench (CUDA events, L2 flushed
    before every call) when Triton is there, else CUDA events around each call with a manual
    L2 flush (a 256 MiB write), median of the repetitions."""
    import torch

    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(5, int(rep_ms))):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if sum(times) > rep_ms:
            break
    times.sort()
    return times[len(times) // 2]
