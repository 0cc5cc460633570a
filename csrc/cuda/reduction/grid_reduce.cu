// hspi-build: -fmad=false
//
// fp32 sum of one long vector x[n] over the whole grid. Every addition is __fadd_rn (IEEE RNE,
// subnormals kept), except the atomics of the nondeterministic control (see there).
//
// Deterministic two-pass reduction (fixed G blocks of B threads; G and B are launch parameters
// the wrapper fixes, never derived from the device, so the bits do not depend on the GPU model):
//   pass 1  hspi_reduce_f32_grid_partials(x, partials, n)
//     Global thread g = b*B + t (block b < G, thread t < B, B a power of two <= 1024, dynamic
//     shared memory of B floats) is lane g of L = G*B strided lanes: a sequential run
//     acc = +0.0; acc = rn(acc + x[i]) over i = g, g+L, g+2L, ... < n. Block b then forms the
//     shared-memory stride-halving tree over its B lanes (for s = B/2, ..., 1: v_t = rn(v_t +
//     v_{t+s}) for t < s) and writes partials[b] = v_0.
//   pass 2  hspi_reduce_f32_grid_combine(partials, out, G)
//     One thread: out[0] = sequential run acc = +0.0; acc = rn(acc + partials[b]), b = 0..G-1.
//   plan: Strided(lanes=G*B, inner=Sequential("fp32"),
//                 combine=SplitK(parts=G, layout="contiguous", inner=BlockTree(B),
//                                combine=Sequential("fp32")))
//
// Nondeterministic control  hspi_reduce_f32_atomic(x, out, n)   (out[0] must be +0.0 on entry)
//   Lanes as in pass 1 (L = gridDim.x * blockDim.x, blockDim.x a multiple of 32), then a warp
//   butterfly (__shfl_xor_sync, s = 16..1) and lane 0 of every warp does atomicAdd(out, v).
//   The order of the atomics is whatever order the warps arrive in, so the bits may change from
//   run to run; the float atomic add (RED.ADD.F32) also flushes subnormals (.FTZ). No plan
//   describes it: it is the control of the determinism check, never a fingerprint.
#include <cstdint>

#include "reduction/block_tree.cuh"

extern "C" __global__ void hspi_reduce_f32_grid_partials(const float* __restrict__ x,
                                                         float* __restrict__ partials, long long n) {
  extern __shared__ float lane_sums[];
  const unsigned t = threadIdx.x;
  const long long lanes = (long long)gridDim.x * blockDim.x;
  float acc = 0.0f;
  for (long long i = blockIdx.x * (long long)blockDim.x + t; i < n; i += lanes) acc = __fadd_rn(acc, x[i]);
  lane_sums[t] = acc;
  __syncthreads();
  hspi::block_tree_sum(lane_sums, blockDim.x, t);
  if (t == 0) partials[blockIdx.x] = lane_sums[0];
}

extern "C" __global__ void hspi_reduce_f32_grid_combine(const float* __restrict__ partials,
                                                        float* __restrict__ out, int blocks) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  float acc = 0.0f;
  for (int b = 0; b < blocks; ++b) acc = __fadd_rn(acc, partials[b]);
  out[0] = acc;
}

extern "C" __global__ void hspi_reduce_f32_atomic(const float* __restrict__ x, float* __restrict__ out,
                                                  long long n) {
  const long long lanes = (long long)gridDim.x * blockDim.x;
  float v = 0.0f;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += lanes)
    v = __fadd_rn(v, x[i]);
  for (int s = 16; s > 0; s /= 2) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, s));
  if ((threadIdx.x & 31) == 0) atomicAdd(out, v);
}
