// SPDX-License-Identifier: Apache-2.0
#pragma once

// The epilogue of a linear layer computed transposed.
//
// BertEncoder's fp32 path reads the projection weights in place from the
// memory-mapped checkpoint ([out, in] row-major). Given as oneDNN matmul's
// right operand (X . W^T), such weights are repacked into oneDNN's blocked
// layout on every call, which costs as much as the product when a call has a
// few dozen tokens. As the left operand (W . X^T) they are read as they lie,
// and only the batch's input is packed; the product then comes out
// transposed, [out, tokens]. This pass writes it back token-major and applies
// what oneDNN's post-ops would have: the bias and then nothing, the erf GELU
// or a residual sum. AVX-512 (16 x 16 tiles transposed in registers) where
// the CPU has it, else a portable loop; the two differ only in erf (the tests
// bound both against double precision).

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

/// GELU with std::erf, as the portable path computes it (the AVX-512 path
/// approximates erf within 1.5e-7 plus float rounding; tests compare both
/// with double precision).
float gelu_erf(float v) noexcept;

}  // namespace funnel::detail::bert
