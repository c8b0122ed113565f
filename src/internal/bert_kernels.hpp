// SPDX-License-Identifier: Apache-2.0
#pragma once

// Element-wise and row-wise CPU kernels of BertEncoder that oneDNN does not
// fuse into its matrix products: LayerNorm, softmax, bf16 conversion and u8
// quantization. Each kernel has a portable scalar version and an AVX-512
// version chosen at run time (the library is built without -march); the two
// agree to float rounding (tests/test_bert_encoder.cpp checks them against
// each other and against brute-force formulas).

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FUNNEL_BERT_X86 1
#else
#define FUNNEL_BERT_X86 0
#endif

namespace funnel::detail::bert {

/// Which vector instructions the kernels may use, fixed per encoder.
struct KernelIsa {
  bool avx512 = false;       ///< AVX-512 F/BW/VL/DQ
  bool avx512_bf16 = false;  ///< AVX-512 BF16 conversions (implies avx512)
};

/// What this CPU offers.
inline KernelIsa detect_isa() noexcept {
  KernelIsa isa;
#if FUNNEL_BERT_X86
  __builtin_cpu_init();
  isa.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  isa.avx512_bf16 = isa.avx512 && __builtin_cpu_supports("avx512bf16");
#endif
  return isa;
}

/// float -> bfloat16 bits, rounding to nearest even (NaN stays a quiet NaN).
inline std::uint16_t to_bf16(float value) noexcept {
  auto bits = std::bit_cast<std::uint32_t>(value);
  if (std::isnan(value)) return static_cast<std::uint16_t>((bits >> 16) | 0x40U);
  bits += 0x7FFFU + ((bits >> 16) & 1U);
  return static_cast<std::uint16_t>(bits >> 16);
}

/// bfloat16 bits -> float (exact).
inline float from_bf16(std::uint16_t bits) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

/// Quantization of a tensor to u8: value ~= scale * (q - zero_point).
struct U8Quant {
  float scale = 1.0F;
  std::int32_t zero_point = 0;
};

/// Scale and zero point covering [lo, hi] (widened to include 0, so that
/// zero, the value of padding rows, is exact).
inline U8Quant u8_quant_for(float lo, float hi) noexcept {
  lo = std::min(lo, 0.0F);
  hi = std::max(hi, 0.0F);
  U8Quant q;
  const float range = hi - lo;
  q.scale = range > 0.0F ? range / 255.0F : 1.0F;
  q.zero_point = static_cast<std::int32_t>(std::clamp(std::nearbyint(-lo / q.scale), 0.0F, 255.0F));
  return q;
}

namespace scalar {

inline void to_bf16(const float* src, std::uint16_t* dst, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) dst[i] = bert::to_bf16(src[i]);
}

// In-place LayerNorm of one row; optionally also writes the row as bf16 and
// widens [*lo, *hi] by the row's range.
inline void layer_norm(float* x, std::size_t n, const float* gamma, const float* beta, float eps,
                       std::uint16_t* bf16_out, float* lo, float* hi) noexcept {
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) sum += x[i];
  const auto mean = static_cast<float>(sum / static_cast<double>(n));
  double sq = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const float d = x[i] - mean;
    sq += static_cast<double>(d) * d;
  }
  const float rstd = 1.0F / std::sqrt(static_cast<float>(sq / static_cast<double>(n)) + eps);
  for (std::size_t i = 0; i < n; ++i) x[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
  if (bf16_out != nullptr) to_bf16(x, bf16_out, n);
  if (lo != nullptr) {
    for (std::size_t i = 0; i < n; ++i) {
      *lo = std::min(*lo, x[i]);
      *hi = std::max(*hi, x[i]);
    }
  }
}

// Softmax of scale * s over one row, in place; optionally also as bf16.
inline void softmax(float* s, std::size_t n, float scale, std::uint16_t* bf16_out) noexcept {
  float m = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, s[i]);
  m *= scale;
  float sum = 0.0F;
  for (std::size_t i = 0; i < n; ++i) {
    s[i] = std::exp(s[i] * scale - m);
    sum += s[i];
  }
  const float inv = 1.0F / sum;
  for (std::size_t i = 0; i < n; ++i) s[i] *= inv;
  if (bf16_out != nullptr) to_bf16(s, bf16_out, n);
}

inline void min_max(const float* x, std::size_t n, float* lo, float* hi) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    *lo = std::min(*lo, x[i]);
    *hi = std::max(*hi, x[i]);
  }
}

inline void quantize_u8(const float* x, std::size_t n, U8Quant q, std::uint8_t* out) noexcept {
  const float inv = 1.0F / q.scale;
  for (std::size_t i = 0; i < n; ++i) {
    const float v = std::nearbyint(x[i] * inv) + static_cast<float>(q.zero_point);
    out[i] = static_cast<std::uint8_t>(std::clamp(v, 0.0F, 255.0F));
  }
}

inline void min_max(const std::uint16_t* x, std::size_t n, float* lo, float* hi) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    *lo = std::min(*lo, from_bf16(x[i]));
    *hi = std::max(*hi, from_bf16(x[i]));
  }
}

inline void quantize_u8(const std::uint16_t* x, std::size_t n, U8Quant q,
                        std::uint8_t* out) noexcept {
  const float inv = 1.0F / q.scale;
  for (std::size_t i = 0; i < n; ++i) {
    const float v = std::nearbyint(from_bf16(x[i]) * inv) + static_cast<float>(q.zero_point);
    out[i] = static_cast<std::uint8_t>(std::clamp(v, 0.0F, 255.0F));
  }
}

}  // namespace scalar

#if FUNNEL_BERT_X86
namespace avx512 {

#define FUNNEL_BERT_AVX512 gnu::target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#define FUNNEL_BERT_AVX512_BF16 gnu::target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")

[[FUNNEL_BERT_AVX512]] inline __mmask16 tail_mask(std::size_t left) noexcept {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF)
                    : static_cast<__mmask16>((1U << static_cast<unsigned>(left)) - 1U);
}

// Horizontal reductions through memory: GCC 12's _mm512_reduce_* use an
// undefined-vector idiom that -Wuninitialized rejects at -O3.
[[FUNNEL_BERT_AVX512]] inline float hsum(__m512 v) noexcept {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0.0F;
  for (const float x : lanes) s += x;
  return s;
}
[[FUNNEL_BERT_AVX512]] inline float hmax(__m512 v) noexcept {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float m = lanes[0];
  for (const float x : lanes) m = std::max(m, x);
  return m;
}
[[FUNNEL_BERT_AVX512]] inline float hmin(__m512 v) noexcept {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float m = lanes[0];
  for (const float x : lanes) m = std::min(m, x);
  return m;
}

// exp(x) for x <= 0 (larger inputs are clamped at 88): x = n ln2 + r with
// |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial (relative error
// below 2e-7), times 2^n by scalef.
[[FUNNEL_BERT_AVX512]] inline __m512 exp_ps(__m512 x) noexcept {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0F));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.0F));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341F)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125F), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06F), r);
  __m512 p = _mm512_set1_ps(1.0F / 720.0F);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0F / 120.0F));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0F / 24.0F));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0F / 6.0F));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5F));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0F));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0F));
  return _mm512_scalef_ps(p, n);
}

[[FUNNEL_BERT_AVX512_BF16]] inline void to_bf16(const float* src, std::uint16_t* dst,
                                                std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, src + i);
    // A C-style vector cast: std::bit_cast would instantiate a function
    // returning an AVX type outside AVX code (a psabi error).
    const auto b = (__m256i)_mm512_cvtneps_pbh(v);
    _mm256_mask_storeu_epi16(dst + i, m, b);
  }
}

// 16 floats from f32 or bf16 storage (masked lanes are 0).
[[FUNNEL_BERT_AVX512]] inline __m512 load16(__mmask16 m, const float* x) noexcept {
  return _mm512_maskz_loadu_ps(m, x);
}
[[FUNNEL_BERT_AVX512]] inline __m512 load16(__mmask16 m, const std::uint16_t* x) noexcept {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

template <class T>
[[FUNNEL_BERT_AVX512]] inline void min_max(const T* x, std::size_t n, float* lo,
                                           float* hi) noexcept {
  __m512 vlo = _mm512_set1_ps(*lo);
  __m512 vhi = _mm512_set1_ps(*hi);
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v = load16(m, x + i);
    vlo = _mm512_mask_min_ps(vlo, m, vlo, v);
    vhi = _mm512_mask_max_ps(vhi, m, vhi, v);
  }
  *lo = hmin(vlo);
  *hi = hmax(vhi);
}

// Mean and 1 / sqrt(var + eps) of a row, broadcast.
[[FUNNEL_BERT_AVX512]] inline void row_stats(const float* x, std::size_t n, float eps, __m512* mean,
                                             __m512* rstd) noexcept {
  __m512 acc = _mm512_setzero_ps();
  for (std::size_t i = 0; i < n; i += 16) {
    acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
  }
  *mean = _mm512_set1_ps(hsum(acc) / static_cast<float>(n));
  acc = _mm512_setzero_ps();
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), *mean);
    acc = _mm512_fmadd_ps(d, d, acc);
  }
  *rstd = _mm512_set1_ps(1.0F / std::sqrt(hsum(acc) / static_cast<float>(n) + eps));
}

// LayerNorm in place; widens [*lo, *hi] when lo is set.
[[FUNNEL_BERT_AVX512]] inline void layer_norm_f32(float* x, std::size_t n, const float* gamma,
                                                  const float* beta, float eps, float* lo,
                                                  float* hi) noexcept {
  __m512 mean;
  __m512 rstd;
  row_stats(x, n, eps, &mean, &rstd);
  __m512 vlo = _mm512_setzero_ps();
  __m512 vhi = _mm512_setzero_ps();
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mean), rstd);
    const __m512 y =
        _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, gamma + i), _mm512_maskz_loadu_ps(m, beta + i));
    _mm512_mask_storeu_ps(x + i, m, y);
    vlo = _mm512_mask_min_ps(vlo, m, vlo, y);
    vhi = _mm512_mask_max_ps(vhi, m, vhi, y);
  }
  if (lo != nullptr) {
    *lo = std::min(*lo, hmin(vlo));
    *hi = std::max(*hi, hmax(vhi));
  }
}

// LayerNorm in place, also written as bf16 in the same pass.
[[FUNNEL_BERT_AVX512_BF16]] inline void layer_norm_bf16(float* x, std::size_t n, const float* gamma,
                                                        const float* beta, float eps,
                                                        std::uint16_t* out) noexcept {
  __m512 mean;
  __m512 rstd;
  row_stats(x, n, eps, &mean, &rstd);
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mean), rstd);
    const __m512 y =
        _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, gamma + i), _mm512_maskz_loadu_ps(m, beta + i));
    _mm512_mask_storeu_ps(x + i, m, y);
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)_mm512_cvtneps_pbh(y));
  }
}

// The first two softmax passes: s[i] = exp(scale * s[i] - max); returns
// 1 / sum.
[[FUNNEL_BERT_AVX512]] inline float softmax_exp(float* s, std::size_t n, float scale) noexcept {
  __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, s + i));
  }
  const __m512 shift = _mm512_set1_ps(hmax(vmax) * scale);
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 vsum = _mm512_setzero_ps();
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 e = exp_ps(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, s + i), vscale, shift));
    vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
    _mm512_mask_storeu_ps(s + i, m, e);
  }
  return 1.0F / hsum(vsum);
}

[[FUNNEL_BERT_AVX512]] inline void softmax_f32(float* s, std::size_t n, float scale) noexcept {
  const __m512 inv = _mm512_set1_ps(softmax_exp(s, n, scale));
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(s + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + i), inv));
  }
}

// Probabilities written as bf16 only (s is left unnormalised).
[[FUNNEL_BERT_AVX512_BF16]] inline void softmax_bf16(float* s, std::size_t n, float scale,
                                                     std::uint16_t* out) noexcept {
  const __m512 inv = _mm512_set1_ps(softmax_exp(s, n, scale));
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + i), inv);
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)_mm512_cvtneps_pbh(p));
  }
}

template <class T>
[[FUNNEL_BERT_AVX512]] inline void quantize_u8(const T* x, std::size_t n, U8Quant q,
                                               std::uint8_t* out) noexcept {
  const __m512 inv = _mm512_set1_ps(1.0F / q.scale);
  const __m512i zp = _mm512_set1_epi32(q.zero_point);
  const __m512i zero = _mm512_setzero_si512();
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    // cvtps rounds to nearest even (the default MXCSR mode), as nearbyint.
    __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(load16(m, x + i), inv));
    v = _mm512_max_epi32(_mm512_add_epi32(v, zp), zero);
    _mm512_mask_cvtusepi32_storeu_epi8(out + i, m, v);
  }
}

#undef FUNNEL_BERT_AVX512
#undef FUNNEL_BERT_AVX512_BF16

}  // namespace avx512
#endif

/// Converts n floats to bfloat16 bits (round to nearest even).
inline void to_bf16(KernelIsa isa, const float* src, std::uint16_t* dst, std::size_t n) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512_bf16) return avx512::to_bf16(src, dst, n);
#endif
  (void)isa;
  scalar::to_bf16(src, dst, n);
}

/// Widens [*lo, *hi] to cover x[0, n) (float or bf16 bits).
template <class T>
inline void min_max(KernelIsa isa, const T* x, std::size_t n, float* lo, float* hi) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512) return avx512::min_max(x, n, lo, hi);
#endif
  (void)isa;
  scalar::min_max(x, n, lo, hi);
}

/// In-place LayerNorm of one row of n values: (x - mean) / sqrt(var + eps) *
/// gamma + beta with the biased variance. When bf16_out is set, also writes
/// the result as bf16; when lo/hi are set, widens them by the result's range.
inline void layer_norm(KernelIsa isa, float* x, std::size_t n, const float* gamma,
                       const float* beta, float eps, std::uint16_t* bf16_out, float* lo,
                       float* hi) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512_bf16 && bf16_out != nullptr) {
    avx512::layer_norm_bf16(x, n, gamma, beta, eps, bf16_out);
    if (lo != nullptr) avx512::min_max(x, n, lo, hi);
    return;
  }
  if (isa.avx512) {
    avx512::layer_norm_f32(x, n, gamma, beta, eps, lo, hi);
    if (bf16_out != nullptr) scalar::to_bf16(x, bf16_out, n);
    return;
  }
#endif
  (void)isa;
  scalar::layer_norm(x, n, gamma, beta, eps, bf16_out, lo, hi);
}

/// Softmax of scale * s over one row of n values (scale > 0). Without
/// bf16_out the probabilities replace s; with it they are written there as
/// bf16 and s is left as scratch.
inline void softmax(KernelIsa isa, float* s, std::size_t n, float scale,
                    std::uint16_t* bf16_out) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512_bf16 && bf16_out != nullptr) return avx512::softmax_bf16(s, n, scale, bf16_out);
  if (isa.avx512) {
    avx512::softmax_f32(s, n, scale);
    if (bf16_out != nullptr) scalar::to_bf16(s, bf16_out, n);
    return;
  }
#endif
  (void)isa;
  scalar::softmax(s, n, scale, bf16_out);
}

/// out[i] = clamp(round_half_even(x[i] / q.scale) + q.zero_point, 0, 255)
/// (x float or bf16 bits).
template <class T>
inline void quantize_u8(KernelIsa isa, const T* x, std::size_t n, U8Quant q,
                        std::uint8_t* out) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512) return avx512::quantize_u8(x, n, q, out);
#endif
  (void)isa;
  scalar::quantize_u8(x, n, q, out);
}

}  // namespace funnel::detail::bert
