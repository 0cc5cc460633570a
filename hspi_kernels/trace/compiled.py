"""Eager vs ``torch.compile``, op by op where the tracer cannot look (issue 17 (d)): a per-module
counterfactual map and its causes.

The dispatch-mode tracer sees a compiled graph only as it runs eagerly, so this map works one level
up: one eager forward records every target module's inputs and outputs (forward hooks; the norms,
the attention and MLP blocks of each decoder layer, the final norm and the head); then each module
is re-run **compiled** (``torch.compile`` of ``functional_call(module, state, args, kwargs)``, one
compilation per module kind, shared by the layers) on the **eager** inputs, and its output bits are
compared with the eager output. A difference there is the module's own (nothing upstream differs).
The inductor kernels the compiled module ran are recorded (their names say what was fused).

A cause is named only when a hypothesis reproduces the compiled bits N/N on all the module's
outputs, by an eager re-run that changes one thing:

- ``mlp``: *fused activation*: ``down(rn(act(fp32 gate) · fp32 up))`` (gated MLPs): inductor fuses
  ``act(gate) * up`` into one kernel that keeps the product in fp32 and rounds once, where eager
  rounds ``act(gate)`` to the model dtype first; ``c_proj(rn(act(fp32 c_fc(x))))`` (GPT-2's
  gelu_new, a chain of eager elementwise ops each rounded, one fused kernel compiled);
- ``self_attn`` (llama / qwen2 RoPE): *fused RoPE*: ``q·cos + rotate(q)·sin`` in fp32, one rounding
  (eager rounds each product and the sum);

otherwise the module is listed as an own divergence with its kernels and the hypotheses' counts.

    python -m hspi_kernels.trace.compiled OUT_DIR [--model tiny-llama] [--dtype bf16] [--device cpu]

Writes ``OUT_DIR/compile_map.json`` (platform metadata, per module: own divergence N/N, kernels,
hypotheses with their counts, the cause) and ``OUT_DIR/compile_map.md``; prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from hspi_kernels import platform as plat
from hspi_kernels.platform.errors import one_line
from hspi_kernels.platform.files import atomic_write_text, check_output_dir

__all__ = ["KINDS", "compile_map", "render", "main"]

KINDS = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp", "ln_1", "ln_2", "attn")
FINAL = ("model.norm", "transformer.ln_f", "lm_head")


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _bits_equal(torch, a, b) -> tuple[int, int]:
    a, b = _first(a).detach(), _first(b).detach()
    if a.shape != b.shape:
        return 0, int(b.numel())
    iv = {2: torch.int16, 4: torch.int32}[a.element_size()]
    return int((a.contiguous().view(iv) == b.contiguous().view(iv)).sum()), int(b.numel())


def _kind(name: str) -> str:
    return name if name in FINAL else name.rsplit(".", 1)[-1]


def _fused_mlp(torch, mod, args, kwargs):
    x = args[0] if args else kwargs["x"]
    g, u = mod.gate_proj(x), mod.up_proj(x)
    return mod.down_proj((mod.act_fn(g.float()) * u.float()).to(x.dtype))


@contextlib.contextmanager
def _fused_rope(torch, mod):
    mdl = sys.modules[type(mod).__module__]
    orig = getattr(mdl, "apply_rotary_pos_emb", None)
    if orig is None:
        raise LookupError("no apply_rotary_pos_emb in the module's source")

    def fused(q, k, cos, sin, *a, unsqueeze_dim=1, **kw):
        c, s = cos.unsqueeze(unsqueeze_dim).float(), sin.unsqueeze(unsqueeze_dim).float()
        out = []
        for t in (q, k):
            tf = t.float()
            out.append((tf * c + mdl.rotate_half(tf) * s).to(t.dtype))
        return tuple(out)

    mdl.apply_rotary_pos_emb = fused
    try:
        yield
    finally:
        mdl.apply_rotary_pos_emb = orig


def _hypotheses(torch, kind, mod, args, kwargs, compiled_out):
    """[(name, equal, total)] of the hypotheses that apply to this module kind."""
    out = []
    with torch.no_grad():
        if kind == "mlp" and all(hasattr(mod, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            eq, n = _bits_equal(torch, _fused_mlp(torch, mod, args, kwargs), compiled_out)
            out.append(("fused activation: down(rn(act(fp32 gate) * fp32 up))", eq, n))
        if kind == "mlp" and all(hasattr(mod, n) for n in ("c_fc", "c_proj", "act")):
            x = args[0] if args else kwargs["hidden_states"]
            h = mod.c_fc(x)
            eq, n = _bits_equal(torch, mod.c_proj(mod.act(h.float()).to(h.dtype)), compiled_out)
            out.append(("fused activation: c_proj(rn(act(fp32 c_fc(x))))", eq, n))
        if kind == "self_attn":
            try:
                with _fused_rope(torch, mod):
                    got = mod(*args, **kwargs)
                eq, n = _bits_equal(torch, got, compiled_out)
                out.append(("fused RoPE: q*cos + rotate(q)*sin in fp32, one rounding", eq, n))
            except LookupError:
                pass
    return out


def _kernel_names(prof) -> list[str]:
    keep = ("cpp_fused", "triton_", "extern_kernels", "mm", "sdpa", "attention")
    return sorted({e.name for e in prof.events() if any(k in e.name for k in keep)
                   and "dynamo" not in e.name and "pass." not in e.name and "CacheBase" not in e.name})[:12]


def compile_map(model_name: str = "tiny-llama", *, dtype: str = "bf16", length: int = 16, device: str = "cpu",
                seed: int = 0, mode: str | None = None) -> dict[str, Any]:
    """The per-module eager vs compiled map of one zoo model (module docstring)."""
    import torch
    import torch._dynamo
    import torch._inductor.config as ic
    from torch.func import functional_call

    from hspi_kernels.models import prompts, zoo

    t0 = time.perf_counter()
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    model, _ = zoo.build(model_name, seed)
    model = model.to(device=device, dtype=dt).eval()
    targets = {n: m for n, m in model.named_modules() if n and (_kind(n) in KINDS or n in FINAL)}
    caps: dict[str, dict] = {n: {} for n in targets}
    hooks = []
    for n, m in targets.items():
        hooks.append(m.register_forward_pre_hook(lambda mod, a, kw, _n=n: caps[_n].update(args=a, kwargs=kw),
                                                 with_kwargs=True))
        hooks.append(m.register_forward_hook(lambda mod, a, kw, out, _n=n: caps[_n].update(out=out), with_kwargs=True))
    vocab = model.config.vocab_size
    ids = torch.as_tensor(prompts.random_tokens(1, length, vocab, seed=seed), device=device)
    with torch.no_grad():
        eager_logits = model(ids, use_cache=False).logits
    for h in hooks:
        h.remove()
    ic.cpp.enable_kernel_profile = True
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    compiled: dict[str, Any] = {}
    rows = []
    for n, m in targets.items():
        kind = _kind(n)
        if "out" not in caps[n]:
            continue
        if kind not in compiled:
            def f(state, args, kwargs, _ref=m):
                return functional_call(_ref, state, args, kwargs)
            compiled[kind] = torch.compile(f, dynamic=False, mode=mode)
        state = {**dict(m.named_parameters()), **dict(m.named_buffers())}
        args, kwargs = caps[n]["args"], caps[n]["kwargs"]
        t1 = time.perf_counter()
        with torch.no_grad(), torch.profiler.profile() as prof:
            out = compiled[kind](state, args, kwargs)
        eq, tot = _bits_equal(torch, out, caps[n]["out"])
        row = {"module": n, "kind": kind, "own": eq != tot, "equal": eq, "total": tot,
               "kernels": _kernel_names(prof), "seconds": round(time.perf_counter() - t1, 2)}
        if row["own"]:
            hyp = _hypotheses(torch, kind, m, args, kwargs, out)
            row["hypotheses"] = [{"hypothesis": h, "equal": e, "total": t} for h, e, t in hyp]
            hit = [h for h, e, t in hyp if e == t]
            row["cause"] = hit[0] if hit else "undetermined (no hypothesis reproduces the compiled bits N/N)"
        rows.append(row)
    with torch.no_grad():
        whole = torch.compile(model, dynamic=False, mode=mode)(ids, use_cache=False).logits
    eq, tot = _bits_equal(torch, whole, eager_logits)
    torch._dynamo.reset()
    meta = plat.collect()
    own = [r for r in rows if r["own"]]
    return {"kind": "hspi-compile-map/1", "platform": meta, "label": plat.platform_label(meta),
            "model": model_name, "dtype": dtype, "length": length, "device": device, "mode": mode or "default",
            "logits_equal": eq, "logits_total": tot, "modules": rows,
            "summary": {"modules": len(rows), "own": len(own), "explained": sum(not r["cause"].startswith("undetermined")
                                                                                 for r in own)},
            "seconds": round(time.perf_counter() - t0, 1)}


def render(rec: dict) -> str:
    s = rec["summary"]
    lines = [f"# Eager vs torch.compile ({rec['mode']}), per module: {rec['model']} {rec['dtype']} on {rec['device']}", "",
             f"Logits: {rec['logits_equal']}/{rec['logits_total']} equal (whole model compiled vs eager). "
             f"Modules: {s['modules']}, own divergences {s['own']}, explained N/N {s['explained']}.", "",
             "| module | compiled on eager inputs: equal | cause | hypotheses (equal/total) | inductor kernels |",
             "|---|---|---|---|---|"]
    for r in rec["modules"]:
        hyp = "; ".join(f"{h['hypothesis'].split(':')[0]} {h['equal']}/{h['total']}" for h in r.get("hypotheses", []))
        lines.append(f"| {r['module']} | {r['equal']}/{r['total']} | {r.get('cause', '-') if r['own'] else 'no own divergence'} | "
                     f"{hyp or '-'} | {', '.join(k[:60] for k in r['kernels'][:3]) or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--mode", default=None, help="torch.compile mode (default: inductor default)")
    args = ap.parse_args(argv)
    try:
        check_output_dir(args.out_dir)
    except (OSError, ValueError) as exc:
        print(f"compile map: {exc}", file=sys.stderr)
        return 2
    from hspi_kernels.models import zoo

    try:
        zoo.get_spec(args.model)
    except (KeyError, ValueError) as exc:
        print(f"compile map: {exc}", file=sys.stderr)
        return 2
    try:
        rec = compile_map(args.model, dtype=args.dtype, length=args.length, device=args.device, mode=args.mode)
    except Exception as exc:  # torch.compile / a backend failing on this machine: one line, no traceback
        print(f"compile map: {one_line(exc, 380)}", file=sys.stderr)
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "compile_map.json", json.dumps(rec, indent=1, default=str))
    atomic_write_text(args.out_dir / "compile_map.md", render(rec))
    print(render(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
