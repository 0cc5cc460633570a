"""CUDA kernels of hspi_kernels: AOT cubins loaded through CuPy, with an NVRTC fallback.

Importing this package imports neither CuPy nor torch and touches no GPU; the first
``load_module`` / kernel call does. Without CuPy, a GPU or a usable cubin/NVRTC, calls raise
:class:`CudaUnavailable` saying which one is missing.

    >>> from hspi_kernels import cuda
    >>> cuda.status()["cupy"]["importable"]          # doctest: +SKIP
    >>> m = cuda.load_module("elementwise/fma_probe.cu")  # doctest: +SKIP
    >>> m.path_taken, m.arch                           # doctest: +SKIP
    ('cubin:elementwise/fma_probe.sm_90a.cubin', 'sm_90a')
"""

from __future__ import annotations

from hspi_kernels.kernels.cuda.loader import (
    CudaUnavailable,
    LoadedModule,
    clear_cache,
    load_module,
    nvrtc_options,
    select_cubin,
    status,
)

__all__ = [
    "CudaUnavailable",
    "LoadedModule",
    "clear_cache",
    "load_module",
    "nvrtc_options",
    "select_cubin",
    "status",
]
