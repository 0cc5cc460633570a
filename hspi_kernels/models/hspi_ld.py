"""HSPI-LD: classify the platform (hardware/EQC) from the bits of one output vector.

Representations
- ``paper``:  the HSPI-LD representation: the 32 bits (sign, 8 exponent, 23 fraction) of each of
  the first ``d`` fp32 log-probs, as a {0,1} vector of 32·d features (LinearSVC, no scaling);
- ``paper-logits``: the same on the raw logits (widened exactly to fp32) instead of log-probs;
- ``native``: our bit features from :mod:`hspi_kernels.fingerprint.features`: the log2 ULP-distance histogram
  of the log-probs against a reference run (fp64 if collected), the fraction-bit frequencies of
  the log-probs and of the raw logits in their own format, and the rounding-direction counts
  against the reference (standardised, LinearSVC).

Samples are (run, prompt); the train/test split is BY PROMPT: a prompt's outputs under every
class land on the same side, so a classifier cannot memorise prompts. ``merge_identical`` folds
runs whose outputs are bit-identical on every prompt into one class (they are one EQC by
definition; see :func:`lattice`). ``shuffle_labels`` is the negative control: train labels are
permuted, so test accuracy must fall to chance.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from hspi_kernels.fingerprint import features as fx
from hspi_kernels.models.collect import RunView
from hspi_kernels.models.eqc import AXES, BASELINE

REPRESENTATIONS = ("paper", "paper-logits", "native")

__all__ = ["REPRESENTATIONS", "lattice", "pair_distinguishability", "axis_groups", "features_paper", "features_native",
           "classify", "ClassifyResult", "require_sklearn"]


def require_sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:  # optional dependency: say so clearly
        raise RuntimeError("scikit-learn is not installed: `pip install 'hspi_kernels[models]'` "
                           "(HSPI-LD classification needs sklearn.svm.LinearSVC)") from exc


# --------------------------------------------------------------------------------------------
# the EQC lattice (from digests)
# --------------------------------------------------------------------------------------------
def lattice(runs: Sequence[RunView], field_name: str = "digest_logits") -> list[list[str]]:
    """Classes of runs whose outputs are bit-identical on every prompt (one model's runs)."""
    groups: dict[bytes, list[str]] = {}
    for v in runs:
        groups.setdefault(v.get(field_name).tobytes(), []).append(v.label)
    return sorted(groups.values(), key=lambda g: g[0])


def pair_distinguishability(runs: Sequence[RunView], field_name: str = "digest_logits") -> dict[str, Any]:
    """For each pair of runs, the fraction of prompts whose output bits differ (= the white-box
    single-query identification rate; any non-zero fraction means 100% with enough queries)."""
    labels = [v.label for v in runs]
    d = np.stack([v.get(field_name) for v in runs])
    frac = (d[:, None, :] != d[None, :, :]).mean(axis=2)
    return {"labels": labels, "fraction_differing": frac.round(4).tolist()}


def _canonical(runs: Sequence[RunView]) -> dict[str, str]:
    """label → representative label of its lattice class."""
    rep = {}
    for group in lattice(runs):
        name = " = ".join(group) if len(group) > 1 else group[0]
        for lab in group:
            rep[lab] = name
    return rep


def axis_groups(runs: Sequence[RunView]) -> dict[str, list[RunView]]:
    """Per axis, the runs that differ from the baseline EQC in that axis only (plus the baseline),
    per hardware; "hardware": same EQC on several hardware (for each such EQC in bf16/fp16 at
    batch 1 or the baseline otherwise); "all": every run."""
    out: dict[str, list[RunView]] = {"all": list(runs)}
    hardware = sorted({v.hardware for v in runs})
    for axis in AXES:
        for hw in hardware:
            sel = [v for v in runs if v.hardware == hw and set(v.eqc.differs_from(BASELINE)) <= {axis}]
            if len({getattr(v.eqc, axis) for v in sel}) >= 2:
                out[f"{axis}@{hw}"] = sel
    by_eqc: dict[str, list[RunView]] = {}
    for v in runs:
        by_eqc.setdefault(v.eqc.name, []).append(v)
    for name, vs in sorted(by_eqc.items()):
        if len({v.hardware for v in vs}) >= 2 and set(vs[0].eqc.differs_from(BASELINE)) <= {"dtype"}:
            out[f"hardware@{name}"] = vs
    return out


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------
def features_paper(v: RunView, d: int = 256) -> np.ndarray:
    """[n_prompts, 32·d] uint8: the bits of the first d fp32 log-probs, MSB (sign) first."""
    lp = np.ascontiguousarray(v.get("logprobs_slice")[:, :d]).view(np.uint32)
    shifts = np.arange(31, -1, -1, dtype=np.uint32)
    return ((lp[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(lp.shape[0], -1)


def features_paper_logits(v: RunView, d: int = 256) -> np.ndarray:
    """[n_prompts, 32·d] uint8: the bits of the first d raw logits widened exactly to fp32."""
    x = np.ascontiguousarray(v.logits_slice()[:, :d].astype(np.float32)).view(np.uint32)
    shifts = np.arange(31, -1, -1, dtype=np.uint32)
    return ((x[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(x.shape[0], -1)


_NATIVE_CACHE: dict[tuple, np.ndarray] = {}


def features_native(v: RunView, ref: RunView, d: int = 256) -> np.ndarray:
    """[n_prompts, F] float64 native bit features of each prompt's log-probs (see module doc);
    memoised per (run, reference, d) of loaded collections (repeated fits, shuffled controls)."""
    key = (v.source, v.record.get("key"), v.label, ref.source, ref.record.get("key"), ref.label, d)
    if v.source != "<memory>" and key in _NATIVE_CACHE:
        return _NATIVE_CACHE[key]
    out = _features_native(v, ref, d)
    if v.source != "<memory>":
        if len(_NATIVE_CACHE) > 4096:
            _NATIVE_CACHE.clear()
        _NATIVE_CACHE[key] = out
    return out


def _features_native(v: RunView, ref: RunView, d: int) -> np.ndarray:
    lp = np.ascontiguousarray(v.get("logprobs_slice")[:, :d])
    ref_lp = np.ascontiguousarray(ref.get("logprobs_slice")[:, :d])
    logits = v.logits_slice()[:, :d]
    rows = []
    for i in range(lp.shape[0]):
        hist = fx.ulp_histogram(lp[i], ref_lp[i], mode="log2")
        f_lp = fx.fraction_bit_frequency(lp[i])
        f_raw = np.zeros(23)
        fr = fx.fraction_bit_frequency(np.ascontiguousarray(logits[i]))
        f_raw[: min(23, fr.size)] = fr[:23]
        rd = fx.rounding_direction(lp[i], ref_lp[i].astype(np.float64)).counts()
        rows.append(np.concatenate([hist.counts / max(1, hist.total), f_lp, f_raw,
                                    [rd["down"] / d, rd["exact"] / d, rd["up"] / d]]))
    return np.nan_to_num(np.asarray(rows))


def _reference(runs: Sequence[RunView]) -> RunView:
    order = {"fp64": 0, "fp32": 1, "tf32": 2, "bf16": 3, "fp16": 4}
    return min(runs, key=lambda v: (order[v.eqc.dtype], v.eqc != BASELINE.replace(dtype=v.eqc.dtype),
                                    v.record.get("_source_index", 0)))


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------
@dataclass
class ClassifyResult:
    representation: str
    classes: list[str]
    accuracy: float
    chance: float
    confusion: list[list[int]]
    n_train: int
    n_test: int
    fit_s: float
    shuffled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def classify(runs: Sequence[RunView], representation: str = "paper", *, d: int = 64,
             test_fraction: float = 0.5, seed: int = 0, merge_identical: bool = True,
             shuffle_labels: bool = False, reference: RunView | None = None,
             all_runs: Sequence[RunView] | None = None) -> ClassifyResult:
    """Train LinearSVC on the training prompts of ``runs`` (one model) and test on the rest."""
    require_sklearn()
    from sklearn.metrics import confusion_matrix
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if len({v.model for v in runs}) != 1:
        raise ValueError("classify: runs of one model at a time")
    n = runs[0].get("logprobs_slice").shape[0]
    canon = _canonical(runs) if merge_identical else {v.label: v.label for v in runs}
    classes = sorted(set(canon.values()))
    if len(classes) < 2:
        raise ValueError(f"classify: fewer than 2 distinguishable classes among {[v.label for v in runs]}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    test_prompts, train_prompts = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    if representation == "paper":
        feats = [features_paper(v, d) for v in runs]
    elif representation == "paper-logits":
        feats = [features_paper_logits(v, d) for v in runs]
    elif representation == "native":
        ref = reference or _reference(all_runs or runs)
        feats = [features_native(v, ref, d) for v in runs]
    else:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
    y = [np.full(n, classes.index(canon[v.label])) for v in runs]
    x_tr = np.concatenate([f[train_prompts] for f in feats]).astype(np.float32)
    y_tr = np.concatenate([t[train_prompts] for t in y])
    x_te = np.concatenate([f[test_prompts] for f in feats]).astype(np.float32)
    y_te = np.concatenate([t[test_prompts] for t in y])
    if shuffle_labels:
        y_tr = rng.permutation(y_tr)
    if representation == "native":
        scaler = StandardScaler().fit(x_tr)
        x_tr, x_te = scaler.transform(x_tr), scaler.transform(x_te)
    start = time.perf_counter()
    # bit features: small C and a bounded dual solve keep a 6-class fit well under 60 s
    c_reg = 1.0 if representation == "native" else 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # liblinear's ConvergenceWarning at the iteration cap
        clf = LinearSVC(C=c_reg, dual=True, max_iter=1000, tol=1e-3, random_state=seed).fit(x_tr, y_tr)
    fit_s = time.perf_counter() - start
    pred = clf.predict(x_te)
    cm = confusion_matrix(y_te, pred, labels=list(range(len(classes))))
    counts = np.bincount(y_te, minlength=len(classes))
    return ClassifyResult(representation, classes, float((pred == y_te).mean()),
                          float(counts.max() / counts.sum()), cm.tolist(), len(y_tr), len(y_te), fit_s,
                          shuffle_labels, {"d": d, "n_prompts": n, "merge_identical": merge_identical})
