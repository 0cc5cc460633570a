"""The machine and software stack a run happens on.

- :mod:`.metadata`      platform metadata recorded in every fingerprint and record (``collect()``);
- :mod:`.capabilities`  what this machine can run (native core, CuPy, cubins, Triton, torch,
                        GPUs), each with a one-line reason;
- :mod:`.timing`        GPU timing with CUDA events (benches and validations).

The metadata functions are re-exported here (``platform.collect()``). Nothing here imports torch
unless asked to.
"""

from __future__ import annotations

from hspi_kernels.platform.metadata import (build_info, collect, cpu_model, cpu_vendor_flags, this_cpu, cublas_version, driver_version,
                                            nvcc_runtime_version, platform_label, torch_info)

__all__ = ["build_info", "collect", "cpu_model", "cpu_vendor_flags", "this_cpu", "cublas_version", "driver_version", "nvcc_runtime_version",
           "platform_label", "torch_info"]
