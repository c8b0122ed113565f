// SPDX-License-Identifier: Apache-2.0
// Pipeline composition with host-written stages (each defined in this file),
// checked against hand-computed rankings.

#include <algorithm>
#include <cmath>
#include <map>
#include <thread>

#include <catch2/catch.hpp>

#include "funnel/error.hpp"
#include "funnel/exact_coarse_ranker.hpp"
#include "funnel/hashing_encoder.hpp"
#include "funnel/logistic_fine_ranker.hpp"
#include "funnel/pipeline.hpp"
#include "funnel/template_reason_generator.hpp"

using namespace funnel;
using Catch::Matchers::Contains;

namespace {

// A host's own encoder: known texts map to fixed unit vectors in 2-D.
class TableEncoder final : public Encoder {
 public:
  explicit TableEncoder(std::map<std::string, std::pair<float, float>> table)
      : table_(std::move(table)) {}
  [[nodiscard]] std::size_t dim() const override { return 2; }
  [[nodiscard]] std::string name() const override { return "table"; }
  void encode(std::span<const std::string_view> texts, MatrixView<float> out,
              TextRole /*role*/) const override {
    REQUIRE(out.rows == texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) {
      const auto it = table_.find(std::string(texts[i]));
      out(i, 0) = it == table_.end() ? 0.0F : it->second.first;
      out(i, 1) = it == table_.end() ? 0.0F : it->second.second;
    }
  }
  using Encoder::encode;

 private:
  std::map<std::string, std::pair<float, float>> table_;
};

// A host's own coarse ranker: a brute-force inner-product loop.
class LoopRanker final : public CoarseRanker {
 public:
  [[nodiscard]] std::size_t dim() const override { return 2; }
  [[nodiscard]] Metric metric() const override { return Metric::inner_product; }
  [[nodiscard]] std::size_t size() const override { return ids_.size(); }
  [[nodiscard]] std::string name() const override { return "loop"; }
  void add(MatrixView<const float> v, std::span<const ItemId> ids) override {
    for (std::size_t i = 0; i < ids.size(); ++i) {
      ids_.push_back(ids[i]);
      vecs_.push_back({v(i, 0), v(i, 1)});
    }
  }
  RemoveReport remove(std::span<const ItemId> /*ids*/) override { return {}; }
  std::size_t search(MatrixView<const float> q, std::size_t k, MatrixView<float> d,
                     MatrixView<ItemId> l, const SearchParams* params) const override {
    std::size_t fewest = k;
    for (std::size_t r = 0; r < q.rows; ++r) {
      std::vector<std::pair<float, ItemId>> all;
      for (std::size_t i = 0; i < ids_.size(); ++i) {
        if (params != nullptr && params->filter != nullptr && !params->filter->allows(ids_[i])) {
          continue;
        }
        all.emplace_back(q(r, 0) * vecs_[i][0] + q(r, 1) * vecs_[i][1], ids_[i]);
      }
      std::sort(all.begin(), all.end(), [](auto& a, auto& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      });
      for (std::size_t j = 0; j < k; ++j) {
        d(r, j) = j < all.size() ? all[j].first : -INFINITY;
        l(r, j) = j < all.size() ? all[j].second : kNoItem;
      }
      fewest = std::min(fewest, all.size());
    }
    return fewest;
  }
  void save(const std::filesystem::path& /*path*/) const override {}

 private:
  std::vector<ItemId> ids_;
  std::vector<std::array<float, 2>> vecs_;
};

// A host's own fine ranker: fixed (ctr, cvr) per item.
class TableFineRanker final : public FineRanker {
 public:
  explicit TableFineRanker(std::map<ItemId, std::pair<float, float>> table)
      : table_(std::move(table)) {}
  [[nodiscard]] std::span<const std::string> objectives() const override { return names_; }
  [[nodiscard]] std::string name() const override { return "table"; }
  void score(const UserContext& /*user*/, std::span<const Candidate> c,
             MatrixView<float> s) const override {
    for (std::size_t i = 0; i < c.size(); ++i) {
      s(i, 0) = table_.at(c[i].id).first;
      s(i, 1) = table_.at(c[i].id).second;
    }
  }

 private:
  std::vector<std::string> names_ = {"ctr", "cvr"};
  std::map<ItemId, std::pair<float, float>> table_;
};

class EchoReasons final : public ReasonGenerator {
 public:
  [[nodiscard]] std::string name() const override { return "echo"; }
  void explain(const UserContext& user, std::span<const ReasonInput> items,
               std::span<Reason> out) const override {
    for (std::size_t i = 0; i < items.size(); ++i) {
      out[i].text = "item " + std::to_string(items[i].item) + " ctr " +
                    std::to_string(items[i].objective_scores[0]);
      out[i].locale = user.locale;
    }
  }
};

struct World {
  std::shared_ptr<Catalog> catalog = std::make_shared<Catalog>();
  std::shared_ptr<LoopRanker> coarse = std::make_shared<LoopRanker>();
  std::shared_ptr<TableEncoder> encoder;
  std::shared_ptr<TableFineRanker> fine;
  std::shared_ptr<EchoReasons> reasons = std::make_shared<EchoReasons>();

  World() {
    // Items 1..6 on the unit circle at angles 0..75 degrees; item i's
    // title is "t<i>".
    std::map<std::string, std::pair<float, float>> table;
    Matrix<float> vecs(6, 2);
    std::vector<ItemId> ids;
    for (int i = 1; i <= 6; ++i) {
      const double a = (i - 1) * 15.0 * M_PI / 180.0;
      vecs(i - 1, 0) = static_cast<float>(std::cos(a));
      vecs(i - 1, 1) = static_cast<float>(std::sin(a));
      table["t" + std::to_string(i)] = {vecs(i - 1, 0), vecs(i - 1, 1)};
      catalog->add({.id = i, .title = "t" + std::to_string(i)});
      ids.push_back(i);
    }
    table["query along y"] = {0.0F, 1.0F};
    encoder = std::make_shared<TableEncoder>(table);
    coarse->add(vecs.view(), ids);
    // ctr, cvr per item: fused ctr*cvr = 1:.02 2:.06 3:.01 4:.12 5:.04 6:.09
    fine = std::make_shared<TableFineRanker>(
        std::map<ItemId, std::pair<float, float>>{{1, {0.1F, 0.2F}},
                                                  {2, {0.3F, 0.2F}},
                                                  {3, {0.1F, 0.1F}},
                                                  {4, {0.4F, 0.3F}},
                                                  {5, {0.2F, 0.2F}},
                                                  {6, {0.3F, 0.3F}}});
  }

  [[nodiscard]] Pipeline pipeline(PipelineConfig config) const {
    return {catalog, encoder, coarse, fine, reasons, std::move(config)};
  }
};

PipelineConfig config(std::size_t coarse_k, std::size_t top_n) {
  PipelineConfig c;
  c.coarse_k = coarse_k;
  c.top_n = top_n;
  c.fusion.weights = {{"ctr", 1.0F}, {"cvr", 1.0F}};
  c.fusion.epsilon = 1e-9F;
  return c;
}

std::vector<ItemId> ids_of(const Recommendation& r) {
  std::vector<ItemId> out;
  for (const auto& item : r.items) out.push_back(item.id);
  return out;
}

}  // namespace

TEST_CASE("Pipeline ranks the coarse candidates by the fused objectives", "[pipeline]") {
  const World w;
  UserContext user;
  user.query = "query along y";  // closest items: 6, 5, 4, 3, ...
  user.locale = "zh-CN";
  const Pipeline p = w.pipeline(config(4, 3));
  const Recommendation r = p.recommend(user);
  // Coarse keeps {6,5,4,3}; by ctr*cvr: 4 (.12) > 6 (.09) > 5 (.04) > 3 (.01).
  CHECK(r.candidates == 4);
  CHECK(ids_of(r) == std::vector<ItemId>{4, 6, 5});
  CHECK(r.objectives == std::vector<std::string>{"ctr", "cvr"});
  CHECK(r.items[0].score == Approx(0.4 * 0.3).epsilon(1e-5));
  CHECK(r.items[0].objective_scores == std::vector<float>{0.4F, 0.3F});
  CHECK(r.items[0].coarse_score == Approx(std::sin(45.0 * M_PI / 180.0)).epsilon(1e-5));
  CHECK(r.items[0].reason.text.rfind("item 4 ctr 0.4", 0) == 0);
  CHECK(r.items[0].reason.locale == "zh-CN");
  CHECK(r.timings.total_ms >= r.timings.fine_ms);
  CHECK(r.timings.coarse_ms >= 0.0);

  // Per-request top_n and a business filter applied inside the coarse scan.
  const AllowListFilter only_odd(std::vector<ItemId>{1, 3, 5});
  const Recommendation filtered = p.recommend(user, {.top_n = 2, .filter = &only_odd});
  CHECK(ids_of(filtered) == std::vector<ItemId>{5, 1});  // .04, .02 (3 is .01)
}

TEST_CASE("Pipeline excludes purchased items and builds the user vector from history",
          "[pipeline]") {
  const World w;
  UserContext user;
  user.now_ts = 1000;
  user.history = {{.item = 4, .type = EventType::purchase, .ts = 1000},
                  {.item = 6, .type = EventType::click, .ts = 1000}};
  PipelineConfig c = config(6, 6);
  const Pipeline p = w.pipeline(c);
  const Recommendation r = p.recommend(user);
  const std::vector<ItemId> got = ids_of(r);
  CHECK(std::find(got.begin(), got.end(), 4) == got.end());
  CHECK(r.candidates == 5);

  // User vector: (3 * v4 + 1 * v6) / 4, normalised (no decay at age 0).
  std::vector<float> v(2);
  p.user_vector(user, v);
  const double a4 = 45.0 * M_PI / 180.0;
  const double a6 = 75.0 * M_PI / 180.0;
  const double x = 3 * std::cos(a4) + std::cos(a6);
  const double y = 3 * std::sin(a4) + std::sin(a6);
  const double n = std::hypot(x, y);
  CHECK(v[0] == Approx(x / n).epsilon(1e-5));
  CHECK(v[1] == Approx(y / n).epsilon(1e-5));

  // With vectors stored in the catalogue, those are used instead of encoding
  // titles: give item 4 the vector of item 1 and the user vector follows.
  {
    World stored;
    Matrix<float> vecs(6, 2);
    for (int i = 1; i <= 6; ++i) {
      const double a = (i == 4 ? 0 : (i - 1)) * 15.0 * M_PI / 180.0;
      vecs(i - 1, 0) = static_cast<float>(std::cos(a));
      vecs(i - 1, 1) = static_cast<float>(std::sin(a));
    }
    stored.catalog->set_vectors(vecs);
    std::vector<float> s(2);
    stored.pipeline(c).user_vector(user, s);
    const double xs = 3 * 1.0 + std::cos(a6);
    const double ys = 3 * 0.0 + std::sin(a6);
    CHECK(s[0] == Approx(xs / std::hypot(xs, ys)).epsilon(1e-5));
    CHECK(s[1] == Approx(ys / std::hypot(xs, ys)).epsilon(1e-5));
  }

  // A week-old history event weighs half as much with a 7-day half-life.
  user.history = {{.item = 1, .type = EventType::click, .ts = 1000 - 7 * 86400},
                  {.item = 3, .type = EventType::click, .ts = 1000}};
  p.user_vector(user, v);
  const double b = 30.0 * M_PI / 180.0;
  const double x2 = 0.5 * 1.0 + std::cos(b);
  const double y2 = std::sin(b);
  CHECK(v[0] == Approx(x2 / std::hypot(x2, y2)).epsilon(1e-5));

  // Purchases stay recommendable when exclusion is off.
  c.exclude_purchased = false;
  user.history = {{.item = 4, .type = EventType::purchase, .ts = 1000}};
  CHECK(w.pipeline(c).recommend(user).items.front().id == 4);
}

TEST_CASE("Pipeline multi-interest retrieval gives a minor interest its share", "[pipeline]") {
  const World w;
  UserContext user;
  user.now_ts = 1000;
  // A strong interest around 0-15 degrees (two clicks) and a weak one at
  // 75 degrees (a view).
  user.history = {{.item = 1, .type = EventType::click, .ts = 1000},
                  {.item = 2, .type = EventType::click, .ts = 1000},
                  {.item = 6, .type = EventType::view, .ts = 1000}};
  PipelineConfig c = config(2, 2);

  // One vector: (v1 + v2 + 0.25 v6) / 2.25 points at ~14 degrees, so the two
  // coarse candidates are 2 and 1.
  const Recommendation single = w.pipeline(c).recommend(user);
  std::vector<ItemId> got = ids_of(single);
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<ItemId>{1, 2});

  // Two interests: {1, 2} (weight 2/2.25) first, then {6}; round robin takes
  // the best of each: item 1 (ties with 2 at 7.5 degrees, lower id) and 6.
  c.interests = 2;
  const Pipeline p = w.pipeline(c);
  const Matrix<float> q = p.user_vectors(user);
  REQUIRE(q.rows() == 2);
  const double a = 7.5 * M_PI / 180.0;
  CHECK(q(0, 0) == Approx(std::cos(a)).epsilon(1e-5));
  CHECK(q(0, 1) == Approx(std::sin(a)).epsilon(1e-5));
  CHECK(q(1, 0) == Approx(std::cos(75.0 * M_PI / 180.0)).epsilon(1e-5));
  CHECK(q(1, 1) == Approx(std::sin(75.0 * M_PI / 180.0)).epsilon(1e-5));
  const Recommendation multi = p.recommend(user);
  CHECK(multi.candidates == 2);
  got = ids_of(multi);
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<ItemId>{1, 6});

  // More interests than distinct directions: identical items collapse.
  c.interests = 8;
  user.history = {{.item = 3, .type = EventType::click, .ts = 1000},
                  {.item = 3, .type = EventType::view, .ts = 999}};
  CHECK(w.pipeline(c).user_vectors(user).rows() == 1);
  c.interests = 17;
  CHECK_THROWS_WITH(w.pipeline(c), Contains("interests"));
}

TEST_CASE("Pipeline rejects inconsistent wiring", "[pipeline]") {
  const World w;
  const PipelineConfig ok = config(5, 3);
  CHECK_THROWS_WITH(Pipeline(w.catalog, nullptr, w.coarse, w.fine, w.reasons, ok),
                    Contains("encoder is null"));
  CHECK_THROWS_WITH(Pipeline(w.catalog, w.encoder, w.coarse, nullptr, w.reasons, ok),
                    Contains("fine ranker is null"));
  CHECK_THROWS_WITH(Pipeline(nullptr, w.encoder, w.coarse, w.fine, w.reasons, ok),
                    Contains("catalog is null"));
  // The default fusion weighs ctr, cvr and dwell; this ranker has no dwell.
  CHECK_THROWS_WITH(Pipeline(w.catalog, w.encoder, w.coarse, w.fine, w.reasons), Contains("dwell"));
  PipelineConfig bad = config(5, 10);
  CHECK_THROWS_WITH(w.pipeline(bad), Contains("top_n"));
  PipelineConfig unknown = config(5, 3);
  unknown.fusion.weights = {{"gmv", 1.0F}};
  CHECK_THROWS_WITH(w.pipeline(unknown), Contains("gmv"));
  // A cold user (no history, no query) still gets a ranking, not an error.
  const Recommendation cold = w.pipeline(config(6, 3)).recommend(UserContext{});
  CHECK(cold.items.size() == 3);
  CHECK(ids_of(cold) == std::vector<ItemId>{4, 6, 2});
}

TEST_CASE("Pipeline with funnel's own stages serves concurrent requests identically",
          "[pipeline][concurrency]") {
  // A small shop: 4 categories x 8 items with shared title words, users who
  // click within "their" category, then funnel's four stages end to end.
  auto catalog = std::make_shared<Catalog>();
  const char* words[4][2] = {{"water bottle", "保温杯"},
                             {"silk dress", "连衣裙"},
                             {"running shoes", "跑鞋"},
                             {"green tea", "绿茶"}};
  ItemId id = 1;
  for (int c = 0; c < 4; ++c) {
    for (int i = 0; i < 8; ++i, ++id) {
      catalog->add({.id = id,
                    .title = std::string(words[c][i % 2]) + " model " + std::to_string(i),
                    .category = "c" + std::to_string(c),
                    .brand = "b" + std::to_string(c * 2 + i % 2),
                    .price = 20.0 + 10.0 * i});
    }
  }
  auto encoder = std::make_shared<HashingEncoder>();
  std::vector<std::string> titles;
  for (const Item& item : catalog->items()) titles.push_back(item.title);
  catalog->set_vectors(encoder->encode(titles));
  auto index = std::make_shared<ExactCoarseRanker>(ExactCoarseRankerConfig{.dim = encoder->dim()});
  index->add(catalog->vectors(), catalog->ids());

  std::vector<UserProfile> users;
  std::vector<Event> events;
  std::int64_t ts = 1'700'000'000;
  for (int u = 0; u < 8; ++u) {
    users.push_back({.id = "u" + std::to_string(u), .age = 20 + u, .location = u % 2 ? "A" : "B"});
    for (int round = 0; round < 12; ++round) {
      for (ItemId item = 1; item <= 32; item += 3) {
        const std::string user = "u" + std::to_string(u);
        events.push_back({.user = user, .item = item, .type = EventType::view, .ts = ts});
        if ((item - 1) / 8 == u % 4 && (round + item) % 2 == 0) {
          events.push_back({.user = user,
                            .item = item,
                            .type = EventType::click,
                            .dwell_s = 10.0 + static_cast<double>(round),
                            .ts = ts + 3});
          if ((round + item) % 4 == 0) {
            events.push_back(
                {.user = user, .item = item, .type = EventType::purchase, .ts = ts + 30});
          }
        }
        ts += 60;
      }
    }
  }
  LogisticTrainConfig train;
  train.validation_fraction = 0.2;
  std::shared_ptr<const FineRanker> fine = LogisticFineRanker::train(catalog, events, users, train);
  auto popularity = std::make_shared<Popularity>(Popularity::from_events(*catalog, events, users));
  auto reasons = std::make_shared<TemplateReasonGenerator>(catalog, popularity);
  PipelineConfig pc;
  pc.coarse_k = 16;
  pc.top_n = 5;
  pc.exclude_purchased = false;  // users bought within their category: keep those rankable
  const Pipeline pipeline(catalog, encoder, index, fine, reasons, pc);

  const auto histories = group_histories(events);
  std::vector<UserContext> requests;
  for (int u = 0; u < 8; ++u) {
    UserContext ctx;
    ctx.profile = users[static_cast<std::size_t>(u)];
    ctx.history = histories.at(ctx.profile.id);
    ctx.now_ts = ts;
    ctx.locale = u % 2 ? "en" : "zh-CN";
    requests.push_back(std::move(ctx));
  }
  std::vector<Recommendation> serial;
  serial.reserve(requests.size());
  for (const UserContext& ctx : requests) serial.push_back(pipeline.recommend(ctx));
  // Users click in their own category: it leads their list.
  for (int u = 0; u < 8; ++u) {
    REQUIRE(serial[static_cast<std::size_t>(u)].items.size() == 5);
    CHECK(catalog->at(serial[static_cast<std::size_t>(u)].items[0].id).category ==
          "c" + std::to_string(u % 4));
  }

  std::vector<std::thread> threads;
  threads.reserve(4);
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round) {
        for (std::size_t u = 0; u < requests.size(); ++u) {
          const Recommendation r = pipeline.recommend(requests[u]);
          bool same = r.items.size() == serial[u].items.size();
          for (std::size_t i = 0; same && i < r.items.size(); ++i) {
            same = r.items[i].id == serial[u].items[i].id &&
                   r.items[i].score == serial[u].items[i].score &&
                   r.items[i].reason.text == serial[u].items[i].reason.text;
          }
          mismatches[static_cast<std::size_t>(t)] += same ? 0 : 1;
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  CHECK(mismatches == std::vector<int>(4, 0));
}
