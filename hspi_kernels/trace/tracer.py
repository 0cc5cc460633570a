"""Trace one forward pass op by op, find where two platforms first diverge, and (with
:mod:`trace_explain`) name the cause.

Recording (:func:`record`): a ``TorchDispatchMode`` sees every aten op *after* autograd and
composite decomposition, so a Linear shows up as the ``aten.mm`` / ``aten.addmm`` the backend
really runs, with its exact operand tensors (the fixed-order Triton override and the SDPA backend
choice are visible too: both act below the mode). Module forward hooks keep the current module
path, so an op's *key* is ``<module path>:<aten op>#<n-th such op in that module call>`` (e.g.
``model.layers.0.self_attn.q_proj:mm#0``), which is what two traces are aligned on. View and
metadata ops (``is_view``, detach, clone, ...) are skipped. A second pass under
``torch.profiler`` wraps each recorded op in ``record_function("hspi#<i>")`` and collects the
device kernels launched inside it (empty on a CPU).

Per op the trace keeps: the digest (``features.digest``) of every tensor input and output, the
non-tensor arguments, a fixed strided sample of each output (``SAMPLE`` elements at evenly
spaced flat positions, raw bits: the cross-platform ULP view) and, by the *keep policy*, the
exact arrays the explainer replays:

- parameters are never stored when the model comes from the zoo: seeded weights are regenerated
  bit for bit from (seed, name, std) (:func:`regenerate_param`) and checked against the recorded
  digest; a parameter view (``W.t()``) is stored as (name, shape, stride, offset);
- ``keep="all"`` (default for models under 50M parameters): inputs and outputs of every op;
- ``keep="gemm"`` (default above): inputs and output of every GEMM (mm/addmm/bmm/baddbmm) in the
  first ``keep_layers`` decoder layers and outside the decoder stack (the lm_head), plus
  (``keep_keys``) every op whose output digest differs from a reference trace's;
- arrays are deduplicated by digest; a 2-D+ array above ``row_cap_bytes`` keeps its leading rows
  (a GEMM's A operand and output keep the same rows, so the kept outputs stay replayable), and
  nothing more is stored once ``max_bytes`` is reached (recorded per op as ``dropped``).

File (schema ``hspi-trace/1``): one ``np.savez_compressed`` npz, no pickle: ``__meta__`` is the
UTF-8 JSON metadata (platform, model, run config, ops), ``a/<digest>`` the stored arrays as raw
bits, ``s/<op>/<j>`` the output samples. Read with :func:`load`.
"""

from __future__ import annotations

import json
import re
import time
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hspi_kernels import platform as plat
from hspi_kernels.fingerprint import features
from hspi_kernels.models import eqc as meqc
from hspi_kernels.models import prompts, zoo
from hspi_kernels.numerics import evaluate
from hspi_kernels.numerics import plans as P
from hspi_kernels.platform.files import InputFileError, atomic_write_bytes, atomic_write_npz, atomic_write_text, \
    open_npz_bounded, size_limit
from hspi_kernels.numerics.attention_plan import AttentionPlan
from hspi_kernels.numerics.attention_plan import evaluate_attention

__all__ = ["SCHEMA", "Trace", "record", "run_model", "load", "check_pair", "diff", "plot_propagation", "html_view",
           "regenerate_param", "array_of", "layout_of", "layout_diff", "result_outputs", "GEMM_OPS", "REDUCTION_OPS",
           "TRANSCENDENTAL_OPS"]

SCHEMA = "hspi-trace/1"
SAMPLE = 512
ALIGN_MOD = 256  # addresses are recorded mod 256 bytes (the widest alignment a kernel selects on)
ALIGN_CMP = 64   # ... and their alignment compared up to 64 bytes (layout_diff)
GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm"}
REDUCTION_OPS = {"sum", "mean"}
TRANSCENDENTAL_OPS = {"exp", "rsqrt", "sqrt", "silu", "sigmoid", "tanh", "gelu", "log", "_softmax", "_safe_softmax",
                      "softmax", "_log_softmax", "cos", "sin", "erf", "pow", "reciprocal", "div"}
_SKIP = {"detach", "clone", "alias", "lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "empty_like",
         "zeros_like", "ones_like", "full_like", "new_empty", "new_zeros", "new_ones", "empty", "zeros",
         "ones", "full", "arange", "empty_strided", "scalar_tensor", "is_nonzero", "item", "_to_copy_noop",
         "copy_", "set_", "resize_", "fill_", "zero_", "_assert_tensor_metadata", "sym_size", "sym_stride",
         "_unsafe_view", "contiguous"}
_FMT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}
_BITS = {"bf16": np.uint16, "fp16": np.uint16, "fp32": np.uint32, "fp64": np.uint64}


def _layer_of(module: str) -> str:
    m = re.search(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)(?:\.|$)", module)
    if m:
        return f"layer{int(m.group(1))}"
    low = module.lower()
    if "embed" in low or "wte" in low or "wpe" in low:
        return "embed"
    if "lm_head" in low or "head" in low:
        return "head"
    return "other"


def _layer_index(module: str) -> int | None:
    m = re.search(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)(?:\.|$)", module)
    return int(m.group(1)) if m else None


# -- arrays ------------------------------------------------------------------------------------
def _to_numpy(t) -> tuple[np.ndarray, str | None]:
    """(C-ordered numpy array, format name or None) of a tensor; floats as raw bits."""
    import torch

    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    t = t.contiguous().cpu()
    name = str(t.dtype).replace("torch.", "")
    fmt = _FMT.get(name)
    if fmt is not None:
        itemsize = t.element_size()
        view_dtype = {2: torch.int16, 4: torch.int32, 8: torch.int64}[itemsize]
        return t.view(view_dtype).numpy().view(_BITS[fmt]), fmt
    return t.numpy(), None


def layout_of(t) -> list[int | list[int]]:
    """[strides, storage offset, data address mod 256] of a tensor: what a kernel sees besides the
    values (cuDNN and cuBLAS choose plans by strides and alignment; two tensors of equal digest can
    differ here)."""
    try:
        return [list(t.stride()), int(t.storage_offset()), int(t.data_ptr() % ALIGN_MOD)]
    except (RuntimeError, NotImplementedError):  # sparse / meta tensors
        return [[], 0, 0]


def layout_diff(a: dict, b: dict) -> dict | None:
    """The fields of two recorded tensor layouts that differ ({} for traces without layouts: None)."""
    la, lb = a.get("layout"), b.get("layout")
    if la is None or lb is None:
        return None
    out = {}
    for name, x, y in zip(("stride", "offset", "align"), la, lb):
        if name == "align":
            x, y = _alignment(x), _alignment(y)
        if x != y:
            out[name] = [x, y]
    return out


def _alignment(mod: int) -> int:
    """Largest power of two (<= ALIGN_CMP) that divides an address with this residue mod ALIGN_MOD.
    Compared up to 64 bytes: CPU allocations are 64-byte aligned and wider alignment is chance
    there; the replays rebuild the full residue mod 256 whatever is compared."""
    return ALIGN_CMP if mod % ALIGN_CMP == 0 else mod & -mod


def result_outputs(op: dict) -> list[int]:
    """Indices of an op's outputs that carry its numerical result. A fused SDPA op also returns
    the CUDA generator's philox seed and offset (int64 tensors, even at dropout 0) and integer
    bookkeeping (cumulative sequence lengths): they change with the generator's state between two
    runs in one process (or after anything that drew random numbers), not with the attention's
    arithmetic, so only its floating outputs (output, log-sum-exp) are compared."""
    outs = op.get("outputs", [])
    if "scaled_dot_product" in op.get("op", ""):
        return [j for j, o in enumerate(outs) if o["dtype"] in _FMT]
    return list(range(len(outs)))


def _results_equal(oa: dict, ob: dict) -> bool:
    ja, jb = result_outputs(oa), result_outputs(ob)
    return len(ja) == len(jb) and all(oa["outputs"][x]["digest"] == ob["outputs"][y]["digest"] for x, y in zip(ja, jb))


def _digest(arr: np.ndarray, fmt: str | None) -> str:
    return features.digest(arr, fmt)


def array_of(bits: np.ndarray, fmt: str | None) -> np.ndarray:
    """Values of a raw-bits array: bf16 as ml_dtypes.bfloat16, fp16/fp32/fp64 as numpy floats."""
    if fmt is None:
        return bits
    if fmt == "bf16":
        import ml_dtypes

        return bits.view(ml_dtypes.bfloat16)
    return bits.view({"fp16": np.float16, "fp32": np.float32, "fp64": np.float64}[fmt])


def _json_arg(x):
    import torch

    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    if isinstance(x, (list, tuple)):
        return [_json_arg(v) for v in x]
    if isinstance(x, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return str(x)
    return repr(x)


# -- recording ---------------------------------------------------------------------------------
@dataclass
class _Store:
    """Deduplicated stored arrays under a byte budget."""

    max_bytes: int
    row_cap_bytes: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, dict] = field(default_factory=dict)
    used: int = 0

    def rows_for(self, arr: np.ndarray) -> int:
        """Leading rows of ``arr`` kept under the row cap (all when small or 0-/1-D)."""
        if arr.ndim < 2 or arr.nbytes <= self.row_cap_bytes:
            return arr.shape[0] if arr.ndim else 1
        row = arr.nbytes // max(arr.shape[0], 1)
        return max(1, self.row_cap_bytes // max(row, 1))

    reserve_bytes: int = 4 << 20  # extra room for forced keeps (--keep-key, reference origins)

    def put(self, digest: str, arr: np.ndarray, fmt: str | None, rows: int | None = None,
            forced: bool = False) -> str | None:
        if digest in self.info:
            return digest
        part = arr if (rows is None or arr.ndim == 0) else arr[:rows]
        if self.used + part.nbytes > self.max_bytes + (self.reserve_bytes if forced else 0):
            return None
        self.arrays[digest] = np.ascontiguousarray(part)
        self.info[digest] = {"fmt": fmt, "dtype": str(arr.dtype), "shape": list(arr.shape),
                             "rows": None if part.shape == arr.shape else int(part.shape[0])}
        self.used += part.nbytes
        return digest


def _param_table(model) -> dict[int, str]:
    return {p.untyped_storage().data_ptr(): name for name, p in model.named_parameters()}


class _Recorder:
    """The dispatch mode plus module hooks; see the module docstring for what is kept."""

    def __init__(self, model, *, keep: str, keep_layers: int, keep_keys: set[str], store: _Store | None,
                 regenerable: bool, inject: dict[str, Any] | None, light: bool = False,
                 reference: dict[str, dict] | None = None):
        self.model = model
        self.keep, self.keep_layers, self.keep_keys = keep, keep_layers, keep_keys
        self.store = store
        self.regenerable = regenerable
        self.inject = dict(inject or {})
        self.injected: list[str] = []
        self.reference = reference  # {key: op record} of another platform's trace
        self.light = light  # profiler pass: keys only, one record_function per op
        self.ops: list[dict] = []
        self.samples: dict[str, np.ndarray] = {}
        self.stack: list[str] = [""]
        self.counts: list[dict[str, int]] = [{}]
        self.params = _param_table(model)
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self._digest_cache: dict[tuple, str] = {}
        self._handles = []

    # module path ---------------------------------------------------------------------------
    def hooks(self):
        for name, mod in self.model.named_modules():
            def pre(m, args, _name=name):
                self.stack.append(_name)
                self.counts.append({})

            def post(m, args, out):
                self.stack.pop()
                self.counts.pop()

            self._handles.append(mod.register_forward_pre_hook(pre))
            self._handles.append(mod.register_forward_hook(post, always_call=True))

    def unhook(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def next_key(self, op: str) -> tuple[str, str]:
        module = self.stack[-1]
        n = self.counts[-1].get(op, 0)
        self.counts[-1][op] = n + 1
        return module, f"{module}:{op}#{n}"

    # tensors ---------------------------------------------------------------------------------
    def param_of(self, t) -> str | None:
        try:
            return self.params.get(t.untyped_storage().data_ptr())
        except Exception:
            return None

    def describe(self, t) -> tuple[dict, np.ndarray | None, str | None]:
        """(digest info, numpy bits or None when a cached parameter digest was used, format)."""
        param = self.param_of(t)
        ck = None
        if param is not None:
            ck = (param, tuple(t.shape), tuple(t.stride()), t.storage_offset(), str(t.dtype))
        fmt = _FMT.get(str(t.dtype).replace("torch.", ""))
        if ck is not None and ck in self._digest_cache:
            arr, dg = None, self._digest_cache[ck]
        else:
            arr, fmt = _to_numpy(t)
            dg = _digest(arr, fmt)
            if ck is not None:
                self._digest_cache[ck] = dg
        info: dict[str, Any] = {"digest": dg, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                                "layout": layout_of(t)}
        if param is not None:
            info["param"] = {"name": param, "stride": list(t.stride()), "offset": int(t.storage_offset())}
        return info, arr, fmt

    def stash(self, info: dict, t, arr, fmt, rows: int | None, forced: bool = False) -> None:
        """Store an op's array (parameters only when they cannot be regenerated)."""
        if self.store is None or ("param" in info and self.regenerable):
            return
        if arr is None:
            arr, fmt = _to_numpy(t)
        r = rows if rows is not None else self.store.rows_for(arr)
        stored = self.store.put(info["digest"], arr, fmt, r, forced)
        info["stored"] = stored is not None
        if stored is None:
            info["dropped"] = "budget"

    def keep_op(self, op: str, module: str, key: str, ins: list[dict], outs: list[dict]) -> bool | str:
        """False, True (policy) or "forced" (asked for by key or by the reference trace)."""
        if key in self.keep_keys:
            return "forced"
        ref = self.reference.get(key) if self.reference else None
        if ref is not None and [i["digest"] for i in ins] == [i["digest"] for i in ref["inputs"]] \
                and not _results_equal({"op": op, "outputs": outs}, ref):
            return "forced"  # an origin against the reference platform: the explainer needs it
        if self.keep == "all":
            return True
        if self.keep == "gemm" and op in GEMM_OPS:
            idx = _layer_index(module)
            return idx is None or idx < self.keep_layers
        return False

    # the mode --------------------------------------------------------------------------------
    def mode(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        rec = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                op = func.overloadpacket.__name__
                if func.is_view or op in _SKIP:
                    return func(*args, **kwargs)
                if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
                    # linear, matmul, SDPA...: record what they run (mm/addmm, the chosen SDPA backend)
                    out = func.decompose(*args, **kwargs)
                    if out is not NotImplemented:
                        return out
                flat_in, _ = tree_flatten((args, kwargs))
                tin = [x for x in flat_in if isinstance(x, torch.Tensor)]
                if not tin:
                    return func(*args, **kwargs)
                module, key = rec.next_key(op)
                i = len(rec.ops)
                if rec.light:
                    rec.ops.append({"i": i, "key": key})
                    with torch.profiler.record_function(f"hspi#{i}"):
                        return func(*args, **kwargs)
                t0 = time.perf_counter()
                if key in rec.inject:
                    out = rec.run_injected(key, func, op, args, kwargs)
                else:
                    out = func(*args, **kwargs)
                flat_out, _ = tree_flatten(out)
                tout = [x for x in flat_out if isinstance(x, torch.Tensor)]
                rec.log(i, func, op, module, key, args, kwargs, tin, tout, time.perf_counter() - t0)
                return out

        return Mode()

    def run_injected(self, key, func, op, args, kwargs):
        """Compute a GEMM by an accumulation plan (fp32 evaluator) instead of the backend."""
        import torch

        plan = self.inject[key]
        if "scaled_dot_product" in op:
            return _injected_attention(key, op, plan, args, kwargs, self.injected)
        if op == "mm":
            a, b = args[0], args[1]
            c = None
        elif op == "addmm":
            c, a, b = args[0], args[1], args[2]
        else:
            raise ValueError(f"inject: only mm/addmm can be replaced, {key} is {op}")
        A = a.detach().float().cpu().numpy()
        B = b.detach().float().cpu().numpy()
        C = None
        if c is not None:
            C = np.ascontiguousarray(np.broadcast_to(c.detach().float().cpu().numpy(), (A.shape[0], B.shape[1])))
        d = evaluate.gemm(plan, A, B, C)
        self.injected.append(key)
        return torch.from_numpy(d).to(device=a.device, dtype=a.dtype)

    def log(self, i, func, op, module, key, args, kwargs, tin, tout, seconds):
        import torch
        from torch.utils._pytree import tree_map

        described_in = [self.describe(t) for t in tin]
        described_out = [self.describe(t) for t in tout]
        ins = [d[0] for d in described_in]
        outs = [d[0] for d in described_out]
        keep = self.store is not None and self.keep_op(op, module, key, ins, outs)
        if keep:
            rows = None
            if op in GEMM_OPS and tout:
                arr_out = described_out[0][1]
                rows = self.store.rows_for(arr_out if arr_out is not None else _to_numpy(tout[0])[0])
            for t, (info, arr, fmt) in zip(tin, described_in):
                # a GEMM's row operand keeps the output's rows; 1-D/param operands are whole
                r = rows if (rows is not None and t.ndim >= 2 and "param" not in info
                             and t.shape[0] == tout[0].shape[0]) else None
                self.stash(info, t, arr, fmt, r, keep == "forced")
            for t, (info, arr, fmt) in zip(tout, described_out):
                self.stash(info, t, arr, fmt, rows, keep == "forced")
        for j, (t, (info, arr, fmt)) in enumerate(zip(tout, described_out)):
            if arr is None:
                arr, fmt = _to_numpy(t)
            flat = arr.reshape(-1)
            if flat.size:
                idx = np.unique(np.linspace(0, flat.size - 1, min(flat.size, SAMPLE)).astype(np.int64))
                self.samples[f"s/{i}/{j}"] = flat[idx]
        args_json = tree_map(lambda x: {"tensor": True} if isinstance(x, torch.Tensor) else x, (list(args), kwargs))
        self.ops.append({"i": i, "key": key, "op": op, "aten": str(func), "module": module,
                         "layer": _layer_of(module), "inputs": ins, "outputs": outs,
                         "args": _json_arg(args_json), "kept": bool(keep), "seconds": round(seconds, 6)})


ATTENTION_CPU_OPS = {"_scaled_dot_product_flash_attention_for_cpu"}


def attention_call(op: str, args, kwargs) -> dict:
    """(is_causal, scale, dropout, attn_mask) of a recorded ``_scaled_dot_product_*`` call, from
    its positional and keyword arguments (torch objects or their JSON record)."""
    args = list(args)
    kw = dict(kwargs or {})
    # positions differ by op: flash / flash_for_cpu (q, k, v, dropout_p, is_causal, ...); cuDNN and
    # efficient (q, k, v, attn_bias, compute_log_sumexp, dropout_p, is_causal, ...)
    biased = op in ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_efficient_attention")
    i_drop, i_causal = (5, 6) if biased else (3, 4)
    dropout = args[i_drop] if len(args) > i_drop else kw.get("dropout_p", 0.0)
    causal = args[i_causal] if len(args) > i_causal else kw.get("is_causal", False)
    bias = (args[3] if len(args) > 3 else kw.get("attn_bias")) if biased else kw.get("attn_mask")
    return {"causal": bool(causal), "dropout": float(dropout or 0.0), "scale": kw.get("scale"),
            "mask": bias is not None}


def _injected_attention(key, op, plan, args, kwargs, injected: list):
    """``_scaled_dot_product_flash_attention_for_cpu`` computed by an AttentionPlan: (out, lse)."""
    import torch


    if op not in ATTENTION_CPU_OPS or not isinstance(plan, AttentionPlan):
        raise ValueError(f"inject: {key} is {op}; only {sorted(ATTENTION_CPU_OPS)} takes an AttentionPlan")
    call = attention_call(op, args, kwargs)
    if call["dropout"] or call["mask"]:
        raise ValueError(f"inject: {key} has dropout or an attention mask (not modelled)")
    q, k, v = args[0], args[1], args[2]
    fmt = _FMT[str(q.dtype).replace("torch.", "")]
    f = [x.detach().float().cpu().numpy() for x in (q, k, v)]
    o, lse = evaluate_attention(plan, *f, fmt=fmt, causal=call["causal"], scale=call["scale"], with_lse=True)
    injected.append(key)
    return (torch.from_numpy(o).to(device=q.device, dtype=q.dtype), torch.from_numpy(lse).to(q.device))


def _profile_kernels(model, call, n_ops: int) -> tuple[list[list[str]], str | None]:
    """Device kernel names per op index, from one extra pass under torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    rec = _Recorder(model, keep="none", keep_layers=0, keep_keys=set(), store=None, regenerable=True,
                    inject=None, light=True)
    kernels: list[list[str]] = [[] for _ in range(n_ops)]
    try:
        rec.hooks()
        with profile(activities=activities) as prof:
            with rec.mode():
                call()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
    except Exception as exc:  # the profiler is optional evidence
        return kernels, f"profiler failed: {exc}"
    finally:
        rec.unhook()
    if len(rec.ops) != n_ops:
        return kernels, f"profiler pass saw {len(rec.ops)} ops, the traced pass {n_ops}"
    for evt in prof.events():
        names = [k.name for k in getattr(evt, "kernels", [])]
        if not names:
            continue
        node = evt
        while node is not None and not node.name.startswith("hspi#"):
            node = node.cpu_parent
        if node is not None:
            idx = int(node.name[5:])
            if 0 <= idx < n_ops:
                kernels[idx].extend(names)
    return kernels, None


@dataclass
class Trace:
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    source: str = "<memory>"

    @property
    def ops(self) -> list[dict]:
        return self.meta["ops"]

    def by_key(self) -> dict[str, dict]:
        return {o["key"]: o for o in self.ops}

    def sample(self, op: dict, j: int = 0) -> np.ndarray | None:
        return self.arrays.get(f"s/{op['i']}/{j}")

    def stored(self, digest: str) -> tuple[np.ndarray, dict] | None:
        """(values, info) of a stored array (leading rows only where info['rows'] is set)."""
        key = f"a/{digest}"
        if key not in self.arrays:
            return None
        info = self.meta["arrays"][digest]
        return array_of(self.arrays[key], info["fmt"]), info

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = np.frombuffer(json.dumps(self.meta, default=str).encode(), dtype=np.uint8)
        # the whole archive first, then temp file + fsync + rename: a failed write leaves no half trace
        return atomic_write_npz(path, {"__meta__": blob, **self.arrays})


MAX_TRACE_BYTES = 2 << 30  # 2 GiB on disk; $HSPI_MAX_TRACE_MB overrides (the npz may unpack to 64x)
MAX_TRACE_ENV = "HSPI_MAX_TRACE_MB"


def load(path: str | Path) -> Trace:
    """Read a trace file; a truncated, corrupt, foreign or too large (``MAX_TRACE_BYTES``) file is
    a ValueError naming the path and what is wrong (a missing file stays an OSError)."""
    if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such trace file")
    try:
        with open_npz_bounded(path, size_limit(MAX_TRACE_BYTES, MAX_TRACE_ENV), kind="trace file") as z:
            if "__meta__" not in z.files:
                raise ValueError(f"{path}: not a {SCHEMA} trace (no __meta__ entry)")
            meta = json.loads(bytes(z["__meta__"]).decode())
            if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
                raise ValueError(f"{path}: not a {SCHEMA} trace (schema "
                                 f"{meta.get('schema') if isinstance(meta, dict) else None!r})")
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except ValueError as exc:
        if isinstance(exc, InputFileError) or str(exc).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: truncated or corrupt trace file, not a readable {SCHEMA} npz "
                         f"({type(exc).__name__}: {str(exc)[:120]})") from None
    except (KeyError, OSError, TypeError, RecursionError) as exc:  # the archive's own damage: InputFileError above
        raise ValueError(f"{path}: truncated or corrupt trace file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("ops", "arrays", "model", "run", "policy") if k not in meta]
    if missing:
        raise ValueError(f"{path}: corrupt {SCHEMA} trace (metadata lacks {', '.join(missing)})")
    if not isinstance(meta["ops"], list) or not all(isinstance(op, dict) for op in meta["ops"]) \
            or not isinstance(meta["arrays"], dict):
        raise ValueError(f"{path}: damaged {SCHEMA} trace: 'ops' must be a list of op records")
    lost = [d for d in meta["arrays"] if f"a/{d}" not in arrays]
    if lost:
        raise ValueError(f"{path}: corrupt {SCHEMA} trace ({len(lost)} stored array(s) listed but missing, "
                         f"e.g. {lost[0]})")
    return Trace(meta, arrays, str(path))


def check_pair(a: Trace, b: Trace) -> None:
    """ValueError naming the difference when two traces are not of the same model and prompt
    (zoo name, spec, seed, batch, length, tokens): their ops cannot be replayed on each other's
    inputs."""
    ma, mb = a.meta.get("model", {}), b.meta.get("model", {})
    for field_ in ("name", "seed", "spec"):
        if ma.get(field_) != mb.get(field_):
            what = "model" if field_ != "seed" else "model seed (weights)"
            va, vb = ma.get(field_), mb.get(field_)
            if field_ == "spec":
                va, vb = "spec A", "spec B (another config)"
            raise ValueError(f"traces of different models: {what} {va!r} ({a.source}) vs {vb!r} ({b.source})")
    ra, rb = a.meta.get("run", {}), b.meta.get("run", {})
    for field_ in ("batch", "length"):
        if ra.get(field_) != rb.get(field_):
            raise ValueError(f"traces of different prompts: {field_} {ra.get(field_)} ({a.source}) vs "
                             f"{rb.get(field_)} ({b.source})")
    if ra.get("tokens") != rb.get("tokens"):
        raise ValueError(f"traces of different prompts: the token ids differ ({a.source} vs {b.source})")


def record(model, call, *, keep: str = "all", keep_layers: int = 2, keep_keys: Iterable[str] = (),
           max_bytes: int = 256 << 20, row_cap_bytes: int = 1 << 20, regenerable: bool = False,
           inject: dict[str, Any] | None = None, profile: bool = True,
           reference: "Trace | None" = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Trace ``call()`` (one forward of ``model``): (meta with 'ops', arrays for the npz)."""
    import torch

    store = _Store(max_bytes, row_cap_bytes)
    rec = _Recorder(model, keep=keep, keep_layers=keep_layers, keep_keys=set(keep_keys), store=store,
                    regenerable=regenerable, inject=inject, reference=reference.by_key() if reference else None)
    rec.hooks()
    try:
        with torch.no_grad(), rec.mode():
            call()
    finally:
        rec.unhook()
    if inject and set(inject) - set(rec.injected):
        raise ValueError(f"inject: op key(s) not found in the pass: {sorted(set(inject) - set(rec.injected))}")
    kernel_note = None
    if profile:
        with torch.no_grad():
            kernels, kernel_note = _profile_kernels(model, call, len(rec.ops))
        for o, ks in zip(rec.ops, kernels):
            o["kernels"] = ks
    arrays = {f"a/{k}": v for k, v in store.arrays.items()}
    arrays.update(rec.samples)
    meta = {"ops": rec.ops, "arrays": store.info, "stored_bytes": store.used, "kernel_note": kernel_note,
            "injected": {k: repr(inject[k]) for k in rec.injected} if inject else {},
            "policy": {"keep": keep, "keep_layers": keep_layers, "keep_keys": sorted(keep_keys),
                       "max_bytes": max_bytes, "row_cap_bytes": row_cap_bytes, "params_by_reference": regenerable,
                       "reference": reference.source if reference else None,
                       "sample": SAMPLE}}
    return meta, arrays


def parse_inject(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=PLAN`` strings (PLAN as its repr, e.g. ``SplitK(4)``) to {key: plan}."""
    out = {}
    for item in items:
        key, _, text = item.partition("=")  # op keys hold no "=", plan reprs may (keywords)
        if not key:
            raise ValueError(f"--inject expects KEY=PLAN, got {item!r}")

        names = {n: getattr(P, n) for n in P.__all__}
        names["AttentionPlan"] = AttentionPlan
        try:
            out[key] = eval(text, {"__builtins__": {}}, names)  # plan repr only
        except Exception as exc:
            raise ValueError(f"--inject {key}: cannot read the plan {text!r}: {exc}") from None
    return out


def run_model(model_name: str = "tiny-llama", *, dtype: str = "bf16", batch: int = 1, length: int = 16,
              seed: int = 0, device: str = "cpu", attn: str = "sdpa", gemm: str = "torch",
              threads: int | None = None, keep: str = "auto", keep_layers: int = 2, keep_keys: Iterable[str] = (),
              max_bytes: int | None = None, row_cap_bytes: int = 1 << 20, inject: dict[str, Any] | None = None,
              profile: bool = True, model=None, reference: Trace | None = None) -> Trace:
    """Build (or take) a zoo model, run one forward on seeded prompts under an EQC, trace it."""
    import torch

    spec = zoo.get_spec(model_name)
    cfg = meqc.EQC(dtype=dtype, attn=attn, gemm=gemm, batch=batch)
    if threads:
        torch.set_num_threads(threads)
    if model is None:
        model, _ = zoo.build(spec, seed)
        model = model.to(device=device, dtype=getattr(torch, cfg.torch_dtype_name))
        model.eval()
    n_params = int(sum(p.numel() for p in model.parameters()))
    if keep == "auto":
        keep = "all" if n_params < 50_000_000 else "gemm"
    if max_bytes is None:
        max_bytes = (256 << 20) if keep == "all" else (12 << 20)
    vocab = int(model.config.vocab_size)
    tokens = prompts.random_tokens(batch, length, vocab, seed=seed)
    ids = torch.as_tensor(tokens, dtype=torch.long, device=device)
    regenerable = spec.arch != "local"
    result = {}

    def call():
        with meqc.applied(cfg, model, device):
            logits = model(input_ids=ids, use_cache=False).logits
        result.setdefault("logits", logits)  # the traced pass, not the profiler's (no injection there)

    t0 = time.perf_counter()
    meta, arrays = record(model, call, keep=keep, keep_layers=keep_layers, keep_keys=keep_keys,
                          max_bytes=max_bytes, row_cap_bytes=row_cap_bytes, regenerable=regenerable,
                          inject=inject, profile=profile, reference=reference)
    norm_params = {n for mn, m in model.named_modules() if "Norm" in type(m).__name__
                   for n2, _ in m.named_parameters(recurse=False) for n in [f"{mn}.{n2}" if mn else n2]}
    meta.update({
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.perf_counter() - t0, 3),
        "platform": plat.collect(), "label": None,
        "model": {"name": spec.name, "spec": spec.to_json(), "seed": seed, "n_params": n_params,
                  "params": {n: {"shape": list(p.shape), "init": ("ones" if n.endswith("weight") else "zeros")
                                 if n in norm_params else "normal"} for n, p in model.named_parameters()}},
        "run": {"dtype": dtype, "torch_dtype": cfg.torch_dtype_name, "batch": batch, "length": length,
                "device": device, "attn": attn, "gemm": gemm, "eqc": cfg.name,
                "threads": torch.get_num_threads(), "tokens": tokens.tolist()},
    })
    meta["label"] = plat.platform_label(meta["platform"]) + f" / {cfg.name}"
    logits = result["logits"]
    arr, fmt = _to_numpy(logits)
    meta["logits_digest"] = _digest(arr, fmt)
    return Trace(meta, arrays)


def regenerate_param(meta: dict, name: str):
    """The seeded parameter ``name`` of the traced model, in the run dtype, as a CPU tensor
    (bit-identical to zoo.build + cast: same per-name generator, same RNE cast)."""
    import torch

    model = meta["model"]
    p = model["params"][name]
    shape = tuple(p["shape"])
    if p["init"] == "ones":
        w = torch.ones(shape)
    elif p["init"] == "zeros":
        w = torch.zeros(shape)
    else:
        g = torch.Generator().manual_seed(zoo._param_seed(model["seed"], name))
        std = model["spec"]["std"]
        s = std if len(shape) <= 2 else (2.0 / max(1, int(np.prod(shape[1:])))) ** 0.5
        w = torch.randn(shape, generator=g, dtype=torch.float32) * s
    return w.to(getattr(torch, meta["run"]["torch_dtype"]))


# -- diff ------------------------------------------------------------------------------------
def _sample_ulps(a: np.ndarray | None, b: np.ndarray | None, fmt: str | None) -> dict | None:
    if a is None or b is None or a.shape != b.shape or fmt is None:
        return None
    u = features.ulp_distance(a, b, fmt)
    d = np.abs(u.distance[u.finite]).astype(np.float64)
    return {"n": int(a.size), "n_diff": int(np.count_nonzero(a != b)), "max_ulp": float(d.max()) if d.size else 0.0,
            "mean_ulp": float(d.mean()) if d.size else 0.0, "n_special": u.n_special, "fmt": fmt}


_FRAC = {"bf16": 7, "fp16": 10, "fp32": 23, "fp64": 52}


def _in_run_units(ulp: dict | None, run_fmt: str | None) -> float:
    """max ULP of a row expressed in ULPs of the run format (an fp32 intermediate of a bf16 run
    is scaled by 2^-(23-7)), so that per-layer maxima do not mix units."""
    if not ulp:
        return 0.0
    f = ulp.get("fmt")
    if run_fmt in _FRAC and f in _FRAC and _FRAC[f] > _FRAC[run_fmt]:
        return ulp["max_ulp"] / float(2 ** (_FRAC[f] - _FRAC[run_fmt]))
    return ulp["max_ulp"]


def _kept_ulps(a: "Trace", b: "Trace", oa: dict, ob: dict) -> dict | None:
    """ULP stats over the stored output arrays (leading rows) when both traces kept them: the
    strided sample can miss every differing element of an origin."""
    if not oa["outputs"] or not ob["outputs"]:
        return None
    da, db = oa["outputs"][0]["digest"], ob["outputs"][0]["digest"]
    ka, kb = f"a/{da}", f"a/{db}"
    if ka not in a.arrays or kb not in b.arrays:
        return None
    xa, xb = a.arrays[ka], b.arrays[kb]
    rows = min(xa.shape[0], xb.shape[0]) if xa.ndim and xb.ndim else None
    if rows is not None:
        xa, xb = xa[:rows], xb[:rows]
    r = _sample_ulps(xa.reshape(-1), xb.reshape(-1), a.meta["arrays"][da]["fmt"])
    if r is not None:
        r["basis"] = "kept" + ("" if a.meta["arrays"][da].get("rows") is None else f" (leading {rows} rows)")
    return r


def _fmt_of(info: dict) -> str | None:
    return _FMT.get(info["dtype"])


def diff(a: Trace, b: Trace) -> dict:
    """Align two traces by op key; classify every op; find the first origin of divergence.

    An op is ``equal`` (all output digests equal), an ``origin`` (inputs equal, some output
    differs: the divergence starts here), ``propagated`` (an input differs) or ``unmatched``
    (present in one trace only: another kernel path, e.g. SDPA flash vs math). When the first
    op with differing inputs has no origin before it, the divergence entered through unmatched ops,
    which are then reported as the origin region.
    """
    kb = b.by_key()
    keys_a = {o["key"] for o in a.ops}
    rows, origins, unmatched_a = [], [], []
    seen_diff = False
    first_region = None
    for oa in a.ops:
        ob = kb.get(oa["key"])
        if ob is None:
            unmatched_a.append(oa["key"])
            continue
        ins_eq = len(oa["inputs"]) == len(ob["inputs"]) and all(
            x["digest"] == y["digest"] for x, y in zip(oa["inputs"], ob["inputs"]))
        outs_eq = _results_equal(oa, ob)  # RNG-state outputs of SDPA ops are not results
        status = "equal" if outs_eq else ("origin" if ins_eq else "propagated")
        if not ins_eq and not seen_diff and first_region is None:
            first_region = {"before": oa["key"], "unmatched_a": list(unmatched_a),
                            "unmatched_b": [o["key"] for o in b.ops if o["key"] not in keys_a and o["i"] < ob["i"]]}
        if status != "equal":
            seen_diff = True
        ulp = None
        if oa["outputs"] and ob["outputs"]:
            ulp = _sample_ulps(a.sample(oa), b.sample(ob), _fmt_of(oa["outputs"][0]))
            if ulp is not None:
                ulp["basis"] = "sample"
            if status == "origin":  # the sample may miss every differing element: use kept arrays
                ulp = _kept_ulps(a, b, oa, ob) or ulp
        row = {"i": oa["i"], "key": oa["key"], "op": oa["op"], "layer": oa["layer"], "status": status,
               "inputs_equal": ins_eq, "kernels_a": oa.get("kernels", []), "kernels_b": ob.get("kernels", []),
               "ulp": ulp}
        if status == "origin":  # equal values in: do the inputs reach the kernel in other layouts?
            lay = {str(j): dl for j, (x, y) in enumerate(zip(oa["inputs"], ob["inputs"]))
                   if (dl := layout_diff(x, y))}
            if lay:
                row["input_layouts_differ"] = lay
        rows.append(row)
        if status == "origin":
            origins.append(row)
    unmatched_b = [o["key"] for o in b.ops if o["key"] not in keys_a]
    layers: dict[str, dict] = {}
    run_fmt = _FMT.get((a.meta.get("run") or {}).get("torch_dtype", ""))
    for r in rows:
        L = layers.setdefault(r["layer"], {"layer": r["layer"], "ops": 0, "differ": 0, "max_ulp": 0.0,
                                           "ulp_units": run_fmt, "max_ulp_by_fmt": {}})
        L["ops"] += 1
        if r["status"] != "equal":
            L["differ"] += 1
        if r["ulp"]:
            L["max_ulp"] = max(L["max_ulp"], _in_run_units(r["ulp"], run_fmt))
            f = r["ulp"].get("fmt")
            L["max_ulp_by_fmt"][f] = max(L["max_ulp_by_fmt"].get(f, 0.0), r["ulp"]["max_ulp"])
    first_diff = next((r for r in rows if r["status"] != "equal"), None)
    entered_unmatched = (first_diff is not None and first_diff["status"] == "propagated" and first_region is not None)
    return {
        "a": {"source": a.source, "label": a.meta.get("label"), "logits": a.meta.get("logits_digest")},
        "b": {"source": b.source, "label": b.meta.get("label"), "logits": b.meta.get("logits_digest")},
        "logits_equal": a.meta.get("logits_digest") == b.meta.get("logits_digest"),
        "n_ops": len(rows), "n_differ": sum(r["status"] != "equal" for r in rows),
        "first_origin": origins[0] if origins else None,
        "origins": origins,
        "divergence_via_unmatched": first_region if entered_unmatched else None,
        "unmatched_a": unmatched_a, "unmatched_b": unmatched_b,
        "later_divergences": [r["key"] for r in rows if r["status"] != "equal"][:200],
        "layers": list(layers.values()),
        "ops": rows,
    }


def plot_propagation(d: dict, path: str | Path) -> Path:
    """PNG: max |ULP| of each op's sampled output (A vs B) in execution order, origins marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = d["ops"]
    x = np.arange(len(rows))
    run_fmt = next((L.get("ulp_units") for L in d.get("layers", []) if L.get("ulp_units")), None)
    y = np.array([_in_run_units(r["ulp"], run_fmt) for r in rows])
    colors = {"equal": "#999999", "origin": "#d62728", "propagated": "#1f77b4"}
    fig, ax = plt.subplots(figsize=(12, 4))
    for status, c in colors.items():
        m = np.array([r["status"] == status for r in rows])
        if m.any():
            ax.scatter(x[m], y[m] + 1, s=8 if status != "origin" else 40, c=c, label=status,
                       marker="o" if status != "origin" else "*")
    prev = None
    for i, r in enumerate(rows):
        if r["layer"] != prev:
            ax.axvline(i, color="#eeeeee", lw=0.8, zorder=0)
            prev = r["layer"]
    ax.set_yscale("log")
    ax.set_xlabel("op (execution order of A)")
    ax.set_ylabel(f"1 + max |ULP| ({run_fmt or 'native'} units; sampled outputs)")
    fo = d.get("first_origin")
    title = f"{d['a']['label']}  vs  {d['b']['label']}"
    if fo:
        title += f"\nfirst origin: {fo['key']}"
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getbuffer())


def html_view(d: dict, png: Path | None, explanation: dict | None, path: str | Path) -> Path:
    """A single-file HTML page: summary, the propagation PNG (inline), per-layer and origin tables."""
    import base64
    import html

    parts = ["<html><head><meta charset='utf-8'><title>hspi trace</title>",
             "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}"
             "table{border-collapse:collapse}</style></head><body>",
             f"<h2>{html.escape(str(d['a']['label']))} vs {html.escape(str(d['b']['label']))}</h2>",
             f"<p>logits equal: {d['logits_equal']}; ops compared: {d['n_ops']}; differing: {d['n_differ']}</p>"]
    if png is not None and Path(png).exists():
        data = base64.b64encode(Path(png).read_bytes()).decode()
        parts.append(f"<img src='data:image/png;base64,{data}'>")
    parts.append("<h3>Layers</h3><table><tr><th>layer</th><th>ops</th><th>differ</th><th>max ULP</th></tr>")
    for L in d["layers"]:
        parts.append(f"<tr><td>{L['layer']}</td><td>{L['ops']}</td><td>{L['differ']}</td><td>{L['max_ulp']:.0f}</td></tr>")
    parts.append("</table><h3>Origins (inputs equal, output differs)</h3><table><tr><th>op</th><th>kernels A</th><th>kernels B</th></tr>")
    for r in d["origins"]:
        parts.append(f"<tr><td>{html.escape(r['key'])}</td><td>{html.escape(', '.join(r['kernels_a']))}</td>"
                     f"<td>{html.escape(', '.join(r['kernels_b']))}</td></tr>")
    parts.append("</table>")
    if explanation is not None and explanation.get("map_text"):
        parts.append("<h3>Per-op counterfactual map (own divergence vs propagated)</h3><pre>"
                     + html.escape(explanation["map_text"]) + "</pre>")
    if explanation is not None:
        parts.append("<h3>Explanation</h3><pre>" + html.escape(json.dumps(explanation, indent=1)[:200000]) + "</pre>")
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts))
