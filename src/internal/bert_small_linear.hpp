// SPDX-License-Identifier: Apache-2.0
#pragma once

// A linear layer for few rows, read from weights in their file layout.
//
// BertEncoder's fp32 path reads the projection weights in place from the
// memory-mapped checkpoint ([out, in] row-major). oneDNN's matmul repacks
// such weights into its blocked layout on every call, which costs as much as
// the product itself when a call has a few dozen tokens. This kernel needs
// no packing of the weights: it packs the (small) input instead, transposed
// into k vectors of 16 rows, and multiplies each weight, broadcast from where
// it lies, with the 16 rows of one vector. A block of 8 weight rows fills 8
// vector accumulators (8 output columns x 16 input rows); the weights are
// streamed once, row by row, with software prefetch. (Blocks of 16 rows used
// all the registers for accumulators, but 16 concurrent row streams fed the
// FMAs worse: 8 rows ran 5-15% faster at 16 and 32 tokens, MiniLM and
// BERT-base shapes, 1 and 2 threads.) AVX-512 when the CPU
// has it, else a portable loop; the two differ only in the order of the
// float additions and in erf (the tests bound both).

#include <cstddef>

#include "internal/bert_kernels.hpp"

namespace funnel::detail::bert {

/// Input rows per vector of the kernel.
inline constexpr std::size_t kSmallLinearGroup = 16;
/// Weight rows (output columns) per block of the kernel.
inline constexpr std::size_t kSmallLinearBlockColumns = 8;

/// Row stride of the packed input: rows rounded up to kSmallLinearGroup.
constexpr std::size_t small_linear_ld(std::size_t rows) noexcept {
  return (rows + kSmallLinearGroup - 1) / kSmallLinearGroup * kSmallLinearGroup;
}

/// What is done with each output value v = x . w_n + bias_n.
enum class LinearEpilogue {
  store,  ///< out = v
  gelu,   ///< out = v / 2 * (1 + erf(v / sqrt(2)))
  add,    ///< out += v (a residual connection)
};

/// Packs x (rows x k, row stride k) for small_linear: xt[i * ld + m] =
/// x[m, i] with ld = small_linear_ld(rows), zero for m >= rows; k * ld floats.
/// Only the columns i in [i_begin, i_end) (threads split them).
void pack_small_linear_input(const float* x, std::size_t rows, std::size_t k, float* xt,
                             std::size_t i_begin, std::size_t i_end) noexcept;

/// All columns.
inline void pack_small_linear_input(const float* x, std::size_t rows, std::size_t k,
                                    float* xt) noexcept {
  pack_small_linear_input(x, rows, k, xt, 0, k);
}

/// out[m, n] (op)= sum_i x[m, i] * w[n, i] + bias[n] for m < rows and n in
/// [n_begin, n_end), with x given packed (pack_small_linear_input): w is
/// n_total x k (row stride k, the [out, in] layout of a checkpoint), out has
/// row stride n_total. Threads split [0, n_total) among themselves by
/// calling this on disjoint column ranges.
void small_linear(KernelIsa isa, const float* xt, std::size_t rows, std::size_t k, const float* w,
                  const float* bias, float* out, std::size_t n_total, std::size_t n_begin,
                  std::size_t n_end, LinearEpilogue epilogue) noexcept;

/// GELU with std::erf, as the portable path of small_linear computes it (the
/// AVX-512 path approximates erf within 1.5e-7 plus float rounding; tests
/// compare both with double precision).
float gelu_erf(float v) noexcept;

}  // namespace funnel::detail::bert
