// SPDX-License-Identifier: Apache-2.0
// Tests of search_merged (multi-interest retrieval) against a brute-force
// merge computed here from first principles: every (query, item) score,
// best score per item, best first.

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/error.hpp"
#include "funnel/exact_coarse_ranker.hpp"

using funnel::ExactCoarseRanker;
using funnel::ExactCoarseRankerConfig;
using funnel::ItemId;
using funnel::MatrixView;
using funnel::MergedCandidate;
using funnel::MergeOrder;
using funnel::Metric;

namespace {

struct Data {
  std::size_t dim = 8;
  std::vector<float> items;
  std::vector<ItemId> ids;
  std::vector<float> queries;
};

Data make_data(std::size_t n, std::size_t nq, unsigned seed) {
  Data d;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  d.items.resize(n * d.dim);
  for (float& x : d.items) x = normal(rng);
  d.queries.resize(nq * d.dim);
  for (float& x : d.queries) x = normal(rng);
  for (std::size_t i = 0; i < n; ++i) d.ids.push_back(static_cast<ItemId>(7 * i + 3));
  return d;
}

double score(const Data& d, std::size_t q, std::size_t i, Metric metric) {
  double s = 0;
  for (std::size_t j = 0; j < d.dim; ++j) {
    const double a = d.queries[q * d.dim + j];
    const double b = d.items[i * d.dim + j];
    s += metric == Metric::inner_product ? a * b : (a - b) * (a - b);
  }
  return s;
}

std::unique_ptr<ExactCoarseRanker> index_of(const Data& d, Metric metric) {
  ExactCoarseRankerConfig config;
  config.dim = d.dim;
  config.metric = metric;
  auto index = std::make_unique<ExactCoarseRanker>(config);
  index->add(MatrixView<const float>(d.items.data(), d.ids.size(), d.dim), d.ids);
  return index;
}

}  // namespace

TEST_CASE("search_merged best_distance equals the brute-force union", "[merge]") {
  for (const Metric metric : {Metric::inner_product, Metric::l2}) {
    const Data d = make_data(300, 4, 11);
    const auto index = index_of(d, metric);
    const std::size_t k = 25;
    const std::size_t nq = 4;
    // Reference: each query's exact top k, union with the best score per id.
    std::map<ItemId, std::pair<double, std::size_t>> best;
    const bool higher = metric == Metric::inner_product;
    for (std::size_t q = 0; q < nq; ++q) {
      std::vector<std::pair<double, std::size_t>> all;
      all.reserve(d.ids.size());
      for (std::size_t i = 0; i < d.ids.size(); ++i) all.emplace_back(score(d, q, i, metric), i);
      std::sort(all.begin(), all.end(), [&](const auto& a, const auto& b) {
        return higher ? a.first > b.first : a.first < b.first;
      });
      for (std::size_t r = 0; r < k; ++r) {
        const ItemId id = d.ids[all[r].second];
        const auto it = best.find(id);
        if (it == best.end() ||
            (higher ? all[r].first > it->second.first : all[r].first < it->second.first)) {
          best[id] = {all[r].first, q};
        }
      }
    }
    std::vector<std::pair<double, ItemId>> expected;
    expected.reserve(best.size());
    for (const auto& [id, s] : best) expected.emplace_back(s.first, id);
    std::sort(expected.begin(), expected.end(), [&](const auto& a, const auto& b) {
      return higher ? a.first > b.first : a.first < b.first;
    });
    expected.resize(k);

    const std::vector<MergedCandidate> merged =
        funnel::search_merged(*index, MatrixView<const float>(d.queries.data(), nq, d.dim), k);
    REQUIRE(merged.size() == k);
    std::set<ItemId> seen;
    for (std::size_t r = 0; r < k; ++r) {
      CAPTURE(metric, r);
      CHECK(seen.insert(merged[r].id).second);  // no duplicates
      CHECK(merged[r].id == expected[r].second);
      CHECK(merged[r].distance == Approx(expected[r].first).epsilon(1e-5).margin(1e-5));
      CHECK(merged[r].query == best.at(merged[r].id).second);
    }
  }
}

TEST_CASE("search_merged round_robin gives every interest a share", "[merge]") {
  // Two tight groups of items far apart; one query sits on each group, the
  // first much closer to its group (higher inner products). By distance
  // alone the first interest would fill the whole list.
  const std::size_t dim = 2;
  std::vector<float> items;
  std::vector<ItemId> ids;
  for (int i = 0; i < 10; ++i) {
    items.insert(items.end(), {10.0F + 0.01F * static_cast<float>(i), 0.0F});
    ids.push_back(100 + i);
    items.insert(items.end(), {0.0F, 1.0F + 0.01F * static_cast<float>(i)});
    ids.push_back(200 + i);
  }
  ExactCoarseRankerConfig config;
  config.dim = dim;
  ExactCoarseRanker index(config);
  index.add(MatrixView<const float>(items.data(), ids.size(), dim), ids);
  const std::vector<float> queries = {1.0F, 0.0F, 0.0F, 1.0F};
  const MatrixView<const float> q(queries.data(), 2, dim);

  const auto by_distance = funnel::search_merged(index, q, 6, nullptr, MergeOrder::best_distance);
  REQUIRE(by_distance.size() == 6);
  for (const MergedCandidate& c : by_distance) CHECK(c.id / 100 == 1);

  const auto fair = funnel::search_merged(index, q, 6, nullptr, MergeOrder::round_robin);
  REQUIRE(fair.size() == 6);
  // Alternating: 109 (10.09), 209 (1.09), 108, 208, 107, 207.
  const std::vector<ItemId> expected = {109, 209, 108, 208, 107, 207};
  for (std::size_t r = 0; r < 6; ++r) {
    CHECK(fair[r].id == expected[r]);
    CHECK(fair[r].query == r % 2);
  }
}

TEST_CASE("search_merged deduplicates and returns what exists", "[merge]") {
  // Both queries find the same three items; only three exist.
  const std::size_t dim = 2;
  const std::vector<float> items = {1, 0, 0, 1, 1, 1};
  const std::vector<ItemId> ids = {1, 2, 3};
  ExactCoarseRankerConfig config;
  config.dim = dim;
  ExactCoarseRanker index(config);
  index.add(MatrixView<const float>(items.data(), 3, dim), ids);
  const std::vector<float> queries = {1, 0, 0.9F, 0.1F};
  for (const MergeOrder order : {MergeOrder::best_distance, MergeOrder::round_robin}) {
    const auto merged = funnel::search_merged(
        index, MatrixView<const float>(queries.data(), 2, dim), 10, nullptr, order);
    REQUIRE(merged.size() == 3);
    std::set<ItemId> got;
    for (const auto& c : merged) got.insert(c.id);
    CHECK(got == std::set<ItemId>{1, 2, 3});
    // Item 1 is best for query 0 (1.0 vs 0.9); item 2 for query 1 (0.1 vs 0).
    for (const auto& c : merged) {
      if (c.id == 1) CHECK(c.query == 0);
      if (c.id == 2) CHECK(c.query == 1);
    }
  }
  CHECK_THROWS_AS(funnel::search_merged(index, MatrixView<const float>(queries.data(), 0, dim), 3),
                  funnel::Error);
  CHECK_THROWS_AS(funnel::search_merged(index, MatrixView<const float>(queries.data(), 2, dim), 0),
                  funnel::Error);
}
