// SPDX-License-Identifier: Apache-2.0
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/deep_ranker.hpp"
#include "funnel/error.hpp"
#include "funnel/metrics.hpp"
#include "funnel/safetensors.hpp"
#include "internal/deep_ranker_backprop.hpp"

using Catch::Matchers::Contains;
using funnel::DeepRankerConfig;
using funnel::DeepRankerExamples;
using funnel::DeepTaskKind;
using funnel::DeepTrainConfig;
using funnel::DeepTrainReport;
using funnel::Error;
using funnel::ErrorCode;
using funnel::detail::DeepBackprop;
using funnel::detail::DeepTensors;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A small network with every feature kind and all three task kinds.
DeepRankerConfig small_config(DeepRankerConfig::Body body) {
  DeepRankerConfig c;
  c.body = body;
  c.item_vector_dim = 5;
  c.user_categorical = {{"gender", {"f", "m"}, 3}, {"age_band", {"a", "b", "c"}, 2}};
  c.user_numeric = {{"log_events", 1.0F, 2.0F}};
  c.item_categorical = {{"category", {"c1", "c2", "c3", "c4"}, 3}, {"brand", {"b1", "b2"}, 2}};
  c.item_numeric = {{"log_price", 3.0F, 1.5F}};
  c.history_category_feature = 0;
  c.history_length = 6;
  c.recency_bounds_s = {3600, 86400};
  c.attention_dim = 4;
  c.experts = body == DeepRankerConfig::Body::mmoe ? 3 : 1;
  c.expert_hidden = {7, 5};
  c.tower_hidden = {4};
  c.tasks = {{"ctr", DeepTaskKind::binary, "", 1.0F, "click"},
             {"cvr", DeepTaskKind::ctcvr, "ctr", 0.75F, "purchase"},
             {"dwell", DeepTaskKind::regression, "", 0.5F, "dwell"}};
  c.dropout = 0.2F;
  return c;
}

// Random examples: user 1 has no history, ragged histories otherwise; every
// task has NaN labels somewhere (dwell where there is no click, some ctr).
// Events and candidates draw from a small item table, so items repeat.
DeepRankerExamples random_examples(const DeepRankerConfig& c, std::size_t users,
                                   std::size_t candidates, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(-1.0F, 1.0F);
  auto pick = [&](std::size_t n) {
    return static_cast<std::int32_t>(std::uniform_int_distribution<std::size_t>(0, n)(rng));
  };
  const std::size_t d = c.item_vector_dim;
  DeepRankerExamples ex;
  ex.items = 9;
  for (std::size_t k = 0; k < ex.items * d; ++k) ex.item_vectors.push_back(unit(rng));
  ex.users = users;
  for (std::size_t u = 0; u < users; ++u) {
    for (const auto& f : c.user_categorical) ex.user_categorical.push_back(pick(f.vocab.size()));
    for (std::size_t k = 0; k < c.user_numeric.size(); ++k)
      ex.user_numeric.push_back(3 * unit(rng));
    const std::size_t n = u == 1 ? 0 : 1 + static_cast<std::size_t>(pick(c.history_length - 1));
    for (std::size_t j = 0; j < n; ++j) {
      ex.history_item.push_back(pick(ex.items - 1));
      ex.history_category.push_back(
          pick(c.item_categorical[c.history_category_feature].vocab.size()));
      ex.history_type.push_back(pick(3));
      ex.history_recency.push_back(pick(c.recency_bounds_s.size()));
    }
    ex.history_offsets.push_back(static_cast<std::int64_t>(ex.history_category.size()));
  }
  ex.candidates = candidates;
  for (std::size_t i = 0; i < candidates; ++i) {
    // Every user gets candidates, the one without history included.
    ex.candidate_user.push_back(static_cast<std::int32_t>(i < users ? i : pick(users - 1)));
    ex.candidate_item.push_back(pick(ex.items - 1));
    for (const auto& f : c.item_categorical)
      ex.candidate_categorical.push_back(pick(f.vocab.size()));
    for (std::size_t k = 0; k < c.item_numeric.size(); ++k) {
      ex.candidate_numeric.push_back(4 * unit(rng));
    }
    const bool click = unit(rng) > 0.0F;
    const bool buy = click && unit(rng) > 0.3F;
    ex.labels.push_back(i % 7 == 3 ? kNaN : (click ? 1.0F : 0.0F));
    ex.labels.push_back(buy ? 1.0F : 0.0F);
    ex.labels.push_back(click ? 2.0F * unit(rng) : kNaN);
    ex.ts.push_back(static_cast<std::int64_t>(1000 + i));
  }
  return ex;
}

DeepTensors<double> to_double(const DeepTensors<float>& p) {
  DeepTensors<double> out(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) out[i].assign(p[i].begin(), p[i].end());
  return out;
}

std::vector<std::size_t> all_rows(std::size_t n) {
  std::vector<std::size_t> rows(n);
  std::iota(rows.begin(), rows.end(), std::size_t{0});
  return rows;
}

// Checks sampled entries of every gradient tensor against central finite
// differences of the double-precision loss.
void check_gradients(const DeepRankerConfig& config, std::uint32_t seed) {
  const DeepRankerExamples ex = random_examples(config, 5, 14, seed);
  DeepBackprop<double> net(config, 1);
  const auto& layout = net.layout();
  DeepTensors<double> params = to_double(funnel::detail::deep_initial_parameters(layout, seed));
  // Non-zero biases and larger embeddings: every term of the math matters.
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<double> unit(-0.3, 0.3);
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (layout.init[i] == funnel::detail::DeepInit::zero ||
        layout.init[i] == funnel::detail::DeepInit::embedding) {
      for (double& v : params[i]) v += unit(rng);
    }
  }
  // Rows in shuffled order with one repeat, as a training batch may hold them.
  std::vector<std::size_t> rows = all_rows(ex.candidates);
  std::shuffle(rows.begin(), rows.end(), rng);
  rows.push_back(rows[2]);
  const funnel::detail::DeepDropout dropout{config.dropout, 77};

  DeepTensors<double> grads;
  const double loss = net.run(params, ex, rows, dropout, &grads);
  REQUIRE(std::isfinite(loss));
  REQUIRE(grads.size() == params.size());

  constexpr double kStep = 1e-5;
  std::size_t checked = 0;
  for (std::size_t t = 0; t < params.size(); ++t) {
    REQUIRE(grads[t].size() == params[t].size());
    // The largest entries (rows the batch uses, for embedding tables) and a few random ones.
    std::vector<std::size_t> order = all_rows(params[t].size());
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return std::abs(grads[t][a]) > std::abs(grads[t][b]);
    });
    std::vector<std::size_t> sample(
        order.begin(),
        order.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(5, order.size())));
    for (int k = 0; k < 3; ++k) {
      sample.push_back(std::uniform_int_distribution<std::size_t>(0, order.size() - 1)(rng));
    }
    REQUIRE(std::abs(grads[t][sample[0]]) > 0.0);  // every tensor gets a gradient
    for (const std::size_t k : sample) {
      const double saved = params[t][k];
      params[t][k] = saved + kStep;
      const double up = net.run(params, ex, rows, dropout, nullptr);
      params[t][k] = saved - kStep;
      const double down = net.run(params, ex, rows, dropout, nullptr);
      params[t][k] = saved;
      const double numeric = (up - down) / (2 * kStep);
      const double analytic = grads[t][k];
      const double scale = std::max({std::abs(numeric), std::abs(analytic), 1e-2});
      INFO(layout.shapes[t].name << "[" << k << "]: analytic " << analytic << ", numeric "
                                 << numeric);
      CHECK(std::abs(numeric - analytic) / scale <= 1e-6);
      ++checked;
    }
  }
  CHECK(checked >= params.size() * 5);
}

}  // namespace

TEST_CASE("deep ranker gradients match finite differences (mmoe, dropout)", "[deep_train]") {
  check_gradients(small_config(DeepRankerConfig::Body::mmoe), 11);
}

TEST_CASE(
    "deep ranker gradients match finite differences (shared_bottom, no dropout, no tower "
    "hidden layer)",
    "[deep_train]") {
  DeepRankerConfig c = small_config(DeepRankerConfig::Body::shared_bottom);
  c.dropout = 0.0F;
  c.tower_hidden = {};
  check_gradients(c, 12);
}

TEST_CASE("deep ranker gradients match finite differences (shared_bottom, dropout)",
          "[deep_train]") {
  check_gradients(small_config(DeepRankerConfig::Body::shared_bottom), 13);
}

// --- The PyTorch twin's fixtures -------------------------------------------

namespace {

std::filesystem::path fixture_dir(const std::string& name) {
  return std::filesystem::path(FUNNEL_TEST_DATA_DIR) / "deep_ranker" / name;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<float> tensor_values(const funnel::SafetensorsFile& file, const std::string& name) {
  const auto view = file.f32_view(file.at(name));
  return {view.begin(), view.end()};
}

// Loss, outputs and every gradient of the trainer against the PyTorch
// twin's, on all input rows in order, without dropout.
template <class S>
void check_fixture(const std::string& name, double tolerance) {
  const auto dir = fixture_dir(name);
  REQUIRE(std::filesystem::exists(dir / "expected.safetensors"));
  const auto config =
      DeepRankerConfig::from_json(read_text(dir / "config.json"), (dir / "config.json").string());
  const auto inputs = DeepRankerExamples::load(dir / "inputs.safetensors", config);
  funnel::detail::check_deep_examples(config, inputs, "fixture inputs");
  const auto model = funnel::SafetensorsFile::open(dir / "model.safetensors");
  const auto expected = funnel::SafetensorsFile::open(dir / "expected.safetensors");

  DeepBackprop<S> net(config, 1);
  DeepTensors<S> params;
  for (const auto& shape : net.layout().shapes) {
    const auto v = tensor_values(model, shape.name);
    params.emplace_back(v.begin(), v.end());
  }
  const auto rows = all_rows(inputs.candidates);
  const std::size_t tasks = config.tasks.size();
  std::vector<S> outputs(rows.size() * tasks);
  DeepTensors<S> grads;
  const S loss = net.run(params, inputs, rows, {}, &grads, outputs);

  const auto close = [&](double actual, double want) {
    return std::abs(actual - want) <= tolerance * std::max(1.0, std::abs(want));
  };
  const double want_loss = tensor_values(expected, "loss").at(0);
  INFO(name << " loss " << loss << " vs PyTorch " << want_loss);
  CHECK(close(loss, want_loss));
  const auto want_outputs = tensor_values(expected, "outputs");
  REQUIRE(want_outputs.size() == outputs.size());
  for (std::size_t k = 0; k < outputs.size(); ++k) {
    INFO("output " << k << ": " << outputs[k] << " vs PyTorch " << want_outputs[k]);
    CHECK(close(outputs[k], want_outputs[k]));
  }
  for (std::size_t t = 0; t < grads.size(); ++t) {
    const std::string& tensor = net.layout().shapes[t].name;
    const auto want = tensor_values(expected, "grad." + tensor);
    REQUIRE(want.size() == grads[t].size());
    for (std::size_t k = 0; k < want.size(); ++k) {
      INFO("grad." << tensor << "[" << k << "]: " << grads[t][k] << " vs PyTorch " << want[k]);
      CHECK(close(grads[t][k], want[k]));
    }
  }
}

}  // namespace

TEST_CASE("deep ranker loss and gradients match the PyTorch twin (mmoe)", "[deep_train]") {
  check_fixture<float>("mmoe", 1e-5);
  check_fixture<double>("mmoe", 1e-5);
}

TEST_CASE("deep ranker loss and gradients match the PyTorch twin (shared_bottom)", "[deep_train]") {
  check_fixture<float>("shared_bottom", 1e-5);
  check_fixture<double>("shared_bottom", 1e-5);
}

// --- The optimizer ------------------------------------------------------------

TEST_CASE("Adam adds L2 decay to the gradient, AdamW decays the weights (hand-computed)",
          "[deep_train]") {
  const DeepRankerConfig config = small_config(DeepRankerConfig::Body::shared_bottom);
  const funnel::detail::DeepLayout layout(config);
  const std::size_t weight = layout.expert[0][0];      // decayed
  const std::size_t bias = weight + 1;                 // not decayed
  const std::size_t table = layout.user_embedding[0];  // decayed
  REQUIRE(layout.decay[weight]);
  REQUIRE_FALSE(layout.decay[bias]);
  REQUIRE(layout.decay[table]);

  DeepTrainConfig train;
  train.learning_rate = 0.01F;
  train.weight_decay = 0.1F;
  train.beta1 = 0.9F;
  train.beta2 = 0.999F;
  train.epsilon = 1e-8F;
  const double p0 = 0.5;
  const double g1 = -0.02;  // L2 term 0.1 * 0.5 = 0.05 flips its sign for Adam
  const double g2 = 0.04;

  for (const auto optimizer :
       {DeepTrainConfig::Optimizer::adam, DeepTrainConfig::Optimizer::adamw}) {
    train.optimizer = optimizer;
    const bool adamw = optimizer == DeepTrainConfig::Optimizer::adamw;
    funnel::detail::DeepAdam adam(train, layout);
    DeepTensors<float> params;
    DeepTensors<float> grads;
    for (const auto& s : layout.shapes) {
      std::size_t n = 1;
      for (const std::size_t d : s.shape) n *= d;
      params.emplace_back(n, static_cast<float>(p0));
      grads.emplace_back(n, static_cast<float>(g1));
    }
    // By hand (PyTorch's Adam / AdamW), for a decayed and an undecayed tensor.
    auto expect = [&](bool decayed) {
      double p = p0;
      double m = 0;
      double v = 0;
      const double lr = 0.01;
      const double wd = 0.1;
      for (int step = 1; step <= 2; ++step) {
        double g = step == 1 ? g1 : g2;
        if (decayed && !adamw) g += wd * p;
        if (decayed && adamw) p *= 1 - lr * wd;
        m = 0.9 * m + 0.1 * g;
        v = 0.999 * v + 0.001 * g * g;
        const double mhat = m / (1 - std::pow(0.9, step));
        const double denom = std::sqrt(v) / std::sqrt(1 - std::pow(0.999, step)) + 1e-8;
        p -= lr * mhat / denom;
      }
      return p;
    };
    adam.step(params, grads, 1);
    for (auto& g : grads) std::fill(g.begin(), g.end(), static_cast<float>(g2));
    adam.step(params, grads, 2);
    CHECK(adam.steps() == 2);
    INFO(funnel::to_string(optimizer));
    CHECK(params[weight][3] == Approx(expect(true)).margin(1e-6));
    CHECK(params[table][1] == Approx(expect(true)).margin(1e-6));
    CHECK(params[bias][0] == Approx(expect(false)).margin(1e-6));
    // The two differ where the decay is on: Adam's first step went up (the L2
    // term won over the negative gradient), AdamW's went down.
    if (adamw) {
      CHECK(expect(true) > 0.5);
    } else {
      CHECK(expect(true) < 0.5);
    }
  }
}

// --- Training ------------------------------------------------------------------

namespace {

// A shop with a planted signal: each user belongs to one of four segments
// with a hidden taste vector; P(click) = sigmoid(6 * (item . taste) +
// category effect); purchases follow clicks of items close to the taste;
// dwell grows with the match. Histories hold items the user liked, so the
// taste is visible both in the segment and in the history.
struct Shop {
  DeepRankerConfig config;
  DeepRankerExamples training;
  DeepRankerExamples validation;
  std::vector<float> validation_click_probability;  // the true P(click) per validation row
};

constexpr std::size_t kShopDim = 4;

DeepRankerConfig shop_config() {
  DeepRankerConfig c;
  c.body = DeepRankerConfig::Body::mmoe;
  c.item_vector_dim = kShopDim;
  c.user_categorical = {{"segment", {"s0", "s1", "s2", "s3"}, 4}};
  c.user_numeric = {{"log_history_events", 1.5F, 0.8F}};
  c.item_categorical = {{"category", {"c0", "c1", "c2", "c3", "c4", "c5"}, 4}};
  c.item_numeric = {{"log_price", 3.0F, 1.0F}};
  c.history_length = 8;
  c.recency_bounds_s = {3600, 86400};
  c.attention_dim = 8;
  c.experts = 2;
  c.expert_hidden = {24};
  c.tower_hidden = {8};
  c.dropout = 0.05F;
  return c;
}

Shop make_shop(std::uint32_t seed, std::size_t users, std::size_t per_user) {
  Shop shop;
  shop.config = shop_config();
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss(0.0F, 1.0F);
  std::uniform_real_distribution<float> unit(0.0F, 1.0F);
  auto unit_vector = [&]() {
    std::vector<float> v(kShopDim);
    float n = 0.0F;
    for (float& x : v) {
      x = gauss(rng);
      n += x * x;
    }
    for (float& x : v) x /= std::sqrt(n);
    return v;
  };
  auto dot = [](const std::vector<float>& a, const std::vector<float>& b) {
    float s = 0.0F;
    for (std::size_t k = 0; k < a.size(); ++k) s += a[k] * b[k];
    return s;
  };
  constexpr std::size_t kItems = 300;
  const float category_effect[6] = {-2.0F, -1.0F, -0.3F, 0.3F, 1.0F, 2.0F};
  std::vector<std::vector<float>> tastes(4);
  for (auto& taste : tastes) taste = unit_vector();
  std::vector<std::vector<float>> items;
  std::vector<int> category;
  std::vector<float> price;
  for (std::size_t i = 0; i < kItems; ++i) {
    items.push_back(unit_vector());
    category.push_back(static_cast<int>(rng() % 6));
    price.push_back(3.0F + gauss(rng));
  }
  auto click_logit = [&](std::size_t item, int segment) {
    return 6.0F * dot(items[item], tastes[segment]) + category_effect[category[item]];
  };

  for (DeepRankerExamples* ex : {&shop.training, &shop.validation}) {
    ex->items = kItems;
    for (const auto& v : items) ex->item_vectors.insert(ex->item_vectors.end(), v.begin(), v.end());
    ex->users = users;
  }
  for (std::size_t u = 0; u < users; ++u) {
    const int segment = static_cast<int>(u % 4);
    const std::size_t n = u % 10 == 0 ? 0 : 2 + rng() % 7;
    std::vector<std::size_t> history;
    while (history.size() < n) {
      const std::size_t item = rng() % kItems;
      if (dot(items[item], tastes[segment]) > 0.3F) history.push_back(item);
    }
    for (DeepRankerExamples* ex : {&shop.training, &shop.validation}) {
      ex->user_categorical.push_back(segment + 1);
      ex->user_numeric.push_back(std::log1p(static_cast<float>(n)));
      for (const std::size_t item : history) {
        ex->history_item.push_back(static_cast<std::int32_t>(item));
        ex->history_category.push_back(category[item] + 1);
        ex->history_type.push_back(1);
        ex->history_recency.push_back(static_cast<std::int32_t>(item % 3));
      }
      ex->history_offsets.push_back(static_cast<std::int64_t>(ex->history_category.size()));
    }
    for (std::size_t k = 0; k < 2 * per_user; ++k) {
      DeepRankerExamples& ex = k % 2 == 0 ? shop.training : shop.validation;
      const std::size_t item = rng() % kItems;
      const float p = 1.0F / (1.0F + std::exp(-click_logit(item, segment)));
      const bool click = unit(rng) < p;
      const float match = dot(items[item], tastes[segment]);
      const bool buy = click && unit(rng) < 1.0F / (1.0F + std::exp(-(4.0F * match - 1.0F)));
      ex.candidate_user.push_back(static_cast<std::int32_t>(u));
      ex.candidate_item.push_back(static_cast<std::int32_t>(item));
      ex.candidate_categorical.push_back(category[item] + 1);
      ex.candidate_numeric.push_back(price[item]);
      ex.labels.push_back(click ? 1.0F : 0.0F);
      ex.labels.push_back(buy ? 1.0F : 0.0F);
      ex.labels.push_back(click ? std::log1p(30.0F * (1.5F + match + 0.3F * gauss(rng))) : kNaN);
      ex.ts.push_back(static_cast<std::int64_t>(k));
      ++ex.candidates;
      if (&ex == &shop.validation) shop.validation_click_probability.push_back(p);
    }
  }
  return shop;
}

// Metrics of parameters on examples through the trainer's own forward pass.
std::vector<funnel::DeepTaskMetrics> metrics_of(const DeepRankerConfig& config,
                                                const DeepTensors<float>& params,
                                                const DeepRankerExamples& ex) {
  DeepBackprop<float> net(config, 1);
  std::vector<float> outputs(ex.candidates * config.tasks.size());
  net.run(params, ex, all_rows(ex.candidates), {}, nullptr, outputs);
  return funnel::detail::deep_task_metrics(config, outputs, ex.labels);
}

DeepTensors<float> values_of(const funnel::DeepRankerParameters& params) {
  DeepTensors<float> out;
  for (const auto& t : params) out.push_back(t.values);
  return out;
}

DeepTrainConfig quick_train() {
  DeepTrainConfig t;
  t.learning_rate = 0.01F;
  t.batch_size = 128;
  t.max_epochs = 12;
  t.patience = 3;
  t.seed = 7;
  return t;
}

}  // namespace

TEST_CASE("output biases start at the training labels' base rates (hand-computed)",
          "[deep_train]") {
  const DeepRankerConfig c = small_config(DeepRankerConfig::Body::mmoe);
  DeepRankerExamples ex = random_examples(c, 3, 8, 11);
  // ctr: 2 clicks in 7 labelled rows; cvr (joint): 1 purchase over the 2
  // clicks of the rows labelled for both (row 7's ctr is unknown, so its
  // purchase does not count); dwell: the mean of 2.0 and 4.0.
  const std::vector<float> ctr{1, 0, 0, 0, 1, 0, 0, kNaN};
  const std::vector<float> cvr{1, 0, 0, 0, 0, 0, 0, 1};
  const std::vector<float> dwell{2.0F, kNaN, kNaN, kNaN, 4.0F, kNaN, kNaN, kNaN};
  for (std::size_t i = 0; i < 8; ++i) {
    ex.labels[i * 3] = ctr[i];
    ex.labels[i * 3 + 1] = cvr[i];
    ex.labels[i * 3 + 2] = dwell[i];
  }
  const funnel::detail::DeepLayout layout(c);
  auto params = funnel::detail::deep_initial_parameters(layout, 5);
  const auto before = params;
  funnel::detail::deep_set_output_biases(layout, c, ex, params);
  auto value = [&](const DeepTensors<float>& p, const std::string& name) {
    for (std::size_t i = 0; i < layout.shapes.size(); ++i) {
      if (layout.shapes[i].name == name) return p[i];
    }
    FAIL("no tensor " << name);
    return std::vector<float>{};
  };
  CHECK(value(params, "tower.ctr.1.bias")[0] == Approx(std::log(0.4)).margin(1e-6));  // 2/7 : 5/7
  CHECK(value(params, "tower.cvr.1.bias")[0] == Approx(0.0).margin(1e-6));            // 1/2
  CHECK(value(params, "tower.dwell.1.bias")[0] == Approx(3.0).margin(1e-6));
  // Nothing else moves.
  std::size_t changed = 0;
  for (std::size_t i = 0; i < params.size(); ++i) changed += params[i] != before[i] ? 1 : 0;
  CHECK(changed == 2);  // ctr and dwell; cvr's rate of 1/2 is logit 0, its initial value

  // No purchase at all: the rate is clamped (logit(1e-4)); no dwell label:
  // the bias stays.
  for (std::size_t i = 0; i < 8; ++i) {
    ex.labels[i * 3 + 1] = 0.0F;
    ex.labels[i * 3 + 2] = kNaN;
  }
  params = before;
  funnel::detail::deep_set_output_biases(layout, c, ex, params);
  CHECK(value(params, "tower.cvr.1.bias")[0] == Approx(std::log(1e-4 / (1 - 1e-4))).margin(1e-5));
  CHECK(value(params, "tower.dwell.1.bias")[0] == 0.0F);
}

TEST_CASE("training learns a planted click signal", "[deep_train]") {
  const Shop shop = make_shop(5, 240, 12);
  // The bound: the true click probabilities' AUC on these validation labels.
  std::vector<int> clicks;
  for (std::size_t i = 0; i < shop.validation.candidates; ++i) {
    clicks.push_back(shop.validation.labels[i * 3] > 0.5F ? 1 : 0);
  }
  const double oracle = funnel::auc(shop.validation_click_probability, clicks);
  INFO("oracle click AUC " << oracle);
  REQUIRE(oracle > 0.9);

  DeepTrainReport report;
  const auto params =
      train_deep_ranker(shop.config, shop.training, shop.validation, quick_train(), &report);
  const auto untrained = metrics_of(
      shop.config,
      funnel::detail::deep_initial_parameters(funnel::detail::DeepLayout(shop.config), 7),
      shop.validation);
  const auto trained = metrics_of(shop.config, values_of(params), shop.validation);
  INFO("trained ctr AUC " << trained[0].auc << ", untrained " << untrained[0].auc << ", cvr AUC "
                          << trained[1].auc << ", dwell RMSE " << trained[2].rmse << " (untrained "
                          << untrained[2].rmse << "), epochs " << report.epochs << ", best "
                          << report.best_epoch);
  CHECK(trained[0].auc > 0.85);
  CHECK(trained[0].auc <= oracle + 0.02);
  CHECK(trained[0].auc > untrained[0].auc + 0.15);
  CHECK(trained[1].auc > untrained[1].auc + 0.05);
  CHECK(trained[2].rmse < 0.5 * untrained[2].rmse);
  CHECK(trained[0].log_loss < untrained[0].log_loss);

  // The report describes the kept parameters.
  CHECK(report.train_examples == shop.training.candidates);
  CHECK(report.validation_examples == shop.validation.candidates);
  CHECK(report.best_epoch >= 1);
  CHECK(report.best_epoch <= report.epochs);
  CHECK(report.examples_per_second > 0.0);
  REQUIRE(report.validation.size() == 3);
  CHECK(report.validation[0].task == "ctr");
  CHECK(report.validation[0].examples == shop.validation.candidates);
  CHECK(report.validation[2].examples < shop.validation.candidates);  // dwell: clicks only
  CHECK(report.validation[0].auc == trained[0].auc);
  CHECK(report.validation[2].auc == trained[2].auc);  // dwell: long vs short
  CHECK(report.validation[2].auc > 0.5);
  CHECK(std::isnan(report.validation[0].rmse));
  CHECK(report.best_validation_auc ==
        Approx((trained[0].auc + trained[1].auc + trained[2].auc) / 3));
}

TEST_CASE("training is deterministic for a seed and thread count", "[deep_train]") {
  const Shop shop = make_shop(6, 40, 6);
  DeepTrainConfig train = quick_train();
  train.max_epochs = 1;
  train.batch_size = 128;  // big enough for the loops to go parallel with 2 threads
  for (const std::size_t threads : {1, 2}) {
    train.threads = threads;
    train.seed = 3;
    const auto a = train_deep_ranker(shop.config, shop.training, shop.validation, train);
    const auto b = train_deep_ranker(shop.config, shop.training, shop.validation, train);
    train.seed = 4;
    const auto c = train_deep_ranker(shop.config, shop.training, shop.validation, train);
    REQUIRE(a.size() == b.size());
    bool differs = false;
    for (std::size_t i = 0; i < a.size(); ++i) {
      INFO(a[i].name << " with " << threads << " threads");
      CHECK(a[i].name == b[i].name);
      CHECK(a[i].shape == b[i].shape);
      CHECK(a[i].values == b[i].values);  // bit-identical
      differs = differs || a[i].values != c[i].values;
    }
    CHECK(differs);
  }
}

TEST_CASE("early stopping stops after `patience` epochs without improvement and keeps the best",
          "[deep_train]") {
  Shop shop = make_shop(8, 80, 10);
  // Validation clicks inverted: the better the model learns the training
  // signal, the worse its validation AUC, so improvement stops early.
  for (std::size_t i = 0; i < shop.validation.candidates; ++i) {
    float& y = shop.validation.labels[i * 3];
    y = 1.0F - y;
    shop.validation.labels[i * 3 + 1] = 0.0F;
    shop.validation.labels[i * 3 + 2] = kNaN;
  }
  shop.validation.labels[1] = 1.0F;  // cvr keeps both classes
  DeepTrainConfig train = quick_train();
  train.max_epochs = 30;
  train.patience = 2;
  DeepTrainReport report;
  const auto params =
      train_deep_ranker(shop.config, shop.training, shop.validation, train, &report);
  INFO("epochs " << report.epochs << ", best " << report.best_epoch);
  CHECK(report.epochs < train.max_epochs);
  CHECK(report.epochs == report.best_epoch + train.patience);
  // The kept parameters are the best epoch's: their validation AUC is the reported best.
  const auto kept = metrics_of(shop.config, values_of(params), shop.validation);
  CHECK(funnel::detail::deep_mean_auc(kept) == report.best_validation_auc);

  // With patience beyond the epochs, every epoch runs.
  train.max_epochs = 3;
  train.patience = 5;
  train_deep_ranker(shop.config, shop.training, shop.validation, train, &report);
  CHECK(report.epochs == 3);
}

TEST_CASE("training without validation rows keeps the last epoch", "[deep_train]") {
  const Shop shop = make_shop(9, 40, 6);
  DeepRankerExamples empty;
  empty.users = 0;
  DeepTrainConfig train = quick_train();
  train.max_epochs = 2;
  DeepTrainReport report;
  const auto params = train_deep_ranker(shop.config, shop.training, empty, train, &report);
  CHECK(report.epochs == 2);
  CHECK(report.best_epoch == 2);
  CHECK(std::isnan(report.best_validation_auc));
  REQUIRE(report.validation.size() == 3);
  CHECK(report.validation[0].examples == 0);
  CHECK(std::isnan(report.validation[0].auc));
  CHECK(params.size() == funnel::deep_ranker_parameter_shapes(shop.config).size());
}

TEST_CASE("evaluate_deep_ranker scores through DeepRankerModel like the trainer", "[deep_train]") {
  const Shop shop = make_shop(10, 60, 8);
  DeepTrainConfig train = quick_train();
  train.max_epochs = 3;
  DeepTrainReport report;
  auto params = train_deep_ranker(shop.config, shop.training, shop.validation, train, &report);
  const auto model = funnel::DeepRankerModel::create(shop.config, std::move(params));
  const auto metrics = funnel::evaluate_deep_ranker(*model, shop.validation);
  REQUIRE(metrics.size() == report.validation.size());
  for (std::size_t t = 0; t < metrics.size(); ++t) {
    INFO(metrics[t].task);
    CHECK(metrics[t].task == report.validation[t].task);
    CHECK(metrics[t].examples == report.validation[t].examples);
    if (std::isnan(report.validation[t].auc)) {
      CHECK(std::isnan(metrics[t].auc));
    } else {
      CHECK(metrics[t].auc == Approx(report.validation[t].auc).margin(1e-4));
    }
    if (std::isnan(report.validation[t].rmse)) {
      CHECK(std::isnan(metrics[t].rmse));
      CHECK(metrics[t].log_loss == Approx(report.validation[t].log_loss).margin(1e-4));
    } else {
      CHECK(metrics[t].rmse == Approx(report.validation[t].rmse).margin(1e-4));
      CHECK(std::isnan(metrics[t].log_loss));
    }
  }
}

TEST_CASE("evaluate_deep_ranker over several chunks matches one trainer pass", "[deep_train]") {
  // More validation rows than evaluate_deep_ranker gathers at once (4096),
  // so the outputs of several chunks are stitched together.
  const Shop shop = make_shop(14, 530, 8);
  REQUIRE(shop.validation.candidates > 4096);
  const funnel::detail::DeepLayout layout(shop.config);
  const DeepTensors<float> params = funnel::detail::deep_initial_parameters(layout, 5);
  funnel::DeepRankerParameters named = layout.shapes;
  for (std::size_t i = 0; i < named.size(); ++i) named[i].values = params[i];
  const auto model = funnel::DeepRankerModel::create(shop.config, std::move(named));
  const auto chunked = funnel::evaluate_deep_ranker(*model, shop.validation);
  const auto whole = metrics_of(shop.config, params, shop.validation);
  REQUIRE(chunked.size() == whole.size());
  for (std::size_t t = 0; t < whole.size(); ++t) {
    INFO(whole[t].task);
    CHECK(chunked[t].examples == whole[t].examples);
    if (std::isnan(whole[t].auc)) {
      CHECK(std::isnan(chunked[t].auc));
    } else {
      CHECK(chunked[t].auc == Approx(whole[t].auc).margin(1e-5));
    }
    if (std::isnan(whole[t].rmse)) {
      CHECK(chunked[t].log_loss == Approx(whole[t].log_loss).margin(1e-5));
    } else {
      CHECK(chunked[t].rmse == Approx(whole[t].rmse).margin(1e-5));
    }
  }
}

TEST_CASE("deep_task_metrics against hand-computed values", "[deep_train]") {
  DeepRankerConfig c = small_config(DeepRankerConfig::Body::mmoe);
  // 4 rows x (ctr, cvr, dwell).
  const std::vector<float> outputs = {0.9F, 0.5F, 1.0F,  //
                                      0.2F, 0.5F, 2.0F,  //
                                      0.6F, 0.1F, 0.0F,  //
                                      0.4F, 1.0F, 0.5F};
  const std::vector<float> labels = {1.0F, 1.0F, 2.0F,  //
                                     0.0F, 0.0F, kNaN,  //
                                     1.0F, 0.0F, 1.0F,  //
                                     kNaN, kNaN, 3.0F};
  const auto m = funnel::detail::deep_task_metrics(c, outputs, labels);
  REQUIRE(m.size() == 3);
  CHECK(m[0].examples == 3);
  CHECK(m[0].auc == Approx(1.0));  // 0.9 and 0.6 above 0.2
  CHECK(m[0].log_loss ==
        Approx(-(std::log(0.9) + std::log(0.8) + std::log(0.6)) / 3).epsilon(1e-6));
  CHECK(std::isnan(m[0].rmse));
  // ctcvr: joint scores 0.45, 0.1, 0.06 against 1, 0, 0.
  CHECK(m[1].examples == 3);
  CHECK(m[1].auc == Approx(1.0));
  CHECK(m[1].log_loss ==
        Approx(-(std::log(0.45) + std::log(0.9) + std::log(0.94)) / 3).epsilon(1e-6));
  // regression: errors -1, -1 and -2.5. Its AUC ranks long against short
  // (label above the median 2): the one long row (3, scored 0.5) against the
  // short ones scored 1.0 and 0.0 wins one pair of two.
  CHECK(m[2].examples == 3);
  CHECK(m[2].rmse == Approx(std::sqrt((1.0 + 1.0 + 6.25) / 3)));
  CHECK(m[2].auc == Approx(0.5));
  CHECK(std::isnan(m[2].log_loss));
  CHECK(funnel::detail::deep_mean_auc(m) == Approx((1.0 + 1.0 + 0.5) / 3));
}

TEST_CASE("train_deep_ranker rejects bad input with clear errors", "[deep_train]") {
  const Shop shop = make_shop(11, 20, 4);
  DeepTrainConfig train = quick_train();
  train.max_epochs = 1;

  DeepRankerExamples empty;
  CHECK_THROWS_WITH(train_deep_ranker(shop.config, empty, shop.validation, train),
                    Contains("training set is empty"));

  DeepRankerExamples bad = shop.training;
  bad.labels.pop_back();
  CHECK_THROWS_WITH(train_deep_ranker(shop.config, bad, shop.validation, train),
                    Contains("training examples") && Contains("labels"));
  bad = shop.training;
  bad.labels[3] = 0.5F;  // row 1, ctr
  CHECK_THROWS_WITH(train_deep_ranker(shop.config, bad, shop.validation, train),
                    Contains("row 1") && Contains("ctr"));
  bad = shop.validation;
  bad.ts.clear();
  CHECK_THROWS_WITH(train_deep_ranker(shop.config, shop.training, bad, train),
                    Contains("validation examples") && Contains("ts"));
  bad = shop.training;
  bad.candidate_user[2] = static_cast<std::int32_t>(bad.users);
  CHECK_THROWS_AS(train_deep_ranker(shop.config, bad, shop.validation, train), Error);
  bad = shop.training;
  bad.candidate_categorical.push_back(1);
  CHECK_THROWS_AS(train_deep_ranker(shop.config, bad, shop.validation, train), Error);
  // Item rows and vectors.
  bad = shop.training;
  REQUIRE(!bad.history_item.empty());
  bad.history_item[0] = static_cast<std::int32_t>(bad.items);
  CHECK_THROWS_WITH(train_deep_ranker(shop.config, bad, shop.validation, train),
                    Contains("training examples") && Contains("history_item[0]"));
  bad = shop.validation;
  bad.candidate_item[1] = -1;
  CHECK_THROWS_WITH(train_deep_ranker(shop.config, shop.training, bad, train),
                    Contains("validation examples") && Contains("candidate_item[1] = -1"));
  bad = shop.training;
  bad.item_vectors[2 * shop.config.item_vector_dim + 1] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(train_deep_ranker(shop.config, bad, shop.validation, train),
                    Contains("item_vectors[row 2, column 1]") && Contains("not finite"));
  bad = shop.training;
  bad.item_vectors.pop_back();
  CHECK_THROWS_WITH(train_deep_ranker(shop.config, bad, shop.validation, train),
                    Contains("item_vectors has"));

  // Examples of another config (an extra item feature).
  DeepRankerConfig other = shop.config;
  other.item_categorical.push_back({"brand", {"b"}, 2});
  CHECK_THROWS_AS(train_deep_ranker(other, shop.training, shop.validation, train), Error);

  auto expect_field = [&](DeepTrainConfig t, const std::string& field) {
    try {
      t.validate();
      FAIL("no error for " << field);
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::invalid_argument);
      CHECK_THAT(e.what(), Contains(field));
    }
    CHECK_THROWS_WITH(train_deep_ranker(shop.config, shop.training, shop.validation, t),
                      Contains(field));
  };
  DeepTrainConfig t = train;
  t.learning_rate = 0.0F;
  expect_field(t, "learning_rate");
  t = train;
  t.weight_decay = -1.0F;
  expect_field(t, "weight_decay");
  t = train;
  t.beta1 = 1.0F;
  expect_field(t, "beta1");
  t = train;
  t.beta2 = -0.1F;
  expect_field(t, "beta2");
  t = train;
  t.epsilon = 0.0F;
  expect_field(t, "epsilon");
  t = train;
  t.batch_size = 0;
  expect_field(t, "batch_size");
  t = train;
  t.max_epochs = 0;
  expect_field(t, "max_epochs");
  t = train;
  t.patience = 0;
  expect_field(t, "patience");
  t = train;
  t.threads = 0;
  expect_field(t, "threads");
  CHECK_NOTHROW(DeepTrainConfig{}.validate());

  CHECK(funnel::to_string(DeepTrainConfig::Optimizer::adam) == "adam");
  CHECK(funnel::to_string(DeepTrainConfig::Optimizer::adamw) == "adamw");
  CHECK(funnel::parse_deep_optimizer("adam") == DeepTrainConfig::Optimizer::adam);
  CHECK(funnel::parse_deep_optimizer("adamw") == DeepTrainConfig::Optimizer::adamw);
  CHECK_THROWS_WITH(funnel::parse_deep_optimizer("sgd"), Contains("sgd"));
}
