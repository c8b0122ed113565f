// SPDX-License-Identifier: Apache-2.0
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "funnel/catalog.hpp"
#include "funnel/deep_fine_ranker.hpp"
#include "funnel/error.hpp"
#include "funnel/metrics.hpp"
#include "internal/checksum.hpp"
#include "test_util.hpp"

using Catch::Matchers::Contains;
using funnel::Candidate;
using funnel::Catalog;
using funnel::DeepExampleConfig;
using funnel::DeepFeatureConfig;
using funnel::DeepFineRanker;
using funnel::DeepFineRankerTrainConfig;
using funnel::DeepRankerExamples;
using funnel::Event;
using funnel::EventType;
using funnel::HistoryEvent;
using funnel::ItemId;
using funnel::MatrixView;
using funnel::UserContext;
using funnel::UserProfile;

namespace {

constexpr std::size_t kCategories = 4;
constexpr std::size_t kPerCategory = 10;
constexpr std::size_t kPriced = kCategories * kPerCategory;  // items 100..139
constexpr ItemId kFirstItem = 100;
constexpr ItemId kMystery = 140;  // no category, brand or price
constexpr std::size_t kDim = 8;
constexpr std::int64_t kTrainStart = 1'700'000'000;
constexpr std::int64_t kT = 1'800'000'000;  // hand-built logs happen here
constexpr std::int64_t kDay = 86400;

// Price rank of item k (0-based among the priced items): 7 is coprime to 40,
// so the ranks are a permutation and the decile band of item k is rank / 4.
std::size_t price_rank(std::size_t k) { return (k * 7) % kPriced; }

// Items cluster by category in vector space; prices are distinct.
std::shared_ptr<const Catalog> test_catalog() {
  static const std::shared_ptr<const Catalog> catalog = [] {
    auto c = std::make_shared<Catalog>();
    std::mt19937 rng(3);
    std::normal_distribution<double> noise(0.0, 1.0);
    std::vector<float> vectors;
    for (std::size_t k = 0; k <= kPriced; ++k) {
      funnel::Item item;
      item.id = kFirstItem + static_cast<ItemId>(k);
      item.title = "item " + std::to_string(item.id);
      const std::size_t category = k / kPerCategory;
      if (k < kPriced) {
        item.category = "cat" + std::to_string(category);
        item.brand = "brand" + std::to_string(k % 3);
        item.price = 5.0 * static_cast<double>(1 + price_rank(k));
      }
      c->add(item);
      std::vector<double> v(kDim);
      double norm = 0.0;
      for (std::size_t j = 0; j < kDim; ++j) {
        v[j] = (j == category ? 2.0 : 0.0) + 0.5 * noise(rng);
        norm += v[j] * v[j];
      }
      for (const double x : v) vectors.push_back(static_cast<float>(x / std::sqrt(norm)));
    }
    c->set_vectors(funnel::Matrix<float>(c->size(), kDim, std::move(vectors)));
    return c;
  }();
  return catalog;
}

ItemId item_of(std::size_t k) { return kFirstItem + static_cast<ItemId>(k); }

// Users cover every age band, known and unknown genders and locations, and
// the profile numeric "tenure" on even users only.
std::vector<UserProfile> synthetic_users(std::size_t n) {
  static const int ages[] = {17, 18, 24, 25, 34, 35, 44, 45, 54, 55, 70};
  static const char* genders[] = {"f", "m", ""};
  static const char* locations[] = {"north", "south", ""};
  std::vector<UserProfile> users;
  for (std::size_t u = 0; u < n; ++u) {
    UserProfile p;
    p.id = "u" + std::to_string(u);
    p.age = ages[u % std::size(ages)];
    p.gender = genders[u % 3];
    p.location = locations[(u / 3) % 3];
    if (u % 2 == 0) p.numeric["tenure"] = 1.5 * static_cast<double>(u);
    users.push_back(p);
  }
  return users;
}

// Feed sessions: half of the views show the user's favourite category
// (u % 4); a view of it is clicked with probability 0.6, another with 0.03.
// A click is followed by cart and purchase with probability 0.5 for the
// cheaper half of the items, 0.05 for the others.
std::vector<Event> synthetic_log(std::size_t users, std::size_t first_session, std::size_t sessions,
                                 std::size_t views, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  std::vector<Event> events;
  for (std::size_t s = first_session; s < first_session + sessions; ++s) {
    for (std::size_t u = 0; u < users; ++u) {
      const std::string user = "u" + std::to_string(u);
      const std::size_t favourite = u % kCategories;
      const std::int64_t start =
          kTrainStart + static_cast<std::int64_t>(s) * kDay + static_cast<std::int64_t>(u) * 600;
      for (std::size_t j = 0; j < views; ++j) {
        const std::size_t k =
            coin(rng) < 0.5 ? favourite * kPerCategory + rng() % kPerCategory : rng() % kPriced;
        const std::int64_t ts = start + static_cast<std::int64_t>(j) * 60;
        events.push_back({user, item_of(k), EventType::view, std::nullopt, ts});
        const bool liked = k / kPerCategory == favourite;
        if (coin(rng) >= (liked ? 0.6 : 0.03)) continue;
        events.push_back(
            {user, item_of(k), EventType::click, 10.0 + static_cast<double>(rng() % 50), ts + 20});
        if (coin(rng) >= (price_rank(k) < kPriced / 2 ? 0.5 : 0.05)) continue;
        events.push_back({user, item_of(k), EventType::cart, std::nullopt, ts + 30});
        events.push_back({user, item_of(k), EventType::purchase, std::nullopt, ts + 40});
      }
    }
  }
  return events;
}

constexpr std::size_t kUsers = 24;

DeepFineRankerTrainConfig small_config() {
  DeepFineRankerTrainConfig c;
  c.features.user_numeric = {"log_history_events", "tenure"};
  c.features.item_numeric = {"coarse_score",
                             "log_price",
                             "log_popularity",
                             "price_vs_category",
                             "item_ctr_prior",
                             "item_cvr_prior",
                             "item_dwell_prior",
                             "category_ctr_prior",
                             "category_cvr_prior",
                             "category_dwell_prior",
                             "sim_max",
                             "seen_item",
                             "purchased_item",
                             "category_share",
                             "brand_share",
                             "brand_purchased",
                             "relative_price_gap"};
  c.features.embedding_dim = 4;
  c.model.history_length = 4;
  c.model.attention_dim = 4;
  c.model.experts = 2;
  c.model.expert_hidden = {8};
  c.model.tower_hidden = {4};
  c.model.dropout = 0.0F;
  c.train.max_epochs = 2;
  c.train.batch_size = 64;
  c.train.learning_rate = 0.01F;
  return c;
}

const std::vector<Event>& training_log() {
  static const std::vector<Event> log = synthetic_log(kUsers, 0, 4, 6, 11);
  return log;
}

// One small trained ranker shared by the feature, label and serving tests.
const DeepFineRanker& shared_ranker() {
  static const std::unique_ptr<DeepFineRanker> ranker = DeepFineRanker::train(
      test_catalog(), training_log(), synthetic_users(kUsers), small_config());
  return *ranker;
}

// Index of `value` in a vocabulary (position + 1), 0 when absent.
std::int32_t vocab_index(const funnel::DeepCategoricalFeature& feature, const std::string& value) {
  const auto it = std::find(feature.vocab.begin(), feature.vocab.end(), value);
  return it == feature.vocab.end() ? 0 : static_cast<std::int32_t>(it - feature.vocab.begin() + 1);
}

template <class Features>
std::size_t column(const Features& features, const std::string& name) {
  for (std::size_t i = 0; i < features.size(); ++i) {
    if (features[i].name == name) return i;
  }
  FAIL("no feature " << name);
  return 0;
}

std::span<const float> vector_of(ItemId id) { return test_catalog()->vector(id); }

// Row `row` of the examples' item table.
std::span<const float> item_vector(const DeepRankerExamples& ex, std::int32_t row) {
  REQUIRE(row >= 0);
  REQUIRE(static_cast<std::size_t>(row) < ex.items);
  return std::span<const float>(ex.item_vectors)
      .subspan(static_cast<std::size_t>(row) * kDim, kDim);
}

// The vector a candidate row carries.
std::span<const float> candidate_vector(const DeepRankerExamples& ex, std::size_t i) {
  return item_vector(ex, ex.candidate_item[i]);
}

// The candidate row of the example at `ts` for item `id`.
std::size_t find_example(const DeepRankerExamples& ex, std::int64_t ts, ItemId id) {
  const std::span<const float> v = vector_of(id);
  for (std::size_t i = 0; i < ex.candidates; ++i) {
    if (ex.ts[i] != ts) continue;
    const std::span<const float> c = candidate_vector(ex, i);
    if (std::equal(v.begin(), v.end(), c.begin())) return i;
  }
  FAIL("no example at ts " << ts << " for item " << id);
  return 0;
}

// The catalogue item whose vector a candidate row carries.
ItemId candidate_item(const DeepRankerExamples& ex, std::size_t i) {
  for (const funnel::Item& item : test_catalog()->items()) {
    const std::span<const float> v = vector_of(item.id);
    const std::span<const float> c = candidate_vector(ex, i);
    if (std::equal(v.begin(), v.end(), c.begin())) return item.id;
  }
  FAIL("candidate " << i << " has no catalogue vector");
  return funnel::kNoItem;
}

// Everything the network sees of candidate row i, its user row included.
std::pair<std::vector<std::int32_t>, std::vector<float>> inputs_of(const DeepRankerExamples& ex,
                                                                   std::size_t i) {
  const auto u = static_cast<std::size_t>(ex.candidate_user[i]);
  const std::size_t nuc = ex.user_categorical.size() / ex.users;
  const std::size_t nun = ex.user_numeric.size() / ex.users;
  const std::size_t nic = ex.candidate_categorical.size() / ex.candidates;
  const std::size_t nin = ex.candidate_numeric.size() / ex.candidates;
  const auto h0 = static_cast<std::size_t>(ex.history_offsets[u]);
  const auto h1 = static_cast<std::size_t>(ex.history_offsets[u + 1]);
  std::vector<std::int32_t> ints(ex.user_categorical.begin() + u * nuc,
                                 ex.user_categorical.begin() + (u + 1) * nuc);
  for (std::size_t h = h0; h < h1; ++h) {
    ints.insert(ints.end(), {ex.history_category[h], ex.history_type[h], ex.history_recency[h]});
  }
  ints.insert(ints.end(), ex.candidate_categorical.begin() + i * nic,
              ex.candidate_categorical.begin() + (i + 1) * nic);
  std::vector<float> floats(ex.user_numeric.begin() + u * nun,
                            ex.user_numeric.begin() + (u + 1) * nun);
  for (std::size_t h = h0; h < h1; ++h) {
    const std::span<const float> v = item_vector(ex, ex.history_item[h]);
    floats.insert(floats.end(), v.begin(), v.end());
  }
  const std::span<const float> v = candidate_vector(ex, i);
  floats.insert(floats.end(), v.begin(), v.end());
  floats.insert(floats.end(), ex.candidate_numeric.begin() + i * nin,
                ex.candidate_numeric.begin() + (i + 1) * nin);
  return {ints, floats};
}

// log(1 + price) of item k minus the median of its category's ten log
// prices (the mean of the 5th and 6th); nullopt for the mystery item.
std::optional<double> hand_price_vs_category(std::size_t k) {
  if (k >= kPriced) return std::nullopt;
  const std::size_t category = k / kPerCategory;
  std::vector<double> lp;
  for (std::size_t j = category * kPerCategory; j < (category + 1) * kPerCategory; ++j) {
    lp.push_back(std::log1p(5.0 * static_cast<double>(1 + price_rank(j))));
  }
  std::sort(lp.begin(), lp.end());
  return std::log1p(5.0 * static_cast<double>(1 + price_rank(k))) - 0.5 * (lp[4] + lp[5]);
}

DeepExampleConfig all_examples() {
  DeepExampleConfig c;
  c.validation_fraction = 0.0;
  return c;
}

std::vector<HistoryEvent> history_of(const std::vector<Event>& events, const std::string& user) {
  std::vector<HistoryEvent> history;
  for (const Event& e : events) {
    if (e.user == user) history.push_back({e.item, e.type, e.ts, e.dwell_s});
  }
  std::stable_sort(history.begin(), history.end(),
                   [](const HistoryEvent& a, const HistoryEvent& b) { return a.ts < b.ts; });
  return history;
}

// A hand-built log of one user "h1" (see the label test for what each
// event is there for).
std::vector<Event> hand_log() {
  return {
      {"h1", 100, EventType::view, std::nullopt, kT},
      {"h1", 100, EventType::click, 30.0, kT + 100},
      {"h1", 100, EventType::cart, std::nullopt, kT + 150},
      {"h1", 100, EventType::purchase, std::nullopt, kT + 200},
      {"h1", 111, EventType::view, std::nullopt, kT + 1000},
      {"h1", 111, EventType::click, 12.0, kT + 1000 + 3601},  // after the window
      {"h1", 122, EventType::view, std::nullopt, kT + 10000},
      {"h1", 122, EventType::click, std::nullopt, kT + 10050},            // no dwell
      {"h1", 122, EventType::purchase, std::nullopt, kT + 10050 + 3601},  // after the window
      {"h1", 999, EventType::view, std::nullopt, kT + 15000},             // unknown item
      {"h1", 133, EventType::view, std::nullopt, kT + 20000},
      {"h1", 133, EventType::click, 5.0, kT + 20010},
      {"h1", 104, EventType::view, std::nullopt, kT + 30000},
      {"h1", 104, EventType::click, 7.0, kT + 33600},  // exactly at the window's end
  };
}

UserProfile hand_user() {
  UserProfile p;
  p.id = "h1";
  p.age = 30;
  p.gender = "f";
  p.location = "north";
  p.numeric["tenure"] = 2.0;
  return p;
}

std::vector<UserProfile> hand_users() { return {hand_user()}; }

}  // namespace

TEST_CASE("DeepFeatureConfig and DeepExampleConfig reject bad settings by name", "[deep_fine]") {
  DeepFeatureConfig ok;
  REQUIRE_NOTHROW(ok.validate());
  auto f = ok;
  f.item_categorical.push_back("colour");
  CHECK_THROWS_WITH(f.validate(), Contains("colour"));
  f = ok;
  f.item_categorical.push_back("attr:");
  CHECK_THROWS_WITH(f.validate(), Contains("attr:"));
  f = ok;
  f.item_numeric.push_back("ctr");
  CHECK_THROWS_WITH(f.validate(), Contains("'ctr'"));
  f = ok;
  f.user_categorical.push_back("gender");
  CHECK_THROWS_WITH(f.validate(), Contains("twice"));
  f = ok;
  f.history_category = "brandx";
  CHECK_THROWS_WITH(f.validate(), Contains("brandx"));
  f = ok;
  f.embedding_dim = 0;
  CHECK_THROWS_WITH(f.validate(), Contains("embedding_dim"));
  f = ok;
  f.min_count = 0;
  CHECK_THROWS_WITH(f.validate(), Contains("min_count"));
  f = ok;
  f.item_categorical = {"attr:colour"};
  f.history_category = "attr:colour";
  CHECK_NOTHROW(f.validate());

  DeepExampleConfig e;
  REQUIRE_NOTHROW(e.validate());
  auto bad = e;
  bad.negative_keep = 0.0;
  CHECK_THROWS_WITH(bad.validate(), Contains("negative_keep"));
  bad = e;
  bad.validation_fraction = 1.0;
  CHECK_THROWS_WITH(bad.validate(), Contains("validation_fraction"));
  bad = e;
  bad.attribution_window_s = 0;
  CHECK_THROWS_WITH(bad.validate(), Contains("attribution_window_s"));

  // train() checks everything before doing work.
  auto config = small_config();
  config.features.item_numeric = {"nope"};
  CHECK_THROWS_WITH(DeepFineRanker::train(test_catalog(), training_log(), {}, config),
                    Contains("nope"));
  CHECK_THROWS_WITH(DeepFineRanker::train(nullptr, training_log(), {}, small_config()),
                    Contains("null"));
  CHECK_THROWS_WITH(
      DeepFineRanker::train(std::make_shared<Catalog>(), training_log(), {}, small_config()),
      Contains("no vectors"));
  const std::vector<Event> one{{"x", 100, EventType::view, std::nullopt, kT}};
  CHECK_THROWS_WITH(DeepFineRanker::train(test_catalog(), one, {}, small_config()),
                    Contains("1 examples"));
}

TEST_CASE("DeepFineRanker labels views by what follows within the window", "[deep_fine]") {
  const DeepFineRanker& ranker = shared_ranker();
  const std::vector<Event> log = hand_log();
  const std::vector<UserProfile> users{hand_user()};
  const DeepRankerExamples ex = ranker.build_examples(log, users, all_examples(), nullptr);
  REQUIRE(ranker.objectives().size() == 3);  // ctr (click), cvr (ctcvr purchase), dwell
  // Five views of catalogue items; the view of unknown item 999 is skipped.
  REQUIRE(ex.candidates == 5);
  REQUIRE(ex.labels.size() == 15);
  // The item vectors are stored once: the catalogue's, row = catalogue row,
  // which candidates (and history events) refer to.
  const funnel::Catalog& catalog = *test_catalog();
  REQUIRE(ex.items == catalog.size());
  REQUIRE(ex.item_vectors.size() == catalog.size() * kDim);
  for (std::size_t r = 0; r < catalog.size(); ++r) {
    const std::span<const float> v = catalog.vectors().row(r);
    CHECK(std::equal(v.begin(), v.end(), item_vector(ex, static_cast<std::int32_t>(r)).begin()));
  }
  for (const ItemId id : {100, 111, 122, 133, 104}) {
    INFO("item " << id);
    const std::size_t row = catalog.index_of(id);
    CHECK(std::count(ex.candidate_item.begin(), ex.candidate_item.end(),
                     static_cast<std::int32_t>(row)) == 1);
  }
  const auto labels = [&](std::int64_t ts, ItemId id) {
    const std::size_t i = find_example(ex, ts, id);
    return std::vector<float>(ex.labels.begin() + i * 3, ex.labels.begin() + i * 3 + 3);
  };
  // Clicked (dwell 30), carted and purchased within the window: joint label 1.
  auto l = labels(kT, 100);
  CHECK(l[0] == 1.0F);
  CHECK(l[1] == 1.0F);
  CHECK(l[2] == Approx(std::log1p(30.0)));
  // A click 3601 s after the view is another visit: unclicked, no dwell label.
  l = labels(kT + 1000, 111);
  CHECK(l[0] == 0.0F);
  CHECK(l[1] == 0.0F);
  CHECK(std::isnan(l[2]));
  // Clicked without dwell_s, purchased 3601 s after the click: not converted.
  l = labels(kT + 10000, 122);
  CHECK(l[0] == 1.0F);
  CHECK(l[1] == 0.0F);
  CHECK(std::isnan(l[2]));
  l = labels(kT + 20000, 133);
  CHECK(l[0] == 1.0F);
  CHECK(l[1] == 0.0F);
  CHECK(l[2] == Approx(std::log1p(5.0)));
  // The window includes its end (ts + 3600).
  l = labels(kT + 30000, 104);
  CHECK(l[0] == 1.0F);
  CHECK(l[2] == Approx(std::log1p(7.0)));

  // Examples come in time order, and each sees only the events before it.
  CHECK(std::is_sorted(ex.ts.begin(), ex.ts.end()));
  const std::size_t b = find_example(ex, kT + 1000, 111);
  const auto u = static_cast<std::size_t>(ex.candidate_user[b]);
  const auto first = static_cast<std::size_t>(ex.history_offsets[u]);
  REQUIRE(ex.history_offsets[u + 1] - ex.history_offsets[u] == 4);  // view, click, cart, purchase
  CHECK(std::vector<std::int32_t>(ex.history_type.begin() + first,
                                  ex.history_type.begin() + first + 4) ==
        std::vector<std::int32_t>{0, 1, 2, 3});

  // A later purchase (of the item viewed at kT + 20000) changes that view's
  // joint label but not the inputs of that example or any earlier one; the
  // example after it sees it in its history.
  std::vector<Event> longer = log;
  longer.push_back({"h1", 133, EventType::purchase, std::nullopt, kT + 20040});
  const DeepRankerExamples ex2 = ranker.build_examples(longer, users, all_examples(), nullptr);
  REQUIRE(ex2.candidates == ex.candidates);
  const std::vector<std::pair<std::int64_t, ItemId>> earlier{
      {kT, 100}, {kT + 1000, 111}, {kT + 10000, 122}, {kT + 20000, 133}};
  for (const auto& [ts, id] : earlier) {
    INFO("example at " << ts);
    CHECK(inputs_of(ex, find_example(ex, ts, id)) == inputs_of(ex2, find_example(ex2, ts, id)));
  }
  CHECK(inputs_of(ex, find_example(ex, kT + 30000, 104)) !=
        inputs_of(ex2, find_example(ex2, kT + 30000, 104)));
  CHECK(ex2.labels[find_example(ex2, kT + 20000, 133) * 3 + 1] == 1.0F);
  CHECK(ex.labels[find_example(ex, kT + 20000, 133) * 3 + 1] == 0.0F);

  // negative_keep drops only unclicked views, reproducibly.
  DeepExampleConfig keep = all_examples();
  keep.negative_keep = 0.01;
  const DeepRankerExamples kept = ranker.build_examples(log, users, keep, nullptr);
  const DeepRankerExamples kept2 = ranker.build_examples(log, users, keep, nullptr);
  CHECK(kept.ts == kept2.ts);
  CHECK(kept.candidate_item == kept2.candidate_item);
  std::size_t positives = 0;
  for (std::size_t i = 0; i < kept.candidates; ++i) positives += kept.labels[i * 3] == 1.0F;
  CHECK(positives == 4);
  CHECK(kept.candidates <= 5);

  // The validation output holds the latest examples.
  DeepExampleConfig split = all_examples();
  split.validation_fraction = 0.4;
  DeepRankerExamples held_out;
  const DeepRankerExamples head = ranker.build_examples(log, users, split, &held_out);
  REQUIRE(head.candidates == 3);
  REQUIRE(held_out.candidates == 2);
  CHECK(held_out.ts.front() >= head.ts.back());
}

TEST_CASE("DeepFineRanker features match hand computations", "[deep_fine]") {
  const DeepFineRanker& ranker = shared_ranker();
  const funnel::DeepRankerConfig& config = ranker.model().config();
  const std::size_t nuc = config.user_categorical.size();
  const std::size_t nun = config.user_numeric.size();
  const std::size_t nic = config.item_categorical.size();
  const std::size_t nin = config.item_numeric.size();
  const std::size_t age_col = column(config.user_categorical, "age_band");
  const std::size_t gender_col = column(config.user_categorical, "gender");
  const std::size_t location_col = column(config.user_categorical, "location");
  const std::size_t events_col = column(config.user_numeric, "log_history_events");
  const std::size_t tenure_col = column(config.user_numeric, "tenure");
  const std::size_t category_col = column(config.item_categorical, "category");
  const std::size_t band_col = column(config.item_categorical, "price_band");
  const std::size_t coarse_col = column(config.item_numeric, "coarse_score");
  const std::size_t price_col = column(config.item_numeric, "log_price");
  const std::size_t popularity_col = column(config.item_numeric, "log_popularity");
  REQUIRE(config.history_length == 4);
  REQUIRE(config.item_categorical[config.history_category_feature].name == "category");

  SECTION("age bands at their edges, OOV for empty gender and location") {
    const std::vector<std::pair<int, std::string>> cases{
        {17, "<18"},   {18, "18-24"}, {24, "18-24"}, {25, "25-34"}, {34, "25-34"},
        {35, "35-44"}, {44, "35-44"}, {45, "45-54"}, {54, "45-54"}, {55, "55+"}};
    std::vector<UserProfile> users;
    std::vector<Event> log;
    for (std::size_t i = 0; i <= cases.size(); ++i) {
      UserProfile p;
      p.id = "a" + std::to_string(i);
      if (i < cases.size()) p.age = cases[i].first;  // the last one has no age
      p.gender = i % 2 == 0 ? "f" : "";
      p.location = i % 2 == 0 ? "" : "south";
      users.push_back(p);
      log.push_back({p.id, 100, EventType::view, std::nullopt, kT + static_cast<std::int64_t>(i)});
    }
    const DeepRankerExamples ex = ranker.build_examples(log, users, all_examples(), nullptr);
    REQUIRE(ex.candidates == cases.size() + 1);
    for (std::size_t i = 0; i <= cases.size(); ++i) {
      const std::size_t row = find_example(ex, kT + static_cast<std::int64_t>(i), 100);
      const auto u = static_cast<std::size_t>(ex.candidate_user[row]);
      const std::int32_t* cats = &ex.user_categorical[u * nuc];
      if (i < cases.size()) {
        INFO("age " << cases[i].first);
        const std::int32_t expected =
            vocab_index(config.user_categorical[age_col], cases[i].second);
        REQUIRE(expected > 0);
        CHECK(cats[age_col] == expected);
      } else {
        CHECK(cats[age_col] == 0);
      }
      if (i % 2 == 0) {
        CHECK(cats[gender_col] == vocab_index(config.user_categorical[gender_col], "f"));
        CHECK(cats[gender_col] > 0);
        CHECK(cats[location_col] == 0);
      } else {
        CHECK(cats[gender_col] == 0);
        CHECK(cats[location_col] == vocab_index(config.user_categorical[location_col], "south"));
        CHECK(cats[location_col] > 0);
      }
      // No history, no tenure: log(1 + 0) and the training mean.
      CHECK(ex.user_numeric[u * nun + events_col] == 0.0F);
      CHECK(ex.user_numeric[u * nun + tenure_col] == config.user_numeric[tenure_col].mean);
      CHECK(ex.history_offsets[u + 1] == ex.history_offsets[u]);
      CHECK(ex.candidate_numeric[row * nin + coarse_col] == 0.0F);
    }
  }

  SECTION("price bands, log price and popularity of every item") {
    std::vector<Event> log;
    for (std::size_t k = 0; k <= kPriced; ++k) {
      log.push_back(
          {"p", item_of(k), EventType::view, std::nullopt, kT + static_cast<std::int64_t>(k)});
    }
    const DeepRankerExamples ex = ranker.build_examples(log, {}, all_examples(), nullptr);
    REQUIRE(ex.candidates == kPriced + 1);

    // Popularity counts the training log's events before its first held-out
    // example (the latest 10% of its views, at least one).
    std::vector<std::int64_t> view_ts;
    for (const Event& e : training_log()) {
      if (e.type == EventType::view) view_ts.push_back(e.ts);
    }
    std::sort(view_ts.begin(), view_ts.end());
    const auto n = view_ts.size();
    const auto held_out =
        std::clamp<std::size_t>(static_cast<std::size_t>(std::llround(0.1 * double(n))), 1, n - 1);
    const std::int64_t period_end = view_ts[n - held_out];

    for (std::size_t k = 0; k <= kPriced; ++k) {
      INFO("item " << item_of(k));
      const std::size_t row = find_example(ex, kT + static_cast<std::int64_t>(k), item_of(k));
      const std::int32_t band = ex.candidate_categorical[row * nic + band_col];
      const float lp = ex.candidate_numeric[row * nin + price_col];
      std::size_t count = 0;
      for (const Event& e : training_log()) count += e.item == item_of(k) && e.ts < period_end;
      CHECK(ex.candidate_numeric[row * nin + popularity_col] ==
            Approx(std::log1p(static_cast<double>(count))).margin(1e-6));
      if (k == kPriced) {  // no price, no category
        CHECK(band == 0);
        CHECK(lp == 0.0F);
        CHECK(ex.candidate_categorical[row * nic + category_col] == 0);
        continue;
      }
      const std::string expected = std::to_string(price_rank(k) / 4);
      REQUIRE(vocab_index(config.item_categorical[band_col], expected) > 0);
      CHECK(band == vocab_index(config.item_categorical[band_col], expected));
      const double price = 5.0 * static_cast<double>(1 + price_rank(k));
      CHECK(lp == Approx(std::log1p(price)));
      CHECK(ex.candidate_categorical[row * nic + category_col] ==
            vocab_index(config.item_categorical[category_col],
                        "cat" + std::to_string(k / kPerCategory)));
    }
  }

  SECTION("recency buckets at their bounds, truncation, coarse score, history count") {
    // r1: ages 100 days, 1 day, 1 day - 1 s, 1 h (buckets 7, 2, 1, 1); r2:
    // ages 1 h and 2 s (1, 0); t: six catalogue events, the latest four kept.
    REQUIRE(config.recency_bounds_s.size() == 7);
    REQUIRE(config.recency_bounds_s[0] == 3600);
    REQUIRE(config.recency_bounds_s[1] == kDay);
    const std::vector<Event> log{
        {"r1", 101, EventType::view, std::nullopt, kT - 100 * kDay},
        {"r1", 112, EventType::view, std::nullopt, kT - kDay},
        {"r1", 123, EventType::click, 3.0, kT - kDay + 1},
        {"r1", 134, EventType::purchase, std::nullopt, kT - 3600},
        {"r1", 105, EventType::view, std::nullopt, kT},
        {"r2", 101, EventType::cart, std::nullopt, kT - 3599},
        {"r2", 102, EventType::view, std::nullopt, kT - 1},
        {"r2", 105, EventType::view, std::nullopt, kT + 1},
        {"t", 110, EventType::view, std::nullopt, kT - 600},
        {"t", 111, EventType::view, std::nullopt, kT - 500},
        {"t", 999, EventType::view, std::nullopt, kT - 450},  // unknown: neither token nor count
        {"t", 120, EventType::click, std::nullopt, kT - 400},
        {"t", 121, EventType::view, std::nullopt, kT - 300},
        {"t", 130, EventType::view, std::nullopt, kT - 200},
        {"t", 131, EventType::cart, std::nullopt, kT - 100},
        {"t", 100, EventType::view, std::nullopt, kT + 2},
    };
    const DeepRankerExamples ex = ranker.build_examples(log, {}, all_examples(), nullptr);
    struct Expect {
      std::int64_t ts;
      ItemId item;
      std::vector<ItemId> tokens;
      std::vector<std::int32_t> types;
      std::vector<std::int32_t> recency;
      std::size_t events;
    };
    const std::vector<Expect> expectations{
        {kT, 105, {101, 112, 123, 134}, {0, 0, 1, 3}, {7, 2, 1, 1}, 4},
        {kT + 1, 105, {101, 102}, {2, 0}, {1, 0}, 2},
        {kT + 2, 100, {120, 121, 130, 131}, {1, 0, 0, 2}, {0, 0, 0, 0}, 6},
    };
    for (const Expect& want : expectations) {
      INFO("example at " << want.ts);
      const std::size_t row = find_example(ex, want.ts, want.item);
      const auto u = static_cast<std::size_t>(ex.candidate_user[row]);
      const auto first = static_cast<std::size_t>(ex.history_offsets[u]);
      const auto count = static_cast<std::size_t>(ex.history_offsets[u + 1]) - first;
      REQUIRE(count == want.tokens.size());
      std::vector<double> mean(kDim, 0.0);
      for (std::size_t j = 0; j < count; ++j) {
        const std::span<const float> v = vector_of(want.tokens[j]);
        const std::span<const float> token = item_vector(ex, ex.history_item[first + j]);
        CHECK(std::equal(v.begin(), v.end(), token.begin()));
        CHECK(ex.history_item[first + j] ==
              static_cast<std::int32_t>(test_catalog()->index_of(want.tokens[j])));
        CHECK(ex.history_type[first + j] == want.types[j]);
        CHECK(ex.history_recency[first + j] == want.recency[j]);
        const funnel::Item& item = test_catalog()->at(want.tokens[j]);
        CHECK(ex.history_category[first + j] ==
              vocab_index(config.item_categorical[category_col], item.category));
        for (std::size_t d = 0; d < kDim; ++d) mean[d] += v[d] / static_cast<double>(count);
      }
      // The coarse score: the item's inner product with the unit-length mean.
      double norm = 0.0;
      for (std::size_t d = 0; d < kDim; ++d) norm += mean[d] * mean[d];
      norm = std::sqrt(norm);
      double dot = 0.0;
      const std::span<const float> v = vector_of(want.item);
      for (std::size_t d = 0; d < kDim; ++d) dot += v[d] * (norm > 0.0 ? mean[d] / norm : 0.0);
      CHECK(ex.candidate_numeric[row * nin + coarse_col] == Approx(dot).margin(1e-6));
      CHECK(ex.user_numeric[u * nun + events_col] ==
            Approx(std::log1p(static_cast<double>(want.events))));
    }
  }
}

TEST_CASE("DeepFineRanker cross features match hand computations", "[deep_fine]") {
  const DeepFineRanker& ranker = shared_ranker();
  const funnel::DeepRankerConfig& config = ranker.model().config();
  const std::size_t nin = config.item_numeric.size();
  REQUIRE(config.history_length == 4);
  // Tokens at kT (the latest four events before it): 101 view (cat0,
  // brand1), 104 purchase (cat0, brand1), 112 click (cat1, brand0), 140 view
  // (no category, brand or price). An older purchase of 133 falls out of
  // the window, so brand0 counts as purchased only through no token.
  const std::vector<Event> log{
      {"x1", 133, EventType::purchase, std::nullopt, kT - 900},
      {"x1", 101, EventType::view, std::nullopt, kT - 500},
      {"x1", 104, EventType::purchase, std::nullopt, kT - 400},
      {"x1", 112, EventType::click, 4.0, kT - 300},
      {"x1", 140, EventType::view, std::nullopt, kT - 200},
      {"x1", 101, EventType::view, std::nullopt, kT},
      {"x1", 104, EventType::view, std::nullopt, kT},
      {"x1", 107, EventType::view, std::nullopt, kT},
      {"x1", 115, EventType::view, std::nullopt, kT},
      {"x1", 125, EventType::view, std::nullopt, kT},
      {"x1", 140, EventType::view, std::nullopt, kT},
      {"x1", 133, EventType::view, std::nullopt, kT},
      {"x2", 101, EventType::view, std::nullopt, kT},  // no history: every cross feature 0
  };
  const DeepRankerExamples ex = ranker.build_examples(log, {}, all_examples(), nullptr);
  const std::vector<std::size_t> tokens{1, 4, 12, kPriced};  // item indices k
  // The user's mean price_vs_category: over 101, 104 and 112 (140 has none).
  const double user_pvc =
      (*hand_price_vs_category(1) + *hand_price_vs_category(4) + *hand_price_vs_category(12)) / 3.0;
  struct Expect {
    std::size_t k;
    double seen, purchased, category_share, brand_share, brand_purchased;
  };
  const std::vector<Expect> expectations{
      {1, 1, 0, 0.5, 0.5, 1},    {4, 1, 1, 0.5, 0.5, 1}, {7, 0, 0, 0.5, 0.5, 1},
      {15, 0, 0, 0.25, 0.25, 0}, {25, 0, 0, 0, 0.5, 1},  {kPriced, 1, 0, 0, 0, 0},
      {33, 0, 0, 0, 0.25, 0},
  };
  for (const Expect& want : expectations) {
    INFO("item " << item_of(want.k));
    const std::size_t row = find_example(ex, kT, item_of(want.k));
    const float* num = &ex.candidate_numeric[row * nin];
    CHECK(num[column(config.item_numeric, "seen_item")] == want.seen);
    CHECK(num[column(config.item_numeric, "purchased_item")] == want.purchased);
    CHECK(num[column(config.item_numeric, "category_share")] == Approx(want.category_share));
    CHECK(num[column(config.item_numeric, "brand_share")] == Approx(want.brand_share));
    CHECK(num[column(config.item_numeric, "brand_purchased")] == want.brand_purchased);
    // sim_max: the best inner product with a token of another item.
    double best = -1e300;
    for (const std::size_t t : tokens) {
      if (t == want.k) continue;
      double dot = 0.0;
      for (std::size_t d = 0; d < kDim; ++d) {
        dot += static_cast<double>(vector_of(item_of(want.k))[d]) * vector_of(item_of(t))[d];
      }
      best = std::max(best, dot);
    }
    CHECK(num[column(config.item_numeric, "sim_max")] == Approx(best).margin(1e-5));
    const std::optional<double> pvc = hand_price_vs_category(want.k);
    CHECK(num[column(config.item_numeric, "price_vs_category")] ==
          Approx(pvc.value_or(0.0)).margin(1e-6));
    CHECK(num[column(config.item_numeric, "relative_price_gap")] ==
          Approx(pvc ? *pvc - user_pvc : 0.0).margin(1e-6));
  }
  const std::size_t lonely = [&] {
    for (std::size_t i = 0; i < ex.candidates; ++i) {
      const auto u = static_cast<std::size_t>(ex.candidate_user[i]);
      if (ex.history_offsets[u + 1] == ex.history_offsets[u]) return i;
    }
    FAIL("no example without history");
    return std::size_t{0};
  }();
  for (const char* name : {"sim_max", "seen_item", "purchased_item", "category_share",
                           "brand_share", "brand_purchased", "relative_price_gap"}) {
    INFO(name);
    CHECK(ex.candidate_numeric[lonely * nin + column(config.item_numeric, name)] == 0.0F);
  }
}

TEST_CASE("DeepFineRanker rate priors count only the events before an example", "[deep_fine]") {
  const DeepFineRanker& ranker = shared_ranker();
  const funnel::DeepRankerConfig& config = ranker.model().config();
  const std::size_t nin = config.item_numeric.size();
  const std::size_t ctr_col = column(config.item_numeric, "item_ctr_prior");
  const std::size_t cvr_col = column(config.item_numeric, "item_cvr_prior");
  const std::size_t dwell_col = column(config.item_numeric, "item_dwell_prior");
  // The training period ends at the first held-out view (the latest 10%).
  std::vector<std::int64_t> view_ts;
  for (const Event& e : training_log()) {
    if (e.type == EventType::view) view_ts.push_back(e.ts);
  }
  std::sort(view_ts.begin(), view_ts.end());
  const std::size_t n = view_ts.size();
  const std::size_t held_out =
      std::clamp<std::size_t>(static_cast<std::size_t>(std::llround(0.1 * double(n))), 1, n - 1);
  const std::int64_t period_end = view_ts[n - held_out];

  struct Counts {
    double views = 0, clicks = 0, purchases = 0, dwells = 0, log_dwell = 0;
  };
  const std::size_t cat_ctr_col = column(config.item_numeric, "category_ctr_prior");
  const std::size_t cat_dwell_col = column(config.item_numeric, "category_dwell_prior");
  // Events of `item` (kNoItem: all; with by_category, all of its category) before `before`.
  const auto count = [&](ItemId item, std::int64_t before, bool by_category = false) {
    Counts c;
    for (const Event& e : training_log()) {
      const bool match =
          item == funnel::kNoItem || e.item == item ||
          (by_category && (e.item - kFirstItem) / static_cast<ItemId>(kPerCategory) ==
                              (item - kFirstItem) / static_cast<ItemId>(kPerCategory));
      if (e.ts >= before || e.ts >= period_end || !match) continue;
      c.views += e.type == EventType::view;
      c.clicks += e.type == EventType::click;
      c.purchases += e.type == EventType::purchase;
      if (e.type == EventType::click && e.dwell_s) {
        c.dwells += 1;
        c.log_dwell += std::log1p(*e.dwell_s);
      }
    }
    return c;
  };
  const Counts all = count(funnel::kNoItem, period_end);
  const double g_ctr = all.clicks / all.views;
  const double g_cvr = all.purchases / all.clicks;
  const double g_dwell = all.log_dwell / all.dwells;
  const auto logit = [](double p) { return std::log(p / (1.0 - p)); };

  const DeepRankerExamples ex =
      ranker.build_examples(training_log(), synthetic_users(kUsers), all_examples(), nullptr);
  REQUIRE(ex.candidates == n);
  std::size_t inside = 0;
  std::size_t after = 0;
  for (std::size_t i = 0; i < ex.candidates; i += 7) {
    const ItemId item = candidate_item(ex, i);
    INFO("example " << i << " at " << ex.ts[i] << ", item " << item);
    // Inside the period: the events before the example; after it: all of the period.
    const Counts c = count(item, std::min(ex.ts[i], period_end));
    (ex.ts[i] < period_end ? inside : after) += 1;
    const float* num = &ex.candidate_numeric[i * nin];
    CHECK(num[ctr_col] == Approx(logit((c.clicks + 20 * g_ctr) / (c.views + 20))).margin(1e-5));
    CHECK(num[cvr_col] == Approx(logit((c.purchases + 20 * g_cvr) / (c.clicks + 20))).margin(1e-5));
    CHECK(num[dwell_col] == Approx((c.log_dwell + 20 * g_dwell) / (c.dwells + 20)).margin(1e-5));
    const Counts k = count(item, std::min(ex.ts[i], period_end), true);
    CHECK(num[cat_ctr_col] == Approx(logit((k.clicks + 20 * g_ctr) / (k.views + 20))).margin(1e-5));
    CHECK(num[cat_dwell_col] ==
          Approx((k.log_dwell + 20 * g_dwell) / (k.dwells + 20)).margin(1e-5));
  }
  CHECK(inside > 10);
  CHECK(after > 2);

  // After the period (as at serving time): the whole period's counts.
  const std::vector<Event> late_log{{"late", item_of(3), EventType::view, std::nullopt, kT}};
  const DeepRankerExamples late = ranker.build_examples(late_log, {}, all_examples(), nullptr);
  const Counts c = count(item_of(3), period_end);
  CHECK(late.candidate_numeric[ctr_col] ==
        Approx(logit((c.clicks + 20 * g_ctr) / (c.views + 20))).margin(1e-5));
}

TEST_CASE("DeepFineRanker samples negatives for a purchases-only log", "[deep_fine]") {
  const DeepFineRanker& ranker = shared_ranker();
  std::vector<Event> log;
  std::vector<std::vector<ItemId>> bought(3);
  for (std::size_t u = 0; u < 3; ++u) {
    for (std::size_t p = 0; p < 3; ++p) {
      const ItemId item = item_of(u * 7 + p * 3);
      bought[u].push_back(item);
      log.push_back({"b" + std::to_string(u), item, EventType::purchase, std::nullopt,
                     kT + static_cast<std::int64_t>(u * 1000 + p * 100)});
    }
  }
  DeepExampleConfig config = all_examples();
  config.sampled_negatives = 5;
  const DeepRankerExamples ex = ranker.build_examples(log, {}, config, nullptr);
  REQUIRE(ex.candidates == 54);  // nine purchases, each with five negatives
  std::size_t positives = 0;
  for (std::size_t i = 0; i < ex.candidates; ++i) {
    const auto offset = ex.ts[i] - kT;
    const auto u = static_cast<std::size_t>(offset / 1000);
    const ItemId positive = bought[u][static_cast<std::size_t>(offset % 1000) / 100];
    const ItemId item = candidate_item(ex, i);
    if (ex.labels[i * 3] == 1.0F) {
      ++positives;
      CHECK(item == positive);
      CHECK(ex.labels[i * 3 + 1] == 1.0F);  // the purchase itself: clicked and converted
      CHECK(std::isnan(ex.labels[i * 3 + 2]));
    } else {
      CHECK(ex.labels[i * 3] == 0.0F);
      CHECK(ex.labels[i * 3 + 1] == 0.0F);
      CHECK(std::isnan(ex.labels[i * 3 + 2]));
      // Never an item the user interacted with, at any time.
      CHECK(std::find(bought[u].begin(), bought[u].end(), item) == bought[u].end());
    }
  }
  CHECK(positives == 9);
  // The negatives of one event are distinct.
  for (std::size_t i = 0; i < ex.candidates; i += 6) {
    std::vector<ItemId> items;
    for (std::size_t j = i; j < i + 6; ++j) items.push_back(candidate_item(ex, j));
    std::sort(items.begin(), items.end());
    CHECK(std::adjacent_find(items.begin(), items.end()) == items.end());
  }

  // Seeded: the same seed draws the same negatives, another seed others.
  const DeepRankerExamples again = ranker.build_examples(log, {}, config, nullptr);
  CHECK(again.candidate_item == ex.candidate_item);
  CHECK(again.labels.size() == ex.labels.size());
  config.seed += 1;
  const DeepRankerExamples other = ranker.build_examples(log, {}, config, nullptr);
  REQUIRE(other.candidates == ex.candidates);
  CHECK(other.candidate_item != ex.candidate_item);
}

TEST_CASE("DeepFineRanker serves what it trained on", "[deep_fine]") {
  const DeepFineRanker& ranker = shared_ranker();
  CHECK(ranker.name() == "deep (mmoe)");
  const std::size_t tasks = ranker.objectives().size();
  const std::vector<Event> log = hand_log();
  UserContext user;
  user.profile = hand_user();
  user.history = history_of(log, "h1");
  user.now_ts = kT + 40000;

  SECTION("shape and id errors") {
    const std::vector<Candidate> candidates{{100, 0.1F}, {101, 0.2F}};
    std::vector<float> out(2 * tasks);
    CHECK_THROWS_WITH(ranker.score(user, candidates, MatrixView<float>(out.data(), 1, tasks)),
                      Contains("expected 2 x 3"));
    CHECK_THROWS_WITH(ranker.score(user, candidates, MatrixView<float>(out.data(), 2, tasks - 1)),
                      Contains("expected 2 x 3"));
    const std::vector<Candidate> unknown{{100, 0.1F}, {999, 0.2F}};
    CHECK_THROWS_AS(ranker.score(user, unknown, MatrixView<float>(out.data(), 2, tasks)),
                    funnel::Error);
    CHECK_THROWS_WITH(ranker.score(user, unknown, MatrixView<float>(out.data(), 2, tasks)),
                      Contains("999"));
    std::vector<float> none;
    CHECK_NOTHROW(ranker.score(user, {}, MatrixView<float>(none.data(), 0, tasks)));
  }

  SECTION("scores are probabilities and seconds; OOV values are counted") {
    std::vector<Candidate> candidates;
    for (std::size_t k = 0; k <= kPriced; ++k) candidates.push_back({item_of(k), 0.1F});
    std::vector<float> out(candidates.size() * tasks);
    ranker.score(user, candidates, MatrixView<float>(out.data(), candidates.size(), tasks));
    for (std::size_t i = 0; i < candidates.size(); ++i) {
      CHECK(out[i * tasks] >= 0.0F);
      CHECK(out[i * tasks] <= 1.0F);
      CHECK(out[i * tasks + 1] >= 0.0F);
      CHECK(out[i * tasks + 1] <= 1.0F);
      CHECK(out[i * tasks + 2] >= 0.0F);
      CHECK(std::isfinite(out[i * tasks + 2]));
    }

    // No age, an unseen gender, no location: three OOV values; the
    // mystery item misses category, brand and price band: three more.
    UserContext stranger;
    stranger.profile.id = "s";
    stranger.profile.gender = "x-unseen";
    stranger.now_ts = kT;
    const funnel::DeepFineRankerStats before = ranker.stats();
    const std::vector<Candidate> two{{100, 0.0F}, {kMystery, 0.0F}};
    std::vector<float> scores(2 * tasks);
    ranker.score(stranger, two, MatrixView<float>(scores.data(), 2, tasks));
    const funnel::DeepFineRankerStats after = ranker.stats();
    CHECK(after.requests - before.requests == 1);
    CHECK(after.candidates - before.candidates == 2);
    CHECK(after.out_of_vocabulary - before.out_of_vocabulary == 6);
  }

  SECTION("score() equals the network on build_examples()'s rows") {
    const DeepRankerExamples ex = ranker.build_examples(log, hand_users(), all_examples(), nullptr);
    std::vector<float> outputs(ex.candidates * tasks);
    funnel::DeepRankerBatchStorage storage;
    ranker.model().forward(ex.gather_all(storage),
                           MatrixView<float>(outputs.data(), ex.candidates, tasks));
    const funnel::DeepRankerConfig& config = ranker.model().config();
    const std::size_t nin = config.item_numeric.size();
    const std::size_t coarse_col = column(config.item_numeric, "coarse_score");
    for (std::size_t i = 0; i < ex.candidates; ++i) {
      INFO("example " << i);
      UserContext request = user;  // the whole log: score() must ignore what is not before now
      request.now_ts = ex.ts[i];
      const std::vector<Candidate> candidate{
          {candidate_item(ex, i), ex.candidate_numeric[i * nin + coarse_col]}};
      std::vector<float> scores(tasks);
      ranker.score(request, candidate, MatrixView<float>(scores.data(), 1, tasks));
      CHECK(scores[0] == Approx(outputs[i * tasks]).margin(1e-5));
      CHECK(scores[1] == Approx(outputs[i * tasks + 1]).margin(1e-5));
      CHECK(scores[2] ==
            Approx(std::expm1(std::max(0.0F, outputs[i * tasks + 2]))).epsilon(1e-4).margin(1e-5));
    }
  }

  SECTION("save and load give identical scores; damaged features.json is an error") {
    const funnel::testing::TempDir dir;
    ranker.save(dir.path());
    const std::unique_ptr<DeepFineRanker> loaded = DeepFineRanker::load(dir.path(), test_catalog());
    CHECK(loaded->name() == ranker.name());
    CHECK(loaded->features().item_numeric == ranker.features().item_numeric);
    std::vector<Candidate> candidates;
    for (std::size_t k = 0; k <= kPriced; k += 3)
      candidates.push_back({item_of(k), 0.05F * static_cast<float>(k)});
    std::vector<float> a(candidates.size() * tasks);
    std::vector<float> b(candidates.size() * tasks);
    ranker.score(user, candidates, MatrixView<float>(a.data(), candidates.size(), tasks));
    loaded->score(user, candidates, MatrixView<float>(b.data(), candidates.size(), tasks));
    CHECK(a == b);
    // Training-period popularity survives the round trip.
    const DeepRankerExamples e1 = ranker.build_examples(log, hand_users(), all_examples(), nullptr);
    const DeepRankerExamples e2 =
        loaded->build_examples(log, hand_users(), all_examples(), nullptr);
    CHECK(e1.candidate_numeric == e2.candidate_numeric);

    const std::filesystem::path features = dir / "features.json";
    const std::string original = funnel::testing::read_bytes(features);
    const auto rewrite = [&](const auto& edit) {
      nlohmann::json doc = nlohmann::json::parse(original);
      edit(doc);
      doc.erase("checksum");
      doc["checksum"] = funnel::detail::to_hex(funnel::detail::checksum64(doc.dump()));
      funnel::testing::write_bytes(features, doc.dump(1));
    };

    // A changed value without a matching checksum.
    nlohmann::json doc = nlohmann::json::parse(original);
    doc["features"]["min_count"] = 2;
    funnel::testing::write_bytes(features, doc.dump(1));
    CHECK_THROWS_WITH(DeepFineRanker::load(dir.path(), test_catalog()),
                      Contains("features.json") && Contains("checksum"));
    // An unknown feature (checksum fixed, so the name check speaks).
    rewrite([](nlohmann::json& d) { d["features"]["item_numeric"][1] = "log_colour"; });
    CHECK_THROWS_WITH(DeepFineRanker::load(dir.path(), test_catalog()), Contains("log_colour"));
    // A vocabulary that is not the model's.
    rewrite([](nlohmann::json& d) {
      d["vocab_sizes"]["item_categorical"][0] =
          d["vocab_sizes"]["item_categorical"][0].get<int>() + 1;
    });
    CHECK_THROWS_WITH(DeepFineRanker::load(dir.path(), test_catalog()),
                      Contains("vocab_sizes.item_categorical[0]") && Contains("category"));
    // A feature list that is not the model's.
    rewrite([](nlohmann::json& d) {
      d["features"]["user_numeric"] = {"tenure", "log_history_events"};
    });
    CHECK_THROWS_WITH(DeepFineRanker::load(dir.path(), test_catalog()),
                      Contains("features.user_numeric[0]"));
    // Version 2's per-item counts: wrong length, negative, unknown version,
    // and a version 1 file (no rate counts) that lists rate priors.
    rewrite([](nlohmann::json& d) { d["popularity"]["clicks"].erase(0); });
    CHECK_THROWS_WITH(DeepFineRanker::load(dir.path(), test_catalog()),
                      Contains("popularity.clicks") && Contains("values for"));
    rewrite([](nlohmann::json& d) { d["popularity"]["views"][0] = -1.0; });
    CHECK_THROWS_WITH(DeepFineRanker::load(dir.path(), test_catalog()),
                      Contains("popularity.views[0]") && Contains(">= 0"));
    rewrite([](nlohmann::json& d) { d["version"] = 3; });
    CHECK_THROWS_WITH(DeepFineRanker::load(dir.path(), test_catalog()),
                      Contains("version") && Contains("unsupported"));
    rewrite([](nlohmann::json& d) {
      d["version"] = 1;
      d.erase("counted_until_ts");
      for (const char* key : {"views", "clicks", "purchases", "dwells", "log_dwell_sum"}) {
        d["popularity"].erase(key);
      }
    });
    CHECK_THROWS_WITH(DeepFineRanker::load(dir.path(), test_catalog()),
                      Contains("version 1") && Contains("rate prior"));
    // Malformed JSON.
    funnel::testing::write_bytes(features, original.substr(0, original.size() / 2));
    CHECK_THROWS_WITH(DeepFineRanker::load(dir.path(), test_catalog()), Contains("features.json"));
    // The intact file loads again; a catalogue with other vectors does not.
    funnel::testing::write_bytes(features, original);
    CHECK_NOTHROW(DeepFineRanker::load(dir.path(), test_catalog()));
    auto narrow = std::make_shared<Catalog>();
    for (const funnel::Item& item : test_catalog()->items()) narrow->add(item);
    narrow->set_vectors(funnel::Matrix<float>(narrow->size(), kDim / 2, 0.5F));
    CHECK_THROWS_AS(DeepFineRanker::load(dir.path(), narrow), funnel::Error);
  }
}

TEST_CASE("DeepFineRanker loads version 1 features.json (before the rate counts)", "[deep_fine]") {
  // A ranker without rate priors, written as version 1 wrote it: event
  // counts only, no counted_until_ts. It loads and scores as before.
  DeepFineRankerTrainConfig config = small_config();
  config.features.item_numeric = {"coarse_score", "log_price", "log_popularity"};
  config.train.max_epochs = 1;
  const auto ranker =
      DeepFineRanker::train(test_catalog(), training_log(), synthetic_users(kUsers), config);
  const funnel::testing::TempDir dir;
  ranker->save(dir.path());
  const std::filesystem::path features = dir / "features.json";
  nlohmann::json doc = nlohmann::json::parse(funnel::testing::read_bytes(features));
  doc["version"] = 1;
  doc.erase("counted_until_ts");
  for (const char* key : {"views", "clicks", "purchases", "dwells", "log_dwell_sum"}) {
    doc["popularity"].erase(key);
  }
  doc.erase("checksum");
  doc["checksum"] = funnel::detail::to_hex(funnel::detail::checksum64(doc.dump()));
  funnel::testing::write_bytes(features, doc.dump(1));
  const std::unique_ptr<DeepFineRanker> loaded = DeepFineRanker::load(dir.path(), test_catalog());

  UserContext user;
  user.history = history_of(hand_log(), "h1");
  user.now_ts = kT + 40000;
  std::vector<Candidate> candidates;
  for (std::size_t k = 0; k <= kPriced; k += 5) candidates.push_back({item_of(k), 0.1F});
  const std::size_t tasks = ranker->objectives().size();
  std::vector<float> a(candidates.size() * tasks);
  std::vector<float> b(candidates.size() * tasks);
  ranker->score(user, candidates, MatrixView<float>(a.data(), candidates.size(), tasks));
  loaded->score(user, candidates, MatrixView<float>(b.data(), candidates.size(), tasks));
  CHECK(a == b);
}

TEST_CASE("DeepFineRanker learns category affinity", "[deep_fine]") {
  // 40 users, 8 sessions of 8 views; the last two sessions are held out.
  // Clicks follow the favourite category (p 0.6 vs 0.03, half the feed is
  // favourite), so the Bayes ctr AUC is about 0.83: positives are 95%
  // favourite items, negatives 29%. With ~600 held-out views (~130 clicks)
  // the AUC's standard error is about 0.025, so 0.65 is more than six
  // standard errors above chance and leaves room below the Bayes bound.
  // (The run is seeded, so the numbers are the same every time: about 0.75
  // for ctr and 0.76 for cvr.)
  constexpr std::size_t kLearnUsers = 40;
  const std::vector<UserProfile> users = synthetic_users(kLearnUsers);
  const std::vector<Event> train_log = synthetic_log(kLearnUsers, 0, 6, 8, 21);
  std::vector<Event> all = train_log;
  const std::vector<Event> later = synthetic_log(kLearnUsers, 6, 2, 8, 22);
  all.insert(all.end(), later.begin(), later.end());

  DeepFineRankerTrainConfig config = small_config();
  config.model.expert_hidden = {16};
  config.train.max_epochs = 8;
  config.train.patience = 3;
  funnel::DeepTrainReport report;
  const auto ranker = DeepFineRanker::train(test_catalog(), train_log, users, config, &report);
  CHECK(report.epochs >= 1);

  const DeepRankerExamples ex = ranker->build_examples(all, users, all_examples(), nullptr);
  const std::size_t tasks = ranker->objectives().size();
  std::vector<float> outputs(ex.candidates * tasks);
  funnel::DeepRankerBatchStorage storage;
  ranker->model().forward(ex.gather_all(storage),
                          MatrixView<float>(outputs.data(), ex.candidates, tasks));
  const std::int64_t cut = kTrainStart + 6 * kDay;
  std::vector<float> scores;
  std::vector<int> labels;
  for (std::size_t i = 0; i < ex.candidates; ++i) {
    if (ex.ts[i] < cut) continue;
    scores.push_back(outputs[i * tasks]);
    labels.push_back(ex.labels[i * tasks] > 0.5F ? 1 : 0);
  }
  REQUIRE(scores.size() > 500);
  const double ctr_auc = funnel::auc(scores, labels);
  INFO("held-out ctr AUC " << ctr_auc << ", training validation AUC "
                           << report.best_validation_auc);
  CHECK(ctr_auc > 0.65);

  // Purchases follow price (0.5 for the cheaper half, 0.05 for the rest):
  // the Bayes AUC of P(purchase | click) is about 0.78 (91% of purchases vs
  // 34% of unconverted clicks are cheap). About 260 held-out clicks with ~70
  // purchases put the AUC's standard error near 0.035, so 0.62 is over three
  // standard errors above chance.
  std::vector<float> cvr_scores;
  std::vector<int> purchased;
  for (std::size_t i = 0; i < ex.candidates; ++i) {
    if (ex.ts[i] < cut || ex.labels[i * tasks] < 0.5F) continue;
    cvr_scores.push_back(outputs[i * tasks + 1]);
    purchased.push_back(ex.labels[i * tasks + 1] > 0.5F ? 1 : 0);
  }
  const double cvr_auc = funnel::auc(cvr_scores, purchased);
  INFO("held-out cvr AUC " << cvr_auc << " on " << cvr_scores.size() << " clicks");
  CHECK(cvr_auc > 0.62);
}

TEST_CASE("DeepFineRanker scores concurrently", "[deep_fine][concurrency]") {
  const DeepFineRanker& ranker = shared_ranker();
  const std::size_t tasks = ranker.objectives().size();
  const std::vector<UserProfile> profiles = synthetic_users(kUsers);
  constexpr std::size_t kRequests = 16;
  std::vector<UserContext> requests(kRequests);
  std::vector<std::vector<Candidate>> candidates(kRequests);
  for (std::size_t r = 0; r < kRequests; ++r) {
    requests[r].profile = profiles[r % kUsers];
    requests[r].history = history_of(training_log(), profiles[r % kUsers].id);
    requests[r].now_ts = kTrainStart + static_cast<std::int64_t>(r % 4 + 1) * kDay;
    for (std::size_t k = r % 3; k <= kPriced; k += 2 + r % 3) {
      candidates[r].push_back({item_of(k), 0.01F * static_cast<float>(k)});
    }
  }
  std::vector<std::vector<float>> expected(kRequests);
  for (std::size_t r = 0; r < kRequests; ++r) {
    expected[r].resize(candidates[r].size() * tasks);
    ranker.score(requests[r], candidates[r],
                 MatrixView<float>(expected[r].data(), candidates[r].size(), tasks));
  }
  constexpr std::size_t kThreads = 4;
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (std::size_t rep = 0; rep < 3; ++rep) {
        for (std::size_t i = 0; i < kRequests; ++i) {
          const std::size_t r = (i + t * 5) % kRequests;
          std::vector<float> out(candidates[r].size() * tasks);
          ranker.score(requests[r], candidates[r],
                       MatrixView<float>(out.data(), candidates[r].size(), tasks));
          if (out != expected[r]) ++mismatches[t];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (std::size_t t = 0; t < kThreads; ++t) CHECK(mismatches[t] == 0);
}
