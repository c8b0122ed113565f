// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// IvfCoarseRanker: an inverted-file index (FAISS IVF structures) whose
/// inverted lists are scanned by funnel's own kernels.
///
/// Structure: a coarse quantizer of `nlist` centroids (k-means on a training
/// sample) assigns every vector to its nearest centroid's list; a search
/// scores each query against all centroids, picks the `nprobe` best lists
/// (ties: the smaller list number) and scans only the vectors stored in
/// them. The lists hold one of these codes, named by a FAISS-style
/// description:
///   - "IVF<nlist>,Flat"      the vectors themselves (fp32, 4*dim bytes each);
///   - "IVF<nlist>,SQ8"       8 bits per component of the residual to the
///                            list's centroid, with a per-dimension range
///                            learnt from the sample's residuals (FAISS
///                            QT_8bit: component j decodes to
///                            vmin_j + (code_j + 0.5) / 255 * vdiff_j);
///   - "IVF<nlist>,SQfp16"    the residual in IEEE half precision;
///   - "IVF<nlist>,PQ<m>[x<bits>]" product quantization of the residual to
///                            the list's centroid, m sub-quantizers of `bits`
///                            (1..16, default 8) bits; dim must be a multiple
///                            of m.
/// (SQ and PQ encode residuals as FAISS does with by_residual = true.) The
/// distances of SQ and PQ codes are those of the decoded vectors, as in
/// FAISS, so they differ from exact distances by the quantization error.
///
/// Training: FAISS's k-means (faiss::Clustering; niter, seed and subset
/// from the config; spherical, i.e. unit-norm centroids, for inner product,
/// whose lists are chosen by the largest q.c), then FAISS's SQ range or PQ
/// codebook training on the residuals. The heavy step of k-means (assigning
/// each training vector to a centroid) runs on config.threads std::threads
/// with funnel's GEMM; FAISS's own light OpenMP loops run on the calling
/// thread only (its OpenMP thread count, a per-thread setting, is set to 1
/// for the call and restored: nothing process-wide changes). For a given
/// seed, training gives the same centroids for every thread count.
///
/// Coarse step: queries are scored against the centroids with oneDNN's
/// GEMM in blocks whose shape depends only on nlist, so a query's probed
/// lists never depend on the batch split or the thread count.
///
/// Scan kernels: chosen at run time (IvfKernel): AVX-512 (fp32 rows, uint8
/// and fp16 codes), AVX2+FMA, or portable C++; all agree within float
/// rounding (relative 1e-5 of the distance's magnitude). Per query, each
/// probed list is scored into a buffer by the kernel of its code type and
/// offered to a top-k heap: Flat L2 is the kernel's sum of squared
/// differences (as FAISS's IndexIVFFlat; no stored norms needed), inner
/// products of SQ/PQ codes add the coarse score q.c to q.r, L2 SQ/PQ codes
/// are compared with the query's residual q - c. PQ lists are scanned with
/// look-up tables: one per query for inner product, one per (query, list)
/// for L2. With many queries per call (params.batch) Flat lists are
/// scanned grouped: the queries that probe a list are scored against its
/// rows with one GEMM (oneDNN) per tile, so a list is read from memory once
/// per call instead of once per query (L2 there is |q|^2 + |x|^2 - 2 q.x
/// with stored row norms, clamped at 0). SQ and PQ lists are always
/// scanned per query (grouped falls back to it).
///
/// Filters: consulted during the scan, only for items that would enter a
/// query's heap, so a rejected item never displaces an eligible one and
/// nothing is over-fetched. Ties are ordered by ascending id. A filter
/// must not call back into the same index (search() holds its lock, and a
/// second shared hold waits behind a waiting writer).
///
/// Result equivalence: for the same index (same centroids and lists) and
/// the same nprobe, the ids returned equal those of FAISS's own
/// IndexIVF::search, except where two candidates' distances tie within
/// float rounding (identical SQ/PQ codes tie exactly); distances agree
/// within 1e-4 relative.
///
/// Ids: the host's 64-bit ids are stored in the inverted lists themselves
/// (as FAISS does), with an open-addressing hash map id -> (list, offset)
/// for duplicate checks and O(1) remove.
///
/// Files: save() writes a FAISS index (IndexIVFFlat, IndexIVFScalarQuantizer
/// or IndexIVFPQ over an IndexFlatIP/IndexFlatL2 quantizer, with in-memory
/// lists and no direct map; readable with faiss.read_index and searchable
/// by FAISS with the same results) at `path` and a JSON sidecar at
/// `path` + ".json":
///   {"format": "funnel.ivf_coarse_ranker", "version": 1,
///    "description": "IVF1024,Flat", "metric": "inner_product" | "l2",
///    "dim": D, "nlist": L, "count": N, "default_nprobe": P,
///    "index_bytes": B, "checksum": "mix64:<16 hex>",
///    "ids_checksum": "mix64:<16 hex>"}
/// (ids_checksum covers the ids list by list, in list order; default_nprobe
/// is optional on load.) Both are written to temporary names and renamed
/// (index first). load() checks the sidecar, the file size and checksum
/// before FAISS parses the file, then the index type, dimension, metric,
/// list count, code parameters, item count and ids against the sidecar: a
/// truncated, corrupt or mismatched file is Error(format), never a crash.
///
/// Threading: every method may be called from any number of threads at
/// once, add() and remove() included. The index holds a writer-preferring
/// reader-writer lock (std::mutex + std::condition_variable): search(),
/// size(), list_sizes(), memory_bytes() and save() hold it shared for their
/// whole call; add() validates, assigns and encodes its vectors before
/// taking the lock and holds it exclusively only to re-check ids and
/// append; remove() holds it exclusively. A search therefore sees each
/// add() or remove() entirely or not at all. With config.threads > 1 one
/// search() call spreads its work over at most that many threads, the
/// caller included (queries; the probed lists of each query when there are
/// fewer queries than threads; lists, with per-thread heaps, in the grouped
/// path); the results do not depend on the thread count. The helper threads
/// of search() belong to one process-wide pool that keeps them between
/// calls (started on first need, as many as the largest config.threads - 1
/// seen), so a short search never pays for starting a thread; the caller
/// runs every part no pool thread has begun. train() and add() start their
/// own threads per call.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "funnel/coarse_ranker.hpp"

namespace funnel {

/// Which code scans the inverted lists of an IvfCoarseRanker.
enum class IvfKernel {
  automatic,  ///< the fastest one this CPU supports (avx512, avx2, portable)
  portable,   ///< plain C++ (whatever the compiler's baseline vectorises)
  avx2,       ///< AVX2 + FMA + F16C (x86)
  avx512,     ///< AVX-512F/BW (x86)
};

/// "automatic", "portable", "avx2" or "avx512".
std::string_view to_string(IvfKernel kernel) noexcept;

/// How search() organises the work for many queries.
enum class IvfBatchMode {
  automatic,  ///< grouped when the call has at least 32 queries, else per_query
  per_query,  ///< each query scans its own lists
  /// queries grouped by list, each list scored with one GEMM (Flat lists;
  /// SQ and PQ lists are scanned per query)
  grouped,
};

/// Settings of an IvfCoarseRanker.
struct IvfCoarseRankerConfig {
  /// Dimension of the vectors (1..kMaxDim).
  std::size_t dim = 0;
  /// How vectors are compared.
  Metric metric = Metric::inner_product;
  /// FAISS-style description of lists and codes (see the file comment).
  std::string description = "IVF1024,Flat";
  /// Training vectors taken from the sample given to train() (a seeded
  /// uniform subset when the sample is larger; 0: 256 per list, or per PQ
  /// sub-quantizer centroid when that is more: FAISS's default cap).
  /// Smaller than the minimum below is an error naming both numbers.
  std::size_t train_size = 0;
  /// The training sample must hold at least this many vectors per list
  /// (and, for PQ, per centroid of a sub-quantizer; for SQ8 with
  /// with_centroids(), this many in all); fewer is an error (1..2^20).
  std::size_t min_train_per_list = 39;
  /// k-means iterations for the coarse centroids and the PQ codebooks
  /// (1..10000).
  std::size_t kmeans_iterations = 20;
  /// Seed of the training subset and of k-means' initialisation.
  std::uint64_t seed = 1234;
  /// Lists probed when the search params do not say (1..nlist).
  std::size_t default_nprobe = 16;
  /// Threads used inside one search(), train(), with_centroids() or add()
  /// call (1: the calling thread only; at most kMaxThreads).
  int threads = 1;
  /// Scan kernel; a specific one the CPU lacks is refused by validate().
  IvfKernel kernel = IvfKernel::automatic;

  /// Upper bound of `dim`.
  static constexpr std::size_t kMaxDim = std::size_t{1} << 16;
  /// Upper bound of `threads`.
  static constexpr int kMaxThreads = 256;

  /// @throws Error(invalid_argument) naming the bad field (including a
  ///         description that does not parse, or PQ with dim % m != 0);
  ///         Error(unsupported) for a kernel this CPU or build lacks.
  void validate() const;
};

/// Per-call settings of IvfCoarseRanker::search(). The filter (from
/// SearchParams) is applied inside the scan.
struct IvfSearchParams : SearchParams {
  /// Lists probed per query; 0 means config.default_nprobe. Larger than
  /// nlist is clamped to nlist.
  std::size_t nprobe = 0;
  /// How many queries are organised (results are the same either way,
  /// within float rounding).
  IvfBatchMode batch = IvfBatchMode::automatic;
};

/// Inverted-file index with funnel's scan kernels.
class IvfCoarseRanker final : public CoarseRanker {
 public:
  /// Trains the coarse centroids (and the SQ ranges or PQ codebooks) on
  /// `sample` and returns an empty index.
  /// @param[in] config validated settings
  /// @param[in] sample n x config.dim finite training vectors
  /// @throws Error(invalid_argument) for a bad config, a wrong dimension,
  ///         NaN/inf values, or a sample (or train_size) smaller than
  ///         min_train_per_list * nlist, or for PQ min_train_per_list *
  ///         2^bits (the message names both numbers).
  static std::unique_ptr<IvfCoarseRanker> train(const IvfCoarseRankerConfig& config,
                                                MatrixView<const float> sample);

  /// An empty index over given coarse centroids (for instance those of
  /// another index); SQ ranges or PQ codebooks are still trained on
  /// `sample`, which may be empty for Flat and SQfp16.
  /// @param[in] centroids nlist x config.dim, nlist as in the description
  /// @throws Error(invalid_argument) as train(), or for a centroid matrix of
  ///         the wrong shape.
  static std::unique_ptr<IvfCoarseRanker> with_centroids(const IvfCoarseRankerConfig& config,
                                                         MatrixView<const float> centroids,
                                                         MatrixView<const float> sample = {});

  /// Loads an index written by save() (see the file comment).
  /// @param[in] path    the index file; the sidecar is `path` + ".json"
  /// @param[in] threads threads used inside one search() call
  /// @param[in] kernel  scan kernel
  /// The loaded config() holds the description (canonical form), metric,
  /// dim and default_nprobe of the sidecar, `threads` and `kernel`, and
  /// the defaults of the training fields.
  /// @throws Error(io) for a missing or unreadable file; Error(format) for a
  ///         corrupt, truncated or inconsistent one; Error(invalid_argument)
  ///         or Error(unsupported) as IvfCoarseRankerConfig::validate().
  static std::unique_ptr<IvfCoarseRanker> load(const std::filesystem::path& path, int threads = 1,
                                               IvfKernel kernel = IvfKernel::automatic);

  ~IvfCoarseRanker() override;
  IvfCoarseRanker(const IvfCoarseRanker&) = delete;
  IvfCoarseRanker& operator=(const IvfCoarseRanker&) = delete;
  IvfCoarseRanker(IvfCoarseRanker&&) = delete;
  IvfCoarseRanker& operator=(IvfCoarseRanker&&) = delete;

  [[nodiscard]] std::size_t dim() const override;
  [[nodiscard]] Metric metric() const override;
  [[nodiscard]] std::size_t size() const override;
  /// e.g. "ivf(IVF1024,Flat, ip, dim=128)".
  [[nodiscard]] std::string name() const override;
  /// The configuration (description, threads, kernel as given).
  [[nodiscard]] const IvfCoarseRankerConfig& config() const noexcept;
  /// Number of inverted lists.
  [[nodiscard]] std::size_t nlist() const noexcept;
  /// The kernel search() uses (config().kernel resolved for this CPU).
  [[nodiscard]] IvfKernel kernel() const noexcept;
  /// Whether this CPU and build can run `kernel`.
  static bool kernel_supported(IvfKernel kernel);

  /// The coarse centroids, nlist x dim.
  [[nodiscard]] Matrix<float> centroids() const;
  /// Number of items in each list (for checking the balance of the lists).
  [[nodiscard]] std::vector<std::size_t> list_sizes() const;
  /// Bytes held by codes, ids, centroids, codebooks and the id map.
  [[nodiscard]] std::size_t memory_bytes() const;

  /// Adds vectors with the host's ids (see CoarseRanker::add); besides
  /// finite values, each vector's squared norm must be finite in float.
  /// All-or-nothing. May run while other threads search.
  void add(MatrixView<const float> vectors, std::span<const ItemId> ids) override;

  /// Removes items by id (see CoarseRanker::remove). The last entry of the
  /// list moves into the freed slot. An id listed twice is removed once and
  /// then reported as unknown. May run while other threads search.
  RemoveReport remove(std::span<const ItemId> ids) override;

  /// The k best items per query among the probed lists (see
  /// CoarseRanker::search). `params` may be null, an IvfSearchParams, or
  /// any other SearchParams (its filter is used, with default_nprobe).
  /// Items rejected by the filter are skipped during the scan. Ties are
  /// ordered by ascending id. With no queries it writes nothing and
  /// returns 0. An exception from the filter propagates (the output
  /// buffers then hold unspecified values).
  std::size_t search(MatrixView<const float> queries, std::size_t k, MatrixView<float> distances,
                     MatrixView<ItemId> labels,
                     const SearchParams* params = nullptr) const override;

  /// Writes the FAISS index and its sidecar (see the file comment).
  /// @throws Error(io) when a file cannot be written or renamed; the files
  ///         already at `path` are left as they were then.
  void save(const std::filesystem::path& path) const override;

  struct State;  ///< implementation detail (defined in the .cpp)

 private:
  explicit IvfCoarseRanker(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace funnel
