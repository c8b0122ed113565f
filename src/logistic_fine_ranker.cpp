// SPDX-License-Identifier: Apache-2.0
#include "funnel/logistic_fine_ranker.hpp"

#include <algorithm>
#include <array>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "funnel/error.hpp"
#include "funnel/metrics.hpp"
#include "internal/atomic_file.hpp"
#include "internal/checksum.hpp"
#include "internal/error_util.hpp"
#include "internal/glm.hpp"
#include "internal/rate_priors.hpp"

namespace funnel {

// ---------------------------------------------------------------------------
// Generalised linear models (internal/glm.hpp)
// ---------------------------------------------------------------------------

namespace detail {

double sigmoid(double z) noexcept {
  if (z >= 0.0) return 1.0 / (1.0 + std::exp(-z));
  const double e = std::exp(z);
  return e / (1.0 + e);
}

double glm_linear(std::span<const float> x, std::span<const double> params) noexcept {
  assert(params.size() == x.size() + 1);
  double z = params[0];
  for (std::size_t j = 0; j < x.size(); ++j) z += params[j + 1] * static_cast<double>(x[j]);
  return z;
}

namespace {

// log(1 + e^z) without overflow.
double softplus(double z) noexcept {
  return z > 0.0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z));
}

// Validation metric where higher is better, with the value to report.
struct Metric {
  double higher_is_better;
  double reported;
};

}  // namespace

double glm_loss_and_grad(GlmKind kind, MatrixView<const float> x, std::span<const float> y,
                         std::span<const std::size_t> rows, std::span<const double> params,
                         double l2, std::span<double> grad) {
  assert(params.size() == x.cols + 1 && grad.size() == params.size() && !rows.empty());
  std::fill(grad.begin(), grad.end(), 0.0);
  double loss = 0.0;
  for (const std::size_t r : rows) {
    const std::span<const float> xr = x.row(r);
    const double z = glm_linear(xr, params);
    const double target = y[r];
    double residual = 0.0;  // d loss / d z
    if (kind == GlmKind::logistic) {
      loss += softplus(z) - target * z;
      residual = sigmoid(z) - target;
    } else {
      residual = z - target;
      loss += 0.5 * residual * residual;
    }
    grad[0] += residual;
    for (std::size_t j = 0; j < xr.size(); ++j)
      grad[j + 1] += residual * static_cast<double>(xr[j]);
  }
  const double inv = 1.0 / static_cast<double>(rows.size());
  loss *= inv;
  for (double& g : grad) g *= inv;
  for (std::size_t j = 1; j < params.size(); ++j) {
    loss += 0.5 * l2 * params[j] * params[j];
    grad[j] += l2 * params[j];
  }
  return loss;
}

GlmFit glm_fit(GlmKind kind, MatrixView<const float> x_train, std::span<const float> y_train,
               MatrixView<const float> x_validation, std::span<const float> y_validation,
               const GlmFitConfig& config) {
  assert(x_train.rows == y_train.size() && x_validation.rows == y_validation.size());
  assert(x_train.rows > 0 && x_validation.rows > 0 && x_train.cols == x_validation.cols);
  const std::size_t n = x_train.rows;
  const std::size_t d = x_train.cols;

  // Start from the intercept-only model: it is already the best constant.
  std::vector<double> params(d + 1, 0.0);
  const double mean_y =
      std::accumulate(y_train.begin(), y_train.end(), 0.0) / static_cast<double>(n);
  if (kind == GlmKind::logistic) {
    const double p = std::clamp(mean_y, 1e-6, 1.0 - 1e-6);
    params[0] = std::log(p / (1.0 - p));
  } else {
    params[0] = mean_y;
  }

  GlmFit fit;
  bool both_classes = true;
  if (kind == GlmKind::logistic) {
    const auto positives =
        std::count_if(y_validation.begin(), y_validation.end(), [](float v) { return v > 0.5F; });
    both_classes = positives > 0 && static_cast<std::size_t>(positives) < y_validation.size();
    fit.metric_name = both_classes ? "auc" : "log_loss";
  } else {
    fit.metric_name = "rmse";
  }
  std::vector<float> z(x_validation.rows);
  std::vector<int> labels(x_validation.rows);
  const auto evaluate = [&](const std::vector<double>& p) -> Metric {
    double sum = 0.0;
    for (std::size_t i = 0; i < x_validation.rows; ++i) {
      const double zi = glm_linear(x_validation.row(i), p);
      const double target = y_validation[i];
      if (kind == GlmKind::linear) {
        sum += (zi - target) * (zi - target);
      } else if (both_classes) {
        z[i] = static_cast<float>(zi);
        labels[i] = target > 0.5 ? 1 : 0;
      } else {
        sum += softplus(zi) - target * zi;
      }
    }
    const auto count = static_cast<double>(x_validation.rows);
    if (kind == GlmKind::linear) {
      const double rmse = std::sqrt(sum / count);
      return {-rmse, rmse};
    }
    if (both_classes) {
      const double value = auc(z, labels);
      return {value, value};
    }
    return {-sum / count, sum / count};
  };

  Metric best = evaluate(params);
  std::vector<double> best_params = params;
  std::vector<double> grad(d + 1);
  std::vector<double> m(d + 1, 0.0);
  std::vector<double> v(d + 1, 0.0);
  constexpr double kBeta1 = 0.9;
  constexpr double kBeta2 = 0.999;
  constexpr double kAdamEpsilon = 1e-8;
  double beta1_power = 1.0;
  double beta2_power = 1.0;

  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::mt19937_64 rng(config.seed);
  std::size_t since_best = 0;
  for (std::size_t epoch = 1; epoch <= config.max_epochs; ++epoch) {
    // Fisher-Yates on the raw engine output: std::shuffle's algorithm is
    // implementation-defined, this one is the same everywhere.
    for (std::size_t i = n; i > 1; --i) {
      const std::size_t j = static_cast<std::size_t>(rng() % i);
      std::swap(order[i - 1], order[j]);
    }
    for (std::size_t start = 0; start < n; start += config.batch_size) {
      const std::size_t size = std::min(config.batch_size, n - start);
      glm_loss_and_grad(kind, x_train, y_train, std::span(order).subspan(start, size), params,
                        config.l2, grad);
      beta1_power *= kBeta1;
      beta2_power *= kBeta2;
      for (std::size_t j = 0; j <= d; ++j) {
        m[j] = kBeta1 * m[j] + (1.0 - kBeta1) * grad[j];
        v[j] = kBeta2 * v[j] + (1.0 - kBeta2) * grad[j] * grad[j];
        const double m_hat = m[j] / (1.0 - beta1_power);
        const double v_hat = v[j] / (1.0 - beta2_power);
        params[j] -= config.learning_rate * m_hat / (std::sqrt(v_hat) + kAdamEpsilon);
      }
    }
    fit.epochs = epoch;
    const Metric metric = evaluate(params);
    if (metric.higher_is_better > best.higher_is_better) {
      best = metric;
      best_params = params;
      since_best = 0;
    } else if (++since_best >= config.patience) {
      break;
    }
  }
  fit.params = std::move(best_params);
  fit.validation_metric = best.reported;
  return fit;
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Features
// ---------------------------------------------------------------------------

namespace {

constexpr std::size_t kFeatures = 26;
constexpr std::size_t kSimMean = 0;
constexpr std::size_t kSimMax = 1;
constexpr std::size_t kCategoryShare = 2;
constexpr std::size_t kBrandShare = 3;
constexpr std::size_t kPriceGap = 4;
constexpr std::size_t kPriceKnown = 5;
constexpr std::size_t kItemPopularity = 6;
constexpr std::size_t kCoarseScore = 7;
constexpr std::size_t kLogHistoryEvents = 8;
constexpr std::size_t kSeenItem = 9;
constexpr std::size_t kPurchasedItem = 10;
constexpr std::size_t kAge = 11;
constexpr std::size_t kAgeKnown = 12;
constexpr std::size_t kItemCtrPrior = 13;  // then cvr, dwell; brand x3; category x3
constexpr std::size_t kPriorFeatures = 9;
constexpr std::size_t kPriceVsCategory = 22;
constexpr std::size_t kRelativePriceGap = 23;
constexpr std::size_t kRelativePriceOver = 24;
constexpr std::size_t kBrandPurchased = 25;
constexpr double kPriceGapSoftening = 0.25;  // keeps a one-price history from exploding gaps
constexpr std::size_t kObjectives = 3;
constexpr std::string_view kFormatName = "funnel.logistic_fine_ranker";
constexpr std::int64_t kFormatVersion = 2;

const std::vector<std::string>& feature_name_list() {
  static const std::vector<std::string> names{"sim_mean",
                                              "sim_max",
                                              "category_share",
                                              "brand_share",
                                              "price_gap",
                                              "price_known",
                                              "item_popularity",
                                              "coarse_score",
                                              "log_history_events",
                                              "seen_item",
                                              "purchased_item",
                                              "age",
                                              "age_known",
                                              "item_ctr_prior",
                                              "item_cvr_prior",
                                              "item_dwell_prior",
                                              "brand_ctr_prior",
                                              "brand_cvr_prior",
                                              "brand_dwell_prior",
                                              "category_ctr_prior",
                                              "category_cvr_prior",
                                              "category_dwell_prior",
                                              "price_vs_category",
                                              "relative_price_gap",
                                              "relative_price_over",
                                              "brand_purchased"};
  assert(names.size() == kFeatures);
  return names;
}

// Column indices of these feature names, ascending; empty = all. Assumes
// LogisticTrainConfig::validate() accepted the names.
std::vector<std::size_t> feature_columns(std::span<const std::string> names) {
  std::vector<std::size_t> columns;
  const auto& all = feature_name_list();
  if (names.empty()) {
    columns.resize(all.size());
    std::iota(columns.begin(), columns.end(), std::size_t{0});
    return columns;
  }
  for (const std::string& name : names) {
    const auto it = std::find(all.begin(), all.end(), name);
    assert(it != all.end());
    columns.push_back(static_cast<std::size_t>(it - all.begin()));
  }
  std::sort(columns.begin(), columns.end());
  return columns;
}

const std::vector<std::string>& objective_list() {
  static const std::vector<std::string> names{"ctr", "cvr", "dwell"};
  return names;
}

constexpr std::array<detail::GlmKind, kObjectives> kObjectiveKinds{
    detail::GlmKind::logistic, detail::GlmKind::logistic, detail::GlmKind::linear};

std::string_view link_name(detail::GlmKind kind) {
  return kind == detail::GlmKind::logistic ? "logistic" : "identity";
}

// What the features need to know about every catalogue row, built once per
// model: brand and category as dense indices (so that counts are arrays, not
// string maps) and the item's log price relative to its category's median.
class CatalogIndex {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

  explicit CatalogIndex(const Catalog& catalog) {
    const std::span<const Item> items = catalog.items();
    std::unordered_map<std::string_view, std::uint32_t> brands;
    std::unordered_map<std::string_view, std::uint32_t> categories;
    const auto intern = [](std::unordered_map<std::string_view, std::uint32_t>& ids,
                           std::string_view name) {
      if (name.empty()) return kNone;
      return ids.emplace(name, static_cast<std::uint32_t>(ids.size())).first->second;
    };
    brand_.reserve(items.size());
    category_.reserve(items.size());
    for (const Item& item : items) {
      brand_.push_back(intern(brands, item.brand));
      category_.push_back(intern(categories, item.category));
    }
    brands_ = brands.size();
    categories_ = categories.size();

    // Median log price per category (the mean of the middle two for an even
    // count), over the items with a positive price.
    std::vector<std::vector<double>> log_prices(categories_);
    for (std::size_t r = 0; r < items.size(); ++r) {
      if (category_[r] != kNone && items[r].price && *items[r].price > 0.0) {
        log_prices[category_[r]].push_back(std::log(*items[r].price));
      }
    }
    std::vector<double> median(categories_, 0.0);
    for (std::size_t c = 0; c < categories_; ++c) {
      std::vector<double>& v = log_prices[c];
      if (v.empty()) continue;
      std::sort(v.begin(), v.end());
      const std::size_t mid = v.size() / 2;
      median[c] = v.size() % 2 == 1 ? v[mid] : 0.5 * (v[mid - 1] + v[mid]);
    }
    price_vs_category_.assign(items.size(), std::numeric_limits<float>::quiet_NaN());
    for (std::size_t r = 0; r < items.size(); ++r) {
      if (category_[r] != kNone && items[r].price && *items[r].price > 0.0) {
        price_vs_category_[r] =
            static_cast<float>(std::log(*items[r].price) - median[category_[r]]);
      }
    }
  }

  [[nodiscard]] std::uint32_t brand(std::size_t row) const noexcept { return brand_[row]; }
  [[nodiscard]] std::uint32_t category(std::size_t row) const noexcept { return category_[row]; }
  [[nodiscard]] std::size_t brands() const noexcept { return brands_; }
  [[nodiscard]] std::size_t categories() const noexcept { return categories_; }
  // log(price / median price of the category); NaN without price or category.
  [[nodiscard]] float price_vs_category(std::size_t row) const noexcept {
    return price_vs_category_[row];
  }

 private:
  std::vector<std::uint32_t> brand_;
  std::vector<std::uint32_t> category_;
  std::size_t brands_ = 0;
  std::size_t categories_ = 0;
  std::vector<float> price_vs_category_;
};

using detail::RateCounts;
using detail::RateTargets;

// Smoothed per-item, per-brand and per-category click, conversion and dwell
// rates (see the header for the formulas). The shrinkage targets are fixed
// when the priors are created; add() then moves the counts forward in time.
class RatePriors {
 public:
  RatePriors() = default;
  // `global` gives the shrinkage targets; the counts start at 0.
  RatePriors(const CatalogIndex& index, std::size_t items, double strength,
             const RateCounts& global)
      : strength_(strength),
        targets_(RateTargets::of(global)),
        item_(items),
        brand_(index.brands()),
        category_(index.categories()) {}

  template <typename... Args>
  void add(const CatalogIndex& index, std::size_t row, const Args&... what) noexcept {
    item_[row].add(what...);
    if (index.brand(row) != CatalogIndex::kNone) brand_[index.brand(row)].add(what...);
    if (index.category(row) != CatalogIndex::kNone) category_[index.category(row)].add(what...);
  }

  // The nine prior features of a catalogue row (item, brand, category; each
  // ctr logit, cvr logit, mean log dwell); without a brand or category the
  // targets themselves.
  void fill(const CatalogIndex& index, std::size_t row, std::span<float> out) const noexcept {
    assert(out.size() == kPriorFeatures);
    static constexpr RateCounts kNoCounts{};
    const RateCounts* levels[3] = {
        &item_[row],
        index.brand(row) == CatalogIndex::kNone ? &kNoCounts : &brand_[index.brand(row)],
        index.category(row) == CatalogIndex::kNone ? &kNoCounts : &category_[index.category(row)]};
    for (std::size_t l = 0; l < 3; ++l) {
      const RateCounts& c = *levels[l];
      const double m = strength_;
      out[3 * l] = static_cast<float>(targets_.ctr_prior(c, m));
      out[3 * l + 1] = static_cast<float>(targets_.cvr_prior(c, m));
      out[3 * l + 2] = static_cast<float>(targets_.dwell_prior(c, m));
    }
  }

  [[nodiscard]] double strength() const noexcept { return strength_; }
  [[nodiscard]] std::span<const RateCounts> items() const noexcept { return item_; }

 private:
  double strength_ = 1.0;
  RateTargets targets_;
  std::vector<RateCounts> item_;      // per catalogue row
  std::vector<RateCounts> brand_;     // per CatalogIndex brand
  std::vector<RateCounts> category_;  // per CatalogIndex category
};

// What the features of many candidates share about one history: the
// history items' vectors as one matrix, so that a candidate's similarities
// to all of them are one vectorised matrix-vector product; the user's
// weighted mean price relative to category medians; the brands bought.
class HistoryVectors {
 public:
  HistoryVectors(const Catalog& catalog, const CatalogIndex& index,
                 const HistoryProfileConfig& config, const HistoryProfile& profile)
      : dim_(catalog.vector_dim()) {
    const std::span<const HistoryProfile::Match> items = profile.items();
    matrix_.resize(static_cast<Eigen::Index>(items.size()), static_cast<Eigen::Index>(dim_));
    ids_.reserve(items.size());
    double price_weight = 0.0;
    double price_sum = 0.0;
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::size_t row = catalog.index_of(items[i].item);
      assert(row != Catalog::npos);
      const std::span<const float> v = catalog.vectors().row(row);
      assert(v.size() == dim_);
      std::copy(v.begin(), v.end(), matrix_.row(static_cast<Eigen::Index>(i)).data());
      ids_.push_back(items[i].item);
      const float relative = index.price_vs_category(row);
      const double w = config.type_weight(items[i].type);
      if (!std::isnan(relative) && w > 0.0) {
        price_weight += w;
        price_sum += w * relative;
      }
      if (items[i].type == EventType::purchase && index.brand(row) != CatalogIndex::kNone) {
        brands_bought_.push_back(index.brand(row));
      }
    }
    if (price_weight > 0.0) mean_price_vs_category_ = price_sum / price_weight;
    std::sort(brands_bought_.begin(), brands_bought_.end());
    similarities_.resize(static_cast<Eigen::Index>(items.size()));
    const std::span<const float> mean = profile.mean_vector();
    if (!mean.empty()) mean_.assign(mean.begin(), mean.end());
  }

  // v . mean history vector (0 without history).
  [[nodiscard]] float sim_mean(std::span<const float> v) const {
    if (mean_.empty()) return 0.0F;
    return ConstVector(v.data(), static_cast<Eigen::Index>(dim_))
        .dot(ConstVector(mean_.data(), static_cast<Eigen::Index>(dim_)));
  }

  // Best v . h over history items h other than `exclude` (0 when none);
  // the value HistoryProfile::most_similar reports, computed in one batch.
  [[nodiscard]] float sim_max(std::span<const float> v, ItemId exclude) {
    if (ids_.empty()) return 0.0F;
    similarities_.noalias() = matrix_ * ConstVector(v.data(), static_cast<Eigen::Index>(dim_));
    bool any = false;
    float best = 0.0F;
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      if (ids_[i] == exclude) continue;
      const float s = similarities_[static_cast<Eigen::Index>(i)];
      if (!any || s > best) best = s;
      any = true;
    }
    return best;
  }

  // Weighted (by event type) mean of price_vs_category over the history's
  // distinct items with a price and a category; nullopt when none.
  [[nodiscard]] std::optional<double> mean_price_vs_category() const noexcept {
    return mean_price_vs_category_;
  }

  [[nodiscard]] bool bought_brand(std::uint32_t brand) const noexcept {
    return brand != CatalogIndex::kNone &&
           std::binary_search(brands_bought_.begin(), brands_bought_.end(), brand);
  }

 private:
  using ConstVector = Eigen::Map<const Eigen::VectorXf>;
  std::size_t dim_;
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> matrix_;
  std::vector<ItemId> ids_;
  std::vector<float> mean_;
  Eigen::VectorXf similarities_;  // scratch, one per history item
  std::optional<double> mean_price_vs_category_;
  std::vector<std::uint32_t> brands_bought_;  // sorted, may repeat
};

// The features of one (history, candidate) pair; `coarse` nullopt means
// "no coarse stage ran": use sim_mean (see the header). `priors` null leaves
// the prior features at 0 (training fills them in later, in time order).
void compute_features(const Catalog& catalog, const CatalogIndex& index,
                      const Popularity& popularity, const RatePriors* priors,
                      const HistoryProfile& profile, HistoryVectors& history,
                      std::optional<int> age, std::size_t row, std::optional<float> coarse,
                      std::span<float> out) {
  assert(out.size() == kFeatures);
  const Item& item = catalog.items()[row];
  const std::span<const float> v = catalog.vectors().row(row);
  const float sim_mean = history.sim_mean(v);
  out[kSimMean] = sim_mean;
  out[kSimMax] = history.sim_max(v, item.id);
  out[kCategoryShare] = static_cast<float>(profile.category_share(item.category));
  out[kBrandShare] = static_cast<float>(profile.brand_share(item.brand));
  const std::optional<double> mean_log_price = profile.mean_log_price();
  if (item.price && *item.price > 0.0 && mean_log_price) {
    out[kPriceGap] = static_cast<float>(std::abs(std::log(*item.price) - *mean_log_price) /
                                        (*profile.std_log_price() + kPriceGapSoftening));
    out[kPriceKnown] = 1.0F;
  } else {
    out[kPriceGap] = 0.0F;
    out[kPriceKnown] = 0.0F;
  }
  out[kItemPopularity] = static_cast<float>(popularity.item_score(item.id));
  out[kCoarseScore] = coarse.value_or(sim_mean);
  out[kLogHistoryEvents] = static_cast<float>(std::log1p(static_cast<double>(profile.events())));
  const std::optional<HistoryProfile::Match> own = profile.strongest_event(item.id);
  out[kSeenItem] = own ? 1.0F : 0.0F;
  out[kPurchasedItem] = own && own->type == EventType::purchase ? 1.0F : 0.0F;
  out[kAge] = age ? static_cast<float>(*age) / 100.0F : 0.0F;
  out[kAgeKnown] = age ? 1.0F : 0.0F;
  const std::span<float> prior_out = out.subspan(kItemCtrPrior, kPriorFeatures);
  if (priors != nullptr) {
    priors->fill(index, row, prior_out);
  } else {
    std::fill(prior_out.begin(), prior_out.end(), 0.0F);
  }
  const float relative = index.price_vs_category(row);
  const std::optional<double> user_relative = history.mean_price_vs_category();
  out[kPriceVsCategory] = std::isnan(relative) ? 0.0F : relative;
  if (!std::isnan(relative) && user_relative) {
    const double gap = static_cast<double>(relative) - *user_relative;
    out[kRelativePriceGap] = static_cast<float>(gap);
    out[kRelativePriceOver] = static_cast<float>(std::max(0.0, gap));
  } else {
    out[kRelativePriceGap] = 0.0F;
    out[kRelativePriceOver] = 0.0F;
  }
  out[kBrandPurchased] = history.bought_brand(index.brand(row)) ? 1.0F : 0.0F;
}

// One objective's model, with the standardisation folded into raw-feature
// weights for scoring.
struct ObjectiveModel {
  detail::GlmKind kind = detail::GlmKind::logistic;
  std::vector<double> mean;
  std::vector<double> stddev;
  double bias = 0.0;
  std::vector<double> weights;  // standardised feature space
  std::vector<double> folded;   // raw feature space, folded[0] = bias
  // The features the model uses, ascending; the others keep mean 0, std 1
  // and weight 0, so every vector above spans all kFeatures columns.
  std::vector<std::size_t> columns;
  void fold() {
    folded.assign(kFeatures + 1, 0.0);
    folded[0] = bias;
    for (std::size_t j = 0; j < kFeatures; ++j) {
      folded[j + 1] = weights[j] / stddev[j];
      folded[0] -= weights[j] * mean[j] / stddev[j];
    }
  }
  [[nodiscard]] float output(std::span<const float> x) const {
    const double z = detail::glm_linear(x, folded);
    if (kind == detail::GlmKind::logistic) return static_cast<float>(detail::sigmoid(z));
    // log(1 + seconds) above 80 would overflow float; nobody stays e^80 s.
    return static_cast<float>(std::max(0.0, std::expm1(std::min(z, 80.0))));
  }
};

}  // namespace

struct LogisticFineRanker::Impl {
  std::shared_ptr<const Catalog> catalog;
  std::size_t vector_dim = 0;  // of the catalogue vectors the model was trained with
  HistoryProfileConfig history;
  Popularity popularity;
  std::optional<CatalogIndex> index;  // of `catalog`
  RatePriors priors;                  // frozen at the end of the training period
  std::array<ObjectiveModel, kObjectives> models;

  [[nodiscard]] const ObjectiveModel& model(std::string_view objective) const {
    const auto& names = objective_list();
    for (std::size_t k = 0; k < names.size(); ++k) {
      if (names[k] == objective) return models[k];
    }
    detail::fail(ErrorCode::invalid_argument, "LogisticFineRanker: unknown objective '", objective,
                 "' (expected ctr, cvr or dwell)");
  }
};

LogisticFineRanker::LogisticFineRanker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LogisticFineRanker::~LogisticFineRanker() = default;

std::span<const std::string> LogisticFineRanker::feature_names() { return feature_name_list(); }

std::vector<std::string> logistic_base_features() {
  const auto& all = feature_name_list();
  return {all.begin(), all.begin() + static_cast<std::ptrdiff_t>(kItemCtrPrior)};
}

std::span<const std::string> LogisticFineRanker::objectives() const { return objective_list(); }

double LogisticFineRanker::bias(std::string_view objective) const {
  return impl_->model(objective).bias;
}

std::span<const double> LogisticFineRanker::weights(std::string_view objective) const {
  return impl_->model(objective).weights;
}

const HistoryProfileConfig& LogisticFineRanker::history_config() const noexcept {
  return impl_->history;
}

const Popularity& LogisticFineRanker::popularity() const noexcept { return impl_->popularity; }

void LogisticFineRanker::features(const UserContext& user, std::span<const Candidate> candidates,
                                  MatrixView<float> features) const {
  detail::require(features.rows == candidates.size() && features.cols == kFeatures,
                  "LogisticFineRanker::features: output is ", features.rows, " x ", features.cols,
                  ", expected ", candidates.size(), " x ", kFeatures);
  const Catalog& catalog = *impl_->catalog;
  const HistoryProfile profile(catalog, user, impl_->history);
  HistoryVectors history(catalog, *impl_->index, impl_->history, profile);
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const std::size_t row = catalog.index_of(candidates[i].id);
    detail::require(row != Catalog::npos, "LogisticFineRanker: candidate ", i, " has item id ",
                    candidates[i].id, ", which is not in the catalogue");
    compute_features(catalog, *impl_->index, impl_->popularity, &impl_->priors, profile, history,
                     user.profile.age, row, candidates[i].coarse_score, features.row(i));
  }
}

void LogisticFineRanker::score(const UserContext& user, std::span<const Candidate> candidates,
                               MatrixView<float> scores) const {
  detail::require(scores.rows == candidates.size() && scores.cols == kObjectives,
                  "LogisticFineRanker::score: scores is ", scores.rows, " x ", scores.cols,
                  ", expected ", candidates.size(), " x ", kObjectives);
  const Catalog& catalog = *impl_->catalog;
  const HistoryProfile profile(catalog, user, impl_->history);
  HistoryVectors history(catalog, *impl_->index, impl_->history, profile);
  std::array<float, kFeatures> x{};
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const std::size_t row = catalog.index_of(candidates[i].id);
    detail::require(row != Catalog::npos, "LogisticFineRanker: candidate ", i, " has item id ",
                    candidates[i].id, ", which is not in the catalogue");
    compute_features(catalog, *impl_->index, impl_->popularity, &impl_->priors, profile, history,
                     user.profile.age, row, candidates[i].coarse_score, x);
    for (std::size_t k = 0; k < kObjectives; ++k) scores(i, k) = impl_->models[k].output(x);
  }
}

// ---------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------

void LogisticTrainConfig::validate() const {
  detail::require(max_epochs > 0, "LogisticTrainConfig.max_epochs must be > 0");
  detail::require(batch_size > 0, "LogisticTrainConfig.batch_size must be > 0");
  detail::require(std::isfinite(learning_rate) && learning_rate > 0.0F,
                  "LogisticTrainConfig.learning_rate must be finite and > 0, got ", learning_rate);
  detail::require(std::isfinite(l2) && l2 >= 0.0F,
                  "LogisticTrainConfig.l2 must be finite and >= 0, got ", l2);
  detail::require(validation_fraction > 0.0 && validation_fraction < 1.0,
                  "LogisticTrainConfig.validation_fraction must be in (0, 1), got ",
                  validation_fraction);
  detail::require(patience > 0, "LogisticTrainConfig.patience must be > 0");
  const auto& all = feature_name_list();
  for (std::size_t k = 0; k < kObjectives; ++k) {
    const std::vector<std::string>& names = objective_features[k];
    for (std::size_t i = 0; i < names.size(); ++i) {
      detail::require(std::find(all.begin(), all.end(), names[i]) != all.end(),
                      "LogisticTrainConfig.objective_features[", k, "] (", objective_list()[k],
                      "): unknown feature '", names[i], "'");
      detail::require(std::find(names.begin(), names.begin() + static_cast<std::ptrdiff_t>(i),
                                names[i]) == names.begin() + static_cast<std::ptrdiff_t>(i),
                      "LogisticTrainConfig.objective_features[", k, "] (", objective_list()[k],
                      "): feature '", names[i], "' repeats");
    }
  }
  detail::require(std::isfinite(prior_strength) && prior_strength > 0.0,
                  "LogisticTrainConfig.prior_strength must be finite and > 0, got ",
                  prior_strength);
  detail::require(attribution_window_s > 0,
                  "LogisticTrainConfig.attribution_window_s must be > 0, got ",
                  attribution_window_s);
  history.validate();
}

namespace {

// The examples of one objective, in construction order.
struct ExampleSet {
  std::vector<float> x;  // n x kFeatures, raw
  std::vector<float> y;
  std::vector<std::int64_t> ts;
  std::vector<ItemId> item;
  std::vector<std::size_t> row;  // catalogue row of item
  [[nodiscard]] std::size_t size() const noexcept { return y.size(); }
};

// (item, ts) pairs of one user's events of one type, sorted.
using ItemTimes = std::vector<std::pair<ItemId, std::int64_t>>;

// Whether `times` holds `item` at a ts in (after, until].
bool happens(const ItemTimes& times, ItemId item, std::int64_t after, std::int64_t until) {
  const auto it = std::upper_bound(times.begin(), times.end(), std::make_pair(item, after));
  return it != times.end() && it->first == item && it->second <= until;
}

// Fills the prior features of every example from the events strictly before
// it (examples at or after `until`: from the events before `until`), in one
// sweep over all users' events in time order, and leaves `frozen` with the
// counts before `until`: what score() uses. The shrinkage targets are the
// global rates before `until` throughout, so that a feature means the same
// at training and at serving time.
void fill_rate_priors(const Catalog& catalog, const CatalogIndex& index, double strength,
                      std::span<const std::vector<HistoryEvent>> timelines, std::int64_t until,
                      std::array<ExampleSet, kObjectives>& sets, RatePriors& frozen) {
  std::vector<const HistoryEvent*> counted;
  std::vector<RateCounts> item_totals(catalog.size());
  for (const std::vector<HistoryEvent>& timeline : timelines) {
    for (const HistoryEvent& event : timeline) {
      if (event.ts >= until) continue;
      counted.push_back(&event);
      // Timelines hold catalogue items only (see train()).
      item_totals[catalog.index_of(event.item)].add(event.type, event.dwell_s);
    }
  }
  // Summed in catalogue row order, the order save() writes and load() sums
  // them in, so that a loaded model has bit-identical targets.
  RateCounts global;
  for (const RateCounts& c : item_totals) global.add(c);

  // Same-ts ties keep user-then-timeline order: deterministic, and no
  // example sees an event of its own timestamp anyway.
  std::stable_sort(counted.begin(), counted.end(),
                   [](const HistoryEvent* a, const HistoryEvent* b) { return a->ts < b->ts; });
  std::vector<std::pair<std::int64_t, std::pair<std::size_t, std::size_t>>> examples;
  for (std::size_t k = 0; k < kObjectives; ++k) {
    for (std::size_t i = 0; i < sets[k].size(); ++i) examples.push_back({sets[k].ts[i], {k, i}});
  }
  std::stable_sort(examples.begin(), examples.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  RatePriors running(index, catalog.size(), strength, global);
  std::size_t next = 0;
  for (const auto& [ts, which] : examples) {
    for (; next < counted.size() && counted[next]->ts < ts; ++next) {
      const HistoryEvent& event = *counted[next];
      running.add(index, catalog.index_of(event.item), event.type, event.dwell_s);
    }
    ExampleSet& set = sets[which.first];
    running.fill(
        index, set.row[which.second],
        std::span<float>(set.x).subspan(which.second * kFeatures + kItemCtrPrior, kPriorFeatures));
  }
  // The served priors: built from the per-item totals exactly as load() does.
  frozen = RatePriors(index, catalog.size(), strength, global);
  for (std::size_t r = 0; r < item_totals.size(); ++r) frozen.add(index, r, item_totals[r]);
}

}  // namespace

std::unique_ptr<LogisticFineRanker> LogisticFineRanker::train(
    std::shared_ptr<const Catalog> catalog, std::span<const Event> events,
    std::span<const UserProfile> users, const LogisticTrainConfig& config,
    std::vector<ObjectiveTrainReport>* report) {
  detail::require(catalog != nullptr, "LogisticFineRanker::train: the catalogue is null");
  config.validate();
  detail::require(catalog->has_vectors(),
                  "LogisticFineRanker::train: the catalogue has no vectors (call "
                  "Catalog::set_vectors with the item embeddings first)");

  std::unordered_map<std::string_view, const UserProfile*> profile_of;
  profile_of.reserve(users.size());
  for (const UserProfile& user : users) profile_of.emplace(user.id, &user);

  // Per-user timelines of known items, users in order of first appearance.
  std::unordered_map<std::string_view, std::size_t> user_index;
  std::vector<std::string_view> user_names;
  std::vector<std::vector<HistoryEvent>> timelines;
  std::size_t skipped = 0;
  for (const Event& event : events) {
    if (!catalog->contains(event.item)) {
      ++skipped;
      continue;
    }
    const auto [it, inserted] = user_index.emplace(event.user, user_names.size());
    if (inserted) {
      user_names.push_back(event.user);
      timelines.emplace_back();
    }
    timelines[it->second].push_back({event.item, event.type, event.ts, event.dwell_s});
  }

  auto impl = std::make_unique<Impl>();
  impl->index.emplace(*catalog);
  const CatalogIndex& index = *impl->index;
  std::array<ExampleSet, kObjectives> sets;
  std::array<float, kFeatures> x{};
  const std::int64_t window = config.attribution_window_s;
  // Popularity and the rate priors are filled in below, once the split is known.
  const Popularity no_popularity;
  for (std::size_t u = 0; u < timelines.size(); ++u) {
    std::vector<HistoryEvent>& timeline = timelines[u];
    std::stable_sort(timeline.begin(), timeline.end(),
                     [](const HistoryEvent& a, const HistoryEvent& b) { return a.ts < b.ts; });
    ItemTimes clicks;
    ItemTimes purchases;
    for (const HistoryEvent& event : timeline) {
      if (event.type == EventType::click) clicks.emplace_back(event.item, event.ts);
      if (event.type == EventType::purchase) purchases.emplace_back(event.item, event.ts);
    }
    std::sort(clicks.begin(), clicks.end());
    std::sort(purchases.begin(), purchases.end());
    const auto found = profile_of.find(user_names[u]);
    const std::optional<int> age = found == profile_of.end() ? std::nullopt : found->second->age;

    std::optional<HistoryProfile> profile;
    std::optional<HistoryVectors> history;
    std::size_t profile_end = Catalog::npos;  // the history prefix the profile summarises
    std::size_t prefix_end = 0;               // first event with the current ts
    for (std::size_t p = 0; p < timeline.size(); ++p) {
      const HistoryEvent& event = timeline[p];
      if (p > 0 && timeline[p - 1].ts < event.ts) prefix_end = p;
      if (event.type != EventType::view && event.type != EventType::click) continue;
      if (prefix_end != profile_end) {
        // Every event here is known and older than event.ts, so the last
        // max_events of the prefix are exactly what the profile counts.
        const std::size_t begin =
            prefix_end > config.history.max_events ? prefix_end - config.history.max_events : 0;
        profile.emplace(*catalog,
                        std::span<const HistoryEvent>(timeline).subspan(begin, prefix_end - begin),
                        event.ts, config.history);
        history.emplace(*catalog, index, config.history, *profile);
        profile_end = prefix_end;
      }
      const std::size_t row = catalog->index_of(event.item);
      compute_features(*catalog, index, no_popularity, nullptr, *profile, *history, age, row,
                       std::nullopt, x);
      const auto add = [&](ExampleSet& set, float label) {
        set.x.insert(set.x.end(), x.begin(), x.end());
        set.y.push_back(label);
        set.ts.push_back(event.ts);
        set.item.push_back(event.item);
        set.row.push_back(row);
      };
      if (event.type == EventType::view) {
        add(sets[0], happens(clicks, event.item, event.ts, event.ts + window) ? 1.0F : 0.0F);
      } else {
        add(sets[1], happens(purchases, event.item, event.ts, event.ts + window) ? 1.0F : 0.0F);
        if (event.dwell_s) add(sets[2], static_cast<float>(std::log1p(*event.dwell_s)));
      }
    }
  }

  // Split each objective by time and check that it can be trained.
  const auto& names = objective_list();
  std::array<std::vector<std::size_t>, kObjectives> order;
  std::array<std::size_t, kObjectives> validation_size{};
  std::int64_t popularity_until = std::numeric_limits<std::int64_t>::max();
  for (std::size_t k = 0; k < kObjectives; ++k) {
    const ExampleSet& set = sets[k];
    const std::size_t n = set.size();
    detail::require(n >= 2, "LogisticFineRanker::train: objective '", names[k], "' has ", n,
                    " examples, needs at least 2",
                    k == 2 ? " (clicks with dwell_s)" : (k == 1 ? " (clicks)" : " (views)"));
    if (kObjectiveKinds[k] == detail::GlmKind::logistic) {
      const auto positives = static_cast<std::size_t>(
          std::count_if(set.y.begin(), set.y.end(), [](float v) { return v > 0.5F; }));
      const char* what = k == 0 ? "a click" : "a purchase";
      detail::require(positives > 0, "LogisticFineRanker::train: objective '", names[k],
                      "' has no positive example (no ", what, " within ", window,
                      " s of any of its ", n, " examples)");
      detail::require(positives < n, "LogisticFineRanker::train: objective '", names[k],
                      "' has no negative example (all ", n, " are followed by ", what, ")");
    }
    order[k].resize(n);
    std::iota(order[k].begin(), order[k].end(), std::size_t{0});
    std::stable_sort(order[k].begin(), order[k].end(),
                     [&](std::size_t a, std::size_t b) { return set.ts[a] < set.ts[b]; });
    const auto wanted =
        static_cast<std::size_t>(std::llround(config.validation_fraction * static_cast<double>(n)));
    validation_size[k] = std::clamp<std::size_t>(wanted, 1, n - 1);
    popularity_until = std::min(popularity_until, set.ts[order[k][n - validation_size[k]]]);
  }

  impl->catalog = std::move(catalog);
  impl->vector_dim = impl->catalog->vector_dim();
  impl->history = config.history;
  impl->popularity = Popularity::from_events(*impl->catalog, events, users, popularity_until);
  for (ExampleSet& set : sets) {
    for (std::size_t i = 0; i < set.size(); ++i) {
      set.x[i * kFeatures + kItemPopularity] =
          static_cast<float>(impl->popularity.item_score(set.item[i]));
    }
  }
  fill_rate_priors(*impl->catalog, index, config.prior_strength, timelines, popularity_until, sets,
                   impl->priors);

  if (report != nullptr) report->clear();
  for (std::size_t k = 0; k < kObjectives; ++k) {
    const ExampleSet& set = sets[k];
    const std::size_t n = set.size();
    const std::size_t n_validation = validation_size[k];
    const std::size_t n_train = n - n_validation;

    // Standardise with training statistics only.
    ObjectiveModel& model = impl->models[k];
    model.kind = kObjectiveKinds[k];
    model.columns = feature_columns(config.objective_features[k]);
    const std::size_t d = model.columns.size();
    model.mean.assign(kFeatures, 0.0);
    model.stddev.assign(kFeatures, 0.0);
    for (std::size_t i = 0; i < n_train; ++i) {
      const float* row = &set.x[order[k][i] * kFeatures];
      for (std::size_t j = 0; j < kFeatures; ++j) model.mean[j] += row[j];
    }
    for (double& m : model.mean) m /= static_cast<double>(n_train);
    for (std::size_t i = 0; i < n_train; ++i) {
      const float* row = &set.x[order[k][i] * kFeatures];
      for (std::size_t j = 0; j < kFeatures; ++j) {
        const double diff = row[j] - model.mean[j];
        model.stddev[j] += diff * diff;
      }
    }
    for (double& s : model.stddev) {
      s = std::sqrt(s / static_cast<double>(n_train));
      if (!(s > 1e-12) || !std::isfinite(s)) s = 1.0;  // constant feature: leave it at 0
    }

    Matrix<float> x_train(n_train, d);
    Matrix<float> x_validation(n_validation, d);
    std::vector<float> y_train(n_train);
    std::vector<float> y_validation(n_validation);
    double positives = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t e = order[k][i];
      const bool train_row = i < n_train;
      const std::span<float> dst = train_row ? x_train.row(i) : x_validation.row(i - n_train);
      for (std::size_t c = 0; c < d; ++c) {
        const std::size_t j = model.columns[c];
        dst[c] = static_cast<float>((set.x[e * kFeatures + j] - model.mean[j]) / model.stddev[j]);
      }
      (train_row ? y_train[i] : y_validation[i - n_train]) = set.y[e];
      if (set.y[e] > 0.5F) positives += 1.0;
    }
    if (model.kind == detail::GlmKind::logistic) {
      const auto train_positives =
          std::count_if(y_train.begin(), y_train.end(), [](float v) { return v > 0.5F; });
      detail::require(train_positives > 0 && static_cast<std::size_t>(train_positives) < n_train,
                      "LogisticFineRanker::train: objective '", names[k],
                      "': the training split (all but the latest ", n_validation,
                      " examples) has only one class; add data or lower validation_fraction");
    }

    detail::GlmFitConfig fit_config;
    fit_config.max_epochs = config.max_epochs;
    fit_config.batch_size = config.batch_size;
    fit_config.learning_rate = config.learning_rate;
    fit_config.l2 = config.l2;
    fit_config.patience = config.patience;
    fit_config.seed = config.seed + k;  // each objective its own, reproducible stream
    const detail::GlmFit fit = detail::glm_fit(model.kind, x_train.view(), y_train,
                                               x_validation.view(), y_validation, fit_config);
    model.bias = fit.params[0];
    model.weights.assign(kFeatures, 0.0);
    for (std::size_t c = 0; c < d; ++c) model.weights[model.columns[c]] = fit.params[c + 1];
    for (std::size_t j = 0; j < kFeatures; ++j) {
      if (!std::binary_search(model.columns.begin(), model.columns.end(), j)) {
        model.mean[j] = 0.0;
        model.stddev[j] = 1.0;
      }
    }
    model.fold();

    if (report != nullptr) {
      ObjectiveTrainReport entry;
      entry.objective = names[k];
      entry.train_examples = n_train;
      entry.validation_examples = n_validation;
      entry.positive_rate =
          model.kind == detail::GlmKind::logistic ? positives / static_cast<double>(n) : 0.0;
      entry.validation_metric = fit.validation_metric;
      entry.validation_metric_name = fit.metric_name;
      entry.epochs = fit.epochs;
      entry.skipped_events = skipped;
      report->push_back(std::move(entry));
    }
  }
  return std::unique_ptr<LogisticFineRanker>(new LogisticFineRanker(std::move(impl)));
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

namespace {

using nlohmann::json;

std::string document_checksum(json document) {
  document.erase("checksum");
  return detail::to_hex(detail::checksum64(document.dump()));
}

// Reads fields of a model file with messages "<file>: field '<path>': ...".
class ModelReader {
 public:
  explicit ModelReader(const std::filesystem::path& path) : path_(path) {}

  [[noreturn]] void fail(std::string_view field, std::string_view what) const {
    if (field.empty()) detail::fail(ErrorCode::format, path_.string(), ": ", what);
    detail::fail(ErrorCode::format, path_.string(), ": field '", field, "': ", what);
  }

  const json& member(const json& parent, std::string_view parent_name, const char* name) const {
    const auto it = parent.find(name);
    if (it == parent.end()) fail(join(parent_name, name), "missing");
    return *it;
  }

  double number(const json& value, std::string_view field) const {
    if (!value.is_number()) fail(field, detail::cat("expected a number, got ", value.type_name()));
    const auto v = value.get<double>();
    if (!std::isfinite(v)) fail(field, "not a finite number");
    return v;
  }

  std::int64_t integer(const json& value, std::string_view field) const {
    if (!value.is_number_integer()) {
      fail(field, detail::cat("expected an integer, got ", value.dump()));
    }
    return value.get<std::int64_t>();
  }

  std::string string(const json& value, std::string_view field) const {
    if (!value.is_string()) fail(field, detail::cat("expected a string, got ", value.type_name()));
    return value.get<std::string>();
  }

  const json& array(const json& value, std::string_view field, std::size_t expected) const {
    if (!value.is_array()) fail(field, detail::cat("expected an array, got ", value.type_name()));
    if (expected != Catalog::npos && value.size() != expected) {
      fail(field, detail::cat("expected ", expected, " values, got ", value.size()));
    }
    return value;
  }

  std::vector<double> numbers(const json& value, std::string_view field,
                              std::size_t expected) const {
    array(value, field, expected);
    std::vector<double> out;
    out.reserve(value.size());
    for (std::size_t i = 0; i < value.size(); ++i) {
      out.push_back(number(value[i], detail::cat(field, "[", i, "]")));
    }
    return out;
  }

  static std::string join(std::string_view parent, std::string_view name) {
    return parent.empty() ? std::string(name) : detail::cat(parent, ".", name);
  }

 private:
  const std::filesystem::path& path_;
};

}  // namespace

void LogisticFineRanker::save(const std::filesystem::path& path) const {
  json document;
  document["format"] = kFormatName;
  document["version"] = kFormatVersion;
  document["features"] = feature_name_list();
  document["vector_dim"] = impl_->vector_dim;
  const HistoryProfileConfig& h = impl_->history;
  document["history"] = {{"view_weight", h.view_weight}, {"click_weight", h.click_weight},
                         {"cart_weight", h.cart_weight}, {"purchase_weight", h.purchase_weight},
                         {"half_life_s", h.half_life_s}, {"max_events", h.max_events}};
  json objectives = json::array();
  for (std::size_t k = 0; k < kObjectives; ++k) {
    const ObjectiveModel& model = impl_->models[k];
    json names = json::array();
    json mean = json::array();
    json stddev = json::array();
    json weights = json::array();
    for (const std::size_t j : model.columns) {
      names.push_back(feature_name_list()[j]);
      mean.push_back(model.mean[j]);
      stddev.push_back(model.stddev[j]);
      weights.push_back(model.weights[j]);
    }
    objectives.push_back({{"name", objective_list()[k]},
                          {"link", link_name(model.kind)},
                          {"features", std::move(names)},
                          {"mean", std::move(mean)},
                          {"std", std::move(stddev)},
                          {"bias", model.bias},
                          {"weights", std::move(weights)}});
  }
  document["objectives"] = std::move(objectives);
  json items = json::array();
  json counts = json::array();
  for (const auto& [id, count] : impl_->popularity.item_counts()) {
    items.push_back(id);
    counts.push_back(count);
  }
  document["popularity"] = {{"items", std::move(items)}, {"counts", std::move(counts)}};
  json rates = {{"items", json::array()},  {"views", json::array()},
                {"clicks", json::array()}, {"purchases", json::array()},
                {"dwells", json::array()}, {"log_dwell_sum", json::array()}};
  const std::span<const RateCounts> item_rates = impl_->priors.items();
  for (std::size_t r = 0; r < item_rates.size(); ++r) {
    const RateCounts& c = item_rates[r];
    if (c.views == 0.0 && c.clicks == 0.0 && c.purchases == 0.0 && c.dwells == 0.0) continue;
    rates["items"].push_back(impl_->catalog->items()[r].id);
    rates["views"].push_back(c.views);
    rates["clicks"].push_back(c.clicks);
    rates["purchases"].push_back(c.purchases);
    rates["dwells"].push_back(c.dwells);
    rates["log_dwell_sum"].push_back(c.log_dwell_sum);
  }
  document["rate_priors"] = {{"strength", impl_->priors.strength()}, {"counts", std::move(rates)}};
  document["checksum"] = document_checksum(document);
  detail::write_file_atomic(path, document.dump(1) + "\n");
}

std::unique_ptr<LogisticFineRanker> LogisticFineRanker::load(
    const std::filesystem::path& path, std::shared_ptr<const Catalog> catalog) {
  detail::require(catalog != nullptr, "LogisticFineRanker::load: the catalogue is null");
  detail::require(catalog->has_vectors(), "LogisticFineRanker::load(", path.string(),
                  "): the catalogue has no vectors (call Catalog::set_vectors first)");
  const std::string text = detail::read_file(path);
  json document;
  try {
    document = json::parse(text);
  } catch (const json::exception& e) {
    detail::fail(ErrorCode::format, path.string(), ": malformed JSON: ", e.what());
  }
  const ModelReader read(path);
  if (!document.is_object()) read.fail("", "expected a JSON object");

  const std::string format = read.string(read.member(document, "", "format"), "format");
  if (format != kFormatName) {
    read.fail("format", detail::cat("expected '", kFormatName, "', got '", format, "'"));
  }
  const std::int64_t version = read.integer(read.member(document, "", "version"), "version");
  if (version == 1) {
    read.fail("version",
              "version 1 models predate the rate-prior and relative-price features of version "
              "2; retrain the model");
  }
  if (version != kFormatVersion) {
    read.fail("version",
              detail::cat("unsupported version ", version, ", expected ", kFormatVersion));
  }

  const json& features = read.array(read.member(document, "", "features"), "features", kFeatures);
  for (std::size_t j = 0; j < kFeatures; ++j) {
    const std::string field = detail::cat("features[", j, "]");
    const std::string name = read.string(features[j], field);
    if (name != feature_name_list()[j]) {
      read.fail(field, detail::cat("expected '", feature_name_list()[j], "', got '", name, "'"));
    }
  }

  auto impl = std::make_unique<Impl>();
  const std::int64_t vector_dim =
      read.integer(read.member(document, "", "vector_dim"), "vector_dim");
  if (vector_dim <= 0) read.fail("vector_dim", "must be > 0");
  impl->vector_dim = static_cast<std::size_t>(vector_dim);
  impl->catalog = std::move(catalog);
  const json& history = read.member(document, "", "history");
  if (!history.is_object()) read.fail("history", "expected an object");
  const auto weight = [&](const char* name) {
    return static_cast<float>(
        read.number(read.member(history, "history", name), ModelReader::join("history", name)));
  };
  impl->history.view_weight = weight("view_weight");
  impl->history.click_weight = weight("click_weight");
  impl->history.cart_weight = weight("cart_weight");
  impl->history.purchase_weight = weight("purchase_weight");
  impl->history.half_life_s =
      read.number(read.member(history, "history", "half_life_s"), "history.half_life_s");
  const std::int64_t max_events =
      read.integer(read.member(history, "history", "max_events"), "history.max_events");
  if (max_events <= 0) read.fail("history.max_events", "must be > 0");
  impl->history.max_events = static_cast<std::size_t>(max_events);
  try {
    impl->history.validate();
  } catch (const Error& e) {
    read.fail("history", e.what());
  }

  const json& objectives =
      read.array(read.member(document, "", "objectives"), "objectives", kObjectives);
  for (std::size_t k = 0; k < kObjectives; ++k) {
    const std::string where = detail::cat("objectives[", k, "]");
    const json& entry = objectives[k];
    if (!entry.is_object()) read.fail(where, "expected an object");
    ObjectiveModel& model = impl->models[k];
    model.kind = kObjectiveKinds[k];
    const std::string name = read.string(read.member(entry, where, "name"), where + ".name");
    if (name != objective_list()[k]) {
      read.fail(where + ".name",
                detail::cat("expected '", objective_list()[k], "', got '", name, "'"));
    }
    const std::string link = read.string(read.member(entry, where, "link"), where + ".link");
    if (link != link_name(model.kind)) {
      read.fail(where + ".link",
                detail::cat("expected '", link_name(model.kind), "', got '", link, "'"));
    }
    // The model's features: known names, in feature_names() order, no repeats.
    const json& used =
        read.array(read.member(entry, where, "features"), where + ".features", Catalog::npos);
    if (used.empty()) read.fail(where + ".features", "is empty");
    for (std::size_t c = 0; c < used.size(); ++c) {
      const std::string field = detail::cat(where, ".features[", c, "]");
      const std::string feature = read.string(used[c], field);
      const auto& all = feature_name_list();
      const auto it = std::find(all.begin(), all.end(), feature);
      if (it == all.end()) read.fail(field, detail::cat("unknown feature '", feature, "'"));
      const auto j = static_cast<std::size_t>(it - all.begin());
      if (!model.columns.empty() && j <= model.columns.back()) {
        read.fail(field, detail::cat("'", feature, "' repeats or is out of feature order"));
      }
      model.columns.push_back(j);
    }
    const std::size_t d = model.columns.size();
    const std::vector<double> mean =
        read.numbers(read.member(entry, where, "mean"), where + ".mean", d);
    const std::vector<double> stddev =
        read.numbers(read.member(entry, where, "std"), where + ".std", d);
    model.bias = read.number(read.member(entry, where, "bias"), where + ".bias");
    const std::vector<double> weights =
        read.numbers(read.member(entry, where, "weights"), where + ".weights", d);
    model.mean.assign(kFeatures, 0.0);
    model.stddev.assign(kFeatures, 1.0);
    model.weights.assign(kFeatures, 0.0);
    for (std::size_t c = 0; c < d; ++c) {
      if (!(stddev[c] > 0.0)) read.fail(detail::cat(where, ".std[", c, "]"), "must be > 0");
      model.mean[model.columns[c]] = mean[c];
      model.stddev[model.columns[c]] = stddev[c];
      model.weights[model.columns[c]] = weights[c];
    }
    model.fold();
  }

  const json& popularity = read.member(document, "", "popularity");
  if (!popularity.is_object()) read.fail("popularity", "expected an object");
  const json& items =
      read.array(read.member(popularity, "popularity", "items"), "popularity.items", Catalog::npos);
  const std::vector<double> counts = read.numbers(read.member(popularity, "popularity", "counts"),
                                                  "popularity.counts", items.size());
  std::vector<std::pair<ItemId, double>> item_counts;
  item_counts.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    item_counts.emplace_back(read.integer(items[i], detail::cat("popularity.items[", i, "]")),
                             counts[i]);
  }
  try {
    impl->popularity = Popularity::from_item_counts(item_counts);
  } catch (const Error& e) {
    read.fail("popularity", e.what());
  }

  // Rate priors: per-item counts; brand and category counts are their sums
  // over this catalogue. Items the catalogue lacks still count towards the
  // global rates, so the shrinkage targets are the trained ones.
  impl->index.emplace(*impl->catalog);
  const json& rate_priors = read.member(document, "", "rate_priors");
  if (!rate_priors.is_object()) read.fail("rate_priors", "expected an object");
  const double strength =
      read.number(read.member(rate_priors, "rate_priors", "strength"), "rate_priors.strength");
  if (!(strength > 0.0)) read.fail("rate_priors.strength", "must be > 0");
  const json& rate_counts = read.member(rate_priors, "rate_priors", "counts");
  if (!rate_counts.is_object()) read.fail("rate_priors.counts", "expected an object");
  const json& rate_items = read.array(read.member(rate_counts, "rate_priors.counts", "items"),
                                      "rate_priors.counts.items", Catalog::npos);
  const auto column = [&](const char* name) {
    const std::string field = ModelReader::join("rate_priors.counts", name);
    std::vector<double> values = read.numbers(read.member(rate_counts, "rate_priors.counts", name),
                                              field, rate_items.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (values[i] < 0.0) read.fail(detail::cat(field, "[", i, "]"), "must be >= 0");
    }
    return values;
  };
  const std::vector<double> views = column("views");
  const std::vector<double> clicks = column("clicks");
  const std::vector<double> purchases = column("purchases");
  const std::vector<double> dwells = column("dwells");
  const std::vector<double> log_dwell_sum = column("log_dwell_sum");
  std::vector<std::pair<std::size_t, RateCounts>> rows;
  rows.reserve(rate_items.size());
  RateCounts global;
  std::unordered_map<ItemId, std::size_t> seen;
  for (std::size_t i = 0; i < rate_items.size(); ++i) {
    const std::string field = detail::cat("rate_priors.counts.items[", i, "]");
    const ItemId id = read.integer(rate_items[i], field);
    if (const auto [it, inserted] = seen.emplace(id, i); !inserted) {
      read.fail(field, detail::cat("item ", id, " repeats items[", it->second, "]"));
    }
    const RateCounts c{views[i], clicks[i], purchases[i], dwells[i], log_dwell_sum[i]};
    global.add(c);
    rows.emplace_back(impl->catalog->index_of(id), c);
  }
  impl->priors = RatePriors(*impl->index, impl->catalog->size(), strength, global);
  for (const auto& [row, c] : rows) {
    if (row != Catalog::npos) impl->priors.add(*impl->index, row, c);
  }

  const std::string checksum = read.string(read.member(document, "", "checksum"), "checksum");
  const std::string actual = document_checksum(document);
  if (checksum != actual) {
    read.fail("checksum",
              detail::cat("mismatch: the file says ", checksum, ", its content hashes to ", actual,
                          " (the file is damaged or was edited)"));
  }
  detail::require(impl->catalog->vector_dim() == impl->vector_dim, "LogisticFineRanker::load(",
                  path.string(), "): the model was trained with ", impl->vector_dim,
                  "-dimensional item vectors, the catalogue has ", impl->catalog->vector_dim());
  return std::unique_ptr<LogisticFineRanker>(new LogisticFineRanker(std::move(impl)));
}

}  // namespace funnel
