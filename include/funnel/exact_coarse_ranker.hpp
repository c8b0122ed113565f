// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// ExactCoarseRanker: exhaustive inner-product or L2 search (blocked GEMM
/// against all stored vectors + partial top-k). It is the ground truth that
/// approximate indexes are measured against.
///
/// Files: save() writes the vectors as a FAISS index (IndexIDMap2 over
/// IndexFlatIP/IndexFlatL2, readable with faiss.read_index) at `path` and a
/// JSON sidecar at `path` + ".json" (format version, type, metric,
/// dimension, count, byte size and checksum of the index file). Both are
/// written to temporary names and renamed. load() validates the sidecar,
/// the checksum, and the index's type, dimension and metric.
///
/// Threading: search() and the other const methods may run concurrently;
/// add() and remove() need external exclusion against every other call.

#include <cstddef>
#include <filesystem>
#include <memory>
#include <unordered_map>
#include <vector>

#include "funnel/coarse_ranker.hpp"

namespace funnel {

/// Settings of an ExactCoarseRanker.
struct ExactCoarseRankerConfig {
  std::size_t dim = 0;
  Metric metric = Metric::inner_product;
  /// Threads used inside one search() call (1: the calling thread only).
  int threads = 1;

  /// @throws Error(invalid_argument) naming the bad field.
  void validate() const;
};

class ExactCoarseRanker final : public CoarseRanker {
 public:
  explicit ExactCoarseRanker(ExactCoarseRankerConfig config);

  /// Loads an index written by save().
  /// @param[in] threads threads used inside one search() call
  /// @throws Error(io) when a file is missing or unreadable; Error(format)
  ///         for a corrupt, truncated or inconsistent index or sidecar.
  static std::unique_ptr<ExactCoarseRanker> load(const std::filesystem::path& path,
                                                 int threads = 1);

  [[nodiscard]] std::size_t dim() const override { return config_.dim; }
  [[nodiscard]] Metric metric() const override { return config_.metric; }
  [[nodiscard]] std::size_t size() const override { return ids_.size(); }
  [[nodiscard]] std::string name() const override;

  void add(MatrixView<const float> vectors, std::span<const ItemId> ids) override;
  RemoveReport remove(std::span<const ItemId> ids) override;
  std::size_t search(MatrixView<const float> queries, std::size_t k, MatrixView<float> distances,
                     MatrixView<ItemId> labels,
                     const SearchParams* params = nullptr) const override;
  void save(const std::filesystem::path& path) const override;

 private:
  ExactCoarseRankerConfig config_;
  std::vector<float> vectors_;  // size() x dim, row-major
  std::vector<float> norms_;    // squared L2 norm per row (for Metric::l2)
  std::vector<ItemId> ids_;     // id per row
  std::unordered_map<ItemId, std::size_t> row_of_;
};

}  // namespace funnel
