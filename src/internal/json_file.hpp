// SPDX-License-Identifier: Apache-2.0
#pragma once

// Reading a whole JSON file (the checkpoint and tokenizer files of a Hugging
// Face directory).

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "funnel/error.hpp"
#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"

namespace funnel::detail {

/// Parses a JSON file; Error(io) naming it when it cannot be read,
/// Error(format) naming it when it is not JSON.
inline nlohmann::json read_json_file(const std::filesystem::path& file) {
  const std::string text = read_file(file);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorCode::format, file.string(), ": not valid JSON: ", e.what());
  }
}

}  // namespace funnel::detail
