// SPDX-License-Identifier: Apache-2.0

// The layers are compiled with -fopenmp (FAISS needs it), which would let
// Eigen's GEMM fan out over OpenMP threads behind the caller's back. funnel
// spawns threads only as configured, so Eigen must stay single-threaded here;
// this must come before the first Eigen include.
#ifndef EIGEN_DONT_PARALLELIZE
#define EIGEN_DONT_PARALLELIZE
#endif

#include "funnel/exact_coarse_ranker.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_set>
#include <utility>

#include <Eigen/Core>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <nlohmann/json.hpp>

#include "internal/atomic_file.hpp"
#include "internal/checksum.hpp"
#include "internal/error_util.hpp"

namespace funnel {

static_assert(std::is_same_v<faiss::Index::idx_t, ItemId>,
              "funnel item ids are stored as FAISS ids unchanged");

namespace {

// Stored rows multiplied per GEMM call: bounds the score buffer to
// kQueryChunk x kRowBlock floats whatever the index size.
constexpr std::size_t kRowBlock = 4096;
// Queries per GEMM call. Fixed (not derived from the thread count) so that
// every score is computed by the same GEMM shape whatever the thread count,
// which keeps results bit-identical across thread counts.
constexpr std::size_t kQueryChunk = 64;

constexpr std::string_view kFormatName = "funnel.exact_coarse_ranker";
constexpr int kFormatVersion = 1;
constexpr std::string_view kChecksumPrefix = "mix64:";

using RowMajorMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMatrixMap = Eigen::Map<const RowMajorMatrix>;
using MatrixMap = Eigen::Map<RowMajorMatrix>;

std::string_view short_name(Metric metric) { return metric == Metric::l2 ? "l2" : "ip"; }

// Higher inner products are better; lower L2 distances are better.
constexpr bool higher_is_better(Metric metric) { return metric == Metric::inner_product; }

// The value that pads a row when fewer than k items are eligible: the worst
// possible distance of the metric.
float padding_distance(Metric metric) {
  return higher_is_better(metric) ? -std::numeric_limits<float>::infinity()
                                  : std::numeric_limits<float>::infinity();
}

struct Candidate {
  float distance;
  ItemId id;
};

// The total order of results: better distance first, then smaller id, so
// that ties are broken the same way whatever the row order or thread count.
template <Metric kMetric>
struct Ranks {
  static bool better(float a, ItemId a_id, float b, ItemId b_id) {
    if (a != b) return higher_is_better(kMetric) ? a > b : a < b;
    return a_id < b_id;
  }
  // Heap comparator: a "less than" b when a ranks before b, so the heap's
  // front is the worst kept candidate and sort_heap yields best first.
  bool operator()(const Candidate& a, const Candidate& b) const {
    return better(a.distance, a.id, b.distance, b.id);
  }
};

// The k best candidates seen so far for one query, kept in caller-owned
// storage of k elements as a heap whose front is the worst of them.
template <Metric kMetric>
class TopK {
 public:
  TopK(Candidate* storage, std::size_t k) : heap_(storage), k_(k) {}

  // Offers a candidate. `allows` (the filter) is consulted only when the
  // candidate would enter, so rejected items never occupy a slot.
  template <class Allows>
  void offer(float distance, ItemId id, const Allows& allows) {
    // Fast path: strictly worse than the current worst of a full heap.
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

  // Sorts the kept candidates best first (the heap is consumed).
  void sort() { std::sort_heap(heap_, heap_ + size_, Ranks<kMetric>{}); }

 private:
  Candidate* heap_;
  std::size_t k_;
  std::size_t size_ = 0;
  // Distance of the worst kept candidate once the heap is full; until then
  // the worst possible value, so that the fast path never rejects.
  float threshold_ = padding_distance(kMetric);
};

// Everything one search() call reads.
struct SearchInput {
  const float* queries;
  const float* query_norms;
  std::size_t nq;
  std::size_t dim;
  const float* vectors;
  const float* norms;
  const ItemId* ids;
  std::size_t count;
  std::size_t k;
  const IdFilter* filter;
};

std::size_t div_up(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

// Scores query chunks [chunk_begin, chunk_end) against row blocks
// [block_begin, block_end) and offers every score to the heap of its query;
// `heaps[i]` belongs to query chunk_begin * kQueryChunk + i. Row blocks are
// the outer loop so that each block of stored vectors is read from memory
// once per call rather than once per query chunk.
template <Metric kMetric>
void scan_range(const SearchInput& in, std::size_t chunk_begin, std::size_t chunk_end,
                std::size_t block_begin, std::size_t block_end, std::span<TopK<kMetric>> heaps) {
  const std::size_t first_query = chunk_begin * kQueryChunk;
  const std::size_t last_query = std::min(in.nq, chunk_end * kQueryChunk);
  std::vector<float> scores(std::min(kQueryChunk, last_query - first_query) *
                            std::min(kRowBlock, in.count));
  const auto always = [](ItemId /*id*/) { return true; };
  const auto filtered = [filter = in.filter](ItemId id) { return filter->allows(id); };

  for (std::size_t block = block_begin; block < block_end; ++block) {
    const std::size_t row0 = block * kRowBlock;
    const std::size_t rows = std::min(kRowBlock, in.count - row0);
    const ConstMatrixMap x(in.vectors + row0 * in.dim, static_cast<Eigen::Index>(rows),
                           static_cast<Eigen::Index>(in.dim));
    const ItemId* ids = in.ids + row0;
    const float* norms = in.norms + row0;
    for (std::size_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      const std::size_t q0 = chunk * kQueryChunk;
      const std::size_t qn = std::min(kQueryChunk, in.nq - q0);
      const ConstMatrixMap q(in.queries + q0 * in.dim, static_cast<Eigen::Index>(qn),
                             static_cast<Eigen::Index>(in.dim));
      MatrixMap s(scores.data(), static_cast<Eigen::Index>(qn), static_cast<Eigen::Index>(rows));
      s.noalias() = q * x.transpose();
      for (std::size_t i = 0; i < qn; ++i) {
        const float* row = scores.data() + i * rows;
        TopK<kMetric>& heap = heaps[q0 + i - first_query];
        const float query_norm = in.query_norms[q0 + i];
        const auto offer_all = [&](const auto& allows) {
          for (std::size_t j = 0; j < rows; ++j) {
            float distance = row[j];
            if constexpr (kMetric == Metric::l2) {
              distance = query_norm + norms[j] - 2.0F * distance;
              // Rounding can push the distance of (near-)equal vectors below 0.
              if (distance < 0.0F) distance = 0.0F;
            }
            heap.offer(distance, ids[j], allows);
          }
        };
        if (in.filter == nullptr) {
          offer_all(always);
        } else {
          offer_all(filtered);
        }
      }
    }
  }
}

// Runs fn(0) .. fn(workers - 1), fn(workers - 1) on the calling thread and
// the others on new threads; rethrows the first exception after all joined.
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

// The [begin, end) share of `total` items that worker w of `workers` takes.
std::pair<std::size_t, std::size_t> share(std::size_t total, std::size_t workers, std::size_t w) {
  return {total * w / workers, total * (w + 1) / workers};
}

template <Metric kMetric>
std::size_t search_impl(const SearchInput& in, std::size_t threads, MatrixView<float> distances,
                        MatrixView<ItemId> labels) {
  const std::size_t k = in.k;
  std::vector<Candidate> storage(in.nq * k);
  std::vector<TopK<kMetric>> heaps;
  heaps.reserve(in.nq);
  for (std::size_t i = 0; i < in.nq; ++i) heaps.emplace_back(storage.data() + i * k, k);

  if (in.count > 0) {
    const std::size_t chunks = div_up(in.nq, kQueryChunk);
    const std::size_t blocks = div_up(in.count, kRowBlock);
    if (threads <= 1 || (chunks == 1 && blocks == 1)) {
      scan_range<kMetric>(in, 0, chunks, 0, blocks, heaps);
    } else if (chunks >= threads) {
      // Enough queries: each worker owns whole query chunks and their heaps.
      run_workers(threads, [&](std::size_t w) {
        const auto [c0, c1] = share(chunks, threads, w);
        const std::span<TopK<kMetric>> mine(heaps.data() + c0 * kQueryChunk,
                                            std::min(in.nq, c1 * kQueryChunk) - c0 * kQueryChunk);
        scan_range<kMetric>(in, c0, c1, 0, blocks, mine);
      });
    } else {
      // Few queries: each worker scans a share of the row blocks for all
      // queries into private heaps, merged afterwards. The merge applies the
      // same total order, so the result equals a serial scan.
      const std::size_t workers = std::min(threads, blocks);
      std::vector<Candidate> partial_storage(workers * in.nq * k);
      std::vector<std::vector<TopK<kMetric>>> partial(workers);
      for (std::size_t w = 0; w < workers; ++w) {
        partial[w].reserve(in.nq);
        for (std::size_t i = 0; i < in.nq; ++i) {
          partial[w].emplace_back(partial_storage.data() + (w * in.nq + i) * k, k);
        }
      }
      run_workers(workers, [&](std::size_t w) {
        const auto [b0, b1] = share(blocks, workers, w);
        scan_range<kMetric>(in, 0, chunks, b0, b1, partial[w]);
      });
      const auto always = [](ItemId /*id*/) { return true; };
      for (std::size_t i = 0; i < in.nq; ++i) {
        for (std::size_t w = 0; w < workers; ++w) {
          for (const Candidate& c : partial[w][i]) heaps[i].offer(c.distance, c.id, always);
        }
      }
    }
  }

  std::size_t fewest = k;
  const float pad = padding_distance(kMetric);
  for (std::size_t i = 0; i < in.nq; ++i) {
    TopK<kMetric>& heap = heaps[i];
    heap.sort();
    const std::size_t found = heap.size();
    fewest = std::min(fewest, found);
    for (std::size_t j = 0; j < found; ++j) {
      distances(i, j) = heap.begin()[j].distance;
      labels(i, j) = heap.begin()[j].id;
    }
    for (std::size_t j = found; j < k; ++j) {
      distances(i, j) = pad;
      labels(i, j) = kNoItem;
    }
  }
  return in.nq == 0 ? 0 : fewest;
}

// Checks that every value of every row is finite and that the squared norm
// (needed for L2, and an overflow guard for inner products) is too; writes
// the squared norms to `norms`. `what` names the matrix in messages.
void compute_norms(MatrixView<const float> m, std::string_view what, float* norms) {
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
    norms[r] = sum;
  }
}

std::filesystem::path sidecar_path(const std::filesystem::path& path) {
  std::filesystem::path sidecar = path;
  sidecar += ".json";
  return sidecar;
}

// FAISS writer that streams to a stdio file and checksums what it writes,
// so the sidecar's checksum needs no second pass over the file.
class ChecksumFileWriter final : public faiss::IOWriter {
 public:
  explicit ChecksumFileWriter(std::FILE* file) : file_(file) {}
  std::size_t operator()(const void* ptr, std::size_t size, std::size_t nitems) override {
    const std::size_t written = std::fwrite(ptr, size, nitems, file_);
    checksum_.update(ptr, written * size);
    bytes_ += written * size;
    return written;
  }
  [[nodiscard]] std::uint64_t digest() const { return checksum_.digest(); }
  [[nodiscard]] std::size_t bytes() const { return bytes_; }

 private:
  std::FILE* file_;
  detail::Checksum64 checksum_;
  std::size_t bytes_ = 0;
};

// FAISS reader over bytes already in memory (and already checksummed), so
// FAISS parses exactly the bytes that were verified.
class BytesReader final : public faiss::IOReader {
 public:
  explicit BytesReader(std::string_view bytes) : bytes_(bytes) {}
  std::size_t operator()(void* ptr, std::size_t size, std::size_t nitems) override {
    if (size == 0) return 0;
    const std::size_t items = std::min(nitems, (bytes_.size() - pos_) / size);
    std::memcpy(ptr, bytes_.data() + pos_, items * size);
    pos_ += items * size;
    return items;
  }
  [[nodiscard]] std::size_t position() const { return pos_; }

 private:
  std::string_view bytes_;
  std::size_t pos_ = 0;
};

struct FileCloser {
  void operator()(std::FILE* f) const { (void)std::fclose(f); }
};

// The FAISS type code at the start of an index file, for messages.
std::string fourcc_of(std::string_view bytes) {
  if (bytes.size() < 4) return "(none)";
  std::string code(bytes.substr(0, 4));
  for (char& ch : code) {
    if (ch < 0x20 || ch > 0x7e) ch = '?';
  }
  return "'" + code + "'";
}

// Sidecar field readers: each failure names the sidecar and the field.
const nlohmann::json& field(const nlohmann::json& doc, const std::filesystem::path& file,
                            const char* name) {
  const auto it = doc.find(name);
  if (it == doc.end()) {
    detail::fail(ErrorCode::format, "sidecar '", file.string(), "': missing field '", name, "'");
  }
  return *it;
}

std::uint64_t unsigned_field(const nlohmann::json& doc, const std::filesystem::path& file,
                             const char* name) {
  const nlohmann::json& value = field(doc, file, name);
  if (!value.is_number_unsigned()) {
    detail::fail(ErrorCode::format, "sidecar '", file.string(), "': field '", name,
                 "' must be a non-negative integer, found ", value.dump());
  }
  return value.get<std::uint64_t>();
}

std::string string_field(const nlohmann::json& doc, const std::filesystem::path& file,
                         const char* name) {
  const nlohmann::json& value = field(doc, file, name);
  if (!value.is_string()) {
    detail::fail(ErrorCode::format, "sidecar '", file.string(), "': field '", name,
                 "' must be a string, found ", value.dump());
  }
  return value.get<std::string>();
}

}  // namespace

void ExactCoarseRankerConfig::validate() const {
  detail::require(dim > 0, "ExactCoarseRankerConfig.dim must be > 0");
  detail::require(dim <= kMaxDim, "ExactCoarseRankerConfig.dim is ", dim, ", at most ", kMaxDim,
                  " is supported");
  detail::require(metric == Metric::inner_product || metric == Metric::l2,
                  "ExactCoarseRankerConfig.metric has an unknown value ", static_cast<int>(metric));
  detail::require(threads >= 1 && threads <= kMaxThreads, "ExactCoarseRankerConfig.threads is ",
                  threads, ", expected 1..", kMaxThreads);
}

ExactCoarseRanker::ExactCoarseRanker(ExactCoarseRankerConfig config) : config_(config) {
  config_.validate();
}

std::string ExactCoarseRanker::name() const {
  return detail::cat("exact(", short_name(config_.metric), ", dim=", config_.dim, ")");
}

void ExactCoarseRanker::add(MatrixView<const float> vectors, std::span<const ItemId> ids) {
  const std::size_t d = config_.dim;
  detail::require(vectors.cols == d, "add: vectors have ", vectors.cols, " columns, expected dim ",
                  d);
  detail::require(vectors.rows == ids.size(), "add: ", vectors.rows, " vectors but ", ids.size(),
                  " ids");
  if (vectors.rows == 0) return;
  detail::require(vectors.data != nullptr, "add: vectors.data is null for ", vectors.rows, " rows");

  std::unordered_map<ItemId, std::size_t> position_in_batch;
  position_in_batch.reserve(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const ItemId id = ids[i];
    detail::require(id != kNoItem, "add: ids[", i, "] is ", kNoItem,
                    " (kNoItem), which marks 'no item' and cannot be stored");
    const auto [it, inserted] = position_in_batch.emplace(id, i);
    detail::require(inserted, "add: id ", id, " appears twice in the batch (ids[", it->second,
                    "] and ids[", i, "])");
    detail::require(!row_of_.contains(id), "add: id ", id, " (ids[", i,
                    "]) is already in the index");
  }

  std::vector<float> new_norms(vectors.rows);
  compute_norms(vectors, "add: vectors", new_norms.data());

  // Everything is validated; commit, undoing the partial work if memory runs
  // out so that the index stays as it was.
  const std::size_t old_size = ids_.size();
  try {
    vectors_.insert(vectors_.end(), vectors.data, vectors.data + vectors.size());
    norms_.insert(norms_.end(), new_norms.begin(), new_norms.end());
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    row_of_.reserve(old_size + ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) row_of_.emplace(ids[i], old_size + i);
  } catch (...) {
    for (std::size_t i = old_size; i < ids_.size(); ++i) row_of_.erase(ids_[i]);
    vectors_.resize(old_size * d);
    norms_.resize(old_size);
    ids_.resize(old_size);
    throw;
  }
}

RemoveReport ExactCoarseRanker::remove(std::span<const ItemId> ids) {
  RemoveReport report;
  const std::size_t d = config_.dim;
  for (const ItemId id : ids) {
    const auto it = row_of_.find(id);
    if (it == row_of_.end()) {
      report.unknown_ids.push_back(id);
      continue;
    }
    const std::size_t row = it->second;
    const std::size_t last = ids_.size() - 1;
    if (row != last) {
      std::copy_n(vectors_.begin() + static_cast<std::ptrdiff_t>(last * d), d,
                  vectors_.begin() + static_cast<std::ptrdiff_t>(row * d));
      norms_[row] = norms_[last];
      ids_[row] = ids_[last];
      row_of_[ids_[row]] = row;
    }
    row_of_.erase(it);
    vectors_.resize(last * d);
    norms_.resize(last);
    ids_.resize(last);
    ++report.removed;
  }
  return report;
}

std::size_t ExactCoarseRanker::search(MatrixView<const float> queries, std::size_t k,
                                      MatrixView<float> distances, MatrixView<ItemId> labels,
                                      const SearchParams* params) const {
  const std::size_t d = config_.dim;
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

  std::vector<float> query_norms(nq);
  compute_norms(queries, "search: queries", query_norms.data());

  const SearchInput in{queries.data,
                       query_norms.data(),
                       nq,
                       d,
                       vectors_.data(),
                       norms_.data(),
                       ids_.data(),
                       ids_.size(),
                       k,
                       params != nullptr ? params->filter : nullptr};
  const auto threads = static_cast<std::size_t>(config_.threads);
  if (config_.metric == Metric::l2) {
    return search_impl<Metric::l2>(in, threads, distances, labels);
  }
  return search_impl<Metric::inner_product>(in, threads, distances, labels);
}

void ExactCoarseRanker::save(const std::filesystem::path& path) const {
  const std::size_t d = config_.dim;
  const std::size_t n = ids_.size();
  std::unique_ptr<faiss::IndexFlat> flat;
  if (config_.metric == Metric::l2) {
    flat = std::make_unique<faiss::IndexFlatL2>(static_cast<faiss::Index::idx_t>(d));
  } else {
    flat = std::make_unique<faiss::IndexFlatIP>(static_cast<faiss::Index::idx_t>(d));
  }
  faiss::IndexIDMap2 map(flat.get());  // does not own `flat`
  if (n > 0) map.add_with_ids(static_cast<faiss::Index::idx_t>(n), vectors_.data(), ids_.data());

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
      faiss::write_index(&map, &writer);
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

  // Then the sidecar that vouches for it.
  const nlohmann::json sidecar = {
      {"format", kFormatName},
      {"version", kFormatVersion},
      {"metric", to_string(config_.metric)},
      {"dim", d},
      {"count", n},
      {"index_bytes", bytes},
      {"checksum", std::string(kChecksumPrefix) + detail::to_hex(digest)},
  };
  detail::write_file_atomic(sidecar_path(path), sidecar.dump(2) + "\n");
}

std::unique_ptr<ExactCoarseRanker> ExactCoarseRanker::load(const std::filesystem::path& path,
                                                           int threads) {
  ExactCoarseRankerConfig config;
  config.dim = 1;
  config.threads = threads;
  config.validate();

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
  if (dim == 0 || dim > ExactCoarseRankerConfig::kMaxDim) {
    detail::fail(ErrorCode::format, "sidecar '", side.string(), "': field 'dim' is ", dim,
                 ", expected 1..", ExactCoarseRankerConfig::kMaxDim);
  }
  config.dim = dim;
  const std::uint64_t count = unsigned_field(doc, side, "count");
  const std::uint64_t index_bytes = unsigned_field(doc, side, "index_bytes");
  const std::string checksum = string_field(doc, side, "checksum");
  if (!checksum.starts_with(kChecksumPrefix)) {
    detail::fail(ErrorCode::format, "sidecar '", side.string(), "': field 'checksum' is \"",
                 checksum, "\", expected \"", kChecksumPrefix, "<16 hex digits>\"");
  }

  // 2. The index bytes, verified before FAISS parses anything.
  const std::string bytes = detail::read_file(path);
  if (bytes.size() != index_bytes) {
    detail::fail(ErrorCode::format, "index file '", path.string(), "' has ", bytes.size(),
                 " bytes but its sidecar '", side.string(), "' says ", index_bytes,
                 " (truncated or replaced file?)");
  }
  const std::string actual_checksum =
      std::string(kChecksumPrefix) + detail::to_hex(detail::checksum64(bytes));
  if (actual_checksum != checksum) {
    detail::fail(ErrorCode::format, "index file '", path.string(), "' has checksum ",
                 actual_checksum, " but its sidecar '", side.string(), "' says ", checksum,
                 " (damaged file?)");
  }

  // 3. FAISS parses the verified bytes.
  std::unique_ptr<faiss::Index> index;
  BytesReader reader(bytes);
  reader.name = path.string();
  try {
    index.reset(faiss::read_index(&reader));
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
  const auto* map = dynamic_cast<const faiss::IndexIDMap2*>(index.get());
  const auto* flat = map != nullptr ? dynamic_cast<const faiss::IndexFlat*>(map->index) : nullptr;
  if (flat == nullptr) {
    detail::fail(ErrorCode::format, "index file '", path.string(),
                 "': expected a FAISS IndexIDMap2 ('IxM2') over IndexFlatIP/IndexFlatL2, found "
                 "type ",
                 fourcc_of(bytes), map != nullptr ? " over another index type" : "");
  }
  const faiss::MetricType expected_metric =
      config.metric == Metric::l2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT;
  if (flat->metric_type != expected_metric) {
    detail::fail(ErrorCode::format, "index file '", path.string(), "': FAISS metric type is ",
                 static_cast<int>(flat->metric_type), " but the sidecar says ", metric);
  }
  if (static_cast<std::uint64_t>(map->d) != dim || static_cast<std::uint64_t>(flat->d) != dim) {
    detail::fail(ErrorCode::format, "index file '", path.string(), "': dimension is ", map->d,
                 " but the sidecar says ", dim);
  }
  if (static_cast<std::uint64_t>(map->ntotal) != count ||
      static_cast<std::uint64_t>(flat->ntotal) != count || map->id_map.size() != count ||
      flat->codes.size() != count * dim * sizeof(float)) {
    detail::fail(ErrorCode::format, "index file '", path.string(), "': holds ", map->ntotal,
                 " vectors (", map->id_map.size(), " ids) but the sidecar says ", count);
  }

  auto ranker = std::make_unique<ExactCoarseRanker>(config);
  try {
    ranker->add(MatrixView<const float>(flat->get_xb(), count, dim), map->id_map);
  } catch (const Error& e) {
    detail::fail(ErrorCode::format, "index file '", path.string(), "': ", e.what());
  }
  return ranker;
}

}  // namespace funnel
