// SPDX-License-Identifier: Apache-2.0
#pragma once

// Reading the JSON side of a Hugging Face BERT checkpoint: config.json and
// the sentence-transformers files (modules.json, the pooling config,
// sentence_bert_config.json). Only bert_encoder.cpp includes this header.

#include <cmath>
#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "funnel/bert_encoder.hpp"
#include "internal/error_util.hpp"
#include "internal/json_file.hpp"

namespace funnel::detail::bert {

/// The architecture fields of config.json.
struct ArchConfig {
  std::size_t hidden = 0;
  std::size_t layers = 0;
  std::size_t heads = 0;
  std::size_t intermediate = 0;
  std::size_t vocab_size = 0;
  std::size_t max_positions = 0;
  std::size_t type_vocab_size = 2;
  float layer_norm_eps = 1e-12F;
  /// Row of the position table for a sequence's first token: 0 for BERT;
  /// pad_token_id + 1 for XLM-RoBERTa, whose position ids count from past
  /// the padding id (Hugging Face's create_position_ids_from_input_ids).
  std::size_t position_offset = 0;
  std::string model_type = "bert";  ///< "bert" or "xlm-roberta"
};

/// A positive integer field, or `fallback` when the field is absent and a
/// fallback is given.
inline std::size_t positive_field(const nlohmann::json& j, const char* key,
                                  const std::filesystem::path& file,
                                  std::optional<std::size_t> fallback = std::nullopt) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    fail(ErrorCode::format, file.string(), ": missing field \"", key, "\"");
  }
  if (!it->is_number_integer() || it->get<std::int64_t>() <= 0) {
    fail(ErrorCode::format, file.string(), ": field \"", key, "\" must be a positive integer, got ",
         it->dump());
  }
  return it->get<std::size_t>();
}

/// Reads and checks config.json.
inline ArchConfig parse_config_json(const std::filesystem::path& file) {
  const nlohmann::json j = read_json_file(file);
  if (!j.is_object()) fail(ErrorCode::format, file.string(), ": expected a JSON object");
  auto string_field = [&](const char* key) -> std::optional<std::string> {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) return std::nullopt;
    if (!it->is_string()) {
      fail(ErrorCode::format, file.string(), ": field \"", key, "\" must be a string, got ",
           it->dump());
    }
    return it->get<std::string>();
  };
  const std::string model_type = string_field("model_type").value_or("bert");
  if (model_type != "bert" && model_type != "xlm-roberta") {
    fail(ErrorCode::unsupported, file.string(), ": model_type \"", model_type,
         "\" is not supported (BertEncoder runs model_type \"bert\" and \"xlm-roberta\")");
  }
  if (const auto act = string_field("hidden_act"); act && *act != "gelu") {
    fail(ErrorCode::unsupported, file.string(), ": hidden_act \"", *act,
         "\" is not supported (BertEncoder runs \"gelu\", the erf form)");
  }
  if (const auto pos = string_field("position_embedding_type"); pos && *pos != "absolute") {
    fail(ErrorCode::unsupported, file.string(), ": position_embedding_type \"", *pos,
         "\" is not supported (only \"absolute\")");
  }
  ArchConfig c;
  c.model_type = model_type;
  c.hidden = positive_field(j, "hidden_size", file);
  c.layers = positive_field(j, "num_hidden_layers", file);
  c.heads = positive_field(j, "num_attention_heads", file);
  c.intermediate = positive_field(j, "intermediate_size", file);
  c.vocab_size = positive_field(j, "vocab_size", file);
  c.max_positions = positive_field(j, "max_position_embeddings", file);
  c.type_vocab_size = positive_field(j, "type_vocab_size", file, 2);
  if (const auto it = j.find("layer_norm_eps"); it != j.end() && !it->is_null()) {
    if (!it->is_number() || !(it->get<double>() > 0.0) || !std::isfinite(it->get<double>())) {
      fail(ErrorCode::format, file.string(),
           ": field \"layer_norm_eps\" must be a positive number, got ", it->dump());
    }
    c.layer_norm_eps = static_cast<float>(it->get<double>());
  }
  if (model_type == "xlm-roberta") {
    const auto it = j.find("pad_token_id");
    std::size_t pad = 1;  // XLM-R's <pad>
    if (it != j.end() && !it->is_null()) {
      if (!it->is_number_integer() || it->get<std::int64_t>() < 0) {
        fail(ErrorCode::format, file.string(),
             ": field \"pad_token_id\" must be a non-negative integer, got ", it->dump());
      }
      pad = it->get<std::size_t>();
    }
    if (pad >= c.max_positions - 1) {  // no overflow: max_positions >= 1
      fail(ErrorCode::format, file.string(), ": max_position_embeddings ", c.max_positions,
           " leaves no position for a token (XLM-RoBERTa's positions start at pad_token_id + 1, ",
           "pad_token_id is ", pad, ")");
    }
    c.position_offset = pad + 1;
  }
  if (c.hidden % c.heads != 0) {
    fail(ErrorCode::format, file.string(), ": hidden_size ", c.hidden,
         " is not divisible by num_attention_heads ", c.heads);
  }
  // Bounds that keep every product below far from overflow; real models are
  // orders of magnitude smaller.
  constexpr std::size_t kMaxDim = std::size_t{1} << 16;
  constexpr std::size_t kMaxCount = std::size_t{1} << 24;
  auto bounded = [&](const char* key, std::size_t v, std::size_t bound) {
    if (v > bound) {
      fail(ErrorCode::format, file.string(), ": field \"", key, "\" is ", v, ", above ", bound);
    }
  };
  bounded("hidden_size", c.hidden, kMaxDim);
  bounded("intermediate_size", c.intermediate, 4 * kMaxDim);
  bounded("num_hidden_layers", c.layers, 1024);
  bounded("vocab_size", c.vocab_size, kMaxCount);
  bounded("max_position_embeddings", c.max_positions, kMaxDim);
  bounded("type_vocab_size", c.type_vocab_size, kMaxCount);
  return c;
}

/// What the sentence-transformers files say.
struct SentenceTransformersConfig {
  std::filesystem::path transformer_dir;      ///< relative to the checkpoint dir ("" = itself)
  std::optional<BertPooling> pooling;         ///< from the Pooling module's config
  std::optional<std::size_t> pooling_dim;     ///< its word_embedding_dimension
  bool normalize = false;                     ///< a Normalize module follows
  std::optional<std::size_t> max_seq_length;  ///< sentence_bert_config.json
};

/// Reads modules.json (when present), the pooling config it names and
/// sentence_bert_config.json (when present).
inline SentenceTransformersConfig parse_sentence_transformers(const std::filesystem::path& dir) {
  SentenceTransformersConfig st;
  const auto modules_file = dir / "modules.json";
  if (std::filesystem::exists(modules_file)) {
    const nlohmann::json modules = read_json_file(modules_file);
    if (!modules.is_array()) {
      fail(ErrorCode::format, modules_file.string(), ": expected a JSON array of modules");
    }
    bool seen_transformer = false;
    for (std::size_t i = 0; i < modules.size(); ++i) {
      const auto& m = modules[i];
      if (!m.is_object() || !m.contains("type") || !m["type"].is_string()) {
        fail(ErrorCode::format, modules_file.string(), ": module ", i,
             " is not an object with a string \"type\"");
      }
      std::string path;
      if (m.contains("path")) {
        if (!m["path"].is_string()) {
          fail(ErrorCode::format, modules_file.string(), ": module ", i,
               " has a \"path\" that is not a string");
        }
        path = m["path"].get<std::string>();
      }
      const auto type = m["type"].get<std::string>();
      const auto dot = type.rfind('.');
      const std::string_view kind = dot == std::string::npos
                                        ? std::string_view(type)
                                        : std::string_view(type).substr(dot + 1);
      if (kind == "Transformer") {
        if (seen_transformer) {
          fail(ErrorCode::unsupported, modules_file.string(), ": more than one Transformer module");
        }
        seen_transformer = true;
        st.transformer_dir = path;
      } else if (kind == "Pooling") {
        const auto pooling_file = dir / path / "config.json";
        const nlohmann::json p = read_json_file(pooling_file);
        if (!p.is_object()) fail(ErrorCode::format, pooling_file.string(), ": expected an object");
        auto flag = [&](const char* key) {
          const auto it = p.find(key);
          if (it == p.end() || it->is_null()) return false;
          if (!it->is_boolean()) {
            fail(ErrorCode::format, pooling_file.string(), ": field \"", key,
                 "\" must be true or false, got ", it->dump());
          }
          return it->get<bool>();
        };
        for (const char* unsupported :
             {"pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"}) {
          if (flag(unsupported)) {
            fail(ErrorCode::unsupported, pooling_file.string(), ": ", unsupported,
                 " is not supported (cls, mean, max and mean_sqrt_len are)");
          }
        }
        int modes = 0;
        auto take = [&](const char* key, BertPooling mode) {
          if (flag(key)) {
            ++modes;
            st.pooling = mode;
          }
        };
        take("pooling_mode_cls_token", BertPooling::cls);
        take("pooling_mode_mean_tokens", BertPooling::mean);
        take("pooling_mode_max_tokens", BertPooling::max);
        take("pooling_mode_mean_sqrt_len_tokens", BertPooling::mean_sqrt_len);
        if (modes == 0) {
          fail(ErrorCode::format, pooling_file.string(), ": no pooling_mode_* is true");
        }
        if (modes > 1) {
          fail(ErrorCode::unsupported, pooling_file.string(),
               ": several pooling modes at once (concatenated outputs) are not supported");
        }
        if (p.contains("word_embedding_dimension")) {
          st.pooling_dim = positive_field(p, "word_embedding_dimension", pooling_file);
        }
      } else if (kind == "Normalize") {
        st.normalize = true;
      } else {
        fail(ErrorCode::unsupported, modules_file.string(), ": module ", i, " (", type,
             ") is not supported (Transformer, Pooling and Normalize are)");
      }
    }
    if (!seen_transformer) {
      fail(ErrorCode::format, modules_file.string(), ": no Transformer module");
    }
  }
  const auto sbert_file = dir / "sentence_bert_config.json";
  if (std::filesystem::exists(sbert_file)) {
    const nlohmann::json s = read_json_file(sbert_file);
    if (!s.is_object()) fail(ErrorCode::format, sbert_file.string(), ": expected an object");
    if (s.contains("max_seq_length") && !s["max_seq_length"].is_null()) {
      st.max_seq_length = positive_field(s, "max_seq_length", sbert_file);
    }
  }
  return st;
}

}  // namespace funnel::detail::bert
