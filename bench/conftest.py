"""Benchmark conventions: pytest-benchmark JSON with platform metadata in ``extra_info``,
ratios against a baseline measured in the same run, GPU timings via events with an L2 flush
and medians (``hspi_kernels.platform.timing.gpu_time_ms``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def platform_meta():
    from hspi_kernels import platform

    meta = platform.collect()
    return {
        "label": platform.platform_label(meta),
        "cpu_model": meta["cpu_model"],
        "cpu_count": meta["cpu_count"],
        "numpy": meta["numpy"],
        "torch": meta["torch"].get("version"),
        "gpus": meta["torch"].get("gpus", []),
        "hspi_kernels": meta["hspi_kernels"],
    }
