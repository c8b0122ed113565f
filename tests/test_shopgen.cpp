// SPDX-License-Identifier: Apache-2.0
// Tests of the synthetic shop generator: determinism, round trips through
// funnel's loaders, event semantics, and that the events really follow the
// documented ground truth (recomputed here independently from the files).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <numbers>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "funnel/catalog.hpp"
#include "funnel/error.hpp"
#include "funnel/event.hpp"
#include "funnel/npy.hpp"
#include "funnel/user.hpp"
#include "shopgen/shopgen.hpp"
#include "test_util.hpp"

using Catch::Matchers::Contains;
using funnel::Event;
using funnel::EventType;
using funnel::shopgen::ShopConfig;

namespace {

ShopConfig small_config(std::uint64_t seed = 7) {
  ShopConfig c;
  c.items = 300;
  c.users = 200;
  c.days = 7;
  c.seed = seed;
  return c;
}

/// Big enough for rates and calibration to be measured to about +-10%.
ShopConfig medium_config() {
  ShopConfig c;
  c.items = 600;
  c.users = 500;
  c.days = 14;
  c.seed = 11;
  return c;
}

constexpr std::array<const char*, 10> kFiles = {"catalog.jsonl",
                                                "users.jsonl",
                                                "events.jsonl",
                                                "truth/params.json",
                                                "truth/item_truth.jsonl",
                                                "truth/user_truth.jsonl",
                                                "truth/item_latent.npy",
                                                "truth/user_latent.npy",
                                                "truth/item_purchase_latent.npy",
                                                "truth/user_purchase_latent.npy"};

std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& path) {
  std::vector<nlohmann::json> out;
  std::istringstream in(funnel::testing::read_bytes(path));
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

/// The documented model (docs/shopgen.md), evaluated only from the written
/// files, as an independent reference for true_scores().
class FileModel {
 public:
  explicit FileModel(const std::filesystem::path& dir)
      : params_(nlohmann::json::parse(funnel::testing::read_bytes(dir / "truth/params.json"))),
        items_(read_jsonl(dir / "truth/item_truth.jsonl")),
        users_(read_jsonl(dir / "truth/user_truth.jsonl")),
        item_latent_(funnel::load_npy_f32(dir / "truth/item_latent.npy")),
        user_latent_(funnel::load_npy_f32(dir / "truth/user_latent.npy")),
        item_buy_(funnel::load_npy_f32(dir / "truth/item_purchase_latent.npy")),
        user_buy_(funnel::load_npy_f32(dir / "truth/user_purchase_latent.npy")) {
    for (const auto& c : params_["categories"]) categories_[c["key"]] = c;
    for (const auto& l : params_["locations"]) locations_[l["name"]] = l;
  }

  [[nodiscard]] funnel::shopgen::TrueScores scores(std::size_t u, std::size_t i) const {
    const auto& m = params_["config"]["model"];
    const auto& user = users_[u];
    const auto& item = items_[i];
    const auto dot = [](const funnel::Matrix<float>& a, std::size_t ra,
                        const funnel::Matrix<float>& b, std::size_t rb) {
      double s = 0.0;
      for (std::size_t d = 0; d < a.cols(); ++d)
        s += static_cast<double>(a(ra, d)) * static_cast<double>(b(rb, d));
      return s;
    };
    const double z_click =
        (dot(user_latent_, u, item_latent_, i) - params_["interest_mean"].get<double>()) /
        params_["interest_sd"].get<double>();
    const double z_buy =
        (dot(user_buy_, u, item_buy_, i) - params_["purchase_mean"].get<double>()) /
        params_["purchase_sd"].get<double>();
    const auto& cat = categories_.at(item["category"].get<std::string>());
    const std::string gender = user["gender"];
    double g = 0.5 * (cat["gender_f"].get<double>() + cat["gender_m"].get<double>());
    if (gender == "f") g = cat["gender_f"];
    if (gender == "m") g = cat["gender_m"];
    const double affinity =
        g + cat["age_slope"].get<double>() * (user["age"].get<double>() - 35.0) / 15.0 +
        locations_
            .at(user["location"].get<std::string>())["bias"][item["category"].get<std::string>()]
            .get<double>();
    const auto& fav = user["favorite_brands"];
    const bool favorite = std::find(fav.begin(), fav.end(), item["brand"]) != fav.end();
    const double loyalty = favorite ? user["brand_loyalty"].get<double>() : 0.0;
    const double gap = item["log_price_ratio"].get<double>() - user["budget"].get<double>();
    const double over = std::max(0.0, gap);
    const double under = std::max(0.0, -gap);
    const double ps = user["price_sensitivity"];
    const double quality = item["quality"];

    funnel::shopgen::TrueScores s;
    s.p_click = sigmoid(
        m["click_bias"].get<double>() + m["click_interest"].get<double>() * z_click +
        m["click_affinity"].get<double>() * affinity + m["click_quality"].get<double>() * quality +
        m["click_loyalty"].get<double>() * loyalty -
        m["click_price"].get<double>() * ps *
            (over + m["price_under_weight"].get<double>() * under));
    const double rho = params_["config"]["task_correlation"];
    const double match = rho * z_click + std::sqrt(1.0 - rho * rho) * z_buy;
    s.p_purchase_given_click = item["in_stock"].get<bool>()
                                   ? sigmoid(m["purchase_bias"].get<double>() +
                                             m["purchase_interest"].get<double>() * match +
                                             m["purchase_quality"].get<double>() * quality +
                                             m["purchase_loyalty"].get<double>() * loyalty -
                                             m["purchase_price"].get<double>() * ps * over)
                                   : 0.0;
    // E[clamp(exp(mu + sigma Z), lo, hi)] by Simpson's rule over Z in [-10, 10].
    const double mu =
        std::log(m["dwell_median_s"].get<double>()) + cat["dwell_offset"].get<double>() +
        m["dwell_interest"].get<double>() * z_click + m["dwell_quality"].get<double>() * quality +
        m["dwell_affinity"].get<double>() * affinity;
    const double sigma = m["dwell_sigma"];
    const double lo = m["dwell_min_s"];
    const double hi = m["dwell_max_s"];
    const int n = 4000;
    const double h = 20.0 / n;
    double integral = 0.0;
    for (int k = 0; k <= n; ++k) {
      const double z = -10.0 + h * k;
      const double f = std::clamp(std::exp(mu + sigma * z), lo, hi) * std::exp(-0.5 * z * z) /
                       std::sqrt(2.0 * std::numbers::pi);
      integral += f * ((k == 0 || k == n) ? 1.0 : (k % 2 == 1 ? 4.0 : 2.0));
    }
    s.dwell_s = integral * h / 3.0;
    return s;
  }

 private:
  nlohmann::json params_;
  std::vector<nlohmann::json> items_;
  std::vector<nlohmann::json> users_;
  funnel::Matrix<float> item_latent_;
  funnel::Matrix<float> user_latent_;
  funnel::Matrix<float> item_buy_;
  funnel::Matrix<float> user_buy_;
  std::map<std::string, nlohmann::json> categories_;
  std::map<std::string, nlohmann::json> locations_;
};

/// Whitespace tokens; tokens with non-ASCII bytes are split further into
/// their UTF-8 characters, so that Chinese words overlap by character.
std::set<std::string> title_tokens(const std::string& text) {
  std::set<std::string> out;
  std::istringstream in(text);
  std::string word;
  while (in >> word) {
    const bool ascii = std::all_of(word.begin(), word.end(),
                                   [](char ch) { return static_cast<unsigned char>(ch) < 0x80; });
    if (ascii) {
      out.insert(word);
      continue;
    }
    for (std::size_t i = 0; i < word.size();) {
      std::size_t len = 1;
      const auto lead = static_cast<unsigned char>(word[i]);
      if (lead >= 0xF0)
        len = 4;
      else if (lead >= 0xE0)
        len = 3;
      else if (lead >= 0xC0)
        len = 2;
      out.insert(word.substr(i, len));
      i += len;
    }
  }
  return out;
}

double jaccard(const std::set<std::string>& a, const std::set<std::string>& b) {
  std::size_t common = 0;
  for (const auto& t : a) common += b.count(t);
  const std::size_t uni = a.size() + b.size() - common;
  return uni == 0 ? 0.0 : static_cast<double>(common) / static_cast<double>(uni);
}

}  // namespace

TEST_CASE("same seed gives byte-identical files, another seed different ones", "[shopgen]") {
  const funnel::testing::TempDir tmp;
  funnel::shopgen::write_shop(funnel::shopgen::generate_shop(small_config(7)), tmp / "a");
  funnel::shopgen::write_shop(funnel::shopgen::generate_shop(small_config(7)), tmp / "b");
  funnel::shopgen::write_shop(funnel::shopgen::generate_shop(small_config(8)), tmp / "c");
  for (const char* f : kFiles) {
    INFO(f);
    const std::string a = funnel::testing::read_bytes(tmp / "a" / f);
    CHECK(a.size() > 100);
    CHECK(a == funnel::testing::read_bytes(tmp / "b" / f));
  }
  for (const char* f : {"catalog.jsonl", "users.jsonl", "events.jsonl", "truth/item_latent.npy"}) {
    INFO(f);
    CHECK(funnel::testing::read_bytes(tmp / "a" / f) != funnel::testing::read_bytes(tmp / "c" / f));
  }
}

TEST_CASE("the catalogue does not depend on the number of users or days", "[shopgen]") {
  ShopConfig a = small_config();
  ShopConfig b = small_config();
  b.users = 50;
  b.days = 3;
  const auto sa = funnel::shopgen::generate_shop(a);
  const auto sb = funnel::shopgen::generate_shop(b);
  REQUIRE(sa.catalog.size() == sb.catalog.size());
  for (std::size_t i = 0; i < sa.catalog.size(); ++i) {
    const funnel::Item& x = sa.catalog.items()[i];
    const funnel::Item& y = sb.catalog.items()[i];
    CHECK(std::tie(x.id, x.title, x.description, x.category, x.brand, x.price, x.attrs) ==
          std::tie(y.id, y.title, y.description, y.category, y.brand, y.price, y.attrs));
  }
  CHECK(sa.truth.item_latent.values() == sb.truth.item_latent.values());
  // The first 50 users are the same people.
  for (std::size_t u = 0; u < 50; ++u) CHECK(sa.users[u].location == sb.users[u].location);
}

TEST_CASE("files round-trip through funnel's loaders", "[shopgen]") {
  const funnel::testing::TempDir tmp;
  const ShopConfig config = small_config();
  const auto shop = funnel::shopgen::generate_shop(config);
  funnel::shopgen::write_shop(shop, tmp.path());

  const funnel::Catalog catalog = funnel::Catalog::load_jsonl(tmp / "catalog.jsonl");
  const auto users = funnel::load_users_jsonl(tmp / "users.jsonl");
  const auto events = funnel::load_events_jsonl(tmp / "events.jsonl");
  REQUIRE(catalog.size() == config.items);
  REQUIRE(users.size() == config.users);
  REQUIRE(events.size() == shop.events.size());
  CHECK(events.size() > 2000);
  CHECK(catalog.categories().size() == config.categories);

  std::unordered_set<std::string> user_ids;
  for (const auto& u : users) user_ids.insert(u.id);
  for (std::size_t i = 0; i < events.size(); ++i) {
    const Event& e = events[i];
    const Event& g = shop.events[i];
    REQUIRE(user_ids.count(e.user) == 1);
    REQUIRE(catalog.contains(e.item));
    REQUIRE(std::tie(e.user, e.item, e.type, e.ts, e.dwell_s) ==
            std::tie(g.user, g.item, g.type, g.ts, g.dwell_s));
  }
  for (std::size_t u = 0; u < users.size(); ++u) {
    CHECK(users[u].id == "u" + std::to_string(u + 1));
    CHECK(users[u].age == shop.users[u].age);
    REQUIRE(users[u].age.has_value());
    CHECK(*users[u].age >= 18);
    CHECK(*users[u].age <= 70);
    CHECK(users[u].location == shop.users[u].location);
    CHECK(users[u].gender == shop.users[u].gender);
  }
  for (const funnel::Item& item : catalog.items()) {
    CHECK(item.price.has_value());
    CHECK(!item.category.empty());
    CHECK(!item.brand.empty());
    CHECK(!item.description.empty());
    for (const char* key : {"category_zh", "category_en", "in_stock", "color"})
      CHECK(item.attrs.count(key) == 1);
    CHECK(item.attrs.count("title_en") + item.attrs.count("title_zh") == 1);
  }
  const auto item_latent = funnel::load_npy_f32(tmp / "truth/item_latent.npy");
  const auto user_latent = funnel::load_npy_f32(tmp / "truth/user_latent.npy");
  CHECK(item_latent.rows() == config.items);
  CHECK(item_latent.cols() == config.latent_dim);
  CHECK(user_latent.rows() == config.users);
  CHECK(item_latent.values() == shop.truth.item_latent.values());
  const auto params = nlohmann::json::parse(funnel::testing::read_bytes(tmp / "truth/params.json"));
  CHECK(params["config"]["seed"] == config.seed);
  CHECK(params["config"]["model"]["click_bias"] == config.model.click_bias);
  CHECK(params["stats"]["events"] == shop.events.size());
}

TEST_CASE("every event follows the shared event semantics", "[shopgen]") {
  const ShopConfig config = small_config(3);
  const auto shop = funnel::shopgen::generate_shop(config);
  const auto& events = shop.events;
  REQUIRE(!events.empty());

  std::unordered_map<std::string, std::vector<std::size_t>> by_pair;  // "user item" -> indices
  std::size_t counts[4] = {0, 0, 0, 0};
  for (std::size_t i = 0; i < events.size(); ++i) {
    const Event& e = events[i];
    ++counts[static_cast<int>(e.type)];
    if (i > 0) {
      const Event& p = events[i - 1];
      REQUIRE(std::tie(p.ts, p.user, p.item, p.type) < std::tie(e.ts, e.user, e.item, e.type));
    }
    REQUIRE(e.ts >= config.start_ts);
    REQUIRE(e.ts < config.start_ts + static_cast<std::int64_t>(config.days + 1) * 86400);
    if (e.type == EventType::click) {
      REQUIRE(e.dwell_s.has_value());
      REQUIRE(*e.dwell_s >= config.model.dwell_min_s);
      REQUIRE(*e.dwell_s <= config.model.dwell_max_s);
    } else {
      REQUIRE_FALSE(e.dwell_s.has_value());
    }
    by_pair[e.user + " " + std::to_string(e.item)].push_back(i);
  }
  CHECK(counts[0] > 0);
  CHECK(counts[1] > 0);
  CHECK(counts[2] > 0);
  CHECK(counts[3] > 0);

  // Each click follows a view, each cart and purchase a click, of the same
  // user and item, strictly later and within 3600 s.
  for (const auto& [pair, idx] : by_pair) {
    for (const std::size_t i : idx) {
      const Event& e = events[i];
      if (e.type == EventType::view) continue;
      const EventType before = e.type == EventType::click ? EventType::view : EventType::click;
      const bool ok = std::any_of(idx.begin(), idx.end(), [&](std::size_t j) {
        return events[j].type == before && events[j].ts < e.ts && e.ts <= events[j].ts + 3600;
      });
      INFO(pair << " event " << i << " type " << funnel::to_string(e.type));
      REQUIRE(ok);
    }
  }

  // The trainer's labelling rule recovers exactly the simulated outcomes:
  // view -> clicked iff a click follows within (ts, ts + 3600].
  REQUIRE(shop.truth.impressions.size() == counts[0]);
  std::size_t purchased = 0;
  for (const auto& imp : shop.truth.impressions) {
    const Event& v = events[imp.event];
    REQUIRE(v.type == EventType::view);
    REQUIRE(v.item == 100001 + static_cast<std::int64_t>(imp.item));
    REQUIRE(v.user == shop.users[imp.user].id);
    const auto& idx = by_pair[v.user + " " + std::to_string(v.item)];
    const auto click = std::find_if(idx.begin(), idx.end(), [&](std::size_t j) {
      return events[j].type == EventType::click && events[j].ts > v.ts &&
             events[j].ts <= v.ts + 3600;
    });
    REQUIRE((click != idx.end()) == imp.clicked);
    if (click == idx.end()) continue;
    const std::int64_t click_ts = events[*click].ts;
    const bool converted = std::any_of(idx.begin(), idx.end(), [&](std::size_t j) {
      return events[j].type == EventType::purchase && events[j].ts > click_ts &&
             events[j].ts <= click_ts + 3600;
    });
    REQUIRE(converted == imp.purchased);
    purchased += imp.purchased ? 1 : 0;
  }
  CHECK(purchased == counts[3]);
}

TEST_CASE("the truth is real: events are calibrated to the true probabilities", "[shopgen]") {
  const ShopConfig config = medium_config();
  const auto shop = funnel::shopgen::generate_shop(config);
  const auto& impressions = shop.truth.impressions;
  REQUIRE(impressions.size() > 20000);

  // Bins of true p_click: observed CTR within 4 standard errors of the mean p.
  const std::vector<double> edges = {0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0};
  std::size_t tested_bins = 0;
  double clicked_p = 0.0;
  double unclicked_p = 0.0;
  std::size_t clicks = 0;
  for (std::size_t b = 0; b + 1 < edges.size(); ++b) {
    double sum_p = 0.0;
    double var = 0.0;
    std::size_t n = 0;
    std::size_t k = 0;
    for (const auto& imp : impressions) {
      if (imp.p_click < edges[b] || imp.p_click >= edges[b + 1]) continue;
      ++n;
      sum_p += imp.p_click;
      var += imp.p_click * (1.0 - imp.p_click);
      k += imp.clicked ? 1 : 0;
    }
    if (n < 200) continue;
    ++tested_bins;
    INFO("bin [" << edges[b] << ", " << edges[b + 1] << "): n " << n << ", clicks " << k
                 << ", expected " << sum_p);
    CHECK(std::abs(static_cast<double>(k) - sum_p) <= 4.0 * std::sqrt(var) + 1.0);
  }
  CHECK(tested_bins >= 5);
  for (const auto& imp : impressions) {
    (imp.clicked ? clicked_p : unclicked_p) += imp.p_click;
    clicks += imp.clicked ? 1 : 0;
  }
  clicked_p /= static_cast<double>(clicks);
  unclicked_p /= static_cast<double>(impressions.size() - clicks);
  CHECK(clicked_p > 2.0 * unclicked_p);

  // Purchases and dwell of clicks match their true expectations.
  double expected_purchases = 0.0;
  double purchase_var = 0.0;
  std::size_t purchases = 0;
  double dwell_sum = 0.0;
  double dwell_sq = 0.0;
  double expected_dwell = 0.0;
  std::size_t n_dwell = 0;
  for (const auto& imp : impressions) {
    const auto truth = funnel::shopgen::true_scores(shop, imp.user, imp.item);
    REQUIRE(truth.p_click == imp.p_click);
    if (!imp.clicked) continue;
    expected_purchases += truth.p_purchase_given_click;
    purchase_var += truth.p_purchase_given_click * (1.0 - truth.p_purchase_given_click);
    purchases += imp.purchased ? 1 : 0;
  }
  for (const Event& e : shop.events) {
    if (e.type != EventType::click) continue;
    const std::size_t row = static_cast<std::size_t>(e.item - 100001);
    const std::size_t user = std::stoul(e.user.substr(1)) - 1;
    expected_dwell += funnel::shopgen::true_scores(shop, user, row).dwell_s;
    dwell_sum += *e.dwell_s;
    dwell_sq += *e.dwell_s * *e.dwell_s;
    ++n_dwell;
  }
  CHECK(std::abs(static_cast<double>(purchases) - expected_purchases) <=
        4.0 * std::sqrt(purchase_var) + 1.0);
  const double n = static_cast<double>(n_dwell);
  const double dwell_sd = std::sqrt(dwell_sq / n - (dwell_sum / n) * (dwell_sum / n));
  CHECK(std::abs(dwell_sum / n - expected_dwell / n) <= 4.0 * dwell_sd / std::sqrt(n) + 0.1);

  // The documented ranges (docs/shopgen.md): CTR 3-8%, conversion 5-15%.
  const double ctr = static_cast<double>(clicks) / static_cast<double>(impressions.size());
  const double cvr = static_cast<double>(purchases) / static_cast<double>(clicks);
  CHECK(ctr >= 0.03);
  CHECK(ctr <= 0.08);
  CHECK(cvr >= 0.05);
  CHECK(cvr <= 0.15);
}

TEST_CASE("true_scores agrees with the model recomputed from the written files", "[shopgen]") {
  const funnel::testing::TempDir tmp;
  ShopConfig config = small_config(5);
  config.task_correlation = -0.6;  // exercise the sqrt(1 - rho^2) branch with a sign
  const auto shop = funnel::shopgen::generate_shop(config);
  funnel::shopgen::write_shop(shop, tmp.path());
  const FileModel model(tmp.path());
  std::size_t out_of_stock = 0;
  for (std::size_t k = 0; k < 400; ++k) {
    const std::size_t u = (k * 37) % config.users;
    const std::size_t i = (k * 101 + 13) % config.items;
    const auto want = model.scores(u, i);
    const auto got = funnel::shopgen::true_scores(shop, u, i);
    INFO("user " << u << " item " << i);
    CHECK(got.p_click == Approx(want.p_click).epsilon(1e-9));
    CHECK(got.p_purchase_given_click ==
          Approx(want.p_purchase_given_click).epsilon(1e-9).margin(1e-15));
    CHECK(got.dwell_s == Approx(want.dwell_s).epsilon(1e-6));
    CHECK(got.dwell_s >= config.model.dwell_min_s);
    CHECK(got.dwell_s <= config.model.dwell_max_s);
    out_of_stock += got.p_purchase_given_click == 0.0 ? 1 : 0;
  }
  CHECK(out_of_stock > 0);  // the in_stock branch was exercised
  CHECK_THROWS_AS(funnel::shopgen::true_scores(shop, config.users, 0), funnel::Error);
  CHECK_THROWS_AS(funnel::shopgen::true_scores(shop, 0, config.items), funnel::Error);
}

TEST_CASE("task_correlation controls how click and purchase drivers co-vary", "[shopgen]") {
  // Over random pairs, the correlation between the click and purchase
  // logits' pair-specific parts follows rho (quality and loyalty are shared).
  const auto correlation = [](double rho) {
    ShopConfig c = small_config();
    c.days = 1;
    c.task_correlation = rho;
    c.model.click_quality = c.model.purchase_quality = 0.0;
    c.model.click_loyalty = c.model.purchase_loyalty = 0.0;
    c.model.click_price = c.model.purchase_price = 0.0;
    c.model.click_affinity = 0.0;
    const auto shop = funnel::shopgen::generate_shop(c);
    double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
    std::size_t n = 0;
    for (std::size_t u = 0; u < c.users; u += 3) {
      for (std::size_t i = 0; i < c.items; i += 7) {
        const auto s = funnel::shopgen::true_scores(shop, u, i);
        if (s.p_purchase_given_click == 0.0) continue;  // out of stock
        const double x = std::log(s.p_click / (1 - s.p_click));
        const double y = std::log(s.p_purchase_given_click / (1 - s.p_purchase_given_click));
        sx += x, sy += y, sxx += x * x, syy += y * y, sxy += x * y;
        ++n;
      }
    }
    const double m = static_cast<double>(n);
    return (sxy / m - sx / m * sy / m) /
           std::sqrt((sxx / m - sx / m * sx / m) * (syy / m - sy / m * sy / m));
  };
  CHECK(correlation(1.0) == Approx(1.0).margin(1e-9));
  CHECK(correlation(-1.0) == Approx(-1.0).margin(1e-9));
  CHECK(std::abs(correlation(0.0)) < 0.1);
  CHECK(correlation(0.5) == Approx(0.5).margin(0.1));
}

TEST_CASE("titles of one category share more tokens than titles of different ones", "[shopgen]") {
  const auto shop = funnel::shopgen::generate_shop(small_config());
  const auto items = shop.catalog.items();
  std::vector<std::set<std::string>> tokens;
  for (const funnel::Item& item : items) {
    const auto other =
        item.attrs.count("title_en") ? item.attrs.at("title_en") : item.attrs.at("title_zh");
    tokens.push_back(title_tokens(item.title + " " + other));
  }
  double same_brand = 0.0, same_cat = 0.0, diff_cat = 0.0;
  std::size_t n_brand = 0, n_cat = 0, n_diff = 0;
  std::size_t zh_titles = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    zh_titles += items[i].attrs.count("title_en");
    for (std::size_t j = i + 1; j < items.size(); ++j) {
      const double s = jaccard(tokens[i], tokens[j]);
      if (items[i].category != items[j].category) {
        diff_cat += s, ++n_diff;
      } else if (items[i].brand == items[j].brand) {
        same_brand += s, ++n_brand;
      } else {
        same_cat += s, ++n_cat;
      }
    }
  }
  same_brand /= static_cast<double>(n_brand);
  same_cat /= static_cast<double>(n_cat);
  diff_cat /= static_cast<double>(n_diff);
  INFO("same brand " << same_brand << ", same category " << same_cat << ", different " << diff_cat);
  CHECK(same_cat > 2.0 * diff_cat);
  CHECK(same_brand > same_cat + 0.05);
  // About half of the titles are Chinese (the even rows).
  CHECK(zh_titles == (items.size() + 1) / 2);
}

TEST_CASE("the exposure mixture and the location effect are visible in the events", "[shopgen]") {
  const auto shop = funnel::shopgen::generate_shop(medium_config());
  std::size_t by_source[4] = {0, 0, 0, 0};
  std::size_t clicks_by_source[4] = {0, 0, 0, 0};
  for (const auto& imp : shop.truth.impressions) {
    ++by_source[static_cast<int>(imp.source)];
    clicks_by_source[static_cast<int>(imp.source)] += imp.clicked ? 1 : 0;
  }
  for (const std::size_t n : by_source) CHECK(n > 1000);
  const auto ctr = [&](funnel::shopgen::ExposureSource s) {
    const auto k = static_cast<int>(s);
    return static_cast<double>(clicks_by_source[k]) / static_cast<double>(by_source[k]);
  };
  // Personalised exposure clicks better than random exposure.
  CHECK(ctr(funnel::shopgen::ExposureSource::preferred) >
        2.0 * ctr(funnel::shopgen::ExposureSource::random));

  // Hangzhou users click tea more than others do (a documented city taste);
  // many users for a few days, so that enough of them live in Hangzhou.
  ShopConfig many = small_config(13);
  many.users = 2500;
  many.days = 6;
  const auto city_shop = funnel::shopgen::generate_shop(many);
  const auto& truth = city_shop.truth;
  std::size_t tea = 0;
  while (truth.categories[tea].key != "tea") ++tea;
  std::size_t hz_tea = 0, hz_all = 0, other_tea = 0, other_all = 0;
  for (const auto& imp : truth.impressions) {
    if (!imp.clicked) continue;
    const bool hz = city_shop.users[imp.user].location == "Hangzhou";
    const bool is_tea = truth.items[imp.item].category == tea;
    (hz ? hz_all : other_all) += 1;
    (hz ? hz_tea : other_tea) += is_tea ? 1 : 0;
  }
  REQUIRE(hz_all > 150);
  const double hz_share = static_cast<double>(hz_tea) / static_cast<double>(hz_all);
  const double other_share = static_cast<double>(other_tea) / static_cast<double>(other_all);
  INFO("tea share of clicks: Hangzhou " << hz_share << ", elsewhere " << other_share);
  CHECK(hz_share > 2.0 * other_share);
}

TEST_CASE("invalid configs are rejected naming the field", "[shopgen]") {
  const auto expect_error = [](const ShopConfig& c, const std::string& field) {
    INFO(field);
    try {
      c.validate();
      FAIL("no error for " << field);
    } catch (const funnel::Error& e) {
      CHECK(e.code() == funnel::ErrorCode::invalid_argument);
      CHECK_THAT(e.what(), Contains(field));
    }
    CHECK_THROWS_AS(funnel::shopgen::generate_shop(c), funnel::Error);
  };
  CHECK_NOTHROW(ShopConfig{}.validate());
  ShopConfig c;
  c.items = 0;
  expect_error(c, "items");
  c = {};
  c.users = 0;
  expect_error(c, "users");
  c = {};
  c.days = 0;
  expect_error(c, "days");
  c = {};
  c.sessions_per_user_per_day = std::nan("");
  expect_error(c, "sessions_per_user_per_day");
  c = {};
  c.impressions_per_session = 0;
  expect_error(c, "impressions_per_session");
  c = {};
  c.task_correlation = 1.5;
  expect_error(c, "task_correlation");
  c = {};
  c.start_ts = -1;
  expect_error(c, "start_ts");
  c = {};
  c.categories = 15;
  expect_error(c, "categories");
  c = {};
  c.brands_per_category = 0;
  expect_error(c, "brands_per_category");
  c = {};
  c.latent_dim = 1;
  expect_error(c, "latent_dim");
  c = {};
  c.exposure_random = -0.1;
  expect_error(c, "exposure_random");
  c = {};
  c.exposure_popular = c.exposure_preferred = c.exposure_similar = c.exposure_random = 0.0;
  expect_error(c, "exposure");
  c = {};
  c.model.dwell_sigma = 0.0;
  expect_error(c, "model.dwell_sigma");
  c = {};
  c.model.dwell_min_s = 700.0;
  expect_error(c, "dwell_min_s");
  c = {};
  c.model.click_bias = INFINITY;
  expect_error(c, "model.click_bias");
}

TEST_CASE("tiny and single-category shops are well formed", "[shopgen]") {
  ShopConfig c;
  c.items = 1;
  c.users = 1;
  c.days = 2;
  c.categories = 1;
  c.brands_per_category = 1;
  const auto shop = funnel::shopgen::generate_shop(c);
  CHECK(shop.catalog.size() == 1);
  CHECK(shop.users.size() == 1);
  for (const Event& e : shop.events) CHECK(e.item == 100001);
  // One item can be shown at most once per 2 hours.
  std::int64_t last = -1;
  for (const Event& e : shop.events) {
    if (e.type != EventType::view) continue;
    if (last >= 0) CHECK(e.ts - last >= 7200);
    last = e.ts;
  }
  const auto s = funnel::shopgen::true_scores(shop, 0, 0);
  CHECK(std::isfinite(s.p_click));
  CHECK(std::isfinite(s.dwell_s));
}
