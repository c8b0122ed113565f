// SPDX-License-Identifier: Apache-2.0
#pragma once

// fp32 linear layers on weights read in place.
//
// BertEncoder's fp32 path reads the projection weights in place from the
// memory-mapped checkpoint ([out, in] row-major). Given as oneDNN matmul's
// right operand (X . W^T), such weights are repacked into oneDNN's blocked
// layout on every call, which costs as much as the product when a call has a
// few dozen tokens. Two ways around it live here:
//
// - small_linear: a batch of a few tokens (up to a few dozen) is multiplied
//   by funnel's own AVX-512 kernel, dot products of weight rows with token
//   rows, each weight row streamed once from memory and prefetched two blocks
//   ahead. On so few tokens each weight is used a few times only, and oneDNN's
//   kernels, reading the weights as they lie, wait on memory: MiniLM-L6 on 4
//   tokens ran 1.9x faster this way, on 16 1.2x.
// - W . X^T on oneDNN (the weights as the left operand, read as they lie, only
//   the batch's input packed) for bigger batches; the product then comes out
//   transposed, [out, tokens], and transposed_epilogue writes it back
//   token-major.
//
// Both apply what oneDNN's post-ops would have: the bias and then nothing, the
// erf GELU or a residual sum. AVX-512 where the CPU has it, else portable
// loops; the two differ in summation order and erf (the tests bound both
// against double precision).

#include <cstddef>

#include "internal/bert_kernels.hpp"

namespace funnel::detail::bert {

/// What is done with each output value v = x . w_n + bias_n.
enum class LinearEpilogue {
  store,  ///< out = v
  gelu,   ///< out = v / 2 * (1 + erf(v / sqrt(2)))
  add,    ///< out += v (a residual connection)
};

/// out[m, n] (op)= yt[n * ld + m] + bias[n] for m < rows and n in [n_begin,
/// n_end): yt is n_total x ld (the layout of W . X^T), out is row-major with
/// row stride n_total. Threads split [0, n_total) by calling this on
/// disjoint column ranges.
void transposed_epilogue(KernelIsa isa, const float* yt, std::size_t ld, std::size_t rows,
                         const float* bias, float* out, std::size_t n_total, std::size_t n_begin,
                         std::size_t n_end, LinearEpilogue epilogue) noexcept;

/// y[t * n_total + n] (op)= sum_k x[t * k + k'] * w[n * k + k'] + bias[n] for
/// t < tokens and n in [n_begin, n_end): w is the [n_total, k] weight matrix
/// as it lies (row-major), x the [tokens, k] input, y row-major with row
/// stride n_total. Threads split [0, n_total) by calling this on disjoint
/// ranges. Meant for a few dozen tokens (each weight row is read once, the
/// input rows many times); the AVX-512 path sums in another order than the
/// portable loop.
void small_linear(KernelIsa isa, const float* w, std::size_t k, const float* x, std::size_t tokens,
                  const float* bias, float* y, std::size_t n_total, std::size_t n_begin,
                  std::size_t n_end, LinearEpilogue epilogue) noexcept;

/// GELU with std::erf, as the portable path computes it (the AVX-512 path
/// approximates erf within 1.5e-7 plus float rounding; tests compare both
/// with double precision).
float gelu_erf(float v) noexcept;

}  // namespace funnel::detail::bert
