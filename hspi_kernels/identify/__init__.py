"""Identify the platform behind a fingerprint: match it against the shipped references
(:mod:`.references`: ranked candidates with the evidence per probe, per-probe comparison).

The public names of :mod:`.references` are re-exported here.
"""

from __future__ import annotations

from hspi_kernels.identify.references import (MIN_AGREE, Reference, compare, compare_records, identify, load_database, record_role)

__all__ = ["MIN_AGREE", "Reference", "load_database", "compare", "compare_records", "identify", "record_role"]
