// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// LogisticFineRanker: the first FineRanker. One generalised linear model per
/// objective over user-item features read from the user's HistoryProfile and
/// the catalogue: similarity of the item to the history (mean and best
/// match), category and brand affinity, price gap to the user's usual band,
/// item popularity, the coarse score, history length and profile features.
///
/// Objectives: "ctr" = logistic P(click | impression); "cvr" = logistic
/// P(purchase | click); "dwell" = linear regression of log(1 + dwell_s) given
/// a click, reported as expected seconds (>= 0).
///
/// Training examples come from an events log: each `view` is an impression,
/// labelled clicked when the same user clicks the same item within
/// attribution_window_s after it; each `click` is labelled converted when the
/// same user purchases the item within attribution_window_s; each click with
/// dwell_s is a dwell example. Features of an example are computed from the
/// history strictly before the example's timestamp, so no label leaks in.
///
/// Files: save() writes JSON (format version, feature names, standardisation,
/// weights per objective, popularity counts), atomically; load() validates it.
///
/// Threading: immutable after construction; score() may run concurrently.
/// The ranker shares ownership of the catalogue, which must carry vectors.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "funnel/catalog.hpp"
#include "funnel/event.hpp"
#include "funnel/fine_ranker.hpp"
#include "funnel/history_profile.hpp"
#include "funnel/popularity.hpp"
#include "funnel/user.hpp"

namespace funnel {

/// Settings of LogisticFineRanker::train.
struct LogisticTrainConfig {
  std::size_t max_epochs = 40;
  std::size_t batch_size = 256;
  float learning_rate = 0.05F;  ///< Adam step size
  float l2 = 1e-4F;             ///< L2 penalty on non-bias weights
  /// Fraction of examples (the latest by time) held out for early stopping.
  double validation_fraction = 0.1;
  std::size_t patience = 4;  ///< epochs without validation improvement before stopping
  std::uint64_t seed = 42;
  std::int64_t attribution_window_s = 3600;
  HistoryProfileConfig history;

  /// @throws Error(invalid_argument) naming the bad field.
  void validate() const;
};

/// What training did, per objective.
struct ObjectiveTrainReport {
  std::string objective;
  std::size_t train_examples = 0;
  std::size_t validation_examples = 0;
  double positive_rate = 0.0;      ///< classification objectives: share of positives
  double validation_metric = 0.0;  ///< AUC (ctr, cvr) or RMSE of log dwell (dwell)
  std::size_t epochs = 0;
};

class LogisticFineRanker final : public FineRanker {
 public:
  ~LogisticFineRanker() override;

  /// Feature names, in model column order.
  [[nodiscard]] static std::span<const std::string> feature_names();

  /// Trains all objectives on `events` (any order).
  /// @param[in] catalog must carry vectors (Catalog::set_vectors)
  /// @param[in] users   profiles; events of unknown users still train, without profile features
  /// @param[out] report one entry per objective, may be null
  /// @throws Error(invalid_argument) when the catalogue has no vectors, the
  ///         config is invalid, or an objective has no example of some class.
  static std::unique_ptr<LogisticFineRanker> train(
      std::shared_ptr<const Catalog> catalog, std::span<const Event> events,
      std::span<const UserProfile> users, const LogisticTrainConfig& config = {},
      std::vector<ObjectiveTrainReport>* report = nullptr);

  /// Loads a model written by save(), bound to a catalogue with vectors.
  /// @throws Error(io) / Error(format) naming the file and the problem.
  static std::unique_ptr<LogisticFineRanker> load(const std::filesystem::path& path,
                                                  std::shared_ptr<const Catalog> catalog);

  void save(const std::filesystem::path& path) const;

  [[nodiscard]] std::span<const std::string> objectives() const override;
  [[nodiscard]] std::string name() const override { return "logistic"; }
  void score(const UserContext& user, std::span<const Candidate> candidates,
             MatrixView<float> scores) const override;

  /// Computes the feature rows for these candidates (before standardisation).
  /// @param[out] features candidates.size() x feature_names().size()
  void features(const UserContext& user, std::span<const Candidate> candidates,
                MatrixView<float> features) const;

 private:
  struct Impl;
  explicit LogisticFineRanker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace funnel
