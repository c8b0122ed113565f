// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// ReasonGenerator: one short, personal reason per shown item, in the user's
/// locale, built only from evidence the funnel can point to.
///
/// Ownership: factories return std::unique_ptr; a Pipeline holds its generator
/// as std::shared_ptr<const ReasonGenerator>.
///
/// Threading: explain() and the other const methods may run concurrently.

#include <cstdint>
#include <span>
#include <string>

#include "funnel/event.hpp"
#include "funnel/item_id.hpp"
#include "funnel/user.hpp"

namespace funnel {

/// The kind of fact a reason rests on.
enum class EvidenceKind {
  none,                 ///< nothing specific; a generic reason
  similar_to_history,   ///< resembles an item in the user's history
  category_affinity,    ///< the user often engages with this category
  brand_affinity,       ///< the user often engages with this brand
  price_band,           ///< priced in the band the user usually buys in
  popular_in_location,  ///< popular in this category among users in the user's location
  objective,            ///< ranked high on one objective (e.g. cvr)
};

/// "none", "similar_to_history", ... (stable names, used in template files).
std::string_view to_string(EvidenceKind kind) noexcept;

/// The fact behind a reason, so that a caller can check or display it.
struct Evidence {
  EvidenceKind kind = EvidenceKind::none;
  ItemId history_item = kNoItem;             ///< similar_to_history: the history item
  EventType history_type = EventType::view;  ///< similar_to_history: what the user did
  std::int64_t history_ts = 0;               ///< similar_to_history: when
  std::string category;                      ///< category_affinity, popular_in_location
  std::string brand;                         ///< brand_affinity
  std::string location;                      ///< popular_in_location
  std::string objective;                     ///< objective: its name
  /// Strength of the evidence: the similarity, the share of history, the
  /// popularity rank, or the objective score, by kind.
  double value = 0.0;
};

/// What the funnel knows about one item it is about to show.
struct ReasonInput {
  ItemId item = kNoItem;
  float coarse_score = 0.0F;
  std::span<const std::string> objective_names;  ///< column names of objective_scores
  std::span<const float> objective_scores;       ///< this item's fine scores
  float fused_score = 0.0F;
};

/// One reason.
struct Reason {
  std::string text;    ///< UTF-8, in `locale`
  std::string locale;  ///< the locale actually used (may fall back, e.g. to "en")
  Evidence evidence;
};

/// Writes grounded reasons.
class ReasonGenerator {
 public:
  virtual ~ReasonGenerator() = default;

  /// Short description for logs.
  [[nodiscard]] virtual std::string name() const = 0;

  /// One reason per item.
  /// @param[in]  user  the request's user (locale, history, profile)
  /// @param[in]  items n items
  /// @param[out] out   n reasons
  /// @throws Error(invalid_argument) when out.size() != items.size() or an
  ///         item id is unknown to the generator.
  virtual void explain(const UserContext& user, std::span<const ReasonInput> items,
                       std::span<Reason> out) const = 0;
};

}  // namespace funnel
