// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// DeepFineRanker: the multi-task deep FineRanker (MMoE body, target
/// attention over the user's history; the network is DeepRankerModel in
/// deep_ranker.hpp). It turns a request (UserContext + candidates) into one
/// DeepRankerBatch (one user row, nc candidate rows), runs the network once,
/// and reports each task as a score column: binary and ctcvr tasks as
/// probabilities (a ctcvr task as its conditional probability, e.g. cvr =
/// P(purchase | click)), regression tasks as expected target values
/// (expm1(max(0, o)), e.g. dwell seconds), so scores are >= 0 as
/// FineRanker requires (a regression output is clamped to [0, 80] before
/// expm1, so that it stays finite).
///
/// ## Features (names usable in DeepFeatureConfig)
/// User categorical: "age_band" (<18, 18-24, 25-34, 35-44, 45-54, 55+ from
///   UserProfile::age), "gender", "location", or any key of
///   UserProfile::categorical. Empty / missing values are out of vocabulary.
/// User numeric: "log_history_events" (log(1 + events in the history before
///   the request)), or any key of UserProfile::numeric (missing: the
///   feature's training mean).
/// Item categorical: "category", "brand", "price_band" (deciles of log(1 +
///   price) over the training catalogue's priced items: the 9 bounds are the
///   sorted values at positions floor(k n / 10), k = 1..9, and an item's band
///   "0".."9" is the number of bounds <= its value; unknown price = out of
///   vocabulary), or "attr:<key>" (Item::attrs).
/// Item numeric: "coarse_score" (Candidate::coarse_score; in training, where
///   no coarse stage ran, the inner product of the item's vector with the
///   mean vector of the user's history before the example normalised to unit
///   length, which is what an exact inner-product stage returns for a
///   history-only unit user vector such as the Pipeline's; the mean is the
///   plain mean of the history tokens' vectors, 0 without history), "log_price" (log(1 + price), 0
///   when unknown), "log_popularity" (log(1 + events of the item in the training period: every
///   event type counts 1, events before the first held-out example)),
///   "price_vs_category" (log(1 + price) minus the median log(1 + price) of the catalogue's
///   priced items of its category, the mean of the middle two for an even count; 0 without a
///   price or a category), and the item's rate priors, as the logistic ranker defines them
///   (m = 20): "item_ctr_prior" logit((clicks + m g_ctr) / (views + m)), "item_cvr_prior"
///   logit((purchases + m g_cvr) / (clicks + m)) (rates clamped to [1e-6, 1 - 1e-6] before the
///   logit), "item_dwell_prior" (sum of log(1 + dwell_s) + m g_dwell) / (dwells + m); counts
///   are the item's events of every user in the training period (dwells: clicks with a
///   dwell_s), g the global rates over all counted items; "category_ctr_prior",
///   "category_cvr_prior", "category_dwell_prior" the same over the events of all catalogue
///   items of the item's category (an item without a category gets the global rates). A training
///   example inside that period counts only the events strictly before it (never its own outcome);
///   at serving time, and for later examples, the whole period counts. User-item cross features,
///   from the same history tokens the attention sees (T = their number; 0 without tokens):
///   "sim_max" (the largest v(x) . v(h) over tokens h of another item than the candidate x, float
///   accumulation), "seen_item" (1 when x is a token's item), "purchased_item" (1 when a purchase
///   token is x), "category_share" / "brand_share" (share of the T tokens whose item has x's
///   category / brand; 0 when x has none), "brand_purchased" (1 when a purchase token's item has
///   x's brand), "relative_price_gap" (x's price_vs_category minus the mean price_vs_category of
///   the distinct token items that have one; 0 when either is missing). These are what the logistic
///   ranker's best features say, given to the network directly instead of being left for the
///   attention to rediscover.
/// History tokens: the user's most recent history_length events before the
///   request (of items the catalogue knows), oldest first: the item's
///   catalogue vector, its history-category index, the event type and the
///   recency bucket relative to UserContext::now_ts. "Before the request" is
///   ts < now_ts, as in training; an unset clock (now_ts 0) takes the whole
///   history, with recency relative to its latest event.
/// Vocabularies come from the training data: each training example (not the
///   held-out ones) counts its user's and its item's values; values seen at
///   least min_count times, sorted, get indices 1..n. At serving time an
///   unknown or missing value of a user or candidate feature maps to index
///   0 and is counted (stats(); history tokens are not counted). Numeric
///   features are standardised with the mean and (population) standard
///   deviation over the training examples (a constant feature gets std 1).
///
/// ## Training examples (train(), build_examples())
/// Each `view` is an impression. A task labelled "click" gets 1 when the
/// same user clicks the same item within attribution_window_s after the
/// view (ts in (view, view + window]; the first such click is "that
/// click"); "cart" / "purchase" the same for a cart / purchase within the
/// window after that click (so a ctcvr task's joint label is "clicked and
/// then purchased"); "dwell" gets log(1 + dwell_s) of that click when it
/// has one, otherwise no label (NaN). Unclicked impressions are kept with
/// probability negative_keep (seeded). A log without views (e.g. purchases
/// only) sets sampled_negatives > 0: each event of another type becomes a
/// positive impression (clicked at its own time; a cart / purchase event
/// counts as its own cart / purchase; a click's dwell_s is its dwell label),
/// and that many distinct catalogue items drawn uniformly (seeded, not
/// interacted with by the user anywhere in the log; fewer when too few are
/// left) become unclicked impressions at the same time; views, if any, are
/// then history only, and negative_keep does not apply. Features of an
/// example see only the events strictly before it. Examples are ordered by
/// time (examples of one user at one time share a user row); the latest
/// validation_fraction (at least one example and never all, when it is > 0
/// and there are two or more) is held out for early stopping.
///
/// ## Files
/// save() writes the DeepRankerModel directory plus `features.json`
/// (format "funnel.deep_fine_ranker", version 2: DeepFeatureConfig,
/// price-band bounds, per-item counts of the training period, the period's
/// end, checksum; version 1 files, with event counts only, still load
/// unless their feature list names a rate prior):
///   {"format": "funnel.deep_fine_ranker", "version": 1,
///    "features": {"user_categorical": [...], "user_numeric": [...],
///                 "item_categorical": [...], "item_numeric": [...],
///                 "history_category": "category", "embedding_dim": 16, "min_count": 1},
///    "vocab_sizes": {"user_categorical": [n, ...], "item_categorical": [n, ...]},
///    "item_vector_dim": 64, "price_band_bounds": [9 numbers, or none],
///    "popularity": {"items": [ids...], "counts": [...], "views": [...], "clicks": [...],
///                   "purchases": [...], "dwells": [...], "log_dwell_sum": [...]},
///    "counted_until_ts": ts or null (the training period's end; null: no held-out examples),
///    "checksum": "<checksum64 hex of the document without this field>"}
/// load() checks the checksum, then validates the file against the model's
/// config (every feature name known and the model's, in its order;
/// vocabulary sizes and embedding widths matching; no unknown fields) and
/// binds the catalogue (vectors of the model's item_vector_dim required).
///
/// Threading: immutable after construction except the stats counters
/// (atomic); score() may run concurrently.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "funnel/catalog.hpp"
#include "funnel/deep_ranker.hpp"
#include "funnel/event.hpp"
#include "funnel/fine_ranker.hpp"
#include "funnel/user.hpp"

namespace funnel {

/// Which features DeepFineRanker feeds the network (see the file comment).
struct DeepFeatureConfig {
  std::vector<std::string> user_categorical = {"age_band", "gender", "location"};
  std::vector<std::string> user_numeric = {"log_history_events"};
  std::vector<std::string> item_categorical = {"category", "brand", "price_band"};
  std::vector<std::string> item_numeric = {
      "coarse_score",    "log_price",         "log_popularity",   "price_vs_category",
      "item_ctr_prior",  "item_cvr_prior",    "item_dwell_prior", "sim_max",
      "seen_item",       "purchased_item",    "category_share",   "brand_share",
      "brand_purchased", "relative_price_gap"};
  std::string history_category =
      "category";                  ///< which item categorical feature history tokens carry
  std::size_t embedding_dim = 16;  ///< width of every categorical embedding
  std::size_t min_count = 1;       ///< vocabulary: values seen at least this often

  /// @throws Error(invalid_argument) naming an unknown feature or bad field.
  void validate() const;
};

/// How train() turns an event log into examples.
struct DeepExampleConfig {
  std::int64_t attribution_window_s = 3600;
  double negative_keep = 1.0;         ///< share of unclicked impressions kept, (0, 1]
  std::size_t sampled_negatives = 0;  ///< > 0: logs without views (see the file comment)
  double validation_fraction = 0.1;   ///< latest share held out for early stopping
  std::uint64_t seed = 7;             ///< negative sampling

  /// @throws Error(invalid_argument) naming the bad field.
  void validate() const;
};

/// Everything train() needs besides the data.
struct DeepFineRankerTrainConfig {
  /// Network shape and tasks; its feature lists and vocabularies are filled
  /// in by train() from `features` and the data (item_vector_dim from the
  /// catalogue's vectors).
  DeepRankerConfig model;
  DeepFeatureConfig features;
  DeepExampleConfig examples;
  DeepTrainConfig train;
};

/// Serving counters.
struct DeepFineRankerStats {
  std::uint64_t requests = 0;
  std::uint64_t candidates = 0;
  std::uint64_t out_of_vocabulary = 0;  ///< categorical values mapped to index 0 at serving time
};

/// The deep multi-task FineRanker.
class DeepFineRanker final : public FineRanker {
 public:
  ~DeepFineRanker() override;

  /// Builds examples from the log and trains the network (events of items
  /// not in the catalogue are skipped and counted in the report's absence).
  /// @param[in] catalog must carry vectors
  /// @throws Error(invalid_argument) for a null catalogue, one without
  ///         vectors, an invalid config, or too few examples (named).
  static std::unique_ptr<DeepFineRanker> train(std::shared_ptr<const Catalog> catalog,
                                               std::span<const Event> events,
                                               std::span<const UserProfile> users,
                                               const DeepFineRankerTrainConfig& config = {},
                                               DeepTrainReport* report = nullptr,
                                               const DeepRankerServeOptions& serve = {});

  /// Loads save()'s directory. @throws Error(io) / Error(format) naming the
  /// file and field; Error(invalid_argument) for a catalogue without
  /// vectors of the model's dimension.
  static std::unique_ptr<DeepFineRanker> load(const std::filesystem::path& dir,
                                              std::shared_ptr<const Catalog> catalog,
                                              const DeepRankerServeOptions& serve = {});

  /// Writes the model directory (see the file comment), atomically per file.
  void save(const std::filesystem::path& dir) const;

  /// The examples train() would build (labels included), for export to the
  /// PyTorch trainer or for evaluation. With a trained ranker's vocabularies.
  /// @param[out] validation the held-out share (may be null: then everything
  ///             goes to the returned set)
  [[nodiscard]] DeepRankerExamples build_examples(std::span<const Event> events,
                                                  std::span<const UserProfile> users,
                                                  const DeepExampleConfig& config,
                                                  DeepRankerExamples* validation) const;

  /// Task names.
  [[nodiscard]] std::span<const std::string> objectives() const override;
  [[nodiscard]] std::string name() const override;  ///< "deep (mmoe)" / "deep (shared_bottom)"
  /// One forward pass over all candidates (see the file comment).
  /// @throws Error(invalid_argument) for a wrong scores shape or an unknown candidate id.
  void score(const UserContext& user, std::span<const Candidate> candidates,
             MatrixView<float> scores) const override;

  [[nodiscard]] const DeepRankerModel& model() const noexcept;
  [[nodiscard]] const DeepFeatureConfig& features() const noexcept;
  [[nodiscard]] DeepFineRankerStats stats() const noexcept;

 private:
  struct Impl;
  explicit DeepFineRanker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace funnel
