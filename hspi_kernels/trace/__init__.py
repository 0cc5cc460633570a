"""Trace a model-level divergence down to the op and its cause.

- :mod:`.tracer`   record one forward pass op by op (``hspi-trace/1`` files), align two traces
                   and find where they first diverge (``hspi trace run`` / ``diff``);
- :mod:`.explain`  replay the diverging op with the plan or library kernel of each side and name
                   the cause (``hspi trace explain``).

Nothing here imports torch at package import time.
"""

from __future__ import annotations

__all__ = ["tracer", "explain"]
