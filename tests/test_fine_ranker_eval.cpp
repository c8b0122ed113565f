// SPDX-License-Identifier: Apache-2.0
// evaluate_fine_ranker on a hand-built log, scored by a FineRanker whose
// scores come from a table, so that every label, history, coarse score and
// metric below is worked out by hand from the log (see the comments).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/catalog.hpp"
#include "funnel/deep_fine_ranker.hpp"
#include "funnel/deep_ranker.hpp"
#include "funnel/error.hpp"
#include "funnel/event.hpp"
#include "funnel/fine_ranker.hpp"
#include "funnel/fine_ranker_eval.hpp"
#include "funnel/fusion.hpp"
#include "funnel/matrix.hpp"
#include "funnel/user.hpp"

using Catch::Matchers::Contains;
using funnel::Candidate;
using funnel::Catalog;
using funnel::Error;
using funnel::ErrorCode;
using funnel::Event;
using funnel::EventType;
using funnel::FineRanker;
using funnel::FineRankerEvalConfig;
using funnel::FineRankerEvalReport;
using funnel::FusionConfig;
using funnel::ItemId;
using funnel::Matrix;
using funnel::MatrixView;
using funnel::ObjectiveEval;
using funnel::UserContext;
using funnel::UserProfile;

namespace {

// What one score() call saw.
struct Call {
  std::string user;
  std::optional<int> age;
  std::int64_t now_ts = 0;
  std::size_t history = 0;
  std::int64_t last_history_ts = -1;
  std::vector<ItemId> items;
  std::vector<float> coarse;
};

// Scores (user, item) from a table, the same in every request; records calls.
class TableRanker final : public FineRanker {
 public:
  using Table = std::map<std::pair<std::string, ItemId>, std::vector<float>>;

  TableRanker(std::vector<std::string> objectives, Table table)
      : objectives_(std::move(objectives)), table_(std::move(table)) {}

  [[nodiscard]] std::span<const std::string> objectives() const override { return objectives_; }
  [[nodiscard]] std::string name() const override { return "table"; }

  void score(const UserContext& user, std::span<const Candidate> candidates,
             MatrixView<float> scores) const override {
    REQUIRE(scores.rows == candidates.size());
    REQUIRE(scores.cols == objectives_.size());
    Call call{user.profile.id, user.profile.age, user.now_ts, user.history.size(), -1, {}, {}};
    for (const auto& event : user.history) {
      REQUIRE(event.ts < user.now_ts);  // strictly before the request
      call.last_history_ts = event.ts;
    }
    for (std::size_t i = 0; i < candidates.size(); ++i) {
      const auto it = table_.find({user.profile.id, candidates[i].id});
      REQUIRE(it != table_.end());
      for (std::size_t c = 0; c < objectives_.size(); ++c) scores(i, c) = it->second[c];
      call.items.push_back(candidates[i].id);
      call.coarse.push_back(candidates[i].coarse_score);
    }
    calls.push_back(std::move(call));
  }

  // Test-only record; evaluate_fine_ranker calls score() from one thread.
  mutable std::vector<Call> calls;

 private:
  std::vector<std::string> objectives_;
  Table table_;
};

// Items 1..4 with 2-d vectors (1,0), (0,1), (1,1), (2,0).
Catalog make_catalog(bool with_vectors = true) {
  Catalog catalog;
  for (ItemId id = 1; id <= 4; ++id) {
    funnel::Item item;
    item.id = id;
    item.title = "item " + std::to_string(id);
    item.category = id % 2 == 0 ? "even" : "odd";
    item.brand = id <= 2 ? "low" : "high";
    item.price = 10.0 * static_cast<double>(id);
    catalog.add(std::move(item));
  }
  if (with_vectors) {
    catalog.set_vectors(Matrix<float>(4, 2, std::vector<float>{1, 0, 0, 1, 1, 1, 2, 0}));
  }
  return catalog;
}

Event ev(const std::string& user, ItemId item, EventType type, std::int64_t ts,
         std::optional<double> dwell = std::nullopt) {
  return Event{user, item, type, dwell, ts};
}

// from_ts 100, attribution window 10 s. Held-out impressions (views at
// ts >= 100), with their labels:
//   a@100: item 2 clicked at 105 (dwell 9), bought at 110 (<= 115): converted
//          item 3 clicked at 111 > 100 + 10: not clicked
//   a@120: item 4 clicked at 125 (dwell 3), never bought
//   b@130: item 1 clicked at 131 (dwell 20), bought at 150 > 141: not converted
//          item 3 not clicked
//   b@140: item 4 not clicked
//   c@200: item 2 not clicked (c has no profile and no history)
// Item 99 is not in the catalogue: skipped.
std::vector<Event> make_log() {
  using T = EventType;
  return {
      ev("a", 1, T::view, 10),         ev("a", 1, T::click, 12, 4.0),
      ev("a", 1, T::purchase, 20),     ev("b", 2, T::view, 50),
      ev("a", 2, T::view, 100),        ev("a", 3, T::view, 100),
      ev("a", 2, T::click, 105, 9.0),  ev("a", 2, T::purchase, 110),
      ev("a", 3, T::click, 111),       ev("a", 4, T::view, 120),
      ev("a", 4, T::click, 125, 3.0),  ev("b", 99, T::view, 126),
      ev("b", 1, T::view, 130),        ev("b", 3, T::view, 130),
      ev("b", 1, T::click, 131, 20.0), ev("b", 4, T::view, 140),
      ev("b", 1, T::purchase, 150),    ev("c", 2, T::view, 200),
  };
}

std::vector<UserProfile> make_users() {
  UserProfile a;
  a.id = "a";
  a.age = 30;
  UserProfile b;
  b.id = "b";
  return {a, b};
}

// (ctr, cvr, dwell seconds) per (user, item).
TableRanker::Table make_table() {
  return {
      {{"a", 2}, {0.8F, 0.5F, 7.0F}},  {{"a", 3}, {0.3F, 0.1F, 2.0F}},
      {{"a", 4}, {0.6F, 0.25F, 1.0F}}, {{"b", 1}, {0.4F, 0.5F, 5.0F}},
      {{"b", 3}, {0.5F, 0.2F, 2.0F}},  {{"b", 4}, {0.2F, 0.4F, 2.0F}},
      {{"c", 2}, {0.1F, 0.9F, 2.0F}},
  };
}

FineRankerEvalConfig make_config(std::size_t k) {
  FineRankerEvalConfig config;
  config.from_ts = 100;
  config.attribution_window_s = 10;
  config.k = k;
  config.fusion.kind = FusionConfig::Kind::weighted_sum;
  config.fusion.weights = {{"ctr", 1.0F}};  // the ranking is by ctr
  return config;
}

const ObjectiveEval& find(const FineRankerEvalReport& report, const std::string& name) {
  const auto it = std::find_if(report.objectives.begin(), report.objectives.end(),
                               [&](const ObjectiveEval& eval) { return eval.objective == name; });
  REQUIRE(it != report.objectives.end());
  return *it;
}

const Call& find_call(const TableRanker& ranker, const std::string& user, std::int64_t now,
                      std::size_t candidates) {
  const auto it = std::find_if(ranker.calls.begin(), ranker.calls.end(), [&](const Call& call) {
    return call.user == user && call.now_ts == now && call.items.size() == candidates;
  });
  INFO("a call for " << user << " at " << now << " with " << candidates << " candidates");
  REQUIRE(it != ranker.calls.end());
  return *it;
}

double ln(double x) { return std::log(x); }

}  // namespace

TEST_CASE("evaluate_fine_ranker: labels, metrics and ranking on a hand-built log", "[eval]") {
  const Catalog catalog = make_catalog();
  const std::vector<Event> events = make_log();
  const std::vector<UserProfile> users = make_users();
  const TableRanker ranker({"ctr", "cvr", "dwell"}, make_table());
  const FineRankerEvalReport report =
      evaluate_fine_ranker(ranker, catalog, events, users, make_config(2));

  CHECK(report.impressions == 7);
  CHECK(report.requests == 5);  // a@100, a@120, b@130, b@140, c@200
  CHECK(report.skipped_events == 1);
  CHECK(report.ranking_users == 2);  // a bought 2 at 110, b bought 1 at 150
  CHECK(report.score_ms_per_request >= 0.0);
  REQUIRE(report.objectives.size() == 4);
  CHECK(report.objectives[0].objective == "ctr");
  CHECK(report.objectives[1].objective == "cvr");
  CHECK(report.objectives[2].objective == "dwell");
  CHECK(report.objectives[3].objective == "ctcvr");

  // ctr over all 7 impressions: positives a2 .8, a4 .6, b1 .4; negatives
  // a3 .3, b3 .5, b4 .2, c2 .1. Pairs won: 4 + 4 + 3 of 12.
  const ObjectiveEval& ctr = find(report, "ctr");
  CHECK(ctr.examples == 7);
  CHECK(ctr.positive_rate == Approx(3.0 / 7.0));
  CHECK(ctr.auc == Approx(11.0 / 12.0));
  CHECK(ctr.log_loss ==
        Approx(-(ln(0.8) + ln(0.6) + ln(0.4) + ln(0.7) + ln(0.5) + ln(0.8) + ln(0.9)) / 7.0)
            .epsilon(1e-6));
  CHECK(std::isnan(ctr.rmse));

  // cvr over the 3 clicked impressions: a2 .5 (converted), a4 .25, b1 .5:
  // one win and one tie of 2 pairs.
  const ObjectiveEval& cvr = find(report, "cvr");
  CHECK(cvr.examples == 3);
  CHECK(cvr.positive_rate == Approx(1.0 / 3.0));
  CHECK(cvr.auc == Approx(0.75));
  CHECK(cvr.log_loss == Approx(-(ln(0.5) + ln(0.75) + ln(0.5)) / 3.0).epsilon(1e-6));
  CHECK(std::isnan(cvr.rmse));

  // dwell over clicks with dwell: a2 9 s (predicted 7), a4 3 s (1), b1 20 s
  // (5). Median 9: only b1 is long; it outscores a4, not a2.
  const ObjectiveEval& dwell = find(report, "dwell");
  CHECK(dwell.examples == 3);
  const double sq = std::pow(ln(8.0) - ln(10.0), 2) + std::pow(ln(2.0) - ln(4.0), 2) +
                    std::pow(ln(6.0) - ln(21.0), 2);
  CHECK(dwell.rmse == Approx(std::sqrt(sq / 3.0)).epsilon(1e-6));
  CHECK(dwell.auc == Approx(0.5));
  CHECK(dwell.positive_rate == Approx(1.0 / 3.0));
  CHECK(std::isnan(dwell.log_loss));

  // ctcvr = ctr x cvr over all impressions; only a2 (.4, the highest) is
  // clicked and converted.
  const ObjectiveEval& ctcvr = find(report, "ctcvr");
  CHECK(ctcvr.examples == 7);
  CHECK(ctcvr.positive_rate == Approx(1.0 / 7.0));
  CHECK(ctcvr.auc == Approx(1.0));
  CHECK(ctcvr.log_loss == Approx(-(ln(0.4) + ln(1 - 0.03) + ln(1 - 0.15) + ln(1 - 0.2) +
                                   ln(1 - 0.1) + ln(1 - 0.08) + ln(1 - 0.09)) /
                                 7.0)
                              .epsilon(1e-5));

  // Ranking by ctr as of 100: a's candidates 2 (.8), 3 (.3), 4 (.6) -> 2
  // first, its purchase: NDCG 1. b's 1 (.4), 3 (.5), 4 (.2) -> 3, 1: NDCG
  // 1 / log2(3). Both purchases are in the top 2.
  CHECK(report.ndcg == Approx((1.0 + 1.0 / std::log2(3.0)) / 2.0));
  CHECK(report.recall == Approx(1.0));

  // Histories and coarse scores (item vector . unit-length mean history vector).
  REQUIRE(ranker.calls.size() == 7);  // 5 impression requests + 2 ranking requests
  {
    // a before 100: 3 events of item 1 -> mean (1,0).
    const Call& call = find_call(ranker, "a", 100, 2);
    CHECK(call.age == 30);
    CHECK(call.history == 3);
    CHECK(call.items == std::vector<ItemId>{2, 3});
    CHECK(call.coarse == std::vector<float>{0.0F, 1.0F});
  }
  {
    // a before 120: item 1 x3, item 2 x3, item 3 x2 -> mean (5/8, 5/8),
    // unit length (1, 1) / sqrt(2); item 3 = (1, 1).
    const Call& call = find_call(ranker, "a", 120, 1);
    CHECK(call.history == 8);
    CHECK(call.last_history_ts == 111);
    CHECK(call.coarse[0] == Approx(std::sqrt(2.0)));
  }
  {
    // b before 130: the view of item 2 -> mean (0,1); item 99 is skipped.
    const Call& call = find_call(ranker, "b", 130, 2);
    CHECK(call.history == 1);
    CHECK(call.age == std::nullopt);
    CHECK(call.items == std::vector<ItemId>{1, 3});
    CHECK(call.coarse == std::vector<float>{0.0F, 1.0F});
  }
  {
    // b before 140: (0,1) + (1,0) + (1,1) + (1,0) = (3,2), mean (3/4, 1/2),
    // unit length (3, 2) / sqrt(13); item 4 = (2, 0).
    const Call& call = find_call(ranker, "b", 140, 1);
    CHECK(call.history == 4);
    CHECK(call.coarse[0] == Approx(6.0 / std::sqrt(13.0)));
  }
  {
    const Call& call = find_call(ranker, "c", 200, 1);
    CHECK(call.history == 0);
    CHECK(call.coarse[0] == 0.0F);
  }
  {
    // Ranking requests: the distinct items impressed from 100 on, in order
    // of first impression, with the history before 100.
    const Call& a = find_call(ranker, "a", 100, 3);
    CHECK(a.items == std::vector<ItemId>{2, 3, 4});
    CHECK(a.coarse == std::vector<float>{0.0F, 1.0F, 2.0F});
    const Call& b = find_call(ranker, "b", 100, 3);
    CHECK(b.history == 1);
    CHECK(b.items == std::vector<ItemId>{1, 3, 4});
    CHECK(b.coarse == std::vector<float>{0.0F, 1.0F, 0.0F});
  }
}

TEST_CASE("evaluate_fine_ranker: k and fusion decide the ranking metrics", "[eval]") {
  const Catalog catalog = make_catalog();
  const std::vector<Event> events = make_log();
  const std::vector<UserProfile> users = make_users();
  const TableRanker ranker({"ctr", "cvr", "dwell"}, make_table());

  // k = 1: a's purchase is first, b's is second.
  FineRankerEvalReport report =
      evaluate_fine_ranker(ranker, catalog, events, users, make_config(1));
  CHECK(report.ndcg == Approx(0.5));
  CHECK(report.recall == Approx(0.5));

  // Ranking by cvr: a 2 (.5), 3 (.1), 4 (.25) -> 2 first; b 1 (.5), 3 (.2),
  // 4 (.4) -> 1 first. Both hit at k = 1.
  FineRankerEvalConfig config = make_config(1);
  config.fusion.weights = {{"cvr", 1.0F}};
  report = evaluate_fine_ranker(ranker, catalog, events, users, config);
  CHECK(report.ndcg == Approx(1.0));
  CHECK(report.recall == Approx(1.0));
}

TEST_CASE("evaluate_fine_ranker: ties in the ranking keep the order of first impression",
          "[eval]") {
  const Catalog catalog = make_catalog();
  const std::vector<Event> events = make_log();
  // Every item scores the same: a ranks 2, 3, 4 (bought 2: hit at 1); b
  // ranks 1, 3, 4 (bought 1: hit at 1).
  TableRanker::Table table = make_table();
  for (auto& [key, scores] : table) scores = {0.5F, 0.5F, 5.0F};
  const TableRanker ranker({"ctr", "cvr", "dwell"}, table);
  const FineRankerEvalReport report =
      evaluate_fine_ranker(ranker, catalog, events, make_users(), make_config(1));
  CHECK(report.ndcg == Approx(1.0));
  // Constant scores: AUC 0.5 where both classes exist.
  CHECK(report.objectives[0].auc == Approx(0.5));
  CHECK(report.objectives[1].auc == Approx(0.5));
  CHECK(report.objectives[2].auc == Approx(0.5));
}

TEST_CASE("evaluate_fine_ranker: objectives without labels and one-class metrics", "[eval]") {
  const Catalog catalog = make_catalog();
  const std::vector<Event> events = make_log();
  TableRanker::Table table = make_table();
  for (auto& [key, scores] : table) scores.resize(2);  // ctr, then "novelty" = the cvr column
  const TableRanker ranker({"ctr", "novelty"}, table);
  FineRankerEvalConfig config = make_config(2);
  const FineRankerEvalReport report =
      evaluate_fine_ranker(ranker, catalog, events, make_users(), config);
  REQUIRE(report.objectives.size() == 3);
  CHECK(report.objectives[0].examples == 7);
  CHECK(report.objectives[1].objective == "novelty");
  CHECK(report.objectives[1].examples == 0);
  CHECK(std::isnan(report.objectives[1].auc));
  CHECK(report.objectives[2].objective == "ctcvr");  // no cvr: not measured
  CHECK(report.objectives[2].examples == 0);
  CHECK(std::isnan(report.objectives[2].log_loss));

  // From 130 on: clicked impressions b1 only -> cvr has one class (NaN AUC,
  // log-loss still defined); users with a purchase: b only.
  const TableRanker full({"ctr", "cvr", "dwell"}, make_table());
  config.from_ts = 130;
  const FineRankerEvalReport late =
      evaluate_fine_ranker(full, catalog, events, make_users(), config);
  CHECK(late.impressions == 4);
  CHECK(late.ranking_users == 1);
  const ObjectiveEval& cvr = late.objectives[1];
  CHECK(cvr.examples == 1);
  CHECK(std::isnan(cvr.auc));
  CHECK(cvr.log_loss == Approx(-ln(0.5)));
  // One dwell example: nothing lies above the median.
  CHECK(late.objectives[2].examples == 1);
  CHECK(std::isnan(late.objectives[2].auc));
  CHECK(late.objectives[2].rmse == Approx(std::abs(ln(6.0) - ln(21.0))));
}

TEST_CASE("evaluate_fine_ranker: no held-out purchase leaves the ranking metrics undefined",
          "[eval]") {
  const Catalog catalog = make_catalog();
  std::vector<Event> events = make_log();
  std::erase_if(events, [](const Event& e) { return e.type == EventType::purchase; });
  const TableRanker ranker({"ctr", "cvr", "dwell"}, make_table());
  const FineRankerEvalReport report =
      evaluate_fine_ranker(ranker, catalog, events, make_users(), make_config(2));
  CHECK(report.ranking_users == 0);
  CHECK(std::isnan(report.ndcg));
  CHECK(std::isnan(report.recall));
  CHECK(report.requests == 5);  // no ranking request was scored besides
  CHECK(ranker.calls.size() == 5);
}

TEST_CASE("evaluate_fine_ranker: rejects bad input with a clear error", "[eval]") {
  const Catalog catalog = make_catalog();
  const std::vector<Event> events = make_log();
  const std::vector<UserProfile> users = make_users();
  const TableRanker ranker({"ctr", "cvr", "dwell"}, make_table());
  const auto code_of = [](auto&& run) {
    try {
      run();
    } catch (const Error& e) {
      return e.code();
    }
    return ErrorCode::internal;
  };

  SECTION("no impression at or after from_ts") {
    FineRankerEvalConfig config = make_config(2);
    config.from_ts = 201;
    CHECK_THROWS_WITH(evaluate_fine_ranker(ranker, catalog, events, users, config),
                      Contains("no impression") && Contains("201"));
    CHECK(code_of([&] { (void)evaluate_fine_ranker(ranker, catalog, events, users, config); }) ==
          ErrorCode::invalid_argument);
  }
  SECTION("a fusion naming an objective the ranker lacks") {
    FineRankerEvalConfig config = make_config(2);
    config.fusion.weights = {{"ctr", 1.0F}, {"revenue", 1.0F}};
    CHECK_THROWS_WITH(evaluate_fine_ranker(ranker, catalog, events, users, config),
                      Contains("revenue"));
    CHECK(code_of([&] { (void)evaluate_fine_ranker(ranker, catalog, events, users, config); }) ==
          ErrorCode::invalid_argument);
    CHECK(ranker.calls.empty());  // checked before any scoring
  }
  SECTION("a catalogue without vectors") {
    const Catalog bare = make_catalog(false);
    CHECK_THROWS_WITH(evaluate_fine_ranker(ranker, bare, events, users, make_config(2)),
                      Contains("no vectors"));
  }
  SECTION("k = 0 or a non-positive window") {
    CHECK_THROWS_WITH(evaluate_fine_ranker(ranker, catalog, events, users, make_config(0)),
                      Contains("FineRankerEvalConfig.k"));
    FineRankerEvalConfig config = make_config(2);
    config.attribution_window_s = 0;
    CHECK_THROWS_WITH(evaluate_fine_ranker(ranker, catalog, events, users, config),
                      Contains("attribution_window_s"));
  }
  SECTION("a ranker that breaks the score contract") {
    TableRanker::Table table = make_table();
    table[{"b", 3}][1] = std::numeric_limits<float>::quiet_NaN();
    const TableRanker broken({"ctr", "cvr", "dwell"}, table);
    CHECK_THROWS_WITH(evaluate_fine_ranker(broken, catalog, events, users, make_config(2)),
                      Contains("'cvr'") && Contains("item 3") && Contains("user 'b'"));
  }
}

TEST_CASE("evaluate_fine_ranker: a DeepFineRanker's task labels decide what each is measured on",
          "[eval]") {
  // Tasks named unlike the defaults: their labels (click, purchase given a
  // click, dwell) make them the ctr, cvr and dwell of the protocol.
  const auto catalog = std::make_shared<const Catalog>(make_catalog());
  const std::vector<Event> events = make_log();
  const std::vector<UserProfile> users = make_users();
  funnel::DeepFineRankerTrainConfig train;
  using funnel::DeepTaskKind;
  train.model.tasks = {{"click_prob", DeepTaskKind::binary, "", 1.0F, "click"},
                       {"buy", DeepTaskKind::ctcvr, "click_prob", 1.0F, "purchase"},
                       {"stay", DeepTaskKind::regression, "", 0.5F, "dwell"}};
  train.model.fusion.weights = {{"click_prob", 1.0F}, {"buy", 1.0F}};
  train.model.attention_dim = 4;
  train.model.experts = 2;
  train.model.expert_hidden = {4};
  train.model.tower_hidden = {};
  train.features.embedding_dim = 2;
  train.train.max_epochs = 1;
  train.train.batch_size = 4;
  const std::unique_ptr<funnel::DeepFineRanker> ranker =
      funnel::DeepFineRanker::train(catalog, events, users, train);

  FineRankerEvalConfig config = make_config(2);
  config.fusion.weights = {{"buy", 1.0F}};
  const FineRankerEvalReport report =
      evaluate_fine_ranker(*ranker, *catalog, events, users, config);
  REQUIRE(report.objectives.size() == 4);
  const ObjectiveEval& click = find(report, "click_prob");
  CHECK(click.examples == 7);
  CHECK(click.positive_rate == Approx(3.0 / 7.0));
  CHECK(std::isfinite(click.auc));
  CHECK(std::isnan(click.rmse));
  const ObjectiveEval& buy = find(report, "buy");
  CHECK(buy.examples == 3);
  CHECK(buy.positive_rate == Approx(1.0 / 3.0));
  const ObjectiveEval& stay = find(report, "stay");
  CHECK(stay.examples == 3);
  CHECK(std::isfinite(stay.rmse));
  CHECK(std::isnan(stay.log_loss));
  const ObjectiveEval& ctcvr = find(report, "ctcvr");
  CHECK(ctcvr.examples == 7);
  CHECK(ctcvr.positive_rate == Approx(1.0 / 7.0));
  CHECK(report.ranking_users == 2);
}
