"""Fingerprints: what a run of the probe suite leaves behind, and how it is read.

- :mod:`.schema`    the file (``hspi-fingerprint/1``): build, validate, load, save, digest diffs;
- :mod:`.features`  the native (C++) extractor's bit fields, ULP distances, histograms and digests;
- :mod:`.sample`    the sampled output bits a record keeps (write: ``output_sample``, read: ``sample_array``);
- :mod:`.take`      taking a fingerprint of this machine (``take``: probes, server or workers, timing);

The schema's public names are re-exported here (``fingerprint.load(path)``); ``take`` is not
(it imports the probe runner, which imports ``features`` and ``sample`` from this package: a
re-export would make the two packages import each other). Nothing here imports
torch, triton or cupy.
"""

from __future__ import annotations

from hspi_kernels.fingerprint.schema import (ROLES, SCHEMA, STATUSES, build, digest_differences, digests, load,
                                             loads, main, save, validate)

__all__ = ["SCHEMA", "STATUSES", "ROLES", "build", "digests", "digest_differences", "save", "validate", "load",
           "loads", "main"]
