// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Offline evaluation of any FineRanker on a held-out period of an event log
/// (what `funnel eval` prints): per objective AUC and log-loss (RMSE for
/// regression objectives such as dwell), and NDCG@10 / recall@10 of the
/// fused score against held-out purchases.
///
/// Protocol. Impressions are the `view` events with ts >= from_ts. Each is
/// labelled as the trainers label (attribution_window_s): clicked, converted
/// (a purchase follows the click), dwell (the click's dwell_s). Impressions
/// of one user with the same ts form one request: the ranker scores them in
/// one score() call with a UserContext of the user's profile and all events
/// strictly before that ts, now_ts = ts, and coarse_score = the inner
/// product of the item's vector with the mean vector of that history
/// normalised to unit length (0 without history; what an exact
/// inner-product stage returns for a history-only user vector, which the
/// Pipeline normalises, and what both trainers use where no coarse stage
/// ran).
///  - objective "ctr" (or any objective whose label is "click"): AUC and
///    log-loss over all impressions against the click label;
///  - "cvr" (label "purchase" given click): AUC and log-loss over clicked
///    impressions; additionally "ctcvr" = ctr x cvr over all impressions
///    against clicked-and-purchased;
///  - "dwell": RMSE of log(1 + predicted seconds) against log(1 + dwell_s)
///    over clicked impressions with a dwell, and the AUC of the prediction
///    for dwell above the median dwell of those impressions.
///  Other objective names are reported with examples = 0.
///  An impression is clicked when the same user clicks the same item in
///  (view.ts, view.ts + attribution_window_s]; the first such click is "the
///  click": converted when a purchase of the item follows it within the
///  window, dwell = its dwell_s. The history mean vector is the plain mean
///  of the catalogue vectors of the history's events (one term per event).
///  Events of items the catalogue lacks are left out of histories,
///  impressions and purchases (counted in skipped_events). Log-loss clamps
///  probabilities to [1e-7, 1 - 1e-7]; the dwell median is the middle value
///  (the mean of the middle two for an even count), and positive_rate of
///  "dwell" is the share above it. A metric without examples, or an AUC
///  with one class, is NaN.
/// Ranking: each user with at least one purchase at or after from_ts gets one
/// request as of from_ts (history strictly before it) whose candidates are
/// the distinct items impressed to the user at or after from_ts; they are
/// ranked by the fused score (FusionConfig) and NDCG@k / recall@k are taken
/// against the items the user purchased in that period, averaged over users
/// (tied fused scores keep the order of first impression; a user with no
/// impressed item counts 0; NaN when no user has a held-out purchase).
///
/// Threading: a pure function of its arguments; it calls ranker.score() from
/// the calling thread only.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "funnel/catalog.hpp"
#include "funnel/event.hpp"
#include "funnel/fine_ranker.hpp"
#include "funnel/fusion.hpp"
#include "funnel/user.hpp"

namespace funnel {

/// Settings of evaluate_fine_ranker().
struct FineRankerEvalConfig {
  std::int64_t from_ts = 0;                  ///< start of the held-out period
  std::int64_t attribution_window_s = 3600;  ///< as in training
  std::size_t k = 10;                        ///< cut-off of NDCG / recall
  FusionConfig fusion;                       ///< how objectives fuse for the ranking metrics
};

/// Metrics of one objective (NaN where undefined, e.g. AUC with one class).
struct ObjectiveEval {
  std::string objective;     ///< "ctr", "cvr", "ctcvr", "dwell", ...
  std::size_t examples = 0;  ///< labelled impressions it was measured on
  double positive_rate = 0.0;
  double auc = 0.0;
  double log_loss = 0.0;  ///< NaN for regression objectives
  double rmse = 0.0;      ///< regression objectives (log(1 + seconds) space); NaN otherwise
};

/// The full report.
struct FineRankerEvalReport {
  std::vector<ObjectiveEval> objectives;  ///< the ranker's objectives, then "ctcvr"
  std::size_t impressions = 0;            ///< views at or after from_ts (of catalogue items)
  std::size_t requests = 0;               ///< score() calls over the impressions (user, ts groups)
  std::size_t skipped_events = 0;         ///< events of items the catalogue lacks (all periods)
  std::size_t ranking_users = 0;          ///< users with a held-out purchase
  double ndcg = 0.0;                      ///< NDCG@k of the fused score vs held-out purchases
  double recall = 0.0;                    ///< recall@k of the same ranking
  double score_ms_per_request = 0.0;      ///< mean wall time of score() per request
};

/// Evaluates a ranker (see the file comment).
/// @throws Error(invalid_argument) when the catalogue has no vectors, the
///         fusion names an objective the ranker lacks (or is invalid), k or
///         attribution_window_s is 0 or negative, there is no impression at
///         or after from_ts, or the ranker returns a non-finite or negative
///         score (the message names the objective, item, user and time).
FineRankerEvalReport evaluate_fine_ranker(const FineRanker& ranker, const Catalog& catalog,
                                          std::span<const Event> events,
                                          std::span<const UserProfile> users,
                                          const FineRankerEvalConfig& config);

}  // namespace funnel
