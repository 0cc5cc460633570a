// hspi-build: -fmad=false
// hspi-build-archs: 90a
//
// Tensor-core GEMM rung "wgmma" (Hopper, sm_90a only): D = C + A·B with wgmma.mma_async, one
// warpgroup (128 threads) per 64×8 output tile, both operands in shared memory through matrix
// descriptors. The simple, correct version: no TMA, no pipelining, no swizzle.
//
//   A [M, K] row-major, B [K, N] row-major, C and D [M, N] row-major.
//   M % 64 == 0, N % 8 == 0, K % (split_k · k_inst) == 0 (the wrapper checks).
//
// Kernels (extern "C"), instruction, operand storage:
//   hspi_wgmma_f16_f32   m64n8k16 .f32.f16.f16    A, B uint16; C, D fp32
//   hspi_wgmma_bf16_f32  m64n8k16 .f32.bf16.bf16  A, B uint16; C, D fp32
//   hspi_wgmma_f16_f16   m64n8k16 .f16.f16.f16    A, B, C, D uint16 (fp16 bits)
//   hspi_wgmma_tf32_f32  m64n8k8  .f32.tf32.tf32  A, B fp32 words (unmodified)
//   hspi_wgmma_e4m3_f32  m64n8k32 .f32.e4m3.e4m3  A, B uint8; C, D fp32
//   hspi_wgmma_e5m2_f32  m64n8k32 .f32.e5m2.e5m2  A, B uint8; C, D fp32
//   hspi_wgmma_e4m3_f16  m64n8k32 .f16.e4m3.e4m3  A, B uint8; C, D uint16 (fp16 bits)
//   hspi_wgmma_e5m2_f16  m64n8k32 .f16.e5m2.e5m2  A, B uint8; C, D uint16 (fp16 bits)
//
// Accumulation order (the plan), per output element: identical to mma_sync_gemm.cu --
//   split_k == 1: acc = C (or +0); one wgmma per k_inst slice, k = 0, k_inst, 2·k_inst, ...,
//                 every one accumulating into the same registers (scale-d = 1), so
//                 Chain(TensorCore("sm_90", in, out, "wgmma"), k=K) when k_inst == G.
//   split_k == P: P contiguous parts, each a chain from +0, combined in fp32 RNE in part order
//                 after C: d = ((C + part_0) + part_1) + ... (fp32 output only).
// Consecutive wgmmas into one accumulator execute in issue order (that is what makes a K loop of
// wgmmas a GEMM); STEPS of them are issued per shared-memory stage, then waited for.
//
// Shared-memory layout ("K-major, no swizzle" canonical GMMA layout, CUTLASS
// make_gmma_desc<Major::K>, INTERLEAVE): one k_inst slice of a row is 32 bytes for every input
// format (16×2, 8×4, 32×1), i.e. two 16-byte "core matrix" rows. A core matrix is 8 rows × 16
// bytes, stored as 128 contiguous bytes. Core matrix (row group rg, k half h) of a slice sits at
// byte (2·rg + h)·128, so the leading-dimension byte offset (next core matrix along K) is 128 and
// the stride-dimension byte offset (next 8-row group) is 256. B is stored transposed (N rows of
// K), which is the K-major layout wgmma needs for tf32 and fp8 anyway.
//
// The split-K start and combine are splitk_combine.cuh (one definition with mma_sync_gemm.cu).

#include "gemm/splitk_combine.cuh"

namespace {

constexpr int TILE_M = 64;
constexpr int TILE_N = 8;
constexpr int THREADS = 128;
constexpr int STEPS = 4;                 // k_inst slices per shared-memory stage
constexpr int SLICE_BYTES = 32;          // bytes of one row in one k_inst slice
constexpr unsigned LBO_BYTES = 128;      // next core matrix along K
constexpr unsigned SBO_BYTES = 256;      // next 8-row group along M / N

__device__ __forceinline__ unsigned long long smem_desc(const void* ptr) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(ptr));
  unsigned long long desc = 0;
  desc |= static_cast<unsigned long long>((addr & 0x3FFFF) >> 4);
  desc |= static_cast<unsigned long long>((LBO_BYTES & 0x3FFFF) >> 4) << 16;
  desc |= static_cast<unsigned long long>((SBO_BYTES & 0x3FFFF) >> 4) << 32;
  // base offset (bits 49-51) 0; layout type (bits 62-63) 0 = no swizzle
  return desc;
}

// Byte position of (row, byte-in-slice) inside one slice of the canonical layout.
__device__ __forceinline__ int slice_offset(int row, int byte) {
  return ((row >> 3) * 2 + (byte >> 4)) * 128 + (row & 7) * 16 + (byte & 15);
}

template <int ESIZE>
__device__ __forceinline__ void copy_elem(unsigned char* dst, const unsigned char* src, long long index) {
  if constexpr (ESIZE == 1) {
    *dst = src[index];
  } else if constexpr (ESIZE == 2) {
    *reinterpret_cast<unsigned short*>(dst) = reinterpret_cast<const unsigned short*>(src)[index];
  } else {
    *reinterpret_cast<unsigned*>(dst) = reinterpret_cast<const unsigned*>(src)[index];
  }
}

enum class Kind { F16_F32, BF16_F32, F16_F16, TF32_F32, E4M3_F32, E5M2_F32, E4M3_F16, E5M2_F16 };

// One wgmma per kind. fp32 accumulators: 4 registers (m64n8: row 16·warp + g + 8·(i >> 1),
// column 2·t + (i & 1)); fp16 accumulator: 2 registers of f16x2 (rows g and g + 8).
template <Kind KIND>
struct Op;

#define HSPI_WGMMA_F32(KIND_, ES, KI, PTX_TYPES, EXTRA)                                        \
  template <>                                                                                   \
  struct Op<KIND_> {                                                                            \
    static constexpr int ESIZE = ES, K_INST = KI, NACC = 4;                                     \
    using Acc = float;                                                                          \
    static __device__ __forceinline__ void mma(float (&d)[4], unsigned long long da,           \
                                               unsigned long long db) {                         \
      asm volatile(                                                                             \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"                                          \
          "wgmma.mma_async.sync.aligned.m64n8k" #KI ".f32." PTX_TYPES                          \
          " {%0,%1,%2,%3}, %4, %5, p, 1, 1" EXTRA ";\n}\n"                                      \
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                      \
          : "l"(da), "l"(db), "r"(1));                                                          \
    }                                                                                           \
  };

HSPI_WGMMA_F32(Kind::F16_F32, 2, 16, "f16.f16", ", 0, 0")
HSPI_WGMMA_F32(Kind::BF16_F32, 2, 16, "bf16.bf16", ", 0, 0")
HSPI_WGMMA_F32(Kind::TF32_F32, 4, 8, "tf32.tf32", "")
HSPI_WGMMA_F32(Kind::E4M3_F32, 1, 32, "e4m3.e4m3", "")
HSPI_WGMMA_F32(Kind::E5M2_F32, 1, 32, "e5m2.e5m2", "")
#undef HSPI_WGMMA_F32

template <>
struct Op<Kind::F16_F16> {
  static constexpr int ESIZE = 2, K_INST = 16, NACC = 2;
  using Acc = unsigned;
  static __device__ __forceinline__ void mma(unsigned (&d)[2], unsigned long long da, unsigned long long db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %4, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k16.f16.f16.f16 {%0,%1}, %2, %3, p, 1, 1, 0, 0;\n}\n"
        : "+r"(d[0]), "+r"(d[1])
        : "l"(da), "l"(db), "r"(1));
  }
};

// fp8 inputs with an fp16 accumulator (issue 19): m64n8k32, two f16x2 registers as for F16_F16.
// fp8 wgmma takes no transpose immediates (K-major only), like the fp32-accumulator fp8 kinds.
#define HSPI_WGMMA_FP8_F16(KIND_, PTX_TYPES)                                                    \
  template <>                                                                                   \
  struct Op<KIND_> {                                                                            \
    static constexpr int ESIZE = 1, K_INST = 32, NACC = 2;                                      \
    using Acc = unsigned;                                                                       \
    static __device__ __forceinline__ void mma(unsigned (&d)[2], unsigned long long da,        \
                                               unsigned long long db) {                         \
      asm volatile(                                                                             \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %4, 0;\n"                                          \
          "wgmma.mma_async.sync.aligned.m64n8k32.f16." PTX_TYPES " {%0,%1}, %2, %3, p, 1, 1;\n}\n" \
          : "+r"(d[0]), "+r"(d[1])                                                              \
          : "l"(da), "l"(db), "r"(1));                                                          \
    }                                                                                           \
  };

HSPI_WGMMA_FP8_F16(Kind::E4M3_F16, "e4m3.e4m3")
HSPI_WGMMA_FP8_F16(Kind::E5M2_F16, "e5m2.e5m2")
#undef HSPI_WGMMA_FP8_F16

// Runs the chain over k in [k_begin, k_end) into acc (which holds the chain's initial value).
template <Kind KIND>
__device__ __forceinline__ void chain(const unsigned char* A, const unsigned char* B, int N, int K, int row0,
                                      int col0, int k_begin, int k_end, unsigned char* sa, unsigned char* sb,
                                      typename Op<KIND>::Acc (&acc)[Op<KIND>::NACC]) {
  using O = Op<KIND>;
  constexpr int ES = O::ESIZE, KI = O::K_INST;
  for (int k0 = k_begin; k0 < k_end; k0 += STEPS * KI) {
    const int steps = min(STEPS, (k_end - k0) / KI);
    const int width = steps * KI;  // elements of K in this stage
    for (int i = threadIdx.x; i < TILE_M * width; i += THREADS) {
      const int row = i / width, kk = i % width;
      unsigned char* dst = sa + (kk / KI) * (TILE_M * SLICE_BYTES) + slice_offset(row, (kk % KI) * ES);
      copy_elem<ES>(dst, A, (long long)(row0 + row) * K + k0 + kk);
    }
    for (int i = threadIdx.x; i < TILE_N * width; i += THREADS) {
      const int kk = i / TILE_N, n = i % TILE_N;
      unsigned char* dst = sb + (kk / KI) * (TILE_N * SLICE_BYTES) + slice_offset(n, (kk % KI) * ES);
      copy_elem<ES>(dst, B, (long long)(k0 + kk) * N + col0 + n);
    }
    // generic-proxy stores -> visible to the async proxy that wgmma reads through
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    for (int s = 0; s < steps; ++s) {
      O::mma(acc, smem_desc(sa + s * TILE_M * SLICE_BYTES), smem_desc(sb + s * TILE_N * SLICE_BYTES));
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    __syncthreads();  // the next stage overwrites the operands
  }
}

template <Kind KIND>
__device__ __forceinline__ void gemm(const void* A_, const void* B_, const void* C_, void* D_, int M, int N,
                                     int K, int has_c, int split_k) {
  using O = Op<KIND>;
  __shared__ __align__(128) unsigned char sa[STEPS * TILE_M * SLICE_BYTES];
  __shared__ __align__(128) unsigned char sb[STEPS * TILE_N * SLICE_BYTES];
  const auto* A = static_cast<const unsigned char*>(A_);
  const auto* B = static_cast<const unsigned char*>(B_);
  const int row0 = blockIdx.y * TILE_M, col0 = blockIdx.x * TILE_N;
  if (row0 >= M || col0 >= N) return;  // whole block: wgmma needs the full warpgroup
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const long long base = (long long)(row0 + 16 * warp + g) * N + col0 + 2 * t;

  if constexpr (KIND == Kind::F16_F16 || KIND == Kind::E4M3_F16 || KIND == Kind::E5M2_F16) {
    const auto* C = static_cast<const unsigned short*>(C_);
    auto* D = static_cast<unsigned short*>(D_);
    unsigned acc[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const long long idx = base + (long long)8 * r * N;
      acc[r] = has_c ? ((unsigned)C[idx] | ((unsigned)C[idx + 1] << 16)) : 0u;
    }
    chain<KIND>(A, B, N, K, row0, col0, 0, K, sa, sb, acc);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const long long idx = base + (long long)8 * r * N;
      D[idx] = (unsigned short)(acc[r] & 0xFFFFu);
      D[idx + 1] = (unsigned short)(acc[r] >> 16);
    }
  } else {
    const auto* C = static_cast<const float*>(C_);
    auto* D = static_cast<float*>(D_);
    long long idx[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) idx[i] = base + (long long)8 * (i >> 1) * N + (i & 1);
    hspi::splitk_fp32<4>(C, D, idx, K, has_c, split_k, [&](int k_begin, int k_end, float (&acc)[4]) {
      chain<KIND>(A, B, N, K, row0, col0, k_begin, k_end, sa, sb, acc);
    });
  }
}

}  // namespace

#define HSPI_WGMMA_KERNEL(name, kind)                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS)                                         \
      name(const void* __restrict__ A, const void* __restrict__ B, const void* __restrict__ C,  \
           void* __restrict__ D, int M, int N, int K, int has_c, int split_k) {                 \
    gemm<kind>(A, B, C, D, M, N, K, has_c, split_k);                                            \
  }

HSPI_WGMMA_KERNEL(hspi_wgmma_f16_f32, Kind::F16_F32)
HSPI_WGMMA_KERNEL(hspi_wgmma_bf16_f32, Kind::BF16_F32)
HSPI_WGMMA_KERNEL(hspi_wgmma_f16_f16, Kind::F16_F16)
HSPI_WGMMA_KERNEL(hspi_wgmma_tf32_f32, Kind::TF32_F32)
HSPI_WGMMA_KERNEL(hspi_wgmma_e4m3_f32, Kind::E4M3_F32)
HSPI_WGMMA_KERNEL(hspi_wgmma_e5m2_f32, Kind::E5M2_F32)
HSPI_WGMMA_KERNEL(hspi_wgmma_e4m3_f16, Kind::E4M3_F16)
HSPI_WGMMA_KERNEL(hspi_wgmma_e5m2_f16, Kind::E5M2_F16)
