// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// HashingEncoder: a weight-free, deterministic multilingual text encoder.
///
/// Text is normalised (Unicode case folding and compatibility decomposition),
/// split into runs of CJK characters and runs of other letters/digits. CJK
/// runs contribute character n-grams; Latin-script (and other non-CJK)
/// runs contribute word n-grams and character n-grams of each word with
/// boundary markers. Each feature is hashed (64-bit, seeded) to a bucket in
/// [0, dim) and a sign, accumulated with its weight, and the vector is
/// L2-normalised. Texts sharing many n-grams therefore come out close.
///
/// Threading: immutable after construction; encode() may run concurrently and
/// spawns no threads.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "funnel/encoder.hpp"

namespace funnel {

/// Settings of a HashingEncoder (defaults give a good general encoder).
struct HashingEncoderConfig {
  std::size_t dim = 256;
  std::uint64_t seed = 0x66756e6e656cULL;
  std::size_t cjk_min_n = 1, cjk_max_n = 3;    ///< CJK character n-gram sizes
  std::size_t word_min_n = 1, word_max_n = 2;  ///< word n-gram sizes
  std::size_t char_min_n = 3, char_max_n = 5;  ///< within-word character n-gram sizes (0 disables)
  float cjk_weight = 1.0F;
  float word_weight = 1.0F;
  float char_weight = 0.5F;
  /// Multiplies feature counts by log(1 + count) instead of count (sublinear tf).
  bool sublinear_tf = true;

  /// @throws Error(invalid_argument) naming the bad field.
  void validate() const;
};

class HashingEncoder final : public Encoder {
 public:
  explicit HashingEncoder(HashingEncoderConfig config = {});

  [[nodiscard]] std::size_t dim() const override { return config_.dim; }
  [[nodiscard]] std::string name() const override;
  void encode(std::span<const std::string_view> texts, MatrixView<float> out,
              TextRole role = TextRole::document) const override;
  using Encoder::encode;

  [[nodiscard]] const HashingEncoderConfig& config() const noexcept { return config_; }

 private:
  HashingEncoderConfig config_;
};

}  // namespace funnel
