// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Users: profiles, behaviour history, and the context of one request.
///
/// Users file format (JSON Lines, one user per line):
///   {"id": "u17", "age": 34, "gender": "f", "location": "Shanghai", "vip": true}
/// `id` (string or integer) is required; `age` (integer), `gender` and
/// `location` (strings) are optional; every other field is kept as a feature
/// (numbers as numeric features, strings and booleans as categorical ones).

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "funnel/event.hpp"
#include "funnel/item_id.hpp"

namespace funnel {

/// Profile features of one user.
struct UserProfile {
  std::string id;
  std::optional<int> age;
  std::string gender;                              ///< empty when unknown
  std::string location;                            ///< empty when unknown
  std::map<std::string, double> numeric;           ///< other numeric features
  std::map<std::string, std::string> categorical;  ///< other categorical features
};

/// One past interaction in a user's history.
struct HistoryEvent {
  ItemId item = kNoItem;
  EventType type = EventType::view;
  std::int64_t ts = 0;            ///< seconds since the Unix epoch
  std::optional<double> dwell_s;  ///< seconds, when known
};

/// Everything the funnel knows about the user at request time.
struct UserContext {
  UserProfile profile;
  /// Past events, oldest first. Stages must not assume any maximum length.
  std::vector<HistoryEvent> history;
  /// Optional search text typed by the user; empty for feed recommendation.
  std::string query;
  /// Request time in seconds since the Unix epoch ("last week" is relative to it).
  std::int64_t now_ts = 0;
  /// BCP-47 locale for user-facing text, e.g. "zh-CN" or "en".
  std::string locale = "en";
};

/// Loads user profiles from a JSON Lines file, in file order.
/// @throws Error(io) when unreadable; Error(format) naming file, line and
///         field for malformed lines, mistyped fields, invalid UTF-8 or a
///         duplicate id.
std::vector<UserProfile> load_users_jsonl(const std::filesystem::path& path);

/// Writes user profiles as JSON Lines, atomically.
void save_users_jsonl(const std::filesystem::path& path, std::span<const UserProfile> users);

/// Groups events into per-user histories, oldest first (stable for equal ts),
/// keeping only events with `ts < until_ts` (all events when until_ts is
/// INT64_MAX). Users without events get no entry.
std::unordered_map<std::string, std::vector<HistoryEvent>> group_histories(
    std::span<const Event> events, std::int64_t until_ts = INT64_MAX);

}  // namespace funnel
