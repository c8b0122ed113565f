// SPDX-License-Identifier: Apache-2.0
#include "internal/bert_small_linear.hpp"

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

void small_linear(const float* x, std::size_t rows, std::size_t k, const float* w,
                  const float* bias, float* out, std::size_t n_total, std::size_t n_begin,
                  std::size_t n_end, LinearEpilogue epilogue) noexcept {
  for (std::size_t m = 0; m < rows; ++m) {
    const float* xm = x + m * k;
    for (std::size_t n = n_begin; n < n_end; ++n) {
      const float* wn = w + n * k;
      float sum = 0.0F;
      for (std::size_t i = 0; i < k; ++i) sum += xm[i] * wn[i];
      const float v = apply(epilogue, sum + bias[n]);
      float& o = out[m * n_total + n];
      o = epilogue == LinearEpilogue::add ? o + v : v;
    }
  }
}

}  // namespace portable

#if FUNNEL_BERT_X86
namespace vec {

#define FUNNEL_SMALL_LINEAR_AVX512 gnu::target("avx512f,avx512bw,avx512vl,avx512dq,fma")

using bert::avx512::exp_ps;
using bert::avx512::tail_mask;

// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), with
// exp_ps for exp(-x^2): 1 - t (a1 + t (a2 + ... a5 t)) exp(-x^2),
// t = 1 / (1 + p |x|), and the sign of x.
[[FUNNEL_SMALL_LINEAR_AVX512]] inline __m512 erf_ps(__m512 x) noexcept {
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

[[FUNNEL_SMALL_LINEAR_AVX512]] inline __m512 gelu_ps(__m512 v) noexcept {
  const __m512 e = erf_ps(_mm512_mul_ps(v, _mm512_set1_ps(kSqrtHalf)));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5F), v),
                       _mm512_add_ps(_mm512_set1_ps(1.0F), e));
}

// Sums of four vectors, per 128-bit lane: lane L of the result holds
// [sum(a lane L), sum(b lane L), sum(c lane L), sum(d lane L)].
// (The masked forms with a full mask: GCC 12's unmasked unpack intrinsics
// use an undefined-vector idiom that -Wuninitialized rejects.)
[[FUNNEL_SMALL_LINEAR_AVX512]] inline __m512 lane_sums(__m512 a, __m512 b, __m512 c,
                                                       __m512 d) noexcept {
  constexpr auto kAll16 = static_cast<__mmask16>(0xFFFF);
  constexpr auto kAll8 = static_cast<__mmask8>(0xFF);
  const __m512 ab = _mm512_add_ps(_mm512_mask_unpacklo_ps(a, kAll16, a, b),
                                  _mm512_mask_unpackhi_ps(a, kAll16, a, b));
  const __m512 cd = _mm512_add_ps(_mm512_mask_unpacklo_ps(c, kAll16, c, d),
                                  _mm512_mask_unpackhi_ps(c, kAll16, c, d));
  const __m512d abd = _mm512_castps_pd(ab);
  const __m512d cdd = _mm512_castps_pd(cd);
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_mask_unpacklo_pd(abd, kAll8, abd, cdd)),
                       _mm512_castpd_ps(_mm512_mask_unpackhi_pd(abd, kAll8, abd, cdd)));
}

template <int kImm>
[[FUNNEL_SMALL_LINEAR_AVX512]] inline __m512 shuffle_lanes(__m512 a, __m512 b) noexcept {
  return _mm512_mask_shuffle_f32x4(a, static_cast<__mmask16>(0xFFFF), a, b, kImm);
}

// out[m, n] for an MB x NB block (MB, NB <= 4): x rows at stride k, w rows
// at stride k, out rows at stride ldo.
template <int MB, int NB>
[[FUNNEL_SMALL_LINEAR_AVX512]] void block(const float* x, std::size_t k, const float* w,
                                          const float* bias, float* out, std::size_t ldo,
                                          LinearEpilogue epilogue, const float* prefetch) noexcept {
  __m512 acc[4][4];
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {
#pragma GCC unroll 4
    for (int n = 0; n < 4; ++n) acc[m][n] = _mm512_setzero_ps();
  }
  std::size_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 wv[NB];
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) wv[n] = _mm512_loadu_ps(w + static_cast<std::size_t>(n) * k + i);
    if (prefetch != nullptr) {
#pragma GCC unroll 4
      for (int n = 0; n < 4; ++n) {
        _mm_prefetch(reinterpret_cast<const char*>(prefetch + static_cast<std::size_t>(n) * k + i),
                     _MM_HINT_T0);
      }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + static_cast<std::size_t>(m) * k + i);
#pragma GCC unroll 4
      for (int n = 0; n < NB; ++n) acc[m][n] = _mm512_fmadd_ps(xv, wv[n], acc[m][n]);
    }
  }
  if (i < k) {
    const __mmask16 mask = tail_mask(k - i);
    __m512 wv[NB];
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) {
      wv[n] = _mm512_maskz_loadu_ps(mask, w + static_cast<std::size_t>(n) * k + i);
    }
#pragma GCC unroll 4
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + static_cast<std::size_t>(m) * k + i);
#pragma GCC unroll 4
      for (int n = 0; n < NB; ++n) acc[m][n] = _mm512_fmadd_ps(xv, wv[n], acc[m][n]);
    }
  }

  // r[4m + n] = sum of acc[m][n]: lane sums per row, then across lanes.
  const __m512 u0 = lane_sums(acc[0][0], acc[0][1], acc[0][2], acc[0][3]);
  const __m512 u1 = lane_sums(acc[1][0], acc[1][1], acc[1][2], acc[1][3]);
  const __m512 u2 = lane_sums(acc[2][0], acc[2][1], acc[2][2], acc[2][3]);
  const __m512 u3 = lane_sums(acc[3][0], acc[3][1], acc[3][2], acc[3][3]);
  const __m512 s01 = _mm512_add_ps(shuffle_lanes<_MM_SHUFFLE(1, 0, 1, 0)>(u0, u1),
                                   shuffle_lanes<_MM_SHUFFLE(3, 2, 3, 2)>(u0, u1));
  const __m512 s23 = _mm512_add_ps(shuffle_lanes<_MM_SHUFFLE(1, 0, 1, 0)>(u2, u3),
                                   shuffle_lanes<_MM_SHUFFLE(3, 2, 3, 2)>(u2, u3));
  __m512 r = _mm512_add_ps(shuffle_lanes<_MM_SHUFFLE(2, 0, 2, 0)>(s01, s23),
                           shuffle_lanes<_MM_SHUFFLE(3, 1, 3, 1)>(s01, s23));
  const auto nmask = static_cast<__mmask8>((1U << static_cast<unsigned>(NB)) - 1U);
  r = _mm512_add_ps(r,
                    _mm512_mask_broadcast_f32x4(_mm512_setzero_ps(), static_cast<__mmask16>(0xFFFF),
                                                _mm_maskz_loadu_ps(nmask, bias)));
  if (epilogue == LinearEpilogue::gelu) r = gelu_ps(r);
#pragma GCC unroll 4
  for (int m = 0; m < MB; ++m) {
    float* o = out + static_cast<std::size_t>(m) * ldo;
    __m128 v = _mm512_extractf32x4_ps(r, 0);
    if (m == 1) v = _mm512_extractf32x4_ps(r, 1);
    if (m == 2) v = _mm512_extractf32x4_ps(r, 2);
    if (m == 3) v = _mm512_extractf32x4_ps(r, 3);
    if (epilogue == LinearEpilogue::add) v = _mm_add_ps(v, _mm_maskz_loadu_ps(nmask, o));
    _mm_mask_storeu_ps(o, nmask, v);
  }
}

using BlockFn = void (*)(const float*, std::size_t, const float*, const float*, float*, std::size_t,
                         LinearEpilogue, const float*) noexcept;

template <int MB>
constexpr BlockFn kRow[4] = {&block<MB, 1>, &block<MB, 2>, &block<MB, 3>, &block<MB, 4>};
constexpr const BlockFn* kBlocks[4] = {kRow<1>, kRow<2>, kRow<3>, kRow<4>};

void small_linear(const float* x, std::size_t rows, std::size_t k, const float* w,
                  const float* bias, float* out, std::size_t n_total, std::size_t n_begin,
                  std::size_t n_end, LinearEpilogue epilogue) noexcept {
  // Weight rows outside, input rows inside: a block of 4 weight rows stays
  // in L1 while every input row passes over it, so the weights are read
  // from memory once.
  for (std::size_t n0 = n_begin; n0 < n_end; n0 += 4) {
    const std::size_t nb = std::min<std::size_t>(4, n_end - n0);
    const float* wn = w + n0 * k;
    // The first row block also pulls the next 4 weight rows into L1 (while
    // the other row blocks reuse these), so the weight stream never waits.
    const float* prefetch = n0 + 4 < n_end && n0 + 8 <= n_end ? wn + 4 * k : nullptr;
    for (std::size_t m0 = 0; m0 < rows; m0 += 4) {
      const std::size_t mb = std::min<std::size_t>(4, rows - m0);
      kBlocks[mb - 1][nb - 1](x + m0 * k, k, wn, bias + n0, out + m0 * n_total + n0, n_total,
                              epilogue, m0 == 0 ? prefetch : nullptr);
    }
  }
}

#undef FUNNEL_SMALL_LINEAR_AVX512

}  // namespace vec
#endif

}  // namespace

void small_linear(KernelIsa isa, const float* x, std::size_t rows, std::size_t k, const float* w,
                  const float* bias, float* out, std::size_t n_total, std::size_t n_begin,
                  std::size_t n_end, LinearEpilogue epilogue) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512) {
    return vec::small_linear(x, rows, k, w, bias, out, n_total, n_begin, n_end, epilogue);
  }
#endif
  (void)isa;
  portable::small_linear(x, rows, k, w, bias, out, n_total, n_begin, n_end, epilogue);
}

float gelu_erf(float v) noexcept { return apply(LinearEpilogue::gelu, v); }

}  // namespace funnel::detail::bert
