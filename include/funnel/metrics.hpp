// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Quality metrics used by the demo, the benchmarks and the trainers.

#include <cstddef>
#include <span>
#include <unordered_set>

#include "funnel/item_id.hpp"

namespace funnel {

/// Area under the ROC curve of `scores` against binary `labels` (ties get
/// half credit, as in the Mann-Whitney U statistic).
/// @throws Error(invalid_argument) for different lengths or when one class is absent.
double auc(std::span<const float> scores, std::span<const int> labels);

/// Fraction of `relevant` that appears in the first k of `ranked`
/// (denominator min(k, |relevant|)); 0 when relevant is empty.
double recall_at_k(std::span<const ItemId> ranked, const std::unordered_set<ItemId>& relevant,
                   std::size_t k);

/// NDCG@k with binary relevance; 0 when relevant is empty.
double ndcg_at_k(std::span<const ItemId> ranked, const std::unordered_set<ItemId>& relevant,
                 std::size_t k);

}  // namespace funnel
