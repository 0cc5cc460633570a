// Exact plan evaluator: runs an accumulation plan, lowered by hspi_kernels.numerics.plans.lower
// to a register program, on batches of reductions, dot products and GEMMs.
//
// Program (see plans.Program): registers 0..n-1 are the terms (x_i, or the pair a_i, b_i),
// register n is +0, n+1 is the accumulator input c, n+2.. are intermediates. Each instruction
// row is (op, out, init, list_start, list_len, flag):
//   OP_SEQ   : acc = R[init] or the first listed value; then, strictly left to right,
//              acc = rn(acc + v) where a term is x_i or rn(a_i*b_i); flag=1 makes terms
//              acc = fmaf(a_i, b_i, acc) (one rounding, std::fmaf).
//   OP_CHAIN : tensor-core blocks of G listed terms in list order; c = R[init] or +0;
//              every block's output is the next block's c.
// Arithmetic is IEEE binary32 (SSE, RNE, no contraction: built with -ffp-contract=off).
// run_program_f64 runs fp64 plans (plans.plan_format == "fp64") the same way in binary64:
// float64 registers, rn64 additions and products, std::fma; no OP_CHAIN.
//
// Tensor-core block (written from DESIGN.md "The numerics core", with the exponent convention
// of numerics/tensor_core.py: e_x = floor(log2|x|), subnormals normalised):
//   each operand = (-1)^s * m * 2^(e-23) with a 24-bit significand m; a product is the exact
//   48-bit m_a*m_b at alignment exponent e_a+e_b; e_max = max over non-zero products and c
//   (raised to the arch floor); every term is truncated toward zero in sign-magnitude onto the
//   grid 2^(e_max-F) and the integers are summed exactly in int64; the sum is normalised and
//   rounded once to the output format (fp32 RZ, fp16 RNE, e8m13 RZ).
// Model options (numerics/tensor_core.py BlockModel): subnormal_exponent="emin" aligns a
// subnormal operand at its format's emin (a, b: the input format; c: fp16 for fp16 output, else
// fp32) for e_max only, its value unchanged; zero_sign="positive" writes every zero result as +0
// (also an underflow to zero). Both are what the H100 does (tests/data/gpu_blocks).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#ifdef HSPI_HAVE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace hspi {
namespace {

constexpr int64_t OP_SEQ = 0;
constexpr int64_t OP_CHAIN = 1;
constexpr int32_t ZERO_EXP = -(1 << 20);  // exponent given to zero operands: never e_max
constexpr int kMaxG = 64;               // largest block the generic path handles
constexpr uint32_t NAN_BITS = 0x7FFFFFFFu;  // what the tensor cores write for NaN

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

struct OutFormat {
  int frac, emin, emax;
  bool rne;
};

// 2^e as a double, for |e| < 1000 (exact scaling without a libm call).
inline double pow2(int e) {
  const uint64_t u = static_cast<uint64_t>(e + 1023) << 52;
  double d;
  std::memcpy(&d, &u, 8);
  return d;
}

struct BlockParams {
  int G = 0, F = 0;
  OutFormat out{23, -126, 127, false};
  bool fp16_out = false;
  bool has_floor = false;
  int floor = 0;
  int low_bits = 0;
  bool sub_emin = false;   // subnormal_exponent == "emin"
  int in_emin = -126;      // emin of the input format
  int c_emin = -126;       // emin of c's format
  bool zero_positive = false;  // zero_sign == "positive"
};

// Exact (-1)^neg * mag * 2^exp2 rounded to `fmt` (RZ or RNE), returned as the float32 holding
// that value exactly (all output formats are subsets of fp32). Overflow: RZ -> max finite,
// RNE -> inf. mag must be < 2^63.
float round_exact(bool neg, uint64_t mag, int exp2, const OutFormat& fmt) {
  if (mag == 0) return neg ? -0.0f : 0.0f;
  const int length = 64 - __builtin_clzll(mag);
  const int e = std::max(exp2 + length - 1, fmt.emin);
  const int quantum = e - fmt.frac;  // exponent of the last kept bit
  uint64_t keep = mag;
  int keep_exp = exp2;
  if (quantum > exp2) {
    const int r = quantum - exp2;
    keep = r >= 64 ? 0 : mag >> r;
    if (fmt.rne && r <= 64) {
      const uint64_t rem = r == 64 ? mag : mag & ((uint64_t(1) << r) - 1);
      const uint64_t half = uint64_t(1) << (r - 1);
      if (rem > half || (rem == half && (keep & 1))) ++keep;
    }
    keep_exp = quantum;
  }
  double value = static_cast<double>(keep) * pow2(keep_exp);  // exact: keep < 2^54, no underflow
  const double max_finite = static_cast<double>((uint64_t(1) << (fmt.frac + 1)) - 1) * pow2(fmt.emax - fmt.frac);
  if (value > max_finite) value = fmt.rne ? INFINITY : max_finite;
  return static_cast<float>(neg ? -value : value);
}

// One operand in block form: value = (-1)^sign * mag * 2^(exp-23), mag a 24-bit integer
// (0 for zeros, infinities and NaNs: `special` tells those apart).
struct Decoded {
  uint32_t mag;
  int32_t exp;
  int32_t sign;     // 0 or -1 (a mask, used to negate branch-free)
  int32_t special;  // 0 finite, 1 inf, 2 nan
};

inline Decoded decode(float x, int low_bits) {
  uint32_t u = bits_of(x);
  if (low_bits) u &= ~((uint32_t(1) << low_bits) - 1);
  Decoded d{};
  d.sign = (u >> 31) ? -1 : 0;
  const uint32_t field = (u >> 23) & 0xFF, frac = u & 0x7FFFFF;
  if (field == 0xFF) {
    d.special = frac ? 2 : 1;
    d.exp = ZERO_EXP;
  } else if (field == 0) {
    if (frac == 0) {
      d.exp = ZERO_EXP;
    } else {  // subnormal: normalise so the leading bit is bit 23
      const int shift = __builtin_clz(frac) - 8;
      d.mag = frac << shift;
      d.exp = -126 - shift;
    }
  } else {
    d.mag = frac | 0x800000u;
    d.exp = static_cast<int32_t>(field) - 127;
  }
  return d;
}

// fp16 outputs take c rounded (RNE) to fp16 first.
inline float c_for_output(float c, const BlockParams& P) {
  if (!P.fp16_out || !std::isfinite(c)) return c;
  const Decoded d = decode(c, 0);
  return round_exact(d.sign != 0, d.mag, d.exp - 23, OutFormat{10, -14, 15, true});
}

// The special-value rules of a block (NaN operand, 0*inf, +inf meeting -inf -> NaN; else an
// infinite product or c wins). Returns true and sets *out when they decide the result.
bool block_specials(const Decoded* a, const Decoded* b, int G, float c, float* out) {
  bool nan = std::isnan(c), pos = c == INFINITY, neg = c == -INFINITY;
  for (int i = 0; i < G; ++i) {
    const bool zero_a = a[i].mag == 0 && a[i].special == 0, zero_b = b[i].mag == 0 && b[i].special == 0;
    if (a[i].special == 2 || b[i].special == 2) nan = true;
    const bool inf = a[i].special == 1 || b[i].special == 1;
    if (inf && (zero_a || zero_b)) nan = true;
    if (inf && !(zero_a || zero_b)) ((a[i].sign ^ b[i].sign) ? neg : pos) = true;
  }
  if (nan || (pos && neg)) {
    *out = float_of(NAN_BITS);
    return true;
  }
  if (pos || neg) {
    *out = pos ? INFINITY : -INFINITY;
    return true;
  }
  return false;
}

// d = c + sum_{i<G} a_i b_i, one block (see the header for the arithmetic). GS > 0 fixes G at
// compile time (the unrolled hot path); GS == 0 reads it from P.
template <int GS>
float block_fma(const Decoded* a, const Decoded* b, float c, const BlockParams& P, bool maybe_special) {
  const int G = GS > 0 ? GS : P.G, F = P.F;
  if (maybe_special || !std::isfinite(c)) {
    float out;
    if (block_specials(a, b, G, c, &out)) return out;
  }
  const Decoded dc = decode(c, 0);
  constexpr int kMax = GS > 0 ? GS : kMaxG;
  int32_t pe[kMax];
  uint64_t pm[kMax];
  // Alignment exponents decide e_max only; a zero operand keeps ZERO_EXP (never e_max).
  const int in_lo = P.sub_emin ? P.in_emin : ZERO_EXP;
  int e_max = dc.mag ? std::max<int>(dc.exp, P.sub_emin ? P.c_emin : ZERO_EXP) : ZERO_EXP * 4;
  for (int i = 0; i < G; ++i) {
    pe[i] = a[i].exp + b[i].exp;
    pm[i] = static_cast<uint64_t>(a[i].mag) * b[i].mag;
    const int align = std::max<int>(a[i].exp, a[i].mag ? in_lo : ZERO_EXP) +
                      std::max<int>(b[i].exp, b[i].mag ? in_lo : ZERO_EXP);
    e_max = std::max(e_max, align);
  }
  if (P.has_floor) e_max = std::max(e_max, P.floor);
  // Product i sits at 2^(e_a+e_b-46); the grid is 2^(e_max-F): shift right by the difference.
  int64_t total = 0;
  const int base = e_max + 46 - F;
  for (int i = 0; i < G; ++i) {
    // >= 46 - F >= 0 for a non-zero product; a zero product in an all-zero block (e_max at
    // the zero sentinel) can sit above the grid: clamp (its magnitude is 0 either way).
    const int shift = std::clamp(base - pe[i], 0, 63);
    const int64_t term = static_cast<int64_t>(pm[i] >> shift);
    const int64_t sign = static_cast<int64_t>(a[i].sign ^ b[i].sign);
    total += (term ^ sign) - sign;  // sign-magnitude truncation, then the signed value
  }
  if (dc.mag) {
    const int shift = e_max - dc.exp + 23 - F;  // c sits at 2^(e_c-23)
    // 64-bit shift: c can sit 32+ bits below the grid (a 32-bit shift by >= 32 is undefined).
    const int64_t term = shift >= 0 ? static_cast<int64_t>(uint64_t(dc.mag) >> std::min(shift, 63))
                                    : static_cast<int64_t>(uint64_t(dc.mag) << -shift);
    total += dc.sign ? -term : term;
  }
  if (total == 0) {  // +0 unless every term is -0 (zero_sign "ieee")
    bool all_negative_zero = !P.zero_positive && dc.mag == 0 && dc.sign && dc.special == 0;
    for (int i = 0; i < G && all_negative_zero; ++i)
      all_negative_zero = (a[i].mag == 0 || b[i].mag == 0) && (a[i].sign ^ b[i].sign);
    return all_negative_zero ? -0.0f : 0.0f;
  }
  const bool neg = total < 0;
  const float d = round_exact(neg, static_cast<uint64_t>(neg ? -total : total), e_max - F, P.out);
  return P.zero_positive && d == 0.0f ? 0.0f : d;
}

// A chain of blocks over len terms: each block's output is the next block's c.
template <int GS>
float chain(const Decoded* a, const Decoded* b, int64_t len, float acc, const BlockParams& P, bool special) {
  for (int64_t j = 0; j < len; j += P.G) acc = block_fma<GS>(a + j, b + j, acc, P, special);
  return acc;
}

float run_chain(const Decoded* a, const Decoded* b, int64_t len, float acc, const BlockParams& P, bool special) {
  switch (P.G) {
    case 4: return chain<4>(a, b, len, acc, P, special);
    case 8: return chain<8>(a, b, len, acc, P, special);
    case 16: return chain<16>(a, b, len, acc, P, special);
    case 32: return chain<32>(a, b, len, acc, P, special);
    default: return chain<0>(a, b, len, acc, P, special);
  }
}

struct Program {
  const int64_t* instrs;
  int64_t n_instrs;
  const int32_t* lists;
  int64_t n, n_regs, out;
  bool has_chain = false;
  std::vector<char> contiguous;  // per instruction: list is list[0], list[0]+1, ...
};

// Operands of one output: x (or a, b) rows and, for chains, their block decodings.
template <typename T>
struct Row {
  const T* a;
  const T* b;  // nullptr for a reduction
  const Decoded* da;
  const Decoded* db;
  bool special;  // any inf/nan among the decoded operands
};

template <typename T>
struct Scratch {
  std::vector<T> regs;
  std::vector<Decoded> ga, gb;  // gathered operands of a non-contiguous chain
};

// fused multiply-add with one rounding in the register type (fp32: std::fmaf, fp64: std::fma)
inline float fma_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline double fma_rn(double a, double b, double c) { return std::fma(a, b, c); }

// T = float: fp32 plans (tensor-core chains included); T = double: fp64 plans (OP_SEQ only,
// every addition and product rounded to fp64 RNE, fma with a single fp64 rounding).
template <typename T>
T run_one(const Program& prog, const Row<T>& row, T c, const BlockParams& P, Scratch<T>& s) {
  const int64_t n = prog.n;
  T* R = s.regs.data();  // register r >= n lives in R[r - n]
  R[0] = T(0);
  R[1] = c;
  const bool dot = row.b != nullptr;
  for (int64_t k = 0; k < prog.n_instrs; ++k) {
    const int64_t* ins = prog.instrs + 6 * k;
    const int64_t out = ins[1], init = ins[2], len = ins[4];
    const int32_t* list = prog.lists + ins[3];
    if (ins[0] == OP_SEQ) {
      const bool fma = ins[5] != 0 && dot;
      int64_t i = 0;
      T acc;
      if (init >= 0) {
        acc = R[init - n];
      } else {
        const int32_t r = list[0];
        acc = r >= n ? R[r - n] : (dot ? row.a[r] * row.b[r] : row.a[r]);
        i = 1;
      }
      for (; i < len; ++i) {
        const int32_t r = list[i];
        if (r >= n) {
          acc = acc + R[r - n];
        } else if (!dot) {
          acc = acc + row.a[r];
        } else if (fma) {
          acc = fma_rn(row.a[r], row.b[r], acc);
        } else {
          const T product = row.a[r] * row.b[r];
          acc = acc + product;
        }
      }
      R[out - n] = acc;
    } else if constexpr (std::is_same_v<T, float>) {  // OP_CHAIN (fp32 programs only)
      float acc = c_for_output(init >= 0 ? R[init - n] : 0.0f, P);
      const Decoded *da, *db;
      if (prog.contiguous[k]) {
        da = row.da + list[0];
        db = row.db + list[0];
      } else {
        for (int64_t i = 0; i < len; ++i) {
          s.ga[i] = row.da[list[i]];
          s.gb[i] = row.db[list[i]];
        }
        da = s.ga.data();
        db = s.gb.data();
      }
      acc = run_chain(da, db, len, acc, P, row.special);
      R[out - n] = acc;
    }
  }
  return prog.out >= 0 ? R[prog.out - n] : T(0);
}

template <typename T>
py::array_t<T, py::array::c_style> need(py::handle h, const char* what, int ndim) {
  auto arr = py::array_t<T, py::array::c_style>::ensure(h);
  if (!arr || !py::isinstance<py::array_t<T>>(h)) throw std::invalid_argument(std::string(what) + ": wrong dtype");
  if (ndim >= 0 && arr.ndim() != ndim)
    throw std::invalid_argument(std::string(what) + ": expected " + std::to_string(ndim) + " dimensions");
  return arr;
}

void decode_rows(const float* x, int64_t count, int low_bits, std::vector<Decoded>& out, std::vector<char>& special,
                 int64_t K) {
  out.resize(static_cast<size_t>(count * K));
  special.assign(static_cast<size_t>(count), 0);
#ifdef HSPI_HAVE_OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (int64_t r = 0; r < count; ++r) {
    char any = 0;
    for (int64_t i = 0; i < K; ++i) {
      const Decoded d = decode(x[r * K + i], low_bits);
      out[r * K + i] = d;
      any |= d.special != 0;
    }
    special[r] = any;
  }
}

// out[r] = plan(A[r]) (B None), plan(A[r], B[r]) (paired), or out[r, s] = plan(A[r], B[s]) (outer).
// T = float (run_program) or double (run_program_f64: fp64 plans, no tensor-core chains).
template <typename T>
py::array_t<T> run_program(py::handle instrs_h, py::handle lists_h, int64_t n, int64_t n_regs, int64_t out_reg,
                               py::handle model_h, py::handle A_h, py::handle B_h, py::handle C_h, bool outer) {
  auto instrs = need<int64_t>(instrs_h, "instrs", 2);
  auto lists = need<int32_t>(lists_h, "lists", 1);
  auto model = need<int64_t>(model_h, "model", 1);
  auto A = need<T>(A_h, "A", 2);
  if (instrs.shape(1) != 6) throw std::invalid_argument("instrs must have 6 columns");
  const int64_t rows = A.shape(0), K = A.shape(1);
  if (K != n) throw std::invalid_argument("operand length does not match the program's n");
  const bool dot = !B_h.is_none();
  py::array_t<T, py::array::c_style> B;
  int64_t cols = 1;
  if (dot) {
    B = need<T>(B_h, "B", 2);
    if (B.shape(1) != K) throw std::invalid_argument("A and B must have the same K");
    if (outer) cols = B.shape(0);
    else if (B.shape(0) != rows) throw std::invalid_argument("paired A and B must have the same rows");
  } else if (outer) {
    throw std::invalid_argument("outer mode needs B");
  }
  const int64_t n_out = rows * cols;
  py::array_t<T, py::array::c_style> C;
  if (!C_h.is_none()) {
    C = need<T>(C_h, "C", -1);
    if (C.size() != n_out) throw std::invalid_argument("C must have one value per output");
  }

  // Registers: n terms, +0, c, then one per instruction (what plans.lower emits); out is -1
  // (absent) or a register. Bounding n_regs by the program bounds every allocation below.
  const int64_t n_instrs = instrs.shape(0);
  if (n_regs < n + 2 || n_regs - n - 2 > n_instrs)
    throw std::invalid_argument("malformed program: n_regs must be in [n + 2, n + 2 + instructions]");
  if (out_reg != -1 && (out_reg < n || out_reg >= n_regs))
    throw std::invalid_argument("malformed program: out register out of range");
  Program prog{instrs.data(), n_instrs, lists.data(), n, n_regs, out_reg, false, {}};
  int64_t max_chain = 0;
  const int64_t n_lists = lists.shape(0);
  prog.contiguous.assign(static_cast<size_t>(prog.n_instrs), 0);
  for (int64_t k = 0; k < prog.n_instrs; ++k) {
    const int64_t* ins = prog.instrs + 6 * k;
    if (ins[0] != OP_SEQ && ins[0] != OP_CHAIN) throw std::invalid_argument("unknown instruction");
    // ins[4] > n_lists - ins[3], not ins[3] + ins[4] > n_lists: the sum can overflow int64
    if (ins[3] < 0 || ins[4] < 0 || ins[3] > n_lists || ins[4] > n_lists - ins[3] || ins[1] < n + 2 || ins[1] >= n_regs ||
        ins[2] >= n_regs || (ins[2] >= 0 && ins[2] < n) || (ins[2] < 0 && ins[4] == 0))
      throw std::invalid_argument("malformed program");
    const int32_t* list = prog.lists + ins[3];
    bool contiguous = true;
    for (int64_t i = 0; i < ins[4]; ++i) {
      if (list[i] < 0 || list[i] >= n_regs) throw std::invalid_argument("register out of range");
      contiguous = contiguous && list[i] == list[0] + i;
    }
    if (ins[0] == OP_CHAIN) {
      prog.has_chain = true;
      max_chain = std::max<int64_t>(max_chain, ins[4]);
      for (int64_t i = 0; i < ins[4]; ++i)
        if (list[i] >= n) throw std::invalid_argument("a chain must list terms only");
    }
    prog.contiguous[k] = contiguous;
  }
  BlockParams P;
  if (prog.has_chain && !std::is_same_v<T, float>) throw std::invalid_argument("tensor-core chains are fp32 programs");
  if (prog.has_chain) {
    if (!dot) throw std::invalid_argument("a chain needs a dot product");
    if (model.shape(0) != 11) throw std::invalid_argument("model must have 11 entries");
    const int64_t* m = model.data();
    P.G = static_cast<int>(m[0]);
    P.F = static_cast<int>(m[1]);
    if (P.G < 1 || P.G > kMaxG || P.F < 1 || P.F > 46) throw std::invalid_argument("unsupported block G/F");
    static const OutFormat formats[3] = {{23, -126, 127, false}, {10, -14, 15, true}, {13, -126, 127, false}};
    if (m[2] < 0 || m[2] > 2) throw std::invalid_argument("unknown output format");
    P.out = formats[m[2]];
    P.out.rne = m[3] != 0;
    P.fp16_out = m[2] == 1;
    P.has_floor = m[4] != 0;
    P.floor = static_cast<int>(m[5]);
    P.low_bits = static_cast<int>(m[6]);
    P.sub_emin = m[7] != 0;
    P.in_emin = static_cast<int>(m[8]);
    P.c_emin = static_cast<int>(m[9]);
    P.zero_positive = m[10] != 0;
    // Range-check before the int casts above matter: the block arithmetic adds exponents in
    // int and scales by pow2(|e| < 1000).
    if (m[8] < -1000 || m[8] > 0 || m[9] < -1000 || m[9] > 0)
      throw std::invalid_argument("model: emin out of range");
    if (P.has_floor && (m[5] < -1000 || m[5] > 1000)) throw std::invalid_argument("model: e_max floor out of range");
    if (m[6] < 0 || m[6] > 23) throw std::invalid_argument("model: ignored low bits must be in [0, 23]");
    for (int64_t k = 0; k < prog.n_instrs; ++k)
      if (prog.instrs[6 * k] == OP_CHAIN && prog.instrs[6 * k + 4] % P.G)
        throw std::invalid_argument("a chain's length must be a multiple of G");
  }

  py::array_t<T> result(outer ? std::vector<py::ssize_t>{rows, cols} : std::vector<py::ssize_t>{rows});
  T* out = result.mutable_data();
  const T* a = A.data();
  const T* b = dot ? B.data() : nullptr;
  const T* c = C_h.is_none() ? nullptr : C.data();
  {
    py::gil_scoped_release release;
    std::vector<Decoded> dA, dB;
    std::vector<char> sA, sB;
    if constexpr (std::is_same_v<T, float>) {
      if (prog.has_chain) {
        decode_rows(a, rows, P.low_bits, dA, sA, K);
        decode_rows(b, outer ? cols : rows, P.low_bits, dB, sB, K);
      }
    }
    // Per-thread scratch is allocated here, not inside the parallel region: an exception (bad_alloc)
    // escaping an OpenMP region terminates the process instead of reaching Python.
    int n_threads = 1;
#ifdef HSPI_HAVE_OPENMP
    n_threads = omp_get_max_threads();
#endif
    std::vector<Scratch<T>> scratches(static_cast<size_t>(n_threads));
    for (auto& sc : scratches) {
      sc.regs.assign(static_cast<size_t>(n_regs - n), T(0));
      sc.ga.resize(static_cast<size_t>(max_chain));
      sc.gb.resize(static_cast<size_t>(max_chain));
    }
#ifdef HSPI_HAVE_OPENMP
#pragma omp parallel num_threads(n_threads)
#endif
    {
      int tid = 0;
#ifdef HSPI_HAVE_OPENMP
      tid = omp_get_thread_num();
#endif
      Scratch<T>& scratch = scratches[static_cast<size_t>(tid)];
#ifdef HSPI_HAVE_OPENMP
#pragma omp for schedule(dynamic, 16)
#endif
      for (int64_t o = 0; o < n_out; ++o) {
        const int64_t r = o / cols, s = outer ? o % cols : r;
        Row<T> row{a + r * K, b ? b + s * K : nullptr, nullptr, nullptr, false};
        if (prog.has_chain) {
          row.da = dA.data() + r * K;
          row.db = dB.data() + s * K;
          row.special = sA[r] || sB[s];
        }
        out[o] = run_one<T>(prog, row, c ? c[o] : T(0), P, scratch);
      }
    }
  }
  return result;
}

}  // namespace

void register_evaluator(py::module_& m) {
  m.def("run_program", &run_program<float>, py::arg("instrs"), py::arg("lists"), py::arg("n"), py::arg("n_regs"),
        py::arg("out"), py::arg("model"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("outer"),
        "Run a lowered accumulation plan (hspi_kernels.numerics.plans.Program) exactly; see evaluator.cpp.");
  m.def("run_program_f64", &run_program<double>, py::arg("instrs"), py::arg("lists"), py::arg("n"),
        py::arg("n_regs"), py::arg("out"), py::arg("model"), py::arg("A"), py::arg("B"), py::arg("C"),
        py::arg("outer"), "run_program for fp64 plans (float64 operands and registers, no tensor-core chains).");
}

}  // namespace hspi
