// SPDX-License-Identifier: Apache-2.0
#include "funnel/deep_fine_ranker.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "funnel/error.hpp"
#include "internal/atomic_file.hpp"
#include "internal/checksum.hpp"
#include "internal/error_util.hpp"
#include "internal/rate_priors.hpp"

namespace funnel {

namespace {

using nlohmann::json;

constexpr std::string_view kFormatName = "funnel.deep_fine_ranker";
// Version 2 added the per-item view/click/purchase/dwell counts (rate
// priors) and counted_until_ts; version 1 files still load.
constexpr std::int64_t kFormatVersion = 2;
constexpr const char* kFeaturesFile = "features.json";
constexpr std::string_view kAttrPrefix = "attr:";
constexpr std::size_t kPriceBands = 10;  // deciles
constexpr std::array<std::string_view, kPriceBands> kPriceBandNames{"0", "1", "2", "3", "4",
                                                                    "5", "6", "7", "8", "9"};
// log(1 + target) above this would overflow float in expm1; no dwell lasts e^80 s.
constexpr float kMaxLogTarget = 80.0F;
constexpr std::size_t kNone = std::numeric_limits<std::size_t>::max();
// Whether the Featurizer appends to training examples (items by row) or to
// a request's batch storage (vectors copied in).
template <class Out>
constexpr bool kIsExamples = std::is_same_v<Out, DeepRankerExamples>;

// ---------------------------------------------------------------------------
// Feature definitions: the one place that says what each feature name means,
// used by training, build_examples() and score() alike.
// ---------------------------------------------------------------------------

enum class UserCategoricalKind : std::uint8_t { age_band, gender, location, profile };
enum class UserNumericKind : std::uint8_t { log_history_events, profile };
enum class ItemCategoricalKind : std::uint8_t { category, brand, price_band, attr };
enum class ItemNumericKind : std::uint8_t {
  coarse_score,
  log_price,
  log_popularity,
  price_vs_category,
  item_ctr_prior,
  item_cvr_prior,
  item_dwell_prior,
  category_ctr_prior,
  category_cvr_prior,
  category_dwell_prior,
  // User-item cross features, from the request's history tokens:
  sim_max,
  seen_item,
  purchased_item,
  category_share,
  brand_share,
  brand_purchased,
  relative_price_gap,
};

// Whether a numeric item feature depends on the user's history tokens.
constexpr bool is_cross(ItemNumericKind kind) noexcept { return kind >= ItemNumericKind::sim_max; }

// Whether a numeric item feature is a rate prior (time-dependent in training).
constexpr bool is_prior(ItemNumericKind kind) noexcept {
  return kind >= ItemNumericKind::item_ctr_prior && kind <= ItemNumericKind::category_dwell_prior;
}

// Whether a rate prior is over the item's category (else over the item).
constexpr bool is_category_prior(ItemNumericKind kind) noexcept {
  return kind >= ItemNumericKind::category_ctr_prior &&
         kind <= ItemNumericKind::category_dwell_prior;
}

// Rate priors: an item needs about this many views (clicks) before its own
// click (conversion, dwell) rate outweighs the global one.
constexpr double kPriorStrength = 20.0;

template <class Kind>
struct FeatureSpec {
  Kind kind;
  std::string key;  // profile / attribute key where the kind has one
};

FeatureSpec<UserCategoricalKind> parse_user_categorical(const std::string& name) {
  if (name == "age_band") return {UserCategoricalKind::age_band, {}};
  if (name == "gender") return {UserCategoricalKind::gender, {}};
  if (name == "location") return {UserCategoricalKind::location, {}};
  return {UserCategoricalKind::profile, name};
}

FeatureSpec<UserNumericKind> parse_user_numeric(const std::string& name) {
  if (name == "log_history_events") return {UserNumericKind::log_history_events, {}};
  return {UserNumericKind::profile, name};
}

std::optional<FeatureSpec<ItemCategoricalKind>> parse_item_categorical(const std::string& name) {
  if (name == "category") return FeatureSpec<ItemCategoricalKind>{ItemCategoricalKind::category};
  if (name == "brand") return FeatureSpec<ItemCategoricalKind>{ItemCategoricalKind::brand};
  if (name == "price_band") {
    return FeatureSpec<ItemCategoricalKind>{ItemCategoricalKind::price_band};
  }
  if (name.size() > kAttrPrefix.size() && name.starts_with(kAttrPrefix)) {
    return FeatureSpec<ItemCategoricalKind>{ItemCategoricalKind::attr,
                                            name.substr(kAttrPrefix.size())};
  }
  return std::nullopt;
}

std::optional<FeatureSpec<ItemNumericKind>> parse_item_numeric(const std::string& name) {
  static constexpr std::array<std::pair<std::string_view, ItemNumericKind>, 17> kNames{{
      {"coarse_score", ItemNumericKind::coarse_score},
      {"log_price", ItemNumericKind::log_price},
      {"log_popularity", ItemNumericKind::log_popularity},
      {"price_vs_category", ItemNumericKind::price_vs_category},
      {"item_ctr_prior", ItemNumericKind::item_ctr_prior},
      {"item_cvr_prior", ItemNumericKind::item_cvr_prior},
      {"item_dwell_prior", ItemNumericKind::item_dwell_prior},
      {"category_ctr_prior", ItemNumericKind::category_ctr_prior},
      {"category_cvr_prior", ItemNumericKind::category_cvr_prior},
      {"category_dwell_prior", ItemNumericKind::category_dwell_prior},
      {"sim_max", ItemNumericKind::sim_max},
      {"seen_item", ItemNumericKind::seen_item},
      {"purchased_item", ItemNumericKind::purchased_item},
      {"category_share", ItemNumericKind::category_share},
      {"brand_share", ItemNumericKind::brand_share},
      {"brand_purchased", ItemNumericKind::brand_purchased},
      {"relative_price_gap", ItemNumericKind::relative_price_gap},
  }};
  for (const auto& [known, kind] : kNames) {
    if (name == known) return FeatureSpec<ItemNumericKind>{kind, {}};
  }
  return std::nullopt;
}

std::string_view age_band(std::optional<int> age) noexcept {
  if (!age) return {};
  if (*age < 18) return "<18";
  if (*age < 25) return "18-24";
  if (*age < 35) return "25-34";
  if (*age < 45) return "35-44";
  if (*age < 55) return "45-54";
  return "55+";
}

// The raw value of a user categorical feature; empty = missing.
std::string_view user_categorical_value(const FeatureSpec<UserCategoricalKind>& spec,
                                        const UserProfile& profile) {
  switch (spec.kind) {
    case UserCategoricalKind::age_band: return age_band(profile.age);
    case UserCategoricalKind::gender: return profile.gender;
    case UserCategoricalKind::location: return profile.location;
    case UserCategoricalKind::profile: {
      const auto it = profile.categorical.find(spec.key);
      return it == profile.categorical.end() ? std::string_view{} : std::string_view(it->second);
    }
  }
  return {};
}

// The raw value of a user numeric feature; nullopt = missing.
std::optional<double> user_numeric_value(const FeatureSpec<UserNumericKind>& spec,
                                         const UserProfile& profile, std::size_t history_events) {
  if (spec.kind == UserNumericKind::log_history_events) {
    return std::log1p(static_cast<double>(history_events));
  }
  const auto it = profile.numeric.find(spec.key);
  if (it == profile.numeric.end() || !std::isfinite(it->second)) return std::nullopt;
  return it->second;
}

std::optional<double> log_price(const Item& item) noexcept {
  if (!item.price) return std::nullopt;
  return std::log1p(std::max(0.0, *item.price));
}

// Number of bounds b with log_price >= b: the decile band 0..bounds.size().
std::size_t price_band(double log_price_value, std::span<const double> bounds) noexcept {
  return static_cast<std::size_t>(std::upper_bound(bounds.begin(), bounds.end(), log_price_value) -
                                  bounds.begin());
}

// The raw value of an item categorical feature; empty = missing.
std::string_view item_categorical_value(const FeatureSpec<ItemCategoricalKind>& spec,
                                        const Item& item, std::span<const double> price_bounds) {
  switch (spec.kind) {
    case ItemCategoricalKind::category: return item.category;
    case ItemCategoricalKind::brand: return item.brand;
    case ItemCategoricalKind::price_band: {
      const std::optional<double> lp = log_price(item);
      if (!lp) return {};
      return kPriceBandNames[std::min(price_band(*lp, price_bounds), kPriceBands - 1)];
    }
    case ItemCategoricalKind::attr: {
      const auto it = item.attrs.find(spec.key);
      return it == item.attrs.end() ? std::string_view{} : std::string_view(it->second);
    }
  }
  return {};
}

// Deciles of log(1 + price) over the priced catalogue items (none without prices).
std::vector<double> price_band_bounds(const Catalog& catalog) {
  std::vector<double> values;
  for (const Item& item : catalog.items()) {
    if (const std::optional<double> lp = log_price(item)) values.push_back(*lp);
  }
  if (values.empty()) return {};
  std::sort(values.begin(), values.end());
  std::vector<double> bounds;
  bounds.reserve(kPriceBands - 1);
  const std::size_t n = values.size();
  for (std::size_t k = 1; k < kPriceBands; ++k) {
    bounds.push_back(values[std::min(n - 1, k * n / kPriceBands)]);
  }
  return bounds;
}

// Per catalogue row: log(1 + price) minus the median of log(1 + price) over
// the catalogue's priced items of the same category (the mean of the middle
// two for an even count); nullopt without a price or a category.
std::vector<std::optional<double>> price_vs_category(const Catalog& catalog) {
  const std::span<const Item> items = catalog.items();
  std::unordered_map<std::string_view, std::vector<double>> by_category;
  for (const Item& item : items) {
    const std::optional<double> lp = log_price(item);
    if (lp && !item.category.empty()) by_category[item.category].push_back(*lp);
  }
  std::unordered_map<std::string_view, double> median;
  for (auto& [category, values] : by_category) {
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    median.emplace(category,
                   n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]));
  }
  std::vector<std::optional<double>> out(items.size());
  for (std::size_t r = 0; r < items.size(); ++r) {
    const std::optional<double> lp = log_price(items[r]);
    if (!lp || items[r].category.empty()) continue;
    out[r] = *lp - median.at(items[r].category);
  }
  return out;
}

// Dense ids of a string field over the catalogue rows (-1 = empty).
std::vector<std::int32_t> dense_ids(const Catalog& catalog, std::string Item::*field) {
  std::unordered_map<std::string_view, std::int32_t> ids;
  std::vector<std::int32_t> out;
  out.reserve(catalog.size());
  for (const Item& item : catalog.items()) {
    const std::string& value = item.*field;
    if (value.empty()) {
      out.push_back(-1);
      continue;
    }
    out.push_back(ids.emplace(value, static_cast<std::int32_t>(ids.size())).first->second);
  }
  return out;
}

// Event counts of one item over the training period, all users (what
// log_popularity and the rate priors read). Also the file's record.
struct ItemCounts : detail::RateCounts {
  ItemId id = kNoItem;
  double events = 0.0;  // events of any type

  void add(EventType type, std::optional<double> dwell_s) noexcept {
    events += 1.0;
    RateCounts::add(type, dwell_s);
  }
  void add(const ItemCounts& o) noexcept {
    events += o.events;
    RateCounts::add(o);
  }
};

// The rate priors as the logistic ranker defines them (internal/rate_priors.hpp),
// shrunk towards the global rates of all counted items.
struct GlobalRates {
  detail::RateTargets targets;

  // Sums in the order given: train() and bind() both pass the saved records
  // (by id), so that a trained and a loaded ranker have bit-identical targets.
  static GlobalRates of(std::span<const ItemCounts> counts) {
    detail::RateCounts total;
    for (const ItemCounts& c : counts) total.add(c);
    return {detail::RateTargets::of(total)};
  }

  // The prior feature `kind` of an item (or category) with counts `c`.
  [[nodiscard]] double prior(ItemNumericKind kind, const ItemCounts& c) const {
    const double m = kPriorStrength;
    switch (kind) {
      case ItemNumericKind::item_ctr_prior:
      case ItemNumericKind::category_ctr_prior: return targets.ctr_prior(c, m);
      case ItemNumericKind::item_cvr_prior:
      case ItemNumericKind::category_cvr_prior: return targets.cvr_prior(c, m);
      case ItemNumericKind::item_dwell_prior:
      case ItemNumericKind::category_dwell_prior: return targets.dwell_prior(c, m);
      default: return 0.0;
    }
  }
};

// Per catalogue row, the running counts after each of its counted events
// (ts < until) in time order, so that a training example's priors count
// only the events strictly before it.
struct ItemEventTimes {
  struct Stamp {
    std::int64_t ts = 0;
    ItemCounts counts;  // of the events up to and including this one
  };
  std::int64_t until = std::numeric_limits<std::int64_t>::max();
  std::vector<std::vector<Stamp>> rows;
  std::vector<std::int32_t> category_of_row;   // dense category id per row, -1 = none
  std::vector<std::vector<Stamp>> categories;  // by dense category id

  // The counts of row `row` over its counted events with ts < before.
  [[nodiscard]] ItemCounts counts_before(std::size_t row, std::int64_t before) const {
    return last_before(rows[row], before);
  }
  // The same over all items of row `row`'s category (none without one).
  [[nodiscard]] ItemCounts category_counts_before(std::size_t row, std::int64_t before) const {
    const std::int32_t c = category_of_row[row];
    return c < 0 ? ItemCounts{} : last_before(categories[static_cast<std::size_t>(c)], before);
  }

 private:
  static ItemCounts last_before(const std::vector<Stamp>& list, std::int64_t before) {
    const auto end = std::lower_bound(list.begin(), list.end(), before,
                                      [](const Stamp& e, std::int64_t ts) { return e.ts < ts; });
    return end == list.begin() ? ItemCounts{} : std::prev(end)->counts;
  }
};

// Whether any feature is a rate prior (only those need running counts).
bool uses_priors(const DeepFeatureConfig& features) {
  return std::any_of(features.item_numeric.begin(), features.item_numeric.end(),
                     [](const std::string& name) {
                       const auto spec = parse_item_numeric(name);
                       return spec && is_prior(spec->kind);
                     });
}

// Per row: the summed counts of all rows of its category (none: zeros).
std::vector<ItemCounts> per_category(std::span<const std::int32_t> category_of_row,
                                     std::span<const ItemCounts> counts) {
  std::vector<ItemCounts> totals;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    const std::int32_t c = category_of_row[r];
    if (c < 0) continue;
    if (static_cast<std::size_t>(c) >= totals.size())
      totals.resize(static_cast<std::size_t>(c) + 1);
    totals[static_cast<std::size_t>(c)].add(counts[r]);
  }
  std::vector<ItemCounts> out(counts.size());
  for (std::size_t r = 0; r < counts.size(); ++r) {
    if (category_of_row[r] >= 0) out[r] = totals[static_cast<std::size_t>(category_of_row[r])];
  }
  return out;
}

// What the cross features need from one user's history tokens; filled by
// Featurizer::cross() and reused (its vectors keep their capacity).
struct UserCross {
  std::vector<std::size_t> rows;               // token rows, in token order (sim_max)
  std::vector<std::size_t> seen;               // distinct token rows, sorted
  std::vector<std::size_t> purchased;          // distinct rows of purchase tokens, sorted
  std::vector<std::int32_t> categories;        // category id per token with one, sorted
  std::vector<std::int32_t> brands;            // brand id per token with one, sorted
  std::vector<std::int32_t> purchased_brands;  // brand ids of purchase tokens, sorted, distinct
  std::size_t tokens = 0;
  std::optional<double> mean_price_vs_category;  // over distinct token rows that have one
};

// The recency bucket of an event as deep_ranker.hpp defines it.
std::int32_t recency_bucket(std::int64_t now, std::int64_t ts,
                            std::span<const std::int64_t> bounds) noexcept {
  const std::int64_t age = std::max<std::int64_t>(0, now - ts);
  return static_cast<std::int32_t>(std::upper_bound(bounds.begin(), bounds.end(), age) -
                                   bounds.begin());
}

// Heterogeneous lookup, so that serving looks up string_views without
// building strings.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
using VocabIndex = std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>>;
using ValueCounts = std::unordered_map<std::string, std::size_t, StringHash, std::equal_to<>>;

VocabIndex index_vocab(const DeepCategoricalFeature& feature) {
  VocabIndex index;
  index.reserve(feature.vocab.size());
  for (std::size_t i = 0; i < feature.vocab.size(); ++i) {
    index.emplace(feature.vocab[i], static_cast<std::int32_t>(i + 1));
  }
  return index;
}

std::int32_t lookup(const VocabIndex& vocab, std::string_view value) {
  if (value.empty()) return 0;
  const auto it = vocab.find(value);
  return it == vocab.end() ? 0 : it->second;
}

// One event of a user's timeline (catalogue items only), by catalogue row.
struct TimelineEvent {
  std::size_t row = 0;
  std::int64_t ts = 0;
  EventType type = EventType::view;
  std::optional<double> dwell_s;
};

const UserProfile& no_profile() {
  static const UserProfile empty;
  return empty;
}

// Turns users, history tokens and candidates into network inputs. Built
// once per model (item features are precomputed per catalogue row); its
// append functions are the only code that writes feature values, for
// training examples and for requests alike.
class Featurizer {
 public:
  Featurizer(const Catalog& catalog, const DeepFeatureConfig& features,
             const DeepRankerConfig& model, std::span<const double> price_bounds,
             std::span<const ItemCounts> counts, const GlobalRates& rates)
      : catalog_(&catalog),
        rates_(rates),
        history_length_(model.history_length),
        recency_bounds_(model.recency_bounds_s),
        item_categorical_count_(features.item_categorical.size()),
        item_numeric_count_(features.item_numeric.size()),
        history_feature_(model.history_category_feature) {
    assert(catalog.vector_dim() == model.item_vector_dim && counts.size() == catalog.size());
    assert(model.user_categorical.size() == features.user_categorical.size());
    assert(model.user_numeric.size() == features.user_numeric.size());
    assert(model.item_categorical.size() == item_categorical_count_);
    for (std::size_t f = 0; f < features.user_categorical.size(); ++f) {
      user_categorical_.push_back(parse_user_categorical(features.user_categorical[f]));
      user_vocab_.push_back(index_vocab(model.user_categorical[f]));
    }
    for (std::size_t f = 0; f < features.user_numeric.size(); ++f) {
      user_numeric_.push_back(parse_user_numeric(features.user_numeric[f]));
      user_fill_.push_back(model.user_numeric[f].mean);
    }

    const std::span<const Item> items = catalog.items();
    item_categorical_.resize(items.size() * item_categorical_count_);
    item_oov_.assign(items.size(), 0);
    for (std::size_t f = 0; f < item_categorical_count_; ++f) {
      const auto spec = parse_item_categorical(features.item_categorical[f]);
      assert(spec);
      const VocabIndex vocab = index_vocab(model.item_categorical[f]);
      for (std::size_t r = 0; r < items.size(); ++r) {
        const std::int32_t index =
            lookup(vocab, item_categorical_value(*spec, items[r], price_bounds));
        item_categorical_[r * item_categorical_count_ + f] = index;
        if (index == 0) ++item_oov_[r];
      }
    }
    item_numeric_.assign(items.size() * item_numeric_count_, 0.0F);
    std::vector<ItemCounts> category_counts;  // per row: its category's (when used)
    bool needs_relative_price = false;
    for (std::size_t f = 0; f < item_numeric_count_; ++f) {
      const auto spec = parse_item_numeric(features.item_numeric[f]);
      assert(spec);
      needs_relative_price = needs_relative_price ||
                             spec->kind == ItemNumericKind::price_vs_category ||
                             spec->kind == ItemNumericKind::relative_price_gap;
    }
    if (needs_relative_price) price_vs_category_ = price_vs_category(catalog);
    for (std::size_t f = 0; f < item_numeric_count_; ++f) {
      const ItemNumericKind kind = parse_item_numeric(features.item_numeric[f])->kind;
      if (kind == ItemNumericKind::coarse_score) {
        coarse_column_ = f;
        continue;
      }
      if (is_cross(kind)) {
        cross_columns_.emplace_back(f, kind);
        continue;
      }
      if (is_prior(kind)) prior_columns_.emplace_back(f, kind);
      if (is_category_prior(kind) && category_counts.empty()) {
        category_counts = per_category(dense_ids(catalog, &Item::category), counts);
      }
      for (std::size_t r = 0; r < items.size(); ++r) {
        double value = 0.0;
        switch (kind) {
          case ItemNumericKind::log_price: value = log_price(items[r]).value_or(0.0); break;
          case ItemNumericKind::log_popularity: value = std::log1p(counts[r].events); break;
          case ItemNumericKind::item_ctr_prior:
          case ItemNumericKind::item_cvr_prior:
          case ItemNumericKind::item_dwell_prior: value = rates.prior(kind, counts[r]); break;
          case ItemNumericKind::category_ctr_prior:
          case ItemNumericKind::category_cvr_prior:
          case ItemNumericKind::category_dwell_prior:
            value = rates.prior(kind, category_counts[r]);
            break;
          case ItemNumericKind::price_vs_category:
            value = price_vs_category_[r].value_or(0.0);
            break;
          default: break;
        }
        item_numeric_[r * item_numeric_count_ + f] = static_cast<float>(value);
      }
    }
    if (!cross_columns_.empty()) {
      category_id_ = dense_ids(catalog, &Item::category);
      brand_id_ = dense_ids(catalog, &Item::brand);
    }
  }

  // Training: rewrites the prior columns of the candidate row just appended
  // (its numeric features are `numeric`) with the counts of the events
  // strictly before `ts`, when ts is inside the counted period (after it,
  // the whole period's counts stay, as at serving time).
  void timed_priors(std::size_t row, std::int64_t ts, const ItemEventTimes& times,
                    std::span<float> numeric) const {
    if (prior_columns_.empty() || ts >= times.until) return;
    const ItemCounts before = times.counts_before(row, ts);
    const ItemCounts category_before = times.category_counts_before(row, ts);
    for (const auto& [column, kind] : prior_columns_) {
      numeric[column] = static_cast<float>(
          rates_.prior(kind, is_category_prior(kind) ? category_before : before));
    }
  }

  // Fills `out` from a user's history tokens (a no-op without cross features).
  void cross(std::span<const TimelineEvent> tokens, UserCross& out) const {
    out.rows.clear();
    out.seen.clear();
    out.purchased.clear();
    out.categories.clear();
    out.brands.clear();
    out.purchased_brands.clear();
    out.tokens = tokens.size();
    out.mean_price_vs_category.reset();
    if (cross_columns_.empty()) return;
    for (const TimelineEvent& token : tokens) {
      out.rows.push_back(token.row);
      if (category_id_[token.row] >= 0) out.categories.push_back(category_id_[token.row]);
      if (brand_id_[token.row] >= 0) out.brands.push_back(brand_id_[token.row]);
      if (token.type == EventType::purchase) {
        out.purchased.push_back(token.row);
        if (brand_id_[token.row] >= 0) out.purchased_brands.push_back(brand_id_[token.row]);
      }
    }
    const auto sort_unique = [](auto& v) {
      std::sort(v.begin(), v.end());
      v.erase(std::unique(v.begin(), v.end()), v.end());
    };
    out.seen = out.rows;
    sort_unique(out.seen);
    sort_unique(out.purchased);
    sort_unique(out.purchased_brands);
    std::sort(out.categories.begin(), out.categories.end());
    std::sort(out.brands.begin(), out.brands.end());
    if (!price_vs_category_.empty()) {
      double sum = 0.0;
      std::size_t n = 0;
      for (const std::size_t row : out.seen) {
        if (price_vs_category_[row]) {
          sum += *price_vs_category_[row];
          ++n;
        }
      }
      if (n > 0) out.mean_price_vs_category = sum / static_cast<double>(n);
    }
  }

  [[nodiscard]] std::size_t history_length() const noexcept { return history_length_; }

  // Appends one user row: profile features, `history_events` (the number of
  // catalogue events before the request, for log_history_events) and the
  // history tokens (oldest first, at most history_length) with recency
  // relative to `now`. `out` is training examples (items by catalogue row:
  // their item_vectors are the catalogue's vectors) or a request's batch
  // storage (vectors copied in). Returns the number of categorical values
  // out of vocabulary.
  template <class Out>
  std::size_t append_user(const UserProfile& profile, std::size_t history_events,
                          std::span<const TimelineEvent> tokens, std::int64_t now, Out& out) const {
    assert(tokens.size() <= history_length_);
    std::size_t oov = 0;
    for (std::size_t f = 0; f < user_categorical_.size(); ++f) {
      const std::int32_t index =
          lookup(user_vocab_[f], user_categorical_value(user_categorical_[f], profile));
      if (index == 0) ++oov;
      out.user_categorical.push_back(index);
    }
    for (std::size_t f = 0; f < user_numeric_.size(); ++f) {
      const std::optional<double> value =
          user_numeric_value(user_numeric_[f], profile, history_events);
      out.user_numeric.push_back(value ? static_cast<float>(*value) : user_fill_[f]);
    }
    for (const TimelineEvent& token : tokens) {
      if constexpr (kIsExamples<Out>) {
        out.history_item.push_back(static_cast<std::int32_t>(token.row));
      } else {
        const std::span<const float> v = catalog_->vectors().row(token.row);
        out.history_vectors.insert(out.history_vectors.end(), v.begin(), v.end());
      }
      out.history_category.push_back(
          item_categorical_[token.row * item_categorical_count_ + history_feature_]);
      out.history_type.push_back(static_cast<std::int32_t>(token.type));
      out.history_recency.push_back(recency_bucket(now, token.ts, recency_bounds_));
    }
    out.history_offsets.push_back(out.history_offsets.back() +
                                  static_cast<std::int64_t>(tokens.size()));
    if constexpr (kIsExamples<Out>) ++out.users;
    return oov;
  }

  // Appends one candidate row of catalogue row `row` for user row `user`
  // (`out` as in append_user). Returns the number of categorical values out
  // of vocabulary.
  template <class Out>
  std::size_t append_candidate(std::size_t row, float coarse_score, const UserCross& cross,
                               std::size_t user, Out& out) const {
    out.candidate_user.push_back(static_cast<std::int32_t>(user));
    if constexpr (kIsExamples<Out>) {
      out.candidate_item.push_back(static_cast<std::int32_t>(row));
    } else {
      const std::span<const float> v = catalog_->vectors().row(row);
      out.candidate_vectors.insert(out.candidate_vectors.end(), v.begin(), v.end());
    }
    const auto cat =
        item_categorical_.begin() + static_cast<std::ptrdiff_t>(row * item_categorical_count_);
    out.candidate_categorical.insert(out.candidate_categorical.end(), cat,
                                     cat + static_cast<std::ptrdiff_t>(item_categorical_count_));
    const std::size_t first = out.candidate_numeric.size();
    const auto num = item_numeric_.begin() + static_cast<std::ptrdiff_t>(row * item_numeric_count_);
    out.candidate_numeric.insert(out.candidate_numeric.end(), num,
                                 num + static_cast<std::ptrdiff_t>(item_numeric_count_));
    if (coarse_column_ != kNone) out.candidate_numeric[first + coarse_column_] = coarse_score;
    for (const auto& [column, kind] : cross_columns_) {
      out.candidate_numeric[first + column] = static_cast<float>(cross_value(kind, row, cross));
    }
    if constexpr (kIsExamples<Out>) ++out.candidates;
    return item_oov_[row];
  }

 private:
  // The cross feature `kind` of catalogue row `row` against `cross`.
  [[nodiscard]] double cross_value(ItemNumericKind kind, std::size_t row,
                                   const UserCross& cross) const {
    const auto count = [](const std::vector<std::int32_t>& sorted, std::int32_t id) {
      const auto [lo, hi] = std::equal_range(sorted.begin(), sorted.end(), id);
      return static_cast<double>(hi - lo);
    };
    switch (kind) {
      case ItemNumericKind::sim_max: {
        const std::span<const float> x = catalog_->vectors().row(row);
        double best = 0.0;
        bool any = false;
        for (const std::size_t h : cross.rows) {
          if (h == row) continue;
          const std::span<const float> v = catalog_->vectors().row(h);
          float dot = 0.0F;
          for (std::size_t j = 0; j < x.size(); ++j) dot += x[j] * v[j];
          best = any ? std::max(best, static_cast<double>(dot)) : static_cast<double>(dot);
          any = true;
        }
        return best;
      }
      case ItemNumericKind::seen_item:
        return std::binary_search(cross.seen.begin(), cross.seen.end(), row) ? 1.0 : 0.0;
      case ItemNumericKind::purchased_item:
        return std::binary_search(cross.purchased.begin(), cross.purchased.end(), row) ? 1.0 : 0.0;
      case ItemNumericKind::category_share:
        if (cross.tokens == 0 || category_id_[row] < 0) return 0.0;
        return count(cross.categories, category_id_[row]) / static_cast<double>(cross.tokens);
      case ItemNumericKind::brand_share:
        if (cross.tokens == 0 || brand_id_[row] < 0) return 0.0;
        return count(cross.brands, brand_id_[row]) / static_cast<double>(cross.tokens);
      case ItemNumericKind::brand_purchased:
        return brand_id_[row] >= 0 &&
                       std::binary_search(cross.purchased_brands.begin(),
                                          cross.purchased_brands.end(), brand_id_[row])
                   ? 1.0
                   : 0.0;
      case ItemNumericKind::relative_price_gap:
        if (!price_vs_category_[row] || !cross.mean_price_vs_category) return 0.0;
        return *price_vs_category_[row] - *cross.mean_price_vs_category;
      default: return 0.0;
    }
  }

  const Catalog* catalog_;
  GlobalRates rates_;
  std::size_t history_length_;
  std::vector<std::int64_t> recency_bounds_;
  std::vector<FeatureSpec<UserCategoricalKind>> user_categorical_;
  std::vector<VocabIndex> user_vocab_;
  std::vector<FeatureSpec<UserNumericKind>> user_numeric_;
  std::vector<float> user_fill_;  // a missing profile value: the feature's training mean
  std::size_t item_categorical_count_;
  std::size_t item_numeric_count_;
  std::size_t history_feature_;
  std::size_t coarse_column_ = kNone;
  std::vector<std::int32_t> item_categorical_;  // catalogue rows x item categorical features
  std::vector<std::uint32_t> item_oov_;         // per row: how many of them are index 0
  std::vector<float> item_numeric_;  // catalogue rows x item numeric features (coarse: 0)
  std::vector<std::pair<std::size_t, ItemNumericKind>> cross_columns_;  // (column, kind)
  std::vector<std::pair<std::size_t, ItemNumericKind>> prior_columns_;  // (column, kind)
  std::vector<std::optional<double>> price_vs_category_;  // per row; empty when unused
  std::vector<std::int32_t> category_id_;                 // per row, -1 = none (cross only)
  std::vector<std::int32_t> brand_id_;                    // per row, -1 = none (cross only)
};

// ---------------------------------------------------------------------------
// Examples from an event log
// ---------------------------------------------------------------------------

enum class LabelKind : std::uint8_t { click, cart, purchase, dwell };

std::vector<LabelKind> task_labels(const DeepRankerConfig& config) {
  std::vector<LabelKind> labels;
  for (const DeepTaskConfig& task : config.tasks) {
    const bool regression = task.kind == DeepTaskKind::regression;
    if (regression) {
      detail::require(task.label == "dwell", "DeepFineRanker: task '", task.name,
                      "' is a regression task with label '", task.label,
                      "'; regression tasks are labelled \"dwell\"");
      labels.push_back(LabelKind::dwell);
    } else if (task.label == "click") {
      labels.push_back(LabelKind::click);
    } else if (task.label == "cart") {
      labels.push_back(LabelKind::cart);
    } else if (task.label == "purchase") {
      labels.push_back(LabelKind::purchase);
    } else {
      detail::fail(ErrorCode::invalid_argument, "DeepFineRanker: task '", task.name, "' (",
                   to_string(task.kind), ") has label '", task.label,
                   "'; expected \"click\", \"cart\" or \"purchase\"");
    }
  }
  return labels;
}

// The users of a log (in order of first appearance) with their catalogue
// events in time order (stable for equal ts).
struct Timelines {
  std::vector<const UserProfile*> profiles;  // per user; nullptr when not in `users`
  std::vector<std::vector<TimelineEvent>> events;
};

Timelines make_timelines(const Catalog& catalog, std::span<const Event> events,
                         std::span<const UserProfile> users) {
  std::unordered_map<std::string_view, const UserProfile*> profile_of;
  profile_of.reserve(users.size());
  for (const UserProfile& user : users) profile_of.emplace(user.id, &user);
  std::unordered_map<std::string_view, std::size_t> user_index;
  Timelines out;
  for (const Event& event : events) {
    const std::size_t row = catalog.index_of(event.item);
    if (row == Catalog::npos) continue;  // unknown items are skipped
    const auto [it, inserted] = user_index.emplace(event.user, out.events.size());
    if (inserted) {
      const auto found = profile_of.find(event.user);
      out.profiles.push_back(found == profile_of.end() ? nullptr : found->second);
      out.events.emplace_back();
    }
    out.events[it->second].push_back({row, event.ts, event.type, event.dwell_s});
  }
  for (std::vector<TimelineEvent>& timeline : out.events) {
    std::stable_sort(timeline.begin(), timeline.end(),
                     [](const TimelineEvent& a, const TimelineEvent& b) { return a.ts < b.ts; });
  }
  return out;
}

// An example before its features: who, when, which item; labels separately.
struct Skeleton {
  std::size_t user = 0;
  std::size_t row = 0;
  std::int64_t ts = 0;
};

struct Skeletons {
  std::vector<Skeleton> examples;  // ordered by ts (stable)
  std::vector<float> labels;       // examples x tasks
};

// (catalogue row, ts, timeline position) of one event type, sorted.
using EventIndex = std::vector<std::array<std::int64_t, 3>>;

// The first entry of `index` for `row` with ts in (after, until], or null.
const std::array<std::int64_t, 3>* first_within(const EventIndex& index, std::size_t row,
                                                std::int64_t after, std::int64_t until) {
  const auto r = static_cast<std::int64_t>(row);
  const auto it =
      std::lower_bound(index.begin(), index.end(), std::array<std::int64_t, 3>{r, after + 1, 0});
  if (it == index.end() || (*it)[0] != r || (*it)[1] > until) return nullptr;
  return &*it;
}

// The outcome of one impression, as the labels need it.
struct Outcome {
  bool clicked = false;
  std::int64_t click_ts = 0;
  std::optional<double> dwell_s;
  bool is_cart = false;      // the impression is itself a cart (sampled mode)
  bool is_purchase = false;  // the impression is itself a purchase (sampled mode)
};

// Uniform double in [0, 1) from the raw engine output: the same on every
// standard library (std::uniform_real_distribution is not).
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11U) * 0x1.0p-53; }

Skeletons make_skeletons(const Catalog& catalog, const Timelines& timelines,
                         const DeepExampleConfig& config, std::span<const LabelKind> labels) {
  const std::int64_t window = config.attribution_window_s;
  const bool sampled = config.sampled_negatives > 0;
  std::mt19937_64 rng(config.seed);
  Skeletons out;
  std::vector<std::size_t> negatives;
  std::vector<std::size_t> interacted;

  for (std::size_t u = 0; u < timelines.events.size(); ++u) {
    const std::vector<TimelineEvent>& timeline = timelines.events[u];
    EventIndex clicks;
    EventIndex carts;
    EventIndex purchases;
    for (std::size_t p = 0; p < timeline.size(); ++p) {
      const TimelineEvent& e = timeline[p];
      const std::array<std::int64_t, 3> entry{static_cast<std::int64_t>(e.row), e.ts,
                                              static_cast<std::int64_t>(p)};
      if (e.type == EventType::click) clicks.push_back(entry);
      if (e.type == EventType::cart) carts.push_back(entry);
      if (e.type == EventType::purchase) purchases.push_back(entry);
    }
    std::sort(clicks.begin(), clicks.end());
    std::sort(carts.begin(), carts.end());
    std::sort(purchases.begin(), purchases.end());
    if (sampled) {
      interacted.clear();
      for (const TimelineEvent& e : timeline) interacted.push_back(e.row);
      std::sort(interacted.begin(), interacted.end());
      interacted.erase(std::unique(interacted.begin(), interacted.end()), interacted.end());
    }

    const auto add = [&](std::size_t row, std::int64_t ts, const Outcome& o) {
      out.examples.push_back({u, row, ts});
      for (const LabelKind kind : labels) {
        float label = 0.0F;
        switch (kind) {
          case LabelKind::click: label = o.clicked ? 1.0F : 0.0F; break;
          case LabelKind::cart:
            label = o.clicked && (o.is_cart || first_within(carts, row, o.click_ts,
                                                            o.click_ts + window) != nullptr)
                        ? 1.0F
                        : 0.0F;
            break;
          case LabelKind::purchase:
            label = o.clicked && (o.is_purchase || first_within(purchases, row, o.click_ts,
                                                                o.click_ts + window) != nullptr)
                        ? 1.0F
                        : 0.0F;
            break;
          case LabelKind::dwell:
            label = o.clicked && o.dwell_s
                        ? static_cast<float>(std::log1p(std::max(0.0, *o.dwell_s)))
                        : std::numeric_limits<float>::quiet_NaN();
            break;
        }
        out.labels.push_back(label);
      }
    };

    for (const TimelineEvent& e : timeline) {
      if (!sampled) {
        if (e.type != EventType::view) continue;
        Outcome o;
        if (const auto* click = first_within(clicks, e.row, e.ts, e.ts + window)) {
          o.clicked = true;
          o.click_ts = (*click)[1];
          o.dwell_s = timeline[static_cast<std::size_t>((*click)[2])].dwell_s;
        }
        // Only unclicked impressions draw, so negative_keep = 1 draws nothing.
        if (!o.clicked && config.negative_keep < 1.0 && uniform01(rng) >= config.negative_keep) {
          continue;
        }
        add(e.row, e.ts, o);
        continue;
      }
      if (e.type == EventType::view) continue;  // views are history only in this mode
      Outcome positive;
      positive.clicked = true;
      positive.click_ts = e.ts;
      positive.dwell_s = e.type == EventType::click ? e.dwell_s : std::nullopt;
      positive.is_cart = e.type == EventType::cart;
      positive.is_purchase = e.type == EventType::purchase;
      add(e.row, e.ts, positive);

      // Distinct catalogue items the user never interacted with.
      const std::size_t available = catalog.size() - interacted.size();
      negatives.clear();
      if (available <= config.sampled_negatives) {
        for (std::size_t r = 0; r < catalog.size(); ++r) {
          if (!std::binary_search(interacted.begin(), interacted.end(), r)) negatives.push_back(r);
        }
      } else {
        while (negatives.size() < config.sampled_negatives) {
          const auto r = static_cast<std::size_t>(rng() % catalog.size());
          if (std::binary_search(interacted.begin(), interacted.end(), r) ||
              std::find(negatives.begin(), negatives.end(), r) != negatives.end()) {
            continue;
          }
          negatives.push_back(r);
        }
      }
      for (const std::size_t r : negatives) add(r, e.ts, Outcome{});
    }
  }

  // Order by time, keeping build order on ties (so one user's examples of
  // one timestamp stay together and share a user row).
  const std::size_t tasks = labels.size();
  std::vector<std::size_t> order(out.examples.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return out.examples[a].ts < out.examples[b].ts;
  });
  Skeletons sorted;
  sorted.examples.reserve(order.size());
  sorted.labels.reserve(out.labels.size());
  for (const std::size_t i : order) {
    sorted.examples.push_back(out.examples[i]);
    const auto first = out.labels.begin() + static_cast<std::ptrdiff_t>(i * tasks);
    sorted.labels.insert(sorted.labels.end(), first, first + static_cast<std::ptrdiff_t>(tasks));
  }
  return sorted;
}

// How many of n time-ordered examples the latest `fraction` holds out: at
// least one and never all, when there are two or more.
std::size_t validation_size(std::size_t n, double fraction) {
  if (fraction <= 0.0 || n < 2) return 0;
  const auto wanted = static_cast<std::size_t>(std::llround(fraction * static_cast<double>(n)));
  return std::clamp<std::size_t>(wanted, 1, n - 1);
}

// Per catalogue row: the counts of the events with ts < until (all users),
// and, when `times` is not null, their running counts in time order.
std::vector<ItemCounts> count_events(const Catalog& catalog, const Timelines& timelines,
                                     std::int64_t until, ItemEventTimes* times) {
  std::vector<const TimelineEvent*> counted;
  for (const std::vector<TimelineEvent>& timeline : timelines.events) {
    for (const TimelineEvent& e : timeline) {
      if (e.ts < until) counted.push_back(&e);
    }
  }
  // Time order (stable: a user's events keep theirs) for the running counts.
  std::stable_sort(counted.begin(), counted.end(),
                   [](const TimelineEvent* a, const TimelineEvent* b) { return a->ts < b->ts; });
  std::vector<ItemCounts> counts(catalog.size());
  for (std::size_t r = 0; r < catalog.size(); ++r) counts[r].id = catalog.items()[r].id;
  std::vector<ItemCounts> category_running;
  if (times != nullptr) {
    times->until = until;
    times->rows.assign(catalog.size(), {});
    times->category_of_row = dense_ids(catalog, &Item::category);
    const std::int32_t top =
        times->category_of_row.empty()
            ? -1
            : *std::max_element(times->category_of_row.begin(), times->category_of_row.end());
    const std::size_t n = top < 0 ? 0 : static_cast<std::size_t>(top) + 1;
    times->categories.assign(n, {});
    category_running.assign(n, {});
  }
  for (const TimelineEvent* e : counted) {
    counts[e->row].add(e->type, e->dwell_s);
    if (times == nullptr) continue;
    times->rows[e->row].push_back({e->ts, counts[e->row]});
    const std::int32_t c = times->category_of_row[e->row];
    if (c >= 0) {
      const auto k = static_cast<std::size_t>(c);
      category_running[k].add(e->type, e->dwell_s);
      times->categories[k].push_back({e->ts, category_running[k]});
    }
  }
  return counts;
}

// The examples [begin, end) of `skeletons` with their features. Examples of
// one user at one timestamp share a user row; each sees the user's events
// strictly before its timestamp.
DeepRankerExamples materialize(const Featurizer& featurizer, const Catalog& catalog,
                               const Timelines& timelines, const Skeletons& skeletons,
                               const ItemEventTimes& times, std::size_t begin, std::size_t end,
                               std::size_t tasks) {
  DeepRankerExamples out;
  const std::size_t dim = catalog.vector_dim();
  // Events and candidates refer to the catalogue's vectors by row.
  detail::require(
      catalog.size() <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
      "DeepFineRanker: the catalogue has ", catalog.size(),
      " items, more than the examples' int32 item rows can index");
  out.items = catalog.size();
  const MatrixView<const float> vectors = catalog.vectors();
  out.item_vectors.assign(vectors.data, vectors.data + vectors.size());
  std::vector<double> mean(dim, 0.0);
  bool has_history = false;
  UserCross cross;
  for (std::size_t i = begin; i < end; ++i) {
    const Skeleton& example = skeletons.examples[i];
    const bool new_user = i == begin || example.user != skeletons.examples[i - 1].user ||
                          example.ts != skeletons.examples[i - 1].ts;
    if (new_user) {
      const std::vector<TimelineEvent>& timeline = timelines.events[example.user];
      const auto before = static_cast<std::size_t>(
          std::lower_bound(timeline.begin(), timeline.end(), example.ts,
                           [](const TimelineEvent& e, std::int64_t ts) { return e.ts < ts; }) -
          timeline.begin());
      const std::size_t first =
          before > featurizer.history_length() ? before - featurizer.history_length() : 0;
      const std::span<const TimelineEvent> tokens =
          std::span(timeline).subspan(first, before - first);
      const UserProfile* profile = timelines.profiles[example.user];
      featurizer.append_user(profile != nullptr ? *profile : no_profile(), before, tokens,
                             example.ts, out);
      featurizer.cross(tokens, cross);
      // No coarse stage ran in training: what an exact inner-product stage
      // returns for the user vector "mean of the history tokens, normalised
      // to unit length" (a Pipeline's user vector has unit length too; an
      // unnormalised mean gave scores a few times smaller than those the
      // Pipeline passes at serving time).
      std::fill(mean.begin(), mean.end(), 0.0);
      for (const TimelineEvent& token : tokens) {
        const std::span<const float> v = catalog.vectors().row(token.row);
        for (std::size_t j = 0; j < dim; ++j) mean[j] += v[j];
      }
      double norm = 0.0;
      for (const double m : mean) norm += m * m;
      norm = std::sqrt(norm);
      if (norm > 0.0) {
        for (double& m : mean) m /= norm;
      }
      has_history = !tokens.empty();
    }
    double coarse = 0.0;
    if (has_history) {
      const std::span<const float> v = catalog.vectors().row(example.row);
      for (std::size_t j = 0; j < dim; ++j) coarse += static_cast<double>(v[j]) * mean[j];
    }
    featurizer.append_candidate(example.row, static_cast<float>(coarse), cross, out.users - 1, out);
    const std::size_t width = out.candidate_numeric.size() / out.candidates;
    featurizer.timed_priors(
        example.row, example.ts, times,
        std::span<float>(out.candidate_numeric).subspan(out.candidate_numeric.size() - width));
    const auto labels = skeletons.labels.begin() + static_cast<std::ptrdiff_t>(i * tasks);
    out.labels.insert(out.labels.end(), labels, labels + static_cast<std::ptrdiff_t>(tasks));
    out.ts.push_back(example.ts);
  }
  return out;
}

// Standardisation statistics of a column of training values; a constant
// column gets std 1 so that it stays at 0 after standardising.
std::pair<float, float> column_stats(std::span<const double> values,
                                     std::optional<double> fixed_mean) {
  if (values.empty()) return {fixed_mean ? static_cast<float>(*fixed_mean) : 0.0F, 1.0F};
  const double mean = fixed_mean.value_or(std::accumulate(values.begin(), values.end(), 0.0) /
                                          static_cast<double>(values.size()));
  double sum = 0.0;
  for (const double v : values) sum += (v - mean) * (v - mean);
  double stddev = std::sqrt(sum / static_cast<double>(values.size()));
  if (!(stddev > 1e-6 * std::max(1.0, std::abs(mean))) || !std::isfinite(stddev)) stddev = 1.0;
  return {static_cast<float>(mean), static_cast<float>(stddev)};
}

// Values seen at least min_count times, sorted (index order of the vocabulary).
std::vector<std::string> vocabulary(const ValueCounts& counts, std::size_t min_count) {
  std::vector<std::string> vocab;
  for (const auto& [value, count] : counts) {
    if (count >= min_count) vocab.push_back(value);
  }
  std::sort(vocab.begin(), vocab.end());
  return vocab;
}

void count_value(ValueCounts& counts, std::string_view value, std::size_t n) {
  if (value.empty() || n == 0) return;
  const auto it = counts.find(value);
  if (it == counts.end()) {
    counts.emplace(std::string(value), n);
  } else {
    it->second += n;
  }
}

std::string document_checksum(json document) {
  document.erase("checksum");
  return detail::to_hex(detail::checksum64(document.dump()));
}

// Reads fields of features.json with messages "<file>: field '<path>': ...".
class FieldReader {
 public:
  explicit FieldReader(std::filesystem::path path) : path_(std::move(path)) {}

  [[noreturn]] void fail(std::string_view field, std::string_view what) const {
    if (field.empty()) detail::fail(ErrorCode::format, path_.string(), ": ", what);
    detail::fail(ErrorCode::format, path_.string(), ": field '", field, "': ", what);
  }

  const json& member(const json& parent, std::string_view parent_name, const char* name) const {
    if (!parent.is_object()) fail(parent_name, "expected an object");
    const auto it = parent.find(name);
    if (it == parent.end()) fail(join(parent_name, name), "missing");
    return *it;
  }

  // Rejects keys other than `known` (they would mean a newer format).
  void only(const json& object, std::string_view name,
            std::initializer_list<std::string_view> known) const {
    only(object, name, std::span<const std::string_view>(known.begin(), known.size()));
  }
  void only(const json& object, std::string_view name,
            std::span<const std::string_view> known) const {
    for (const auto& [key, value] : object.items()) {
      if (std::find(known.begin(), known.end(), key) == known.end()) {
        fail(join(name, key), "unknown field (written by a newer funnel?)");
      }
    }
  }

  [[nodiscard]] double number(const json& value, std::string_view field) const {
    if (!value.is_number()) fail(field, detail::cat("expected a number, got ", value.type_name()));
    const auto v = value.get<double>();
    if (!std::isfinite(v)) fail(field, "not a finite number");
    return v;
  }

  [[nodiscard]] std::int64_t integer(const json& value, std::string_view field) const {
    if (!value.is_number_integer()) {
      fail(field, detail::cat("expected an integer, got ", value.dump()));
    }
    return value.get<std::int64_t>();
  }

  [[nodiscard]] std::size_t count(const json& value, std::string_view field) const {
    const std::int64_t v = integer(value, field);
    if (v < 0) fail(field, detail::cat("expected a count >= 0, got ", v));
    return static_cast<std::size_t>(v);
  }

  [[nodiscard]] std::string string(const json& value, std::string_view field) const {
    if (!value.is_string()) fail(field, detail::cat("expected a string, got ", value.type_name()));
    return value.get<std::string>();
  }

  const json& array(const json& value, std::string_view field) const {
    if (!value.is_array()) fail(field, detail::cat("expected an array, got ", value.type_name()));
    return value;
  }

  [[nodiscard]] std::vector<std::string> strings(const json& value, std::string_view field) const {
    array(value, field);
    std::vector<std::string> out;
    for (std::size_t i = 0; i < value.size(); ++i) {
      out.push_back(string(value[i], detail::cat(field, "[", i, "]")));
    }
    return out;
  }

  static std::string join(std::string_view parent, std::string_view name) {
    return parent.empty() ? std::string(name) : detail::cat(parent, ".", name);
  }

 private:
  std::filesystem::path path_;
};

// The serving scratch of one thread: the request's batch arrays and its
// selected history, reused so that steady-state requests allocate nothing.
struct Workspace {
  DeepRankerBatchStorage batch;
  std::vector<TimelineEvent> tokens;
  UserCross cross;
};

// The batch view of a request's storage (one user, its candidates).
DeepRankerBatch request_batch(const DeepRankerBatchStorage& s) {
  DeepRankerBatch b;
  b.users = s.history_offsets.size() - 1;
  b.user_categorical = s.user_categorical;
  b.user_numeric = s.user_numeric;
  b.history_offsets = s.history_offsets;
  b.history_vectors = s.history_vectors;
  b.history_category = s.history_category;
  b.history_type = s.history_type;
  b.history_recency = s.history_recency;
  b.candidates = s.candidate_user.size();
  b.candidate_user = s.candidate_user;
  b.candidate_vectors = s.candidate_vectors;
  b.candidate_categorical = s.candidate_categorical;
  b.candidate_numeric = s.candidate_numeric;
  return b;
}

}  // namespace

// ---------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------

void DeepFeatureConfig::validate() const {
  const auto check_names = [](const std::vector<std::string>& a, const char* a_name,
                              const std::vector<std::string>& b, const char* b_name) {
    std::unordered_set<std::string_view> seen;
    for (const auto& [list, list_name] : {std::pair{&a, a_name}, std::pair{&b, b_name}}) {
      for (std::size_t i = 0; i < list->size(); ++i) {
        const std::string& name = (*list)[i];
        detail::require(!name.empty(), "DeepFeatureConfig.", list_name, "[", i, "] is empty");
        detail::require(seen.insert(name).second, "DeepFeatureConfig.", list_name, "[", i,
                        "]: feature '", name, "' is listed twice");
      }
    }
  };
  check_names(user_categorical, "user_categorical", user_numeric, "user_numeric");
  check_names(item_categorical, "item_categorical", item_numeric, "item_numeric");
  for (std::size_t i = 0; i < item_categorical.size(); ++i) {
    detail::require(parse_item_categorical(item_categorical[i]).has_value(),
                    "DeepFeatureConfig.item_categorical[", i, "]: unknown feature '",
                    item_categorical[i], "' (expected category, brand, price_band or attr:<key>)");
  }
  for (std::size_t i = 0; i < item_numeric.size(); ++i) {
    detail::require(parse_item_numeric(item_numeric[i]).has_value(),
                    "DeepFeatureConfig.item_numeric[", i, "]: unknown feature '", item_numeric[i],
                    "' (expected coarse_score, log_price, log_popularity, price_vs_category, "
                    "item_ctr_prior, item_cvr_prior, item_dwell_prior, category_ctr_prior, "
                    "category_cvr_prior, category_dwell_prior, sim_max, "
                    "seen_item, purchased_item, category_share, brand_share, brand_purchased or "
                    "relative_price_gap)");
  }
  detail::require(!item_categorical.empty(),
                  "DeepFeatureConfig.item_categorical is empty (history tokens need one)");
  detail::require(std::find(item_categorical.begin(), item_categorical.end(), history_category) !=
                      item_categorical.end(),
                  "DeepFeatureConfig.history_category '", history_category,
                  "' is not one of item_categorical");
  detail::require(embedding_dim > 0, "DeepFeatureConfig.embedding_dim must be > 0");
  detail::require(min_count > 0, "DeepFeatureConfig.min_count must be > 0");
}

void DeepExampleConfig::validate() const {
  detail::require(attribution_window_s > 0,
                  "DeepExampleConfig.attribution_window_s must be > 0, got ", attribution_window_s);
  detail::require(std::isfinite(negative_keep) && negative_keep > 0.0 && negative_keep <= 1.0,
                  "DeepExampleConfig.negative_keep must be in (0, 1], got ", negative_keep);
  detail::require(
      std::isfinite(validation_fraction) && validation_fraction >= 0.0 && validation_fraction < 1.0,
      "DeepExampleConfig.validation_fraction must be in [0, 1), got ", validation_fraction);
}

// ---------------------------------------------------------------------------
// The ranker
// ---------------------------------------------------------------------------

struct DeepFineRanker::Impl {
  std::shared_ptr<const Catalog> catalog;
  std::unique_ptr<DeepRankerModel> model;
  DeepFeatureConfig features;
  std::vector<double> price_bounds;
  std::vector<ItemCounts> item_counts;  // of the training period, items with events, by id
  std::int64_t counted_until = std::numeric_limits<std::int64_t>::max();  // the period's end
  std::vector<std::string> objectives;
  std::vector<std::size_t> regression_columns;
  std::optional<Featurizer> featurizer;
  mutable std::atomic<std::uint64_t> requests{0};
  mutable std::atomic<std::uint64_t> candidates{0};
  mutable std::atomic<std::uint64_t> out_of_vocabulary{0};

  // Binds the model to the catalogue (precomputes item features).
  void bind() {
    std::vector<ItemCounts> counts(catalog->size());
    for (const ItemCounts& c : item_counts) {
      const std::size_t row = catalog->index_of(c.id);
      if (row != Catalog::npos) counts[row] = c;
    }
    const DeepRankerConfig& config = model->config();
    featurizer.emplace(*catalog, features, config, price_bounds, counts,
                       GlobalRates::of(item_counts));
    for (std::size_t t = 0; t < config.tasks.size(); ++t) {
      objectives.push_back(config.tasks[t].name);
      if (config.tasks[t].kind == DeepTaskKind::regression) regression_columns.push_back(t);
    }
  }
};

DeepFineRanker::DeepFineRanker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeepFineRanker::~DeepFineRanker() = default;

std::span<const std::string> DeepFineRanker::objectives() const { return impl_->objectives; }

std::string DeepFineRanker::name() const {
  return detail::cat("deep (", to_string(impl_->model->config().body), ")");
}

const DeepRankerModel& DeepFineRanker::model() const noexcept { return *impl_->model; }
const DeepFeatureConfig& DeepFineRanker::features() const noexcept { return impl_->features; }

DeepFineRankerStats DeepFineRanker::stats() const noexcept {
  DeepFineRankerStats s;
  s.requests = impl_->requests.load(std::memory_order_relaxed);
  s.candidates = impl_->candidates.load(std::memory_order_relaxed);
  s.out_of_vocabulary = impl_->out_of_vocabulary.load(std::memory_order_relaxed);
  return s;
}

void DeepFineRanker::score(const UserContext& user, std::span<const Candidate> candidates,
                           MatrixView<float> scores) const {
  const std::size_t tasks = impl_->objectives.size();
  detail::require(scores.rows == candidates.size() && scores.cols == tasks,
                  "DeepFineRanker::score: scores is ", scores.rows, " x ", scores.cols,
                  ", expected ", candidates.size(), " x ", tasks);
  const Catalog& catalog = *impl_->catalog;
  const Featurizer& featurizer = *impl_->featurizer;
  thread_local Workspace workspace;
  DeepRankerBatchStorage& batch = workspace.batch;

  // The history before the request, as in training: catalogue items only,
  // strictly before now_ts (an unset clock: all of it, as of its latest
  // event), the most recent history_length as tokens, oldest first.
  const bool clock_set = user.now_ts != 0;
  std::int64_t now = user.now_ts;
  std::vector<TimelineEvent>& tokens = workspace.tokens;
  tokens.clear();
  std::size_t history_events = 0;
  bool any = false;
  for (auto it = user.history.rbegin(); it != user.history.rend(); ++it) {
    if (clock_set && it->ts >= user.now_ts) continue;
    const std::size_t row = catalog.index_of(it->item);
    if (row == Catalog::npos) continue;
    ++history_events;
    if (!clock_set) now = any ? std::max(now, it->ts) : it->ts;
    any = true;
    if (tokens.size() < featurizer.history_length()) {
      tokens.push_back({row, it->ts, it->type, it->dwell_s});
    }
  }
  std::reverse(tokens.begin(), tokens.end());

  batch.user_categorical.clear();
  batch.user_numeric.clear();
  batch.history_offsets.assign(1, 0);
  batch.history_vectors.clear();
  batch.history_category.clear();
  batch.history_type.clear();
  batch.history_recency.clear();
  batch.candidate_user.clear();
  batch.candidate_vectors.clear();
  batch.candidate_categorical.clear();
  batch.candidate_numeric.clear();
  std::size_t oov = featurizer.append_user(user.profile, history_events, tokens, now, batch);
  featurizer.cross(tokens, workspace.cross);
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const Candidate& candidate = candidates[i];
    const std::size_t row = catalog.index_of(candidate.id);
    detail::require(row != Catalog::npos, "DeepFineRanker::score: candidate ", i, " has item id ",
                    candidate.id, ", which is not in the catalogue");
    detail::require(std::isfinite(candidate.coarse_score), "DeepFineRanker::score: candidate ", i,
                    " (item ", candidate.id, ") has a non-finite coarse_score");
    oov += featurizer.append_candidate(row, candidate.coarse_score, workspace.cross, 0, batch);
  }
  if (!candidates.empty()) {
    impl_->model->forward(request_batch(batch), scores);
    for (std::size_t i = 0; i < candidates.size(); ++i) {
      for (const std::size_t t : impl_->regression_columns) {
        // The network predicts log(1 + target); report the target (>= 0).
        scores(i, t) = std::expm1(std::clamp(scores(i, t), 0.0F, kMaxLogTarget));
      }
    }
  }
  impl_->requests.fetch_add(1, std::memory_order_relaxed);
  impl_->candidates.fetch_add(candidates.size(), std::memory_order_relaxed);
  impl_->out_of_vocabulary.fetch_add(oov, std::memory_order_relaxed);
}

DeepRankerExamples DeepFineRanker::build_examples(std::span<const Event> events,
                                                  std::span<const UserProfile> users,
                                                  const DeepExampleConfig& config,
                                                  DeepRankerExamples* validation) const {
  config.validate();
  const Catalog& catalog = *impl_->catalog;
  const std::vector<LabelKind> labels = task_labels(impl_->model->config());
  const Timelines timelines = make_timelines(catalog, events, users);
  const Skeletons skeletons = make_skeletons(catalog, timelines, config, labels);
  const std::size_t n = skeletons.examples.size();
  const std::size_t n_validation =
      validation != nullptr ? validation_size(n, config.validation_fraction) : 0;
  const std::size_t n_train = n - n_validation;
  // Rate priors of examples inside the model's counted period count the
  // events of this log before them, as in training.
  ItemEventTimes times;
  if (uses_priors(impl_->features)) count_events(catalog, timelines, impl_->counted_until, &times);
  if (validation != nullptr) {
    *validation = materialize(*impl_->featurizer, catalog, timelines, skeletons, times, n_train, n,
                              labels.size());
  }
  return materialize(*impl_->featurizer, catalog, timelines, skeletons, times, 0, n_train,
                     labels.size());
}

std::unique_ptr<DeepFineRanker> DeepFineRanker::train(std::shared_ptr<const Catalog> catalog,
                                                      std::span<const Event> events,
                                                      std::span<const UserProfile> users,
                                                      const DeepFineRankerTrainConfig& config,
                                                      DeepTrainReport* report,
                                                      const DeepRankerServeOptions& serve) {
  detail::require(catalog != nullptr, "DeepFineRanker::train: the catalogue is null");
  detail::require(catalog->has_vectors(),
                  "DeepFineRanker::train: the catalogue has no vectors (call "
                  "Catalog::set_vectors with the item embeddings first)");
  config.features.validate();
  config.examples.validate();
  config.train.validate();
  const DeepFeatureConfig& features = config.features;
  const std::vector<LabelKind> labels = task_labels(config.model);

  const Timelines timelines = make_timelines(*catalog, events, users);
  const Skeletons skeletons = make_skeletons(*catalog, timelines, config.examples, labels);
  const std::size_t n = skeletons.examples.size();
  detail::require(n >= 2, "DeepFineRanker::train: the log gives ", n, " examples (",
                  config.examples.sampled_negatives > 0
                      ? "non-view events of catalogue items, with sampled negatives"
                      : "views of catalogue items",
                  "), need at least 2");
  const std::size_t n_validation = validation_size(n, config.examples.validation_fraction);
  const std::size_t n_train = n - n_validation;

  // The training period ends where the held-out examples begin.
  const std::int64_t period_end =
      n_validation > 0 ? skeletons.examples[n_train].ts : std::numeric_limits<std::int64_t>::max();
  ItemEventTimes times;  // only rate priors need the running counts
  const std::vector<ItemCounts> counts =
      count_events(*catalog, timelines, period_end, uses_priors(features) ? &times : nullptr);
  // What save() writes: the items with events, by id.
  std::vector<ItemCounts> records;
  for (const ItemCounts& c : counts) {
    if (c.events > 0.0) records.push_back(c);
  }
  std::sort(records.begin(), records.end(),
            [](const ItemCounts& a, const ItemCounts& b) { return a.id < b.id; });
  std::vector<double> price_bounds = price_band_bounds(*catalog);

  // Vocabularies and the missing-value fill of profile numerics, from the
  // training examples (each example counts its user's and its item's values).
  std::vector<std::size_t> user_examples(timelines.events.size(), 0);
  std::vector<std::size_t> row_examples(catalog->size(), 0);
  for (std::size_t i = 0; i < n_train; ++i) {
    ++user_examples[skeletons.examples[i].user];
    ++row_examples[skeletons.examples[i].row];
  }
  DeepRankerConfig model = config.model;
  model.item_vector_dim = catalog->vector_dim();
  model.user_categorical.clear();
  model.user_numeric.clear();
  model.item_categorical.clear();
  model.item_numeric.clear();
  for (const std::string& name : features.user_categorical) {
    const FeatureSpec<UserCategoricalKind> spec = parse_user_categorical(name);
    ValueCounts values;
    for (std::size_t u = 0; u < user_examples.size(); ++u) {
      const UserProfile* profile = timelines.profiles[u];
      count_value(values,
                  user_categorical_value(spec, profile != nullptr ? *profile : no_profile()),
                  user_examples[u]);
    }
    model.user_categorical.push_back(
        {name, vocabulary(values, features.min_count), features.embedding_dim});
  }
  for (const std::string& name : features.user_numeric) {
    const FeatureSpec<UserNumericKind> spec = parse_user_numeric(name);
    double sum = 0.0;
    std::size_t present = 0;
    if (spec.kind == UserNumericKind::profile) {
      for (std::size_t u = 0; u < user_examples.size(); ++u) {
        const UserProfile* profile = timelines.profiles[u];
        if (profile == nullptr || user_examples[u] == 0) continue;
        if (const std::optional<double> v = user_numeric_value(spec, *profile, 0)) {
          sum += *v * static_cast<double>(user_examples[u]);
          present += user_examples[u];
        }
      }
    }
    const double mean = present > 0 ? sum / static_cast<double>(present) : 0.0;
    model.user_numeric.push_back({name, static_cast<float>(mean), 1.0F});
  }
  for (const std::string& name : features.item_categorical) {
    const auto spec = parse_item_categorical(name);
    ValueCounts values;
    for (std::size_t r = 0; r < row_examples.size(); ++r) {
      count_value(values, item_categorical_value(*spec, catalog->items()[r], price_bounds),
                  row_examples[r]);
    }
    model.item_categorical.push_back(
        {name, vocabulary(values, features.min_count), features.embedding_dim});
  }
  for (const std::string& name : features.item_numeric) model.item_numeric.push_back({name});
  model.history_category_feature = static_cast<std::size_t>(
      std::find(features.item_categorical.begin(), features.item_categorical.end(),
                features.history_category) -
      features.item_categorical.begin());
  model.validate();

  const Featurizer featurizer(*catalog, features, model, price_bounds, counts,
                              GlobalRates::of(records));
  const DeepRankerExamples training =
      materialize(featurizer, *catalog, timelines, skeletons, times, 0, n_train, labels.size());
  const DeepRankerExamples validation =
      materialize(featurizer, *catalog, timelines, skeletons, times, n_train, n, labels.size());

  // Standardisation over the training examples (per example, so a user's
  // values count once per impression).
  std::vector<double> column(training.candidates);
  for (std::size_t f = 0; f < model.user_numeric.size(); ++f) {
    const std::size_t width = model.user_numeric.size();
    for (std::size_t i = 0; i < training.candidates; ++i) {
      const auto u = static_cast<std::size_t>(training.candidate_user[i]);
      column[i] = training.user_numeric[u * width + f];
    }
    // A profile numeric keeps the mean its missing values were filled with.
    const bool profile =
        parse_user_numeric(model.user_numeric[f].name).kind == UserNumericKind::profile;
    const auto [mean, stddev] = column_stats(
        column, profile ? std::optional<double>(model.user_numeric[f].mean) : std::nullopt);
    model.user_numeric[f].mean = mean;
    model.user_numeric[f].std = stddev;
  }
  for (std::size_t f = 0; f < model.item_numeric.size(); ++f) {
    const std::size_t width = model.item_numeric.size();
    for (std::size_t i = 0; i < training.candidates; ++i) {
      column[i] = training.candidate_numeric[i * width + f];
    }
    const auto [mean, stddev] = column_stats(column, std::nullopt);
    model.item_numeric[f].mean = mean;
    model.item_numeric[f].std = stddev;
  }

  DeepRankerParameters parameters =
      train_deep_ranker(model, training, validation, config.train, report);
  auto impl = std::make_unique<Impl>();
  impl->catalog = std::move(catalog);
  impl->model = DeepRankerModel::create(std::move(model), std::move(parameters), serve);
  impl->features = features;
  impl->price_bounds = std::move(price_bounds);
  impl->item_counts = std::move(records);
  impl->counted_until = period_end;
  impl->bind();
  return std::unique_ptr<DeepFineRanker>(new DeepFineRanker(std::move(impl)));
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

void DeepFineRanker::save(const std::filesystem::path& dir) const {
  impl_->model->save(dir);
  const DeepRankerConfig& config = impl_->model->config();
  const DeepFeatureConfig& f = impl_->features;
  json document;
  document["format"] = kFormatName;
  document["version"] = kFormatVersion;
  document["features"] = {{"user_categorical", f.user_categorical},
                          {"user_numeric", f.user_numeric},
                          {"item_categorical", f.item_categorical},
                          {"item_numeric", f.item_numeric},
                          {"history_category", f.history_category},
                          {"embedding_dim", f.embedding_dim},
                          {"min_count", f.min_count}};
  json user_sizes = json::array();
  for (const DeepCategoricalFeature& c : config.user_categorical)
    user_sizes.push_back(c.vocab.size());
  json item_sizes = json::array();
  for (const DeepCategoricalFeature& c : config.item_categorical)
    item_sizes.push_back(c.vocab.size());
  document["vocab_sizes"] = {{"user_categorical", std::move(user_sizes)},
                             {"item_categorical", std::move(item_sizes)}};
  document["item_vector_dim"] = config.item_vector_dim;
  document["price_band_bounds"] = impl_->price_bounds;
  json items = json::array();
  json counts = json::array();
  json views = json::array();
  json clicks = json::array();
  json purchases = json::array();
  json dwells = json::array();
  json log_dwell_sum = json::array();
  for (const ItemCounts& c : impl_->item_counts) {
    items.push_back(c.id);
    counts.push_back(c.events);
    views.push_back(c.views);
    clicks.push_back(c.clicks);
    purchases.push_back(c.purchases);
    dwells.push_back(c.dwells);
    log_dwell_sum.push_back(c.log_dwell_sum);
  }
  document["popularity"] = {{"items", std::move(items)},
                            {"counts", std::move(counts)},
                            {"views", std::move(views)},
                            {"clicks", std::move(clicks)},
                            {"purchases", std::move(purchases)},
                            {"dwells", std::move(dwells)},
                            {"log_dwell_sum", std::move(log_dwell_sum)}};
  document["counted_until_ts"] = impl_->counted_until == std::numeric_limits<std::int64_t>::max()
                                     ? json(nullptr)
                                     : json(impl_->counted_until);
  document["checksum"] = document_checksum(document);
  detail::write_file_atomic(dir / kFeaturesFile, document.dump(1) + "\n");
}

std::unique_ptr<DeepFineRanker> DeepFineRanker::load(const std::filesystem::path& dir,
                                                     std::shared_ptr<const Catalog> catalog,
                                                     const DeepRankerServeOptions& serve) {
  detail::require(catalog != nullptr, "DeepFineRanker::load: the catalogue is null");
  detail::require(catalog->has_vectors(), "DeepFineRanker::load(", dir.string(),
                  "): the catalogue has no vectors (call Catalog::set_vectors first)");
  auto impl = std::make_unique<Impl>();
  impl->model = DeepRankerModel::load(dir, serve);
  const DeepRankerConfig& config = impl->model->config();

  const std::filesystem::path path = dir / kFeaturesFile;
  const std::string text = detail::read_file(path);
  json document;
  try {
    document = json::parse(text);
  } catch (const json::exception& e) {
    detail::fail(ErrorCode::format, path.string(), ": malformed JSON: ", e.what());
  }
  const FieldReader read(path);
  if (!document.is_object()) read.fail("", "expected a JSON object");
  const std::string format = read.string(read.member(document, "", "format"), "format");
  if (format != kFormatName) {
    read.fail("format", detail::cat("expected '", kFormatName, "', got '", format, "'"));
  }
  const std::int64_t version = read.integer(read.member(document, "", "version"), "version");
  if (version != 1 && version != kFormatVersion) {
    read.fail("version",
              detail::cat("unsupported version ", version, ", expected 1 or ", kFormatVersion));
  }
  const std::string checksum = read.string(read.member(document, "", "checksum"), "checksum");
  const std::string actual = document_checksum(document);
  if (checksum != actual) {
    read.fail("checksum",
              detail::cat("mismatch: the file says ", checksum, ", its content hashes to ", actual,
                          " (the file is damaged or was edited)"));
  }
  if (version == 1) {
    read.only(document, "",
              {"format", "version", "features", "vocab_sizes", "item_vector_dim",
               "price_band_bounds", "popularity", "checksum"});
  } else {
    read.only(document, "",
              {"format", "version", "features", "vocab_sizes", "item_vector_dim",
               "price_band_bounds", "popularity", "counted_until_ts", "checksum"});
  }

  // The feature config: valid, and the model's features in the model's order.
  const json& fj = read.member(document, "", "features");
  read.only(fj, "features",
            {"user_categorical", "user_numeric", "item_categorical", "item_numeric",
             "history_category", "embedding_dim", "min_count"});
  DeepFeatureConfig& features = impl->features;
  features.user_categorical =
      read.strings(read.member(fj, "features", "user_categorical"), "features.user_categorical");
  features.user_numeric =
      read.strings(read.member(fj, "features", "user_numeric"), "features.user_numeric");
  features.item_categorical =
      read.strings(read.member(fj, "features", "item_categorical"), "features.item_categorical");
  features.item_numeric =
      read.strings(read.member(fj, "features", "item_numeric"), "features.item_numeric");
  features.history_category =
      read.string(read.member(fj, "features", "history_category"), "features.history_category");
  features.embedding_dim =
      read.count(read.member(fj, "features", "embedding_dim"), "features.embedding_dim");
  features.min_count = read.count(read.member(fj, "features", "min_count"), "features.min_count");
  try {
    features.validate();
  } catch (const Error& e) {
    read.fail("features", e.what());
  }
  const auto same_names = [&](const std::vector<std::string>& names, const auto& model_features,
                              const char* list) {
    const std::string field = detail::cat("features.", list);
    if (names.size() != model_features.size()) {
      read.fail(field, detail::cat("lists ", names.size(), " features, the model's config.json ",
                                   model_features.size()));
    }
    for (std::size_t i = 0; i < names.size(); ++i) {
      if (names[i] != model_features[i].name) {
        read.fail(detail::cat(field, "[", i, "]"),
                  detail::cat("'", names[i], "' but the model's config.json has '",
                              model_features[i].name, "'"));
      }
    }
  };
  same_names(features.user_categorical, config.user_categorical, "user_categorical");
  same_names(features.user_numeric, config.user_numeric, "user_numeric");
  same_names(features.item_categorical, config.item_categorical, "item_categorical");
  same_names(features.item_numeric, config.item_numeric, "item_numeric");
  if (features.history_category != config.item_categorical[config.history_category_feature].name) {
    read.fail(
        "features.history_category",
        detail::cat("'", features.history_category, "' but the model's history tokens carry '",
                    config.item_categorical[config.history_category_feature].name, "'"));
  }

  // Vocabularies: the sizes this file was written with must be the model's.
  const json& sizes = read.member(document, "", "vocab_sizes");
  read.only(sizes, "vocab_sizes", {"user_categorical", "item_categorical"});
  const auto same_sizes = [&](const std::vector<DeepCategoricalFeature>& model_features,
                              const char* list) {
    const std::string field = detail::cat("vocab_sizes.", list);
    const json& values = read.array(read.member(sizes, "vocab_sizes", list), field);
    if (values.size() != model_features.size()) {
      read.fail(field,
                detail::cat("expected ", model_features.size(), " sizes, got ", values.size()));
    }
    for (std::size_t i = 0; i < values.size(); ++i) {
      const std::string at = detail::cat(field, "[", i, "]");
      const std::size_t size = read.count(values[i], at);
      if (size != model_features[i].vocab.size()) {
        read.fail(at, detail::cat("vocabulary of '", model_features[i].name, "' has ", size,
                                  " values here but ", model_features[i].vocab.size(),
                                  " in the model's config.json"));
      }
      if (model_features[i].dim != features.embedding_dim) {
        read.fail("features.embedding_dim",
                  detail::cat(features.embedding_dim, " but the model embeds '",
                              model_features[i].name, "' in ", model_features[i].dim));
      }
    }
  };
  same_sizes(config.user_categorical, "user_categorical");
  same_sizes(config.item_categorical, "item_categorical");

  const std::size_t dim =
      read.count(read.member(document, "", "item_vector_dim"), "item_vector_dim");
  if (dim != config.item_vector_dim) {
    read.fail("item_vector_dim",
              detail::cat(dim, " but the model's config.json has ", config.item_vector_dim));
  }

  const json& bounds =
      read.array(read.member(document, "", "price_band_bounds"), "price_band_bounds");
  if (!bounds.empty() && bounds.size() != kPriceBands - 1) {
    read.fail("price_band_bounds",
              detail::cat("expected 0 or ", kPriceBands - 1, " bounds, got ", bounds.size()));
  }
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    const std::string at = detail::cat("price_band_bounds[", i, "]");
    impl->price_bounds.push_back(read.number(bounds[i], at));
    if (i > 0 && impl->price_bounds[i] < impl->price_bounds[i - 1]) read.fail(at, "decreases");
  }

  const json& popularity = read.member(document, "", "popularity");
  // Per-item count arrays (version 1: events only).
  const std::vector<std::pair<const char*, double ItemCounts::*>> columns =
      version == 1
          ? std::vector<std::pair<const char*, double ItemCounts::*>>{{"counts",
                                                                       &ItemCounts::events}}
          : std::vector<std::pair<const char*, double ItemCounts::*>>{
                {"counts", &ItemCounts::events}, {"views", &ItemCounts::views},
                {"clicks", &ItemCounts::clicks}, {"purchases", &ItemCounts::purchases},
                {"dwells", &ItemCounts::dwells}, {"log_dwell_sum", &ItemCounts::log_dwell_sum}};
  std::vector<std::string_view> popularity_fields{"items"};
  for (const auto& [name, member] : columns) popularity_fields.emplace_back(name);
  read.only(popularity, "popularity", popularity_fields);
  const json& items =
      read.array(read.member(popularity, "popularity", "items"), "popularity.items");
  std::unordered_map<ItemId, std::size_t> seen;
  impl->item_counts.resize(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string at = detail::cat("popularity.items[", i, "]");
    const ItemId id = read.integer(items[i], at);
    if (const auto [it, inserted] = seen.emplace(id, i); !inserted) {
      read.fail(at, detail::cat("item ", id, " repeats items[", it->second, "]"));
    }
    impl->item_counts[i].id = id;
  }
  for (const auto& [name, member] : columns) {
    const std::string field = detail::cat("popularity.", name);
    const json& values = read.array(read.member(popularity, "popularity", name), field);
    if (values.size() != items.size()) {
      read.fail(field, detail::cat("has ", values.size(), " values for ", items.size(), " items"));
    }
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::string at = detail::cat(field, "[", i, "]");
      const double value = read.number(values[i], at);
      if (!(value >= 0.0)) read.fail(at, "must be >= 0");
      impl->item_counts[i].*member = value;
    }
  }
  if (version >= 2) {
    const json& until = read.member(document, "", "counted_until_ts");
    if (!until.is_null()) impl->counted_until = read.integer(until, "counted_until_ts");
  } else if (uses_priors(features)) {
    read.fail("version",
              "version 1 files carry no rate counts, but features.item_numeric lists "
              "a rate prior");
  }

  detail::require(catalog->vector_dim() == config.item_vector_dim, "DeepFineRanker::load(",
                  dir.string(), "): the model was trained with ", config.item_vector_dim,
                  "-dimensional item vectors, the catalogue has ", catalog->vector_dim());
  impl->catalog = std::move(catalog);
  impl->bind();
  return std::unique_ptr<DeepFineRanker>(new DeepFineRanker(std::move(impl)));
}

}  // namespace funnel
