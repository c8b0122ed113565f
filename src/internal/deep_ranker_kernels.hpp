// SPDX-License-Identifier: Apache-2.0
#pragma once

// Row kernels of DeepRankerModel's forward pass that oneDNN does not fuse
// into its matrix products: target attention over one user's history (a
// small register-blocked product, masked softmax, pooled values), the
// per-row user part of the first layer, gate softmax, the expert mixture,
// the tower logit, and a finiteness check. Each kernel has a portable
// scalar version and an AVX-512 version chosen at run time (the library is
// built without -march); tests/test_deep_ranker_model.cpp checks the
// forward pass, and so these kernels, against a double-precision reference.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "internal/bert_kernels.hpp"

namespace funnel::detail::deep {

using bert::KernelIsa;

namespace scalar {

inline bool all_finite(const float* x, std::size_t n) noexcept {
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    // Exponent bits all ones: infinity or NaN.
    bad |= static_cast<std::uint32_t>((std::bit_cast<std::uint32_t>(x[i]) & 0x7F800000U) ==
                                      0x7F800000U);
  }
  return bad == 0;
}

// p = softmax_j(q . k_j * scale) weighted sum of v_j over ne events; k is
// stored transposed (kt[a * kt_stride + j]), v row-major (v[j * v_stride + a]).
inline void attention(const float* q, std::size_t a_dim, const float* kt, std::size_t kt_stride,
                      const float* v, std::size_t v_stride, std::size_t ne, float scale,
                      float* scores, float* p) noexcept {
  std::fill_n(scores, ne, 0.0F);
  for (std::size_t a = 0; a < a_dim; ++a) {
    const float qa = q[a];
    const float* row = kt + a * kt_stride;
    for (std::size_t j = 0; j < ne; ++j) scores[j] += qa * row[j];
  }
  bert::scalar::softmax(scores, ne, scale, nullptr);
  std::fill_n(p, a_dim, 0.0F);
  for (std::size_t j = 0; j < ne; ++j) {
    const float w = scores[j];
    const float* row = v + j * v_stride;
    for (std::size_t a = 0; a < a_dim; ++a) p[a] += w * row[a];
  }
}

template <class Out>
inline void add_relu(const float* x, const float* add, std::size_t n, Out* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    const float v = std::max(x[i] + add[i], 0.0F);
    if constexpr (sizeof(Out) == 2) {
      out[i] = bert::to_bf16(v);
    } else {
      out[i] = v;
    }
  }
}

inline void gate_softmax(float* g, const float* add, std::size_t tasks,
                         std::size_t experts) noexcept {
  for (std::size_t t = 0; t < tasks; ++t) {
    float* row = g + t * experts;
    const float* plus = add + t * experts;
    float m = -std::numeric_limits<float>::infinity();
    for (std::size_t e = 0; e < experts; ++e) {
      row[e] += plus[e];
      m = std::max(m, row[e]);
    }
    float sum = 0.0F;
    for (std::size_t e = 0; e < experts; ++e) {
      row[e] = std::exp(row[e] - m);
      sum += row[e];
    }
    for (std::size_t e = 0; e < experts; ++e) row[e] /= sum;
  }
}

template <class Out>
inline void mixture(const float* y, std::size_t stride, std::size_t experts, std::size_t width,
                    const float* g, Out* out) noexcept {
  for (std::size_t h = 0; h < width; ++h) {
    float s = 0.0F;
    for (std::size_t e = 0; e < experts; ++e) s += g[e] * y[e * stride + h];
    if constexpr (sizeof(Out) == 2) {
      out[h] = bert::to_bf16(s);
    } else {
      out[h] = s;
    }
  }
}

inline float dot(const float* x, const float* w, std::size_t n) noexcept {
  float s = 0.0F;
  for (std::size_t i = 0; i < n; ++i) s += x[i] * w[i];
  return s;
}

}  // namespace scalar

#if FUNNEL_BERT_X86
namespace avx512 {

#define FUNNEL_DEEP_AVX512 gnu::target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#define FUNNEL_DEEP_AVX512_BF16 gnu::target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")

using bert::avx512::hsum;
using bert::avx512::tail_mask;

[[FUNNEL_DEEP_AVX512]] inline bool all_finite(const float* x, std::size_t n) noexcept {
  const __m512i exp_mask = _mm512_set1_epi32(0x7F800000);
  __mmask16 bad = 0;
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512i bits = _mm512_maskz_loadu_epi32(m, x + i);
    bad |= _mm512_mask_cmpeq_epi32_mask(m, _mm512_and_si512(bits, exp_mask), exp_mask);
  }
  return bad == 0;
}

// Up to 64 lanes (four vectors, masks m[0..3]; a zero mask skips its
// vector) of acc += w * row.
struct Lanes64 {
  __mmask16 m[4];
};

[[FUNNEL_DEEP_AVX512]] inline Lanes64 lanes64(std::size_t left) noexcept {
  return {{tail_mask(left), left > 16 ? tail_mask(left - 16) : __mmask16{0},
           left > 32 ? tail_mask(left - 32) : __mmask16{0},
           left > 48 ? tail_mask(left - 48) : __mmask16{0}}};
}

[[FUNNEL_DEEP_AVX512]] inline void fma64(__m512* acc, __m512 w, const float* row,
                                         const Lanes64& l) noexcept {
  acc[0] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(l.m[0], row), acc[0]);
  if (l.m[1] != 0) acc[1] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(l.m[1], row + 16), acc[1]);
  if (l.m[2] != 0) acc[2] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(l.m[2], row + 32), acc[2]);
  if (l.m[3] != 0) acc[3] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(l.m[3], row + 48), acc[3]);
}

[[FUNNEL_DEEP_AVX512]] inline void store64(float* out, const __m512* even, const __m512* odd,
                                           const Lanes64& l) noexcept {
  for (std::size_t k = 0; k < 4; ++k) {
    _mm512_mask_storeu_ps(out + 16 * k, l.m[k], _mm512_add_ps(even[k], odd[k]));
  }
}

// As scalar::attention. Scores: per block of up to 64 events, a rank-1
// update per a (each loaded key vector serves 16 events); pooling: per
// block of up to 64 value columns, one update per event. Even and odd
// steps go to separate accumulators, so that the chains of dependent FMAs
// are half as long (the kernel is bound by FMA latency otherwise).
[[FUNNEL_DEEP_AVX512]] inline void attention(const float* q, std::size_t a_dim, const float* kt,
                                             std::size_t kt_stride, const float* v,
                                             std::size_t v_stride, std::size_t ne, float scale,
                                             float* scores, float* p) noexcept {
  for (std::size_t j0 = 0; j0 < ne; j0 += 64) {
    const Lanes64 l = lanes64(ne - j0);
    __m512 even[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                      _mm512_setzero_ps()};
    __m512 odd[4] = {even[0], even[1], even[2], even[3]};
    std::size_t a = 0;
    for (; a + 1 < a_dim; a += 2) {
      fma64(even, _mm512_set1_ps(q[a]), kt + a * kt_stride + j0, l);
      fma64(odd, _mm512_set1_ps(q[a + 1]), kt + (a + 1) * kt_stride + j0, l);
    }
    if (a < a_dim) fma64(even, _mm512_set1_ps(q[a]), kt + a * kt_stride + j0, l);
    store64(scores + j0, even, odd, l);
  }
  bert::avx512::softmax_f32(scores, ne, scale);
  for (std::size_t a0 = 0; a0 < a_dim; a0 += 64) {
    const Lanes64 l = lanes64(a_dim - a0);
    __m512 even[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                      _mm512_setzero_ps()};
    __m512 odd[4] = {even[0], even[1], even[2], even[3]};
    std::size_t j = 0;
    for (; j + 1 < ne; j += 2) {
      fma64(even, _mm512_set1_ps(scores[j]), v + j * v_stride + a0, l);
      fma64(odd, _mm512_set1_ps(scores[j + 1]), v + (j + 1) * v_stride + a0, l);
    }
    if (j < ne) fma64(even, _mm512_set1_ps(scores[j]), v + j * v_stride + a0, l);
    store64(p + a0, even, odd, l);
  }
}

[[FUNNEL_DEEP_AVX512]] inline void add_relu(const float* x, const float* add, std::size_t n,
                                            float* out) noexcept {
  const __m512 zero = _mm512_setzero_ps();
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v =
        _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, add + i));
    _mm512_mask_storeu_ps(out + i, m, _mm512_max_ps(v, zero));
  }
}

[[FUNNEL_DEEP_AVX512_BF16]] inline void add_relu(const float* x, const float* add, std::size_t n,
                                                 std::uint16_t* out) noexcept {
  const __m512 zero = _mm512_setzero_ps();
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v = _mm512_max_ps(
        _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, add + i)), zero);
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)_mm512_cvtneps_pbh(v));
  }
}

// Gate logits of one row (tasks x experts, plus `add`), softmax per task.
[[FUNNEL_DEEP_AVX512]] inline void gate_softmax(float* g, const float* add, std::size_t tasks,
                                                std::size_t experts) noexcept {
  const std::size_t n = tasks * experts;
  // Shift each task's logits by that task's maximum, then one vector exp
  // per 16 values.
  for (std::size_t t = 0; t < tasks; ++t) {
    float* row = g + t * experts;
    const float* plus = add + t * experts;
    float m = -std::numeric_limits<float>::infinity();
    for (std::size_t e = 0; e < experts; ++e) {
      row[e] += plus[e];
      m = std::max(m, row[e]);
    }
    for (std::size_t e = 0; e < experts; ++e) row[e] -= m;
  }
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(g + i, m, bert::avx512::exp_ps(_mm512_maskz_loadu_ps(m, g + i)));
  }
  for (std::size_t t = 0; t < tasks; ++t) {
    float* row = g + t * experts;
    float sum = 0.0F;
    for (std::size_t e = 0; e < experts; ++e) sum += row[e];
    const float inv = 1.0F / sum;
    for (std::size_t e = 0; e < experts; ++e) row[e] *= inv;
  }
}

[[FUNNEL_DEEP_AVX512]] inline __m512 mix16(const float* y, std::size_t stride, std::size_t experts,
                                           const float* g, std::size_t h, __mmask16 m) noexcept {
  __m512 s = _mm512_setzero_ps();
  for (std::size_t e = 0; e < experts; ++e) {
    s = _mm512_fmadd_ps(_mm512_set1_ps(g[e]), _mm512_maskz_loadu_ps(m, y + e * stride + h), s);
  }
  return s;
}

[[FUNNEL_DEEP_AVX512]] inline void mixture(const float* y, std::size_t stride, std::size_t experts,
                                           std::size_t width, const float* g, float* out) noexcept {
  for (std::size_t h = 0; h < width; h += 16) {
    const __mmask16 m = tail_mask(width - h);
    _mm512_mask_storeu_ps(out + h, m, mix16(y, stride, experts, g, h, m));
  }
}

[[FUNNEL_DEEP_AVX512_BF16]] inline void mixture(const float* y, std::size_t stride,
                                                std::size_t experts, std::size_t width,
                                                const float* g, std::uint16_t* out) noexcept {
  for (std::size_t h = 0; h < width; h += 16) {
    const __mmask16 m = tail_mask(width - h);
    const __m512 s = mix16(y, stride, experts, g, h, m);
    _mm256_mask_storeu_epi16(out + h, m, (__m256i)_mm512_cvtneps_pbh(s));
  }
}

[[FUNNEL_DEEP_AVX512]] inline float dot(const float* x, const float* w, std::size_t n) noexcept {
  __m512 s = _mm512_setzero_ps();
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, w + i), s);
  }
  return hsum(s);
}

#undef FUNNEL_DEEP_AVX512
#undef FUNNEL_DEEP_AVX512_BF16

}  // namespace avx512
#endif

/// Whether x[0, n) holds no infinity and no NaN.
inline bool all_finite(KernelIsa isa, const float* x, std::size_t n) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512) return avx512::all_finite(x, n);
#endif
  (void)isa;
  return scalar::all_finite(x, n);
}

/// Target attention of one query over ne > 0 events: p = sum_j a_j v_j with
/// a = softmax_j(scale * q . k_j). k is stored transposed (k_j's element a
/// at kt[a * kt_stride + j]); v row-major (v[j * v_stride + a]). `scores`
/// holds ne floats of scratch.
inline void attention(KernelIsa isa, const float* q, std::size_t a_dim, const float* kt,
                      std::size_t kt_stride, const float* v, std::size_t v_stride, std::size_t ne,
                      float scale, float* scores, float* p) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512)
    return avx512::attention(q, a_dim, kt, kt_stride, v, v_stride, ne, scale, scores, p);
#endif
  (void)isa;
  scalar::attention(q, a_dim, kt, kt_stride, v, v_stride, ne, scale, scores, p);
}

/// out = max(x + add, 0) over n values, as float.
inline void add_relu(KernelIsa isa, const float* x, const float* add, std::size_t n,
                     float* out) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512) return avx512::add_relu(x, add, n, out);
#endif
  (void)isa;
  scalar::add_relu(x, add, n, out);
}

/// out = max(x + add, 0) over n values, as bfloat16 bits.
inline void add_relu(KernelIsa isa, const float* x, const float* add, std::size_t n,
                     std::uint16_t* out) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512_bf16) return avx512::add_relu(x, add, n, out);
#endif
  (void)isa;
  scalar::add_relu(x, add, n, out);
}

/// g (tasks x experts logits of one row) += add, then softmax over each
/// task's experts, in place.
inline void gate_softmax(KernelIsa isa, float* g, const float* add, std::size_t tasks,
                         std::size_t experts) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512) return avx512::gate_softmax(g, add, tasks, experts);
#endif
  (void)isa;
  scalar::gate_softmax(g, add, tasks, experts);
}

/// out[h] = sum_e g[e] * y[e * stride + h] for h < width (float or bf16 bits).
template <class Out>
inline void mixture(KernelIsa isa, const float* y, std::size_t stride, std::size_t experts,
                    std::size_t width, const float* g, Out* out) noexcept {
#if FUNNEL_BERT_X86
  if constexpr (sizeof(Out) == 2) {
    if (isa.avx512_bf16) return avx512::mixture(y, stride, experts, width, g, out);
  } else {
    if (isa.avx512) return avx512::mixture(y, stride, experts, width, g, out);
  }
#endif
  (void)isa;
  scalar::mixture(y, stride, experts, width, g, out);
}

/// x . w over n values.
inline float dot(KernelIsa isa, const float* x, const float* w, std::size_t n) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512) return avx512::dot(x, w, n);
#endif
  (void)isa;
  return scalar::dot(x, w, n);
}

}  // namespace funnel::detail::deep
