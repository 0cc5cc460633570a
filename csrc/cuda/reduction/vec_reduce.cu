// hspi-build: -fmad=false
//
// Bandwidth-bound deterministic fp32 sum of one long vector x[n] (16-byte aligned). Every
// addition is __fadd_rn (IEEE RNE, subnormals kept); no atomics. G blocks of B threads and the
// unroll U are launch choices the wrapper fixes (hspi_kernels/kernels/cuda/reduction.py), never derived
// from the device; U changes only speed, never the bits.
//
//   pass 1  hspi_reduce_f32_vec4_u{U}_partials(x, partials, n)
//     Thread g = b*B + t of L = G*B owns four accumulators acc.{x,y,z,w} (lanes 4g+c, c<4),
//     each seeded with +0. x is read as float4 vectors; super-iteration s reads the U vectors
//     v = (s*U + u)*L + g, u = 0..U-1 (all U loads issued before the adds), and adds component c
//     of each, in u order, to acc.c. Element i = 4v + c therefore lands in lane i mod 4L, and every
//     lane adds its elements in increasing i. The tail (the last n mod 4UL elements) is read
//     element-wise with the same lane mapping, still in increasing i.
//     Each thread then forms (acc.x + acc.y) + (acc.z + acc.w); block b reduces its B thread
//     values with the shared-memory stride-halving tree and writes partials[b].
//   pass 2  hspi_reduce_f32_vec4_combine(partials, out, G)   (one block of C threads, C a power
//     of two, dynamic shared memory of C floats): thread t sums partials t, t+C, ... from +0 in
//     order, then the stride-halving tree over the C threads; out[0] = its root.
//   plan (hspi_kernels.kernels.cuda.reduction.plan("vec4", blocks=G, block=B)):
//     Strided(lanes=4*G*B, inner=Sequential("fp32", init="zero"),
//       combine=SplitK(parts=G*B, inner=Pairwise(),
//         combine=SplitK(parts=G, inner=BlockTree(B),
//           combine=Strided(lanes=C, inner=Sequential("fp32", init="zero"), combine=BlockTree(C)))))
#include <cstdint>

#include "reduction/block_tree.cuh"

template <int U>
__device__ __forceinline__ void vec4_partials(const float* __restrict__ x, float* __restrict__ partials,
                                              long long n) {
  extern __shared__ float thread_sums[];
  const unsigned t = threadIdx.x;
  const long long lanes = (long long)gridDim.x * blockDim.x;  // L
  const long long g = (long long)blockIdx.x * blockDim.x + t;
  const float4* __restrict__ xv = reinterpret_cast<const float4*>(x);
  const long long step = (long long)U * lanes;  // vectors per super-iteration
  const long long supers = (n / 4) / step;
  float ax = 0.0f, ay = 0.0f, az = 0.0f, aw = 0.0f;
  for (long long s = 0; s < supers; ++s) {
    float4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = __ldg(xv + (s * U + u) * lanes + g);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      ax = __fadd_rn(ax, v[u].x);
      ay = __fadd_rn(ay, v[u].y);
      az = __fadd_rn(az, v[u].z);
      aw = __fadd_rn(aw, v[u].w);
    }
  }
  // tail: elements [supers*step*4, n), same lane mapping, u (hence i) increasing
  const long long base = supers * step * 4;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const long long i = base + ((long long)u * lanes + g) * 4;
    if (i < n) ax = __fadd_rn(ax, x[i]);
    if (i + 1 < n) ay = __fadd_rn(ay, x[i + 1]);
    if (i + 2 < n) az = __fadd_rn(az, x[i + 2]);
    if (i + 3 < n) aw = __fadd_rn(aw, x[i + 3]);
  }
  thread_sums[t] = __fadd_rn(__fadd_rn(ax, ay), __fadd_rn(az, aw));
  __syncthreads();
  hspi::block_tree_sum(thread_sums, blockDim.x, t);
  if (t == 0) partials[blockIdx.x] = thread_sums[0];
}

extern "C" __global__ void hspi_reduce_f32_vec4_u2_partials(const float* __restrict__ x,
                                                            float* __restrict__ partials, long long n) {
  vec4_partials<2>(x, partials, n);
}

extern "C" __global__ void hspi_reduce_f32_vec4_u4_partials(const float* __restrict__ x,
                                                            float* __restrict__ partials, long long n) {
  vec4_partials<4>(x, partials, n);
}

extern "C" __global__ void hspi_reduce_f32_vec4_u8_partials(const float* __restrict__ x,
                                                            float* __restrict__ partials, long long n) {
  vec4_partials<8>(x, partials, n);
}

extern "C" __global__ void hspi_reduce_f32_vec4_combine(const float* __restrict__ partials,
                                                        float* __restrict__ out, int blocks) {
  extern __shared__ float lane_sums[];
  const unsigned t = threadIdx.x;
  float acc = 0.0f;
  for (int b = t; b < blocks; b += blockDim.x) acc = __fadd_rn(acc, partials[b]);
  lane_sums[t] = acc;
  __syncthreads();
  hspi::block_tree_sum(lane_sums, blockDim.x, t);
  if (t == 0) out[0] = lane_sums[0];
}
