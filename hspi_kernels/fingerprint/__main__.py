"""``python -m hspi_kernels.fingerprint A.json B.json``: the probes whose digests differ."""

from hspi_kernels.fingerprint.schema import main

raise SystemExit(main())
