// SPDX-License-Identifier: Apache-2.0
#include "funnel/event.hpp"

#include <cmath>

#include <nlohmann/json.hpp>

#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"
#include "internal/jsonl.hpp"

namespace funnel {

std::string_view to_string(EventType type) noexcept {
  switch (type) {
    case EventType::view: return "view";
    case EventType::click: return "click";
    case EventType::cart: return "cart";
    case EventType::purchase: return "purchase";
  }
  return "unknown";
}

EventType parse_event_type(std::string_view name) {
  if (name == "view") return EventType::view;
  if (name == "click") return EventType::click;
  if (name == "cart") return EventType::cart;
  if (name == "purchase") return EventType::purchase;
  detail::fail(ErrorCode::invalid_argument, "unknown event type '", name,
               "' (expected view, click, cart or purchase)");
}

std::vector<Event> load_events_jsonl(const std::filesystem::path& path) {
  std::vector<Event> events;
  detail::for_each_jsonl(path, [&](const detail::JsonLine& line) {
    Event e;
    e.user = *line.string_or_integer("user", true);
    if (e.user.empty()) line.fail("user", "must not be empty");
    e.item = *line.integer("item", true);
    if (e.item < 0) line.fail("item", "must be >= 0");
    const std::string type = *line.string("type", true);
    try {
      e.type = parse_event_type(type);
    } catch (const Error& err) {
      line.fail("type", err.what());
    }
    e.dwell_s = line.number("dwell_s", false);
    if (e.dwell_s && *e.dwell_s < 0) line.fail("dwell_s", "must be >= 0");
    e.ts = line.integer("ts", false).value_or(0);
    events.push_back(std::move(e));
  });
  return events;
}

void save_events_jsonl(const std::filesystem::path& path, std::span<const Event> events) {
  for (std::size_t i = 0; i < events.size(); ++i) {
    const Event& e = events[i];
    detail::require(!e.user.empty(), "event ", i, ": empty user id");
    detail::require(e.item >= 0, "event ", i, ": item id must be >= 0, got ", e.item);
    if (e.dwell_s) {
      detail::require(std::isfinite(*e.dwell_s) && *e.dwell_s >= 0, "event ", i,
                      ": dwell_s must be finite and >= 0");
    }
  }
  detail::write_file_atomic(path, [&](std::ostream& out) {
    for (const Event& e : events) {
      nlohmann::json j;
      j["user"] = e.user;
      j["item"] = e.item;
      j["type"] = std::string(to_string(e.type));
      if (e.dwell_s) j["dwell_s"] = *e.dwell_s;
      j["ts"] = e.ts;
      out << j.dump() << '\n';
    }
  });
}

}  // namespace funnel
