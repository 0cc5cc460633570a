"""hspi_kernels: identify the hardware and software platform behind model outputs, exactly.

Importing this package is cheap: it imports no torch, triton or cupy and touches no GPU.
Capabilities (the native core, CUDA kernels, Triton kernels, torch probes) are discovered
lazily by the modules that need them, and each says clearly what is missing.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
