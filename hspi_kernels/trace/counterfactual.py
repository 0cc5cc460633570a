"""Per-op counterfactual map of a trace pair: does each op diverge *on its own*, or only because
its inputs already differ?

For traces A and B of the same model and prompt (:func:`tracer.check_pair`), every matched op
whose outputs differ is re-run with **B's implementation on A's recorded inputs** (and A's on B's);
the op has an *own divergence* when that output differs from the other side's recorded output
(``f_B(x_A) != y_A`` or ``f_A(x_B) != y_B``), else its difference is propagated. A side's
implementation is, in this order of preference:

- ``kernel``: the recorded aten op re-executed here, when the trace was recorded on this platform
  (same torch version and the same CPU model, or the same GPU model with CUDA here; a ``--gemm
  fixed`` GPU side re-runs under the fixed-order GEMM override), each input rebuilt in its recorded
  layout (strides, storage offset, address mod 256), and the re-execution reproduces that side's
  recorded outputs on its own inputs (digest equality of every *result* output: an SDPA op's
  RNG-state outputs are not results, :func:`tracer.result_outputs`);
- ``plan``: the first candidate that reproduces the side's bits N/N on all kept outputs of the op
  on its own inputs: GEMMs (mm / addmm) the plans :func:`explain.gemm_candidates` searches (split-K
  factors, layouts, tiles, tensor-core chains, CUDA-core orders), row reductions
  :func:`explain.reduction_candidates`, fused attention (``_scaled_dot_product_*``) the orders of
  :func:`numerics.attention_plan.candidates` (BLOCK_N, natural/log2 domain, exp, row sum, dots;
  output and log-sum-exp); a GPU's fused backends (flash, cuDNN, efficient) their fitted orders
  (:func:`sdpa_orders.fitted_plans`, split-KV when the recorded kernels name it) with the SFU
  instructions of the GPU the trace was recorded on (:func:`fitted_attention`; ``SFU_SOURCE``),
  and nothing else (the generic orders have no SFU). Candidates are screened on a few hundred
  outputs, the survivors are checked on all kept outputs in row chunks (``chunk_bytes``), so large
  ops fit in memory.

Plans are also searched for each side of an op with an own divergence, to name the cause:
``split-K factor`` / ``tile`` / ``tensor-core arithmetic`` / ``accumulation order`` (GEMMs and
reductions, from the two plans), ``kernel choice`` (the kernel names differ, or one side is
reproduced only by its recorded kernel), ``attention order`` (two attention plans: the fields
that differ) / ``attention backend`` (another kernel), ``elementwise library`` (other ops), and
``input layout`` (equal values, the same call and kernel, other strides/offset/alignment, and each
side's kernel re-run on the other side's values in its own layout gives its own bits), and
``undetermined`` (some side has no implementation here: the reason is given).

Fused attention ops present on one side only (another SDPA backend, or the math decomposition on
the other side) are *attention regions*: the other side's backend is re-run on this side's q, k, v
on its own device (``regions``: own divergence, N/N, the attention plans searched), and where q, k,
v are equal on both sides the replay is checked against the other side's own region output. Each
region's fused op is searched for its plan (``by_plan``: output and log-sum-exp N/N), and a fused
other side's re-run output for its backend's fitted plan (``other_plan``, output only: the re-run
returns no log-sum-exp).
"""

from __future__ import annotations

import ast
import re
from typing import Callable

import numpy as np

from hspi_kernels.fingerprint import features
from hspi_kernels.numerics import attention_plan as AP
from hspi_kernels.numerics.formats import get_format
from hspi_kernels.numerics import evaluate
from hspi_kernels.numerics import plans as P
from hspi_kernels.trace import explain as E
from hspi_kernels.trace import tracer as T
from hspi_kernels import platform as plat

__all__ = ["counterfactual", "merge_parts", "render_map", "explain_with_map", "SYMBOLS"]

SYMBOLS = {"equal": ".", "propagated": "~", "split-K factor": "S", "tile": "T", "tensor-core arithmetic": "C",
           "accumulation order": "R", "kernel choice": "K", "attention order": "A", "attention backend": "B",
           "elementwise library": "E", "input layout": "L", "undetermined": "?", "unmatched": "u",
           "other part": " "}  # differs, measured by another part of the map (counterfactual part=)
_MARK = "{'tensor': True}"


class _Unavailable(Exception):
    pass


# -- operands --------------------------------------------------------------------------------------
def _input_values(trace: T.Trace, op: dict) -> list[np.ndarray]:
    """Every tensor input of the op as an array (floats as float32 values, exact), or _Unavailable."""
    vals = []
    for info in op["inputs"]:
        try:
            v, rows = E._operand(trace, info)
        except E.MissingInputs as exc:
            raise _Unavailable(str(exc)) from None
        if rows is not None and op["op"] not in ("mm", "addmm"):
            raise _Unavailable(f"input {info['digest']} kept as its leading {rows} rows only")
        vals.append(np.asarray(v))
    return vals


def _output_bits(trace: T.Trace, op: dict, j: int) -> tuple[np.ndarray, str | None] | None:
    info = op["outputs"][j]
    key = f"a/{info['digest']}"
    if key not in trace.arrays:
        return None
    return trace.arrays[key], trace.meta["arrays"][info["digest"]]["fmt"]


def _to_bits(values: np.ndarray, fmt: str | None) -> np.ndarray:
    if fmt is None:
        return np.asarray(values)
    return E._round_bits(np.asarray(values, np.float32), fmt) if fmt in ("bf16", "fp16", "fp32") else values


def _compare(got_bits: np.ndarray, ref_bits: np.ndarray, fmt: str | None) -> dict:
    rows = min(got_bits.shape[0], ref_bits.shape[0]) if got_bits.ndim and ref_bits.ndim else None
    g, r = (got_bits, ref_bits) if rows is None else (got_bits[:rows], ref_bits[:rows])
    g, r = g.reshape(-1), r.reshape(-1)
    n_diff = int(np.count_nonzero(g != r))
    out = {"n": int(r.size), "n_equal": int(r.size) - n_diff, "n_diff": n_diff}
    if fmt in ("bf16", "fp16", "fp32", "fp64") and n_diff:
        h = features.ulp_histogram(g, r, fmt, mode="log2")
        out["ulp_histogram"] = {f"[{lo},{hi}]": int(c) for lo, hi, c in zip(h.lo, h.hi, h.counts) if c}
        out["n_special"] = int(h.n_special)
        d = features.ulp_distance(g, r, fmt)
        dist = np.abs(d.distance[d.finite]).astype(np.float64)
        out["max_ulp"] = float(dist.max()) if dist.size else 0.0
    return out


# -- the recorded kernel, re-executed ---------------------------------------------------------------
_PLATFORM: dict = {}


def _here() -> dict:
    if not _PLATFORM:

        _PLATFORM.update(plat.collect())
    return _PLATFORM


def _gpu_name(pf: dict) -> str | None:
    gpus = (pf.get("torch") or {}).get("gpus") or []
    return gpus[0].get("name") if gpus else None


def kernel_replayable(trace: T.Trace) -> str | None:
    """None when the trace's recorded kernels can be re-executed here, else why not: same torch,
    and the same CPU model (CPU traces) or the same GPU model with CUDA available (GPU traces)."""
    run, pf = trace.meta.get("run", {}), trace.meta.get("platform", {})
    here = _here()
    tv, hv = (pf.get("torch") or {}).get("version"), (here.get("torch") or {}).get("version")
    device = str(run.get("device"))
    if device.startswith("cuda"):
        if _gpu_name(here) is None:
            return f"recorded on {device} ({_gpu_name(pf)}), this process has no GPU"
        if _gpu_name(here) != _gpu_name(pf):
            return f"recorded on {_gpu_name(pf)!r}, here {_gpu_name(here)!r}"
    elif device != "cpu":
        return f"recorded on {device}, this process runs CPU and CUDA kernels only"
    elif pf.get("cpu_model") != here.get("cpu_model"):
        return f"recorded on CPU {pf.get('cpu_model')!r}, here {here.get('cpu_model')!r}"
    if tv != hv:
        return f"recorded with torch {tv}, here {hv}"
    return None


def _literal(text: str):
    marked = re.sub(r"torch\.(\w+)", r"'__torch__.\1'", text)
    return ast.literal_eval(marked)


def _rebuild(x, tensors: list, torch):
    if isinstance(x, str):
        if x == _MARK:
            return tensors.pop(0)
        if x.startswith("__torch__."):
            return getattr(torch, x[len("__torch__."):])
        if x.startswith("torch.") and re.fullmatch(r"torch\.\w+", x):
            return getattr(torch, x[6:])
        if x.startswith("{") or x.startswith("["):
            try:
                return _rebuild(_literal(x), tensors, torch)
            except (ValueError, SyntaxError):
                raise _Unavailable(f"argument {x[:40]!r} cannot be rebuilt") from None
        return x
    if isinstance(x, list):
        return [_rebuild(v, tensors, torch) for v in x]
    if isinstance(x, dict):
        return {k: _rebuild(v, tensors, torch) for k, v in x.items()}
    return x


def _placed(t, info: dict, device: str):
    """``t`` on ``device`` in the recorded layout of ``info`` (strides, storage offset, address mod
    256), or contiguous when the trace has no layout or the layout cannot be rebuilt (overlapping
    strides): the kernel then sees what the recording side's kernel saw."""
    import torch

    lay = info.get("layout")
    t = t.to(device)
    if not lay or not t.numel():
        return t
    stride, offset, mod = lay
    if len(stride) != t.ndim or any(st == 0 and n > 1 for st, n in zip(stride, t.shape)) or any(st < 0 for st in stride):
        return t.contiguous()
    span = offset + 1 + sum((n - 1) * st for n, st in zip(t.shape, stride))
    esize = t.element_size()
    slack = T.ALIGN_MOD // esize
    buf = torch.empty(span + slack, dtype=t.dtype, device=device)
    shift = next((k for k in range(slack) if (buf.data_ptr() + (k + offset) * esize) % T.ALIGN_MOD == mod), 0)
    view = buf.as_strided(tuple(t.shape), tuple(stride), shift + offset)
    try:
        view.copy_(t)
    except RuntimeError:  # strides that alias elements: give the kernel a contiguous copy
        return t.contiguous()
    return view


def _kernel_context(trace: T.Trace | None):
    """What wraps a re-execution of the trace's kernels: the fixed-order GEMM override when the
    side ran under it (``--gemm fixed`` on a GPU), else nothing."""
    import contextlib

    run = (trace.meta.get("run") if trace is not None else None) or {}
    if run.get("gemm") == "fixed" and str(run.get("device", "cpu")).startswith("cuda"):
        from hspi_kernels.kernels.triton.torch_override import fixed_order_matmul

        return fixed_order_matmul()
    return contextlib.nullcontext()


def _run_kernel(op: dict, values: list[np.ndarray], trace: T.Trace | None = None) -> list[np.ndarray]:
    """Re-execute the recorded aten op on ``values`` (its tensor inputs) on the recording device,
    each input in the layout ``op`` recorded for it: raw output bits per output."""
    import torch

    if getattr(trace, "slices", None) and op["key"] in trace.slices:  # a row of a batch: its batch kernel
        return trace.run_embedded(op, values, _run_kernel)
    name = op["aten"]
    if not name.startswith("aten."):
        raise _Unavailable(f"{name}: not an aten op")
    parts = name.split(".")
    fn = getattr(torch.ops.aten, parts[1])
    fn = getattr(fn, parts[2] if len(parts) > 2 else "default")
    device = str(((trace.meta.get("run") if trace is not None else None) or {}).get("device", "cpu"))
    tensors = []
    for j, (v, info) in enumerate(zip(values, op["inputs"])):
        dt = getattr(torch, info["dtype"])
        v = np.ascontiguousarray(v)
        if tuple(v.shape) != tuple(info["shape"]):  # a GEMM operand kept as its leading rows only
            raise _Unavailable(f"input {j} was kept as {list(v.shape)} of {list(info['shape'])} (leading rows only: "
                               "trace with a larger --row-cap-mb to re-execute the op)")
        t = torch.from_numpy(v if v.flags.writeable else v.copy()).to(device)  # cached params: read-only
        t = t.to(dt) if t.dtype != dt else t
        tensors.append(_placed(t, info, device))
    if not isinstance(op["args"], list) or len(op["args"]) != 2:
        raise _Unavailable("arguments not recorded")
    args = _rebuild(op["args"][0], tensors, torch)
    kwargs = _rebuild(op["args"][1], tensors, torch) if op["args"][1] else {}
    if tensors or not isinstance(kwargs, dict):
        raise _Unavailable("arguments cannot be matched to the recorded tensors")
    with torch.no_grad(), _kernel_context(trace):
        out = fn(*args, **kwargs)
    from torch.utils._pytree import tree_flatten

    return [T._to_numpy(t)[0] for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _kernel_reproduces(op: dict, outs: list[np.ndarray]) -> bool:
    """Every result output (not an SDPA op's RNG state: tracer.result_outputs) digest-equal."""
    if len(outs) != len(op["outputs"]):
        return False
    for j in T.result_outputs(op):
        a = np.asarray(outs[j])
        fmt = T._FMT.get(op["outputs"][j]["dtype"])
        if fmt is not None and a.dtype.kind in "iuf" and a.dtype.itemsize * 8 != get_format(fmt).total_bits:
            return False  # another dtype than recorded (e.g. a CPU kernel's bf16 mean vs CUDA's fp32)
        if T._digest(a, fmt) != op["outputs"][j]["digest"]:
            return False
    return True


# -- plans --------------------------------------------------------------------------------------------
def _gemm_parts(op: dict, values: list[np.ndarray]):
    if op["op"] == "addmm":
        kw = op["args"][1] if isinstance(op["args"], list) and len(op["args"]) > 1 else {}
        if isinstance(kw, str):
            kw = _literal(kw)
        if isinstance(kw, dict) and (kw.get("alpha", 1) != 1 or kw.get("beta", 1) != 1):
            raise _Unavailable("addmm with alpha/beta is not modelled")
        c, a, b = values
    else:
        a, b = values
        c = None
    return a.astype(np.float32), b.astype(np.float32), None if c is None else c.astype(np.float32)


def _gemm_eval(plan, epilogue: str, a, b, c, fmt: str, chunk_bytes: int, rows: int | None = None,
               cols: slice | None = None) -> np.ndarray:
    """Output bits of ``plan`` on a[:rows] @ b[:, cols] (+ c) in row chunks (each output is its own
    dot product in the plan's order, so a block of outputs needs only its rows and columns)."""
    if cols is not None:
        if c is not None:  # the bias (any shape that broadcasts to the output) of those columns
            c = np.broadcast_to(c, (a.shape[0], b.shape[1]))[:, cols]
        b = np.ascontiguousarray(b[:, cols])
    M = a.shape[0] if rows is None else min(rows, a.shape[0])
    K, N = b.shape
    step = max(1, chunk_bytes // max(1, 4 * (K + 2 * N)))
    out = []
    for r0 in range(0, M, step):
        r1 = min(M, r0 + step)
        ar = np.ascontiguousarray(a[r0:r1])
        cr = None if c is None else np.ascontiguousarray(np.broadcast_to(c, (a.shape[0], N))[r0:r1], np.float32)
        if cr is not None and epilogue == "bias-as-c":
            d = evaluate.gemm(plan, ar, b, cr)
        else:
            d = evaluate.gemm(plan, ar, b)
            if cr is not None:
                d = (d + cr).astype(np.float32)
        out.append(E._round_bits(d, fmt))
    return np.concatenate(out) if out else np.zeros((0, N), np.uint32)


def _full_check(e: dict, a, b, c, bits, fmt, chunk_bytes) -> dict | None:
    plan = P.plan_from_json(e["plan_json"])
    M, N = bits.shape
    # first a leading block of ~4096 outputs (cheap; most sample-level matches fail there): the
    # leading columns, at most 4096, of the leading rows -- columns, not whole rows, so a wide
    # output (an LM head's vocabulary) does not evaluate all of B per candidate plan
    cols = min(N, 4096)
    pre = max(1, 4096 // cols)
    if pre < M or cols < N:
        head = _gemm_eval(plan, e["epilogue"], a, b, c, fmt, chunk_bytes, rows=pre, cols=slice(0, cols))
        if not np.array_equal(head.reshape(-1), bits[:pre, :cols].reshape(-1)):
            return None
    # then every kept output, in column blocks from ~2^15 outputs doubling to ~2^20: a plan that
    # misses (bf16 outputs hide most order changes, so some pass the head) stops at its first
    # block that differs, after little work
    step, most = (max(cols, (1 << p) // max(1, M)) for p in (15, 20))  # block widths in columns
    j0, n_eq = 0, 0
    while j0 < N:
        sl = slice(j0, min(N, j0 + step))
        got = _gemm_eval(plan, e["epilogue"], a, b, c, fmt, chunk_bytes, cols=sl)
        n_eq += int(np.count_nonzero(got == bits[:, sl]))
        if n_eq != M * sl.stop:
            return None
        j0, step = sl.stop, min(2 * step, most)
    return {"kind": "plan", "plan": repr(plan), "plan_json": e["plan_json"], "epilogue": e["epilogue"],
            "matches": n_eq, "total": int(bits.size)}


# plans that reproduced an op of the same kind, shapes and kernels earlier in this map: tried first
# (checked N/N on all kept outputs like any candidate), the search runs only when none holds
_PLAN_CACHE: dict = {}
# plans that failed the N/N check of an op of the same key: not the order of that kernel at that
# shape (a kernel's order does not depend on the data), so they are not tried again for the key.
# Kept only where the key names the kernel: ops with recorded kernel names that were not injected
# (a CPU trace without kernel names, or an injected op, shares its key with other orders)
_FAILED: dict = {}


def _cache_key(trace: T.Trace, op: dict) -> tuple:
    return (op["op"], tuple(tuple(i["shape"]) for i in op["inputs"]), tuple(sorted(set(op.get("kernels", [])))),
            (trace.meta.get("run") or {}).get("gemm"), (trace.meta.get("run") or {}).get("device"))


def _gemm_plans(trace: T.Trace, op: dict, values, max_exact: int, chunk_bytes: int, extra=()) -> tuple[list[dict], int]:
    got = _output_bits(trace, op, 0)
    if got is None:
        raise _Unavailable("the output was not stored")
    bits, fmt = got
    a, b, c = _gemm_parts(op, values)
    rows = min(a.shape[0], bits.shape[0])
    a, bits = a[:rows], bits[:rows]
    key = _cache_key(trace, op)
    cached = [x for e in _PLAN_CACHE.get(key, []) if (x := _full_check(e, a, b, c, bits, fmt, chunk_bytes))]
    if cached:
        return [dict(x, cached=True) for x in cached], 0
    K = a.shape[1]
    in_fmt = T._FMT.get(op["inputs"][-1]["dtype"])
    on_gpu = trace.meta["run"].get("device", "cpu") != "cpu"
    named = bool(op.get("kernels")) and op.get("key") not in (trace.meta.get("injected") or {})
    failed = _FAILED.setdefault(key, set()) if named else set()
    cands = [p for p in list(extra) + E.gemm_candidates(K, in_fmt, E._archs(trace), (), tensor_core=on_gpu)
             if repr(p) not in failed]
    pos = E._positions(bits.shape, 256, 0)
    av, bv, cv = E._dot_terms(a, b, c, pos, bits.shape, False)
    eps = ("none",) if c is None else ("bias-as-c", "bias-after")
    screen = E._positions((len(pos),), min(16, len(pos)), 1)
    # many plans agree on 256 rounded outputs (bf16 hides most order changes): keep more sample-level
    # matches than asked for, then the first max_exact that hold N/N on all kept outputs
    found = E._search(cands, av, bv, cv, {"s": bits.reshape(-1)[pos]}, fmt, screen, eps,
                      max_exact=max(32, 8 * max_exact))["s"]
    exact = []
    for e in found["exact"]:  # N/N on all kept outputs, in row chunks
        if len(exact) >= max_exact:
            break
        if (x := _full_check(e, a, b, c, bits, fmt, chunk_bytes)):
            exact.append(x)
        else:
            failed.add(repr(P.plan_from_json(e["plan_json"])))
    if exact:
        _PLAN_CACHE[key] = exact
    return exact, len(cands)


# -- fused SDPA on the GPU: the fitted orders of trace.sdpa_orders, with this GPU's SFU instructions ----------
FUSED_GPU = {"_scaled_dot_product_flash_attention": "flash", "_scaled_dot_product_cudnn_attention": "cudnn",
             "_scaled_dot_product_efficient_attention": "efficient"}
# the SFU source (ex2.approx / rcp.approx / lg2.approx) of the fitted plans: None = this process's GPU
# (kernels.cuda.sfu.LiveSfu, recorded on the fly) where the trace was recorded on this GPU model; a test
# (or a CPU replay of recorded SFU outputs) puts an object with ``apply(op, x)`` here
SFU_SOURCE: list = [None]
_SFU: dict = {}


def _sfu_for(trace: T.Trace):
    """(SFU object, None) for the fitted plans of ``trace``'s fused attention ops, or (None, why not)."""
    if SFU_SOURCE[0] is not None:
        return SFU_SOURCE[0], None
    why = kernel_replayable(trace)
    if why:
        return None, f"the fitted fused-attention plans need the recording GPU's SFU instructions: {why}"
    if "live" not in _SFU:
        try:
            from hspi_kernels.kernels.cuda.sfu import LiveSfu
            from hspi_kernels.numerics import attention_ref as R

            _SFU["live"] = R.SfuOutputs(record=LiveSfu())
        except Exception as exc:  # no CUDA extension / driver: named, the map goes on without
            _SFU["live"] = None
            _SFU["why"] = f"the SFU instructions could not be run here ({type(exc).__name__}: {str(exc)[:80]})"
    return _SFU["live"], _SFU.get("why")


def _lse_ref(ref: np.ndarray, q_shape: tuple) -> np.ndarray | None:
    """A fused op's recorded log-sum-exp bits as [..., Hq, Sq]: cuDNN's trailing 1 dropped, the
    efficient kernel's padding of Sq (to a multiple of 32) cut; None when it is neither."""
    want = tuple(q_shape[:-1])
    r = np.asarray(ref)
    if r.size == int(np.prod(want)):
        return r.reshape(want)
    if r.ndim == len(want) and r.shape[:-1] == want[:-1] and r.shape[-1] > want[-1]:
        return np.ascontiguousarray(r[..., :want[-1]])
    return None


def _attention_counts(o, l, out_bits, lse_bits, fmt: str, q_shape: tuple) -> dict:
    """Equal bit patterns of a replayed attention output ``o`` (and log-sum-exp ``l``, when the op's
    recorded ``lse_bits`` are given) against the recorded ones: the counts of a plan entry."""
    out_bits = np.asarray(out_bits)
    lse = None if lse_bits is None else _lse_ref(lse_bits, q_shape)
    n_out = int(np.count_nonzero(_to_bits(o, fmt).reshape(-1) == out_bits.reshape(-1)))
    n_lse = None if lse is None else int(np.count_nonzero(_to_bits(l, "fp32").reshape(-1) == lse.reshape(-1)))
    return {"matches": n_out + (n_lse or 0), "total": int(out_bits.size) + (0 if lse is None else int(lse.size)),
            "out_equal": n_out, "out_total": int(out_bits.size), "lse_equal": n_lse,
            "lse_total": None if lse is None else int(lse.size)}


def fitted_attention(op: dict, q, k, v, out_bits, lse_bits, *, fmt: str, causal: bool, scale, sfu) -> dict:
    """The fitted orders of ``op``'s backend (:func:`sdpa_orders.fitted_plans`, split-KV when the
    recorded kernels name it, then :func:`sdpa_orders.variants` of them) on its q, k, v with the SFU
    instructions ``sfu``: ``{"exact": [entries with output and lse N/N], "best": the closest plan's
    counts, "candidates": n}``; screened on the first query head's output, then all outputs."""
    from hspi_kernels.trace import sdpa_orders as SO

    backend = FUSED_GPU[op["op"]]
    split = any("splitkv" in str(kn).lower() for kn in op.get("kernels", []))
    base = SO.fitted_plans(backend, fmt, q.shape[-1], split_kv=split)
    # BLOCK_N / tile variants only where they can change a bit: a block (tile) that covers every key
    # (query) is the same order whatever its size
    Sq, Sk = q.shape[-2], k.shape[-2]
    plans = list(dict.fromkeys(base + [p for p in SO.variants(base) if p.block_n < Sk or p.tile < Sq]))
    exact, best = [], None
    for plan in plans:
        try:
            o1 = AP.evaluate_attention(plan, q[..., :1, :, :], k[..., :1, :, :], v[..., :1, :, :], fmt=fmt,
                                       causal=causal, scale=scale, sfu=sfu)
            if not np.array_equal(_to_bits(o1, fmt).reshape(-1), out_bits[..., :1, :, :].reshape(-1)):
                continue
            o, l = AP.evaluate_attention(plan, q, k, v, fmt=fmt, causal=causal, scale=scale, sfu=sfu,
                                         with_lse=True)
        except ValueError:
            continue
        e = {"kind": "attention-plan", "plan": repr(plan), "plan_json": plan.to_json(), "fitted": backend,
             **_attention_counts(o, l, out_bits, lse_bits, fmt, q.shape)}
        if e["matches"] == e["total"]:
            exact.append(e)
            break
        if best is None or e["matches"] > best["matches"]:
            best = e
    return {"exact": exact, "best": best, "candidates": len(plans), "split_kv": split}


CPU_FLASH = "cpu-flash"


def cpu_flash(q, k, v, out_bits, lse_bits, *, fmt: str, causal: bool, scale, platform: dict | None = None) -> dict:
    """The replays of torch's CPU flash kernel (:data:`numerics.attention_cpu.ORDERS`: one order per
    torch release measured, AVX512, AMD Zen 4) on the op's q, k, v against its recorded output and
    log-sum-exp (None: output only): ``{"exact": entry}`` for the first order that gives every value
    (the trace's own torch release tried first), else ``{"note": why not, "best": counts}``. Every
    order runs whatever the recording platform (equal bits are their own evidence); where none is
    equal and ``platform`` (the trace's) is not a measured one, the note says how it differs
    (:func:`attention_cpu.platform_mismatch`)."""
    import dataclasses

    from hspi_kernels.numerics import attention_cpu as AC

    own = AC.release_of(((platform or {}).get("torch") or {}).get("version"))
    releases = sorted(AC.ORDERS, key=lambda r: r != own)  # the trace's release first, else as listed
    best, why = None, None
    for rel in releases:
        order, where = AC.ORDERS[rel]
        try:
            o, l = AC.replay(q, k, v, fmt=fmt, causal=causal, scale=scale, order=order)
        except (NotImplementedError, ValueError) as exc:
            why = str(exc)[:200]
            continue
        e = {"kind": CPU_FLASH, "plan": f"attention_cpu.ORDERS[{rel!r}] (torch {where['torch']}, {where['cpu_capability']})",
             "plan_json": dataclasses.asdict(order), **_attention_counts(o, l, out_bits, lse_bits, fmt, q.shape)}
        if e["matches"] == e["total"]:
            return {"exact": e}
        if best is None or e["matches"] > best["matches"]:
            best = e
    if best is None:
        return {"note": why}
    other = AC.platform_mismatch(platform) if platform is not None else ""
    return {"best": best, "note": f"the CPU flash replays ({len(releases)} torch releases) give at best output "
                                  f"{best['out_equal']}/{best['out_total']}"
                                  + (f", lse {best['lse_equal']}/{best['lse_total']}" if best["lse_total"] is not None else "")
                                  + f" ({best['plan']})"
                                  + (f" ({other}: its kernel's order is not modelled)" if other else "")}


def _attention_plans(trace: T.Trace, op: dict, values, max_exact: int) -> tuple[list[dict], int, str | None]:
    call = _attention_call(op)
    outs = [_output_bits(trace, op, j) for j in range(min(2, len(op["outputs"])))]
    if any(o is None for o in outs):
        raise _Unavailable("the outputs were not stored")
    q, k, v = values[:3]
    fmt = T._FMT.get(op["inputs"][0]["dtype"])
    on_gpu = trace.meta["run"].get("device", "cpu") != "cpu"
    note = None
    if op["op"] in FUSED_GPU:  # the backend's own fitted orders first (they need the GPU's SFU outputs)
        sfu, why = _sfu_for(trace)
        if sfu is None:
            note = why
        else:
            fit = fitted_attention(op, q, k, v, outs[0][0], outs[1][0] if len(outs) > 1 else None, fmt=fmt,
                                   causal=call["causal"], scale=call["scale"], sfu=sfu)
            if fit["exact"]:
                return fit["exact"][:max_exact], fit["candidates"], None
            b = fit["best"]
            note = (f"no fitted {FUSED_GPU[op['op']]} order of {fit['candidates']} reproduces it"
                    + (f" (closest: output {b['out_equal']}/{b['out_total']}, lse {b['lse_equal']}/{b['lse_total']}, "
                       f"{b['plan']})" if b else " (none passed the first head's output)"))
            # the generic orders below have no SFU and never gave a fused backend's lse (sdpa_orders.md)
            return [], fit["candidates"], note
    if op["op"] in T.ATTENTION_CPU_OPS:  # torch's CPU kernel, replayed (numerics.attention_cpu)
        got = cpu_flash(q, k, v, outs[0][0], outs[1][0] if len(outs) > 1 else None, fmt=fmt,
                        causal=call["causal"], scale=call["scale"], platform=trace.meta.get("platform", {}))
        if got.get("exact"):
            return [got["exact"]], 1, None
        note = got.get("note")
    cands = AP.candidates(fmt, q.shape[-2], causal=call["causal"], tensor_core=on_gpu)
    exact = []
    for plan in cands:
        try:  # screen on the first query head of the first batch entry, then all
            o1 = AP.evaluate_attention(plan, q[:1, :1], k[:1, :1], v[:1, :1], fmt=fmt, causal=call["causal"],
                                       scale=call["scale"])
            if not np.array_equal(_to_bits(o1, fmt), outs[0][0][:1, :1]):
                continue
            o, lse = AP.evaluate_attention(plan, q, k, v, fmt=fmt, causal=call["causal"], scale=call["scale"], with_lse=True)
        except ValueError:
            continue
        # counted as the fitted orders are: the lse in the op's layout (cuDNN's trailing 1 dropped, the
        # efficient kernel's Sq padding cut); a recorded lse in neither layout is never called reproduced
        e = _attention_counts(o, lse, outs[0][0], outs[1][0] if len(outs) > 1 else None, fmt, q.shape)
        if e["matches"] == e["total"] and (len(outs) < 2 or e["lse_total"] is not None):
            exact.append({"kind": "attention-plan", "plan": repr(plan), "plan_json": plan.to_json(), **e})
            if len(exact) >= max_exact:
                break
    return exact, len(cands), None if exact else note


def _attention_call(op: dict) -> dict:
    args = op["args"][0] if isinstance(op["args"], list) else []
    kw = op["args"][1] if isinstance(op["args"], list) and len(op["args"]) > 1 else {}
    if isinstance(kw, str):
        kw = _literal(kw)
    call = T.attention_call(op["op"], args, kw or {})
    if call["dropout"] or call["mask"]:
        raise _Unavailable("attention with dropout or a mask is not modelled")
    return call


def _reduction_plans(trace: T.Trace, op: dict, values, max_exact: int) -> tuple[list[dict], int]:
    args = op["args"][0] if isinstance(op["args"], list) else []
    dims = args[1] if len(args) > 1 else None
    x = values[0].astype(np.float32)
    dims = [dims] if isinstance(dims, int) else dims
    if not dims or [d % x.ndim for d in dims] != [x.ndim - 1]:
        raise _Unavailable(f"{op['op']} over dims {dims}: only last-dim reductions are modelled")
    got = _output_bits(trace, op, 0)
    if got is None:
        raise _Unavailable("the output was not stored")
    bits, fmt = got
    n = x.shape[-1]
    xs = x.reshape(-1, n)
    cands = E.reduction_candidates(n)
    exact = []
    for plan in cands:
        try:
            s = evaluate.evaluate(plan, xs)
        except ValueError:
            continue
        variants = [("sum", s)] if op["op"] == "sum" else [("div", (s / np.float32(n)).astype(np.float32)),
                                                           ("mul-recip", (s * (np.float32(1) / np.float32(n))).astype(np.float32))]
        for ep, val in variants:
            g = E._round_bits(val, fmt)
            if np.array_equal(g.reshape(-1), bits.reshape(-1)):
                exact.append({"kind": "plan", "plan": repr(plan), "plan_json": plan.to_json(), "epilogue": ep,
                              "matches": int(bits.size), "total": int(bits.size)})
        if len(exact) >= max_exact:
            break
    return exact, len(cands)


def _is_attention(op: str) -> bool:
    return "scaled_dot_product" in op and "attention" in op


def _find_plans(trace, op, values, max_exact, chunk_bytes) -> tuple[list[dict], int, str | None]:
    try:
        if op["op"] in ("mm", "addmm"):
            return (*_gemm_plans(trace, op, values, max_exact, chunk_bytes), None)
        if _is_attention(op["op"]) and op["op"] in T.ATTENTION_CPU_OPS | {"_scaled_dot_product_flash_attention",
                                                                          "_scaled_dot_product_cudnn_attention",
                                                                          "_scaled_dot_product_efficient_attention"}:
            return _attention_plans(trace, op, values, max_exact)
        if op["op"] in T.REDUCTION_OPS:
            return (*_reduction_plans(trace, op, values, max_exact), None)
    except _Unavailable as exc:
        return [], 0, str(exc)
    return [], 0, f"no plan family for {op['op']}"


def _apply_plan(impl: dict, op_other: dict, values_other, trace_other) -> list[np.ndarray]:
    """Output bits of a side's plan on the other side's inputs (the modelled outputs)."""
    fmt = T._FMT.get(op_other["outputs"][0]["dtype"])
    if impl["kind"] == CPU_FLASH:
        from hspi_kernels.numerics import attention_cpu as AC

        call = _attention_call(op_other)
        q, k, v = values_other[:3]
        order = AC.CpuFlashOrder(**{k_: tuple(tuple(x) for x in v_) if k_ == "q_splits" else v_
                                    for k_, v_ in impl["plan_json"].items()})
        try:
            o, lse = AC.replay(q, k, v, fmt=fmt, causal=call["causal"], scale=call["scale"], order=order)
        except NotImplementedError as exc:
            raise _Unavailable(str(exc)) from None
        outs = [_to_bits(o, fmt)]
        if len(op_other["outputs"]) > 1:
            outs.append(_to_bits(lse, T._FMT.get(op_other["outputs"][1]["dtype"])))
        return outs
    if impl["kind"] == "attention-plan":
        plan = AP.attention_plan_from_json(impl["plan_json"])
        call = _attention_call(op_other)
        q, k, v = values_other[:3]
        sfu = _sfu_for(trace_other)[0] if impl.get("fitted") else None
        o, lse = AP.evaluate_attention(plan, q, k, v, fmt=fmt, causal=call["causal"], scale=call["scale"], with_lse=True,
                                       sfu=sfu)
        outs = [_to_bits(o, fmt)]
        if len(op_other["outputs"]) > 1:
            ref = _output_bits(trace_other, op_other, 1)
            lb = _to_bits(lse, T._FMT.get(op_other["outputs"][1]["dtype"]))
            if ref is not None and ref[0].size != lb.size:
                # the efficient kernel pads Sq to a multiple of 32: the padding kept as recorded, the
                # modelled [..., :Sq] part written into it
                full = np.array(ref[0], copy=True)
                if _lse_ref(full, q.shape) is None or full.ndim != lb.ndim:
                    raise _Unavailable("the other side's log-sum-exp has a layout the plan does not give")
                full[..., :lb.shape[-1]] = lb
                lb = full
            outs.append(lb)
        return outs
    plan = P.plan_from_json(impl["plan_json"])
    if op_other["op"] in ("mm", "addmm"):
        a, b, c = _gemm_parts(op_other, values_other)
        return [_gemm_eval(plan, impl["epilogue"], a, b, c, fmt, _CHUNK[0])]
    x = values_other[0].astype(np.float32)
    n = x.shape[-1]
    s = evaluate.evaluate(plan, x.reshape(-1, n))
    if impl["epilogue"] == "div":
        s = (s / np.float32(n)).astype(np.float32)
    elif impl["epilogue"] == "mul-recip":
        s = (s * (np.float32(1) / np.float32(n))).astype(np.float32)
    return [E._round_bits(s, fmt).reshape(op_other["outputs"][0]["shape"])]


_CHUNK = [1 << 30]


# -- one op ---------------------------------------------------------------------------------------------
def _side(trace, op, values, kernel_why):
    """{'kernel': bool, 'why': reason when not, ...}: whether the recorded kernel reproduces the side."""
    if values is None:
        return {"kernel": False, "why": "inputs not available"}
    if kernel_why:
        return {"kernel": False, "why": kernel_why}
    try:
        outs = _run_kernel(op, values, trace)
    except _Unavailable as exc:
        return {"kernel": False, "why": str(exc)}
    except Exception as exc:  # an op that cannot be called like this
        return {"kernel": False, "why": f"re-execution failed: {type(exc).__name__}: {str(exc)[:120]}"}
    if _kernel_reproduces(op, outs):
        return {"kernel": True, "label": f"recorded kernel {op['aten']} (re-executed, all "
                                          f"{len(T.result_outputs(op))} result output(s) bit-equal)"}
    return {"kernel": False, "why": f"re-executing {op['aten']} here does not reproduce this side's outputs"}


def _cross(impl_kind, op_self, op_other, trace_other, values_other, plan=None, trace_self=None) -> dict | None:
    """Compare the side's implementation on the other side's inputs with the other side's outputs
    (a kernel replay also says whether it gave the implementing side's own recorded outputs:
    ``gives_own``, the determinism check behind an "input layout" cause)."""
    if values_other is None:
        return None
    try:
        if impl_kind == "kernel":
            outs = _run_kernel(op_self, values_other, trace_self)
            if _kernel_reproduces(op_other, outs):
                return {"impl": "kernel", "n_diff": 0, "outputs": "all (digests equal)"}
            res = {"impl": "kernel", "n": 0, "n_diff": 0, "gives_own": _kernel_reproduces(op_self, outs)}
            for j in T.result_outputs(op_other):
                da, db = op_self["outputs"][j]["dtype"], op_other["outputs"][j]["dtype"]
                if da != db:  # e.g. native_layer_norm's mean / rstd: bf16 on the CPU, fp32 on CUDA
                    res.setdefault("not_compared", []).append(f"output {j}: {da} here, {db} on the other side")
                    continue
                o = outs[j]
                ref = _output_bits(trace_other, op_other, j)
                if ref is None:
                    res["n_diff"] = None
                    res["note"] = "digest differs; the other side's output was not stored"
                    return res
                c = _compare(o, ref[0], ref[1])
                res["n"] += c["n"]
                res["n_diff"] += c["n_diff"]
                if c["n_diff"] and "ulp_histogram" in c and "ulp_histogram" not in res:
                    res.update({k: c[k] for k in ("ulp_histogram", "max_ulp") if k in c})
            if not res["n"]:
                res.update(n_diff=None, note="no result output of the same dtype on both sides")
            return res
        outs = _apply_plan(plan, op_other, values_other, trace_other)
    except (_Unavailable, ValueError) as exc:
        return {"impl": impl_kind, "n_diff": None, "note": str(exc)}
    res = {"impl": "plan " + plan["plan"], "n": 0, "n_diff": 0}
    for j, o in enumerate(outs):
        ref = _output_bits(trace_other, op_other, j)
        if ref is None:
            return {"impl": res["impl"], "n_diff": None, "note": "the other side's output was not stored"}
        c = _compare(o, ref[0], ref[1])
        res["n"] += c["n"]
        res["n_diff"] += c["n_diff"]
        if c["n_diff"] and "ulp_histogram" in c and "ulp_histogram" not in res:
            res.update({k: c[k] for k in ("ulp_histogram", "max_ulp") if k in c})
    res["n_equal"] = res["n"] - res["n_diff"]
    return res


def _family(plan_json) -> dict:
    return E._plan_family(plan_json)


def _cause(op: str, ia: dict, ib: dict, ka: list, kb: list) -> dict:
    pa, pb = ia.get("plans") or [], ib.get("plans") or []
    kernel_diff = bool(ka or kb) and sorted(set(ka)) != sorted(set(kb))
    kern_only = [s for s, i, p in (("A", ia, pa), ("B", ib, pb)) if i.get("kernel") and not p]
    if _is_attention(op):
        if any(x["kind"] == CPU_FLASH for x in pa + pb):  # torch's CPU kernel on one side: not a plan field
            kinds = {s_: (p[0]["plan"] if p else "its recorded kernel") for s_, p in (("A", pa), ("B", pb))}
            return {"category": "attention backend", "detail": f"A = {kinds['A']}; B = {kinds['B']}",
                    **({"plan_a": pa[0]["plan"]} if pa else {}), **({"plan_b": pb[0]["plan"]} if pb else {})}
        if pa and pb:
            best = min(((x, y) for x in pa for y in pb),
                       key=lambda xy: len(AP.diff_fields(AP.attention_plan_from_json(xy[0]["plan_json"]),
                                                         AP.attention_plan_from_json(xy[1]["plan_json"]))))
            fields = AP.diff_fields(AP.attention_plan_from_json(best[0]["plan_json"]),
                                    AP.attention_plan_from_json(best[1]["plan_json"]))
            detail = ", ".join(f"{k} {va!r} vs {vb!r}" for k, (va, vb) in fields.items()) or "no field differs"
            cat = "attention backend" if kernel_diff else "attention order"
            return {"category": cat, "detail": ("kernel names differ; " if kernel_diff else "") + detail,
                    "plan_a": best[0]["plan"], "plan_b": best[1]["plan"]}
        if (pa or pb) and kern_only:
            other = pa or pb
            return {"category": "attention backend",
                    "detail": f"{'B' if pb else 'A'} = {other[0]['plan']}; {kern_only[0]} = its recorded kernel "
                              f"(no attention plan candidate reproduces it)"}
        if kernel_diff:
            return {"category": "attention backend", "detail": "kernel names differ; no plan reproduces either side"}
        return {"category": "undetermined", "detail": "no attention plan reproduces both sides"}
    if op in ("mm", "addmm") or op in T.REDUCTION_OPS:
        if pa and pb:
            fa, fb = _family(pa[0]["plan_json"]), _family(pb[0]["plan_json"])
            if fa["arch"] != fb["arch"] and fa["arch"] and fb["arch"]:
                cat, detail = "tensor-core arithmetic", f"{fa['arch']} vs {fb['arch']} block arithmetic"
            elif fa["parts"] != fb["parts"]:
                cat, detail = "split-K factor", f"{fa['parts']} vs {fb['parts']} part(s)"
            elif (fa["layout"], fa["tile"]) != (fb["layout"], fb["tile"]):
                cat, detail = "tile", f"{fa['layout']}/{fa['tile']} vs {fb['layout']}/{fb['tile']}"
            else:
                cat, detail = "accumulation order", f"{pa[0]['plan']} vs {pb[0]['plan']}"
            if kernel_diff and cat == "accumulation order":
                cat = "kernel choice"
            return {"category": cat, "detail": detail, "plan_a": pa[0]["plan"], "plan_b": pb[0]["plan"]}
        if (pa or pb) and kern_only:
            side = "B" if pb else "A"
            f = _family((pb or pa)[0]["plan_json"])
            cat = "split-K factor" if f["parts"] > 1 else "kernel choice"
            return {"category": cat,
                    "detail": f"{side} = {(pb or pa)[0]['plan']}" + (f" ({f['parts']} parts)" if f["parts"] > 1 else "")
                              + f"; {kern_only[0]} = its recorded kernel (no candidate plan reproduces it)"}
        if kernel_diff:
            return {"category": "kernel choice", "detail": "kernel names differ; no plan reproduces either side"}
        return {"category": "undetermined", "detail": "no candidate plan reproduces "
                                                      + ("either side" if not (pa or pb) else ("A" if not pa else "B"))}
    return {"category": "elementwise library",
            "detail": ("kernel names differ; " if kernel_diff else "") + f"{op} gives other bits on the same inputs"}


def _op_row(ta, tb, oa, ob, d_row, max_exact, chunk_bytes, why_a, why_b) -> dict:
    row = {"key": oa["key"], "op": oa["op"], "layer": oa["layer"], "status": d_row["status"]}
    try:
        xa = _input_values(ta, oa)
    except _Unavailable as exc:
        xa, row["inputs_a"] = None, str(exc)
    try:
        xb = _input_values(tb, ob)
    except _Unavailable as exc:
        xb, row["inputs_b"] = None, str(exc)
    sa, sb = _side(ta, oa, xa, why_a), _side(tb, ob, xb, why_b)
    # plans only where no kernel reproduces the side (they are searched again below for a cause)
    for side, tr, op_, x in ((sa, ta, oa, xa), (sb, tb, ob, xb)):
        if not side["kernel"] and x is not None:
            side["plans"], side["candidates"], side["plan_note"] = _find_plans(tr, op_, x, max_exact, chunk_bytes)

    def impl_of(side):
        if side["kernel"]:
            return "kernel", None
        if side.get("plans"):
            return "plan", side["plans"][0]
        return None, None

    ka_kind, ka_plan = impl_of(sa)
    kb_kind, kb_plan = impl_of(sb)
    b_on_a = _cross(kb_kind, ob, oa, ta, xa, kb_plan, tb) if kb_kind else None
    a_on_b = _cross(ka_kind, oa, ob, tb, xb, ka_plan, ta) if ka_kind else None
    row["b_on_a"], row["a_on_b"] = b_on_a, a_on_b
    checks = [c for c in (b_on_a, a_on_b) if c is not None and c.get("n_diff") is not None]
    if any(c["n_diff"] for c in checks):
        row["own"] = True
    elif checks:
        row["own"] = False
    else:
        row["own"] = None
        row["why_undetermined"] = "; ".join(filter(None, [
            f"A: {sa.get('why', '')} {sa.get('plan_note') or ''}".strip() if not ka_kind else "",
            f"B: {sb.get('why', '')} {sb.get('plan_note') or ''}".strip() if not kb_kind else ""])) or \
            "the cross replays could not run"
    layout = _layout_cause(oa, ob, d_row, sa, sb, b_on_a, a_on_b) if row["own"] else None
    if layout:
        row["cause"] = layout
    elif row["own"]:
        for side, tr, op_, x in ((sa, ta, oa, xa), (sb, tb, ob, xb)):
            if "plans" not in side and x is not None:
                side["plans"], side["candidates"], side["plan_note"] = _find_plans(tr, op_, x, max_exact, chunk_bytes)
        row["cause"] = _cause(oa["op"], sa, sb, oa.get("kernels", []), ob.get("kernels", []))
    elif row["own"] is None:
        row["cause"] = {"category": "undetermined", "detail": row["why_undetermined"]}
    row["impl_a"], row["impl_b"] = (_impl_summary(s) for s in (sa, sb))
    return row


def _layout_cause(oa, ob, d_row, sa, sb, b_on_a, a_on_b) -> dict | None:
    """The "input layout" cause: equal input values, the same aten call and kernel names, inputs
    in other layouts, and each side's kernel, re-executed on the other side's values in its own
    layout, gives its own recorded outputs bit for bit (so the layout, not the values or chance,
    selects the other bits)."""
    if d_row["status"] != "origin" or oa["aten"] != ob["aten"] or oa["args"] != ob["args"]:
        return None
    if sorted(set(oa.get("kernels", []))) != sorted(set(ob.get("kernels", []))):
        return None
    if not (sa.get("kernel") and sb.get("kernel")):
        return None
    if not all(c is not None and c.get("gives_own") for c in (b_on_a, a_on_b)):
        return None
    lays = {j: dl for j, (x, y) in enumerate(zip(oa["inputs"], ob["inputs"])) if (dl := T.layout_diff(x, y))}
    if not lays:
        return None
    detail = "; ".join(f"input {j}: " + ", ".join(f"{k} {va} vs {vb}" for k, (va, vb) in dl.items())
                       for j, dl in lays.items())
    kern = ", ".join(sorted(set(oa.get("kernels", []))))[:120] or oa["aten"]
    return {"category": "input layout",
            "detail": f"same values, same call and kernel ({kern}); {detail}; each side's kernel re-run on the "
                      "other side's values in its own layout gives its own outputs bit for bit",
            "layouts": {str(j): dl for j, dl in lays.items()}}


def _impl_summary(side: dict) -> dict:
    out = {"kernel": side["kernel"]}
    for k in ("label", "why", "candidates", "plan_note"):
        if side.get(k):
            out[k] = side[k]
    if side.get("plans"):
        out["plans"] = [{k: p[k] for k in ("plan", "matches", "total", "epilogue") if k in p} for p in side["plans"]]
    return out


# -- attention regions present on one side only (another SDPA backend) -------------------------------------
_BACKENDS = {"_scaled_dot_product_flash_attention": "FLASH_ATTENTION",
             "_scaled_dot_product_flash_attention_for_cpu": "FLASH_ATTENTION",
             "_scaled_dot_product_efficient_attention": "EFFICIENT_ATTENTION",
             "_scaled_dot_product_cudnn_attention": "CUDNN_ATTENTION"}


def _module_of(key: str) -> str:
    return key.rsplit(":", 1)[0]


def _other_backend(op: dict, other: T.Trace) -> tuple[str, str]:
    """(SDPBackend name, label) that the other trace ran for the attention of ``op``'s module:
    its fused op there, or the math backend when it has none (a decomposed attention)."""
    mod = _module_of(op["key"])
    fused = [o["op"] for o in other.ops if _module_of(o["key"]) == mod and o["op"] in _BACKENDS]
    if fused:
        return _BACKENDS[fused[0]], fused[0]
    return "MATH", "math (decomposed)"


def _sdpa_under(backend: str, values: list[np.ndarray], op: dict, trace: T.Trace) -> np.ndarray:
    """F.scaled_dot_product_attention of ``op``'s q, k, v (in its recorded layouts) under one SDPA
    backend, on the device ``trace`` was recorded on (the backend's side): the output's raw bits."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    call = _attention_call(op)
    device = str((trace.meta.get("run") or {}).get("device", "cpu"))
    qkv = []
    for v, info in zip(values[:3], op["inputs"][:3]):
        t = torch.from_numpy(np.ascontiguousarray(v)).to(device).to(getattr(torch, info["dtype"]))
        qkv.append(_placed(t, info, device))
    q, k, v = qkv
    kw = {"is_causal": call["causal"], "scale": call["scale"]}
    if q.shape[-3] != k.shape[-3]:
        kw["enable_gqa"] = True
    with torch.no_grad(), sdpa_kernel([getattr(SDPBackend, backend)]):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)
    return T._to_numpy(out)[0]


def _region_rows(ta: T.Trace, tb: T.Trace, d: dict, why_a, why_b, part: tuple[int, int] = (0, 1)) -> list[dict]:
    """One row per fused attention op that only one trace has (the other ran another backend, or
    the math decomposition): the other side's backend re-run on this side's q, k, v (both on the
    recording device) against this side's recorded output. An own divergence of the attention
    region when they differ; the fused kernel itself re-executed must give its recorded output."""
    rows = []
    for side, tr, other, why, keys in (("A", ta, tb, why_a or why_b, d["unmatched_a"]),
                                       ("B", tb, ta, why_b or why_a, d["unmatched_b"])):
        by = tr.by_key()
        for key in [k for k in keys if by[k]["op"] in _BACKENDS][part[0]::part[1]]:
            op = by[key]
            row = {"key": key, "op": op["op"], "layer": op["layer"], "status": "unmatched", "side": side}
            backend, label = _other_backend(op, other)
            row["other_backend"] = label
            try:
                if why:
                    raise _Unavailable(why)
                x = _input_values(tr, op)
                ref = _output_bits(tr, op, 0)
                if ref is None:
                    raise _Unavailable("the output was not stored")
                own_ok = _kernel_reproduces(op, _run_kernel(op, x, tr))
                got = _sdpa_under(backend, x, op, other)  # the other side's backend, on its device
                c = _compare(got.reshape(ref[0].shape), ref[0], ref[1])
            except (_Unavailable, RuntimeError, ValueError) as exc:
                row.update({"own": None, "cause": {"category": "undetermined", "detail": str(exc)[:200]}})
                rows.append(row)
                continue
            row["other_on_this"] = dict(c, impl=f"SDPA {label}")
            row["kernel_reproduces"] = own_ok
            # where q, k, v are the other side's too (no divergence before the region), the replay
            # must be the other side's own region output: its last op of that size in the module
            ins = {i["digest"] for i in op["inputs"][:3]}
            mod, shape = _module_of(key), op["outputs"][0]["shape"]
            theirs = [o for o in other.ops if _module_of(o["key"]) == mod]
            if ins <= {i["digest"] for o in theirs for i in o["inputs"]} | {i["digest"] for o in other.ops
                                                                               for i in o["outputs"]}:
                last = [o for o in theirs if o["outputs"] and o["outputs"][0]["shape"] == shape
                        and (o["key"] in d["unmatched_a"] + d["unmatched_b"])]
                if last:
                    row["other_region_output_equal"] = T._digest(got, ref[1]) == last[-1]["outputs"][0]["digest"]
            row["own"] = bool(c["n_diff"]) if own_ok else None
            if own_ok:  # is the fused kernel's order one of the modelled attention orders (output and lse N/N)?
                plans, n_cands, note = _find_plans(tr, op, x, 1, _CHUNK[0])
                row["plans"] = {"found": [{k: p[k] for k in ("plan", "matches", "total", "fitted") if k in p}
                                          for p in plans], "candidates": n_cands, "note": note}
                row["by_plan"] = bool(plans)
                row["other_plan"] = _other_side_plan(op, label, x, got.reshape(ref[0].shape), ref[1], other)
            if row["own"]:
                detail = (f"{op['op']} vs {label} on the same q, k, v: {c['n_diff']}/{c['n']} "
                          f"outputs differ (max {c.get('max_ulp', 0):g} ulp)")
                if row.get("by_plan"):
                    detail += f"; this side = {row['plans']['found'][0]['plan']} (output and lse N/N)"
                op_ = row.get("other_plan") or {}
                if op_.get("found"):
                    detail += f"; {label} = {op_['found']['plan']} ({op_['found']['out_equal']}/{op_['found']['out_total']})"
                row["cause"] = {"category": "attention backend", "detail": detail}
            elif row["own"] is None:
                row["cause"] = {"category": "undetermined",
                                "detail": f"re-executing {op['aten']} does not reproduce its recorded output"}
            rows.append(row)
    return rows


def _other_side_plan(op: dict, label: str, x, got_bits, fmt, other: T.Trace) -> dict | None:
    """The other side's fused backend (``label``) on this side's q, k, v (``got_bits``, its output
    re-run here): is it the fitted order of that backend too (output N/N; the re-run returns no
    log-sum-exp)? None for a math (decomposed) other side: its ops are rows of the map."""
    def answer(found, best, candidates, note):
        short = (lambda e: {k: e[k] for k in ("plan", "out_equal", "out_total")})
        return {"found": short(found) if found else None, "closest": short(best) if best and not found else None,
                "candidates": candidates, "note": note}

    if label in T.ATTENTION_CPU_OPS:  # the CPU flash kernel re-run on this side's q, k, v: its replay?
        call = _attention_call(op)
        got = cpu_flash(*x[:3], got_bits, None, fmt=fmt, causal=call["causal"], scale=call["scale"],
                        platform=other.meta.get("platform", {}))
        return answer(got.get("exact"), got.get("best"), 1, got.get("note"))
    if label not in FUSED_GPU:
        return None
    sfu, why = _sfu_for(other)
    if sfu is None:
        return {"found": None, "note": why}
    call = _attention_call(op)
    fake = dict(op, op=label, kernels=[])
    try:
        fit = fitted_attention(fake, *x[:3], got_bits, None, fmt=fmt, causal=call["causal"], scale=call["scale"], sfu=sfu)
    except (ValueError, _Unavailable) as exc:
        return {"found": None, "note": str(exc)[:200]}
    return answer(fit["exact"][0] if fit["exact"] else None, fit["best"], fit["candidates"],
                  "split-KV not known for the re-run (no kernel names): the one-pass orders were tried")


def region_plan_counts(regions: list[dict]) -> dict:
    """Regions whose fused op a plan reproduces N/N (output and lse), and own regions whose fused other
    side (re-run on the same q, k, v) is one too (a math other side is not counted: its decomposed
    ops are rows of the map)."""
    return {"regions_by_plan": sum(1 for x in regions if x.get("by_plan")),
            "regions_own_both_plans": sum(1 for x in regions if x["own"] and x.get("by_plan")
                                          and (x.get("other_plan") or {}).get("found"))}


# -- the map ----------------------------------------------------------------------------------------------
def _slot(key: str, layer: str) -> str:
    m = re.match(r"^(.*?)(?:layers|h|blocks|layer)\.\d+\.?(.*)$", key)
    if m and layer.startswith("layer"):
        return m.group(2) or key
    return key


def _check_part(part) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in part)
    except (TypeError, ValueError):
        raise ValueError(f"part must be (index, count), got {part!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"part must be (index, count) with 0 <= index < count, got {part!r}")
    return i, n


def counterfactual(ta: T.Trace, tb: T.Trace, d: dict | None = None, *, max_exact: int = 3,
                   chunk_bytes: int = 1 << 30, progress: Callable[[int, int, str], None] | None = None,
                   part: tuple[int, int] = (0, 1)) -> dict:
    """The per-op counterfactual map of traces A and B (module docstring): one row per op with
    different outputs (own divergence, the cross replays with N/N and ULP histogram, each side's
    implementation, the cause), the layer x op grid and a summary.

    ``part=(i, n)``: only every n-th differing op and attention region from the i-th on (a map too
    long for one process or one device call, made in n parts -- in parallel or one after the
    other -- and joined by :func:`merge_parts`, which gives the map of ``part=(0, 1)``)."""
    i_part, n_parts = _check_part(part)
    T.check_pair(ta, tb)
    d = d or T.diff(ta, tb)
    _CHUNK[0] = int(chunk_bytes)
    _PLAN_CACHE.clear()
    _FAILED.clear()
    why_a, why_b = kernel_replayable(ta), kernel_replayable(tb)
    ka, kb = ta.by_key(), tb.by_key()
    rows = []
    todo = [r for r in d["ops"] if r["status"] != "equal"][i_part::n_parts]
    for n, r in enumerate(todo):
        if progress:
            progress(n, len(todo), r["key"])
        rows.append(_op_row(ta, tb, ka[r["key"]], kb[r["key"]], r, max_exact, chunk_bytes, why_a, why_b))
    regions = _region_rows(ta, tb, d, why_a, why_b, part=(i_part, n_parts))
    cmap = _assemble(_layout(d, ka, kb), rows, regions, {"a": why_a or "yes", "b": why_b or "yes"})
    cmap["part"] = [i_part, n_parts]
    return cmap


def _layout(d: dict, ka: dict, kb: dict) -> dict:
    """What the grid of a pair's map is drawn from, stored with every map (:func:`merge_parts`
    redraws a merged map from it): the pair, its op count, each op's (key, layer, diff status) in
    pair order, the unmatched ops' (key, layer)."""
    return {"a": d["a"], "b": d["b"], "n_ops": d["n_ops"],
            "ops": [[r["key"], r["layer"], r["status"]] for r in d["ops"]],
            "unmatched": [[k, (ka.get(k) or kb.get(k))["layer"]] for k in d["unmatched_a"] + d["unmatched_b"]]}


def _assemble(layout: dict, rows: list[dict], regions: list[dict], kernel_replay: dict) -> dict:
    """The map (grid, summary, own divergences) of the op rows and attention regions measured."""
    by_key = {r["key"]: r for r in rows}
    grid: dict[str, dict[str, str]] = {}
    slots: list[str] = []
    for key, layer, status in layout["ops"]:
        slot = _slot(key, layer)
        if slot not in slots:
            slots.append(slot)
        x = by_key.get(key)
        if x is None:
            sym = SYMBOLS["equal" if status == "equal" else "other part"]
        elif x["own"] is False:
            sym = SYMBOLS["propagated"]
        else:
            sym = SYMBOLS[(x.get("cause") or {}).get("category", "undetermined")]
        grid.setdefault(layer, {})[slot] = sym
    for key, layer in layout["unmatched"]:
        slot = _slot(key, layer)
        if slot not in slots:
            slots.append(slot)
        grid.setdefault(layer, {})[slot] = SYMBOLS["unmatched"]
    for x in regions:
        if x["own"]:
            grid.setdefault(x["layer"], {})[_slot(x["key"], x["layer"])] = SYMBOLS[x["cause"]["category"]]
    return {"a": layout["a"], "b": layout["b"], "layout": layout, "slots": slots, "grid": grid, "ops": rows,
            "regions": regions, **_summary(layout["n_ops"], rows, regions, [k for k, _ in layout["unmatched"]],
                                           kernel_replay)}


def _summary(n_ops: int, rows: list[dict], regions: list[dict], unmatched: list[str], kernel_replay: dict) -> dict:
    """The summary and own-divergence list of a map's op rows and regions."""
    own = [r for r in rows if r["own"]]
    summary = {"ops": n_ops, "differ": len(rows), "own": len(own),
               "attention_regions": len(regions), "regions_own": sum(1 for x in regions if x["own"]),
               "regions_undetermined": [x["key"] for x in regions if x["own"] is None],
               **region_plan_counts(regions),
               "own_explained": sum(1 for r in own if r["cause"]["category"] != "undetermined"),
               "propagated_only": sum(1 for r in rows if r["own"] is False),
               "undetermined": [r["key"] for r in rows if r["own"] is None or
                                (r["own"] and r["cause"]["category"] == "undetermined")],
               "unmatched": list(unmatched),
               "kernel_replay": dict(kernel_replay)}
    return {"summary": summary,
            "own_divergences": [{"key": r["key"], "layer": r["layer"], "cause": r["cause"],
                                 "b_on_a": r["b_on_a"], "a_on_b": r["a_on_b"]} for r in own]}


def merge_parts(parts: list[dict]) -> dict:
    """The map of ``part=(0, 1)`` from the maps of ``part=(i, n)`` for every i (any order; the maps
    alone, as the coverage job stores them: no trace needed): op rows and regions back in the pair's
    order (part i holds the i-th, (i+n)-th, ... of each list), the grid redrawn from the stored
    layout, the summary rebuilt. A missing, repeated or foreign part (another n, another pair) is a
    ValueError."""
    got = sorted(_check_part(m.get("part", (0, 1))) for m in parts)
    n = got[0][1] if got else 0
    if not got or got != [(i, n) for i in range(n)]:
        raise ValueError(f"merge_parts: need parts 0..n-1 of one n exactly once, got {got}")
    parts = sorted(parts, key=lambda m: m["part"][0])
    first = parts[0]
    if "layout" not in first:
        raise ValueError("merge_parts: the maps carry no layout (made before maps were stored in parts)")
    if any(m.get("layout") != first["layout"] for m in parts):
        raise ValueError("merge_parts: a part belongs to another pair of traces")

    def interleave(lists):
        out = []
        for j in range(max((len(x) for x in lists), default=0)):
            out += [x[j] for x in lists if j < len(x)]
        return out

    rows = interleave([m["ops"] for m in parts])
    regions = [x for side in ("A", "B") for x in interleave([[r for r in m["regions"] if r["side"] == side]
                                                               for m in parts])]
    return dict(_assemble(first["layout"], rows, regions, first["summary"]["kernel_replay"]),
                part=[0, 1], merged_from=n)


def render_map(cmap: dict, width: int = 80) -> str:
    """The layer x op grid as text, at most ``width`` columns: one symbol per op slot (legend
    below), then one line per op with an own divergence."""
    slots = cmap["slots"]
    layers = list(cmap["grid"])
    lab = max([len(x) for x in layers] + [6]) + 1
    per = max(10, width - lab)
    lines = [f"own-divergence map: {cmap['summary']['own']} op(s) diverge on their own, "
             f"{cmap['summary']['propagated_only']} only propagate, of {cmap['summary']['ops']}"[:width]]
    for start in range(0, len(slots), per):
        cols = slots[start:start + per]
        lines.append(" " * lab + "".join(str((start + i) // 10 % 10) if (start + i) % 10 == 0 else " "
                                         for i in range(len(cols))))
        for L in layers:
            cells = "".join(cmap["grid"][L].get(s, " ") for s in cols)
            lines.append(f"{L:<{lab}}" + cells)
    inv = {v: k for k, v in SYMBOLS.items()}
    used = sorted({c for g in cmap["grid"].values() for c in g.values()})
    legend = "  ".join(f"{c} {inv[c]}" for c in used)
    while legend:
        cut = legend[:width].rfind("  ") if len(legend) > width else len(legend)
        cut = cut if cut > 0 else width
        lines.append(legend[:cut])
        legend = legend[cut:].lstrip()
    for r in cmap["own_divergences"]:
        c = r["cause"]
        checks = [x for x in (r["b_on_a"], r["a_on_b"]) if x and x.get("n_diff") is not None]
        nn = ", ".join(f"{x['n'] - x['n_diff']}/{x['n']} equal" for x in checks if "n" in x)
        col = slots.index(_slot(r["key"], r["layer"]))
        lines.append(f"[{col}] {r['key']}"[:width])
        lines.append(f"    {c['category']}: {c['detail']}"[:width])
        if nn:
            lines.append(f"    cross replay: {nn}"[:width])
    for x in cmap.get("regions", []):
        if x["own"] is False:
            continue
        lines.append(f"[region {x['side']}] {x['key']}"[:width])
        tag = " (fused op by plan, N/N)" if x.get("by_plan") else ""
        lines.append(f"    {x['cause']['category']}{tag}: {x['cause']['detail']}"[:width])
    return "\n".join(lines)


def explain_with_map(ta: T.Trace, tb: T.Trace, d: dict | None = None, *, map_width: int = 80, **kw) -> dict:
    """:func:`explain.explain` plus the per-op counterfactual map as ``map`` and, rendered at
    ``map_width`` columns, ``map_text``; own divergences without a cause join ``unexplained``."""
    d = d or T.diff(ta, tb)
    out = E.explain(ta, tb, d, **kw)
    cmap = counterfactual(ta, tb, d)
    out["map"] = cmap
    out["map_text"] = render_map(cmap, map_width)
    # the divergence that enters through ops of one trace only (another attention backend) is
    # explained when every such op belongs to a module whose attention region the map named
    via = d.get("divergence_via_unmatched")
    if via:
        named = {_module_of(x["key"]) for x in cmap["regions"]
                 if x["own"] is not None and x["cause"]["category"] != "undetermined"}
        ops1 = via["unmatched_a"] + via["unmatched_b"]
        if ops1 and {_module_of(k) for k in ops1} <= named:
            msg = "divergence enters through ops present in one trace only: "
            out["unexplained"] = [u for u in out["unexplained"] if not u.startswith(msg)]
            regs = [x for x in cmap["regions"] if x["own"]]
            out["explained_regions"] = (f"the divergence enters through {len(cmap['regions'])} attention region(s) "
                                        f"present in one trace only, all named: {len(regs)} own divergence(s) "
                                        f"(attention backend), {sum(1 for x in cmap['regions'] if x.get('by_plan'))} "
                                        "fused op(s) reproduced by plan N/N")
    for r in cmap["ops"]:
        if r["own"] is None:
            out["unexplained"].append(f"{r['key']}: whether it diverges on its own is undetermined "
                                      f"({r.get('why_undetermined', '')[:160]})")
        elif r["own"] and r["cause"]["category"] == "undetermined":
            out["unexplained"].append(f"{r['key']}: own divergence, cause undetermined ({r['cause']['detail'][:160]})")
    return out
