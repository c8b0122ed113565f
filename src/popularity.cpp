// SPDX-License-Identifier: Apache-2.0
#include "funnel/popularity.hpp"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "internal/error_util.hpp"

namespace funnel {

double Popularity::type_weight(EventType type) noexcept {
  switch (type) {
    case EventType::view: return 0.1;
    case EventType::click: return 1.0;
    case EventType::cart: return 2.0;
    case EventType::purchase: return 4.0;
  }
  return 0.0;
}

Popularity Popularity::from_events(const Catalog& catalog, std::span<const Event> events,
                                   std::span<const UserProfile> users, std::int64_t until_ts) {
  std::unordered_map<std::string_view, std::string_view> location_of;  // user id -> location
  location_of.reserve(users.size());
  for (const UserProfile& user : users) {
    if (!user.location.empty()) location_of.emplace(user.id, user.location);  // first one wins
  }

  Popularity popularity;
  std::unordered_map<std::string_view, std::unordered_set<std::string_view>> users_by_location;
  for (const Event& event : events) {
    if (event.ts >= until_ts) continue;
    const Item* item = catalog.find(event.item);
    if (item == nullptr) continue;
    const double weight = type_weight(event.type);
    popularity.item_count_[event.item] += weight;
    const auto located = location_of.find(event.user);
    if (located == location_of.end()) continue;
    users_by_location[located->second].insert(event.user);
    if (!item->category.empty()) {
      popularity.location_category_[std::string(located->second)][item->category] += weight;
    }
  }
  for (const auto& [location, members] : users_by_location) {
    popularity.location_users_[std::string(location)] = members.size();
  }
  for (const auto& [id, count] : popularity.item_count_) {
    popularity.max_item_count_ = std::max(popularity.max_item_count_, count);
  }
  return popularity;
}

Popularity Popularity::from_item_counts(std::span<const std::pair<ItemId, double>> counts) {
  Popularity popularity;
  popularity.item_count_.reserve(counts.size());
  for (const auto& [id, count] : counts) {
    detail::require(std::isfinite(count) && count >= 0.0, "Popularity: count of item ", id,
                    " must be finite and >= 0, got ", count);
    detail::require(popularity.item_count_.emplace(id, count).second,
                    "Popularity: duplicate item id ", id);
    popularity.max_item_count_ = std::max(popularity.max_item_count_, count);
  }
  return popularity;
}

double Popularity::item_count(ItemId item) const {
  const auto it = item_count_.find(item);
  return it == item_count_.end() ? 0.0 : it->second;
}

double Popularity::item_score(ItemId item) const {
  if (max_item_count_ <= 0.0) return 0.0;
  return std::clamp(std::log1p(item_count(item)) / std::log1p(max_item_count_), 0.0, 1.0);
}

std::vector<std::pair<ItemId, double>> Popularity::top_items(std::size_t n) const {
  std::vector<std::pair<ItemId, double>> all(item_count_.begin(), item_count_.end());
  const auto before = [](const std::pair<ItemId, double>& a, const std::pair<ItemId, double>& b) {
    if (a.second != b.second) return a.second > b.second;
    return a.first < b.first;
  };
  const std::size_t keep = std::min(n, all.size());
  std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(keep), all.end(),
                    before);
  all.resize(keep);
  return all;
}

std::vector<std::pair<ItemId, double>> Popularity::item_counts() const {
  std::vector<std::pair<ItemId, double>> all(item_count_.begin(), item_count_.end());
  std::sort(all.begin(), all.end());
  return all;
}

std::optional<std::pair<std::size_t, double>> Popularity::category_rank_in_location(
    std::string_view location, std::string_view category) const {
  const auto in_location = location_category_.find(std::string(location));
  if (in_location == location_category_.end()) return std::nullopt;
  const auto& counts = in_location->second;
  const auto found = counts.find(std::string(category));
  if (found == counts.end()) return std::nullopt;
  const double count = found->second;
  std::size_t rank = 1;
  for (const auto& [name, other] : counts) {
    if (other > count || (other == count && name < found->first)) ++rank;
  }
  return std::make_pair(rank, count);
}

std::size_t Popularity::users_in_location(std::string_view location) const {
  const auto it = location_users_.find(std::string(location));
  return it == location_users_.end() ? 0 : it->second;
}

}  // namespace funnel
