// SPDX-License-Identifier: Apache-2.0
#pragma once

// Whole-file reads and atomic writes (temporary name in the same directory,
// then rename), so that a failed or interrupted write never leaves a
// half-written file under the final name.

#include <filesystem>
#include <functional>
#include <ostream>
#include <string>

namespace funnel::detail {

/// Reads a whole file. Throws Error(io) naming the path.
std::string read_file(const std::filesystem::path& path);

/// Calls write(stream) on a temporary file next to `path`, flushes it to disk
/// and renames it over `path`. On any failure (including an exception from
/// `write`) the temporary file is removed, `path` is untouched, and
/// Error(io) is thrown (or the exception from `write` is rethrown).
void write_file_atomic(const std::filesystem::path& path,
                       const std::function<void(std::ostream&)>& write);

/// Writes `bytes` atomically (as above).
void write_file_atomic(const std::filesystem::path& path, const std::string& bytes);

/// A unique temporary path next to `path` (same directory, so rename is atomic).
std::filesystem::path temp_path_for(const std::filesystem::path& path);

/// Renames `from` to `to`, throwing Error(io) naming both on failure.
void rename_file(const std::filesystem::path& from, const std::filesystem::path& to);

}  // namespace funnel::detail
