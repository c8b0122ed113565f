// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Fusion of per-objective scores into one ranking score.
///
/// weighted_product (the default): score = prod_i (s_i + epsilon)^w_i.
///   Ranking by it is invariant to rescaling any single objective, so
///   probabilities and seconds can be mixed without normalisation.
/// weighted_sum: score = sum_i w_i * s_i.
/// Objectives not named in `weights` get weight 0 (ignored).
///
/// Threading: a Fusion is immutable after construction; fuse() may run
/// concurrently.

#include <cstddef>
#include <span>
#include <string>
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
  ///         duplicate names, or a non-positive epsilon.
  void validate() const;
};

/// Parses "weighted_product" / "weighted_sum". @throws Error(invalid_argument).
FusionConfig::Kind parse_fusion_kind(std::string_view name);

/// Fuses objective scores into one score per candidate.
class Fusion {
 public:
  /// Binds a config to the objective column order of a FineRanker.
  /// @throws Error(invalid_argument) when the config is invalid or names an
  ///         objective that is not among `objectives`.
  Fusion(FusionConfig config, std::span<const std::string> objectives);

  /// @param[in]  scores nc x objectives.size()
  /// @param[out] fused  nc values
  void fuse(MatrixView<const float> scores, std::span<float> fused) const;

  [[nodiscard]] const FusionConfig& config() const noexcept { return config_; }

 private:
  FusionConfig config_;
  std::vector<float> column_weights_;  // one per objective column
};

}  // namespace funnel
