// SPDX-License-Identifier: Apache-2.0
// Catalogue, users and events: JSON Lines loading, validation and round trips.

#include <catch2/catch.hpp>

#include "funnel/catalog.hpp"
#include "funnel/error.hpp"
#include "funnel/event.hpp"
#include "funnel/user.hpp"
#include "test_util.hpp"

using Catch::Matchers::Contains;
using funnel::Catalog;
using funnel::Error;
using funnel::ErrorCode;
using funnel::Event;
using funnel::EventType;

namespace {

// Loads with `load` and returns the message of the funnel::Error it throws
// (checking its code), or "" when it does not throw.
template <class Load>
std::string load_error(const std::filesystem::path& path, const std::string& text, Load load,
                       ErrorCode expected = ErrorCode::format) {
  funnel::testing::write_bytes(path, text);
  try {
    (void)load(path);
  } catch (const Error& e) {
    CHECK(e.code() == expected);
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("Catalog loads every documented field", "[catalog]") {
  funnel::testing::TempDir dir;
  funnel::testing::write_bytes(
      dir / "c.jsonl",
      R"({"id": 7, "title": "保温杯 500ml", "description": "不锈钢", "category": "cups", "brand": "Zojo", "price": 59.5, "attrs": {"color": "red", "in_stock": true, "size": 500}})"
      "\n"
      R"({"id": 3, "title": "Running shoes"})"
      "\n");
  const Catalog c = Catalog::load_jsonl(dir / "c.jsonl");
  REQUIRE(c.size() == 2);
  const funnel::Item& cup = c.at(7);
  CHECK(cup.title == "保温杯 500ml");
  CHECK(cup.description == "不锈钢");
  CHECK(cup.category == "cups");
  CHECK(cup.brand == "Zojo");
  REQUIRE(cup.price.has_value());
  CHECK(*cup.price == 59.5);
  CHECK(cup.attrs.at("color") == "red");
  CHECK(cup.attrs.at("in_stock") == "true");
  CHECK(cup.attrs.at("size") == "500");
  const funnel::Item& shoes = c.at(3);
  CHECK_FALSE(shoes.price.has_value());
  CHECK(shoes.category.empty());
  CHECK(c.items()[0].id == 7);  // file order kept
  CHECK(c.index_of(3) == 1);
  CHECK(c.find(99) == nullptr);
  CHECK(c.index_of(99) == Catalog::npos);
  CHECK(c.categories() == std::vector<std::string>{"cups"});
  CHECK_THROWS_WITH(c.at(99), Contains("99"));
}

TEST_CASE("Catalog rejects malformed lines naming file, line and field", "[catalog]") {
  funnel::testing::TempDir dir;
  const auto path = dir / "bad.jsonl";
  auto load = [](const std::filesystem::path& p) { return Catalog::load_jsonl(p); };
  const std::string ok = R"({"id": 1, "title": "a"})"
                         "\n";
  CHECK_THAT(load_error(path,
                        ok + R"({"id": 1, "title": "b"})"
                             "\n",
                        load),
             Contains("bad.jsonl:2") && Contains("duplicate item id 1"));
  CHECK_THAT(load_error(path,
                        ok + R"({"id": 2})"
                             "\n",
                        load),
             Contains("bad.jsonl:2") && Contains("'title'") && Contains("missing"));
  CHECK_THAT(load_error(path,
                        ok + R"({"id": 2, "title": "b"})"
                             "\n"
                             R"({"id": "x", "title": "b"})"
                             "\n",
                        load),
             Contains("bad.jsonl:3") && Contains("'id'"));
  CHECK_THAT(load_error(path,
                        R"({"id": -4, "title": "b"})"
                        "\n",
                        load),
             Contains("'id'"));
  CHECK_THAT(load_error(path,
                        R"({"id": 4, "title": "b", "price": -1})"
                        "\n",
                        load),
             Contains("'price'"));
  CHECK_THAT(load_error(path,
                        R"({"id": 4, "title": "b", "price": "cheap"})"
                        "\n",
                        load),
             Contains("'price'") && Contains("number"));
  CHECK_THAT(load_error(path,
                        R"({"id": 4, "title": "b", "attrs": [1]})"
                        "\n",
                        load),
             Contains("'attrs'"));
  CHECK_THAT(load_error(path,
                        R"({"id": 4, "title": "b", "attrs": {"k": [1]}})"
                        "\n",
                        load),
             Contains("attrs.k"));
  CHECK_THAT(load_error(path, "{\"id\": 4, \"title\": \"\xE4\xB8\"}\n", load),
             Contains("bad.jsonl:1") && Contains("UTF-8"));
  CHECK_THAT(load_error(path, ok + "{\"id\": 5, \"title\": \n", load),
             Contains("bad.jsonl:2") && Contains("malformed JSON"));
  CHECK_THAT(load_error(
                 dir / "absent.jsonl", "",
                 [&](const auto&) { return Catalog::load_jsonl(dir / "absent" / "x.jsonl"); },
                 ErrorCode::io),
             Contains("absent"));
}

TEST_CASE("Catalog round-trips through save_jsonl and validates add()", "[catalog]") {
  funnel::testing::TempDir dir;
  Catalog c;
  c.add({.id = 10,
         .title = "连衣裙 夏季",
         .category = "dresses",
         .price = 199.0,
         .attrs = {{"color", "蓝"}}});
  c.add({.id = 11, .title = "Tea \"Longjing\" 250g", .brand = "West Lake"});
  c.save_jsonl(dir / "out.jsonl");
  const Catalog back = Catalog::load_jsonl(dir / "out.jsonl");
  REQUIRE(back.size() == 2);
  CHECK(back.at(10).title == "连衣裙 夏季");
  CHECK(back.at(10).attrs.at("color") == "蓝");
  CHECK(*back.at(10).price == 199.0);
  CHECK(back.at(11).title == "Tea \"Longjing\" 250g");
  CHECK(back.at(11).brand == "West Lake");

  CHECK_THROWS_WITH(c.add({.id = 10, .title = "dup"}), Contains("duplicate item id 10"));
  CHECK_THROWS_AS(c.add({.id = 12, .title = "x", .price = -1.0}), Error);
  CHECK_THROWS_WITH(c.add({.id = 13, .title = "bad \xFF"}),
                    Contains("item 13") && Contains("title"));
  CHECK(c.size() == 2);  // nothing half-added
}

TEST_CASE("Catalog vectors are aligned with items", "[catalog]") {
  Catalog c;
  c.add({.id = 5, .title = "a"});
  c.add({.id = 2, .title = "b"});
  CHECK_FALSE(c.has_vectors());
  CHECK(c.vector(5).empty());
  CHECK_THROWS_WITH(c.set_vectors(funnel::Matrix<float>(3, 2)), Contains("expected 2 rows"));
  funnel::Matrix<float> nan(2, 2);
  nan(1, 1) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(c.set_vectors(nan), Contains("item 2"));
  funnel::Matrix<float> v(2, 2);
  v(0, 0) = 1;
  v(1, 1) = 1;
  c.set_vectors(v);
  REQUIRE(c.has_vectors());
  CHECK(c.vector_dim() == 2);
  CHECK(c.vector(2)[1] == 1.0F);
  CHECK(c.vector(5)[0] == 1.0F);
  CHECK(c.vector(99).empty());
  CHECK(c.ids() == std::vector<funnel::ItemId>{5, 2});
}

TEST_CASE("Users load with profile and extra features", "[users]") {
  funnel::testing::TempDir dir;
  funnel::testing::write_bytes(
      dir / "u.jsonl",
      R"({"id": "u1", "age": 34, "gender": "f", "location": "上海", "vip": true, "spend": 12.5, "tier": "gold"})"
      "\n"
      R"({"id": 17850})"
      "\n");
  const auto users = funnel::load_users_jsonl(dir / "u.jsonl");
  REQUIRE(users.size() == 2);
  CHECK(users[0].id == "u1");
  CHECK(users[0].age == 34);
  CHECK(users[0].gender == "f");
  CHECK(users[0].location == "上海");
  CHECK(users[0].categorical.at("vip") == "true");
  CHECK(users[0].categorical.at("tier") == "gold");
  CHECK(users[0].numeric.at("spend") == 12.5);
  CHECK(users[1].id == "17850");  // integer ids become text
  CHECK_FALSE(users[1].age.has_value());

  funnel::save_users_jsonl(dir / "u2.jsonl", users);
  const auto back = funnel::load_users_jsonl(dir / "u2.jsonl");
  REQUIRE(back.size() == 2);
  CHECK(back[0].numeric.at("spend") == 12.5);
  CHECK(back[0].location == "上海");

  auto load = [](const std::filesystem::path& p) { return funnel::load_users_jsonl(p); };
  const auto path = dir / "bad.jsonl";
  CHECK_THAT(load_error(path,
                        R"({"id": "a"})"
                        "\n"
                        R"({"id": "a"})"
                        "\n",
                        load),
             Contains("bad.jsonl:2") && Contains("duplicate user id"));
  CHECK_THAT(load_error(path,
                        R"({"id": "a", "age": "old"})"
                        "\n",
                        load),
             Contains("'age'"));
  CHECK_THAT(load_error(path,
                        R"({"id": "a", "age": 200})"
                        "\n",
                        load),
             Contains("'age'"));
  CHECK_THAT(load_error(path,
                        R"({"age": 20})"
                        "\n",
                        load),
             Contains("'id'"));
  CHECK_THAT(load_error(path,
                        R"({"id": "a", "tags": [1]})"
                        "\n",
                        load),
             Contains("'tags'"));
}

TEST_CASE("Events load, validate and group into histories", "[events]") {
  funnel::testing::TempDir dir;
  funnel::testing::write_bytes(
      dir / "e.jsonl", R"({"user": "u1", "item": 5, "type": "view", "ts": 100})"
                       "\n"
                       R"({"user": "u1", "item": 5, "type": "click", "dwell_s": 31.5, "ts": 90})"
                       "\n"
                       R"({"user": 42, "item": 6, "type": "purchase", "ts": 300})"
                       "\n"
                       R"({"user": "u1", "item": 7, "type": "cart", "ts": 500})"
                       "\n");
  const std::vector<Event> events = funnel::load_events_jsonl(dir / "e.jsonl");
  REQUIRE(events.size() == 4);
  CHECK(events[1].type == EventType::click);
  CHECK(*events[1].dwell_s == 31.5);
  CHECK(events[2].user == "42");
  CHECK(events[3].ts == 500);

  const auto histories = funnel::group_histories(events, 400);
  REQUIRE(histories.at("u1").size() == 2);                // the cart at ts 500 is not before 400
  CHECK(histories.at("u1")[0].type == EventType::click);  // sorted by ts
  CHECK(histories.at("u1")[1].ts == 100);
  CHECK(histories.at("42").size() == 1);

  funnel::save_events_jsonl(dir / "e2.jsonl", events);
  const auto back = funnel::load_events_jsonl(dir / "e2.jsonl");
  REQUIRE(back.size() == 4);
  CHECK(back[1].dwell_s == events[1].dwell_s);
  CHECK(back[2].type == EventType::purchase);

  auto load = [](const std::filesystem::path& p) { return funnel::load_events_jsonl(p); };
  const auto path = dir / "bad.jsonl";
  CHECK_THAT(load_error(path,
                        R"({"user": "u", "item": 1, "type": "like"})"
                        "\n",
                        load),
             Contains("bad.jsonl:1") && Contains("'type'") && Contains("like"));
  CHECK_THAT(load_error(path,
                        R"({"user": "u", "type": "view"})"
                        "\n",
                        load),
             Contains("'item'"));
  CHECK_THAT(load_error(path,
                        R"({"user": "u", "item": 1, "type": "click", "dwell_s": -3})"
                        "\n",
                        load),
             Contains("'dwell_s'"));
  CHECK_THAT(load_error(path,
                        R"({"user": "u", "item": 1, "type": "click", "ts": "noon"})"
                        "\n",
                        load),
             Contains("'ts'"));
  CHECK(funnel::parse_event_type("purchase") == EventType::purchase);
  CHECK(funnel::to_string(EventType::cart) == "cart");
}
