// hspi-build: -fmad=false
//
// fp32 row sums: out[r] = sum_i x[r, i] for x[rows, n] row-major contiguous, each in a fixed,
// stated order. Every addition is __fadd_rn (one IEEE RNE rounding, subnormals kept), so no
// contraction or reassociation question arises. Notation used below:
//   sequential run over i_0, i_1, ...:  acc = +0.0; acc = rn(acc + x[r, i_t]) in list order
//                                       (an empty list gives +0.0; so does n == 0);
//   strided lanes L:                    lane j (0 <= j < L) is a sequential run over
//                                       i = j, j+L, j+2L, ... < n;
//   stride-halving tree over v_0..v_{L-1} (L a power of two):
//                                       for s = L/2, L/4, ..., 1:  v_j = rn(v_j + v_{j+s}) for
//                                       all j < s (simultaneously); result v_0.
//                                       That is ((v0+v4)+(v2+v6))+((v1+v5)+(v3+v7)) for L = 8.
//
// hspi_reduce_rows_f32_sequential(x, out, rows, n)
//   One thread per row (1-D grid-stride over rows): a sequential run over i = 0 .. n-1.
//   plan: Sequential("fp32")
// hspi_reduce_rows_f32_block_tree(x, out, rows, n)
//   One block per row (grid-stride over rows by blockIdx.x), B = blockDim.x threads, B a power
//   of two in [1, 1024], dynamic shared memory of B floats. Thread t forms lane t of B strided
//   lanes, then a shared-memory stride-halving tree over the B lanes (__syncthreads between
//   levels, no warp-synchronous shortcut). out[r] = v_0.
//   plan: Strided(lanes=B, inner=Sequential("fp32"), combine=BlockTree(B))
// hspi_reduce_rows_f32_warp_xor(x, out, rows, n, width)
//   `width` W consecutive lanes of a warp per row (W a power of two in [1, 32]; 32/W rows per
//   warp, rows grid-strided per warp). Group lane j forms lane j of W strided lanes, then the
//   butterfly: for s = W/2, ..., 1:  v = rn(v + __shfl_xor_sync(v, s)). Every lane of the group
//   ends with the same value (IEEE addition commutes), which is the stride-halving tree over the
//   W lanes; group lane 0 stores it.
//   plan: Strided(lanes=W, inner=Sequential("fp32"), combine=WarpButterfly(W))
// hspi_reduce_rows_f32_warp_down(x, out, rows, n, width)
//   As warp_xor but the combine is the shift-down ladder: for s = W/2, ..., 1:
//   v = rn(v + __shfl_down_sync(v, s, W)). Group lane 0 ends with the stride-halving tree over the
//   W lanes (bit-identical to warp_xor; the other lanes hold partial garbage) and stores it.
//   plan: Strided(lanes=W, inner=Sequential("fp32"), combine=<warp shift-down, W>); its lane-0
//   value equals combine=WarpButterfly(W).
#include <cstdint>

#include "reduction/block_tree.cuh"

extern "C" __global__ void hspi_reduce_rows_f32_sequential(const float* __restrict__ x,
                                                           float* __restrict__ out, long long rows,
                                                           long long n) {
  for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < rows;
       r += (long long)gridDim.x * blockDim.x) {
    const float* row = x + r * n;
    float acc = 0.0f;
    for (long long i = 0; i < n; ++i) acc = __fadd_rn(acc, row[i]);
    out[r] = acc;
  }
}

extern "C" __global__ void hspi_reduce_rows_f32_block_tree(const float* __restrict__ x,
                                                           float* __restrict__ out, long long rows,
                                                           long long n) {
  extern __shared__ float lane_sums[];
  const unsigned t = threadIdx.x;
  const unsigned lanes = blockDim.x;
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* row = x + r * n;
    float acc = 0.0f;
    for (long long i = t; i < n; i += lanes) acc = __fadd_rn(acc, row[i]);
    lane_sums[t] = acc;
    __syncthreads();
    hspi::block_tree_sum(lane_sums, lanes, t);
    if (t == 0) out[r] = lane_sums[0];
    __syncthreads();  // lane_sums is reused by the next row
  }
}

namespace {

// Walks rows in groups of `width` lanes. The loop bound is uniform per warp (every lane of a warp
// iterates the same number of times), so the full-mask shuffles below are always legal.
template <bool kXor>
__device__ __forceinline__ void warp_rows(const float* __restrict__ x, float* __restrict__ out,
                                          long long rows, long long n, int width) {
  const int lane = threadIdx.x & 31;
  const int group_lane = lane & (width - 1);
  const int groups_per_warp = 32 / width;
  const long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
  const long long warps = (gridDim.x * (long long)blockDim.x) / 32;
  for (long long first = warp * groups_per_warp; first < rows; first += warps * groups_per_warp) {
    const long long r = first + lane / width;
    float v = 0.0f;
    if (r < rows) {
      const float* row = x + r * n;
      for (long long i = group_lane; i < n; i += width) v = __fadd_rn(v, row[i]);
    }
    for (int s = width / 2; s > 0; s /= 2) {
      const float other = kXor ? __shfl_xor_sync(0xffffffffu, v, s, width)
                               : __shfl_down_sync(0xffffffffu, v, s, width);
      v = __fadd_rn(v, other);
    }
    if (group_lane == 0 && r < rows) out[r] = v;
  }
}

}  // namespace

extern "C" __global__ void hspi_reduce_rows_f32_warp_xor(const float* __restrict__ x,
                                                         float* __restrict__ out, long long rows,
                                                         long long n, int width) {
  warp_rows<true>(x, out, rows, n, width);
}

extern "C" __global__ void hspi_reduce_rows_f32_warp_down(const float* __restrict__ x,
                                                          float* __restrict__ out, long long rows,
                                                          long long n, int width) {
  warp_rows<false>(x, out, rows, n, width);
}
