// SPDX-License-Identifier: Apache-2.0
#pragma once

// Helpers for throwing funnel::Error with formatted messages.

#include <sstream>
#include <string>
#include <utility>

#include "funnel/error.hpp"

namespace funnel::detail {

/// Concatenates the arguments with operator<< into one string.
template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

/// Throws Error(code, cat(args...)).
template <class... Args>
[[noreturn]] void fail(ErrorCode code, Args&&... args) {
  throw Error(code, cat(std::forward<Args>(args)...));
}

/// Throws Error(invalid_argument, ...) unless `condition` holds.
template <class... Args>
void require(bool condition, Args&&... args) {
  if (!condition) fail(ErrorCode::invalid_argument, std::forward<Args>(args)...);
}

}  // namespace funnel::detail
