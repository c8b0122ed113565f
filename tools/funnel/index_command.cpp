// SPDX-License-Identifier: Apache-2.0
// `funnel index build|search|info`: coarse-ranker indexes on .npy files.

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "funnel/coarse_ranker.hpp"
#include "funnel/error.hpp"
#include "funnel/exact_coarse_ranker.hpp"
#include "funnel/ivf_coarse_ranker.hpp"
#include "funnel/matrix.hpp"
#include "funnel/metrics.hpp"
#include "funnel/npy.hpp"
#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"

namespace funnel::cli {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kIvfFormat = "funnel.ivf_coarse_ranker";
constexpr std::string_view kExactFormat = "funnel.exact_coarse_ranker";
constexpr int kMaxThreads = 256;

// ---------------------------------------------------------------------------
// Shared helpers

class Stopwatch {
 public:
  [[nodiscard]] double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

std::string format_bytes(std::uint64_t bytes) {
  constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  auto value = static_cast<double>(bytes);
  std::size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", value, kUnits[unit]);
  return text;
}

fs::path sidecar_path(const fs::path& index) {
  fs::path sidecar = index;
  sidecar += ".json";
  return sidecar;
}

// The sidecar decides which ranker reads the index; the ranker's own load()
// validates everything else (sizes, checksums, ids).
nlohmann::json read_sidecar(const fs::path& index) {
  const fs::path path = sidecar_path(index);
  if (!fs::exists(index)) {
    detail::fail(ErrorCode::io, "index file '", index.string(), "' does not exist");
  }
  if (!fs::exists(path)) {
    detail::fail(ErrorCode::io, "index file '", index.string(), "' has no sidecar '", path.string(),
                 "' (funnel writes both; copy them together)");
  }
  const std::string text = detail::read_file(path);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    detail::fail(ErrorCode::format, "sidecar '", path.string(), "' is not valid JSON: ", e.what());
  }
  if (!doc.is_object() || !doc.contains("format") || !doc["format"].is_string()) {
    detail::fail(ErrorCode::format, "sidecar '", path.string(),
                 "' has no string field 'format' (is this a funnel index?)");
  }
  const auto format = doc["format"].get<std::string>();
  if (format != kIvfFormat && format != kExactFormat) {
    detail::fail(ErrorCode::format, "sidecar '", path.string(), "': unknown index format \"",
                 format, "\" (expected \"", kIvfFormat, "\" or \"", kExactFormat, "\")");
  }
  return doc;
}

struct LoadedIndex {
  std::unique_ptr<CoarseRanker> ranker;
  const IvfCoarseRanker* ivf = nullptr;      // set when ranker is an IVF index
  const ExactCoarseRanker* exact = nullptr;  // set when ranker is an exact index
  nlohmann::json sidecar;
};

LoadedIndex load_index(const fs::path& path, int threads) {
  LoadedIndex loaded;
  loaded.sidecar = read_sidecar(path);
  if (loaded.sidecar["format"].get<std::string>() == kIvfFormat) {
    auto ivf = IvfCoarseRanker::load(path, threads);
    loaded.ivf = ivf.get();
    loaded.ranker = std::move(ivf);
  } else {
    auto exact = ExactCoarseRanker::load(path, threads);
    loaded.exact = exact.get();
    loaded.ranker = std::move(exact);
  }
  return loaded;
}

// A list of ids: a 1-D int64 array, or an n x 1 one.
std::vector<ItemId> load_ids(const fs::path& path) {
  const Matrix<std::int64_t> ids = load_npy_i64(path);
  if (ids.cols() != 1) {
    detail::fail(ErrorCode::format, "'", path.string(), "': expected a 1-D array of ids, got ",
                 ids.rows(), " x ", ids.cols());
  }
  return ids.values();
}

Matrix<float> load_vectors(const fs::path& path, std::string_view what) {
  Matrix<float> vectors = load_npy_f32(path);
  if (vectors.rows() == 0 || vectors.cols() == 0) {
    detail::fail(ErrorCode::format, "'", path.string(), "': ", what, " file holds no vectors (",
                 vectors.rows(), " x ", vectors.cols(), ")");
  }
  return vectors;
}

struct Balance {
  std::size_t min = 0;
  std::size_t median = 0;
  std::size_t max = 0;
  std::size_t empty = 0;
};

Balance list_balance(std::vector<std::size_t> sizes) {
  Balance b;
  if (sizes.empty()) return b;
  std::sort(sizes.begin(), sizes.end());
  b.min = sizes.front();
  b.median = sizes[sizes.size() / 2];
  b.max = sizes.back();
  b.empty = static_cast<std::size_t>(std::count(sizes.begin(), sizes.end(), std::size_t{0}));
  return b;
}

void print_ivf_stats(const IvfCoarseRanker& ivf) {
  const Balance b = list_balance(ivf.list_sizes());
  std::printf("  lists        %zu, sizes min %zu / median %zu / max %zu (%zu empty)\n", ivf.nlist(),
              b.min, b.median, b.max, b.empty);
  std::printf("  nprobe       %zu by default\n", ivf.config().default_nprobe);
  std::printf("  memory       %s (codes, ids, centroids, id map)\n",
              format_bytes(ivf.memory_bytes()).c_str());
  std::printf("  scan kernel  %s\n", std::string(to_string(ivf.kernel())).c_str());
}

void print_exact_stats(const ExactCoarseRanker& exact) {
  // Stored vectors, their squared norms and ids (the id map is extra).
  const std::uint64_t bytes = static_cast<std::uint64_t>(exact.size()) *
                              (exact.dim() * sizeof(float) + sizeof(float) + sizeof(ItemId));
  std::printf("  memory       %s (vectors, norms, ids; id map extra)\n",
              format_bytes(bytes).c_str());
  std::printf("  kernel       %s\n", std::string(to_string(exact.kernel())).c_str());
}

// ---------------------------------------------------------------------------
// funnel index build

constexpr OptionSpec kBuildOptions[] = {
    {"--vectors", "FILE", "float32 .npy, n x d: the vectors to index (required)"},
    {"--ids", "FILE", "int64 .npy, n ids (default 0..n-1)"},
    {"--out", "INDEX", "index file to write; the sidecar is INDEX.json (required)"},
    {"--type", "ivf|exact", "inverted-file index or exhaustive search (default ivf)"},
    {"--description", "DESC",
     "IVF lists and codes, e.g. IVF1024,Flat, IVF4096,SQ8, IVF256,PQ16 "
     "(default auto: IVF<nlist>,Flat, see below)"},
    {"--metric", "ip|l2", "inner product or squared L2 distance (default ip)"},
    {"--train-size", "N", "training vectors taken from the sample (default 256 per list)"},
    {"--train-sample", "FILE", "float32 .npy training sample (default: the vectors themselves)"},
    {"--threads", "T", "threads for training and adding (default 1)"},
    {"--seed", "S", "seed of the training subset and k-means (default 1234)"},
    {"--nprobe", "N", "lists probed by searches that do not say (default 16, at most nlist)"},
};

constexpr CommandSpec kBuildSpec{
    "funnel index build", "--vectors FILE --out INDEX [options]",
    "Builds an index over the vectors of a .npy file and saves it (FAISS format + JSON sidecar).",
    kBuildOptions,
    "With --description auto (the default), nlist is the power of two nearest to\n"
    "4 * sqrt(n), lowered until the training sample holds at least 39 vectors per\n"
    "list. --description, --train-size, --train-sample, --seed and --nprobe apply\n"
    "to --type ivf only.\n"};

// nlist for --description auto (see the help text).
std::size_t auto_nlist(std::size_t n, std::size_t train_vectors, std::size_t min_per_list) {
  const double target = 4.0 * std::sqrt(static_cast<double>(n));
  std::size_t nlist = 1;
  while (static_cast<double>(nlist * 2) <= target * std::sqrt(2.0)) nlist *= 2;
  while (nlist > 1 && train_vectors < nlist * min_per_list) nlist /= 2;
  return nlist;
}

// The list count of an "IVF<nlist>,..." description; the library parses the
// rest (and reports what does not parse).
std::optional<std::size_t> description_nlist(std::string_view description) {
  if (!description.starts_with("IVF")) return std::nullopt;
  description.remove_prefix(3);
  std::size_t nlist = 0;
  const char* end = description.data() + description.size();
  const auto [ptr, ec] = std::from_chars(description.data(), end, nlist);
  if (ec != std::errc() || ptr == description.data()) return std::nullopt;
  return nlist;
}

int run_build(const Invocation& invocation) {
  const Args args = Args::parse(kBuildSpec, invocation.words);
  if (args.help()) {
    print_help(std::cout, kBuildSpec);
    return kExitOk;
  }
  const fs::path vectors_path(args.required("--vectors"));
  const fs::path out(args.required("--out"));
  const bool ivf = args.choice("--type", {"ivf", "exact"}, "ivf") == "ivf";
  const Metric metric =
      args.choice("--metric", {"ip", "l2"}, "ip") == "ip" ? Metric::inner_product : Metric::l2;
  const int threads = args.number_or<int>("--threads", 1, 1, kMaxThreads);
  if (!ivf) {
    for (const std::string_view ivf_only :
         {"--description", "--train-size", "--train-sample", "--seed", "--nprobe"}) {
      if (args.has(ivf_only)) args.fail(std::string(ivf_only) + " applies to --type ivf only");
    }
  }
  const std::size_t train_size = args.number_or<std::size_t>("--train-size", 0, 1);
  const std::optional<std::size_t> nprobe = args.number<std::size_t>("--nprobe", 1);
  const std::optional<std::uint64_t> seed = args.number<std::uint64_t>("--seed");
  const std::string_view description = args.value_or("--description", "auto");

  const Matrix<float> vectors = load_vectors(vectors_path, "--vectors");
  std::vector<ItemId> ids;
  if (const auto ids_path = args.value("--ids")) {
    ids = load_ids(fs::path(*ids_path));
    if (ids.size() != vectors.rows()) {
      detail::fail(ErrorCode::format, "'", std::string(*ids_path), "' holds ", ids.size(),
                   " ids but '", vectors_path.string(), "' holds ", vectors.rows(), " vectors");
    }
  } else {
    ids.resize(vectors.rows());
    std::iota(ids.begin(), ids.end(), ItemId{0});
  }

  std::unique_ptr<CoarseRanker> index;
  const IvfCoarseRanker* ivf_index = nullptr;
  const ExactCoarseRanker* exact_index = nullptr;
  double train_seconds = 0.0;
  std::size_t train_rows = 0;
  if (ivf) {
    Matrix<float> sample_storage;
    if (const auto sample_path = args.value("--train-sample")) {
      sample_storage = load_vectors(fs::path(*sample_path), "--train-sample");
      if (sample_storage.cols() != vectors.cols()) {
        detail::fail(ErrorCode::format, "'", std::string(*sample_path), "' holds ",
                     sample_storage.cols(), "-d vectors but '", vectors_path.string(), "' holds ",
                     vectors.cols(), "-d ones");
      }
    }
    const MatrixView<const float> sample =
        sample_storage.empty() ? vectors.view() : sample_storage.view();
    IvfCoarseRankerConfig config;
    config.dim = vectors.cols();
    config.metric = metric;
    config.threads = threads;
    config.train_size = train_size;
    if (seed) config.seed = *seed;
    if (description == "auto") {
      const std::size_t usable = train_size == 0 ? sample.rows : std::min(train_size, sample.rows);
      config.description =
          "IVF" + std::to_string(auto_nlist(vectors.rows(), usable, config.min_train_per_list)) +
          ",Flat";
    } else {
      config.description = std::string(description);
    }
    if (const std::optional<std::size_t> nlist = description_nlist(config.description)) {
      if (nprobe && *nprobe > *nlist) {
        args.fail("--nprobe " + std::to_string(*nprobe) + " exceeds the " + std::to_string(*nlist) +
                  " lists of " + config.description);
      }
      // Small indexes have fewer lists than the library's default nprobe.
      if (*nlist > 0) config.default_nprobe = std::min(config.default_nprobe, *nlist);
    }
    if (nprobe) config.default_nprobe = *nprobe;
    try {
      config.validate();
    } catch (const Error& e) {
      // The settings come from the command line, so a config the library
      // rejects is bad usage; a CPU that lacks a kernel is not.
      if (e.code() != ErrorCode::invalid_argument) throw;
      args.fail(e.what());
    }
    train_rows = train_size == 0 ? sample.rows : std::min(train_size, sample.rows);
    const Stopwatch train_clock;
    auto trained = IvfCoarseRanker::train(config, sample);
    train_seconds = train_clock.seconds();
    ivf_index = trained.get();
    index = std::move(trained);
  } else {
    ExactCoarseRankerConfig config;
    config.dim = vectors.cols();
    config.metric = metric;
    config.threads = threads;
    try {
      config.validate();
    } catch (const Error& e) {
      if (e.code() != ErrorCode::invalid_argument) throw;
      args.fail(e.what());
    }
    auto exact = std::make_unique<ExactCoarseRanker>(config);
    exact_index = exact.get();
    index = std::move(exact);
  }

  const Stopwatch add_clock;
  index->add(vectors.view(), ids);
  const double add_seconds = add_clock.seconds();
  const Stopwatch save_clock;
  index->save(out);
  const double save_seconds = save_clock.seconds();

  std::printf("built %s from '%s'\n", index->name().c_str(), vectors_path.string().c_str());
  std::printf("  items        %zu (dim %zu, metric %s)\n", index->size(), index->dim(),
              std::string(to_string(index->metric())).c_str());
  if (ivf_index != nullptr) {
    print_ivf_stats(*ivf_index);
    std::printf("  train        %.3f s on %zu vectors\n", train_seconds, train_rows);
  } else {
    print_exact_stats(*exact_index);
  }
  std::printf("  add          %.3f s (%.0f vectors/s)\n", add_seconds,
              static_cast<double>(vectors.rows()) / std::max(add_seconds, 1e-9));
  std::printf("  saved        '%s' (%s) + sidecar in %.3f s\n", out.string().c_str(),
              format_bytes(fs::file_size(out)).c_str(), save_seconds);
  return kExitOk;
}

// ---------------------------------------------------------------------------
// funnel index search

constexpr OptionSpec kSearchOptions[] = {
    {"--index", "INDEX", "index file written by 'funnel index build' (required)"},
    {"--queries", "FILE", "float32 .npy, nq x d query vectors (required)"},
    {"--k", "N", "results per query (default 10)"},
    {"--nprobe", "N", "IVF lists probed per query (default: the index's)"},
    {"--threads", "T", "threads inside the search call (default 1)"},
    {"--filter-allow", "FILE", "int64 .npy of ids: return only these"},
    {"--filter-deny", "FILE", "int64 .npy of ids: never return these"},
    {"--out-labels", "FILE", "write the ids, nq x k int64 .npy (-1 pads missing results)"},
    {"--out-distances", "FILE", "write the distances, nq x k float32 .npy"},
    {"--ground-truth", "FILE", "int64 .npy, nq x m true nearest ids: print recall@k"},
    {"--batch", "auto|per-query|grouped", "how IVF organises many queries (default auto)"},
    {"--repeat", "N", "run the search N times and report the median time (default 1)"},
};

constexpr CommandSpec kSearchSpec{
    "funnel index search", "--index INDEX --queries FILE [options]",
    "Searches an index with the vectors of a .npy file and reports speed (and recall).",
    kSearchOptions,
    "Distances are inner products (higher is better) or squared L2 distances (lower\n"
    "is better). recall@k is the fraction of each query's first min(k, m) true ids\n"
    "found among its k results, averaged over the queries. --nprobe and --batch\n"
    "apply to IVF indexes only.\n"};

double mean_recall(const fs::path& path, MatrixView<const ItemId> labels, std::size_t k) {
  const Matrix<std::int64_t> truth = load_npy_i64(path);
  if (truth.rows() != labels.rows) {
    detail::fail(ErrorCode::format, "'", path.string(), "' holds ground truth for ", truth.rows(),
                 " queries but ", labels.rows, " were searched");
  }
  double sum = 0.0;
  for (std::size_t q = 0; q < truth.rows(); ++q) {
    std::unordered_set<ItemId> relevant;
    for (const ItemId id : truth.row(q).first(std::min(k, truth.cols()))) {
      if (id != kNoItem) relevant.insert(id);
    }
    sum += recall_at_k(labels.row(q), relevant, k);
  }
  return truth.rows() == 0 ? 0.0 : sum / static_cast<double>(truth.rows());
}

int run_search(const Invocation& invocation) {
  const Args args = Args::parse(kSearchSpec, invocation.words);
  if (args.help()) {
    print_help(std::cout, kSearchSpec);
    return kExitOk;
  }
  const fs::path index_path(args.required("--index"));
  const fs::path queries_path(args.required("--queries"));
  constexpr std::size_t kMaxK = std::size_t{1} << 20;
  const auto k = args.number_or<std::size_t>("--k", 10, 1, kMaxK);
  const std::optional<std::size_t> nprobe = args.number<std::size_t>("--nprobe", 1);
  const int threads = args.number_or<int>("--threads", 1, 1, kMaxThreads);
  constexpr std::size_t kMaxRepeat = 1000;
  const auto repeat = args.number_or<std::size_t>("--repeat", 1, 1, kMaxRepeat);
  const std::string_view batch_text =
      args.choice("--batch", {"auto", "per-query", "grouped"}, "auto");
  if (args.has("--filter-allow") && args.has("--filter-deny")) {
    args.fail("give --filter-allow or --filter-deny, not both");
  }

  const LoadedIndex loaded = load_index(index_path, threads);
  const CoarseRanker& index = *loaded.ranker;
  if (loaded.ivf == nullptr) {
    for (const std::string_view ivf_only : {"--nprobe", "--batch"}) {
      if (args.has(ivf_only)) {
        args.fail(std::string(ivf_only) + " applies to IVF indexes only, and '" +
                  index_path.string() + "' is " + index.name());
      }
    }
  }

  const Matrix<float> queries = load_vectors(queries_path, "--queries");
  if (queries.cols() != index.dim()) {
    detail::fail(ErrorCode::format, "'", queries_path.string(), "' holds ", queries.cols(),
                 "-d queries but index '", index_path.string(), "' has dim ", index.dim());
  }

  std::unique_ptr<IdFilter> filter;
  std::string filter_note;
  if (const auto allow = args.value("--filter-allow")) {
    const std::vector<ItemId> ids = load_ids(fs::path(*allow));
    filter = std::make_unique<AllowListFilter>(ids);
    filter_note = ", allow-list of " + std::to_string(ids.size()) + " ids";
  } else if (const auto deny = args.value("--filter-deny")) {
    const std::vector<ItemId> ids = load_ids(fs::path(*deny));
    filter = std::make_unique<DenyListFilter>(ids);
    filter_note = ", deny-list of " + std::to_string(ids.size()) + " ids";
  }

  IvfSearchParams params;
  params.filter = filter.get();
  std::string probe_note;
  if (loaded.ivf != nullptr) {
    params.nprobe = nprobe.value_or(0);
    params.batch = batch_text == "per-query" ? IvfBatchMode::per_query
                   : batch_text == "grouped" ? IvfBatchMode::grouped
                                             : IvfBatchMode::automatic;
    const std::size_t effective =
        std::min(params.nprobe == 0 ? loaded.ivf->config().default_nprobe : params.nprobe,
                 loaded.ivf->nlist());
    probe_note = ", nprobe " + std::to_string(effective) + " of " +
                 std::to_string(loaded.ivf->nlist()) + ", batch " + std::string(batch_text);
  }

  Matrix<float> distances(queries.rows(), k);
  Matrix<ItemId> labels(queries.rows(), k);
  // IvfSearchParams derives from SearchParams, so the exact index takes it
  // too and uses only its filter. Every run writes the same results.
  std::vector<double> run_seconds;
  std::size_t fewest = 0;
  for (std::size_t run = 0; run < repeat; ++run) {
    const Stopwatch clock;
    fewest = index.search(queries.view(), k, distances.view(), labels.view(), &params);
    run_seconds.push_back(clock.seconds());
  }
  const double first = run_seconds.front();
  std::sort(run_seconds.begin(), run_seconds.end());
  const double seconds = run_seconds[run_seconds.size() / 2];

  const auto nq = static_cast<double>(queries.rows());
  std::printf("searched %s: %zu queries, k %zu%s, threads %d%s\n", index.name().c_str(),
              queries.rows(), k, probe_note.c_str(), threads, filter_note.c_str());
  std::printf("  time         %.4f s (%.1f QPS, %.3f ms/query)", seconds,
              nq / std::max(seconds, 1e-9), 1e3 * seconds / nq);
  if (repeat > 1) {
    std::printf(", median of %zu runs (min %.4f s, first %.4f s)", repeat, run_seconds.front(),
                first);
  }
  std::printf("\n");
  if (fewest < k) {
    std::printf("  note         some queries have only %zu of %zu results (padded with id %lld)\n",
                fewest, k, static_cast<long long>(kNoItem));
  }
  if (const auto path = args.value("--out-labels")) save_npy(fs::path(*path), labels.view());
  if (const auto path = args.value("--out-distances")) {
    save_npy(fs::path(*path), distances.view());
  }
  if (const auto truth = args.value("--ground-truth")) {
    std::printf("recall@%zu: %.4f\n", k, mean_recall(fs::path(*truth), labels.view(), k));
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// funnel index info

constexpr OptionSpec kInfoOptions[] = {
    {"--index", "INDEX", "index file written by 'funnel index build' (required)"},
};

constexpr CommandSpec kInfoSpec{
    "funnel index info", "--index INDEX",
    "Validates an index (sizes, checksums, ids) and prints its sidecar and statistics.",
    kInfoOptions, ""};

int run_info(const Invocation& invocation) {
  const Args args = Args::parse(kInfoSpec, invocation.words);
  if (args.help()) {
    print_help(std::cout, kInfoSpec);
    return kExitOk;
  }
  const fs::path index_path(args.required("--index"));
  const LoadedIndex loaded = load_index(index_path, 1);
  std::printf("index '%s' (%s), sidecar '%s':\n%s\n", index_path.string().c_str(),
              format_bytes(fs::file_size(index_path)).c_str(),
              sidecar_path(index_path).string().c_str(), loaded.sidecar.dump(2).c_str());
  std::printf("%s\n", loaded.ranker->name().c_str());
  std::printf("  items        %zu (dim %zu, metric %s)\n", loaded.ranker->size(),
              loaded.ranker->dim(), std::string(to_string(loaded.ranker->metric())).c_str());
  if (loaded.ivf != nullptr) {
    print_ivf_stats(*loaded.ivf);
  } else {
    print_exact_stats(*loaded.exact);
  }
  return kExitOk;
}

constexpr Command kIndexCommands[] = {
    {"build", "build an index from a .npy file of vectors", run_build},
    {"search", "search an index with a .npy file of queries; speed and recall@k", run_search},
    {"info", "validate an index and print its sidecar and statistics", run_info},
};

}  // namespace

int run_index(const Invocation& invocation) {
  return dispatch(invocation,
                  "Vector indexes (IVF or exact) over .npy files, saved as FAISS files with a "
                  "JSON sidecar.",
                  kIndexCommands);
}

}  // namespace funnel::cli
