// SPDX-License-Identifier: Apache-2.0
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "funnel/catalog.hpp"
#include "funnel/error.hpp"
#include "funnel/history_profile.hpp"
#include "funnel/logistic_fine_ranker.hpp"
#include "funnel/metrics.hpp"
#include "internal/glm.hpp"

using Catch::Matchers::Contains;
using funnel::Candidate;
using funnel::Catalog;
using funnel::Event;
using funnel::EventType;
using funnel::HistoryEvent;
using funnel::HistoryProfile;
using funnel::LogisticFineRanker;
using funnel::LogisticTrainConfig;
using funnel::MatrixView;
using funnel::UserContext;
using funnel::UserProfile;

namespace {

constexpr std::size_t kCategories = 4;
constexpr std::size_t kItemsPerCategory = 20;
constexpr std::size_t kDim = 8;
constexpr std::int64_t kStart = 1'700'000'000;

// Items cluster by category in vector space and price band.
std::shared_ptr<Catalog> synthetic_catalog(std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> noise(0.0, 1.0);
  auto catalog = std::make_shared<Catalog>();
  std::vector<float> vectors;
  for (std::size_t c = 0; c < kCategories; ++c) {
    for (std::size_t i = 0; i < kItemsPerCategory; ++i) {
      funnel::Item item;
      item.id = static_cast<funnel::ItemId>(100 + c * kItemsPerCategory + i);
      item.title = "item " + std::to_string(item.id);
      item.category = "cat" + std::to_string(c);
      item.brand = "brand" + std::to_string(i % 5);
      item.price = std::exp(std::log(20.0 * static_cast<double>(c + 1)) + 0.6 * noise(rng));
      catalog->add(item);
      std::vector<double> v(kDim);
      double norm = 0.0;
      for (std::size_t j = 0; j < kDim; ++j) {
        v[j] = (j == c ? 2.0 : 0.0) + 0.7 * noise(rng);
        norm += v[j] * v[j];
      }
      for (const double x : v) vectors.push_back(static_cast<float>(x / std::sqrt(norm)));
    }
  }
  catalog->set_vectors(funnel::Matrix<float>(catalog->size(), kDim, std::move(vectors)));
  return catalog;
}

LogisticTrainConfig test_config() {
  LogisticTrainConfig config;
  config.history.max_events = 30;  // keeps the Debug-build test fast
  config.max_epochs = 30;
  config.batch_size = 128;
  return config;
}

// A view of the synthetic log, with the true click probability.
struct TrueView {
  std::int64_t ts;
  double p_click;
  int clicked;
};

struct World {
  std::shared_ptr<Catalog> catalog;
  std::vector<Event> events;
  std::vector<UserProfile> users;
  std::vector<TrueView> views;
};

// The known click model: logit P(click | view) = -1.5 + 4 * category_share
// - 1.2 * price_gap, with the two features read from the user's history
// before the view exactly as the ranker defines them.
double true_logit(const Catalog& catalog, const HistoryProfile& profile, funnel::ItemId id) {
  const funnel::Item& item = catalog.at(id);
  double gap = 0.0;
  if (profile.mean_log_price()) {
    gap = std::abs(std::log(*item.price) - *profile.mean_log_price()) /
          (*profile.std_log_price() + 0.25);
  }
  return -1.5 + 4.0 * profile.category_share(item.category) - 1.2 * gap;
}

World simulate(std::size_t n_users, std::size_t steps, std::uint32_t seed) {
  World world;
  world.catalog = synthetic_catalog(seed);
  const Catalog& catalog = *world.catalog;
  const auto history_config = test_config().history;
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::normal_distribution<double> noise(0.0, 1.0);
  std::vector<std::vector<HistoryEvent>> histories(n_users);
  std::vector<std::size_t> preferred(n_users);
  for (std::size_t u = 0; u < n_users; ++u) {
    UserProfile user;
    user.id = "u" + std::to_string(u);
    if (u % 3 != 0) user.age = 18 + static_cast<int>(u % 50);
    world.users.push_back(user);
    preferred[u] = u % kCategories;
  }
  const auto emit = [&](std::size_t u, funnel::ItemId item, EventType type, std::int64_t ts,
                        std::optional<double> dwell) {
    world.events.push_back({world.users[u].id, item, type, dwell, ts});
    histories[u].push_back({item, type, ts, dwell});
  };
  for (std::size_t step = 0; step < steps; ++step) {
    for (std::size_t u = 0; u < n_users; ++u) {
      // Distinct timestamps for every view; a user's next view is far more
      // than the attribution window away.
      const auto t = kStart + static_cast<std::int64_t>((step * n_users + u) * 100);
      const std::size_t category =
          uniform(rng) < 0.5 ? preferred[u] : static_cast<std::size_t>(uniform(rng) * kCategories);
      const auto item =
          static_cast<funnel::ItemId>(100 + category * kItemsPerCategory +
                                      static_cast<std::size_t>(uniform(rng) * kItemsPerCategory));
      const auto& history = histories[u];
      const std::size_t begin = history.size() > history_config.max_events
                                    ? history.size() - history_config.max_events
                                    : 0;
      const HistoryProfile profile(catalog, std::span<const HistoryEvent>(history).subspan(begin),
                                   t, history_config);
      const double p = funnel::detail::sigmoid(true_logit(catalog, profile, item));
      const bool clicked = uniform(rng) < p;
      world.views.push_back({t, p, clicked ? 1 : 0});
      emit(u, item, EventType::view, t, std::nullopt);
      if (!clicked) continue;
      const double share = profile.category_share(catalog.at(item).category);
      emit(u, item, EventType::click, t + 5, std::exp(3.0 + share + 0.5 * noise(rng)));
      if (uniform(rng) < funnel::detail::sigmoid(-1.0 + 2.0 * share)) {
        emit(u, item, EventType::cart, t + 10, std::nullopt);
        emit(u, item, EventType::purchase, t + 20, std::nullopt);
      }
    }
  }
  return world;
}

struct Trained {
  World world;
  std::unique_ptr<LogisticFineRanker> ranker;
  std::vector<funnel::ObjectiveTrainReport> report;
};

// Trained once, shared by the test cases that only read it.
const Trained& trained() {
  static const Trained instance = [] {
    Trained t;
    t.world = simulate(120, 45, 5);
    t.ranker = LogisticFineRanker::train(t.world.catalog, t.world.events, t.world.users,
                                         test_config(), &t.report);
    return t;
  }();
  return instance;
}

UserContext context_for(const World& world, std::size_t u, std::int64_t now_ts) {
  UserContext user;
  user.profile = world.users[u];
  for (const Event& e : world.events) {
    if (e.user == world.users[u].id && e.ts < now_ts) {
      user.history.push_back({e.item, e.type, e.ts, e.dwell_s});
    }
  }
  user.now_ts = now_ts;
  return user;
}

std::filesystem::path temp_file(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / "funnel_test_logistic";
  std::filesystem::create_directories(dir);
  return dir / name;
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

TEST_CASE("GLM loss gradients match central finite differences", "[logistic]") {
  using funnel::detail::GlmKind;
  std::mt19937 rng(1);
  std::normal_distribution<double> normal(0.0, 1.0);
  const std::size_t n = 9;
  const std::size_t d = 5;
  std::vector<float> x(n * d);
  for (float& v : x) v = static_cast<float>(normal(rng));
  const MatrixView<const float> xv(x.data(), n, d);
  const std::vector<std::size_t> rows{0, 2, 3, 5, 8, 2};  // a batch, with a repeat
  for (const GlmKind kind : {GlmKind::logistic, GlmKind::linear}) {
    std::vector<float> y(n);
    for (std::size_t i = 0; i < n; ++i) {
      y[i] =
          kind == GlmKind::logistic ? static_cast<float>(i % 2) : static_cast<float>(normal(rng));
    }
    std::vector<double> params(d + 1);
    for (double& p : params) p = normal(rng);
    const double l2 = 0.3;
    std::vector<double> grad(d + 1);
    const double loss = funnel::detail::glm_loss_and_grad(kind, xv, y, rows, params, l2, grad);
    CHECK(std::isfinite(loss));

    // Independent loss, written from the definition.
    const auto reference_loss = [&](const std::vector<double>& p) {
      double total = 0.0;
      for (const std::size_t r : rows) {
        double z = p[0];
        for (std::size_t j = 0; j < d; ++j) z += p[j + 1] * x[r * d + j];
        if (kind == GlmKind::logistic) {
          const double prob = 1.0 / (1.0 + std::exp(-z));
          total += -(y[r] * std::log(prob) + (1.0 - y[r]) * std::log(1.0 - prob));
        } else {
          total += 0.5 * (z - y[r]) * (z - y[r]);
        }
      }
      double penalty = 0.0;
      for (std::size_t j = 1; j <= d; ++j) penalty += p[j] * p[j];
      return total / static_cast<double>(rows.size()) + 0.5 * l2 * penalty;
    };
    CHECK(loss == Approx(reference_loss(params)).epsilon(1e-10));
    const double h = 1e-5;
    for (std::size_t j = 0; j <= d; ++j) {
      auto plus = params;
      auto minus = params;
      plus[j] += h;
      minus[j] -= h;
      const double numeric = (reference_loss(plus) - reference_loss(minus)) / (2.0 * h);
      CHECK(grad[j] == Approx(numeric).epsilon(1e-6).margin(1e-8));
    }
  }
}

TEST_CASE("ctr model learns a known logistic click model", "[logistic]") {
  const Trained& t = trained();
  REQUIRE(t.report.size() == 3);
  const auto& ctr = t.report[0];
  CHECK(ctr.objective == "ctr");
  CHECK(ctr.validation_metric_name == "auc");
  CHECK(ctr.train_examples + ctr.validation_examples == t.world.views.size());
  CHECK(ctr.validation_examples ==
        static_cast<std::size_t>(std::llround(0.1 * static_cast<double>(t.world.views.size()))));
  CHECK(ctr.epochs >= 1);

  // The validation examples are the latest views (all timestamps distinct).
  std::vector<TrueView> views = t.world.views;
  std::sort(views.begin(), views.end(),
            [](const TrueView& a, const TrueView& b) { return a.ts < b.ts; });
  std::vector<float> truth;
  std::vector<int> labels;
  for (std::size_t i = views.size() - ctr.validation_examples; i < views.size(); ++i) {
    truth.push_back(static_cast<float>(views[i].p_click));
    labels.push_back(views[i].clicked);
  }
  const double true_auc = funnel::auc(truth, labels);
  INFO("true-model AUC " << true_auc << ", trained AUC " << ctr.validation_metric);
  CHECK(true_auc > 0.7);
  CHECK(ctr.validation_metric > 0.65);
  CHECK(std::abs(ctr.validation_metric - true_auc) < 0.03);

  const auto names = LogisticFineRanker::feature_names();
  const auto index = [&](const char* name) {
    return static_cast<std::size_t>(std::find(names.begin(), names.end(), name) - names.begin());
  };
  const auto weights = t.ranker->weights("ctr");
  REQUIRE(weights.size() == names.size());
  CHECK(weights[index("category_share")] > 0.0);
  CHECK(weights[index("price_gap")] < 0.0);

  // The other objectives trained and report sensible metrics.
  CHECK(t.report[1].objective == "cvr");
  CHECK(t.report[1].validation_metric_name == "auc");
  CHECK(t.report[1].positive_rate > 0.0);
  CHECK(t.report[1].positive_rate < 1.0);
  CHECK(t.report[2].objective == "dwell");
  CHECK(t.report[2].validation_metric_name == "rmse");
  CHECK(t.report[2].validation_metric > 0.0);
  CHECK(t.report[2].validation_metric < 1.0);  // noise sd 0.5 around log dwell
  CHECK(t.report[0].skipped_events == 0);
}

TEST_CASE("training is reproducible bit for bit and depends on the seed", "[logistic]") {
  const World world = simulate(40, 25, 9);
  const auto config = test_config();
  const auto a = LogisticFineRanker::train(world.catalog, world.events, world.users, config);
  const auto b = LogisticFineRanker::train(world.catalog, world.events, world.users, config);
  auto other_seed = config;
  other_seed.seed = config.seed + 100;
  const auto c = LogisticFineRanker::train(world.catalog, world.events, world.users, other_seed);
  bool any_difference = false;
  for (const char* objective : {"ctr", "cvr", "dwell"}) {
    const auto wa = a->weights(objective);
    const auto wb = b->weights(objective);
    const auto wc = c->weights(objective);
    CHECK(std::equal(wa.begin(), wa.end(), wb.begin(), wb.end()));
    CHECK(a->bias(objective) == b->bias(objective));
    any_difference = any_difference || !std::equal(wa.begin(), wa.end(), wc.begin(), wc.end());
  }
  CHECK(any_difference);
  CHECK_THROWS_WITH(a->weights("revenue"), Contains("'revenue'"));
}

TEST_CASE("score shapes, ranges, unknown ids and features", "[logistic]") {
  const Trained& t = trained();
  const LogisticFineRanker& ranker = *t.ranker;
  REQUIRE(ranker.objectives().size() == 3);
  CHECK(ranker.objectives()[0] == "ctr");
  CHECK(ranker.objectives()[2] == "dwell");
  CHECK(ranker.name() == "logistic");

  const UserContext user = context_for(t.world, 1, kStart + 10'000'000);
  std::vector<Candidate> candidates;
  for (const funnel::ItemId id : t.world.catalog->ids()) candidates.push_back({id, 0.1F});
  std::vector<float> scores(candidates.size() * 3);
  ranker.score(user, candidates, MatrixView<float>(scores.data(), candidates.size(), 3));
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    CHECK(scores[i * 3] >= 0.0F);
    CHECK(scores[i * 3] <= 1.0F);
    CHECK(scores[i * 3 + 1] >= 0.0F);
    CHECK(scores[i * 3 + 1] <= 1.0F);
    CHECK(scores[i * 3 + 2] >= 0.0F);
    CHECK(std::isfinite(scores[i * 3 + 2]));
  }

  // The user's preferred category (u1 -> cat1) gets the higher mean ctr.
  double preferred = 0.0;
  double other = 0.0;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    (t.world.catalog->at(candidates[i].id).category == "cat1" ? preferred : other) += scores[i * 3];
  }
  CHECK(preferred / kItemsPerCategory >
        other / (static_cast<double>(candidates.size()) - kItemsPerCategory));

  // Features agree with an independently built HistoryProfile.
  funnel::Matrix<float> features(candidates.size(), LogisticFineRanker::feature_names().size());
  ranker.features(user, candidates, features.view());
  const HistoryProfile profile(*t.world.catalog, user, ranker.history_config());
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const funnel::Item& item = t.world.catalog->at(candidates[i].id);
    const auto v = t.world.catalog->vector(item.id);
    const auto match = profile.most_similar(v, item.id);
    CHECK(features(i, 1) == Approx(match ? match->similarity : 0.0F).margin(1e-5));
    double dot = 0.0;
    for (std::size_t j = 0; j < v.size(); ++j) dot += v[j] * profile.mean_vector()[j];
    CHECK(features(i, 0) == Approx(dot).margin(1e-5));
    CHECK(features(i, 2) == Approx(profile.category_share(item.category)));
    CHECK(features(i, 3) == Approx(profile.brand_share(item.brand)));
    CHECK(features(i, 6) == Approx(ranker.popularity().item_score(item.id)));
    CHECK(features(i, 7) == 0.1F);
    CHECK(features(i, 8) == Approx(std::log1p(static_cast<double>(profile.events()))));
    CHECK(features(i, 11) == Approx(*user.profile.age / 100.0));
    CHECK(features(i, 12) == 1.0F);
  }

  // Shape and id errors.
  std::vector<float> small(6);  // 3 x 2
  CHECK_THROWS_WITH(
      ranker.score(user, std::span(candidates).first(3), MatrixView<float>(small.data(), 3, 2)),
      Contains("3 x 2, expected 3 x 3"));
  CHECK_THROWS_WITH(
      ranker.score(user, std::span(candidates).first(3), MatrixView<float>(small.data(), 2, 3)),
      Contains("expected 3 x 3"));
  const std::vector<Candidate> unknown{{100, 0.0F}, {424242, 0.0F}};
  std::vector<float> out(6);  // 2 x 3
  CHECK_THROWS_WITH(ranker.score(user, unknown, MatrixView<float>(out.data(), 2, 3)),
                    Contains("424242") && Contains("candidate 1"));

  // An empty request and a user without history are fine.
  ranker.score(user, {}, MatrixView<float>(nullptr, 0, 3));
  UserContext stranger;
  stranger.now_ts = kStart;
  ranker.score(stranger, std::span(candidates).first(2), MatrixView<float>(out.data(), 2, 3));
  CHECK(out[0] >= 0.0F);
  CHECK(out[0] <= 1.0F);
}

TEST_CASE("save and load round trip; damaged files are rejected", "[logistic]") {
  const Trained& t = trained();
  const auto path = temp_file("model.json");
  t.ranker->save(path);
  const auto loaded = LogisticFineRanker::load(path, t.world.catalog);

  for (const std::size_t u : {0U, 5U, 77U}) {
    const UserContext user = context_for(t.world, u, kStart + 3'000'000);
    std::vector<Candidate> candidates;
    for (const funnel::ItemId id : t.world.catalog->ids()) {
      candidates.push_back({id, static_cast<float>(id % 7) * 0.1F});
    }
    std::vector<float> a(candidates.size() * 3);
    std::vector<float> b(candidates.size() * 3);
    t.ranker->score(user, candidates, MatrixView<float>(a.data(), candidates.size(), 3));
    loaded->score(user, candidates, MatrixView<float>(b.data(), candidates.size(), 3));
    CHECK(a == b);
  }

  const std::string text = read_text(path);
  const auto original = nlohmann::json::parse(text);
  const auto damaged = temp_file("damaged.json");
  const auto expect_format_error = [&](const std::string& content, const char* needle) {
    write_text(damaged, content);
    try {
      (void)LogisticFineRanker::load(damaged, t.world.catalog);
      FAIL("load accepted a damaged file (" << needle << ")");
    } catch (const funnel::Error& e) {
      CHECK(e.code() == funnel::ErrorCode::format);
      CHECK_THAT(e.what(), Contains(needle) && Contains("damaged.json"));
    }
  };

  expect_format_error(text.substr(0, text.size() / 2), "malformed JSON");
  auto doc = original;
  doc["version"] = 3;
  expect_format_error(doc.dump(), "unsupported version 3");
  doc["version"] = 1;
  expect_format_error(doc.dump(), "retrain");
  doc = original;
  doc["format"] = "something.else";
  expect_format_error(doc.dump(), "format");
  doc = original;
  doc["features"].erase(doc["features"].size() - 1);
  expect_format_error(doc.dump(), "features");
  doc = original;
  doc["objectives"][0]["weights"][3] = std::nan("");  // written as null
  expect_format_error(doc.dump(), "objectives[0].weights[3]");
  expect_format_error(std::string(text).replace(text.find("\"bias\": ") + 8, 1, "NaN"),
                      "malformed JSON");
  doc = original;
  doc["objectives"][1]["mean"].erase(0);
  expect_format_error(doc.dump(), "objectives[1].mean");
  doc = original;
  doc["objectives"][2]["std"][0] = 0.0;
  expect_format_error(doc.dump(), "objectives[2].std[0]");
  doc = original;
  doc["popularity"]["counts"].erase(0);
  expect_format_error(doc.dump(), "popularity.counts");
  doc = original;
  doc["objectives"][0]["features"][1] = "no_such_feature";
  expect_format_error(doc.dump(), "objectives[0].features[1]");
  doc = original;
  std::swap(doc["objectives"][2]["features"][0], doc["objectives"][2]["features"][1]);
  expect_format_error(doc.dump(), "out of feature order");
  doc = original;
  doc["objectives"][2]["features"].erase(0);
  expect_format_error(doc.dump(), "objectives[2].mean");
  doc = original;
  doc["rate_priors"]["counts"]["views"][0] = -1.0;
  expect_format_error(doc.dump(), "rate_priors.counts.views[0]");
  doc = original;
  doc["rate_priors"]["counts"]["dwells"].erase(0);
  expect_format_error(doc.dump(), "rate_priors.counts.dwells");
  doc = original;
  doc["rate_priors"]["counts"]["items"][1] = doc["rate_priors"]["counts"]["items"][0];
  expect_format_error(doc.dump(), "repeats");
  doc = original;
  doc["rate_priors"]["strength"] = 0.0;
  expect_format_error(doc.dump(), "rate_priors.strength");
  doc = original;
  doc.erase("rate_priors");
  expect_format_error(doc.dump(), "rate_priors");
  doc = original;
  doc["history"].erase("half_life_s");
  expect_format_error(doc.dump(), "history.half_life_s");
  // A plausible edit that keeps the file well-formed is caught by the checksum.
  doc = original;
  doc["objectives"][0]["bias"] = doc["objectives"][0]["bias"].get<double>() + 0.5;
  expect_format_error(doc.dump(), "checksum");

  CHECK_THROWS_MATCHES(LogisticFineRanker::load(temp_file("missing.json"), t.world.catalog),
                       funnel::Error, Catch::Predicate<funnel::Error>([](const funnel::Error& e) {
                         return e.code() == funnel::ErrorCode::io;
                       }));
  CHECK_THROWS_WITH(LogisticFineRanker::load(path, std::make_shared<Catalog>()),
                    Contains("no vectors"));
  auto narrow = std::make_shared<Catalog>();
  for (const auto& item : t.world.catalog->items()) narrow->add(item);
  narrow->set_vectors(funnel::Matrix<float>(narrow->size(), kDim / 2, 0.5F));
  CHECK_THROWS_WITH(LogisticFineRanker::load(path, narrow),
                    Contains("8-dimensional") && Contains("model.json"));
  doc = original;
  doc["vector_dim"] = -3;
  expect_format_error(doc.dump(), "vector_dim");
  std::filesystem::remove(damaged);
  std::filesystem::remove(path);
}

TEST_CASE("rate priors, relative price and brand purchase features by hand", "[logistic]") {
  // Catalogue: category c1 holds A (brand b1, 100), B (b1, 400), C (b2, 25),
  // so its median price is 100; D is alone in c2 (b3, 10); E has no
  // category, brand or price.
  auto catalog = std::make_shared<Catalog>();
  const auto add_item = [&](funnel::ItemId id, const char* category, const char* brand,
                            std::optional<double> price) {
    funnel::Item item;
    item.id = id;
    item.title = "item " + std::to_string(id);
    item.category = category;
    item.brand = brand;
    item.price = price;
    catalog->add(item);
  };
  add_item(1, "c1", "b1", 100.0);
  add_item(2, "c1", "b1", 400.0);
  add_item(3, "c1", "b2", 25.0);
  add_item(4, "c2", "b3", 10.0);
  add_item(5, "", "", std::nullopt);
  std::vector<float> vectors;
  for (std::size_t r = 0; r < catalog->size(); ++r) {
    vectors.push_back(r % 2 == 0 ? 1.0F : 0.0F);
    vectors.push_back(r % 2 == 0 ? 0.0F : 1.0F);
  }
  catalog->set_vectors(funnel::Matrix<float>(catalog->size(), 2, std::move(vectors)));

  // Training period: A 10 views, 2 clicks (dwell 9 s and 99 s), 1 purchase;
  // B 20 views, 1 click (dwell 0 s); C 10 views; D 10 views. Then, far
  // later, one view and one click of C: the latest example of every
  // objective, i.e. each objective's whole validation split (see below),
  // so the priors count exactly the training period.
  std::vector<Event> events;
  std::int64_t ts = kStart;
  const auto views = [&](funnel::ItemId item, int n, int first_user) {
    for (int i = 0; i < n; ++i) {
      events.push_back(
          {"u" + std::to_string(first_user + i), item, EventType::view, std::nullopt, ts});
      ts += 100;
    }
  };
  views(1, 10, 0);
  views(2, 20, 0);
  views(3, 10, 0);
  views(4, 10, 0);
  events.push_back({"u0", 1, EventType::click, 9.0, kStart + 5});
  events.push_back({"u0", 1, EventType::purchase, std::nullopt, kStart + 50});
  events.push_back({"u1", 1, EventType::click, 99.0, kStart + 105});
  events.push_back({"u0", 2, EventType::click, 0.0, kStart + 1005});
  const std::int64_t later = kStart + 1'000'000;
  events.push_back({"u30", 3, EventType::view, std::nullopt, later});
  events.push_back({"u30", 3, EventType::click, 20.0, later + 5});

  LogisticTrainConfig config = test_config();
  REQUIRE(config.prior_strength == 20.0);
  // 1 of the 51 ctr examples (and, rounded up to the minimum of 1, of the 4
  // cvr and dwell examples) is held out.
  config.validation_fraction = 0.02;
  std::vector<funnel::ObjectiveTrainReport> report;
  const auto ranker = LogisticFineRanker::train(catalog, events, {}, config, &report);
  REQUIRE(report.size() == 3);
  for (const auto& r : report) CHECK(r.validation_examples == 1);

  // The user bought A, clicked B and viewed C.
  UserContext user;
  user.history = {{1, EventType::view, later + 10, std::nullopt},
                  {1, EventType::click, later + 15, 30.0},
                  {1, EventType::purchase, later + 40, std::nullopt},
                  {2, EventType::view, later + 100, std::nullopt},
                  {2, EventType::click, later + 105, 12.0},
                  {3, EventType::view, later + 200, std::nullopt}};
  user.now_ts = later + 1000;
  const std::vector<Candidate> candidates{{1, 0.0F}, {2, 0.0F}, {3, 0.0F}, {4, 0.0F}, {5, 0.0F}};
  const auto names = LogisticFineRanker::feature_names();
  const auto column = [&](const char* name) {
    const auto it = std::find(names.begin(), names.end(), name);
    REQUIRE(it != names.end());
    return static_cast<std::size_t>(it - names.begin());
  };

  // Counts: global 50 views, 3 clicks, 1 purchase, 3 dwells summing
  // log(10) + log(100) + log(1) = log(1000). m = 20.
  const double m = 20.0;
  const double g_ctr = 3.0 / 50.0;
  const double g_cvr = 1.0 / 3.0;
  const double g_dwell = std::log(1000.0) / 3.0;
  const auto logit = [](double p) { return std::log(p / (1.0 - p)); };
  struct Expected {
    double ctr, cvr, dwell;
  };
  const auto smoothed = [&](double v, double c, double p, double d, double dwell_sum) {
    return Expected{logit((c + m * g_ctr) / (v + m)), logit((p + m * g_cvr) / (c + m)),
                    (dwell_sum + m * g_dwell) / (d + m)};
  };
  const Expected none = smoothed(0, 0, 0, 0, 0);  // no counts: the global rates
  CHECK(none.ctr == Approx(logit(g_ctr)));
  // Item A: (2 + 20 * 0.06) / (10 + 20) = 3.2 / 30 click rate.
  CHECK(smoothed(10, 2, 1, 2, std::log(1000.0)).ctr == Approx(logit(3.2 / 30.0)));
  const Expected item[5] = {smoothed(10, 2, 1, 2, std::log(1000.0)), smoothed(20, 1, 0, 1, 0.0),
                            smoothed(10, 0, 0, 0, 0.0), smoothed(10, 0, 0, 0, 0.0), none};
  const Expected b1 = smoothed(30, 3, 1, 3, std::log(1000.0));
  const Expected c1 = smoothed(40, 3, 1, 3, std::log(1000.0));
  const Expected brand[5] = {b1, b1, item[2], item[3], none};
  const Expected category[5] = {c1, c1, c1, item[3], none};
  const double relative[5] = {0.0, std::log(4.0), std::log(0.25), 0.0, 0.0};
  // Strongest events, weighted 3 (purchase), 1 (click), 0.25 (view).
  const double user_relative = (3.0 * 0.0 + 1.0 * std::log(4.0) + 0.25 * std::log(0.25)) / 4.25;
  const double gap[5] = {-user_relative, std::log(4.0) - user_relative,
                         std::log(0.25) - user_relative, -user_relative, 0.0};
  const float bought[5] = {1.0F, 1.0F, 0.0F, 0.0F, 0.0F};

  const auto check = [&](const LogisticFineRanker& model) {
    funnel::Matrix<float> x(candidates.size(), names.size());
    model.features(user, candidates, x.view());
    for (std::size_t i = 0; i < candidates.size(); ++i) {
      INFO("candidate " << candidates[i].id);
      CHECK(x(i, column("item_ctr_prior")) == Approx(item[i].ctr).epsilon(1e-5));
      CHECK(x(i, column("item_cvr_prior")) == Approx(item[i].cvr).epsilon(1e-5));
      CHECK(x(i, column("item_dwell_prior")) == Approx(item[i].dwell).epsilon(1e-5));
      CHECK(x(i, column("brand_ctr_prior")) == Approx(brand[i].ctr).epsilon(1e-5));
      CHECK(x(i, column("brand_cvr_prior")) == Approx(brand[i].cvr).epsilon(1e-5));
      CHECK(x(i, column("brand_dwell_prior")) == Approx(brand[i].dwell).epsilon(1e-5));
      CHECK(x(i, column("category_ctr_prior")) == Approx(category[i].ctr).epsilon(1e-5));
      CHECK(x(i, column("category_cvr_prior")) == Approx(category[i].cvr).epsilon(1e-5));
      CHECK(x(i, column("category_dwell_prior")) == Approx(category[i].dwell).epsilon(1e-5));
      CHECK(x(i, column("price_vs_category")) == Approx(relative[i]).margin(1e-6));
      CHECK(x(i, column("relative_price_gap")) == Approx(gap[i]).margin(1e-6));
      CHECK(x(i, column("relative_price_over")) == Approx(std::max(0.0, gap[i])).margin(1e-6));
      CHECK(x(i, column("brand_purchased")) == bought[i]);
    }
  };
  check(*ranker);

  // The counts travel with the model file.
  const auto path = temp_file("priors.json");
  ranker->save(path);
  check(*LogisticFineRanker::load(path, catalog));
  std::filesystem::remove(path);

  auto bad = config;
  bad.prior_strength = 0.0;
  CHECK_THROWS_WITH(LogisticFineRanker::train(catalog, events, {}, bad),
                    Contains("prior_strength"));
}

TEST_CASE("each objective uses the features its config names", "[logistic]") {
  const auto names = LogisticFineRanker::feature_names();
  const std::vector<std::string> base = funnel::logistic_base_features();
  REQUIRE(base.size() == 13);
  CHECK(std::equal(base.begin(), base.end(), names.begin()));

  // Defaults: ctr and cvr use the base features, dwell all of them.
  const Trained& t = trained();
  for (const char* objective : {"ctr", "cvr"}) {
    const auto w = t.ranker->weights(objective);
    for (std::size_t j = base.size(); j < names.size(); ++j) {
      INFO(objective << " " << names[j]);
      CHECK(w[j] == 0.0);
    }
  }
  const auto dwell = t.ranker->weights("dwell");
  CHECK(std::any_of(dwell.begin() + static_cast<std::ptrdiff_t>(base.size()), dwell.end(),
                    [](double w) { return w != 0.0; }));

  // Every feature for every objective; the choice survives a round trip.
  const World world = simulate(40, 25, 11);
  auto config = test_config();
  config.objective_features = {std::vector<std::string>{}, {"item_ctr_prior", "sim_mean"}, {}};
  const auto ranker = LogisticFineRanker::train(world.catalog, world.events, world.users, config);
  const auto ctr = ranker->weights("ctr");
  CHECK(std::count(ctr.begin(), ctr.end(), 0.0) < 3);
  const auto cvr = ranker->weights("cvr");
  for (std::size_t j = 0; j < names.size(); ++j) {
    INFO(names[j]);
    CHECK((cvr[j] != 0.0) == (names[j] == "item_ctr_prior" || names[j] == "sim_mean"));
  }
  const auto path = temp_file("subset.json");
  ranker->save(path);
  const auto loaded = LogisticFineRanker::load(path, world.catalog);
  const UserContext user = context_for(world, 3, kStart + 1'000'000);
  std::vector<Candidate> candidates;
  for (const funnel::ItemId id : world.catalog->ids()) candidates.push_back({id, 0.3F});
  std::vector<float> a(candidates.size() * 3);
  std::vector<float> b(candidates.size() * 3);
  ranker->score(user, candidates, MatrixView<float>(a.data(), candidates.size(), 3));
  loaded->score(user, candidates, MatrixView<float>(b.data(), candidates.size(), 3));
  CHECK(a == b);
  for (const char* objective : {"ctr", "cvr", "dwell"}) {
    const auto wa = ranker->weights(objective);
    const auto wb = loaded->weights(objective);
    CHECK(std::equal(wa.begin(), wa.end(), wb.begin(), wb.end()));
  }
  std::filesystem::remove(path);

  auto bad = config;
  bad.objective_features[2] = {"sim_mean", "no_such_feature"};
  CHECK_THROWS_WITH(LogisticFineRanker::train(world.catalog, world.events, world.users, bad),
                    Contains("objective_features[2]") && Contains("'no_such_feature'"));
  bad.objective_features[2] = {"sim_mean", "age", "sim_mean"};
  CHECK_THROWS_WITH(LogisticFineRanker::train(world.catalog, world.events, world.users, bad),
                    Contains("'sim_mean' repeats"));
}

TEST_CASE("training rejects unusable input and counts unknown items", "[logistic]") {
  World world = simulate(30, 20, 3);
  const auto config = test_config();

  auto no_vectors = std::make_shared<Catalog>();
  for (const auto& item : world.catalog->items()) no_vectors->add(item);
  CHECK_THROWS_WITH(LogisticFineRanker::train(no_vectors, world.events, world.users, config),
                    Contains("no vectors"));

  auto bad = config;
  bad.validation_fraction = 1.0;
  CHECK_THROWS_WITH(LogisticFineRanker::train(world.catalog, world.events, world.users, bad),
                    Contains("validation_fraction"));
  bad = config;
  bad.batch_size = 0;
  CHECK_THROWS_WITH(LogisticFineRanker::train(world.catalog, world.events, world.users, bad),
                    Contains("batch_size"));

  // Unknown items are skipped and counted.
  std::vector<Event> with_unknown = world.events;
  with_unknown.push_back({"u1", 999'999, EventType::click, 3.0, kStart + 1});
  with_unknown.push_back({"u2", 888'888, EventType::view, std::nullopt, kStart + 2});
  std::vector<funnel::ObjectiveTrainReport> report;
  (void)LogisticFineRanker::train(world.catalog, with_unknown, world.users, config, &report);
  REQUIRE(report.size() == 3);
  CHECK(report[0].skipped_events == 2);

  // No purchase at all: cvr cannot be trained.
  std::vector<Event> no_purchase;
  for (const Event& e : world.events) {
    if (e.type != EventType::purchase) no_purchase.push_back(e);
  }
  CHECK_THROWS_WITH(LogisticFineRanker::train(world.catalog, no_purchase, world.users, config),
                    Contains("'cvr'") && Contains("no positive"));

  // Every view clicked: ctr has no negative example.
  std::vector<Event> all_clicked;
  for (const Event& e : world.events) {
    all_clicked.push_back(e);
    if (e.type == EventType::view) {
      all_clicked.push_back({e.user, e.item, EventType::click, 5.0, e.ts + 1});
    }
  }
  CHECK_THROWS_WITH(LogisticFineRanker::train(world.catalog, all_clicked, world.users, config),
                    Contains("'ctr'") && Contains("no negative"));

  // No dwell times: the dwell objective has no example.
  std::vector<Event> no_dwell = world.events;
  for (Event& e : no_dwell) e.dwell_s.reset();
  CHECK_THROWS_WITH(LogisticFineRanker::train(world.catalog, no_dwell, world.users, config),
                    Contains("'dwell'"));
}

TEST_CASE("score may run concurrently and gives the same answers", "[logistic][concurrency]") {
  const Trained& t = trained();
  std::vector<UserContext> users;
  for (std::size_t u = 0; u < 8; ++u)
    users.push_back(context_for(t.world, u * 13, kStart + 2'000'000));
  std::vector<Candidate> candidates;
  for (const funnel::ItemId id : t.world.catalog->ids()) candidates.push_back({id, 0.2F});
  const std::size_t block = candidates.size() * 3;
  std::vector<float> expected(users.size() * block);
  for (std::size_t u = 0; u < users.size(); ++u) {
    t.ranker->score(users[u], candidates,
                    MatrixView<float>(expected.data() + u * block, candidates.size(), 3));
  }
  std::vector<std::vector<float>> got(4, std::vector<float>(expected.size()));
  std::vector<std::thread> threads;
  for (std::size_t w = 0; w < got.size(); ++w) {
    threads.emplace_back([&, w] {
      for (int round = 0; round < 5; ++round) {
        for (std::size_t k = 0; k < users.size(); ++k) {
          const std::size_t u = (k + w) % users.size();  // threads interleave users
          t.ranker->score(users[u], candidates,
                          MatrixView<float>(got[w].data() + u * block, candidates.size(), 3));
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const auto& result : got) CHECK(result == expected);
}
