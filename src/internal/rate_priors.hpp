// SPDX-License-Identifier: Apache-2.0
#pragma once

// Smoothed click, conversion and dwell rates ("rate priors") of an item,
// brand or category, shared by LogisticFineRanker and DeepFineRanker so that
// both compute the features their headers define in the same way:
//   ctr prior   = logit((clicks + m g_ctr) / (views + m))
//   cvr prior   = logit((purchases + m g_cvr) / (clicks + m))
//   dwell prior = (sum of log(1 + dwell_s) + m g_dwell) / (dwells + m)
// with rates clamped to [1e-6, 1 - 1e-6] before the logit and g the global
// rates (RateTargets::of the summed counts).

#include <algorithm>
#include <cmath>
#include <optional>

#include "funnel/event.hpp"

namespace funnel::detail {

// Event counts behind the rate priors of one item, brand or category.
struct RateCounts {
  double views = 0.0;
  double clicks = 0.0;
  double purchases = 0.0;
  double dwells = 0.0;         // clicks with dwell_s
  double log_dwell_sum = 0.0;  // sum of log(1 + dwell_s) over them

  void add(EventType type, std::optional<double> dwell_s) noexcept {
    if (type == EventType::view) views += 1.0;
    if (type == EventType::purchase) purchases += 1.0;
    if (type == EventType::click) {
      clicks += 1.0;
      if (dwell_s) {
        dwells += 1.0;
        log_dwell_sum += std::log1p(std::max(0.0, *dwell_s));
      }
    }
  }
  void add(const RateCounts& o) noexcept {
    views += o.views;
    clicks += o.clicks;
    purchases += o.purchases;
    dwells += o.dwells;
    log_dwell_sum += o.log_dwell_sum;
  }
};

inline constexpr double kRateClamp = 1e-6;  // keeps logit finite for rates of 0 or 1

inline double rate_logit(double p) noexcept {
  const double q = std::clamp(p, kRateClamp, 1.0 - kRateClamp);
  return std::log(q / (1.0 - q));
}

// The global rates the priors shrink towards, and the three priors.
struct RateTargets {
  double ctr = 0.0;
  double cvr = 0.0;
  double dwell = 0.0;  // mean log(1 + dwell_s)

  static RateTargets of(const RateCounts& global) noexcept {
    RateTargets g;
    g.ctr = global.views > 0.0 ? global.clicks / global.views : 0.0;
    g.cvr = global.clicks > 0.0 ? global.purchases / global.clicks : 0.0;
    g.dwell = global.dwells > 0.0 ? global.log_dwell_sum / global.dwells : 0.0;
    return g;
  }

  [[nodiscard]] double ctr_prior(const RateCounts& c, double m) const noexcept {
    return rate_logit((c.clicks + m * ctr) / (c.views + m));
  }
  [[nodiscard]] double cvr_prior(const RateCounts& c, double m) const noexcept {
    return rate_logit((c.purchases + m * cvr) / (c.clicks + m));
  }
  [[nodiscard]] double dwell_prior(const RateCounts& c, double m) const noexcept {
    return (c.log_dwell_sum + m * dwell) / (c.dwells + m);
  }
};

}  // namespace funnel::detail
