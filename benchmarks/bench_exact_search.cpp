// SPDX-License-Identifier: Apache-2.0
// Times funnel's ExactCoarseRanker against faiss::IndexFlatIP/IndexFlatL2 on
// the same seeded data, for several batch sizes and thread counts, and checks
// that both return the same top-k ids. Prints one table.
//
// Usage: bench_exact_search [--n N] [--dim D] [--k K] [--nq 1,16,1000]
//                           [--threads 1,2] [--metric ip|l2] [--seed S]
//                           [--kernel automatic|portable|avx2|avx512]
//                           [--min-seconds T] [--cpu-time 0|1]
//
// --cpu-time 1 reports process CPU time instead of wall time, which is less
// disturbed by other processes on a shared machine (it adds up the time of
// all threads, so use it for the 1-thread rows).

#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <faiss/IndexFlat.h>

#include "funnel/error.hpp"
#include "funnel/exact_coarse_ranker.hpp"

namespace {

struct Options {
  std::size_t n = 200000;
  std::size_t dim = 128;
  std::size_t k = 100;
  std::vector<std::size_t> nqs = {1, 16, 1000};
  std::vector<int> threads = {1, 2};
  funnel::Metric metric = funnel::Metric::inner_product;
  unsigned seed = 42;
  double min_seconds = 1.0;  // per measurement, after one warm-up batch
  funnel::ExactKernel kernel = funnel::ExactKernel::automatic;
  bool cpu_time = false;
};

std::vector<std::size_t> parse_list(std::string_view text) {
  std::vector<std::size_t> values;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    values.push_back(std::stoul(std::string(text.substr(start, comma - start))));
    start = comma + 1;
  }
  return values;
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument("missing value after " + std::string(arg));
    const std::string_view value = argv[++i];
    if (arg == "--n") {
      o.n = std::stoul(std::string(value));
    } else if (arg == "--dim") {
      o.dim = std::stoul(std::string(value));
    } else if (arg == "--k") {
      o.k = std::stoul(std::string(value));
    } else if (arg == "--nq") {
      o.nqs = parse_list(value);
    } else if (arg == "--threads") {
      o.threads.clear();
      for (const std::size_t t : parse_list(value)) o.threads.push_back(static_cast<int>(t));
    } else if (arg == "--metric") {
      if (value != "ip" && value != "l2") throw std::invalid_argument("--metric is ip or l2");
      o.metric = value == "l2" ? funnel::Metric::l2 : funnel::Metric::inner_product;
    } else if (arg == "--seed") {
      o.seed = static_cast<unsigned>(std::stoul(std::string(value)));
    } else if (arg == "--kernel") {
      bool found = false;
      for (const auto kernel : {funnel::ExactKernel::automatic, funnel::ExactKernel::portable,
                                funnel::ExactKernel::avx2, funnel::ExactKernel::avx512}) {
        if (value == funnel::to_string(kernel)) {
          o.kernel = kernel;
          found = true;
        }
      }
      if (!found) throw std::invalid_argument("--kernel is automatic, portable, avx2 or avx512");
    } else if (arg == "--cpu-time") {
      o.cpu_time = value == "1";
    } else if (arg == "--min-seconds") {
      o.min_seconds = std::stod(std::string(value));
    } else {
      throw std::invalid_argument("unknown option " + std::string(arg));
    }
  }
  return o;
}

std::vector<float> random_vectors(std::size_t rows, std::size_t dim, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0F, 1.0F);
  std::vector<float> v(rows * dim);
  for (float& x : v) x = normal(rng);
  return v;
}

// FAISS's flat search multiplies through BLAS (OpenBLAS here) for batches of
// 20 queries or more, and OpenBLAS keeps its own thread pool that ignores
// omp_set_num_threads. Limit it too, when the BLAS in the process has the
// knob, so that "1 thread" means one thread for FAISS as well.
bool set_blas_threads(int threads) {
  using SetThreads = void (*)(int);
  void* symbol = dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
  if (symbol == nullptr) return false;
  reinterpret_cast<SetThreads>(symbol)(threads);  // NOLINT(*-reinterpret-cast)
  return true;
}

double now_seconds(bool cpu_time) {
  if (cpu_time) {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median milliseconds per call of fn, after one warm-up call, repeating
// until min_seconds have passed (at least 3 timed calls).
double time_ms(const std::function<void()>& fn, double min_seconds, bool cpu_time) {
  fn();
  std::vector<double> samples;
  const double start = now_seconds(cpu_time);
  while (samples.size() < 3 || now_seconds(cpu_time) - start < min_seconds) {
    const double t0 = now_seconds(cpu_time);
    fn();
    samples.push_back(1000.0 * (now_seconds(cpu_time) - t0));
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

struct Agreement {
  std::size_t positions = 0;
  std::size_t identical = 0;     // same id at the same position
  std::size_t in_both_sets = 0;  // funnel's id is somewhere in FAISS's top-k
  std::size_t beyond_ties = 0;   // differences that are not float-level ties
};

void compare(const std::vector<funnel::ItemId>& a_ids, const std::vector<float>& a_d,
             const std::vector<faiss::Index::idx_t>& b_ids, const std::vector<float>& b_d,
             std::size_t nq, std::size_t k, Agreement& agreement) {
  for (std::size_t q = 0; q < nq; ++q) {
    const std::unordered_set<faiss::Index::idx_t> b_set(
        b_ids.begin() + static_cast<std::ptrdiff_t>(q * k),
        b_ids.begin() + static_cast<std::ptrdiff_t>((q + 1) * k));
    const float b_last = b_d[q * k + k - 1];
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t at = q * k + j;
      const auto tol = [](float d) { return 1e-5F * (1.0F + std::abs(d)); };
      ++agreement.positions;
      if (a_ids[at] == b_ids[at]) ++agreement.identical;
      const bool in_set = b_set.contains(a_ids[at]);
      if (in_set) ++agreement.in_both_sets;
      const bool tie_ok = std::abs(a_d[at] - b_d[at]) <= tol(b_d[at]) &&
                          (in_set || std::abs(a_d[at] - b_last) <= tol(b_last));
      if (!tie_ok) ++agreement.beyond_ties;
    }
  }
}

int run(const Options& o) {
  std::mt19937 rng(o.seed);
  std::printf("generating %zu x %zu base vectors and %zu queries (seed %u)...\n", o.n, o.dim,
              *std::max_element(o.nqs.begin(), o.nqs.end()), o.seed);
  const std::vector<float> base = random_vectors(o.n, o.dim, rng);
  const std::size_t max_nq = *std::max_element(o.nqs.begin(), o.nqs.end());
  const std::vector<float> queries = random_vectors(max_nq, o.dim, rng);
  // FAISS numbers rows 0..n-1; funnel stores the same ids.
  std::vector<funnel::ItemId> ids(o.n);
  for (std::size_t i = 0; i < o.n; ++i) ids[i] = static_cast<funnel::ItemId>(i);

  std::unique_ptr<faiss::IndexFlat> flat;
  if (o.metric == funnel::Metric::l2) {
    flat = std::make_unique<faiss::IndexFlatL2>(static_cast<faiss::Index::idx_t>(o.dim));
  } else {
    flat = std::make_unique<faiss::IndexFlatIP>(static_cast<faiss::Index::idx_t>(o.dim));
  }
  flat->add(static_cast<faiss::Index::idx_t>(o.n), base.data());

  std::printf("metric %s, k = %zu, min %.1f s per measurement (median of repeats, %s time)\n",
              std::string(funnel::to_string(o.metric)).c_str(), o.k, o.min_seconds,
              o.cpu_time ? "process CPU" : "wall");
  {
    funnel::ExactCoarseRankerConfig probe;
    probe.dim = o.dim;
    probe.kernel = o.kernel;
    std::printf("funnel kernel: %s\n",
                std::string(funnel::to_string(funnel::ExactCoarseRanker(probe).kernel())).c_str());
  }
  std::printf(
      "\n| threads |   nq | funnel ms/batch | faiss ms/batch | funnel q/s | faiss q/s |"
      " funnel/faiss | same ids |\n");
  std::printf(
      "|--------:|-----:|----------------:|---------------:|-----------:|----------:|"
      "-------------:|---------:|\n");
  Agreement total;
  for (const int threads : o.threads) {
    funnel::ExactCoarseRankerConfig config;
    config.dim = o.dim;
    config.metric = o.metric;
    config.threads = threads;
    config.kernel = o.kernel;
    funnel::ExactCoarseRanker ranker(config);
    ranker.add(funnel::MatrixView<const float>(base.data(), o.n, o.dim), ids);
    omp_set_num_threads(threads);  // this benchmark process only
    const bool blas_limited = set_blas_threads(threads);
    if (!blas_limited && threads == o.threads.front()) {
      std::printf("(note: BLAS thread count could not be set; FAISS may use more threads)\n");
    }

    for (const std::size_t nq : o.nqs) {
      std::vector<float> f_d(nq * o.k);
      std::vector<funnel::ItemId> f_ids(nq * o.k);
      std::vector<float> x_d(nq * o.k);
      std::vector<faiss::Index::idx_t> x_ids(nq * o.k);
      const funnel::MatrixView<const float> qv(queries.data(), nq, o.dim);
      const double funnel_ms = time_ms(
          [&] {
            (void)ranker.search(qv, o.k, funnel::MatrixView<float>(f_d.data(), nq, o.k),
                                funnel::MatrixView<funnel::ItemId>(f_ids.data(), nq, o.k));
          },
          o.min_seconds, o.cpu_time);
      const double faiss_ms = time_ms(
          [&] {
            flat->search(static_cast<faiss::Index::idx_t>(nq), queries.data(),
                         static_cast<faiss::Index::idx_t>(o.k), x_d.data(), x_ids.data());
          },
          o.min_seconds, o.cpu_time);
      Agreement a;
      compare(f_ids, f_d, x_ids, x_d, nq, o.k, a);
      total.positions += a.positions;
      total.identical += a.identical;
      total.in_both_sets += a.in_both_sets;
      total.beyond_ties += a.beyond_ties;
      std::printf("| %7d | %4zu | %15.3f | %14.3f | %10.0f | %9.0f | %12.2f | %7.2f%% |\n", threads,
                  nq, funnel_ms, faiss_ms, 1000.0 * static_cast<double>(nq) / funnel_ms,
                  1000.0 * static_cast<double>(nq) / faiss_ms, funnel_ms / faiss_ms,
                  100.0 * static_cast<double>(a.identical) / static_cast<double>(a.positions));
      std::fflush(stdout);
    }
  }
  std::printf(
      "\nagreement over all runs: %zu of %zu positions hold the same id (%.3f%%), %.3f%% of "
      "funnel's ids are in FAISS's top-k; %zu differences beyond float-level ties\n",
      total.identical, total.positions,
      100.0 * static_cast<double>(total.identical) / static_cast<double>(total.positions),
      100.0 * static_cast<double>(total.in_both_sets) / static_cast<double>(total.positions),
      total.beyond_ties);
  std::printf("funnel/faiss > 1 means funnel is slower.\n");
  return total.beyond_ties == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const funnel::Error& e) {
    std::fprintf(stderr, "bench_exact_search: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_exact_search: %s\n", e.what());
  }
  return 2;
}
