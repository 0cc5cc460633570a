// hspi-build: -fmad=false
//
// Attention forward with an online softmax, O = softmax(Q·Kᵀ·scale)·V, one warp per 16 query
// rows of one (batch·head), Q·Kᵀ and P·V on mma.sync m16n8k16 (fp32 accumulators), the order of
// every floating-point operation stated below (hspi_kernels/numerics/attention_ref.py replays it
// bit for bit). Correctness and order first: operands are loaded element by element from global
// memory into fragment registers (no shared memory, no vector loads, no pipelining).
//
//   Q [BH, Sq, D], K [BH, Sk, D], V [BH, Sk, D] row-major, uint16 bits of bf16 or fp16.
//   O [BH, Sq, D] fp32 (not rounded to the input format: the contract ends at O = acc / l).
//   Template parameters: D in {32, 64, 128}, BLOCK_N in {16, 32, 64}; runtime: Sq, Sk >= 1
//   (any), scale (fp32), splits >= 1, chunk (keys per split, a multiple of BLOCK_N, from the
//   wrapper: C below), causal (0/1; top-left: key j visible to query i iff j <= i).
//   Launch: block 128 threads (4 warps, one 16-row query tile each), grid
//   (ceil(ceil(Sq/16)/4), BH, splits); combine: block D threads, grid over rows.
//
// Kernels (extern "C"): hspi_attn_fwd_<bf16|f16>_<exact|native>_d<D>_n<BLOCK_N>,
//                       hspi_attn_combine_<exact|native>.
//
// Order (one warp = query tile rows q0 .. q0+15; rows >= Sq are computed on Q = 0, not stored):
//   split s of `splits` covers keys [s·C, min((s+1)·C, Sk)) with C = ceil(ceil(Sk/BLOCK_N)/splits)
//   · BLOCK_N; causal further cuts the end to min(end, q0 + 16) (per tile, not per row). Blocks
//   start at s·C, s·C + BLOCK_N, ... < end; keys of a block past the end are padding
//   (K = V = 0, score masked). Empty ranges leave the initial state m = -inf, l = +0, acc = +0.
//   Per block j, per query row i:
//     S[i, n]  = Chain(TensorCore(sm_90, fmt, fp32, mma.sync), k=16)(Q[i, :], K[n, :]) from +0
//                (dims in order 0..D-1, one m16n8k16 per 16 dims), then s = rn(S · scale);
//                s = -inf where key n >= Sk, n >= split end, or (causal) n > i.
//     m_new    = max(m, max_n s)      (fmaxf; exact, order-free); m_use = m_new, or 0 if -inf
//     p[n]     = EXP(rn(s[n] - m_use)),  alpha = EXP(rn(m - m_use))
//     rowsum   = (R_0 + R_1) + (R_2 + R_3),  R_t = sequential fp32 sum (first element, then rn
//                adds) of p[n] over the columns n ≡ 2t, 2t+1 (mod 8) in increasing n (the quad
//                lane t of the C fragment), combined by the xor-1 then xor-2 shuffle butterfly
//     l        = rn(rn(l · alpha) + rowsum)            (rowsum of the fp32 p, not of rounded P)
//     P        = RNE(p) to fmt (cvt.rn.bf16x2.f32 / cvt.rn.f16x2.f32)
//     acc[i,d] = Chain(TensorCore(sm_90, fmt, fp32, mma.sync), k=16)(P[i, block], V[block, d])
//                started from c = rn(acc[i,d] · alpha), keys of the block in order (BLOCK_N/16
//                mma blocks); m = m_new.
//   splits == 1: O = div_rn(acc, l).  splits > 1: each split stores (m, l, acc) and the combine
//   kernel forms, per (row, d), M = max_s m_s, M_use = M or 0 if -inf, w_s = EXP(rn(m_s - M_use)),
//   L = +0; L = rn(L + rn(l_s · w_s)) for s = 0..splits-1; A likewise from acc_s; O = div_rn(A, L).
//
// EXP, "exact" mode: no special-function unit; IEEE fp32 operations only (exp_exact below):
//   x = min(max(x, -104), 89) (NaN -> -104);  k = rint(rn(x · L2E));  r = fma(-k, LN2_HI, x);
//   r = fma(-k, LN2_LO, r);  p = Horner with fma over 1/7!, 1/6!, ..., 1/2!, 1, 1 (Taylor, degree
//   7, coefficients rounded to fp32);  result = rn(rn(p · 2^(k>>1)) · 2^(k - (k>>1))) (the first
//   product is exact, the second rounds once, subnormals kept). div_rn is a correctly rounded
//   integer long division (no MUFU.RCP). Within 2 ulp of exp (tests/test_cuda_attention_sfu.py).
// EXP, "native" mode (common practice): ex2.approx.ftz.f32(rn(x · L2E)) -> MUFU.EX2; the final
//   division is __fdiv_rn (IEEE, correctly rounded, uses MUFU.RCP plus fix-ups).
// -fmad=false and explicit __f*_rn keep nvcc from contracting or reassociating anything.

namespace {

constexpr int WARPS_PER_BLOCK = 4;
constexpr float L2E = 0x1.715476p+0f;       // rn32(log2 e)
constexpr float LN2_HI = 0x1.62e430p-1f;    // rn32(ln 2)
constexpr float LN2_LO = -0x1.05c610p-29f;  // rn32(ln 2 - LN2_HI)
// rn32(1/n!) for n = 0..7 (Taylor coefficients of e^r, |r| <= ln2/2: truncation error < 2^-27)
#define HSPI_EXP_C7 0x1.a01a02p-13f
#define HSPI_EXP_C6 0x1.6c16c2p-10f
#define HSPI_EXP_C5 0x1.111112p-7f
#define HSPI_EXP_C4 0x1.555556p-5f
#define HSPI_EXP_C3 0x1.555556p-3f

__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }

__device__ __forceinline__ float exp_exact(float x) {
  x = fminf(fmaxf(x, -104.0f), 89.0f);
  const float kf = rintf(__fmul_rn(x, L2E));
  float r = __fmaf_rn(-kf, LN2_HI, x);
  r = __fmaf_rn(-kf, LN2_LO, r);
  float p = __fmaf_rn(HSPI_EXP_C7, r, HSPI_EXP_C6);
  p = __fmaf_rn(p, r, HSPI_EXP_C5);
  p = __fmaf_rn(p, r, HSPI_EXP_C4);
  p = __fmaf_rn(p, r, HSPI_EXP_C3);
  p = __fmaf_rn(p, r, 0.5f);
  p = __fmaf_rn(p, r, 1.0f);
  p = __fmaf_rn(p, r, 1.0f);
  const int k = __float2int_rn(kf);
  const int k1 = k >> 1, k2 = k - k1;
  const float s1 = __int_as_float((k1 + 127) << 23), s2 = __int_as_float((k2 + 127) << 23);
  return __fmul_rn(__fmul_rn(p, s1), s2);
}

__device__ __forceinline__ float ex2_approx_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float exp_native(float x) { return ex2_approx_ftz(__fmul_rn(x, L2E)); }

// Correctly rounded (RNE) fp32 division by restoring long division on the integer significands.
// NaN results are 0x7FFFFFFF (what NVIDIA fp32 arithmetic writes).
__device__ __forceinline__ float div_rn_integer(float a, float b) {
  const unsigned ua = __float_as_uint(a), ub = __float_as_uint(b);
  const unsigned sign = (ua ^ ub) & 0x80000000u;
  int ea = (ua >> 23) & 0xff, eb = (ub >> 23) & 0xff;
  unsigned ma = ua & 0x7fffffu, mb = ub & 0x7fffffu;
  const bool a_zero = (ua << 1) == 0, b_zero = (ub << 1) == 0;
  if ((ea == 255 && ma) || (eb == 255 && mb) || (a_zero && b_zero) || (ea == 255 && eb == 255))
    return __uint_as_float(0x7fffffffu);
  if (ea == 255 || b_zero) return __uint_as_float(sign | 0x7f800000u);
  if (eb == 255 || a_zero) return __uint_as_float(sign);
  if (ea == 0) { ea = 1; while (!(ma & 0x800000u)) { ma <<= 1; --ea; } } else { ma |= 0x800000u; }
  if (eb == 0) { eb = 1; while (!(mb & 0x800000u)) { mb <<= 1; --eb; } } else { mb |= 0x800000u; }
  int e = ea - eb + 127;  // biased exponent of the quotient once ma / mb is in [1, 2)
  if (ma < mb) { ma <<= 1; --e; }
  unsigned q = 0, r = ma;  // 26 quotient bits: floor(ma / mb · 2^25), remainder in r
  for (int i = 0; i < 26; ++i) {
    const unsigned bit = r >= mb;
    if (bit) r -= mb;
    q = (q << 1) | bit;
    r <<= 1;
  }
  int shift = 2;           // normal result: 24 significand bits = q >> 2
  if (e <= 0) shift = 3 - e;  // subnormal: units of 2^-149
  if (shift >= 27) return __uint_as_float(sign);  // below half the smallest subnormal
  unsigned mant = q >> shift;
  const unsigned guard = (q >> (shift - 1)) & 1u;
  const bool rest = (q & ((1u << (shift - 1)) - 1u)) != 0 || r != 0;
  mant += guard && (rest || (mant & 1u));
  if (e <= 0) return __uint_as_float(sign | mant);  // mant == 2^23 is the smallest normal
  if (mant == 0x1000000u) { mant >>= 1; ++e; }
  if (e >= 255) return __uint_as_float(sign | 0x7f800000u);
  return __uint_as_float(sign | ((unsigned)e << 23) | (mant & 0x7fffffu));
}

enum class Mode { EXACT, NATIVE };
enum class Fmt { BF16, F16 };

template <Mode MODE>
__device__ __forceinline__ float expm(float x) {
  if constexpr (MODE == Mode::EXACT) return exp_exact(x); else return exp_native(x);
}

template <Mode MODE>
__device__ __forceinline__ float divm(float a, float b) {
  if constexpr (MODE == Mode::EXACT) return div_rn_integer(a, b); else return __fdiv_rn(a, b);
}

template <Fmt FMT>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  if constexpr (FMT == Fmt::BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// RNE of two fp32 values to the input format, packed: lo in bits 0..15, hi in bits 16..31.
template <Fmt FMT>
__device__ __forceinline__ unsigned pack_rn(float lo, float hi) {
  unsigned d;
  if constexpr (FMT == Fmt::BF16) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  }
  return d;
}

__device__ __forceinline__ unsigned ld_pair(const unsigned short* base, long long i0, long long i1, bool ok0,
                                            bool ok1) {
  const unsigned lo = ok0 ? base[i0] : 0u, hi = ok1 ? base[i1] : 0u;
  return lo | (hi << 16);
}

// Fragment geometry (m16n8k16, lane = 4g + t): A reg r: row g + 8(r&1), cols 2t + 8(r>>1) + {0,1};
// B reg r: k rows 2t + 8r + {0,1}, column g; C element i: row g + 8(i>>1), column 2t + (i&1).
template <Fmt FMT, Mode MODE, int D, int BLOCK_N>
__device__ __forceinline__ void attn_fwd(const unsigned short* __restrict__ Q, const unsigned short* __restrict__ K,
                                         const unsigned short* __restrict__ V, float* __restrict__ O,
                                         float* __restrict__ part_m, float* __restrict__ part_l,
                                         float* __restrict__ part_acc, int BH, int Sq, int Sk, float scale,
                                         int splits, int chunk, int causal) {
  constexpr int NT = BLOCK_N / 8, DT = D / 8, DK = D / 16;
  // Grid (ceil(q_tiles / WARPS_PER_BLOCK), BH, splits): no integer division by runtime values
  // (it would compile to MUFU.RCP, and exact mode promises no MUFU at all).
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int q0 = (blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5)) * 16;
  if (q0 >= Sq) return;  // uniform per warp
  const int bh = blockIdx.y, split = blockIdx.z;
  const unsigned short* Qh = Q + (long long)bh * Sq * D;
  const unsigned short* Kh = K + (long long)bh * Sk * D;
  const unsigned short* Vh = V + (long long)bh * Sk * D;

  const int kbeg = split * chunk;
  int kend = min(Sk, kbeg + chunk);
  if (causal) kend = min(kend, q0 + 16);

  // Q fragments for all D/16 k-steps.
  unsigned qa[DK][4];
#pragma unroll
  for (int kk = 0; kk < DK; ++kk) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = q0 + g + 8 * (r & 1);
      const int col = kk * 16 + 2 * t + 8 * (r >> 1);
      const long long i0 = (long long)row * D + col;
      qa[kk][r] = ld_pair(Qh, i0, i0 + 1, row < Sq, row < Sq);
    }
  }

  float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};
  float acc[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; ++dt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[dt][i] = 0.0f;

  for (int n0 = kbeg; n0 < kend; n0 += BLOCK_N) {
    // S = Q·Kᵀ for the block, from +0, dims in order.
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
      const int key = n0 + 8 * nt + g;
#pragma unroll
      for (int kk = 0; kk < DK; ++kk) {
        const long long i0 = (long long)key * D + kk * 16 + 2 * t;
        const unsigned b0 = ld_pair(Kh, i0, i0 + 1, key < Sk, key < Sk);
        const unsigned b1 = ld_pair(Kh, i0 + 8, i0 + 9, key < Sk, key < Sk);
        mma16816<FMT>(s[nt], qa[kk], b0, b1);
      }
    }
    // Scale, mask, row maxima (rows g and g + 8 of this lane's quad).
    float mx[2] = {neg_inf(), neg_inf()};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = q0 + g + 8 * (i >> 1), key = n0 + 8 * nt + 2 * t + (i & 1);
        float v = __fmul_rn(s[nt][i], scale);
        if (key >= kend || (causal && key > row)) v = neg_inf();
        s[nt][i] = v;
        mx[i >> 1] = fmaxf(mx[i >> 1], v);
      }
    }
    float alpha[2], rowsum[2], m_use[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float m_new = fmaxf(m[h], mx[h]);
      m_use[h] = m_new == neg_inf() ? 0.0f : m_new;
      alpha[h] = expm<MODE>(__fsub_rn(m[h], m_use[h]));
      m[h] = m_new;
    }
    // p, the per-lane sequential sums, the quad butterfly.
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[nt][i] = expm<MODE>(__fsub_rn(s[nt][i], m_use[i >> 1]));
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = s[0][2 * h];
      sum = __fadd_rn(sum, s[0][2 * h + 1]);
#pragma unroll
      for (int nt = 1; nt < NT; ++nt) {
        sum = __fadd_rn(sum, s[nt][2 * h]);
        sum = __fadd_rn(sum, s[nt][2 * h + 1]);
      }
      sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 1));
      sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 2));
      rowsum[h] = sum;
      l[h] = __fadd_rn(__fmul_rn(l[h], alpha[h]), rowsum[h]);
    }
    // acc = acc·alpha, then P·V on the tensor core (P rounded to the input format).
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[dt][i] = __fmul_rn(acc[dt][i], alpha[i >> 1]);
#pragma unroll
    for (int kk = 0; kk < BLOCK_N / 16; ++kk) {
      unsigned pa[4];
      pa[0] = pack_rn<FMT>(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = pack_rn<FMT>(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = pack_rn<FMT>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = pack_rn<FMT>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      const int k0 = n0 + 16 * kk + 2 * t;
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        const int col = dt * 8 + g;
        const long long i0 = (long long)k0 * D + col;
        const unsigned b0 = ld_pair(Vh, i0, i0 + D, k0 < Sk, k0 + 1 < Sk);
        const unsigned b1 = ld_pair(Vh, i0 + 8LL * D, i0 + 9LL * D, k0 + 8 < Sk, k0 + 9 < Sk);
        mma16816<FMT>(acc[dt], pa, b0, b1);
      }
    }
  }

  // Output: O = acc / l (one split), or the split's (m, l, acc).
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = q0 + g + 8 * h;
    if (row >= Sq) continue;
    const long long orow = (long long)bh * Sq + row;
    if (splits == 1) {
#pragma unroll
      for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int e = 0; e < 2; ++e) O[orow * D + dt * 8 + 2 * t + e] = divm<MODE>(acc[dt][2 * h + e], l[h]);
    } else {
      const long long prow = (long long)split * BH * Sq + orow;
      if (t == 0) {
        part_m[prow] = m[h];
        part_l[prow] = l[h];
      }
#pragma unroll
      for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int e = 0; e < 2; ++e) part_acc[prow * D + dt * 8 + 2 * t + e] = acc[dt][2 * h + e];
    }
  }
}

// Fixed-order combine of the splits: block = D threads (one per column), grid-stride over rows.
template <Mode MODE>
__device__ __forceinline__ void attn_combine(const float* __restrict__ part_m, const float* __restrict__ part_l,
                                             const float* __restrict__ part_acc, float* __restrict__ O,
                                             long long rows, int D, int splits) {
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const long long idx = row * D + threadIdx.x;
    float M = neg_inf();
    for (int s = 0; s < splits; ++s) M = fmaxf(M, part_m[s * rows + row]);
    const float M_use = M == neg_inf() ? 0.0f : M;
    float L = 0.0f, A = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float w = expm<MODE>(__fsub_rn(part_m[s * rows + row], M_use));
      L = __fadd_rn(L, __fmul_rn(part_l[s * rows + row], w));
      A = __fadd_rn(A, __fmul_rn(part_acc[s * rows * D + idx], w));
    }
    O[idx] = divm<MODE>(A, L);
  }
}

}  // namespace

#define HSPI_ATTN_FWD(fmt_tag, FMT, mode_tag, MODE, D, BN)                                                  \
  extern "C" __global__ void __launch_bounds__(32 * WARPS_PER_BLOCK)                                       \
      hspi_attn_fwd_##fmt_tag##_##mode_tag##_d##D##_n##BN(                                                  \
          const unsigned short* __restrict__ Q, const unsigned short* __restrict__ K,                       \
          const unsigned short* __restrict__ V, float* __restrict__ O, float* __restrict__ part_m,          \
          float* __restrict__ part_l, float* __restrict__ part_acc, int BH, int Sq, int Sk, float scale,   \
          int splits, int chunk, int causal) {                                                              \
    attn_fwd<FMT, MODE, D, BN>(Q, K, V, O, part_m, part_l, part_acc, BH, Sq, Sk, scale, splits, chunk,      \
                               causal);                                                                     \
  }

#define HSPI_ATTN_FWD_BN(fmt_tag, FMT, mode_tag, MODE, D) \
  HSPI_ATTN_FWD(fmt_tag, FMT, mode_tag, MODE, D, 16)      \
  HSPI_ATTN_FWD(fmt_tag, FMT, mode_tag, MODE, D, 32)      \
  HSPI_ATTN_FWD(fmt_tag, FMT, mode_tag, MODE, D, 64)

#define HSPI_ATTN_FWD_D(fmt_tag, FMT, mode_tag, MODE)   \
  HSPI_ATTN_FWD_BN(fmt_tag, FMT, mode_tag, MODE, 32)    \
  HSPI_ATTN_FWD_BN(fmt_tag, FMT, mode_tag, MODE, 64)    \
  HSPI_ATTN_FWD_BN(fmt_tag, FMT, mode_tag, MODE, 128)

HSPI_ATTN_FWD_D(bf16, Fmt::BF16, exact, Mode::EXACT)
HSPI_ATTN_FWD_D(bf16, Fmt::BF16, native, Mode::NATIVE)
HSPI_ATTN_FWD_D(f16, Fmt::F16, exact, Mode::EXACT)
HSPI_ATTN_FWD_D(f16, Fmt::F16, native, Mode::NATIVE)

extern "C" __global__ void hspi_attn_combine_exact(const float* __restrict__ part_m, const float* __restrict__ part_l,
                                                   const float* __restrict__ part_acc, float* __restrict__ O,
                                                   long long rows, int D, int splits) {
  attn_combine<Mode::EXACT>(part_m, part_l, part_acc, O, rows, D, splits);
}

extern "C" __global__ void hspi_attn_combine_native(const float* __restrict__ part_m, const float* __restrict__ part_l,
                                                    const float* __restrict__ part_acc, float* __restrict__ O,
                                                    long long rows, int D, int splits) {
  attn_combine<Mode::NATIVE>(part_m, part_l, part_acc, O, rows, D, splits);
}
