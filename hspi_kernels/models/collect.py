"""Run a model under EQCs on fixed prompt sets and store the outputs: a *collection*.

File format (schema ``hspi-model-collection/1``): one ``.npz`` written with
``np.savez_compressed`` (no pickle: every entry is a plain numeric array; read with
``allow_pickle=False``). The entry ``__meta__`` is the UTF-8 JSON metadata as uint8; arrays are
``<model>/inputs/<set>`` and ``r<i>/<field>`` for run i (``runs`` in the metadata), fields:

=================  ===========================  ===============================================
logits_slice       uint16/uint32/uint64 [n, S]  raw bits of the first S logits in the run dtype
logprobs_slice     float32 [n, S]               log_softmax(fp32(logits)) on the device
topk_ids           int32 [n, k]                 top-k token/class ids by log-prob
topk_logprobs      float32 [n, k]               their fp32 log-probs
digest_logits      uint64 [n]                   xxh3 (features.digest) of each full logits row
digest_logprobs    uint64 [n]                   same for the full fp32 log-prob row
rep_digest_*,      as above                     a repeat execution (determinism; black-box
rep_topk_*                                      observations come from it)
=================  ===========================  ===============================================

Rows are all prompts of all sets, concatenated in set order (``prompt_keys`` in the metadata).
Batch b: prompts are run in chunks of b rows; the last chunk is filled with seeded random
requests (co-batched traffic) whose outputs are discarded.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from hspi_kernels import platform as plat
from hspi_kernels.platform.files import InputFileError, atomic_write_bytes, npz_bytes, open_npz_bounded, size_limit
from hspi_kernels.fingerprint import features
from hspi_kernels.models import prompts, zoo
from hspi_kernels.models.eqc import EQC, applied, parse, quantize_linears, unsupported_reason

__all__ = ["Runner", "Collection", "CollectionTooLarge", "RunView", "collect", "load", "load_many",
           "hardware_name", "SCHEMA"]

SCHEMA = "hspi-model-collection/1"
_BITS = {"float64": np.uint64, "float32": np.uint32, "bfloat16": np.uint16, "float16": np.uint16}
_FMT = {"float64": "fp64", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def hardware_name(device: str, meta: dict[str, Any] | None = None) -> str:
    """Short hardware label: "H100", "H200", "A100"... for a GPU, "CPU" for the host."""
    if not device.startswith("cuda"):
        return "CPU"
    import re

    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Za-z]?)\b", name)
    return m.group(1) if m else name.replace(" ", "_")


def _row_digests(bits: np.ndarray, fmt: str) -> np.ndarray:
    return np.array([int(features.digest(row, fmt), 16) for row in bits], dtype=np.uint64)


class Runner:
    """A built model on a device, with cached per-(dtype, quant) copies and compiled wrappers."""

    def __init__(self, model_name: str, seed: int = 0, device: str = "cpu", slice_size: int = 256,
                 topk: int = 20, vision_impl: str = "auto"):
        import torch

        self.spec = zoo.get_spec(model_name)
        self.kind = self.spec.kind
        self.device = device
        self.seed = seed
        self.master, self.meta = zoo.build(self.spec, seed, vision_impl=vision_impl)
        out_dim = self.meta.get("vocab_size") or self.meta.get("num_classes")
        self.out_dim = int(out_dim)
        self.slice_size = min(slice_size, self.out_dim)
        self.topk = min(topk, self.out_dim)
        self._copies: dict[tuple[str, str], Any] = {}
        self._compiled: dict[tuple, Any] = {}
        self.torch = torch

    # -- model copies ---------------------------------------------------------------------
    def model_for(self, eqc: EQC):
        torch = self.torch
        key = (eqc.torch_dtype_name, eqc.quant)
        if key not in self._copies:
            m = copy.deepcopy(self.master).to(device=self.device, dtype=getattr(torch, eqc.torch_dtype_name))
            if eqc.quant != "none":
                quantize_linears(m, eqc.quant)
            m.eval()
            self._copies[key] = m
        model = self._copies[key]
        if eqc.compile:
            ckey = key + (eqc.attn,)
            if ckey not in self._compiled:
                self._compiled[ckey] = torch.compile(model)
            return self._compiled[ckey]
        return model

    def release(self, keep: Iterable[EQC] = ()) -> None:
        """Free cached copies not needed by ``keep`` (GPU memory between dtype groups)."""
        wanted = {(e.torch_dtype_name, e.quant) for e in keep}
        for key in list(self._copies):
            if key not in wanted:
                del self._copies[key]
                for ckey in [c for c in self._compiled if c[:2] == key]:
                    del self._compiled[ckey]
        if self.device.startswith("cuda"):
            self.torch.cuda.empty_cache()

    # -- forward ----------------------------------------------------------------------------
    def _filler(self, n: int, like: np.ndarray, chunk: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 7, chunk])
        if self.kind == "llm":
            return rng.integers(3, self.out_dim, size=(n,) + like.shape[1:]).astype(like.dtype)
        return rng.standard_normal((n,) + like.shape[1:], dtype=np.float32)

    def logits(self, eqc: EQC, inputs: np.ndarray):
        """Last-position logits (LLM) / class logits (vision), run dtype, on the device: [n, V]."""
        torch = self.torch
        model = self.model_for(eqc)
        dtype = getattr(torch, eqc.torch_dtype_name)
        outs = []
        with torch.inference_mode(), applied(eqc, model, self.device, self.kind):
            for c, start in enumerate(range(0, len(inputs), eqc.batch)):
                chunk = inputs[start:start + eqc.batch]
                n = len(chunk)
                if n < eqc.batch:
                    chunk = np.concatenate([chunk, self._filler(eqc.batch - n, chunk, c)])
                x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device)
                if self.kind == "llm":
                    out = model(input_ids=x.long(), logits_to_keep=1).logits[:, -1, :]
                else:
                    out = model(x.to(dtype))
                outs.append(out[:n])
        return torch.cat(outs)

    def greedy(self, eqc: EQC, inputs: np.ndarray) -> np.ndarray:
        return self.logits(eqc, inputs).float().argmax(-1).cpu().numpy().astype(np.int32)

    def outputs(self, eqc: EQC, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The stored fields of one execution (see the module docstring)."""
        torch = self.torch
        logits = self.logits(eqc, inputs)
        lp = torch.log_softmax(logits.float(), dim=-1)
        top_lp, top_ids = torch.topk(lp, self.topk, dim=-1)
        dtype_name = str(logits.dtype).replace("torch.", "")
        raw = logits.cpu()
        bits = raw.view({"float64": torch.int64, "float32": torch.int32, "bfloat16": torch.int16,
                         "float16": torch.int16}[dtype_name]).numpy().view(_BITS[dtype_name])
        lp_np = lp.cpu().numpy()
        return {
            "logits_slice": bits[:, : self.slice_size].copy(),
            "logprobs_slice": lp_np[:, : self.slice_size].copy(),
            "topk_ids": top_ids.cpu().numpy().astype(np.int32),
            "topk_logprobs": top_lp.cpu().numpy(),
            "digest_logits": _row_digests(bits, _FMT[dtype_name]),
            "digest_logprobs": _row_digests(lp_np.view(np.uint32), "fp32"),
        }


def make_inputs(runner: Runner, n_random: int, n_text: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    if runner.kind == "llm":
        tokenizer = None
        if runner.spec.arch == "local":
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(runner.spec.name, local_files_only=True)
            except Exception:
                tokenizer = None
        return prompts.prompt_sets(runner.out_dim, n_random, n_text, length, seed, tokenizer)
    return {"images": prompts.images(n_random + n_text, runner.meta["image_size"], seed)}


def collect(runner: Runner, eqcs: Iterable[EQC | str], inputs: dict[str, np.ndarray], *,
            repeat: bool = True, on_run: Callable[[dict], None] | None = None,
            collection: "Collection | None" = None, hardware: str | None = None,
            deadline: float | None = None) -> "Collection":
    """Run every EQC over all inputs (plus a repeat execution when ``repeat``) into a collection.

    ``hardware`` overrides the hardware label (default: :func:`hardware_name` of the device; tests
    use it for synthetic platforms). ``deadline`` (a ``time.perf_counter()`` value): EQCs that would
    start after it are recorded as ``status="skipped"`` instead of run (time-boxed GPU jobs)."""
    coll = collection or Collection.new(plat.collect())
    mname = runner.spec.name
    keys = [f"{s}:{i}" for s, arr in inputs.items() for i in range(len(arr))]
    all_inputs = np.concatenate(list(inputs.values()))
    if mname not in coll.meta["models"]:
        coll.meta["models"][mname] = dict(runner.meta, kind=runner.kind, prompt_keys=keys,
                                          input_sets={s: list(a.shape) for s, a in inputs.items()},
                                          slice_size=runner.slice_size, topk=runner.topk)
        for s, arr in inputs.items():
            if runner.kind == "vision":
                # seeded images regenerate exactly (prompts.py); tens of MB each would not travel
                # back from a GPU machine, so only their digest is kept
                coll.meta["models"][mname].setdefault("input_digests", {})[s] = features.digest(arr)
            else:
                coll.arrays[f"{mname}/inputs/{s}"] = arr
    hw = hardware or hardware_name(runner.device)
    eqcs = [parse(e) if isinstance(e, str) else e for e in eqcs]
    for i, eqc in enumerate(eqcs):
        record: dict[str, Any] = {"model": mname, "hardware": hw, "device": runner.device,
                                  "eqc": eqc.to_json(), "eqc_name": eqc.name, "label": f"{hw}/{eqc.name}"}
        reason = unsupported_reason(eqc, runner.device, runner.kind)
        if deadline is not None and time.perf_counter() > deadline:
            record.update(status="skipped", reason="time budget")
        elif reason:
            record.update(status="unsupported", reason=reason)
        else:
            start = time.perf_counter()
            try:
                out = runner.outputs(eqc, all_inputs)
                record["time_s"] = time.perf_counter() - start
                if repeat:
                    rep = runner.outputs(eqc, all_inputs)
                    out.update({f"rep_{k}": v for k, v in rep.items() if k.startswith(("digest", "topk"))})
                    record["deterministic"] = bool(np.array_equal(out["digest_logits"], rep["digest_logits"]))
                    record["rep_rows_differing"] = int(np.count_nonzero(out["digest_logits"] != rep["digest_logits"]))
                record["status"] = "ok"
                record["dtype_format"] = {np.uint64: "fp64", np.uint32: "fp32"}.get(
                    out["logits_slice"].dtype.type, "fp16" if eqc.dtype == "fp16" else "bf16")
                coll.add_run(record, out)
            except Exception as exc:  # a failing configuration is a result, not a crash
                record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
        if record["status"] != "ok":
            coll.meta["runs"].append(record)
        if on_run:
            on_run(record)
        # free model copies that later EQCs no longer need
        runner.release(eqcs[i + 1:])
    return coll


# --------------------------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------------------------
@dataclass
class RunView:
    """One ok run of a loaded collection: its record and arrays (``get("topk_ids")``)."""

    record: dict[str, Any]
    arrays: dict[str, np.ndarray]
    source: str

    @property
    def label(self) -> str:
        return self.record["label"]

    @property
    def model(self) -> str:
        return self.record["model"]

    @property
    def eqc(self) -> EQC:
        return EQC.from_json(self.record["eqc"])

    @property
    def hardware(self) -> str:
        return self.record["hardware"]

    def get(self, field: str) -> np.ndarray:
        return self.arrays[f"{self.record['key']}/{field}"]

    def has(self, field: str) -> bool:
        return f"{self.record['key']}/{field}" in self.arrays

    def logits_slice(self) -> np.ndarray:
        """The stored logits slice as floats of the run dtype (bf16 via ml_dtypes)."""
        import ml_dtypes

        bits = self.get("logits_slice")
        fmt = self.record["dtype_format"]
        dt = {"fp64": np.float64, "fp32": np.float32, "fp16": np.float16, "bf16": ml_dtypes.bfloat16}[fmt]
        return bits.view(dt)


class CollectionTooLarge(RuntimeError):
    """A collection would not fit the size budget (e.g. what a GPU job can send back)."""


class Collection:
    def __init__(self, meta: dict[str, Any], arrays: dict[str, np.ndarray], source: str = "<memory>"):
        self.meta = meta
        self.arrays = arrays
        self.source = source

    @classmethod
    def new(cls, platform_meta: dict[str, Any]) -> "Collection":
        return cls({"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "platform": platform_meta, "platform_label": plat.platform_label(platform_meta),
                    "models": {}, "runs": [], "extra": {}}, {})

    def add_run(self, record: dict[str, Any], out: dict[str, np.ndarray]) -> None:
        key = f"r{len(self.meta['runs'])}"
        record["key"] = key
        self.meta["runs"].append(record)
        for k, v in out.items():
            self.arrays[f"{key}/{k}"] = v

    def runs(self, model: str | None = None, status: str = "ok") -> list[RunView]:
        return [RunView(r, self.arrays, self.source) for r in self.meta["runs"]
                if r.get("status") == status and (model is None or r["model"] == model)]

    def inputs(self, model: str) -> dict[str, np.ndarray]:
        prefix = f"{model}/inputs/"
        return {k[len(prefix):]: v for k, v in self.arrays.items() if k.startswith(prefix)}

    def save(self, path: str | Path, max_bytes: int | None = None) -> Path:
        """Write the compressed .npz; with ``max_bytes``, the archive is built in memory first and
        an oversized one raises :class:`CollectionTooLarge` before anything is written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = np.frombuffer(json.dumps(self.meta, default=str).encode("utf-8"), dtype=np.uint8)
        data = npz_bytes({"__meta__": meta, **self.arrays})
        size = data.nbytes
        if max_bytes is not None and size > max_bytes:
            raise CollectionTooLarge(f"{path.name}: {size / 2**20:.2f} MiB compressed exceeds the budget of "
                                     f"{max_bytes / 2**20:.2f} MiB; nothing written (fewer prompts/EQCs/slice)")
        return atomic_write_bytes(path, data)  # an interrupted job leaves the previous file


MAX_COLLECTION_BYTES = 2 << 30  # 2 GiB on disk; $HSPI_MAX_COLLECTION_MB overrides (may unpack to 64x)
MAX_COLLECTION_ENV = "HSPI_MAX_COLLECTION_MB"


def load(path: str | Path) -> Collection:
    """A collection file; ValueError naming the file when it is missing, not a collection, damaged
    or larger than ``MAX_COLLECTION_BYTES``."""
    try:
        with open_npz_bounded(path, size_limit(MAX_COLLECTION_BYTES, MAX_COLLECTION_ENV), kind="collection") as z:
            meta = json.loads(bytes(z["__meta__"]).decode("utf-8"))
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except InputFileError:  # too large, truncated, not an npz: the message names the file already
        raise
    except (OSError, KeyError, ValueError, TypeError, RecursionError) as exc:  # the archive's damage: InputFileError
        raise ValueError(f"{path}: not a readable {SCHEMA} collection ({type(exc).__name__}: {exc})") from None
    schema = meta.get("schema") if isinstance(meta, dict) else None
    if schema != SCHEMA:
        raise ValueError(f"{path}: schema {schema!r}, expected {SCHEMA}")
    runs = meta.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ValueError(f"{path}: damaged {SCHEMA} collection: 'runs' must be a list of run records")
    return Collection(meta, arrays, str(path))


def load_many(paths: Iterable[str | Path]) -> list[RunView]:
    """All ok runs of several collections; labels are made unique by appending #2, #3..."""
    views, seen = [], {}
    for p in paths:
        for v in load(p).runs():
            lab = v.record["label"]
            seen[(v.model, lab)] = seen.get((v.model, lab), 0) + 1
            if seen[(v.model, lab)] > 1:
                v.record = dict(v.record, label=f"{lab}#{seen[(v.model, lab)]}")
            views.append(v)
    return views
