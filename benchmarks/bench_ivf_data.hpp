// SPDX-License-Identifier: Apache-2.0
#pragma once

// Data sets of bench_ivf_search: Fashion-MNIST (as ann-benchmarks uses it),
// a generated clustered set, and the title vectors of a generated catalogue;
// and their exact ground truth, cached as .npy next to the data.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "funnel/catalog.hpp"
#include "funnel/coarse_ranker.hpp"
#include "funnel/exact_coarse_ranker.hpp"
#include "funnel/hashing_encoder.hpp"
#include "funnel/history_profile.hpp"
#include "funnel/matrix.hpp"
#include "funnel/npy.hpp"
#include "funnel/user.hpp"
#include "shopgen/shopgen.hpp"

namespace bench {

/// Base vectors, queries and how they compare.
struct Dataset {
  std::string name;         ///< "fashion-mnist", "clustered" or "catalog"
  std::string key;          ///< names the cache files: every parameter that changes the data
  std::string description;  ///< one paragraph for the report
  funnel::Metric metric = funnel::Metric::l2;
  funnel::Matrix<float> base;
  funnel::Matrix<float> queries;
};

/// Exact top-k of every query: ids and distances, nq x k.
struct GroundTruth {
  funnel::Matrix<std::int64_t> ids;
  funnel::Matrix<float> distances;
};

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Runs body(begin, end) over [0, n) split into `threads` contiguous ranges.
template <class Body>
void parallel_ranges(std::size_t n, int threads, const Body& body) {
  const auto parts = static_cast<std::size_t>(std::max(1, threads));
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < parts; ++t) {
    pool.emplace_back([&body, n, parts, t] { body(n * t / parts, n * (t + 1) / parts); });
  }
  body(0, n / parts);
  for (std::thread& thread : pool) thread.join();
}

// ---------------------------------------------------------------- Fashion-MNIST

inline std::uint32_t read_be32(std::ifstream& in, const std::filesystem::path& path) {
  std::array<unsigned char, 4> b{};
  if (!in.read(reinterpret_cast<char*>(b.data()), 4)) {  // NOLINT(*-reinterpret-cast)
    throw std::runtime_error(path.string() + ": truncated IDX header");
  }
  return (std::uint32_t{b[0]} << 24U) | (std::uint32_t{b[1]} << 16U) | (std::uint32_t{b[2]} << 8U) |
         std::uint32_t{b[3]};
}

/// Reads an uncompressed IDX image file (magic 0x00000803: unsigned bytes,
/// 3 dimensions) as rows of float pixel values 0..255, at most max_rows rows.
inline funnel::Matrix<float> read_idx_images(const std::filesystem::path& path,
                                             std::size_t max_rows) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error(path.string() +
                             ": cannot open (run_ivf_benchmark.sh decompresses the .gz files "
                             "of dataset-fashion-mnist here with gzip -dc)");
  }
  const std::uint32_t magic = read_be32(in, path);
  if (magic != 0x00000803U) {
    throw std::runtime_error(path.string() + ": not an IDX image file (magic " +
                             std::to_string(magic) + ", expected 2051)");
  }
  const std::size_t count = read_be32(in, path);
  const std::size_t rows = read_be32(in, path);
  const std::size_t cols = read_be32(in, path);
  const std::size_t n = std::min(count, max_rows);
  const std::size_t dim = rows * cols;
  std::vector<unsigned char> pixels(n * dim);
  if (!in.read(reinterpret_cast<char*>(pixels.data()),  // NOLINT(*-reinterpret-cast)
               static_cast<std::streamsize>(pixels.size()))) {
    throw std::runtime_error(path.string() + ": truncated IDX data (expected " + std::to_string(n) +
                             " images of " + std::to_string(dim) + " bytes)");
  }
  funnel::Matrix<float> out(n, dim);
  std::transform(pixels.begin(), pixels.end(), out.data(),
                 [](unsigned char p) { return static_cast<float>(p); });
  return out;
}

/// ann-benchmarks' fashion-mnist-784-euclidean: the 60,000 training images
/// are the base, the 10,000 test images the queries, L2 on raw pixel values.
inline Dataset load_fashion_mnist(const std::filesystem::path& dir, std::size_t n, std::size_t nq) {
  Dataset d;
  d.name = "fashion-mnist";
  d.metric = funnel::Metric::l2;
  d.base = read_idx_images(dir / "train-images-idx3-ubyte", n);
  d.queries = read_idx_images(dir / "t10k-images-idx3-ubyte", nq);
  d.key =
      "fashion-mnist-n" + std::to_string(d.base.rows()) + "-q" + std::to_string(d.queries.rows());
  d.description =
      "Fashion-MNIST as ann-benchmarks uses it (fashion-mnist-784-euclidean): the " +
      std::to_string(d.base.rows()) + " training images are the base, " +
      std::to_string(d.queries.rows()) +
      " test images the queries, 784 dimensions, pixel values 0..255 as floats, squared L2. "
      "Source: Debian package dataset-fashion-mnist (" +
      dir.string() + " holds the decompressed IDX files).";
  return d;
}

// --------------------------------------------------------------------- clustered

/// Parameters of the generated clustered set (see make_clustered).
struct ClusteredSpec {
  std::size_t n = 1000000;
  std::size_t nq = 10000;
  std::size_t dim = 128;
  /// Intrinsic dimension of the cluster mixture: the difficulty knob. 12 is
  /// calibrated so that FAISS IVF4096,Flat on 1M vectors needs nprobe > 32
  /// for recall@10 = 0.95 (docs/coarse-benchmark.md).
  std::size_t latent_dim = 12;
  std::size_t clusters = 16384;  ///< true clusters (many more than the lists)
  double spread = 1.0;           ///< within-cluster std (centres are N(0, I))
  double noise = 0.1;            ///< isotropic noise added in the full dimension
  std::uint64_t seed = 42;
};

/// A Gaussian mixture of `clusters` components in a latent space of
/// `latent_dim` dimensions (centres N(0, I), points centre + spread * N(0, I),
/// component weights log-normal(0, 0.5) so that clusters differ in size),
/// mapped to `dim` dimensions by a fixed random linear map and topped with
/// isotropic noise. Queries are fresh draws from the same distribution.
/// Rows are generated in blocks of 4096, each from its own seeded stream,
/// so the data do not depend on the thread count.
inline Dataset make_clustered(const ClusteredSpec& s, int threads) {
  const std::size_t lat = s.latent_dim;
  std::mt19937_64 setup(s.seed);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  std::vector<float> centres(s.clusters * lat);
  for (float& c : centres) c = normal(setup);
  std::lognormal_distribution<double> lognormal(0.0, 0.5);
  std::vector<double> weights(s.clusters);
  for (double& w : weights) w = lognormal(setup);
  // The map keeps the latent scale: entries N(0, 1/lat).
  std::vector<float> map(s.dim * lat);
  for (float& m : map) m = normal(setup) / std::sqrt(static_cast<float>(lat));

  const auto draw = [&](std::size_t rows, std::uint64_t stream) {
    funnel::Matrix<float> out(rows, s.dim);
    constexpr std::size_t kBlock = 4096;
    const std::size_t blocks = (rows + kBlock - 1) / kBlock;
    parallel_ranges(blocks, threads, [&](std::size_t b0, std::size_t b1) {
      std::vector<float> z(lat);
      for (std::size_t b = b0; b < b1; ++b) {
        std::mt19937_64 rng(s.seed ^ (stream * 0x9E3779B97F4A7C15ULL) ^
                            (b * 0xBF58476D1CE4E5B9ULL));
        std::discrete_distribution<std::size_t> pick(weights.begin(), weights.end());
        std::normal_distribution<float> gauss(0.0F, 1.0F);
        for (std::size_t r = b * kBlock; r < std::min(rows, (b + 1) * kBlock); ++r) {
          const std::size_t c = pick(rng);
          for (std::size_t j = 0; j < lat; ++j) {
            z[j] = centres[c * lat + j] + static_cast<float>(s.spread) * gauss(rng);
          }
          float* x = out.data() + r * s.dim;
          for (std::size_t i = 0; i < s.dim; ++i) {
            float v = static_cast<float>(s.noise) * gauss(rng);
            for (std::size_t j = 0; j < lat; ++j) v += map[i * lat + j] * z[j];
            x[i] = v;
          }
        }
      }
    });
    return out;
  };

  Dataset d;
  d.name = "clustered";
  d.metric = funnel::Metric::l2;
  d.base = draw(s.n, 1);
  d.queries = draw(s.nq, 2);
  char key[256];
  std::snprintf(key, sizeof key, "clustered-n%zu-q%zu-d%zu-lat%zu-c%zu-s%g-z%g-seed%llu", s.n, s.nq,
                s.dim, s.latent_dim, s.clusters, s.spread, s.noise,
                static_cast<unsigned long long>(s.seed));
  d.key = key;
  char text[1024];
  std::snprintf(text, sizeof text,
                "%zu base vectors and %zu queries of dimension %zu, generated (seed %llu): a "
                "mixture of %zu Gaussian clusters (centres N(0, I), within-cluster std %g, "
                "log-normal(0, 0.5) cluster weights) in a %zu-dimensional latent space, mapped "
                "to %zu dimensions by a random linear map, plus isotropic N(0, %g^2) noise; "
                "queries are fresh draws from the same distribution; squared L2. The clusters "
                "overlap, so a query's neighbours spread over many inverted lists.",
                s.n, s.nq, s.dim, static_cast<unsigned long long>(s.seed), s.clusters, s.spread,
                lat, s.dim, s.noise);
  d.description = text;
  return d;
}

// ----------------------------------------------------------------------- catalog

/// Parameters of the catalogue set.
struct CatalogSpec {
  std::size_t items = 1000000;
  std::size_t nq = 10000;
  std::size_t dim = 256;  ///< HashingEncoder dimension
  std::uint64_t seed = 1;
  std::size_t days = 30;
};

/// A catalogue from tools/shopgen (items titles encoded by the default
/// HashingEncoder, inner product of unit vectors) and, as queries, the user
/// vectors funnel's own HistoryProfile builds from each user's history (the
/// normalised, time-decayed, event-weighted mean of the vectors of the items
/// the user saw, clicked, carted or bought), taken at the end of the
/// simulated period. Both matrices are cached as .npy in `cache`.
inline Dataset make_catalog(const CatalogSpec& s, const std::filesystem::path& cache, int threads) {
  Dataset d;
  d.name = "catalog";
  d.metric = funnel::Metric::inner_product;
  d.key = "catalog-n" + std::to_string(s.items) + "-q" + std::to_string(s.nq) + "-d" +
          std::to_string(s.dim) + "-days" + std::to_string(s.days) + "-seed" +
          std::to_string(s.seed);
  d.description =
      "The item titles of a generated catalogue of " + std::to_string(s.items) +
      " items (tools/shopgen, seed " + std::to_string(s.seed) +
      ", bilingual Chinese/English titles) encoded by funnel's default HashingEncoder (dim " +
      std::to_string(s.dim) + ", unit vectors), inner product. Queries: " + std::to_string(s.nq) +
      " user vectors, each the HistoryProfile mean vector (event-type weights, 14-day "
      "half-life, last 100 events) of one generated user's " +
      std::to_string(s.days) + "-day history, as the funnel's coarse stage would use them.";
  const std::filesystem::path base_path = cache / (d.key + ".base.npy");
  const std::filesystem::path query_path = cache / (d.key + ".queries.npy");
  if (std::filesystem::exists(base_path) && std::filesystem::exists(query_path)) {
    d.base = funnel::load_npy_f32(base_path);
    d.queries = funnel::load_npy_f32(query_path);
    return d;
  }

  auto start = std::chrono::steady_clock::now();
  funnel::shopgen::ShopConfig config;
  config.items = s.items;
  // Some users have no history at the end of the period; 30% spare users
  // leave enough with one.
  config.users = s.nq + s.nq * 3 / 10 + 100;
  config.days = s.days;
  config.seed = s.seed;
  funnel::shopgen::Shop shop = funnel::shopgen::generate_shop(config);
  std::printf("  catalog: generated %zu items, %zu users, %zu events in %.1f s\n",
              shop.catalog.size(), shop.users.size(), shop.events.size(), seconds_since(start));

  start = std::chrono::steady_clock::now();
  funnel::HashingEncoderConfig encoder_config;
  encoder_config.dim = s.dim;
  const funnel::HashingEncoder encoder(encoder_config);
  const std::span<const funnel::Item> items = shop.catalog.items();
  funnel::Matrix<float> vectors(items.size(), s.dim);
  parallel_ranges(items.size(), threads, [&](std::size_t r0, std::size_t r1) {
    constexpr std::size_t kChunk = 4096;
    std::vector<std::string_view> titles;
    for (std::size_t r = r0; r < r1; r += kChunk) {
      const std::size_t end = std::min(r1, r + kChunk);
      titles.clear();
      for (std::size_t i = r; i < end; ++i) titles.emplace_back(items[i].title);
      encoder.encode(titles, funnel::MatrixView<float>(vectors.data() + r * s.dim, end - r, s.dim));
    }
  });
  std::printf("  catalog: encoded %zu titles in %.1f s (%d threads)\n", items.size(),
              seconds_since(start), threads);

  start = std::chrono::steady_clock::now();
  shop.catalog.set_vectors(std::move(vectors));
  std::int64_t end_ts = config.start_ts;
  for (const funnel::Event& e : shop.events) end_ts = std::max(end_ts, e.ts);
  const auto histories = funnel::group_histories(shop.events);
  funnel::Matrix<float> queries(s.nq, s.dim);
  std::size_t made = 0;
  for (const funnel::UserProfile& user : shop.users) {
    if (made == s.nq) break;
    const auto it = histories.find(user.id);
    if (it == histories.end()) continue;
    const funnel::HistoryProfile profile(shop.catalog, it->second, end_ts);
    const std::span<const float> mean = profile.mean_vector();
    if (mean.empty()) continue;
    std::copy(mean.begin(), mean.end(), queries.data() + made * s.dim);
    ++made;
  }
  if (made < s.nq) {
    throw std::runtime_error("catalog: only " + std::to_string(made) + " of " +
                             std::to_string(config.users) + " users have a history; need " +
                             std::to_string(s.nq));
  }
  std::printf("  catalog: %zu user vectors in %.1f s\n", made, seconds_since(start));

  const funnel::MatrixView<const float> all = shop.catalog.vectors();
  d.base = funnel::Matrix<float>(all.rows, all.cols,
                                 std::vector<float>(all.data, all.data + all.size()));
  d.queries = std::move(queries);
  std::filesystem::create_directories(cache);
  funnel::save_npy(base_path, d.base.view());
  funnel::save_npy(query_path, d.queries.view());
  return d;
}

// ------------------------------------------------------------------ ground truth

/// The exact top-k of every query (funnel's ExactCoarseRanker, which
/// bench_exact_search checks against FAISS's IndexFlat), cached in `cache`.
inline GroundTruth ground_truth(const Dataset& d, std::size_t k, const std::filesystem::path& cache,
                                int threads) {
  const std::string stem = d.key + ".gt-k" + std::to_string(k);
  const std::filesystem::path ids_path = cache / (stem + ".ids.npy");
  const std::filesystem::path dist_path = cache / (stem + ".dist.npy");
  GroundTruth gt;
  if (std::filesystem::exists(ids_path) && std::filesystem::exists(dist_path)) {
    gt.ids = funnel::load_npy_i64(ids_path);
    gt.distances = funnel::load_npy_f32(dist_path);
    if (gt.ids.rows() == d.queries.rows() && gt.ids.cols() == k) return gt;
  }
  const auto start = std::chrono::steady_clock::now();
  funnel::ExactCoarseRankerConfig config;
  config.dim = d.base.cols();
  config.metric = d.metric;
  config.threads = threads;
  funnel::ExactCoarseRanker exact(config);
  std::vector<funnel::ItemId> ids(d.base.rows());
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<funnel::ItemId>(i);
  exact.add(d.base.view(), ids);
  gt.ids = funnel::Matrix<std::int64_t>(d.queries.rows(), k);
  gt.distances = funnel::Matrix<float>(d.queries.rows(), k);
  exact.search(d.queries.view(), k, gt.distances.view(), gt.ids.view());
  std::printf("  ground truth: exact top-%zu of %zu queries in %.1f s, cached in %s\n", k,
              d.queries.rows(), seconds_since(start), cache.string().c_str());
  std::filesystem::create_directories(cache);
  funnel::save_npy(ids_path, gt.ids.view());
  funnel::save_npy(dist_path, gt.distances.view());
  return gt;
}

}  // namespace bench
