// SPDX-License-Identifier: Apache-2.0
#include "funnel/fine_ranker_eval.hpp"

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "funnel/deep_fine_ranker.hpp"
#include "funnel/error.hpp"
#include "funnel/matrix.hpp"
#include "funnel/metrics.hpp"
#include "internal/error_util.hpp"

namespace funnel {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Log-loss of a confident wrong answer stays finite (and comparable across
// rankers that output exact 0 or 1).
constexpr double kProbabilityClamp = 1e-7;

// What an objective's score means, and so which labels it is measured on.
enum class Role : std::uint8_t { click, purchase, dwell, other };

// A DeepFineRanker states each task's label; any other ranker is read by the
// default objective names.
std::vector<Role> objective_roles(const FineRanker& ranker) {
  const std::span<const std::string> names = ranker.objectives();
  std::vector<Role> roles(names.size(), Role::other);
  if (const auto* deep = dynamic_cast<const DeepFineRanker*>(&ranker)) {
    const std::vector<DeepTaskConfig>& tasks = deep->model().config().tasks;
    for (std::size_t c = 0; c < roles.size() && c < tasks.size(); ++c) {
      const DeepTaskConfig& task = tasks[c];
      if (task.label == "click" && task.kind == DeepTaskKind::binary) roles[c] = Role::click;
      if (task.label == "purchase" && task.kind == DeepTaskKind::ctcvr) roles[c] = Role::purchase;
      if (task.label == "dwell" && task.kind == DeepTaskKind::regression) roles[c] = Role::dwell;
    }
    return roles;
  }
  for (std::size_t c = 0; c < roles.size(); ++c) {
    if (names[c] == "ctr") roles[c] = Role::click;
    if (names[c] == "cvr") roles[c] = Role::purchase;
    if (names[c] == "dwell") roles[c] = Role::dwell;
  }
  return roles;
}

// A click of one item: its time and dwell.
struct ItemEvent {
  ItemId item = kNoItem;
  std::int64_t ts = 0;
  std::optional<double> dwell_s;
};

// One user's events of catalogue items, oldest first (stable for equal ts),
// and its clicks and purchases sorted by (item, ts) for the labels.
struct UserLog {
  std::string id;
  std::vector<HistoryEvent> timeline;
  std::vector<ItemEvent> clicks;
  std::vector<ItemEvent> purchases;
};

bool by_item_then_time(const ItemEvent& a, const ItemEvent& b) {
  return a.item != b.item ? a.item < b.item : a.ts < b.ts;
}

// The first event of `item` in (after, after + window], or null.
const ItemEvent* first_in_window(std::span<const ItemEvent> sorted, ItemId item, std::int64_t after,
                                 std::int64_t window) {
  const ItemEvent probe{item, after, std::nullopt};
  const auto it = std::upper_bound(
      sorted.begin(), sorted.end(), probe,
      [](const ItemEvent& a, const ItemEvent& b) { return by_item_then_time(a, b); });
  if (it == sorted.end() || it->item != item || it->ts > after + window) return nullptr;
  return &*it;
}

// A labelled impression (a view at or after from_ts).
struct Impression {
  std::size_t user = 0;  // index into the user logs
  ItemId item = kNoItem;
  std::int64_t ts = 0;
  bool clicked = false;
  bool converted = false;
  std::optional<double> dwell_s;  // of the click
};

// Binary scores and labels of one metric.
struct BinarySet {
  std::vector<float> scores;
  std::vector<int> labels;
};

double safe_auc(const BinarySet& set) {
  const auto positives = std::count(set.labels.begin(), set.labels.end(), 1);
  if (positives == 0 || static_cast<std::size_t>(positives) == set.labels.size()) return kNaN;
  return auc(set.scores, set.labels);
}

ObjectiveEval binary_eval(const std::string& name, const BinarySet& set) {
  ObjectiveEval eval;
  eval.objective = name;
  eval.examples = set.labels.size();
  eval.rmse = kNaN;
  if (set.labels.empty()) {
    eval.positive_rate = eval.auc = eval.log_loss = kNaN;
    return eval;
  }
  double loss = 0.0;
  std::size_t positives = 0;
  for (std::size_t i = 0; i < set.labels.size(); ++i) {
    const double p =
        std::clamp(static_cast<double>(set.scores[i]), kProbabilityClamp, 1.0 - kProbabilityClamp);
    const bool positive = set.labels[i] == 1;
    positives += positive ? 1 : 0;
    loss -= positive ? std::log(p) : std::log1p(-p);
  }
  const auto n = static_cast<double>(set.labels.size());
  eval.positive_rate = static_cast<double>(positives) / n;
  eval.log_loss = loss / n;
  eval.auc = safe_auc(set);
  return eval;
}

// Regression on log(1 + seconds) and the AUC of long (above the median) vs
// short visits.
ObjectiveEval dwell_eval(const std::string& name, const std::vector<float>& predicted_s,
                         const std::vector<double>& dwell_s) {
  ObjectiveEval eval;
  eval.objective = name;
  eval.examples = dwell_s.size();
  eval.log_loss = kNaN;
  if (dwell_s.empty()) {
    eval.positive_rate = eval.auc = eval.rmse = kNaN;
    return eval;
  }
  double squared = 0.0;
  for (std::size_t i = 0; i < dwell_s.size(); ++i) {
    const double error = std::log1p(static_cast<double>(predicted_s[i])) - std::log1p(dwell_s[i]);
    squared += error * error;
  }
  const auto n = static_cast<double>(dwell_s.size());
  eval.rmse = std::sqrt(squared / n);
  std::vector<double> sorted = dwell_s;
  std::sort(sorted.begin(), sorted.end());
  const std::size_t half = sorted.size() / 2;
  const double median =
      sorted.size() % 2 == 1 ? sorted[half] : 0.5 * (sorted[half - 1] + sorted[half]);
  BinarySet set{predicted_s, std::vector<int>(dwell_s.size())};
  std::size_t positives = 0;
  for (std::size_t i = 0; i < dwell_s.size(); ++i) {
    set.labels[i] = dwell_s[i] > median ? 1 : 0;
    positives += static_cast<std::size_t>(set.labels[i]);
  }
  eval.positive_rate = static_cast<double>(positives) / n;
  eval.auc = safe_auc(set);
  return eval;
}

ObjectiveEval unmeasured(const std::string& name) {
  ObjectiveEval eval;
  eval.objective = name;
  eval.positive_rate = eval.auc = eval.log_loss = eval.rmse = kNaN;
  return eval;
}

// The running mean of a user's history vectors, advanced in time order so
// that every request costs only the events added since the previous one.
class HistoryMean {
 public:
  HistoryMean(const Catalog& catalog, std::span<const HistoryEvent> timeline)
      : catalog_(catalog), timeline_(timeline), sum_(catalog.vector_dim(), 0.0) {}

  // Adds the events with ts < until; returns how many events are now in.
  std::size_t advance(std::int64_t until) {
    while (next_ < timeline_.size() && timeline_[next_].ts < until) {
      const std::span<const float> v = catalog_.vector(timeline_[next_].item);
      for (std::size_t d = 0; d < sum_.size(); ++d) sum_[d] += static_cast<double>(v[d]);
      ++next_;
    }
    return next_;
  }

  // The item's vector . the mean vector normalised to unit length (0
  // without history or when the mean is the zero vector).
  [[nodiscard]] float coarse_score(ItemId item) const {
    if (next_ == 0) return 0.0F;
    double norm = 0.0;
    for (const double s : sum_) norm += s * s;
    if (!(norm > 0.0)) return 0.0F;
    const std::span<const float> v = catalog_.vector(item);
    double dot = 0.0;
    for (std::size_t d = 0; d < sum_.size(); ++d) dot += static_cast<double>(v[d]) * sum_[d];
    return static_cast<float>(dot / std::sqrt(norm));
  }

 private:
  const Catalog& catalog_;
  std::span<const HistoryEvent> timeline_;
  std::vector<double> sum_;
  std::size_t next_ = 0;
};

UserContext context_for(const UserLog& log, const UserProfile* profile, std::size_t history_size,
                        std::int64_t now_ts) {
  UserContext context;
  if (profile != nullptr) {
    context.profile = *profile;
  } else {
    context.profile.id = log.id;
  }
  context.history.assign(log.timeline.begin(),
                         log.timeline.begin() + static_cast<std::ptrdiff_t>(history_size));
  context.now_ts = now_ts;
  return context;
}

// score() must honour FineRanker's contract: metrics and fusion need finite,
// non-negative values.
void check_scores(const FineRanker& ranker, MatrixView<const float> scores,
                  std::span<const Candidate> candidates, const UserContext& user) {
  for (std::size_t i = 0; i < scores.rows; ++i) {
    for (std::size_t c = 0; c < scores.cols; ++c) {
      const float s = scores(i, c);
      if (!std::isfinite(s) || s < 0.0F) {
        detail::fail(ErrorCode::invalid_argument, "evaluate_fine_ranker: ranker '", ranker.name(),
                     "' scored objective '", ranker.objectives()[c], "' of item ", candidates[i].id,
                     " for user '", user.profile.id, "' at ts ", user.now_ts, " as ", s,
                     ", expected a finite value >= 0");
      }
    }
  }
}

}  // namespace

FineRankerEvalReport evaluate_fine_ranker(const FineRanker& ranker, const Catalog& catalog,
                                          std::span<const Event> events,
                                          std::span<const UserProfile> users,
                                          const FineRankerEvalConfig& config) {
  detail::require(catalog.has_vectors(),
                  "evaluate_fine_ranker: the catalogue has no vectors (coarse scores need them; "
                  "call Catalog::set_vectors)");
  detail::require(config.k > 0, "FineRankerEvalConfig.k must be at least 1");
  detail::require(config.attribution_window_s > 0,
                  "FineRankerEvalConfig.attribution_window_s must be > 0, got ",
                  config.attribution_window_s);
  const std::span<const std::string> objectives = ranker.objectives();
  const Fusion fusion(config.fusion, objectives);
  const std::vector<Role> roles = objective_roles(ranker);
  const std::size_t n_objectives = objectives.size();

  FineRankerEvalReport report;

  // Per-user logs of catalogue items.
  std::vector<UserLog> logs;
  std::unordered_map<std::string, std::size_t> log_of;
  for (const Event& event : events) {
    if (!catalog.contains(event.item)) {
      ++report.skipped_events;
      continue;
    }
    const auto [it, inserted] = log_of.emplace(event.user, logs.size());
    if (inserted) logs.push_back(UserLog{event.user, {}, {}, {}});
    UserLog& log = logs[it->second];
    log.timeline.push_back({event.item, event.type, event.ts, event.dwell_s});
    if (event.type == EventType::click) log.clicks.push_back({event.item, event.ts, event.dwell_s});
    if (event.type == EventType::purchase) log.purchases.push_back({event.item, event.ts, {}});
  }
  for (UserLog& log : logs) {
    std::stable_sort(log.timeline.begin(), log.timeline.end(),
                     [](const HistoryEvent& a, const HistoryEvent& b) { return a.ts < b.ts; });
    std::stable_sort(log.clicks.begin(), log.clicks.end(), by_item_then_time);
    std::stable_sort(log.purchases.begin(), log.purchases.end(), by_item_then_time);
  }
  std::unordered_map<std::string, const UserProfile*> profile_of;
  for (const UserProfile& profile : users) profile_of.emplace(profile.id, &profile);
  const auto profile_for = [&](const UserLog& log) -> const UserProfile* {
    const auto it = profile_of.find(log.id);
    return it == profile_of.end() ? nullptr : it->second;
  };

  // Labelled impressions, grouped per user in time order.
  std::vector<Impression> impressions;
  const std::int64_t window = config.attribution_window_s;
  for (std::size_t u = 0; u < logs.size(); ++u) {
    const UserLog& log = logs[u];
    for (const HistoryEvent& event : log.timeline) {
      if (event.type != EventType::view || event.ts < config.from_ts) continue;
      Impression impression{u, event.item, event.ts, false, false, std::nullopt};
      if (const ItemEvent* click = first_in_window(log.clicks, event.item, event.ts, window)) {
        impression.clicked = true;
        impression.dwell_s = click->dwell_s;
        impression.converted =
            first_in_window(log.purchases, event.item, click->ts, window) != nullptr;
      }
      impressions.push_back(impression);
    }
  }
  detail::require(!impressions.empty(), "evaluate_fine_ranker: no impression (view event of a ",
                  "catalogue item) at or after from_ts ", config.from_ts, " among ", events.size(),
                  " events");
  report.impressions = impressions.size();

  // Score every impression request, user by user, and each user's ranking
  // request as of from_ts.
  std::vector<float> impression_scores(impressions.size() * n_objectives);
  double score_seconds = 0.0;
  double ndcg_sum = 0.0;
  double recall_sum = 0.0;
  std::vector<Candidate> candidates;
  std::vector<float> fused;
  std::size_t next = 0;  // first impression of the current user
  for (std::size_t u = 0; u < logs.size(); ++u) {
    const UserLog& log = logs[u];
    HistoryMean mean(catalog, log.timeline);

    std::unordered_set<ItemId> purchased;
    std::vector<ItemId> impressed;  // distinct, in order of first impression
    std::unordered_set<ItemId> impressed_set;
    for (const HistoryEvent& event : log.timeline) {
      if (event.ts < config.from_ts) continue;
      if (event.type == EventType::purchase) purchased.insert(event.item);
      if (event.type == EventType::view && impressed_set.insert(event.item).second) {
        impressed.push_back(event.item);
      }
    }
    const std::size_t before_period = mean.advance(config.from_ts);
    if (!purchased.empty()) {
      ++report.ranking_users;
      if (!impressed.empty()) {
        const UserContext context =
            context_for(log, profile_for(log), before_period, config.from_ts);
        candidates.clear();
        for (const ItemId item : impressed) candidates.push_back({item, mean.coarse_score(item)});
        Matrix<float> scores(candidates.size(), n_objectives);
        ranker.score(context, candidates, scores.view());
        check_scores(ranker, scores.view(), candidates, context);
        fused.assign(candidates.size(), 0.0F);
        fusion.fuse(scores.view(), fused);
        std::vector<std::size_t> order(candidates.size());
        for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t a, std::size_t b) { return fused[a] > fused[b]; });
        std::vector<ItemId> ranked;
        ranked.reserve(order.size());
        for (const std::size_t i : order) ranked.push_back(candidates[i].id);
        ndcg_sum += ndcg_at_k(ranked, purchased, config.k);
        recall_sum += recall_at_k(ranked, purchased, config.k);
      }
    }

    // This user's impressions are impressions[next, end), in time order.
    std::size_t end = next;
    while (end < impressions.size() && impressions[end].user == u) ++end;
    for (std::size_t begin = next; begin < end;) {
      const std::int64_t ts = impressions[begin].ts;
      std::size_t stop = begin;
      while (stop < end && impressions[stop].ts == ts) ++stop;
      const std::size_t history_size = mean.advance(ts);
      const UserContext context = context_for(log, profile_for(log), history_size, ts);
      candidates.clear();
      for (std::size_t i = begin; i < stop; ++i) {
        candidates.push_back({impressions[i].item, mean.coarse_score(impressions[i].item)});
      }
      const MatrixView<float> scores(impression_scores.data() + begin * n_objectives,
                                     candidates.size(), n_objectives);
      const auto start = std::chrono::steady_clock::now();
      ranker.score(context, candidates, scores);
      score_seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      check_scores(ranker, scores, candidates, context);
      ++report.requests;
      begin = stop;
    }
    next = end;
  }
  assert(next == impressions.size());
  report.score_ms_per_request = 1000.0 * score_seconds / static_cast<double>(report.requests);
  report.ndcg =
      report.ranking_users == 0 ? kNaN : ndcg_sum / static_cast<double>(report.ranking_users);
  report.recall =
      report.ranking_users == 0 ? kNaN : recall_sum / static_cast<double>(report.ranking_users);

  // Per-objective metrics.
  const auto score_of = [&](std::size_t i, std::size_t c) {
    return impression_scores[i * n_objectives + c];
  };
  std::optional<std::size_t> click_column;
  std::optional<std::size_t> purchase_column;
  for (std::size_t c = 0; c < n_objectives; ++c) {
    const std::string& name = objectives[c];
    switch (roles[c]) {
      case Role::click: {
        if (!click_column) click_column = c;
        BinarySet set;
        for (std::size_t i = 0; i < impressions.size(); ++i) {
          set.scores.push_back(score_of(i, c));
          set.labels.push_back(impressions[i].clicked ? 1 : 0);
        }
        report.objectives.push_back(binary_eval(name, set));
        break;
      }
      case Role::purchase: {
        if (!purchase_column) purchase_column = c;
        BinarySet set;
        for (std::size_t i = 0; i < impressions.size(); ++i) {
          if (!impressions[i].clicked) continue;
          set.scores.push_back(score_of(i, c));
          set.labels.push_back(impressions[i].converted ? 1 : 0);
        }
        report.objectives.push_back(binary_eval(name, set));
        break;
      }
      case Role::dwell: {
        std::vector<float> predicted;
        std::vector<double> dwell;
        for (std::size_t i = 0; i < impressions.size(); ++i) {
          if (!impressions[i].clicked || !impressions[i].dwell_s) continue;
          predicted.push_back(score_of(i, c));
          dwell.push_back(*impressions[i].dwell_s);
        }
        report.objectives.push_back(dwell_eval(name, predicted, dwell));
        break;
      }
      case Role::other: report.objectives.push_back(unmeasured(name)); break;
    }
  }
  if (click_column && purchase_column) {
    BinarySet set;
    for (std::size_t i = 0; i < impressions.size(); ++i) {
      set.scores.push_back(score_of(i, *click_column) * score_of(i, *purchase_column));
      set.labels.push_back(impressions[i].clicked && impressions[i].converted ? 1 : 0);
    }
    report.objectives.push_back(binary_eval("ctcvr", set));
  } else {
    report.objectives.push_back(unmeasured("ctcvr"));
  }
  return report;
}

}  // namespace funnel
