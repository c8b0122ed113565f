// SPDX-License-Identifier: Apache-2.0
#include "internal/jsonl.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>

#include "internal/error_util.hpp"
#include "internal/utf8.hpp"

namespace funnel::detail {

std::string JsonLine::where() const { return cat(file_.string(), ":", line_); }

void JsonLine::fail(std::string_view field, std::string_view what) const {
  detail::fail(ErrorCode::format, where(), ": field '", field, "': ", what);
}

bool JsonLine::has(const char* field) const {
  const auto it = value_.find(field);
  return it != value_.end() && !it->is_null();
}

std::optional<std::string> JsonLine::string(const char* field, bool required) const {
  const auto it = value_.find(field);
  if (it == value_.end() || it->is_null()) {
    if (required) fail(field, "missing (expected a string)");
    return std::nullopt;
  }
  if (!it->is_string()) fail(field, cat("expected a string, got ", it->type_name()));
  return it->get<std::string>();
}

std::optional<std::int64_t> JsonLine::integer(const char* field, bool required) const {
  const auto it = value_.find(field);
  if (it == value_.end() || it->is_null()) {
    if (required) fail(field, "missing (expected an integer)");
    return std::nullopt;
  }
  if (it->is_number_integer()) return it->get<std::int64_t>();
  if (it->is_number_unsigned()) {
    const auto u = it->get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(INT64_MAX)) fail(field, "integer out of range");
    return static_cast<std::int64_t>(u);
  }
  if (it->is_number_float()) {
    const double d = it->get<double>();
    if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9.0e15) {
      return static_cast<std::int64_t>(d);
    }
    fail(field, cat("expected an integer, got ", it->dump()));
  }
  fail(field, cat("expected an integer, got ", it->type_name()));
}

std::optional<double> JsonLine::number(const char* field, bool required) const {
  const auto it = value_.find(field);
  if (it == value_.end() || it->is_null()) {
    if (required) fail(field, "missing (expected a number)");
    return std::nullopt;
  }
  if (!it->is_number()) fail(field, cat("expected a number, got ", it->type_name()));
  const double d = it->get<double>();
  if (!std::isfinite(d)) fail(field, "not a finite number");
  return d;
}

std::optional<std::string> JsonLine::string_or_integer(const char* field, bool required) const {
  const auto it = value_.find(field);
  if (it == value_.end() || it->is_null()) {
    if (required) fail(field, "missing (expected a string or an integer)");
    return std::nullopt;
  }
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number_integer() || it->is_number_unsigned()) return it->dump();
  fail(field, cat("expected a string or an integer, got ", it->type_name()));
}

void for_each_jsonl(const std::filesystem::path& path,
                    const std::function<void(const JsonLine&)>& fn) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail(ErrorCode::io, "cannot open '", path.string(), "' for reading: ", std::strerror(errno));
  std::string text;
  std::size_t line_no = 0;
  while (std::getline(in, text)) {
    ++line_no;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    if (const auto bad = find_invalid_utf8(text)) {
      fail(ErrorCode::format, path.string(), ":", line_no, ": invalid UTF-8 at byte ", *bad + 1,
           " of the line");
    }
    nlohmann::json value;
    try {
      value = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      fail(ErrorCode::format, path.string(), ":", line_no, ": malformed JSON: ", e.what());
    }
    if (!value.is_object()) {
      fail(ErrorCode::format, path.string(), ":", line_no, ": expected a JSON object, got ",
           value.type_name());
    }
    fn(JsonLine(value, path, line_no));
  }
  if (in.bad()) fail(ErrorCode::io, "error while reading '", path.string(), "'");
}

}  // namespace funnel::detail
