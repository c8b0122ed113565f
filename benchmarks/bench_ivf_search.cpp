// SPDX-License-Identifier: Apache-2.0
// Compares funnel's IvfCoarseRanker (IVF-Flat and IVF-SQ8) with FAISS's
// IndexIVFFlat (same lists, same centroids) and hnswlib (M=16,
// efConstruction=200) on one data set in one run: recall@10 against exact
// search, queries per second one query at a time and in batches of 1,000,
// build time and memory, while sweeping nprobe / ef. Prints a table, the
// issue's targets (PASS/SHORT), and writes CSV, markdown and gnuplot data.
//
// Usage: bench_ivf_search --dataset fashion-mnist|clustered|catalog [options]
// (see usage() below, or --help). run_ivf_benchmark.sh runs all three.

#include <dlfcn.h>
#include <hnswlib/hnswlib.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/invlists/InvertedLists.h>

#include "bench_ivf_data.hpp"
#include "funnel/error.hpp"
#include "funnel/ivf_coarse_ranker.hpp"

namespace {

using bench::Dataset;
using bench::GroundTruth;
using bench::seconds_since;
using Clock = std::chrono::steady_clock;

constexpr double kTargetRecall = 0.95;

// ------------------------------------------------------------------- options

struct Options {
  std::string dataset;
  std::filesystem::path cache = "build-bench/data";
  std::filesystem::path fashion_dir;  // default: cache / "fashion-mnist"
  std::filesystem::path out_dir;      // CSV, markdown and gnuplot data; none when empty
  double scale = 1.0;                 // multiplies the default n (and nq) of the data set
  std::size_t n = 0;                  // 0: the data set's default times scale
  std::size_t nq = 0;                 // 0: the data set's default times scale
  std::size_t nlist = 0;              // 0: 1024 for fashion-mnist, else 4096 (x scale)
  std::size_t k = 10;
  std::size_t batch = 1000;
  std::size_t single_nq = 1000;  // queries timed one at a time
  int threads = 2;
  int runs = 1;  // timed repetitions; the best is kept (as ann-benchmarks does)
  std::vector<std::size_t> nprobes = {1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128};
  std::vector<std::size_t> efs = {10, 20, 40, 80, 120, 200, 400, 800};
  std::vector<std::string> methods = {"funnel-ivf-flat", "funnel-ivf-sq8", "faiss-ivf-flat",
                                      "hnswlib"};
  std::string trainer = "funnel";  // who runs k-means: funnel or faiss
  std::size_t train_per_list = 64;
  bool time_faiss_train = true;  // also time FAISS's k-means on the same sample
  std::size_t hnsw_m = 16;
  std::size_t hnsw_ef_construction = 200;
  bench::ClusteredSpec clustered;
  bench::CatalogSpec catalog;
  std::string command;  // how this run was invoked, for the report
};

void usage() {
  std::puts(
      "bench_ivf_search --dataset fashion-mnist|clustered|catalog [options]\n"
      "  --cache DIR            data, ground truth and catalogue vectors (build-bench/data)\n"
      "  --fashion-dir DIR      decompressed Fashion-MNIST IDX files (CACHE/fashion-mnist)\n"
      "  --out DIR              write DATASET.csv, DATASET.md, DATASET.dat there\n"
      "  --scale X              multiplies the default sizes (1: full; 0.1: quick)\n"
      "  --n N --nq N           base and query counts (override --scale)\n"
      "  --nlist N              inverted lists (fashion-mnist 1024, else 4096, x scale)\n"
      "  --k K                  neighbours (10)\n"
      "  --batch N              queries per batched call (1000)\n"
      "  --single-nq N          queries timed one at a time (1000)\n"
      "  --threads N            threads for every library (2)\n"
      "  --runs N               timed repetitions, best kept (1)\n"
      "  --nprobe a,b,...       nprobe sweep (1,2,4,8,12,16,24,32,48,64,96,128)\n"
      "  --ef a,b,...           hnswlib ef sweep (10,20,40,80,120,200,400,800)\n"
      "  --methods a,b,...      funnel-ivf-flat,funnel-ivf-sq8,faiss-ivf-flat,hnswlib\n"
      "  --trainer funnel|faiss who trains the shared centroids (funnel)\n"
      "  --train-per-list N     k-means sample: N x nlist vectors (64)\n"
      "  --time-faiss-train 0|1 also time FAISS's k-means on the same sample (1)\n"
      "  --hnsw-m N --hnsw-efc N   hnswlib M (16) and efConstruction (200)\n"
      "  clustered: --latent-dim N (12) --clusters N (16384) --spread X (1.0)\n"
      "             --noise X (0.1) --seed N (42)\n"
      "  catalog:   --catalog-dim N (256) --catalog-seed N (1) --catalog-days N (30)");
}

std::vector<std::string> split(std::string_view text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    if (comma > start) out.emplace_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

std::vector<std::size_t> split_sizes(std::string_view text) {
  std::vector<std::size_t> out;
  for (const std::string& s : split(text)) out.push_back(std::stoul(s));
  return out;
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 0; i < argc; ++i) o.command += (i == 0 ? "" : " ") + std::string(argv[i]);
  bool n_set = false;
  bool nq_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage();
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument("missing value after " + arg);
    const std::string v = argv[++i];
    if (arg == "--dataset") {
      o.dataset = v;
    } else if (arg == "--cache") {
      o.cache = v;
    } else if (arg == "--fashion-dir") {
      o.fashion_dir = v;
    } else if (arg == "--out") {
      o.out_dir = v;
    } else if (arg == "--scale") {
      o.scale = std::stod(v);
    } else if (arg == "--n") {
      o.n = std::stoul(v);
      n_set = true;
    } else if (arg == "--nq") {
      o.nq = std::stoul(v);
      nq_set = true;
    } else if (arg == "--nlist") {
      o.nlist = std::stoul(v);
    } else if (arg == "--k") {
      o.k = std::stoul(v);
    } else if (arg == "--batch") {
      o.batch = std::stoul(v);
    } else if (arg == "--single-nq") {
      o.single_nq = std::stoul(v);
    } else if (arg == "--threads") {
      o.threads = std::stoi(v);
    } else if (arg == "--runs") {
      o.runs = std::stoi(v);
    } else if (arg == "--nprobe") {
      o.nprobes = split_sizes(v);
    } else if (arg == "--ef") {
      o.efs = split_sizes(v);
    } else if (arg == "--methods") {
      o.methods = split(v);
    } else if (arg == "--trainer") {
      o.trainer = v;
    } else if (arg == "--train-per-list") {
      o.train_per_list = std::stoul(v);
    } else if (arg == "--time-faiss-train") {
      o.time_faiss_train = v == "1";
    } else if (arg == "--hnsw-m") {
      o.hnsw_m = std::stoul(v);
    } else if (arg == "--hnsw-efc") {
      o.hnsw_ef_construction = std::stoul(v);
    } else if (arg == "--latent-dim") {
      o.clustered.latent_dim = std::stoul(v);
    } else if (arg == "--clusters") {
      o.clustered.clusters = std::stoul(v);
    } else if (arg == "--spread") {
      o.clustered.spread = std::stod(v);
    } else if (arg == "--noise") {
      o.clustered.noise = std::stod(v);
    } else if (arg == "--seed") {
      o.clustered.seed = std::stoull(v);
    } else if (arg == "--catalog-dim") {
      o.catalog.dim = std::stoul(v);
    } else if (arg == "--catalog-seed") {
      o.catalog.seed = std::stoull(v);
    } else if (arg == "--catalog-days") {
      o.catalog.days = std::stoul(v);
    } else {
      throw std::invalid_argument("unknown option " + arg + " (see --help)");
    }
  }
  if (o.dataset != "fashion-mnist" && o.dataset != "clustered" && o.dataset != "catalog") {
    throw std::invalid_argument("--dataset must be fashion-mnist, clustered or catalog, got '" +
                                o.dataset + "'");
  }
  if (o.trainer != "funnel" && o.trainer != "faiss") {
    throw std::invalid_argument("--trainer must be funnel or faiss, got '" + o.trainer + "'");
  }
  for (const std::string& m : o.methods) {
    if (m != "funnel-ivf-flat" && m != "funnel-ivf-sq8" && m != "faiss-ivf-flat" &&
        m != "hnswlib") {
      throw std::invalid_argument("unknown method '" + m + "' in --methods");
    }
  }
  if (o.scale <= 0.0 || o.threads < 1 || o.runs < 1 || o.k == 0 || o.batch == 0) {
    throw std::invalid_argument("--scale, --threads, --runs, --k and --batch must be positive");
  }
  const auto scaled = [&](std::size_t full) {
    return std::max<std::size_t>(1, static_cast<std::size_t>(std::llround(o.scale * double(full))));
  };
  // Fashion-MNIST has 60,000 base and 10,000 query images; the generated
  // sets default to 1M base vectors and 10,000 queries.
  const std::size_t full_n = o.dataset == "fashion-mnist" ? 60000 : 1000000;
  if (!n_set) o.n = scaled(full_n);
  if (!nq_set) o.nq = std::min<std::size_t>(10000, scaled(10000));
  if (o.nlist == 0) {
    // Lists scale with the base so that a list holds about as many vectors
    // at every scale; a power of two, as FAISS users pick.
    const double lists =
        (o.dataset == "fashion-mnist" ? 1024.0 : 4096.0) * double(o.n) / double(full_n);
    o.nlist = std::size_t{1} << static_cast<unsigned>(std::max(0.0, std::round(std::log2(lists))));
  }
  if (o.fashion_dir.empty()) o.fashion_dir = o.cache / "fashion-mnist";
  o.clustered.n = o.n;
  o.clustered.nq = o.nq;
  o.catalog.items = o.n;
  o.catalog.nq = o.nq;
  return o;
}

// FAISS hands big products to BLAS (k-means, the quantizer for >= 20
// queries); OpenBLAS keeps its own thread pool that ignores
// omp_set_num_threads, so limit it too when the BLAS has the knob.
bool set_blas_threads(int threads) {
  using SetThreads = void (*)(int);
  void* symbol = dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
  if (symbol == nullptr) return false;
  reinterpret_cast<SetThreads>(symbol)(threads);  // NOLINT(*-reinterpret-cast)
  return true;
}

// ------------------------------------------------------------------- methods

// One index under test. Labels are row numbers of the base (int64; -1 for
// a padded result).
class Method {
 public:
  virtual ~Method() = default;
  [[nodiscard]] virtual std::string key() const = 0;         // "faiss-ivf-flat"
  [[nodiscard]] virtual std::string param_name() const = 0;  // "nprobe" / "ef"
  [[nodiscard]] virtual std::vector<std::size_t> params() const = 0;
  virtual void set_param(std::size_t value) = 0;
  // Ways to run one query at a time; the fastest is reported.
  [[nodiscard]] virtual std::vector<std::string> single_modes() const { return {""}; }
  virtual void set_single_mode(std::size_t /*mode*/) {}
  virtual void search_one(const float* query, std::size_t k, std::int64_t* labels) = 0;
  virtual void search_batch(const float* queries, std::size_t nq, std::size_t k,
                            std::int64_t* labels) = 0;
  [[nodiscard]] virtual double memory_bytes() const = 0;
  double build_s = 0.0;
};

class FunnelMethod final : public Method {
 public:
  FunnelMethod(std::string key, std::unique_ptr<funnel::IvfCoarseRanker> index,
               std::vector<std::size_t> nprobes)
      : key_(std::move(key)), index_(std::move(index)), nprobes_(std::move(nprobes)) {}
  [[nodiscard]] std::string key() const override { return key_; }
  [[nodiscard]] std::string param_name() const override { return "nprobe"; }
  [[nodiscard]] std::vector<std::size_t> params() const override { return nprobes_; }
  void set_param(std::size_t value) override { params_.nprobe = value; }
  void search_one(const float* query, std::size_t k, std::int64_t* labels) override {
    search_batch(query, 1, k, labels);
  }
  void search_batch(const float* queries, std::size_t nq, std::size_t k,
                    std::int64_t* labels) override {
    distances_.resize(nq * k);
    index_->search(funnel::MatrixView<const float>(queries, nq, index_->dim()), k,
                   funnel::MatrixView<float>(distances_.data(), nq, k),
                   funnel::MatrixView<funnel::ItemId>(labels, nq, k), &params_);
  }
  [[nodiscard]] double memory_bytes() const override {
    return static_cast<double>(index_->memory_bytes());
  }
  [[nodiscard]] const funnel::IvfCoarseRanker& index() const { return *index_; }

 private:
  std::string key_;
  std::unique_ptr<funnel::IvfCoarseRanker> index_;
  std::vector<std::size_t> nprobes_;
  funnel::IvfSearchParams params_;
  std::vector<float> distances_;
};

class FaissMethod final : public Method {
 public:
  FaissMethod(std::unique_ptr<faiss::IndexFlat> quantizer,
              std::unique_ptr<faiss::IndexIVFFlat> index, std::vector<std::size_t> nprobes)
      : quantizer_(std::move(quantizer)), index_(std::move(index)), nprobes_(std::move(nprobes)) {}
  [[nodiscard]] std::string key() const override { return "faiss-ivf-flat"; }
  [[nodiscard]] std::string param_name() const override { return "nprobe"; }
  [[nodiscard]] std::vector<std::size_t> params() const override { return nprobes_; }
  void set_param(std::size_t value) override { index_->nprobe = value; }
  // parallel_mode 0 gives a single query one thread; 1 splits its probed
  // lists over the OpenMP threads. Both are measured; the faster is reported.
  [[nodiscard]] std::vector<std::string> single_modes() const override {
    return {"parallel_mode=0", "parallel_mode=1"};
  }
  void set_single_mode(std::size_t mode) override { single_mode_ = static_cast<int>(mode); }
  void search_one(const float* query, std::size_t k, std::int64_t* labels) override {
    index_->parallel_mode = single_mode_;
    distances_.resize(k);
    index_->search(1, query, static_cast<faiss::Index::idx_t>(k), distances_.data(), labels);
  }
  void search_batch(const float* queries, std::size_t nq, std::size_t k,
                    std::int64_t* labels) override {
    index_->parallel_mode = 0;  // FAISS's default: queries spread over threads
    distances_.resize(nq * k);
    index_->search(static_cast<faiss::Index::idx_t>(nq), queries,
                   static_cast<faiss::Index::idx_t>(k), distances_.data(), labels);
  }
  // Codes and ids as stored in the inverted lists, plus the centroids.
  [[nodiscard]] double memory_bytes() const override {
    double bytes = static_cast<double>(quantizer_->ntotal) * double(quantizer_->d) * 4.0;
    for (std::size_t l = 0; l < index_->nlist; ++l) {
      bytes += static_cast<double>(index_->invlists->list_size(l)) *
               double(index_->code_size + sizeof(faiss::Index::idx_t));
    }
    return bytes;
  }

 private:
  std::unique_ptr<faiss::IndexFlat> quantizer_;
  std::unique_ptr<faiss::IndexIVFFlat> index_;
  std::vector<std::size_t> nprobes_;
  int single_mode_ = 0;
  std::vector<float> distances_;
};

class HnswMethod final : public Method {
 public:
  HnswMethod(const Dataset& d, std::size_t m, std::size_t ef_construction, int threads,
             std::vector<std::size_t> efs)
      : threads_(threads), efs_(std::move(efs)) {
    const std::size_t dim = d.base.cols();
    if (d.metric == funnel::Metric::l2) {
      space_ = std::make_unique<hnswlib::L2Space>(dim);
    } else {
      space_ = std::make_unique<hnswlib::InnerProductSpace>(dim);
    }
    const auto start = Clock::now();
    index_ = std::make_unique<hnswlib::HierarchicalNSW<float>>(space_.get(), d.base.rows(), m,
                                                               ef_construction, 100);
    // As hnswlib's Python binding builds: the first point alone, then the
    // rest spread over the threads (addPoint is thread-safe).
    index_->addPoint(d.base.data(), 0);
    bench::parallel_ranges(d.base.rows() - 1, threads, [&](std::size_t r0, std::size_t r1) {
      for (std::size_t r = r0 + 1; r < r1 + 1; ++r) {
        index_->addPoint(d.base.data() + r * dim, static_cast<hnswlib::labeltype>(r));
      }
    });
    build_s = seconds_since(start);
  }
  [[nodiscard]] std::string key() const override { return "hnswlib"; }
  [[nodiscard]] std::string param_name() const override { return "ef"; }
  [[nodiscard]] std::vector<std::size_t> params() const override { return efs_; }
  void set_param(std::size_t value) override { index_->setEf(value); }
  // One thread, one query at a time: a graph search does not split.
  void search_one(const float* query, std::size_t k, std::int64_t* labels) override {
    one(query, k, labels);
  }
  // Queries spread over `threads` std::threads, as hnswlib's ParallelFor.
  void search_batch(const float* queries, std::size_t nq, std::size_t k,
                    std::int64_t* labels) override {
    const std::size_t dim = *static_cast<std::size_t*>(space_->get_dist_func_param());
    bench::parallel_ranges(nq, threads_, [&](std::size_t q0, std::size_t q1) {
      for (std::size_t q = q0; q < q1; ++q) one(queries + q * dim, k, labels + q * k);
    });
  }
  // hnswlib's own structures, sized from its fields: the level-0 block
  // (links, vector, label per element), the upper-level link lists, the
  // element levels, the per-element locks and the label map.
  [[nodiscard]] double memory_bytes() const override {
    const auto& h = *index_;
    double bytes = double(h.max_elements_) * double(h.size_data_per_element_);
    for (std::size_t i = 0; i < h.cur_element_count; ++i) {
      bytes += double(h.element_levels_[i]) * double(h.size_links_per_element_);
    }
    bytes += double(h.element_levels_.size()) * sizeof(int);
    bytes += double(h.link_list_locks_.size()) * sizeof(std::mutex);
    bytes += double(h.label_lookup_.bucket_count()) * sizeof(void*) +
             double(h.label_lookup_.size()) *
                 (sizeof(void*) + sizeof(std::pair<hnswlib::labeltype, hnswlib::tableint>));
    return bytes;
  }

 private:
  void one(const float* query, std::size_t k, std::int64_t* labels) const {
    auto result = index_->searchKnn(query, k);
    std::size_t n = result.size();
    for (std::size_t j = n; j < k; ++j) labels[j] = -1;
    while (!result.empty()) {  // a max-heap: the worst comes first
      labels[--n] = static_cast<std::int64_t>(result.top().second);
      result.pop();
    }
  }
  int threads_;
  std::vector<std::size_t> efs_;
  std::unique_ptr<hnswlib::SpaceInterface<float>> space_;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> index_;
};

// ---------------------------------------------------------------- measuring

struct Row {
  std::string method;
  std::string param_name;
  std::size_t param = 0;
  double recall = 0.0;         // over all queries, batched results
  double recall_single = 0.0;  // over the single-query subset, single-query results
  double qps_single = 0.0;
  double qps_batched = 0.0;
  std::string single_mode;
  double ratio_single = std::numeric_limits<double>::quiet_NaN();
  double ratio_batched = std::numeric_limits<double>::quiet_NaN();
  double build_s = 0.0;
  double memory_mb = 0.0;
  double same_ids = std::numeric_limits<double>::quiet_NaN();  // vs FAISS, same nprobe
};

// Recall@k of one query's results: a result counts when it is one of the
// exact top-k, or when its exact distance is at least as good as the k-th
// exact one (a tie at the boundary, within float rounding).
double query_recall(const Dataset& d, const GroundTruth& gt, std::size_t q, const std::int64_t* got,
                    std::size_t k) {
  const std::int64_t* truth = gt.ids.data() + q * gt.ids.cols();
  const float kth = gt.distances(q, k - 1);
  const float* query = d.queries.data() + q * d.queries.cols();
  std::size_t hits = 0;
  std::unordered_set<std::int64_t> seen;
  for (std::size_t j = 0; j < k; ++j) {
    const std::int64_t id = got[j];
    if (id < 0 || static_cast<std::size_t>(id) >= d.base.rows() || !seen.insert(id).second)
      continue;
    if (std::find(truth, truth + k, id) != truth + k) {
      ++hits;
      continue;
    }
    const float* x = d.base.data() + static_cast<std::size_t>(id) * d.base.cols();
    double dist = 0.0;
    for (std::size_t i = 0; i < d.base.cols(); ++i) {
      if (d.metric == funnel::Metric::l2) {
        const double diff = double(query[i]) - double(x[i]);
        dist += diff * diff;
      } else {
        dist += double(query[i]) * double(x[i]);
      }
    }
    const double tol = 1e-5 * std::max(1.0, std::abs(double(kth)));
    const bool as_good =
        d.metric == funnel::Metric::l2 ? dist <= double(kth) + tol : dist >= double(kth) - tol;
    if (as_good) ++hits;
  }
  return static_cast<double>(std::min(hits, k)) / static_cast<double>(k);
}

double mean_recall(const Dataset& d, const GroundTruth& gt, const std::vector<std::int64_t>& labels,
                   std::size_t nq, std::size_t k) {
  double sum = 0.0;
  for (std::size_t q = 0; q < nq; ++q) sum += query_recall(d, gt, q, labels.data() + q * k, k);
  return sum / static_cast<double>(nq);
}

double same_ids(const std::vector<std::int64_t>& a, const std::vector<std::int64_t>& b) {
  std::size_t same = 0;
  for (std::size_t i = 0; i < a.size(); ++i) same += a[i] == b[i] ? 1 : 0;
  return static_cast<double>(same) / static_cast<double>(a.size());
}

struct Measured {
  Row row;
  std::vector<std::int64_t> labels;  // batched, all queries
};

Measured measure(Method& method, std::size_t param, const Dataset& d, const GroundTruth& gt,
                 const Options& o) {
  method.set_param(param);
  const std::size_t nq = d.queries.rows();
  const std::size_t dim = d.queries.cols();
  const std::size_t k = o.k;
  Measured m;
  Row& row = m.row;
  row.method = method.key();
  row.param_name = method.param_name();
  row.param = param;
  row.build_s = method.build_s;
  row.memory_mb = method.memory_bytes() / 1e6;

  // Batched: all queries in calls of o.batch, after one untimed call.
  m.labels.assign(nq * k, -1);
  method.search_batch(d.queries.data(), std::min(o.batch, nq), k, m.labels.data());
  double best = std::numeric_limits<double>::infinity();
  for (int run = 0; run < o.runs; ++run) {
    const auto start = Clock::now();
    for (std::size_t q0 = 0; q0 < nq; q0 += o.batch) {
      const std::size_t count = std::min(o.batch, nq - q0);
      method.search_batch(d.queries.data() + q0 * dim, count, k, m.labels.data() + q0 * k);
    }
    best = std::min(best, seconds_since(start));
  }
  row.qps_batched = static_cast<double>(nq) / best;
  row.recall = mean_recall(d, gt, m.labels, nq, k);

  // Single query: the first single_nq queries one call each, after 10
  // untimed ones; every single-query mode of the method, the best kept.
  const std::size_t sq = std::min(o.single_nq, nq);
  std::vector<std::int64_t> single(sq * k, -1);
  const std::vector<std::string> modes = method.single_modes();
  for (std::size_t mode = 0; mode < modes.size(); ++mode) {
    method.set_single_mode(mode);
    for (std::size_t q = 0; q < std::min<std::size_t>(10, sq); ++q) {
      method.search_one(d.queries.data() + q * dim, k, single.data() + q * k);
    }
    for (int run = 0; run < o.runs; ++run) {
      const auto start = Clock::now();
      for (std::size_t q = 0; q < sq; ++q) {
        method.search_one(d.queries.data() + q * dim, k, single.data() + q * k);
      }
      const double qps = static_cast<double>(sq) / seconds_since(start);
      if (qps > row.qps_single) {
        row.qps_single = qps;
        row.single_mode = modes[mode];
      }
    }
  }
  row.recall_single = mean_recall(d, gt, single, sq, k);
  const std::vector<std::int64_t> batched_subset(
      m.labels.begin(), m.labels.begin() + static_cast<std::ptrdiff_t>(sq * k));
  const double recall_subset = mean_recall(d, gt, batched_subset, sq, k);
  if (std::abs(recall_subset - row.recall_single) > 0.005) {
    std::printf(
        "  WARNING: %s %s=%zu: single-query recall %.4f differs from batched %.4f on the "
        "same %zu queries\n",
        row.method.c_str(), row.param_name.c_str(), param, row.recall_single, recall_subset, sq);
  }
  return m;
}

// FAISS's QPS at `recall`: on its Pareto frontier (the settings no other
// setting beats in both recall and QPS), log QPS interpolated linearly in
// recall between neighbouring points; NaN outside the recall range FAISS
// covers.
double faiss_qps_at(const std::vector<Row>& faiss_rows, double recall, bool batched) {
  std::vector<std::pair<double, double>> points;
  points.reserve(faiss_rows.size());
  for (const Row& r : faiss_rows)
    points.emplace_back(r.recall, batched ? r.qps_batched : r.qps_single);
  // By recall descending (QPS descending on ties), keep a point only when it
  // is faster than every point of higher or equal recall.
  std::sort(points.begin(), points.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second > b.second;
  });
  std::vector<std::pair<double, double>> frontier;
  for (const auto& p : points) {
    if (frontier.empty() || p.second > frontier.back().second) frontier.push_back(p);
  }
  std::reverse(frontier.begin(), frontier.end());  // recall ascending
  // Below the frontier but within the recalls FAISS was measured at, FAISS
  // reaches that recall (and more) at the frontier's first point.
  if (!frontier.empty() && recall < frontier.front().first) {
    return recall >= points.back().first ? frontier.front().second
                                         : std::numeric_limits<double>::quiet_NaN();
  }
  for (std::size_t i = 0; i < frontier.size(); ++i) {
    if (frontier[i].first == recall) return frontier[i].second;
    if (i + 1 < frontier.size() && frontier[i].first < recall && recall < frontier[i + 1].first) {
      const double t = (recall - frontier[i].first) / (frontier[i + 1].first - frontier[i].first);
      return std::exp((1.0 - t) * std::log(frontier[i].second) +
                      t * std::log(frontier[i + 1].second));
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

// ------------------------------------------------------------------ building

struct Built {
  std::vector<std::unique_ptr<Method>> methods;
  std::vector<std::string> notes;  // for the report
};

funnel::Matrix<float> training_sample(const Dataset& d, std::size_t count) {
  count = std::min(count, d.base.rows());
  std::vector<std::size_t> rows(d.base.rows());
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = i;
  std::mt19937_64 rng(7);
  // A partial Fisher-Yates shuffle: the first `count` rows are a uniform sample.
  for (std::size_t i = 0; i < count; ++i) {
    std::uniform_int_distribution<std::size_t> pick(i, rows.size() - 1);
    std::swap(rows[i], rows[pick(rng)]);
  }
  std::sort(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(count));
  funnel::Matrix<float> sample(count, d.base.cols());
  for (std::size_t i = 0; i < count; ++i) {
    std::copy_n(d.base.data() + rows[i] * d.base.cols(), d.base.cols(),
                sample.data() + i * d.base.cols());
  }
  return sample;
}

bool wants(const Options& o, std::string_view method) {
  return std::find(o.methods.begin(), o.methods.end(), method) != o.methods.end();
}

std::string fmt(const char* format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}

// An exact FAISS index of the data set's metric (quantizer, k-means assignment).
std::unique_ptr<faiss::IndexFlat> flat_index(funnel::Metric metric, std::size_t dim) {
  const auto fdim = static_cast<faiss::Index::idx_t>(dim);
  if (metric == funnel::Metric::l2) return std::make_unique<faiss::IndexFlatL2>(fdim);
  return std::make_unique<faiss::IndexFlatIP>(fdim);
}

Built build_all(const Dataset& d, const Options& o) {
  Built built;
  const std::size_t dim = d.base.cols();
  const std::size_t n = d.base.rows();
  std::vector<funnel::ItemId> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = static_cast<funnel::ItemId>(i);
  const std::string nl = std::to_string(o.nlist);
  std::vector<std::size_t> nprobes;
  for (const std::size_t p : o.nprobes) {
    if (p <= o.nlist) nprobes.push_back(p);
  }

  funnel::IvfCoarseRankerConfig config;
  config.dim = dim;
  config.metric = d.metric;
  config.threads = o.threads;
  config.train_size = o.train_per_list * o.nlist;
  config.description = "IVF" + nl + ",Flat";
  const funnel::Matrix<float> sample = training_sample(d, config.train_size);
  const bool ivf =
      wants(o, "funnel-ivf-flat") || wants(o, "funnel-ivf-sq8") || wants(o, "faiss-ivf-flat");

  // The shared centroids: trained once (by funnel or by FAISS), then used by
  // every IVF index, so that nprobe means the same lists everywhere.
  funnel::Matrix<float> centroids;
  std::unique_ptr<funnel::IvfCoarseRanker> funnel_flat;
  double train_s = 0.0;
  if (ivf && o.trainer == "funnel") {
    const auto start = Clock::now();
    funnel_flat = funnel::IvfCoarseRanker::train(config, sample.view());
    train_s = seconds_since(start);
    centroids = funnel_flat->centroids();
    built.notes.push_back("The " + nl +
                          " centroids were trained by funnel's IvfCoarseRanker::train (" +
                          std::to_string(sample.rows()) + "-vector sample, " +
                          std::to_string(config.kmeans_iterations) + " k-means iterations) in " +
                          fmt("%.1f", train_s) +
                          " s; funnel IVF-Flat's build time includes it, the others get the same "
                          "centroids and their build time is adding the vectors (SQ8: plus "
                          "training its ranges).");
  } else if (ivf) {
    const auto start = Clock::now();
    faiss::ClusteringParameters cp;
    cp.niter = static_cast<int>(config.kmeans_iterations);
    cp.seed = static_cast<int>(config.seed);
    cp.max_points_per_centroid = static_cast<int>(o.train_per_list);
    cp.spherical = d.metric == funnel::Metric::inner_product;  // as funnel trains IP lists
    faiss::Clustering clustering(static_cast<int>(dim), static_cast<int>(o.nlist), cp);
    const std::unique_ptr<faiss::IndexFlat> assigner = flat_index(d.metric, dim);
    clustering.train(static_cast<faiss::Index::idx_t>(sample.rows()), sample.data(), *assigner);
    train_s = seconds_since(start);
    centroids = funnel::Matrix<float>(o.nlist, dim, clustering.centroids);
    built.notes.push_back("The " + nl + " centroids were trained by FAISS's k-means (" +
                          std::to_string(sample.rows()) + "-vector sample, " +
                          std::to_string(cp.niter) + " iterations) in " + fmt("%.1f", train_s) +
                          " s; FAISS's build time includes it, funnel's indexes get the same "
                          "centroids and their build time is adding the vectors.");
  }
  if (ivf)
    std::printf("  centroids: %zu trained by %s in %.1f s\n", o.nlist, o.trainer.c_str(), train_s);

  if (ivf && o.trainer == "funnel" && o.time_faiss_train) {
    const auto start = Clock::now();
    faiss::ClusteringParameters cp;
    cp.niter = static_cast<int>(config.kmeans_iterations);
    cp.max_points_per_centroid = static_cast<int>(o.train_per_list);
    cp.spherical = d.metric == funnel::Metric::inner_product;
    faiss::Clustering clustering(static_cast<int>(dim), static_cast<int>(o.nlist), cp);
    const std::unique_ptr<faiss::IndexFlat> assigner = flat_index(d.metric, dim);
    clustering.train(static_cast<faiss::Index::idx_t>(sample.rows()), sample.data(), *assigner);
    const double faiss_train_s = seconds_since(start);
    built.notes.push_back(
        "For comparison, FAISS's own k-means on the same sample (same "
        "iterations, " +
        std::to_string(o.threads) + " threads) took " + fmt("%.1f", faiss_train_s) +
        " s (its centroids are not used).");
    std::printf("  FAISS k-means on the same sample, for comparison: %.1f s\n", faiss_train_s);
  }

  if (wants(o, "funnel-ivf-flat")) {
    auto start = Clock::now();
    if (!funnel_flat)
      funnel_flat = funnel::IvfCoarseRanker::with_centroids(config, centroids.view());
    const double created_s = seconds_since(start);
    start = Clock::now();
    funnel_flat->add(d.base.view(), ids);
    auto m = std::make_unique<FunnelMethod>("funnel-ivf-flat", std::move(funnel_flat), nprobes);
    m->build_s = (o.trainer == "funnel" ? train_s : created_s) + seconds_since(start);
    std::printf("  funnel-ivf-flat: built in %.1f s, %.1f MB, kernel %s\n", m->build_s,
                m->memory_bytes() / 1e6,
                std::string(funnel::to_string(m->index().kernel())).c_str());
    built.methods.push_back(std::move(m));
  }
  if (wants(o, "funnel-ivf-sq8")) {
    funnel::IvfCoarseRankerConfig sq8 = config;
    sq8.description = "IVF" + nl + ",SQ8";
    const auto start = Clock::now();
    auto index = funnel::IvfCoarseRanker::with_centroids(sq8, centroids.view(), sample.view());
    index->add(d.base.view(), ids);
    auto m = std::make_unique<FunnelMethod>("funnel-ivf-sq8", std::move(index), nprobes);
    m->build_s = seconds_since(start);
    std::printf("  funnel-ivf-sq8: built in %.1f s, %.1f MB\n", m->build_s,
                m->memory_bytes() / 1e6);
    built.methods.push_back(std::move(m));
  }
  if (wants(o, "faiss-ivf-flat")) {
    const auto start = Clock::now();
    std::unique_ptr<faiss::IndexFlat> quantizer = flat_index(d.metric, dim);
    quantizer->add(static_cast<faiss::Index::idx_t>(o.nlist), centroids.data());
    auto index = std::make_unique<faiss::IndexIVFFlat>(
        quantizer.get(), dim, o.nlist,
        d.metric == funnel::Metric::l2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT);
    index->is_trained = true;  // the quantizer holds the shared centroids
    index->add(static_cast<faiss::Index::idx_t>(n), d.base.data());
    auto m = std::make_unique<FaissMethod>(std::move(quantizer), std::move(index), nprobes);
    m->build_s = seconds_since(start) + (o.trainer == "faiss" ? train_s : 0.0);
    std::printf("  faiss-ivf-flat: built in %.1f s, %.1f MB\n", m->build_s,
                m->memory_bytes() / 1e6);
    built.methods.push_back(std::move(m));
  }
  if (wants(o, "hnswlib")) {
    auto m = std::make_unique<HnswMethod>(d, o.hnsw_m, o.hnsw_ef_construction, o.threads, o.efs);
    std::printf("  hnswlib: built in %.1f s, %.1f MB\n", m->build_s, m->memory_bytes() / 1e6);
    built.methods.push_back(std::move(m));
  }
  return built;
}

// ------------------------------------------------------------------- report

std::string label(const std::string& key) {
  if (key == "funnel-ivf-flat") return "funnel IVF-Flat";
  if (key == "funnel-ivf-sq8") return "funnel IVF-SQ8";
  if (key == "faiss-ivf-flat") return "FAISS IVF-Flat";
  return "hnswlib HNSW";
}

std::string ratio_text(double r) { return std::isnan(r) ? "—" : fmt("%.2f", r); }

std::string table(const std::vector<Row>& rows) {
  std::ostringstream out;
  out << "| index | params | recall@10 | QPS 1-query | QPS batched | x FAISS 1-query | "
         "x FAISS batched | build s | memory MB |\n"
      << "|---|---|--:|--:|--:|--:|--:|--:|--:|\n";
  for (const Row& r : rows) {
    out << "| " << label(r.method) << " | " << r.param_name << "=" << r.param << " | "
        << fmt("%.4f", r.recall) << " | " << fmt("%.0f", r.qps_single) << " | "
        << fmt("%.0f", r.qps_batched) << " | " << ratio_text(r.ratio_single) << " | "
        << ratio_text(r.ratio_batched) << " | " << fmt("%.1f", r.build_s) << " | "
        << fmt("%.1f", r.memory_mb) << " |\n";
  }
  return out.str();
}

// The best row of `method` reaching the target recall, by one QPS.
const Row* best_at_target(const std::vector<Row>& rows, const std::string& method, bool batched) {
  const Row* best = nullptr;
  for (const Row& r : rows) {
    if (r.method != method || r.recall < kTargetRecall) continue;
    const double q = batched ? r.qps_batched : r.qps_single;
    if (best == nullptr || q > (batched ? best->qps_batched : best->qps_single)) best = &r;
  }
  return best;
}

std::string describe(const Row* r, bool batched) {
  if (r == nullptr) return "never reaches recall 0.95";
  return fmt("%.0f", batched ? r->qps_batched : r->qps_single) + " QPS at " + r->param_name + "=" +
         std::to_string(r->param) + " (recall " + fmt("%.4f", r->recall) + ")";
}

std::vector<std::string> targets(const std::vector<Row>& rows, std::size_t n, std::size_t dim) {
  std::vector<std::string> lines;
  const auto verdict = [](bool ok) { return ok ? std::string("PASS") : std::string("SHORT"); };
  const Row* faiss1 = best_at_target(rows, "faiss-ivf-flat", false);
  const Row* faissb = best_at_target(rows, "faiss-ivf-flat", true);
  const Row* hnswb = best_at_target(rows, "hnswlib", true);
  for (const std::string method : {"funnel-ivf-flat", "funnel-ivf-sq8"}) {
    if (std::none_of(rows.begin(), rows.end(), [&](const Row& r) { return r.method == method; })) {
      continue;
    }
    const Row* f1 = best_at_target(rows, method, false);
    const Row* fb = best_at_target(rows, method, true);
    if (faiss1 != nullptr) {
      const double x = f1 == nullptr ? 0.0 : f1->qps_single / faiss1->qps_single;
      lines.push_back(
          verdict(x >= 2.0) + " " + label(method) +
          " single-query >= 2x FAISS IVF-Flat at recall@10 >= 0.95: " + describe(f1, false) +
          " vs " + describe(faiss1, false) + " = " + fmt("%.2fx", x));
    }
    if (faissb != nullptr) {
      const double x = fb == nullptr ? 0.0 : fb->qps_batched / faissb->qps_batched;
      lines.push_back(verdict(x >= 3.0) + " " + label(method) +
                      " batched >= 3x FAISS IVF-Flat at recall@10 >= 0.95: " + describe(fb, true) +
                      " vs " + describe(faissb, true) + " = " + fmt("%.2fx", x));
    }
    if (hnswb != nullptr) {
      const double x = fb == nullptr ? 0.0 : fb->qps_batched / hnswb->qps_batched;
      lines.push_back(verdict(x >= 1.0) + " " + label(method) +
                      " batched >= hnswlib at recall@10 >= 0.95: " + describe(fb, true) + " vs " +
                      describe(hnswb, true) + " = " + fmt("%.2fx", x));
    } else if (std::any_of(rows.begin(), rows.end(),
                           [](const Row& r) { return r.method == "hnswlib"; })) {
      lines.push_back(verdict(fb != nullptr) + " " + label(method) +
                      " batched >= hnswlib at recall@10 >= 0.95: hnswlib never reaches 0.95 in "
                      "the ef sweep; funnel: " +
                      describe(fb, true));
    }
  }
  // SQ8 against Flat: memory, and the recall lost at every nprobe where
  // Flat reaches the target.
  std::map<std::size_t, double> flat_recall;
  std::map<std::size_t, double> sq8_recall;
  double flat_mb = 0.0;
  double sq8_mb = 0.0;
  for (const Row& r : rows) {
    if (r.method == "funnel-ivf-flat") {
      flat_recall[r.param] = r.recall;
      flat_mb = r.memory_mb;
    }
    if (r.method == "funnel-ivf-sq8") {
      sq8_recall[r.param] = r.recall;
      sq8_mb = r.memory_mb;
    }
  }
  if (!flat_recall.empty() && !sq8_recall.empty()) {
    double worst = 0.0;
    std::size_t worst_at = 0;
    for (const auto& [nprobe, recall] : flat_recall) {
      if (recall < kTargetRecall || !sq8_recall.contains(nprobe)) continue;
      if (recall - sq8_recall[nprobe] >= worst) {
        worst = recall - sq8_recall[nprobe];
        worst_at = nprobe;
      }
    }
    const double ratio = sq8_mb / flat_mb;
    // What the lists alone (codes and 8-byte ids) would weigh, and what the
    // rest of funnel's IVF-Flat index (centroids, id map) does.
    const double flat_lists_mb = double(n) * double(4 * dim + 8) / 1e6;
    const double sq8_lists_mb = double(n) * double(dim + 8) / 1e6;
    lines.push_back(verdict(ratio <= 0.3) +
                    " funnel IVF-SQ8 memory <= 0.3x IVF-Flat: " + fmt("%.1f", sq8_mb) + " MB vs " +
                    fmt("%.1f", flat_mb) + " MB = " + fmt("%.3fx", ratio) +
                    " (whole indexes as memory_bytes() counts them; codes and ids alone would be " +
                    fmt("%.3fx", sq8_lists_mb / flat_lists_mb) + ", and IVF-Flat holds " +
                    fmt("%.1f", flat_mb - flat_lists_mb) + " MB beyond them: centroids, id map)");
    if (worst_at == 0) {
      lines.push_back("SHORT funnel IVF-SQ8 recall loss <= 0.01: IVF-Flat never reaches 0.95");
    } else {
      lines.push_back(verdict(worst <= 0.01) +
                      " funnel IVF-SQ8 recall@10 loss <= 0.01 where IVF-Flat reaches 0.95: worst " +
                      fmt("%.4f", worst) + " at nprobe=" + std::to_string(worst_at));
    }
  }
  return lines;
}

void write_outputs(const Options& o, const Dataset& d, const std::vector<Row>& rows,
                   const std::vector<std::string>& target_lines,
                   const std::vector<std::string>& notes) {
  std::filesystem::create_directories(o.out_dir);
  {
    std::ofstream csv(o.out_dir / (d.name + ".csv"));
    csv << "dataset,method,param_name,param,recall_at_" << o.k
        << ",qps_single,qps_batched,ratio_single_vs_faiss,ratio_batched_vs_faiss,build_s,"
           "memory_mb,recall_single_subset,single_mode,same_ids_vs_faiss\n";
    for (const Row& r : rows) {
      csv << d.name << "," << r.method << "," << r.param_name << "," << r.param << ","
          << fmt("%.5f", r.recall) << "," << fmt("%.1f", r.qps_single) << ","
          << fmt("%.1f", r.qps_batched) << "," << fmt("%.4f", r.ratio_single) << ","
          << fmt("%.4f", r.ratio_batched) << "," << fmt("%.2f", r.build_s) << ","
          << fmt("%.2f", r.memory_mb) << "," << fmt("%.5f", r.recall_single) << "," << r.single_mode
          << "," << fmt("%.5f", r.same_ids) << "\n";
    }
  }
  {
    // gnuplot: one block per method (plot ... index i), titled by its first line.
    std::ofstream dat(o.out_dir / (d.name + ".dat"));
    std::vector<std::string> order;
    for (const Row& r : rows) {
      if (std::find(order.begin(), order.end(), r.method) == order.end()) order.push_back(r.method);
    }
    for (const std::string& method : order) {
      if (method != order.front()) dat << "\n\n";  // gnuplot's block separator
      dat << "\"" << label(method) << "\" qps_single qps_batched param\n";
      std::vector<const Row*> points;
      for (const Row& r : rows) {
        if (r.method == method) points.push_back(&r);
      }
      std::sort(points.begin(), points.end(),
                [](const Row* a, const Row* b) { return a->recall < b->recall; });
      for (const Row* r : points) {
        dat << fmt("%.5f", r->recall) << " " << fmt("%.2f", r->qps_single) << " "
            << fmt("%.2f", r->qps_batched) << " " << r->param << "\n";
      }
    }
  }
  {
    std::ofstream md(o.out_dir / (d.name + ".md"));
    md << "## " << d.name << "\n\n" << d.description << "\n\n";
    md << "Indexes: " << o.nlist << " inverted lists for every IVF index; hnswlib M=" << o.hnsw_m
       << ", efConstruction=" << o.hnsw_ef_construction << "; k=" << o.k << "; " << d.base.rows()
       << " base vectors, " << d.queries.rows() << " queries.\n\n";
    md << table(rows) << "\n";
    md << "Targets (recall@10 >= 0.95; the best QPS of each index among its settings that reach "
          "it):\n\n";
    for (const std::string& line : target_lines) md << "- " << line << "\n";
    md << "\n";
    for (const std::string& note : notes) md << note << "\n\n";
    md << "Command: `" << o.command << "`\n\n";
  }
}

int run(const Options& o) {
  omp_set_num_threads(o.threads);
  const bool blas = set_blas_threads(o.threads);
  const auto start = Clock::now();
  std::printf("data set %s (threads %d%s)\n", o.dataset.c_str(), o.threads,
              blas ? "" : "; note: no openblas_set_num_threads in this process");
  Dataset d;
  if (o.dataset == "fashion-mnist") {
    d = bench::load_fashion_mnist(o.fashion_dir, o.n, o.nq);
  } else if (o.dataset == "clustered") {
    d = bench::make_clustered(o.clustered, o.threads);
  } else {
    d = bench::make_catalog(o.catalog, o.cache, o.threads);
  }
  std::printf("  %zu base x %zu dim, %zu queries, %s, %zu lists (%.1f s)\n", d.base.rows(),
              d.base.cols(), d.queries.rows(), std::string(funnel::to_string(d.metric)).c_str(),
              o.nlist, seconds_since(start));
  const GroundTruth gt = bench::ground_truth(d, o.k, o.cache, o.threads);

  Built built = build_all(d, o);
  std::vector<Row> rows;
  std::map<std::size_t, std::vector<std::int64_t>> faiss_labels;  // nprobe -> labels
  std::map<std::pair<std::string, std::size_t>, std::vector<std::int64_t>> funnel_labels;
  // FAISS first, so that the others' rows can be compared with it.
  std::stable_sort(built.methods.begin(), built.methods.end(), [](const auto& a, const auto& b) {
    return a->key() == "faiss-ivf-flat" && b->key() != "faiss-ivf-flat";
  });
  for (const auto& method : built.methods) {
    for (const std::size_t p : method->params()) {
      Measured m = measure(*method, p, d, gt, o);
      if (method->key() == "faiss-ivf-flat") {
        faiss_labels[p] = m.labels;
      } else if (method->param_name() == "nprobe" && faiss_labels.contains(p)) {
        m.row.same_ids = same_ids(m.labels, faiss_labels[p]);
      }
      const Row& r = m.row;
      std::printf("  %-16s %6s=%-4zu recall %.4f  1-query %8.0f q/s  batched %8.0f q/s%s%s\n",
                  r.method.c_str(), r.param_name.c_str(), r.param, r.recall, r.qps_single,
                  r.qps_batched, std::isnan(r.same_ids) ? "" : "  same ids as FAISS ",
                  std::isnan(r.same_ids) ? "" : fmt("%.4f", r.same_ids).c_str());
      std::fflush(stdout);
      rows.push_back(m.row);
    }
  }
  std::vector<Row> faiss_rows;
  for (const Row& r : rows) {
    if (r.method == "faiss-ivf-flat") faiss_rows.push_back(r);
  }
  for (Row& r : rows) {
    if (faiss_rows.empty()) break;
    r.ratio_single = r.qps_single / faiss_qps_at(faiss_rows, r.recall, false);
    r.ratio_batched = r.qps_batched / faiss_qps_at(faiss_rows, r.recall, true);
  }
  std::printf("\n%s\n", table(rows).c_str());
  const std::vector<std::string> target_lines = targets(rows, d.base.rows(), d.base.cols());
  for (const std::string& line : target_lines) std::printf("%s\n", line.c_str());
  // The calibration the issue asks of the clustered set: the smallest
  // nprobe at which FAISS reaches the target recall.
  for (const Row& r : faiss_rows) {
    if (r.recall >= kTargetRecall) {
      const std::string line =
          "FAISS IVF-Flat first reaches recall@10 >= 0.95 at nprobe=" + std::to_string(r.param) +
          " of " + std::to_string(o.nlist) + " lists (recall " + fmt("%.4f", r.recall) + ").";
      std::printf("%s\n", line.c_str());
      built.notes.insert(built.notes.begin(), line);
      break;
    }
  }
  built.notes.push_back(
      "QPS 1-query: the first " + std::to_string(std::min(o.single_nq, d.queries.rows())) +
      " queries, one search call each (funnel: config.threads = " + std::to_string(o.threads) +
      ", so one query may use " + std::to_string(o.threads) +
      " threads; FAISS: the faster of parallel_mode 0 and 1 with " + std::to_string(o.threads) +
      " OpenMP threads; hnswlib: one thread, as a service calls it). QPS batched: all queries "
      "in calls of " +
      std::to_string(o.batch) + " (hnswlib: " + std::to_string(o.threads) +
      " std::threads over the queries of a call). Best of " + std::to_string(o.runs) +
      " timed run(s) after one untimed call. x FAISS: QPS divided by FAISS IVF-Flat's QPS at the "
      "same recall (interpolated on FAISS's curve; — outside its recall range). Memory: funnel's "
      "memory_bytes(); FAISS: inverted-list codes and ids plus centroids; hnswlib: its own "
      "structures sized from its fields (level-0 block, upper links, levels, locks, label map).");
  if (!o.out_dir.empty()) write_outputs(o, d, rows, target_lines, built.notes);
  std::printf("total %.1f s\n", seconds_since(start));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ivf_search: %s\n", e.what());
    return 1;
  }
}
