// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Popularity statistics from a log of events: per item, per category and
/// per (location, category). Used as a ranking feature, as grounded evidence
/// for reasons ("popular in <category> in <location>") and as the popularity
/// baseline that the funnel is measured against.
///
/// An event counts type_weight(type) (view 0.1, click 1, cart 2, purchase 4).
/// Ranks and top lists break ties by name (categories) or id (items), so
/// that they are deterministic.
///
/// Threading: immutable after construction; const methods may run concurrently.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "funnel/catalog.hpp"
#include "funnel/event.hpp"
#include "funnel/user.hpp"

namespace funnel {

/// Weighted event counts per item, per (location, category) and users per location.
class Popularity {
 public:
  /// No counts at all.
  Popularity() = default;

  /// Counts events with ts < until_ts whose item is in the catalogue. Users
  /// give each event its location (events of users not in `users` count
  /// everywhere but in no location).
  static Popularity from_events(const Catalog& catalog, std::span<const Event> events,
                                std::span<const UserProfile> users,
                                std::int64_t until_ts = INT64_MAX);

  /// Item counts only (no location statistics), e.g. as saved by a model.
  /// @throws Error(invalid_argument) for a duplicate id or a negative or
  ///         non-finite count (the message names the id).
  static Popularity from_item_counts(std::span<const std::pair<ItemId, double>> counts);

  /// The weight one event of this type adds to a count.
  [[nodiscard]] static double type_weight(EventType type) noexcept;

  /// Weighted event count of an item (0 when never seen).
  [[nodiscard]] double item_count(ItemId item) const;
  /// log(1 + item_count) / log(1 + max item_count), in [0, 1].
  [[nodiscard]] double item_score(ItemId item) const;
  /// Items by decreasing count (ties by id), at most n.
  [[nodiscard]] std::vector<std::pair<ItemId, double>> top_items(std::size_t n) const;
  /// All item counts, sorted by id.
  [[nodiscard]] std::vector<std::pair<ItemId, double>> item_counts() const;
  /// Number of items with a count.
  [[nodiscard]] std::size_t items() const noexcept { return item_count_.size(); }

  /// 1-based rank of `category` among categories in `location` by weighted
  /// count (ties: the smaller name ranks first), with its count; nullopt when
  /// the pair was never seen. Items without a category count in no category.
  [[nodiscard]] std::optional<std::pair<std::size_t, double>> category_rank_in_location(
      std::string_view location, std::string_view category) const;

  /// Number of distinct users from `location` that contributed counted events.
  [[nodiscard]] std::size_t users_in_location(std::string_view location) const;

 private:
  std::unordered_map<ItemId, double> item_count_;
  double max_item_count_ = 0.0;
  // location -> (category -> count)
  std::unordered_map<std::string, std::unordered_map<std::string, double>> location_category_;
  std::unordered_map<std::string, std::size_t> location_users_;
};

}  // namespace funnel
