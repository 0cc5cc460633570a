"""The one capability checker (hspi_kernels.platform.capabilities): the `hspi env` report reads
the build-info's cubin list and the loader's CuPy status as they really are, and the probe
registry's requirement checks are the same functions."""

from __future__ import annotations

import re

import pytest

from hspi_kernels import _build_info
from hspi_kernels.kernels.cuda import loader
from hspi_kernels.platform import capabilities as C
from hspi_kernels.probes import registry


def test_report_never_raises_on_this_build():
    """Every check answers ok/detail; a check that raised inside (e.g. the old
    ``AttributeError: 'str' object has no attribute 'get'`` of the cubin check) would show here."""
    report = C.capabilities()
    assert set(report) == {"native", "torch.cuda", "cupy", "cubins", "triton"}
    for name, cap in report.items():
        assert not re.match(r"\w+(Error|Exception): ", cap["detail"]), (name, cap)  # _check's form of a raise


def test_cubins_follow_the_build_info():
    """The cubin check lists exactly the build-info CUBINS entries that are on disk."""
    entries = loader.build_entries()
    assert [e["cubin"] for e in entries] == [e["cubin"] for e in _build_info.CUBINS]
    on_disk = [e["cubin"] for e in entries if e["on_disk"]]
    cap = C.capabilities()["cubins"]
    assert cap["ok"] is bool(on_disk)
    if on_disk:
        assert cap["detail"] == ", ".join(on_disk)
    else:
        assert cap["detail"].startswith("no cubins in this build")


def test_cubins_built(monkeypatch):
    """A build whose cubins are all on disk reads as yes, listing them (the GPU-machine case)."""
    entries = [dict(e, on_disk=True) for e in _build_info.CUBINS]
    monkeypatch.setattr(loader, "build_entries", lambda source_rel=None: entries)
    cap = C.capabilities()["cubins"]
    assert cap == {"ok": True, "detail": ", ".join(e["cubin"] for e in _build_info.CUBINS)}


def test_cupy_reads_the_loader_status(monkeypatch):
    status = {"cupy": {"importable": True, "version": "14.2.0", "working": True, "error": None}}
    monkeypatch.setattr(loader, "status", lambda: status)
    assert C.capabilities()["cupy"] == {"ok": True, "detail": "CuPy 14.2.0"}
    status["cupy"].update(working=False, error="no CUDA device visible")
    assert C.capabilities()["cupy"] == {"ok": False, "detail": "no CUDA device visible"}


def test_registry_asks_the_same_checker(monkeypatch):
    assert registry.capability("torch") == C.requirement("torch")
    seen = []
    monkeypatch.setattr(C, "requirement", lambda name: (seen.append(name), (name != "cupy", f"no {name}"))[1])
    probe = registry.Probe(id="x/y", family="kernel", backend="numpy", inputs={}, measures="-",
                           run=lambda: None, requires=("torch", "cupy"))
    assert registry.missing_capabilities(probe) == [("cupy", "no cupy")]
    assert seen == ["torch", "cupy"]


def test_unknown_requirement():
    with pytest.raises(ValueError, match="bogus"):
        C.requirement("bogus")
