"""Micro-probes of torch's CPU fused attention (``_scaled_dot_product_flash_attention_for_cpu``) on
a host whose order :mod:`hspi_kernels.numerics.attention_cpu` does not model yet (e.g. an Intel
Xeon with AMX): seeded inputs that regenerate anywhere, a capture of the kernel's bits on the host,
and the readback of its Q·Kᵀ GEMM from the log-sum-exp.

Score readback ("dominant key"): in each head one query row and one key, at positions that move
with the head, hold arbitrary vectors whose dot is >= 192; every other query row and key of the
head is the zero vector (score exactly 0). Heads are separate GEMMs of the same shape (one work
item each), so a probe with many heads reads one dot per head at the shape of a trace's GEMM. With D = 64 the scale is 1/8 (exact) and the row's other 15
exp values are < e^-24 each, below half an ulp of the row sum. For fp32 the sum is exactly 1
(``exp_u20(0) = 1``), ``logf(1) = 0`` and ``lse = dot_fp32 / 8``; for bf16 / fp16 it is
``fexp_u20(0) = 0.99994659`` and ``lse = rn(dot_fp32 / 8 + logf(0.99994659))``, which
:func:`readback` inverts. Either way the log-sum-exp returns the GEMM's own fp32 result for
that (row, key). The vectors' entries are signed powers of two times random 8-bit mantissas
spread over 2^-6..2^3, so the products span ~2^-12..2^6 and the accumulation order shows in the
low bits. Exact dots (float64 is exact here: 64 products of 16 significant bits within 2^18 of
each other) come with the case, so the readback can be checked against any GEMM model.

Inputs are built from numpy PCG64 seeds (stable across numpy versions), so a capture stores only
the kernel's outputs plus a digest of the inputs it saw.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from hspi_kernels.numerics.attention_ref import round_to_input

F32 = np.float32
FORMATS = ("bf16", "fp16", "fp32")
MIN_DOT = 192.0  # the dominant key's dot: exp(-MIN_DOT / 8) * 15 < 2^-25, so the row sum is 1.0


@dataclasses.dataclass(frozen=True)
class Case:
    """One attention call: [1, hq, sq, d] queries, [1, hkv, sk, d] keys and values."""

    name: str
    kind: str  # "random" (normal inputs, like a trace) or "dominant" (score readback)
    fmt: str
    hq: int
    hkv: int
    sq: int
    sk: int
    d: int
    causal: bool
    seed: int
    std: float = 1.0


def _mantissa_values(rng, shape, fmt: str) -> np.ndarray:
    """Signed 2^e * (1 + m/256), e in [-6, 3], rounded to ``fmt`` (bf16 keeps 7 of the 8 bits)."""
    e = rng.integers(-6, 4, size=shape)
    m = rng.integers(0, 256, size=shape)
    s = rng.choice(np.array([-1.0, 1.0]), size=shape)
    return round_to_input((s * np.ldexp(1.0 + m / 256.0, e)).astype(F32), fmt)


def build(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q, k, v) float32 arrays holding ``case.fmt`` values, [1, H, S, D]."""
    rng = np.random.default_rng(case.seed)
    if case.kind == "random":
        shapes = ((1, case.hq, case.sq, case.d), (1, case.hkv, case.sk, case.d), (1, case.hkv, case.sk, case.d))
        return tuple(round_to_input((rng.standard_normal(s) * case.std).astype(F32), case.fmt) for s in shapes)
    if case.kind != "dominant":
        raise ValueError(f"unknown probe kind {case.kind!r}")
    if case.hq != case.hkv or case.sk < 2:
        raise ValueError("a dominant-key probe needs hq == hkv and at least 2 keys")
    if case.d != 64:
        raise ValueError("a dominant-key probe needs D = 64 (scale 1/8 exact)")
    q = np.zeros((1, case.hq, case.sq, case.d), F32)
    k = np.zeros((1, case.hkv, case.sk, case.d), F32)
    v = round_to_input(rng.standard_normal((1, case.hkv, case.sk, case.d)).astype(F32), case.fmt)
    for h, r, c in dominant_rows(case):
        kv = _mantissa_values(rng, case.d, case.fmt)
        qv = _mantissa_values(rng, case.d, case.fmt)
        dot = float(np.dot(qv.astype(np.float64), kv.astype(np.float64)))
        if dot < 0:
            qv, dot = -qv, -dot
        if dot < MIN_DOT:  # scale by a power of two: exact, the rounding pattern moves with it
            qv = (qv * F32(2.0 ** int(np.ceil(np.log2(MIN_DOT / max(dot, 2.0 ** -30)))))).astype(F32)
        q[0, h, r], k[0, h, c] = qv, kv
    return q, k, v


def dominant_rows(case: Case) -> list[tuple[int, int, int]]:
    """(head, row, key) of each head's one dominant pair: every other query row and key of the head
    is zero, so the pair's dot is the only non-zero score of its row (the row moves with the head,
    the key too, so every (row, key) position of the GEMM's output tile is read)."""
    return [(h, h % case.sq, (h // case.sq + 5 * h) % case.sk) for h in range(case.hq)]


def exact_dots(case: Case, q, k) -> np.ndarray:
    """float64 exact dot of each dominant (head, row, key), in :func:`dominant_rows` order."""
    return np.array([float(np.dot(q[0, h, r].astype(np.float64), k[0, h, c].astype(np.float64)))
                     for h, r, c in dominant_rows(case)])


def chain_dots(case: Case, q, k) -> np.ndarray:
    """float32 dot of each dominant (head, row, key) as one fma chain over D in index order from 0
    (the Q·Kᵀ order of :mod:`hspi_kernels.numerics.attention_cpu`'s replay at D = 64), computed
    here on its own: ``x·y + acc`` is exact in float64 for the probe's values (products of 9-bit
    significands within 2^-12..2^6 times the probe's power-of-two scale, partial sums below 2^14: a
    span under 53 bits), so ``float32(x·y + acc)`` rounds once, as the fma does. The reference a readback is compared with."""
    rows = dominant_rows(case)
    a = np.stack([q[0, h, r] for h, r, _ in rows]).astype(np.float64)
    b = np.stack([k[0, h, c] for h, _, c in rows]).astype(np.float64)
    acc = np.zeros(len(rows), F32)
    for j in range(case.d):
        acc = (a[:, j] * b[:, j] + acc.astype(np.float64)).astype(F32)
    return acc


def slim_capture(meta: dict, arrays: dict, keep_out: set[str]) -> dict:
    """A capture cut down to a test fixture: every case's lse (and the meta: platform, cases,
    input digests), the output bits only of the cases in ``keep_out``, stored as the format's own
    16-bit patterns for bf16 / fp16 (:func:`numerics.rounding.encode`: the fp32 bits of a bf16 /
    fp16 value carry nothing more; :func:`load_capture` widens them back). Returns the npz's arrays
    (``meta`` as JSON)."""
    import json

    from hspi_kernels.numerics.rounding import encode

    fmts = {c["name"]: c["fmt"] for c in meta["cases"]}
    unknown = set(keep_out) - set(fmts)
    if unknown:
        raise ValueError(f"no such cases in the capture: {sorted(unknown)}")
    out = {}
    for key, x in arrays.items():
        name, what = key.rsplit(".", 1)
        if what == "out":
            if name not in keep_out:
                continue
            if fmts[name] != "fp32":
                x = encode(np.asarray(x, np.uint32).view(F32), fmts[name])
        out[key] = x
    slim = {k: v for k, v in meta.items() if k != "replays"}
    slim["out_kept"] = sorted(keep_out)
    out["meta"] = np.array(json.dumps(slim))
    return out


def load_capture(path) -> tuple[dict, dict]:
    """(meta, arrays) of a capture npz, full (scripts/cpu_flash_capture.py) or slim
    (:func:`slim_capture`), in the capture's encoding: ``{name}.out`` and ``{name}.lse`` as uint32
    fp32 bits (a slim file's 16-bit outputs widened, exactly, by :func:`numerics.formats.decode`)."""
    import json

    from hspi_kernels.numerics.formats import decode

    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k: z[k] for k in z.files if k != "meta"}
    fmts = {c["name"]: c["fmt"] for c in meta["cases"]}
    for key, x in arrays.items():
        name, what = key.rsplit(".", 1)
        if what == "out" and x.dtype == np.uint16:
            arrays[key] = decode(x, fmts[name]).astype(F32).view(np.uint32)
    return meta, arrays


def case_of(row: dict) -> Case:
    """The :class:`Case` of a capture's meta row (which also holds the input digest)."""
    return Case(**{f.name: row[f.name] for f in dataclasses.fields(Case)})


def replay_counts(case: Case, arrays: dict, order) -> dict:
    """How many of a capture's recorded values (``arrays`` in the capture encoding) the replay
    :func:`numerics.attention_cpu.replay` under ``order`` gives bit for bit:
    ``{"out": n or None (output not recorded), "lse": n, "out_total", "lse_total"}``.
    NotImplementedError where the replay refuses the shape."""
    from hspi_kernels.numerics.attention_cpu import replay

    q, k, v = build(case)
    o, l = replay(q, k, v, fmt=case.fmt, causal=case.causal, order=order)
    lse_t, out_t = arrays[f"{case.name}.lse"], arrays.get(f"{case.name}.out")
    return {"out": None if out_t is None else int(np.sum(o.reshape(-1).view(np.uint32) == out_t.reshape(-1))),
            "lse": int(np.sum(l.reshape(-1).view(np.uint32) == lse_t.reshape(-1))),
            "out_total": None if out_t is None else int(out_t.size), "lse_total": int(lse_t.size)}


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, F32).tobytes())
    return h.hexdigest()[:16]


def default_cases() -> list[Case]:
    """What a capture records: dominant-key probes at the zoo models' attention shapes (D 64,
    16-token prompts, keys 16 / 48) and random cases like a trace's (the zoo's head counts, GQA
    included) plus longer ones (several kv blocks), in bf16, fp16 and fp32."""
    cases = []
    for fmt in FORMATS:
        for i, sk in enumerate((16, 16, 16, 16, 48, 48)):
            cases.append(Case(f"dominant_{fmt}_sk{sk}_{i}", "dominant", fmt, 512, 512, 16, sk, 64, False, 100 + i))
        for model, (hq, hkv) in {"qwen": (14, 2), "gpt2": (12, 12), "llama": (32, 8)}.items():
            for causal in (False, True):
                cases.append(Case(f"zoo_{model}_{fmt}_{'causal' if causal else 'full'}", "random", fmt, hq, hkv,
                                  16, 16, 64, causal, len(model)))
        for name, (hq, hkv, sq, sk, d, causal) in {"sk300_d128": (2, 1, 64, 300, 128, False),
                                                   "sk600_d128": (2, 1, 64, 600, 128, False),
                                                   "600x600_causal": (1, 1, 600, 600, 64, True)}.items():
            cases.append(Case(f"long_{name}_{fmt}", "random", fmt, hq, hkv, sq, sk, d, causal, sk, 1.5))
    return cases


def run_torch(case: Case, q, k, v):
    """torch's CPU kernel on (q, k, v): (out float32 holding fmt values, lse float32)."""
    import torch

    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[case.fmt]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        *[torch.from_numpy(np.ascontiguousarray(x)).to(dt) for x in (q, k, v)], is_causal=case.causal)
    return out.float().numpy(), lse.float().numpy()


def capture(cases=None, threads: int = 1) -> tuple[dict, dict]:
    """Run every case through this host's torch kernel at ``threads`` torch threads.
    Returns (meta, arrays): arrays ``{name}.lse`` (uint32 fp32 bits) and, for random cases,
    ``{name}.out`` (uint32 fp32 bits of the fmt values; a dominant probe's output carries no
    readback, so it is not kept); meta the platform, the cases and each case's input digest."""
    import torch

    from hspi_kernels.platform.metadata import this_cpu

    cases = default_cases() if cases is None else cases
    before = torch.get_num_threads()
    arrays, rows = {}, []
    try:
        torch.set_num_threads(threads)
        for c in cases:
            q, k, v = build(c)
            out, lse = run_torch(c, q, k, v)
            if c.kind == "random":
                arrays[f"{c.name}.out"] = out.view(np.uint32)
            arrays[f"{c.name}.lse"] = lse.view(np.uint32)
            rows.append(dict(dataclasses.asdict(c), digest=digest(q, k, v)))
    finally:
        torch.set_num_threads(before)
    meta = {"platform": this_cpu(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_config": torch.__config__.show()[:4000], "threads": threads, "cases": rows,
            "op": "aten::_scaled_dot_product_flash_attention_for_cpu"}
    return meta, arrays


def readback(case: Case, lse_bits: np.ndarray) -> np.ndarray:
    """The fp32 dots a dominant-key capture's lse returns, in :func:`dominant_rows` order.

    The kernel writes ``lse = rn(m + logf(l))`` with ``m = dot / 8`` and ``l`` the row sum: exactly 1
    for fp32 (``exp_u20(0) = 1``), but ``fexp_u20(0) = 0.99994659`` for bf16 / fp16 (the other keys'
    exp values are below half an ulp of it), so there ``logf(l)`` is a fixed ``L ~ -5.3e-5``. ``m`` is
    the fp32 value with ``rn(m + L) == lse``: searched around ``lse - L``; NaN where no value or more
    than one gives the lse (rows that read back nothing)."""
    from hspi_kernels.numerics.attention_cpu import exp_u20, fexp_u20, logf

    lse = np.asarray(lse_bits, np.uint32).view(F32).reshape(1, case.hq, case.sq)
    got = np.array([lse[0, h, r] for h, r, _ in dominant_rows(case)], F32)
    exp0 = (exp_u20 if case.fmt == "fp32" else fexp_u20)(np.zeros(1, F32))
    big_l = F32(logf(exp0)[0])
    if big_l == 0:
        return got * F32(8)
    centre = np.subtract(got, big_l, dtype=F32).view(np.int32)
    cands = (centre[:, None] + np.arange(-2, 3, dtype=np.int32)[None, :]).view(F32)  # +-2 ulps
    hits = np.add(cands, big_l, dtype=F32) == got[:, None]
    m = np.where(hits.sum(1) == 1, cands[np.arange(len(got)), hits.argmax(1)], F32(np.nan))
    return m * F32(8)
