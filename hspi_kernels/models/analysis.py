"""One analysis over one or more collections (e.g. an H100 and an H200 run, classified on the CPU
afterwards): per model the EQC lattice, white-box pair distinguishability, HSPI-LD per axis (paper
and native representations, plus the shuffled-label control) and black-box identification."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from hspi_kernels.models import hspi_ld, matching
from hspi_kernels.models.collect import RunView
from hspi_kernels.models.plots import confusion_png

__all__ = ["analyse"]


def _blackbox_sets(runs: Sequence[RunView]) -> dict[str, list[RunView]]:
    """Hardware × {bf16, fp16} at the baseline otherwise (the black-box target), plus per-hardware
    dtype sets when only one hardware is present."""
    base = {"bf16.sdpa.torch.b1", "fp16.sdpa.torch.b1"}
    sel = [v for v in runs if v.eqc.name in base]
    out = {}
    if len({v.hardware for v in sel}) >= 2:
        out["hardware x {bf16,fp16} b1"] = sel
    dtypes = [v for v in runs if set(v.eqc.differs_from(v.eqc.replace(dtype="bf16"))) <= {"dtype"}
              and v.eqc.replace(dtype="bf16").name == "bf16.sdpa.torch.b1"]
    if len(dtypes) >= 2:
        out["dtype x hardware b1"] = dtypes
    return out


def analyse(runs: Sequence[RunView], *, representations: Sequence[str] = ("paper", "native"),
            axes: Sequence[str] | None = None, d: int = 64, queries: int = 32, k: int = 20,
            decimals: int | None = None, plot_dir: str | Path | None = None, trials: int = 100,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {"models": {}}
    for model in sorted({v.model for v in runs}):
        mruns = [v for v in runs if v.model == model]
        keys = {tuple(v.get("digest_logits").shape) for v in mruns}
        if len(keys) != 1:
            raise ValueError(f"{model}: runs have different prompt counts {keys}; collect with the same prompts")
        rep: dict[str, Any] = {"runs": [v.label for v in mruns],
                               "lattice": hspi_ld.lattice(mruns),
                               "nondeterministic": [v.label for v in mruns if v.record.get("deterministic") is False],
                               "pairs": hspi_ld.pair_distinguishability(mruns),
                               "whitebox_1query": matching.whitebox_accuracy(mruns, queries=1, trials=trials),
                               "whitebox_all": matching.whitebox_accuracy(mruns, queries=len(mruns[0].get("digest_logits")), trials=3),
                               "classify": {}, "blackbox": {}}
        groups = hspi_ld.axis_groups(mruns)
        for name, group in groups.items():
            if axes and not any(name == a or name.startswith(a + "@") for a in axes):
                continue
            for r in representations:
                for shuffled in ((False, True) if name == "all" else (False,)):
                    key = f"{name}|{r}" + ("|shuffled" if shuffled else "")
                    if progress:
                        progress(f"{model}: classify {key}")
                    try:
                        res = hspi_ld.classify(group, r, d=d, shuffle_labels=shuffled, all_runs=mruns)
                    except ValueError as exc:
                        rep["classify"][key] = {"skipped": str(exc)}
                        continue
                    rep["classify"][key] = res.to_json()
                    if plot_dir is not None:
                        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model}_{key}")
                        confusion_png(res.confusion, res.classes, f"{model} {key} acc={res.accuracy:.3f}",
                                      Path(plot_dir) / f"cm_{safe}.png")
        for name, cands in _blackbox_sets(mruns).items():
            if progress:
                progress(f"{model}: black-box {name}")
            rep["blackbox"][name] = {q: matching.blackbox_accuracy(cands, queries=q, k=k, decimals=decimals,
                                                                   trials=trials)
                                     for q in sorted({1, 4, 8, queries})}
        report["models"][model] = rep
    return report
