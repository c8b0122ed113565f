// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// HistoryProfile: a summary of one user's behaviour history against the
/// catalogue (category, brand and price preferences, taste vector, most
/// similar past item). The fine ranker's features and the reason generator's
/// evidence are both read from it, so that what a reason says is what the
/// ranker saw.
///
/// Each history event gets weight type_weight(type) * 0.5^(age / half_life),
/// where age = now_ts - ts (clamped at 0). Events with ts > now_ts and events
/// of items not in the catalogue are skipped. Of the rest, only the most
/// recent max_events events count (by ts; on equal ts the later one in the
/// history). Weights, shares, the price band and the mean vector accumulate
/// over every counted event; per distinct item the profile also keeps the
/// strongest counted event (purchase > cart > click > view, the latest on
/// ties), which most_similar(), strongest_event() and purchased() report.
///
/// Building a profile costs O(h log h + h * dim) for h history events (no
/// sort when the history is already in time order), so a request can afford
/// one per user.
///
/// Threading: immutable after construction; const methods may run
/// concurrently. A profile keeps a pointer to the catalogue (and views of its
/// category and brand strings), which must outlive it and must not be
/// modified meanwhile.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "funnel/catalog.hpp"
#include "funnel/user.hpp"

namespace funnel {

/// How history events are weighted.
struct HistoryProfileConfig {
  float view_weight = 0.25F;
  float click_weight = 1.0F;
  float cart_weight = 2.0F;
  float purchase_weight = 3.0F;
  double half_life_s = 14.0 * 86400.0;
  std::size_t max_events = 100;

  /// The configured weight of one event type.
  [[nodiscard]] float type_weight(EventType type) const noexcept;
  /// @throws Error(invalid_argument) for negative or non-finite weights, a
  ///         non-positive or non-finite half-life, or max_events == 0.
  void validate() const;
};

/// Summary of a history as of `now_ts`.
class HistoryProfile {
 public:
  /// Summarises `history` (normally oldest first; any order is accepted) as
  /// seen at `now_ts`; events with ts > now_ts are ignored.
  /// @throws Error(invalid_argument) when the config is invalid.
  HistoryProfile(const Catalog& catalog, std::span<const HistoryEvent> history, std::int64_t now_ts,
                 const HistoryProfileConfig& config = {});
  /// Same, from a request context: history = user.history, now_ts =
  /// user.now_ts, except that an unset now_ts (0) means "the latest history
  /// timestamp", so that a context built without a clock still sees its
  /// history.
  HistoryProfile(const Catalog& catalog, const UserContext& user,
                 const HistoryProfileConfig& config = {});

  /// The time the profile was built for (the resolved clock of a UserContext).
  [[nodiscard]] std::int64_t now_ts() const noexcept { return now_ts_; }
  /// Number of events that were counted (at most max_events).
  [[nodiscard]] std::size_t events() const noexcept { return counted_; }
  /// Number of distinct items among the counted events.
  [[nodiscard]] std::size_t distinct_items() const noexcept { return used_.size(); }
  /// Sum of event weights.
  [[nodiscard]] double total_weight() const noexcept { return total_weight_; }

  /// Weighted share of the history in this category, in [0, 1] (0 for an
  /// empty name or an empty history).
  [[nodiscard]] double category_share(std::string_view category) const noexcept;
  /// Weighted share of the history with this brand, in [0, 1] (0 for an
  /// empty name or an empty history).
  [[nodiscard]] double brand_share(std::string_view brand) const noexcept;
  /// The category with the largest share (ties: the smaller name), with its
  /// share; nullopt when no counted item has a category or all weights are 0.
  [[nodiscard]] std::optional<std::pair<std::string, double>> top_category() const;

  /// Weighted mean and standard deviation of log(price) over cart and
  /// purchase events (over all events when there are none); nullopt when no
  /// counted item has a price. Prices <= 0 count as unknown (no logarithm).
  /// When every relevant weight has decayed to 0 the plain mean is used.
  [[nodiscard]] std::optional<double> mean_log_price() const noexcept { return mean_log_price_; }
  /// See mean_log_price().
  [[nodiscard]] std::optional<double> std_log_price() const noexcept { return std_log_price_; }

  /// L2-normalised weighted mean of the history items' vectors; empty when
  /// the catalogue has no vectors, the history is empty or the mean is 0.
  [[nodiscard]] std::span<const float> mean_vector() const noexcept { return mean_vector_; }

  /// A history item with its strongest counted event.
  struct Match {
    ItemId item = kNoItem;             ///< the history item
    EventType type = EventType::view;  ///< its strongest counted event
    std::int64_t ts = 0;               ///< when that event happened
    float similarity = 0.0F;           ///< inner product with the query vector (most_similar)
  };

  /// The history item most similar (inner product of catalogue vectors) to
  /// `vector`, skipping `exclude` (usually the candidate itself). Ties go to
  /// the stronger event, then the later one. nullopt when the catalogue has
  /// no vectors or no other item was counted. Allocates nothing.
  /// @throws Error(invalid_argument) when vector.size() != the catalogue's vector_dim().
  [[nodiscard]] std::optional<Match> most_similar(std::span<const float> vector,
                                                  ItemId exclude = kNoItem) const;

  /// The strongest counted event of this item (similarity 0); nullopt when
  /// the item was not counted.
  [[nodiscard]] std::optional<Match> strongest_event(ItemId item) const noexcept;

  /// Whether the user purchased this item in the counted history.
  [[nodiscard]] bool purchased(ItemId item) const noexcept;

  /// The counted distinct items, sorted by id, each with its strongest
  /// counted event (similarity 0). Lets a caller compare many vectors with
  /// the history in one batch instead of calling most_similar() for each.
  [[nodiscard]] std::span<const Match> items() const noexcept { return used_; }

 private:
  void build(std::span<const HistoryEvent> history, std::int64_t now_ts,
             const HistoryProfileConfig& config);

  const Catalog* catalog_;
  std::int64_t now_ts_ = 0;
  std::vector<Match> used_;             // one entry per distinct item, strongest event kept
  std::vector<std::size_t> used_rows_;  // catalogue row of each used_ entry
  std::size_t counted_ = 0;
  // Few distinct categories and brands per user: linear search over views of
  // the catalogue's strings beats hashing std::string keys.
  std::vector<std::pair<std::string_view, double>> category_weight_;
  std::vector<std::pair<std::string_view, double>> brand_weight_;
  double total_weight_ = 0.0;
  std::optional<double> mean_log_price_;
  std::optional<double> std_log_price_;
  std::vector<float> mean_vector_;
};

}  // namespace funnel
