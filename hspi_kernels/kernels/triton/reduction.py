"""Row and column sums in Triton with an explicit accumulation order, and the revelation of
``tl.sum``'s own order.

- :func:`row_sum` / :func:`col_sum` (``order="explicit"``): BLOCK lanes; lane j adds its terms
  ``j, j+BLOCK, ...`` left to right into an fp32 accumulator seeded with +0, then the BLOCK lane
  sums are combined by a written-out halving tree ``v[i] += v[i + h]`` for h = BLOCK/2, ..., 1
  (each level a reshape to [2, h] and a sum of two: one addition, no hidden order).
  Plan: ``Strided(BLOCK, inner=Sequential(init="zero"), combine=BlockTree(BLOCK))``.
- :func:`row_sum` with ``order="tl.sum"``: ``acc = +0; acc += tl.sum(chunk)`` over chunks of
  BLOCK in order. The tree inside ``tl.sum`` depends on the layout Triton picks (BLOCK,
  num_warps, arch) and is not documented: :func:`reveal_tl_sum_order` recovers it on the GPU
  (FPRev style) as an ``ExplicitTree`` over BLOCK slots; :func:`plan` then gives
  ``SplitK(chunks, tile=BLOCK, inner=<revealed>, combine=Sequential(init="zero"))``, exact for
  rows whose length is a multiple of BLOCK (a ragged last chunk is padded with +0).

Inputs fp32, bf16 or fp16 (widened exactly to fp32); fp32 output. Every launch passes
``enable_fp_fusion`` explicitly (no products here, so it cannot change the bits). Importing
this module imports neither torch nor Triton.
"""

from __future__ import annotations

import functools
import sys

from hspi_kernels.numerics.plans import BlockTree, ExplicitTree, Sequential, SplitK, Strided

from .gemm import require_triton

__all__ = ["row_sum", "col_sum", "plan", "reveal_tl_sum_order", "tl_sum_lca_sizes"]

ORDERS = ("explicit", "tl.sum")


def _log2(n: int) -> int:
    if n < 1 or n & (n - 1):
        raise ValueError(f"BLOCK must be a power of two, got {n}")
    return n.bit_length() - 1


@functools.cache
def _kernels():
    global triton, tl, _halving_tree, _row_sum_explicit_kernel, _col_sum_explicit_kernel, _row_sum_tl_sum_kernel
    require_triton()
    import triton
    import triton.language as tl

    @triton.jit
    def _halving_tree(v, LOG2_LANES: tl.constexpr):
        """Combine the lanes on axis 0 of v[LANES, W]: v[i] += v[i + h], h = LANES/2 .. 1
        (BlockTree). Each level views v as [2, h, W] and adds the two halves: one fp32 add."""
        for _ in tl.static_range(LOG2_LANES):
            v = tl.sum(tl.reshape(v, (2, v.shape[0] // 2, v.shape[1])), axis=0)
        return v

    @triton.jit
    def _row_sum_explicit_kernel(x_ptr, out_ptr, C, stride_r, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
        """out[row] = sum(x[row, :C]). Order: lane j: acc_j = +0 + x_j + x_{j+BLOCK} + ... (left to
        right), then the halving tree over the BLOCK lanes."""
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, C, BLOCK):
            cols = start + offs
            acc = acc + tl.load(x_ptr + row * stride_r + cols, mask=cols < C, other=0.0).to(tl.float32)
        total = _halving_tree(tl.reshape(acc, (BLOCK, 1)), LOG2_BLOCK)
        tl.store(out_ptr + row + tl.arange(0, 1), tl.reshape(total, (1,)))

    @triton.jit
    def _col_sum_explicit_kernel(x_ptr, out_ptr, R, C, stride_r, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                                 LOG2_BLOCK_R: tl.constexpr):
        """out[col] = sum(x[:R, col]). Order per column: lane j (row offset j in the tile):
        acc_j = +0 + x[j] + x[j+BLOCK_R] + ..., then the halving tree over the BLOCK_R lanes."""
        cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        offs_r = tl.arange(0, BLOCK_R)
        acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        for start in range(0, R, BLOCK_R):
            rows = start + offs_r
            mask = (rows[:, None] < R) & (cols[None, :] < C)
            acc = acc + tl.load(x_ptr + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        total = _halving_tree(acc, LOG2_BLOCK_R)
        tl.store(out_ptr + cols[None, :], total, mask=cols[None, :] < C)

    @triton.jit
    def _row_sum_tl_sum_kernel(x_ptr, out_ptr, C, stride_r, BLOCK: tl.constexpr):
        """out[row] = sum(x[row, :C]). Order: acc = +0; acc += tl.sum(chunk) for the chunks of
        BLOCK in order; the tree inside tl.sum is the compiler's (reveal_tl_sum_order)."""
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        acc = tl.zeros((1,), dtype=tl.float32)
        for start in range(0, C, BLOCK):
            cols = start + offs
            chunk = tl.load(x_ptr + row * stride_r + cols, mask=cols < C, other=0.0).to(tl.float32)
            acc = acc + tl.sum(chunk, axis=0)
        tl.store(out_ptr + row + tl.arange(0, 1), acc)

    return {"row_explicit": _row_sum_explicit_kernel, "col_explicit": _col_sum_explicit_kernel,
            "row_tl_sum": _row_sum_tl_sum_kernel}


def _check_input(x, what: str):
    import torch

    assert x.ndim == 2, f"{what}: a 2-D tensor expected, got shape {tuple(x.shape)}"
    assert x.dtype in (torch.float32, torch.bfloat16, torch.float16), f"{what}: unsupported dtype {x.dtype}"
    assert x.stride(1) == 1 or x.shape[1] <= 1, f"{what}: rows must be contiguous, strides {x.stride()}"


def row_sum(x, *, block: int = 1024, order: str = "explicit", num_warps: int = 4, enable_fp_fusion: bool = False):
    """fp32 sums of the rows of x[R, C] (one program per row) in the order ``order``
    ("explicit" or "tl.sum"); see :func:`plan`."""
    import torch

    kernels = _kernels()
    _check_input(x, "row_sum")
    if order not in ORDERS:
        raise ValueError(f"row_sum: order must be one of {ORDERS}, got {order!r}")
    R, C = x.shape
    out = torch.empty(R, device=x.device, dtype=torch.float32)
    if R == 0:
        return out
    launch = dict(num_warps=num_warps, num_stages=1, enable_fp_fusion=enable_fp_fusion)
    if order == "explicit":
        kernels["row_explicit"][(R,)](x, out, C, x.stride(0), BLOCK=block, LOG2_BLOCK=_log2(block), **launch)
    else:
        _log2(block)
        kernels["row_tl_sum"][(R,)](x, out, C, x.stride(0), BLOCK=block, **launch)
    return out


def col_sum(x, *, block_r: int = 8, block_c: int = 256, num_warps: int = 4, enable_fp_fusion: bool = False):
    """fp32 sums of the columns of x[R, C] (one program per BLOCK_C columns), explicit order."""
    import torch

    kernels = _kernels()
    _check_input(x, "col_sum")
    R, C = x.shape
    out = torch.empty(C, device=x.device, dtype=torch.float32)
    if C == 0:
        return out
    _log2(block_c)
    kernels["col_explicit"][(triton.cdiv(C, block_c),)](
        x, out, R, C, x.stride(0), BLOCK_R=block_r, BLOCK_C=block_c, LOG2_BLOCK_R=_log2(block_r),
        num_warps=num_warps, num_stages=1, enable_fp_fusion=enable_fp_fusion)
    return out


def plan(n: int, *, block: int, order: str = "explicit", tl_sum_tree=None):
    """The plan of one sum of n terms. ``order="explicit"``: row_sum's BLOCK lanes, or col_sum
    with ``block=block_r``. ``order="tl.sum"``: needs ``tl_sum_tree``, the ExplicitTree over
    BLOCK slots returned by :func:`reveal_tl_sum_order` for the same BLOCK and num_warps; exact
    for n a multiple of BLOCK (else evaluate on the row padded with +0 to one)."""
    _log2(block)
    if order == "explicit":
        return Strided(block, inner=Sequential("fp32", init="zero"), combine=BlockTree(block))
    if order != "tl.sum":
        raise ValueError(f"plan: order must be one of {ORDERS}, got {order!r}")
    if not isinstance(tl_sum_tree, ExplicitTree) or len(tl_sum_tree.leaves()) != block:
        raise ValueError("plan(order='tl.sum') needs the ExplicitTree over BLOCK slots from reveal_tl_sum_order")
    chunks = max(1, -(-n // block))
    return SplitK(chunks, "contiguous", inner=tl_sum_tree, combine=Sequential("fp32", init="zero"), tile=block)


# -- revealing tl.sum's tree (FPRev) ---------------------------------------------------------------
def tl_sum_lca_sizes(i: int, js, *, block: int, num_warps: int = 4, device="cuda"):
    """For each j in js, the number of slots under the addition where slots i and j first meet
    inside ``tl.sum`` over [BLOCK] (the production tl.sum row kernel, one row per j).

    Each row is all ones except ``+big`` at i and ``-big`` at j, big = 2^(25 + log2 BLOCK): a one
    that meets big before i and j cancel is absorbed, every other one survives, so the row sum
    is BLOCK - |subtree(lca(i, j))| exactly (FPRev, Xie et al. 2024)."""
    import torch

    js = torch.as_tensor(list(js), dtype=torch.int64)
    big = float(2 ** (25 + _log2(block)))
    x = torch.ones((len(js), block), dtype=torch.float32)
    x[:, i] = big
    x[torch.arange(len(js)), js] = -big
    sums = row_sum(x.to(device), block=block, order="tl.sum", num_warps=num_warps).cpu()
    sizes = block - sums.to(torch.float64)
    if not torch.equal(sizes, sizes.round()) or bool((sizes < 2).any()) or bool((sizes > block).any()):
        raise RuntimeError(f"tl.sum does not behave as a fixed addition tree (lca sizes {sizes.tolist()[:8]}...)")
    return [int(s) for s in sizes]


def reveal_tl_sum_order(block: int = 1024, num_warps: int = 4, device="cuda"):
    """Recover the addition tree of ``tl.sum`` over a [BLOCK] fp32 tensor in the tl.sum row
    kernel (this BLOCK and num_warps, this GPU and Triton) and return it as an ``ExplicitTree``
    over the BLOCK slots.

    Recursive FPRev: for a subtree S (initially all slots) take its first slot i and measure
    lca(i, j) for the other j in S in one launch. The slots j with the same lca size form the
    sibling subtree that joins i's side at that size, so S = (((i, S_1), S_2), ...) with the
    groups in increasing size; each group is resolved the same way. Every merge is checked
    against the measured size, so a reduction that is not one fixed binary tree raises."""
    _log2(block)

    def build(slots: list[int]):
        if len(slots) == 1:
            return slots[0]
        i, rest = slots[0], slots[1:]
        sizes = tl_sum_lca_sizes(i, rest, block=block, num_warps=num_warps, device=device)
        groups: dict[int, list[int]] = {}
        for j, s in zip(rest, sizes):
            groups.setdefault(s, []).append(j)
        node, count = i, 1
        for size in sorted(groups):
            group = groups[size]
            node, count = (node, build(group)), count + len(group)
            if count != size:
                raise RuntimeError(f"tl.sum order is not a binary tree: subtree of size {size} holds {count} slots")
        return node

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * block + 100))
    try:
        tree = build(list(range(block)))
    finally:
        sys.setrecursionlimit(limit)
    return ExplicitTree(tree if isinstance(tree, tuple) else (tree,))
