// SPDX-License-Identifier: Apache-2.0
// Tests of IvfCoarseRanker against FAISS's own IVF search on the saved file,
// against double-precision brute force over the probed lists, across
// kernels, batch modes and thread counts, plus filters, mutation, training
// errors, files and a concurrent add/remove/search stress test.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <catch2/catch.hpp>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/index_io.h>
#include <nlohmann/json.hpp>

#include "funnel/error.hpp"
#include "funnel/ivf_coarse_ranker.hpp"
#include "internal/checksum.hpp"
#include "test_util.hpp"

using Catch::Matchers::Contains;
using funnel::ErrorCode;
using funnel::ItemId;
using funnel::IvfBatchMode;
using funnel::IvfCoarseRanker;
using funnel::IvfCoarseRankerConfig;
using funnel::IvfKernel;
using funnel::IvfSearchParams;
using funnel::kNoItem;
using funnel::MatrixView;
using funnel::Metric;

// FAISS 1.7.3's read_index leaks the partly built index when parsing fails
// half-way (that path has no RAII); the test that feeds FAISS such a file on
// purpose would otherwise fail under LeakSanitizer. Only FAISS's own
// allocations are suppressed (for IVF files the leaked object comes from
// read_InvertedLists, whose caller frames the unwinder may not see in the
// prebuilt library); the hook is unused outside sanitizer builds.
// NOLINTNEXTLINE(bugprone-reserved-identifier,readability-identifier-naming)
extern "C" const char* __lsan_default_suppressions();
// NOLINTNEXTLINE(bugprone-reserved-identifier,readability-identifier-naming)
extern "C" const char* __lsan_default_suppressions() {
  return "leak:faiss::read_index\nleak:faiss::read_InvertedLists\n";
}

namespace {

#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif
#else
constexpr bool kThreadSanitizer = false;
#endif

constexpr std::size_t kDim = 32;
constexpr std::size_t kBase = 3000;

// Points around `centers` random centres, so that lists mean something.
std::vector<float> clustered_vectors(std::size_t rows, std::size_t dim, unsigned seed,
                                     std::size_t centers = 24) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  std::mt19937 center_rng(7);  // the same centres for every call
  std::vector<float> c(centers * dim);
  for (float& x : c) x = 2.0F * normal(center_rng);
  std::uniform_int_distribution<std::size_t> pick(0, centers - 1);
  std::vector<float> v(rows * dim);
  for (std::size_t i = 0; i < rows; ++i) {
    const std::size_t at = pick(rng);
    for (std::size_t j = 0; j < dim; ++j) v[i * dim + j] = c[at * dim + j] + normal(rng);
  }
  return v;
}

std::vector<ItemId> scattered_ids(std::size_t n, ItemId first = 1000) {
  std::vector<ItemId> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = first + static_cast<ItemId>(7 * i);
  return ids;
}

IvfCoarseRankerConfig make_config(const std::string& description, Metric metric,
                                  std::size_t dim = kDim, int threads = 1,
                                  IvfKernel kernel = IvfKernel::automatic) {
  IvfCoarseRankerConfig config;
  config.dim = dim;
  config.metric = metric;
  config.description = description;
  config.threads = threads;
  config.kernel = kernel;
  config.default_nprobe = 4;
  // PQ with 8-bit codes needs 39 * 256 vectors by default; these tests use
  // 3000 (enough for a sane codebook, not for FAISS's comfort margin).
  config.min_train_per_list = 8;
  config.kmeans_iterations = 10;
  return config;
}

MatrixView<const float> view(const std::vector<float>& v, std::size_t dim) {
  return {v.data(), v.size() / dim, dim};
}

std::unique_ptr<IvfCoarseRanker> trained(const IvfCoarseRankerConfig& config,
                                         const std::vector<float>& base,
                                         const std::vector<ItemId>& ids) {
  auto ranker = IvfCoarseRanker::train(config, view(base, config.dim));
  ranker->add(view(base, config.dim), ids);
  return ranker;
}

struct Result {
  std::vector<float> distances;
  std::vector<ItemId> labels;
  std::size_t returned = 0;
  std::size_t k = 0;
  [[nodiscard]] float distance(std::size_t q, std::size_t j) const { return distances[q * k + j]; }
  [[nodiscard]] ItemId label(std::size_t q, std::size_t j) const { return labels[q * k + j]; }
};

Result run_search(const IvfCoarseRanker& ranker, const std::vector<float>& queries, std::size_t k,
                  std::size_t nprobe, const funnel::IdFilter* filter = nullptr,
                  IvfBatchMode batch = IvfBatchMode::automatic) {
  const std::size_t nq = queries.size() / ranker.dim();
  Result r;
  r.k = k;
  r.distances.assign(nq * k, 0.0F);
  r.labels.assign(nq * k, 0);
  IvfSearchParams params;
  params.filter = filter;
  params.nprobe = nprobe;
  params.batch = batch;
  r.returned =
      ranker.search(view(queries, ranker.dim()), k, MatrixView<float>(r.distances.data(), nq, k),
                    MatrixView<ItemId>(r.labels.data(), nq, k), &params);
  return r;
}

double tolerance(double distance) { return 1e-4 * std::max(1.0, std::abs(distance)); }

// Two result lists agree when, position by position, their distances agree
// within 1e-4 relative and any differing id is explained by a tie: the item
// is elsewhere in the other row with the same distance, or missing from it
// while tying the other row's last distance. (PQ and SQ codes produce exact
// ties: identical codes in one list have identical distances.)
void check_same_up_to_ties(const Result& a, const std::vector<ItemId>& b_ids,
                           const std::vector<float>& b_d) {
  const std::size_t k = a.k;
  const std::size_t nq = a.labels.size() / k;
  for (std::size_t q = 0; q < nq; ++q) {
    std::unordered_map<ItemId, float> b_row;
    for (std::size_t j = 0; j < k; ++j) b_row.emplace(b_ids[q * k + j], b_d[q * k + j]);
    const float b_last = b_d[q * k + k - 1];
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t at = q * k + j;
      INFO("query " << q << " position " << j << ": " << a.labels[at] << " (" << a.distances[at]
                    << ") vs " << b_ids[at] << " (" << b_d[at] << ")");
      REQUIRE(std::abs(a.distances[at] - b_d[at]) <= tolerance(b_d[at]));
      if (a.labels[at] == b_ids[at]) continue;
      const auto it = b_row.find(a.labels[at]);
      if (it != b_row.end()) {
        CHECK(std::abs(a.distances[at] - it->second) <= tolerance(it->second));
      } else {
        CHECK(std::abs(a.distances[at] - b_last) <= tolerance(b_last));  // boundary tie
      }
    }
  }
}

void check_identical(const Result& a, const Result& b) {
  CHECK(a.labels == b.labels);
  CHECK(a.distances == b.distances);
  CHECK(a.returned == b.returned);
}

// ---------------------------------------------------------------------------
// An independent IVF reference: the lists and probes computed in double
// precision from the index's centroids, then brute force over the probed
// lists.

struct IvfReference {
  std::size_t dim = 0;
  Metric metric = Metric::l2;
  std::vector<double> centroids;
  std::size_t nlist = 0;
  std::vector<std::size_t> list_of;  // per base row

  [[nodiscard]] double score(const float* x, const double* y) const {
    double acc = 0.0;
    for (std::size_t c = 0; c < dim; ++c) {
      const double a = x[c];
      acc += metric == Metric::l2 ? (a - y[c]) * (a - y[c]) : a * y[c];
    }
    return acc;
  }
  [[nodiscard]] bool better(double a, double b) const {
    return metric == Metric::l2 ? a < b : a > b;
  }
  [[nodiscard]] std::vector<std::size_t> probes(const float* q, std::size_t nprobe) const {
    std::vector<std::pair<double, std::size_t>> s(nlist);
    for (std::size_t l = 0; l < nlist; ++l) s[l] = {score(q, centroids.data() + l * dim), l};
    std::sort(s.begin(), s.end(), [this](const auto& x, const auto& y) {
      if (x.first != y.first) return better(x.first, y.first);
      return x.second < y.second;
    });
    std::vector<std::size_t> out;
    for (std::size_t p = 0; p < nprobe; ++p) out.push_back(s[p].second);
    return out;
  }
};

IvfReference reference_of(const IvfCoarseRanker& ranker, const std::vector<float>& base) {
  IvfReference ref;
  ref.dim = ranker.dim();
  ref.metric = ranker.metric();
  const funnel::Matrix<float> c = ranker.centroids();
  ref.nlist = c.rows();
  ref.centroids.assign(c.values().begin(), c.values().end());
  const std::size_t n = base.size() / ref.dim;
  std::vector<std::size_t> counts(ref.nlist, 0);
  for (std::size_t i = 0; i < n; ++i) {
    ref.list_of.push_back(ref.probes(base.data() + i * ref.dim, 1)[0]);
    ++counts[ref.list_of.back()];
  }
  // The index assigned the vectors the same way (else the reference is moot).
  REQUIRE(counts == ranker.list_sizes());
  return ref;
}

struct Ranked {
  std::vector<std::pair<double, ItemId>> items;  // best first
  std::unordered_map<ItemId, double> distance_of;
};

std::vector<Ranked> brute_force_probed(const IvfReference& ref, const std::vector<float>& base,
                                       const std::vector<ItemId>& ids,
                                       const std::vector<float>& queries, std::size_t nprobe,
                                       const std::function<bool(ItemId)>& eligible) {
  const std::size_t nq = queries.size() / ref.dim;
  std::vector<Ranked> out(nq);
  std::vector<double> row(ref.dim);
  for (std::size_t q = 0; q < nq; ++q) {
    const float* query = queries.data() + q * ref.dim;
    const std::vector<std::size_t> probes = ref.probes(query, nprobe);
    const std::set<std::size_t> probed(probes.begin(), probes.end());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (!probed.contains(ref.list_of[i]) || !eligible(ids[i])) continue;
      for (std::size_t c = 0; c < ref.dim; ++c) row[c] = base[i * ref.dim + c];
      const double d = ref.score(query, row.data());
      out[q].items.emplace_back(d, ids[i]);
      out[q].distance_of[ids[i]] = d;
    }
    std::sort(out[q].items.begin(), out[q].items.end(), [&ref](const auto& x, const auto& y) {
      if (x.first != y.first) return ref.better(x.first, y.first);
      return x.second < y.second;
    });
  }
  return out;
}

float pad_of(Metric metric) {
  return metric == Metric::l2 ? std::numeric_limits<float>::infinity()
                              : -std::numeric_limits<float>::infinity();
}

// The result equals the reference: the j-th item has the j-th best true
// distance (up to float-level ties), its distance is within 1e-4 relative,
// ids are distinct and eligible, rows are padded after the eligible items.
void check_against(const Result& got, const std::vector<Ranked>& refs, Metric metric) {
  std::size_t fewest = got.k;
  for (std::size_t q = 0; q < refs.size(); ++q) {
    const Ranked& ref = refs[q];
    const std::size_t expected = std::min(got.k, ref.items.size());
    fewest = std::min(fewest, expected);
    std::unordered_set<ItemId> seen;
    for (std::size_t j = 0; j < got.k; ++j) {
      const ItemId id = got.label(q, j);
      const float d = got.distance(q, j);
      INFO("query " << q << " position " << j << " id " << id);
      if (j >= expected) {
        CHECK(id == kNoItem);
        CHECK(d == pad_of(metric));
        continue;
      }
      REQUIRE(ref.distance_of.contains(id));  // stored, probed and eligible
      REQUIRE(seen.insert(id).second);
      const double truth = ref.distance_of.at(id);
      CHECK(std::abs(truth - ref.items[j].first) <= 1e-5 * std::max(1.0, std::abs(truth)));
      CHECK(std::abs(static_cast<double>(d) - truth) <= tolerance(truth));
    }
  }
  CHECK(got.returned == fewest);
}

// FAISS's own search on the file that save() wrote.
struct FaissResult {
  std::vector<float> distances;
  std::vector<ItemId> labels;
};

FaissResult faiss_search(const std::filesystem::path& path, const std::vector<float>& queries,
                         std::size_t dim, std::size_t k, std::size_t nprobe) {
  const std::unique_ptr<faiss::Index> index(faiss::read_index(path.c_str()));
  auto* ivf = dynamic_cast<faiss::IndexIVF*>(index.get());
  REQUIRE(ivf != nullptr);
  ivf->nprobe = nprobe;
  const std::size_t nq = queries.size() / dim;
  FaissResult r;
  r.distances.resize(nq * k);
  r.labels.resize(nq * k);
  index->search(static_cast<faiss::Index::idx_t>(nq), queries.data(),
                static_cast<faiss::Index::idx_t>(k), r.distances.data(), r.labels.data());
  return r;
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

// Rewrites the sidecar of `path` so that it vouches for the index file as it
// now is (size and checksum), after `edit` changed other fields.
void fix_sidecar(const std::filesystem::path& path,
                 const std::function<void(nlohmann::json&)>& edit = {}) {
  std::filesystem::path side = path;
  side += ".json";
  nlohmann::json doc = nlohmann::json::parse(funnel::testing::read_bytes(side));
  const std::string bytes = funnel::testing::read_bytes(path);
  doc["index_bytes"] = bytes.size();
  doc["checksum"] = "mix64:" + funnel::detail::to_hex(funnel::detail::checksum64(bytes));
  if (edit) edit(doc);
  funnel::testing::write_bytes(side, doc.dump());
}

// For GENERATE: descriptions as std::string values.
Catch::Generators::GeneratorWrapper<std::string> descriptions(
    const std::vector<std::string>& list) {
  return Catch::Generators::from_range(list);
}

// Every code type.
Catch::Generators::GeneratorWrapper<std::string> all_descriptions() {
  return descriptions({"IVF24,Flat", "IVF24,SQ8", "IVF24,SQfp16", "IVF16,PQ8", "IVF16,PQ16x4"});
}

}  // namespace

// ---------------------------------------------------------------------------

TEST_CASE("search equals FAISS's own IVF search on the saved index", "[ivf][faiss]") {
  const std::string description = GENERATE(descriptions(
      {"IVF24,Flat", "IVF24,SQ8", "IVF24,SQfp16", "IVF16,PQ8", "IVF16,PQ16x4", "IVF16,PQ4x6"}));
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(description, funnel::to_string(metric));
  const auto base = clustered_vectors(kBase, kDim, 1);
  const auto ids = scattered_ids(kBase);
  const auto ranker = trained(make_config(description, metric), base, ids);
  const funnel::testing::TempDir dir;
  ranker->save(dir / "index.faiss");

  const auto queries = clustered_vectors(25, kDim, 2);
  for (const std::size_t nprobe : {std::size_t{1}, std::size_t{5}}) {
    const std::size_t k = 10;
    CAPTURE(nprobe);
    const Result got = run_search(*ranker, queries, k, nprobe);
    const FaissResult theirs = faiss_search(dir / "index.faiss", queries, kDim, k, nprobe);
    REQUIRE(std::count(theirs.labels.begin(), theirs.labels.end(), kNoItem) == 0);
    CHECK(got.returned == k);
    check_same_up_to_ties(got, theirs.labels, theirs.distances);
  }
}

TEST_CASE("Flat lists equal brute force over the probed lists", "[ivf]") {
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(funnel::to_string(metric));
  const auto base = clustered_vectors(kBase, kDim, 3);
  const auto ids = scattered_ids(kBase);
  const auto ranker = trained(make_config("IVF24,Flat", metric), base, ids);
  const IvfReference ref = reference_of(*ranker, base);
  const auto queries = clustered_vectors(20, kDim, 4);
  const auto all = [](ItemId) { return true; };

  // nprobe = nlist is exact search over everything.
  const Result exact = run_search(*ranker, queries, 50, 24);
  check_against(exact, brute_force_probed(ref, base, ids, queries, 24, all), metric);
  for (const std::size_t nprobe : {std::size_t{1}, std::size_t{3}, std::size_t{8}}) {
    CAPTURE(nprobe);
    const Result got = run_search(*ranker, queries, 30, nprobe);
    check_against(got, brute_force_probed(ref, base, ids, queries, nprobe, all), metric);
  }
  // nprobe 0 means default_nprobe (4); larger than nlist is clamped.
  check_identical(run_search(*ranker, queries, 10, 0), run_search(*ranker, queries, 10, 4));
  check_identical(run_search(*ranker, queries, 10, 1000), run_search(*ranker, queries, 10, 24));
  // A plain SearchParams (or none) uses default_nprobe too.
  Result plain;
  plain.k = 10;
  plain.distances.resize(std::size_t{200});
  plain.labels.resize(std::size_t{200});
  plain.returned =
      ranker->search(view(queries, kDim), 10, MatrixView<float>(plain.distances.data(), 20, 10),
                     MatrixView<ItemId>(plain.labels.data(), 20, 10));
  check_identical(plain, run_search(*ranker, queries, 10, 4));
}

TEST_CASE("every supported kernel gives the same results", "[ivf][kernels]") {
  const std::string description = GENERATE(all_descriptions());
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(description, funnel::to_string(metric));
  // dim 36: not a multiple of 16 or 8, so the kernels' tails run.
  const std::size_t dim = description.find("PQ") != std::string::npos ? 32 : 36;
  const auto base = clustered_vectors(kBase, dim, 5);
  const auto ids = scattered_ids(kBase);
  const auto reference = trained(make_config(description, metric, dim), base, ids);
  const funnel::testing::TempDir dir;
  reference->save(dir / "index.faiss");
  const auto queries = clustered_vectors(12, dim, 6);
  const auto portable = IvfCoarseRanker::load(dir / "index.faiss", 1, IvfKernel::portable);
  CHECK(portable->kernel() == IvfKernel::portable);
  const Result expected = run_search(*portable, queries, 20, 6);
  for (const IvfKernel kernel : {IvfKernel::avx2, IvfKernel::avx512}) {
    CAPTURE(funnel::to_string(kernel));
    if (!IvfCoarseRanker::kernel_supported(kernel)) {
      WARN("kernel " << funnel::to_string(kernel) << " is not supported here; not tested");
      CHECK(code_of([&] { IvfCoarseRanker::load(dir / "index.faiss", 1, kernel); }) ==
            ErrorCode::unsupported);
      continue;
    }
    const auto other = IvfCoarseRanker::load(dir / "index.faiss", 1, kernel);
    CHECK(other->kernel() == kernel);
    check_same_up_to_ties(run_search(*other, queries, 20, 6), expected.labels, expected.distances);
  }
  CHECK(reference->kernel() != IvfKernel::automatic);
}

TEST_CASE("grouped batches equal per-query search", "[ivf][batch]") {
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  const int threads = GENERATE(1, 3);
  CAPTURE(funnel::to_string(metric), threads);
  const auto base = clustered_vectors(kBase, kDim, 7);
  const auto ids = scattered_ids(kBase);
  const auto ranker = trained(make_config("IVF16,Flat", metric, kDim, threads), base, ids);
  const auto queries = clustered_vectors(70, kDim, 8);
  const Result per_query = run_search(*ranker, queries, 25, 5, nullptr, IvfBatchMode::per_query);
  const Result grouped = run_search(*ranker, queries, 25, 5, nullptr, IvfBatchMode::grouped);
  check_same_up_to_ties(grouped, per_query.labels, per_query.distances);
  // 70 >= 32 queries: automatic picks grouped.
  check_identical(run_search(*ranker, queries, 25, 5), grouped);
  // Grouped with a filter, and with every list probed.
  const funnel::PredicateFilter odd([](ItemId id) { return id % 2 != 0; });
  const Result pf = run_search(*ranker, queries, 25, 16, &odd, IvfBatchMode::per_query);
  const Result gf = run_search(*ranker, queries, 25, 16, &odd, IvfBatchMode::grouped);
  check_same_up_to_ties(gf, pf.labels, pf.distances);
  for (const ItemId id : gf.labels) CHECK(id % 2 != 0);

  // SQ lists have no grouped path: asking for it gives the per-query result.
  const auto sq = trained(make_config("IVF16,SQ8", metric, kDim, threads), base, ids);
  check_identical(run_search(*sq, queries, 10, 4, nullptr, IvfBatchMode::grouped),
                  run_search(*sq, queries, 10, 4, nullptr, IvfBatchMode::per_query));
}

TEST_CASE("results do not depend on the thread count", "[ivf][threads][concurrency]") {
  const std::string description =
      GENERATE(descriptions({"IVF16,Flat", "IVF16,SQ8", "IVF16,PQ8x4"}));
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(description, funnel::to_string(metric));
  const auto base = clustered_vectors(kBase, kDim, 9);
  const auto ids = scattered_ids(kBase);
  const auto one = trained(make_config(description, metric), base, ids);
  const funnel::testing::TempDir dir;
  one->save(dir / "index.faiss");
  // 1 query (its lists split over threads), 2 (fewer than threads), 7, 40 (grouped).
  for (const std::size_t nq : {std::size_t{1}, std::size_t{2}, std::size_t{7}, std::size_t{40}}) {
    const auto queries = clustered_vectors(nq, kDim, 10 + static_cast<unsigned>(nq));
    const funnel::DenyListFilter deny(std::vector<ItemId>(ids.begin(), ids.begin() + 500));
    const Result expected = run_search(*one, queries, 15, 6, &deny);
    for (const int threads : {2, 3}) {
      CAPTURE(nq, threads);
      const auto many = IvfCoarseRanker::load(dir / "index.faiss", threads);
      CHECK(many->config().threads == threads);
      check_identical(run_search(*many, queries, 15, 6, &deny), expected);
    }
  }
}

TEST_CASE("training does not depend on the thread count and follows the seed", "[ivf][train]") {
  const auto base = clustered_vectors(kBase, kDim, 11);
  auto config = make_config("IVF16,PQ8x4", Metric::l2);
  const auto a = IvfCoarseRanker::train(config, view(base, kDim));
  config.threads = 2;
  const auto b = IvfCoarseRanker::train(config, view(base, kDim));
  CHECK(a->centroids().values() == b->centroids().values());
  // The PQ codebooks too: the same codes for the same vectors.
  const auto ids = scattered_ids(kBase);
  a->add(view(base, kDim), ids);
  b->add(view(base, kDim), ids);
  const auto queries = clustered_vectors(5, kDim, 12);
  check_identical(run_search(*a, queries, 10, 4), run_search(*b, queries, 10, 4));
  config.seed = 99;
  const auto c = IvfCoarseRanker::train(config, view(base, kDim));
  CHECK(a->centroids().values() != c->centroids().values());
  // IP lists use spherical k-means: unit-norm centroids.
  const auto ip =
      IvfCoarseRanker::train(make_config("IVF16,Flat", Metric::inner_product), view(base, kDim));
  const funnel::Matrix<float> centroids = ip->centroids();
  for (std::size_t l = 0; l < centroids.rows(); ++l) {
    double norm = 0.0;
    for (const float x : centroids.row(l)) norm += static_cast<double>(x) * x;
    CHECK(norm == Approx(1.0).epsilon(1e-4));
  }
}

TEST_CASE("filters are applied inside the scan", "[ivf][filter]") {
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  const int threads = GENERATE(1, 2);
  CAPTURE(funnel::to_string(metric), threads);
  const auto base = clustered_vectors(kBase, kDim, 13);
  const auto ids = scattered_ids(kBase);
  const auto ranker = trained(make_config("IVF24,Flat", metric, kDim, threads), base, ids);
  const IvfReference ref = reference_of(*ranker, base);
  const auto queries = clustered_vectors(6, kDim, 14);
  const std::size_t nprobe = 3;
  const std::size_t k = 40;

  // Allow only 1 in 10 ids: more than k eligible items exist overall, but a
  // query's probed lists may hold fewer, so padding appears too.
  std::vector<ItemId> allowed;
  for (std::size_t i = 0; i < ids.size(); i += 10) allowed.push_back(ids[i]);
  const std::unordered_set<ItemId> allowed_set(allowed.begin(), allowed.end());
  const funnel::AllowListFilter allow(allowed);
  check_against(run_search(*ranker, queries, k, nprobe, &allow),
                brute_force_probed(ref, base, ids, queries, nprobe,
                                   [&](ItemId id) { return allowed_set.contains(id); }),
                metric);

  // Deny the unfiltered top results: the next ones move up.
  const Result unfiltered = run_search(*ranker, queries, 20, nprobe);
  std::vector<ItemId> denied(unfiltered.labels.begin(), unfiltered.labels.end());
  const std::unordered_set<ItemId> denied_set(denied.begin(), denied.end());
  const funnel::DenyListFilter deny(denied);
  const Result got = run_search(*ranker, queries, k, nprobe, &deny);
  check_against(got,
                brute_force_probed(ref, base, ids, queries, nprobe,
                                   [&](ItemId id) { return !denied_set.contains(id); }),
                metric);

  // A predicate (a "category" of the id), counted: consulted only for items
  // that would enter the heap, so far fewer calls than items scanned.
  std::atomic<std::size_t> calls{0};
  const funnel::PredicateFilter category([&calls](ItemId id) {
    calls.fetch_add(1, std::memory_order_relaxed);
    return (id / 7) % 3 == 1;
  });
  check_against(run_search(*ranker, queries, 10, nprobe, &category),
                brute_force_probed(ref, base, ids, queries, nprobe,
                                   [](ItemId id) { return (id / 7) % 3 == 1; }),
                metric);
  std::size_t scanned = 0;
  for (std::size_t q = 0; q < 6; ++q) {
    for (const std::size_t l : ref.probes(queries.data() + q * kDim, nprobe)) {
      scanned += ranker->list_sizes()[l];
    }
  }
  CHECK(calls.load() < scanned);

  // A filter that rejects everything: all padding, 0 real results.
  const funnel::PredicateFilter none([](ItemId) { return false; });
  const Result empty = run_search(*ranker, queries, 5, nprobe, &none);
  CHECK(empty.returned == 0);
  for (const ItemId id : empty.labels) CHECK(id == kNoItem);
  for (const float d : empty.distances) CHECK(d == pad_of(metric));
}

TEST_CASE("an exception from a filter propagates and releases the index",
          "[ivf][filter][concurrency]") {
  const auto base = clustered_vectors(kBase, kDim, 37);
  const auto ids = scattered_ids(kBase);
  const auto ranker = trained(make_config("IVF16,Flat", Metric::l2, kDim, 3), base, ids);
  const funnel::PredicateFilter failing([](ItemId id) {
    if (id % 5 == 0) throw std::runtime_error("filter failed");
    return true;
  });
  // One query (its lists split over 3 threads), 6 queries (split by query)
  // and 40 (grouped by list): the worker's exception reaches the caller.
  for (const std::size_t nq : {std::size_t{1}, std::size_t{6}, std::size_t{40}}) {
    CAPTURE(nq);
    const auto queries = clustered_vectors(nq, kDim, 38);
    CHECK_THROWS_WITH(run_search(*ranker, queries, 10, 8, &failing), "filter failed");
  }
  // The lock was released: writers and readers still get through.
  const std::vector<float> one(base.begin(), base.begin() + kDim);
  ranker->add(view(one, kDim), std::vector<ItemId>{1});
  CHECK(ranker->remove(std::vector<ItemId>{1}).removed == 1);
  CHECK(run_search(*ranker, one, 1, 16).label(0, 0) == ids[0]);
  // A plain SearchParams works too: its filter, default_nprobe.
  funnel::SearchParams plain;
  const funnel::DenyListFilter deny(std::vector<ItemId>{ids[0]});
  plain.filter = &deny;
  std::vector<float> d(3);
  std::vector<ItemId> l(3);
  ranker->search(view(one, kDim), 3, MatrixView<float>(d.data(), 1, 3),
                 MatrixView<ItemId>(l.data(), 1, 3), &plain);
  CHECK(std::find(l.begin(), l.end(), ids[0]) == l.end());
  CHECK(l[0] != kNoItem);
}

TEST_CASE("k larger than the eligible items pads and reports", "[ivf]") {
  const std::string description = GENERATE(all_descriptions());
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(description, funnel::to_string(metric));
  const auto base = clustered_vectors(kBase, kDim, 15);
  auto ranker = IvfCoarseRanker::train(make_config(description, metric), view(base, kDim));
  const auto queries = clustered_vectors(3, kDim, 16);
  // Empty index: everything is padding.
  const Result empty = run_search(*ranker, queries, 4, 16);
  CHECK(empty.returned == 0);
  CHECK(std::count(empty.labels.begin(), empty.labels.end(), kNoItem) == 12);

  const std::vector<float> few(base.begin(), base.begin() + 11 * kDim);
  const auto ids = scattered_ids(11);
  ranker->add(view(few, kDim), ids);
  CHECK(ranker->size() == 11);
  const Result got = run_search(*ranker, queries, 25, 1000);
  CHECK(got.returned == 11);
  for (std::size_t q = 0; q < 3; ++q) {
    std::set<ItemId> found;
    for (std::size_t j = 0; j < 11; ++j) found.insert(got.label(q, j));
    CHECK(found == std::set<ItemId>(ids.begin(), ids.end()));
    for (std::size_t j = 11; j < 25; ++j) {
      CHECK(got.label(q, j) == kNoItem);
      CHECK(got.distance(q, j) == pad_of(metric));
    }
    for (std::size_t j = 1; j < 11; ++j) {
      if (metric == Metric::l2) CHECK(got.distance(q, j - 1) <= got.distance(q, j));
      if (metric == Metric::inner_product) CHECK(got.distance(q, j - 1) >= got.distance(q, j));
    }
  }
  // With a filter leaving 3, the fewest real results is 3.
  const funnel::AllowListFilter three(std::vector<ItemId>{ids[0], ids[5], ids[9]});
  CHECK(run_search(*ranker, queries, 25, 1000, &three).returned == 3);
}

TEST_CASE("equal distances are ordered by ascending id", "[ivf]") {
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  IvfCoarseRankerConfig config = make_config("IVF2,Flat", metric, 3);
  config.default_nprobe = 2;
  const std::vector<float> centroids = {1, 0, 0, 0, 1, 0};
  auto ranker =
      IvfCoarseRanker::with_centroids(config, MatrixView<const float>(centroids.data(), 2, 3));
  const std::vector<float> base = {1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, -9, -9, -9};
  ranker->add(MatrixView<const float>(base.data(), 6, 3),
              std::vector<ItemId>{50, 10, 40, 20, 30, 60});
  const Result got = run_search(*ranker, {1, 2, 3}, 6, 2);
  CHECK(got.labels == std::vector<ItemId>{10, 20, 30, 40, 50, 60});
}

TEST_CASE("add and remove", "[ivf][mutation]") {
  const std::string description = GENERATE(all_descriptions());
  const auto metric = Metric::l2;
  CAPTURE(description);
  const auto base = clustered_vectors(kBase, kDim, 17);
  const auto ids = scattered_ids(kBase);
  const auto ranker = trained(make_config(description, metric), base, ids);
  REQUIRE(ranker->size() == kBase);
  const auto sizes_before = ranker->list_sizes();
  std::size_t total = 0;
  for (const std::size_t s : sizes_before) total += s;
  CHECK(total == kBase);

  // Remove 300 ids (and two unknown ones, one listed twice).
  std::vector<ItemId> gone(ids.begin(), ids.begin() + 300);
  std::vector<ItemId> request = gone;
  request.push_back(5);         // never added
  request.push_back(gone[17]);  // listed twice: removed once, then unknown
  const funnel::RemoveReport report = ranker->remove(request);
  CHECK(report.removed == 300);
  CHECK(report.unknown_ids == std::vector<ItemId>{5, gone[17]});
  CHECK(ranker->size() == kBase - 300);

  // Removed ids never come back; the rest are still found. Each removed
  // vector as a query, all lists probed.
  const std::vector<float> removed_vectors(base.begin(), base.begin() + 100 * kDim);
  const std::unordered_set<ItemId> gone_set(gone.begin(), gone.end());
  const Result after = run_search(*ranker, removed_vectors, 10, 1000);
  for (const ItemId id : after.labels) CHECK(!gone_set.contains(id));
  // Rows that moved into freed slots are intact: survivors find themselves
  // (one in 9 checked, to keep the test fast).
  std::vector<float> kept_vectors;
  std::vector<ItemId> kept_ids;
  for (std::size_t i = 300; i < kBase; i += 9) {
    kept_vectors.insert(kept_vectors.end(), base.begin() + static_cast<std::ptrdiff_t>(i * kDim),
                        base.begin() + static_cast<std::ptrdiff_t>((i + 1) * kDim));
    kept_ids.push_back(ids[i]);
  }
  const Result self = run_search(*ranker, kept_vectors, 5, 1000);
  std::size_t found_self = 0;
  for (std::size_t q = 0; q < kept_ids.size(); ++q) {
    for (std::size_t j = 0; j < 5; ++j) found_self += self.label(q, j) == kept_ids[q];
  }
  // Exact for Flat; quantized codes may rank near-duplicates first.
  if (description.find("Flat") != std::string::npos) {
    CHECK(found_self == kept_ids.size());
  } else {
    CHECK(found_self >= kept_ids.size() * 8 / 10);
  }

  // Removed ids can be added again (with other vectors) and are found again.
  const std::vector<float> again(base.begin() + 1000 * kDim, base.begin() + 1010 * kDim);
  const std::vector<ItemId> again_ids(gone.begin(), gone.begin() + 10);
  ranker->add(view(again, kDim), again_ids);
  CHECK(ranker->size() == kBase - 290);
  const Result readded = run_search(*ranker, again, 20, 1000);
  for (std::size_t q = 0; q < 10; ++q) {
    bool found = false;
    for (std::size_t j = 0; j < 20; ++j) found = found || readded.label(q, j) == again_ids[q];
    CHECK(found);
  }
}

TEST_CASE("bad add and search input is rejected and changes nothing", "[ivf][errors]") {
  const auto base = clustered_vectors(kBase, kDim, 19);
  const auto ids = scattered_ids(kBase);
  const auto ranker = trained(make_config("IVF16,SQ8", Metric::inner_product), base, ids);
  const std::vector<float> two(base.begin(), base.begin() + 2 * kDim);
  const auto sizes = ranker->list_sizes();

  // Duplicate against the index: nothing added.
  CHECK_THAT(message_of([&] {
               ranker->add(view(two, kDim), std::vector<ItemId>{1, ids[3]});
             }),
             Contains("id " + std::to_string(ids[3])) && Contains("already in the index"));
  // Duplicate within the batch.
  CHECK_THAT(message_of([&] {
               ranker->add(view(two, kDim), std::vector<ItemId>{8, 8});
             }),
             Contains("appears twice"));
  CHECK_THAT(message_of([&] {
               ranker->add(view(two, kDim), std::vector<ItemId>{1, kNoItem});
             }),
             Contains("ids[1]") && Contains("kNoItem"));
  std::vector<float> nan = two;
  nan[kDim + 5] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THAT(message_of([&] {
               ranker->add(view(nan, kDim), std::vector<ItemId>{1, 2});
             }),
             Contains("row 1") && Contains("column 5"));
  std::vector<float> inf = two;
  inf[3] = std::numeric_limits<float>::infinity();
  CHECK(code_of([&] {
          ranker->add(view(inf, kDim), std::vector<ItemId>{1, 2});
        }) == ErrorCode::invalid_argument);
  CHECK_THAT(
      message_of([&] {
        ranker->add(MatrixView<const float>(two.data(), 2, kDim - 1), std::vector<ItemId>{1, 2});
      }),
      Contains("expected dim 32"));
  CHECK(code_of([&] { ranker->add(view(two, kDim), std::vector<ItemId>{1}); }) ==
        ErrorCode::invalid_argument);
  CHECK(ranker->size() == kBase);
  CHECK(ranker->list_sizes() == sizes);

  // Search input.
  std::vector<float> d(10);
  std::vector<ItemId> l(10);
  const MatrixView<float> dv(d.data(), 1, 10);
  const MatrixView<ItemId> lv(l.data(), 1, 10);
  const std::vector<float> q(base.begin(), base.begin() + kDim);
  CHECK(code_of([&] { ranker->search(view(q, kDim), 0, dv, lv); }) == ErrorCode::invalid_argument);
  CHECK(code_of([&] { ranker->search(MatrixView<const float>(q.data(), 1, 31), 10, dv, lv); }) ==
        ErrorCode::invalid_argument);
  CHECK(code_of([&] { ranker->search(view(q, kDim), 5, dv, lv); }) == ErrorCode::invalid_argument);
  std::vector<float> bad_q = q;
  bad_q[7] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THAT(message_of([&] { ranker->search(view(bad_q, kDim), 10, dv, lv); }),
             Contains("row 0") && Contains("column 7"));
  IvfSearchParams params;
  params.batch = static_cast<IvfBatchMode>(42);
  CHECK(code_of([&] { ranker->search(view(q, kDim), 10, dv, lv, &params); }) ==
        ErrorCode::invalid_argument);
  // No queries: nothing written, 0 returned.
  CHECK(ranker->search(MatrixView<const float>(q.data(), 0, kDim), 10,
                       MatrixView<float>(d.data(), 0, 10),
                       MatrixView<ItemId>(l.data(), 0, 10)) == 0);
}

TEST_CASE("configs and training samples are validated", "[ivf][errors][train]") {
  const auto base = clustered_vectors(2000, 16, 21);
  const auto sample = view(base, 16);
  const auto bad_description = [&](const std::string& description) {
    return message_of(
        [&] { IvfCoarseRanker::train(make_config(description, Metric::l2, 16), sample); });
  };
  CHECK_THAT(bad_description("IVF0,Flat"), Contains("nlist is 0"));
  CHECK_THAT(bad_description("IVF16,PQ7"), Contains("divisible by 7") && Contains("dim is 16"));
  CHECK_THAT(bad_description("HNSW32"), Contains("\"HNSW32\" does not parse"));
  CHECK_THAT(bad_description("IVF16,SQ4"), Contains("unknown codes \"SQ4\""));
  CHECK_THAT(bad_description("IVF16,PQ8x0"), Contains("bits"));
  CHECK_THAT(bad_description("IVFx,Flat"), Contains("not a number"));
  CHECK_THAT(bad_description("IVF16,PQ4x17"), Contains("expected 1..16"));
  CHECK(code_of([&] { IvfCoarseRanker::train(make_config("IVF16", Metric::l2, 16), sample); }) ==
        ErrorCode::invalid_argument);

  // Too small a sample names both numbers.
  IvfCoarseRankerConfig config = make_config("IVF64,Flat", Metric::l2, 16);
  config.min_train_per_list = 39;
  CHECK_THAT(message_of([&] { IvfCoarseRanker::train(config, sample); }),
             Contains("2000 vectors") && Contains("2496") && Contains("39 x nlist 64"));
  config.description = "IVF8,PQ4";  // 8-bit PQ: 39 * 256 = 9984 vectors
  CHECK_THAT(message_of([&] { IvfCoarseRanker::train(config, sample); }),
             Contains("9984") && Contains("256 centroids per PQ sub-quantizer"));
  config.description = "IVF32,Flat";
  config.train_size = 500;  // 39 * 32 = 1248 needed
  CHECK_THAT(message_of([&] { IvfCoarseRanker::train(config, sample); }),
             Contains("train_size is 500") && Contains("1248"));

  config = make_config("IVF8,Flat", Metric::l2, 16);
  CHECK_THAT(message_of([&] { IvfCoarseRanker::train(config, view(base, 8)); }),
             Contains("expected dim 16"));
  std::vector<float> nan = base;
  nan[1234 * 16 + 3] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THAT(message_of([&] { IvfCoarseRanker::train(config, view(nan, 16)); }),
             Contains("row 1234") && Contains("column 3"));
  CHECK(code_of([&] { IvfCoarseRanker::train(config, MatrixView<const float>()); }) ==
        ErrorCode::invalid_argument);

  config.default_nprobe = 9;
  CHECK_THAT(message_of([&] { config.validate(); }), Contains("default_nprobe is 9"));
  config.default_nprobe = 1;
  config.threads = 0;
  CHECK_THAT(message_of([&] { config.validate(); }), Contains("threads is 0"));
  config.threads = 1;
  config.dim = 0;
  CHECK(code_of([&] { config.validate(); }) == ErrorCode::invalid_argument);
  config.dim = 16;
  config.kernel = static_cast<IvfKernel>(9);
  CHECK(code_of([&] { config.validate(); }) == ErrorCode::invalid_argument);
  config.kernel = IvfKernel::automatic;
  config.kmeans_iterations = 0;
  CHECK(code_of([&] { config.validate(); }) == ErrorCode::invalid_argument);
  config.kmeans_iterations = 5;
  CHECK_NOTHROW(config.validate());

  // train_size picks a seeded subset: enough and valid.
  config.train_size = 400;
  CHECK(IvfCoarseRanker::train(config, sample)->nlist() == 8);
}

TEST_CASE("with_centroids builds on given centroids", "[ivf][train]") {
  const auto base = clustered_vectors(kBase, kDim, 23);
  const auto ids = scattered_ids(kBase);
  const auto original = trained(make_config("IVF16,SQ8", Metric::l2), base, ids);
  const funnel::Matrix<float> centroids = original->centroids();
  // The same centroids and SQ training sample give the same index.
  IvfCoarseRankerConfig config = make_config("IVF16,SQ8", Metric::l2);
  config.train_size = kBase;
  const auto copy = IvfCoarseRanker::with_centroids(config, centroids.view(), view(base, kDim));
  CHECK(copy->centroids().values() == centroids.values());
  copy->add(view(base, kDim), ids);
  CHECK(copy->list_sizes() == original->list_sizes());
  const auto queries = clustered_vectors(10, kDim, 24);
  // Same centroids, same SQ ranges (trained on the same rows): same codes.
  check_identical(run_search(*copy, queries, 10, 4), run_search(*original, queries, 10, 4));

  // Flat needs no sample.
  const auto flat =
      IvfCoarseRanker::with_centroids(make_config("IVF16,Flat", Metric::l2), centroids.view());
  flat->add(view(base, kDim), ids);
  CHECK(flat->list_sizes() == original->list_sizes());
  // SQ8 and PQ do.
  CHECK_THAT(message_of([&] {
               IvfCoarseRanker::with_centroids(make_config("IVF16,SQ8", Metric::l2),
                                               centroids.view());
             }),
             Contains("training sample has 0 vectors"));
  CHECK_THAT(message_of([&] {
               IvfCoarseRanker::with_centroids(make_config("IVF8,Flat", Metric::l2),
                                               centroids.view());
             }),
             Contains("16 x 32") && Contains("8 x 32"));
}

TEST_CASE("names, accessors and memory", "[ivf]") {
  const auto base = clustered_vectors(kBase, kDim, 25);
  const auto ids = scattered_ids(kBase);
  const auto flat = trained(make_config("IVF16,Flat", Metric::inner_product), base, ids);
  const auto sq8 = trained(make_config("IVF16,SQ8", Metric::inner_product), base, ids);
  CHECK(flat->name() == "ivf(IVF16,Flat, ip, dim=32)");
  CHECK(sq8->name() == "ivf(IVF16,SQ8, ip, dim=32)");
  CHECK(flat->nlist() == 16);
  CHECK(flat->config().description == "IVF16,Flat");
  CHECK(flat->dim() == kDim);
  CHECK(flat->metric() == Metric::inner_product);
  CHECK(funnel::to_string(IvfKernel::avx512) == "avx512");
  CHECK(funnel::to_string(IvfKernel::automatic) == "automatic");
  CHECK(IvfCoarseRanker::kernel_supported(IvfKernel::portable));
  CHECK(flat->centroids().rows() == 16);
  // Flat lists hold 4 * 32 bytes per vector + its id; SQ8 32 + id.
  CHECK(flat->memory_bytes() >= kBase * (4 * kDim + 8));
  CHECK(sq8->memory_bytes() >= kBase * (kDim + 8));
  CHECK(sq8->memory_bytes() < flat->memory_bytes() / 2);
}

TEST_CASE("save and load round-trip with identical results", "[ivf][io]") {
  const std::string description = GENERATE(all_descriptions());
  const auto metric = GENERATE(Metric::inner_product, Metric::l2);
  CAPTURE(description, funnel::to_string(metric));
  const auto base = clustered_vectors(kBase, kDim, 27);
  const auto ids = scattered_ids(kBase);
  const auto ranker = trained(make_config(description, metric), base, ids);
  ranker->remove(std::vector<ItemId>(ids.begin(), ids.begin() + 100));
  const funnel::testing::TempDir dir;
  ranker->save(dir / "index.faiss");
  const std::size_t entries = funnel::testing::count_entries(dir.path());
  CHECK(entries == 2);  // no temporaries left

  const nlohmann::json side =
      nlohmann::json::parse(funnel::testing::read_bytes(dir / "index.faiss.json"));
  CHECK(side["format"] == "funnel.ivf_coarse_ranker");
  CHECK(side["version"] == 1);
  CHECK(side["description"] == description);
  CHECK(side["metric"] == funnel::to_string(metric));
  CHECK(side["dim"] == kDim);
  CHECK(side["count"] == kBase - 100);
  CHECK(side["index_bytes"] == std::filesystem::file_size(dir / "index.faiss"));

  const auto loaded = IvfCoarseRanker::load(dir / "index.faiss");
  CHECK(loaded->size() == kBase - 100);
  CHECK(loaded->list_sizes() == ranker->list_sizes());
  CHECK(loaded->centroids().values() == ranker->centroids().values());
  CHECK(loaded->name() == ranker->name());
  CHECK(loaded->config().default_nprobe == 4);
  const auto queries = clustered_vectors(40, kDim, 28);
  check_identical(run_search(*loaded, queries, 10, 5), run_search(*ranker, queries, 10, 5));
  // The loaded index accepts changes like the original.
  CHECK(loaded->remove(std::vector<ItemId>{ids[0], ids[100]}).removed == 1);
  loaded->add(view(std::vector<float>(base.begin(), base.begin() + kDim), kDim),
              std::vector<ItemId>{ids[0]});
  CHECK(loaded->size() == kBase - 100);
}

TEST_CASE("damaged or inconsistent files are clear errors", "[ivf][io]") {
  const auto base = clustered_vectors(kBase, kDim, 29);
  const auto ids = scattered_ids(kBase);
  const auto ranker = trained(make_config("IVF16,Flat", Metric::l2), base, ids);
  const funnel::testing::TempDir dir;
  const auto path = dir / "index.faiss";
  const auto side = dir / "index.faiss.json";
  ranker->save(path);
  const std::string good_index = funnel::testing::read_bytes(path);
  const std::string good_side = funnel::testing::read_bytes(side);
  const auto restore = [&] {
    funnel::testing::write_bytes(path, good_index);
    funnel::testing::write_bytes(side, good_side);
  };
  const auto load = [&] { IvfCoarseRanker::load(path); };

  CHECK(code_of([&] { IvfCoarseRanker::load(dir / "missing.faiss"); }) == ErrorCode::io);
  std::filesystem::remove(side);
  CHECK(code_of(load) == ErrorCode::io);
  restore();

  // Truncated index.
  funnel::testing::write_bytes(path, good_index.substr(0, good_index.size() / 2));
  CHECK_THAT(message_of(load), Contains("truncated"));
  CHECK(code_of(load) == ErrorCode::format);
  // Truncated and the sidecar updated to match: FAISS's parser fails cleanly.
  fix_sidecar(path);
  CHECK(code_of(load) == ErrorCode::format);
  restore();

  // One flipped byte.
  std::string flipped = good_index;
  flipped[flipped.size() / 3] = static_cast<char>(flipped[flipped.size() / 3] ^ 0x10);
  funnel::testing::write_bytes(path, flipped);
  CHECK_THAT(message_of(load), Contains("checksum"));
  CHECK(code_of(load) == ErrorCode::format);
  restore();

  // Sidecar fields that contradict the index.
  const std::vector<std::pair<std::string, nlohmann::json>> edits = {
      {"dim", 16},
      {"metric", "inner_product"},
      {"count", 5},
      {"description", "IVF16,SQ8"},
      {"description", "IVF8,Flat"},
      {"nlist", 8},
      {"format", "funnel.exact_coarse_ranker"},
      {"version", 2},
      {"ids_checksum", "mix64:0000000000000000"},
      {"metric", "cosine"},
      {"description", "HNSW32"},
      {"default_nprobe", 0},
  };
  for (const auto& edit : edits) {
    CAPTURE(edit.first, edit.second.dump());
    restore();
    fix_sidecar(path, [&edit](nlohmann::json& doc) { doc[edit.first] = edit.second; });
    CHECK(code_of(load) == ErrorCode::format);
  }
  restore();
  fix_sidecar(path, [](nlohmann::json& doc) { doc.erase("checksum"); });
  CHECK_THAT(message_of(load), Contains("missing field 'checksum'"));
  funnel::testing::write_bytes(side, "{not json");
  CHECK(code_of(load) == ErrorCode::format);

  // A FAISS file of another index type, with a sidecar that vouches for it.
  restore();
  {
    faiss::IndexFlatL2 other(kDim);
    other.add(10, base.data());
    faiss::write_index(&other, path.c_str());
  }
  fix_sidecar(path);
  CHECK_THAT(message_of(load), Contains("'IxF2'"));
  // An IVF index of other codes than the sidecar says.
  restore();
  {
    const auto sq = trained(make_config("IVF16,SQ8", Metric::l2), base, ids);
    sq->save(dir / "sq.faiss");
    funnel::testing::write_bytes(path, funnel::testing::read_bytes(dir / "sq.faiss"));
  }
  fix_sidecar(path);
  CHECK(code_of(load) == ErrorCode::format);
  // A FAISS IVF index that funnel did not write (a direct map, its own ids).
  restore();
  {
    faiss::IndexFlatL2 quantizer(kDim);
    faiss::IndexIVFFlat ivf(&quantizer, kDim, 16);
    ivf.train(static_cast<faiss::Index::idx_t>(kBase), base.data());
    ivf.add(static_cast<faiss::Index::idx_t>(kBase), base.data());  // ids 0..2999
    ivf.make_direct_map(true);
    faiss::write_index(&ivf, path.c_str());
  }
  fix_sidecar(path);
  CHECK_THAT(message_of(load), Contains("direct map"));

  // The good files still load.
  restore();
  CHECK(IvfCoarseRanker::load(path)->size() == kBase);
  CHECK(code_of([&] { IvfCoarseRanker::load(path, 0); }) == ErrorCode::invalid_argument);
}

TEST_CASE("a failed save leaves the old files intact", "[ivf][io]") {
  const auto base = clustered_vectors(kBase, kDim, 31);
  const auto ranker = trained(make_config("IVF16,Flat", Metric::l2), base, scattered_ids(kBase));
  const funnel::testing::TempDir dir;
  CHECK(code_of([&] { ranker->save(dir / "no-such-dir" / "index.faiss"); }) == ErrorCode::io);
  CHECK(funnel::testing::count_entries(dir.path()) == 0);
}

TEST_CASE("concurrent searches, adds and removes", "[ivf][concurrency]") {
  constexpr std::size_t kStable = 1500;
  constexpr std::size_t kChurn = 400;
  constexpr std::size_t kStressDim = 16;
  const auto stable = clustered_vectors(kStable, kStressDim, 33);
  const auto churn = clustered_vectors(kChurn, kStressDim, 34);
  const auto fresh = clustered_vectors(2000, kStressDim, 35);
  IvfCoarseRankerConfig config = make_config("IVF8,Flat", Metric::l2, kStressDim, 2);
  config.default_nprobe = 8;
  // No k-means (FAISS's OpenMP is invisible to ThreadSanitizer): the first
  // stable vectors are the centroids.
  auto ranker = IvfCoarseRanker::with_centroids(
      config, MatrixView<const float>(stable.data(), 8, kStressDim));
  ranker->add(view(stable, kStressDim), scattered_ids(kStable, 0));
  std::vector<ItemId> churn_ids(kChurn);
  for (std::size_t i = 0; i < kChurn; ++i) churn_ids[i] = 100000 + static_cast<ItemId>(i);
  ranker->add(view(churn, kStressDim), churn_ids);

  const auto duration = std::chrono::milliseconds(kThreadSanitizer ? 300 : 1000);
  std::atomic<std::size_t> removed_upto{0};  // churn[0, removed_upto) are gone for good
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> searches{0};
  std::atomic<std::size_t> violations{0};
  std::atomic<std::size_t> added{0};
  const funnel::PredicateFilter even([](ItemId id) { return id % 2 == 0; });

  const auto searcher = [&](unsigned seed) {
    std::mt19937 rng(seed);
    while (!stop.load()) {
      const std::size_t before = removed_upto.load();
      // Query with the vectors of removed churn items: present, they would
      // be the nearest.
      const std::size_t nq = 1 + rng() % 4;
      std::vector<float> queries;
      for (std::size_t q = 0; q < nq; ++q) {
        const std::size_t at = before == 0 ? rng() % kChurn : rng() % before;
        queries.insert(queries.end(), churn.begin() + static_cast<std::ptrdiff_t>(at * kStressDim),
                       churn.begin() + static_cast<std::ptrdiff_t>((at + 1) * kStressDim));
      }
      const bool filtered = rng() % 2 == 0;
      const Result r = run_search(*ranker, queries, 8, 0, filtered ? &even : nullptr);
      for (const ItemId id : r.labels) {
        const bool removed = id >= 100000 && static_cast<std::size_t>(id - 100000) < before;
        if (removed || id == kNoItem || (filtered && id % 2 != 0)) violations.fetch_add(1);
      }
      searches.fetch_add(1);
    }
  };
  const auto remover = [&] {
    for (std::size_t i = 0; i < kChurn && !stop.load(); ++i) {
      const funnel::RemoveReport report = ranker->remove(std::vector<ItemId>{churn_ids[i]});
      if (report.removed != 1) violations.fetch_add(1);
      removed_upto.store(i + 1);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  };
  const auto adder = [&] {
    for (std::size_t b = 0; b * 10 < 2000 && !stop.load(); ++b) {
      std::vector<ItemId> batch(10);
      for (std::size_t i = 0; i < 10; ++i) batch[i] = 500000 + static_cast<ItemId>(b * 10 + i);
      ranker->add(MatrixView<const float>(fresh.data() + b * 10 * kStressDim, 10, kStressDim),
                  batch);
      added.fetch_add(10);
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
  };

  {
    std::vector<std::jthread> threads;
    for (unsigned t = 0; t < 3; ++t) threads.emplace_back(searcher, 40 + t);
    threads.emplace_back(remover);
    threads.emplace_back(adder);
    std::this_thread::sleep_for(duration);
    stop.store(true);
  }
  CHECK(violations.load() == 0);
  CHECK(searches.load() > 0);
  CHECK(ranker->size() == kStable + kChurn - removed_upto.load() + added.load());
  std::size_t listed = 0;
  for (const std::size_t s : ranker->list_sizes()) listed += s;
  CHECK(listed == ranker->size());
}
