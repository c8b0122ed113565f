// SPDX-License-Identifier: Apache-2.0
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/catalog.hpp"
#include "funnel/error.hpp"
#include "funnel/history_profile.hpp"
#include "funnel/popularity.hpp"

using Catch::Matchers::Contains;
using funnel::Catalog;
using funnel::EventType;
using funnel::HistoryEvent;
using funnel::HistoryProfile;
using funnel::HistoryProfileConfig;
using funnel::Item;

namespace {

Item make_item(funnel::ItemId id, const char* category, const char* brand,
               std::optional<double> price) {
  Item item;
  item.id = id;
  item.title = "item " + std::to_string(id);
  item.category = category;
  item.brand = brand;
  item.price = price;
  return item;
}

// Six items in three categories, with unit-norm 3-d vectors set by hand.
Catalog small_catalog(bool with_vectors = true) {
  Catalog catalog;
  catalog.add(make_item(1, "shoes", "acme", 100.0));
  catalog.add(make_item(2, "shoes", "bolt", 50.0));
  catalog.add(make_item(3, "books", "acme", 20.0));
  catalog.add(make_item(4, "books", "cobalt", std::nullopt));
  catalog.add(make_item(5, "toys", "", 10.0));
  catalog.add(make_item(6, "toys", "bolt", 40.0));
  if (with_vectors) {
    catalog.set_vectors(funnel::Matrix<float>(6, 3,
                                              std::vector<float>{1.0F, 0.0F, 0.0F,  //
                                                                 0.6F, 0.8F, 0.0F,  //
                                                                 0.0F, 1.0F, 0.0F,  //
                                                                 0.0F, 0.0F, 1.0F,  //
                                                                 0.8F, 0.0F, 0.6F,  //
                                                                 0.0F, 0.6F, 0.8F}));
  }
  return catalog;
}

HistoryProfileConfig fast_decay() {
  HistoryProfileConfig config;
  config.view_weight = 0.25F;
  config.click_weight = 1.0F;
  config.cart_weight = 2.0F;
  config.purchase_weight = 3.0F;
  config.half_life_s = 1000.0;
  return config;
}

// now = 10000; half-life 1000 s.
std::vector<HistoryEvent> sample_history() {
  return {
      {3, EventType::view, 7000, std::nullopt},       // age 3000: 0.25 * 1/8
      {1, EventType::click, 8000, 12.0},              // age 2000: 1 * 1/4
      {1, EventType::purchase, 9000, std::nullopt},   // age 1000: 3 * 1/2
      {2, EventType::cart, 9000, std::nullopt},       // age 1000: 2 * 1/2
      {99, EventType::click, 9500, std::nullopt},     // not in the catalogue
      {4, EventType::view, 10000, std::nullopt},      // age 0: 0.25
      {5, EventType::purchase, 11000, std::nullopt},  // after now: ignored
  };
}

}  // namespace

TEST_CASE("HistoryProfile weights, shares and price band match a hand computation",
          "[history_profile]") {
  const Catalog catalog = small_catalog();
  const auto history = sample_history();
  const HistoryProfile profile(catalog, history, 10000, fast_decay());

  const double w3 = 0.25 * 0.125;
  const double w1c = 1.0 * 0.25;
  const double w1p = 3.0 * 0.5;
  const double w2 = 2.0 * 0.5;
  const double w4 = 0.25;
  const double total = w3 + w1c + w1p + w2 + w4;

  CHECK(profile.events() == 5);
  CHECK(profile.distinct_items() == 4);
  CHECK(profile.total_weight() == Approx(total).epsilon(1e-12));
  CHECK(profile.category_share("shoes") == Approx((w1c + w1p + w2) / total).epsilon(1e-12));
  CHECK(profile.category_share("books") == Approx((w3 + w4) / total).epsilon(1e-12));
  CHECK(profile.category_share("toys") == 0.0);  // only the ignored future purchase
  CHECK(profile.category_share("") == 0.0);
  CHECK(profile.brand_share("acme") == Approx((w3 + w1c + w1p) / total).epsilon(1e-12));
  CHECK(profile.brand_share("bolt") == Approx(w2 / total).epsilon(1e-12));
  CHECK(profile.brand_share("cobalt") == Approx(w4 / total).epsilon(1e-12));
  CHECK(profile.brand_share("nobody") == 0.0);

  const auto top = profile.top_category();
  REQUIRE(top.has_value());
  CHECK(top->first == "shoes");
  CHECK(top->second == Approx((w1c + w1p + w2) / total).epsilon(1e-12));

  // Cart and purchase events exist, so only they define the price band.
  const double mean = (w1p * std::log(100.0) + w2 * std::log(50.0)) / (w1p + w2);
  const double var =
      (w1p * std::pow(std::log(100.0) - mean, 2) + w2 * std::pow(std::log(50.0) - mean, 2)) /
      (w1p + w2);
  REQUIRE(profile.mean_log_price().has_value());
  CHECK(*profile.mean_log_price() == Approx(mean).epsilon(1e-12));
  CHECK(*profile.std_log_price() == Approx(std::sqrt(var)).epsilon(1e-12));

  // Weighted mean of the vectors, then normalised.
  const double mx = w1c + w1p + 0.6 * w2;
  const double my = w3 + 0.8 * w2;
  const double mz = w4;
  const double norm = std::sqrt(mx * mx + my * my + mz * mz);
  const auto mv = profile.mean_vector();
  REQUIRE(mv.size() == 3);
  CHECK(mv[0] == Approx(mx / norm).epsilon(1e-6));
  CHECK(mv[1] == Approx(my / norm).epsilon(1e-6));
  CHECK(mv[2] == Approx(mz / norm).epsilon(1e-6));
}

TEST_CASE("HistoryProfile most_similar, strongest event and purchased", "[history_profile]") {
  const Catalog catalog = small_catalog();
  const auto history = sample_history();
  const HistoryProfile profile(catalog, history, 10000, fast_decay());

  const std::vector<float> up{0.0F, 1.0F, 0.0F};
  auto match = profile.most_similar(up);
  REQUIRE(match.has_value());
  CHECK(match->item == 3);
  CHECK(match->type == EventType::view);
  CHECK(match->ts == 7000);
  CHECK(match->similarity == Approx(1.0F));

  match = profile.most_similar(up, /*exclude=*/3);
  REQUIRE(match.has_value());
  CHECK(match->item == 2);
  CHECK(match->type == EventType::cart);
  CHECK(match->similarity == Approx(0.8F));

  // Item 1 was clicked then purchased: the purchase is its strongest event.
  const std::vector<float> east{1.0F, 0.0F, 0.0F};
  match = profile.most_similar(east);
  REQUIRE(match.has_value());
  CHECK(match->item == 1);
  CHECK(match->type == EventType::purchase);
  CHECK(match->ts == 9000);

  // Item 5 (the future purchase) is not a candidate match even though it is closest.
  const std::vector<float> toy{0.8F, 0.0F, 0.6F};
  match = profile.most_similar(toy);
  REQUIRE(match.has_value());
  CHECK(match->item == 1);
  CHECK(match->similarity == Approx(0.8F));

  CHECK(profile.purchased(1));
  CHECK_FALSE(profile.purchased(2));
  CHECK_FALSE(profile.purchased(5));
  CHECK_FALSE(profile.purchased(99));
  REQUIRE(profile.strongest_event(2).has_value());
  CHECK(profile.strongest_event(2)->type == EventType::cart);
  CHECK_FALSE(profile.strongest_event(5).has_value());

  // One entry per distinct item, sorted by id, with its strongest event.
  const auto items = profile.items();
  REQUIRE(items.size() == 4);
  CHECK(items[0].item == 1);
  CHECK(items[0].type == EventType::purchase);
  CHECK(items[1].item == 2);
  CHECK(items[1].type == EventType::cart);
  CHECK(items[2].item == 3);
  CHECK(items[2].type == EventType::view);
  CHECK(items[3].item == 4);
  CHECK(items[3].ts == 10000);

  const std::vector<float> wrong_size{1.0F, 0.0F};
  CHECK_THROWS_AS(profile.most_similar(wrong_size), funnel::Error);
}

TEST_CASE("HistoryProfile keeps only the most recent max_events eligible events",
          "[history_profile]") {
  const Catalog catalog = small_catalog();
  auto config = fast_decay();
  config.max_events = 2;
  const auto history = sample_history();
  const HistoryProfile profile(catalog, history, 10000, config);
  // Skipping the future and unknown events, the last two are item 2's cart
  // (w 1.0) and item 4's view (w 0.25); item 1's purchase at the same ts as
  // the cart comes earlier in the history and is dropped.
  CHECK(profile.events() == 2);
  CHECK(profile.total_weight() == Approx(1.25));
  CHECK(profile.category_share("shoes") == Approx(1.0 / 1.25));
  CHECK_FALSE(profile.purchased(1));
  REQUIRE(profile.mean_log_price().has_value());
  CHECK(*profile.mean_log_price() == Approx(std::log(50.0)));
  CHECK(*profile.std_log_price() == Approx(0.0).margin(1e-12));
}

TEST_CASE("HistoryProfile does not depend on the order of the history", "[history_profile]") {
  const Catalog catalog = small_catalog();
  auto history = sample_history();
  const HistoryProfile sorted(catalog, history, 10000, fast_decay());
  std::mt19937 rng(7);
  for (int round = 0; round < 5; ++round) {
    std::shuffle(history.begin(), history.end(), rng);
    const HistoryProfile shuffled(catalog, history, 10000, fast_decay());
    CHECK(shuffled.events() == sorted.events());
    CHECK(shuffled.total_weight() == Approx(sorted.total_weight()).epsilon(1e-12));
    CHECK(shuffled.category_share("shoes") == Approx(sorted.category_share("shoes")));
    CHECK(*shuffled.mean_log_price() == Approx(*sorted.mean_log_price()));
    CHECK(shuffled.purchased(1));
  }
}

TEST_CASE("HistoryProfile without intent events, vectors or history", "[history_profile]") {
  const Catalog catalog = small_catalog(/*with_vectors=*/false);
  // Views only: the price band comes from all events; item 4 has no price.
  const std::vector<HistoryEvent> views{{3, EventType::view, 1000, std::nullopt},
                                        {6, EventType::view, 2000, std::nullopt},
                                        {4, EventType::view, 2000, std::nullopt}};
  const HistoryProfile profile(catalog, views, 2000, fast_decay());
  const double w3 = 0.25 * 0.5;
  const double w6 = 0.25;
  const double mean = (w3 * std::log(20.0) + w6 * std::log(40.0)) / (w3 + w6);
  REQUIRE(profile.mean_log_price().has_value());
  CHECK(*profile.mean_log_price() == Approx(mean).epsilon(1e-12));
  CHECK(profile.mean_vector().empty());
  CHECK_FALSE(profile.most_similar(std::vector<float>{1.0F, 0.0F, 0.0F}).has_value());

  const HistoryProfile empty(catalog, std::span<const HistoryEvent>{}, 2000, fast_decay());
  CHECK(empty.events() == 0);
  CHECK(empty.total_weight() == 0.0);
  CHECK(empty.category_share("books") == 0.0);
  CHECK_FALSE(empty.top_category().has_value());
  CHECK_FALSE(empty.mean_log_price().has_value());
  CHECK_FALSE(empty.purchased(3));

  // Only an item without a price: no price band.
  const std::vector<HistoryEvent> unpriced{{4, EventType::purchase, 100, std::nullopt}};
  CHECK_FALSE(HistoryProfile(catalog, unpriced, 100).mean_log_price().has_value());
}

TEST_CASE("HistoryProfile from a UserContext uses its clock", "[history_profile]") {
  const Catalog catalog = small_catalog();
  funnel::UserContext user;
  user.history = sample_history();
  user.now_ts = 10000;
  const HistoryProfile at_now(catalog, user, fast_decay());
  CHECK(at_now.events() == 5);
  CHECK_FALSE(at_now.purchased(5));

  // An unset clock means "as of the latest event": the purchase of item 5
  // now counts, with no decay on it.
  user.now_ts = 0;
  const HistoryProfile unset(catalog, user, fast_decay());
  CHECK(at_now.now_ts() == 10000);
  CHECK(unset.now_ts() == 11000);
  CHECK(unset.events() == 6);
  CHECK(unset.purchased(5));
}

TEST_CASE("HistoryProfileConfig validation names the field", "[history_profile]") {
  const Catalog catalog = small_catalog();
  auto config = fast_decay();
  config.cart_weight = -1.0F;
  CHECK_THROWS_WITH(config.validate(), Contains("cart_weight"));
  CHECK_THROWS_AS(HistoryProfile(catalog, sample_history(), 0, config), funnel::Error);
  config = fast_decay();
  config.half_life_s = 0.0;
  CHECK_THROWS_WITH(config.validate(), Contains("half_life_s"));
  config = fast_decay();
  config.max_events = 0;
  CHECK_THROWS_WITH(config.validate(), Contains("max_events"));
  CHECK(fast_decay().type_weight(EventType::cart) == 2.0F);
}

TEST_CASE("Popularity counts, ranks and users match a hand count", "[popularity]") {
  const Catalog catalog = small_catalog();
  std::vector<funnel::UserProfile> users(3);
  users[0].id = "u1";
  users[0].location = "Paris";
  users[1].id = "u2";
  users[1].location = "Paris";
  users[2].id = "u3";
  users[2].location = "Lyon";
  auto ev = [](const char* user, funnel::ItemId item, EventType type, std::int64_t ts) {
    funnel::Event e;
    e.user = user;
    e.item = item;
    e.type = type;
    e.ts = ts;
    return e;
  };
  // Weights: view 0.1, click 1, cart 2, purchase 4.
  const std::vector<funnel::Event> events{
      ev("u1", 1, EventType::click, 10),     ev("u1", 1, EventType::purchase, 11),
      ev("u1", 1, EventType::view, 12),      ev("u2", 3, EventType::click, 13),
      ev("u4", 3, EventType::purchase, 14),  ev("u3", 3, EventType::view, 15),
      ev("u2", 2, EventType::cart, 16),      ev("u2", 4, EventType::purchase, 17),
      ev("u3", 5, EventType::view, 18),      ev("u1", 99, EventType::click, 19),
      ev("u3", 6, EventType::purchase, 100),  // at until_ts: excluded
  };
  const auto pop = funnel::Popularity::from_events(catalog, events, users, 100);

  CHECK(pop.item_count(1) == Approx(5.1));
  CHECK(pop.item_count(3) == Approx(5.1));
  CHECK(pop.item_count(2) == Approx(2.0));
  CHECK(pop.item_count(4) == Approx(4.0));
  CHECK(pop.item_count(5) == Approx(0.1));
  CHECK(pop.item_count(6) == 0.0);
  CHECK(pop.item_count(99) == 0.0);
  CHECK(pop.items() == 5);

  CHECK(pop.item_score(1) == Approx(1.0));
  CHECK(pop.item_score(5) == Approx(std::log1p(0.1) / std::log1p(5.1)));
  CHECK(pop.item_score(6) == 0.0);

  // 1 and 3 tie at 5.1 (the same sums in the same order): the smaller id first.
  const auto top = pop.top_items(4);
  REQUIRE(top.size() == 4);
  CHECK(top[0].first == 1);
  CHECK(top[1].first == 3);
  CHECK(top[2].first == 4);
  CHECK(top[3].first == 2);
  CHECK(pop.top_items(100).size() == 5);
  CHECK(pop.top_items(0).empty());

  // Paris: shoes 5.1 (u1 on item 1) + 2 (u2 cart on item 2) = 7.1; books 1 + 4 = 5.
  auto rank = pop.category_rank_in_location("Paris", "shoes");
  REQUIRE(rank.has_value());
  CHECK(rank->first == 1);
  CHECK(rank->second == Approx(7.1));
  rank = pop.category_rank_in_location("Paris", "books");
  REQUIRE(rank.has_value());
  CHECK(rank->first == 2);
  CHECK(rank->second == Approx(5.0));
  // Lyon: books 0.1 and toys 0.1 tie: books ranks first by name.
  CHECK(pop.category_rank_in_location("Lyon", "books")->first == 1);
  CHECK(pop.category_rank_in_location("Lyon", "toys")->first == 2);
  CHECK_FALSE(pop.category_rank_in_location("Lyon", "shoes").has_value());
  CHECK_FALSE(pop.category_rank_in_location("Nowhere", "shoes").has_value());

  CHECK(pop.users_in_location("Paris") == 2);
  CHECK(pop.users_in_location("Lyon") == 1);
  CHECK(pop.users_in_location("Nowhere") == 0);

  const auto counts = pop.item_counts();
  REQUIRE(counts.size() == 5);
  CHECK(counts.front().first == 1);
  CHECK(counts.back().first == 5);
  const auto copy = funnel::Popularity::from_item_counts(counts);
  CHECK(copy.item_score(5) == Approx(pop.item_score(5)));
  CHECK(copy.users_in_location("Paris") == 0);
}

TEST_CASE("Popularity edge cases", "[popularity]") {
  const funnel::Popularity none;
  CHECK(none.item_count(1) == 0.0);
  CHECK(none.item_score(1) == 0.0);
  CHECK(none.top_items(3).empty());
  const std::vector<std::pair<funnel::ItemId, double>> dup{{1, 1.0}, {1, 2.0}};
  CHECK_THROWS_WITH(funnel::Popularity::from_item_counts(dup), Contains("duplicate item id 1"));
  const std::vector<std::pair<funnel::ItemId, double>> neg{{7, -1.0}};
  CHECK_THROWS_WITH(funnel::Popularity::from_item_counts(neg), Contains("item 7"));
  CHECK(funnel::Popularity::type_weight(EventType::purchase) == 4.0);
  CHECK(funnel::Popularity::type_weight(EventType::view) == Approx(0.1));
}
