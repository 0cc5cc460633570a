// Split-K order shared by the tensor-core GEMM rungs (mma_sync_gemm.cu, wgmma_gemm.cu): one
// definition of how the K parts of an fp32 output are started and combined.
//
// For one fragment of NACC fp32 outputs at D[idx[i]] (C[idx[i]] when has_c):
//   split_k == 1: acc = C (or +0); chain(0, K, acc); D = acc
//                 i.e. Chain(TensorCore(...), k=k_inst)
//   split_k == P: K cut into P contiguous parts of K/P; part p: acc = +0; chain(p·K/P,
//                 (p+1)·K/P, acc); the parts combined in fp32 RNE in order p = 0..P-1 after C:
//                 D = ((C + part_0) + part_1) + ...   (without C: (part_0 + part_1) + ...)
//                 i.e. SplitK(P, "contiguous", inner=Chain(...), combine=Sequential("fp32")).
// `chain(k_begin, k_end, acc)` runs the kernel's tensor-core chain over [k_begin, k_end) into acc
// (which holds the chain's initial value). The combine is __fadd_rn; the including .cu pins
// -fmad=false, so nothing is contracted.
#pragma once

namespace hspi {

template <int NACC, class ChainFn>
__device__ __forceinline__ void splitk_fp32(const float* C, float* D, const long long (&idx)[NACC], int K,
                                            int has_c, int split_k, ChainFn&& chain) {
  const int k_part = K / split_k;
  float out[NACC];
  for (int p = 0; p < split_k; ++p) {
    float acc[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = (split_k == 1 && has_c) ? C[idx[i]] : 0.0f;
    chain(p * k_part, (p + 1) * k_part, acc);
#pragma unroll
    for (int i = 0; i < NACC; ++i) {
      if (split_k == 1) {
        out[i] = acc[i];
      } else if (p == 0) {
        out[i] = has_c ? __fadd_rn(C[idx[i]], acc[i]) : acc[i];
      } else {
        out[i] = __fadd_rn(out[i], acc[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < NACC; ++i) D[idx[i]] = out[i];
}

}  // namespace hspi
