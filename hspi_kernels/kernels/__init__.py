"""Kernels that realise accumulation plans on the GPU, one family per module.

- :mod:`.cuda`        CUDA C++ kernels (``csrc/cuda``, cubins through CuPy, NVRTC fallback) and
                      their thin launch wrappers, each declaring its plan;
- :mod:`.triton`      Triton / Gluon kernels (GEMM, reduction, attention, the torch override);
- :mod:`.validation`  the shipped GPU check of every family: its bits against its plan, N/N,
                      written as JSON records (``hspi validate``).

Importing this package imports neither CuPy, torch nor Triton and touches no GPU.
"""

from __future__ import annotations

__all__ = ["cuda", "triton", "validation"]
