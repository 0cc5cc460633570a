// hspi-build: -fmad=false
//
// Tensor-core GEMM rung "mma.sync": D = C + A·B with inline-PTX mma.sync.aligned, one warp per
// 16×8 output tile, K walked in instruction order. Correctness and a stated order first: the
// operands are loaded element by element from global memory straight into the fragment
// registers (no shared memory, no vector loads).
//
//   A [M, K] row-major, B [K, N] row-major, C and D [M, N] row-major.
//   M % 16 == 0, N % 8 == 0, K % (split_k · k_inst) == 0 (the wrapper checks).
//
// Kernels (extern "C"), instruction, operand storage:
//   hspi_mma_sync_f16_f32   m16n8k16 .f32.f16.f16.f32    A, B uint16 (fp16 bits); C, D fp32
//   hspi_mma_sync_bf16_f32  m16n8k16 .f32.bf16.bf16.f32  A, B uint16 (bf16 bits); C, D fp32
//   hspi_mma_sync_f16_f16   m16n8k16 .f16.f16.f16.f16    A, B, C, D uint16 (fp16 bits)
//   hspi_mma_sync_tf32_f32  m16n8k8  .f32.tf32.tf32.f32  A, B fp32 words (passed unmodified:
//                                                        the tensor core reads the tf32 bits)
//   hspi_mma_sync_e4m3_f32  m16n8k32 .f32.e4m3.e4m3.f32  A, B uint8; C, D fp32   (sm_89+)
//   hspi_mma_sync_e5m2_f32  m16n8k32 .f32.e5m2.e5m2.f32  A, B uint8; C, D fp32   (sm_89+)
//
// Accumulation order (the plan this launch implements), per output element d[i, j]:
//   split_k == 1: acc = C[i, j] (or +0 when has_c == 0); for k0 = 0, k_inst, 2·k_inst, ... < K:
//                 acc = mma(A[i, k0:k0+k_inst], B[k0:k0+k_inst, j], acc)
//                 i.e. Chain(TensorCore(arch, in, out, "mma.sync"), k=K); one instruction is
//                 one block of the model when its k equals the arch's G (Hopper fp16/bf16: 16).
//   split_k == P: K is cut into P contiguous parts of K/P; each part is the chain above started
//                 from +0; the parts are combined in fp32 RNE in order p = 0..P-1, after C:
//                 d = ((C + part_0) + part_1) + ...   (without C: (part_0 + part_1) + ...)
//                 i.e. SplitK(P, "contiguous", inner=Chain(...), combine=Sequential("fp32")).
//                 fp32 output only.
// The split-K start and combine (splitk_combine.cuh, shared with wgmma_gemm.cu) use __fadd_rn,
// and -fmad=false keeps nvcc from contracting anything else.

#include "gemm/splitk_combine.cuh"

namespace {

constexpr int WARPS_PER_BLOCK = 4;

// Fragment geometry of mma.m16n8k{8,16,32} with 32-bit registers holding EPR = 4 / ESIZE
// elements (PTX ISA, "Matrix fragments for mma.m16n8k*"): lane = 4·g + t,
//   A register r (0..3): row g + 8·(r & 1), columns EPR·t + (K_INST/2)·(r >> 1) + e, e < EPR
//   B register r (0..1): rows (k) EPR·t + (K_INST/2)·r + e, column g
//   C/D element i (0..3): row g + 8·(i >> 1), column 2·t + (i & 1)
// Element e sits in bits [8·ESIZE·e, 8·ESIZE·(e+1)) of its register.
template <int ESIZE>
__device__ __forceinline__ unsigned load_elem(const unsigned char* base, long long index) {
  if constexpr (ESIZE == 1) {
    return base[index];
  } else if constexpr (ESIZE == 2) {
    return reinterpret_cast<const unsigned short*>(base)[index];
  } else {
    return reinterpret_cast<const unsigned*>(base)[index];
  }
}

template <int ESIZE, int K_INST>
__device__ __forceinline__ void load_a(const unsigned char* A, int K, int row0, int k0, int g, int t,
                                       unsigned (&a)[4]) {
  constexpr int EPR = 4 / ESIZE;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = row0 + g + 8 * (r & 1);
    const int col = k0 + EPR * t + (K_INST / 2) * (r >> 1);
    unsigned word = 0;
#pragma unroll
    for (int e = 0; e < EPR; ++e) {
      word |= load_elem<ESIZE>(A, (long long)row * K + col + e) << (8 * ESIZE * e);
    }
    a[r] = word;
  }
}

template <int ESIZE, int K_INST>
__device__ __forceinline__ void load_b(const unsigned char* B, int N, int col0, int k0, int g, int t,
                                       unsigned (&b)[2]) {
  constexpr int EPR = 4 / ESIZE;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int k = k0 + EPR * t + (K_INST / 2) * r;
    unsigned word = 0;
#pragma unroll
    for (int e = 0; e < EPR; ++e) {
      word |= load_elem<ESIZE>(B, (long long)(k + e) * N + col0 + g) << (8 * ESIZE * e);
    }
    b[r] = word;
  }
}

// One instruction per kind; the accumulator registers are both C and D (fed back).
enum class Kind { F16_F32, BF16_F32, TF32_F32, E4M3_F32, E5M2_F32 };

template <Kind KIND>
struct Op;

template <>
struct Op<Kind::F16_F32> {
  static constexpr int ESIZE = 2, K_INST = 16;
  static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <>
struct Op<Kind::BF16_F32> {
  static constexpr int ESIZE = 2, K_INST = 16;
  static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <>
struct Op<Kind::TF32_F32> {
  static constexpr int ESIZE = 4, K_INST = 8;
  static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <>
struct Op<Kind::E4M3_F32> {
  static constexpr int ESIZE = 1, K_INST = 32;
  static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();  // fp8 mma.sync needs sm_89+
#endif
  }
};

template <>
struct Op<Kind::E5M2_F32> {
  static constexpr int ESIZE = 1, K_INST = 32;
  static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e5m2.e5m2.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
  }
};

struct Tile {
  int row0, col0, g, t;
  bool valid;
};

__device__ __forceinline__ Tile warp_tile(int M, int N) {
  const int warp = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5);
  const int lane = threadIdx.x & 31;
  const int tiles_n = N / 8;
  Tile tile;
  tile.valid = warp < (M / 16) * tiles_n;  // uniform per warp: mma.sync.aligned needs all 32 lanes
  tile.row0 = (warp / tiles_n) * 16;
  tile.col0 = (warp % tiles_n) * 8;
  tile.g = lane >> 2;
  tile.t = lane & 3;
  return tile;
}

// fp32-accumulating kinds, with the optional split-K (see the header for the order).
template <Kind KIND>
__device__ __forceinline__ void gemm_f32(const void* A_, const void* B_, const float* C, float* D, int M,
                                         int N, int K, int has_c, int split_k) {
  using O = Op<KIND>;
  const Tile tile = warp_tile(M, N);
  if (!tile.valid) return;
  const auto* A = static_cast<const unsigned char*>(A_);
  const auto* B = static_cast<const unsigned char*>(B_);
  long long idx[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    idx[i] = (long long)(tile.row0 + tile.g + 8 * (i >> 1)) * N + tile.col0 + 2 * tile.t + (i & 1);
  }
  hspi::splitk_fp32<4>(C, D, idx, K, has_c, split_k, [&](int k_begin, int k_end, float (&acc)[4]) {
    for (int k0 = k_begin; k0 < k_end; k0 += O::K_INST) {
      unsigned a[4], b[2];
      load_a<O::ESIZE, O::K_INST>(A, K, tile.row0, k0, tile.g, tile.t, a);
      load_b<O::ESIZE, O::K_INST>(B, N, tile.col0, k0, tile.g, tile.t, b);
      O::mma(acc, a, b);
    }
  });
}

}  // namespace

#define HSPI_MMA_F32_KERNEL(name, kind)                                                             \
  extern "C" __global__ void name(const void* __restrict__ A, const void* __restrict__ B,         \
                                  const float* __restrict__ C, float* __restrict__ D, int M, int N, \
                                  int K, int has_c, int split_k) {                                  \
    gemm_f32<kind>(A, B, C, D, M, N, K, has_c, split_k);                                            \
  }

HSPI_MMA_F32_KERNEL(hspi_mma_sync_f16_f32, Kind::F16_F32)
HSPI_MMA_F32_KERNEL(hspi_mma_sync_bf16_f32, Kind::BF16_F32)
HSPI_MMA_F32_KERNEL(hspi_mma_sync_tf32_f32, Kind::TF32_F32)
HSPI_MMA_F32_KERNEL(hspi_mma_sync_e4m3_f32, Kind::E4M3_F32)
HSPI_MMA_F32_KERNEL(hspi_mma_sync_e5m2_f32, Kind::E5M2_F32)

// fp16 inputs, fp16 accumulator (C/D registers hold f16x2: element 2·t in the low half).
// Same chain order; no split-K. C, D: uint16 fp16 bits.
extern "C" __global__ void hspi_mma_sync_f16_f16(const void* __restrict__ A_, const void* __restrict__ B_,
                                                 const unsigned short* __restrict__ C,
                                                 unsigned short* __restrict__ D, int M, int N, int K,
                                                 int has_c, int split_k) {
  const Tile tile = warp_tile(M, N);
  if (!tile.valid || split_k != 1) return;
  const auto* A = static_cast<const unsigned char*>(A_);
  const auto* B = static_cast<const unsigned char*>(B_);
  long long idx[2];
  unsigned acc[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    idx[r] = (long long)(tile.row0 + tile.g + 8 * r) * N + tile.col0 + 2 * tile.t;
    acc[r] = has_c ? ((unsigned)C[idx[r]] | ((unsigned)C[idx[r] + 1] << 16)) : 0u;
  }
  for (int k0 = 0; k0 < K; k0 += 16) {
    unsigned a[4], b[2];
    load_a<2, 16>(A, K, tile.row0, k0, tile.g, tile.t, a);
    load_b<2, 16>(B, N, tile.col0, k0, tile.g, tile.t, b);
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f16.f16.f16.f16 {%0,%1}, {%2,%3,%4,%5}, {%6,%7}, {%0,%1};\n"
        : "+r"(acc[0]), "+r"(acc[1])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    D[idx[r]] = (unsigned short)(acc[r] & 0xFFFFu);
    D[idx[r] + 1] = (unsigned short)(acc[r] >> 16);
  }
}
