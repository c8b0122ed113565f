// SPDX-License-Identifier: Apache-2.0
#include "internal/bert_small_linear.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <utility>

namespace funnel::detail::bert {
namespace {

constexpr float kSqrtHalf = 0.70710678118654752440F;

float apply(LinearEpilogue epilogue, float v) noexcept {
  return epilogue == LinearEpilogue::gelu ? 0.5F * v * (1.0F + std::erf(v * kSqrtHalf)) : v;
}

namespace portable {

void small_linear(const float* xt, std::size_t rows, std::size_t k, const float* w,
                  const float* bias, float* out, std::size_t n_total, std::size_t n_begin,
                  std::size_t n_end, LinearEpilogue epilogue) noexcept {
  const std::size_t ld = small_linear_ld(rows);
  for (std::size_t n = n_begin; n < n_end; ++n) {
    const float* wn = w + n * k;
    for (std::size_t m = 0; m < rows; ++m) {
      float sum = 0.0F;
      for (std::size_t i = 0; i < k; ++i) sum += xt[i * ld + m] * wn[i];
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

// Columns [0, NB) of w (NB <= kSmallLinearBlockColumns, rows at stride k)
// against one group of 16 input rows (xt: k vectors of 16, at stride ld):
// acc[j] holds output column j for the 16 rows (in kParts partial sums over k
// when NB is narrower than a full block, so that at least
// kSmallLinearBlockColumns independent FMA chains cover the FMA latency).
// Each weight is broadcast from where it lies into one FMA, so the weights
// are read exactly once, in order, row by row.
template <int NB>
[[FUNNEL_SMALL_LINEAR_AVX512]] void column_block(const float* xt, std::size_t ld, std::size_t k,
                                                 const float* w, const float* bias, float* out,
                                                 std::size_t n_total, std::size_t rows,
                                                 LinearEpilogue epilogue) noexcept {
  constexpr int kFull = static_cast<int>(kSmallLinearBlockColumns);
  constexpr int kParts = NB >= kFull ? 1 : kFull / NB;  // partial sums per column over k
  __m512 acc[NB][kParts];
#pragma GCC unroll 16
  for (int j = 0; j < NB; ++j) {
#pragma GCC unroll 8
    for (int q = 0; q < kParts; ++q) acc[j][q] = _mm512_setzero_ps();
  }
  const auto row = [&](int j) { return w + static_cast<std::size_t>(j) * k; };
  std::size_t i = 0;
  for (; i + 16 <= k; i += 16) {
    // 8 cache lines ahead in every weight row.
#pragma GCC unroll 16
    for (int j = 0; j < NB; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(row(j) + i + 128), _MM_HINT_T0);
    }
#pragma GCC unroll 16
    for (std::size_t ii = i; ii < i + 16; ++ii) {
      const __m512 a = _mm512_loadu_ps(xt + ii * ld);
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) {
        const int q = static_cast<int>(ii % kParts);
        acc[j][q] = _mm512_fmadd_ps(_mm512_set1_ps(row(j)[ii]), a, acc[j][q]);
      }
    }
  }
  for (; i < k; ++i) {
    const __m512 a = _mm512_loadu_ps(xt + i * ld);
#pragma GCC unroll 16
    for (int j = 0; j < NB; ++j) {
      acc[j][0] = _mm512_fmadd_ps(_mm512_set1_ps(row(j)[i]), a, acc[j][0]);
    }
  }
  alignas(64) float tile[NB][16];
#pragma GCC unroll 16
  for (int j = 0; j < NB; ++j) {
    __m512 v = acc[j][0];
#pragma GCC unroll 8
    for (int q = 1; q < kParts; ++q) v = _mm512_add_ps(v, acc[j][q]);
    v = _mm512_add_ps(v, _mm512_set1_ps(bias[j]));
    if (epilogue == LinearEpilogue::gelu) v = gelu_ps(v);
    _mm512_store_ps(tile[j], v);
  }
  for (std::size_t m = 0; m < rows; ++m) {
    float* o = out + m * n_total;
    if (epilogue == LinearEpilogue::add) {
      for (int j = 0; j < NB; ++j) o[j] += tile[j][m];
    } else {
      for (int j = 0; j < NB; ++j) o[j] = tile[j][m];
    }
  }
}

using BlockFn = void (*)(const float*, std::size_t, std::size_t, const float*, const float*, float*,
                         std::size_t, std::size_t, LinearEpilogue) noexcept;

template <std::size_t... J>
constexpr std::array<BlockFn, sizeof...(J)> block_table(std::index_sequence<J...> /*unused*/) {
  return {&column_block<static_cast<int>(J) + 1>...};
}
constexpr auto kBlocks = block_table(std::make_index_sequence<kSmallLinearBlockColumns>());

void small_linear(const float* xt, std::size_t rows, std::size_t k, const float* w,
                  const float* bias, float* out, std::size_t n_total, std::size_t n_begin,
                  std::size_t n_end, LinearEpilogue epilogue) noexcept {
  const std::size_t ld = small_linear_ld(rows);
  // Weight rows outside, row groups inside: a block of weight rows is
  // read from memory once and from cache for the other groups.
  for (std::size_t n0 = n_begin; n0 < n_end; n0 += kSmallLinearBlockColumns) {
    const std::size_t nb = std::min(kSmallLinearBlockColumns, n_end - n0);
    for (std::size_t g = 0; g < rows; g += kSmallLinearGroup) {
      kBlocks[nb - 1](xt + g, ld, k, w + n0 * k, bias + n0, out + g * n_total + n0, n_total,
                      std::min(kSmallLinearGroup, rows - g), epilogue);
    }
  }
}

#undef FUNNEL_SMALL_LINEAR_AVX512

}  // namespace vec
#endif

}  // namespace

void pack_small_linear_input(const float* x, std::size_t rows, std::size_t k, float* xt,
                             std::size_t i_begin, std::size_t i_end) noexcept {
  const std::size_t ld = small_linear_ld(rows);
  for (std::size_t i = i_begin; i < i_end; ++i) {
    float* dst = xt + i * ld;
    for (std::size_t m = 0; m < rows; ++m) dst[m] = x[m * k + i];
    for (std::size_t m = rows; m < ld; ++m) dst[m] = 0.0F;
  }
}

void small_linear(KernelIsa isa, const float* xt, std::size_t rows, std::size_t k, const float* w,
                  const float* bias, float* out, std::size_t n_total, std::size_t n_begin,
                  std::size_t n_end, LinearEpilogue epilogue) noexcept {
#if FUNNEL_BERT_X86
  if (isa.avx512) {
    return vec::small_linear(xt, rows, k, w, bias, out, n_total, n_begin, n_end, epilogue);
  }
#endif
  (void)isa;
  portable::small_linear(xt, rows, k, w, bias, out, n_total, n_begin, n_end, epilogue);
}

float gelu_erf(float v) noexcept { return apply(LinearEpilogue::gelu, v); }

}  // namespace funnel::detail::bert
