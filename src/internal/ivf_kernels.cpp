// SPDX-License-Identifier: Apache-2.0
#include "internal/ivf_kernels.hpp"

#include <omp.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define FUNNEL_IVF_X86 1
#else
#define FUNNEL_IVF_X86 0
#endif

#include <oneapi/dnnl/dnnl.h>

#include "internal/error_util.hpp"

namespace funnel::detail::ivf {

namespace {

// What the kernels add up per component, given the query vectors a (and b)
// and the decoded component x.
enum class Mode {
  dot,        // a * x
  l2,         // (a - x)^2
  l2_scaled,  // (a - b * x)^2   (SQ8 L2: a = r, b = s)
};

// ---------------------------------------------------------------------------
// Portable kernels. Each row is summed in kLanes independent partial sums so
// that the compiler may vectorise the reduction without -ffast-math (the
// partial sums are an explicit reassociation, not one the compiler invents),
// and a chunk of codes is decoded into floats in a loop of its own, free of
// branches, so that the decoding vectorises too.

constexpr std::size_t kLanes = 8;
using Lanes = std::array<float, kLanes>;

// IEEE binary16 -> float without branches (see half_to_float).
inline float decode_half(std::uint16_t value) {
  const std::uint32_t magnitude = value & 0x7FFFU;
  const std::uint32_t sign = (static_cast<std::uint32_t>(value) & 0x8000U) << 16U;
  // All-ones masks rather than conditionals: the vectoriser turns these
  // into vector compares and blends.
  const std::uint32_t special = 0U - static_cast<std::uint32_t>(magnitude >= 0x7C00U);
  const std::uint32_t nan = 0U - static_cast<std::uint32_t>(magnitude > 0x7C00U);
  const std::uint32_t tiny = 0U - static_cast<std::uint32_t>(magnitude < 0x0400U);
  // Normal numbers: the exponent rebiased from 15 to 127; infinity and NaN:
  // exponent 255, payload kept, NaN made quiet.
  std::uint32_t bits = (magnitude << 13U) + 0x38000000U + (special & 0x38000000U);
  bits |= nan & 0x400000U;
  // Zero and subnormals: mantissa * 2^-24, exact in float (and a normal
  // float, so flush-to-zero modes leave it alone).
  const auto small = std::bit_cast<std::uint32_t>(static_cast<float>(magnitude) * 0x1p-24F);
  bits = (small & tiny) | (bits & ~tiny);
  return std::bit_cast<float>(bits | sign);
}

inline float decode(float x) { return x; }
inline float decode(std::uint16_t x) { return decode_half(x); }
inline float decode(std::uint8_t x) { return static_cast<float>(x); }

// acc[l] += term(a[l], b[l], x[l]) for l < count.
template <Mode kMode>
inline void accumulate(const float* a, const float* b, const Lanes& x, std::size_t count,
                       Lanes& acc) {
  for (std::size_t l = 0; l < count; ++l) {
    if constexpr (kMode == Mode::dot) {
      acc[l] += a[l] * x[l];
    } else if constexpr (kMode == Mode::l2) {
      const float d = a[l] - x[l];
      acc[l] += d * d;
    } else {
      const float d = a[l] - b[l] * x[l];
      acc[l] += d * d;
    }
  }
}

template <Mode kMode, class Code>
float row_portable(const float* a, const float* b, const Code* codes, std::size_t dim) {
  Lanes acc{};
  Lanes x{};
  std::size_t j = 0;
  for (; j + kLanes <= dim; j += kLanes) {
    for (std::size_t l = 0; l < kLanes; ++l) x[l] = decode(codes[j + l]);
    accumulate<kMode>(a + j, kMode == Mode::l2_scaled ? b + j : nullptr, x, kLanes, acc);
  }
  const std::size_t rest = dim - j;
  for (std::size_t l = 0; l < rest; ++l) x[l] = decode(codes[j + l]);
  accumulate<kMode>(a + j, kMode == Mode::l2_scaled ? b + j : nullptr, x, rest, acc);
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

template <Mode kMode, class Code>
void scan_portable(const float* a, const float* b, float base, const Code* codes, std::size_t n,
                   std::size_t dim, float* out) {
  for (std::size_t i = 0; i < n; ++i) {
    out[i] = base + row_portable<kMode>(a, b, codes + i * dim, dim);
  }
}

void dot_f32_portable(const float* query, const float* rows, std::size_t n, std::size_t dim,
                      float* out) {
  scan_portable<Mode::dot>(query, nullptr, 0.0F, rows, n, dim, out);
}
void l2_f32_portable(const float* query, const float* rows, std::size_t n, std::size_t dim,
                     float* out) {
  scan_portable<Mode::l2>(query, nullptr, 0.0F, rows, n, dim, out);
}
void dot_f16_portable(const float* query, const std::uint16_t* codes, std::size_t n,
                      std::size_t dim, float* out) {
  scan_portable<Mode::dot>(query, nullptr, 0.0F, codes, n, dim, out);
}
void l2_f16_portable(const float* query, const std::uint16_t* codes, std::size_t n, std::size_t dim,
                     float* out) {
  scan_portable<Mode::l2>(query, nullptr, 0.0F, codes, n, dim, out);
}
void dot_sq8_portable(const float* w, float base, const std::uint8_t* codes, std::size_t n,
                      std::size_t dim, float* out) {
  scan_portable<Mode::dot>(w, nullptr, base, codes, n, dim, out);
}
void l2_sq8_portable(const float* r, const float* s, const std::uint8_t* codes, std::size_t n,
                     std::size_t dim, float* out) {
  scan_portable<Mode::l2_scaled>(r, s, 0.0F, codes, n, dim, out);
}

constexpr Kernels kPortable{
    .isa = IvfKernel::portable,
    .dot_f32 = dot_f32_portable,
    .l2_f32 = l2_f32_portable,
    .dot_f16 = dot_f16_portable,
    .l2_f16 = l2_f16_portable,
    .dot_sq8 = dot_sq8_portable,
    .l2_sq8 = l2_sq8_portable,
};

// ---------------------------------------------------------------------------
// SIMD kernels (x86). All share one shape: a block of kRows rows is scored at
// once, each row in its own accumulator, so that every load of the query is
// used kRows times and kRows independent FMA chains hide the FMA latency. A
// list is covered by blocks of 8 rows, then at most one block of 4, 2 and 1.
// Each row's sum is formed in the same order whatever block it falls in, so
// a row's distance does not depend on its position in the list.

#if FUNNEL_IVF_X86

// ----- AVX-512 (F for arithmetic and fp16 conversion, BW/VL for masked
// 8- and 16-bit loads of the last, partial chunk of a row).

// GCC 12 at -O3 reports the "undefined source" idiom inside many AVX-512
// intrinsics as a use of an uninitialised value; their zero-masking forms
// with a full mask are the same instructions without that idiom.
constexpr __mmask16 kAll16 = 0xFFFF;
constexpr __mmask8 kAll8 = 0xFF;

#define FUNNEL_IVF_AVX512 gnu::target("avx512f,avx512bw,avx512vl,fma,f16c")

[[FUNNEL_IVF_AVX512]] inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
[[FUNNEL_IVF_AVX512]] inline __m512 load16(const std::uint16_t* p) {
  return _mm512_maskz_cvtph_ps(kAll16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
[[FUNNEL_IVF_AVX512]] inline __m512 load16(const std::uint8_t* p) {
  return _mm512_maskz_cvtepi32_ps(
      kAll16,
      _mm512_maskz_cvtepu8_epi32(kAll16, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// Masked-off lanes read as 0 and touch no memory.
[[FUNNEL_IVF_AVX512]] inline __m512 load16(const float* p, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, p);
}
[[FUNNEL_IVF_AVX512]] inline __m512 load16(const std::uint16_t* p, __mmask16 mask) {
  return _mm512_maskz_cvtph_ps(kAll16, _mm256_maskz_loadu_epi16(mask, p));
}
[[FUNNEL_IVF_AVX512]] inline __m512 load16(const std::uint8_t* p, __mmask16 mask) {
  return _mm512_maskz_cvtepi32_ps(
      kAll16, _mm512_maskz_cvtepu8_epi32(kAll16, _mm_maskz_loadu_epi8(mask, p)));
}

template <Mode kMode>
[[FUNNEL_IVF_AVX512]] inline __m512 step512(__m512 a, __m512 b, __m512 x, __m512 acc) {
  if constexpr (kMode == Mode::dot) {
    return _mm512_fmadd_ps(a, x, acc);
  } else if constexpr (kMode == Mode::l2) {
    const __m512 d = _mm512_sub_ps(a, x);
    return _mm512_fmadd_ps(d, d, acc);
  } else {
    const __m512 d = _mm512_fnmadd_ps(b, x, a);
    return _mm512_fmadd_ps(d, d, acc);
  }
}

// Sums of four accumulators, in lanes 0..3 (a transposing reduction: the
// partial sums of the four rows are folded together, not one row at a time).
[[FUNNEL_IVF_AVX512]] inline __m512 fold4(const __m512* acc) {
  // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] for rows a, b.
  const __m512 t01 = _mm512_add_ps(_mm512_maskz_unpacklo_ps(kAll16, acc[0], acc[1]),
                                   _mm512_maskz_unpackhi_ps(kAll16, acc[0], acc[1]));
  const __m512 t23 = _mm512_add_ps(_mm512_maskz_unpacklo_ps(kAll16, acc[2], acc[3]),
                                   _mm512_maskz_unpackhi_ps(kAll16, acc[2], acc[3]));
  // Per 128-bit lane: that lane's sums of rows 0, 1, 2, 3.
  const __m512d p01 = _mm512_castps_pd(t01);
  const __m512d p23 = _mm512_castps_pd(t23);
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_maskz_unpacklo_pd(kAll8, p01, p23)),
                       _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(kAll8, p01, p23)));
}

// The totals of acc[0..3], in that order.
[[FUNNEL_IVF_AVX512]] inline __m128 sum4_512(const __m512* acc) {
  const __m512 u = fold4(acc);
  const __m512 v = _mm512_add_ps(u, _mm512_maskz_shuffle_f32x4(kAll16, u, u, 0x4E));
  const __m512 w = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(kAll16, v, v, 0xB1));
  return _mm512_maskz_extractf32x4_ps(0xF, w, 0);
}

// out[r] = base + (sum of the lanes of acc[r]) for r < kRows.
template <int kRows>
[[FUNNEL_IVF_AVX512]] inline void store_sums512(const __m512* acc, float base, float* out) {
  if constexpr (kRows == 8) {
    const __m512 u0 = fold4(acc);
    const __m512 u1 = fold4(acc + 4);
    // [u0.L0+u0.L2, u0.L1+u0.L3, u1.L0+u1.L2, u1.L1+u1.L3]
    const __m512 v = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll16, u0, u1, 0x44),
                                   _mm512_maskz_shuffle_f32x4(kAll16, u0, u1, 0xEE));
    // Lanes 0 and 2 hold the totals of rows 0..3 and 4..7.
    const __m512 w = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(kAll16, v, v, 0xB1));
    const __m256 sums = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(
        0xF, _mm512_castps_pd(_mm512_maskz_shuffle_f32x4(kAll16, w, w, 0x08)), 0));
    _mm256_storeu_ps(out, _mm256_add_ps(sums, _mm256_set1_ps(base)));
  } else if constexpr (kRows == 4) {
    _mm_storeu_ps(out, _mm_add_ps(sum4_512(acc), _mm_set1_ps(base)));
  } else {
    const __m512 zero = _mm512_setzero_ps();
    const __m512 padded[4] = {acc[0], kRows > 1 ? acc[kRows - 1] : zero, zero, zero};  // NOLINT
    const auto mask = static_cast<__mmask8>((1U << kRows) - 1U);
    _mm_mask_storeu_ps(out, mask, _mm_add_ps(sum4_512(padded), _mm_set1_ps(base)));
  }
}

// Scores rows [0, kRows) of `rows` (row stride dim).
template <Mode kMode, int kRows, class Code>
[[FUNNEL_IVF_AVX512]] inline void block512(const float* a, const float* b, float base,
                                           const Code* rows, std::size_t dim, float* out) {
  __m512 acc[kRows];  // NOLINT: std::array drops the vector type's alignment attribute
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) acc[static_cast<std::size_t>(r)] = _mm512_setzero_ps();
  __m512 vb = _mm512_setzero_ps();
  std::size_t j = 0;
  for (; j + 16 <= dim; j += 16) {
    const __m512 va = _mm512_loadu_ps(a + j);
    if constexpr (kMode == Mode::l2_scaled) vb = _mm512_loadu_ps(b + j);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      acc[ur] = step512<kMode>(va, vb, load16(rows + ur * dim + j), acc[ur]);
    }
  }
  if (j < dim) {
    // Masked-off lanes are 0 in every operand, so they add 0 in every mode.
    const auto mask = static_cast<__mmask16>((1U << (dim - j)) - 1U);
    const __m512 va = _mm512_maskz_loadu_ps(mask, a + j);
    if constexpr (kMode == Mode::l2_scaled) vb = _mm512_maskz_loadu_ps(mask, b + j);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      acc[ur] = step512<kMode>(va, vb, load16(rows + ur * dim + j, mask), acc[ur]);
    }
  }
  store_sums512<kRows>(acc, base, out);
}

template <Mode kMode, class Code>
[[FUNNEL_IVF_AVX512]] void scan512(const float* a, const float* b, float base, const Code* codes,
                                   std::size_t n, std::size_t dim, float* out) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) block512<kMode, 8>(a, b, base, codes + i * dim, dim, out + i);
  if (i + 4 <= n) {
    block512<kMode, 4>(a, b, base, codes + i * dim, dim, out + i);
    i += 4;
  }
  if (i + 2 <= n) {
    block512<kMode, 2>(a, b, base, codes + i * dim, dim, out + i);
    i += 2;
  }
  if (i < n) block512<kMode, 1>(a, b, base, codes + i * dim, dim, out + i);
}

[[FUNNEL_IVF_AVX512]] void dot_f32_avx512(const float* query, const float* rows, std::size_t n,
                                          std::size_t dim, float* out) {
  scan512<Mode::dot>(query, nullptr, 0.0F, rows, n, dim, out);
}
[[FUNNEL_IVF_AVX512]] void l2_f32_avx512(const float* query, const float* rows, std::size_t n,
                                         std::size_t dim, float* out) {
  scan512<Mode::l2>(query, nullptr, 0.0F, rows, n, dim, out);
}
[[FUNNEL_IVF_AVX512]] void dot_f16_avx512(const float* query, const std::uint16_t* codes,
                                          std::size_t n, std::size_t dim, float* out) {
  scan512<Mode::dot>(query, nullptr, 0.0F, codes, n, dim, out);
}
[[FUNNEL_IVF_AVX512]] void l2_f16_avx512(const float* query, const std::uint16_t* codes,
                                         std::size_t n, std::size_t dim, float* out) {
  scan512<Mode::l2>(query, nullptr, 0.0F, codes, n, dim, out);
}
[[FUNNEL_IVF_AVX512]] void dot_sq8_avx512(const float* w, float base, const std::uint8_t* codes,
                                          std::size_t n, std::size_t dim, float* out) {
  scan512<Mode::dot>(w, nullptr, base, codes, n, dim, out);
}
[[FUNNEL_IVF_AVX512]] void l2_sq8_avx512(const float* r, const float* s, const std::uint8_t* codes,
                                         std::size_t n, std::size_t dim, float* out) {
  scan512<Mode::l2_scaled>(r, s, 0.0F, codes, n, dim, out);
}

// ----- AVX-512 register-tiled C = A * B^T for a few queries (gemm_nt_small).
// A tile is kQueries queries x kTileRows rows, one accumulator per pair
// (kQueries * 4 <= 16 of the 32 registers), so each row chunk loaded is
// used by kQueries queries and each query chunk by 4 rows; the pairs' sums
// are folded at the end of the tile. Rows are the outer loop so that a list
// streams from memory once for all the queries.

constexpr std::size_t kTileRows = 4;
constexpr std::size_t kTileQueries = 4;

template <std::size_t kQueries>
[[FUNNEL_IVF_AVX512]] inline void tile512(const float* const* query, const float* const* row,
                                          std::size_t dim, float* c, std::size_t ldc,
                                          __mmask8 store_mask) {
  __m512 acc[kQueries][kTileRows];  // NOLINT: see block512
#pragma GCC unroll 4
  for (std::size_t q = 0; q < kQueries; ++q) {
#pragma GCC unroll 4
    for (std::size_t r = 0; r < kTileRows; ++r) acc[q][r] = _mm512_setzero_ps();
  }
  std::size_t p = 0;
  for (; p + 16 <= dim; p += 16) {
    __m512 x[kTileRows];  // NOLINT: see block512
#pragma GCC unroll 4
    for (std::size_t r = 0; r < kTileRows; ++r) x[r] = _mm512_loadu_ps(row[r] + p);
#pragma GCC unroll 4
    for (std::size_t q = 0; q < kQueries; ++q) {
      const __m512 y = _mm512_loadu_ps(query[q] + p);
#pragma GCC unroll 4
      for (std::size_t r = 0; r < kTileRows; ++r) acc[q][r] = _mm512_fmadd_ps(y, x[r], acc[q][r]);
    }
  }
  if (p < dim) {
    const auto mask = static_cast<__mmask16>((1U << (dim - p)) - 1U);
    __m512 x[kTileRows];  // NOLINT: see block512
#pragma GCC unroll 4
    for (std::size_t r = 0; r < kTileRows; ++r) x[r] = _mm512_maskz_loadu_ps(mask, row[r] + p);
#pragma GCC unroll 4
    for (std::size_t q = 0; q < kQueries; ++q) {
      const __m512 y = _mm512_maskz_loadu_ps(mask, query[q] + p);
#pragma GCC unroll 4
      for (std::size_t r = 0; r < kTileRows; ++r) acc[q][r] = _mm512_fmadd_ps(y, x[r], acc[q][r]);
    }
  }
#pragma GCC unroll 4
  for (std::size_t q = 0; q < kQueries; ++q) {
    _mm_mask_storeu_ps(c + q * ldc, store_mask, sum4_512(acc[q]));
  }
}

[[FUNNEL_IVF_AVX512]] void gemm_nt_avx512(const float* a, std::size_t m, const float* b,
                                          std::size_t n, std::size_t dim, float* c,
                                          std::size_t ldc) {
  for (std::size_t j0 = 0; j0 < n; j0 += kTileRows) {
    const std::size_t rows = std::min(kTileRows, n - j0);
    // A partial tile repeats its last row; only its own results are stored.
    std::array<const float*, kTileRows> row{};
    for (std::size_t r = 0; r < kTileRows; ++r) row[r] = b + (j0 + std::min(r, rows - 1)) * dim;
    const auto store_mask = static_cast<__mmask8>((1U << rows) - 1U);
    for (std::size_t i0 = 0; i0 < m; i0 += kTileQueries) {
      std::array<const float*, kTileQueries> query{};
      for (std::size_t q = 0; q < kTileQueries; ++q) query[q] = a + (i0 + q) * dim;
      float* out = c + i0 * ldc + j0;
      switch (std::min(kTileQueries, m - i0)) {
        case 4: tile512<4>(query.data(), row.data(), dim, out, ldc, store_mask); break;
        case 3: tile512<3>(query.data(), row.data(), dim, out, ldc, store_mask); break;
        case 2: tile512<2>(query.data(), row.data(), dim, out, ldc, store_mask); break;
        default: tile512<1>(query.data(), row.data(), dim, out, ldc, store_mask); break;
      }
    }
  }
}

constexpr Kernels kAvx512{
    .isa = IvfKernel::avx512,
    .dot_f32 = dot_f32_avx512,
    .l2_f32 = l2_f32_avx512,
    .dot_f16 = dot_f16_avx512,
    .l2_f16 = l2_f16_avx512,
    .dot_sq8 = dot_sq8_avx512,
    .l2_sq8 = l2_sq8_avx512,
};

// ----- AVX2 + FMA + F16C: the same blocks at 8 lanes. AVX2 has no masked
// 8- or 16-bit loads, so the last partial chunk of a row is copied into a
// zeroed buffer first.

#define FUNNEL_IVF_AVX2 gnu::target("avx2,fma,f16c")

[[FUNNEL_IVF_AVX2]] inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
[[FUNNEL_IVF_AVX2]] inline __m256 load8(const std::uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
[[FUNNEL_IVF_AVX2]] inline __m256 load8(const std::uint8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
// The first `count` (< 8) components, the rest 0.
template <class Code>
[[FUNNEL_IVF_AVX2]] inline __m256 load8(const Code* p, std::size_t count) {
  std::array<Code, 8> buffer{};
  std::copy(p, p + count, buffer.begin());
  return load8(buffer.data());
}

template <Mode kMode>
[[FUNNEL_IVF_AVX2]] inline __m256 step256(__m256 a, __m256 b, __m256 x, __m256 acc) {
  if constexpr (kMode == Mode::dot) {
    return _mm256_fmadd_ps(a, x, acc);
  } else if constexpr (kMode == Mode::l2) {
    const __m256 d = _mm256_sub_ps(a, x);
    return _mm256_fmadd_ps(d, d, acc);
  } else {
    const __m256 d = _mm256_fnmadd_ps(b, x, a);
    return _mm256_fmadd_ps(d, d, acc);
  }
}

// Per 128-bit half: the sums of that half of acc[0..3], rows in lanes 0..3.
[[FUNNEL_IVF_AVX2]] inline __m256 fold4(const __m256* acc) {
  return _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
}

template <int kRows>
[[FUNNEL_IVF_AVX2]] inline void store_sums256(const __m256* acc, float base, float* out) {
  if constexpr (kRows == 8) {
    const __m256 u0 = fold4(acc);
    const __m256 u1 = fold4(acc + 4);
    const __m256 sums =
        _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(out, _mm256_add_ps(sums, _mm256_set1_ps(base)));
  } else {
    const __m256 zero = _mm256_setzero_ps();
    const __m256 padded[4] = {acc[0], kRows > 1 ? acc[1] : zero,  // NOLINT
                              kRows > 2 ? acc[2] : zero, kRows > 3 ? acc[3] : zero};
    const __m256 u = fold4(padded);
    const __m128 sums = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
    if constexpr (kRows == 4) {
      _mm_storeu_ps(out, _mm_add_ps(sums, _mm_set1_ps(base)));
    } else {
      alignas(16) std::array<float, 4> lanes{};
      _mm_store_ps(lanes.data(), sums);
      for (int r = 0; r < kRows; ++r) out[r] = base + lanes[static_cast<std::size_t>(r)];
    }
  }
}

template <Mode kMode, int kRows, class Code>
[[FUNNEL_IVF_AVX2]] inline void block256(const float* a, const float* b, float base,
                                         const Code* rows, std::size_t dim, float* out) {
  __m256 acc[kRows];  // NOLINT: see block512
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) acc[static_cast<std::size_t>(r)] = _mm256_setzero_ps();
  __m256 vb = _mm256_setzero_ps();
  std::size_t j = 0;
  for (; j + 8 <= dim; j += 8) {
    const __m256 va = _mm256_loadu_ps(a + j);
    if constexpr (kMode == Mode::l2_scaled) vb = _mm256_loadu_ps(b + j);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      acc[ur] = step256<kMode>(va, vb, load8(rows + ur * dim + j), acc[ur]);
    }
  }
  if (j < dim) {
    const std::size_t rest = dim - j;
    const __m256 va = load8(a + j, rest);
    if constexpr (kMode == Mode::l2_scaled) vb = load8(b + j, rest);
    for (int r = 0; r < kRows; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      acc[ur] = step256<kMode>(va, vb, load8(rows + ur * dim + j, rest), acc[ur]);
    }
  }
  store_sums256<kRows>(acc, base, out);
}

template <Mode kMode, class Code>
[[FUNNEL_IVF_AVX2]] void scan256(const float* a, const float* b, float base, const Code* codes,
                                 std::size_t n, std::size_t dim, float* out) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) block256<kMode, 8>(a, b, base, codes + i * dim, dim, out + i);
  if (i + 4 <= n) {
    block256<kMode, 4>(a, b, base, codes + i * dim, dim, out + i);
    i += 4;
  }
  if (i + 2 <= n) {
    block256<kMode, 2>(a, b, base, codes + i * dim, dim, out + i);
    i += 2;
  }
  if (i < n) block256<kMode, 1>(a, b, base, codes + i * dim, dim, out + i);
}

[[FUNNEL_IVF_AVX2]] void dot_f32_avx2(const float* query, const float* rows, std::size_t n,
                                      std::size_t dim, float* out) {
  scan256<Mode::dot>(query, nullptr, 0.0F, rows, n, dim, out);
}
[[FUNNEL_IVF_AVX2]] void l2_f32_avx2(const float* query, const float* rows, std::size_t n,
                                     std::size_t dim, float* out) {
  scan256<Mode::l2>(query, nullptr, 0.0F, rows, n, dim, out);
}
[[FUNNEL_IVF_AVX2]] void dot_f16_avx2(const float* query, const std::uint16_t* codes, std::size_t n,
                                      std::size_t dim, float* out) {
  scan256<Mode::dot>(query, nullptr, 0.0F, codes, n, dim, out);
}
[[FUNNEL_IVF_AVX2]] void l2_f16_avx2(const float* query, const std::uint16_t* codes, std::size_t n,
                                     std::size_t dim, float* out) {
  scan256<Mode::l2>(query, nullptr, 0.0F, codes, n, dim, out);
}
[[FUNNEL_IVF_AVX2]] void dot_sq8_avx2(const float* w, float base, const std::uint8_t* codes,
                                      std::size_t n, std::size_t dim, float* out) {
  scan256<Mode::dot>(w, nullptr, base, codes, n, dim, out);
}
[[FUNNEL_IVF_AVX2]] void l2_sq8_avx2(const float* r, const float* s, const std::uint8_t* codes,
                                     std::size_t n, std::size_t dim, float* out) {
  scan256<Mode::l2_scaled>(r, s, 0.0F, codes, n, dim, out);
}

constexpr Kernels kAvx2{
    .isa = IvfKernel::avx2,
    .dot_f32 = dot_f32_avx2,
    .l2_f32 = l2_f32_avx2,
    .dot_f16 = dot_f16_avx2,
    .l2_f16 = l2_f16_avx2,
    .dot_sq8 = dot_sq8_avx2,
    .l2_sq8 = l2_sq8_avx2,
};

#endif  // FUNNEL_IVF_X86

// ---------------------------------------------------------------------------
// OpenMP guard for oneDNN.

// Debian's oneDNN runs its GEMM on as many OpenMP threads as
// omp_get_max_threads() reports to the calling thread. That value is the
// calling thread's own nthreads-var ICV, so setting it to 1 for the call and
// restoring it afterwards keeps oneDNN on the calling thread without any
// effect that another thread, or this one after the call, could observe.
class SingleOmpThread {
 public:
  SingleOmpThread() : saved_(omp_get_max_threads()) {
    if (saved_ != 1) omp_set_num_threads(1);
  }
  ~SingleOmpThread() {
    if (saved_ != 1) omp_set_num_threads(saved_);
  }
  SingleOmpThread(const SingleOmpThread&) = delete;
  SingleOmpThread& operator=(const SingleOmpThread&) = delete;
  SingleOmpThread(SingleOmpThread&&) = delete;
  SingleOmpThread& operator=(SingleOmpThread&&) = delete;

 private:
  int saved_;
};

#if FUNNEL_IVF_X86
// CPUID rather than __builtin_cpu_supports("f16c"), which not every
// compiler knows. (AVX2 being usable already implies that the OS saves the
// YMM state that F16C needs.)
bool cpu_has_f16c() {
  unsigned eax = 0;
  unsigned ebx = 0;
  unsigned ecx = 0;
  unsigned edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (ecx & bit_F16C) != 0;
}
#endif

}  // namespace

bool supported(IvfKernel isa) {
  switch (isa) {
    case IvfKernel::automatic:
    case IvfKernel::portable: return true;
#if FUNNEL_IVF_X86
    case IvfKernel::avx2:
      return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0 &&
             cpu_has_f16c();
    case IvfKernel::avx512:
      return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("avx512bw") != 0 &&
             __builtin_cpu_supports("avx512vl") != 0;
#else
    case IvfKernel::avx2:
    case IvfKernel::avx512: return false;
#endif
  }
  return false;
}

IvfKernel resolve(IvfKernel isa) {
  if (isa != IvfKernel::automatic) return isa;
  if (supported(IvfKernel::avx512)) return IvfKernel::avx512;
  if (supported(IvfKernel::avx2)) return IvfKernel::avx2;
  return IvfKernel::portable;
}

const Kernels& kernels_for(IvfKernel isa) {
  assert(isa != IvfKernel::automatic && supported(isa));
  switch (isa) {
#if FUNNEL_IVF_X86
    case IvfKernel::avx512: return kAvx512;
    case IvfKernel::avx2: return kAvx2;
#endif
    default: return kPortable;
  }
}

void prepare_sq8(const float* query, const float* vmin, const float* vdiff, std::size_t dim,
                 bool inner_product, Sq8Query& out) {
  // Prepared in double and rounded once, so that the prepared query carries
  // one float rounding per component whatever the magnitudes.
  out.w.resize(dim);
  if (inner_product) {
    out.r.clear();
    double base = 0.0;
    for (std::size_t j = 0; j < dim; ++j) {
      const double q = query[j];
      const double step = static_cast<double>(vdiff[j]) / 255.0;
      out.w[j] = static_cast<float>(q * step);
      base += q * (static_cast<double>(vmin[j]) + 0.5 * step);
    }
    out.base = static_cast<float>(base);
  } else {
    out.r.resize(dim);
    for (std::size_t j = 0; j < dim; ++j) {
      const double step = static_cast<double>(vdiff[j]) / 255.0;
      out.w[j] = static_cast<float>(step);
      out.r[j] = static_cast<float>(static_cast<double>(query[j]) - static_cast<double>(vmin[j]) -
                                    0.5 * step);
    }
    out.base = 0.0F;
  }
}

std::uint16_t float_to_half(float value) {
  const auto bits = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16U) & 0x8000U);
  const std::uint32_t magnitude = bits & 0x7FFFFFFFU;
  if (magnitude >= 0x7F800000U) {
    if (magnitude == 0x7F800000U) return sign | 0x7C00U;  // infinity
    // NaN: quiet (as IEEE conversions do), keeping the payload's top bits.
    return static_cast<std::uint16_t>(sign | 0x7E00U | ((magnitude >> 13U) & 0x3FFU));
  }
  // 65520 = 65504 + half an ulp; the tie goes to the even neighbour, which
  // is 2^16, i.e. infinity.
  if (magnitude >= 0x477FF000U) return sign | 0x7C00U;
  if (magnitude >= 0x38800000U) {  // a normal half (>= 2^-14)
    const std::uint32_t exponent = (magnitude >> 23U) - 127U + 15U;
    const std::uint32_t mantissa = magnitude & 0x7FFFFFU;
    std::uint32_t half = (exponent << 10U) | (mantissa >> 13U);
    const std::uint32_t rest = mantissa & 0x1FFFU;
    // A carry out of the mantissa correctly bumps the exponent.
    if (rest > 0x1000U || (rest == 0x1000U && (half & 1U) != 0)) ++half;
    return static_cast<std::uint16_t>(sign | half);
  }
  // A subnormal half (units of 2^-24) or zero. 2^-25 is the tie between 0
  // and 2^-24, and goes to 0 (even).
  if (magnitude <= 0x33000000U) return sign;
  const std::uint32_t exponent = magnitude >> 23U;  // 102..112
  const std::uint32_t mantissa = (magnitude & 0x7FFFFFU) | 0x800000U;
  const std::uint32_t shift = 126U - exponent;  // 14..24
  std::uint32_t half = mantissa >> shift;
  const std::uint32_t rest = mantissa & ((1U << shift) - 1U);
  const std::uint32_t tie = 1U << (shift - 1U);
  // Rounding up from the largest subnormal yields the smallest normal.
  if (rest > tie || (rest == tie && (half & 1U) != 0)) ++half;
  return static_cast<std::uint16_t>(sign | half);
}

float half_to_float(std::uint16_t value) { return decode_half(value); }

void gemm_nt(const float* a, std::size_t m, const float* b, std::size_t n, std::size_t dim,
             float* c, std::size_t ldc) {
  assert(m >= 1 && n >= 1 && ldc >= n);
  const auto d_m = static_cast<dnnl_dim_t>(m);
  const auto d_n = static_cast<dnnl_dim_t>(n);
  const auto d_k = static_cast<dnnl_dim_t>(dim);
  if (dim == 0) {
    // BLAS would leave C untouched for K = 0 only when beta = 1; the empty
    // sum is 0.
    for (std::size_t i = 0; i < m; ++i) {
      for (std::size_t j = 0; j < n; ++j) c[i * ldc + j] = 0.0F;
    }
    return;
  }
  // Row-major C (m x n) = A (m x dim) * B^T, B stored row-major n x dim:
  // op(B) = B^T, so transb = 'T' with ldb = dim.
  dnnl_status_t status = dnnl_success;
  {
    const SingleOmpThread single;
    status = dnnl_sgemm('N', 'T', d_m, d_n, d_k, 1.0F, a, d_k, b, d_k, 0.0F, c,
                        static_cast<dnnl_dim_t>(ldc));
  }
  if (status != dnnl_success) {
    fail(ErrorCode::internal, "ivf gemm_nt: dnnl_sgemm failed with status ",
         static_cast<int>(status), " (m=", m, ", n=", n, ", dim=", dim, ", ldc=", ldc, ")");
  }
}

void gemm_nt_small(IvfKernel isa, const float* a, std::size_t m, const float* b, std::size_t n,
                   std::size_t dim, float* c, std::size_t ldc) {
  assert(m >= 1 && n >= 1 && ldc >= n);
#if FUNNEL_IVF_X86
  // One query has no row loads to share, and the row-blocked kernel keeps
  // more FMA chains in flight than a 1 x 4 tile.
  if (isa == IvfKernel::avx512 && m > 1) {
    assert(supported(isa));
    gemm_nt_avx512(a, m, b, n, dim, c, ldc);
    return;
  }
#endif
  const Kernels& kernels = kernels_for(isa);
  for (std::size_t i = 0; i < m; ++i) kernels.dot_f32(a + i * dim, b, n, dim, c + i * ldc);
}

}  // namespace funnel::detail::ivf
