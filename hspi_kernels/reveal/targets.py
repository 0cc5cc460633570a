"""Black-box op adapters for the order revealer (:mod:`reveal`) and CLI/script.

A :class:`Target` is one summation (``kind="sum"``: ``x[n] -> scalar``) or one GEMM whose K
order is revealed (``kind="gemm"``: ``A[M,K] @ B[K,N]``). The revealer only calls
``evaluate_patterns(values[B, n]) -> [B]`` (for a GEMM the pattern is put in columns of B with A
all ones, so one call answers N queries) and ``replay(plan, count, seed)``: fresh random inputs
through the op and through ``evaluate`` / ``gemm`` of the plan, compared bit for bit.

Factories: CPU (``numpy_sum``, ``torch_sum_cpu``, ``torch_matmul_cpu``), emulated (a plan as the
op: ``emulated_sum``, ``emulated_gemm``), CUDA (``torch_sum_cuda``, ``torch_matmul_cuda``,
``hspi_reduce_rows``, ``hspi_cuda_core_gemm``, ``hspi_tensor_core_gemm``). Importing this module
imports neither torch nor CuPy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from hspi_kernels.kernels.cuda import gemm_cuda_core, reduction
from hspi_kernels.kernels.cuda import gemm_tensor_core as tc
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import evaluate, gemm
from hspi_kernels.numerics.formats import decode
from hspi_kernels.numerics.rounding import round_to_format

__all__ = ["Target", "numpy_sum", "torch_sum_cpu", "torch_matmul_cpu", "emulated_sum", "emulated_gemm",
           "emulated_unfixed_gemm", "torch_sum_cuda", "torch_matmul_cuda", "hspi_reduce_rows", "hspi_cuda_core_gemm",
           "hspi_tensor_core_gemm", "cpu_targets", "get_target"]

_MAX_EXP = {"fp32": 127, "tf32": 127, "bf16": 127, "fp16": 15, "e4m3": 8, "e5m2": 15}


def to_format(x: np.ndarray, fmt: str) -> np.ndarray:
    """float32 values rounded (RNE) to ``fmt`` and widened back exactly."""
    x = np.asarray(x, dtype=np.float32)
    if fmt == "fp32":
        return x
    if fmt == "fp16":  # numpy's float32 -> float16 cast is RNE (subnormals, overflow to inf)
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)
    if fmt in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            ml_dtypes = None
        dt = getattr(ml_dtypes, _ML_DTYPES[fmt], None) if ml_dtypes is not None else None
        # ml_dtypes casts fp32 -> fp8 with RNE; only inside the finite range (e4m3fn has no inf)
        if dt is not None and np.all(np.abs(x) <= float(ml_dtypes.finfo(dt).max)):
            return x.astype(dt).astype(np.float32)
    return decode(round_to_format(x, fmt), fmt).astype(np.float32)


# ml_dtypes' float32 casts are RNE (subnormals included); tests/test_reveal.py checks them bit for
# bit against numerics.rounding, the project's own definition, which stays the fallback
_ML_DTYPES = {"bf16": "bfloat16", "e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


def random_values(rng, shape, fmt: str = "fp32", spread: int = 20) -> np.ndarray:
    """Wide dynamic range, both signs (every rounding exercised), representable in ``fmt``.
    normal * 2^e with e uniform in [-spread, spread) (ldexp: the same float64 values as the
    product with exp2, at a third of the cost; the random stream is unchanged)."""
    x = np.ldexp(rng.standard_normal(shape), rng.integers(-spread, spread, shape).astype(np.int32)).astype(np.float32)
    return to_format(x, fmt)


@dataclass
class Target:
    name: str
    n: int
    kind: str  # "sum" | "gemm"
    in_format: str = "fp32"
    acc_bits: int = 24
    out_bits: int = 24
    block: P.TensorCore | None = None  # tensor-core preset hint for fused nodes (dot products)
    sum_rows: Callable | None = None  # x[B, n] float32 -> [B] float32 (one op call per row unless batched)
    gemm: Callable | None = None  # A[M,K], B[K,N] float32 (values in in_format) -> D[M,N] float32
    shape: tuple | None = None  # (M, N, K) for gemm targets
    note: str = ""
    spread: int = 20
    extra: dict = field(default_factory=dict)

    @property
    def max_exponent(self) -> int:
        return _MAX_EXP.get(self.in_format, 127)

    # -- what the revealer calls ------------------------------------------------------------
    def evaluate_patterns(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "sum":
            return np.asarray(self.sum_rows(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)
        M, N, K = self.shape
        out = np.empty(len(x), dtype=np.float32)
        A = np.ones((M, K), dtype=np.float32)
        for s in range(0, len(x), N):
            chunk = x[s:s + N]
            B = np.zeros((K, N), dtype=np.float32)
            B[:, :len(chunk)] = chunk.T
            D = np.asarray(self.gemm(A, B), dtype=np.float32)
            out[s:s + len(chunk)] = D[0, :len(chunk)]
        return out

    def replay(self, plan: P.Plan, count: int = 10_000, seed: int = 1) -> tuple[int, int]:
        rng = np.random.default_rng(seed)
        matches = total = 0
        if self.kind == "sum":
            chunk = max(1, min(count, 2_000_000 // max(self.n, 1)))
            while total < count:
                x = random_values(rng, (min(chunk, count - total), self.n), self.in_format, self.spread)
                want = np.asarray(self.sum_rows(x), dtype=np.float32).view(np.uint32)
                got = evaluate(plan, x).view(np.uint32)
                matches += int(np.sum(got == want))
                total += len(x)
            return matches, total
        M, N, K = self.shape
        while total < count:
            # the op runs at its full shape (what its kernel choice depends on); only the outputs
            # compared get fresh random inputs: output (i, j) reads only row i of A and column j
            # of B, so the other columns of B are zeros (a long K at N = 8192 would otherwise
            # spend most of the replay drawing random numbers nobody looks at)
            need = count - total
            rows = np.sort(rng.choice(M, min(M, -(-need // N)), replace=False))
            cols = N if len(rows) > 1 else min(N, need)  # one row: only the columns still wanted
            A = random_values(rng, (M, K), self.in_format, 4)
            B = np.zeros((K, N), dtype=np.float32)
            B[:, :cols] = random_values(rng, (K, cols), self.in_format, 4)
            D = np.asarray(self.gemm(A, B), dtype=np.float32)
            E = self.finish(gemm(plan, A[rows], B[:, :cols]))
            got, want = E.view(np.uint32).reshape(-1), D[rows, :cols].view(np.uint32).reshape(-1)
            take = min(got.size, need)
            matches += int(np.sum(got[:take] == want[:take]))
            total += take
        return matches, total

    def finish(self, acc: np.ndarray) -> np.ndarray:
        """The op's output from the plan's fp32 result: rounded (RNE) to a narrower output format."""
        if self.out_bits < 24:
            return to_format(acc, self.extra.get("out_format", "bf16"))
        return acc

    def seeded_inputs(self, seed: int = 1234):
        """The fixed inputs behind :meth:`digest` (numpy's default_rng: the same on every machine).

        GEMMs get *cancelling* inputs: the second half of K repeats the first with B negated, so
        the exact result is 0 and every output is the order's rounding residue. A narrow output
        (bf16) hides most order differences of ordinary sums; residues differ between any two
        orders that round differently, so equal digests then really mean equal orders here."""
        rng = np.random.default_rng(seed)
        if self.kind == "sum":
            return (random_values(rng, (64, self.n), self.in_format, self.spread),)
        M, N, K = self.shape
        A = random_values(rng, (M, K), self.in_format, 4)
        B = random_values(rng, (K, N), self.in_format, 4)
        h = K // 2
        A[:, h:2 * h] = A[:, :h]
        B[h:2 * h] = -B[:h]
        return A, B

    def digest(self, seed: int = 1234) -> dict:
        """sha256 of the op's output bits on :meth:`seeded_inputs` (compare GPUs on the same inputs)."""
        import hashlib

        ops = self.seeded_inputs(seed)
        out = self.sum_rows(ops[0]) if self.kind == "sum" else self.gemm(*ops)
        out = np.ascontiguousarray(np.asarray(out, dtype=np.float32))
        sha = lambda x: hashlib.sha256(np.ascontiguousarray(x).view(np.uint32).tobytes()).hexdigest()
        rec = {"seed": seed, "shape": list(out.shape), "sha256": sha(out), "row0_sha256": sha(out[0])}
        if self.kind == "gemm":  # what a CPU needs to rebuild the inputs and evaluate plans on row 0
            rec.update(gemm_shape=list(self.shape), in_format=self.in_format,
                       out_format=self.extra.get("out_format", "fp32") if self.out_bits < 24 else "fp32")
        return rec


# -- CPU ------------------------------------------------------------------------------------------
def numpy_sum(n: int) -> Target:
    def rows(x):
        return np.array([np.sum(r) for r in x], dtype=np.float32)

    return Target(f"numpy.sum(fp32, n={n})", n, "sum", sum_rows=rows)


def torch_sum_cpu(n: int) -> Target:
    import torch

    def rows(x):
        t = torch.from_numpy(np.ascontiguousarray(x))
        return np.array([torch.sum(t[k]).item() for k in range(len(t))], dtype=np.float32)

    return Target(f"torch.sum(cpu fp32, n={n})", n, "sum", sum_rows=rows,
                  note=f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def torch_matmul_cpu(K: int, M: int = 4, N: int = 64) -> Target:
    import torch

    def mm(A, B):
        return torch.matmul(torch.from_numpy(A), torch.from_numpy(B)).numpy()

    return Target(f"torch.matmul(cpu fp32, [{M},{K}]x[{K},{N}])", K, "gemm", gemm=mm, shape=(M, N, K))


# -- emulated (a plan as the op) --------------------------------------------------------------------
def emulated_sum(plan: P.Plan, n: int) -> Target:
    return Target(f"emulated:{plan!r} (n={n})", n, "sum", sum_rows=lambda x: evaluate(plan, x),
                  extra={"truth": plan})


def emulated_gemm(plan: P.Plan, K: int, M: int = 2, N: int = 256, in_format: str = "fp32",
                  block: P.TensorCore | None = None, out_format: str = "fp32") -> Target:
    """A plan as a black-box GEMM (a simulated library); ``out_format`` bf16/fp16: the fp32 result
    rounded RNE to it, as cuBLAS writes a bf16 C."""
    out_bits = {"fp32": 24, "bf16": 8, "fp16": 11}[out_format]
    return Target(f"emulated:{plan!r} (K={K}, out {out_format})", K, "gemm", in_format=in_format, block=block,
                  out_bits=out_bits, gemm=lambda A, B: to_format(gemm(plan, A, B), out_format), shape=(M, N, K),
                  extra={"truth": plan, "out_format": out_format})


def emulated_unfixed_gemm(plans: list, K: int, M: int = 2, N: int = 256, in_format: str = "fp32",
                          block: P.TensorCore | None = None, seed: int = 0) -> Target:
    """Negative control: each call picks one of ``plans`` at random (no fixed order per call)."""
    rng = np.random.default_rng(seed)
    return Target(f"emulated random-per-call of {len(plans)} plans (K={K})", K, "gemm", in_format=in_format,
                  block=block, gemm=lambda A, B: gemm(plans[int(rng.integers(len(plans)))], A, B), shape=(M, N, K))


# -- CUDA (GPU script) --------------------------------------------------------------------------------
def torch_sum_cuda(n: int) -> Target:
    import torch

    def rows(x):
        # each row its own 1-D call; rows start 256-byte aligned like a fresh allocation's
        pad = -(-n // 64) * 64
        buf = torch.empty((len(x), pad), dtype=torch.float32, device="cuda")
        buf[:, :n] = torch.from_numpy(x).cuda()
        outs = [torch.sum(buf[k, :n]) for k in range(len(x))]
        return torch.stack(outs).cpu().numpy()

    return Target(f"torch.sum(cuda fp32, n={n})", n, "sum", sum_rows=rows)


def torch_matmul_cuda(M: int, K: int, N: int, dtype: str = "bf16", out_fp32: bool = False,
                      arch: str = "sm_90") -> Target:
    """cuBLAS through torch.matmul with ``dtype`` operands. ``out_fp32``: ``torch.mm(...,
    out_dtype=torch.float32)`` (fp32 output: counts fit, but cuBLAS may pick another kernel);
    else the bf16/fp16 output is kept and the revealer counts in windows of 256."""
    import torch

    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]

    def mm(A, B):
        a = torch.from_numpy(A).to("cuda", tdt)
        b = torch.from_numpy(B).to("cuda", tdt)
        if out_fp32:
            d = torch.mm(a, b, out_dtype=torch.float32)
        else:
            d = torch.matmul(a, b)
        return d.float().cpu().numpy()

    out_bits = 24 if (out_fp32 or dtype == "fp32") else {"bf16": 8, "fp16": 11}[dtype]
    block = P.TensorCore(arch, dtype, "fp32") if dtype in ("bf16", "fp16") else None
    tag = "out fp32" if out_fp32 else f"out {dtype}"
    return Target(f"torch.matmul(cuda {dtype}, {tag}, [{M},{K}]x[{K},{N}])", K, "gemm", in_format=dtype,
                  out_bits=out_bits, block=block, gemm=mm, shape=(M, N, K), extra={"out_format": dtype})


def hspi_reduce_rows(n: int, variant: str = "block_tree", **kw) -> Target:
    import torch

    def rows(x):
        return reduction.reduce_rows(torch.from_numpy(x).cuda(), variant, **kw).cpu().numpy()

    return Target(f"hspi reduce_rows({variant}, n={n})", n, "sum", sum_rows=rows,
                  extra={"truth": reduction.plan(variant, **kw)})


def hspi_cuda_core_gemm(K: int, order: str = "splitk", M: int = 8, N: int = 256, **kw) -> Target:
    import torch

    def mm(A, B):
        return gemm_cuda_core.gemm(torch.from_numpy(A).cuda(), torch.from_numpy(B).cuda(), order, **kw).cpu().numpy()

    return Target(f"hspi cuda_core gemm({order}, K={K})", K, "gemm", gemm=mm, shape=(M, N, K),
                  extra={"truth": gemm_cuda_core.plan(order, **kw)})


def hspi_tensor_core_gemm(K: int, path: str = "mma.sync", in_format: str = "bf16", split_k: int = 1,
                          M: int = 64, N: int = 256, arch: str = "sm_90") -> Target:
    import torch

    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16}[in_format]
    fn = tc.mma_sync_gemm if path == "mma.sync" else tc.wgmma_gemm

    def mm(A, B):
        return fn(torch.from_numpy(A).to("cuda", tdt), torch.from_numpy(B).to("cuda", tdt), in_format=in_format,
                  split_k=split_k).float().cpu().numpy()

    truth = tc.plan(in_format=in_format, split_k=split_k, path=path, arch=arch)
    return Target(f"hspi {path} gemm({in_format}, split_k={split_k}, K={K})", K, "gemm", in_format=in_format,
                  block=P.TensorCore(arch, in_format, "fp32", path=path), gemm=mm, shape=(M, N, K),
                  extra={"truth": truth})


def cpu_targets() -> list[str]:
    return ["numpy.sum", "torch.sum", "torch.matmul"]


# the sizes a revealer can take: one term has no order, and the masking queries hold rows of n
# terms (~4 n log2 n calls), so beyond 2^20 terms a reveal needs more memory and time than it is worth
MIN_TERMS, MAX_TERMS = 2, 1 << 20


def check_sizes(n: int, M: int = 8, N: int = 4096) -> None:
    """ValueError unless MIN_TERMS <= n <= MAX_TERMS and M, N >= 1 (before any work is done)."""
    if not MIN_TERMS <= n <= MAX_TERMS:
        raise ValueError(f"--n must be between {MIN_TERMS} and {MAX_TERMS} (2^20) terms, got {n}")
    if M < 1 or N < 1:
        raise ValueError(f"--m and --cols must be >= 1, got {M} and {N}")


def get_target(name: str, n: int, M: int = 8, N: int = 4096) -> Target:
    """CLI names: numpy.sum, torch.sum, torch.matmul (CPU); torch.sum.cuda, torch.matmul.cuda (GPU).
    ValueError for an unknown name or sizes outside :func:`check_sizes`."""
    known = cpu_targets() + ["torch.sum.cuda", "torch.matmul.cuda"]
    if name not in known:
        raise ValueError(f"unknown target {name!r}; CPU: {', '.join(cpu_targets())}; GPU: torch.sum.cuda, "
                         "torch.matmul.cuda")
    check_sizes(n, M, N)
    if name == "numpy.sum":
        return numpy_sum(n)
    if name == "torch.sum":
        return torch_sum_cpu(n)
    if name == "torch.matmul":
        return torch_matmul_cpu(n)
    if name in ("torch.sum.cuda", "torch.matmul.cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"{name} needs a CUDA GPU (torch sees none); run scripts/gpu_card_reveal.py on one")
        return torch_sum_cuda(n) if name == "torch.sum.cuda" else torch_matmul_cuda(M, n, N)
    raise ValueError(f"unknown target {name!r}; CPU: {cpu_targets()}, GPU: torch.sum.cuda, torch.matmul.cuda")
