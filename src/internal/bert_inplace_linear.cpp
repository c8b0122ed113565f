// SPDX-License-Identifier: Apache-2.0
#include "internal/bert_inplace_linear.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace funnel::detail::bert {
namespace {

constexpr float kSqrtHalf = 0.70710678118654752440F;

float apply(LinearEpilogue epilogue, float v) noexcept {
  return epilogue == LinearEpilogue::gelu ? 0.5F * v * (1.0F + std::erf(v * kSqrtHalf)) : v;
}

// out (op)= v after the activation: the portable loops' whole epilogue.
void finish(LinearEpilogue epilogue, float& out, float v) noexcept {
  v = apply(epilogue, v);
  out = epilogue == LinearEpilogue::add ? out + v : v;
}

namespace portable {

void transposed_epilogue(const float* yt, std::size_t ld, std::size_t rows, const float* bias,
                         float* out, std::size_t n_total, std::size_t n_begin, std::size_t n_end,
                         LinearEpilogue epilogue) noexcept {
  for (std::size_t m = 0; m < rows; ++m) {
    float* o = out + m * n_total;
    for (std::size_t n = n_begin; n < n_end; ++n) finish(epilogue, o[n], yt[n * ld + m] + bias[n]);
  }
}

void small_linear(const float* w, std::size_t k, const float* x, std::size_t tokens,
                  const float* bias, float* y, std::size_t n_total, std::size_t n_begin,
                  std::size_t n_end, LinearEpilogue epilogue) noexcept {
  for (std::size_t t = 0; t < tokens; ++t) {
    const float* xt = x + t * k;
    float* o = y + t * n_total;
    for (std::size_t n = n_begin; n < n_end; ++n) {
      const float* wn = w + n * k;
      float acc = 0.0F;
      for (std::size_t i = 0; i < k; ++i) acc += xt[i] * wn[i];
      finish(epilogue, o[n], acc + bias[n]);
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

// small_linear's blocking: kRows weight rows by kTokens token rows of
// partial sums, 16 lanes each, over k in steps of 16. Each weight row is read
// from memory once, in the first token block; later token blocks find it in
// L1. 4 x 8 accumulators fill all 32 zmm registers, so GCC keeps a few on the
// stack beside the 4 weight vectors and the input vector; measured on MiniLM-L6
// at 16 tokens, that ran 7% faster than 4 x 6 (no spills, a third token
// block) and 18% faster than 4 x 4.
constexpr std::size_t kRows = 4;
constexpr std::size_t kTokens = 8;
// Weight blocks prefetched ahead, into L2 (measured on an AMD EPYC, MiniLM-L6
// weights of 21 MB streamed from memory: into L1 it gained nothing; 2 to 16
// blocks ahead into L2 came within 4% of each other).
constexpr std::size_t kPrefetchBlocks = 2;

// Shuffles in their masked form with every lane selected: GCC 12's unmasked
// intrinsics pass an undefined vector that -Wuninitialized rejects once
// inlined here (the same instruction is emitted).
constexpr __mmask16 kAll = 0xFFFF;
template <int Imm>
[[FUNNEL_EPILOGUE_AVX512, gnu::always_inline]] inline __m512 shuffle_x4(__m512 a,
                                                                        __m512 b) noexcept {
  return _mm512_mask_shuffle_f32x4(a, kAll, a, b, Imm);
}
template <int Imm>
[[FUNNEL_EPILOGUE_AVX512, gnu::always_inline]] inline __m512 shuffle_lanes(__m512 a,
                                                                           __m512 b) noexcept {
  return _mm512_mask_shuffle_ps(a, kAll, a, b, Imm);
}

// The lanes of v[0..7] folded to four floats each: in 128-bit lane j,
// [v[j]_0 + v[j]_2, v[j + 4]_0 + v[j + 4]_2, v[j]_1 + v[j]_3,
// v[j + 4]_1 + v[j + 4]_3] of the partial sums below. Halves, then quarters,
// then an unpack: 11 shuffles and adds for 8 vectors.
[[FUNNEL_EPILOGUE_AVX512, gnu::always_inline]] inline __m512 fold8(
    const __m512 (&v)[kTokens]) noexcept {
  // h[p]: in 128-bit lanes, the 256-bit halves of v[2p] summed (lanes 0-1)
  // and of v[2p + 1] (lanes 2-3).
  __m512 h[4];
#pragma GCC unroll 4
  for (std::size_t p = 0; p < 4; ++p) {
    h[p] = _mm512_add_ps(shuffle_x4<0x44>(v[2 * p], v[2 * p + 1]),
                         shuffle_x4<0xEE>(v[2 * p], v[2 * p + 1]));
  }
  // q0's 128-bit lane j: the four-float partial sum of v[j]; q1's of v[j + 4].
  const __m512 q0 = _mm512_add_ps(shuffle_x4<0x88>(h[0], h[1]), shuffle_x4<0xDD>(h[0], h[1]));
  const __m512 q1 = _mm512_add_ps(shuffle_x4<0x88>(h[2], h[3]), shuffle_x4<0xDD>(h[2], h[3]));
  return _mm512_add_ps(_mm512_mask_unpacklo_ps(q0, kAll, q0, q1),
                       _mm512_mask_unpackhi_ps(q0, kAll, q0, q1));
}

// Sums of the lanes of a[0..7] and b[0..7] in one vector: in 128-bit lane j,
// [sum a[j], sum a[j + 4], sum b[j], sum b[j + 4]].
[[FUNNEL_EPILOGUE_AVX512, gnu::always_inline]] inline __m512 fold_pair(
    const __m512 (&a)[kTokens], const __m512 (&b)[kTokens]) noexcept {
  const __m512 pa = fold8(a);
  const __m512 pb = fold8(b);
  return _mm512_add_ps(shuffle_lanes<0x44>(pa, pb), shuffle_lanes<0xEE>(pa, pb));
}

// acc[r][t] += w row r * x row t over the 16 (or, masked, fewer) floats at `at`.
template <std::size_t R, std::size_t T>
[[FUNNEL_EPILOGUE_AVX512, gnu::always_inline]] inline void small_step(__m512 (&acc)[R][kTokens],
                                                                      const float* w,
                                                                      const float* x, std::size_t k,
                                                                      std::size_t at,
                                                                      __mmask16 mask) noexcept {
  __m512 wv[R];
#pragma GCC unroll 4
  for (std::size_t r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_ps(mask, w + r * k + at);
#pragma GCC unroll 8
  for (std::size_t t = 0; t < T; ++t) {
    const __m512 xv = _mm512_maskz_loadu_ps(mask, x + t * k + at);
#pragma GCC unroll 4
    for (std::size_t r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
  }
}

// One block: weight rows n0 .. n0 + R - 1 (R is kRows, or 1 for the last
// rows) by tokens t0 .. t0 + T - 1 (T <= kTokens).
template <std::size_t R, std::size_t T>
[[FUNNEL_EPILOGUE_AVX512]] void small_block(const float* w, std::size_t k, const float* x,
                                            const float* bias, float* y, std::size_t n_total,
                                            const float* prefetch,
                                            LinearEpilogue epilogue) noexcept {
  __m512 acc[R][kTokens];
#pragma GCC unroll 4
  for (std::size_t r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (std::size_t t = 0; t < kTokens; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  std::size_t i = 0;
  for (; i + 16 <= k; i += 16) {
    if (prefetch != nullptr) {
#pragma GCC unroll 4
      for (std::size_t r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(prefetch + r * k + i), _MM_HINT_T1);
      }
    }
    small_step<R, T>(acc, w, x, k, i, static_cast<__mmask16>(0xFFFF));
  }
  if (i < k) small_step<R, T>(acc, w, x, k, i, bert::avx512::tail_mask(k - i));

  // Sums, two weight rows at a time (see fold_pair's lane order); a single
  // row is folded twice and its copy not stored.
  constexpr std::size_t kPairs = (R + 1) / 2;
#pragma GCC unroll 2
  for (std::size_t p = 0; p < kPairs; ++p) {
    constexpr std::size_t kStored = R == 1 ? 1 : 2;
    const std::size_t r = 2 * p;
    const std::size_t r1 = R == 1 ? r : r + 1;
    __m512 v = fold_pair(acc[r], acc[r1]);
    v = _mm512_add_ps(
        v, _mm512_mask_blend_ps(0xCCCC, _mm512_set1_ps(bias[r]), _mm512_set1_ps(bias[r1])));
    if (epilogue == LinearEpilogue::gelu) v = gelu_ps(v);
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, v);
    for (std::size_t rr = 0; rr < kStored; ++rr) {
      for (std::size_t t = 0; t < T; ++t) {
        const float sum = lanes[4 * (t % 4) + 2 * rr + t / 4];
        float& o = y[t * n_total + r + rr];
        o = epilogue == LinearEpilogue::add ? o + sum : sum;
      }
    }
  }
}

template <std::size_t R, std::size_t T = kTokens>
[[FUNNEL_EPILOGUE_AVX512]] void small_block_tokens(std::size_t tokens, const float* w,
                                                   std::size_t k, const float* x, const float* bias,
                                                   float* y, std::size_t n_total,
                                                   const float* prefetch,
                                                   LinearEpilogue epilogue) noexcept {
  if constexpr (T > 1) {
    if (tokens < T) {
      return small_block_tokens<R, T - 1>(tokens, w, k, x, bias, y, n_total, prefetch, epilogue);
    }
  }
  small_block<R, T>(w, k, x, bias, y, n_total, prefetch, epilogue);
}

[[FUNNEL_EPILOGUE_AVX512]] void small_linear(const float* w, std::size_t k, const float* x,
                                             std::size_t tokens, const float* bias, float* y,
                                             std::size_t n_total, std::size_t n_begin,
                                             std::size_t n_end, LinearEpilogue epilogue) noexcept {
  std::size_t n = n_begin;
  for (; n + kRows <= n_end; n += kRows) {
    const float* ahead = n + (kPrefetchBlocks + 1) * kRows <= n_end
                             ? w + (n + kPrefetchBlocks * kRows) * k
                             : nullptr;
    for (std::size_t t = 0; t < tokens; t += kTokens) {
      small_block_tokens<kRows>(std::min(kTokens, tokens - t), w + n * k, k, x + t * k, bias + n,
                                y + t * n_total + n, n_total, t == 0 ? ahead : nullptr, epilogue);
    }
  }
  for (; n < n_end; ++n) {
    for (std::size_t t = 0; t < tokens; t += kTokens) {
      small_block_tokens<1>(std::min(kTokens, tokens - t), w + n * k, k, x + t * k, bias + n,
                            y + t * n_total + n, n_total, nullptr, epilogue);
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

void small_linear(KernelIsa isa, const float* w, std::size_t k, const float* x, std::size_t tokens,
                  const float* bias, float* y, std::size_t n_total, std::size_t n_begin,
                  std::size_t n_end, LinearEpilogue epilogue) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512) {
    return vec::small_linear(w, k, x, tokens, bias, y, n_total, n_begin, n_end, epilogue);
  }
#endif
  (void)isa;
  portable::small_linear(w, k, x, tokens, bias, y, n_total, n_begin, n_end, epilogue);
}

float gelu_erf(float v) noexcept { return apply(LinearEpilogue::gelu, v); }

}  // namespace funnel::detail::bert
