// SPDX-License-Identifier: Apache-2.0
// funnel-retail-check: compares the converter's catalog.jsonl, users.jsonl
// and events.jsonl with hand-written expected files, field by field (both
// read with funnel's own loaders, so key order and number spelling do not
// matter; prices compare within 1e-9). Used by the converter's CTest tests.
//
//   funnel-retail-check ACTUAL_DIR EXPECTED_DIR
//
// EXPECTED_DIR holds expected_catalog.jsonl, expected_users.jsonl and
// expected_events.jsonl. Exit status 0 when everything matches, 1 (with the
// first difference on stderr) otherwise, 2 for bad usage.

#include <cmath>
#include <cstddef>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "funnel/catalog.hpp"
#include "funnel/event.hpp"
#include "funnel/user.hpp"

namespace fs = std::filesystem;

namespace {

// Collects the first difference; later ones are ignored.
class Diff {
 public:
  template <class T>
  void check(const std::string& where, const char* field, const T& expected, const T& actual) {
    if (found_ || expected == actual) return;
    std::ostringstream os;
    os << where << ": " << field << ": expected " << expected << ", got " << actual;
    message_ = os.str();
    found_ = true;
  }
  void check_price(const std::string& where, const std::optional<double>& expected,
                   const std::optional<double>& actual) {
    const bool same = expected.has_value() == actual.has_value() &&
                      (!expected || std::abs(*expected - *actual) <= 1e-9);
    check(where, "price", expected ? std::to_string(*expected) : std::string("absent"),
          same ? (expected ? std::to_string(*expected) : std::string("absent"))
               : (actual ? std::to_string(*actual) : std::string("absent")));
  }
  [[nodiscard]] bool found() const { return found_; }
  [[nodiscard]] const std::string& message() const { return message_; }

 private:
  bool found_ = false;
  std::string message_;
};

std::string row(const char* file, std::size_t i) {
  return std::string(file) + " row " + std::to_string(i + 1);
}

std::string attrs_text(const std::map<std::string, std::string>& attrs) {
  std::string out;
  for (const auto& [key, value] : attrs) {
    out.append(key).append("=").append(value).append(";");
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: funnel-retail-check ACTUAL_DIR EXPECTED_DIR\n";
    return 2;
  }
  try {
    const fs::path actual = argv[1];
    const fs::path expected = argv[2];
    Diff diff;

    const funnel::Catalog cat_a = funnel::Catalog::load_jsonl(actual / "catalog.jsonl");
    const funnel::Catalog cat_e = funnel::Catalog::load_jsonl(expected / "expected_catalog.jsonl");
    diff.check("catalog.jsonl", "items", cat_e.size(), cat_a.size());
    for (std::size_t i = 0; i < cat_e.size() && i < cat_a.size(); ++i) {
      const funnel::Item& e = cat_e.items()[i];
      const funnel::Item& a = cat_a.items()[i];
      const std::string where = row("catalog.jsonl", i);
      diff.check(where, "id", e.id, a.id);
      diff.check(where, "title", e.title, a.title);
      diff.check(where, "description", e.description, a.description);
      diff.check(where, "category", e.category, a.category);
      diff.check(where, "brand", e.brand, a.brand);
      diff.check_price(where, e.price, a.price);
      diff.check(where, "attrs", attrs_text(e.attrs), attrs_text(a.attrs));
    }

    const std::vector<funnel::UserProfile> users_a =
        funnel::load_users_jsonl(actual / "users.jsonl");
    const std::vector<funnel::UserProfile> users_e =
        funnel::load_users_jsonl(expected / "expected_users.jsonl");
    diff.check("users.jsonl", "users", users_e.size(), users_a.size());
    for (std::size_t i = 0; i < users_e.size() && i < users_a.size(); ++i) {
      const funnel::UserProfile& e = users_e[i];
      const funnel::UserProfile& a = users_a[i];
      const std::string where = row("users.jsonl", i);
      diff.check(where, "id", e.id, a.id);
      diff.check(where, "location", e.location, a.location);
      diff.check(where, "gender", e.gender, a.gender);
      diff.check(where, "age", e.age.value_or(-1), a.age.value_or(-1));
      diff.check(where, "other features", e.numeric.size() + e.categorical.size(),
                 a.numeric.size() + a.categorical.size());
    }

    const std::vector<funnel::Event> events_a = funnel::load_events_jsonl(actual / "events.jsonl");
    const std::vector<funnel::Event> events_e =
        funnel::load_events_jsonl(expected / "expected_events.jsonl");
    diff.check("events.jsonl", "events", events_e.size(), events_a.size());
    for (std::size_t i = 0; i < events_e.size() && i < events_a.size(); ++i) {
      const funnel::Event& e = events_e[i];
      const funnel::Event& a = events_a[i];
      const std::string where = row("events.jsonl", i);
      diff.check(where, "user", e.user, a.user);
      diff.check(where, "item", e.item, a.item);
      diff.check(where, "type", std::string(funnel::to_string(e.type)),
                 std::string(funnel::to_string(a.type)));
      diff.check(where, "ts", e.ts, a.ts);
      diff.check(where, "dwell_s", e.dwell_s.value_or(-1.0), a.dwell_s.value_or(-1.0));
    }

    if (diff.found()) {
      std::cerr << "funnel-retail-check: " << diff.message() << "\n";
      return 1;
    }
    std::cout << "funnel-retail-check: " << cat_a.size() << " items, " << users_a.size()
              << " users, " << events_a.size() << " events as expected\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "funnel-retail-check: " << e.what() << "\n";
    return 1;
  }
}
