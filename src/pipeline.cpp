// SPDX-License-Identifier: Apache-2.0
#include "funnel/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "funnel/history_profile.hpp"
#include "internal/error_util.hpp"

namespace funnel {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// History events weigh what they weigh in a HistoryProfile (view 0.25,
// click 1, cart 2, purchase 3), so the coarse query and the fine ranker's
// history features agree on what matters.
float type_weight(EventType type) { return HistoryProfileConfig{}.type_weight(type); }

// Checks the wiring before any member is built from it.
const FineRanker& checked_stages(const Catalog* catalog, const Encoder* encoder,
                                 const CoarseRanker* coarse, const FineRanker* fine,
                                 const ReasonGenerator* reasons, const PipelineConfig& config) {
  detail::require(catalog != nullptr, "Pipeline: the catalog is null");
  detail::require(encoder != nullptr, "Pipeline: the encoder is null");
  detail::require(coarse != nullptr, "Pipeline: the coarse ranker is null");
  detail::require(fine != nullptr, "Pipeline: the fine ranker is null");
  detail::require(reasons != nullptr || !config.explain,
                  "Pipeline: the reason generator is null while explain is on");
  detail::require(encoder->dim() == coarse->dim(), "Pipeline: encoder dimension ", encoder->dim(),
                  " differs from the coarse ranker's ", coarse->dim());
  config.validate();
  return *fine;
}

}  // namespace

void PipelineConfig::validate() const {
  detail::require(coarse_k > 0, "PipelineConfig.coarse_k must be > 0");
  detail::require(top_n > 0, "PipelineConfig.top_n must be > 0");
  detail::require(top_n <= coarse_k, "PipelineConfig.top_n (", top_n, ") must be <= coarse_k (",
                  coarse_k, ")");
  detail::require(history_half_life_s > 0 && std::isfinite(history_half_life_s),
                  "PipelineConfig.history_half_life_s must be a positive number");
  detail::require(query_weight >= 0 && std::isfinite(query_weight),
                  "PipelineConfig.query_weight must be >= 0");
  fusion.validate();
}

Pipeline::Pipeline(std::shared_ptr<const Catalog> catalog, std::shared_ptr<const Encoder> encoder,
                   std::shared_ptr<const CoarseRanker> coarse,
                   std::shared_ptr<const FineRanker> fine,
                   std::shared_ptr<const ReasonGenerator> reasons, PipelineConfig config)
    : catalog_(std::move(catalog)),
      encoder_(std::move(encoder)),
      coarse_(std::move(coarse)),
      fine_(std::move(fine)),
      reasons_(std::move(reasons)),
      config_(std::move(config)),
      fusion_(config_.fusion, checked_stages(catalog_.get(), encoder_.get(), coarse_.get(),
                                             fine_.get(), reasons_.get(), config_)
                                  .objectives()) {}

void Pipeline::user_vector(const UserContext& user, std::span<float> out) const {
  const std::size_t dim = encoder_->dim();
  detail::require(out.size() == dim, "Pipeline::user_vector: output has ", out.size(),
                  " floats, expected ", dim);
  std::fill(out.begin(), out.end(), 0.0F);

  // The most recent distinct catalogue items of the history, newest first,
  // each weighted by its strongest event and by recency.
  std::vector<std::size_t> rows;
  std::vector<float> weights;
  std::unordered_set<ItemId> seen;
  for (auto it = user.history.rbegin();
       it != user.history.rend() && rows.size() < config_.history_for_query; ++it) {
    const std::size_t row = catalog_->index_of(it->item);
    if (row == Catalog::npos || !seen.insert(it->item).second) continue;
    const double age = std::max<double>(0.0, static_cast<double>(user.now_ts - it->ts));
    const double decay = std::exp2(-age / config_.history_half_life_s);
    // An earlier event on the same item may be stronger (a purchase, then a
    // view): count the strongest.
    float w = 0.0F;
    for (const HistoryEvent& e : user.history) {
      if (e.item == it->item) w = std::max(w, type_weight(e.type));
    }
    rows.push_back(row);
    weights.push_back(static_cast<float>(w * decay));
  }
  if (!rows.empty()) {
    // Items already carry their vectors when the catalogue was encoded with
    // this encoder; otherwise their titles are encoded now.
    Matrix<float> encoded;
    const bool stored = catalog_->has_vectors() && catalog_->vector_dim() == dim;
    if (!stored) {
      std::vector<std::string_view> titles;
      titles.reserve(rows.size());
      for (std::size_t row : rows) titles.push_back(catalog_->items()[row].title);
      encoded = Matrix<float>(rows.size(), dim);
      encoder_->encode(titles, encoded.view(), TextRole::document);
    }
    const float total = std::accumulate(weights.begin(), weights.end(), 0.0F);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const float w = total > 0 ? weights[i] / total : 0.0F;
      const std::span<const float> v =
          stored ? catalog_->vectors().row(rows[i]) : std::span<const float>(encoded.row(i));
      for (std::size_t j = 0; j < dim; ++j) out[j] += w * v[j];
    }
  }
  if (!user.query.empty() && config_.query_weight > 0) {
    Matrix<float> q(1, dim);
    const std::string_view text = user.query;
    encoder_->encode(std::span<const std::string_view>(&text, 1), q.view(), TextRole::query);
    for (std::size_t j = 0; j < dim; ++j) out[j] += config_.query_weight * q(0, j);
  }
  double norm = 0.0;
  for (float v : out) norm += static_cast<double>(v) * v;
  if (norm > 0) {
    const auto inv = static_cast<float>(1.0 / std::sqrt(norm));
    for (float& v : out) v *= inv;
  }
}

Recommendation Pipeline::recommend(const UserContext& user, const RecommendOptions& options) const {
  const auto start = Clock::now();
  Recommendation rec;
  const std::span<const std::string> objectives = fine_->objectives();
  rec.objectives.assign(objectives.begin(), objectives.end());
  const std::size_t top_n = options.top_n > 0 ? options.top_n : config_.top_n;

  // 1. User vector.
  auto t = Clock::now();
  Matrix<float> query(1, encoder_->dim());
  user_vector(user, query.row(0));
  rec.timings.encode_ms = ms_since(t);

  // 2. Coarse candidates, with the business filter and purchased items removed
  //    inside the scan.
  t = Clock::now();
  std::vector<ItemId> purchased;
  if (config_.exclude_purchased) {
    for (const HistoryEvent& e : user.history) {
      if (e.type == EventType::purchase) purchased.push_back(e.item);
    }
  }
  const DenyListFilter deny(purchased);
  const AllOfFilter all({options.filter, purchased.empty() ? nullptr : &deny});
  SearchParams params;
  params.filter = (options.filter != nullptr || !purchased.empty()) ? &all : nullptr;
  const std::size_t k = std::min(config_.coarse_k, std::max<std::size_t>(coarse_->size(), 1));
  Matrix<float> distances(1, k);
  Matrix<ItemId> labels(1, k);
  coarse_->search(query.view(), k, distances.view(), labels.view(), &params);
  std::vector<Candidate> candidates;
  candidates.reserve(k);
  const bool l2 = coarse_->metric() == Metric::l2;
  for (std::size_t i = 0; i < k; ++i) {
    if (labels(0, i) == kNoItem) break;
    candidates.push_back({labels(0, i), l2 ? -distances(0, i) : distances(0, i)});
  }
  rec.candidates = candidates.size();
  rec.timings.coarse_ms = ms_since(t);
  if (candidates.empty()) {
    rec.timings.total_ms = ms_since(start);
    return rec;
  }

  // 3. Fine scores on every objective.
  t = Clock::now();
  Matrix<float> scores(candidates.size(), objectives.size());
  fine_->score(user, candidates, scores.view());
  rec.timings.fine_ms = ms_since(t);

  // 4. Fusion and top-n (ties broken by coarse order, which is deterministic).
  t = Clock::now();
  std::vector<float> fused(candidates.size());
  fusion_.fuse(scores.view(), fused);
  std::vector<std::size_t> order(candidates.size());
  std::iota(order.begin(), order.end(), 0);
  const std::size_t n = std::min(top_n, order.size());
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n), order.end(),
                    [&](std::size_t a, std::size_t b) {
                      return fused[a] > fused[b] || (fused[a] == fused[b] && a < b);
                    });
  rec.items.resize(n);
  for (std::size_t r = 0; r < n; ++r) {
    const std::size_t i = order[r];
    RecommendedItem& item = rec.items[r];
    item.id = candidates[i].id;
    item.coarse_score = candidates[i].coarse_score;
    item.objective_scores.assign(scores.row(i).begin(), scores.row(i).end());
    item.score = fused[i];
  }
  rec.timings.fusion_ms = ms_since(t);

  // 5. Reasons.
  if (config_.explain) {
    t = Clock::now();
    std::vector<ReasonInput> inputs(n);
    for (std::size_t r = 0; r < n; ++r) {
      const RecommendedItem& item = rec.items[r];
      inputs[r] = ReasonInput{item.id, item.coarse_score, rec.objectives, item.objective_scores,
                              item.score};
    }
    std::vector<Reason> reasons(n);
    reasons_->explain(user, inputs, reasons);
    for (std::size_t r = 0; r < n; ++r) rec.items[r].reason = std::move(reasons[r]);
    rec.timings.reason_ms = ms_since(t);
  }
  rec.timings.total_ms = ms_since(start);
  return rec;
}

}  // namespace funnel
