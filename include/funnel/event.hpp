// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Behaviour events (what users did with items) and their JSON Lines IO.
///
/// File format (JSON Lines, one event per line):
///   {"user": "u17", "item": 42, "type": "click", "dwell_s": 31.5, "ts": 1700000000}
/// `user` (string or integer), `item` (integer) and `type` (one of view,
/// click, cart, purchase) are required; `dwell_s` (seconds, >= 0) and `ts`
/// (integer seconds since the Unix epoch; 0 when absent) are optional.
/// A `view` is an impression: the item was shown to the user.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "funnel/item_id.hpp"

namespace funnel {

/// What a user did with an item, in increasing order of intent.
enum class EventType : std::uint8_t { view = 0, click = 1, cart = 2, purchase = 3 };

/// "view", "click", "cart" or "purchase".
std::string_view to_string(EventType type) noexcept;
/// Parses a type name. @throws Error(invalid_argument) for an unknown name.
EventType parse_event_type(std::string_view name);

/// One behaviour event.
struct Event {
  std::string user;
  ItemId item = kNoItem;
  EventType type = EventType::view;
  std::optional<double> dwell_s;  ///< seconds spent on the item page
  std::int64_t ts = 0;            ///< seconds since the Unix epoch
};

/// Loads events from a JSON Lines file, in file order.
/// @throws Error(io) when unreadable; Error(format) naming file, line and
///         field for malformed lines, unknown types, negative or non-finite
///         dwell, invalid UTF-8.
std::vector<Event> load_events_jsonl(const std::filesystem::path& path);

/// Writes events as JSON Lines, atomically.
void save_events_jsonl(const std::filesystem::path& path, std::span<const Event> events);

}  // namespace funnel
