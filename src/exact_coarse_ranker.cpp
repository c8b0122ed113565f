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
#include <bit>
#include <cassert>
#include <cmath>
#include <cstdint>
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

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FUNNEL_EXACT_X86 1
#else
#define FUNNEL_EXACT_X86 0
#endif

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
#include "internal/faiss_io.hpp"

namespace funnel {

static_assert(std::is_same_v<faiss::Index::idx_t, ItemId>,
              "funnel item ids are stored as FAISS ids unchanged");

namespace {

// Portable kernel: stored rows multiplied per Eigen GEMM call, which bounds
// the score buffer to kQueryChunk x kRowBlock floats whatever the index size.
constexpr std::size_t kRowBlock = 4096;
// Portable kernel: queries per GEMM call. Fixed (not derived from the thread
// count) so that every score is computed by the same GEMM shape whatever the
// thread count, which keeps results bit-identical across thread counts.
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

// The worst possible distance of the metric; also what pads a row when
// fewer than k items are eligible.
constexpr float padding_distance(Metric metric) {
  return higher_is_better(metric) ? -std::numeric_limits<float>::infinity()
                                  : std::numeric_limits<float>::infinity();
}

// A threshold that no finite distance passes (used for unused SIMD lanes).
constexpr float reject_all(Metric metric) { return -padding_distance(metric); }

// ---------------------------------------------------------------------------
// Top-k collection

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
// storage of k elements as a heap whose front is the worst of them. The
// query's threshold lives in a caller-owned slot too, so that the SIMD scans
// can compare a whole chunk of queries against their thresholds at once: it
// is the distance of the worst kept candidate once k are kept, and the worst
// possible distance before, so that a candidate strictly worse than the
// threshold can be rejected without looking at the heap.
template <Metric kMetric>
class TopK {
 public:
  TopK(Candidate* storage, std::size_t k, float* threshold)
      : heap_(storage), k_(k), threshold_(threshold) {
    *threshold_ = padding_distance(kMetric);
  }

  // Offers a candidate. `allows` (the filter) is consulted only when the
  // candidate would enter, so rejected items never occupy a slot.
  template <class Allows>
  void offer(float distance, ItemId id, const Allows& allows) {
    if (higher_is_better(kMetric) ? distance < *threshold_ : distance > *threshold_) return;
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
    *threshold_ = heap_[0].distance;
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
  float* threshold_;
};

// The heaps of all queries of one search (or of one worker's share of the
// stored rows). thresholds()[q] belongs to query q; the slots past the last
// query (unused lanes of the last SIMD chunk) reject everything.
template <Metric kMetric>
class HeapSet {
 public:
  HeapSet(std::size_t nq, std::size_t k, std::size_t padded_nq)
      : storage_(nq * k), thresholds_(padded_nq, reject_all(kMetric)) {
    heaps_.reserve(nq);
    for (std::size_t q = 0; q < nq; ++q) {
      heaps_.emplace_back(storage_.data() + q * k, k, &thresholds_[q]);
    }
  }
  HeapSet(const HeapSet&) = delete;
  HeapSet& operator=(const HeapSet&) = delete;
  HeapSet(HeapSet&&) noexcept = default;  // the buffers move, the pointers stay valid
  HeapSet& operator=(HeapSet&&) = delete;
  ~HeapSet() = default;

  [[nodiscard]] TopK<kMetric>* heaps(std::size_t first_query) {
    return heaps_.data() + first_query;
  }
  [[nodiscard]] TopK<kMetric>& operator[](std::size_t q) { return heaps_[q]; }
  [[nodiscard]] float* thresholds(std::size_t first_query) {
    return thresholds_.data() + first_query;
  }

 private:
  std::vector<Candidate> storage_;
  std::vector<float> thresholds_;
  std::vector<TopK<kMetric>> heaps_;
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

// The filter as the heaps consult it.
struct Allows {
  const IdFilter* filter;
  bool operator()(ItemId id) const { return filter == nullptr || filter->allows(id); }
};

std::size_t div_up(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------
// Portable kernel: Eigen GEMM (built for the baseline ISA) + scalar scan.

// Scores query chunks [chunk_begin, chunk_end) against row blocks
// [block_begin, block_end) and offers every score to its query's heap. Row
// blocks are the outer loop so that each block of stored vectors comes from
// memory once per call rather than once per query chunk.
template <Metric kMetric>
void scan_range_portable(const SearchInput& in, std::size_t chunk_begin, std::size_t chunk_end,
                         std::size_t block_begin, std::size_t block_end, HeapSet<kMetric>& heaps) {
  const std::size_t first_query = chunk_begin * kQueryChunk;
  const std::size_t last_query = std::min(in.nq, chunk_end * kQueryChunk);
  std::vector<float> scores(std::min(kQueryChunk, last_query - first_query) *
                            std::min(kRowBlock, in.count));
  const Allows allows{in.filter};

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
        TopK<kMetric>& heap = heaps[q0 + i];
        const float query_norm = in.query_norms[q0 + i];
        for (std::size_t j = 0; j < rows; ++j) {
          float distance = row[j];
          if constexpr (kMetric == Metric::l2) {
            distance = query_norm + norms[j] - 2.0F * distance;
            // Rounding can push the distance of (near-)equal vectors below 0.
            if (distance < 0.0F) distance = 0.0F;
          }
          heap.offer(distance, ids[j], allows);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// SIMD kernels (x86, chosen at run time): a chunk of queries is packed once
// per search as dim x width floats (one lane per query, unused lanes zero);
// stored rows are read in place. A tile of stored rows x one chunk is kept in
// registers: each step of the dimension loop broadcasts one value per row and
// multiplies it with the chunk's lanes. Every score is therefore one FMA
// chain over the dimensions in order, whatever the tile shape, chunk or
// block it falls in, so results do not depend on how the work is split.
// The scan then compares a row's scores for the whole chunk with the
// chunk's thresholds in one vector comparison and only touches heaps for
// lanes that pass.

// Queries of one search, packed for the SIMD kernels.
struct PackedQueries {
  std::size_t width = 0;  // lanes (queries) per chunk
  std::size_t chunks = 0;
  std::vector<float> values;  // chunks x dim x width
  std::vector<float> norms;   // chunks x width squared norms (0 in unused lanes)
};

PackedQueries pack_queries(const SearchInput& in, std::size_t width) {
  PackedQueries p;
  p.width = width;
  p.chunks = div_up(in.nq, width);
  p.values.assign(p.chunks * in.dim * width, 0.0F);
  p.norms.assign(p.chunks * width, 0.0F);
  for (std::size_t q = 0; q < in.nq; ++q) {
    const std::size_t chunk = q / width;
    const std::size_t lane = q % width;
    float* dst = p.values.data() + chunk * in.dim * width + lane;
    const float* src = in.queries + q * in.dim;
    for (std::size_t c = 0; c < in.dim; ++c) dst[c * width] = src[c];
    p.norms[q] = in.query_norms[q];
  }
  return p;
}

// Rows per block for the SIMD kernels: about 256 KiB of stored vectors, so a
// block stays in L2 while every query chunk is scored against it.
std::size_t simd_block_rows(std::size_t dim) {
  return std::clamp<std::size_t>(65536 / dim, 64, 1024);
}

// scores (count x width) of `count` stored rows against one packed chunk.
// `packed` is the chunk as packed above, `queries` the same queries row-major
// (kernels read whichever layout suits them).
using ScoreFn = void (*)(const float* rows, std::size_t count, std::size_t dim, const float* packed,
                         const float* queries, float* scores);
// Offers the scores of `count` rows against one chunk to the chunk's heaps.
template <Metric kMetric>
using ScanFn = void (*)(const float* scores, std::size_t count, const float* query_norms,
                        const float* norms, const ItemId* ids, const IdFilter* filter,
                        TopK<kMetric>* heaps, float* thresholds);

#if FUNNEL_EXACT_X86

// Offers the lanes of `mask` (bit i: lane i passed its threshold) to their heaps.
template <Metric kMetric>
inline void offer_lanes(unsigned mask, const float* distances, ItemId id, const Allows& allows,
                        TopK<kMetric>* heaps) {
  while (mask != 0) {
    const int lane = std::countr_zero(mask);
    mask &= mask - 1;
    heaps[lane].offer(distances[lane], id, allows);
  }
}

// Few queries (up to kDotQueries) would leave most lanes of a tile unused;
// these kernels instead vectorise along the dimension, one dot product per
// (row, query), reduced across lanes in a fixed order, and write lane i of
// each row's scores (the rest of the row is never read: those lanes reject).
constexpr std::size_t kDotQueries = 4;

// Sum of the 16 lanes in a fixed order. (The zero-masked forms avoid the
// "undefined" pass-through operands of the plain intrinsics, which GCC 12
// reports as -Wmaybe-uninitialized inside its own headers.)
[[gnu::target("avx512f")]] inline float reduce_avx512(__m512 v) {
  constexpr __mmask16 kAll = 0xFFFF;
  v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(kAll, v, v, 0x4E));  // + other 256-bit half
  v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(kAll, v, v, 0xB1));  // + neighbouring 128 bits
  __m128 x = _mm512_maskz_extractf32x4_ps(0xF, v, 0);
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1)));
}

template <std::size_t kRows, std::size_t kQueries>
[[gnu::target("avx512f")]] inline void dot_tile_avx512(const float* rows, std::size_t dim,
                                                       const float* queries, float* scores) {
  __m512 acc[kRows][kQueries];
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t i = 0; i < kQueries; ++i) acc[r][i] = _mm512_setzero_ps();
  }
  std::size_t c = 0;
  for (; c + 16 <= dim; c += 16) {
    __m512 q[kQueries];
    for (std::size_t i = 0; i < kQueries; ++i) q[i] = _mm512_loadu_ps(queries + i * dim + c);
    for (std::size_t r = 0; r < kRows; ++r) {
      const __m512 x = _mm512_loadu_ps(rows + r * dim + c);
      for (std::size_t i = 0; i < kQueries; ++i) acc[r][i] = _mm512_fmadd_ps(x, q[i], acc[r][i]);
    }
  }
  if (c < dim) {
    const auto tail = static_cast<__mmask16>((1U << (dim - c)) - 1U);
    __m512 q[kQueries];
    for (std::size_t i = 0; i < kQueries; ++i)
      q[i] = _mm512_maskz_loadu_ps(tail, queries + i * dim + c);
    for (std::size_t r = 0; r < kRows; ++r) {
      const __m512 x = _mm512_maskz_loadu_ps(tail, rows + r * dim + c);
      for (std::size_t i = 0; i < kQueries; ++i) acc[r][i] = _mm512_fmadd_ps(x, q[i], acc[r][i]);
    }
  }
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t i = 0; i < kQueries; ++i) scores[r * 16 + i] = reduce_avx512(acc[r][i]);
  }
}

template <std::size_t kQueries>
[[gnu::target("avx512f")]] void dot_avx512(const float* rows, std::size_t count, std::size_t dim,
                                           const float* /*packed*/, const float* queries,
                                           float* scores) {
  constexpr std::size_t kTile = 4;
  std::size_t r = 0;
  for (; r + kTile <= count; r += kTile) {
    dot_tile_avx512<kTile, kQueries>(rows + r * dim, dim, queries, scores + r * 16);
  }
  for (; r < count; ++r)
    dot_tile_avx512<1, kQueries>(rows + r * dim, dim, queries, scores + r * 16);
}

template <std::size_t kRows, std::size_t kVecs>
[[gnu::target("avx512f")]] inline void tile_avx512(const float* rows, std::size_t dim,
                                                   const float* packed, float* scores) {
  constexpr std::size_t kWidth = 16 * kVecs;
  __m512 acc[kRows][kVecs];
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t v = 0; v < kVecs; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (std::size_t c = 0; c < dim; ++c) {
    __m512 lanes[kVecs];
    for (std::size_t v = 0; v < kVecs; ++v)
      lanes[v] = _mm512_loadu_ps(packed + c * kWidth + 16 * v);
    for (std::size_t r = 0; r < kRows; ++r) {
      const __m512 x = _mm512_set1_ps(rows[r * dim + c]);
      for (std::size_t v = 0; v < kVecs; ++v) acc[r][v] = _mm512_fmadd_ps(x, lanes[v], acc[r][v]);
    }
  }
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t v = 0; v < kVecs; ++v)
      _mm512_storeu_ps(scores + r * kWidth + 16 * v, acc[r][v]);
  }
}

template <std::size_t kVecs>
[[gnu::target("avx512f")]] void score_avx512(const float* rows, std::size_t count, std::size_t dim,
                                             const float* packed, const float* /*queries*/,
                                             float* scores) {
  constexpr std::size_t kWidth = 16 * kVecs;
  constexpr std::size_t kTile = kVecs == 1 ? 14 : 12;  // accumulators + operands fit 32 registers
  std::size_t r = 0;
  for (; r + kTile <= count; r += kTile) {
    tile_avx512<kTile, kVecs>(rows + r * dim, dim, packed, scores + r * kWidth);
  }
  for (; r + 4 <= count; r += 4) {
    tile_avx512<4, kVecs>(rows + r * dim, dim, packed, scores + r * kWidth);
  }
  for (; r < count; ++r) tile_avx512<1, kVecs>(rows + r * dim, dim, packed, scores + r * kWidth);
}

template <Metric kMetric, std::size_t kVecs>
[[gnu::target("avx512f")]] void scan_avx512(const float* scores, std::size_t count,
                                            const float* query_norms, const float* norms,
                                            const ItemId* ids, const IdFilter* filter,
                                            TopK<kMetric>* heaps, float* thresholds) {
  constexpr std::size_t kWidth = 16 * kVecs;
  constexpr int kPasses = higher_is_better(kMetric) ? _CMP_GE_OQ : _CMP_LE_OQ;
  const Allows allows{filter};
  alignas(64) float distances[16];
  for (std::size_t j = 0; j < count; ++j) {
    for (std::size_t v = 0; v < kVecs; ++v) {
      __m512 d = _mm512_loadu_ps(scores + j * kWidth + 16 * v);
      if constexpr (kMetric == Metric::l2) {
        // |q|^2 + |x|^2 - 2 q.x, clamped at 0 against rounding.
        d = _mm512_sub_ps(
            _mm512_add_ps(_mm512_loadu_ps(query_norms + 16 * v), _mm512_set1_ps(norms[j])),
            _mm512_add_ps(d, d));
        d = _mm512_maskz_max_ps(0xFFFF, d, _mm512_setzero_ps());
      }
      const __mmask16 pass = _mm512_cmp_ps_mask(d, _mm512_loadu_ps(thresholds + 16 * v), kPasses);
      if (pass == 0) continue;
      _mm512_store_ps(distances, d);
      offer_lanes<kMetric>(pass, distances, ids[j], allows, heaps + 16 * v);
    }
  }
}

// Sum of the 8 lanes in a fixed order.
[[gnu::target("avx2,fma")]] inline float reduce_avx2(__m256 v) {
  const __m128 halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)));
}

template <std::size_t kRows, std::size_t kQueries>
[[gnu::target("avx2,fma")]] inline void dot_tile_avx2(const float* rows, std::size_t dim,
                                                      const float* queries, float* scores) {
  __m256 acc[kRows][kQueries];
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t i = 0; i < kQueries; ++i) acc[r][i] = _mm256_setzero_ps();
  }
  std::size_t c = 0;
  for (; c + 8 <= dim; c += 8) {
    __m256 q[kQueries];
    for (std::size_t i = 0; i < kQueries; ++i) q[i] = _mm256_loadu_ps(queries + i * dim + c);
    for (std::size_t r = 0; r < kRows; ++r) {
      const __m256 x = _mm256_loadu_ps(rows + r * dim + c);
      for (std::size_t i = 0; i < kQueries; ++i) acc[r][i] = _mm256_fmadd_ps(x, q[i], acc[r][i]);
    }
  }
  float sums[kRows][kQueries];
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t i = 0; i < kQueries; ++i) sums[r][i] = reduce_avx2(acc[r][i]);
  }
  // The last dim % 8 values, in order, after the vector part.
  for (; c < dim; ++c) {
    for (std::size_t r = 0; r < kRows; ++r) {
      for (std::size_t i = 0; i < kQueries; ++i)
        sums[r][i] += rows[r * dim + c] * queries[i * dim + c];
    }
  }
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t i = 0; i < kQueries; ++i) scores[r * 8 + i] = sums[r][i];
  }
}

template <std::size_t kQueries>
[[gnu::target("avx2,fma")]] void dot_avx2(const float* rows, std::size_t count, std::size_t dim,
                                          const float* /*packed*/, const float* queries,
                                          float* scores) {
  constexpr std::size_t kTile = 3;
  std::size_t r = 0;
  for (; r + kTile <= count; r += kTile) {
    dot_tile_avx2<kTile, kQueries>(rows + r * dim, dim, queries, scores + r * 8);
  }
  for (; r < count; ++r) dot_tile_avx2<1, kQueries>(rows + r * dim, dim, queries, scores + r * 8);
}

template <std::size_t kRows, std::size_t kVecs>
[[gnu::target("avx2,fma")]] inline void tile_avx2(const float* rows, std::size_t dim,
                                                  const float* packed, float* scores) {
  constexpr std::size_t kWidth = 8 * kVecs;
  __m256 acc[kRows][kVecs];
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t v = 0; v < kVecs; ++v) acc[r][v] = _mm256_setzero_ps();
  }
  for (std::size_t c = 0; c < dim; ++c) {
    __m256 lanes[kVecs];
    for (std::size_t v = 0; v < kVecs; ++v) lanes[v] = _mm256_loadu_ps(packed + c * kWidth + 8 * v);
    for (std::size_t r = 0; r < kRows; ++r) {
      const __m256 x = _mm256_broadcast_ss(rows + r * dim + c);
      for (std::size_t v = 0; v < kVecs; ++v) acc[r][v] = _mm256_fmadd_ps(x, lanes[v], acc[r][v]);
    }
  }
  for (std::size_t r = 0; r < kRows; ++r) {
    for (std::size_t v = 0; v < kVecs; ++v)
      _mm256_storeu_ps(scores + r * kWidth + 8 * v, acc[r][v]);
  }
}

template <std::size_t kVecs>
[[gnu::target("avx2,fma")]] void score_avx2(const float* rows, std::size_t count, std::size_t dim,
                                            const float* packed, const float* /*queries*/,
                                            float* scores) {
  constexpr std::size_t kWidth = 8 * kVecs;
  constexpr std::size_t kTile = kVecs == 1 ? 12 : 6;  // accumulators + operands fit 16 registers
  std::size_t r = 0;
  for (; r + kTile <= count; r += kTile) {
    tile_avx2<kTile, kVecs>(rows + r * dim, dim, packed, scores + r * kWidth);
  }
  for (; r + 3 <= count; r += 3) {
    tile_avx2<3, kVecs>(rows + r * dim, dim, packed, scores + r * kWidth);
  }
  for (; r < count; ++r) tile_avx2<1, kVecs>(rows + r * dim, dim, packed, scores + r * kWidth);
}

template <Metric kMetric, std::size_t kVecs>
[[gnu::target("avx2,fma")]] void scan_avx2(const float* scores, std::size_t count,
                                           const float* query_norms, const float* norms,
                                           const ItemId* ids, const IdFilter* filter,
                                           TopK<kMetric>* heaps, float* thresholds) {
  constexpr std::size_t kWidth = 8 * kVecs;
  constexpr int kPasses = higher_is_better(kMetric) ? _CMP_GE_OQ : _CMP_LE_OQ;
  const Allows allows{filter};
  alignas(32) float distances[8];
  for (std::size_t j = 0; j < count; ++j) {
    for (std::size_t v = 0; v < kVecs; ++v) {
      __m256 d = _mm256_loadu_ps(scores + j * kWidth + 8 * v);
      if constexpr (kMetric == Metric::l2) {
        d = _mm256_sub_ps(
            _mm256_add_ps(_mm256_loadu_ps(query_norms + 8 * v), _mm256_set1_ps(norms[j])),
            _mm256_add_ps(d, d));
        d = _mm256_max_ps(d, _mm256_setzero_ps());
      }
      const auto pass = static_cast<unsigned>(
          _mm256_movemask_ps(_mm256_cmp_ps(d, _mm256_loadu_ps(thresholds + 8 * v), kPasses)));
      if (pass == 0) continue;
      _mm256_store_ps(distances, d);
      offer_lanes<kMetric>(pass, distances, ids[j], allows, heaps + 8 * v);
    }
  }
}

#endif  // FUNNEL_EXACT_X86

// The kernel functions and chunk width for one search.
template <Metric kMetric>
struct SimdKernel {
  std::size_t width = 0;
  ScoreFn score = nullptr;
  ScanFn<kMetric> scan = nullptr;
};

// Narrow chunks for small batches, so that few lanes go unused.
template <Metric kMetric>
SimdKernel<kMetric> simd_kernel(ExactKernel kernel, std::size_t nq) {
#if FUNNEL_EXACT_X86
  if (kernel == ExactKernel::avx512) {
    constexpr ScoreFn kDot[kDotQueries] = {&dot_avx512<1>, &dot_avx512<2>, &dot_avx512<3>,
                                           &dot_avx512<4>};
    if (nq <= kDotQueries) return {16, kDot[nq - 1], &scan_avx512<kMetric, 1>};
    if (nq <= 16) return {16, &score_avx512<1>, &scan_avx512<kMetric, 1>};
    return {32, &score_avx512<2>, &scan_avx512<kMetric, 2>};
  }
  if (kernel == ExactKernel::avx2) {
    constexpr ScoreFn kDot[kDotQueries] = {&dot_avx2<1>, &dot_avx2<2>, &dot_avx2<3>, &dot_avx2<4>};
    if (nq <= kDotQueries) return {8, kDot[nq - 1], &scan_avx2<kMetric, 1>};
    if (nq <= 8) return {8, &score_avx2<1>, &scan_avx2<kMetric, 1>};
    return {16, &score_avx2<2>, &scan_avx2<kMetric, 2>};
  }
#else
  (void)nq;
#endif
  assert(kernel == ExactKernel::portable);
  (void)kernel;
  return {};
}

// The SIMD counterpart of scan_range_portable (same loop structure).
template <Metric kMetric>
void scan_range_simd(const SearchInput& in, const PackedQueries& packed,
                     const SimdKernel<kMetric>& kernel, std::size_t chunk_begin,
                     std::size_t chunk_end, std::size_t block_begin, std::size_t block_end,
                     HeapSet<kMetric>& heaps) {
  const std::size_t width = packed.width;
  const std::size_t block_rows = simd_block_rows(in.dim);
  std::vector<float> scores(std::min(block_rows, in.count) * width);
  for (std::size_t block = block_begin; block < block_end; ++block) {
    const std::size_t row0 = block * block_rows;
    const std::size_t rows = std::min(block_rows, in.count - row0);
    for (std::size_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      kernel.score(in.vectors + row0 * in.dim, rows, in.dim,
                   packed.values.data() + chunk * in.dim * width,
                   in.queries + chunk * width * in.dim, scores.data());
      kernel.scan(scores.data(), rows, packed.norms.data() + chunk * width, in.norms + row0,
                  in.ids + row0, in.filter, heaps.heaps(chunk * width),
                  heaps.thresholds(chunk * width));
    }
  }
}

// ---------------------------------------------------------------------------
// Work splitting

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
std::size_t search_impl(const SearchInput& in, ExactKernel kernel, std::size_t threads,
                        MatrixView<float> distances, MatrixView<ItemId> labels) {
  const std::size_t k = in.k;
  const bool simd = kernel != ExactKernel::portable;
  const SimdKernel<kMetric> simd_fns =
      simd ? simd_kernel<kMetric>(kernel, in.nq) : SimdKernel<kMetric>{};
  const std::size_t chunk_size = simd ? simd_fns.width : kQueryChunk;
  const std::size_t block_size = simd ? simd_block_rows(in.dim) : kRowBlock;
  const std::size_t chunks = div_up(in.nq, chunk_size);
  const std::size_t blocks = div_up(in.count, block_size);
  const std::size_t padded_nq = chunks * chunk_size;
  PackedQueries packed;
  if (simd && in.count > 0) packed = pack_queries(in, chunk_size);

  const auto scan = [&](std::size_t c0, std::size_t c1, std::size_t b0, std::size_t b1,
                        HeapSet<kMetric>& heaps) {
    if (simd) {
      scan_range_simd<kMetric>(in, packed, simd_fns, c0, c1, b0, b1, heaps);
    } else {
      scan_range_portable<kMetric>(in, c0, c1, b0, b1, heaps);
    }
  };

  HeapSet<kMetric> heaps(in.nq, k, padded_nq);
  if (in.count > 0) {
    if (threads <= 1 || (chunks == 1 && blocks == 1)) {
      scan(0, chunks, 0, blocks, heaps);
    } else if (chunks >= threads) {
      // Enough queries: each worker owns whole query chunks and their heaps.
      run_workers(threads, [&](std::size_t w) {
        const auto [c0, c1] = share(chunks, threads, w);
        scan(c0, c1, 0, blocks, heaps);
      });
    } else {
      // Few queries: each worker scans a share of the row blocks for all
      // queries into private heaps, merged afterwards. The merge applies the
      // same total order, so the result equals a serial scan.
      const std::size_t workers = std::min(threads, blocks);
      std::vector<HeapSet<kMetric>> partial;
      partial.reserve(workers);
      for (std::size_t w = 0; w < workers; ++w) partial.emplace_back(in.nq, k, padded_nq);
      run_workers(workers, [&](std::size_t w) {
        const auto [b0, b1] = share(blocks, workers, w);
        scan(0, chunks, b0, b1, partial[w]);
      });
      const Allows everything{nullptr};
      for (std::size_t q = 0; q < in.nq; ++q) {
        for (HeapSet<kMetric>& part : partial) {
          for (const Candidate& c : part[q]) heaps[q].offer(c.distance, c.id, everything);
        }
      }
    }
  }

  std::size_t fewest = k;
  const float pad = padding_distance(kMetric);
  for (std::size_t q = 0; q < in.nq; ++q) {
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
  return in.nq == 0 ? 0 : fewest;
}

bool cpu_supports(ExactKernel kernel) {
  switch (kernel) {
    case ExactKernel::automatic:
    case ExactKernel::portable: return true;
#if FUNNEL_EXACT_X86
    case ExactKernel::avx2:
      return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0;
    case ExactKernel::avx512: return __builtin_cpu_supports("avx512f") != 0;
#else
    case ExactKernel::avx2:
    case ExactKernel::avx512: return false;
#endif
  }
  return false;
}

ExactKernel resolve(ExactKernel kernel) {
  if (kernel != ExactKernel::automatic) return kernel;
  if (cpu_supports(ExactKernel::avx512)) return ExactKernel::avx512;
  if (cpu_supports(ExactKernel::avx2)) return ExactKernel::avx2;
  return ExactKernel::portable;
}

// ---------------------------------------------------------------------------
// Validation and files

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

using detail::BytesReader;
using detail::ChecksumFileWriter;
using detail::FileCloser;
using detail::fourcc_of;
using detail::sidecar_path;
using detail::string_field;
using detail::unsigned_field;

}  // namespace

void ExactCoarseRankerConfig::validate() const {
  detail::require(dim > 0, "ExactCoarseRankerConfig.dim must be > 0");
  detail::require(dim <= kMaxDim, "ExactCoarseRankerConfig.dim is ", dim, ", at most ", kMaxDim,
                  " is supported");
  detail::require(metric == Metric::inner_product || metric == Metric::l2,
                  "ExactCoarseRankerConfig.metric has an unknown value ", static_cast<int>(metric));
  detail::require(threads >= 1 && threads <= kMaxThreads, "ExactCoarseRankerConfig.threads is ",
                  threads, ", expected 1..", kMaxThreads);
  const bool known_kernel = kernel == ExactKernel::automatic || kernel == ExactKernel::portable ||
                            kernel == ExactKernel::avx2 || kernel == ExactKernel::avx512;
  detail::require(known_kernel, "ExactCoarseRankerConfig.kernel has an unknown value ",
                  static_cast<int>(kernel));
  if (!cpu_supports(kernel)) {
    detail::fail(ErrorCode::unsupported, "ExactCoarseRankerConfig.kernel is ", to_string(kernel),
                 ", which this CPU (or build) does not support");
  }
}

std::string_view to_string(ExactKernel kernel) noexcept {
  switch (kernel) {
    case ExactKernel::automatic: return "automatic";
    case ExactKernel::portable: return "portable";
    case ExactKernel::avx2: return "avx2";
    case ExactKernel::avx512: return "avx512";
  }
  return "unknown";
}

ExactCoarseRanker::ExactCoarseRanker(ExactCoarseRankerConfig config)
    : config_(config), kernel_(ExactKernel::portable) {
  config_.validate();
  kernel_ = resolve(config_.kernel);
}

bool ExactCoarseRanker::kernel_supported(ExactKernel kernel) { return cpu_supports(kernel); }

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
    return search_impl<Metric::l2>(in, kernel_, threads, distances, labels);
  }
  return search_impl<Metric::inner_product>(in, kernel_, threads, distances, labels);
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
