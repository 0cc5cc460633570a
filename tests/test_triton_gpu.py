"""Triton kernels on a real GPU, compiled (this file must not set TRITON_INTERPRET: the launch
cache records compiled kernels only). Skipped without a CUDA device."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="TRITON_INTERPRET=1 (another test module set it): compiled kernels needed")


@pytest.mark.gpu
def test_launch_cache_replays_the_generic_launch_bitwise():
    """The second matmul(a, b) of a launch key takes the recorded kernel directly; its bits equal
    the generic launcher's (an explicit config is a different key: its first call is generic)."""
    torch = pytest.importorskip("torch")
    from hspi_kernels.kernels.triton import gemm as G

    for M, N, K in ((1, 4096, 4096), (16, 4096, 4096), (64, 4096, 1024), (256, 4096, 4096), (4096, 4096, 4096)):
        g = torch.Generator(device="cuda").manual_seed(M)
        a, b = (torch.randn(s, device="cuda", generator=g).to(torch.bfloat16) for s in ((M, K), (K, N)))
        G.matmul(a, b)  # records the launch of this key
        key = G._launch_key(a, b, None, None)
        assert key in G._LAUNCHES, f"no launch recorded for {M}x{N}x{K}"
        a2, b2 = a.clone() * 0.5, b.clone() - 1
        fast = G.matmul(a2, b2)
        generic = G.matmul(a2, b2, G.shape_config("bf16", M, N, K, tma=G.tma_ready(a2, b2, a2.dtype)))
        assert torch.equal(fast.view(torch.int16), generic.view(torch.int16)), f"{M}x{N}x{K}: fast path bits differ"
    # negative control: the comparison tells apart what the recorded launch computes on other operands
    wrong = G._LAUNCHES[G._launch_key(a, b, None, None)]
    small = torch.ones(4096, 4096, device="cuda", dtype=torch.bfloat16)
    assert not torch.equal(wrong(small, small).view(torch.int16), generic.view(torch.int16))
