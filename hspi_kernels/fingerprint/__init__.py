"""Fingerprints: what a run of the probe suite leaves behind, and how it is read.

- :mod:`.schema`    the file (``hspi-fingerprint/1``): build, validate, load, save, digest diffs;
- :mod:`.features`  the native (C++) extractor's bit fields, ULP distances, histograms and digests;
- :mod:`.sample`    the sampled output bits a record keeps (write: ``output_sample``, read: ``sample_array``);
- :mod:`.take`      taking a fingerprint of this machine (``take``: probes, server or workers, timing);

The schema's public names and ``take`` are re-exported here (``fingerprint.load(path)``,
``fingerprint.take()``). Import order: ``probes.runner`` imports ``features`` and ``sample`` from
here and ``take`` imports the runner, so when the runner is imported first this file runs while the
runner is half-initialised: ``take`` imports the probe modules as modules (never names from them)
and looks their functions up when it runs (tests/test_fingerprint.py imports both ways round). Nothing here imports
torch, triton or cupy.
"""

from __future__ import annotations

from hspi_kernels.fingerprint.schema import (ROLES, SCHEMA, STATUSES, build, digest_differences, digests, load,
                                             loads, main, save, validate)
from hspi_kernels.fingerprint.take import NoProbesSelected, ServerFailed, TakeError, take

__all__ = ["SCHEMA", "STATUSES", "ROLES", "build", "digests", "digest_differences", "save", "validate", "load",
           "loads", "main", "take", "TakeError", "NoProbesSelected", "ServerFailed"]
