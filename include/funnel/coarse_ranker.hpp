// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// CoarseRanker: an index of item vectors that narrows the catalogue to a few
/// hundred candidates per query vector.
///
/// Result layout (as in FAISS): for nq queries and k results each, distances
/// and labels are nq x k row-major; row i lists query i's results best first.
/// For Metric::inner_product "distance" is the inner product (higher is
/// better); for Metric::l2 it is the squared L2 distance (lower is better).
/// When fewer than k items are eligible, the tail of a row is padded with
/// label kNoItem and distance -inf (inner product) or +inf (L2).
///
/// Ownership: factories and load functions return std::unique_ptr; a Pipeline
/// holds its ranker as std::shared_ptr<const CoarseRanker>.
///
/// Threading: search() and the other const methods may run concurrently from
/// many threads. add() and remove() need external exclusion against every
/// other call unless the implementing header says otherwise.

#include <cstddef>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "funnel/item_id.hpp"
#include "funnel/matrix.hpp"

namespace funnel {

/// How vectors are compared.
enum class Metric { inner_product, l2 };

/// "inner_product" or "l2".
std::string_view to_string(Metric metric) noexcept;

/// Decides per item whether it may be returned. Implementations must be safe
/// to call from many threads at once (allows() is const and must not mutate
/// shared state without synchronisation).
class IdFilter {
 public:
  virtual ~IdFilter() = default;
  /// True when `id` may appear in results.
  [[nodiscard]] virtual bool allows(ItemId id) const = 0;
};

/// Allows only the listed ids.
class AllowListFilter final : public IdFilter {
 public:
  explicit AllowListFilter(std::span<const ItemId> ids) : ids_(ids.begin(), ids.end()) {}
  [[nodiscard]] bool allows(ItemId id) const override { return ids_.contains(id); }

 private:
  std::unordered_set<ItemId> ids_;
};

/// Allows everything except the listed ids.
class DenyListFilter final : public IdFilter {
 public:
  explicit DenyListFilter(std::span<const ItemId> ids) : ids_(ids.begin(), ids.end()) {}
  [[nodiscard]] bool allows(ItemId id) const override { return !ids_.contains(id); }

 private:
  std::unordered_set<ItemId> ids_;
};

/// Allows the ids for which a predicate returns true. The predicate is called
/// concurrently when searches run concurrently.
class PredicateFilter final : public IdFilter {
 public:
  explicit PredicateFilter(std::function<bool(ItemId)> predicate)
      : predicate_(std::move(predicate)) {}
  [[nodiscard]] bool allows(ItemId id) const override { return predicate_(id); }

 private:
  std::function<bool(ItemId)> predicate_;
};

/// Allows an id only when every one of its filters does.
class AllOfFilter final : public IdFilter {
 public:
  explicit AllOfFilter(std::vector<const IdFilter*> filters) : filters_(std::move(filters)) {}
  [[nodiscard]] bool allows(ItemId id) const override {
    for (const IdFilter* f : filters_) {
      if (f != nullptr && !f->allows(id)) return false;
    }
    return true;
  }

 private:
  std::vector<const IdFilter*> filters_;  // not owned
};

/// Per-call search settings. Implementations may define derived structs
/// with more fields (as FAISS's SearchParametersIVF) and throw
/// Error(invalid_argument) when handed a kind they cannot use.
struct SearchParams {
  virtual ~SearchParams() = default;
  /// Items the filter rejects are never returned; applied during the scan,
  /// not by over-fetching. Not owned; null means no filter.
  const IdFilter* filter = nullptr;
};

/// What remove() did.
struct RemoveReport {
  std::size_t removed = 0;          ///< ids that were present and are now gone
  std::vector<ItemId> unknown_ids;  ///< ids that were not in the index
};

/// An index of item vectors.
class CoarseRanker {
 public:
  virtual ~CoarseRanker() = default;

  [[nodiscard]] virtual std::size_t dim() const = 0;
  [[nodiscard]] virtual Metric metric() const = 0;
  /// Number of items currently indexed.
  [[nodiscard]] virtual std::size_t size() const = 0;
  /// Short description for logs, e.g. "exact(ip, dim=256)".
  [[nodiscard]] virtual std::string name() const = 0;

  /// Adds vectors with the host's ids.
  /// @param[in] vectors n x dim(), finite values
  /// @param[in] ids     n ids, none already present, none equal to kNoItem
  /// @throws Error(invalid_argument) naming the row or id for a wrong
  ///         dimension, a NaN/inf value, or a duplicate id; nothing is added then.
  virtual void add(MatrixView<const float> vectors, std::span<const ItemId> ids) = 0;

  /// Removes items by id; a removed id is never returned again.
  /// Unknown ids are reported in the result, not silently ignored.
  virtual RemoveReport remove(std::span<const ItemId> ids) = 0;

  /// Finds the k best items for each query.
  /// @param[in]  queries   nq x dim(), finite values
  /// @param[in]  k         results per query (> 0)
  /// @param[out] distances nq x k (layout and padding in the file comment)
  /// @param[out] labels    nq x k item ids
  /// @param[in]  params    per-call settings, may be null
  /// @return the number of real (unpadded) results of the query with the fewest
  /// @throws Error(invalid_argument) for wrong shapes, k == 0, NaN queries, or
  ///         a params kind this index does not accept.
  virtual std::size_t search(MatrixView<const float> queries, std::size_t k,
                             MatrixView<float> distances, MatrixView<ItemId> labels,
                             const SearchParams* params = nullptr) const = 0;

  /// Writes the index to `path` (and any sidecar next to it), atomically.
  virtual void save(const std::filesystem::path& path) const = 0;
};

/// One entry of a merged multi-query result.
struct MergedCandidate {
  ItemId id = kNoItem;
  float distance = 0.0F;  ///< the best distance of this item over all queries
  std::size_t query = 0;  ///< the query (interest) that gave that distance
};

/// How search_merged() orders the union of the per-query results.
enum class MergeOrder {
  /// By distance alone (best first): one strong interest may fill the list.
  best_distance,
  /// Round robin over the queries, each query's own results best first,
  /// skipping ids already taken: every interest gets an equal share of the
  /// list while it has results left. The list keeps that taking order; each
  /// entry still reports the item's best distance over all queries.
  round_robin,
};

/// Multi-interest retrieval: searches several query vectors of one user
/// (for example one per cluster of the user's history) and merges their
/// results into one list of at most k distinct items. Each query retrieves
/// k items; an item found by several queries appears once, with its best
/// distance and the query that gave it. Ties are ordered by ascending id,
/// then by query index. Works with any CoarseRanker.
/// @param[in] ranker  the index
/// @param[in] queries nq x ranker.dim() query vectors (nq >= 1)
/// @param[in] k       maximum length of the merged list (> 0)
/// @param[in] params  per-call settings passed to every search, may be null
/// @param[in] order   how the union is ordered and cut to k
/// @return at most k distinct items (fewer when fewer are eligible)
/// @throws Error(invalid_argument) as CoarseRanker::search, or for nq == 0.
std::vector<MergedCandidate> search_merged(const CoarseRanker& ranker,
                                           MatrixView<const float> queries, std::size_t k,
                                           const SearchParams* params = nullptr,
                                           MergeOrder order = MergeOrder::best_distance);

}  // namespace funnel
