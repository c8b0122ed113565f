// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Encoder: the stage that turns texts into vectors.
///
/// Ownership: factories return std::unique_ptr<Encoder>; a Pipeline holds its
/// encoder as std::shared_ptr<const Encoder>.
///
/// Threading: encode() and every other const method may be called from many
/// threads at once. An implementation spawns no threads beyond the count its
/// own config names, and never changes a process-wide thread count.

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "funnel/matrix.hpp"

namespace funnel {

/// Whether a text is a search query / user text or a document (item) text.
/// Some models (e5, bge) prepend a different instruction to each.
enum class TextRole { document, query };

/// Texts -> L2-normalised float vectors.
class Encoder {
 public:
  virtual ~Encoder() = default;

  /// Dimension of every output vector.
  [[nodiscard]] virtual std::size_t dim() const = 0;

  /// Short description for logs, e.g. "hashing(dim=256)".
  [[nodiscard]] virtual std::string name() const = 0;

  /// Encodes a batch of texts.
  /// @param[in]  texts UTF-8 texts, n of them
  /// @param[out] out   n x dim() row-major, each row of unit L2 norm (a text
  ///                   with no features, such as "", gives a zero row)
  /// @param[in]  role  document (default) or query
  /// @throws Error(invalid_argument) when out is not n x dim(), or when a text
  ///         is not valid UTF-8 (the message names the text's index).
  virtual void encode(std::span<const std::string_view> texts, MatrixView<float> out,
                      TextRole role = TextRole::document) const = 0;

  /// Convenience: encodes texts into a new n x dim() matrix.
  [[nodiscard]] Matrix<float> encode(std::span<const std::string> texts,
                                     TextRole role = TextRole::document) const;
};

}  // namespace funnel
