// SPDX-License-Identifier: Apache-2.0
// funnel: the command-line tool (see docs/cli.md).

#include <exception>
#include <iostream>
#include <new>
#include <string_view>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "funnel/error.hpp"
#include "funnel/version.hpp"

namespace {

using funnel::cli::Command;

// One row per top-level command; each runs from its own <name>_command.cpp.
constexpr Command kCommands[] = {
    {"encode", "encode texts into vectors (.npy) with a BERT checkpoint or hashing",
     funnel::cli::run_encode},
    {"index", "build, search and inspect vector indexes (.npy in, FAISS files out)",
     funnel::cli::run_index},
    {"train", "train a fine ranker (deep or logistic) on catalogue, users and events",
     funnel::cli::run_train},
    {"eval", "evaluate a trained fine ranker on a held-out period of an event log",
     funnel::cli::run_eval},
};

constexpr std::string_view kSummary = "The recommendation funnel from the shell (see docs/cli.md).";

constexpr std::string_view kEpilogue =
    "Global options:\n"
    "  --version   print the version\n"
    "  -h, --help  show this help\n"
    "\n"
    "Exit status: 0 success, 1 runtime failure (bad or unreadable files),\n"
    "2 bad usage (unknown command or option, missing or malformed value).\n";

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> words(argv + 1, argv + argc);
  try {
    if (words.size() == 1 && words.front() == "--version") {
      std::cout << "funnel " << funnel::kVersionString << '\n';
      return funnel::cli::kExitOk;
    }
    return funnel::cli::dispatch(funnel::cli::Invocation{"funnel", words}, kSummary, kCommands,
                                 kEpilogue);
  } catch (const funnel::cli::UsageError& e) {
    std::cerr << "funnel: " << e.what() << '\n';
    return funnel::cli::kExitUsage;
  } catch (const funnel::Error& e) {
    std::cerr << "funnel: " << e.what() << '\n';
    return funnel::cli::kExitRuntime;
  } catch (const std::bad_alloc&) {
    std::cerr << "funnel: out of memory\n";
    return funnel::cli::kExitRuntime;
  } catch (const std::exception& e) {
    std::cerr << "funnel: " << e.what() << '\n';
    return funnel::cli::kExitRuntime;
  }
}
