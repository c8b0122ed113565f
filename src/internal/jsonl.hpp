// SPDX-License-Identifier: Apache-2.0
#pragma once

// Reading JSON Lines with errors that name the file, the line and the field.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace funnel::detail {

/// One parsed line of a JSON Lines file, with its location for messages.
class JsonLine {
 public:
  JsonLine(const nlohmann::json& value, const std::filesystem::path& file, std::size_t line)
      : value_(value), file_(file), line_(line) {}

  [[nodiscard]] const nlohmann::json& value() const noexcept { return value_; }
  [[nodiscard]] std::size_t line() const noexcept { return line_; }
  /// "file:line"
  [[nodiscard]] std::string where() const;

  /// Throws Error(format): "<file>:<line>: field '<field>': <what>".
  [[noreturn]] void fail(std::string_view field, std::string_view what) const;

  [[nodiscard]] bool has(const char* field) const;
  /// A string field (UTF-8 validated). Absent or null -> nullopt, or an error when required.
  [[nodiscard]] std::optional<std::string> string(const char* field, bool required) const;
  /// An integer field. Accepts integral JSON numbers only (3.0 is accepted, 3.5 is not).
  [[nodiscard]] std::optional<std::int64_t> integer(const char* field, bool required) const;
  /// A finite number.
  [[nodiscard]] std::optional<double> number(const char* field, bool required) const;
  /// An id that may be written as a string or an integer, returned as text.
  [[nodiscard]] std::optional<std::string> string_or_integer(const char* field,
                                                             bool required) const;

 private:
  const nlohmann::json& value_;
  const std::filesystem::path& file_;
  std::size_t line_;
};

/// Calls fn for each non-blank line of a JSON Lines file, in order. Lines
/// must hold a JSON object. Invalid UTF-8 and JSON syntax errors throw
/// Error(format) naming the file and line; an unreadable file Error(io).
void for_each_jsonl(const std::filesystem::path& path,
                    const std::function<void(const JsonLine&)>& fn);

}  // namespace funnel::detail
