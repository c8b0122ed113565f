// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// The one exception type of funnel.
///
/// Every user-facing failure (bad arguments, unreadable files, malformed
/// input, unsupported requests) is reported by throwing funnel::Error with a
/// code and a message that names the offending input: file, line, field, id,
/// expected versus actual. Internal invariants are checked with assert() and
/// never surface as an Error.

#include <stdexcept>
#include <string>
#include <string_view>

namespace funnel {

/// What kind of failure an Error reports.
enum class ErrorCode {
  invalid_argument,  ///< a caller passed a value the API does not accept
  io,                ///< a file could not be opened, read, written or renamed
  format,            ///< input data is malformed, truncated, corrupt or inconsistent
  unsupported,       ///< a valid request that this build or machine cannot serve
  internal,          ///< a failure inside a dependency that funnel cannot attribute
};

/// Stable lower-case name of a code ("invalid_argument", "io", ...).
std::string_view to_string(ErrorCode code) noexcept;

/// The exception thrown by every funnel API.
class Error : public std::runtime_error {
 public:
  /// @param[in] code    what kind of failure
  /// @param[in] message human-readable text naming the offending input
  Error(ErrorCode code, const std::string& message);

  /// The kind of failure.
  [[nodiscard]] ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace funnel
