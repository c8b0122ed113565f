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
/// where age = now_ts - ts (clamped at 0). Events of items not in the
/// catalogue are skipped. Only the most recent max_events events count.
///
/// Threading: immutable after construction; const methods may run
/// concurrently. A profile keeps a pointer to the catalogue, which must
/// outlive it.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
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

  [[nodiscard]] float type_weight(EventType type) const noexcept;
  /// @throws Error(invalid_argument) for negative weights, a non-positive
  ///         half-life or max_events == 0.
  void validate() const;
};

/// Summary of a history as of `now_ts`.
class HistoryProfile {
 public:
  /// Summarises `history` (oldest first) as seen at `now_ts`; events with
  /// ts > now_ts are ignored.
  HistoryProfile(const Catalog& catalog, std::span<const HistoryEvent> history, std::int64_t now_ts,
                 const HistoryProfileConfig& config = {});
  /// Same, from a request context.
  HistoryProfile(const Catalog& catalog, const UserContext& user,
                 const HistoryProfileConfig& config = {});

  /// Number of events that were counted.
  [[nodiscard]] std::size_t events() const noexcept { return used_.size(); }
  /// Sum of event weights.
  [[nodiscard]] double total_weight() const noexcept { return total_weight_; }

  /// Weighted share of the history in this category, in [0, 1].
  [[nodiscard]] double category_share(std::string_view category) const;
  /// Weighted share of the history with this brand, in [0, 1].
  [[nodiscard]] double brand_share(std::string_view brand) const;
  /// The category with the largest share, with its share; nullopt when empty.
  [[nodiscard]] std::optional<std::pair<std::string, double>> top_category() const;

  /// Weighted mean and standard deviation of log(price) over cart and
  /// purchase events (over all events when there are none); nullopt when no
  /// counted item has a price.
  [[nodiscard]] std::optional<double> mean_log_price() const noexcept { return mean_log_price_; }
  [[nodiscard]] std::optional<double> std_log_price() const noexcept { return std_log_price_; }

  /// L2-normalised weighted mean of the history items' vectors; empty when
  /// the catalogue has no vectors or the history is empty.
  [[nodiscard]] std::span<const float> mean_vector() const noexcept { return mean_vector_; }

  /// The history item most similar (inner product of catalogue vectors) to
  /// a given vector, skipping `exclude` (usually the candidate itself).
  struct Match {
    ItemId item = kNoItem;
    EventType type = EventType::view;
    std::int64_t ts = 0;
    float similarity = 0.0F;
  };
  [[nodiscard]] std::optional<Match> most_similar(std::span<const float> vector,
                                                  ItemId exclude = kNoItem) const;

  /// Whether the user purchased this item in the counted history.
  [[nodiscard]] bool purchased(ItemId item) const;

 private:
  struct Used {
    ItemId item;
    EventType type;
    std::int64_t ts;
    std::size_t row;  // row in the catalogue
  };
  const Catalog* catalog_;
  std::vector<Used> used_;  // one entry per distinct item, strongest event kept
  std::unordered_map<std::string, double> category_weight_;
  std::unordered_map<std::string, double> brand_weight_;
  double total_weight_ = 0.0;
  std::optional<double> mean_log_price_;
  std::optional<double> std_log_price_;
  std::vector<float> mean_vector_;
};

}  // namespace funnel
