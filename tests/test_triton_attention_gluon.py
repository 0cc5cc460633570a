"""Compile-only checks (no GPU) of the Gluon Hopper attention, hspi_kernels/kernels/triton/attention_gluon.py.

The kernel is compiled for sm_90 in a subprocess (TRITON_INTERPRET, set by other test modules,
removed) and its PTX / cubin read: wgmma, the pipelined ``wgmma.wait_group 1`` (S_j waited for
while P_{j-1}.V_{j-1} is in flight), ``setmaxnreg`` (warp specialization), TMA loads into
mbarrier-tracked buffers and the TMA store, shared memory under the sm_90 limit. Negative
controls: the ``pipeline=False`` variant has no ``wait_group 1`` and the tl kernel of
attention.py has neither ``setmaxnreg`` nor a ``wait_group`` above 0, so each assertion can fail.
Skipped with the reason when Triton / Gluon compile is unavailable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_FACTS_SCRIPT = r"""
import inspect, json, os, re, subprocess, tempfile
from dataclasses import replace
import triton
from hspi_kernels.kernels.triton import attention_gluon as G

def cubin_regs(cubin):
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    try:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin); f.flush()
            out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        return int(re.search(r"REG:(\d+)", out).group(1))
    except Exception:
        return None

def facts(ptx, cubin=None, shared=None):
    return {"wgmma": ptx.count("wgmma.mma_async"),
            "waits": sorted({int(x) for x in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)}),
            "setmaxnreg": sorted({int(x) for x in re.findall(r"setmaxnreg\.(?:inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx)}),
            "tma_load": len(re.findall(r"cp\.async\.bulk\.tensor\.\dd\.shared::cluster\.global\.mbarrier::complete_tx", ptx)),
            "tma_store": len(re.findall(r"cp\.async\.bulk\.tensor\.\dd\.global\.shared::cta", ptx)),
            "mbarrier_wait": "mbarrier.try_wait" in ptx, "ex2_approx": "ex2.approx" in ptx,
            "shared": shared, "regs": cubin_regs(cubin) if cubin else None}

out = {}
for D in (128, 64):
    for causal in (True, False):
        for dt in ("bf16", "fp16"):
            c = G.compile_sm90(head_dim=D, causal=causal, dtype=dt)
            out[f"D{D}.{'causal' if causal else 'full'}.{dt}"] = facts(c.asm["ptx"], c.asm["cubin"], c.metadata.shared)
c = G.compile_sm90(replace(G.CONFIG[128], pipeline=False), head_dim=128, causal=True)
out["no_pipeline"] = facts(c.asm["ptx"], None, c.metadata.shared)

# negative control: the tl kernel of attention.py (default native config)
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hspi_kernels.kernels.triton import attention as A
kernel = A._kernels()["fwd"]
params = list(inspect.signature(kernel.fn).parameters)
config = A.default_config(128)
const = A.constexprs(config, head_dim=128, causal=True, mask_n=False)
sig = {p: "constexpr" if p in const else "*bf16" if p.endswith("_ptr") else "fp32" if p == "qk_scale" else "i32"
       for p in params}
attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if p.endswith("_ptr") or p.startswith("stride")}
c = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": config.num_warps, "num_stages": config.num_stages,
                            "enable_fp_fusion": config.enable_fp_fusion})
out["tl_native"] = facts(c.asm["ptx"], None, c.metadata.shared)
print(json.dumps(out))
"""

CASES = [f"D{d}.{c}.{t}" for d in (128, 64) for c in ("causal", "full") for t in ("bf16", "fp16")]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def sm90_facts() -> dict:
    pytest.importorskip("triton", reason="needs triton (3.6.0) with Gluon")
    proc = subprocess.run([sys.executable, "-c", _FACTS_SCRIPT], capture_output=True, text=True, env=_env(),
                          timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"sm_90 Gluon compile-only not available here: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_sm90_compiles_warp_specialized_pipelined_tma(sm90_facts, case):
    from hspi_kernels.kernels.triton import attention_gluon as G

    f = sm90_facts[case]
    assert f["wgmma"] > 0
    assert max(f["waits"]) >= 1 and 0 in f["waits"], f["waits"]  # S_j waited with P.V still in flight
    assert f["setmaxnreg"] and 24 in f["setmaxnreg"] and 240 in f["setmaxnreg"], f["setmaxnreg"]  # loader / consumers
    assert f["tma_load"] > 0 and f["tma_store"] > 0 and f["mbarrier_wait"]
    assert f["ex2_approx"]
    assert 0 < f["shared"] <= G.SHARED_MEMORY_LIMIT_SM90
    assert f["regs"] is None or f["regs"] <= 255


def test_sm90_pipeline_off_has_no_outstanding_wait(sm90_facts):
    """The wait_group >= 1 assertion above can fail: the unpipelined variant only waits for 0."""
    assert sm90_facts["no_pipeline"]["waits"] == [0]
    assert sm90_facts["no_pipeline"]["setmaxnreg"]


def test_sm90_tl_kernel_is_neither_specialized_nor_pipelined(sm90_facts):
    """Negative control: Triton 3.6's tl attention waits on every wgmma and has no partitions."""
    f = sm90_facts["tl_native"]
    assert f["wgmma"] > 0
    assert f["waits"] == [0]
    assert f["setmaxnreg"] == []
    assert f["tma_load"] == 0


def test_import_pulls_in_neither_torch_nor_triton():
    script = ("import sys; import hspi_kernels.kernels.triton.attention_gluon as G; "
              "print(int('torch' in sys.modules), int('triton' in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "0"]


def test_plan_and_config():
    from hspi_kernels.kernels.triton import attention_gluon as G

    from hspi_kernels.kernels.triton import attention as A

    p = G.plan(causal=True)
    json.dumps(p)
    assert p["config"]["block_n"] == 128 and p["enable_fp_fusion"] is True
    # one definition of the order: the tl native plan's, at the same BLOCK_N and fusion
    assert [s["step"] for s in p["per_block"]] == ["scores", "row_max", "p", "alpha", "row_sum", "acc"]
    assert p["per_block"] == A.plan(A.default_config(128), causal=True)["per_block"]
    assert p["qk_scale"] == A.plan(A.default_config(128), causal=True)["qk_scale"]
    assert p["kind"] == "gluon_attention_fwd" and "num_warps" not in p and p["schedule"].startswith("pipelined")
    assert G.shared_memory_bytes(G.CONFIG[128], 128) <= G.SHARED_MEMORY_LIMIT_SM90
    with pytest.raises(ValueError):
        G.GluonAttentionConfig(block_n=96)
    with pytest.raises(ValueError):
        G.default_config(256)


def test_unsupported_inputs_are_refused():
    torch = pytest.importorskip("torch")
    from hspi_kernels.kernels.triton import attention_gluon as G

    q = torch.zeros(1, 1, 100, 128, dtype=torch.bfloat16)
    ok, why = G.supported(q, q, q, True)
    assert not ok and "multiple" in why
    with pytest.raises(ValueError):
        G.attention(q, q, q, causal=True)
    q = torch.zeros(1, 1, 128, 128, dtype=torch.bfloat16)
    ok, why = G.supported(q, q, q, False)
    assert not ok and "CUDA" in why
