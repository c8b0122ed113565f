// SPDX-License-Identifier: Apache-2.0
#include "funnel/ivf_coarse_ranker.hpp"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <new>
#include <numeric>
#include <optional>
#include <random>
#include <shared_mutex>
#include <string_view>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/FaissAssert.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/ProductQuantizer.h>
#include <faiss/impl/ScalarQuantizer.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <faiss/invlists/InvertedLists.h>
#include <nlohmann/json.hpp>

#include "internal/atomic_file.hpp"
#include "internal/checksum.hpp"
#include "internal/error_util.hpp"
#include "internal/faiss_io.hpp"
#include "internal/ivf_id_map.hpp"
#include "internal/ivf_kernels.hpp"
#include "internal/rw_lock.hpp"
#include "internal/worker_pool.hpp"

namespace funnel {

static_assert(std::is_same_v<faiss::Index::idx_t, ItemId>,
              "funnel item ids are stored as FAISS ids unchanged");

namespace {

namespace ivf = detail::ivf;

constexpr std::string_view kFormatName = "funnel.ivf_coarse_ranker";
constexpr int kFormatVersion = 1;
constexpr std::string_view kChecksumPrefix = "mix64:";

// Upper bounds of the description's numbers. Lists are addressed with 32-bit
// numbers in the id map; 2^24 lists is far beyond any useful IVF.
constexpr std::size_t kMaxLists = std::size_t{1} << 24;
constexpr std::size_t kMaxPqBits = 16;
constexpr std::size_t kDefaultPqBits = 8;
// Training vectors per list (and per PQ centroid) when train_size is 0:
// FAISS's own cap (ClusteringParameters::max_points_per_centroid).
constexpr std::size_t kDefaultTrainPerCentroid = 256;
// Upper bound of kmeans_iterations (a typo guard, not a quality limit).
constexpr std::size_t kMaxKmeansIterations = 10000;
// Upper bound of an inverted list's length (offsets are 32-bit in the id map).
constexpr std::size_t kMaxListSize = std::numeric_limits<std::uint32_t>::max();

// The coarse step scores blocks of queries against blocks of centroids with
// one GEMM each. Both block sizes depend only on the index (never on the
// thread count or on where a query sits in the batch beyond its block), so
// a query's coarse scores, and hence its probed lists, are the same for
// every thread count.
constexpr std::size_t kCentroidBlock = 4096;
std::size_t coarse_query_block(std::size_t nlist) {
  return std::clamp<std::size_t>((std::size_t{1} << 18) / nlist, 1, 64);
}

// Grouped scan: queries per GEMM and list rows per GEMM (a 64 x 512 score
// tile is 128 KiB, which stays in L2 while it is offered to the heaps).
constexpr std::size_t kGroupQueries = 64;
constexpr std::size_t kGroupRows = 512;
// A list probed by fewer queries than this is scanned per query even in the
// grouped path: a GEMM with one or two rows is no faster than the kernel.
constexpr std::size_t kGemmMinQueries = 3;
// Vectors encoded per block in add() (PQ: one GEMM per sub-quantizer).
constexpr std::size_t kEncodeBlock = 256;
// Automatic batch mode switches to grouped from this many queries.
constexpr std::size_t kGroupedFromQueries = 32;

std::string_view short_name(Metric metric) { return metric == Metric::l2 ? "l2" : "ip"; }

constexpr bool higher_is_better(Metric metric) { return metric == Metric::inner_product; }

constexpr float padding_distance(Metric metric) {
  return higher_is_better(metric) ? -std::numeric_limits<float>::infinity()
                                  : std::numeric_limits<float>::infinity();
}

faiss::MetricType faiss_metric(Metric metric) {
  return metric == Metric::l2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT;
}

std::size_t div_up(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------
// Descriptions ("IVF1024,Flat", "IVF256,PQ16x4", ...)

enum class CodeKind { flat, sq8, fp16, pq };

struct Description {
  std::size_t nlist = 0;
  CodeKind kind = CodeKind::flat;
  std::size_t pq_m = 0;     // PQ: sub-quantizers
  std::size_t pq_bits = 0;  // PQ: bits per sub-quantizer code

  bool operator==(const Description&) const = default;

  // Centroids per PQ sub-quantizer (0 for other codes).
  [[nodiscard]] std::size_t pq_ksub() const {
    return kind == CodeKind::pq ? std::size_t{1} << pq_bits : 0;
  }
  // Bytes per stored vector.
  [[nodiscard]] std::size_t code_size(std::size_t dim) const {
    switch (kind) {
      case CodeKind::flat: return dim * sizeof(float);
      case CodeKind::sq8: return dim;
      case CodeKind::fp16: return dim * sizeof(std::uint16_t);
      case CodeKind::pq: return (pq_m * pq_bits + 7) / 8;
    }
    return 0;
  }
};

// A decimal number of at most 9 digits (so that it cannot overflow), no sign.
std::optional<std::size_t> parse_count(std::string_view text) {
  if (text.empty() || text.size() > 9) return std::nullopt;
  std::size_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::string format_description(const Description& d) {
  std::string codes;
  switch (d.kind) {
    case CodeKind::flat: codes = "Flat"; break;
    case CodeKind::sq8: codes = "SQ8"; break;
    case CodeKind::fp16: codes = "SQfp16"; break;
    case CodeKind::pq:
      codes = detail::cat("PQ", d.pq_m);
      if (d.pq_bits != kDefaultPqBits) codes += detail::cat("x", d.pq_bits);
      break;
  }
  return detail::cat("IVF", d.nlist, ",", codes);
}

// Parses a description; on failure returns nullopt and says why in `why`.
std::optional<Description> parse_description(std::string_view text, std::string& why) {
  constexpr std::string_view kExpected =
      "expected \"IVF<nlist>,Flat\", \"IVF<nlist>,SQ8\", \"IVF<nlist>,SQfp16\" or "
      "\"IVF<nlist>,PQ<m>[x<bits>]\"";
  const std::size_t comma = text.find(',');
  if (!text.starts_with("IVF") || comma == std::string_view::npos) {
    why = std::string(kExpected);
    return std::nullopt;
  }
  Description d;
  const std::optional<std::size_t> nlist = parse_count(text.substr(3, comma - 3));
  if (!nlist) {
    why = detail::cat("the list count after \"IVF\" is not a number; ", kExpected);
    return std::nullopt;
  }
  if (*nlist < 1 || *nlist > kMaxLists) {
    why = detail::cat("nlist is ", *nlist, ", expected 1..", kMaxLists);
    return std::nullopt;
  }
  d.nlist = *nlist;
  const std::string_view codes = text.substr(comma + 1);
  if (codes == "Flat") {
    d.kind = CodeKind::flat;
  } else if (codes == "SQ8") {
    d.kind = CodeKind::sq8;
  } else if (codes == "SQfp16") {
    d.kind = CodeKind::fp16;
  } else if (codes.starts_with("PQ")) {
    d.kind = CodeKind::pq;
    const std::string_view spec = codes.substr(2);
    const std::size_t x = spec.find('x');
    const std::optional<std::size_t> m = parse_count(spec.substr(0, x));
    std::optional<std::size_t> bits = kDefaultPqBits;
    if (x != std::string_view::npos) bits = parse_count(spec.substr(x + 1));
    if (!m || !bits) {
      why = detail::cat("\"", codes, "\" is not PQ<m> or PQ<m>x<bits>; ", kExpected);
      return std::nullopt;
    }
    if (*m < 1) {
      why = "PQ needs at least 1 sub-quantizer (PQ<m> with m >= 1)";
      return std::nullopt;
    }
    if (*bits < 1 || *bits > kMaxPqBits) {
      why = detail::cat("PQ bits per code is ", *bits, ", expected 1..", kMaxPqBits);
      return std::nullopt;
    }
    d.pq_m = *m;
    d.pq_bits = *bits;
  } else {
    why = detail::cat("unknown codes \"", codes, "\"; ", kExpected);
    return std::nullopt;
  }
  return d;
}

// The description of a validated config.
Description description_of(const IvfCoarseRankerConfig& config) {
  std::string why;
  const std::optional<Description> d = parse_description(config.description, why);
  assert(d.has_value());
  return *d;
}

// ---------------------------------------------------------------------------
// Top-k collection (the same total order as ExactCoarseRanker: better
// distance first, then smaller id, so results never depend on where items
// sit in the lists or on the thread count).

struct Candidate {
  float distance;
  ItemId id;
};

template <Metric kMetric>
struct Ranks {
  static bool better(float a, ItemId a_id, float b, ItemId b_id) {
    if (a != b) return higher_is_better(kMetric) ? a > b : a < b;
    return a_id < b_id;
  }
  // Heap comparator: the front of the heap is the worst kept candidate.
  bool operator()(const Candidate& a, const Candidate& b) const {
    return better(a.distance, a.id, b.distance, b.id);
  }
};

// The filter as the heaps consult it.
struct Allows {
  const IdFilter* filter;
  bool operator()(ItemId id) const { return filter == nullptr || filter->allows(id); }
};

// The k best candidates of one query in caller-owned storage, a heap whose
// front is the worst kept one. The filter is consulted only for candidates
// that would enter, so a rejected item never takes a slot.
template <Metric kMetric>
class TopK {
 public:
  TopK(Candidate* storage, std::size_t k) : heap_(storage), k_(k) {}

  void offer(float distance, ItemId id, const Allows& allows) {
    if (higher_is_better(kMetric) ? distance < threshold_ : distance > threshold_) return;
    if (size_ == k_) {
      const Candidate& worst = heap_[0];
      if (!Ranks<kMetric>::better(distance, id, worst.distance, worst.id)) return;
      if (!allows(id)) return;
      std::pop_heap(heap_, heap_ + size_, Ranks<kMetric>{});
      heap_[size_ - 1] = {distance, id};
      std::push_heap(heap_, heap_ + size_, Ranks<kMetric>{});
    } else {
      if (!allows(id)) return;
      heap_[size_++] = {distance, id};
      std::push_heap(heap_, heap_ + size_, Ranks<kMetric>{});
      if (size_ < k_) return;
    }
    threshold_ = heap_[0].distance;
  }

  [[nodiscard]] std::size_t size() const { return size_; }
  [[nodiscard]] const Candidate* begin() const { return heap_; }
  [[nodiscard]] const Candidate* end() const { return heap_ + size_; }
  void sort() { std::sort_heap(heap_, heap_ + size_, Ranks<kMetric>{}); }

 private:
  Candidate* heap_;
  std::size_t k_;
  std::size_t size_ = 0;
  // Worst kept distance once k are kept; before that, the worst possible.
  float threshold_ = padding_distance(kMetric);
};

template <Metric kMetric>
class HeapSet {
 public:
  HeapSet(std::size_t nq, std::size_t k) : storage_(nq * k) {
    heaps_.reserve(nq);
    for (std::size_t q = 0; q < nq; ++q) heaps_.emplace_back(storage_.data() + q * k, k);
  }
  HeapSet(const HeapSet&) = delete;
  HeapSet& operator=(const HeapSet&) = delete;
  HeapSet(HeapSet&&) noexcept = default;  // the buffer moves, the pointers stay valid
  HeapSet& operator=(HeapSet&&) = delete;
  ~HeapSet() = default;

  [[nodiscard]] TopK<kMetric>& operator[](std::size_t q) { return heaps_[q]; }

  // Offers every candidate of `other` (already filtered) to these heaps.
  void merge(const HeapSet& other) {
    const Allows everything{nullptr};
    for (std::size_t q = 0; q < heaps_.size(); ++q) {
      for (const Candidate& c : other.heaps_[q]) heaps_[q].offer(c.distance, c.id, everything);
    }
  }

 private:
  std::vector<Candidate> storage_;
  std::vector<TopK<kMetric>> heaps_;
};

// ---------------------------------------------------------------------------
// Threads

// Runs fn(0) .. fn(workers - 1), the last on the calling thread and the
// others on new threads; rethrows the first exception after all joined.
template <class Fn>
void run_workers(std::size_t workers, const Fn& fn) {
  if (workers <= 1) {
    fn(0);
    return;
  }
  std::vector<std::exception_ptr> errors(workers);
  {
    std::vector<std::jthread> threads;
    threads.reserve(workers - 1);
    for (std::size_t w = 0; w + 1 < workers; ++w) {
      threads.emplace_back([&fn, &errors, w] {
        try {
          fn(w);
        } catch (...) {
          errors[w] = std::current_exception();
        }
      });
    }
    try {
      fn(workers - 1);
    } catch (...) {
      errors[workers - 1] = std::current_exception();
    }
  }  // jthreads join here
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// As run_workers, for the parts of one search() call: on the threads of a
// process-wide pool that stay alive between calls (internal/worker_pool.hpp),
// because starting threads per call costs more than a short search and, on
// a busy machine, can stall it for a scheduler tick. At most `workers`
// threads, the caller included, work on the call.
void search_workers(std::size_t workers, const std::function<void(std::size_t)>& fn) {
  detail::WorkerPool::shared().run(workers, fn);
}

// The [begin, end) share of `total` items that worker w of `workers` takes.
std::pair<std::size_t, std::size_t> share(std::size_t total, std::size_t workers, std::size_t w) {
  return {total * w / workers, total * (w + 1) / workers};
}

// FAISS's training code parallelises its light loops (centroid sums,
// normalisation) with OpenMP, using the calling thread's nthreads-var ICV.
// funnel runs them on the calling thread only: the heavy step of k-means,
// assigning every training vector to a centroid, runs on config.threads
// std::threads in AssignIndex instead, and no OpenMP team (whose idle
// threads spin between regions) is ever started. omp_set_num_threads()
// outside a parallel region changes only the calling thread's ICV (OpenMP
// data environments), not the process's; it is restored afterwards.
class SerialOpenMp {
 public:
  SerialOpenMp() : saved_(omp_get_max_threads()) {
    if (saved_ != 1) omp_set_num_threads(1);
  }
  ~SerialOpenMp() {
    if (saved_ != 1) omp_set_num_threads(saved_);
  }
  SerialOpenMp(const SerialOpenMp&) = delete;
  SerialOpenMp& operator=(const SerialOpenMp&) = delete;
  SerialOpenMp(SerialOpenMp&&) = delete;
  SerialOpenMp& operator=(SerialOpenMp&&) = delete;

 private:
  int saved_;
};

// ---------------------------------------------------------------------------
// Validation

// Checks that every value of `m` is finite and that each row's squared norm
// fits in a float (so L2 scores cannot overflow to inf - inf); writes the
// squared norms to `norms` when it is not null. `what` names the matrix.
void check_finite(MatrixView<const float> m, std::string_view what, float* norms) {
  for (std::size_t r = 0; r < m.rows; ++r) {
    const float* row = m.data + r * m.cols;
    float sum = 0.0F;
    for (std::size_t c = 0; c < m.cols; ++c) {
      if (!std::isfinite(row[c])) {
        detail::fail(ErrorCode::invalid_argument, what, " row ", r, " column ", c,
                     " is not finite (", row[c], ")");
      }
      sum += row[c] * row[c];
    }
    if (!std::isfinite(sum)) {
      detail::fail(ErrorCode::invalid_argument, what, " row ", r,
                   " has a squared norm that overflows float");
    }
    if (norms != nullptr) norms[r] = sum;
  }
}

float squared_norm(const float* x, std::size_t dim) {
  float sum = 0.0F;
  for (std::size_t c = 0; c < dim; ++c) sum += x[c] * x[c];
  return sum;
}

// ---------------------------------------------------------------------------
// Coarse assignment: queries against centroids, with oneDNN GEMM.

struct CoarseQuantizer {
  const float* centroids = nullptr;  // nlist x dim
  const float* norms = nullptr;      // nlist squared norms
  std::size_t nlist = 0;
  std::size_t dim = 0;
  Metric metric = Metric::inner_product;
};

// Index of the best of n >= 1 scores (ties: the smallest index): the best
// value first, then the first block of 16 that holds it, then its position
// in that block. On x86 the two block passes use SSE2 (part of every x86-64
// baseline, so no run-time dispatch); elsewhere they are plain loops.
template <bool kHigher>
std::size_t best_index(const float* row, std::size_t n) {
  constexpr std::size_t kBlock = 16;
  float best = row[0];
  std::size_t c = 0;
#if defined(__SSE2__)
  if (n >= kBlock) {
    const auto pick = [](__m128 a, __m128 b) {
      return kHigher ? _mm_max_ps(a, b) : _mm_min_ps(a, b);  // inputs are finite
    };
    __m128 acc0 = _mm_loadu_ps(row);
    __m128 acc1 = _mm_loadu_ps(row + 4);
    __m128 acc2 = _mm_loadu_ps(row + 8);
    __m128 acc3 = _mm_loadu_ps(row + 12);
    for (c = kBlock; c + kBlock <= n; c += kBlock) {
      acc0 = pick(acc0, _mm_loadu_ps(row + c));
      acc1 = pick(acc1, _mm_loadu_ps(row + c + 4));
      acc2 = pick(acc2, _mm_loadu_ps(row + c + 8));
      acc3 = pick(acc3, _mm_loadu_ps(row + c + 12));
    }
    __m128 v = pick(pick(acc0, acc1), pick(acc2, acc3));
    v = pick(v, _mm_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = pick(v, _mm_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    best = _mm_cvtss_f32(v);
  }
#endif
  for (; c < n; ++c) best = (kHigher ? row[c] > best : row[c] < best) ? row[c] : best;
  std::size_t at = 0;
#if defined(__SSE2__)
  const __m128 target = _mm_set1_ps(best);
  for (; at + kBlock <= n; at += kBlock) {
    const __m128 hit = _mm_or_ps(_mm_or_ps(_mm_cmpeq_ps(_mm_loadu_ps(row + at), target),
                                           _mm_cmpeq_ps(_mm_loadu_ps(row + at + 4), target)),
                                 _mm_or_ps(_mm_cmpeq_ps(_mm_loadu_ps(row + at + 8), target),
                                           _mm_cmpeq_ps(_mm_loadu_ps(row + at + 12), target)));
    if (_mm_movemask_ps(hit) != 0) break;
  }
#endif
  while (row[at] != best) ++at;
  return at;
}

// The nprobe best of `n` scores, best first (ties: the smaller index),
// through a bounded heap whose worst entry rejects most scores with one
// comparison. `heap` is scratch space.
template <bool kHigher>
void select_best(const float* row, std::size_t n, std::size_t nprobe,
                 std::vector<std::pair<float, std::uint32_t>>& heap, std::uint32_t* out_lists,
                 float* out_scores) {
  if (nprobe == 1) {
    const std::size_t best = best_index<kHigher>(row, n);
    out_lists[0] = static_cast<std::uint32_t>(best);
    out_scores[0] = row[best];
    return;
  }
  // "a before b": a better score, or an equal score and a smaller index.
  const auto before = [](const std::pair<float, std::uint32_t>& a,
                         const std::pair<float, std::uint32_t>& b) {
    if (a.first != b.first) return kHigher ? a.first > b.first : a.first < b.first;
    return a.second < b.second;
  };
  heap.clear();
  for (std::size_t c = 0; c < n; ++c) {
    const float x = row[c];
    if (heap.size() == nprobe) {
      // Scores come in index order, so an equal score ranks after the
      // kept one: only a strictly better score enters.
      if (!(kHigher ? x > heap.front().first : x < heap.front().first)) continue;
      std::pop_heap(heap.begin(), heap.end(), before);
      heap.back() = {x, static_cast<std::uint32_t>(c)};
    } else {
      heap.emplace_back(x, static_cast<std::uint32_t>(c));
    }
    std::push_heap(heap.begin(), heap.end(), before);
  }
  std::sort_heap(heap.begin(), heap.end(), before);
  for (std::size_t p = 0; p < nprobe; ++p) {
    out_lists[p] = heap[p].second;
    out_scores[p] = heap[p].first;
  }
}

// The nprobe best lists of queries [0, nq), best first (ties: smaller list
// number), into lists[q * nprobe + p], with their coarse scores (inner
// product, or squared L2 distance clamped at 0) into scores.
void probe_lists(const CoarseQuantizer& cq, const float* queries, std::size_t nq,
                 std::size_t nprobe, std::size_t threads, std::uint32_t* lists, float* scores) {
  assert(nprobe >= 1 && nprobe <= cq.nlist);
  const std::size_t dim = cq.dim;
  const std::size_t nlist = cq.nlist;
  const std::size_t block = coarse_query_block(nlist);
  const std::size_t blocks = div_up(nq, block);
  const bool higher = higher_is_better(cq.metric);
  const std::size_t workers = std::min(threads, blocks);

  run_workers(workers, [&](std::size_t w) {
    const auto [b0, b1] = share(blocks, workers, w);
    std::vector<float> s(std::min(block, nq) * nlist);
    std::vector<std::pair<float, std::uint32_t>> order;
    order.reserve(nprobe);
    for (std::size_t blk = b0; blk < b1; ++blk) {
      const std::size_t q0 = blk * block;
      const std::size_t m = std::min(block, nq - q0);
      for (std::size_t c0 = 0; c0 < nlist; c0 += kCentroidBlock) {
        const std::size_t nc = std::min(kCentroidBlock, nlist - c0);
        ivf::gemm_nt(queries + q0 * dim, m, cq.centroids + c0 * dim, nc, dim, s.data() + c0, nlist);
      }
      for (std::size_t i = 0; i < m; ++i) {
        float* row = s.data() + i * nlist;
        if (cq.metric == Metric::l2) {
          const float qn = squared_norm(queries + (q0 + i) * dim, dim);
          for (std::size_t c = 0; c < nlist; ++c) {
            row[c] = std::max(qn + cq.norms[c] - 2.0F * row[c], 0.0F);
          }
        }
        std::uint32_t* out_lists = lists + (q0 + i) * nprobe;
        float* out_scores = scores + (q0 + i) * nprobe;
        if (higher) {
          select_best<true>(row, nlist, nprobe, order, out_lists, out_scores);
        } else {
          select_best<false>(row, nlist, nprobe, order, out_lists, out_scores);
        }
      }
    }
  });
}

// A FAISS index that k-means (faiss::Clustering) uses to assign training
// vectors to centroids: probe_lists() on std::threads instead of FAISS's
// IndexFlat, whose BLAS calls would run on OpenBLAS's own thread pool (one
// thread per core, whatever config.threads says).
class AssignIndex final : public faiss::Index {
 public:
  AssignIndex(std::size_t dim, Metric metric, std::size_t threads)
      : faiss::Index(static_cast<idx_t>(dim), faiss_metric(metric)),
        metric_(metric),
        threads_(threads) {}

  void add(idx_t n, const float* x) override {
    const auto count = static_cast<std::size_t>(n);
    const auto dim = static_cast<std::size_t>(d);
    centroids_.insert(centroids_.end(), x, x + count * dim);
    for (std::size_t i = 0; i < count; ++i) norms_.push_back(squared_norm(x + i * dim, dim));
    ntotal += n;
  }

  void reset() override {
    centroids_.clear();
    norms_.clear();
    ntotal = 0;
  }

  void search(idx_t n, const float* x, idx_t k, float* distances, idx_t* labels,
              const faiss::SearchParameters* params) const override {
    FAISS_THROW_IF_NOT_MSG(k == 1 && params == nullptr && ntotal > 0,
                           "funnel's k-means assignment index answers k = 1 only");
    const CoarseQuantizer cq{centroids_.data(), norms_.data(), static_cast<std::size_t>(ntotal),
                             static_cast<std::size_t>(d), metric_};
    std::vector<std::uint32_t> lists(static_cast<std::size_t>(n));
    probe_lists(cq, x, static_cast<std::size_t>(n), 1, threads_, lists.data(), distances);
    for (std::size_t i = 0; i < lists.size(); ++i) labels[i] = lists[i];
  }

 private:
  Metric metric_;
  std::size_t threads_;
  std::vector<float> centroids_;
  std::vector<float> norms_;
};

// ---------------------------------------------------------------------------
// Files

using detail::BytesReader;
using detail::ChecksumFileWriter;
using detail::FileCloser;
using detail::fourcc_of;
using detail::sidecar_path;
using detail::string_field;
using detail::unsigned_field;

std::string checksum_text(std::uint64_t digest) {
  return std::string(kChecksumPrefix) + detail::to_hex(digest);
}

// A uniform subset of `count` rows of `sample` (all of them, in order, when
// count >= rows), drawn with a seeded partial Fisher-Yates shuffle.
std::vector<float> seeded_subset(MatrixView<const float> sample, std::size_t count,
                                 std::uint64_t seed) {
  const std::size_t dim = sample.cols;
  if (count >= sample.rows) return {sample.data, sample.data + sample.size()};
  std::vector<std::size_t> order(sample.rows);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::mt19937_64 rng(seed);
  for (std::size_t i = 0; i < count; ++i) {
    std::uniform_int_distribution<std::size_t> pick(i, sample.rows - 1);
    std::swap(order[i], order[pick(rng)]);
  }
  std::vector<float> subset(count * dim);
  for (std::size_t i = 0; i < count; ++i) {
    std::copy_n(sample.data + order[i] * dim, dim, subset.data() + i * dim);
  }
  return subset;
}

}  // namespace

// ---------------------------------------------------------------------------
// State

struct IvfCoarseRanker::State {
  IvfCoarseRankerConfig config;
  Description desc;
  std::size_t dim = 0;
  std::size_t nlist = 0;
  std::size_t code_size = 0;
  IvfKernel kernel = IvfKernel::portable;  // config.kernel resolved
  const ivf::Kernels* kernels = nullptr;

  // The FAISS index is the storage: its quantizer holds the centroids and
  // its ArrayInvertedLists the codes and ids, so save() is write_index.
  std::unique_ptr<faiss::IndexIVF> index;
  faiss::ArrayInvertedLists* lists = nullptr;  // owned by `index`
  const float* centroids = nullptr;            // nlist x dim, owned by the quantizer
  std::vector<float> centroid_norms;
  const float* sq_vmin = nullptr;  // SQ8: trained ranges, owned by `index`
  const float* sq_vdiff = nullptr;
  std::unique_ptr<faiss::ScalarQuantizer::SQuantizer> sq_codec;  // SQ8 / SQfp16 encoder
  const faiss::ProductQuantizer* pq = nullptr;                   // PQ, owned by `index`
  // PQ: each sub-quantizer's codebook transposed (M x dsub x ksub), so that
  // look-up tables are loops over the centroids, and the centroids' squared
  // norms (M x ksub) for GEMM-based encoding.
  std::vector<float> pq_transposed;
  std::vector<float> pq_norms;

  // L2 Flat: squared norm of every stored row, per list (grouped scan).
  std::vector<std::vector<float>> row_norms;
  detail::IvfIdMap<decltype(faiss::ArrayInvertedLists::ids)> id_map;  // reads ids from `lists`
  mutable detail::RwLock lock;

  [[nodiscard]] CoarseQuantizer coarse() const {
    return {centroids, centroid_norms.data(), nlist, dim, config.metric};
  }
  [[nodiscard]] std::size_t list_size(std::size_t list) const { return lists->ids[list].size(); }
  [[nodiscard]] const std::uint8_t* codes(std::size_t list) const {
    return lists->codes[list].data();
  }
  [[nodiscard]] const ItemId* ids(std::size_t list) const { return lists->ids[list].data(); }
};

namespace {

using State = IvfCoarseRanker::State;

// PQ look-up tables of a (residual) query x: table[m * ksub + j] is
// sum_p x_p * C_mj,p (inner product) or sum_p (x_p - C_mj,p)^2 (L2) over the
// m-th sub-vector, summed in the order of FAISS's tables. The loops run
// over the centroids of the transposed codebook, which vectorises however
// small the sub-vectors are.
template <bool kIp>
void pq_lookup_tables(const State& s, const float* x, float* table) {
  const std::size_t ksub = s.pq->ksub;
  const std::size_t dsub = s.pq->dsub;
  for (std::size_t m = 0; m < s.pq->M; ++m) {
    float* t = table + m * ksub;
    std::fill_n(t, ksub, 0.0F);
    for (std::size_t p = 0; p < dsub; ++p) {
      const float xp = x[m * dsub + p];
      const float* column = s.pq_transposed.data() + (m * dsub + p) * ksub;
      for (std::size_t j = 0; j < ksub; ++j) {
        if constexpr (kIp) {
          t[j] += xp * column[j];
        } else {
          const float diff = xp - column[j];
          t[j] += diff * diff;
        }
      }
    }
  }
}

// PQ codes of n residuals (n x dim, n <= kEncodeBlock) into `codes`
// (zeroed, n x code_size): for each sub-quantizer one GEMM of the
// sub-vectors against its centroids, the nearest by |c|^2 - 2 r.c (|r|^2
// is the same for every centroid), packed as FAISS packs them.
void pq_encode(const State& s, const float* residuals, std::size_t n, std::uint8_t* codes) {
  const faiss::ProductQuantizer& pq = *s.pq;
  const std::size_t ksub = pq.ksub;
  const std::size_t dsub = pq.dsub;
  const std::size_t d = s.dim;
  std::vector<float> sub(n * dsub);
  std::vector<float> scores(n * ksub);
  std::vector<std::uint64_t> chosen(n * pq.M);
  for (std::size_t m = 0; m < pq.M; ++m) {
    for (std::size_t i = 0; i < n; ++i) {
      std::copy_n(residuals + i * d + m * dsub, dsub, sub.data() + i * dsub);
    }
    ivf::gemm_nt(sub.data(), n, pq.centroids.data() + m * ksub * dsub, ksub, dsub, scores.data(),
                 ksub);
    const float* norms = s.pq_norms.data() + m * ksub;
    for (std::size_t i = 0; i < n; ++i) {
      float* row = scores.data() + i * ksub;
      for (std::size_t j = 0; j < ksub; ++j) row[j] = norms[j] - 2.0F * row[j];
      chosen[i * pq.M + m] = best_index<false>(row, ksub);
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    faiss::PQEncoderGeneric encoder(codes + i * s.code_size, static_cast<int>(pq.nbits));
    for (std::size_t m = 0; m < pq.M; ++m) encoder.encode(chosen[i * pq.M + m]);
  }
}

// Wires `state` to its FAISS index (which must match state.desc) and builds
// the id map and the derived arrays. Duplicate or reserved ids in the lists
// (only possible in a loaded file) are Error(format) naming `origin`.
void attach_index(State& s, std::unique_ptr<faiss::IndexIVF> index, std::string_view origin) {
  s.index = std::move(index);
  s.lists = dynamic_cast<faiss::ArrayInvertedLists*>(s.index->invlists);
  assert(s.lists != nullptr);
  s.id_map.bind(&s.lists->ids);
  const auto* quantizer = dynamic_cast<const faiss::IndexFlat*>(s.index->quantizer);
  assert(quantizer != nullptr);
  s.centroids = quantizer->get_xb();
  s.centroid_norms.resize(s.nlist);
  for (std::size_t c = 0; c < s.nlist; ++c) {
    s.centroid_norms[c] = squared_norm(s.centroids + c * s.dim, s.dim);
  }
  if (s.desc.kind == CodeKind::sq8 || s.desc.kind == CodeKind::fp16) {
    const auto* ivfsq = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(s.index.get());
    assert(ivfsq != nullptr);
    if (s.desc.kind == CodeKind::sq8) {
      s.sq_vmin = ivfsq->sq.trained.data();
      s.sq_vdiff = ivfsq->sq.trained.data() + s.dim;
    }
    s.sq_codec.reset(ivfsq->sq.select_quantizer());
  } else if (s.desc.kind == CodeKind::pq) {
    const auto* ivfpq = dynamic_cast<const faiss::IndexIVFPQ*>(s.index.get());
    assert(ivfpq != nullptr);
    s.pq = &ivfpq->pq;
    const std::size_t m_count = s.pq->M;
    const std::size_t ksub = s.pq->ksub;
    const std::size_t dsub = s.pq->dsub;
    s.pq_transposed.resize(m_count * dsub * ksub);
    s.pq_norms.resize(m_count * ksub);
    for (std::size_t m = 0; m < m_count; ++m) {
      for (std::size_t j = 0; j < ksub; ++j) {
        const float* c = s.pq->centroids.data() + (m * ksub + j) * dsub;
        s.pq_norms[m * ksub + j] = squared_norm(c, dsub);
        for (std::size_t p = 0; p < dsub; ++p) s.pq_transposed[(m * dsub + p) * ksub + j] = c[p];
      }
    }
  }
  const bool keep_norms = s.desc.kind == CodeKind::flat && s.config.metric == Metric::l2;
  if (keep_norms) s.row_norms.resize(s.nlist);
  std::size_t total = 0;
  for (std::size_t l = 0; l < s.nlist; ++l) total += s.list_size(l);
  s.id_map.reserve(total);
  for (std::size_t l = 0; l < s.nlist; ++l) {
    const std::size_t n = s.list_size(l);
    const ItemId* ids = s.ids(l);
    for (std::size_t i = 0; i < n; ++i) {
      if (ids[i] == kNoItem) {
        detail::fail(ErrorCode::format, origin, ": list ", l, " holds the reserved id ", kNoItem);
      }
      if (const auto* other = s.id_map.find(ids[i])) {
        detail::fail(ErrorCode::format, origin, ": id ", ids[i], " is stored twice (list ",
                     other->list, " and list ", l, ")");
      }
      s.id_map.insert(ids[i], {static_cast<std::uint32_t>(l), static_cast<std::uint32_t>(i)});
    }
    if (keep_norms) {
      const auto* rows = reinterpret_cast<const float*>(s.codes(l));
      s.row_norms[l].resize(n);
      for (std::size_t i = 0; i < n; ++i) s.row_norms[l][i] = squared_norm(rows + i * s.dim, s.dim);
    }
  }
}

// Residuals of `vectors` to their nearest centroid (FAISS's by_residual
// convention for SQ and PQ codes).
std::vector<float> residuals_of(const CoarseQuantizer& cq, const std::vector<float>& vectors,
                                std::size_t threads) {
  const std::size_t n = vectors.size() / cq.dim;
  std::vector<std::uint32_t> lists(n);
  std::vector<float> scores(n);
  if (n > 0) probe_lists(cq, vectors.data(), n, 1, threads, lists.data(), scores.data());
  std::vector<float> residuals(vectors.size());
  for (std::size_t i = 0; i < n; ++i) {
    const float* c = cq.centroids + static_cast<std::size_t>(lists[i]) * cq.dim;
    for (std::size_t j = 0; j < cq.dim; ++j) {
      residuals[i * cq.dim + j] = vectors[i * cq.dim + j] - c[j];
    }
  }
  return residuals;
}

// Builds the FAISS index over `centroids` and trains its codes (SQ ranges or
// PQ codebooks) on the residuals of `training` (n x dim).
std::unique_ptr<IvfCoarseRanker::State> build_state(const IvfCoarseRankerConfig& config,
                                                    const Description& desc,
                                                    const std::vector<float>& centroids,
                                                    const std::vector<float>& training) {
  auto s = std::make_unique<State>();
  s->config = config;
  s->desc = desc;
  s->dim = config.dim;
  s->nlist = desc.nlist;
  s->code_size = desc.code_size(config.dim);
  s->kernel = ivf::resolve(config.kernel);
  s->kernels = &ivf::kernels_for(s->kernel);
  const auto d = static_cast<faiss::Index::idx_t>(config.dim);
  const auto threads = static_cast<std::size_t>(config.threads);
  const std::size_t n_train = training.size() / config.dim;

  std::unique_ptr<faiss::IndexFlat> quantizer;
  if (config.metric == Metric::l2) {
    quantizer = std::make_unique<faiss::IndexFlatL2>(d);
  } else {
    quantizer = std::make_unique<faiss::IndexFlatIP>(d);
  }
  quantizer->add(static_cast<faiss::Index::idx_t>(desc.nlist), centroids.data());
  const CoarseQuantizer cq{centroids.data(), nullptr, desc.nlist, config.dim, config.metric};
  std::vector<float> centroid_norms(desc.nlist);
  for (std::size_t c = 0; c < desc.nlist; ++c) {
    centroid_norms[c] = squared_norm(centroids.data() + c * config.dim, config.dim);
  }
  CoarseQuantizer cq_norms = cq;
  cq_norms.norms = centroid_norms.data();

  const faiss::MetricType metric = faiss_metric(config.metric);
  std::unique_ptr<faiss::IndexIVF> index;
  try {
    switch (desc.kind) {
      case CodeKind::flat:
        index =
            std::make_unique<faiss::IndexIVFFlat>(quantizer.get(), config.dim, desc.nlist, metric);
        break;
      case CodeKind::sq8:
      case CodeKind::fp16: {
        const auto qtype = desc.kind == CodeKind::sq8 ? faiss::ScalarQuantizer::QT_8bit
                                                      : faiss::ScalarQuantizer::QT_fp16;
        auto ivfsq = std::make_unique<faiss::IndexIVFScalarQuantizer>(
            quantizer.get(), config.dim, desc.nlist, qtype, metric, /*encode_residual=*/true);
        if (desc.kind == CodeKind::sq8) {
          const std::vector<float> residuals = residuals_of(cq_norms, training, threads);
          {
            const SerialOpenMp serial;
            ivfsq->sq.train(n_train, residuals.data());
          }
          // A component whose residuals are all equal has a zero range,
          // which FAISS's encoder would divide by; any tiny range decodes
          // to the same value.
          float* vdiff = ivfsq->sq.trained.data() + config.dim;
          const float* vmin = ivfsq->sq.trained.data();
          for (std::size_t j = 0; j < config.dim; ++j) {
            if (!(vdiff[j] > 0.0F)) vdiff[j] = std::max(std::abs(vmin[j]) * 1e-6F, 1e-30F);
          }
        }
        index = std::move(ivfsq);
        break;
      }
      case CodeKind::pq: {
        auto ivfpq = std::make_unique<faiss::IndexIVFPQ>(quantizer.get(), config.dim, desc.nlist,
                                                         desc.pq_m, desc.pq_bits, metric);
        const std::vector<float> residuals = residuals_of(cq_norms, training, threads);
        faiss::ProductQuantizer& pq = ivfpq->pq;
        pq.verbose = false;
        pq.cp.niter = static_cast<int>(config.kmeans_iterations);
        pq.cp.seed = static_cast<int>(config.seed & 0x7FFFFFFFU);
        pq.cp.min_points_per_centroid = 1;  // funnel checks its own minimum (no stderr warning)
        AssignIndex assign(pq.dsub, Metric::l2, threads);
        pq.assign_index = &assign;
        try {
          const SerialOpenMp serial;
          pq.train(n_train, residuals.data());
        } catch (...) {
          pq.assign_index = nullptr;
          throw;
        }
        pq.assign_index = nullptr;
        ivfpq->by_residual = true;
        ivfpq->use_precomputed_table = 0;  // funnel builds its own tables
        index = std::move(ivfpq);
        break;
      }
    }
  } catch (const faiss::FaissException& e) {
    detail::fail(ErrorCode::internal, "IvfCoarseRanker: FAISS failed to build ",
                 format_description(desc), ": ", e.what());
  }
  // FAISS owns the quantizer through a raw pointer (its own convention).
  index->own_fields = true;
  static_cast<void>(quantizer.release());
  index->is_trained = true;
  attach_index(*s, std::move(index), "IvfCoarseRanker");
  return s;
}

// Required training vectors, and what the requirement is made of (for messages).
std::pair<std::size_t, std::string> training_needed(const IvfCoarseRankerConfig& config,
                                                    const Description& desc, bool lists) {
  std::size_t needed = 0;
  std::string why;
  if (lists) {
    needed = config.min_train_per_list * desc.nlist;
    why = detail::cat("min_train_per_list ", config.min_train_per_list, " x nlist ", desc.nlist);
  }
  if (desc.kind == CodeKind::pq && config.min_train_per_list * desc.pq_ksub() > needed) {
    needed = config.min_train_per_list * desc.pq_ksub();
    why = detail::cat("min_train_per_list ", config.min_train_per_list, " x ", desc.pq_ksub(),
                      " centroids per PQ sub-quantizer");
  }
  if (desc.kind == CodeKind::sq8 && config.min_train_per_list > needed) {
    needed = config.min_train_per_list;
    why = detail::cat("min_train_per_list ", config.min_train_per_list, " for the SQ8 ranges");
  }
  return {needed, why};
}

// The training rows actually used: train_size, or 256 per list / PQ centroid.
std::size_t training_rows(const IvfCoarseRankerConfig& config, const Description& desc,
                          std::size_t available) {
  const std::size_t cap = config.train_size != 0
                              ? config.train_size
                              : kDefaultTrainPerCentroid * std::max(desc.nlist, desc.pq_ksub());
  return std::min(cap, available);
}

// Checks that the sample is large enough and returns the seeded subset.
std::vector<float> training_subset(const IvfCoarseRankerConfig& config, const Description& desc,
                                   MatrixView<const float> sample, bool lists,
                                   std::string_view call) {
  const auto [needed, why] = training_needed(config, desc, lists);
  const std::size_t used = training_rows(config, desc, sample.rows);
  if (sample.rows < needed) {
    detail::fail(ErrorCode::invalid_argument, call, ": the training sample has ", sample.rows,
                 " vectors but ", format_description(desc), " needs at least ", needed, " (", why,
                 ")");
  }
  if (used < needed) {
    detail::fail(ErrorCode::invalid_argument, call, ": train_size is ", config.train_size, " but ",
                 format_description(desc), " needs at least ", needed, " training vectors (", why,
                 ")");
  }
  if (needed == 0) return {};
  return seeded_subset(sample, used, config.seed);
}

void check_sample(const IvfCoarseRankerConfig& config, MatrixView<const float> sample,
                  std::string_view call) {
  if (sample.rows == 0) return;
  detail::require(sample.cols == config.dim, call, ": the training sample has ", sample.cols,
                  " columns, expected dim ", config.dim);
  detail::require(sample.data != nullptr, call, ": the training sample's data is null for ",
                  sample.rows, " rows");
  check_finite(sample, detail::cat(call, ": training sample"), nullptr);
}

}  // namespace

// ---------------------------------------------------------------------------
// Config

void IvfCoarseRankerConfig::validate() const {
  detail::require(dim > 0, "IvfCoarseRankerConfig.dim must be > 0");
  detail::require(dim <= kMaxDim, "IvfCoarseRankerConfig.dim is ", dim, ", at most ", kMaxDim,
                  " is supported");
  detail::require(metric == Metric::inner_product || metric == Metric::l2,
                  "IvfCoarseRankerConfig.metric has an unknown value ", static_cast<int>(metric));
  std::string why;
  const std::optional<Description> desc = parse_description(description, why);
  detail::require(desc.has_value(), "IvfCoarseRankerConfig.description \"", description,
                  "\" does not parse: ", why);
  if (desc->kind == CodeKind::pq) {
    detail::require(dim % desc->pq_m == 0, "IvfCoarseRankerConfig.description \"", description,
                    "\": PQ with ", desc->pq_m, " sub-quantizers needs dim divisible by ",
                    desc->pq_m, ", but dim is ", dim);
  }
  detail::require(min_train_per_list >= 1, "IvfCoarseRankerConfig.min_train_per_list must be >= 1");
  detail::require(min_train_per_list <= (std::size_t{1} << 20),
                  "IvfCoarseRankerConfig.min_train_per_list is ", min_train_per_list, ", at most ",
                  std::size_t{1} << 20, " is supported");
  detail::require(kmeans_iterations >= 1 && kmeans_iterations <= kMaxKmeansIterations,
                  "IvfCoarseRankerConfig.kmeans_iterations is ", kmeans_iterations,
                  ", expected 1..", kMaxKmeansIterations);
  detail::require(default_nprobe >= 1 && default_nprobe <= desc->nlist,
                  "IvfCoarseRankerConfig.default_nprobe is ", default_nprobe, ", expected 1..",
                  desc->nlist, " (nlist of \"", description, "\")");
  detail::require(threads >= 1 && threads <= kMaxThreads, "IvfCoarseRankerConfig.threads is ",
                  threads, ", expected 1..", kMaxThreads);
  const bool known_kernel = kernel == IvfKernel::automatic || kernel == IvfKernel::portable ||
                            kernel == IvfKernel::avx2 || kernel == IvfKernel::avx512;
  detail::require(known_kernel, "IvfCoarseRankerConfig.kernel has an unknown value ",
                  static_cast<int>(kernel));
  if (!ivf::supported(kernel)) {
    detail::fail(ErrorCode::unsupported, "IvfCoarseRankerConfig.kernel is ", to_string(kernel),
                 ", which this CPU (or build) does not support");
  }
}

std::string_view to_string(IvfKernel kernel) noexcept {
  switch (kernel) {
    case IvfKernel::automatic: return "automatic";
    case IvfKernel::portable: return "portable";
    case IvfKernel::avx2: return "avx2";
    case IvfKernel::avx512: return "avx512";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------
// Construction

IvfCoarseRanker::IvfCoarseRanker(std::unique_ptr<State> state) : state_(std::move(state)) {}
IvfCoarseRanker::~IvfCoarseRanker() = default;

std::unique_ptr<IvfCoarseRanker> IvfCoarseRanker::train(const IvfCoarseRankerConfig& config,
                                                        MatrixView<const float> sample) {
  config.validate();
  const Description desc = description_of(config);
  detail::require(sample.rows > 0, "train: the training sample is empty");
  check_sample(config, sample, "train");
  const std::vector<float> subset = training_subset(config, desc, sample, true, "train");
  const std::size_t n = subset.size() / config.dim;

  // k-means on the subset (FAISS's Clustering, assignments by AssignIndex).
  faiss::ClusteringParameters cp;
  cp.niter = static_cast<int>(config.kmeans_iterations);
  cp.seed = static_cast<int>(config.seed & 0x7FFFFFFFU);
  cp.verbose = false;
  // Inner-product lists are picked by the largest q.c, so centroids of
  // unequal norms would attract the queries of their neighbours; spherical
  // k-means keeps them on the unit sphere (FAISS's advice for IP).
  cp.spherical = config.metric == Metric::inner_product;
  cp.min_points_per_centroid = 1;  // funnel checked its own minimum above
  cp.max_points_per_centroid = std::numeric_limits<int>::max();  // subset already drawn
  faiss::Clustering clustering(static_cast<int>(config.dim), static_cast<int>(desc.nlist), cp);
  AssignIndex assign(config.dim, config.metric, static_cast<std::size_t>(config.threads));
  try {
    const SerialOpenMp serial;
    clustering.train(static_cast<faiss::Index::idx_t>(n), subset.data(), assign);
  } catch (const faiss::FaissException& e) {
    detail::fail(ErrorCode::internal, "train: FAISS k-means failed: ", e.what());
  }
  return std::unique_ptr<IvfCoarseRanker>(
      new IvfCoarseRanker(build_state(config, desc, clustering.centroids, subset)));
}

std::unique_ptr<IvfCoarseRanker> IvfCoarseRanker::with_centroids(
    const IvfCoarseRankerConfig& config, MatrixView<const float> centroids,
    MatrixView<const float> sample) {
  config.validate();
  const Description desc = description_of(config);
  detail::require(centroids.rows == desc.nlist && centroids.cols == config.dim,
                  "with_centroids: centroids are ", centroids.rows, " x ", centroids.cols,
                  ", expected nlist x dim = ", desc.nlist, " x ", config.dim);
  detail::require(centroids.data != nullptr, "with_centroids: centroids.data is null");
  check_finite(centroids, "with_centroids: centroids", nullptr);
  check_sample(config, sample, "with_centroids");
  const std::vector<float> subset = training_subset(config, desc, sample, false, "with_centroids");
  const std::vector<float> c(centroids.data, centroids.data + centroids.size());
  return std::unique_ptr<IvfCoarseRanker>(
      new IvfCoarseRanker(build_state(config, desc, c, subset)));
}

// ---------------------------------------------------------------------------
// Accessors

std::size_t IvfCoarseRanker::dim() const { return state_->dim; }
Metric IvfCoarseRanker::metric() const { return state_->config.metric; }

std::size_t IvfCoarseRanker::size() const {
  const std::shared_lock<detail::RwLock> guard(state_->lock);
  return state_->id_map.size();
}

std::string IvfCoarseRanker::name() const {
  return detail::cat("ivf(", format_description(state_->desc), ", ",
                     short_name(state_->config.metric), ", dim=", state_->dim, ")");
}

const IvfCoarseRankerConfig& IvfCoarseRanker::config() const noexcept { return state_->config; }
std::size_t IvfCoarseRanker::nlist() const noexcept { return state_->nlist; }
IvfKernel IvfCoarseRanker::kernel() const noexcept { return state_->kernel; }
bool IvfCoarseRanker::kernel_supported(IvfKernel kernel) { return ivf::supported(kernel); }

Matrix<float> IvfCoarseRanker::centroids() const {
  const State& s = *state_;
  return {s.nlist, s.dim, std::vector<float>(s.centroids, s.centroids + s.nlist * s.dim)};
}

std::vector<std::size_t> IvfCoarseRanker::list_sizes() const {
  const State& s = *state_;
  const std::shared_lock<detail::RwLock> guard(s.lock);
  std::vector<std::size_t> sizes(s.nlist);
  for (std::size_t l = 0; l < s.nlist; ++l) sizes[l] = s.list_size(l);
  return sizes;
}

std::size_t IvfCoarseRanker::memory_bytes() const {
  const State& s = *state_;
  const std::shared_lock<detail::RwLock> guard(s.lock);
  std::size_t bytes = s.nlist * s.dim * sizeof(float) + s.centroid_norms.capacity() * sizeof(float);
  for (std::size_t l = 0; l < s.nlist; ++l) {
    bytes += s.lists->codes[l].capacity() + s.lists->ids[l].capacity() * sizeof(ItemId);
  }
  for (const std::vector<float>& norms : s.row_norms) bytes += norms.capacity() * sizeof(float);
  if (s.sq_vmin != nullptr) bytes += 2 * s.dim * sizeof(float);
  if (s.pq != nullptr) {
    bytes += (s.pq->centroids.capacity() + s.pq_transposed.capacity() + s.pq_norms.capacity()) *
             sizeof(float);
  }
  bytes += s.id_map.memory_bytes();
  return bytes;
}

// ---------------------------------------------------------------------------
// add / remove

void IvfCoarseRanker::add(MatrixView<const float> vectors, std::span<const ItemId> ids) {
  State& s = *state_;
  const std::size_t d = s.dim;
  detail::require(vectors.cols == d, "add: vectors have ", vectors.cols, " columns, expected dim ",
                  d);
  detail::require(vectors.rows == ids.size(), "add: ", vectors.rows, " vectors but ", ids.size(),
                  " ids");
  const std::size_t n = vectors.rows;
  if (n == 0) return;
  detail::require(vectors.data != nullptr, "add: vectors.data is null for ", n, " rows");

  std::unordered_map<ItemId, std::size_t> position_in_batch;
  position_in_batch.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const ItemId id = ids[i];
    detail::require(id != kNoItem, "add: ids[", i, "] is ", kNoItem,
                    " (kNoItem), which marks 'no item' and cannot be stored");
    const auto [it, inserted] = position_in_batch.emplace(id, i);
    detail::require(inserted, "add: id ", id, " appears twice in the batch (ids[", it->second,
                    "] and ids[", i, "])");
  }
  std::vector<float> norms(n);
  check_finite(vectors, "add: vectors", norms.data());
  const auto check_absent = [&] {
    for (std::size_t i = 0; i < n; ++i) {
      detail::require(!s.id_map.contains(ids[i]), "add: id ", ids[i], " (ids[", i,
                      "]) is already in the index");
    }
  };
  {
    // Fail fast before the expensive part; checked again under the
    // exclusive lock, since another add() may run in between.
    const std::shared_lock<detail::RwLock> guard(s.lock);
    check_absent();
  }

  // Assign and encode outside the lock: searches keep running meanwhile.
  const auto threads = static_cast<std::size_t>(s.config.threads);
  std::vector<std::uint32_t> assigned(n);
  std::vector<float> coarse(n);
  probe_lists(s.coarse(), vectors.data, n, 1, threads, assigned.data(), coarse.data());
  std::vector<std::uint8_t> codes(n * s.code_size, 0);
  const std::size_t workers = std::min(threads, div_up(n, kEncodeBlock));
  run_workers(workers, [&](std::size_t w) {
    const auto [i0, i1] = share(n, workers, w);
    std::vector<float> residuals(std::min(kEncodeBlock, n) * d);
    for (std::size_t b0 = i0; b0 < i1; b0 += kEncodeBlock) {
      const std::size_t b = std::min(kEncodeBlock, i1 - b0);
      std::uint8_t* block_codes = codes.data() + b0 * s.code_size;
      if (s.desc.kind == CodeKind::flat) {
        std::memcpy(block_codes, vectors.data + b0 * d, b * d * sizeof(float));
        continue;
      }
      for (std::size_t i = 0; i < b; ++i) {
        const float* x = vectors.data + (b0 + i) * d;
        const float* c = s.centroids + static_cast<std::size_t>(assigned[b0 + i]) * d;
        for (std::size_t j = 0; j < d; ++j) residuals[i * d + j] = x[j] - c[j];
      }
      if (s.desc.kind == CodeKind::pq) {
        pq_encode(s, residuals.data(), b, block_codes);
      } else {
        for (std::size_t i = 0; i < b; ++i) {
          s.sq_codec->encode_vector(residuals.data() + i * d, block_codes + i * s.code_size);
        }
      }
    }
  });

  const std::unique_lock<detail::RwLock> guard(s.lock);
  check_absent();
  std::vector<std::size_t> added(s.nlist, 0);
  for (std::size_t i = 0; i < n; ++i) ++added[assigned[i]];
  for (std::size_t l = 0; l < s.nlist; ++l) {
    detail::require(s.list_size(l) + added[l] <= kMaxListSize, "add: list ", l, " would hold ",
                    s.list_size(l) + added[l], " items, at most ", kMaxListSize,
                    " are supported per list");
  }
  // Reserve everything first, so that the appends below cannot throw and the
  // index stays as it was if memory runs out.
  // Lists grow geometrically (by half) so that many small adds stay linear.
  const auto grow = [](auto& v, std::size_t need) {
    if (v.capacity() < need) v.reserve(std::max(need, v.capacity() + v.capacity() / 2));
  };
  const bool keep_norms = !s.row_norms.empty();
  for (std::size_t l = 0; l < s.nlist; ++l) {
    if (added[l] == 0) continue;
    const std::size_t size = s.list_size(l) + added[l];
    grow(s.lists->codes[l], size * s.code_size);
    grow(s.lists->ids[l], size);
    if (keep_norms) grow(s.row_norms[l], size);
  }
  s.id_map.reserve(s.id_map.size() + n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t l = assigned[i];
    std::vector<std::uint8_t>& list_codes = s.lists->codes[l];
    const std::uint8_t* code = codes.data() + i * s.code_size;
    list_codes.insert(list_codes.end(), code, code + s.code_size);
    s.lists->ids[l].push_back(ids[i]);  // first: the map reads the id from here
    s.id_map.insert(ids[i], {static_cast<std::uint32_t>(l),
                             static_cast<std::uint32_t>(s.lists->ids[l].size() - 1)});
    if (keep_norms) s.row_norms[l].push_back(norms[i]);
  }
  s.index->ntotal += static_cast<faiss::Index::idx_t>(n);
}

RemoveReport IvfCoarseRanker::remove(std::span<const ItemId> ids) {
  State& s = *state_;
  RemoveReport report;
  const std::unique_lock<detail::RwLock> guard(s.lock);
  const std::size_t cs = s.code_size;
  for (const ItemId id : ids) {
    const auto* where = s.id_map.find(id);
    if (where == nullptr) {
      report.unknown_ids.push_back(id);
      continue;
    }
    const std::size_t l = where->list;
    const std::size_t offset = where->offset;
    s.id_map.erase(id);  // while `id` is still readable at its place
    std::vector<std::uint8_t>& codes = s.lists->codes[l];
    std::vector<ItemId>& list_ids = s.lists->ids[l];
    const std::size_t last = list_ids.size() - 1;
    if (offset != last) {
      std::memcpy(codes.data() + offset * cs, codes.data() + last * cs, cs);
      list_ids[offset] = list_ids[last];
      if (!s.row_norms.empty()) s.row_norms[l][offset] = s.row_norms[l][last];
      s.id_map.update(list_ids[offset],
                      {static_cast<std::uint32_t>(l), static_cast<std::uint32_t>(offset)});
    }
    codes.resize(last * cs);
    list_ids.pop_back();
    if (!s.row_norms.empty()) s.row_norms[l].pop_back();
    --s.index->ntotal;
    ++report.removed;
  }
  return report;
}

// ---------------------------------------------------------------------------
// Search

namespace {

// Everything one search() call reads besides the index.
struct SearchJob {
  const float* queries = nullptr;
  const float* query_norms = nullptr;
  std::size_t nq = 0;
  std::size_t k = 0;
  std::size_t nprobe = 0;
  const std::uint32_t* lists = nullptr;  // nq x nprobe probed lists
  const float* coarse = nullptr;         // nq x nprobe coarse scores
  Allows allows{nullptr};
};

// Scans lists for one query at a time with the kernels of the index's
// code type. One scanner per worker thread (it owns scratch buffers).
template <Metric kMetric>
class QueryScanner {
 public:
  explicit QueryScanner(const State& s) : s_(s), residual_(s.dim) {
    if (s.desc.kind == CodeKind::pq) lut_.resize(s.pq->M * s.pq->ksub);
  }

  // Work that depends on the query only.
  void set_query(const float* query) {
    query_ = query;
    if constexpr (kMetric == Metric::inner_product) {
      if (s_.desc.kind == CodeKind::sq8) {
        ivf::prepare_sq8(query, s_.sq_vmin, s_.sq_vdiff, s_.dim, true, sq8_);
      } else if (s_.desc.kind == CodeKind::pq) {
        // q.(c + r) = q.c + sum_m q_m . r_m: one table per query.
        pq_tables(query);
      }
    }
  }

  // Offers the items of `list` (coarse score `coarse`) to `heap`.
  void scan(std::uint32_t list, float coarse, TopK<kMetric>& heap, const Allows& allows) {
    const std::size_t n = s_.list_size(list);
    if (n == 0) return;
    if (distances_.size() < n) distances_.resize(n);
    float* out = distances_.data();
    score(list, coarse, n, out);
    const ItemId* ids = s_.ids(list);
    for (std::size_t i = 0; i < n; ++i) heap.offer(out[i], ids[i], allows);
  }

 private:
  constexpr static bool kIp = kMetric == Metric::inner_product;

  void residual_to(std::uint32_t list) {
    const float* c = s_.centroids + static_cast<std::size_t>(list) * s_.dim;
    for (std::size_t j = 0; j < s_.dim; ++j) residual_[j] = query_[j] - c[j];
  }

  void pq_tables(const float* x) { pq_lookup_tables<kIp>(s_, x, lut_.data()); }

  template <class Decoder>
  void pq_scan(const std::uint8_t* codes, std::size_t n, float dis0, float* out) const {
    const faiss::ProductQuantizer& pq = *s_.pq;
    const std::size_t cs = s_.code_size;
    for (std::size_t i = 0; i < n; ++i) {
      Decoder decoder(codes + i * cs, static_cast<int>(pq.nbits));
      const float* table = lut_.data();
      float dis = dis0;
      for (std::size_t m = 0; m < pq.M; ++m) {
        dis += table[decoder.decode()];
        table += pq.ksub;
      }
      out[i] = dis;
    }
  }

  void score(std::uint32_t list, float coarse, std::size_t n, float* out) {
    const ivf::Kernels& k = *s_.kernels;
    const std::uint8_t* codes = s_.codes(list);
    const std::size_t d = s_.dim;
    switch (s_.desc.kind) {
      case CodeKind::flat: {
        const auto* rows = reinterpret_cast<const float*>(codes);
        if constexpr (kIp) {
          k.dot_f32(query_, rows, n, d, out);
        } else {
          k.l2_f32(query_, rows, n, d, out);
        }
        return;
      }
      case CodeKind::sq8:
        if constexpr (kIp) {
          // q.(c + r): the coarse score q.c joins the constant term.
          k.dot_sq8(sq8_.w.data(), sq8_.base + coarse, codes, n, d, out);
        } else {
          residual_to(list);
          ivf::prepare_sq8(residual_.data(), s_.sq_vmin, s_.sq_vdiff, d, false, sq8_);
          k.l2_sq8(sq8_.r.data(), sq8_.w.data(), codes, n, d, out);
        }
        return;
      case CodeKind::fp16: {
        const auto* halves = reinterpret_cast<const std::uint16_t*>(codes);
        if constexpr (kIp) {
          k.dot_f16(query_, halves, n, d, out);
          for (std::size_t i = 0; i < n; ++i) out[i] += coarse;
        } else {
          residual_to(list);
          k.l2_f16(residual_.data(), halves, n, d, out);
        }
        return;
      }
      case CodeKind::pq: {
        float dis0 = 0.0F;
        if constexpr (kIp) {
          dis0 = coarse;
        } else {
          residual_to(list);
          pq_tables(residual_.data());
        }
        if (s_.pq->nbits == 8) {
          pq_scan<faiss::PQDecoder8>(codes, n, dis0, out);
        } else if (s_.pq->nbits == 16) {
          pq_scan<faiss::PQDecoder16>(codes, n, dis0, out);
        } else {
          pq_scan<faiss::PQDecoderGeneric>(codes, n, dis0, out);
        }
        return;
      }
    }
  }

  const State& s_;
  const float* query_ = nullptr;
  std::vector<float> residual_;
  std::vector<float> distances_;
  std::vector<float> lut_;
  ivf::Sq8Query sq8_;
};

// Queries [q0, q1), probes [p0, p1) of each, into `heaps`.
template <Metric kMetric>
void scan_per_query(const State& s, const SearchJob& job, std::size_t q0, std::size_t q1,
                    std::size_t p0, std::size_t p1, HeapSet<kMetric>& heaps) {
  QueryScanner<kMetric> scanner(s);
  for (std::size_t q = q0; q < q1; ++q) {
    scanner.set_query(job.queries + q * s.dim);
    for (std::size_t p = p0; p < p1; ++p) {
      const std::size_t slot = q * job.nprobe + p;
      scanner.scan(job.lists[slot], job.coarse[slot], heaps[q], job.allows);
    }
  }
}

// Grouped scan of Flat lists: the queries that probe a list are scored
// against its rows with one GEMM per (query chunk, row block).
template <Metric kMetric>
class GroupScanner {
 public:
  GroupScanner(const State& s, const SearchJob& job)
      : s_(s),
        job_(job),
        a_(kGroupQueries * s.dim),
        c_(kGroupQueries * kGroupRows),
        per_query_(s) {}

  // `queries` probe `list`, ascending.
  void scan(std::uint32_t list, std::span<const std::uint32_t> queries, HeapSet<kMetric>& heaps) {
    const std::size_t n = s_.list_size(list);
    if (n == 0) return;
    if (queries.size() < kGemmMinQueries) {
      for (const std::uint32_t q : queries) {
        per_query_.set_query(job_.queries + static_cast<std::size_t>(q) * s_.dim);
        per_query_.scan(list, 0.0F, heaps[q], job_.allows);
      }
      return;
    }
    const std::size_t d = s_.dim;
    const auto* rows = reinterpret_cast<const float*>(s_.codes(list));
    const ItemId* ids = s_.ids(list);
    const float* norms = kMetric == Metric::l2 ? s_.row_norms[list].data() : nullptr;
    for (std::size_t i0 = 0; i0 < queries.size(); i0 += kGroupQueries) {
      const std::size_t m = std::min(kGroupQueries, queries.size() - i0);
      for (std::size_t i = 0; i < m; ++i) {
        std::copy_n(job_.queries + static_cast<std::size_t>(queries[i0 + i]) * d, d,
                    a_.data() + i * d);
      }
      for (std::size_t r0 = 0; r0 < n; r0 += kGroupRows) {
        const std::size_t nb = std::min(kGroupRows, n - r0);
        ivf::gemm_nt(a_.data(), m, rows + r0 * d, nb, d, c_.data(), nb);
        for (std::size_t i = 0; i < m; ++i) {
          const std::uint32_t q = queries[i0 + i];
          TopK<kMetric>& heap = heaps[q];
          const float* dots = c_.data() + i * nb;
          if constexpr (kMetric == Metric::l2) {
            const float qn = job_.query_norms[q];
            for (std::size_t j = 0; j < nb; ++j) {
              const float dist = std::max(qn + norms[r0 + j] - 2.0F * dots[j], 0.0F);
              heap.offer(dist, ids[r0 + j], job_.allows);
            }
          } else {
            for (std::size_t j = 0; j < nb; ++j) heap.offer(dots[j], ids[r0 + j], job_.allows);
          }
        }
      }
    }
  }

 private:
  const State& s_;
  const SearchJob& job_;
  std::vector<float> a_;
  std::vector<float> c_;
  QueryScanner<kMetric> per_query_;
};

template <Metric kMetric>
void search_grouped(const State& s, const SearchJob& job, std::size_t threads,
                    HeapSet<kMetric>& heaps) {
  // The probing queries of every list, ascending (CSR layout).
  std::vector<std::size_t> begin(s.nlist + 1, 0);
  for (std::size_t i = 0; i < job.nq * job.nprobe; ++i) ++begin[job.lists[i] + 1];
  std::partial_sum(begin.begin(), begin.end(), begin.begin());
  std::vector<std::uint32_t> queries(job.nq * job.nprobe);
  {
    std::vector<std::size_t> fill(begin.begin(), begin.end() - 1);
    for (std::size_t q = 0; q < job.nq; ++q) {
      for (std::size_t p = 0; p < job.nprobe; ++p) {
        queries[fill[job.lists[q * job.nprobe + p]]++] = static_cast<std::uint32_t>(q);
      }
    }
  }
  // Lists with work, and the cumulative work (queries x rows) up to each.
  std::vector<std::uint32_t> active;
  std::vector<std::size_t> work_before;
  std::size_t total_work = 0;
  for (std::size_t l = 0; l < s.nlist; ++l) {
    const std::size_t work = (begin[l + 1] - begin[l]) * s.list_size(l);
    if (work == 0) continue;
    active.push_back(static_cast<std::uint32_t>(l));
    work_before.push_back(total_work);
    total_work += work;
  }
  const auto scan_range = [&](std::size_t a0, std::size_t a1, HeapSet<kMetric>& out) {
    GroupScanner<kMetric> scanner(s, job);
    for (std::size_t a = a0; a < a1; ++a) {
      const std::uint32_t l = active[a];
      scanner.scan(
          l, std::span<const std::uint32_t>(queries.data() + begin[l], begin[l + 1] - begin[l]),
          out);
    }
  };
  const std::size_t workers = std::min(threads, active.size());
  if (workers <= 1) {
    scan_range(0, active.size(), heaps);
    return;
  }
  // Each worker takes a contiguous run of lists holding about 1/workers of
  // the work, into heaps of its own, merged afterwards in the same total
  // order (so the result does not depend on the split).
  std::vector<std::size_t> cut(workers + 1, active.size());
  cut[0] = 0;
  for (std::size_t w = 1; w < workers; ++w) {
    const std::size_t target = total_work * w / workers;
    cut[w] = static_cast<std::size_t>(
        std::lower_bound(work_before.begin(), work_before.end(), target) - work_before.begin());
  }
  std::vector<HeapSet<kMetric>> partial;
  partial.reserve(workers);
  for (std::size_t w = 0; w < workers; ++w) partial.emplace_back(job.nq, job.k);
  search_workers(workers, [&](std::size_t w) { scan_range(cut[w], cut[w + 1], partial[w]); });
  for (const HeapSet<kMetric>& part : partial) heaps.merge(part);
}

template <Metric kMetric>
std::size_t search_impl(const State& s, SearchJob job, bool grouped, std::size_t threads,
                        MatrixView<float> distances, MatrixView<ItemId> labels) {
  const std::size_t nq = job.nq;
  const std::size_t k = job.k;
  HeapSet<kMetric> heaps(nq, k);
  if (s.index->ntotal > 0) {
    std::vector<std::uint32_t> lists(nq * job.nprobe);
    std::vector<float> coarse(nq * job.nprobe);
    probe_lists(s.coarse(), job.queries, nq, job.nprobe, threads, lists.data(), coarse.data());
    job.lists = lists.data();
    job.coarse = coarse.data();
    if (grouped) {
      search_grouped<kMetric>(s, job, threads, heaps);
    } else if (threads <= 1 || (nq == 1 && job.nprobe == 1)) {
      scan_per_query<kMetric>(s, job, 0, nq, 0, job.nprobe, heaps);
    } else if (nq >= threads) {
      // Enough queries: each worker owns a run of queries and their heaps.
      search_workers(threads, [&](std::size_t w) {
        const auto [q0, q1] = share(nq, threads, w);
        scan_per_query<kMetric>(s, job, q0, q1, 0, job.nprobe, heaps);
      });
    } else {
      // Few queries: each worker scans a share of every query's probed
      // lists into heaps of its own, merged afterwards.
      const std::size_t workers = std::min(threads, job.nprobe);
      std::vector<HeapSet<kMetric>> partial;
      partial.reserve(workers);
      for (std::size_t w = 0; w < workers; ++w) partial.emplace_back(nq, k);
      search_workers(workers, [&](std::size_t w) {
        const auto [p0, p1] = share(job.nprobe, workers, w);
        scan_per_query<kMetric>(s, job, 0, nq, p0, p1, partial[w]);
      });
      for (const HeapSet<kMetric>& part : partial) heaps.merge(part);
    }
  }

  std::size_t fewest = k;
  const float pad = padding_distance(kMetric);
  for (std::size_t q = 0; q < nq; ++q) {
    TopK<kMetric>& heap = heaps[q];
    heap.sort();
    const std::size_t found = heap.size();
    fewest = std::min(fewest, found);
    for (std::size_t j = 0; j < found; ++j) {
      distances(q, j) = heap.begin()[j].distance;
      labels(q, j) = heap.begin()[j].id;
    }
    for (std::size_t j = found; j < k; ++j) {
      distances(q, j) = pad;
      labels(q, j) = kNoItem;
    }
  }
  return fewest;
}

}  // namespace

std::size_t IvfCoarseRanker::search(MatrixView<const float> queries, std::size_t k,
                                    MatrixView<float> distances, MatrixView<ItemId> labels,
                                    const SearchParams* params) const {
  const State& s = *state_;
  const std::size_t d = s.dim;
  const std::size_t nq = queries.rows;
  detail::require(k > 0, "search: k must be > 0");
  detail::require(queries.cols == d, "search: queries have ", queries.cols,
                  " columns, expected dim ", d);
  detail::require(distances.rows == nq && distances.cols == k, "search: distances is ",
                  distances.rows, " x ", distances.cols, ", expected ", nq, " x ", k);
  detail::require(labels.rows == nq && labels.cols == k, "search: labels is ", labels.rows, " x ",
                  labels.cols, ", expected ", nq, " x ", k);
  if (nq == 0) return 0;
  detail::require(queries.data != nullptr && distances.data != nullptr && labels.data != nullptr,
                  "search: a buffer of ", nq, " rows has a null data pointer");

  std::size_t nprobe = s.config.default_nprobe;
  IvfBatchMode batch = IvfBatchMode::automatic;
  if (const auto* ivf_params = dynamic_cast<const IvfSearchParams*>(params)) {
    if (ivf_params->nprobe != 0) nprobe = ivf_params->nprobe;
    batch = ivf_params->batch;
    detail::require(batch == IvfBatchMode::automatic || batch == IvfBatchMode::per_query ||
                        batch == IvfBatchMode::grouped,
                    "search: IvfSearchParams.batch has an unknown value ", static_cast<int>(batch));
  }
  nprobe = std::min(nprobe, s.nlist);
  // Grouping pays off for Flat lists only (one GEMM over fp32 rows); SQ and
  // PQ lists are always scanned per query.
  const bool grouped = s.desc.kind == CodeKind::flat &&
                       (batch == IvfBatchMode::grouped ||
                        (batch == IvfBatchMode::automatic && nq >= kGroupedFromQueries));

  std::vector<float> query_norms(nq);
  check_finite(queries, "search: queries", query_norms.data());
  SearchJob job;
  job.queries = queries.data;
  job.query_norms = query_norms.data();
  job.nq = nq;
  job.k = k;
  job.nprobe = nprobe;
  job.allows = Allows{params != nullptr ? params->filter : nullptr};
  const auto threads = static_cast<std::size_t>(s.config.threads);

  const std::shared_lock<detail::RwLock> guard(s.lock);
  if (s.config.metric == Metric::l2) {
    return search_impl<Metric::l2>(s, job, grouped, threads, distances, labels);
  }
  return search_impl<Metric::inner_product>(s, job, grouped, threads, distances, labels);
}

// ---------------------------------------------------------------------------
// Files

void IvfCoarseRanker::save(const std::filesystem::path& path) const {
  const State& s = *state_;
  const std::shared_lock<detail::RwLock> guard(s.lock);

  // The index first: temporary name, fsync, rename.
  const std::filesystem::path tmp = detail::temp_path_for(path);
  std::uint64_t digest = 0;
  std::size_t bytes = 0;
  try {
    const std::unique_ptr<std::FILE, FileCloser> file(std::fopen(tmp.c_str(), "wb"));
    if (!file) {
      detail::fail(ErrorCode::io, "cannot create '", tmp.string(), "' to save index '",
                   path.string(), "': ", std::strerror(errno));
    }
    ChecksumFileWriter writer(file.get());
    writer.name = tmp.string();
    try {
      faiss::write_index(s.index.get(), &writer);
    } catch (const faiss::FaissException& e) {
      detail::fail(ErrorCode::io, "cannot write index '", tmp.string(), "': ", e.what());
    }
    if (std::fflush(file.get()) != 0 || ::fsync(::fileno(file.get())) != 0) {
      detail::fail(ErrorCode::io, "cannot flush index '", tmp.string(),
                   "': ", std::strerror(errno));
    }
    digest = writer.digest();
    bytes = writer.bytes();
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
  try {
    detail::rename_file(tmp, path);
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }

  detail::Checksum64 ids_checksum;
  for (std::size_t l = 0; l < s.nlist; ++l) {
    ids_checksum.update(s.ids(l), s.list_size(l) * sizeof(ItemId));
  }
  const nlohmann::json sidecar = {
      {"format", kFormatName},
      {"version", kFormatVersion},
      {"description", format_description(s.desc)},
      {"metric", to_string(s.config.metric)},
      {"dim", s.dim},
      {"nlist", s.nlist},
      {"count", s.id_map.size()},
      {"default_nprobe", s.config.default_nprobe},
      {"index_bytes", bytes},
      {"checksum", checksum_text(digest)},
      {"ids_checksum", checksum_text(ids_checksum.digest())},
  };
  detail::write_file_atomic(sidecar_path(path), sidecar.dump(2) + "\n");
}

std::unique_ptr<IvfCoarseRanker> IvfCoarseRanker::load(const std::filesystem::path& path,
                                                       int threads, IvfKernel kernel) {
  // 1. The sidecar.
  const std::filesystem::path side = sidecar_path(path);
  const std::string side_text = detail::read_file(side);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(side_text);
  } catch (const nlohmann::json::exception& e) {
    detail::fail(ErrorCode::format, "sidecar '", side.string(), "' is not valid JSON: ", e.what());
  }
  if (!doc.is_object()) {
    detail::fail(ErrorCode::format, "sidecar '", side.string(), "' must hold a JSON object");
  }
  const std::string format = string_field(doc, side, "format");
  if (format != kFormatName) {
    detail::fail(ErrorCode::format, "sidecar '", side.string(), "': field 'format' is \"", format,
                 "\", expected \"", kFormatName, "\"");
  }
  const std::uint64_t version = unsigned_field(doc, side, "version");
  if (version != kFormatVersion) {
    detail::fail(ErrorCode::format, "sidecar '", side.string(), "': format version ", version,
                 " is not supported, expected ", kFormatVersion);
  }
  IvfCoarseRankerConfig config;
  config.description = string_field(doc, side, "description");
  std::string why;
  const std::optional<Description> desc = parse_description(config.description, why);
  if (!desc) {
    detail::fail(ErrorCode::format, "sidecar '", side.string(), "': field 'description' \"",
                 config.description, "\" does not parse: ", why);
  }
  const std::string metric = string_field(doc, side, "metric");
  if (metric == to_string(Metric::inner_product)) {
    config.metric = Metric::inner_product;
  } else if (metric == to_string(Metric::l2)) {
    config.metric = Metric::l2;
  } else {
    detail::fail(ErrorCode::format, "sidecar '", side.string(), "': field 'metric' is \"", metric,
                 "\", expected \"inner_product\" or \"l2\"");
  }
  const std::uint64_t dim = unsigned_field(doc, side, "dim");
  if (dim == 0 || dim > IvfCoarseRankerConfig::kMaxDim ||
      (desc->kind == CodeKind::pq && dim % desc->pq_m != 0)) {
    detail::fail(ErrorCode::format, "sidecar '", side.string(), "': field 'dim' is ", dim,
                 ", which does not fit \"", config.description, "\" (dim 1..",
                 IvfCoarseRankerConfig::kMaxDim, ")");
  }
  config.dim = dim;
  const std::uint64_t nlist = unsigned_field(doc, side, "nlist");
  if (nlist != desc->nlist) {
    detail::fail(ErrorCode::format, "sidecar '", side.string(), "': field 'nlist' is ", nlist,
                 " but the description \"", config.description, "\" says ", desc->nlist);
  }
  const std::uint64_t count = unsigned_field(doc, side, "count");
  config.default_nprobe = std::min<std::size_t>(config.default_nprobe, desc->nlist);
  if (doc.contains("default_nprobe")) {
    const std::uint64_t nprobe = unsigned_field(doc, side, "default_nprobe");
    if (nprobe < 1 || nprobe > desc->nlist) {
      detail::fail(ErrorCode::format, "sidecar '", side.string(), "': field 'default_nprobe' is ",
                   nprobe, ", expected 1..", desc->nlist);
    }
    config.default_nprobe = nprobe;
  }
  const std::uint64_t index_bytes = unsigned_field(doc, side, "index_bytes");
  const std::string checksum = string_field(doc, side, "checksum");
  const std::string ids_checksum = string_field(doc, side, "ids_checksum");
  config.threads = threads;
  config.kernel = kernel;
  config.validate();  // threads and kernel are the caller's; the rest is checked above

  // 2. The index bytes, verified before FAISS parses anything.
  const std::string bytes = detail::read_file(path);
  if (bytes.size() != index_bytes) {
    detail::fail(ErrorCode::format, "index file '", path.string(), "' has ", bytes.size(),
                 " bytes but its sidecar '", side.string(), "' says ", index_bytes,
                 " (truncated or replaced file?)");
  }
  const std::string actual_checksum = checksum_text(detail::checksum64(bytes));
  if (actual_checksum != checksum) {
    detail::fail(ErrorCode::format, "index file '", path.string(), "' has checksum ",
                 actual_checksum, " but its sidecar '", side.string(), "' says ", checksum,
                 " (damaged file?)");
  }

  // 3. FAISS parses the verified bytes (without building FAISS's own L2
  // PQ tables, which funnel does not use).
  std::unique_ptr<faiss::Index> parsed;
  BytesReader reader(bytes);
  reader.name = path.string();
  try {
    parsed.reset(faiss::read_index(&reader, faiss::IO_FLAG_SKIP_PRECOMPUTE_TABLE));
  } catch (const faiss::FaissException& e) {
    detail::fail(ErrorCode::format, "index file '", path.string(),
                 "' is not a readable FAISS index: ", e.what());
  } catch (const std::bad_alloc&) {
    detail::fail(ErrorCode::format, "index file '", path.string(),
                 "' declares sizes that cannot be allocated");
  }
  if (reader.position() != bytes.size()) {
    detail::fail(ErrorCode::format, "index file '", path.string(), "' has ",
                 bytes.size() - reader.position(), " unexpected bytes after the FAISS index");
  }

  // 4. The index must be what the sidecar describes.
  const std::string where = detail::cat("index file '", path.string(), "'");
  const faiss::Index* raw = parsed.get();
  if (raw == nullptr) detail::fail(ErrorCode::format, where, ": holds no index ('null')");
  const std::type_info& type = typeid(*raw);
  const std::type_info& expected_type = desc->kind == CodeKind::flat ? typeid(faiss::IndexIVFFlat)
                                        : desc->kind == CodeKind::pq
                                            ? typeid(faiss::IndexIVFPQ)
                                            : typeid(faiss::IndexIVFScalarQuantizer);
  if (type != expected_type) {
    detail::fail(ErrorCode::format, where, ": FAISS index type ", fourcc_of(bytes),
                 " is not the IVF index that the sidecar's \"", config.description,
                 "\" needs (IndexIVFFlat 'IwFl', IndexIVFScalarQuantizer 'IwSQ' or IndexIVFPQ "
                 "'IvPQ')");
  }
  const auto* ivf_index = dynamic_cast<const faiss::IndexIVF*>(raw);
  assert(ivf_index != nullptr);
  if (static_cast<std::uint64_t>(ivf_index->d) != dim) {
    detail::fail(ErrorCode::format, where, ": dimension is ", ivf_index->d,
                 " but the sidecar says ", dim);
  }
  if (ivf_index->metric_type != faiss_metric(config.metric)) {
    detail::fail(ErrorCode::format, where, ": FAISS metric type is ",
                 static_cast<int>(ivf_index->metric_type), " but the sidecar says ", metric);
  }
  if (ivf_index->nlist != nlist) {
    detail::fail(ErrorCode::format, where, ": holds ", ivf_index->nlist,
                 " lists but the sidecar says ", nlist);
  }
  if (static_cast<std::uint64_t>(ivf_index->ntotal) != count) {
    detail::fail(ErrorCode::format, where, ": holds ", ivf_index->ntotal,
                 " vectors but the sidecar says ", count);
  }
  const faiss::Index* quantizer = ivf_index->quantizer;
  const std::type_info& expected_quantizer =
      config.metric == Metric::l2 ? typeid(faiss::IndexFlatL2) : typeid(faiss::IndexFlatIP);
  if (quantizer == nullptr || typeid(*quantizer) != expected_quantizer ||
      static_cast<std::uint64_t>(quantizer->d) != dim ||
      static_cast<std::uint64_t>(quantizer->ntotal) != nlist) {
    detail::fail(ErrorCode::format, where, ": the coarse quantizer is not an IndexFlat",
                 config.metric == Metric::l2 ? "L2" : "IP", " of ", nlist, " centroids of dim ",
                 dim);
  }
  const auto* flat_quantizer = dynamic_cast<const faiss::IndexFlat*>(quantizer);
  check_finite(MatrixView<const float>(flat_quantizer->get_xb(), nlist, dim),
               detail::cat(where, ": centroids"), nullptr);
  if (ivf_index->direct_map.type != faiss::DirectMap::NoMap) {
    detail::fail(ErrorCode::format, where, ": has a FAISS direct map, which funnel does not keep");
  }
  const std::size_t code_size = desc->code_size(dim);
  const auto* array_lists = dynamic_cast<const faiss::ArrayInvertedLists*>(ivf_index->invlists);
  if (array_lists == nullptr || array_lists->nlist != nlist ||
      array_lists->code_size != code_size || ivf_index->code_size != code_size ||
      array_lists->codes.size() != nlist || array_lists->ids.size() != nlist) {
    detail::fail(ErrorCode::format, where, ": the inverted lists are not ", nlist,
                 " in-memory lists ('ilar') of ", code_size, "-byte codes");
  }
  std::size_t stored = 0;
  detail::Checksum64 actual_ids;
  for (std::size_t l = 0; l < nlist; ++l) {
    const std::size_t n = array_lists->ids[l].size();
    if (array_lists->codes[l].size() != n * code_size || n > kMaxListSize) {
      detail::fail(ErrorCode::format, where, ": list ", l, " has ", n, " ids but ",
                   array_lists->codes[l].size(), " bytes of codes (", code_size, " per item)");
    }
    stored += n;
    actual_ids.update(array_lists->ids[l].data(), n * sizeof(ItemId));
  }
  if (stored != count) {
    detail::fail(ErrorCode::format, where, ": its lists hold ", stored,
                 " items but the sidecar says ", count);
  }
  if (checksum_text(actual_ids.digest()) != ids_checksum) {
    detail::fail(ErrorCode::format, where, ": ids checksum is ", checksum_text(actual_ids.digest()),
                 " but the sidecar says ", ids_checksum);
  }
  if (desc->kind == CodeKind::flat) {
    for (std::size_t l = 0; l < nlist; ++l) {
      const std::size_t n = array_lists->ids[l].size();
      check_finite(MatrixView<const float>(
                       reinterpret_cast<const float*>(array_lists->codes[l].data()), n, dim),
                   detail::cat(where, ": list ", l), nullptr);
    }
  } else if (desc->kind == CodeKind::pq) {
    const auto* ivfpq = dynamic_cast<const faiss::IndexIVFPQ*>(raw);
    const faiss::ProductQuantizer& pq = ivfpq->pq;
    if (!ivfpq->by_residual || pq.d != dim || pq.M != desc->pq_m || pq.nbits != desc->pq_bits ||
        pq.code_size != code_size || pq.centroids.size() != dim * desc->pq_ksub()) {
      detail::fail(ErrorCode::format, where, ": the product quantizer (M ", pq.M, ", ", pq.nbits,
                   " bits, by_residual ", ivfpq->by_residual, ") does not match \"",
                   config.description, "\" with residuals");
    }
    check_finite(MatrixView<const float>(pq.centroids.data(), desc->pq_ksub() * desc->pq_m,
                                         dim / desc->pq_m),
                 detail::cat(where, ": PQ centroids"), nullptr);
  } else {
    const auto* ivfsq = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(raw);
    const faiss::ScalarQuantizer& sq = ivfsq->sq;
    const auto qtype = desc->kind == CodeKind::sq8 ? faiss::ScalarQuantizer::QT_8bit
                                                   : faiss::ScalarQuantizer::QT_fp16;
    const std::size_t trained = desc->kind == CodeKind::sq8 ? 2 * dim : 0;
    if (!ivfsq->by_residual || sq.qtype != qtype || sq.d != dim || sq.code_size != code_size ||
        sq.trained.size() != trained) {
      detail::fail(ErrorCode::format, where, ": the scalar quantizer (type ",
                   static_cast<int>(sq.qtype), ", by_residual ", ivfsq->by_residual,
                   ") does not match \"", config.description, "\" with residuals");
    }
    for (std::size_t j = 0; j < trained; ++j) {
      if (!std::isfinite(sq.trained[j]) || (j >= dim && !(sq.trained[j] > 0.0F))) {
        detail::fail(ErrorCode::format, where, ": SQ8 range value ", j, " is ", sq.trained[j]);
      }
    }
  }

  auto s = std::make_unique<State>();
  s->config = config;
  s->desc = *desc;
  s->dim = dim;
  s->nlist = nlist;
  s->code_size = code_size;
  s->kernel = ivf::resolve(config.kernel);
  s->kernels = &ivf::kernels_for(s->kernel);
  std::unique_ptr<faiss::IndexIVF> index(dynamic_cast<faiss::IndexIVF*>(parsed.get()));
  static_cast<void>(parsed.release());
  attach_index(*s, std::move(index), where);
  return std::unique_ptr<IvfCoarseRanker>(new IvfCoarseRanker(std::move(s)));
}

}  // namespace funnel
