// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// The small command-line toolkit shared by every `funnel` subcommand: a
/// table-driven option parser with generated --help, typed option readers
/// that turn bad values into usage errors naming the option, and a
/// dispatcher over a table of subcommands (used for `funnel <command>` and
/// for groups such as `funnel index <build|search|info>`).
///
/// Adding a subcommand: write its entry point `int run_x(cli::Invocation)`
/// in its own file, declare it in commands.hpp, and add one row to the
/// table of its group (main.cpp for top-level commands).
///
/// Exit status convention: 0 success, 1 runtime failure (funnel::Error from
/// the library, unreadable or corrupt files), 2 bad usage (UsageError).

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <ostream>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace funnel::cli {

/// Exit status of a successful run.
inline constexpr int kExitOk = 0;
/// Exit status when the work itself failed (bad or unreadable files, ...).
inline constexpr int kExitRuntime = 1;
/// Exit status for a bad command line.
inline constexpr int kExitUsage = 2;

/// A bad command line. main() prints "funnel: <what>" and exits with
/// kExitUsage. The message already names the command and the option.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// One option of a command, as written in its help: "--name METAVAR  help".
struct OptionSpec {
  std::string_view name;     ///< with the dashes, e.g. "--k"
  std::string_view metavar;  ///< value placeholder, e.g. "N"; empty for a flag
  std::string_view help;     ///< one line (defaults stated here)
};

/// What a command accepts and how its --help reads.
struct CommandSpec {
  std::string_view path;                ///< e.g. "funnel index build"
  std::string_view synopsis;            ///< arguments after the path, for the usage line
  std::string_view summary;             ///< one sentence
  std::span<const OptionSpec> options;  ///< accepted options (-h/--help is implicit)
  std::string_view details;             ///< text printed after the options; may be empty
};

/// The words given to one command: its name path and the words after it.
struct Invocation {
  std::string path;                         ///< e.g. "funnel index"
  std::span<const std::string_view> words;  ///< the words after `path`
};

/// Writes the --help text of `spec`.
void print_help(std::ostream& out, const CommandSpec& spec);

/// The options given to one command, parsed against its CommandSpec.
class Args {
 public:
  /// Parses `words`. Accepts "--name value" and "--name=value"; -h and
  /// --help set help() and stop parsing.
  /// @throws UsageError for an unknown option, a missing value, an option
  ///         given twice, a value given to a flag, or a stray word.
  static Args parse(const CommandSpec& spec, std::span<const std::string_view> words);

  /// True when -h/--help was given.
  [[nodiscard]] bool help() const noexcept { return help_; }
  /// True when the option (or flag) was given.
  [[nodiscard]] bool has(std::string_view name) const;
  /// The option's value, if given.
  [[nodiscard]] std::optional<std::string_view> value(std::string_view name) const;
  /// The option's value. @throws UsageError when it was not given.
  [[nodiscard]] std::string_view required(std::string_view name) const;
  /// The option's value, or `fallback`.
  [[nodiscard]] std::string_view value_or(std::string_view name, std::string_view fallback) const;
  /// The option's value, which must be one of `choices`, or `fallback`.
  /// @throws UsageError naming the option and the accepted values.
  [[nodiscard]] std::string_view choice(std::string_view name,
                                        std::initializer_list<std::string_view> choices,
                                        std::string_view fallback) const;

  /// The option's value as a number in [min, max], if given.
  /// @throws UsageError naming the option for text that is not a number of
  ///         type T, or a number outside the range.
  template <class T>
  [[nodiscard]] std::optional<T> number(std::string_view name,
                                        T min = std::numeric_limits<T>::lowest(),
                                        T max = std::numeric_limits<T>::max()) const;

  /// As number(), with `fallback` when the option was not given.
  template <class T>
  [[nodiscard]] T number_or(std::string_view name, T fallback,
                            T min = std::numeric_limits<T>::lowest(),
                            T max = std::numeric_limits<T>::max()) const {
    return number<T>(name, min, max).value_or(fallback);
  }

  /// Throws UsageError "<command>: <what>" (for checks across options).
  [[noreturn]] void fail(const std::string& what) const;

 private:
  explicit Args(std::string_view command) : command_(command) {}

  std::string_view command_;
  std::vector<std::pair<std::string_view, std::string_view>> values_;
  bool help_ = false;
};

/// A subcommand of a group: its name, a one-line summary, its entry point.
/// The entry point gets the words after its name and returns the exit status.
struct Command {
  std::string_view name;
  std::string_view summary;
  int (*run)(const Invocation& invocation);
};

/// Runs the command of `commands` named by the first word of `invocation`,
/// with the remaining words. "-h"/"--help" (or "help") print the group's
/// help: `summary`, the command table, then `epilogue` (may be empty).
/// @throws UsageError for a missing or unknown command name.
int dispatch(const Invocation& invocation, std::string_view summary,
             std::span<const Command> commands, std::string_view epilogue = {});

template <class T>
std::optional<T> Args::number(std::string_view name, T min, T max) const {
  static_assert(std::is_arithmetic_v<T>);
  const std::optional<std::string_view> text = value(name);
  if (!text) return std::nullopt;
  T parsed{};
  const char* end = text->data() + text->size();
  const auto [ptr, ec] = std::from_chars(text->data(), end, parsed);
  if (text->empty() || ec != std::errc() || ptr != end) {
    const char* kind = std::is_integral_v<T>
                           ? (std::is_signed_v<T> ? "an integer" : "a non-negative integer")
                           : "a number";
    fail(std::string(name) + " expects " + kind + ", got '" + std::string(*text) + "'");
  }
  if (parsed < min) {
    fail(std::string(name) + " must be at least " + std::to_string(min) + ", got " +
         std::string(*text));
  }
  if (parsed > max) {
    fail(std::string(name) + " must be at most " + std::to_string(max) + ", got " +
         std::string(*text));
  }
  return parsed;
}

}  // namespace funnel::cli
