// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Fusion of per-objective scores into one ranking score.
///
/// weighted_product (the default): score = prod_i (s_i + epsilon)^w_i,
///   computed as exp(sum_i w_i log(s_i + epsilon)) in double precision.
///   Ranking by it is invariant to rescaling any single objective (up to the
///   small epsilon), so probabilities and seconds can be mixed without
///   normalisation. Scores must be finite and >= 0.
/// weighted_sum: score = sum_i w_i * s_i (scores must be finite).
/// Objectives not named in `weights` get weight 0 (ignored).
///
/// Threading: a Fusion is immutable after construction; fuse() may run
/// concurrently.

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "funnel/matrix.hpp"

namespace funnel {

/// Settings of a Fusion.
struct FusionConfig {
  enum class Kind { weighted_product, weighted_sum };
  Kind kind = Kind::weighted_product;
  /// (objective name, weight) pairs. Default: ctr 1, cvr 1, dwell 0.5.
  std::vector<std::pair<std::string, float>> weights = {
      {"ctr", 1.0F}, {"cvr", 1.0F}, {"dwell", 0.5F}};
  /// Added to each score before the product, so that a zero score does not
  /// erase every other objective.
  float epsilon = 1e-6F;

  /// @throws Error(invalid_argument) for non-finite or negative weights,
  ///         empty or duplicate names, or a non-positive or non-finite
  ///         epsilon; the message names the objective or field.
  void validate() const;
};

/// Parses "weighted_product" / "weighted_sum". @throws Error(invalid_argument).
FusionConfig::Kind parse_fusion_kind(std::string_view name);
/// "weighted_product" / "weighted_sum".
std::string_view to_string(FusionConfig::Kind kind) noexcept;

/// Fuses objective scores into one score per candidate.
class Fusion {
 public:
  /// Binds a config to the objective column order of a FineRanker.
  /// @throws Error(invalid_argument) when the config is invalid or names an
  ///         objective that is not among `objectives`.
  Fusion(FusionConfig config, std::span<const std::string> objectives);

  /// @param[in]  scores nc x objectives.size()
  /// @param[out] fused  nc values
  /// @throws Error(invalid_argument) for mismatched shapes, or a score of a
  ///         weighted objective that is not finite (or negative, for the
  ///         product); the message names the row and the objective.
  void fuse(MatrixView<const float> scores, std::span<float> fused) const;

  [[nodiscard]] const FusionConfig& config() const noexcept { return config_; }

 private:
  FusionConfig config_;
  std::vector<std::string> objectives_;  // column names, for messages
  std::vector<float> column_weights_;    // one per objective column
};

}  // namespace funnel
