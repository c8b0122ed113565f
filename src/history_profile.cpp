// SPDX-License-Identifier: Apache-2.0
#include "funnel/history_profile.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>

#include "internal/error_util.hpp"

namespace funnel {

namespace {

// One counted event, before per-item deduplication.
struct Counted {
  ItemId item;
  EventType type;
  std::int64_t ts;
  std::size_t row;
  double weight;
};

// Purchase > cart > click > view; the later event on equal type.
bool stronger(EventType a_type, std::int64_t a_ts, EventType b_type, std::int64_t b_ts) {
  if (a_type != b_type) return a_type > b_type;
  return a_ts > b_ts;
}

void add_weight(std::vector<std::pair<std::string_view, double>>& table, std::string_view key,
                double weight) {
  if (key.empty()) return;
  for (auto& [name, total] : table) {
    if (name == key) {
      total += weight;
      return;
    }
  }
  table.emplace_back(key, weight);
}

double share_of(const std::vector<std::pair<std::string_view, double>>& table, std::string_view key,
                double total) {
  if (key.empty() || total <= 0.0) return 0.0;
  for (const auto& [name, weight] : table) {
    if (name == key) return std::clamp(weight / total, 0.0, 1.0);
  }
  return 0.0;
}

bool has_log_price(const Item& item) { return item.price.has_value() && *item.price > 0.0; }

}  // namespace

float HistoryProfileConfig::type_weight(EventType type) const noexcept {
  switch (type) {
    case EventType::view: return view_weight;
    case EventType::click: return click_weight;
    case EventType::cart: return cart_weight;
    case EventType::purchase: return purchase_weight;
  }
  return 0.0F;
}

void HistoryProfileConfig::validate() const {
  const std::pair<const char*, float> weights[] = {{"view_weight", view_weight},
                                                   {"click_weight", click_weight},
                                                   {"cart_weight", cart_weight},
                                                   {"purchase_weight", purchase_weight}};
  for (const auto& [field, value] : weights) {
    detail::require(std::isfinite(value) && value >= 0.0F, "HistoryProfileConfig.", field,
                    " must be finite and >= 0, got ", value);
  }
  detail::require(std::isfinite(half_life_s) && half_life_s > 0.0,
                  "HistoryProfileConfig.half_life_s must be finite and > 0, got ", half_life_s);
  detail::require(max_events > 0, "HistoryProfileConfig.max_events must be > 0");
}

HistoryProfile::HistoryProfile(const Catalog& catalog, std::span<const HistoryEvent> history,
                               std::int64_t now_ts, const HistoryProfileConfig& config)
    : catalog_(&catalog) {
  build(history, now_ts, config);
}

HistoryProfile::HistoryProfile(const Catalog& catalog, const UserContext& user,
                               const HistoryProfileConfig& config)
    : catalog_(&catalog) {
  std::int64_t now_ts = user.now_ts;
  if (now_ts == 0) {
    now_ts = std::numeric_limits<std::int64_t>::min();
    for (const HistoryEvent& event : user.history) now_ts = std::max(now_ts, event.ts);
  }
  build(user.history, now_ts, config);
}

void HistoryProfile::build(std::span<const HistoryEvent> history, std::int64_t now_ts,
                           const HistoryProfileConfig& config) {
  config.validate();
  now_ts_ = now_ts;
  const Catalog& catalog = *catalog_;

  // Select the most recent max_events eligible events. A history in time
  // order (the normal case) is walked backwards and stops early.
  const bool in_order =
      std::is_sorted(history.begin(), history.end(),
                     [](const HistoryEvent& a, const HistoryEvent& b) { return a.ts < b.ts; });
  std::vector<Counted> counted;
  counted.reserve(std::min(history.size(), config.max_events));
  auto eligible = [&](const HistoryEvent& event, std::size_t& row) {
    if (event.ts > now_ts) return false;
    row = catalog.index_of(event.item);
    return row != Catalog::npos;
  };
  if (in_order) {
    for (std::size_t i = history.size(); i-- > 0 && counted.size() < config.max_events;) {
      std::size_t row = 0;
      if (eligible(history[i], row)) {
        counted.push_back({history[i].item, history[i].type, history[i].ts, row, 0.0});
      }
    }
    std::reverse(counted.begin(), counted.end());
  } else {
    for (const HistoryEvent& event : history) {
      std::size_t row = 0;
      if (eligible(event, row)) counted.push_back({event.item, event.type, event.ts, row, 0.0});
    }
    std::stable_sort(counted.begin(), counted.end(),
                     [](const Counted& a, const Counted& b) { return a.ts < b.ts; });
    if (counted.size() > config.max_events) {
      counted.erase(counted.begin(), counted.begin() + static_cast<std::ptrdiff_t>(
                                                           counted.size() - config.max_events));
    }
  }
  counted_ = counted.size();
  if (counted.empty()) return;

  // Weights, shares and the taste vector over every counted event.
  const std::size_t dim = catalog.has_vectors() ? catalog.vector_dim() : 0;
  const MatrixView<const float> vectors = catalog.vectors();
  std::vector<double> vector_sum(dim, 0.0);
  bool any_intent_price = false;  // a cart or purchase with a price and weight > 0
  for (Counted& event : counted) {
    const double age = static_cast<double>(std::max<std::int64_t>(0, now_ts - event.ts));
    event.weight =
        static_cast<double>(config.type_weight(event.type)) * std::exp2(-age / config.half_life_s);
    total_weight_ += event.weight;
    const Item& item = catalog.items()[event.row];
    add_weight(category_weight_, item.category, event.weight);
    add_weight(brand_weight_, item.brand, event.weight);
    if (event.type >= EventType::cart && event.weight > 0.0 && has_log_price(item)) {
      any_intent_price = true;
    }
  }

  // Price band: cart and purchase events say more about what the user pays
  // than impressions do, so they alone define it when present.
  double price_weight = 0.0;
  double price_sum = 0.0;
  for (const Counted& event : counted) {
    const Item& item = catalog.items()[event.row];
    if (!has_log_price(item) || event.weight <= 0.0) continue;
    if (any_intent_price && event.type < EventType::cart) continue;
    price_weight += event.weight;
    price_sum += event.weight * std::log(*item.price);
  }
  if (price_weight > 0.0) {
    const double mean = price_sum / price_weight;
    double var_sum = 0.0;
    for (const Counted& event : counted) {
      const Item& item = catalog.items()[event.row];
      if (!has_log_price(item) || event.weight <= 0.0) continue;
      if (any_intent_price && event.type < EventType::cart) continue;
      const double d = std::log(*item.price) - mean;
      var_sum += event.weight * d * d;
    }
    mean_log_price_ = mean;
    std_log_price_ = std::sqrt(var_sum / price_weight);
  }

  // One entry per distinct item, sorted by id, holding its strongest event;
  // the taste vector adds each item's vector once, with its summed weight.
  std::sort(counted.begin(), counted.end(), [](const Counted& a, const Counted& b) {
    if (a.item != b.item) return a.item < b.item;
    return stronger(a.type, a.ts, b.type, b.ts);
  });
  used_.reserve(counted.size());
  used_rows_.reserve(counted.size());
  for (std::size_t begin = 0; begin < counted.size();) {
    const Counted& strongest = counted[begin];
    double item_weight = 0.0;
    std::size_t end = begin;
    for (; end < counted.size() && counted[end].item == strongest.item; ++end) {
      item_weight += counted[end].weight;
    }
    used_.push_back({strongest.item, strongest.type, strongest.ts, 0.0F});
    used_rows_.push_back(strongest.row);
    if (dim > 0) {
      const std::span<const float> v = vectors.row(strongest.row);
      for (std::size_t j = 0; j < dim; ++j) vector_sum[j] += item_weight * v[j];
    }
    begin = end;
  }

  if (dim > 0) {
    double norm2 = 0.0;
    for (const double x : vector_sum) norm2 += x * x;
    if (norm2 > 0.0 && std::isfinite(norm2)) {
      const double inv = 1.0 / std::sqrt(norm2);
      mean_vector_.resize(dim);
      for (std::size_t j = 0; j < dim; ++j) {
        mean_vector_[j] = static_cast<float>(vector_sum[j] * inv);
      }
    }
  }
}

double HistoryProfile::category_share(std::string_view category) const noexcept {
  return share_of(category_weight_, category, total_weight_);
}

double HistoryProfile::brand_share(std::string_view brand) const noexcept {
  return share_of(brand_weight_, brand, total_weight_);
}

std::optional<std::pair<std::string, double>> HistoryProfile::top_category() const {
  if (total_weight_ <= 0.0) return std::nullopt;
  const std::pair<std::string_view, double>* best = nullptr;
  for (const auto& entry : category_weight_) {
    if (best == nullptr || entry.second > best->second ||
        (entry.second == best->second && entry.first < best->first)) {
      best = &entry;
    }
  }
  if (best == nullptr || best->second <= 0.0) return std::nullopt;
  return std::make_pair(std::string(best->first),
                        std::clamp(best->second / total_weight_, 0.0, 1.0));
}

std::optional<HistoryProfile::Match> HistoryProfile::most_similar(std::span<const float> vector,
                                                                  ItemId exclude) const {
  if (!catalog_->has_vectors()) return std::nullopt;
  const std::size_t dim = catalog_->vector_dim();
  detail::require(vector.size() == dim, "HistoryProfile::most_similar: vector has ", vector.size(),
                  " values, the catalogue's vectors have ", dim);
  const MatrixView<const float> vectors = catalog_->vectors();
  const Match* best = nullptr;
  float best_similarity = 0.0F;
  for (std::size_t i = 0; i < used_.size(); ++i) {
    const Match& used = used_[i];
    if (used.item == exclude) continue;
    const std::span<const float> v = vectors.row(used_rows_[i]);
    float similarity = 0.0F;
    for (std::size_t j = 0; j < dim; ++j) similarity += v[j] * vector[j];
    if (best == nullptr || similarity > best_similarity ||
        (similarity == best_similarity && stronger(used.type, used.ts, best->type, best->ts))) {
      best = &used;
      best_similarity = similarity;
    }
  }
  if (best == nullptr) return std::nullopt;
  return Match{best->item, best->type, best->ts, best_similarity};
}

std::optional<HistoryProfile::Match> HistoryProfile::strongest_event(ItemId item) const noexcept {
  const auto it = std::lower_bound(used_.begin(), used_.end(), item,
                                   [](const Match& used, ItemId id) { return used.item < id; });
  if (it == used_.end() || it->item != item) return std::nullopt;
  return *it;
}

bool HistoryProfile::purchased(ItemId item) const noexcept {
  const std::optional<Match> event = strongest_event(item);
  return event.has_value() && event->type == EventType::purchase;
}

}  // namespace funnel
