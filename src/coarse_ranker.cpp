// SPDX-License-Identifier: Apache-2.0
#include "funnel/coarse_ranker.hpp"

#include <algorithm>
#include <unordered_map>

#include "internal/error_util.hpp"

namespace funnel {

std::string_view to_string(Metric metric) noexcept {
  switch (metric) {
    case Metric::inner_product: return "inner_product";
    case Metric::l2: return "l2";
  }
  return "unknown";
}

std::vector<MergedCandidate> search_merged(const CoarseRanker& ranker,
                                           MatrixView<const float> queries, std::size_t k,
                                           const SearchParams* params, MergeOrder order) {
  detail::require(queries.rows > 0, "search_merged: no query vectors");
  detail::require(k > 0, "search_merged: k must be > 0");
  const std::size_t nq = queries.rows;
  Matrix<float> distances(nq, k);
  Matrix<ItemId> labels(nq, k);
  ranker.search(queries, k, distances.view(), labels.view(), params);

  const bool higher = ranker.metric() == Metric::inner_product;
  // Better distance first, then smaller id, then smaller query index: a
  // total order, so the merged list never depends on hash-map iteration.
  const auto better = [higher](const MergedCandidate& a, const MergedCandidate& b) {
    if (a.distance != b.distance) return higher ? a.distance > b.distance : a.distance < b.distance;
    if (a.id != b.id) return a.id < b.id;
    return a.query < b.query;
  };

  std::vector<MergedCandidate> merged;
  if (order == MergeOrder::best_distance) {
    // Keep each id's best appearance, then cut the union to k.
    std::unordered_map<ItemId, std::size_t> slot;
    slot.reserve(nq * k);
    for (std::size_t q = 0; q < nq; ++q) {
      for (std::size_t j = 0; j < k; ++j) {
        const ItemId id = labels(q, j);
        if (id == kNoItem) break;  // padding ends a row
        const MergedCandidate c{id, distances(q, j), q};
        const auto [it, inserted] = slot.try_emplace(id, merged.size());
        if (inserted) {
          merged.push_back(c);
        } else if (better(c, merged[it->second])) {
          merged[it->second] = c;
        }
      }
    }
    const std::size_t keep = std::min(k, merged.size());
    std::partial_sort(merged.begin(), merged.begin() + static_cast<std::ptrdiff_t>(keep),
                      merged.end(), better);
    merged.resize(keep);
    return merged;
  }

  // Round robin: take each query's next unseen result in turn. An id that
  // a later query also found keeps the distance of the query that took it;
  // its best distance over all queries is then recorded.
  std::unordered_map<ItemId, std::size_t> slot;
  slot.reserve(std::min(nq * k, 2 * k));
  std::vector<std::size_t> next(nq, 0);
  bool progressed = true;
  while (merged.size() < k && progressed) {
    progressed = false;
    for (std::size_t q = 0; q < nq && merged.size() < k; ++q) {
      while (next[q] < k && labels(q, next[q]) != kNoItem) {
        const std::size_t j = next[q]++;
        const ItemId id = labels(q, j);
        if (slot.try_emplace(id, merged.size()).second) {
          merged.push_back({id, distances(q, j), q});
          progressed = true;
          break;
        }
      }
    }
  }
  // Record, for each taken id, its best distance over all queries.
  for (std::size_t q = 0; q < nq; ++q) {
    for (std::size_t j = 0; j < k && labels(q, j) != kNoItem; ++j) {
      const auto it = slot.find(labels(q, j));
      if (it == slot.end()) continue;
      const MergedCandidate c{labels(q, j), distances(q, j), q};
      if (better(c, merged[it->second])) merged[it->second] = c;
    }
  }
  return merged;
}

}  // namespace funnel
