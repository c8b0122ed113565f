// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// IvfCoarseRanker: an inverted-file index (FAISS IVF structures) whose
/// inverted lists are scanned by funnel's own kernels.
///
/// Structure: a coarse quantizer of `nlist` centroids (k-means on a training
/// sample) assigns every vector to its nearest centroid's list; a search
/// scores each query against all centroids, picks the `nprobe` best lists and
/// scans only the vectors stored in them. The lists hold one of three codes,
/// named by a FAISS-style description:
///   - "IVF<nlist>,Flat"      the vectors themselves (fp32, 4*dim bytes each);
///   - "IVF<nlist>,SQ8"       8 bits per component, with a per-dimension range
///                            learnt from the sample (FAISS QT_8bit: component
///                            j decodes to vmin_j + (code_j + 0.5) / 255 * vdiff_j);
///   - "IVF<nlist>,SQfp16"    IEEE half precision per component;
///   - "IVF<nlist>,PQ<m>[x<bits>]" product quantization of the residual to
///                            the list's centroid, m sub-quantizers of `bits`
///                            (default 8) bits; dim must be a multiple of m.
/// The distances of SQ and PQ codes are those of the decoded vectors, as in
/// FAISS, so they differ from exact distances by the quantization error.
///
/// Scan kernels: chosen at run time (IvfKernel): AVX-512 (fp32 rows, uint8
/// and fp16 codes), AVX2+FMA, or portable C++; all agree within float
/// rounding (relative 1e-5 of the distance's magnitude). With many queries
/// per call (params.batch) the queries are grouped by list and each list is
/// scored against all the queries that probe it with one GEMM (oneDNN), so
/// a list is read from memory once per call instead of once per query.
/// PQ lists are scanned with look-up tables per (query, list).
///
/// Result equivalence: for the same index (same centroids and lists) and
/// the same nprobe, the ids returned equal those of FAISS's own
/// IndexIVF::search, except where two candidates' distances tie within
/// float rounding; fp32 distances agree within 1e-4 relative.
///
/// Ids: the host's 64-bit ids are stored in the inverted lists themselves
/// (as FAISS does), with a hash map id -> (list, offset) for add/remove.
///
/// Files: save() writes a FAISS index (IndexIVFFlat, IndexIVFScalarQuantizer
/// or IndexIVFPQ over an IndexFlatIP/IndexFlatL2 quantizer, readable with
/// faiss.read_index and searchable by FAISS with the same results) at
/// `path` and a JSON sidecar at `path` + ".json":
///   {"format": "funnel.ivf_coarse_ranker", "version": 1,
///    "description": "IVF1024,Flat", "metric": "inner_product" | "l2",
///    "dim": D, "nlist": L, "count": N, "index_bytes": B,
///    "checksum": "mix64:<16 hex>", "ids_checksum": "mix64:<16 hex>"}
/// Both are written to temporary names and renamed (index first). load()
/// checks the sidecar, the file size and checksum before FAISS parses the
/// file, then the index type, dimension, metric, list count, item count
/// and ids against the sidecar: a truncated, corrupt or mismatched file is
/// Error(format), never a crash.
///
/// Threading: every method may be called from any number of threads at
/// once, add() and remove() included. The index holds a writer-preferring
/// reader-writer lock: search(), size() and save() hold it shared for their
/// whole call; add() assigns and encodes its vectors before taking the lock
/// and holds it exclusively only to check ids and append; remove() holds it
/// exclusively. A search therefore sees each add() or remove() entirely or
/// not at all. With config.threads > 1 one search() call spreads its work
/// over that many std::threads (queries, or the probed lists of a single
/// query); the results do not depend on the thread count.

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
  grouped,    ///< queries grouped by list, each list scored with one GEMM
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
  /// uniform subset when the sample is larger; 0: 256 per list, FAISS's
  /// default cap).
  std::size_t train_size = 0;
  /// The training sample must hold at least this many vectors per list
  /// (and, for PQ, per centroid of a sub-quantizer); fewer is an error.
  std::size_t min_train_per_list = 39;
  /// k-means iterations for the coarse centroids (and the PQ codebooks).
  std::size_t kmeans_iterations = 20;
  /// Seed of the training subset and of k-means' initialisation.
  std::uint64_t seed = 1234;
  /// Lists probed when the search params do not say (1..nlist).
  std::size_t default_nprobe = 16;
  /// Threads used inside one search(), train() or add() call (1: the
  /// calling thread only; at most kMaxThreads).
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
  ///         NaN/inf values, or a sample smaller than
  ///         min_train_per_list * nlist (the message names both numbers).
  static std::unique_ptr<IvfCoarseRanker> train(IvfCoarseRankerConfig config,
                                                MatrixView<const float> sample);

  /// An empty index over given coarse centroids (for instance those of
  /// another index); SQ ranges or PQ codebooks are still trained on
  /// `sample`, which may be empty for Flat and SQfp16.
  /// @param[in] centroids nlist x config.dim, nlist as in the description
  /// @throws Error(invalid_argument) as train(), or for a centroid matrix of
  ///         the wrong shape.
  static std::unique_ptr<IvfCoarseRanker> with_centroids(IvfCoarseRankerConfig config,
                                                         MatrixView<const float> centroids,
                                                         MatrixView<const float> sample = {});

  /// Loads an index written by save() (see the file comment).
  /// @param[in] path    the index file; the sidecar is `path` + ".json"
  /// @param[in] threads threads used inside one search() call
  /// @param[in] kernel  scan kernel
  /// @throws Error(io) for a missing or unreadable file; Error(format) for a
  ///         corrupt, truncated or inconsistent one; Error(invalid_argument)
  ///         or Error(unsupported) as IvfCoarseRankerConfig::validate().
  static std::unique_ptr<IvfCoarseRanker> load(const std::filesystem::path& path,
                                               int threads = 1,
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

  /// Adds vectors with the host's ids (see CoarseRanker::add);
  /// all-or-nothing. May run while other threads search.
  void add(MatrixView<const float> vectors, std::span<const ItemId> ids) override;

  /// Removes items by id (see CoarseRanker::remove). The last entry of the
  /// list moves into the freed slot. An id listed twice is removed once and
  /// then reported as unknown. May run while other threads search.
  RemoveReport remove(std::span<const ItemId> ids) override;

  /// The k best items per query among the probed lists (see
  /// CoarseRanker::search). `params` may be null, a SearchParams (its
  /// filter is used) or an IvfSearchParams. Items rejected by the filter
  /// are skipped during the scan. Ties are ordered by ascending id.
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
