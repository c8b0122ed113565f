// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Popularity statistics from a log of events: per item, per category and
/// per (location, category). Used as a ranking feature, as grounded evidence
/// for reasons ("popular in <category> in <location>") and as the popularity
/// baseline that the funnel is measured against.
///
/// An event counts type_weight(type) (view 0.1, click 1, cart 2, purchase 4).
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

class Popularity {
 public:
  Popularity() = default;

  /// Counts events with ts < until_ts whose item is in the catalogue. Users
  /// give each event its location (events of users not in `users` count
  /// everywhere but in no location).
  static Popularity from_events(const Catalog& catalog, std::span<const Event> events,
                                std::span<const UserProfile> users,
                                std::int64_t until_ts = INT64_MAX);

  [[nodiscard]] static double type_weight(EventType type) noexcept;

  /// Weighted event count of an item (0 when never seen).
  [[nodiscard]] double item_count(ItemId item) const;
  /// log(1 + item_count) / log(1 + max item_count), in [0, 1].
  [[nodiscard]] double item_score(ItemId item) const;
  /// Items by decreasing count (ties by id), at most n.
  [[nodiscard]] std::vector<std::pair<ItemId, double>> top_items(std::size_t n) const;

  /// 1-based rank of `category` among categories in `location` by weighted
  /// count, with its count; nullopt when the pair was never seen.
  [[nodiscard]] std::optional<std::pair<std::size_t, double>> category_rank_in_location(
      std::string_view location, std::string_view category) const;

  /// Number of distinct users from `location` that contributed events.
  [[nodiscard]] std::size_t users_in_location(std::string_view location) const;

 private:
  std::unordered_map<ItemId, double> item_count_;
  double max_item_count_ = 0.0;
  // location -> (category -> count)
  std::unordered_map<std::string, std::unordered_map<std::string, double>> location_category_;
  std::unordered_map<std::string, std::size_t> location_users_;
};

}  // namespace funnel
