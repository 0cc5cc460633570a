// hspi-build: -fmad=false
// hspi-build-archs: 90a
//
// Fast Hopper tensor-core GEMM (sm_90a only) with the SAME accumulation order as the
// correctness-first rung in wgmma_gemm.cu:  D = C + A·B, fp32 accumulate and output.
//
//   A    [M, K] row-major (K contiguous), bf16 or fp16 bits
//   B_nk [N, K] row-major (K contiguous: B transposed, torch's Linear.weight layout), same format
//   C, D [M, N] row-major fp32 (C optional: has_c == 0 starts every chain from +0)
//   M % 128 == 0 (M % 256 == 0 for the _x2 kernels), N % 256 == 0, K % 64 == 0, K >= 64
//   (the wrapper checks; ragged shapes are not supported)
//
// Kernels (extern "C"):
//   hspi_wgmma_fast_bf16_f32, hspi_wgmma_fast_f16_f32        one CTA per 128×256 output tile
//   hspi_wgmma_fast_bf16_f32_x2, hspi_wgmma_fast_f16_f32_x2  clusters of 2 CTAs (a 256×256
//       pair of tiles sharing B: each CTA loads one 128-row half of B and TMA-multicasts it
//       to both)
//   wgmma m64n256k16 .f32.bf16.bf16 / .f32.f16.f16, both operands K-major in shared memory.
// parameters: (const TmaDesc tmA, const TmaDesc tmB, const float* C, float* D, int M, int N,
//              int K, int has_c, int group_m >= 1: the tile order, below); tmA / tmB are
//   CUtensorMaps made by cuTensorMapEncodeTiled
//   (2-D, 16-bit elements, dims {K, rows}, box {64, 128} for both, SWIZZLE_128B), passed by
//   value as __grid_constant__ kernel parameters. Grid: persistent, a multiple of the cluster
//   size, at most one CTA per SM (hspi_wgmma_fast_smem_bytes of dynamic shared memory).
//
// Accumulation order (the contract; identical to wgmma_gemm.cu with split_k == 1):
//   per output element d[i, j]: acc = C[i, j] (or +0); for k0 = 0, 16, 32, ... < K (ascending):
//   acc = wgmma_k16(A[i, k0:k0+16], B[j, k0:k0+16], acc), all in the same accumulator registers
//   (scale-d = 1), i.e. Chain(TensorCore("sm_90", fmt, "fp32", path="wgmma"), k=16).
//   No split-K, no partial sums leave the registers, no arithmetic outside the tensor core: the
//   epilogue only moves bits (so -fmad=false has nothing to contract; the SASS test checks).
//   Consecutive wgmmas into one accumulator execute in issue order; the issue order here is the
//   ascending K order (4 k16 steps per 64-wide stage, stages in ascending K). Tile sizes,
//   clusters, the tile order and the grid change which CTA computes an element, never its chain.
//
// Structure (speed; none of it changes the per-element order above):
//   * CTA = 3 warpgroups (384 threads): warpgroup 0 is the producer (setmaxnreg.dec to 40
//     registers; one thread issues TMA loads), warpgroups 1 and 2 are consumers (setmaxnreg.inc
//     to 232) computing rows [0, 64) and [64, 128) of a 128×256 output tile with m64n256k16
//     wgmmas (128 fp32 accumulators per thread).
//   * STAGES-deep shared-memory ring of (A 128×64, B 256×64) tiles loaded by
//     cp.async.bulk.tensor (TMA) with 128-byte swizzle; "full" mbarriers (TMA transaction
//     bytes) and "empty" mbarriers (one arrive per consumer warp of every CTA of the cluster)
//     hand stages back and forth. A consumer keeps one wgmma group in flight (wait_group 1) and
//     frees a stage as soon as the group that read it has completed.
//   * persistent grid, output tiles (tile pairs for _x2) walked cluster, cluster + clusters, ...
//     in a grouped order (group_m unit rows share the B columns in L2); the producer runs ahead
//     into the next tile while the consumers store the previous one.
//   * epilogue: each consumer thread stores its accumulator fragment (float2 per row pair)
//     straight to global memory.
//
// Shared-memory operand layout: TMA with CU_TENSOR_MAP_SWIZZLE_128B writes a box of R rows × 64
// 16-bit elements as R rows of 128 bytes, the 16-byte chunks of row r XOR-ed with (r & 7). That
// is wgmma's K-major 128B-swizzle canonical layout: descriptor layout type 1 (bits 62-63),
// stride byte offset 1024 (8 rows × 128 B), leading byte offset unused (16 B); the k-th k16
// slice starts 32·k bytes into the row (the hardware applies the swizzle to the final address,
// so the stage buffers are 1024-byte aligned). Two 128-row B boxes stacked are one 256-row box.

#ifndef HSPI_FAST_STAGES
#define HSPI_FAST_STAGES 4
#endif

namespace {

constexpr int BM = 128, BN = 256, BK = 64, K_INST = 16;
constexpr int STAGES = HSPI_FAST_STAGES;
constexpr int CONSUMERS = 2;                // consumer warpgroups (64 rows each)
constexpr int THREADS = 128 * (CONSUMERS + 1);
constexpr int BOX_ROWS = 128;               // TMA box: 128 rows × 64 elements (16 KiB)
constexpr int A_BYTES = BM * BK * 2;        // 16 KiB per stage
constexpr int B_BYTES = BN * BK * 2;        // 32 KiB per stage
constexpr int BOX_BYTES = BOX_ROWS * BK * 2;
constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
constexpr int SMEM_BYTES = 1024 /* alignment slack */ + STAGES * STAGE_BYTES + 2 * STAGES * 8;
static_assert(SMEM_BYTES <= 227 * 1024, "shared memory ring too large for sm_90");
static_assert(A_BYTES == BOX_BYTES && B_BYTES == 2 * BOX_BYTES, "A is one box, B two");

// A CUtensorMap (cuda.h) is 128 bytes, 64-byte aligned; only the driver and the TMA unit read it.
struct alignas(64) TmaDesc {
  unsigned long long words[16];
};

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// ---- mbarriers ------------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Arrive on this CTA's barrier (release at CTA scope: no fence over the epilogue's global stores).
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrive on the barrier at the same offset in CTA `rank` of the cluster (default .release.cta
// semantics, as CUTLASS's ClusterBarrier::arrive: the consumer only read shared memory through
// completed wgmmas; a .release.cluster arrive would also wait for its pending global stores).
__device__ __forceinline__ void mbar_arrive_remote(unsigned bar, unsigned rank) {
  asm volatile(
      "{\n.reg .b32 remote;\n"
      "mapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n" ::"r"(bar),
      "r"(rank)
      : "memory");
}
// A consumer warp frees a stage in every CTA of its cluster.
template <int CLUSTER>
__device__ __forceinline__ void release_stage(unsigned bar) {
  if constexpr (CLUSTER == 1) {
    mbar_arrive(bar);
  } else {
#pragma unroll
    for (int r = 0; r < CLUSTER; ++r) mbar_arrive_remote(bar, r);
  }
}
// Wait until the phase with the given parity has completed.
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  asm volatile(
      "{\n.reg .pred p;\n"
      "HSPI_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra HSPI_WAIT;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// ---- TMA ------------------------------------------------------------------------------------
__device__ __forceinline__ void tma_load_2d(unsigned dst, const TmaDesc* map, unsigned bar, int c_inner,
                                            int c_outer) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(bar), "r"(c_inner), "r"(c_outer)
      : "memory");
}
// The same box written to the same shared-memory offset of every CTA in `mask`, each CTA's
// barrier at offset `bar` receiving the transaction bytes.
__device__ __forceinline__ void tma_load_2d_multicast(unsigned dst, const TmaDesc* map, unsigned bar, int c_inner,
                                                      int c_outer, unsigned short mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(bar), "r"(c_inner), "r"(c_outer), "h"(mask)
      : "memory");
}

// ---- wgmma ----------------------------------------------------------------------------------
// K-major, 128-byte swizzle operand descriptor (see the header).
__device__ __forceinline__ unsigned long long desc_sw128(unsigned addr) {
  unsigned long long d = 0;
  d |= static_cast<unsigned long long>((addr & 0x3FFFF) >> 4);
  d |= static_cast<unsigned long long>(16 >> 4) << 16;    // leading byte offset (unused here)
  d |= static_cast<unsigned long long>(1024 >> 4) << 32;  // stride byte offset: 8 rows × 128 B
  d |= 1ull << 62;                                        // layout type: 128-byte swizzle
  return d;
}

enum class Kind { F16_F32, BF16_F32 };

// The 128 accumulator operands of an m64n256 fp32 wgmma: "{%0, ..., %127}" and d[0..127].
#define HSPI_ACC_REGS \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define HSPI_ACC_OPERANDS(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
  "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
  "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
  "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// One m64n256k16 wgmma, D = A·B + D (scale-d = 1, both operands K-major from shared memory).
// Accumulator register d[4·j + r] holds row 16·warp + g + 8·(r >> 1), column 8·j + 2·t + (r & 1)
// of the 64×256 block (lane = 4·g + t): the m64nNk16 fragment of wgmma_gemm.cu repeated N/8 times.
template <Kind KIND>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], unsigned long long da, unsigned long long db) {
  if constexpr (KIND == Kind::BF16_F32) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" HSPI_ACC_REGS "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
        : HSPI_ACC_OPERANDS(d)
        : "l"(da), "l"(db), "r"(1));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {" HSPI_ACC_REGS "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
        : HSPI_ACC_OPERANDS(d)
        : "l"(da), "l"(db), "r"(1));
  }
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads/writes across the asynchronous wgmmas
// (emits nothing; placed only where no wgmma is in flight).
__device__ __forceinline__ void fence_acc(float (&d)[128]) {
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Work unit `unit` -> (unit row, tile column) in a grid of units_m × tiles_n units: group_m unit
// rows are walked column by column (they share B columns while resident in L2).
__device__ __forceinline__ void unit_coords(int unit, int units_m, int tiles_n, int group_m, int& um, int& tn) {
  const int group_size = group_m * tiles_n;
  const int first_m = (unit / group_size) * group_m;
  const int rows = min(units_m - first_m, group_m);
  const int in_group = unit % group_size;
  um = first_m + in_group % rows;
  tn = in_group / rows;
}

// The walk both roles share: this CTA's work units in order (its cluster's units, blockIdx.x /
// CLUSTER stepping by the number of clusters), per unit the nk 64-wide K blocks in ascending
// order, each on the next ring stage (stage, mbarrier phase parity; the phase flips when the
// stage index wraps). begin(tm, tn) runs before a unit's first K block, block(tm, tn, kb, stage,
// phase) per K block, end(tm, tn) after the last; tm is this CTA's tile row (um * CLUSTER + rank).
template <int CLUSTER, class Begin, class Block, class End>
__device__ __forceinline__ void walk_units(int units_m, int tiles_n, int group_m, int nk, unsigned rank, Begin begin,
                                           Block block, End end) {
  const int units = units_m * tiles_n;
  int stage = 0;
  unsigned phase = 0;
  for (int unit = blockIdx.x / CLUSTER; unit < units; unit += gridDim.x / CLUSTER) {
    int um, tn;
    unit_coords(unit, units_m, tiles_n, group_m, um, tn);
    const int tm = um * CLUSTER + rank;
    begin(tm, tn);
    for (int kb = 0; kb < nk; ++kb) {
      block(tm, tn, kb, stage, phase);
      if (++stage == STAGES) {
        stage = 0;
        phase ^= 1u;
      }
    }
    end(tm, tn);
  }
}

// Producer (one thread): for every work unit, every 64-wide K block in ascending order, wait
// for the stage to be free in every CTA of the cluster, then load A (own 128 rows) and B.
// CLUSTER == 1: both 128-row halves of B; CLUSTER == 2: half `rank`, multicast to both CTAs.
template <int CLUSTER>
__device__ __forceinline__ void produce(const TmaDesc* tmA, const TmaDesc* tmB, unsigned base, unsigned bar_full,
                                        unsigned bar_empty, int units_m, int tiles_n, int group_m, int nk,
                                        unsigned rank) {
  walk_units<CLUSTER>(
      units_m, tiles_n, group_m, nk, rank, [](int, int) {},
      [&](int tm, int tn, int kb, int stage, unsigned phase) {
        mbar_wait(bar_empty + 8 * stage, phase ^ 1u);  // first pass: fresh barrier, returns at once
        const unsigned sa = base + stage * STAGE_BYTES, sb = sa + A_BYTES, full = bar_full + 8 * stage;
        mbar_arrive_expect_tx(full, STAGE_BYTES);  // A + the whole of B land in every CTA
        tma_load_2d(sa, tmA, full, kb * BK, tm * BM);
        if constexpr (CLUSTER == 1) {
          tma_load_2d(sb, tmB, full, kb * BK, tn * BN);
          tma_load_2d(sb + BOX_BYTES, tmB, full, kb * BK, tn * BN + BOX_ROWS);
        } else {
          tma_load_2d_multicast(sb + rank * BOX_BYTES, tmB, full, kb * BK, tn * BN + rank * BOX_ROWS,
                                (unsigned short)((1u << CLUSTER) - 1));
        }
      },
      [](int, int) {});
}

// Consumer warpgroup c (rows [64·c, 64·c + 64) of every tile). HAS_C is a template parameter so
// that each variant's accumulator has a single definition before the K loop (a run-time branch
// there makes ptxas serialise the wgmmas: C7515).
template <Kind KIND, int CLUSTER, bool HAS_C>
__device__ __forceinline__ void consume(unsigned base, unsigned bar_full, unsigned bar_empty, int c,
                                        const float* __restrict__ C, float* __restrict__ D, int N, int units_m,
                                        int tiles_n, int group_m, int nk, unsigned rank) {
  const int tid = threadIdx.x % 128;
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  long long row;
  int col0, prev_stage;
  float d[128];
  walk_units<CLUSTER>(
      units_m, tiles_n, group_m, nk, rank,
      [&](int tm, int tn) {
        row = (long long)tm * BM + 64 * c + 16 * warp + g;
        col0 = tn * BN + 2 * t;
        // the chain's initial value: C (bit copy) or +0
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          if constexpr (HAS_C) {
            const float2 lo = *reinterpret_cast<const float2*>(C + row * N + col0 + 8 * j);
            const float2 hi = *reinterpret_cast<const float2*>(C + (row + 8) * N + col0 + 8 * j);
            d[4 * j + 0] = lo.x;
            d[4 * j + 1] = lo.y;
            d[4 * j + 2] = hi.x;
            d[4 * j + 3] = hi.y;
          } else {
            d[4 * j + 0] = d[4 * j + 1] = d[4 * j + 2] = d[4 * j + 3] = 0.0f;
          }
        }
        fence_acc(d);
        prev_stage = 0;
      },
      [&](int, int, int kb, int stage, unsigned phase) {
        mbar_wait(bar_full + 8 * stage, phase);
        const unsigned sa = base + stage * STAGE_BYTES + c * (64 * 128);  // 64 rows × 128 B
        const unsigned sb = base + stage * STAGE_BYTES + A_BYTES;
        wgmma_fence();
#pragma unroll
        for (int k = 0; k < BK / K_INST; ++k) {  // ascending k16 slices: 32 bytes each
          wgmma_m64n256k16<KIND>(d, desc_sw128(sa + 32 * k), desc_sw128(sb + 32 * k));
        }
        wgmma_commit();
        // at most one group (this stage's) still in flight: the previous stage can be refilled
        wgmma_wait<1>();
        if (kb > 0 && lane == 0) release_stage<CLUSTER>(bar_empty + 8 * prev_stage);
        prev_stage = stage;
      },
      [&](int, int) {
        wgmma_wait<0>();
        fence_acc(d);
        if (lane == 0) release_stage<CLUSTER>(bar_empty + 8 * prev_stage);
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          *reinterpret_cast<float2*>(D + row * N + col0 + 8 * j) = make_float2(d[4 * j + 0], d[4 * j + 1]);
          *reinterpret_cast<float2*>(D + (row + 8) * N + col0 + 8 * j) = make_float2(d[4 * j + 2], d[4 * j + 3]);
        }
      });
}

template <Kind KIND, int CLUSTER>
__device__ __forceinline__ void gemm(const TmaDesc* tmA, const TmaDesc* tmB, const float* __restrict__ C,
                                     float* __restrict__ D, int M, int N, int K, int has_c, int group_m) {
  extern __shared__ unsigned char smem_raw[];
  // 1024-byte aligned ring (128B-swizzle atoms), barriers after it; the same offsets in every
  // CTA (multicast writes and remote arrivals use this CTA's offsets in the peer).
  const unsigned base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const unsigned bar_full = base + STAGES * STAGE_BYTES;  // STAGES × 8 bytes
  const unsigned bar_empty = bar_full + STAGES * 8;       // STAGES × 8 bytes
  const int wg = threadIdx.x / 128;
  const unsigned rank = CLUSTER == 1 ? 0u : cluster_rank();
  const int units_m = M / (BM * CLUSTER), tiles_n = N / BN, nk = K / BK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(bar_full + 8 * s, 1);                              // the producer's arrive.expect_tx
      mbar_init(bar_empty + 8 * s, CLUSTER * CONSUMERS * 4);       // every consumer warp of the cluster
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(tmA)) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(tmB)) : "memory");
  }
  // barriers initialised in every CTA before any multicast or remote arrive can reach them
  if constexpr (CLUSTER > 1) cluster_sync(); else __syncthreads();

  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x == 0) produce<CLUSTER>(tmA, tmB, base, bar_full, bar_empty, units_m, tiles_n, group_m, nk, rank);
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    if (has_c) {
      consume<KIND, CLUSTER, true>(base, bar_full, bar_empty, wg - 1, C, D, N, units_m, tiles_n, group_m, nk, rank);
    } else {
      consume<KIND, CLUSTER, false>(base, bar_full, bar_empty, wg - 1, C, D, N, units_m, tiles_n, group_m, nk,
                                     rank);
    }
  }
  // no CTA leaves while a peer may still arrive on its barriers
  if constexpr (CLUSTER > 1) cluster_sync();
}

}  // namespace

#define HSPI_WGMMA_FAST_PARAMS                                                                  \
  (const __grid_constant__ TmaDesc tmA, const __grid_constant__ TmaDesc tmB, const float* __restrict__ C, \
   float* __restrict__ D, int M, int N, int K, int has_c, int group_m)
#define HSPI_WGMMA_FAST_KERNEL(name, kind)                                                      \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) name HSPI_WGMMA_FAST_PARAMS {        \
    gemm<kind, 1>(&tmA, &tmB, C, D, M, N, K, has_c, group_m);                                            \
  }
#define HSPI_WGMMA_FAST_KERNEL_X2(name, kind)                                                   \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) __cluster_dims__(2, 1, 1)            \
      name HSPI_WGMMA_FAST_PARAMS {                                                             \
    gemm<kind, 2>(&tmA, &tmB, C, D, M, N, K, has_c, group_m);                                            \
  }
HSPI_WGMMA_FAST_KERNEL(hspi_wgmma_fast_bf16_f32, Kind::BF16_F32)
HSPI_WGMMA_FAST_KERNEL(hspi_wgmma_fast_f16_f32, Kind::F16_F32)
HSPI_WGMMA_FAST_KERNEL_X2(hspi_wgmma_fast_bf16_f32_x2, Kind::BF16_F32)
HSPI_WGMMA_FAST_KERNEL_X2(hspi_wgmma_fast_f16_f32_x2, Kind::F16_F32)

// Dynamic shared memory every launch needs (the wrapper reads it from the module: one definition).
extern "C" __device__ const int hspi_wgmma_fast_smem_bytes = SMEM_BYTES;
