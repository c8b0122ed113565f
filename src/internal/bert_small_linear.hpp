// SPDX-License-Identifier: Apache-2.0
#pragma once

// A linear layer for few rows, read from weights in their file layout.
//
// BertEncoder's fp32 path reads the projection weights in place from the
// memory-mapped checkpoint ([out, in] row-major). oneDNN's matmul repacks
// such weights into its blocked layout on every call, which costs as much as
// the product itself when a call has a few dozen tokens. This kernel needs
// no packing: every output is a dot product of an input row with a weight
// row, both contiguous, so it streams the weights once from where they lie.
// It computes blocks of 4 input rows x 4 weight rows in 16 vector
// accumulators along K and reduces the 16 lane-sums together at the end.
// AVX-512 when the CPU has it, else a portable loop; the two differ only in
// the order of the float additions (the tests bound the difference).

#include <cstddef>

#include "internal/bert_kernels.hpp"

namespace funnel::detail::bert {

/// What is done with each output value v = x . w_n + bias_n.
enum class LinearEpilogue {
  store,  ///< out = v
  gelu,   ///< out = v / 2 * (1 + erf(v / sqrt(2)))
  add,    ///< out += v (a residual connection)
};

/// out[m, n] (op)= sum_k x[m, k] * w[n, k] + bias[n] for m < rows and
/// n in [n_begin, n_end): x is rows x k (row stride k), w is n_total x k
/// (row stride k, the [out, in] layout of a checkpoint), out has row stride
/// n_total. Threads split [0, n_total) among themselves by calling this on
/// disjoint column ranges.
void small_linear(KernelIsa isa, const float* x, std::size_t rows, std::size_t k, const float* w,
                  const float* bias, float* out, std::size_t n_total, std::size_t n_begin,
                  std::size_t n_end, LinearEpilogue epilogue) noexcept;

/// GELU with std::erf, as the portable path of small_linear computes it (the
/// AVX-512 path approximates erf within 3e-7; tests compare the two).
float gelu_erf(float v) noexcept;

}  // namespace funnel::detail::bert
