"""Tensor parallelism on CPU (gloo): a TP forward of the zoo llama, the all-reduce order as a plan
(revealed by masking probes of the collective), a bit-exact emulation of row-parallel linears, and
identification of the TP degree from output bits. See :mod:`hspi_kernels.parallel.tp`."""
