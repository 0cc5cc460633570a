"""Fingerprints: what a run of the probe suite leaves behind, and how it is read.

- :mod:`.schema`    the file (``hspi-fingerprint/1``): build, validate, load, save, digest diffs;
- :mod:`.features`  the native (C++) extractor's bit fields, ULP distances, histograms and digests;
- :mod:`.sample`    the sampled output bits a record keeps (write: ``output_sample``, read: ``sample_array``);
- :mod:`.take`      taking a fingerprint of this machine (``take``: probes, server or workers, timing);

The schema's public names and ``take`` are re-exported here (``fingerprint.load(path)``,
``fingerprint.take()``). ``features`` and ``sample`` are used by the probe runner, which ``take``
imports: a submodule of this package imported first (``probes.runner`` does) runs this file, whose
``take`` import finds the runner module half-initialised; ``take`` therefore imports the probe
modules as modules and looks their functions up only when it runs. Nothing here imports
torch, triton or cupy.
"""

from __future__ import annotations

from hspi_kernels.fingerprint.schema import (ROLES, SCHEMA, STATUSES, build, digest_differences, digests, load,
                                             loads, main, save, validate)
from hspi_kernels.fingerprint.take import NoProbesSelected, ServerFailed, TakeError, take

__all__ = ["SCHEMA", "STATUSES", "ROLES", "build", "digests", "digest_differences", "save", "validate", "load",
           "loads", "main", "take", "TakeError", "NoProbesSelected", "ServerFailed"]
