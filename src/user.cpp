// SPDX-License-Identifier: Apache-2.0
#include "funnel/user.hpp"

#include <algorithm>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"
#include "internal/jsonl.hpp"
#include "internal/utf8.hpp"

namespace funnel {

std::vector<UserProfile> load_users_jsonl(const std::filesystem::path& path) {
  std::vector<UserProfile> users;
  std::unordered_set<std::string> seen;
  detail::for_each_jsonl(path, [&](const detail::JsonLine& line) {
    UserProfile u;
    u.id = *line.string_or_integer("id", true);
    if (u.id.empty()) line.fail("id", "must not be empty");
    if (!seen.insert(u.id).second) line.fail("id", "duplicate user id '" + u.id + "'");
    if (const auto age = line.integer("age", false)) {
      if (*age < 0 || *age > 150) line.fail("age", "must be within 0..150");
      u.age = static_cast<int>(*age);
    }
    u.gender = line.string("gender", false).value_or("");
    u.location = line.string("location", false).value_or("");
    for (const auto& [key, value] : line.value().items()) {
      if (key == "id" || key == "age" || key == "gender" || key == "location") continue;
      if (value.is_number()) {
        u.numeric[key] = *line.number(key.c_str(), true);
      } else if (value.is_string()) {
        u.categorical[key] = value.get<std::string>();
      } else if (value.is_boolean()) {
        u.categorical[key] = value.get<bool>() ? "true" : "false";
      } else if (!value.is_null()) {
        line.fail(key, "expected a number, string or boolean feature");
      }
    }
    users.push_back(std::move(u));
  });
  return users;
}

void save_users_jsonl(const std::filesystem::path& path, std::span<const UserProfile> users) {
  std::unordered_set<std::string> seen;
  for (const UserProfile& u : users) {
    detail::require(!u.id.empty(), "user profile with an empty id");
    detail::require(seen.insert(u.id).second, "duplicate user id '", u.id, "'");
  }
  detail::write_file_atomic(path, [&](std::ostream& out) {
    for (const UserProfile& u : users) {
      nlohmann::json j;
      j["id"] = u.id;
      if (u.age) j["age"] = *u.age;
      if (!u.gender.empty()) j["gender"] = u.gender;
      if (!u.location.empty()) j["location"] = u.location;
      for (const auto& [key, value] : u.numeric) j[key] = value;
      for (const auto& [key, value] : u.categorical) j[key] = value;
      out << j.dump() << '\n';
    }
  });
}

std::unordered_map<std::string, std::vector<HistoryEvent>> group_histories(
    std::span<const Event> events, std::int64_t until_ts) {
  std::unordered_map<std::string, std::vector<HistoryEvent>> out;
  for (const Event& e : events) {
    if (e.ts >= until_ts) continue;
    out[e.user].push_back(HistoryEvent{e.item, e.type, e.ts, e.dwell_s});
  }
  for (auto& [user, history] : out) {
    std::stable_sort(history.begin(), history.end(),
                     [](const HistoryEvent& a, const HistoryEvent& b) { return a.ts < b.ts; });
  }
  return out;
}

}  // namespace funnel
