"""``python -m hspi_kernels ...``: the same CLI as ``hspi``."""

from hspi_kernels.cli import main

main()
