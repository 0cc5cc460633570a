// hspi-build: -fmad=false
//
// Elementwise fp32 probe: the smallest kernel that proves the AOT-cubin / NVRTC path end to end.
// Every operation is spelled out with an explicit IEEE intrinsic, so the result is exactly
// specified and the CPU reproduces it bit for bit:
//   hspi_fma_f32:     out[i] = fma(a[i], b[i], c[i])          one rounding (RNE)
//   hspi_mul_add_f32: out[i] = rn(rn(a[i] * b[i]) + c[i])     two roundings (RNE)
// -fmad=false pins that nvcc never contracts the second form into an FFMA.
#include <cstdint>

extern "C" __global__ void hspi_fma_f32(const float* __restrict__ a, const float* __restrict__ b,
                                        const float* __restrict__ c, float* __restrict__ out,
                                        long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    out[i] = __fmaf_rn(a[i], b[i], c[i]);
  }
}

extern "C" __global__ void hspi_mul_add_f32(const float* __restrict__ a,
                                            const float* __restrict__ b,
                                            const float* __restrict__ c, float* __restrict__ out,
                                            long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    out[i] = __fadd_rn(__fmul_rn(a[i], b[i]), c[i]);
  }
}
