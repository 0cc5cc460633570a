"""Black-box identification from sampled text (T >= 0, top-p, unknown or exposed seeds).

The observation is generated tokens only. The verifier replays every candidate stack white-box on
the same prompts and the *observed* prefixes (teacher forcing through the candidate's own decode
path: prefill, then one KV-cache decode step per token, exactly as the candidate would generate),
which gives the candidate's next-token sampling distribution at every observed step. On top:

- :func:`lr_test`: likelihood ratio of two candidates, ``Λ = Σ_t log q_B(x_t) − log q_A(x_t)``
  (``q`` = the sampling distribution mixed with ``floor`` of uniform mass, so tokens outside a
  candidate's top-p set stay finite). Under H0 "A generated the text", ``Λ − Σ_t μ_t`` is a
  martingale (μ_t = E_A[d_t | prefix]), so ``Z = (Λ − Σ μ_t) / sqrt(Σ σ_t²)`` is asymptotically
  N(0, 1) (martingale CLT), but the floor makes the increments heavy-tailed and that p-value
  conservative; the reported p-value is exact instead: each increment's randomised PIT in its
  conditional law under A, ``v_t = P_A(D_t > d_t) + U·P_A(D_t = d_t)``, is i.i.d. U(0, 1) under H0,
  combined by Stouffer, ``Z = Σ Φ⁻¹(1 − v_t) / √n``, p = ``P(N(0,1) >= Z)``. A token that A gives probability 0
  (outside its top-p set, or not its argmax at T = 0) refutes A exactly: p = 0.
- :func:`rank_test`: goodness of fit of one candidate: the randomised PIT of each observed token in
  the candidate's own order (rank by probability), ``u_t = F(<x_t) + U·p(x_t)``, is i.i.d.
  Uniform(0, 1) under H0 exactly; Kolmogorov–Smirnov against the uniform.
- :func:`seed_sync`: when the provider exposes the seed, the per-step uniforms of the sampler are
  known; regenerate each candidate's token with them on the observed prefix and count agreement
  (H0 "this candidate, bit-exact": every token agrees; p-value binomial with a disagreement rate
  ``eps``).
- :func:`identify`: posterior over candidates (uniform prior, the ``q`` likelihoods) plus every
  test above, each reporting its name, statistic and p-value.

Candidate stacks (:class:`Stack`): dtype (fp32 | bf16), attention (sdpa: the default SDPA
backend choice | sdpa-math | sdpa-flash | sdpa-efficient | sdpa-cudnn | eager, applied through
:func:`hspi_kernels.models.eqc.applied`), GEMM (torch | fixed: on the CPU every fp32 linear layer as a
sequential-K fp32 sum; on CUDA the project's fixed-order Triton GEMM through ``eqc.applied``, both
batch-invariant fixed orders), batch mode (batched: the rows of one call decoded together | rowwise:
every row alone, batch 1 | b<N>: consecutive chunks of N rows), deterministic mode (``det``: every
forward under ``torch.use_deterministic_algorithms(True)``, the previous setting restored after it; on
CUDA it needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (or ``:16:8``) in the environment before the
process's first cuBLAS call, and is refused without it), compile mode (``compile``: the forward
through ``torch.compile`` with inductor's default mode, one compiled model per platform, its
recompiles for the decode shapes left to dynamo), framework (``jax``: the same weights through
:mod:`hspi_kernels.models.jax_llama` under XLA, :class:`JaxDecoder`: no KV cache, each step a
forward of the sequence padded to a multiple of :data:`JAX_BUCKET` tokens with the head at the
last real position, so one executable per bucket; llama / qwen2 models only), and an injected
±1-ulp perturbation of the fp32 logits on a fixed half of the vocabulary. A stack the device cannot run (a CUDA backend on
the CPU, Triton missing, ...) is refused by :func:`unsupported_reason` / :class:`StackUnsupported`
with a message, never a traceback from deep inside a forward.

:class:`Platform` runs the tiny seeded Llama on the CPU by default (the tests' reference) or any zoo
model (``spec="qwen2.5-0.5b"``) on CUDA when available. :meth:`Platform.decoder` is the decode loop
itself (prefill, then one KV-cache step per token, per batch chunk): :meth:`Platform.generate`,
:meth:`Platform.replay` and the GPU driver (:mod:`hspi_kernels.models.gpu_blackbox`, lockstep decoding
of several candidates on the same prefixes) all go through it.

The sampler is the project's own (documented, not vLLM's): probabilities in float64 from the fp32
logits, ``softmax(logits / T)``, top-p keeps the smallest prefix of the probability-sorted vocabulary
(ties by token id) whose mass reaches ``top_p``, renormalised; a token is drawn by inverse CDF in
that order from ``u ~ U(0, 1)`` of ``numpy.random.default_rng([seed, request, step])``; T = 0 is
argmax (lowest id on ties). :func:`sampling_probs_torch` / :func:`draw_torch` are the same definition
in torch float64 on the logits' device (the GPU driver); their sums run in another order than numpy's,
so a probability can differ from :func:`sampling_probs` in the last bits (a top-p boundary or an
inverse-CDF draw exactly at such a tie can differ; generation and replay inside one run use one
implementation, so they agree bit for bit).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from hspi_kernels.models import zoo

__all__ = ["Stack", "StackUnsupported", "unsupported_reason", "Platform", "Decoder", "JaxDecoder", "tiny_spec", "sampling_probs",
           "sampling_probs_torch", "uniforms", "draw", "draw_torch", "lr_test", "rank_test", "seed_sync", "identify",
           "log_likelihood"]

ATTNS = ("sdpa", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "eager")
FRAMEWORKS = ("torch", "jax")
JAX_BUCKET = 64  # the jax decoder pads sequences to a multiple of this (one XLA executable per bucket)
DET_WORKSPACE_CONFIGS = (":4096:8", ":16:8")  # what torch's deterministic mode accepts for cuBLAS


def tiny_spec(std: float = 0.3):
    """The tiny Llama of the zoo with a larger weight scale (peaked next-token distributions:
    at std 0.08 the tiny model is almost uniform over its 512 tokens)."""

    base = zoo.SPECS["tiny-llama"]
    return zoo.ModelSpec(f"tiny-llama-std{std}", "llm", "llama", dict(base.config), std=std,
                         note="tiny-llama config, larger weight std for peaked sampling distributions")


@dataclass(frozen=True)
class Stack:
    """One serving stack (a candidate platform). Names are dot-joined tokens, order-free when
    parsed; the default attention (``sdpa``) is left out of the name, so the CPU names
    (``fp32.torch.batched``) are unchanged: ``Stack.parse(s.name) == s`` for every stack."""

    dtype: str = "fp32"       # fp32 | bf16
    gemm: str = "torch"       # torch | fixed (CPU: sequential-K fp32 linears; CUDA: fixed-order Triton GEMM)
    batch: str = "batched"    # batched | rowwise | b<N> (chunks of N rows)
    ulp: int = 0              # logits += ulp * 1 ulp on the even token ids (fp32 logits)
    attn: str = "sdpa"        # sdpa | sdpa-math | sdpa-flash | sdpa-efficient | sdpa-cudnn | eager
    det: bool = False         # forwards under torch.use_deterministic_algorithms(True) (name token "det")
    compile: bool = False     # the forward through torch.compile (inductor default; name token "compile")
    framework: str = "torch"  # torch | jax (jax_llama on the same weights; name token "jax")

    def __post_init__(self):
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype {self.dtype!r} not in ('fp32', 'bf16')")
        if self.gemm not in ("torch", "fixed"):
            raise ValueError(f"gemm {self.gemm!r} not in ('torch', 'fixed')")
        if self.attn not in ATTNS:
            raise ValueError(f"attention {self.attn!r} not in {ATTNS}")
        if not (self.batch in ("batched", "rowwise") or _chunk_of(self.batch) is not None):
            raise ValueError(f"batch {self.batch!r}: batched | rowwise | b<N> with N >= 1")
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"framework {self.framework!r} not in {FRAMEWORKS}")
        if self.framework == "jax":
            torch_only = [n for n, bad in (("gemm fixed", self.gemm != "torch"), (f"attention {self.attn}", self.attn != "sdpa"),
                                           ("det", self.det), ("compile", self.compile)) if bad]
            if torch_only:
                raise ValueError(f"the jax stack has XLA's own GEMM and attention; {', '.join(torch_only)} "
                                 "are torch settings")

    @property
    def name(self) -> str:
        if self.framework == "jax":
            parts = [self.dtype, "jax", self.batch]
        else:
            parts = [self.dtype] + ([self.attn] if self.attn != "sdpa" else []) + [self.gemm, self.batch]
        if self.det:
            parts.append("det")
        if self.compile:
            parts.append("compile")
        if self.ulp:
            parts.append(f"ulp{self.ulp:+d}")
        return ".".join(parts)

    @classmethod
    def parse(cls, text: str) -> "Stack":
        kw: dict[str, Any] = {}
        for tok in text.split("."):
            if tok in ("fp32", "bf16"):
                kw["dtype"] = tok
            elif tok in ("torch", "fixed"):
                kw["gemm"] = tok
            elif tok in ATTNS:
                kw["attn"] = tok
            elif tok in ("batched", "rowwise") or _chunk_of(tok) is not None:
                kw["batch"] = tok
            elif tok == "det":
                kw["det"] = True
            elif tok == "compile":
                kw["compile"] = True
            elif tok == "jax":
                kw["framework"] = "jax"
            elif tok.startswith("ulp") and tok[3:].lstrip("+-").isdigit():
                kw["ulp"] = int(tok[3:])
            elif tok:
                raise ValueError(f"unknown stack token {tok!r} in {text!r}")
        return cls(**kw)

    def chunk(self, rows: int) -> int:
        """Rows per forward for a call of ``rows`` rows."""
        if self.batch == "batched":
            return max(1, rows)
        if self.batch == "rowwise":
            return 1
        return int(_chunk_of(self.batch))

    def eqc(self, device: str):
        """The EQC that :func:`hspi_kernels.models.eqc.applied` switches for this stack on ``device``
        (on the CPU the fixed order is this module's own fp32 linears, not the CUDA Triton override)."""
        from hspi_kernels.models.eqc import EQC

        gemm = self.gemm if str(device).startswith("cuda") else "torch"
        return EQC(dtype=self.dtype, attn=self.attn, gemm=gemm)


def _chunk_of(tok: str) -> int | None:
    if len(tok) > 1 and tok[0] == "b" and tok[1:].isdigit() and int(tok[1:]) >= 1:
        return int(tok[1:])
    return None


def master_key_of(spec, seed: int) -> tuple:
    """The model cache's key of the fp32 CPU master weights of (spec, seed)."""
    return (spec.name, seed, "master")


class StackUnsupported(RuntimeError):
    """This stack cannot run on this device (the message says why; callers print it and skip)."""


def unsupported_reason(stack: "Stack | str", device: str) -> str | None:
    """Why ``stack`` cannot run on ``device`` ("cpu" | "cuda[:i]"), or None (the EQC rules of
    :func:`hspi_kernels.models.eqc.unsupported_reason`, plus CUDA/Triton availability)."""
    stack = Stack.parse(stack) if isinstance(stack, str) else stack
    try:
        import torch
    except ImportError as exc:
        return f"torch is not importable ({exc})"
    device = str(device)
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        return f"{stack.name}: device {device!r} asked for but CUDA is not available (torch {torch.__version__})"
    if not cuda and device != "cpu":
        return f"{stack.name}: unknown device {device!r} (cpu | cuda)"
    from hspi_kernels.models import eqc as meqc

    if stack.framework == "jax":
        from hspi_kernels.models import jax_llama

        _, _, why = jax_llama.backend(device)
        return f"{stack.name}: {why}" if why else None
    if stack.compile:
        from hspi_kernels.models.stack import check_setting  # one definition of what inductor needs

        why = check_setting("compile", "compiled", device)
        if why:
            return f"{stack.name}: {why}"
    reason = meqc.unsupported_reason(stack.eqc(device), device)
    if reason:
        return f"{stack.name}: {reason}"
    if cuda and stack.gemm == "fixed":
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            return (f"{stack.name}: the fixed-order GEMM needs Triton (pip install triton==3.6.0), "
                    f"not importable here ({exc})")
    if cuda and stack.det and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in DET_WORKSPACE_CONFIGS:
        return (f"{stack.name}: torch.use_deterministic_algorithms(True) on CUDA needs CUBLAS_WORKSPACE_CONFIG "
                f"in {DET_WORKSPACE_CONFIGS} set before the process's first cuBLAS call (it is "
                f"{os.environ.get('CUBLAS_WORKSPACE_CONFIG')!r})")
    if not cuda and stack.gemm == "fixed" and stack.dtype != "fp32":
        return f"{stack.name}: the CPU fixed-order linears are fp32 only (bf16 would silently run torch's GEMM)"
    return None


@contextlib.contextmanager
def _fixed_order_linears():
    """Every ``F.linear`` as ``Σ_k x[..., k] * w[:, k]`` accumulated in fp32 in k order (one
    rounding per product and per add, no FMA), bias added last: a batch-invariant fixed order."""
    import torch
    from torch.overrides import TorchFunctionMode

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.nn.functional.linear:
                x, w = args[0], args[1]
                b = args[2] if len(args) > 2 else kwargs.get("bias")
                if x.dtype == torch.float32:
                    acc = x[..., 0:1] * w[:, 0]
                    for k in range(1, w.shape[1]):
                        acc = acc + x[..., k:k + 1] * w[:, k]
                    return acc if b is None else acc + b
            return func(*args, **kwargs)

    with Mode():
        yield


@contextlib.contextmanager
def _deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True)`` (errors, not warnings, on an op without a
    deterministic implementation), the previous mode restored on exit."""
    import torch

    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


def _cache_kwarg(model) -> str:
    """The keyword the model's forward takes its KV cache by (``cache`` in transformers >= 5.2x,
    ``past_key_values`` before): passing the wrong one is silently swallowed by ``**kwargs``."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out):
    cache = out.get("cache") if hasattr(out, "get") else None  # ModelOutput: a dict of the set fields
    return cache if cache is not None else getattr(out, "past_key_values", None)


class Decoder:
    """One candidate's decode state over a block of rows: :meth:`first` runs the prefill and
    returns the fp32 logits [B, V] of the next token, :meth:`step` feeds one token per row and
    returns the next logits. Rows are split into the stack's chunks (batched: one chunk;
    rowwise: one row each; b<N>: N rows), each its own batch with its own KV cache. Logits are
    torch fp32 tensors on the platform's device."""

    def __init__(self, platform: "Platform", prompts):
        torch = platform.torch
        self.p = platform
        x = prompts if isinstance(prompts, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(prompts, dtype=np.int64))
        self.prompts = x.to(device=platform.device, dtype=torch.long)
        rows = int(self.prompts.shape[0])
        c = platform.stack.chunk(rows)
        self.slices = [slice(i, min(rows, i + c)) for i in range(0, rows, c)]
        self.caches: list = [None] * len(self.slices)

    def _run(self, inputs) -> Any:
        p, torch = self.p, self.p.torch
        outs = []
        with p.applied():
            for i, sl in enumerate(self.slices):
                kw: dict[str, Any] = {"use_cache": True}
                if p.device != "cpu":  # the prefill's head on the last position only (memory at V = 152k);
                    kw["logits_to_keep"] = 1  # the CPU keeps the full head GEMM (its record's bits)
                if self.caches[i] is not None:
                    kw[p.cache_kwarg] = self.caches[i]
                out = p.forward(inputs[sl], **kw)
                self.caches[i] = _out_cache(out)
                outs.append(out.logits[:, -1])
        return p.final_logits(torch.cat(outs) if len(outs) > 1 else outs[0])

    def first(self):
        return self._run(self.prompts)

    def step(self, tokens):
        torch = self.p.torch
        t = tokens if isinstance(tokens, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
        return self._run(t.to(device=self.p.device, dtype=torch.long).reshape(-1, 1))


class JaxDecoder:
    """The decode loop of a ``jax`` stack, with :class:`Decoder`'s interface: per batch chunk the
    token sequence so far, padded with token 0 to the next multiple of :data:`JAX_BUCKET` (causal
    attention: the padding is after every real position) and run whole through
    ``jax_llama.make_forward(position=True)`` with the head at the last real position. No KV
    cache: every step recomputes the prefix (XLA's own kernels at the padded shape; generation and
    replay run this same loop, so they agree bit for bit). Logits are torch fp32 on the platform's
    device, like :class:`Decoder`'s."""

    def __init__(self, platform: "Platform", prompts):
        torch = platform.torch
        self.p = platform
        x = prompts.cpu().numpy() if isinstance(prompts, torch.Tensor) else np.asarray(prompts)
        self.seqs_all = np.ascontiguousarray(x, dtype=np.int64)
        rows = int(self.seqs_all.shape[0])
        c = platform.stack.chunk(rows)
        self.slices = [slice(i, min(rows, i + c)) for i in range(0, rows, c)]

    def _run(self) -> Any:
        torch, fn = self.p.torch, self.p.jax_forward
        n = self.seqs_all.shape[1]
        width = -(-n // JAX_BUCKET) * JAX_BUCKET
        padded = np.zeros((self.seqs_all.shape[0], width), dtype=np.int64)
        padded[:, :n] = self.seqs_all
        outs = [fn(padded[sl], n - 1)[:, 0] for sl in self.slices]
        lo = torch.from_numpy(np.ascontiguousarray(np.concatenate(outs), dtype=np.float32)).to(self.p.device)
        return self.p.final_logits(lo)

    def first(self):
        return self._run()

    def step(self, tokens):
        t = tokens.cpu().numpy() if isinstance(tokens, self.p.torch.Tensor) else np.asarray(tokens)
        self.seqs_all = np.concatenate([self.seqs_all, np.asarray(t, dtype=np.int64).reshape(-1, 1)], axis=1)
        return self._run()


class Platform:
    """A seeded LLM served by one :class:`Stack`: greedy/sampled generation and the teacher-forced
    replay of observed continuations, through one decode loop (:class:`Decoder`, so the replay is
    the generation's computation, bit for bit).

    ``spec``: a zoo spec or name (default: :func:`tiny_spec`, the CPU tests' model); ``device``:
    None = CUDA when available for a named zoo model, the CPU for the default tiny model.
    Raises :class:`StackUnsupported` when the device cannot run the stack."""

    def __init__(self, stack: Stack | str, spec=None, seed: int = 0, _models: dict | None = None,
                 device: str | None = None):
        import torch

        self.stack = Stack.parse(stack) if isinstance(stack, str) else stack
        if isinstance(spec, str):
            spec = zoo.get_spec(spec)
        default_model = spec is None
        self.spec = spec if spec is not None else tiny_spec()
        if device is None:
            device = "cuda" if (not default_model and torch.cuda.is_available()) else "cpu"
        self.device = str(device)
        reason = unsupported_reason(self.stack, self.device)
        if reason:
            raise StackUnsupported(reason)
        self.seed = seed
        self.torch = torch
        self._eqc = self.stack.eqc(self.device)
        cache = _models if _models is not None else {}
        key = (self.spec.name, seed, self.stack.dtype, self.device)
        if key not in cache:
            master_key = master_key_of(self.spec, seed)
            if master_key not in cache:
                cache[master_key] = zoo.build(self.spec, seed)[0]
            dtype = torch.bfloat16 if self.stack.dtype == "bf16" else torch.float32
            master = cache[master_key]  # fp32 on the CPU, never modified: the fp32 CPU copy is itself
            model = master if (self.device == "cpu" and dtype == torch.float32) else copy.deepcopy(master)
            cache[key] = model.to(device=self.device, dtype=dtype).eval()
        self.model = cache[key]
        self.forward = self.model
        if self.stack.compile:  # one compiled wrapper per (model, device, dtype), shared by the platforms
            ckey = key + ("compiled",)
            if ckey not in cache:
                cache[ckey] = torch.compile(self.model)
            self.forward = cache[ckey]
        self.jax_forward = None
        if self.stack.framework == "jax":
            from hspi_kernels.models import jax_llama

            _, jdev, _ = jax_llama.backend(self.device)
            jkey = (self.spec.name, seed, self.stack.dtype, self.device, "jax")
            if jkey not in cache:  # the fp32 master's bits; bf16 rounds them like torch's .to(bfloat16)
                params = jax_llama.device_params(jax_llama.params_from_torch(cache[master_key_of(self.spec, seed)]),
                                                 self.stack.dtype, jdev)
                try:
                    cache[jkey] = jax_llama.make_forward(self.model, params, dtype=self.stack.dtype, device=jdev,
                                                         position=True)
                except ValueError as exc:  # an architecture jax_llama does not implement (gpt2, ...)
                    raise StackUnsupported(f"{self.stack.name}: {exc}") from None
            self.jax_forward = cache[jkey]
        self.cache_kwarg = _cache_kwarg(self.model)
        self.vocab = int(self.model.config.vocab_size)
        self._mask_t = torch.from_numpy(np.arange(self.vocab) % 2 == 0).to(self.device)

    @property
    def name(self) -> str:
        return self.stack.name

    @contextlib.contextmanager
    def applied(self):
        """The stack's switches around a forward: attention backend and (CUDA) the fixed-order
        Triton GEMM through ``eqc.applied``; on the CPU the fixed order is :func:`_fixed_order_linears`;
        the deterministic mode (``det``) through :func:`_deterministic_algorithms`."""
        from hspi_kernels.models.eqc import applied

        with contextlib.ExitStack() as st:
            st.enter_context(self.torch.inference_mode())
            st.enter_context(applied(self._eqc, self.model, self.device))
            if self.stack.gemm == "fixed" and self.device == "cpu":
                st.enter_context(_fixed_order_linears())
            if self.stack.det:
                st.enter_context(_deterministic_algorithms())
            yield

    def final_logits(self, logits):
        """fp32 logits [B, V] (torch, on the device), with the stack's injected ulps."""
        torch = self.torch
        out = logits.float()
        if self.stack.ulp:
            direction = torch.tensor(math.inf if self.stack.ulp > 0 else -math.inf, dtype=torch.float32,
                                     device=out.device)
            out = out.clone()
            for _ in range(abs(self.stack.ulp)):
                out[..., self._mask_t] = torch.nextafter(out[..., self._mask_t], direction)
        return out

    def decoder(self, prompts) -> "Decoder | JaxDecoder":
        return JaxDecoder(self, prompts) if self.stack.framework == "jax" else Decoder(self, prompts)

    def _decode(self, prompts: np.ndarray, n: int, choose) -> tuple[np.ndarray, np.ndarray]:
        """Prefill + n decode steps on rows ``prompts`` [B, L]; ``choose(t, logits [B, V])``
        returns the B next tokens. Returns (tokens [B, n], logits [B, n, V] fp32)."""
        toks = np.zeros((prompts.shape[0], n), dtype=np.int64)
        logs = np.zeros((prompts.shape[0], n, self.vocab), dtype=np.float32)
        dec = self.decoder(prompts)
        for t in range(n):
            lo = (dec.first() if t == 0 else dec.step(toks[:, t - 1])).cpu().numpy()
            logs[:, t] = lo
            toks[:, t] = choose(t, lo)
        return toks, logs

    def generate(self, prompts: np.ndarray, n: int, temperature: float, top_p: float = 0.9,
                 seed: int = 0) -> np.ndarray:
        """Sampled continuations [B, n] (int64); request r uses the uniforms of (seed, r)."""
        u = uniforms(seed, prompts.shape[0], n)
        return self._decode(prompts, n, lambda t, lo: draw(sampling_probs(lo, temperature, top_p), u[:, t]))[0]

    def replay(self, prompts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The candidate's fp32 logits [B, n, V] at every observed step (teacher forcing)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        return self._decode(prompts, tokens.shape[1], lambda t, lo: tokens[:, t])[1]


# --------------------------------------------------------------------------------------------
# the sampler
# --------------------------------------------------------------------------------------------
def sampling_probs(logits: np.ndarray, temperature: float, top_p: float = 0.9) -> np.ndarray:
    """The sampler's distribution [..., V] float64 (T = 0: one-hot argmax, lowest id on ties)."""
    lo = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        out = np.zeros_like(lo)
        np.put_along_axis(out, lo.argmax(-1)[..., None], 1.0, axis=-1)
        return out
    z = lo / temperature
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        ps = np.take_along_axis(p, order, -1)
        before = np.cumsum(ps, -1) - ps
        keep_sorted = before < top_p  # the token that crosses top_p is kept
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(-1, keepdims=True)
    return p


def sampling_probs_torch(logits, temperature: float, top_p: float = 0.9, *, with_order: bool = False):
    """:func:`sampling_probs` in torch float64 on the logits' device ([..., V] -> [..., V]).
    ``with_order=True``: ``(p, sorted_p, order)`` with the probability order of the sampler (ties
    by token id), for :func:`draw_torch` without a second sort (None, None at T = 0)."""
    import torch

    lo = logits.double()
    if temperature == 0:
        out = torch.zeros_like(lo)
        out.scatter_(-1, lo.argmax(-1, keepdim=True), 1.0)  # the first maximal index: lowest id
        return (out, None, None) if with_order else out
    z = lo / temperature
    z = z - z.max(-1, keepdim=True).values
    p = z.exp_()
    p = p / p.sum(-1, keepdim=True)
    ps, order = torch.sort(p, dim=-1, descending=True, stable=True)  # ties by token id
    if top_p < 1.0:
        keep_sorted = (ps.cumsum(-1) - ps) < top_p  # the token that crosses top_p is kept
        keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
        total = torch.where(keep, p, 0.0).sum(-1, keepdim=True)
        p = torch.where(keep, p, 0.0) / total
        # the same values in the same order (the kept prefix keeps its order; zeros go last,
        # where the draw never lands): what sorting the renormalised p again would give
        ps = torch.where(keep_sorted, ps, 0.0) / total
    return (p, ps, order) if with_order else p


def draw_torch(p, u, sorted_p=None, order=None):
    """:func:`draw` in torch: ``p`` [B, V] float64, ``u`` [B] (float64 tensor) -> token ids [B].
    ``sorted_p``/``order`` from :func:`sampling_probs_torch` skip the sort."""
    import torch

    if sorted_p is None:
        if bool((p.max(-1).values == 1.0).all()) and bool(((p > 0).sum(-1) == 1).all()):
            return p.argmax(-1)  # one-hot rows (T = 0): the token itself
        sorted_p, order = torch.sort(p, dim=-1, descending=True, stable=True)
    cs = sorted_p.cumsum(-1)
    idx = (cs <= u.reshape(-1, 1)).sum(-1)
    last = (sorted_p > 0).sum(-1) - 1
    idx = torch.minimum(torch.minimum(idx, torch.full_like(idx, p.shape[-1] - 1)), last)
    return order.gather(-1, idx.reshape(-1, 1)).reshape(-1)


def uniforms(seed: int, rows: int, n: int) -> np.ndarray:
    """The sampler's uniforms [rows, n] for provider seed ``seed``."""
    return np.stack([np.random.default_rng([seed, r]).random(n) for r in range(rows)]) if rows else \
        np.zeros((0, n))


def _cdf_order(p: np.ndarray) -> np.ndarray:
    return np.argsort(-p, axis=-1, kind="stable")


def draw(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw of one token per row of ``p`` [B, V] in probability order, ``u`` [B]."""
    order = _cdf_order(p)
    cs = np.cumsum(np.take_along_axis(p, order, -1), -1)
    idx = np.minimum((cs <= np.asarray(u)[:, None]).sum(-1), p.shape[-1] - 1)
    # never land on a zero-probability token (u beyond the float64 total)
    ps = np.take_along_axis(p, order, -1)
    last = (ps > 0).sum(-1) - 1
    idx = np.minimum(idx, last)
    return order[np.arange(p.shape[0]), idx]


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------
def _norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _floored(p: np.ndarray, floor: float) -> np.ndarray:
    return (1.0 - floor) * p + floor / p.shape[-1]


def log_likelihood(p: np.ndarray, tokens: np.ndarray, floor: float = 1e-3) -> float:
    """Σ_t log q(x_t) with q = (1 − floor) p + floor / V."""
    q = _floored(p, floor)
    return float(np.log(np.take_along_axis(q, tokens[..., None], -1)).sum())


def lr_test(p_a: np.ndarray, p_b: np.ndarray, tokens: np.ndarray, floor: float = 1e-3,
            rng: np.random.Generator | None = None) -> dict[str, Any]:
    """H0: A generated ``tokens`` [B, n]; H1: B did. ``p_a``/``p_b`` [B, n, V]: each candidate's
    sampling distributions on the observed prefixes. The p-value is the exact one (per-step
    randomised PIT of the LR increment, combined by Stouffer); the CLT one is reported too."""
    tokens = np.asarray(tokens, dtype=np.int64)
    qa, qb = _floored(p_a, floor), _floored(p_b, floor)
    d_all = np.log(qb) - np.log(qa)                       # [B, n, V]
    d = np.take_along_axis(d_all, tokens[..., None], -1)[..., 0]
    mu = (p_a * d_all).sum(-1)
    var = np.maximum((p_a * d_all ** 2).sum(-1) - mu ** 2, 0.0)
    stat = float(d.sum())
    m, v = float((d - mu).sum()), float(var.sum())
    impossible = int((np.take_along_axis(p_a, tokens[..., None], -1)[..., 0] == 0).sum())
    v_pit = lr_pit(p_a, d_all, d, rng if rng is not None else np.random.default_rng(0))
    z_pit = float(_norm_ppf(1.0 - v_pit).sum() / math.sqrt(v_pit.size)) if v_pit.size else 0.0
    p_pit = 0.0 if impossible else _norm_sf(z_pit)
    if impossible:
        p_value, z = 0.0, math.inf
    elif v > 0:
        z = m / math.sqrt(v)
        p_value = _norm_sf(z)
    else:  # A deterministic on every step (T = 0) and every token as A says
        z, p_value = 0.0, 1.0
    return {"test": "likelihood ratio, randomised conditional PIT of each increment, Stouffer (exact)",
            "statistic": stat, "z": z_pit, "p_value": p_pit,
            "clt": {"test": "likelihood ratio (martingale CLT; conservative where top-p supports differ)",
                    "z": z, "p_value": p_value},
            "tokens": int(tokens.size), "impossible_under_null": impossible, "floor": floor,
            "log_lr_b_over_a": stat}


def _norm_ppf(x):
    from scipy import stats

    return stats.norm.ppf(np.clip(x, 1e-300, 1.0 - 1e-16))


def lr_pit(p_a: np.ndarray, d_all: np.ndarray, d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomised upper-tail PIT of each observed increment in its conditional law under A:
    ``v_t = P_A(D_t > d_t) + U · P_A(D_t = d_t)``; i.i.d. U(0, 1) under H0 (exactly, step by step),
    small when the token favours B."""
    gt = (p_a * (d_all > d[..., None])).sum(-1)
    eq = (p_a * (d_all == d[..., None])).sum(-1)
    return np.clip(gt + rng.random(d.shape) * eq, 0.0, 1.0).reshape(-1)


def rank_test(p: np.ndarray, tokens: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Randomised PIT of every observed token in the candidate's probability order; KS vs U(0,1)."""
    from scipy import stats

    rng = rng if rng is not None else np.random.default_rng(0)
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    pf = p.reshape(-1, p.shape[-1])
    order = _cdf_order(pf)
    ps = np.take_along_axis(pf, order, -1)
    rank = np.argmax(order == tokens[:, None], axis=-1)
    px = ps[np.arange(len(tokens)), rank]
    before = np.cumsum(ps, -1)[np.arange(len(tokens)), rank] - px
    impossible = int((px == 0).sum())
    u = np.clip(before + rng.random(len(tokens)) * px, 0.0, 1.0)
    if impossible:
        stat, p_value = 1.0, 0.0
    else:
        res = stats.kstest(u, "uniform")
        stat, p_value = float(res.statistic), float(res.pvalue)
    return {"test": "rank (randomised PIT, Kolmogorov-Smirnov)", "statistic": stat, "p_value": p_value,
            "tokens": int(len(tokens)), "impossible_under_null": impossible,
            "mean_rank": float(rank.mean())}


def _binom_sf(k: int, n: int, p: float) -> float:
    from scipy import stats

    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    return float(stats.binom.sf(k - 1, n, p))


def seed_sync(p: np.ndarray, tokens: np.ndarray, u: np.ndarray, eps: float = 0.0) -> dict[str, Any]:
    """Regenerate the candidate's token at every observed step with the provider's uniforms ``u``
    [B, n]; H0 "this candidate": disagreements only at rate ``eps`` (0: bit-exact, none)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    b, n, v = p.shape
    mine = draw(p.reshape(-1, v), u.reshape(-1)).reshape(b, n)
    agree = int((mine == tokens).sum())
    total = int(tokens.size)
    return {"test": "seed-synchronised agreement (binomial)", "statistic": total - agree, "agreement": agree / total,
            "tokens": total, "p_value": _binom_sf(total - agree, total, eps), "eps": eps}


def identify(tokens: np.ndarray, dists: dict[str, np.ndarray], *, u: np.ndarray | None = None,
             floor: float = 1e-3, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Name the candidate behind ``tokens`` [B, n] from each candidate's replayed sampling
    distributions ``dists[name]`` [B, n, V]: posterior (uniform prior), per-candidate rank test
    and (with exposed uniforms ``u``) seed-synchronised agreement, and the LR test of the best
    candidate (H0) against each other one."""
    names = list(dists)
    ll = {c: log_likelihood(dists[c], tokens, floor) for c in names}
    mx = max(ll.values())
    w = {c: math.exp(ll[c] - mx) for c in names}
    z = sum(w.values())
    posterior = {c: w[c] / z for c in names}
    best = max(names, key=lambda c: ll[c])
    out: dict[str, Any] = {"prediction": best, "posterior": posterior, "log_likelihood": ll,
                           "tokens": int(np.asarray(tokens).size),
                           "rank_test": {c: rank_test(dists[c], tokens, rng) for c in names},
                           "lr_test_vs_best": {c: lr_test(dists[best], dists[c], tokens, floor, rng)
                                               for c in names if c != best}}
    if u is not None:
        out["seed_sync"] = {c: seed_sync(dists[c], tokens, u) for c in names}
        out["prediction_seed_sync"] = max(names, key=lambda c: out["seed_sync"][c]["agreement"])
    return out


def replay_dists(platform: Platform, prompts: np.ndarray, tokens: np.ndarray, temperature: float,
                 top_p: float = 0.9) -> np.ndarray:
    """A candidate's sampling distributions [B, n, V] on the observed prefixes."""
    return sampling_probs(platform.replay(prompts, tokens), temperature, top_p)


def candidates(names: Sequence[str], spec=None, seed: int = 0, device: str | None = None) -> dict[str, Platform]:
    """Platforms for stack names, sharing model copies per (dtype, device); raises
    :class:`StackUnsupported` for a stack the device cannot run."""
    shared: dict = {}
    return {n: Platform(n, spec, seed, shared, device=device) for n in names}
