// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Pipeline: composes any Encoder, CoarseRanker, FineRanker and
/// ReasonGenerator (the library's or a host's own) into one request path:
///
///   user context -> user vector (Encoder over the query text and the titles
///   of recent history items) -> CoarseRanker::search (coarse_k candidates,
///   request filter, purchased items excluded) -> FineRanker::score -> Fusion
///   -> top_n -> ReasonGenerator::explain.
///
/// Ownership: the pipeline shares ownership of its stages and catalogue
/// (std::shared_ptr<const T>); they must outlive no one else's use.
///
/// Threading: recommend() is const and may run concurrently from many threads,
/// provided nobody mutates the stages meanwhile (e.g. CoarseRanker::add needs
/// external exclusion against recommend()).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "funnel/catalog.hpp"
#include "funnel/coarse_ranker.hpp"
#include "funnel/encoder.hpp"
#include "funnel/fine_ranker.hpp"
#include "funnel/fusion.hpp"
#include "funnel/reason_generator.hpp"
#include "funnel/user.hpp"

namespace funnel {

/// Settings of a Pipeline.
struct PipelineConfig {
  std::size_t coarse_k = 200;          ///< candidates taken from the coarse stage
  std::size_t top_n = 10;              ///< items returned
  std::size_t history_for_query = 20;  ///< most recent history items encoded into the user vector
  double history_half_life_s = 7.0 * 86400.0;  ///< recency decay of history weights
  float query_weight = 2.0F;                   ///< weight of the typed query against the history
  bool exclude_purchased = true;               ///< never recommend what the user already bought
  /// Multi-interest retrieval: the user's recent history items are grouped
  /// into at most this many interests (spherical k-means over their
  /// vectors), each interest becomes one query vector, and the coarse stage
  /// merges their results round robin (search_merged), so a minor interest
  /// still gets candidates. 1: one user vector (user_vector()). At most 16.
  std::size_t interests = 1;
  bool explain = true;  ///< run the ReasonGenerator
  FusionConfig fusion;

  /// @throws Error(invalid_argument) naming the bad field.
  void validate() const;
};

/// Per-request options.
struct RecommendOptions {
  std::size_t top_n = 0;             ///< 0: use PipelineConfig::top_n
  const IdFilter* filter = nullptr;  ///< business filter (in stock, category, ...); not owned
};

/// Wall-clock time spent in each stage of one request, in milliseconds.
struct StageTimings {
  double encode_ms = 0;
  double coarse_ms = 0;
  double fine_ms = 0;
  double fusion_ms = 0;
  double reason_ms = 0;
  double total_ms = 0;
};

/// One recommended item.
struct RecommendedItem {
  ItemId id = kNoItem;
  float coarse_score = 0.0F;            ///< higher is better, whatever the metric
  std::vector<float> objective_scores;  ///< in Recommendation::objectives order
  float score = 0.0F;                   ///< fused ranking score
  Reason reason;                        ///< empty text when explain is off
};

/// The answer to one request.
struct Recommendation {
  std::vector<RecommendedItem> items;   ///< best first
  std::vector<std::string> objectives;  ///< names of objective_scores columns
  std::size_t candidates = 0;           ///< how many the coarse stage returned
  StageTimings timings;
};

/// The four stages wired together.
class Pipeline {
 public:
  /// @throws Error(invalid_argument) when a stage is null, the encoder and
  ///         ranker dimensions differ, or the config is invalid.
  Pipeline(std::shared_ptr<const Catalog> catalog, std::shared_ptr<const Encoder> encoder,
           std::shared_ptr<const CoarseRanker> coarse, std::shared_ptr<const FineRanker> fine,
           std::shared_ptr<const ReasonGenerator> reasons, PipelineConfig config = {});

  /// Recommends items for one user.
  [[nodiscard]] Recommendation recommend(const UserContext& user,
                                         const RecommendOptions& options = {}) const;

  /// The user's query vector: the weighted, normalised sum of the encoded
  /// query text and the vectors of recent history items (the catalogue's
  /// vectors when it carries vectors of the encoder's dimension, otherwise
  /// the encoded titles). History items are weighted by their strongest event
  /// type (view 0.25, click 1, cart 2, purchase 3) and by recency
  /// (0.5^(age / history_half_life_s)), normalised to sum 1; the query adds
  /// query_weight times its own vector.
  /// @param[out] out dim() floats; all zero when the user has neither.
  void user_vector(const UserContext& user, std::span<float> out) const;

  /// The user's query vectors for multi-interest retrieval (see
  /// PipelineConfig::interests): the history items of user_vector() are
  /// grouped by spherical k-means (seeded deterministically with the
  /// heaviest item, then farthest-first; 8 iterations); each group's
  /// weighted sum, normalised to weight 1, plus query_weight times the
  /// query text's vector, normalised, is one row. Rows are ordered by the
  /// groups' total weight, heaviest first. With interests == 1, or fewer
  /// than two history items, this is the single row of user_vector().
  /// @return m x dim() with 1 <= m <= interests
  [[nodiscard]] Matrix<float> user_vectors(const UserContext& user) const;

  [[nodiscard]] const PipelineConfig& config() const noexcept { return config_; }

 private:
  struct WeightedHistory;
  [[nodiscard]] WeightedHistory weighted_history(const UserContext& user) const;
  [[nodiscard]] Matrix<float> query_text_vector(const UserContext& user) const;

  std::shared_ptr<const Catalog> catalog_;
  std::shared_ptr<const Encoder> encoder_;
  std::shared_ptr<const CoarseRanker> coarse_;
  std::shared_ptr<const FineRanker> fine_;
  std::shared_ptr<const ReasonGenerator> reasons_;
  PipelineConfig config_;
  Fusion fusion_;
};

}  // namespace funnel
