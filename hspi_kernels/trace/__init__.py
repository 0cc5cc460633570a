"""Trace a model-level divergence down to the op and its cause.

- :mod:`.tracer`   record one forward pass op by op (``hspi-trace/1`` files), align two traces
                   and find where they first diverge (``hspi trace run`` / ``diff``);
- :mod:`.explain`  replay the diverging op with the plan or library kernel of each side and name
                   the cause (``hspi trace explain``);
- :mod:`.counterfactual`  every differing op re-run with each side's kernel or plan on the other
                   side's inputs: own divergence or propagation, and the cause (the per-op map);
- :mod:`.batch`    one row of a batch-B trace as a trace comparable with a batch-1 trace;
- :mod:`.coverage` the GPU job that measures the map's coverage on real models.

Nothing here imports torch at package import time.
"""

from __future__ import annotations

__all__ = ["tracer", "explain", "counterfactual", "batch", "coverage"]
