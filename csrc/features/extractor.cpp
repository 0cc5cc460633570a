// Native feature extractor v1: bit fields, ULP distances and their histogram, fraction-bit
// frequencies, rounding directions. Called only through hspi_kernels/fingerprint/features.py, which
// validates inputs and hands over C-contiguous unsigned-integer views of the raw bit patterns
// (never values converted through float64). Every function here re-checks what it relies on
// (itemsize, contiguity, equal sizes) and raises ValueError instead of reading out of bounds.
//
// Formats are described by (width, exp_bits, frac_bits, has_inf): IEEE-like layout
// sign | exponent | fraction. has_inf=false is the OCP e4m3fn convention: no infinities, the
// only NaN magnitude is all ones. Long loops run without the GIL and, with OpenMP, over
// static contiguous ranges (the results do not depend on the thread count: counts are integer
// sums).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#ifdef HSPI_HAVE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace hspi {
namespace {

// Below this many elements a single thread is faster than waking the team.
constexpr std::int64_t kParallelMin = 1 << 16;

int thread_count(std::int64_t n) {
#ifdef HSPI_HAVE_OPENMP
  return n >= kParallelMin ? omp_get_max_threads() : 1;
#else
  (void)n;
  return 1;
#endif
}

// Static contiguous range [begin, end) of thread t out of nt, aligned to `align` elements.
inline void thread_range(std::int64_t n, int t, int nt, std::int64_t align, std::int64_t& begin,
                         std::int64_t& end) {
  std::int64_t blocks = (n + align - 1) / align;
  std::int64_t per = blocks / nt, extra = blocks % nt;
  std::int64_t b0 = t * per + std::min<std::int64_t>(t, extra);
  std::int64_t b1 = b0 + per + (t < extra ? 1 : 0);
  begin = std::min(n, b0 * align);
  end = std::min(n, b1 * align);
}

// Run fn(t, begin, end) on nt threads over static contiguous ranges of [0, n).
template <class Fn> void parallel_ranges(std::int64_t n, int nt, std::int64_t align, Fn&& fn) {
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    int t = 0;
#ifdef HSPI_HAVE_OPENMP
    t = omp_get_thread_num();
#endif
    std::int64_t lo, hi;
    thread_range(n, t, nt, align, lo, hi);
    if (lo < hi) fn(t, lo, hi);
  }
}

// The hot loops are written once (HSPI_KERNEL bodies, always inlined) and instantiated twice:
// for the baseline ISA and with AVX2 enabled; the AVX2 copy is chosen at run time when the CPU
// has it. Threads are started outside the kernels, so each thread runs the chosen copy.
#if defined(__x86_64__) && defined(__GNUC__)
#define HSPI_AVX2 __attribute__((target("avx2,bmi,bmi2,lzcnt,popcnt")))
#define HSPI_AVX512 \
  __attribute__((target("avx512f,avx512cd,avx512vl,avx512bw,avx512dq,avx2,bmi,bmi2,lzcnt,popcnt")))
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
  return has;
}
// AVX-512 (with CD: vector lzcnt) is used where it vectorises what AVX2 cannot (log2 bins).
bool cpu_has_avx512() {
  static const bool has = cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  return has;
}
#else
#define HSPI_AVX2
#define HSPI_AVX512
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
#endif
#define HSPI_INLINE inline __attribute__((always_inline))

struct Format {
  int width;      // bits per value: 8, 16, 32, 64
  int exp_bits;   // exponent field width
  int frac_bits;  // fraction field width
  bool has_inf;   // false: e4m3fn (no inf, NaN = all-ones magnitude)

  std::uint64_t mag_mask() const {
    return width == 64 ? ~(std::uint64_t{1} << 63) : (std::uint64_t{1} << (width - 1)) - 1;
  }
  std::uint64_t inf_mag() const {  // magnitude of +inf (IEEE) / of the NaN (e4m3fn)
    return has_inf ? ((std::uint64_t{1} << exp_bits) - 1) << frac_bits : mag_mask();
  }
  // Magnitudes >= nonfinite_min are Inf or NaN; >= nan_min are NaN.
  std::uint64_t nonfinite_min() const { return inf_mag(); }
  std::uint64_t nan_min() const { return has_inf ? inf_mag() + 1 : mag_mask(); }
};

Format make_format(int width, int exp_bits, int frac_bits, bool has_inf) {
  if (!(width == 8 || width == 16 || width == 32 || width == 64))
    throw py::value_error("format width must be 8, 16, 32 or 64 bits, got " + std::to_string(width));
  if (exp_bits < 1 || frac_bits < 0 || 1 + exp_bits + frac_bits != width)
    throw py::value_error("format fields do not add up: 1 + " + std::to_string(exp_bits) + " + " +
                          std::to_string(frac_bits) + " != " + std::to_string(width));
  return Format{width, exp_bits, frac_bits, has_inf};
}

// A C-contiguous array of raw bit patterns with the itemsize the format needs.
const void* bits_data(const py::array& a, const Format& f, const char* name) {
  // Integer, float or bool storage only: an object array's "bits" would be pointers.
  const char kind = a.dtype().kind();
  if (kind != 'u' && kind != 'i' && kind != 'f' && kind != 'b')
    throw py::value_error(std::string(name) + ": raw bit patterns must be a numeric array, got dtype " +
                          std::string(py::str(a.dtype())));
  if (a.itemsize() * 8 != f.width)
    throw py::value_error(std::string(name) + ": itemsize " + std::to_string(a.itemsize()) +
                          " bytes does not match a " + std::to_string(f.width) + "-bit format");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": array must be C-contiguous");
  if (a.size() == 0) throw py::value_error(std::string(name) + ": array is empty");
  return a.data();
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

void check_same_size(const py::array& a, const py::array& b) {
  if (a.size() != b.size())
    throw py::value_error("arrays differ in size: " + std::to_string(a.size()) + " vs " +
                          std::to_string(b.size()));
}

template <int W> struct UInt;
template <> struct UInt<8> { using type = std::uint8_t; };
template <> struct UInt<16> { using type = std::uint16_t; };
template <> struct UInt<32> { using type = std::uint32_t; };
template <> struct UInt<64> { using type = std::uint64_t; };

// Call fn(T{}) with T the unsigned integer of the format's width.
template <class Fn> auto dispatch_width(int width, Fn&& fn) {
  switch (width) {
    case 8: return fn(std::uint8_t{});
    case 16: return fn(std::uint16_t{});
    case 32: return fn(std::uint32_t{});
    default: return fn(std::uint64_t{});
  }
}

// ---------------------------------------------------------------------------------------------
// fields: sign | biased exponent | fraction, straight from the bit pattern.
// ---------------------------------------------------------------------------------------------
template <class T, class E>
HSPI_INLINE void fields_body(const T* __restrict x, std::int64_t lo, std::int64_t hi, int frac_bits,
                             T exp_mask, T frac_mask, std::uint8_t* __restrict sign,
                             E* __restrict exponent, T* __restrict fraction) {
  constexpr int W = sizeof(T) * 8;
  for (std::int64_t i = lo; i < hi; ++i) {
    const T u = x[i];
    sign[i] = static_cast<std::uint8_t>(u >> (W - 1));
    exponent[i] = static_cast<E>((u >> frac_bits) & exp_mask);
    fraction[i] = static_cast<T>(u & frac_mask);
  }
}
#define HSPI_FIELDS_ARGS                                                                        \
  const T *x, std::int64_t lo, std::int64_t hi, int frac_bits, T exp_mask, T frac_mask,         \
      std::uint8_t *sign, E *exponent, T *fraction
template <class T, class E> void fields_base(HSPI_FIELDS_ARGS) {
  fields_body<T, E>(x, lo, hi, frac_bits, exp_mask, frac_mask, sign, exponent, fraction);
}
template <class T, class E> HSPI_AVX2 void fields_avx2(HSPI_FIELDS_ARGS) {
  fields_body<T, E>(x, lo, hi, frac_bits, exp_mask, frac_mask, sign, exponent, fraction);
}

// A caller-provided output (fields(..., out=)): C-contiguous, writeable, of dtype U and of the
// input's size; anything else is a ValueError. Reusing outputs skips the page faults of fresh
// allocations, which bound this feature on machines with slow first touch.
template <class U>
py::array_t<U> output_array(const py::object& given, const std::vector<py::ssize_t>& shape,
                            std::int64_t n, const char* name) {
  if (given.is_none()) return py::array_t<U>(shape);
  if (!py::isinstance<py::array>(given))
    throw py::value_error(std::string("out ") + name + ": expected a numpy array");
  py::array arr = py::reinterpret_borrow<py::array>(given);
  if (!arr.dtype().is(py::dtype::of<U>()))
    throw py::value_error(std::string("out ") + name + ": dtype must be " +
                          std::string(py::str(py::dtype::of<U>())) + ", got " +
                          std::string(py::str(arr.dtype())));
  if (arr.size() != n || !(arr.flags() & py::array::c_style) || !arr.writeable())
    throw py::value_error(std::string("out ") + name +
                          ": must be writeable, C-contiguous and of the input's size");
  return py::reinterpret_borrow<py::array_t<U>>(given);
}

// The kernels take __restrict pointers: a caller-provided output must not share memory with
// the input or with another output (an overlap would be undefined behaviour, not just wrong).
bool overlaps(const py::array& a, const py::array& b) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

template <class T, class E>
py::tuple fields_typed(const py::array& x, const void* data, const std::vector<py::ssize_t>& shape,
                       std::int64_t n, const Format& f, const py::object& out) {
  py::object o_s = py::none(), o_e = py::none(), o_f = py::none();
  if (!out.is_none()) {
    if (!py::isinstance<py::tuple>(out) || py::len(out) != 3)
      throw py::value_error("out must be a (sign, exponent, fraction) tuple");
    py::tuple t = py::reinterpret_borrow<py::tuple>(out);
    o_s = t[0];
    o_e = t[1];
    o_f = t[2];
  }
  auto sign = output_array<std::uint8_t>(o_s, shape, n, "sign");
  auto exponent = output_array<E>(o_e, shape, n, "exponent");
  auto fraction = output_array<T>(o_f, shape, n, "fraction");
  if (!out.is_none()) {
    const py::array* arrs[4] = {&x, &sign, &exponent, &fraction};
    for (int i = 0; i < 4; ++i)
      for (int j = i + 1; j < 4; ++j)
        if (overlaps(*arrs[i], *arrs[j]))
          throw py::value_error("out arrays must not overlap the input or each other");
  }
  const T exp_mask = static_cast<T>((std::uint64_t{1} << f.exp_bits) - 1);
  const T frac_mask = static_cast<T>((std::uint64_t{1} << f.frac_bits) - 1);
  const T* xs = static_cast<const T*>(data);
  auto* s = sign.mutable_data();
  auto* e = exponent.mutable_data();
  auto* fr = fraction.mutable_data();
  auto kernel = cpu_has_avx2() ? &fields_avx2<T, E> : &fields_base<T, E>;
  {
    py::gil_scoped_release nogil;
    // First touch of fresh outputs happens inside the threads (page faults in parallel).
    parallel_ranges(n, thread_count(n), 4096, [&](int, std::int64_t lo, std::int64_t hi) {
      kernel(xs, lo, hi, f.frac_bits, exp_mask, frac_mask, s, e, fr);
    });
  }
  return py::make_tuple(sign, exponent, fraction);
}

py::tuple fields(const py::array& x, int width, int exp_bits, int frac_bits, bool has_inf,
                 const py::object& out) {
  Format f = make_format(width, exp_bits, frac_bits, has_inf);
  const void* data = bits_data(x, f, "x");
  auto shape = shape_of(x);
  const std::int64_t n = x.size();
  // The exponent output is u8 or u16: a wider field would be silently truncated.
  if (f.exp_bits > 16)
    throw py::value_error("fields: exponent fields wider than 16 bits are not supported, got " +
                          std::to_string(f.exp_bits));
  return dispatch_width(f.width, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    if (f.exp_bits <= 8) return fields_typed<T, std::uint8_t>(x, data, shape, n, f, out);
    return fields_typed<T, std::uint16_t>(x, data, shape, n, f, out);
  });
}

// ---------------------------------------------------------------------------------------------
// ULP distance. Each bit pattern maps to a point of a monotone integer line:
// ord(u) = +mag for sign 0, -mag for sign 1 (so +0 and -0 both map to 0 and a sign crossing
// counts the steps on both sides of zero). distance = ord(a) - ord(b). For fp64 the difference
// can exceed int64; it saturates to [INT64_MIN + 1, INT64_MAX] (symmetric).
// special flags: bit 0 a is NaN, bit 1 a is Inf, bit 2 b is NaN, bit 3 b is Inf; distance is 0
// wherever a flag is set.
// ---------------------------------------------------------------------------------------------
template <class T> struct Ordinal {
  static constexpr int W = sizeof(T) * 8;
  T mag_mask, inf_mag, nan_min;  // inf_mag = sign bit (never a magnitude) when there is no Inf
  explicit Ordinal(const Format& f)
      : mag_mask(static_cast<T>(f.mag_mask())),
        inf_mag(static_cast<T>(f.has_inf ? f.inf_mag() : f.mag_mask() + 1)),
        nan_min(static_cast<T>(f.nan_min())) {}
};

// ord in the signed integer of the format's width (|ord| < 2^(W-1): no overflow).
template <class T> HSPI_INLINE auto ord_of(T u, T mag_mask) {
  using S = std::make_signed_t<T>;
  constexpr int W = sizeof(T) * 8;
  const S mag = static_cast<S>(u & mag_mask);
  const S s = static_cast<S>(-static_cast<S>(u >> (W - 1)));  // 0 or -1
  return static_cast<S>((mag ^ s) - s);
}

template <class T> HSPI_INLINE std::int64_t ord_diff(T a, T b, T mag_mask) {
  if constexpr (sizeof(T) < 8) {
    return static_cast<std::int64_t>(ord_of(a, mag_mask)) - ord_of(b, mag_mask);
  } else {
    __int128 d = static_cast<__int128>(ord_of(a, mag_mask)) - ord_of(b, mag_mask);
    const __int128 top = std::numeric_limits<std::int64_t>::max();
    return static_cast<std::int64_t>(d > top ? top : (d < -top ? -top : d));
  }
}

template <class T> HSPI_INLINE std::uint8_t flags_of(T u, T mag_mask, T inf_mag, T nan_min) {
  const T mag = u & mag_mask;
  return static_cast<std::uint8_t>((mag >= nan_min) | ((mag == inf_mag) << 1));
}

template <class T>
HSPI_INLINE void ulp_body(const T* __restrict a, const T* __restrict b, std::int64_t lo,
                          std::int64_t hi, Ordinal<T> o, std::int64_t* __restrict dist,
                          std::uint8_t* __restrict special) {
  const T mm = o.mag_mask, im = o.inf_mag, nm = o.nan_min;
  for (std::int64_t i = lo; i < hi; ++i) {
    const std::uint8_t fl =
        static_cast<std::uint8_t>(flags_of(a[i], mm, im, nm) | (flags_of(b[i], mm, im, nm) << 2));
    const std::int64_t d = ord_diff(a[i], b[i], mm);
    dist[i] = fl ? 0 : d;
    special[i] = fl;
  }
}
#define HSPI_ULP_ARGS                                                                           \
  const T *a, const T *b, std::int64_t lo, std::int64_t hi, Ordinal<T> o, std::int64_t *dist,   \
      std::uint8_t *special
template <class T> void ulp_base(HSPI_ULP_ARGS) { ulp_body<T>(a, b, lo, hi, o, dist, special); }
template <class T> HSPI_AVX2 void ulp_avx2(HSPI_ULP_ARGS) {
  ulp_body<T>(a, b, lo, hi, o, dist, special);
}

py::tuple ulp_distance(const py::array& a, const py::array& b, int width, int exp_bits,
                       int frac_bits, bool has_inf) {
  Format f = make_format(width, exp_bits, frac_bits, has_inf);
  const void* da = bits_data(a, f, "a");
  const void* db = bits_data(b, f, "b");
  check_same_size(a, b);
  auto shape = shape_of(a);
  const std::int64_t n = a.size();
  py::array_t<std::int64_t> dist(shape);
  py::array_t<std::uint8_t> special(shape);
  auto* d = dist.mutable_data();
  auto* s = special.mutable_data();
  dispatch_width(f.width, [&](auto tag) {
    using T = decltype(tag);
    Ordinal<T> o(f);
    auto kernel = cpu_has_avx2() ? &ulp_avx2<T> : &ulp_base<T>;
    const T* as = static_cast<const T*>(da);
    const T* bs = static_cast<const T*>(db);
    py::gil_scoped_release nogil;
    parallel_ranges(n, thread_count(n), 4096, [&](int, std::int64_t lo, std::int64_t hi) {
      kernel(as, bs, lo, hi, o, d, s);
    });
    return 0;
  });
  return py::make_tuple(dist, special);
}

// ---------------------------------------------------------------------------------------------
// ULP histogram, fused (the distances are never stored).
// mode 0 ("int"): 2*clip+1 bins for d in [-clip, clip]; |d| > clip lands in the end bins.
// mode 1 ("log2"): 2*W+1 bins; bin W holds d == 0, bin W+k holds 2^(k-1) <= d < 2^k and
// bin W-k holds -2^k < d <= -2^(k-1) (k = bit length of |d|, 1..W).
// Pairs with a NaN/Inf on either side are counted apart (n_special), not in any bin.
// Per chunk: bin indices are computed into a small buffer (vectorisable), then counted into
// four interleaved sub-histograms (breaks the store-to-load chain on a repeated bin); slot
// nbins of each sub-histogram collects the special pairs.
// ---------------------------------------------------------------------------------------------
constexpr std::int64_t kHistChunk = 1024;

template <class T>
HSPI_INLINE void hist_body(const T* __restrict a, const T* __restrict b, std::int64_t lo,
                           std::int64_t hi, Ordinal<T> o, int mode, std::int64_t clip,
                           std::int64_t nbins, std::int64_t* __restrict h /*4*(nbins+1)*/) {
  constexpr std::int64_t W = sizeof(T) * 8;
  const T mm = o.mag_mask, im = o.inf_mag, nm = o.nan_min;
  alignas(64) std::uint32_t bins[kHistChunk];
  const std::int64_t stride = nbins + 1;
  for (std::int64_t c0 = lo; c0 < hi; c0 += kHistChunk) {
    const std::int64_t m = std::min(kHistChunk, hi - c0);
    const T* ac = a + c0;
    const T* bc = b + c0;
    if (mode == 0) {
      for (std::int64_t i = 0; i < m; ++i) {
        const std::int64_t d = ord_diff(ac[i], bc[i], mm);
        const std::int64_t bin = std::min(std::max(d, -clip), clip) + clip;
        const bool sp = (flags_of(ac[i], mm, im, nm) | flags_of(bc[i], mm, im, nm)) != 0;
        bins[i] = static_cast<std::uint32_t>(sp ? nbins : bin);
      }
    } else {
      for (std::int64_t i = 0; i < m; ++i) {
        const std::int64_t d = ord_diff(ac[i], bc[i], mm);
        const std::int64_t s = d >> 63;  // 0 or -1
        const std::uint64_t mag = static_cast<std::uint64_t>((d ^ s) - s);
        // Branch-free bit length (|d| == 0 gives 0): random signs and zeros would defeat a
        // branch predictor.
        const std::int64_t k = 64 - __builtin_clzll(mag | 1) - static_cast<std::int64_t>(mag == 0);
        const bool sp = (flags_of(ac[i], mm, im, nm) | flags_of(bc[i], mm, im, nm)) != 0;
        bins[i] = static_cast<std::uint32_t>(sp ? nbins : W + ((k ^ s) - s));
      }
    }
    std::int64_t i = 0;
    for (; i + 4 <= m; i += 4) {
      ++h[bins[i]];
      ++h[stride + bins[i + 1]];
      ++h[2 * stride + bins[i + 2]];
      ++h[3 * stride + bins[i + 3]];
    }
    for (; i < m; ++i) ++h[bins[i]];
  }
}
#define HSPI_HIST_ARGS                                                                          \
  const T *a, const T *b, std::int64_t lo, std::int64_t hi, Ordinal<T> o, int mode,             \
      std::int64_t clip, std::int64_t nbins, std::int64_t *h
template <class T> void hist_base(HSPI_HIST_ARGS) {
  hist_body<T>(a, b, lo, hi, o, mode, clip, nbins, h);
}
template <class T> HSPI_AVX2 void hist_avx2(HSPI_HIST_ARGS) {
  hist_body<T>(a, b, lo, hi, o, mode, clip, nbins, h);
}
template <class T> HSPI_AVX512 void hist_avx512(HSPI_HIST_ARGS) {
  hist_body<T>(a, b, lo, hi, o, mode, clip, nbins, h);
}

py::tuple ulp_histogram(const py::array& a, const py::array& b, int width, int exp_bits,
                        int frac_bits, bool has_inf, const std::string& mode, std::int64_t clip) {
  Format f = make_format(width, exp_bits, frac_bits, has_inf);
  const void* da = bits_data(a, f, "a");
  const void* db = bits_data(b, f, "b");
  check_same_size(a, b);
  int m;
  std::int64_t nbins;
  if (mode == "int") {
    if (clip < 0 || clip > (std::int64_t{1} << 24))
      throw py::value_error("clip must be in [0, 2^24], got " + std::to_string(clip));
    m = 0;
    nbins = 2 * clip + 1;
  } else if (mode == "log2") {
    m = 1;
    nbins = 2 * static_cast<std::int64_t>(f.width) + 1;
  } else {
    throw py::value_error("mode must be 'int' or 'log2', got '" + mode + "'");
  }
  py::array_t<std::int64_t> counts(nbins);
  auto* c = counts.mutable_data();
  std::int64_t n_special = 0;
  const std::int64_t n = a.size();
  dispatch_width(f.width, [&](auto tag) {
    using T = decltype(tag);
    Ordinal<T> o(f);
    auto kernel = cpu_has_avx512() ? &hist_avx512<T> : cpu_has_avx2() ? &hist_avx2<T> : &hist_base<T>;
    const T* as = static_cast<const T*>(da);
    const T* bs = static_cast<const T*>(db);
    py::gil_scoped_release nogil;
    const int nt = thread_count(n);
    const std::int64_t stride = nbins + 1;
    std::vector<std::int64_t> all(static_cast<std::size_t>(nt) * 4 * stride, 0);
    parallel_ranges(n, nt, kHistChunk, [&](int t, std::int64_t lo, std::int64_t hi) {
      kernel(as, bs, lo, hi, o, m, clip, nbins, all.data() + static_cast<std::size_t>(t) * 4 * stride);
    });
    for (std::int64_t j = 0; j <= nbins; ++j) {
      std::int64_t sum = 0;
      for (int q = 0; q < 4 * nt; ++q) sum += all[static_cast<std::size_t>(q) * stride + j];
      if (j < nbins) c[j] = sum; else n_special = sum;
    }
    return 0;
  });
  return py::make_tuple(counts, n_special);
}

// ---------------------------------------------------------------------------------------------
// Per-bit set counts over the finite values (NaN and Inf excluded; zeros and subnormals kept).
// Carry-save counting: nibble accumulators nib[k] add (u >> k) & 0x11..1, so nibble j of
// nib[k] counts bit 4j+k; they are drained into byte accumulators every 15 rounds and those
// into 64-bit totals every 255 rounds. Lanes are independent, so the inner loops vectorise.
// ---------------------------------------------------------------------------------------------
template <class T>
HSPI_INLINE void bitcount_body(const T* __restrict x, std::int64_t n, T mag_mask, T nonfinite_min,
                               std::uint64_t* __restrict totals, std::uint64_t* n_finite) {
  constexpr int W = sizeof(T) * 8;
  constexpr int L = 64 / sizeof(T);             // lanes: one 64-byte row per round
  constexpr T M1 = static_cast<T>(~T(0)) / 15;  // 0x11..1
  constexpr T M4 = static_cast<T>(~T(0)) / 17;  // 0x0F0F..0F
  constexpr std::int64_t kBlock = 255 * L;
  std::uint64_t fin = 0;
  std::int64_t i = 0;
  alignas(64) T byte_lo[4][L], byte_hi[4][L], nib[4][L], cnt[L];
  for (; i + kBlock <= n; i += kBlock) {
    std::memset(byte_lo, 0, sizeof byte_lo);
    std::memset(byte_hi, 0, sizeof byte_hi);
    std::memset(cnt, 0, sizeof cnt);
    for (int r15 = 0; r15 < 17; ++r15) {
      std::memset(nib, 0, sizeof nib);
      for (int r = 0; r < 15; ++r) {
        const T* row = x + i + (r15 * 15 + r) * L;
        for (int l = 0; l < L; ++l) {
          const T u = row[l];
          const T keep = static_cast<T>(-static_cast<T>((u & mag_mask) < nonfinite_min));
          const T v = u & keep;
          cnt[l] = static_cast<T>(cnt[l] + (keep & 1));
          nib[0][l] = static_cast<T>(nib[0][l] + (v & M1));
          nib[1][l] = static_cast<T>(nib[1][l] + ((v >> 1) & M1));
          nib[2][l] = static_cast<T>(nib[2][l] + ((v >> 2) & M1));
          nib[3][l] = static_cast<T>(nib[3][l] + ((v >> 3) & M1));
        }
      }
      for (int k = 0; k < 4; ++k)
        for (int l = 0; l < L; ++l) {
          byte_lo[k][l] = static_cast<T>(byte_lo[k][l] + (nib[k][l] & M4));
          byte_hi[k][l] = static_cast<T>(byte_hi[k][l] + ((nib[k][l] >> 4) & M4));
        }
    }
    // byte j of byte_lo[k] counts bit 8j+k, of byte_hi[k] bit 8j+4+k. cnt[l] <= 255 fits T.
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < L; ++l)
        for (int j = 0; j < W / 8; ++j) {
          totals[8 * j + k] += (byte_lo[k][l] >> (8 * j)) & 0xFF;
          totals[8 * j + 4 + k] += (byte_hi[k][l] >> (8 * j)) & 0xFF;
        }
    for (int l = 0; l < L; ++l) fin += cnt[l];
  }
  for (; i < n; ++i) {
    const T u = x[i];
    if ((u & mag_mask) >= nonfinite_min) continue;
    ++fin;
    for (int bit = 0; bit < W; ++bit) totals[bit] += (u >> bit) & 1;
  }
  *n_finite += fin;
}
#define HSPI_BITCOUNT_ARGS                                                                      \
  const T *x, std::int64_t n, T mag_mask, T nonfinite_min, std::uint64_t *totals,               \
      std::uint64_t *n_finite
template <class T> void bitcount_base(HSPI_BITCOUNT_ARGS) {
  bitcount_body<T>(x, n, mag_mask, nonfinite_min, totals, n_finite);
}
template <class T> HSPI_AVX2 void bitcount_avx2(HSPI_BITCOUNT_ARGS) {
  bitcount_body<T>(x, n, mag_mask, nonfinite_min, totals, n_finite);
}

py::tuple bit_counts(const py::array& x, int width, int exp_bits, int frac_bits, bool has_inf) {
  Format f = make_format(width, exp_bits, frac_bits, has_inf);
  const void* data = bits_data(x, f, "x");
  const std::int64_t n = x.size();
  py::array_t<std::uint64_t> totals(f.width);
  auto* tot = totals.mutable_data();
  std::uint64_t n_finite = 0;
  dispatch_width(f.width, [&](auto tag) {
    using T = decltype(tag);
    constexpr int W = sizeof(T) * 8;
    const T* xs = static_cast<const T*>(data);
    const T mag_mask = static_cast<T>(f.mag_mask());
    const T nfmin = static_cast<T>(f.nonfinite_min());
    auto kernel = cpu_has_avx2() ? &bitcount_avx2<T> : &bitcount_base<T>;
    py::gil_scoped_release nogil;
    const int nt = thread_count(n);
    std::vector<std::uint64_t> part(static_cast<std::size_t>(nt) * W, 0), fin(nt, 0);
    parallel_ranges(n, nt, 255 * 64 / sizeof(T), [&](int t, std::int64_t lo, std::int64_t hi) {
      kernel(xs + lo, hi - lo, mag_mask, nfmin, part.data() + t * W, &fin[t]);
    });
    for (int bit = 0; bit < W; ++bit) {
      std::uint64_t c = 0;
      for (int t = 0; t < nt; ++t) c += part[t * W + bit];
      tot[bit] = c;
    }
    for (int t = 0; t < nt; ++t) n_finite += fin[t];
    return 0;
  });
  return py::make_tuple(totals, n_finite);
}

// ---------------------------------------------------------------------------------------------
// Rounding direction of a low-precision value against a reference (fp64 or fp32): the sign of
// (low - ref) as real numbers: +1 low above ref (rounded up, toward +inf), 0 equal, -1 below.
// The low value is decoded exactly into a double (every supported format embeds in fp64):
// formats of width <= 16 through a 2^width table built from the bit fields, fp32 by bit cast.
// NaN on either side: direction 0 and flagged.
// ---------------------------------------------------------------------------------------------
double decode_exact(std::uint64_t u, const Format& f) {
  const std::uint64_t mag = u & f.mag_mask();
  const bool neg = (u >> (f.width - 1)) & 1;
  if (mag >= f.nan_min()) return std::numeric_limits<double>::quiet_NaN();
  if (f.has_inf && mag == f.inf_mag())
    return neg ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
  const int bias = (1 << (f.exp_bits - 1)) - 1;
  const std::int64_t e = static_cast<std::int64_t>(mag >> f.frac_bits);
  const std::uint64_t frac = mag & ((std::uint64_t{1} << f.frac_bits) - 1);
  // value = significand * 2^(exp - frac_bits), significand an integer < 2^(frac_bits+1): exact.
  const std::uint64_t sig = e == 0 ? frac : (frac | (std::uint64_t{1} << f.frac_bits));
  const int exp = static_cast<int>(e == 0 ? 1 - bias : e - bias) - f.frac_bits;
  double v = std::ldexp(static_cast<double>(sig), exp);
  return neg ? -v : v;
}

template <class T, class R>
void rounding_kernel(const T* low, const R* ref, std::int64_t n, const Format& f, std::int8_t* dir,
                     bool* nanmask, std::int64_t* counts /*down, exact, up, nan*/) {
  std::vector<double> table;
  if constexpr (sizeof(T) <= 2) {
    table.resize(std::size_t{1} << (8 * sizeof(T)));
    for (std::size_t u = 0; u < table.size(); ++u) table[u] = decode_exact(u, f);
  }
  const int nt = thread_count(n);
  std::int64_t down = 0, exact = 0, up = 0, nan = 0;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1) reduction(+ : down, exact, up, nan)
  for (std::int64_t i = 0; i < n; ++i) {
    double lv;
    if constexpr (sizeof(T) <= 2) {
      lv = table[low[i]];
    } else if constexpr (sizeof(T) == 4) {
      float fv;
      std::memcpy(&fv, &low[i], 4);
      lv = fv;
    } else {
      std::memcpy(&lv, &low[i], 8);
    }
    const double rv = static_cast<double>(ref[i]);
    const int isnan = (lv != lv) | (rv != rv);
    const int d = (lv > rv) - (lv < rv);
    dir[i] = static_cast<std::int8_t>(d);
    nanmask[i] = isnan;
    nan += isnan;
    up += d > 0;
    down += d < 0;
    exact += (d == 0) & !isnan;
  }
  counts[0] = down;
  counts[1] = exact;
  counts[2] = up;
  counts[3] = nan;
}

py::tuple rounding_direction(const py::array& low, const py::array& ref, int width, int exp_bits,
                             int frac_bits, bool has_inf, int ref_width) {
  Format f = make_format(width, exp_bits, frac_bits, has_inf);
  // Widths 32 and 64 are decoded by bit cast: only binary32 / binary64 themselves are valid.
  if ((f.width == 32 && (f.exp_bits != 8 || !f.has_inf)) || (f.width == 64 && (f.exp_bits != 11 || !f.has_inf)))
    throw py::value_error("rounding_direction: a 32/64-bit low format must be IEEE binary32/binary64");
  const void* dl = bits_data(low, f, "low");
  if (ref_width != 32 && ref_width != 64)
    throw py::value_error("reference must be fp32 or fp64");
  Format rf = ref_width == 64 ? make_format(64, 11, 52, true) : make_format(32, 8, 23, true);
  if (ref.dtype().kind() != 'f')
    throw py::value_error("high_ref: the reference must be a float32/float64 array, got dtype " +
                          std::string(py::str(ref.dtype())));
  const void* dr = bits_data(ref, rf, "high_ref");
  check_same_size(low, ref);
  auto shape = shape_of(low);
  const std::int64_t n = low.size();
  py::array_t<std::int8_t> dir(shape);
  py::array_t<bool> nanmask(shape);
  py::array_t<std::int64_t> counts(4);
  auto* d = dir.mutable_data();
  auto* nm = nanmask.mutable_data();
  auto* c = counts.mutable_data();
  dispatch_width(f.width, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release nogil;
    if (ref_width == 64)
      rounding_kernel<T, double>(static_cast<const T*>(dl), static_cast<const double*>(dr), n, f,
                                 d, nm, c);
    else
      rounding_kernel<T, float>(static_cast<const T*>(dl), static_cast<const float*>(dr), n, f, d,
                                nm, c);
    return 0;
  });
  return py::make_tuple(dir, nanmask, counts);
}

}  // namespace

void register_features(py::module_& m) {
  // Private entry points: the typed API and its documentation live in hspi_kernels/fingerprint/features.py.
  m.def("features_fields", &fields, py::arg("x"), py::arg("width"), py::arg("exp_bits"),
        py::arg("frac_bits"), py::arg("has_inf"), py::arg("out") = py::none(),
        "(sign u8, biased exponent u8|u16, fraction uW) of raw bit patterns");
  m.def("features_ulp_distance", &ulp_distance, py::arg("a"), py::arg("b"), py::arg("width"),
        py::arg("exp_bits"), py::arg("frac_bits"), py::arg("has_inf"),
        "(distance i64 = ord(a) - ord(b), special u8 flags) of raw bit patterns");
  m.def("features_ulp_histogram", &ulp_histogram, py::arg("a"), py::arg("b"), py::arg("width"),
        py::arg("exp_bits"), py::arg("frac_bits"), py::arg("has_inf"), py::arg("mode"),
        py::arg("clip"), "(counts i64, n_special) of ULP distances, fused");
  m.def("features_bit_counts", &bit_counts, py::arg("x"), py::arg("width"), py::arg("exp_bits"),
        py::arg("frac_bits"), py::arg("has_inf"),
        "(per-bit set counts u64[width], LSB first, n_finite) over finite values");
  m.def("features_rounding_direction", &rounding_direction, py::arg("low"), py::arg("ref"),
        py::arg("width"), py::arg("exp_bits"), py::arg("frac_bits"), py::arg("has_inf"),
        py::arg("ref_width"), "(direction i8, nan mask, counts[down, exact, up, nan])");
}

}  // namespace hspi
