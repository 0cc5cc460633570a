// The block's shared-memory stride-halving tree, shared by the reduction kernels
// (grid_reduce.cu, row_reduce.cu, vec_reduce.cu): one definition of the BlockTree(B) order.
//
// sums[0..n) holds one fp32 value per thread (n = the block's thread count, a power of two);
// for s = n/2, n/4, ..., 1: sums[t] = rn(sums[t] + sums[t + s]) for t < s, a __syncthreads()
// after every level. On return sums[0] is the block's sum. Every thread of the block calls it
// (it synchronises); the caller has synchronised after writing sums. The adds are __fadd_rn
// (IEEE RNE, never contracted).
#pragma once

namespace hspi {

__device__ __forceinline__ void block_tree_sum(float* sums, unsigned n, unsigned t) {
  for (unsigned s = n / 2; s > 0; s /= 2) {
    if (t < s) sums[t] = __fadd_rn(sums[t], sums[t + s]);
    __syncthreads();
  }
}

}  // namespace hspi
