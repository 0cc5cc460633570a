"""Shared test configuration.

Markers (registered in pyproject.toml, --strict-markers): ``gpu`` tests need a usable CUDA device,
``sm90`` tests a Hopper one; both are skipped with the reason when the machine has none.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

# Load the compiled core once, up front: a broken build fails here with its own message (and an
# editable install rebuilds here, outside any captured stdout).
import hspi_kernels._native  # noqa: E402,F401

DATA = Path(__file__).parent / "data"


@functools.lru_cache(maxsize=1)
def _cuda_device() -> tuple[tuple[int, int] | None, str]:
    """(compute capability, reason) of device 0, without making the GPU a hard dependency."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if not torch.cuda.is_available():
        return None, "no usable CUDA device (torch.cuda.is_available() is False)"
    return torch.cuda.get_device_capability(0), ""


def pytest_collection_modifyitems(config, items):
    cc, reason = _cuda_device()
    for item in items:
        if "gpu" in item.keywords or "sm90" in item.keywords:
            if cc is None:
                item.add_marker(pytest.mark.skip(reason=f"gpu test: {reason}"))
            elif "sm90" in item.keywords and cc != (9, 0):
                item.add_marker(pytest.mark.skip(reason=f"sm90 test: device is sm_{cc[0]}{cc[1]}"))


@pytest.fixture
def data_dir() -> Path:
    return DATA
