// SPDX-License-Identifier: Apache-2.0
#pragma once

// The parts of a Hugging Face tokenizer_config.json that every funnel
// tokenizer reads the same way (bert_tokenizer.cpp,
// sentencepiece_tokenizer.cpp).

#include <cstddef>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "funnel/error.hpp"
#include "internal/error_util.hpp"
#include "internal/json_file.hpp"

namespace funnel::detail {

/// Parses the file; Error(format) naming it when it is not JSON or not an
/// object.
inline nlohmann::json read_tokenizer_config_json(const std::filesystem::path& path) {
  nlohmann::json root = read_json_file(path);
  if (!root.is_object())
    fail(ErrorCode::format, path.string(), ": expected a JSON object at the top level, got ",
         root.type_name());
  return root;
}

/// Lowers `max_length` to the key model_max_length when it is smaller;
/// Error(format) naming `file` unless it is null or a number >= 2.
inline void apply_model_max_length(const nlohmann::json& root, const std::string& file,
                                   std::size_t& max_length) {
  const auto it = root.find("model_max_length");
  if (it == root.end() || it->is_null()) return;
  // Checkpoints without a limit store int(1e30), which JSON parsers read
  // as a floating-point number.
  if (!it->is_number() || it->get<double>() < 2.0)
    fail(ErrorCode::format, file, ": key 'model_max_length' must be a number >= 2, got ",
         it->dump());
  const double limit = it->get<double>();
  if (limit < static_cast<double>(max_length)) max_length = static_cast<std::size_t>(limit);
}

}  // namespace funnel::detail
