// SPDX-License-Identifier: Apache-2.0
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/error.hpp"
#include "funnel/template_reason_generator.hpp"
#include "internal/utf8.hpp"
#include "test_util.hpp"

namespace {

using funnel::Catalog;
using funnel::Error;
using funnel::ErrorCode;
using funnel::Event;
using funnel::EventType;
using funnel::Evidence;
using funnel::EvidenceKind;
using funnel::HistoryEvent;
using funnel::Item;
using funnel::ItemId;
using funnel::Popularity;
using funnel::Reason;
using funnel::ReasonInput;
using funnel::TemplateReasonConfig;
using funnel::TemplateReasonGenerator;
using funnel::UserContext;
using funnel::UserProfile;
using funnel::testing::error_of;

constexpr std::int64_t kDay = 86400;
constexpr std::int64_t kNow = 1'700'000'000;

struct ItemSpec {
  ItemId id = funnel::kNoItem;
  std::string title;
  std::string category;
  std::string brand;
  std::optional<double> price;
  std::vector<float> vec;
};

std::shared_ptr<const Catalog> make_catalog(const std::vector<ItemSpec>& specs) {
  auto catalog = std::make_shared<Catalog>();
  const std::size_t dim = specs.empty() ? 0 : specs.front().vec.size();
  std::vector<float> data;
  for (const auto& s : specs) {
    Item item;
    item.id = s.id;
    item.title = s.title;
    item.category = s.category;
    item.brand = s.brand;
    item.price = s.price;
    catalog->add(item);
    REQUIRE(s.vec.size() == dim);
    data.insert(data.end(), s.vec.begin(), s.vec.end());
  }
  if (dim > 0) catalog->set_vectors(funnel::Matrix<float>(specs.size(), dim, std::move(data)));
  return catalog;
}

// A small hand-made shop with unit vectors whose inner products are known:
// <1,2> = 0.8, <2,3> = 0.6, <1,3> = 0, <4,.> = 0 except <4,7> = 0.8.
std::shared_ptr<const Catalog> small_shop() {
  return make_catalog({
      {1, "Trail running shoes", "shoes", "Swift", 80.0, {1.0F, 0.0F, 0.0F, 0.0F}},
      {2, "Road running shoes", "shoes", "Swift", 90.0, {0.8F, 0.6F, 0.0F, 0.0F}},
      {3, "Rain jacket", "outdoor", "Peak", 120.0, {0.0F, 1.0F, 0.0F, 0.0F}},
      {4, "Wool socks", "socks", "Peak", 10.0, {0.0F, 0.0F, 1.0F, 0.0F}},
      {5, "Coffee grinder", "kitchen", "Brew", 50.0, {0.0F, 0.0F, 0.0F, 1.0F}},
      {6, "Espresso cups", "kitchen", "Brew", 1000.0, {0.0F, 0.0F, 0.0F, 1.0F}},
      {7, "Hiking socks", "socks", "Stride", 12.0, {0.0F, 0.0F, 0.8F, 0.6F}},
      {8, "Hiking boots", "shoes", "Stride", 900.0, {0.0F, 0.0F, 0.0F, 1.0F}},
      {9, "Peak cap", "hats", "Peak", 8.0, {0.0F, 0.0F, 0.0F, 1.0F}},
      {10, "Trail gaiters", "", "", 1200.0, {0.0F, 0.0F, 0.0F, 1.0F}},
      {11, "Mystery box", "boxes", "Brew", std::nullopt, {0.0F, 0.0F, 0.0F, 1.0F}},
      {12, "Gift mug", "kitchen", "Brew", 100.0, {0.0F, 0.0F, 0.0F, 1.0F}},
  });
}

UserContext make_user(std::vector<HistoryEvent> history, std::string locale = "en",
                      std::string location = "") {
  UserContext user;
  user.profile.id = "u";
  user.profile.location = std::move(location);
  user.history = std::move(history);
  user.now_ts = kNow;
  user.locale = std::move(locale);
  return user;
}

HistoryEvent event(ItemId item, EventType type, std::int64_t ts) {
  HistoryEvent e;
  e.item = item;
  e.type = type;
  e.ts = ts;
  return e;
}

std::vector<ReasonInput> inputs(const std::vector<ItemId>& ids) {
  std::vector<ReasonInput> in(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) in[i].item = ids[i];
  return in;
}

std::vector<Reason> explain(const TemplateReasonGenerator& gen, const UserContext& user,
                            const std::vector<ReasonInput>& in) {
  std::vector<Reason> out(in.size());
  gen.explain(user, in, out);
  return out;
}

const Evidence* find_kind(const std::vector<Evidence>& list, EvidenceKind kind) {
  for (const auto& e : list) {
    if (e.kind == kind) return &e;
  }
  return nullptr;
}

bool has_kind(const std::vector<Evidence>& list, EvidenceKind kind) {
  return find_kind(list, kind) != nullptr;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("EvidenceKind names are stable", "[reasons]") {
  CHECK(funnel::to_string(EvidenceKind::none) == "none");
  CHECK(funnel::to_string(EvidenceKind::similar_to_history) == "similar_to_history");
  CHECK(funnel::to_string(EvidenceKind::category_affinity) == "category_affinity");
  CHECK(funnel::to_string(EvidenceKind::brand_affinity) == "brand_affinity");
  CHECK(funnel::to_string(EvidenceKind::price_band) == "price_band");
  CHECK(funnel::to_string(EvidenceKind::popular_in_location) == "popular_in_location");
  CHECK(funnel::to_string(EvidenceKind::objective) == "objective");
}

TEST_CASE("similar_to_history names the most similar history item at the threshold", "[reasons]") {
  const auto catalog = small_shop();
  // Candidate 2: <2,1> = 0.8 (purchase 8 days ago), <2,3> = 0.6 (click 3 days
  // ago); the candidate itself (viewed an hour ago) must not count.
  const auto user = make_user({event(1, EventType::purchase, kNow - 8 * kDay),
                               event(3, EventType::click, kNow - 3 * kDay),
                               event(2, EventType::view, kNow - 3600)});
  const auto in = inputs({2});

  SECTION("similarity equal to min_similarity fires, with the event's facts") {
    TemplateReasonConfig config;
    config.min_similarity = 0.8F;
    const TemplateReasonGenerator gen(catalog, nullptr, config);
    const auto ev = gen.collect_evidence(user, in);
    REQUIRE(ev.size() == 1);
    REQUIRE(!ev[0].empty());
    const Evidence& e = ev[0].front();
    CHECK(e.kind == EvidenceKind::similar_to_history);
    CHECK(e.history_item == 1);
    CHECK(e.history_type == EventType::purchase);
    CHECK(e.history_ts == kNow - 8 * kDay);
    CHECK(e.value == Approx(0.8).epsilon(1e-6));

    const auto en = explain(gen, user, in);
    CHECK(en[0].text == "Similar to Trail running shoes you bought last week");
    CHECK(en[0].locale == "en");
    CHECK(en[0].evidence.kind == EvidenceKind::similar_to_history);
    CHECK(en[0].evidence.history_item == 1);

    auto zh_user = user;
    zh_user.locale = "zh-CN";
    const auto zh = explain(gen, zh_user, in);
    CHECK(zh[0].text == "因为你上周购买了「Trail running shoes」");
    CHECK(zh[0].locale == "zh-CN");
  }
  SECTION("a lower threshold still names the most similar item, not any similar one") {
    TemplateReasonConfig config;
    config.min_similarity = 0.5F;
    const TemplateReasonGenerator gen(catalog, nullptr, config);
    const auto ev = gen.collect_evidence(user, in);
    const Evidence* e = find_kind(ev[0], EvidenceKind::similar_to_history);
    REQUIRE(e != nullptr);
    CHECK(e->history_item == 1);
  }
  SECTION("just above the best similarity does not fire") {
    TemplateReasonConfig config;
    config.min_similarity = std::nextafter(0.8F, 1.0F);
    const TemplateReasonGenerator gen(catalog, nullptr, config);
    const auto ev = gen.collect_evidence(user, in);
    CHECK_FALSE(has_kind(ev[0], EvidenceKind::similar_to_history));
    const auto en = explain(gen, user, in);
    CHECK_FALSE(contains(en[0].text, "Similar to"));
    CHECK_FALSE(contains(en[0].text, "bought"));
  }
  SECTION("a history holding only the candidate itself gives no similarity") {
    const TemplateReasonGenerator gen(catalog, nullptr);
    const auto only_self = make_user({event(2, EventType::purchase, kNow - kDay)});
    CHECK_FALSE(has_kind(gen.collect_evidence(only_self, in)[0], EvidenceKind::similar_to_history));
  }
}

TEST_CASE("time phrases and verbs say exactly what happened and when", "[reasons]") {
  const auto catalog = small_shop();
  const TemplateReasonGenerator gen(catalog, nullptr);
  const auto in = inputs({2});
  struct When {
    std::int64_t age;
    const char* en;
    const char* zh;
  };
  const std::array<When, 12> whens = {{
      {0, "today", "今天"},
      {kDay - 1, "today", "今天"},
      {kDay, "yesterday", "昨天"},
      {2 * kDay - 1, "yesterday", "昨天"},
      {2 * kDay, "a few days ago", "前几天"},
      {7 * kDay - 1, "a few days ago", "前几天"},
      {7 * kDay, "last week", "上周"},
      {14 * kDay - 1, "last week", "上周"},
      {14 * kDay, "recently", "最近"},
      {30 * kDay - 1, "recently", "最近"},
      {30 * kDay, "a while ago", "之前"},
      {400 * kDay, "a while ago", "之前"},
  }};
  struct Verb {
    EventType type;
    const char* en;
    const char* zh;
  };
  const std::array<Verb, 4> verbs = {{
      {EventType::view, "viewed", "浏览了"},
      {EventType::click, "clicked", "点击了"},
      {EventType::cart, "added to cart", "加购了"},
      {EventType::purchase, "bought", "购买了"},
  }};
  for (const auto& w : whens) {
    for (const auto& v : verbs) {
      auto user = make_user({event(1, v.type, kNow - w.age)});
      CAPTURE(w.age, funnel::to_string(v.type));
      CHECK(explain(gen, user, in)[0].text ==
            std::string("Similar to Trail running shoes you ") + v.en + " " + w.en);
      user.locale = "zh-CN";
      CHECK(explain(gen, user, in)[0].text ==
            std::string("因为你") + w.zh + v.zh + "「Trail running shoes」");
    }
  }

  SECTION("a future event is never described") {
    const auto user = make_user(
        {event(1, EventType::view, kNow - kDay - 5), event(1, EventType::purchase, kNow + kDay)});
    const auto r = explain(gen, user, in);
    CHECK(r[0].text == "Similar to Trail running shoes you viewed yesterday");
  }
  SECTION("an unset now_ts is the latest history timestamp, as in HistoryProfile") {
    auto user = make_user(
        {event(1, EventType::purchase, kNow - 10 * kDay), event(5, EventType::view, kNow)});
    user.now_ts = 0;
    CHECK(explain(gen, user, in)[0].text == "Similar to Trail running shoes you bought last week");
  }
}

TEST_CASE("category and brand affinity fire exactly at their share thresholds", "[reasons]") {
  const auto catalog = small_shop();
  // Four clicks at now, equal weights: shoes 2/4, outdoor 1/4, socks 1/4;
  // Swift 2/4, Peak 2/4.
  const auto user = make_user({event(1, EventType::click, kNow), event(2, EventType::click, kNow),
                               event(3, EventType::click, kNow), event(4, EventType::click, kNow)});
  const auto in = inputs({8, 9, 6, 10});  // shoes/Stride, hats/Peak, kitchen/Brew, no cat/brand

  SECTION("at the threshold") {
    TemplateReasonConfig config;
    config.min_category_share = 0.5;
    config.min_brand_share = 0.5;
    const TemplateReasonGenerator gen(catalog, nullptr, config);
    const auto ev = gen.collect_evidence(user, in);
    const Evidence* cat = find_kind(ev[0], EvidenceKind::category_affinity);
    REQUIRE(cat != nullptr);
    CHECK(cat->category == "shoes");
    CHECK(cat->value == 0.5);
    CHECK_FALSE(has_kind(ev[0], EvidenceKind::brand_affinity));  // Stride never seen
    const Evidence* brand = find_kind(ev[1], EvidenceKind::brand_affinity);
    REQUIRE(brand != nullptr);
    CHECK(brand->brand == "Peak");
    CHECK(brand->value == 0.5);
    CHECK_FALSE(has_kind(ev[1], EvidenceKind::category_affinity));  // hats never seen
    CHECK(ev[2].empty());
    CHECK(ev[3].empty());

    const auto en = explain(gen, user, in);
    CHECK(en[0].text == "More shoes, a category you often browse");
    CHECK(en[1].text == "From Peak, a brand you often look at");
    auto zh_user = user;
    zh_user.locale = "zh-CN";
    const auto zh = explain(gen, zh_user, in);
    CHECK(zh[0].text == "你常逛的shoes好物");
    CHECK(zh[1].text == "来自你常看的品牌Peak");
  }
  SECTION("just above the threshold") {
    TemplateReasonConfig config;
    config.min_category_share = std::nextafter(0.5, 1.0);
    config.min_brand_share = std::nextafter(0.5, 1.0);
    const TemplateReasonGenerator gen(catalog, nullptr, config);
    const auto ev = gen.collect_evidence(user, in);
    CHECK_FALSE(has_kind(ev[0], EvidenceKind::category_affinity));
    CHECK_FALSE(has_kind(ev[1], EvidenceKind::brand_affinity));
  }
  SECTION("a zero threshold never claims a category or brand the user never touched") {
    TemplateReasonConfig config;
    config.min_category_share = 0.0;
    config.min_brand_share = 0.0;
    const TemplateReasonGenerator gen(catalog, nullptr, config);
    const auto ev = gen.collect_evidence(user, in);
    CHECK_FALSE(has_kind(ev[2], EvidenceKind::category_affinity));
    CHECK_FALSE(has_kind(ev[2], EvidenceKind::brand_affinity));
    CHECK(ev[3].empty());
  }
}

TEST_CASE("price_band holds within one standard deviation of the mean log price", "[reasons]") {
  const auto catalog = small_shop();
  // Purchases at 10 and 1000: mean log price = log 100, std = log 10, so the
  // band is [10, 1000].
  const auto user =
      make_user({event(4, EventType::purchase, kNow), event(6, EventType::purchase, kNow),
                 event(5, EventType::view, kNow)});  // views do not count here
  const TemplateReasonGenerator gen(catalog, nullptr);
  // 7: 12 (in), 9: 8 (out), 8: 900 (in), 10: 1200 (out), 11: no price, 12: 100 (centre)
  const auto in = inputs({7, 9, 8, 10, 11, 12});
  const auto ev = gen.collect_evidence(user, in);
  const Evidence* p12 = find_kind(ev[0], EvidenceKind::price_band);
  REQUIRE(p12 != nullptr);
  CHECK(p12->value == Approx(std::log(100.0 / 12.0) / std::log(10.0)));
  CHECK_FALSE(has_kind(ev[1], EvidenceKind::price_band));
  CHECK(has_kind(ev[2], EvidenceKind::price_band));
  CHECK_FALSE(has_kind(ev[3], EvidenceKind::price_band));
  CHECK_FALSE(has_kind(ev[4], EvidenceKind::price_band));
  const Evidence* p100 = find_kind(ev[5], EvidenceKind::price_band);
  REQUIRE(p100 != nullptr);
  CHECK(p100->value == Approx(0.0).margin(1e-9));

  SECTION("no priced history, no price band") {
    const auto catalog2 = make_catalog({{1, "Plain box", "boxes", "", std::nullopt, {1.0F}},
                                        {2, "Priced box", "boxes", "", 10.0, {1.0F}}});
    const TemplateReasonGenerator gen2(catalog2, nullptr);
    const auto user2 = make_user({event(1, EventType::purchase, kNow)});
    CHECK_FALSE(has_kind(gen2.collect_evidence(user2, inputs({2}))[0], EvidenceKind::price_band));
  }
  SECTION("the text") {
    // Purchases at 10 (socks) and 120 (outdoor); 12 (kitchen, 100) is in the
    // band and shares nothing else with them.
    const auto user2 =
        make_user({event(4, EventType::purchase, kNow), event(3, EventType::purchase, kNow)});
    auto r = explain(gen, user2, inputs({12}));
    REQUIRE(r[0].evidence.kind == EvidenceKind::price_band);
    CHECK(r[0].text == "In the price range you usually go for");
    r = explain(gen, make_user(user2.history, "zh-CN"), inputs({12}));
    CHECK(r[0].text == "符合你常选的价位");
  }
}

namespace {

// Shanghai: kitchen 16, shoes 12, outdoor 8, socks 5 (ranks 1-4);
// Beijing: socks 4 (rank 1).
std::shared_ptr<const Popularity> shop_popularity(const Catalog& catalog) {
  std::vector<UserProfile> users(3);
  users[0].id = "s1";
  users[0].location = "Shanghai";
  users[1].id = "s2";
  users[1].location = "Shanghai";
  users[2].id = "b1";
  users[2].location = "Beijing";
  std::vector<Event> events;
  auto add = [&](const char* user, ItemId item, EventType type, int times) {
    for (int i = 0; i < times; ++i) {
      Event e;
      e.user = user;
      e.item = item;
      e.type = type;
      e.ts = kNow - 100;
      events.push_back(e);
    }
  };
  add("s1", 5, EventType::purchase, 2);  // kitchen
  add("s2", 6, EventType::purchase, 2);  // kitchen
  add("s1", 1, EventType::purchase, 3);  // shoes
  add("s2", 3, EventType::purchase, 2);  // outdoor
  add("s1", 4, EventType::purchase, 1);  // socks
  add("s2", 7, EventType::click, 1);     // socks
  add("b1", 4, EventType::purchase, 1);  // socks
  return std::make_shared<const Popularity>(Popularity::from_events(catalog, events, users));
}

}  // namespace

TEST_CASE("popular_in_location only for categories ranked within max_location_rank", "[reasons]") {
  const auto catalog = small_shop();
  const auto popularity = shop_popularity(*catalog);
  const auto in = inputs({5, 1, 3, 4});  // kitchen 1st, shoes 2nd, outdoor 3rd, socks 4th

  SECTION("rank 3 is in, rank 4 is out") {
    const TemplateReasonGenerator gen(catalog, popularity);  // max_location_rank = 3
    const auto user = make_user({}, "en", "Shanghai");
    const auto ev = gen.collect_evidence(user, in);
    for (std::size_t i = 0; i < 3; ++i) {
      const Evidence* e = find_kind(ev[i], EvidenceKind::popular_in_location);
      REQUIRE(e != nullptr);
      CHECK(e->location == "Shanghai");
      CHECK(e->category == catalog->at(in[i].item).category);
      CHECK(e->value == static_cast<double>(i + 1));
    }
    CHECK_FALSE(has_kind(ev[3], EvidenceKind::popular_in_location));
    const auto r = explain(gen, user, in);
    CHECK(r[2].text == "Popular in outdoor in Shanghai");
    CHECK_FALSE(contains(r[3].text, "Popular in"));
    CHECK_FALSE(contains(r[3].text, "Shanghai"));
    auto zh_user = user;
    zh_user.locale = "zh-CN";
    const auto zh = explain(gen, zh_user, in);
    CHECK(zh[2].text == "Shanghai热门的outdoor");
    CHECK_FALSE(contains(zh[3].text, "热门"));
  }
  SECTION("a wider max_location_rank admits rank 4") {
    TemplateReasonConfig config;
    config.max_location_rank = 4;
    const TemplateReasonGenerator gen(catalog, popularity, config);
    const auto ev = gen.collect_evidence(make_user({}, "en", "Shanghai"), in);
    CHECK(has_kind(ev[3], EvidenceKind::popular_in_location));
  }
  SECTION("ranks are per location") {
    const TemplateReasonGenerator gen(catalog, popularity);
    const auto ev = gen.collect_evidence(make_user({}, "en", "Beijing"), in);
    CHECK_FALSE(has_kind(ev[0], EvidenceKind::popular_in_location));  // kitchen unseen there
    const Evidence* socks = find_kind(ev[3], EvidenceKind::popular_in_location);
    REQUIRE(socks != nullptr);
    CHECK(socks->value == 1.0);
    CHECK(socks->location == "Beijing");
  }
  SECTION("no location, an unknown location or no stats: never a location reason") {
    const TemplateReasonGenerator gen(catalog, popularity);
    const TemplateReasonGenerator no_stats(catalog, nullptr);
    for (const auto& ev : {gen.collect_evidence(make_user({}, "en", ""), in),
                           gen.collect_evidence(make_user({}, "en", "Chengdu"), in),
                           no_stats.collect_evidence(make_user({}, "en", "Shanghai"), in)}) {
      for (const auto& list : ev) CHECK_FALSE(has_kind(list, EvidenceKind::popular_in_location));
    }
    for (const auto& r : explain(gen, make_user({}, "en", ""), in)) {
      CHECK_FALSE(contains(r.text, "Popular in"));
    }
  }
}

TEST_CASE("objective evidence: the objective on which the item stands out in its batch",
          "[reasons]") {
  const auto catalog = small_shop();
  const std::vector<std::string> names = {"ctr", "cvr", "dwell"};
  // ctr: all equal (no spread); cvr: [.1 .1 .4] mean .2 std .1414, z3 = 1.414;
  // dwell: [10 12 11] mean 11 std .8165, z2 = 1.2247.
  const std::vector<std::array<float, 3>> scores = {
      {0.5F, 0.1F, 10.0F}, {0.5F, 0.1F, 12.0F}, {0.5F, 0.4F, 11.0F}};
  auto in = inputs({5, 6, 12});
  for (std::size_t i = 0; i < in.size(); ++i) {
    in[i].objective_names = names;
    in[i].objective_scores = scores[i];
  }
  const auto user = make_user({});

  SECTION("min_objective_z = 1") {
    const TemplateReasonGenerator gen(catalog, nullptr);
    const auto ev = gen.collect_evidence(user, in);
    CHECK(ev[0].empty());
    REQUIRE(ev[1].size() == 1);
    CHECK(ev[1][0].kind == EvidenceKind::objective);
    CHECK(ev[1][0].objective == "dwell");
    CHECK(ev[1][0].value == 12.0);
    REQUIRE(ev[2].size() == 1);
    CHECK(ev[2][0].objective == "cvr");
    CHECK(ev[2][0].value == Approx(0.4));
    const auto r = explain(gen, user, in);
    CHECK(r[0].evidence.kind == EvidenceKind::none);
    CHECK(r[0].text == "Recommended for you");
    CHECK(r[1].text == "Picked for you: worth a closer look");
    CHECK(r[2].text == "Picked for you: a likely good buy");
    auto zh_user = user;
    zh_user.locale = "zh-CN";
    const auto zh = explain(gen, zh_user, in);
    CHECK(zh[0].text == "为你推荐");
    CHECK(zh[1].text == "值得你细细看看");
    CHECK(zh[2].text == "很适合你入手");
  }
  SECTION("a higher bar") {
    TemplateReasonConfig config;
    config.min_objective_z = 1.3;
    const TemplateReasonGenerator gen(catalog, nullptr, config);
    const auto ev = gen.collect_evidence(user, in);
    CHECK(ev[1].empty());
    REQUIRE(ev[2].size() == 1);
    config.min_objective_z = 1.5;
    const TemplateReasonGenerator higher(catalog, nullptr, config);
    for (const auto& list : higher.collect_evidence(user, in)) CHECK(list.empty());
  }
  SECTION("one item alone has no batch to stand out from") {
    const TemplateReasonGenerator gen(catalog, nullptr);
    CHECK(gen.collect_evidence(user, std::span(in).subspan(2, 1))[0].empty());
  }
  SECTION("an objective without a template is not used, unless a template file adds it") {
    const std::vector<std::string> gmv = {"gmv"};
    const std::array<float, 1> low = {0.0F};
    const std::array<float, 1> high = {1.0F};
    auto in2 = inputs({5, 6, 12});
    in2[0].objective_names = gmv;
    in2[0].objective_scores = low;
    in2[1].objective_names = gmv;
    in2[1].objective_scores = low;
    in2[2].objective_names = gmv;
    in2[2].objective_scores = high;
    const TemplateReasonGenerator gen(catalog, nullptr);
    for (const auto& list : gen.collect_evidence(user, in2)) CHECK(list.empty());

    funnel::testing::TempDir dir;
    std::string text = funnel::testing::read_bytes(FUNNEL_SOURCE_DIR "/src/templates/reasons.json");
    const std::string anchor = "\"none\": \"Recommended for you\",";
    REQUIRE(contains(text, anchor));
    text.replace(text.find(anchor), anchor.size(),
                 anchor + "\n    \"objective.gmv\": \"A best seller: {title}\",");
    funnel::testing::write_bytes(dir / "t.json", text);
    TemplateReasonConfig config;
    config.templates = dir / "t.json";
    const TemplateReasonGenerator custom(catalog, nullptr, config);
    const auto r = explain(custom, user, in2);
    CHECK(r[2].evidence.kind == EvidenceKind::objective);
    CHECK(r[2].evidence.objective == "gmv");
    CHECK(r[2].text == "A best seller: Gift mug");
    CHECK(r[0].evidence.kind == EvidenceKind::none);
    // zh-CN has no objective.gmv template: no gmv evidence in Chinese.
    auto zh_user = user;
    zh_user.locale = "zh-CN";
    CHECK(explain(custom, zh_user, in2)[2].evidence.kind == EvidenceKind::none);
  }
}

TEST_CASE("priority picks the strongest evidence; variety spreads repeated reasons", "[reasons]") {
  const auto catalog = small_shop();
  const auto popularity = shop_popularity(*catalog);

  SECTION("everything holds: similar, brand, category, location, price, in that order") {
    // 2 is shoes/Swift at 90: similar to 1 (0.8; 3 is 0.6), Swift and shoes
    // shares about 0.52, shoes ranks 2nd in Shanghai, and purchases at 80 and
    // 120 make the band [80, 120].
    const auto user = make_user(
        {event(1, EventType::purchase, kNow - kDay), event(3, EventType::purchase, kNow - kDay),
         event(2, EventType::view, kNow - 100)},
        "en", "Shanghai");
    const TemplateReasonGenerator gen(catalog, popularity);
    const auto ev = gen.collect_evidence(user, inputs({2}));
    std::vector<EvidenceKind> kinds;
    for (const auto& e : ev[0]) kinds.push_back(e.kind);
    const std::vector<EvidenceKind> expected = {
        EvidenceKind::similar_to_history, EvidenceKind::brand_affinity,
        EvidenceKind::category_affinity, EvidenceKind::popular_in_location,
        EvidenceKind::price_band};
    CHECK(kinds == expected);
    CHECK(explain(gen, user, inputs({2}))[0].evidence.kind == EvidenceKind::similar_to_history);
  }

  SECTION("variety") {
    // One click on 1 (shoes); candidates are Stride shoes orthogonal to it
    // with no price: each has category (shoes) and location (shoes 2nd in
    // Shanghai) evidence only.
    std::vector<ItemSpec> specs = {
        {1, "Trail running shoes", "shoes", "Swift", 80.0, {1.0F, 0.0F}}};
    for (ItemId id = 20; id < 25; ++id) {
      specs.push_back({id,
                       "Stride model " + std::to_string(id),
                       "shoes",
                       "Stride",
                       std::nullopt,
                       {0.0F, 1.0F}});
    }
    const auto catalog2 = make_catalog(specs);
    const auto popularity2 = shop_popularity(*small_shop());  // ranks by category name
    const auto user = make_user({event(1, EventType::click, kNow - kDay)}, "en", "Shanghai");
    const auto in = inputs({20, 21, 22, 23, 24});

    TemplateReasonConfig config;
    config.max_same_reason = 2;
    const TemplateReasonGenerator gen(catalog2, popularity2, config);
    const auto r = explain(gen, user, in);
    const std::vector<EvidenceKind> expected = {
        EvidenceKind::category_affinity, EvidenceKind::category_affinity,
        EvidenceKind::popular_in_location, EvidenceKind::popular_in_location,
        EvidenceKind::category_affinity};
    for (std::size_t i = 0; i < r.size(); ++i) {
      CAPTURE(i);
      CHECK(r[i].evidence.kind == expected[i]);
    }
    CHECK(r[2].text == "Popular in shoes in Shanghai");

    config.max_same_reason = 0;
    const TemplateReasonGenerator no_variety(catalog2, popularity2, config);
    for (const auto& reason : explain(no_variety, user, in)) {
      CHECK(reason.evidence.kind == EvidenceKind::category_affinity);
    }
  }
}

TEST_CASE("locale resolution: exact, language prefix, then fallback", "[reasons]") {
  const auto catalog = small_shop();
  const TemplateReasonGenerator gen(catalog, nullptr);
  CHECK(gen.locales() == std::vector<std::string>{"en", "zh-CN"});
  CHECK(gen.resolve_locale("zh-CN") == "zh-CN");
  CHECK(gen.resolve_locale("zh") == "zh-CN");
  CHECK(gen.resolve_locale("zh_cn") == "zh-CN");
  CHECK(gen.resolve_locale("ZH-Hans-CN") == "zh-CN");
  CHECK(gen.resolve_locale("en") == "en");
  CHECK(gen.resolve_locale("en-GB") == "en");
  CHECK(gen.resolve_locale("fr") == "en");
  CHECK(gen.resolve_locale("") == "en");

  const auto in = inputs({5});
  auto user = make_user({});
  user.locale = "zh";
  auto r = explain(gen, user, in);
  CHECK(r[0].locale == "zh-CN");
  CHECK(r[0].text == "为你推荐");
  user.locale = "fr-FR";
  r = explain(gen, user, in);
  CHECK(r[0].locale == "en");
  CHECK(r[0].text == "Recommended for you");

  TemplateReasonConfig config;
  config.fallback_locale = "zh-CN";
  const TemplateReasonGenerator zh_fallback(catalog, nullptr, config);
  CHECK(zh_fallback.resolve_locale("fr") == "zh-CN");
  CHECK(zh_fallback.resolve_locale("en-US") == "en");

  config.fallback_locale = "de";
  const Error e = error_of([&] { TemplateReasonGenerator bad(catalog, nullptr, config); });
  CHECK(e.code() == ErrorCode::invalid_argument);
  CHECK(contains(e.what(), "fallback_locale"));
  CHECK(contains(e.what(), "'de'"));
}

namespace {

// A complete, valid template file for one locale, as JSON object members.
std::string locale_block(const std::string& locale, const std::map<std::string, std::string>& over,
                         const std::set<std::string>& drop = {}) {
  std::map<std::string, std::string> texts = {
      {"similar_to_history", "Like {history_title} ({verb}, {when})"},
      {"category_affinity", "Your {category}"},
      {"brand_affinity", "Your {brand}"},
      {"price_band", "Your price"},
      {"popular_in_location", "{category} hit in {location}"},
      {"objective.ctr", "ctr pick"},
      {"objective.cvr", "cvr pick"},
      {"objective.dwell", "dwell pick"},
      {"none", "For you: {title}"},
      {"verb.view", "seen"},
      {"verb.click", "opened"},
      {"verb.cart", "carted"},
      {"verb.purchase", "purchased"},
      {"when.today", "t0"},
      {"when.yesterday", "t1"},
      {"when.this_week", "t2"},
      {"when.last_week", "t7"},
      {"when.recently", "t14"},
      {"when.earlier", "t30"},
  };
  for (const auto& [k, v] : over) texts[k] = v;
  std::string out = "\"" + locale + "\": {";
  bool first = true;
  for (const auto& [k, v] : texts) {
    if (drop.contains(k)) continue;
    out.append(first ? "\n  \"" : ",\n  \"").append(k).append("\": \"").append(v).append("\"");
    first = false;
  }
  return out + "\n}";
}

}  // namespace

TEST_CASE("a template file from the host replaces the built-ins", "[reasons]") {
  const auto catalog = small_shop();
  funnel::testing::TempDir dir;
  const auto path = dir / "my_reasons.json";
  funnel::testing::write_bytes(
      path, "{" + locale_block("en", {}) + ",\n" +
                locale_block("de", {{"none", "Für dich: {title}"},
                                    {"similar_to_history", "Wie {history_title}, {when} {verb}"},
                                    {"verb.purchase", "gekauft"},
                                    {"when.last_week", "letzte Woche"}}) +
                "}");
  TemplateReasonConfig config;
  config.templates = path;
  const TemplateReasonGenerator gen(catalog, nullptr, config);
  CHECK(gen.locales() == std::vector<std::string>{"de", "en"});

  auto user = make_user({});
  user.locale = "de-AT";
  auto r = explain(gen, user, inputs({5}));
  CHECK(r[0].locale == "de");
  CHECK(r[0].text == "Für dich: Coffee grinder");

  user = make_user({event(1, EventType::purchase, kNow - 10 * kDay)}, "de");
  r = explain(gen, user, inputs({2}));
  CHECK(r[0].text == "Wie Trail running shoes, letzte Woche gekauft");
  user.locale = "en";
  r = explain(gen, user, inputs({2}));
  CHECK(r[0].text == "Like Trail running shoes (purchased, t7)");
  user.locale = "zh-CN";  // not in this file: falls back to en
  r = explain(gen, user, inputs({2}));
  CHECK(r[0].locale == "en");

  SECTION("the shipped src/templates/reasons.json is valid and is what is built in") {
    TemplateReasonConfig shipped;
    shipped.templates = FUNNEL_SOURCE_DIR "/src/templates/reasons.json";
    const TemplateReasonGenerator from_file(catalog, nullptr, shipped);
    const TemplateReasonGenerator builtin(catalog, nullptr);
    for (const char* locale : {"en", "zh-CN"}) {
      const auto u = make_user({event(1, EventType::cart, kNow - 3 * kDay)}, locale);
      const auto in = inputs({2, 5});
      const auto a = explain(from_file, u, in);
      const auto b = explain(builtin, u, in);
      for (std::size_t i = 0; i < in.size(); ++i) CHECK(a[i].text == b[i].text);
    }
  }
}

TEST_CASE("malformed template files are format errors naming file, locale and key", "[reasons]") {
  const auto catalog = small_shop();
  funnel::testing::TempDir dir;
  const auto path = dir / "bad_reasons.json";
  const auto load = [&](const std::string& bytes) {
    funnel::testing::write_bytes(path, bytes);
    TemplateReasonConfig config;
    config.templates = path;
    return error_of([&] { TemplateReasonGenerator gen(catalog, nullptr, config); });
  };
  const auto expect = [&](const Error& e, std::initializer_list<std::string_view> parts) {
    CAPTURE(e.what());
    CHECK(e.code() == ErrorCode::format);
    CHECK(contains(e.what(), "bad_reasons.json"));
    for (const auto part : parts) CHECK(contains(e.what(), part));
  };
  const std::string en = locale_block("en", {});

  expect(load("{" + en + "," + locale_block("zh-CN", {}, {"when.last_week"}) + "}"),
         {"zh-CN", "when.last_week", "missing"});
  expect(load("{" + locale_block("en", {{"none", "For {price}"}}) + "}"),
         {"'en'", "'none'", "unknown placeholder {price}"});
  expect(load("{" + locale_block("en", {{"category_affinity", "{category} in {location}"}}) + "}"),
         {"'category_affinity'", "{location}", "not available"});
  expect(load("{" + locale_block("en", {{"verb.view", "saw {title}"}}) + "}"),
         {"'verb.view'", "{title}", "not available"});
  expect(load("{" + locale_block("en", {{"none", "For {title"}}) + "}"),
         {"'none'", "unterminated"});
  expect(load("{" + locale_block("en", {{"similar_to_histroy", "x"}}) + "}"),
         {"'similar_to_histroy'", "unknown key"});
  expect(load("{" + locale_block("en", {{"none", ""}}) + "}"), {"'none'", "empty"});
  expect(load(R"({"en": {"none": 3}})"), {"'en'", "'none'", "expected a string"});
  expect(load(R"({"en": ["none"]})"), {"'en'", "expected an object"});
  expect(load(R"(["en"])"), {"expected an object"});
  expect(load("{}"), {"at least one locale"});
  expect(load("{" + en + ",\n\"zh-CN\": {\"none\": \"\xff\xfe\"}}"), {"invalid UTF-8", "line "});
  expect(load("{\"en\": {\"none\": \"x\"}"), {"not valid JSON"});
  expect(load(""), {"not valid JSON"});

  // A valid file is accepted (so the errors above come from the one change).
  funnel::testing::write_bytes(path, "{" + en + "}");
  TemplateReasonConfig config;
  config.templates = path;
  CHECK_NOTHROW(TemplateReasonGenerator(catalog, nullptr, config));

  config.templates = dir / "missing.json";
  const Error io = error_of([&] { TemplateReasonGenerator gen(catalog, nullptr, config); });
  CHECK(io.code() == ErrorCode::io);
  CHECK(contains(io.what(), "missing.json"));
}

namespace {

// A generator whose "none" text is just the (shortened) title.
std::string shortened(const std::string& title, std::size_t max_chars) {
  const auto catalog = make_catalog({{1, title, "", "", std::nullopt, {1.0F}}});
  static const funnel::testing::TempDir dir;
  const auto path = dir / "title.json";
  funnel::testing::write_bytes(path, "{" + locale_block("en", {{"none", "{title}"}}) + "}");
  TemplateReasonConfig config;
  config.templates = path;
  config.max_title_chars = max_chars;
  const TemplateReasonGenerator gen(catalog, nullptr, config);
  return explain(gen, make_user({}), inputs({1}))[0].text;
}

std::string repeat(std::string_view s, std::size_t n) {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) out += s;
  return out;
}

}  // namespace

TEST_CASE("titles are shortened on character boundaries, never inside a code point", "[reasons]") {
  const std::string ellipsis = "\u2026";
  CHECK(shortened(repeat("a", 24), 24) == repeat("a", 24));
  CHECK(shortened(repeat("a", 25), 24) == repeat("a", 23) + ellipsis);
  CHECK(shortened(repeat("好", 24), 24) == repeat("好", 24));
  CHECK(shortened(repeat("好", 30), 24) == repeat("好", 23) + ellipsis);
  CHECK(shortened(repeat("😀", 30), 24) == repeat("😀", 23) + ellipsis);
  // e + combining acute accent is one character: kept whole.
  CHECK(shortened(repeat("e\u0301", 30), 24) == repeat("e\u0301", 23) + ellipsis);
  // No dangling space before the ellipsis.
  CHECK(shortened(repeat("a", 22) + "  bbbbbb", 24) == repeat("a", 22) + ellipsis);

  // Random titles of 1- to 4-byte characters, each its own character.
  const std::array<std::string_view, 6> alphabet = {"a", "Z", "é", "Ж", "好", "😀"};
  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    const std::size_t n = rng() % 40;
    const std::size_t max_chars = 2 + rng() % 30;
    std::string title;
    std::vector<std::size_t> ends;  // byte end of each character
    for (std::size_t i = 0; i < n; ++i) {
      title += alphabet[rng() % alphabet.size()];
      ends.push_back(title.size());
    }
    if (title.empty()) {
      title = "x";
      ends = {1};
    }
    const std::string out = shortened(title, max_chars);
    CAPTURE(title, max_chars, out);
    CHECK_FALSE(funnel::detail::find_invalid_utf8(out).has_value());
    if (ends.size() <= max_chars) {
      CHECK(out == title);
    } else {
      CHECK(out == title.substr(0, ends[max_chars - 2]) + ellipsis);
    }
  }
}

TEST_CASE("titles are inserted verbatim, never expanded as templates", "[reasons]") {
  const auto catalog = make_catalog({
      {1, "Mug {brand}{title}", "kitchen", "Brew", 10.0, {1.0F, 0.0F}},
      {2, "Mug", "kitchen", "Brew", 10.0, {1.0F, 0.0F}},
  });
  const TemplateReasonGenerator gen(catalog, nullptr);
  const auto user = make_user({event(1, EventType::click, kNow - 100)});
  const auto r = explain(gen, user, inputs({2}));
  CHECK(r[0].text == "Similar to Mug {brand}{title} you clicked today");
}

TEST_CASE("bad arguments are clear errors", "[reasons]") {
  const auto catalog = small_shop();
  const TemplateReasonGenerator gen(catalog, nullptr);
  const auto user = make_user({});

  std::vector<Reason> out(1);
  auto e = error_of([&] { gen.explain(user, inputs({1, 2}), out); });
  CHECK(e.code() == ErrorCode::invalid_argument);
  CHECK(contains(e.what(), "out has 1"));

  out.resize(2);
  e = error_of([&] { gen.explain(user, inputs({1, 999}), out); });
  CHECK(e.code() == ErrorCode::invalid_argument);
  CHECK(contains(e.what(), "999"));
  CHECK(contains(e.what(), "items[1]"));
  CHECK(out[0].text.empty());  // nothing written on failure

  const std::vector<std::string> names = {"ctr", "cvr"};
  const std::array<float, 1> one = {0.5F};
  auto in = inputs({1});
  in[0].objective_names = names;
  in[0].objective_scores = one;
  out.resize(1);
  e = error_of([&] { gen.explain(user, in, out); });
  CHECK(e.code() == ErrorCode::invalid_argument);
  CHECK(contains(e.what(), "2 objective names but 1 scores"));

  const std::array<float, 2> nan = {0.5F, std::numeric_limits<float>::quiet_NaN()};
  in[0].objective_scores = nan;
  e = error_of([&] { gen.explain(user, in, out); });
  CHECK(contains(e.what(), "'cvr'"));
  CHECK(contains(e.what(), "not finite"));

  e = error_of([&] { TemplateReasonGenerator g(nullptr, nullptr); });
  CHECK(e.code() == ErrorCode::invalid_argument);
  CHECK(contains(e.what(), "catalog"));

  TemplateReasonConfig config;
  config.min_category_share = 1.5;
  e = error_of([&] { TemplateReasonGenerator g(catalog, nullptr, config); });
  CHECK(contains(e.what(), "min_category_share"));
  config = {};
  config.max_location_rank = 0;
  e = error_of([&] { TemplateReasonGenerator g(catalog, nullptr, config); });
  CHECK(contains(e.what(), "max_location_rank"));
  config = {};
  config.max_title_chars = 1;
  e = error_of([&] { TemplateReasonGenerator g(catalog, nullptr, config); });
  CHECK(contains(e.what(), "max_title_chars"));
  config = {};
  config.history.half_life_s = 0.0;
  e = error_of([&] { TemplateReasonGenerator g(catalog, nullptr, config); });
  CHECK(contains(e.what(), "half_life_s"));

  // An empty batch is fine.
  std::vector<Reason> none;
  CHECK_NOTHROW(gen.explain(user, std::span<const ReasonInput>(), none));
}

// ---------------------------------------------------------------------------
// Property test: random shops, histories and batches. Every fact a reason
// states is re-derived here from the raw inputs, without HistoryProfile or
// Popularity, following the rules documented in the headers.

namespace {

enum class Truth { no, yes, unsure };

// Comparisons within this distance of a threshold are not judged: float
// rounding may legitimately go either way there.
constexpr double kSlack = 1e-6;

Truth at_least(double value, double threshold) {
  if (std::abs(value - threshold) < kSlack) return Truth::unsure;
  return value >= threshold ? Truth::yes : Truth::no;
}

struct World {
  std::shared_ptr<const Catalog> catalog;
  std::map<ItemId, std::vector<float>> vec;
  std::shared_ptr<const Popularity> popularity;
  // location -> category -> weighted count, summed in event order
  std::map<std::string, std::map<std::string, double>> location_counts;
};

double pop_weight(EventType t) {
  switch (t) {
    case EventType::view: return 0.1;
    case EventType::click: return 1.0;
    case EventType::cart: return 2.0;
    case EventType::purchase: return 4.0;
  }
  return 0.0;
}

EventType random_type(std::mt19937& rng) {
  const auto r = rng() % 10;
  if (r < 4) return EventType::view;
  if (r < 7) return EventType::click;
  if (r < 9) return EventType::cart;
  return EventType::purchase;
}

World make_world(std::mt19937& rng) {
  constexpr std::size_t kDim = 8;
  constexpr std::size_t kClusters = 12;
  constexpr ItemId kItems = 80;
  std::normal_distribution<float> normal(0.0F, 1.0F);
  auto normalized = [](std::vector<float> v) {
    double n = 0.0;
    for (float x : v) n += static_cast<double>(x) * x;
    for (float& x : v) x = static_cast<float>(x / std::sqrt(n));
    return v;
  };
  std::vector<std::vector<float>> centers;
  for (std::size_t c = 0; c < kClusters; ++c) {
    std::vector<float> v(kDim);
    for (float& x : v) x = normal(rng);
    centers.push_back(normalized(v));
  }
  World world;
  std::vector<ItemSpec> specs;
  std::uniform_real_distribution<double> log_price(1.0, 7.0);
  for (ItemId id = 1; id <= kItems; ++id) {
    const std::size_t c = rng() % kClusters;
    std::vector<float> v = centers[c];
    for (float& x : v) x += 0.35F * normal(rng);
    v = normalized(v);
    ItemSpec s;
    s.id = id;
    s.title = (id % 2 == 0 ? "Item " : "商品") + std::to_string(id);
    s.category = rng() % 10 == 0 ? "" : "cat" + std::to_string(rng() % 3 == 0 ? rng() % 6 : c % 6);
    s.brand = rng() % 10 == 0 ? "" : "brand" + std::to_string(rng() % 7);
    if (rng() % 10 != 0) s.price = std::exp(log_price(rng));
    s.vec = v;
    world.vec[id] = v;
    specs.push_back(std::move(s));
  }
  world.catalog = make_catalog(specs);

  const std::array<std::string, 4> locations = {"Shanghai", "Beijing", "Chengdu", ""};
  std::vector<UserProfile> users(60);
  for (std::size_t u = 0; u < users.size(); ++u) {
    users[u].id = "p" + std::to_string(u);
    users[u].location = locations[rng() % locations.size()];
  }
  std::vector<Event> events(1500);
  for (auto& e : events) {
    const auto& u = users[rng() % users.size()];
    e.user = u.id;
    e.item = 1 + static_cast<ItemId>(rng() % kItems);
    e.type = random_type(rng);
    e.ts = kNow - static_cast<std::int64_t>(rng() % (60 * kDay));
    const std::string& category = world.catalog->at(e.item).category;
    if (!u.location.empty() && !category.empty()) {
      world.location_counts[u.location][category] += pop_weight(e.type);
    }
  }
  world.popularity =
      std::make_shared<const Popularity>(Popularity::from_events(*world.catalog, events, users));
  return world;
}

// The facts for one candidate, re-derived from raw inputs.
struct Facts {
  Truth similar = Truth::no;
  ItemId best_item = funnel::kNoItem;
  double best_similarity = -2.0;
  Truth brand = Truth::no;
  Truth category = Truth::no;
  Truth location = Truth::no;
  Truth price = Truth::no;
  Truth objective = Truth::no;
  std::string best_objective;
};

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

std::vector<Facts> derive_facts(const World& world, const TemplateReasonConfig& config,
                                const UserContext& user, const std::vector<ReasonInput>& in) {
  const Catalog& catalog = *world.catalog;
  // Counted events: not in the future, item in the catalogue (histories here
  // are shorter than max_events).
  struct Counted {
    ItemId item;
    EventType type;
    double weight;
  };
  std::vector<Counted> counted;
  for (const auto& e : user.history) {
    if (e.ts > user.now_ts || !catalog.contains(e.item)) continue;
    const double age = static_cast<double>(user.now_ts - e.ts);
    counted.push_back(
        {e.item, e.type,
         config.history.type_weight(e.type) * std::exp2(-age / config.history.half_life_s)});
  }
  REQUIRE(counted.size() <= config.history.max_events);
  double total = 0.0;
  std::map<std::string, double> by_category;
  std::map<std::string, double> by_brand;
  bool intent_price = false;
  for (const auto& c : counted) {
    const Item& item = catalog.at(c.item);
    total += c.weight;
    by_category[item.category] += c.weight;
    by_brand[item.brand] += c.weight;
    if (c.type >= EventType::cart && item.price && c.weight > 0.0) intent_price = true;
  }
  std::optional<std::pair<double, double>> band;  // mean, std of log price
  {
    double w = 0.0;
    double s = 0.0;
    for (const auto& c : counted) {
      const Item& item = catalog.at(c.item);
      if (!item.price || c.weight <= 0.0 || (intent_price && c.type < EventType::cart)) continue;
      w += c.weight;
      s += c.weight * std::log(*item.price);
    }
    if (w > 0.0) {
      const double mean = s / w;
      double v = 0.0;
      for (const auto& c : counted) {
        const Item& item = catalog.at(c.item);
        if (!item.price || c.weight <= 0.0 || (intent_price && c.type < EventType::cart)) {
          continue;
        }
        v += c.weight * (std::log(*item.price) - mean) * (std::log(*item.price) - mean);
      }
      band = {mean, std::sqrt(v / w)};
    }
  }
  // Objective batch statistics.
  std::map<std::string, std::vector<double>> batch;
  for (const auto& r : in) {
    for (std::size_t j = 0; j < r.objective_names.size(); ++j) {
      batch[r.objective_names[j]].push_back(r.objective_scores[j]);
    }
  }

  std::vector<Facts> facts(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    Facts& f = facts[i];
    const Item& item = catalog.at(in[i].item);
    // Most similar distinct counted history item other than the candidate.
    double second = -2.0;
    std::set<ItemId> seen;
    for (const auto& c : counted) {
      if (c.item == item.id || !seen.insert(c.item).second) continue;
      const double s = dot(world.vec.at(c.item), world.vec.at(item.id));
      if (s > f.best_similarity) {
        second = f.best_similarity;
        f.best_similarity = s;
        f.best_item = c.item;
      } else if (s > second) {
        second = s;
      }
    }
    if (f.best_item != funnel::kNoItem) {
      f.similar = at_least(f.best_similarity, config.min_similarity);
      // A near tie for the best item makes "which item" a rounding question.
      if (f.similar == Truth::yes && f.best_similarity - second < kSlack) f.similar = Truth::unsure;
    }
    if (!item.brand.empty() && total > 0.0 && by_brand[item.brand] > 0.0) {
      f.brand = at_least(by_brand[item.brand] / total, config.min_brand_share);
    }
    if (!item.category.empty() && total > 0.0 && by_category[item.category] > 0.0) {
      f.category = at_least(by_category[item.category] / total, config.min_category_share);
    }
    if (!user.profile.location.empty() && !item.category.empty()) {
      const auto loc = world.location_counts.find(user.profile.location);
      if (loc != world.location_counts.end() && loc->second.contains(item.category)) {
        const double mine = loc->second.at(item.category);
        std::size_t greater = 0;
        std::size_t equal = 0;
        for (const auto& [name, count] : loc->second) {
          if (count > mine + 1e-9)
            ++greater;
          else if (count > mine - 1e-9)
            ++equal;  // includes itself
        }
        if (greater + equal <= config.max_location_rank) {
          f.location = Truth::yes;
        } else if (greater + 1 > config.max_location_rank) {
          f.location = Truth::no;
        } else {
          f.location = Truth::unsure;  // a tie straddles the rank limit
        }
      }
    }
    if (band && item.price) {
      const double d = std::abs(std::log(*item.price) - band->first);
      f.price = at_least(band->second, d);
    }
    double best_z = -1e300;
    double second_z = -1e300;
    for (std::size_t j = 0; j < in[i].objective_names.size(); ++j) {
      const auto& values = batch[in[i].objective_names[j]];
      if (values.size() < 2) continue;
      double mean = 0.0;
      for (double v : values) mean += v;
      mean /= static_cast<double>(values.size());
      double var = 0.0;
      for (double v : values) var += (v - mean) * (v - mean);
      const double sd = std::sqrt(var / static_cast<double>(values.size()));
      if (sd < 1e-9) continue;
      const double z = (in[i].objective_scores[j] - mean) / sd;
      if (z > best_z) {
        second_z = best_z;
        best_z = z;
        f.best_objective = in[i].objective_names[j];
      } else if (z > second_z) {
        second_z = z;
      }
    }
    if (!f.best_objective.empty()) {
      f.objective = at_least(best_z, config.min_objective_z);
      if (f.objective == Truth::yes && best_z - second_z < kSlack) f.objective = Truth::unsure;
    }
  }
  return facts;
}

Truth truth_of(const Facts& f, EvidenceKind kind) {
  switch (kind) {
    case EvidenceKind::similar_to_history: return f.similar;
    case EvidenceKind::brand_affinity: return f.brand;
    case EvidenceKind::category_affinity: return f.category;
    case EvidenceKind::popular_in_location: return f.location;
    case EvidenceKind::price_band: return f.price;
    case EvidenceKind::objective: return f.objective;
    case EvidenceKind::none: return Truth::yes;
  }
  return Truth::no;
}

constexpr std::array<EvidenceKind, 7> kPriority = {EvidenceKind::similar_to_history,
                                                   EvidenceKind::brand_affinity,
                                                   EvidenceKind::category_affinity,
                                                   EvidenceKind::popular_in_location,
                                                   EvidenceKind::price_band,
                                                   EvidenceKind::objective,
                                                   EvidenceKind::none};

std::string_view when_phrase_en(std::int64_t age) {
  if (age < kDay) return "today";
  if (age < 2 * kDay) return "yesterday";
  if (age < 7 * kDay) return "a few days ago";
  if (age < 14 * kDay) return "last week";
  if (age < 30 * kDay) return "recently";
  return "a while ago";
}

// Checks one reason against the re-derived facts and the raw history.
void check_grounded(const World& world, const UserContext& user, const ReasonInput& input,
                    const Facts& facts, const Reason& reason, bool zh) {
  const Evidence& e = reason.evidence;
  const Item& item = world.catalog->at(input.item);
  CAPTURE(reason.text, funnel::to_string(e.kind), input.item);
  CHECK(truth_of(facts, e.kind) != Truth::no);
  CHECK_FALSE(funnel::detail::find_invalid_utf8(reason.text).has_value());
  CHECK(reason.locale == (zh ? "zh-CN" : "en"));

  const bool purchase =
      e.kind == EvidenceKind::similar_to_history && e.history_type == EventType::purchase;
  const std::int64_t age = user.now_ts - e.history_ts;
  const bool last_week =
      e.kind == EvidenceKind::similar_to_history && age >= 7 * kDay && age < 14 * kDay;
  CHECK(contains(reason.text, zh ? "购买" : "bought") == purchase);
  CHECK(contains(reason.text, zh ? "上周" : "last week") == last_week);
  CHECK(contains(reason.text, zh ? "热门" : "Popular in") ==
        (e.kind == EvidenceKind::popular_in_location));

  switch (e.kind) {
    case EvidenceKind::similar_to_history: {
      // The event really is in the history, not in the future, and the item
      // really is the most similar one.
      const bool in_history =
          std::any_of(user.history.begin(), user.history.end(), [&](const HistoryEvent& h) {
            return h.item == e.history_item && h.type == e.history_type && h.ts == e.history_ts &&
                   h.ts <= user.now_ts;
          });
      CHECK(in_history);
      CHECK(e.history_item != input.item);
      if (facts.similar == Truth::yes) CHECK(e.history_item == facts.best_item);
      CHECK(e.value == Approx(facts.best_similarity).margin(1e-5));
      CHECK(contains(reason.text, world.catalog->at(e.history_item).title));
      if (!zh) CHECK(contains(reason.text, when_phrase_en(age)));
      break;
    }
    case EvidenceKind::brand_affinity:
      CHECK(e.brand == item.brand);
      CHECK(contains(reason.text, item.brand));
      break;
    case EvidenceKind::category_affinity:
      CHECK(e.category == item.category);
      CHECK(contains(reason.text, item.category));
      break;
    case EvidenceKind::popular_in_location:
      CHECK(e.category == item.category);
      CHECK(e.location == user.profile.location);
      CHECK_FALSE(e.location.empty());
      CHECK(e.value <= static_cast<double>(3));
      CHECK(contains(reason.text, item.category));
      CHECK(contains(reason.text, e.location));
      break;
    case EvidenceKind::objective:
      if (facts.objective == Truth::yes) CHECK(e.objective == facts.best_objective);
      break;
    case EvidenceKind::price_band:
    case EvidenceKind::none: break;
  }
}

}  // namespace

TEST_CASE("property: every reason for random histories rests on facts that hold", "[reasons]") {
  std::mt19937 rng(20240611);
  const World world = make_world(rng);
  const TemplateReasonConfig config;  // defaults; max_location_rank 3 checked above
  TemplateReasonConfig no_variety_config;
  no_variety_config.max_same_reason = 0;
  const TemplateReasonGenerator gen(world.catalog, world.popularity, config);
  const TemplateReasonGenerator no_variety(world.catalog, world.popularity, no_variety_config);
  const std::vector<std::string> names = {"ctr", "cvr", "dwell"};
  const std::array<std::string, 5> locations = {"Shanghai", "Beijing", "Chengdu", "Hangzhou", ""};

  std::map<EvidenceKind, std::size_t> seen_kinds;
  std::size_t purchases_said = 0;
  std::size_t last_week_said = 0;
  for (int round = 0; round < 150; ++round) {
    UserContext user;
    user.profile.id = "r" + std::to_string(round);
    user.profile.location = locations[rng() % locations.size()];
    user.now_ts = kNow;
    // A few favourite items (and their neighbours by id) make affinities likely.
    const auto favourite = 1 + static_cast<ItemId>(rng() % 80);
    const std::size_t length = rng() % 40;
    for (std::size_t i = 0; i < length; ++i) {
      HistoryEvent h;
      h.item = rng() % 3 == 0 ? 1 + static_cast<ItemId>(rng() % 80)
                              : 1 + (favourite + static_cast<ItemId>(rng() % 5)) % 80;
      if (rng() % 25 == 0) h.item = 1000;  // not in the catalogue
      h.type = random_type(rng);
      h.ts = kNow - static_cast<std::int64_t>(rng() % (45 * kDay));
      user.history.push_back(h);
    }
    std::sort(user.history.begin(), user.history.end(),
              [](const HistoryEvent& a, const HistoryEvent& b) { return a.ts < b.ts; });
    if (rng() % 4 == 0) {  // an event after the request: never to be mentioned
      user.history.push_back({favourite, EventType::purchase, kNow + kDay, std::nullopt});
    }

    const std::size_t batch_size = 1 + rng() % 10;
    std::vector<ItemId> ids;
    while (ids.size() < batch_size) {
      const auto id = rng() % 2 == 0 ? 1 + (favourite + static_cast<ItemId>(rng() % 7)) % 80
                                     : 1 + static_cast<ItemId>(rng() % 80);
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    }
    std::vector<std::array<float, 3>> scores(batch_size);
    std::uniform_real_distribution<float> unit(0.0F, 1.0F);
    for (auto& s : scores) s = {unit(rng), unit(rng), 60.0F * unit(rng)};
    auto in = inputs(ids);
    for (std::size_t i = 0; i < batch_size; ++i) {
      in[i].objective_names = names;
      in[i].objective_scores = scores[i];
    }

    const auto facts = derive_facts(world, config, user, in);
    CAPTURE(round);
    for (const bool zh : {false, true}) {
      user.locale = zh ? "zh-CN" : "en";
      const auto reasons = explain(gen, user, in);
      for (std::size_t i = 0; i < in.size(); ++i) {
        check_grounded(world, user, in[i], facts[i], reasons[i], zh);
        ++seen_kinds[reasons[i].evidence.kind];
        if (!zh && contains(reasons[i].text, "bought")) ++purchases_said;
        if (!zh && contains(reasons[i].text, "last week")) ++last_week_said;
      }
    }

    // Without variety, each reason is the first holding kind in priority order.
    user.locale = "en";
    const auto plain = explain(no_variety, user, in);
    for (std::size_t i = 0; i < in.size(); ++i) {
      const auto chosen = plain[i].evidence.kind;
      check_grounded(world, user, in[i], facts[i], plain[i], false);
      for (const auto kind : kPriority) {
        if (kind == chosen) break;
        CAPTURE(i, funnel::to_string(kind), funnel::to_string(chosen));
        CHECK(truth_of(facts[i], kind) != Truth::yes);  // a stronger fact was not skipped
      }
    }
  }
  // The random worlds exercise every kind and the claims that matter.
  for (const auto kind : kPriority) {
    CAPTURE(funnel::to_string(kind));
    CHECK(seen_kinds[kind] > 0);
  }
  CHECK(purchases_said > 0);
  CHECK(last_week_said > 0);
}

TEST_CASE("explain may run concurrently", "[reasons][concurrency]") {
  const auto catalog = small_shop();
  const auto popularity = shop_popularity(*catalog);
  const TemplateReasonGenerator gen(catalog, popularity);
  const auto user = make_user(
      {event(1, EventType::purchase, kNow - 8 * kDay), event(3, EventType::click, kNow - kDay)},
      "zh-CN", "Shanghai");
  const auto in = inputs({2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  const auto expected = explain(gen, user, in);
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < mismatches.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round) {
        const auto got = explain(gen, user, in);
        for (std::size_t i = 0; i < got.size(); ++i) {
          if (got[i].text != expected[i].text) ++mismatches[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const int m : mismatches) CHECK(m == 0);
}
