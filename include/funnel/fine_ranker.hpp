// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// FineRanker: scores a request's candidates on several objectives at once.
///
/// Scores are nc x n_objectives row-major: row i holds candidate i's score on
/// each objective, in the order objectives() lists them. The default
/// objectives are "ctr" (probability of a click given an impression), "cvr"
/// (probability of a purchase given a click) and "dwell" (expected seconds on
/// the item page given a click). Every score is finite and non-negative, so
/// that a weighted product of them is well defined (see fusion.hpp).
///
/// Ownership: factories and load functions return std::unique_ptr; a Pipeline
/// holds its ranker as std::shared_ptr<const FineRanker>.
///
/// Threading: score() and the other const methods may run concurrently from
/// many threads.

#include <cstddef>
#include <span>
#include <string>

#include "funnel/item_id.hpp"
#include "funnel/matrix.hpp"
#include "funnel/user.hpp"

namespace funnel {

/// One candidate handed from the coarse stage to the fine stage.
struct Candidate {
  ItemId id = kNoItem;
  /// The coarse stage's inner product (or negated squared L2 distance), so
  /// that higher is better whatever the metric.
  float coarse_score = 0.0F;
};

/// Scores candidates for one user on several objectives.
class FineRanker {
 public:
  virtual ~FineRanker() = default;

  /// Names of the objectives, in score column order. Stable for the object's life.
  [[nodiscard]] virtual std::span<const std::string> objectives() const = 0;

  /// Short description for logs.
  [[nodiscard]] virtual std::string name() const = 0;

  /// Scores one user's candidates.
  /// @param[in]  user       the request's user context
  /// @param[in]  candidates nc candidates
  /// @param[out] scores     nc x objectives().size()
  /// @throws Error(invalid_argument) when scores has the wrong shape or a
  ///         candidate id is unknown to the ranker (the message names it).
  virtual void score(const UserContext& user, std::span<const Candidate> candidates,
                     MatrixView<float> scores) const = 0;
};

}  // namespace funnel
