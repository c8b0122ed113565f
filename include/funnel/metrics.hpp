// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Quality metrics used by the demo, the benchmarks and the trainers.
///
/// Threading: pure functions; safe to call concurrently.

#include <cstddef>
#include <span>
#include <unordered_set>

#include "funnel/item_id.hpp"

namespace funnel {

/// Area under the ROC curve of `scores` against binary `labels` (ties get
/// half credit, as in the Mann-Whitney U statistic). O(n log n).
/// @param[in] scores n scores, higher meaning "more likely positive"
/// @param[in] labels n labels, each 0 or 1
/// @throws Error(invalid_argument) for different lengths, a label other than
///         0 or 1, a NaN score, or when one class is absent.
double auc(std::span<const float> scores, std::span<const int> labels);

/// Fraction of `relevant` that appears in the first k of `ranked`
/// (denominator min(k, |relevant|)); 0 when relevant is empty or k == 0.
/// An id repeated in `ranked` counts once.
double recall_at_k(std::span<const ItemId> ranked, const std::unordered_set<ItemId>& relevant,
                   std::size_t k);

/// NDCG@k with binary relevance: DCG = sum over relevant ids at 0-based
/// position i < k of 1 / log2(i + 2), divided by the ideal DCG of
/// min(k, |relevant|) hits at the top; in [0, 1]. 0 when relevant is empty or
/// k == 0. An id repeated in `ranked` counts once, at its first position.
double ndcg_at_k(std::span<const ItemId> ranked, const std::unordered_set<ItemId>& relevant,
                 std::size_t k);

}  // namespace funnel
