"""GPU validation runs (bits of a kernel == bits of its plan), one module per kernel family.

``REGISTRY`` maps a name to the module whose ``run(out_dir, scale=1.0) -> dict`` the lead runs on
a GPU machine; importing this package imports none of them.
"""

REGISTRY = {
    "cuda_core": "hspi_kernels.validation.cuda_core",
}
