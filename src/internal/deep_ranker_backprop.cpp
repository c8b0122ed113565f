// SPDX-License-Identifier: Apache-2.0
#include "internal/deep_ranker_backprop.hpp"

#include <omp.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <numbers>
#include <string_view>
#include <type_traits>

#include <dnnl.h>

#include "funnel/metrics.hpp"
#include "internal/deep_ranker_examples.hpp"
#include "internal/error_util.hpp"

namespace funnel::detail {

namespace {

constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
// Multiply-adds below which one matmul is not split over threads.
constexpr double kSerialGemmMacs = 1 << 18;
// Elements below which an elementwise loop stays on the calling thread.
constexpr std::size_t kParallelWork = 2048;

// splitmix64's output function: a bijective 64-bit mixer.
std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27U)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31U);
}

// A splitmix64 stream; uniform doubles from its top 53 bits. Written out
// (not <random>'s distributions) so that initial parameters are the same
// with every standard library.
class Stream {
 public:
  explicit Stream(std::uint64_t seed) : state_(mix64(seed)) {}
  std::uint64_t next() { return mix64(state_ += kGolden); }
  double uniform() { return static_cast<double>(next() >> 11U) * 0x1.0p-53; }
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  std::uint64_t state_;
};

// Sets the calling thread's OpenMP thread count (an ICV of the calling
// thread's task, not a process-wide setting) for one pass and restores it:
// dnnl_sgemm sizes its parallel regions from it.
class OmpThreadsScope {
 public:
  explicit OmpThreadsScope(int threads) : saved_(omp_get_max_threads()) {
    omp_set_num_threads(threads);
  }
  ~OmpThreadsScope() { omp_set_num_threads(saved_); }
  OmpThreadsScope(const OmpThreadsScope&) = delete;
  OmpThreadsScope& operator=(const OmpThreadsScope&) = delete;

 private:
  int saved_;
};

// Row-major C[m x n] = beta * C + op(A) op(B), op(A) m x k, op(B) k x n;
// `ta` / `tb`: the operand is stored transposed.
void gemm(bool ta, bool tb, std::size_t m, std::size_t n, std::size_t k, const float* a,
          std::size_t lda, const float* b, std::size_t ldb, float beta, float* c, std::size_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (std::size_t i = 0; i < m; ++i) {
      for (std::size_t j = 0; j < n; ++j)
        c[i * ldc + j] = beta == 0.0F ? 0.0F : beta * c[i * ldc + j];
    }
    return;
  }
  // Small products run on the calling thread alone: a fork and join would
  // cost more than the work (the choice depends on the shape only, so
  // results stay a function of the configured thread count).
  const bool serial =
      static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) < kSerialGemmMacs;
  const OmpThreadsScope scope(serial ? 1 : omp_get_max_threads());
  const auto d = [](std::size_t v) { return static_cast<dnnl_dim_t>(v); };
  const dnnl_status_t status = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', d(m), d(n), d(k), 1.0F, a,
                                          d(lda), b, d(ldb), beta, c, d(ldc));
  if (status != dnnl_success) {
    fail(ErrorCode::internal, "dnnl_sgemm failed (status ", static_cast<int>(status), ") for ", m,
         "x", n, "x", k);
  }
}

// The double twin: plain loops, for gradient checks on small shapes.
void gemm(bool ta, bool tb, std::size_t m, std::size_t n, std::size_t k, const double* a,
          std::size_t lda, const double* b, std::size_t ldb, double beta, double* c,
          std::size_t ldc) {
  for (std::size_t i = 0; i < m; ++i) {
    double* ci = c + i * ldc;
    for (std::size_t j = 0; j < n; ++j) ci[j] = beta == 0.0 ? 0.0 : beta * ci[j];
    for (std::size_t p = 0; p < k; ++p) {
      const double aip = ta ? a[p * lda + i] : a[i * lda + p];
      if (tb) {
        for (std::size_t j = 0; j < n; ++j) ci[j] += aip * b[j * ldb + p];
      } else {
        const double* bp = b + p * ldb;
        for (std::size_t j = 0; j < n; ++j) ci[j] += aip * bp[j];
      }
    }
  }
}

// log(sigmoid(x)), without overflow or cancellation.
template <class S>
S log_sigmoid(S x) {
  return x >= S(0) ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
}

template <class S>
S sigmoid(S x) {
  if (x >= S(0)) return S(1) / (S(1) + std::exp(-x));
  const S e = std::exp(x);
  return e / (S(1) + e);
}

// log(exp(a) + exp(b)).
template <class S>
S log_add_exp(S a, S b) {
  const S hi = std::max(a, b);
  const S lo = std::min(a, b);
  if (hi == -std::numeric_limits<S>::infinity()) return hi;
  return hi + std::log1p(std::exp(lo - hi));
}

std::string shape_string(const std::vector<std::size_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

// ---------------------------------------------------------------------------
// DeepLayout

DeepLayout::DeepLayout(const DeepRankerConfig& config)
    : shapes(deep_ranker_parameter_shapes(config)) {
  std::map<std::string, std::size_t, std::less<>> index;
  for (std::size_t i = 0; i < shapes.size(); ++i) index.emplace(shapes[i].name, i);

  const std::size_t d = config.item_vector_dim;
  const std::size_t a = config.attention_dim;
  const std::size_t dc = config.item_categorical.at(config.history_category_feature).dim;
  user_width = 0;
  for (const auto& f : config.user_categorical) {
    user_offsets.push_back(user_width);
    user_width += f.dim;
  }
  user_width += config.user_numeric.size();
  candidate_width = d;
  for (const auto& f : config.item_categorical) {
    item_offsets.push_back(candidate_width);
    candidate_width += f.dim;
  }
  candidate_width += config.item_numeric.size();
  token_width = d + dc;
  input_width = user_width + candidate_width + a;

  // Looks a tensor up and checks the shape this file's math assumes (the
  // header's table), so that a disagreement fails here, not as garbage.
  auto find = [&](const std::string& name, const std::vector<std::size_t>& shape) {
    const auto it = index.find(name);
    if (it == index.end()) fail(ErrorCode::internal, "deep ranker parameter ", name, " is missing");
    if (shapes[it->second].shape != shape) {
      fail(ErrorCode::internal, "deep ranker parameter ", name, " has shape ",
           shape_string(shapes[it->second].shape), ", the trainer expects ", shape_string(shape));
    }
    return it->second;
  };
  // A linear layer: weight [out, in] then bias [out], adjacent.
  auto linear = [&](const std::string& prefix, std::size_t out, std::size_t in) {
    const std::size_t w = find(prefix + ".weight", {out, in});
    if (find(prefix + ".bias", {out}) != w + 1) {
      fail(ErrorCode::internal, "deep ranker parameter ", prefix, ".bias does not follow ", prefix,
           ".weight");
    }
    return w;
  };

  for (const auto& f : config.user_categorical) {
    user_embedding.push_back(find("user." + f.name + ".embedding", {f.vocab.size() + 1, f.dim}));
  }
  for (const auto& f : config.item_categorical) {
    item_embedding.push_back(find("item." + f.name + ".embedding", {f.vocab.size() + 1, f.dim}));
  }
  type_embedding = find("history.type.embedding", {4, a});
  recency_embedding = find("history.recency.embedding", {config.recency_bounds_s.size() + 1, a});
  query = linear("attention.query", a, token_width);
  key = linear("attention.key", a, token_width);
  value = linear("attention.value", a, token_width);
  expert.resize(config.experts);
  for (std::size_t e = 0; e < config.experts; ++e) {
    std::size_t in = input_width;
    for (std::size_t l = 0; l < config.expert_hidden.size(); ++l) {
      const std::size_t out = config.expert_hidden[l];
      expert[e].push_back(linear(cat("expert.", e, ".", l), out, in));
      in = out;
    }
  }
  const std::size_t expert_out = config.expert_hidden.back();
  tower.resize(config.tasks.size());
  for (std::size_t t = 0; t < config.tasks.size(); ++t) {
    const auto& task = config.tasks[t];
    if (config.body == DeepRankerConfig::Body::mmoe) {
      gate.push_back(linear("gate." + task.name, config.experts, input_width));
    }
    std::size_t in = expert_out;
    for (std::size_t l = 0; l <= config.tower_hidden.size(); ++l) {
      const std::size_t out = l < config.tower_hidden.size() ? config.tower_hidden[l] : 1;
      tower[t].push_back(linear(cat("tower.", task.name, ".", l), out, in));
      in = out;
    }
    int p = -1;
    if (task.kind == DeepTaskKind::ctcvr) {
      for (std::size_t s = 0; s < config.tasks.size(); ++s) {
        if (config.tasks[s].name == task.parent) p = static_cast<int>(s);
      }
      if (p < 0) fail(ErrorCode::invalid_argument, "task ", task.name, ": no parent ", task.parent);
    }
    parent.push_back(p);
  }
  if (index.size() != shapes.size()) fail(ErrorCode::internal, "duplicate deep ranker parameters");

  init.assign(shapes.size(), DeepInit::zero);
  decay.assign(shapes.size(), false);
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    if (!ends_with(shapes[i].name, ".bias")) decay[i] = true;
    if (ends_with(shapes[i].name, ".embedding")) init[i] = DeepInit::embedding;
  }
  for (const std::size_t w : {query, key, value}) init[w] = DeepInit::xavier;
  for (const auto& layers : expert) {
    for (const std::size_t w : layers) init[w] = DeepInit::he;
  }
  for (const std::size_t w : gate) init[w] = DeepInit::xavier;
  for (const auto& layers : tower) {
    for (std::size_t l = 0; l < layers.size(); ++l) {
      init[layers[l]] = l + 1 < layers.size() ? DeepInit::he : DeepInit::xavier;
    }
  }
}

// ---------------------------------------------------------------------------
// DeepBackprop

template <class S>
struct DeepBackprop<S>::Work {
  Work(const DeepRankerConfig& cfg, std::size_t nthreads)
      : config(cfg),
        layout(cfg),
        threads(static_cast<int>(nthreads)),
        d(cfg.item_vector_dim),
        a(cfg.attention_dim),
        experts(cfg.experts),
        tasks(cfg.tasks.size()),
        dc(cfg.item_categorical[cfg.history_category_feature].dim),
        hcf(cfg.history_category_feature),
        mmoe(cfg.body == DeepRankerConfig::Body::mmoe),
        inv_sqrt_a(S(1) / std::sqrt(static_cast<S>(cfg.attention_dim))) {
    assert(nthreads >= 1);
    expert_out.resize(experts * cfg.expert_hidden.size());
    tower_out.resize(tasks * cfg.tower_hidden.size());
    gate.resize(tasks);
    mix.resize(tasks);
    dy.resize(experts);
    std::size_t widest = cfg.expert_hidden.back();
    for (const std::size_t w : cfg.expert_hidden) widest = std::max(widest, w);
    for (const std::size_t w : cfg.tower_hidden) widest = std::max(widest, w);
    max_width = widest;
    dropout_scratch.resize(nthreads * dropout_scratch_stride());
  }

  DeepRankerConfig config;
  DeepLayout layout;
  int threads;
  std::size_t d, a, experts, tasks, dc, hcf;
  bool mmoe;
  S inv_sqrt_a;
  std::size_t max_width = 0;

  // The mini-batch, gathered from the examples (its users in order of first
  // use; the buffers are reused from step to step), and its structure: the
  // rows of each user and where the attention weights of each row start.
  DeepRankerBatchStorage storage;
  std::size_t nb = 0;
  std::size_t nu = 0;
  std::size_t ne = 0;
  std::vector<std::size_t> row_user;  // per row: batch user
  std::vector<std::size_t> user_row_begin;
  std::vector<std::size_t> user_rows;  // rows grouped by batch user
  std::vector<std::size_t> cursor;
  std::vector<std::size_t> event_begin;  // per batch user: first event (nu + 1)
  std::vector<std::size_t> att_begin;    // per row: first attention weight (nb + 1)

  // Activations.
  std::vector<S> h;                        // ne x Hd history tokens
  std::vector<S> keys;                     // ne x A
  std::vector<S> values;                   // ne x A
  std::vector<S> tgt;                      // nb x Hd targets
  std::vector<S> q;                        // nb x A
  std::vector<S> att;                      // attention weights, ragged by row
  std::vector<S> x;                        // nb x X
  std::vector<std::vector<S>> expert_out;  // [e * L + l]: nb x width, after ReLU and dropout
  std::vector<std::vector<S>> gate;        // [t]: nb x E softmax
  std::vector<std::vector<S>> mix;         // [t]: nb x width (mmoe)
  std::vector<std::vector<S>> tower_out;   // [t * TL + l]
  std::vector<S> logit;                    // T x nb (task-major)
  std::vector<S> dlogit;                   // T x nb

  // Backward temporaries.
  std::vector<S> dz0, dz1, dm, dx, dq, dk, dv, dtok, dgate;
  std::vector<S> att_scratch;      // d attention weight, ragged like att
  std::vector<S> dropout_scratch;  // per thread: one row of dropout multipliers
  std::vector<std::vector<S>> dy;  // [e]: nb x width

  // Whether a loop over `work` elements is worth a parallel region.
  [[nodiscard]] bool parallel(std::size_t work) const {
    return threads > 1 && work >= kParallelWork;
  }

  [[nodiscard]] const S* expert_result(std::size_t e) const {
    return expert_out[e * config.expert_hidden.size() + config.expert_hidden.size() - 1].data();
  }
  [[nodiscard]] const S* tower_input(std::size_t t) const {
    return mmoe ? mix[t].data() : expert_result(0);
  }

  void prepare(const DeepRankerBatch& b) {
    nb = b.candidates;
    nu = b.users;
    row_user.resize(nb);
    for (std::size_t i = 0; i < nb; ++i)
      row_user[i] = static_cast<std::size_t>(b.candidate_user[i]);
    user_row_begin.assign(nu + 1, 0);
    for (std::size_t i = 0; i < nb; ++i) ++user_row_begin[row_user[i] + 1];
    for (std::size_t u = 0; u < nu; ++u) user_row_begin[u + 1] += user_row_begin[u];
    cursor.assign(user_row_begin.begin(), user_row_begin.end() - 1);
    user_rows.resize(nb);
    for (std::size_t i = 0; i < nb; ++i) user_rows[cursor[row_user[i]]++] = i;
    event_begin.resize(nu + 1);
    for (std::size_t u = 0; u <= nu; ++u) {
      event_begin[u] = static_cast<std::size_t>(b.history_offsets[u]);
    }
    ne = event_begin[nu];
    att_begin.resize(nb + 1);
    att_begin[0] = 0;
    for (std::size_t i = 0; i < nb; ++i) {
      const std::size_t u = row_user[i];
      att_begin[i + 1] = att_begin[i] + (event_begin[u + 1] - event_begin[u]);
    }
  }

  // x's user and candidate parts, the targets and the history tokens.
  void gather(const DeepTensors<S>& p, const DeepRankerBatch& b) {
    const auto& cfg = config;
    const std::size_t xw = layout.input_width;
    const std::size_t hd = layout.token_width;
    const std::size_t nuc = cfg.user_categorical.size();
    const std::size_t nun = cfg.user_numeric.size();
    const std::size_t nic = cfg.item_categorical.size();
    const std::size_t nin = cfg.item_numeric.size();
    x.resize(nb * xw);
    tgt.resize(nb * hd);
    h.resize(ne * hd);
    const std::vector<S>& hist_table = p[layout.item_embedding[hcf]];
    const std::ptrdiff_t nrows = static_cast<std::ptrdiff_t>(nb);
#pragma omp parallel for num_threads(threads) if (parallel(nb * layout.input_width)) \
    schedule(static)
    for (std::ptrdiff_t si = 0; si < nrows; ++si) {
      const auto i = static_cast<std::size_t>(si);
      const std::size_t u = row_user[i];
      S* xi = x.data() + i * xw;
      for (std::size_t k = 0; k < nuc; ++k) {
        const std::size_t dim = cfg.user_categorical[k].dim;
        const auto idx = static_cast<std::size_t>(b.user_categorical[u * nuc + k]);
        const S* src = p[layout.user_embedding[k]].data() + idx * dim;
        std::copy(src, src + dim, xi + layout.user_offsets[k]);
      }
      S* un = xi + layout.user_width - nun;
      for (std::size_t k = 0; k < nun; ++k) {
        const auto& f = cfg.user_numeric[k];
        un[k] = (static_cast<S>(b.user_numeric[u * nun + k]) - static_cast<S>(f.mean)) /
                static_cast<S>(f.std);
      }
      S* ci = xi + layout.user_width;
      const float* v = b.candidate_vectors.data() + i * d;
      std::copy(v, v + d, ci);
      for (std::size_t k = 0; k < nic; ++k) {
        const std::size_t dim = cfg.item_categorical[k].dim;
        const auto idx = static_cast<std::size_t>(b.candidate_categorical[i * nic + k]);
        const S* src = p[layout.item_embedding[k]].data() + idx * dim;
        std::copy(src, src + dim, ci + layout.item_offsets[k]);
      }
      S* cn = ci + layout.candidate_width - nin;
      for (std::size_t k = 0; k < nin; ++k) {
        const auto& f = cfg.item_numeric[k];
        cn[k] = (static_cast<S>(b.candidate_numeric[i * nin + k]) - static_cast<S>(f.mean)) /
                static_cast<S>(f.std);
      }
      S* ti = tgt.data() + i * hd;
      std::copy(v, v + d, ti);
      const auto hidx = static_cast<std::size_t>(b.candidate_categorical[i * nic + hcf]);
      std::copy(hist_table.data() + hidx * dc, hist_table.data() + (hidx + 1) * dc, ti + d);
    }
    const std::ptrdiff_t nevents = static_cast<std::ptrdiff_t>(ne);
#pragma omp parallel for num_threads(threads) if (parallel(ne * layout.token_width)) \
    schedule(static)
    for (std::ptrdiff_t sj = 0; sj < nevents; ++sj) {
      const auto j = static_cast<std::size_t>(sj);
      S* hj = h.data() + j * hd;
      const float* v = b.history_vectors.data() + j * d;
      std::copy(v, v + d, hj);
      const auto idx = static_cast<std::size_t>(b.history_category[j]);
      std::copy(hist_table.data() + idx * dc, hist_table.data() + (idx + 1) * dc, hj + d);
    }
  }

  // What follows a linear layer.
  struct Activation {
    bool relu = false;
    const DeepDropout* dropout = nullptr;  // with relu: inverted dropout when rate > 0
    std::uint64_t layer_id = 0;            // selects the layer's dropout masks
  };

  // y[n x out] = act(in[n x width] W^T + b): the matmul, then one pass over
  // y for the bias, the ReLU and the dropout.
  void linear(std::size_t n, std::size_t width, std::size_t out, const S* in, std::size_t ld,
              const std::vector<S>& w, const std::vector<S>& b, S* y, Activation act = {}) {
    gemm(false, true, n, out, width, in, ld, w.data(), width, S(0), y, out);
    const bool drop = act.relu && act.dropout != nullptr && act.dropout->rate > 0.0F;
    // 16 random bits per unit, four units per hash: the keep probability is
    // 1 - rate rounded to a multiple of 2^-16. The multipliers (0 or
    // 1 / (1 - rate)) go to a row buffer first so that the ReLU loop is
    // branch-free and vectorised.
    const std::uint64_t threshold =
        drop ? static_cast<std::uint64_t>(std::llround(act.dropout->rate * 65536.0)) : 0;
    const S keep_scale = drop ? S(1) / (S(1) - static_cast<S>(act.dropout->rate)) : S(1);
    const std::uint64_t key = drop ? mix64(act.dropout->seed ^ ((act.layer_id + 1) * kGolden)) : 0;
    const std::size_t stride = dropout_scratch_stride();
    const S* __restrict bias = b.data();
    const std::ptrdiff_t nrows = static_cast<std::ptrdiff_t>(n);
#pragma omp parallel for num_threads(threads) if (parallel(n * out)) schedule(static)
    for (std::ptrdiff_t si = 0; si < nrows; ++si) {
      const auto i = static_cast<std::size_t>(si);
      S* __restrict yi = y + i * out;
      if (!act.relu) {
        for (std::size_t j = 0; j < out; ++j) yi[j] += bias[j];
        continue;
      }
      if (!drop) {
        for (std::size_t j = 0; j < out; ++j) yi[j] = std::max(yi[j] + bias[j], S(0));
        continue;
      }
      S* __restrict mult =
          dropout_scratch.data() + static_cast<std::size_t>(omp_get_thread_num()) * stride;
      std::uint64_t bits = 0;
      for (std::size_t j = 0; j < out; ++j) {
        const std::size_t k = i * out + j;
        if (j == 0 || (k & 3U) == 0) bits = mix64(key + (k >> 2U) * kGolden) >> (16U * (k & 3U));
        mult[j] = (bits & 0xFFFFU) >= threshold ? keep_scale : S(0);
        bits >>= 16U;
      }
      for (std::size_t j = 0; j < out; ++j) yi[j] = std::max(yi[j] + bias[j], S(0)) * mult[j];
    }
  }

  [[nodiscard]] std::size_t dropout_scratch_stride() const { return max_width + 16; }

  void attention_forward(const DeepTensors<S>& p, const DeepRankerBatch& b) {
    const std::size_t hd = layout.token_width;
    const std::size_t xw = layout.input_width;
    const std::size_t p_col = layout.user_width + layout.candidate_width;
    keys.resize(ne * a);
    values.resize(ne * a);
    q.resize(nb * a);
    att.resize(att_begin[nb]);
    linear(ne, hd, a, h.data(), hd, p[layout.key], p[layout.key + 1], keys.data());
    linear(ne, hd, a, h.data(), hd, p[layout.value], p[layout.value + 1], values.data());
    linear(nb, hd, a, tgt.data(), hd, p[layout.query], p[layout.query + 1], q.data());
    const S* type_table = p[layout.type_embedding].data();
    const S* rec_table = p[layout.recency_embedding].data();
    const std::ptrdiff_t nusers = static_cast<std::ptrdiff_t>(nu);
#pragma omp parallel for num_threads(threads) if (parallel((att_begin[nb] + ne) * a)) \
    schedule(static)
    for (std::ptrdiff_t su = 0; su < nusers; ++su) {
      const auto u = static_cast<std::size_t>(su);
      const std::size_t e0 = event_begin[u];
      const std::size_t n = event_begin[u + 1] - e0;
      for (std::size_t j = 0; j < n; ++j) {
        S* kj = keys.data() + (e0 + j) * a;
        const S* ty = type_table + static_cast<std::size_t>(b.history_type[e0 + j]) * a;
        const S* re = rec_table + static_cast<std::size_t>(b.history_recency[e0 + j]) * a;
        for (std::size_t c = 0; c < a; ++c) kj[c] = kj[c] + ty[c] + re[c];
      }
      for (std::size_t r = user_row_begin[u]; r < user_row_begin[u + 1]; ++r) {
        const std::size_t i = user_rows[r];
        S* pi = x.data() + i * xw + p_col;
        std::fill(pi, pi + a, S(0));
        if (n == 0) continue;
        const S* qi = q.data() + i * a;
        S* ai = att.data() + att_begin[i];
        S hi = -std::numeric_limits<S>::infinity();
        for (std::size_t j = 0; j < n; ++j) {
          const S* kj = keys.data() + (e0 + j) * a;
          S s = 0;
          for (std::size_t c = 0; c < a; ++c) s += qi[c] * kj[c];
          ai[j] = s * inv_sqrt_a;
          hi = std::max(hi, ai[j]);
        }
        S sum = 0;
        for (std::size_t j = 0; j < n; ++j) {
          ai[j] = std::exp(ai[j] - hi);
          sum += ai[j];
        }
        const S inv = S(1) / sum;
        for (std::size_t j = 0; j < n; ++j) {
          ai[j] *= inv;
          const S* vj = values.data() + (e0 + j) * a;
          for (std::size_t c = 0; c < a; ++c) pi[c] += ai[j] * vj[c];
        }
      }
    }
  }

  void body_forward(const DeepTensors<S>& p, const DeepDropout& dropout) {
    const std::size_t xw = layout.input_width;
    const std::size_t layers = config.expert_hidden.size();
    for (std::size_t e = 0; e < experts; ++e) {
      const S* in = x.data();
      std::size_t width = xw;
      for (std::size_t l = 0; l < layers; ++l) {
        const std::size_t out = config.expert_hidden[l];
        auto& y = expert_out[e * layers + l];
        y.resize(nb * out);
        const std::size_t w = layout.expert[e][l];
        linear(nb, width, out, in, width, p[w], p[w + 1], y.data(),
               {true, &dropout, e * layers + l});
        in = y.data();
        width = out;
      }
    }
    if (!mmoe) return;
    const std::size_t hl = config.expert_hidden.back();
    for (std::size_t t = 0; t < tasks; ++t) {
      auto& g = gate[t];
      g.resize(nb * experts);
      const std::size_t w = layout.gate[t];
      linear(nb, xw, experts, x.data(), xw, p[w], p[w + 1], g.data());
      auto& m = mix[t];
      m.resize(nb * hl);
      const std::ptrdiff_t nrows = static_cast<std::ptrdiff_t>(nb);
#pragma omp parallel for num_threads(threads) if (parallel(nb * hl * experts)) schedule(static)
      for (std::ptrdiff_t si = 0; si < nrows; ++si) {
        const auto i = static_cast<std::size_t>(si);
        S* gi = g.data() + i * experts;
        const S hi = *std::max_element(gi, gi + experts);
        S sum = 0;
        for (std::size_t e = 0; e < experts; ++e) {
          gi[e] = std::exp(gi[e] - hi);
          sum += gi[e];
        }
        for (std::size_t e = 0; e < experts; ++e) gi[e] /= sum;
        S* mi = m.data() + i * hl;
        std::fill(mi, mi + hl, S(0));
        for (std::size_t e = 0; e < experts; ++e) {
          const S* ye = expert_result(e) + i * hl;
          for (std::size_t j = 0; j < hl; ++j) mi[j] += gi[e] * ye[j];
        }
      }
    }
  }

  void towers_forward(const DeepTensors<S>& p, const DeepDropout& dropout) {
    const std::size_t tl = config.tower_hidden.size();
    const std::size_t first_id = experts * config.expert_hidden.size();
    logit.resize(tasks * nb);
    for (std::size_t t = 0; t < tasks; ++t) {
      const S* in = tower_input(t);
      std::size_t width = config.expert_hidden.back();
      for (std::size_t l = 0; l < tl; ++l) {
        const std::size_t out = config.tower_hidden[l];
        auto& y = tower_out[t * tl + l];
        y.resize(nb * out);
        const std::size_t w = layout.tower[t][l];
        linear(nb, width, out, in, width, p[w], p[w + 1], y.data(),
               {true, &dropout, first_id + t * tl + l});
        in = y.data();
        width = out;
      }
      const std::size_t w = layout.tower[t][tl];
      linear(nb, width, 1, in, width, p[w], p[w + 1], logit.data() + t * nb);
    }
  }

  // Loss of the pass and d loss / d logit.
  S loss(const DeepRankerExamples& ex, std::span<const std::size_t> rows, std::span<S> outputs) {
    dlogit.assign(tasks * nb, S(0));
    double total = 0.0;
    for (std::size_t t = 0; t < tasks; ++t) {
      const auto& task = config.tasks[t];
      std::size_t labelled = 0;
      for (std::size_t i = 0; i < nb; ++i) {
        if (!std::isnan(ex.labels[rows[i] * tasks + t])) ++labelled;
      }
      if (labelled == 0) continue;
      const S scale = static_cast<S>(task.loss_weight) / static_cast<S>(labelled);
      const S* o = logit.data() + t * nb;
      S* dlo = dlogit.data() + t * nb;
      double sum = 0.0;
      for (std::size_t i = 0; i < nb; ++i) {
        const float label = ex.labels[rows[i] * tasks + t];
        if (std::isnan(label)) continue;
        const auto y = static_cast<S>(label);
        switch (task.kind) {
          case DeepTaskKind::binary: {
            // BCE(sigmoid(o), y) = softplus(o) - y o.
            sum += static_cast<double>(-log_sigmoid(-o[i]) - y * o[i]);
            dlo[i] += scale * (sigmoid(o[i]) - y);
            break;
          }
          case DeepTaskKind::ctcvr: {
            // p = sigmoid(a) sigmoid(b); log p and log(1 - p) in log space:
            // 1 - p = sigmoid(-a) + sigmoid(a) sigmoid(-b), a sum of positives.
            const auto pt = static_cast<std::size_t>(layout.parent[t]);
            const S oa = logit[pt * nb + i];
            const S ob = o[i];
            const S log_p = log_sigmoid(oa) + log_sigmoid(ob);
            const S log_q = log_add_exp(log_sigmoid(-oa), log_sigmoid(oa) + log_sigmoid(-ob));
            sum += static_cast<double>(-y * log_p - (S(1) - y) * log_q);
            // d/d a = sigmoid(-a) (p - y) / (1 - p), the same for b.
            const S common = scale * (std::exp(log_p) - y);
            dlogit[pt * nb + i] += common * std::exp(log_sigmoid(-oa) - log_q);
            dlo[i] += common * std::exp(log_sigmoid(-ob) - log_q);
            break;
          }
          case DeepTaskKind::regression: {
            const S r = o[i] - y;
            sum += static_cast<double>(r * r);
            dlo[i] += scale * S(2) * r;
            break;
          }
        }
      }
      total += static_cast<double>(task.loss_weight) * sum / static_cast<double>(labelled);
    }
    if (!outputs.empty()) {
      for (std::size_t i = 0; i < nb; ++i) {
        for (std::size_t t = 0; t < tasks; ++t) {
          const S o = logit[t * nb + i];
          outputs[i * tasks + t] =
              config.tasks[t].kind == DeepTaskKind::regression ? o : sigmoid(o);
        }
      }
    }
    return static_cast<S>(total);
  }

  // Column sums of dz (n x out) added to gb; threads split the columns, so
  // each sum runs over the rows in order whatever the thread count.
  void add_column_sums(std::size_t n, std::size_t out, const S* dz, std::vector<S>& gb) {
    constexpr std::size_t kBlock = 32;
    const auto blocks = static_cast<std::ptrdiff_t>((out + kBlock - 1) / kBlock);
    S* __restrict sums = gb.data();
#pragma omp parallel for num_threads(threads) if (blocks > 1 && parallel(n * out)) schedule(static)
    for (std::ptrdiff_t sb = 0; sb < blocks; ++sb) {
      const std::size_t j0 = static_cast<std::size_t>(sb) * kBlock;
      const std::size_t j1 = std::min(out, j0 + kBlock);
      for (std::size_t i = 0; i < n; ++i) {
        const S* __restrict di = dz + i * out;
        for (std::size_t j = j0; j < j1; ++j) sums[j] += di[j];
      }
    }
  }

  // d pre-activation from d output of a ReLU (+ dropout) layer, in place:
  // the unit was active and kept exactly where its output is positive.
  void relu_backward(S* dz, const S* y, std::size_t width, const DeepDropout& dropout) {
    const S keep_scale = dropout.rate > 0.0F ? S(1) / (S(1) - static_cast<S>(dropout.rate)) : S(1);
    const std::ptrdiff_t nrows = static_cast<std::ptrdiff_t>(nb);
#pragma omp parallel for num_threads(threads) if (parallel(nb * width)) schedule(static)
    for (std::ptrdiff_t si = 0; si < nrows; ++si) {
      const std::size_t base = static_cast<std::size_t>(si) * width;
      S* __restrict di = dz + base;
      const S* __restrict yi = y + base;
      for (std::size_t j = 0; j < width; ++j) di[j] *= yi[j] > S(0) ? keep_scale : S(0);
    }
  }

  // dx[:, cols] += dz (nb x out) W (out x X) for the columns of x that feed
  // parameters (all but the candidate's text vector).
  void add_input_gradient(const S* dz, std::size_t out, const std::vector<S>& w) {
    const std::size_t xw = layout.input_width;
    const std::size_t u = layout.user_width;
    gemm(false, false, nb, u, out, dz, out, w.data(), xw, S(1), dx.data(), xw);
    const std::size_t c0 = u + d;
    gemm(false, false, nb, xw - c0, out, dz, out, w.data() + c0, xw, S(1), dx.data() + c0, xw);
  }

  void backward(const DeepTensors<S>& p, const DeepDropout& dropout, DeepTensors<S>& g) {
    const std::size_t xw = layout.input_width;
    const std::size_t hl = config.expert_hidden.back();
    const std::size_t tl = config.tower_hidden.size();
    const std::size_t el = config.expert_hidden.size();
    dz0.resize(nb * max_width);
    dz1.resize(nb * max_width);
    dm.resize(nb * hl);
    dx.assign(nb * xw, S(0));
    for (std::size_t e = 0; e < experts; ++e) dy[e].assign(nb * hl, S(0));

    for (std::size_t t = 0; t < tasks; ++t) {
      const S* dlo = dlogit.data() + t * nb;
      // Output layer (1 x width).
      const S* in = tl == 0 ? tower_input(t) : tower_out[t * tl + tl - 1].data();
      std::size_t width = tl == 0 ? hl : config.tower_hidden[tl - 1];
      std::size_t w = layout.tower[t][tl];
      gemm(true, false, 1, width, nb, dlo, 1, in, width, S(1), g[w].data(), width);
      add_column_sums(nb, 1, dlo, g[w + 1]);
      S* dz = tl == 0 ? dm.data() : dz0.data();
      gemm(false, false, nb, width, 1, dlo, 1, p[w].data(), width, S(0), dz, width);
      for (std::size_t l = tl; l-- > 0;) {
        const std::size_t out = config.tower_hidden[l];
        relu_backward(dz, tower_out[t * tl + l].data(), out, dropout);
        in = l == 0 ? tower_input(t) : tower_out[t * tl + l - 1].data();
        width = l == 0 ? hl : config.tower_hidden[l - 1];
        w = layout.tower[t][l];
        gemm(true, false, out, width, nb, dz, out, in, width, S(1), g[w].data(), width);
        add_column_sums(nb, out, dz, g[w + 1]);
        S* next = l == 0 ? dm.data() : (dz == dz0.data() ? dz1.data() : dz0.data());
        gemm(false, false, nb, width, out, dz, out, p[w].data(), width, S(0), next, width);
        dz = next;
      }
      // dm now holds d loss / d m_t.
      if (!mmoe) {
        S* __restrict dy0 = dy[0].data();
        const S* __restrict dmt = dm.data();
        for (std::size_t k = 0; k < nb * hl; ++k) dy0[k] += dmt[k];
        continue;
      }
      const S* gt = gate[t].data();
      dgate.resize(nb * experts);
      const std::ptrdiff_t nrows = static_cast<std::ptrdiff_t>(nb);
#pragma omp parallel for num_threads(threads) if (parallel(nb * hl * experts)) schedule(static)
      for (std::ptrdiff_t si = 0; si < nrows; ++si) {
        const auto i = static_cast<std::size_t>(si);
        const S* dmi = dm.data() + i * hl;
        const S* gi = gt + i * experts;
        S* dgi = dgate.data() + i * experts;
        S dot = 0;
        for (std::size_t e = 0; e < experts; ++e) {
          const S* ye = expert_result(e) + i * hl;
          S* dye = dy[e].data() + i * hl;
          S s = 0;
          for (std::size_t j = 0; j < hl; ++j) {
            s += dmi[j] * ye[j];
            dye[j] += gi[e] * dmi[j];
          }
          dgi[e] = s;
          dot += gi[e] * s;
        }
        for (std::size_t e = 0; e < experts; ++e) dgi[e] = gi[e] * (dgi[e] - dot);
      }
      w = layout.gate[t];
      gemm(true, false, experts, xw, nb, dgate.data(), experts, x.data(), xw, S(1), g[w].data(),
           xw);
      add_column_sums(nb, experts, dgate.data(), g[w + 1]);
      add_input_gradient(dgate.data(), experts, p[w]);
    }

    for (std::size_t e = 0; e < experts; ++e) {
      S* dz = dy[e].data();
      for (std::size_t l = el; l-- > 0;) {
        const std::size_t out = config.expert_hidden[l];
        relu_backward(dz, expert_out[e * el + l].data(), out, dropout);
        const S* in = l == 0 ? x.data() : expert_out[e * el + l - 1].data();
        const std::size_t width = l == 0 ? xw : config.expert_hidden[l - 1];
        const std::size_t w = layout.expert[e][l];
        gemm(true, false, out, width, nb, dz, out, in, width, S(1), g[w].data(), width);
        add_column_sums(nb, out, dz, g[w + 1]);
        if (l == 0) {
          add_input_gradient(dz, out, p[w]);
        } else {
          S* next = dz == dz0.data() ? dz1.data() : dz0.data();
          gemm(false, false, nb, width, out, dz, out, p[w].data(), width, S(0), next, width);
          dz = next;
        }
      }
    }
  }

  // Embedding gradients of x's user and candidate parts.
  void embedding_backward(const DeepRankerBatch& b, DeepTensors<S>& g) {
    const std::size_t xw = layout.input_width;
    const std::size_t nuc = config.user_categorical.size();
    const std::size_t nic = config.item_categorical.size();
    for (std::size_t i = 0; i < nb; ++i) {
      const std::size_t u = row_user[i];
      const S* dxi = dx.data() + i * xw;
      for (std::size_t k = 0; k < nuc; ++k) {
        const std::size_t dim = config.user_categorical[k].dim;
        const auto idx = static_cast<std::size_t>(b.user_categorical[u * nuc + k]);
        S* dst = g[layout.user_embedding[k]].data() + idx * dim;
        const S* src = dxi + layout.user_offsets[k];
        for (std::size_t j = 0; j < dim; ++j) dst[j] += src[j];
      }
      for (std::size_t k = 0; k < nic; ++k) {
        const std::size_t dim = config.item_categorical[k].dim;
        const auto idx = static_cast<std::size_t>(b.candidate_categorical[i * nic + k]);
        S* dst = g[layout.item_embedding[k]].data() + idx * dim;
        const S* src = dxi + layout.user_width + layout.item_offsets[k];
        for (std::size_t j = 0; j < dim; ++j) dst[j] += src[j];
      }
    }
  }

  void attention_backward(const DeepTensors<S>& p, const DeepRankerBatch& b, DeepTensors<S>& g) {
    const std::size_t xw = layout.input_width;
    const std::size_t hd = layout.token_width;
    const std::size_t p_col = layout.user_width + layout.candidate_width;
    dq.assign(nb * a, S(0));
    dk.assign(ne * a, S(0));
    dv.assign(ne * a, S(0));
    const std::ptrdiff_t nusers = static_cast<std::ptrdiff_t>(nu);
#pragma omp parallel for num_threads(threads) if (parallel(att_begin[nb] * a)) schedule(static)
    for (std::ptrdiff_t su = 0; su < nusers; ++su) {
      const auto u = static_cast<std::size_t>(su);
      const std::size_t e0 = event_begin[u];
      const std::size_t n = event_begin[u + 1] - e0;
      if (n == 0) continue;  // p = 0 whatever the query: no gradient flows
      for (std::size_t r = user_row_begin[u]; r < user_row_begin[u + 1]; ++r) {
        const std::size_t i = user_rows[r];
        const S* dpi = dx.data() + i * xw + p_col;
        const S* ai = att.data() + att_begin[i];
        const S* qi = q.data() + i * a;
        S* dqi = dq.data() + i * a;
        // d a_j = dp . v_j, then the softmax: ds_j = a_j (da_j - sum_k a_k da_k).
        S* ds = att_scratch.data() + att_begin[i];  // this row's own slice
        S dot = 0;
        for (std::size_t j = 0; j < n; ++j) {
          const S* vj = values.data() + (e0 + j) * a;
          S* dvj = dv.data() + (e0 + j) * a;
          S s = 0;
          for (std::size_t c = 0; c < a; ++c) {
            s += dpi[c] * vj[c];
            dvj[c] += ai[j] * dpi[c];
          }
          ds[j] = s;
          dot += ai[j] * s;
        }
        for (std::size_t j = 0; j < n; ++j) {
          const S dsj = ai[j] * (ds[j] - dot) * inv_sqrt_a;
          const S* kj = keys.data() + (e0 + j) * a;
          S* dkj = dk.data() + (e0 + j) * a;
          for (std::size_t c = 0; c < a; ++c) {
            dqi[c] += dsj * kj[c];
            dkj[c] += dsj * qi[c];
          }
        }
      }
    }

    // Query: W_q, b_q and the candidate's history-category embedding.
    S* gh = g[layout.item_embedding[hcf]].data();
    gemm(true, false, a, hd, nb, dq.data(), a, tgt.data(), hd, S(1), g[layout.query].data(), hd);
    add_column_sums(nb, a, dq.data(), g[layout.query + 1]);
    dtok.resize(std::max(nb, ne) * dc);
    gemm(false, false, nb, dc, a, dq.data(), a, p[layout.query].data() + d, hd, S(0), dtok.data(),
         dc);
    const std::size_t nic = config.item_categorical.size();
    for (std::size_t i = 0; i < nb; ++i) {
      const auto idx = static_cast<std::size_t>(b.candidate_categorical[i * nic + hcf]);
      for (std::size_t j = 0; j < dc; ++j) gh[idx * dc + j] += dtok[i * dc + j];
    }

    // Keys and values: W, b, the type and recency tables, the history tokens' embeddings.
    gemm(true, false, a, hd, ne, dk.data(), a, h.data(), hd, S(1), g[layout.key].data(), hd);
    add_column_sums(ne, a, dk.data(), g[layout.key + 1]);
    gemm(true, false, a, hd, ne, dv.data(), a, h.data(), hd, S(1), g[layout.value].data(), hd);
    add_column_sums(ne, a, dv.data(), g[layout.value + 1]);
    gemm(false, false, ne, dc, a, dk.data(), a, p[layout.key].data() + d, hd, S(0), dtok.data(),
         dc);
    gemm(false, false, ne, dc, a, dv.data(), a, p[layout.value].data() + d, hd, S(1), dtok.data(),
         dc);
    S* gtype = g[layout.type_embedding].data();
    S* grec = g[layout.recency_embedding].data();
    for (std::size_t j = 0; j < ne; ++j) {
      const S* dkj = dk.data() + j * a;
      S* ty = gtype + static_cast<std::size_t>(b.history_type[j]) * a;
      S* re = grec + static_cast<std::size_t>(b.history_recency[j]) * a;
      for (std::size_t c = 0; c < a; ++c) {
        ty[c] += dkj[c];
        re[c] += dkj[c];
      }
      const auto idx = static_cast<std::size_t>(b.history_category[j]);
      for (std::size_t c = 0; c < dc; ++c) gh[idx * dc + c] += dtok[j * dc + c];
    }
  }
};

template <class S>
DeepBackprop<S>::DeepBackprop(const DeepRankerConfig& config, std::size_t threads)
    : work_(std::make_unique<Work>(config, threads)) {}

template <class S>
DeepBackprop<S>::~DeepBackprop() = default;

template <class S>
const DeepLayout& DeepBackprop<S>::layout() const noexcept {
  return work_->layout;
}

template <class S>
S DeepBackprop<S>::run(const DeepTensors<S>& params, const DeepRankerExamples& examples,
                       std::span<const std::size_t> rows, const DeepDropout& dropout,
                       DeepTensors<S>* grads, std::span<S> outputs) {
  Work& w = *work_;
  assert(params.size() == w.layout.shapes.size());
  assert(outputs.empty() || outputs.size() == rows.size() * w.tasks);
  const OmpThreadsScope scope(w.threads);
  const DeepRankerBatch batch = examples.gather(rows, w.storage);
  w.prepare(batch);
  w.gather(params, batch);
  w.attention_forward(params, batch);
  w.body_forward(params, dropout);
  w.towers_forward(params, dropout);
  const S loss = w.loss(examples, rows, outputs);
  if (grads == nullptr) return loss;

  grads->resize(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) (*grads)[i].assign(params[i].size(), S(0));
  w.att_scratch.resize(w.att.size());
  w.backward(params, dropout, *grads);
  w.embedding_backward(batch, *grads);
  w.attention_backward(params, batch, *grads);
  return loss;
}

template class DeepBackprop<float>;
template class DeepBackprop<double>;

// ---------------------------------------------------------------------------
// Initialisation and the optimizer

DeepTensors<float> deep_initial_parameters(const DeepLayout& layout, std::uint64_t seed) {
  DeepTensors<float> params(layout.shapes.size());
  for (std::size_t i = 0; i < layout.shapes.size(); ++i) {
    const auto& shape = layout.shapes[i].shape;
    std::size_t n = 1;
    for (const std::size_t s : shape) n *= s;
    auto& values = params[i];
    values.assign(n, 0.0F);
    // One stream per tensor: a tensor's values do not depend on the others' sizes.
    Stream rng(seed ^ mix64((i + 1) * 0xD1B54A32D192ED03ULL));
    switch (layout.init[i]) {
      case DeepInit::zero: break;
      case DeepInit::embedding:
        for (auto& v : values) v = static_cast<float>(0.05 * rng.normal());
        break;
      case DeepInit::he:
      case DeepInit::xavier: {
        assert(shape.size() == 2);
        const auto fan_out = static_cast<double>(shape[0]);
        const auto fan_in = static_cast<double>(shape[1]);
        const double bound = layout.init[i] == DeepInit::he ? std::sqrt(6.0 / fan_in)
                                                            : std::sqrt(6.0 / (fan_in + fan_out));
        for (auto& v : values) v = static_cast<float>(bound * (2.0 * rng.uniform() - 1.0));
        break;
      }
    }
  }
  return params;
}

void deep_set_output_biases(const DeepLayout& layout, const DeepRankerConfig& config,
                            const DeepRankerExamples& training, DeepTensors<float>& params) {
  const std::size_t tasks = config.tasks.size();
  const std::size_t n = training.candidates;
  auto logit = [](double p) {
    p = std::clamp(p, 1e-4, 1.0 - 1e-4);
    return static_cast<float>(std::log(p / (1.0 - p)));
  };
  for (std::size_t t = 0; t < tasks; ++t) {
    const std::size_t bias = layout.tower[t].back() + 1;  // the output layer's bias
    assert(params[bias].size() == 1);
    const int parent = layout.parent[t];
    double sum = 0.0;
    double parent_sum = 0.0;
    std::size_t count = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const float y = training.labels[i * tasks + t];
      if (std::isnan(y)) continue;
      if (parent >= 0) {
        const float yp = training.labels[i * tasks + static_cast<std::size_t>(parent)];
        if (std::isnan(yp)) continue;
        parent_sum += yp;
      }
      sum += y;
      ++count;
    }
    if (count == 0) continue;
    switch (config.tasks[t].kind) {
      case DeepTaskKind::binary: params[bias][0] = logit(sum / static_cast<double>(count)); break;
      case DeepTaskKind::ctcvr:
        params[bias][0] = parent_sum > 0.0 ? logit(sum / parent_sum) : logit(0.0);
        break;
      case DeepTaskKind::regression:
        params[bias][0] = static_cast<float>(sum / static_cast<double>(count));
        break;
    }
  }
}

DeepAdam::DeepAdam(const DeepTrainConfig& config, const DeepLayout& layout)
    : config_(config), decay_(layout.decay) {
  m_.resize(layout.shapes.size());
  v_.resize(layout.shapes.size());
  for (std::size_t i = 0; i < layout.shapes.size(); ++i) {
    std::size_t n = 1;
    for (const std::size_t s : layout.shapes[i].shape) n *= s;
    m_[i].assign(n, 0.0F);
    v_[i].assign(n, 0.0F);
  }
}

void DeepAdam::step(DeepTensors<float>& params, const DeepTensors<float>& grads,
                    std::size_t threads) {
  assert(params.size() == m_.size() && grads.size() == m_.size());
  ++steps_;
  const auto t = static_cast<double>(steps_);
  const float b1 = config_.beta1;
  const float b2 = config_.beta2;
  const float lr = config_.learning_rate;
  const float eps = config_.epsilon;
  const auto bias1 = static_cast<float>(1.0 - std::pow(static_cast<double>(b1), t));
  const auto sqrt_bias2 = static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(b2), t)));
  const float step_size = lr / bias1;
  const bool adamw = config_.optimizer == DeepTrainConfig::Optimizer::adamw;
  const int nt = static_cast<int>(threads);
  for (std::size_t i = 0; i < params.size(); ++i) {
    float* __restrict p = params[i].data();
    const float* __restrict g = grads[i].data();
    float* __restrict m = m_[i].data();
    float* __restrict v = v_[i].data();
    const float l2 = decay_[i] && !adamw ? config_.weight_decay : 0.0F;
    const float shrink = decay_[i] && adamw ? 1.0F - lr * config_.weight_decay : 1.0F;
    const auto n = static_cast<std::ptrdiff_t>(params[i].size());
    const bool parallel = nt > 1 && n >= 16384;
#pragma omp parallel for num_threads(nt) if (parallel) schedule(static)
    for (std::ptrdiff_t k = 0; k < n; ++k) {
      const float gk = g[k] + l2 * p[k];
      m[k] = b1 * m[k] + (1.0F - b1) * gk;
      v[k] = b2 * v[k] + (1.0F - b2) * gk * gk;
      const float denom = std::sqrt(v[k]) / sqrt_bias2 + eps;
      p[k] = p[k] * shrink - step_size * m[k] / denom;
    }
  }
}

// ---------------------------------------------------------------------------
// Metrics and checks

std::vector<DeepTaskMetrics> deep_task_metrics(const DeepRankerConfig& config,
                                               std::span<const float> outputs,
                                               std::span<const float> labels) {
  const std::size_t tasks = config.tasks.size();
  assert(outputs.size() == labels.size() && labels.size() % tasks == 0);
  const std::size_t n = labels.size() / tasks;
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  constexpr double kClamp = 1e-7;
  std::vector<int> parent(tasks, -1);
  for (std::size_t t = 0; t < tasks; ++t) {
    for (std::size_t s = 0; s < tasks; ++s) {
      if (config.tasks[t].kind == DeepTaskKind::ctcvr &&
          config.tasks[s].name == config.tasks[t].parent) {
        parent[t] = static_cast<int>(s);
      }
    }
  }
  std::vector<DeepTaskMetrics> result;
  std::vector<float> scores;
  std::vector<int> ys;
  std::vector<float> targets;
  for (std::size_t t = 0; t < tasks; ++t) {
    const auto& task = config.tasks[t];
    DeepTaskMetrics m{task.name, 0, kNaN, kNaN, kNaN};
    scores.clear();
    ys.clear();
    targets.clear();
    double sum = 0.0;
    std::size_t positives = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const float label = labels[i * tasks + t];
      if (std::isnan(label)) continue;
      const auto y = static_cast<double>(label);
      double o = outputs[i * tasks + t];
      if (task.kind == DeepTaskKind::regression) {
        sum += (o - y) * (o - y);
        scores.push_back(static_cast<float>(o));
        targets.push_back(label);
      } else {
        if (parent[t] >= 0) o *= outputs[i * tasks + static_cast<std::size_t>(parent[t])];
        const double pc = std::clamp(o, kClamp, 1.0 - kClamp);
        sum -= y * std::log(pc) + (1.0 - y) * std::log(1.0 - pc);
        scores.push_back(static_cast<float>(o));
        ys.push_back(label > 0.5F ? 1 : 0);
        positives += label > 0.5F ? 1 : 0;
      }
      ++m.examples;
    }
    if (m.examples > 0) {
      const double mean = sum / static_cast<double>(m.examples);
      if (task.kind == DeepTaskKind::regression) {
        m.rmse = std::sqrt(mean);
        // Long (above the median label) vs short, as `funnel eval` ranks
        // dwell: lets early stopping watch the regression head too.
        std::vector<float> sorted = targets;
        std::sort(sorted.begin(), sorted.end());
        const std::size_t half = sorted.size() / 2;
        const double median =
            sorted.size() % 2 == 1
                ? static_cast<double>(sorted[half])
                : 0.5 * (static_cast<double>(sorted[half - 1]) + static_cast<double>(sorted[half]));
        for (const float y : targets) {
          ys.push_back(static_cast<double>(y) > median ? 1 : 0);
          positives += static_cast<double>(y) > median ? 1 : 0;
        }
        if (positives > 0 && positives < m.examples) m.auc = auc(scores, ys);
      } else {
        m.log_loss = mean;
        if (positives > 0 && positives < m.examples) m.auc = auc(scores, ys);
      }
    }
    result.push_back(std::move(m));
  }
  return result;
}

double deep_mean_auc(const std::vector<DeepTaskMetrics>& metrics) {
  double sum = 0.0;
  std::size_t count = 0;
  for (const DeepTaskMetrics& m : metrics) {
    if (std::isnan(m.auc)) continue;
    sum += m.auc;
    ++count;
  }
  return count == 0 ? std::numeric_limits<double>::quiet_NaN() : sum / static_cast<double>(count);
}

void check_deep_examples(const DeepRankerConfig& config, const DeepRankerExamples& examples,
                         const std::string& what) {
  try {
    validate_deep_examples(config, examples);
  } catch (const Error& e) {
    throw Error(e.code(), what + ": " + e.what());
  }
  const std::size_t tasks = config.tasks.size();
  require(examples.labels.size() == examples.candidates * tasks, what, ": labels has ",
          examples.labels.size(), " values, expected candidates x tasks = ", examples.candidates,
          " x ", tasks);
  require(examples.ts.size() == examples.candidates, what, ": ts has ", examples.ts.size(),
          " values, expected one per candidate (", examples.candidates, ")");
  for (std::size_t i = 0; i < examples.candidates; ++i) {
    for (std::size_t t = 0; t < tasks; ++t) {
      const float y = examples.labels[i * tasks + t];
      if (std::isnan(y)) continue;
      const auto& task = config.tasks[t];
      if (task.kind == DeepTaskKind::regression) {
        require(std::isfinite(y), what, ": labels row ", i, " task ", task.name, " is ", y,
                ", expected a finite value or NaN");
      } else {
        require(y == 0.0F || y == 1.0F, what, ": labels row ", i, " task ", task.name, " (",
                to_string(task.kind), ") is ", y, ", expected 0, 1 or NaN");
      }
    }
  }
}

}  // namespace funnel::detail
