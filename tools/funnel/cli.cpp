// SPDX-License-Identifier: Apache-2.0
#include "cli.hpp"

#include <algorithm>
#include <iostream>

namespace funnel::cli {
namespace {

const OptionSpec* find_option(const CommandSpec& spec, std::string_view name) {
  for (const OptionSpec& option : spec.options) {
    if (option.name == name) return &option;
  }
  return nullptr;
}

std::string see_help(std::string_view path) { return " (see '" + std::string(path) + " --help')"; }

// "funnel index build" -> "index build: " (main() prefixes "funnel: ").
std::string context(std::string_view path) {
  const std::size_t space = path.find(' ');
  if (space == std::string_view::npos) return {};
  return std::string(path.substr(space + 1)) + ": ";
}

}  // namespace

void print_help(std::ostream& out, const CommandSpec& spec) {
  out << "Usage: " << spec.path;
  if (!spec.synopsis.empty()) out << ' ' << spec.synopsis;
  out << "\n\n" << spec.summary << "\n\nOptions:\n";
  // Align the help column after the longest "--name METAVAR".
  std::size_t width = std::string_view("-h, --help").size();
  for (const OptionSpec& option : spec.options) {
    width = std::max(width, option.name.size() + 1 + option.metavar.size());
  }
  const auto row = [&](std::string_view left, std::string_view help) {
    out << "  " << left << std::string(width + 2 - left.size(), ' ') << help << '\n';
  };
  for (const OptionSpec& option : spec.options) {
    std::string left(option.name);
    if (!option.metavar.empty()) left.append(" ").append(option.metavar);
    row(left, option.help);
  }
  row("-h, --help", "show this help");
  if (!spec.details.empty()) out << '\n' << spec.details;
  if (!spec.details.empty() && !spec.details.ends_with('\n')) out << '\n';
}

Args Args::parse(const CommandSpec& spec, std::span<const std::string_view> words) {
  Args args(spec.path);
  for (std::size_t i = 0; i < words.size(); ++i) {
    const std::string_view word = words[i];
    if (word == "-h" || word == "--help") {
      args.help_ = true;
      return args;
    }
    if (!word.starts_with("--")) {
      args.fail("unexpected argument '" + std::string(word) + "'");
    }
    std::string_view name = word;
    std::optional<std::string_view> inline_value;
    if (const std::size_t eq = word.find('='); eq != std::string_view::npos) {
      name = word.substr(0, eq);
      inline_value = word.substr(eq + 1);
    }
    const OptionSpec* option = find_option(spec, name);
    if (option == nullptr) args.fail("unknown option '" + std::string(name) + "'");
    if (args.has(name)) args.fail(std::string(name) + " given twice");
    std::string_view value;
    if (option->metavar.empty()) {
      if (inline_value) args.fail(std::string(name) + " takes no value");
    } else if (inline_value) {
      value = *inline_value;
    } else {
      // A following option word is never taken as the value: "--out --k 5"
      // means a forgotten value, not an output file named "--k".
      if (i + 1 >= words.size() || words[i + 1].starts_with("--")) {
        args.fail(std::string(name) + " needs a value (" + std::string(option->metavar) + ")");
      }
      value = words[++i];
    }
    args.values_.emplace_back(option->name, value);
  }
  return args;
}

bool Args::has(std::string_view name) const {
  return std::any_of(values_.begin(), values_.end(),
                     [&](const auto& entry) { return entry.first == name; });
}

std::optional<std::string_view> Args::value(std::string_view name) const {
  for (const auto& [option, text] : values_) {
    if (option == name) return text;
  }
  return std::nullopt;
}

std::string_view Args::required(std::string_view name) const {
  const std::optional<std::string_view> text = value(name);
  if (!text) fail(std::string(name) + " is required");
  return *text;
}

std::string_view Args::value_or(std::string_view name, std::string_view fallback) const {
  return value(name).value_or(fallback);
}

std::string_view Args::choice(std::string_view name,
                              std::initializer_list<std::string_view> choices,
                              std::string_view fallback) const {
  const std::optional<std::string_view> text = value(name);
  if (!text) return fallback;
  if (std::find(choices.begin(), choices.end(), *text) != choices.end()) return *text;
  std::string accepted;
  for (const std::string_view c : choices) {
    if (!accepted.empty()) accepted += ", ";
    accepted += c;
  }
  fail(std::string(name) + " expects one of " + accepted + ", got '" + std::string(*text) + "'");
}

void Args::fail(const std::string& what) const {
  throw UsageError(context(command_) + what + see_help(command_));
}

int dispatch(const Invocation& invocation, std::string_view summary,
             std::span<const Command> commands, std::string_view epilogue) {
  const auto print_group_help = [&](std::ostream& out) {
    out << "Usage: " << invocation.path << " <command> [options]\n\n"
        << summary << "\n\nCommands:\n";
    std::size_t width = 0;
    for (const Command& command : commands) width = std::max(width, command.name.size());
    for (const Command& command : commands) {
      out << "  " << command.name << std::string(width + 2 - command.name.size(), ' ')
          << command.summary << '\n';
    }
    out << "\nRun '" << invocation.path << " <command> --help' for a command's options.\n";
    if (!epilogue.empty()) out << '\n' << epilogue << (epilogue.ends_with('\n') ? "" : "\n");
  };
  if (invocation.words.empty()) {
    throw UsageError(context(invocation.path) + "missing command" + see_help(invocation.path));
  }
  const std::string_view name = invocation.words.front();
  if (name == "-h" || name == "--help" || name == "help") {
    print_group_help(std::cout);
    return kExitOk;
  }
  for (const Command& command : commands) {
    if (command.name == name) {
      return command.run(
          Invocation{invocation.path + " " + std::string(name), invocation.words.subspan(1)});
    }
  }
  throw UsageError(context(invocation.path) + "unknown command '" + std::string(name) + "'" +
                   see_help(invocation.path));
}

}  // namespace funnel::cli
