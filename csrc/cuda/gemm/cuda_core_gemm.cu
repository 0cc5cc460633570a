// hspi-build: -fmad=false
//
// CUDA-core GEMM, rung 1 of the ladder: C[M,N] = A[M,K] · B[K,N], all row-major and contiguous,
// fp32 (f32) or fp64 (f64), one output element per thread, no tensor cores, no shared-memory
// reuse. Speed is secondary: the contract is the order in which each thread forms its dot product
//     c[m,n] = sum_k  a[m,k] * b[k,n]       (term k is the product p_k = a[m,k] * b[k,n])
//
// Every arithmetic operation is an explicit IEEE intrinsic with round-to-nearest-even:
//   fused ("fma")     step(acc, k) = fma(a_k, b_k, acc)              __fmaf_rn / __fma_rn
//   separate ("mul_add") step(acc, k) = rn(acc + rn(a_k * b_k))       __fmul_rn then __fadd_rn
// and every combine of partial sums is rn(x + y) (__fadd_rn / __dadd_rn). -fmad=false pins that
// nvcc contracts nothing on its own. Subnormals are kept (no -ftz; the _rn intrinsics never flush).
//
// A "sequential run" over an index list k_0, k_1, ... starts from acc = +0.0 and applies
// step(acc, k_i) in list order; an empty list gives +0.0 (so C = +0.0 when K == 0).
//
// Entry points (T = f32 | f64, F = fma | mul_add):
//   hspi_gemm_<T>_seq_<F>       sequential run over k = 0, 1, ..., K-1.
//                                  plan: Sequential(T, fma=F)
//   hspi_gemm_<T>_rev_<F>       sequential run over k = K-1, K-2, ..., 0.
//                                  plan: Sequential(T, fma=F) on the reversed k axis
//   hspi_gemm_<T>_strided_<F>   `lanes` L (1 <= L <= 64) partial sums: lane j is a sequential run
//                               over k = j, j+L, j+2L, ... < K (an empty lane is +0.0); the L lane
//                               sums v_0..v_{L-1} are then combined by the balanced adjacent-pair
//                               tree:  for s = 1, 2, 4, ... < L:  v_j = rn(v_j + v_{j+s}) for
//                               j = 0, 2s, 4s, ... with j+s < L;  result v_0.  For L a power of two
//                               that is ((v0+v1)+(v2+v3))+((v4+v5)+(v6+v7)) ..., i.e. the
//                               recursive halving pairwise sum.
//                                  plan: Strided(lanes=L, inner=Sequential(T, fma=F), combine=Pairwise())
//   hspi_gemm_<T>_splitk_partial_<F> + hspi_gemm_<T>_splitk_combine
//                               split-K in two launches (as cuBLAS' split-K + splitKreduce):
//                               P parts, part p = k in [p*c, min((p+1)*c, K)) with c = ceil(K/P)
//                               (contiguous; trailing parts may be short or empty), each a
//                               sequential run written to W[p, m, n]; the combine is a sequential
//                               run of additions: acc = +0.0, acc = rn(acc + W[p]) for p = 0..P-1.
//                                  plan: SplitK(parts=P, layout="contiguous",
//                                               inner=Sequential(T, fma=F), combine=Sequential(T))
//
// Launch: any 2-D grid/block; threads walk (n, m) with grid-stride loops over x = n and y = m
// (the wrappers use blocks of 32 x 8). The split-K partial kernel takes part p = blockIdx.z and
// needs gridDim.z == parts. Indices are 64-bit.
#include <cstdint>

namespace {

template <typename T>
struct Ieee;

template <>
struct Ieee<float> {
  static __device__ __forceinline__ float fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
  static __device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
  static __device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
};

template <>
struct Ieee<double> {
  static __device__ __forceinline__ double fma(double a, double b, double c) { return __fma_rn(a, b, c); }
  static __device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
  static __device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
};

// One accumulation step: acc <- acc + a*b with one (fused) or two (separate) roundings.
template <typename T, bool kFused>
__device__ __forceinline__ T step(T acc, T a, T b) {
  if (kFused) return Ieee<T>::fma(a, b, acc);
  return Ieee<T>::add(acc, Ieee<T>::mul(a, b));
}

// Sequential run over k = k_begin, k_begin + stride, ... while k < k_end (stride > 0).
template <typename T, bool kFused>
__device__ __forceinline__ T run_forward(const T* __restrict__ a_row, const T* __restrict__ b_col,
                                         long long ldb, long long k_begin, long long k_end,
                                         long long stride) {
  T acc = T(0);
  for (long long k = k_begin; k < k_end; k += stride) acc = step<T, kFused>(acc, a_row[k], b_col[k * ldb]);
  return acc;
}

constexpr int kMaxLanes = 64;

#define HSPI_FOR_EACH_OUTPUT(M, N)                                                             \
  for (long long m = blockIdx.y * (long long)blockDim.y + threadIdx.y; m < (M);                \
       m += (long long)gridDim.y * blockDim.y)                                                 \
    for (long long n = blockIdx.x * (long long)blockDim.x + threadIdx.x; n < (N);              \
         n += (long long)gridDim.x * blockDim.x)

template <typename T, bool kFused>
__device__ __forceinline__ void gemm_seq(const T* __restrict__ A, const T* __restrict__ B,
                                         T* __restrict__ C, long long M, long long N, long long K) {
  HSPI_FOR_EACH_OUTPUT(M, N) {
    C[m * N + n] = run_forward<T, kFused>(A + m * K, B + n, N, 0, K, 1);
  }
}

template <typename T, bool kFused>
__device__ __forceinline__ void gemm_rev(const T* __restrict__ A, const T* __restrict__ B,
                                         T* __restrict__ C, long long M, long long N, long long K) {
  HSPI_FOR_EACH_OUTPUT(M, N) {
    const T* a_row = A + m * K;
    const T* b_col = B + n;
    T acc = T(0);
    for (long long k = K - 1; k >= 0; --k) acc = step<T, kFused>(acc, a_row[k], b_col[k * N]);
    C[m * N + n] = acc;
  }
}

template <typename T, bool kFused>
__device__ __forceinline__ void gemm_strided(const T* __restrict__ A, const T* __restrict__ B,
                                             T* __restrict__ C, long long M, long long N,
                                             long long K, int lanes) {
  HSPI_FOR_EACH_OUTPUT(M, N) {
    T v[kMaxLanes];
    for (int j = 0; j < lanes; ++j) v[j] = run_forward<T, kFused>(A + m * K, B + n, N, j, K, lanes);
    // balanced adjacent-pair tree over v_0 .. v_{lanes-1}
    for (int s = 1; s < lanes; s *= 2)
      for (int j = 0; j + s < lanes; j += 2 * s) v[j] = Ieee<T>::add(v[j], v[j + s]);
    C[m * N + n] = v[0];
  }
}

template <typename T, bool kFused>
__device__ __forceinline__ void gemm_splitk_partial(const T* __restrict__ A, const T* __restrict__ B,
                                                    T* __restrict__ W, long long M, long long N,
                                                    long long K, int parts) {
  const long long chunk = (K + parts - 1) / parts;
  const long long p = blockIdx.z;
  const long long k_begin = p * chunk < K ? p * chunk : K;
  const long long k_end = k_begin + chunk < K ? k_begin + chunk : K;
  T* w = W + p * M * N;
  HSPI_FOR_EACH_OUTPUT(M, N) {
    w[m * N + n] = run_forward<T, kFused>(A + m * K, B + n, N, k_begin, k_end, 1);
  }
}

// C[i] = sequential run of additions over W[0, i], W[1, i], ..., W[parts-1, i]; 1-D grid-stride.
template <typename T>
__device__ __forceinline__ void gemm_splitk_combine(const T* __restrict__ W, T* __restrict__ C,
                                                    long long MN, int parts) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < MN;
       i += (long long)gridDim.x * blockDim.x) {
    T acc = T(0);
    for (int p = 0; p < parts; ++p) acc = Ieee<T>::add(acc, W[p * MN + i]);
    C[i] = acc;
  }
}

}  // namespace

#define HSPI_GEMM_ENTRY_POINTS(TAG, T)                                                                     \
  extern "C" __global__ void hspi_gemm_##TAG##_seq_fma(const T* __restrict__ A, const T* __restrict__ B,   \
                                                       T* __restrict__ C, long long M, long long N,        \
                                                       long long K) {                                      \
    gemm_seq<T, true>(A, B, C, M, N, K);                                                                   \
  }                                                                                                        \
  extern "C" __global__ void hspi_gemm_##TAG##_seq_mul_add(const T* __restrict__ A,                        \
                                                           const T* __restrict__ B, T* __restrict__ C,     \
                                                           long long M, long long N, long long K) {        \
    gemm_seq<T, false>(A, B, C, M, N, K);                                                                  \
  }                                                                                                        \
  extern "C" __global__ void hspi_gemm_##TAG##_rev_fma(const T* __restrict__ A, const T* __restrict__ B,   \
                                                       T* __restrict__ C, long long M, long long N,        \
                                                       long long K) {                                      \
    gemm_rev<T, true>(A, B, C, M, N, K);                                                                   \
  }                                                                                                        \
  extern "C" __global__ void hspi_gemm_##TAG##_rev_mul_add(const T* __restrict__ A,                        \
                                                           const T* __restrict__ B, T* __restrict__ C,     \
                                                           long long M, long long N, long long K) {        \
    gemm_rev<T, false>(A, B, C, M, N, K);                                                                  \
  }                                                                                                        \
  extern "C" __global__ void hspi_gemm_##TAG##_strided_fma(const T* __restrict__ A,                        \
                                                           const T* __restrict__ B, T* __restrict__ C,     \
                                                           long long M, long long N, long long K,          \
                                                           int lanes) {                                    \
    gemm_strided<T, true>(A, B, C, M, N, K, lanes);                                                        \
  }                                                                                                        \
  extern "C" __global__ void hspi_gemm_##TAG##_strided_mul_add(const T* __restrict__ A,                    \
                                                               const T* __restrict__ B,                    \
                                                               T* __restrict__ C, long long M,             \
                                                               long long N, long long K, int lanes) {      \
    gemm_strided<T, false>(A, B, C, M, N, K, lanes);                                                       \
  }                                                                                                        \
  extern "C" __global__ void hspi_gemm_##TAG##_splitk_partial_fma(const T* __restrict__ A,                 \
                                                                  const T* __restrict__ B,                 \
                                                                  T* __restrict__ W, long long M,          \
                                                                  long long N, long long K, int parts) {   \
    gemm_splitk_partial<T, true>(A, B, W, M, N, K, parts);                                                 \
  }                                                                                                        \
  extern "C" __global__ void hspi_gemm_##TAG##_splitk_partial_mul_add(const T* __restrict__ A,             \
                                                                      const T* __restrict__ B,             \
                                                                      T* __restrict__ W, long long M,      \
                                                                      long long N, long long K,            \
                                                                      int parts) {                         \
    gemm_splitk_partial<T, false>(A, B, W, M, N, K, parts);                                                \
  }                                                                                                        \
  extern "C" __global__ void hspi_gemm_##TAG##_splitk_combine(const T* __restrict__ W, T* __restrict__ C,  \
                                                              long long MN, int parts) {                   \
    gemm_splitk_combine<T>(W, C, MN, parts);                                                               \
  }

HSPI_GEMM_ENTRY_POINTS(f32, float)
HSPI_GEMM_ENTRY_POINTS(f64, double)
