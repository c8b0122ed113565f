// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// ExactCoarseRanker: exhaustive inner-product or L2 search (blocked GEMM
/// against all stored vectors + partial top-k). It is the ground truth that
/// approximate indexes are measured against.
///
/// Search: queries are scored against blocks of stored rows, so memory
/// stays bounded by the block size whatever the index size, and each query
/// keeps a bounded heap of its k best items. The scores come from a kernel
/// chosen at run time (ExactKernel): register-tiled AVX-512 or AVX2+FMA code
/// on x86 CPUs that have it, otherwise a single-threaded Eigen GEMM. The
/// filter of SearchParams is consulted during the scan, only for items good
/// enough to enter the heap, so a rejected item never displaces an eligible
/// one and no over-fetching happens. L2 distances are
/// |q|^2 + |x|^2 - 2 q.x, clamped at 0.
///
/// Ties: items with equal distance are ordered by ascending id, so their
/// order never depends on where rows sit in memory (which add() and remove()
/// change) or on the thread count.
///
/// Files: save() writes the vectors as a FAISS index (IndexIDMap2 over
/// IndexFlatIP/IndexFlatL2, readable with faiss.read_index) at `path` and a
/// JSON sidecar at `path` + ".json":
///   {"format": "funnel.exact_coarse_ranker", "version": 1,
///    "metric": "inner_product" | "l2", "dim": D, "count": N,
///    "index_bytes": <size of the index file>, "checksum": "mix64:<16 hex>"}
/// The index is written first, then the sidecar, each to a temporary name
/// then renamed. load() validates the sidecar, the index file's size and
/// checksum before FAISS parses it, and then the index's type, dimension,
/// metric, count and ids against the sidecar.
///
/// Threading: search() and the other const methods may run concurrently;
/// add() and remove() need external exclusion against every other call.
/// With config.threads > 1 one search() call spreads its work over that many
/// std::thread workers (queries, or blocks of stored rows when there are few
/// queries); with threads == 1 it runs entirely on the calling thread. The
/// results are identical for every thread count.

#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "funnel/coarse_ranker.hpp"

namespace funnel {

/// Which code computes the scores in ExactCoarseRanker::search(). The
/// instruction set is chosen at run time. Kernels add the products in
/// different orders, so their scores differ by float rounding and they may
/// order items whose distances tie to float precision differently; a given
/// kernel returns bit-identical results for every thread count.
enum class ExactKernel {
  automatic,  ///< the fastest one this CPU supports (avx512, avx2, portable)
  portable,   ///< Eigen GEMM built for the build's baseline instruction set
  avx2,       ///< AVX2 + FMA register-tiled kernel (x86)
  avx512,     ///< AVX-512F register-tiled kernel (x86)
};

/// "automatic", "portable", "avx2" or "avx512".
std::string_view to_string(ExactKernel kernel) noexcept;

/// Settings of an ExactCoarseRanker.
struct ExactCoarseRankerConfig {
  /// Dimension of the vectors (1..kMaxDim).
  std::size_t dim = 0;
  /// How vectors are compared.
  Metric metric = Metric::inner_product;
  /// Threads used inside one search() call (1: the calling thread only;
  /// at most kMaxThreads).
  int threads = 1;
  /// Score kernel; a specific one the CPU lacks is refused by validate().
  ExactKernel kernel = ExactKernel::automatic;

  /// Upper bound of `dim` (FAISS stores the dimension as an int).
  static constexpr std::size_t kMaxDim = std::size_t{1} << 20;
  /// Upper bound of `threads`.
  static constexpr int kMaxThreads = 256;

  /// @throws Error(invalid_argument) naming the bad field;
  ///         Error(unsupported) for a kernel this CPU or build lacks.
  void validate() const;
};

/// Exhaustive search over all stored vectors.
class ExactCoarseRanker final : public CoarseRanker {
 public:
  /// An empty index.
  /// @throws Error(invalid_argument) when config.validate() does.
  explicit ExactCoarseRanker(ExactCoarseRankerConfig config);

  /// Loads an index written by save() (or any FAISS IndexIDMap2 over an
  /// IndexFlatIP/IndexFlatL2 with a matching sidecar).
  /// @param[in] path    the index file; the sidecar is `path` + ".json"
  /// @param[in] threads threads used inside one search() call
  /// @throws Error(io) when a file is missing or unreadable; Error(format)
  ///         for a corrupt, truncated or inconsistent index or sidecar;
  ///         Error(invalid_argument) for a bad `threads`.
  static std::unique_ptr<ExactCoarseRanker> load(const std::filesystem::path& path,
                                                 int threads = 1);

  [[nodiscard]] std::size_t dim() const override { return config_.dim; }
  [[nodiscard]] Metric metric() const override { return config_.metric; }
  [[nodiscard]] std::size_t size() const override { return ids_.size(); }
  /// "exact(ip, dim=D)" or "exact(l2, dim=D)".
  [[nodiscard]] std::string name() const override;
  /// The configuration this index was built with.
  [[nodiscard]] const ExactCoarseRankerConfig& config() const noexcept { return config_; }
  /// The kernel search() uses (config().kernel resolved for this CPU).
  [[nodiscard]] ExactKernel kernel() const noexcept { return kernel_; }
  /// Whether this CPU and build can run `kernel`.
  static bool kernel_supported(ExactKernel kernel);

  /// Adds vectors (see CoarseRanker::add). Besides finite values, the squared
  /// norm of each vector must be finite in float. All-or-nothing: when
  /// anything is wrong nothing is added.
  void add(MatrixView<const float> vectors, std::span<const ItemId> ids) override;

  /// Removes items (see CoarseRanker::remove). The last stored row moves into
  /// the freed slot. An id listed twice is removed once and then reported
  /// as unknown.
  RemoveReport remove(std::span<const ItemId> ids) override;

  /// Exact k best items per query (see CoarseRanker::search). Any
  /// SearchParams kind is accepted; only its filter is used. With no
  /// queries it writes nothing and returns 0. When the filter throws, the
  /// exception propagates and the output buffers hold unspecified values.
  std::size_t search(MatrixView<const float> queries, std::size_t k, MatrixView<float> distances,
                     MatrixView<ItemId> labels,
                     const SearchParams* params = nullptr) const override;

  /// Writes the FAISS index and its sidecar (see the file comment).
  /// @throws Error(io) when a file cannot be written or renamed; the files
  ///         already at `path` are left as they were then.
  void save(const std::filesystem::path& path) const override;

 private:
  ExactCoarseRankerConfig config_;
  ExactKernel kernel_;          // config_.kernel resolved
  std::vector<float> vectors_;  // size() x dim, row-major
  std::vector<float> norms_;    // squared L2 norm per row (for Metric::l2)
  std::vector<ItemId> ids_;     // id per row
  std::unordered_map<ItemId, std::size_t> row_of_;
};

}  // namespace funnel
