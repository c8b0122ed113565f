// SPDX-License-Identifier: Apache-2.0
#include "funnel/fusion.hpp"

#include <algorithm>
#include <cmath>

#include "internal/error_util.hpp"

namespace funnel {

void FusionConfig::validate() const {
  detail::require(std::isfinite(epsilon) && epsilon > 0.0F,
                  "FusionConfig.epsilon must be finite and > 0, got ", epsilon);
  for (std::size_t i = 0; i < weights.size(); ++i) {
    const auto& [name, weight] = weights[i];
    detail::require(!name.empty(), "FusionConfig.weights[", i, "]: empty objective name");
    detail::require(std::isfinite(weight) && weight >= 0.0F, "FusionConfig.weights: objective '",
                    name, "' has weight ", weight, ", expected a finite value >= 0");
    for (std::size_t j = 0; j < i; ++j) {
      detail::require(weights[j].first != name, "FusionConfig.weights: objective '", name,
                      "' is listed twice");
    }
  }
}

FusionConfig::Kind parse_fusion_kind(std::string_view name) {
  if (name == "weighted_product") return FusionConfig::Kind::weighted_product;
  if (name == "weighted_sum") return FusionConfig::Kind::weighted_sum;
  detail::fail(ErrorCode::invalid_argument, "unknown fusion kind '", name,
               "', expected weighted_product or weighted_sum");
}

std::string_view to_string(FusionConfig::Kind kind) noexcept {
  return kind == FusionConfig::Kind::weighted_sum ? "weighted_sum" : "weighted_product";
}

Fusion::Fusion(FusionConfig config, std::span<const std::string> objectives)
    : config_(std::move(config)),
      objectives_(objectives.begin(), objectives.end()),
      column_weights_(objectives.size(), 0.0F) {
  config_.validate();
  for (const auto& [name, weight] : config_.weights) {
    const auto it = std::find(objectives_.begin(), objectives_.end(), name);
    if (it == objectives_.end()) {
      std::string known;
      for (const std::string& objective : objectives_) {
        known += known.empty() ? objective : ", " + objective;
      }
      detail::fail(ErrorCode::invalid_argument, "Fusion: objective '", name,
                   "' is not scored by the fine ranker (it scores: ", known, ")");
    }
    column_weights_[static_cast<std::size_t>(it - objectives_.begin())] = weight;
  }
}

void Fusion::fuse(MatrixView<const float> scores, std::span<float> fused) const {
  detail::require(scores.cols == objectives_.size(), "Fusion::fuse: scores have ", scores.cols,
                  " columns, expected ", objectives_.size(), " (one per objective)");
  detail::require(fused.size() == scores.rows, "Fusion::fuse: output has ", fused.size(),
                  " values, expected ", scores.rows);
  const bool product = config_.kind == FusionConfig::Kind::weighted_product;
  const double epsilon = config_.epsilon;
  for (std::size_t i = 0; i < scores.rows; ++i) {
    double total = 0.0;  // log of the product, or the sum
    for (std::size_t j = 0; j < scores.cols; ++j) {
      const double weight = column_weights_[j];
      if (weight == 0.0) continue;
      const double s = scores(i, j);
      if (!std::isfinite(s) || (product && s < 0.0)) {
        detail::fail(ErrorCode::invalid_argument, "Fusion::fuse: row ", i, ", objective '",
                     objectives_[j], "': score ", s, " is ",
                     product ? "not a finite value >= 0" : "not finite");
      }
      total += product ? weight * std::log(s + epsilon) : weight * s;
    }
    fused[i] = static_cast<float>(product ? std::exp(total) : total);
  }
}

}  // namespace funnel
