// SPDX-License-Identifier: Apache-2.0
#include "internal/bert_linear_epilogue.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace funnel::detail::bert {
namespace {

constexpr float kSqrtHalf = 0.70710678118654752440F;

float apply(LinearEpilogue epilogue, float v) noexcept {
  return epilogue == LinearEpilogue::gelu ? 0.5F * v * (1.0F + std::erf(v * kSqrtHalf)) : v;
}

namespace portable {

void transposed_epilogue(const float* yt, std::size_t ld, std::size_t rows, const float* bias,
                         float* out, std::size_t n_total, std::size_t n_begin, std::size_t n_end,
                         LinearEpilogue epilogue) noexcept {
  for (std::size_t m = 0; m < rows; ++m) {
    float* o = out + m * n_total;
    for (std::size_t n = n_begin; n < n_end; ++n) {
      const float v = apply(epilogue, yt[n * ld + m] + bias[n]);
      o[n] = epilogue == LinearEpilogue::add ? o[n] + v : v;
    }
  }
}

}  // namespace portable

#if FUNNEL_BERT_X86
namespace vec {

#define FUNNEL_EPILOGUE_AVX512 gnu::target("avx512f,avx512bw,avx512vl,avx512dq,fma")

using bert::avx512::exp_ps;

// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), with
// exp_ps for exp(-x^2): 1 - t (a1 + t (a2 + ... a5 t)) exp(-x^2),
// t = 1 / (1 + p |x|), and the sign of x.
[[FUNNEL_EPILOGUE_AVX512]] inline __m512 erf_ps(__m512 x) noexcept {
  const __m512 one = _mm512_set1_ps(1.0F);
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.3275911F), ax, one));
  __m512 p = _mm512_set1_ps(1.061405429F);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027F));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741F));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736F));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592F));
  p = _mm512_mul_ps(p, t);
  const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(ax, ax)));
  const __m512 y = _mm512_max_ps(_mm512_fnmadd_ps(p, e, one), _mm512_setzero_ps());
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
}

[[FUNNEL_EPILOGUE_AVX512]] inline __m512 gelu_ps(__m512 v) noexcept {
  const __m512 e = erf_ps(_mm512_mul_ps(v, _mm512_set1_ps(kSqrtHalf)));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5F), v),
                       _mm512_add_ps(_mm512_set1_ps(1.0F), e));
}

// In-register transpose of 16 x 16 floats: r[j] holds row j on entry and
// column j on exit. Per 128-bit lane, unpack and shuffle_ps transpose 4 x 4
// blocks; two rounds of shuffle_f32x4 then transpose the 4 x 4 lanes.
[[FUNNEL_EPILOGUE_AVX512]] inline void transpose16(__m512 (&r)[16]) noexcept {
  __m512 t[16];
#pragma GCC unroll 8
  for (std::size_t j = 0; j < 16; j += 2) {
    t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
  }
  // u[4g + q], lane L: rows 4g..4g+3 of column 4L + q.
  __m512 u[16];
#pragma GCC unroll 4
  for (std::size_t g = 0; g < 4; ++g) {
    const __m512 lo0 = t[4 * g];
    const __m512 hi0 = t[4 * g + 1];
    const __m512 lo1 = t[4 * g + 2];
    const __m512 hi1 = t[4 * g + 3];
    u[4 * g] = _mm512_shuffle_ps(lo0, lo1, 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(lo0, lo1, 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(hi0, hi1, 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(hi0, hi1, 0xEE);
  }
#pragma GCC unroll 4
  for (std::size_t q = 0; q < 4; ++q) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x88);
    const __m512 v1 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xDD);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x88);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xDD);
    r[q] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[8 + q] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    r[4 + q] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[12 + q] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

[[FUNNEL_EPILOGUE_AVX512]] void transposed_epilogue(const float* yt, std::size_t ld,
                                                    std::size_t rows, const float* bias, float* out,
                                                    std::size_t n_total, std::size_t n_begin,
                                                    std::size_t n_end,
                                                    LinearEpilogue epilogue) noexcept {
  for (std::size_t n0 = n_begin; n0 < n_end; n0 += 16) {
    const std::size_t nb = std::min<std::size_t>(16, n_end - n0);
    const __mmask16 nmask = bert::avx512::tail_mask(nb);
    const __m512 b = _mm512_maskz_loadu_ps(nmask, bias + n0);
    for (std::size_t m0 = 0; m0 < rows; m0 += 16) {
      const std::size_t mb = std::min<std::size_t>(16, rows - m0);
      const __mmask16 mmask = bert::avx512::tail_mask(mb);
      __m512 r[16];
#pragma GCC unroll 16
      for (std::size_t j = 0; j < 16; ++j) {
        r[j] = j < nb ? _mm512_maskz_loadu_ps(mmask, yt + (n0 + j) * ld + m0) : _mm512_setzero_ps();
      }
      transpose16(r);
      for (std::size_t i = 0; i < mb; ++i) {
        __m512 v = _mm512_add_ps(r[i], b);
        float* o = out + (m0 + i) * n_total + n0;
        if (epilogue == LinearEpilogue::gelu) v = gelu_ps(v);
        if (epilogue == LinearEpilogue::add) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(nmask, o));
        _mm512_mask_storeu_ps(o, nmask, v);
      }
    }
  }
}

#undef FUNNEL_EPILOGUE_AVX512

}  // namespace vec
#endif

}  // namespace

void transposed_epilogue(KernelIsa isa, const float* yt, std::size_t ld, std::size_t rows,
                         const float* bias, float* out, std::size_t n_total, std::size_t n_begin,
                         std::size_t n_end, LinearEpilogue epilogue) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512) {
    return vec::transposed_epilogue(yt, ld, rows, bias, out, n_total, n_begin, n_end, epilogue);
  }
#endif
  (void)isa;
  portable::transposed_epilogue(yt, ld, rows, bias, out, n_total, n_begin, n_end, epilogue);
}

float gelu_erf(float v) noexcept { return apply(LinearEpilogue::gelu, v); }

}  // namespace funnel::detail::bert
