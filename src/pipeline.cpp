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
  detail::require(interests >= 1 && interests <= 16,
                  "PipelineConfig.interests must be in 1..16, got ", interests);
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

// The recent distinct history items with their vectors and weights
// (strongest event type times recency decay), normalised to sum 1.
struct Pipeline::WeightedHistory {
  Matrix<float> vectors;       // rows x dim
  std::vector<float> weights;  // rows, summing to 1 (all 0 when the sum is 0)
};

Pipeline::WeightedHistory Pipeline::weighted_history(const UserContext& user) const {
  const std::size_t dim = encoder_->dim();
  // The most recent distinct catalogue items of the history, newest first,
  // each weighted by its strongest event and by recency.
  std::vector<std::size_t> rows;
  WeightedHistory out;
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
    out.weights.push_back(static_cast<float>(w * decay));
  }
  out.vectors = Matrix<float>(rows.size(), dim);
  if (rows.empty()) return out;
  // Items already carry their vectors when the catalogue was encoded with
  // this encoder; otherwise their titles are encoded now.
  if (catalog_->has_vectors() && catalog_->vector_dim() == dim) {
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const std::span<const float> v = catalog_->vectors().row(rows[i]);
      std::copy(v.begin(), v.end(), out.vectors.row(i).begin());
    }
  } else {
    std::vector<std::string_view> titles;
    titles.reserve(rows.size());
    for (std::size_t row : rows) titles.push_back(catalog_->items()[row].title);
    encoder_->encode(titles, out.vectors.view(), TextRole::document);
  }
  const float total = std::accumulate(out.weights.begin(), out.weights.end(), 0.0F);
  for (float& w : out.weights) w = total > 0 ? w / total : 0.0F;
  return out;
}

Matrix<float> Pipeline::query_text_vector(const UserContext& user) const {
  if (user.query.empty() || config_.query_weight <= 0) return {};
  Matrix<float> q(1, encoder_->dim());
  const std::string_view text = user.query;
  encoder_->encode(std::span<const std::string_view>(&text, 1), q.view(), TextRole::query);
  return q;
}

namespace {

void normalise(std::span<float> v) {
  double norm = 0.0;
  for (float x : v) norm += static_cast<double>(x) * x;
  if (norm > 0) {
    const auto inv = static_cast<float>(1.0 / std::sqrt(norm));
    for (float& x : v) x *= inv;
  }
}

double dot(std::span<const float> a, std::span<const float> b) {
  double s = 0.0;
  for (std::size_t j = 0; j < a.size(); ++j) s += static_cast<double>(a[j]) * b[j];
  return s;
}

// Spherical k-means of weighted rows into at most `m` groups; returns each
// row's group. Seeded with the heaviest row, then repeatedly the row least
// similar to every seed (ties: the lower row), so that the result depends on
// nothing but the input.
std::vector<std::size_t> group_rows(const Matrix<float>& vectors, std::span<const float> weights,
                                    std::size_t m) {
  const std::size_t n = vectors.rows();
  const std::size_t dim = vectors.cols();
  Matrix<float> unit(n, dim);
  for (std::size_t i = 0; i < n; ++i) {
    std::copy(vectors.row(i).begin(), vectors.row(i).end(), unit.row(i).begin());
    normalise(unit.row(i));
  }
  std::vector<std::size_t> seeds = {
      static_cast<std::size_t>(std::max_element(weights.begin(), weights.end()) - weights.begin())};
  while (seeds.size() < m) {
    std::size_t far = n;
    double far_sim = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      double best = -2.0;
      for (std::size_t s : seeds) best = std::max(best, dot(unit.row(i), unit.row(s)));
      if (far == n || best < far_sim) {
        far = i;
        far_sim = best;
      }
    }
    // Every row already (nearly) coincides with a seed: fewer interests.
    if (far_sim > 0.9999) break;
    seeds.push_back(far);
  }
  Matrix<float> centers(seeds.size(), dim);
  for (std::size_t c = 0; c < seeds.size(); ++c) {
    std::copy(unit.row(seeds[c]).begin(), unit.row(seeds[c]).end(), centers.row(c).begin());
  }
  std::vector<std::size_t> group(n, 0);
  constexpr int kIterations = 8;
  for (int iter = 0; iter < kIterations; ++iter) {
    for (std::size_t i = 0; i < n; ++i) {
      double best = -2.0;
      for (std::size_t c = 0; c < centers.rows(); ++c) {
        const double sim = dot(unit.row(i), centers.row(c));
        if (sim > best) {
          best = sim;
          group[i] = c;
        }
      }
    }
    std::fill(centers.data(), centers.data() + centers.size(), 0.0F);
    for (std::size_t i = 0; i < n; ++i) {
      // Rows of zero weight still pull their group's direction a little, so
      // that a group of only zero-weight rows keeps a direction.
      const float w = weights[i] + 1e-6F;
      for (std::size_t j = 0; j < dim; ++j) centers(group[i], j) += w * unit(i, j);
    }
    for (std::size_t c = 0; c < centers.rows(); ++c) normalise(centers.row(c));
  }
  return group;
}

}  // namespace

void Pipeline::user_vector(const UserContext& user, std::span<float> out) const {
  const std::size_t dim = encoder_->dim();
  detail::require(out.size() == dim, "Pipeline::user_vector: output has ", out.size(),
                  " floats, expected ", dim);
  std::fill(out.begin(), out.end(), 0.0F);
  const WeightedHistory history = weighted_history(user);
  for (std::size_t i = 0; i < history.weights.size(); ++i) {
    const std::span<const float> v = history.vectors.row(i);
    for (std::size_t j = 0; j < dim; ++j) out[j] += history.weights[i] * v[j];
  }
  const Matrix<float> q = query_text_vector(user);
  if (!q.empty()) {
    for (std::size_t j = 0; j < dim; ++j) out[j] += config_.query_weight * q(0, j);
  }
  normalise(out);
}

Matrix<float> Pipeline::user_vectors(const UserContext& user) const {
  const std::size_t dim = encoder_->dim();
  WeightedHistory history = weighted_history(user);
  const std::size_t n = history.weights.size();
  if (config_.interests <= 1 || n < 2) {
    Matrix<float> one(1, dim);
    user_vector(user, one.row(0));
    return one;
  }
  const std::vector<std::size_t> group =
      group_rows(history.vectors, history.weights, std::min(config_.interests, n));
  const std::size_t groups = *std::max_element(group.begin(), group.end()) + 1;
  std::vector<double> mass(groups, 0.0);
  for (std::size_t i = 0; i < n; ++i) mass[group[i]] += history.weights[i];
  // Heaviest interest first (ties: the lower group, i.e. the earlier seed).
  std::vector<std::size_t> order(groups);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return mass[a] > mass[b]; });
  const Matrix<float> q = query_text_vector(user);
  Matrix<float> out(groups, dim);
  for (std::size_t r = 0; r < groups; ++r) {
    const std::size_t g = order[r];
    const std::span<float> row = out.row(r);
    for (std::size_t i = 0; i < n; ++i) {
      if (group[i] != g) continue;
      const auto w = static_cast<float>(mass[g] > 0 ? history.weights[i] / mass[g] : 0.0);
      for (std::size_t j = 0; j < dim; ++j) row[j] += w * history.vectors(i, j);
    }
    if (!q.empty()) {
      for (std::size_t j = 0; j < dim; ++j) row[j] += config_.query_weight * q(0, j);
    }
    normalise(row);
  }
  return out;
}

Recommendation Pipeline::recommend(const UserContext& user, const RecommendOptions& options) const {
  const auto start = Clock::now();
  Recommendation rec;
  const std::span<const std::string> objectives = fine_->objectives();
  rec.objectives.assign(objectives.begin(), objectives.end());
  const std::size_t top_n = options.top_n > 0 ? options.top_n : config_.top_n;

  // 1. User vector(s).
  auto t = Clock::now();
  const Matrix<float> queries = user_vectors(user);
  rec.timings.encode_ms = ms_since(t);

  // 2. Coarse candidates, with the business filter and purchased items removed
  //    inside the scan; several interests are merged round robin.
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
  std::vector<Candidate> candidates;
  candidates.reserve(k);
  const bool l2 = coarse_->metric() == Metric::l2;
  if (queries.rows() == 1) {
    Matrix<float> distances(1, k);
    Matrix<ItemId> labels(1, k);
    coarse_->search(queries.view(), k, distances.view(), labels.view(), &params);
    for (std::size_t i = 0; i < k; ++i) {
      if (labels(0, i) == kNoItem) break;
      candidates.push_back({labels(0, i), l2 ? -distances(0, i) : distances(0, i)});
    }
  } else {
    for (const MergedCandidate& c :
         search_merged(*coarse_, queries.view(), k, &params, MergeOrder::round_robin)) {
      candidates.push_back({c.id, l2 ? -c.distance : c.distance});
    }
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
