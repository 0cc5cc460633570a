"""Probes: seeded inputs + an op (library or ours) whose output bits characterise a platform.

The package owns the fingerprint suite, from a probe's definition to its record:

- :mod:`.registry`  the ``Probe`` type (data + a run function) and the registry;
- :mod:`.inputs`    seeded operand specs that regenerate the same bits anywhere;
- :mod:`.basic`, :mod:`.suite`  the probe families (library GEMMs, reductions, attention,
  elementwise, our CUDA and Triton kernels);
- :mod:`.catalog`   the built-in probes registered, and the look-ups (``all_probes``, ``get``,
  ``select``);
- :mod:`.runner`    runs probes into records (twice each, digests, features, plans, kernel names,
  per-phase timing);
- :mod:`.cache`     the on-disk cache of host work (operands, fp64 references, plan evaluations);
- :mod:`.parallel`  the suite over worker processes; :mod:`.server` a resident probe server.

Taking a whole fingerprint (selection, server or workers, platform metadata, the file) is
``hspi_kernels.fingerprint.take``. Importing this package imports none of its modules.
"""
