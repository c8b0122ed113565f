// SPDX-License-Identifier: Apache-2.0
// Tests of ExactCoarseRanker against an independent double-precision brute
// force and against FAISS's own exact search, plus filters, mutation, bad
// input, files and threads.

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <limits>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <catch2/catch.hpp>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/index_io.h>
#include <nlohmann/json.hpp>

#include "funnel/error.hpp"
#include "funnel/exact_coarse_ranker.hpp"
#include "internal/checksum.hpp"
#include "test_util.hpp"

using Catch::Matchers::Contains;
using funnel::ErrorCode;
using funnel::ExactCoarseRanker;
using funnel::ExactCoarseRankerConfig;
using funnel::ExactKernel;
using funnel::ItemId;
using funnel::kNoItem;
using funnel::MatrixView;
using funnel::Metric;

// FAISS 1.7.3's read_index leaks the partly built index when parsing fails
// half-way (that path has no RAII); the test that feeds FAISS such a file on
// purpose would otherwise fail under LeakSanitizer. Only FAISS's own
// allocations are suppressed; the hook is unused outside sanitizer builds.
// NOLINTNEXTLINE(bugprone-reserved-identifier,readability-identifier-naming)
extern "C" const char* __lsan_default_suppressions();
// NOLINTNEXTLINE(bugprone-reserved-identifier,readability-identifier-naming)
extern "C" const char* __lsan_default_suppressions() { return "leak:faiss::read_index\n"; }

namespace {

std::vector<float> random_vectors(std::size_t rows, std::size_t dim, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  std::vector<float> v(rows * dim);
  for (float& x : v) x = normal(rng);
  return v;
}

// Distinct, scattered ids so that a row index is never mistaken for an id.
std::vector<ItemId> scattered_ids(std::size_t n, ItemId first = 1000) {
  std::vector<ItemId> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = first + static_cast<ItemId>(7 * i);
  return ids;
}

struct Result {
  std::vector<float> distances;
  std::vector<ItemId> labels;
  std::size_t returned = 0;
  std::size_t k = 0;
  [[nodiscard]] float distance(std::size_t q, std::size_t j) const { return distances[q * k + j]; }
  [[nodiscard]] ItemId label(std::size_t q, std::size_t j) const { return labels[q * k + j]; }
};

Result run_search(const ExactCoarseRanker& ranker, const std::vector<float>& queries, std::size_t k,
                  const funnel::IdFilter* filter = nullptr) {
  const std::size_t nq = queries.size() / ranker.dim();
  Result r;
  r.k = k;
  r.distances.assign(nq * k, 0.0F);
  r.labels.assign(nq * k, 0);
  funnel::SearchParams params;
  params.filter = filter;
  r.returned = ranker.search(MatrixView<const float>(queries.data(), nq, ranker.dim()), k,
                             MatrixView<float>(r.distances.data(), nq, k),
                             MatrixView<ItemId>(r.labels.data(), nq, k), &params);
  return r;
}

// The independent reference: every eligible item's distance in double
// precision, ranked best first (smaller id first on exact ties).
struct Reference {
  std::vector<std::pair<double, ItemId>> ranked;
  std::unordered_map<ItemId, double> distance_of;
};

std::vector<Reference> brute_force(const std::vector<float>& base, const std::vector<ItemId>& ids,
                                   const std::vector<float>& queries, std::size_t dim,
                                   Metric metric, const std::function<bool(ItemId)>& eligible) {
  const std::size_t n = ids.size();
  const std::size_t nq = queries.size() / dim;
  std::vector<Reference> refs(nq);
  for (std::size_t q = 0; q < nq; ++q) {
    for (std::size_t i = 0; i < n; ++i) {
      if (!eligible(ids[i])) continue;
      double acc = 0.0;
      for (std::size_t c = 0; c < dim; ++c) {
        const double a = queries[q * dim + c];
        const double b = base[i * dim + c];
        acc += metric == Metric::l2 ? (a - b) * (a - b) : a * b;
      }
      refs[q].ranked.emplace_back(acc, ids[i]);
      refs[q].distance_of[ids[i]] = acc;
    }
    std::sort(refs[q].ranked.begin(), refs[q].ranked.end(), [metric](const auto& x, const auto& y) {
      if (x.first != y.first) return metric == Metric::l2 ? x.first < y.first : x.first > y.first;
      return x.second < y.second;
    });
  }
  return refs;
}

// Float rounding may swap items whose true distances differ by less than
// this; any wider disagreement is a bug.
double tie_tolerance(double distance) { return 5e-6 * (1.0 + std::abs(distance)); }

float pad_of(Metric metric) {
  return metric == Metric::l2 ? std::numeric_limits<float>::infinity()
                              : -std::numeric_limits<float>::infinity();
}

// Checks a result against the reference: the j-th returned item has the
// j-th best true distance (up to ties), its reported distance is within
// 1e-4 relative of the true one, items are distinct and eligible, and rows
// with fewer eligible items than k are padded.
void check_against(const Result& got, const std::vector<Reference>& refs, Metric metric) {
  std::size_t fewest = got.k;
  std::size_t exact_positions = 0;
  std::size_t positions = 0;
  for (std::size_t q = 0; q < refs.size(); ++q) {
    const Reference& ref = refs[q];
    const std::size_t expected_count = std::min(got.k, ref.ranked.size());
    fewest = std::min(fewest, expected_count);
    std::unordered_set<ItemId> seen;
    for (std::size_t j = 0; j < got.k; ++j) {
      const ItemId id = got.label(q, j);
      const float d = got.distance(q, j);
      if (j >= expected_count) {
        INFO("query " << q << " position " << j << " must be padding");
        CHECK(id == kNoItem);
        CHECK(d == pad_of(metric));
        continue;
      }
      INFO("query " << q << " position " << j << " id " << id);
      REQUIRE(ref.distance_of.contains(id));  // a stored, eligible item
      REQUIRE(seen.insert(id).second);        // not returned twice
      const double truth = ref.distance_of.at(id);
      CHECK(std::abs(truth - ref.ranked[j].first) <= tie_tolerance(ref.ranked[j].first));
      CHECK(std::abs(static_cast<double>(d) - truth) <= 1e-4 * std::max(1.0, std::abs(truth)));
      if (id == ref.ranked[j].second) ++exact_positions;
      ++positions;
    }
  }
  CHECK(got.returned == fewest);
  // Swaps are confined to float-level ties, which random data almost never has.
  CHECK(exact_positions + positions / 100 >= positions);
}

// Two result lists agree when they differ only where distances tie.
void check_same_up_to_ties(const std::vector<ItemId>& a_ids, const std::vector<float>& a_d,
                           const std::vector<ItemId>& b_ids, const std::vector<float>& b_d,
                           std::size_t k) {
  const std::size_t nq = a_ids.size() / k;
  for (std::size_t q = 0; q < nq; ++q) {
    const std::unordered_set<ItemId> b_set(
        b_ids.begin() + static_cast<std::ptrdiff_t>(q * k),
        b_ids.begin() + static_cast<std::ptrdiff_t>((q + 1) * k));
    const float b_last = b_d[q * k + k - 1];
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t at = q * k + j;
      INFO("query " << q << " position " << j << ": " << a_ids[at] << " vs " << b_ids[at]);
      CHECK(std::abs(a_d[at] - b_d[at]) <= 1e-4 * std::max(1.0F, std::abs(b_d[at])));
      if (a_ids[at] != b_ids[at]) {
        CHECK(std::abs(a_d[at] - b_d[at]) <= tie_tolerance(b_d[at]));
        if (!b_set.contains(a_ids[at])) {
          CHECK(std::abs(a_d[at] - b_last) <= tie_tolerance(b_last));  // boundary tie
        }
      }
    }
  }
}

ExactCoarseRanker make_ranker(std::size_t dim, Metric metric, int threads = 1,
                              ExactKernel kernel = ExactKernel::automatic) {
  ExactCoarseRankerConfig config;
  config.dim = dim;
  config.metric = metric;
  config.threads = threads;
  config.kernel = kernel;
  return ExactCoarseRanker(config);
}

// Every kernel is checked where the CPU has it; the others are reported.
bool skip_unsupported(ExactKernel kernel) {
  if (ExactCoarseRanker::kernel_supported(kernel)) return false;
  WARN("kernel " << funnel::to_string(kernel) << " is not supported on this CPU; not tested");
  return true;
}

void add_all(ExactCoarseRanker& ranker, const std::vector<float>& base,
             const std::vector<ItemId>& ids) {
  ranker.add(MatrixView<const float>(base.data(), ids.size(), ranker.dim()), ids);
}

ErrorCode code_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const funnel::Error& e) {
    return e.code();
  }
  FAIL("expected a funnel::Error");
  return ErrorCode::internal;
}

std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const funnel::Error& e) {
    return e.what();
  }
  FAIL("expected a funnel::Error");
  return {};
}

constexpr std::size_t kDim = 24;
constexpr std::size_t kBase = 3000;
constexpr std::size_t kQueries = 40;

}  // namespace

TEST_CASE("exact search equals a double-precision brute force", "[exact]") {
  const auto kernel = GENERATE(ExactKernel::portable, ExactKernel::avx2, ExactKernel::avx512);
  if (skip_unsupported(kernel)) return;
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  // 21 is not a multiple of any vector width, so the kernels' tails run.
  const std::size_t dim = GENERATE(std::size_t{kDim}, std::size_t{21});
  CAPTURE(funnel::to_string(kernel), funnel::to_string(metric), dim);
  const auto base = random_vectors(kBase, dim, 1);
  const auto ids = scattered_ids(kBase);
  auto ranker = make_ranker(dim, metric, 1, kernel);
  CHECK(ranker.kernel() == kernel);
  add_all(ranker, base, ids);
  REQUIRE(ranker.size() == kBase);

  // 1 and 3 queries use the SIMD kernels' dot-product form, 7 their narrow
  // chunks, 40 the wide ones.
  for (const std::size_t nq : {std::size_t{1}, std::size_t{3}, std::size_t{7}, kQueries}) {
    const auto queries = random_vectors(nq, dim, 2);
    const auto reference =
        brute_force(base, ids, queries, dim, metric, [](ItemId) { return true; });
    for (const std::size_t k : {std::size_t{1}, std::size_t{10}, std::size_t{100}}) {
      CAPTURE(nq, k);
      const Result got = run_search(ranker, queries, k);
      CHECK(got.returned == k);
      check_against(got, reference, metric);
      if (metric == Metric::l2) {
        for (const float d : got.distances) CHECK(d >= 0.0F);
      }
    }
  }
}

TEST_CASE("kernels are chosen at run time and named", "[exact]") {
  CHECK(ExactCoarseRanker::kernel_supported(ExactKernel::portable));
  CHECK(make_ranker(4, Metric::l2).kernel() != ExactKernel::automatic);
  CHECK(funnel::to_string(ExactKernel::avx512) == "avx512");
  CHECK(funnel::to_string(ExactKernel::portable) == "portable");
  for (const ExactKernel kernel : {ExactKernel::avx2, ExactKernel::avx512}) {
    if (!ExactCoarseRanker::kernel_supported(kernel)) {
      CHECK(code_of([&] { make_ranker(4, Metric::l2, 1, kernel); }) == ErrorCode::unsupported);
    }
  }
}

TEST_CASE("exact search agrees with FAISS IndexFlat", "[exact][faiss]") {
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(funnel::to_string(metric));
  const std::size_t k = 50;
  const auto base = random_vectors(kBase, kDim, 3);
  const auto ids = scattered_ids(kBase);
  const auto queries = random_vectors(kQueries, kDim, 4);
  auto ranker = make_ranker(kDim, metric);
  add_all(ranker, base, ids);
  const Result got = run_search(ranker, queries, k);

  std::unique_ptr<faiss::IndexFlat> flat;
  if (metric == Metric::l2) {
    flat = std::make_unique<faiss::IndexFlatL2>(kDim);
  } else {
    flat = std::make_unique<faiss::IndexFlatIP>(kDim);
  }
  flat->add(kBase, base.data());
  std::vector<float> faiss_d(kQueries * k);
  std::vector<faiss::Index::idx_t> faiss_rows(kQueries * k);
  flat->search(kQueries, queries.data(), k, faiss_d.data(), faiss_rows.data());
  std::vector<ItemId> faiss_ids(faiss_rows.size());
  for (std::size_t i = 0; i < faiss_rows.size(); ++i) {
    REQUIRE(faiss_rows[i] >= 0);
    faiss_ids[i] = ids[static_cast<std::size_t>(faiss_rows[i])];
  }
  std::size_t same = 0;
  for (std::size_t i = 0; i < faiss_ids.size(); ++i) same += faiss_ids[i] == got.labels[i];
  CHECK(same + faiss_ids.size() / 100 >= faiss_ids.size());
  check_same_up_to_ties(got.labels, got.distances, faiss_ids, faiss_d, k);
}

TEST_CASE("equal distances are ordered by ascending id", "[exact]") {
  const auto kernel = GENERATE(ExactKernel::portable, ExactKernel::avx2, ExactKernel::avx512);
  if (skip_unsupported(kernel)) return;
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(funnel::to_string(kernel), funnel::to_string(metric));
  auto ranker = make_ranker(3, metric, 1, kernel);
  // Five copies of one vector under shuffled ids, and one far away.
  const std::vector<float> base = {1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, -9, -9, -9};
  const std::vector<ItemId> ids = {50, 10, 40, 20, 30, 60};
  add_all(ranker, base, ids);
  const std::vector<float> query = {1, 2, 3};
  const Result got = run_search(ranker, query, 6);
  CHECK(got.labels == std::vector<ItemId>{10, 20, 30, 40, 50, 60});
  for (std::size_t j = 0; j < 5; ++j) CHECK(got.distances[j] == got.distances[0]);
  if (metric == Metric::l2) {
    CHECK(got.distances[0] == 0.0F);  // exact match, clamped at zero
  } else {
    CHECK(got.distances[0] == 14.0F);
  }
  // With a full heap, a tied item with a smaller id still displaces the
  // worst kept one (ids 50 and 40 come before 10, 20 and 30 in the rows).
  CHECK(run_search(ranker, query, 3).labels == std::vector<ItemId>{10, 20, 30});
  // Removing and re-adding (which moves rows around) keeps the same order.
  REQUIRE(ranker.remove(std::vector<ItemId>{10, 40}).removed == 2);
  ranker.add(MatrixView<const float>(base.data(), 2, 3), std::vector<ItemId>{40, 10});
  CHECK(run_search(ranker, query, 6).labels == got.labels);
  CHECK(run_search(ranker, query, 2).labels == std::vector<ItemId>{10, 20});
}

TEST_CASE("L2 distances of stored vectors to themselves are zero, never negative", "[exact]") {
  const auto kernel = GENERATE(ExactKernel::portable, ExactKernel::avx2, ExactKernel::avx512);
  if (skip_unsupported(kernel)) return;
  CAPTURE(funnel::to_string(kernel));
  // |q|^2 + |x|^2 - 2 q.x rounds to tiny negative values for q == x unless
  // clamped; scaled values make the rounding larger.
  auto base = random_vectors(300, kDim, 50);
  for (float& x : base) x *= 37.0F;
  const auto ids = scattered_ids(300);
  auto ranker = make_ranker(kDim, Metric::l2, 1, kernel);
  add_all(ranker, base, ids);
  const Result got = run_search(ranker, base, 1);
  for (std::size_t q = 0; q < 300; ++q) {
    CHECK(got.labels[q] == ids[q]);
    CHECK(got.distances[q] >= 0.0F);
    CHECK(got.distances[q] <= 1.0F);  // vs typical distances of 2 * 24 * 37^2
  }
}

TEST_CASE("filters are applied during the scan", "[exact][filter]") {
  const auto kernel = GENERATE(ExactKernel::portable, ExactKernel::avx2, ExactKernel::avx512);
  if (skip_unsupported(kernel)) return;
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(funnel::to_string(kernel), funnel::to_string(metric));
  const auto base = random_vectors(kBase, kDim, 5);
  const auto ids = scattered_ids(kBase);
  const auto queries = random_vectors(kQueries, kDim, 6);
  auto ranker = make_ranker(kDim, metric, 1, kernel);
  add_all(ranker, base, ids);
  const std::size_t k = 20;

  std::vector<ItemId> allowed;
  std::vector<ItemId> denied;
  for (std::size_t i = 0; i < kBase; ++i) {
    if (i % 13 == 0) allowed.push_back(ids[i]);
    if (i % 3 != 0) denied.push_back(ids[i]);
  }
  const std::unordered_set<ItemId> allowed_set(allowed.begin(), allowed.end());
  const std::unordered_set<ItemId> denied_set(denied.begin(), denied.end());
  const funnel::AllowListFilter allow(allowed);
  const funnel::DenyListFilter deny(denied);
  const funnel::PredicateFilter even([](ItemId id) { return id % 2 == 0; });
  const funnel::AllOfFilter even_and_not_denied({&even, &deny});

  SECTION("allow list") {
    check_against(run_search(ranker, queries, k, &allow),
                  brute_force(base, ids, queries, kDim, metric,
                              [&](ItemId id) { return allowed_set.contains(id); }),
                  metric);
  }
  SECTION("deny list") {
    check_against(run_search(ranker, queries, k, &deny),
                  brute_force(base, ids, queries, kDim, metric,
                              [&](ItemId id) { return !denied_set.contains(id); }),
                  metric);
  }
  SECTION("predicate") {
    check_against(
        run_search(ranker, queries, k, &even),
        brute_force(base, ids, queries, kDim, metric, [](ItemId id) { return id % 2 == 0; }),
        metric);
  }
  SECTION("all of") {
    check_against(run_search(ranker, queries, k, &even_and_not_denied),
                  brute_force(base, ids, queries, kDim, metric,
                              [&](ItemId id) { return id % 2 == 0 && !denied_set.contains(id); }),
                  metric);
  }
  SECTION("the worst items are found when only they are eligible") {
    // An implementation that over-fetches and filters afterwards misses these.
    const auto all = brute_force(base, ids, queries, kDim, metric, [](ItemId) { return true; });
    std::vector<ItemId> worst;
    for (std::size_t j = kBase - 10; j < kBase; ++j) worst.push_back(all[0].ranked[j].second);
    const funnel::AllowListFilter only_worst(worst);
    const std::vector<float> query0(queries.begin(), queries.begin() + kDim);
    const Result got = run_search(ranker, query0, 10, &only_worst);
    CHECK(got.returned == 10);
    for (std::size_t j = 0; j < 10; ++j) CHECK(got.labels[j] == worst[j]);
  }
  SECTION("fewer eligible items than k gives padding") {
    const std::vector<ItemId> five(allowed.begin(), allowed.begin() + 5);
    const funnel::AllowListFilter only_five(five);
    const Result got = run_search(ranker, queries, k, &only_five);
    CHECK(got.returned == 5);
    const std::unordered_set<ItemId> five_set(five.begin(), five.end());
    check_against(got,
                  brute_force(base, ids, queries, kDim, metric,
                              [&](ItemId id) { return five_set.contains(id); }),
                  metric);
    for (std::size_t q = 0; q < kQueries; ++q) {
      CHECK(got.label(q, k - 1) == kNoItem);
      CHECK(got.distance(q, k - 1) == pad_of(metric));
    }
  }
  SECTION("a filter that rejects everything returns only padding") {
    const funnel::PredicateFilter none([](ItemId) { return false; });
    const Result got = run_search(ranker, queries, k, &none);
    CHECK(got.returned == 0);
    for (const ItemId id : got.labels) CHECK(id == kNoItem);
    for (const float d : got.distances) CHECK(d == pad_of(metric));
  }
}

TEST_CASE("an empty index returns padding", "[exact]") {
  const auto ranker = make_ranker(4, Metric::l2);
  const Result got = run_search(ranker, std::vector<float>(8, 1.0F), 3);
  CHECK(got.returned == 0);
  CHECK(got.labels == std::vector<ItemId>(6, kNoItem));
  CHECK(got.distances == std::vector<float>(6, std::numeric_limits<float>::infinity()));
  CHECK(ranker.name() == "exact(l2, dim=4)");
  CHECK(make_ranker(8, Metric::inner_product).name() == "exact(ip, dim=8)");
}

TEST_CASE("add and remove keep results exact", "[exact][mutation]") {
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(funnel::to_string(metric));
  const std::size_t n = 600;
  auto base = random_vectors(n, kDim, 7);
  auto ids = scattered_ids(n);
  auto ranker = make_ranker(kDim, metric);
  add_all(ranker, base, ids);

  // Remove every third item (and some ids that were never there).
  std::vector<ItemId> to_remove;
  for (std::size_t i = 0; i < n; i += 3) to_remove.push_back(ids[i]);
  to_remove.push_back(5);       // never added
  to_remove.push_back(ids[0]);  // listed twice: the second time it is unknown
  const funnel::RemoveReport report = ranker.remove(to_remove);
  CHECK(report.removed == n / 3);
  CHECK(report.unknown_ids == std::vector<ItemId>{5, ids[0]});
  CHECK(ranker.size() == n - n / 3);

  // Re-add half of the removed ids with new vectors, and some new ids.
  const std::size_t readd = 100;
  const auto new_vectors = random_vectors(readd + 50, kDim, 8);
  std::vector<ItemId> new_ids;
  for (std::size_t i = 0; i < readd; ++i) new_ids.push_back(to_remove[2 * i]);
  for (std::size_t i = 0; i < 50; ++i) new_ids.push_back(100000 + static_cast<ItemId>(i));
  add_all(ranker, new_vectors, new_ids);
  CHECK(ranker.size() == n - n / 3 + readd + 50);

  // The live set, rebuilt independently.
  std::unordered_map<ItemId, std::vector<float>> live;
  for (std::size_t i = 0; i < n; ++i) {
    if (i % 3 != 0) live[ids[i]].assign(base.begin() + i * kDim, base.begin() + (i + 1) * kDim);
  }
  for (std::size_t i = 0; i < new_ids.size(); ++i) {
    live[new_ids[i]].assign(new_vectors.begin() + i * kDim, new_vectors.begin() + (i + 1) * kDim);
  }
  std::vector<float> live_base;
  std::vector<ItemId> live_ids;
  for (const auto& [id, v] : live) {
    live_ids.push_back(id);
    live_base.insert(live_base.end(), v.begin(), v.end());
  }
  REQUIRE(live_ids.size() == ranker.size());

  const auto queries = random_vectors(10, kDim, 9);
  check_against(
      run_search(ranker, queries, 30),
      brute_force(live_base, live_ids, queries, kDim, metric, [](ItemId) { return true; }), metric);

  // Asking for everything returns exactly the live ids: removed ones never.
  const Result everything = run_search(ranker, queries, ranker.size() + 5);
  CHECK(everything.returned == ranker.size());
  for (std::size_t q = 0; q < 10; ++q) {
    std::unordered_set<ItemId> got;
    for (std::size_t j = 0; j < ranker.size(); ++j) got.insert(everything.label(q, j));
    CHECK(got.size() == live.size());
    for (const auto& [id, v] : live) CHECK(got.contains(id));
  }

  // Removing everything leaves an empty, usable index.
  CHECK(ranker.remove(live_ids).removed == live_ids.size());
  CHECK(ranker.size() == 0);
  CHECK(run_search(ranker, queries, 3).returned == 0);
}

TEST_CASE("bad input is rejected with a clear error and changes nothing", "[exact][errors]") {
  auto ranker = make_ranker(4, Metric::inner_product);
  const auto base = random_vectors(10, 4, 10);
  const auto ids = scattered_ids(10);
  add_all(ranker, base, ids);

  SECTION("config") {
    CHECK(code_of([] { make_ranker(0, Metric::l2); }) == ErrorCode::invalid_argument);
    CHECK_THAT(message_of([] { make_ranker(4, Metric::l2, 0); }), Contains("threads"));
    CHECK_THAT(message_of([] { make_ranker(0, Metric::l2); }), Contains("dim"));
  }
  SECTION("wrong dimension") {
    const auto wide = random_vectors(2, 5, 11);
    CHECK_THAT(message_of([&] {
                 ranker.add(MatrixView<const float>(wide.data(), 2, 5), std::vector<ItemId>{1, 2});
               }),
               Contains("5 columns") && Contains("dim 4"));
    CHECK_THAT(message_of([&] {
                 ranker.add(MatrixView<const float>(base.data(), 2, 4), std::vector<ItemId>{1});
               }),
               Contains("2 vectors") && Contains("1 ids"));
  }
  SECTION("NaN and inf name the row") {
    auto bad = random_vectors(3, 4, 12);
    bad[2 * 4 + 1] = std::numeric_limits<float>::quiet_NaN();
    const std::vector<ItemId> new_ids = {1, 2, 3};
    CHECK_THAT(message_of([&] { ranker.add(MatrixView<const float>(bad.data(), 3, 4), new_ids); }),
               Contains("row 2") && Contains("column 1"));
    bad[2 * 4 + 1] = 0.0F;
    bad[1 * 4 + 3] = std::numeric_limits<float>::infinity();
    CHECK_THAT(message_of([&] { ranker.add(MatrixView<const float>(bad.data(), 3, 4), new_ids); }),
               Contains("row 1"));
    bad[1 * 4 + 3] = 3e19F;  // finite, but its square overflows float
    CHECK_THAT(message_of([&] { ranker.add(MatrixView<const float>(bad.data(), 3, 4), new_ids); }),
               Contains("row 1") && Contains("overflows"));
  }
  SECTION("duplicate and reserved ids name the id") {
    const auto two = random_vectors(2, 4, 13);
    CHECK_THAT(message_of([&] {
                 ranker.add(MatrixView<const float>(two.data(), 2, 4), std::vector<ItemId>{77, 77});
               }),
               Contains("id 77") && Contains("twice"));
    CHECK_THAT(
        message_of([&] {
          ranker.add(MatrixView<const float>(two.data(), 2, 4), std::vector<ItemId>{78, ids[4]});
        }),
        Contains(std::to_string(ids[4])) && Contains("already"));
    CHECK_THAT(
        message_of([&] {
          ranker.add(MatrixView<const float>(two.data(), 2, 4), std::vector<ItemId>{79, kNoItem});
        }),
        Contains("ids[1]") && Contains("kNoItem"));
  }
  SECTION("search arguments") {
    const auto q = random_vectors(2, 4, 14);
    std::vector<float> d(6);
    std::vector<ItemId> l(6);
    const MatrixView<const float> qv(q.data(), 2, 4);
    CHECK_THAT(message_of([&] {
                 (void)ranker.search(qv, 0, MatrixView<float>(d.data(), 2, 0),
                                     MatrixView<ItemId>(l.data(), 2, 0));
               }),
               Contains("k must be > 0"));
    CHECK_THAT(message_of([&] {
                 (void)ranker.search(MatrixView<const float>(q.data(), 1, 8), 3,
                                     MatrixView<float>(d.data(), 1, 3),
                                     MatrixView<ItemId>(l.data(), 1, 3));
               }),
               Contains("8 columns"));
    CHECK_THAT(message_of([&] {
                 (void)ranker.search(qv, 3, MatrixView<float>(d.data(), 3, 2),
                                     MatrixView<ItemId>(l.data(), 2, 3));
               }),
               Contains("distances is 3 x 2") && Contains("expected 2 x 3"));
    CHECK_THAT(message_of([&] {
                 (void)ranker.search(qv, 3, MatrixView<float>(d.data(), 2, 3),
                                     MatrixView<ItemId>(l.data(), 2, 2));
               }),
               Contains("labels is 2 x 2"));
    auto nan_q = q;
    nan_q[4 + 2] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THAT(message_of([&] {
                 (void)ranker.search(MatrixView<const float>(nan_q.data(), 2, 4), 3,
                                     MatrixView<float>(d.data(), 2, 3),
                                     MatrixView<ItemId>(l.data(), 2, 3));
               }),
               Contains("queries row 1"));
  }
  // Whatever failed, nothing was added and results are unchanged.
  CHECK(ranker.size() == 10);
  const auto queries = random_vectors(3, 4, 15);
  check_against(
      run_search(ranker, queries, 10),
      brute_force(base, ids, queries, 4, Metric::inner_product, [](ItemId) { return true; }),
      Metric::inner_product);
}

TEST_CASE("save and load round-trip through FAISS's own format", "[exact][io]") {
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(funnel::to_string(metric));
  funnel::testing::TempDir dir;
  const auto path = dir / "items.faiss";
  const auto base = random_vectors(500, kDim, 16);
  const auto ids = scattered_ids(500);
  auto ranker = make_ranker(kDim, metric);
  add_all(ranker, base, ids);
  REQUIRE(ranker.remove(std::vector<ItemId>{ids[3], ids[100]}).removed == 2);
  ranker.save(path);
  CHECK(funnel::testing::count_entries(dir.path()) == 2);  // index + sidecar, no temporaries

  const auto queries = random_vectors(7, kDim, 17);
  const Result before = run_search(ranker, queries, 25);
  const auto loaded = ExactCoarseRanker::load(path);
  CHECK(loaded->size() == 498);
  CHECK(loaded->dim() == kDim);
  CHECK(loaded->metric() == metric);
  const Result after = run_search(*loaded, queries, 25);
  CHECK(after.labels == before.labels);
  CHECK(after.distances == before.distances);

  // The sidecar says what the brief promises.
  const auto sidecar = nlohmann::json::parse(funnel::testing::read_bytes(dir / "items.faiss.json"));
  CHECK(sidecar["format"] == "funnel.exact_coarse_ranker");
  CHECK(sidecar["version"] == 1);
  CHECK(sidecar["metric"] == std::string(funnel::to_string(metric)));
  CHECK(sidecar["dim"] == kDim);
  CHECK(sidecar["count"] == 498);
  CHECK(sidecar["index_bytes"] == std::filesystem::file_size(path));
  CHECK(sidecar["checksum"] == "mix64:" + funnel::detail::to_hex(funnel::detail::checksum64(
                                              funnel::testing::read_bytes(path))));

  // FAISS reads the file by itself and finds the same neighbours.
  const std::unique_ptr<faiss::Index> index(faiss::read_index(path.c_str()));
  const auto* map = dynamic_cast<const faiss::IndexIDMap2*>(index.get());
  REQUIRE(map != nullptr);
  CHECK(map->ntotal == 498);
  CHECK(map->d == static_cast<int>(kDim));
  CHECK(map->metric_type ==
        (metric == Metric::l2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT));
  std::vector<float> faiss_d(std::size_t{7} * 25);
  std::vector<faiss::Index::idx_t> faiss_ids(std::size_t{7} * 25);
  index->search(7, queries.data(), 25, faiss_d.data(), faiss_ids.data());
  check_same_up_to_ties(before.labels, before.distances,
                        std::vector<ItemId>(faiss_ids.begin(), faiss_ids.end()), faiss_d, 25);
}

TEST_CASE("damaged or inconsistent files are clear errors", "[exact][io]") {
  funnel::testing::TempDir dir;
  const auto path = dir / "idx.faiss";
  const auto side = dir / "idx.faiss.json";
  const auto base = random_vectors(200, 8, 18);
  auto ranker = make_ranker(8, Metric::inner_product);
  add_all(ranker, base, scattered_ids(200));
  ranker.save(path);
  const std::string good_index = funnel::testing::read_bytes(path);
  const std::string good_sidecar = funnel::testing::read_bytes(side);
  const auto load = [&] { (void)ExactCoarseRanker::load(path); };
  // Rewrites the sidecar with one field changed.
  const auto edit_sidecar = [&](const char* key, const nlohmann::json& value) {
    auto doc = nlohmann::json::parse(good_sidecar);
    doc[key] = value;
    funnel::testing::write_bytes(side, doc.dump());
  };
  // Writes `bytes` as the index with a sidecar that vouches for them.
  const auto write_consistent = [&](const std::string& bytes) {
    funnel::testing::write_bytes(path, bytes);
    edit_sidecar("index_bytes", bytes.size());
    auto doc = nlohmann::json::parse(funnel::testing::read_bytes(side));
    doc["checksum"] = "mix64:" + funnel::detail::to_hex(funnel::detail::checksum64(bytes));
    funnel::testing::write_bytes(side, doc.dump());
  };

  SECTION("truncated index") {
    funnel::testing::write_bytes(path, good_index.substr(0, good_index.size() - 10));
    CHECK(code_of(load) == ErrorCode::format);
    CHECK_THAT(message_of(load), Contains("idx.faiss") && Contains("bytes"));
  }
  SECTION("flipped byte") {
    std::string bad = good_index;
    bad[bad.size() / 2] = static_cast<char>(bad[bad.size() / 2] ^ 0x20);
    funnel::testing::write_bytes(path, bad);
    CHECK(code_of(load) == ErrorCode::format);
    CHECK_THAT(message_of(load), Contains("checksum"));
  }
  SECTION("sidecar with another dimension") {
    edit_sidecar("dim", 16);
    CHECK(code_of(load) == ErrorCode::format);
    CHECK_THAT(message_of(load), Contains("dimension is 8") && Contains("says 16"));
  }
  SECTION("sidecar with another metric") {
    edit_sidecar("metric", "l2");
    CHECK(code_of(load) == ErrorCode::format);
    CHECK_THAT(message_of(load), Contains("metric"));
  }
  SECTION("sidecar with another count") {
    edit_sidecar("count", 199);
    CHECK(code_of(load) == ErrorCode::format);
    CHECK_THAT(message_of(load), Contains("199"));
  }
  SECTION("sidecar of an unknown version") {
    edit_sidecar("version", 2);
    CHECK(code_of(load) == ErrorCode::format);
    CHECK_THAT(message_of(load), Contains("version 2"));
  }
  SECTION("sidecar of another format") {
    edit_sidecar("format", "something.else");
    CHECK_THAT(message_of(load), Contains("something.else"));
  }
  SECTION("sidecar that is not JSON") {
    funnel::testing::write_bytes(side, "{\"format\": ");
    CHECK(code_of(load) == ErrorCode::format);
    CHECK_THAT(message_of(load), Contains("idx.faiss.json"));
  }
  SECTION("missing sidecar") {
    std::filesystem::remove(side);
    CHECK(code_of(load) == ErrorCode::io);
    CHECK_THAT(message_of(load), Contains("idx.faiss.json"));
  }
  SECTION("missing index") {
    std::filesystem::remove(path);
    CHECK(code_of(load) == ErrorCode::io);
  }
  SECTION("a vouched-for file that FAISS cannot parse") {
    write_consistent(good_index.substr(0, good_index.size() / 2));
    CHECK(code_of(load) == ErrorCode::format);
    CHECK_THAT(message_of(load), Contains("FAISS"));
  }
  SECTION("a vouched-for FAISS index of another type") {
    faiss::IndexFlatIP flat(8);
    flat.add(200, base.data());
    const auto plain = dir / "plain.faiss";
    faiss::write_index(&flat, plain.c_str());
    write_consistent(funnel::testing::read_bytes(plain));
    CHECK(code_of(load) == ErrorCode::format);
    CHECK_THAT(message_of(load), Contains("IndexIDMap2"));
  }
  SECTION("a vouched-for index with duplicate ids") {
    faiss::IndexFlatIP flat(8);
    faiss::IndexIDMap2 map(&flat);
    const std::vector<faiss::Index::idx_t> dup(200, 42);
    map.add_with_ids(200, base.data(), dup.data());
    const auto dup_path = dir / "dup.faiss";
    faiss::write_index(&map, dup_path.c_str());
    write_consistent(funnel::testing::read_bytes(dup_path));
    CHECK(code_of(load) == ErrorCode::format);
    CHECK_THAT(message_of(load), Contains("id 42"));
  }
}

TEST_CASE("a failed save leaves no temporaries and the old index intact", "[exact][io]") {
  funnel::testing::TempDir dir;
  auto small = make_ranker(8, Metric::l2);
  add_all(small, random_vectors(20, 8, 19), scattered_ids(20));

  SECTION("into a directory that does not exist") {
    const auto path = dir / "missing" / "idx.faiss";
    CHECK(code_of([&] { small.save(path); }) == ErrorCode::io);
    CHECK_THAT(message_of([&] { small.save(path); }), Contains("missing"));
    CHECK(funnel::testing::count_entries(dir.path()) == 0);
  }
  SECTION("when the disk fills up over an existing index") {
    const auto path = dir / "idx.faiss";
    small.save(path);
    const std::string old_index = funnel::testing::read_bytes(path);
    const std::string old_sidecar = funnel::testing::read_bytes(dir / "idx.faiss.json");

    auto big = make_ranker(8, Metric::l2);
    add_all(big, random_vectors(2000, 8, 20), scattered_ids(2000));
    // A file size limit makes writes beyond 4 KiB fail with EFBIG, as a full
    // disk would; SIGXFSZ is ignored so that the write fails instead.
    rlimit old_limit{};
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit low = old_limit;
    low.rlim_cur = 4096;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &low) == 0);
    ErrorCode code = ErrorCode::internal;
    try {
      big.save(path);
    } catch (const funnel::Error& e) {
      code = e.code();
    }
    setrlimit(RLIMIT_FSIZE, &old_limit);
    std::signal(SIGXFSZ, old_handler);
    CHECK(code == ErrorCode::io);
    CHECK(funnel::testing::count_entries(dir.path()) == 2);
    CHECK(funnel::testing::read_bytes(path) == old_index);
    CHECK(funnel::testing::read_bytes(dir / "idx.faiss.json") == old_sidecar);
    CHECK(ExactCoarseRanker::load(path)->size() == 20);
  }
}

TEST_CASE("search results do not depend on threads", "[exact][threads][concurrency]") {
  const auto kernel = GENERATE(ExactKernel::portable, ExactKernel::avx2, ExactKernel::avx512);
  if (skip_unsupported(kernel)) return;
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(funnel::to_string(kernel), funnel::to_string(metric));
  // More rows than one scan block (4096 rows for the portable kernel, at
  // most 1024 for the others) and more queries than one query chunk (64 or
  // at most 32), so that both ways of splitting the work are exercised.
  const std::size_t n = 5000;
  const std::size_t dim = 8;
  const auto base = random_vectors(n, dim, 21);
  const auto ids = scattered_ids(n);
  auto serial = make_ranker(dim, metric, 1, kernel);
  auto two = make_ranker(dim, metric, 2, kernel);
  auto three = make_ranker(dim, metric, 3, kernel);
  for (ExactCoarseRanker* r : {&serial, &two, &three}) add_all(*r, base, ids);
  const funnel::PredicateFilter odd([](ItemId id) { return id % 2 != 0; });

  for (const std::size_t nq : {std::size_t{1}, std::size_t{5}, std::size_t{130}}) {
    CAPTURE(nq);
    const auto queries = random_vectors(nq, dim, 22);
    for (const funnel::IdFilter* filter : {static_cast<const funnel::IdFilter*>(nullptr),
                                           static_cast<const funnel::IdFilter*>(&odd)}) {
      const Result expected = run_search(serial, queries, 40, filter);
      for (const ExactCoarseRanker* r : {&two, &three}) {
        const Result got = run_search(*r, queries, 40, filter);
        CHECK(got.labels == expected.labels);
        CHECK(got.distances == expected.distances);
        CHECK(got.returned == expected.returned);
      }
    }
    if (nq == 5) {
      check_against(run_search(two, queries, 40),
                    brute_force(base, ids, queries, dim, metric, [](ItemId) { return true; }),
                    metric);
    }
  }
}

TEST_CASE("concurrent searches on one index agree with serial ones",
          "[exact][threads][concurrency]") {
  const std::size_t dim = 16;
  const auto base = random_vectors(2000, dim, 23);
  auto ranker = make_ranker(dim, Metric::inner_product);
  add_all(ranker, base, scattered_ids(2000));
  std::vector<std::vector<float>> queries;
  std::vector<Result> expected;
  for (unsigned t = 0; t < 4; ++t) {
    queries.push_back(random_vectors(3 + t, dim, 30 + t));
    expected.push_back(run_search(ranker, queries.back(), 20));
  }
  const funnel::PredicateFilter even([](ItemId id) { return id % 2 == 0; });
  const Result expected_filtered = run_search(ranker, queries[0], 20, &even);

  std::atomic<int> mismatches{0};
  {
    std::vector<std::jthread> threads;
    for (unsigned t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int round = 0; round < 20; ++round) {
          const Result got = run_search(ranker, queries[t], 20);
          if (got.labels != expected[t].labels || got.distances != expected[t].distances) {
            ++mismatches;
          }
          const Result filtered = run_search(ranker, queries[0], 20, &even);
          if (filtered.labels != expected_filtered.labels) ++mismatches;
        }
      });
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("an exception from a filter propagates from worker threads",
          "[exact][threads][concurrency]") {
  auto ranker = make_ranker(4, Metric::inner_product, 2);
  add_all(ranker, random_vectors(9000, 4, 40), scattered_ids(9000));
  const funnel::PredicateFilter throwing([](ItemId id) -> bool {
    if (id % 5 == 0) throw std::runtime_error("filter failed");
    return true;
  });
  CHECK_THROWS_WITH(run_search(ranker, random_vectors(1, 4, 41), 10, &throwing), "filter failed");
}
