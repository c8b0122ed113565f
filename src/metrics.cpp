// SPDX-License-Identifier: Apache-2.0
#include "funnel/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "internal/error_util.hpp"

namespace funnel {

double auc(std::span<const float> scores, std::span<const int> labels) {
  detail::require(scores.size() == labels.size(), "auc: ", scores.size(), " scores but ",
                  labels.size(), " labels");
  std::size_t positives = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    detail::require(labels[i] == 0 || labels[i] == 1, "auc: label ", i, " is ", labels[i],
                    ", expected 0 or 1");
    detail::require(!std::isnan(scores[i]), "auc: score ", i, " is NaN");
    positives += static_cast<std::size_t>(labels[i]);
  }
  const std::size_t negatives = labels.size() - positives;
  detail::require(positives > 0 && negatives > 0, "auc: needs both classes, got ", positives,
                  " positive and ", negatives, " negative labels");

  // Mann-Whitney U from the rank sum of the positives; tied scores share
  // their average rank, which gives each tied (positive, negative) pair half
  // credit.
  std::vector<std::size_t> order(scores.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  double positive_rank_sum = 0.0;
  for (std::size_t begin = 0; begin < order.size();) {
    std::size_t end = begin + 1;
    while (end < order.size() && scores[order[end]] == scores[order[begin]]) ++end;
    // 1-based ranks begin+1 .. end share their mean.
    const double average_rank = 0.5 * static_cast<double>(begin + 1 + end);
    for (std::size_t i = begin; i < end; ++i) {
      if (labels[order[i]] == 1) positive_rank_sum += average_rank;
    }
    begin = end;
  }
  const auto p = static_cast<double>(positives);
  const auto n = static_cast<double>(negatives);
  return (positive_rank_sum - p * (p + 1.0) / 2.0) / (p * n);
}

namespace {

// Positions (0-based, < k) of the first occurrence of each relevant item.
template <class Fn>
void for_each_hit(std::span<const ItemId> ranked, const std::unordered_set<ItemId>& relevant,
                  std::size_t k, Fn&& on_hit) {
  const std::size_t depth = std::min(k, ranked.size());
  for (std::size_t i = 0; i < depth; ++i) {
    if (relevant.count(ranked[i]) == 0) continue;
    // A repeated id is credited once, at its first position.
    if (std::find(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(i), ranked[i]) !=
        ranked.begin() + static_cast<std::ptrdiff_t>(i)) {
      continue;
    }
    on_hit(i);
  }
}

}  // namespace

double recall_at_k(std::span<const ItemId> ranked, const std::unordered_set<ItemId>& relevant,
                   std::size_t k) {
  const std::size_t denominator = std::min(k, relevant.size());
  if (denominator == 0) return 0.0;
  std::size_t hits = 0;
  for_each_hit(ranked, relevant, k, [&](std::size_t /*position*/) { ++hits; });
  return static_cast<double>(hits) / static_cast<double>(denominator);
}

double ndcg_at_k(std::span<const ItemId> ranked, const std::unordered_set<ItemId>& relevant,
                 std::size_t k) {
  const std::size_t ideal_hits = std::min(k, relevant.size());
  if (ideal_hits == 0) return 0.0;
  double dcg = 0.0;
  for_each_hit(ranked, relevant, k, [&](std::size_t position) {
    dcg += 1.0 / std::log2(static_cast<double>(position) + 2.0);
  });
  double ideal = 0.0;
  for (std::size_t i = 0; i < ideal_hits; ++i) {
    ideal += 1.0 / std::log2(static_cast<double>(i) + 2.0);
  }
  return dcg / ideal;
}

}  // namespace funnel
