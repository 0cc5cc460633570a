// hspi-build: -fmad=false
//
// Special-function-unit probes: one PTX approximate instruction applied to every fp32 bit pattern
// of whole binades (or to a list of inputs). The output table is a fingerprint of the SFU
// (MUFU) of the GPU it ran on; hspi_kernels/kernels/cuda/sfu.py records and compresses it.
//
// Kernels (extern "C"), for op in {ex2, ex2_ftz, lg2, rcp, rsqrt, sin, cos, tanh}:
//   hspi_sfu_<op>_binades(const unsigned* bases, unsigned* out, int n_binades)
//       binade b = blockIdx.y; input bits = bases[b] | i for i < 2^23 (bases[b]: sign and biased
//       exponent, fraction 0), out[b · 2^23 + i] = bits of op(input). Grid-stride over i.
//   hspi_sfu_<op>_list(const float* x, float* y, long long n)     y[i] = op(x[i])
// PTX (-> SASS on sm_90a): ex2.approx.f32, ex2.approx.ftz.f32 (MUFU.EX2), lg2.approx.f32 (MUFU.LG2),
// rcp.approx.f32 (MUFU.RCP), rsqrt.approx.f32 (MUFU.RSQ), sin.approx.f32 (MUFU.SIN),
// cos.approx.f32 (MUFU.COS), tanh.approx.f32 (MUFU.TANH, sm_75+). The non-.ftz forms may add
// scaling instructions around the MUFU for subnormal inputs/outputs; that is part of what the
// table records. Nothing else touches the values (no contraction question: -fmad=false anyway).

namespace {

#define HSPI_SFU_OP(name, ptx)                                       \
  __device__ __forceinline__ float name(float x) {                   \
    float y;                                                         \
    asm volatile(ptx " %0, %1;" : "=f"(y) : "f"(x));                 \
    return y;                                                        \
  }

HSPI_SFU_OP(op_ex2, "ex2.approx.f32")
HSPI_SFU_OP(op_ex2_ftz, "ex2.approx.ftz.f32")
HSPI_SFU_OP(op_lg2, "lg2.approx.f32")
HSPI_SFU_OP(op_rcp, "rcp.approx.f32")
HSPI_SFU_OP(op_rsqrt, "rsqrt.approx.f32")
HSPI_SFU_OP(op_sin, "sin.approx.f32")
HSPI_SFU_OP(op_cos, "cos.approx.f32")
HSPI_SFU_OP(op_tanh, "tanh.approx.f32")

constexpr unsigned BINADE = 1u << 23;

}  // namespace

#define HSPI_SFU_KERNELS(tag, fn)                                                                            \
  extern "C" __global__ void hspi_sfu_##tag##_binades(const unsigned* __restrict__ bases,                   \
                                                      unsigned* __restrict__ out, int n_binades) {          \
    const int b = blockIdx.y;                                                                               \
    if (b >= n_binades) return;                                                                             \
    const unsigned base = bases[b];                                                                         \
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < BINADE; i += gridDim.x * blockDim.x) {     \
      out[(long long)b * BINADE + i] = __float_as_uint(fn(__uint_as_float(base | i)));                     \
    }                                                                                                       \
  }                                                                                                         \
  extern "C" __global__ void hspi_sfu_##tag##_list(const float* __restrict__ x, float* __restrict__ y,     \
                                                   long long n) {                                           \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;                             \
         i += (long long)gridDim.x * blockDim.x) {                                                          \
      y[i] = fn(x[i]);                                                                                      \
    }                                                                                                       \
  }

HSPI_SFU_KERNELS(ex2, op_ex2)
HSPI_SFU_KERNELS(ex2_ftz, op_ex2_ftz)
HSPI_SFU_KERNELS(lg2, op_lg2)
HSPI_SFU_KERNELS(rcp, op_rcp)
HSPI_SFU_KERNELS(rsqrt, op_rsqrt)
HSPI_SFU_KERNELS(sin, op_sin)
HSPI_SFU_KERNELS(cos, op_cos)
HSPI_SFU_KERNELS(tanh, op_tanh)
