// SPDX-License-Identifier: Apache-2.0
// Tests of the IVF scan kernels (src/internal/ivf_kernels.hpp): every kernel
// of every instruction set this CPU supports against double-precision
// references written here, the IEEE half conversions, the SQ8 query
// preparation and the single-threaded GEMM.
//
// Tolerance of a kernel result: relative 1e-5 of the sum of the magnitudes
// of the terms it adds up (sum_j |q_j x_j| for inner products, sum_j
// (q_j - x_j)^2 for L2); for SQ8, of a bound on the terms of both the
// decoded and the prepared form (see sq8 test).

#include <omp.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <limits>
#include <random>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define FUNNEL_TEST_X86 1
#else
#define FUNNEL_TEST_X86 0
#endif

#include <catch2/catch.hpp>

#include "internal/ivf_kernels.hpp"

namespace ivf = funnel::detail::ivf;
using funnel::IvfKernel;

namespace {

constexpr double kRelTolerance = 1e-5;
constexpr float kSentinel = 12345.0F;

constexpr std::array<std::size_t, 6> kDims{1, 7, 16, 17, 128, 784};
constexpr std::array<std::size_t, 4> kCounts{0, 1, 5, 33};

// The concrete instruction sets this CPU runs (portable always).
std::vector<IvfKernel> runnable_isas() {
  std::vector<IvfKernel> isas;
  for (const IvfKernel isa : {IvfKernel::portable, IvfKernel::avx2, IvfKernel::avx512}) {
    if (ivf::supported(isa)) isas.push_back(isa);
  }
  return isas;
}

// Named here rather than with funnel::to_string so that these tests do not
// depend on the ranker's translation unit.
const char* isa_name(IvfKernel isa) {
  switch (isa) {
    case IvfKernel::automatic: return "automatic";
    case IvfKernel::portable: return "portable";
    case IvfKernel::avx2: return "avx2";
    case IvfKernel::avx512: return "avx512";
  }
  return "?";
}

// Decodes an IEEE binary16 code from its definition (independent of the
// code under test).
double decode_half(std::uint16_t h) {
  const int sign = (h & 0x8000U) != 0 ? -1 : 1;
  const int exponent = (h >> 10U) & 0x1F;
  const int mantissa = h & 0x3FF;
  if (exponent == 0x1F) {
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::quiet_NaN();
  }
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// Random finite half codes of both signs with exponents 0..20 (subnormals
// up to about 64), so that the scans see mixed magnitudes.
std::vector<std::uint16_t> random_halves(std::size_t count, std::mt19937& rng) {
  std::uniform_int_distribution<int> exponent(0, 20);
  std::uniform_int_distribution<int> mantissa(0, 1023);
  std::uniform_int_distribution<int> sign(0, 1);
  std::vector<std::uint16_t> out(count);
  for (auto& h : out) {
    h = static_cast<std::uint16_t>((sign(rng) << 15) | (exponent(rng) << 10) | mantissa(rng));
  }
  return out;
}

std::vector<float> random_floats(std::size_t count, std::mt19937& rng, float lo = -1.0F,
                                 float hi = 1.0F) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(count);
  for (auto& v : out) v = dist(rng);
  return out;
}

std::vector<std::uint8_t> random_bytes(std::size_t count, std::mt19937& rng) {
  std::uniform_int_distribution<int> dist(0, 255);
  std::vector<std::uint8_t> out(count);
  for (auto& v : out) v = static_cast<std::uint8_t>(dist(rng));
  return out;
}

// A reference value and the magnitude its tolerance is relative to.
struct Expected {
  double value = 0.0;
  double magnitude = 0.0;
};

void check_outputs(const std::vector<float>& out, const std::vector<Expected>& expected) {
  REQUIRE(out.size() == expected.size() + 1);
  for (std::size_t i = 0; i < expected.size(); ++i) {
    INFO("row " << i << ": got " << out[i] << ", expected " << expected[i].value);
    CHECK(std::abs(static_cast<double>(out[i]) - expected[i].value) <=
          kRelTolerance * expected[i].magnitude);
  }
  INFO("the kernel wrote past its n outputs");
  CHECK(out.back() == kSentinel);
}

// Buffers are offset by one element so that the kernels see unaligned rows.
template <class T>
struct Shifted {
  std::vector<T> storage;
  [[nodiscard]] const T* data() const { return storage.data() + 1; }
  explicit Shifted(const std::vector<T>& values) : storage(values.size() + 1) {
    std::copy(values.begin(), values.end(), storage.begin() + 1);
  }
};

#if FUNNEL_TEST_X86
// Read from CPUID here (not every compiler's __builtin_cpu_supports knows
// "f16c").
bool cpu_has_f16c() {
  unsigned eax = 0;
  unsigned ebx = 0;
  unsigned ecx = 0;
  unsigned edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (ecx & bit_F16C) != 0;
}

[[gnu::target("f16c")]] std::uint16_t hw_float_to_half(float value) {
  const __m128i h = _mm_cvtps_ph(_mm_set1_ps(value), _MM_FROUND_TO_NEAREST_INT);
  return static_cast<std::uint16_t>(_mm_extract_epi16(h, 0));
}
[[gnu::target("f16c")]] float hw_half_to_float(std::uint16_t value) {
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(static_cast<short>(value))));
}
#endif

}  // namespace

TEST_CASE("supported() and resolve() pick a concrete, runnable instruction set", "[ivf_kernels]") {
  CHECK(ivf::supported(IvfKernel::portable));
  CHECK(ivf::supported(IvfKernel::automatic));
  const IvfKernel best = ivf::resolve(IvfKernel::automatic);
  CHECK(best != IvfKernel::automatic);
  CHECK(ivf::supported(best));
  for (const IvfKernel isa : {IvfKernel::portable, IvfKernel::avx2, IvfKernel::avx512}) {
    CHECK(ivf::resolve(isa) == isa);
  }
#if FUNNEL_TEST_X86
  const bool has_avx512 = __builtin_cpu_supports("avx512f") != 0 &&
                          __builtin_cpu_supports("avx512bw") != 0 &&
                          __builtin_cpu_supports("avx512vl") != 0;
  const bool has_avx2 =
      __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0 && cpu_has_f16c();
  CHECK(ivf::supported(IvfKernel::avx512) == has_avx512);
  CHECK(ivf::supported(IvfKernel::avx2) == has_avx2);
  const IvfKernel expected = has_avx512 ? IvfKernel::avx512
                             : has_avx2 ? IvfKernel::avx2
                                        : IvfKernel::portable;
  CHECK(best == expected);
#endif
  for (const IvfKernel isa : runnable_isas()) {
    const ivf::Kernels& k = ivf::kernels_for(isa);
    CHECK(k.isa == isa);
    CHECK(k.dot_f32 != nullptr);
    CHECK(k.l2_f32 != nullptr);
    CHECK(k.dot_f16 != nullptr);
    CHECK(k.l2_f16 != nullptr);
    CHECK(k.dot_sq8 != nullptr);
    CHECK(k.l2_sq8 != nullptr);
  }
}

TEST_CASE("fp32 kernels match a double-precision reference", "[ivf_kernels]") {
  std::mt19937 rng(11);
  for (const IvfKernel isa : runnable_isas()) {
    const ivf::Kernels& k = ivf::kernels_for(isa);
    for (const std::size_t dim : kDims) {
      for (const std::size_t n : kCounts) {
        INFO("isa " << isa_name(isa) << ", dim " << dim << ", n " << n);
        const Shifted<float> query(random_floats(dim, rng));
        const Shifted<float> rows(random_floats(n * dim, rng));
        std::vector<Expected> dot(n);
        std::vector<Expected> l2(n);
        for (std::size_t i = 0; i < n; ++i) {
          for (std::size_t j = 0; j < dim; ++j) {
            const double q = query.data()[j];
            const double x = rows.data()[i * dim + j];
            dot[i].value += q * x;
            dot[i].magnitude += std::abs(q * x);
            l2[i].value += (q - x) * (q - x);
          }
          l2[i].magnitude = l2[i].value;
        }
        std::vector<float> out(n + 1, kSentinel);
        k.dot_f32(query.data(), rows.data(), n, dim, out.data());
        check_outputs(out, dot);
        std::fill(out.begin(), out.end(), kSentinel);
        k.l2_f32(query.data(), rows.data(), n, dim, out.data());
        check_outputs(out, l2);
      }
    }
  }
}

TEST_CASE("fp16 kernels match a double-precision reference", "[ivf_kernels]") {
  std::mt19937 rng(12);
  for (const IvfKernel isa : runnable_isas()) {
    const ivf::Kernels& k = ivf::kernels_for(isa);
    for (const std::size_t dim : kDims) {
      for (const std::size_t n : kCounts) {
        INFO("isa " << isa_name(isa) << ", dim " << dim << ", n " << n);
        const Shifted<float> query(random_floats(dim, rng, -8.0F, 8.0F));
        const Shifted<std::uint16_t> codes(random_halves(n * dim, rng));
        std::vector<Expected> dot(n);
        std::vector<Expected> l2(n);
        for (std::size_t i = 0; i < n; ++i) {
          for (std::size_t j = 0; j < dim; ++j) {
            const double q = query.data()[j];
            const double x = decode_half(codes.data()[i * dim + j]);
            dot[i].value += q * x;
            dot[i].magnitude += std::abs(q * x);
            l2[i].value += (q - x) * (q - x);
          }
          l2[i].magnitude = l2[i].value;
        }
        std::vector<float> out(n + 1, kSentinel);
        k.dot_f16(query.data(), codes.data(), n, dim, out.data());
        check_outputs(out, dot);
        std::fill(out.begin(), out.end(), kSentinel);
        k.l2_f16(query.data(), codes.data(), n, dim, out.data());
        check_outputs(out, l2);
      }
    }
  }
}

TEST_CASE("prepare_sq8 follows the documented formulas", "[ivf_kernels]") {
  const std::vector<float> query{0.5F, -2.0F, 3.0F};
  const std::vector<float> vmin{-1.0F, 0.0F, 2.0F};
  const std::vector<float> vdiff{2.0F, 255.0F, 0.0F};
  ivf::Sq8Query ip;
  ivf::prepare_sq8(query.data(), vmin.data(), vdiff.data(), 3, true, ip);
  REQUIRE(ip.w.size() == 3);
  CHECK(ip.w[0] == Approx(0.5 * 2.0 / 255.0).epsilon(1e-7));
  CHECK(ip.w[1] == Approx(-2.0).epsilon(1e-7));
  CHECK(ip.w[2] == 0.0F);
  // base = 0.5 * (-1 + 1/255) + (-2) * (0 + 0.5) + 3 * 2
  CHECK(ip.base == Approx(0.5 * (-1.0 + 1.0 / 255.0) - 1.0 + 6.0).epsilon(1e-7));

  ivf::Sq8Query l2;
  ivf::prepare_sq8(query.data(), vmin.data(), vdiff.data(), 3, false, l2);
  REQUIRE(l2.w.size() == 3);
  REQUIRE(l2.r.size() == 3);
  CHECK(l2.w[0] == Approx(2.0 / 255.0).epsilon(1e-7));
  CHECK(l2.w[1] == 1.0F);
  CHECK(l2.r[0] == Approx(0.5 + 1.0 - 1.0 / 255.0).epsilon(1e-7));
  CHECK(l2.r[1] == -2.5F);
  CHECK(l2.r[2] == 1.0F);
}

TEST_CASE("sq8 kernels match decoding vmin + (c + 0.5) / 255 * vdiff in double", "[ivf_kernels]") {
  // Tolerance magnitudes bound the terms of both the decoded sum and the
  // prepared form the kernels add up:
  //   IP: sum_j |q_j| * (|vmin_j| + |vdiff_j|)
  //   L2: sum_j (|q_j| + |vmin_j| + |vdiff_j|)^2
  std::mt19937 rng(13);
  for (const IvfKernel isa : runnable_isas()) {
    const ivf::Kernels& k = ivf::kernels_for(isa);
    for (const std::size_t dim : kDims) {
      for (const std::size_t n : kCounts) {
        INFO("isa " << isa_name(isa) << ", dim " << dim << ", n " << n);
        const std::vector<float> query = random_floats(dim, rng, -2.0F, 2.0F);
        const std::vector<float> vmin = random_floats(dim, rng, -1.5F, 0.0F);
        const std::vector<float> vdiff = random_floats(dim, rng, 0.25F, 3.0F);
        const Shifted<std::uint8_t> codes(random_bytes(n * dim, rng));
        std::vector<Expected> dot(n);
        std::vector<Expected> l2(n);
        for (std::size_t i = 0; i < n; ++i) {
          for (std::size_t j = 0; j < dim; ++j) {
            const double q = query[j];
            const double lo = vmin[j];
            const double range = vdiff[j];
            const double x = lo + (codes.data()[i * dim + j] + 0.5) / 255.0 * range;
            dot[i].value += q * x;
            dot[i].magnitude += std::abs(q) * (std::abs(lo) + std::abs(range));
            l2[i].value += (q - x) * (q - x);
            const double bound = std::abs(q) + std::abs(lo) + std::abs(range);
            l2[i].magnitude += bound * bound;
          }
        }
        ivf::Sq8Query prepared;
        std::vector<float> out(n + 1, kSentinel);
        ivf::prepare_sq8(query.data(), vmin.data(), vdiff.data(), dim, true, prepared);
        k.dot_sq8(prepared.w.data(), prepared.base, codes.data(), n, dim, out.data());
        check_outputs(out, dot);
        std::fill(out.begin(), out.end(), kSentinel);
        ivf::prepare_sq8(query.data(), vmin.data(), vdiff.data(), dim, false, prepared);
        k.l2_sq8(prepared.r.data(), prepared.w.data(), codes.data(), n, dim, out.data());
        check_outputs(out, l2);
      }
    }
  }
}

TEST_CASE("float_to_half and half_to_float on hand-known values", "[ivf_kernels]") {
  CHECK(ivf::float_to_half(1.0F) == 0x3C00);
  CHECK(ivf::float_to_half(-2.0F) == 0xC000);
  CHECK(ivf::float_to_half(0.0F) == 0x0000);
  CHECK(ivf::float_to_half(-0.0F) == 0x8000);
  CHECK(ivf::float_to_half(65504.0F) == 0x7BFF);
  CHECK(ivf::float_to_half(0x1p-24F) == 0x0001);
  CHECK(ivf::float_to_half(0x1p-14F) == 0x0400);
  CHECK(ivf::float_to_half(0.333251953125F) == 0x3555);  // 1/3 rounded to half
  // Ties go to the even neighbour.
  CHECK(ivf::float_to_half(1.0F + 0x1p-11F) == 0x3C00);
  CHECK(ivf::float_to_half(1.0F + 3 * 0x1p-11F) == 0x3C02);
  CHECK(ivf::float_to_half(std::nextafter(1.0F + 0x1p-11F, 2.0F)) == 0x3C01);
  CHECK(ivf::float_to_half(0x1p-25F) == 0x0000);
  CHECK(ivf::float_to_half(std::nextafter(0x1p-25F, 1.0F)) == 0x0001);
  CHECK(ivf::float_to_half(3 * 0x1p-25F) == 0x0002);
  CHECK(ivf::float_to_half(0x1p-14F - 0x1p-25F) == 0x0400);  // largest subnormal + half ulp
  CHECK(ivf::float_to_half(1e-30F) == 0x0000);
  CHECK(ivf::float_to_half(-1e-30F) == 0x8000);
  // Overflow: 65520 is the tie between 65504 and 2^16 (odd 0x7BFF loses).
  CHECK(ivf::float_to_half(65520.0F) == 0x7C00);
  CHECK(ivf::float_to_half(std::nextafter(65520.0F, 0.0F)) == 0x7BFF);
  CHECK(ivf::float_to_half(1e10F) == 0x7C00);
  CHECK(ivf::float_to_half(-1e10F) == 0xFC00);
  CHECK(ivf::float_to_half(std::numeric_limits<float>::infinity()) == 0x7C00);
  CHECK(ivf::float_to_half(-std::numeric_limits<float>::infinity()) == 0xFC00);
  const std::uint16_t nan = ivf::float_to_half(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7C00U) == 0x7C00U);
  CHECK((nan & 0x03FFU) != 0);
  // A NaN whose payload lies below half's mantissa bits stays a NaN.
  const std::uint16_t low_nan = ivf::float_to_half(std::bit_cast<float>(0xFF800001U));
  CHECK((low_nan & 0xFC00U) == 0xFC00U);
  CHECK((low_nan & 0x03FFU) != 0);

  CHECK(ivf::half_to_float(0x3C00) == 1.0F);
  CHECK(ivf::half_to_float(0xC000) == -2.0F);
  CHECK(ivf::half_to_float(0x7BFF) == 65504.0F);
  CHECK(ivf::half_to_float(0x0001) == 0x1p-24F);
  CHECK(ivf::half_to_float(0x03FF) == 1023 * 0x1p-24F);
  CHECK(ivf::half_to_float(0x0400) == 0x1p-14F);
  CHECK(ivf::half_to_float(0x7C00) == std::numeric_limits<float>::infinity());
  CHECK(ivf::half_to_float(0xFC00) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(ivf::half_to_float(0x7E00)));
  CHECK(std::isnan(ivf::half_to_float(0x7C01)));
  CHECK(std::signbit(ivf::half_to_float(0x8000)));
  CHECK(ivf::half_to_float(0x8000) == 0.0F);
}

TEST_CASE("half conversions: all 65536 codes decode exactly and round-trip", "[ivf_kernels]") {
  for (std::uint32_t code = 0; code <= 0xFFFFU; ++code) {
    const auto h = static_cast<std::uint16_t>(code);
    const float f = ivf::half_to_float(h);
    const double expected = decode_half(h);
    INFO("code 0x" << std::hex << code);
    if (std::isnan(expected)) {
      REQUIRE(std::isnan(f));
      REQUIRE(std::signbit(f) == ((code & 0x8000U) != 0));
      // A NaN comes back as a quiet NaN with the same sign and payload.
      REQUIRE(ivf::float_to_half(f) == (code | 0x0200U));
    } else {
      REQUIRE(static_cast<double>(f) == expected);
      REQUIRE(std::signbit(f) == ((code & 0x8000U) != 0));
      REQUIRE(ivf::float_to_half(f) == h);
    }
  }
}

TEST_CASE("float_to_half rounds every midpoint between halves to the even one", "[ivf_kernels]") {
  // For every pair of adjacent finite positive halves (h, h + 1), the exact
  // midpoint (representable in float) goes to the even code, and the floats
  // either side of it go to the nearer code; likewise for negatives.
  for (std::uint32_t code = 0; code < 0x7BFFU; ++code) {
    const auto lo = static_cast<float>(decode_half(static_cast<std::uint16_t>(code)));
    const auto hi = static_cast<float>(decode_half(static_cast<std::uint16_t>(code + 1)));
    const float mid = lo + (hi - lo) / 2;
    REQUIRE(static_cast<double>(mid) == (static_cast<double>(lo) + static_cast<double>(hi)) / 2);
    const std::uint32_t even = (code % 2 == 0) ? code : code + 1;
    INFO("code 0x" << std::hex << code);
    REQUIRE(ivf::float_to_half(mid) == even);
    REQUIRE(ivf::float_to_half(std::nextafter(mid, 0.0F)) == code);
    REQUIRE(ivf::float_to_half(std::nextafter(mid, 1e30F)) == code + 1);
    REQUIRE(ivf::float_to_half(-mid) == (even | 0x8000U));
  }
}

#if FUNNEL_TEST_X86
TEST_CASE("half conversions agree bit for bit with the F16C instructions", "[ivf_kernels]") {
  if (!cpu_has_f16c()) return;
  for (std::uint32_t code = 0; code <= 0xFFFFU; ++code) {
    const auto h = static_cast<std::uint16_t>(code);
    INFO("code 0x" << std::hex << code);
    REQUIRE(std::bit_cast<std::uint32_t>(ivf::half_to_float(h)) ==
            std::bit_cast<std::uint32_t>(hw_half_to_float(h)));
  }
  std::mt19937 rng(14);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    const float f = std::bit_cast<float>(bits(rng));
    INFO("float bits 0x" << std::hex << std::bit_cast<std::uint32_t>(f));
    REQUIRE(ivf::float_to_half(f) == hw_float_to_half(f));
  }
  // Magnitudes in and near half's range, where random bit patterns are rare.
  std::uniform_real_distribution<float> near(-70000.0F, 70000.0F);
  std::uniform_real_distribution<float> small(-1e-4F, 1e-4F);
  for (int i = 0; i < 100000; ++i) {
    const float a = near(rng);
    const float b = small(rng);
    REQUIRE(ivf::float_to_half(a) == hw_float_to_half(a));
    REQUIRE(ivf::float_to_half(b) == hw_float_to_half(b));
  }
}
#endif

namespace {

// Checks C = A * B^T computed by `gemm` (a callable with gemm_nt's
// parameters) against a triple loop in double.
template <class Gemm>
void check_gemm(const Gemm& gemm, std::size_t m, std::size_t n, std::size_t dim, std::size_t ldc,
                std::mt19937& rng) {
  INFO("m " << m << ", n " << n << ", dim " << dim << ", ldc " << ldc);
  const std::vector<float> a = random_floats(m * dim, rng);
  const std::vector<float> b = random_floats(n * dim, rng);
  std::vector<float> c(m * ldc, kSentinel);
  gemm(a.data(), m, b.data(), n, dim, c.data(), ldc);
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t j = 0; j < ldc; ++j) {
      if (j >= n) {
        INFO("padding column " << j << " of row " << i << " was written");
        CHECK(c[i * ldc + j] == kSentinel);
        continue;
      }
      double value = 0.0;
      double magnitude = 0.0;
      for (std::size_t p = 0; p < dim; ++p) {
        const double term = static_cast<double>(a[i * dim + p]) * b[j * dim + p];
        value += term;
        magnitude += std::abs(term);
      }
      INFO("c[" << i << "][" << j << "] = " << c[i * ldc + j] << ", expected " << value);
      CHECK(std::abs(c[i * ldc + j] - value) <= kRelTolerance * magnitude);
    }
  }
}

// Threads of this process (Linux), to see whether a call started any.
std::size_t thread_count() {
  const std::filesystem::path tasks("/proc/self/task");
  if (!std::filesystem::exists(tasks)) return 0;
  return static_cast<std::size_t>(std::distance(std::filesystem::directory_iterator(tasks),
                                                std::filesystem::directory_iterator()));
}

}  // namespace

// Shapes: single query and/or row, partial tiles in both directions, dims
// below, at and above the 16-float chunk, padded output rows (ldc > n).
template <class Gemm>
void check_gemm_shapes(const Gemm& gemm) {
  std::mt19937 rng(15);
  check_gemm(gemm, 1, 1, 1, 1, rng);
  check_gemm(gemm, 1, 1, 128, 1, rng);
  check_gemm(gemm, 1, 37, 128, 37, rng);
  check_gemm(gemm, 7, 1, 17, 3, rng);
  check_gemm(gemm, 5, 33, 17, 40, rng);
  check_gemm(gemm, 6, 10, 7, 10, rng);
  check_gemm(gemm, 3, 100, 784, 101, rng);
  check_gemm(gemm, 64, 130, 128, 130, rng);
}

TEST_CASE("gemm_nt matches a triple loop", "[ivf_kernels]") {
  check_gemm_shapes([](const float* a, std::size_t m, const float* b, std::size_t n,
                       std::size_t dim, float* c,
                       std::size_t ldc) { ivf::gemm_nt(a, m, b, n, dim, c, ldc); });
}

TEST_CASE("gemm_nt_small matches a triple loop on every instruction set", "[ivf_kernels]") {
  for (const IvfKernel isa : runnable_isas()) {
    INFO("isa " << isa_name(isa));
    check_gemm_shapes([isa](const float* a, std::size_t m, const float* b, std::size_t n,
                            std::size_t dim, float* c,
                            std::size_t ldc) { ivf::gemm_nt_small(isa, a, m, b, n, dim, c, ldc); });
  }
}

TEST_CASE("gemm_nt stays on the calling thread and leaves OpenMP settings unchanged",
          "[ivf_kernels]") {
  const int original = omp_get_max_threads();
  omp_set_num_threads(4);
  std::mt19937 rng(16);
  const std::size_t m = 64;
  const std::size_t n = 2048;
  const std::size_t dim = 256;
  const std::vector<float> a = random_floats(m * dim, rng);
  const std::vector<float> b = random_floats(n * dim, rng);
  std::vector<float> c(m * n);
  const std::size_t threads_before = thread_count();
  ivf::gemm_nt(a.data(), m, b.data(), n, dim, c.data(), n);
  CHECK(thread_count() == threads_before);
  CHECK(omp_get_max_threads() == 4);
  omp_set_num_threads(1);
  ivf::gemm_nt(a.data(), m, b.data(), n, dim, c.data(), n);
  CHECK(omp_get_max_threads() == 1);
  omp_set_num_threads(original);
  // Spot check that the big shape was computed.
  double value = 0.0;
  for (std::size_t p = 0; p < dim; ++p) {
    value += static_cast<double>(a[(m - 1) * dim + p]) * b[(n - 1) * dim + p];
  }
  CHECK(std::abs(c.back() - value) <= 1e-4);
}
