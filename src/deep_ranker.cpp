// SPDX-License-Identifier: Apache-2.0
// DeepRankerConfig (widths, validation, config.json), the parameter table,
// DeepRankerBatch validation and the DeepRankerExamples file. The network
// itself (DeepRankerModel) lives in deep_ranker_model.cpp.
#include "funnel/deep_ranker.hpp"

#include <algorithm>
#include <cassert>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "funnel/error.hpp"
#include "funnel/safetensors.hpp"
#include "internal/deep_ranker_examples.hpp"
#include "internal/deep_ranker_kernels.hpp"
#include "internal/error_util.hpp"

namespace funnel {
namespace {

constexpr std::string_view kFormatName = "funnel.deep_ranker";
constexpr std::int64_t kFormatVersion = 1;
// Event types a history token can carry (EventType: view, click, cart, purchase).
constexpr std::size_t kEventTypes = 4;
// Upper bound of every width, count and vocabulary size: far above any real
// model, and low enough that sums and products of widths cannot overflow.
constexpr std::size_t kMaxSize = std::size_t{1} << 24;

using detail::require;

std::string shape_string(const std::vector<std::size_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += (i == 0 ? "" : ", ") + std::to_string(shape[i]);
  }
  return s + "]";
}

void validate_size(std::size_t value, std::string_view field, std::size_t min = 1) {
  require(value >= min && value <= kMaxSize, "DeepRankerConfig.", field, " must be in [", min, ", ",
          kMaxSize, "], got ", value);
}

void validate_name(const std::string& name, std::string_view field,
                   std::set<std::string, std::less<>>& seen, std::string_view scope) {
  require(!name.empty(), "DeepRankerConfig.", field, " is empty");
  require(seen.insert(name).second, "DeepRankerConfig.", field, ": name '", name,
          "' is used twice among the ", scope, " features");
}

void validate_categorical(const std::vector<DeepCategoricalFeature>& list,
                          std::string_view list_name, std::set<std::string, std::less<>>& seen,
                          std::string_view scope) {
  require(list.size() <= kMaxSize, "DeepRankerConfig.", list_name, " has too many features");
  for (std::size_t i = 0; i < list.size(); ++i) {
    const DeepCategoricalFeature& f = list[i];
    const std::string field = detail::cat(list_name, "[", i, "]");
    validate_name(f.name, field + ".name", seen, scope);
    validate_size(f.dim, field + ".dim");
    // Indices travel as int32 (0 = out of vocabulary).
    require(f.vocab.size() < static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
            "DeepRankerConfig.", field, ".vocab has ", f.vocab.size(), " values, too many");
    std::set<std::string_view> values;
    for (std::size_t v = 0; v < f.vocab.size(); ++v) {
      require(values.insert(f.vocab[v]).second, "DeepRankerConfig.", field, ".vocab[", v,
              "]: value '", f.vocab[v], "' of feature '", f.name, "' is listed twice");
    }
  }
}

void validate_numeric(const std::vector<DeepNumericFeature>& list, std::string_view list_name,
                      std::set<std::string, std::less<>>& seen, std::string_view scope) {
  require(list.size() <= kMaxSize, "DeepRankerConfig.", list_name, " has too many features");
  for (std::size_t i = 0; i < list.size(); ++i) {
    const DeepNumericFeature& f = list[i];
    const std::string field = detail::cat(list_name, "[", i, "]");
    validate_name(f.name, field + ".name", seen, scope);
    require(std::isfinite(f.mean), "DeepRankerConfig.", field, ".mean of feature '", f.name,
            "' is not finite: ", f.mean);
    require(std::isfinite(f.std) && f.std > 0.0F, "DeepRankerConfig.", field, ".std of feature '",
            f.name, "' must be finite and > 0, got ", f.std);
  }
}

std::size_t embedding_width(const std::vector<DeepCategoricalFeature>& list) {
  std::size_t w = 0;
  for (const auto& f : list) w += f.dim;
  return w;
}

// A float as the JSON number with the fewest digits that reads back as the
// same float (1.2F is written 1.2, not 1.2000000476837158).
double json_float(float value) {
  char buf[64];
  const auto written = std::to_chars(buf, buf + sizeof buf, value);
  double out = 0.0;
  std::from_chars(buf, written.ptr, out);
  return out;
}

using nlohmann::json;
using nlohmann::ordered_json;

// Reads config.json fields with messages "<source>: field '<path>': ...".
class ConfigReader {
 public:
  explicit ConfigReader(std::string_view source) : source_(source) {}

  [[noreturn]] void fail(std::string_view field, std::string_view what) const {
    if (field.empty()) detail::fail(ErrorCode::format, source_, ": ", what);
    detail::fail(ErrorCode::format, source_, ": field '", field, "': ", what);
  }

  const json& object(const json& value, std::string_view field,
                     std::initializer_list<std::string_view> allowed) const {
    if (!value.is_object()) {
      fail(field, detail::cat("expected an object, got ", value.type_name()));
    }
    for (const auto& [key, unused] : value.items()) {
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        fail(join(field, key), "unknown key (written by a newer version of funnel?)");
      }
    }
    return value;
  }

  const json& member(const json& parent, std::string_view parent_name,
                     std::string_view name) const {
    const auto it = parent.find(name);
    if (it == parent.end()) fail(join(parent_name, name), "missing");
    return *it;
  }

  std::string string(const json& value, std::string_view field) const {
    if (!value.is_string()) fail(field, detail::cat("expected a string, got ", value.dump()));
    return value.get<std::string>();
  }

  std::size_t size(const json& value, std::string_view field) const {
    if (!value.is_number_unsigned()) {
      fail(field, detail::cat("expected an integer >= 0, got ", value.dump()));
    }
    const auto v = value.get<std::uint64_t>();
    if (v > kMaxSize) fail(field, detail::cat("value ", v, " is too large"));
    return static_cast<std::size_t>(v);
  }

  std::int64_t integer(const json& value, std::string_view field) const {
    if (value.is_number_unsigned() &&
        value.get<std::uint64_t>() >
            static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      fail(field, detail::cat("value ", value.dump(), " is too large"));
    }
    if (!value.is_number_integer()) {
      fail(field, detail::cat("expected an integer, got ", value.dump()));
    }
    return value.get<std::int64_t>();
  }

  float number(const json& value, std::string_view field) const {
    if (!value.is_number()) fail(field, detail::cat("expected a number, got ", value.dump()));
    const auto v = static_cast<float>(value.get<double>());
    if (!std::isfinite(v))
      fail(field, detail::cat("value ", value.dump(), " is not a finite float"));
    return v;
  }

  const json& array(const json& value, std::string_view field) const {
    if (!value.is_array()) fail(field, detail::cat("expected an array, got ", value.type_name()));
    return value;
  }

  static std::string join(std::string_view parent, std::string_view name) {
    return parent.empty() ? std::string(name) : detail::cat(parent, ".", name);
  }
  static std::string index(std::string_view parent, std::size_t i) {
    return detail::cat(parent, "[", i, "]");
  }

 private:
  std::string_view source_;
};

std::vector<DeepCategoricalFeature> read_categorical(const ConfigReader& r, const json& doc,
                                                     std::string_view key) {
  const json& list = r.array(r.member(doc, "", key), key);
  std::vector<DeepCategoricalFeature> out;
  out.reserve(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string field = ConfigReader::index(key, i);
    const json& entry = r.object(list[i], field, {"name", "vocab", "dim"});
    DeepCategoricalFeature f;
    f.name = r.string(r.member(entry, field, "name"), field + ".name");
    const json& vocab = r.array(r.member(entry, field, "vocab"), field + ".vocab");
    f.vocab.reserve(vocab.size());
    for (std::size_t v = 0; v < vocab.size(); ++v) {
      f.vocab.push_back(r.string(vocab[v], ConfigReader::index(field + ".vocab", v)));
    }
    f.dim = r.size(r.member(entry, field, "dim"), field + ".dim");
    out.push_back(std::move(f));
  }
  return out;
}

std::vector<DeepNumericFeature> read_numeric(const ConfigReader& r, const json& doc,
                                             std::string_view key) {
  const json& list = r.array(r.member(doc, "", key), key);
  std::vector<DeepNumericFeature> out;
  out.reserve(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string field = ConfigReader::index(key, i);
    const json& entry = r.object(list[i], field, {"name", "mean", "std"});
    DeepNumericFeature f;
    f.name = r.string(r.member(entry, field, "name"), field + ".name");
    f.mean = r.number(r.member(entry, field, "mean"), field + ".mean");
    f.std = r.number(r.member(entry, field, "std"), field + ".std");
    out.push_back(std::move(f));
  }
  return out;
}

std::vector<std::size_t> read_sizes(const ConfigReader& r, const json& doc, std::string_view key) {
  const json& list = r.array(r.member(doc, "", key), key);
  std::vector<std::size_t> out;
  out.reserve(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    out.push_back(r.size(list[i], ConfigReader::index(key, i)));
  }
  return out;
}

ordered_json categorical_json(const std::vector<DeepCategoricalFeature>& list) {
  ordered_json out = ordered_json::array();
  for (const auto& f : list) {
    ordered_json entry;
    entry["name"] = f.name;
    entry["vocab"] = f.vocab;
    entry["dim"] = f.dim;
    out.push_back(std::move(entry));
  }
  return out;
}

ordered_json numeric_json(const std::vector<DeepNumericFeature>& list) {
  ordered_json out = ordered_json::array();
  for (const auto& f : list) {
    ordered_json entry;
    entry["name"] = f.name;
    entry["mean"] = json_float(f.mean);
    entry["std"] = json_float(f.std);
    out.push_back(std::move(entry));
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Names

std::string_view to_string(DeepTaskKind kind) noexcept {
  switch (kind) {
    case DeepTaskKind::binary: return "binary";
    case DeepTaskKind::ctcvr: return "ctcvr";
    case DeepTaskKind::regression: return "regression";
  }
  return "unknown";
}

DeepTaskKind parse_deep_task_kind(std::string_view name) {
  if (name == "binary") return DeepTaskKind::binary;
  if (name == "ctcvr") return DeepTaskKind::ctcvr;
  if (name == "regression") return DeepTaskKind::regression;
  detail::fail(ErrorCode::invalid_argument, "unknown task kind '", name,
               "', expected binary, ctcvr or regression");
}

std::string_view to_string(DeepRankerConfig::Body body) noexcept {
  return body == DeepRankerConfig::Body::shared_bottom ? "shared_bottom" : "mmoe";
}

// ---------------------------------------------------------------------------
// DeepRankerConfig

std::size_t DeepRankerConfig::user_width() const {
  return embedding_width(user_categorical) + user_numeric.size();
}

std::size_t DeepRankerConfig::candidate_width() const {
  return item_vector_dim + embedding_width(item_categorical) + item_numeric.size();
}

std::size_t DeepRankerConfig::token_width() const {
  const std::size_t dc = history_category_feature < item_categorical.size()
                             ? item_categorical[history_category_feature].dim
                             : 0;
  return item_vector_dim + dc;
}

std::size_t DeepRankerConfig::input_width() const {
  return user_width() + candidate_width() + attention_dim;
}

void DeepRankerConfig::validate() const {
  validate_size(item_vector_dim, "item_vector_dim");
  std::set<std::string, std::less<>> user_names;
  std::set<std::string, std::less<>> item_names;
  validate_categorical(user_categorical, "user_categorical", user_names, "user");
  validate_numeric(user_numeric, "user_numeric", user_names, "user");
  validate_categorical(item_categorical, "item_categorical", item_names, "item");
  validate_numeric(item_numeric, "item_numeric", item_names, "item");
  require(!item_categorical.empty(),
          "DeepRankerConfig.item_categorical is empty; history tokens need one item categorical "
          "feature (history_category_feature)");
  require(history_category_feature < item_categorical.size(),
          "DeepRankerConfig.history_category_feature is ", history_category_feature,
          ", outside the ", item_categorical.size(), " item_categorical features");
  validate_size(history_length, "history_length");
  require(recency_bounds_s.size() <= kMaxSize, "DeepRankerConfig.recency_bounds_s is too long");
  for (std::size_t i = 0; i < recency_bounds_s.size(); ++i) {
    require(recency_bounds_s[i] > 0, "DeepRankerConfig.recency_bounds_s[", i, "] is ",
            recency_bounds_s[i], ", expected > 0");
    require(i == 0 || recency_bounds_s[i] > recency_bounds_s[i - 1],
            "DeepRankerConfig.recency_bounds_s[", i, "] = ", recency_bounds_s[i],
            " is not greater than recency_bounds_s[", i - 1, "] = ", recency_bounds_s[i - 1],
            " (bounds must be strictly increasing)");
  }
  validate_size(attention_dim, "attention_dim");
  validate_size(experts, "experts");
  require(body != Body::shared_bottom || experts == 1,
          "DeepRankerConfig.experts must be 1 for body shared_bottom, got ", experts);
  require(!expert_hidden.empty(), "DeepRankerConfig.expert_hidden is empty (at least one layer)");
  require(expert_hidden.size() <= 64, "DeepRankerConfig.expert_hidden has too many layers");
  for (std::size_t l = 0; l < expert_hidden.size(); ++l) {
    validate_size(expert_hidden[l], detail::cat("expert_hidden[", l, "]"));
  }
  require(tower_hidden.size() <= 64, "DeepRankerConfig.tower_hidden has too many layers");
  for (std::size_t l = 0; l < tower_hidden.size(); ++l) {
    validate_size(tower_hidden[l], detail::cat("tower_hidden[", l, "]"));
  }
  require(!tasks.empty(), "DeepRankerConfig.tasks is empty");
  require(tasks.size() <= 1024, "DeepRankerConfig.tasks has too many tasks");
  for (std::size_t t = 0; t < tasks.size(); ++t) {
    const DeepTaskConfig& task = tasks[t];
    const std::string field = detail::cat("DeepRankerConfig.tasks[", t, "]");
    require(!task.name.empty(), field, ".name is empty");
    for (std::size_t s = 0; s < t; ++s) {
      require(tasks[s].name != task.name, field, ".name: task '", task.name, "' is listed twice");
    }
    require(task.kind == DeepTaskKind::binary || task.kind == DeepTaskKind::ctcvr ||
                task.kind == DeepTaskKind::regression,
            field, ".kind is not a known task kind");
    if (task.kind == DeepTaskKind::ctcvr) {
      const auto parent =
          std::find_if(tasks.begin(), tasks.begin() + static_cast<std::ptrdiff_t>(t),
                       [&](const DeepTaskConfig& p) { return p.name == task.parent; });
      require(parent != tasks.begin() + static_cast<std::ptrdiff_t>(t) &&
                  parent->kind == DeepTaskKind::binary,
              field, ".parent: ctcvr task '", task.name, "' has parent '", task.parent,
              "', which is not an earlier binary task");
    } else {
      require(task.parent.empty(), field, ".parent: task '", task.name, "' of kind ",
              to_string(task.kind), " has parent '", task.parent, "' (only ctcvr tasks have one)");
    }
    require(std::isfinite(task.loss_weight) && task.loss_weight >= 0.0F, field,
            ".loss_weight of task '", task.name, "' must be finite and >= 0, got ",
            task.loss_weight);
    if (task.kind == DeepTaskKind::regression) {
      require(task.label == "dwell", field, ".label of regression task '", task.name, "' is '",
              task.label, "', expected dwell");
    } else {
      require(task.label == "click" || task.label == "cart" || task.label == "purchase", field,
              ".label of ", to_string(task.kind), " task '", task.name, "' is '", task.label,
              "', expected click, cart or purchase");
    }
  }
  require(std::isfinite(dropout) && dropout >= 0.0F && dropout < 1.0F,
          "DeepRankerConfig.dropout must be in [0, 1), got ", dropout);
  try {
    fusion.validate();
  } catch (const Error& e) {
    detail::fail(ErrorCode::invalid_argument, "DeepRankerConfig.fusion: ", e.what());
  }
  for (const auto& objective : fusion.weights) {
    const std::string& name = objective.first;
    const bool known = std::any_of(tasks.begin(), tasks.end(),
                                   [&](const DeepTaskConfig& t) { return t.name == name; });
    if (!known) {
      std::string names;
      for (const auto& t : tasks) names += (names.empty() ? "" : ", ") + t.name;
      detail::fail(ErrorCode::invalid_argument, "DeepRankerConfig.fusion.weights: objective '",
                   name, "' is not a task (tasks: ", names, ")");
    }
  }
}

std::string DeepRankerConfig::to_json() const {
  ordered_json doc;
  doc["format"] = kFormatName;
  doc["version"] = kFormatVersion;
  doc["body"] = to_string(body);
  doc["item_vector_dim"] = item_vector_dim;
  doc["user_categorical"] = categorical_json(user_categorical);
  doc["user_numeric"] = numeric_json(user_numeric);
  doc["item_categorical"] = categorical_json(item_categorical);
  doc["item_numeric"] = numeric_json(item_numeric);
  doc["history_category_feature"] = history_category_feature;
  doc["history_length"] = history_length;
  doc["recency_bounds_s"] = recency_bounds_s;
  doc["attention_dim"] = attention_dim;
  doc["experts"] = experts;
  doc["expert_hidden"] = expert_hidden;
  doc["tower_hidden"] = tower_hidden;
  ordered_json task_list = ordered_json::array();
  for (const DeepTaskConfig& t : tasks) {
    ordered_json entry;
    entry["name"] = t.name;
    entry["kind"] = to_string(t.kind);
    entry["parent"] = t.parent;
    entry["loss_weight"] = json_float(t.loss_weight);
    entry["label"] = t.label;
    task_list.push_back(std::move(entry));
  }
  doc["tasks"] = std::move(task_list);
  doc["dropout"] = json_float(dropout);
  ordered_json fusion_doc;
  fusion_doc["kind"] = to_string(fusion.kind);
  ordered_json weights = ordered_json::array();
  for (const auto& [name, weight] : fusion.weights) {
    weights.push_back(ordered_json::array({name, json_float(weight)}));
  }
  fusion_doc["weights"] = std::move(weights);
  fusion_doc["epsilon"] = json_float(fusion.epsilon);
  doc["fusion"] = std::move(fusion_doc);
  return doc.dump(2) + "\n";
}

DeepRankerConfig DeepRankerConfig::from_json(std::string_view text, std::string_view source) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    detail::fail(ErrorCode::format, source, ": malformed JSON: ", e.what());
  }
  const ConfigReader r(source);
  r.object(doc, "",
           {"format", "version", "body", "item_vector_dim", "user_categorical", "user_numeric",
            "item_categorical", "item_numeric", "history_category_feature", "history_length",
            "recency_bounds_s", "attention_dim", "experts", "expert_hidden", "tower_hidden",
            "tasks", "dropout", "fusion", "weights_sha"});

  const std::string format = r.string(r.member(doc, "", "format"), "format");
  if (format != kFormatName) {
    r.fail("format", detail::cat("expected '", kFormatName, "', got '", format, "'"));
  }
  const std::int64_t version = r.integer(r.member(doc, "", "version"), "version");
  if (version != kFormatVersion) {
    r.fail("version", detail::cat("unsupported version ", version, ", expected ", kFormatVersion));
  }
  if (const auto it = doc.find("weights_sha"); it != doc.end()) {
    const std::string sha = r.string(*it, "weights_sha");
    const bool hex = sha.size() == 16 && std::all_of(sha.begin(), sha.end(), [](char c) {
                       return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
                     });
    if (!hex)
      r.fail("weights_sha", detail::cat("expected 16 lower-case hex digits, got '", sha, "'"));
  }

  DeepRankerConfig c;
  const std::string body = r.string(r.member(doc, "", "body"), "body");
  if (body == "mmoe") {
    c.body = Body::mmoe;
  } else if (body == "shared_bottom") {
    c.body = Body::shared_bottom;
  } else {
    r.fail("body", detail::cat("unknown body '", body, "', expected mmoe or shared_bottom"));
  }
  c.item_vector_dim = r.size(r.member(doc, "", "item_vector_dim"), "item_vector_dim");
  c.user_categorical = read_categorical(r, doc, "user_categorical");
  c.user_numeric = read_numeric(r, doc, "user_numeric");
  c.item_categorical = read_categorical(r, doc, "item_categorical");
  c.item_numeric = read_numeric(r, doc, "item_numeric");
  c.history_category_feature =
      r.size(r.member(doc, "", "history_category_feature"), "history_category_feature");
  c.history_length = r.size(r.member(doc, "", "history_length"), "history_length");
  {
    const json& bounds = r.array(r.member(doc, "", "recency_bounds_s"), "recency_bounds_s");
    c.recency_bounds_s.clear();
    for (std::size_t i = 0; i < bounds.size(); ++i) {
      c.recency_bounds_s.push_back(
          r.integer(bounds[i], ConfigReader::index("recency_bounds_s", i)));
    }
  }
  c.attention_dim = r.size(r.member(doc, "", "attention_dim"), "attention_dim");
  c.experts = r.size(r.member(doc, "", "experts"), "experts");
  c.expert_hidden = read_sizes(r, doc, "expert_hidden");
  c.tower_hidden = read_sizes(r, doc, "tower_hidden");
  {
    const json& list = r.array(r.member(doc, "", "tasks"), "tasks");
    c.tasks.clear();
    for (std::size_t i = 0; i < list.size(); ++i) {
      const std::string field = ConfigReader::index("tasks", i);
      const json& entry =
          r.object(list[i], field, {"name", "kind", "parent", "loss_weight", "label"});
      DeepTaskConfig t;
      t.name = r.string(r.member(entry, field, "name"), field + ".name");
      const std::string kind = r.string(r.member(entry, field, "kind"), field + ".kind");
      try {
        t.kind = parse_deep_task_kind(kind);
      } catch (const Error& e) {
        r.fail(field + ".kind", e.what());
      }
      t.parent = r.string(r.member(entry, field, "parent"), field + ".parent");
      t.loss_weight = r.number(r.member(entry, field, "loss_weight"), field + ".loss_weight");
      t.label = r.string(r.member(entry, field, "label"), field + ".label");
      c.tasks.push_back(std::move(t));
    }
  }
  c.dropout = r.number(r.member(doc, "", "dropout"), "dropout");
  {
    const json& f = r.object(r.member(doc, "", "fusion"), "fusion", {"kind", "weights", "epsilon"});
    const std::string kind = r.string(r.member(f, "fusion", "kind"), "fusion.kind");
    try {
      c.fusion.kind = parse_fusion_kind(kind);
    } catch (const Error& e) {
      r.fail("fusion.kind", e.what());
    }
    const json& weights = r.array(r.member(f, "fusion", "weights"), "fusion.weights");
    c.fusion.weights.clear();
    for (std::size_t i = 0; i < weights.size(); ++i) {
      const std::string field = ConfigReader::index("fusion.weights", i);
      const json& pair = r.array(weights[i], field);
      if (pair.size() != 2) {
        r.fail(field, detail::cat("expected [name, weight], got ", pair.dump()));
      }
      c.fusion.weights.emplace_back(r.string(pair[0], field + "[0]"),
                                    r.number(pair[1], field + "[1]"));
    }
    c.fusion.epsilon = r.number(r.member(f, "fusion", "epsilon"), "fusion.epsilon");
  }
  try {
    c.validate();
  } catch (const Error& e) {
    detail::fail(ErrorCode::format, source, ": ", e.what());
  }
  return c;
}

// ---------------------------------------------------------------------------
// Parameters

DeepRankerParameters deep_ranker_parameter_shapes(const DeepRankerConfig& config) {
  config.validate();
  DeepRankerParameters out;
  auto add = [&](std::string name, std::vector<std::size_t> shape) {
    out.push_back(NamedTensor{std::move(name), std::move(shape), {}});
  };
  const std::size_t a = config.attention_dim;
  const std::size_t hd = config.token_width();
  const std::size_t x = config.input_width();
  for (const auto& f : config.user_categorical) {
    add("user." + f.name + ".embedding", {f.vocab.size() + 1, f.dim});
  }
  for (const auto& f : config.item_categorical) {
    add("item." + f.name + ".embedding", {f.vocab.size() + 1, f.dim});
  }
  add("history.type.embedding", {kEventTypes, a});
  add("history.recency.embedding", {config.recency_bounds_s.size() + 1, a});
  for (const char* part : {"query", "key", "value"}) {
    add(detail::cat("attention.", part, ".weight"), {a, hd});
    add(detail::cat("attention.", part, ".bias"), {a});
  }
  for (std::size_t e = 0; e < config.experts; ++e) {
    std::size_t in = x;
    for (std::size_t l = 0; l < config.expert_hidden.size(); ++l) {
      const std::size_t width = config.expert_hidden[l];
      add(detail::cat("expert.", e, ".", l, ".weight"), {width, in});
      add(detail::cat("expert.", e, ".", l, ".bias"), {width});
      in = width;
    }
  }
  if (config.body == DeepRankerConfig::Body::mmoe) {
    for (const auto& t : config.tasks) {
      add("gate." + t.name + ".weight", {config.experts, x});
      add("gate." + t.name + ".bias", {config.experts});
    }
  }
  for (const auto& t : config.tasks) {
    std::size_t in = config.expert_hidden.back();
    for (std::size_t l = 0; l <= config.tower_hidden.size(); ++l) {
      const std::size_t width = l < config.tower_hidden.size() ? config.tower_hidden[l] : 1;
      add(detail::cat("tower.", t.name, ".", l, ".weight"), {width, in});
      add(detail::cat("tower.", t.name, ".", l, ".bias"), {width});
      in = width;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// DeepRankerBatch and DeepRankerExamples validation

namespace {

// Messages name the array as "<owner>.<name>", owner being DeepRankerBatch
// or DeepRankerExamples. No message string is built unless a check fails.
template <class T>
void check_size(std::string_view owner, std::span<const T> values, std::size_t expected,
                std::string_view name, std::string_view meaning) {
  if (values.size() != expected) {
    detail::fail(ErrorCode::invalid_argument, owner, ".", name, " has ", values.size(),
                 " values, expected ", expected, " (", meaning, ")");
  }
}

void check_finite(std::string_view owner, std::span<const float> values, std::size_t cols,
                  std::string_view name) {
  // Every request checks its vectors: the vector check first, the search
  // for the offending value only when it fails.
  static const detail::deep::KernelIsa isa = detail::bert::detect_isa();
  if (detail::deep::all_finite(isa, values.data(), values.size())) return;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      detail::fail(ErrorCode::invalid_argument, owner, ".", name, "[row ", i / cols, ", column ",
                   i % cols, "] = ", values[i], " is not finite");
    }
  }
}

void check_indices(std::string_view owner, std::span<const std::int32_t> values,
                   const std::vector<DeepCategoricalFeature>& features, std::string_view name) {
  const std::size_t k = features.size();
  for (std::size_t i = 0; i < values.size(); ++i) {
    const DeepCategoricalFeature& f = features[i % k];
    const std::int32_t v = values[i];
    if (v < 0 || static_cast<std::size_t>(v) > f.vocab.size()) {
      detail::fail(ErrorCode::invalid_argument, owner, ".", name, "[row ", i / k, ", feature '",
                   f.name, "'] = ", v, " is outside [0, ", f.vocab.size(), "]");
    }
  }
}

// `meaning` and `feature` explain the range in the message (a feature name,
// when set, is quoted after `meaning`).
void check_range(std::string_view owner, std::span<const std::int32_t> values, std::size_t max,
                 std::string_view name, std::string_view meaning, std::string_view feature = {}) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    const std::int32_t v = values[i];
    if (v < 0 || static_cast<std::size_t>(v) > max) {
      detail::fail(ErrorCode::invalid_argument, owner, ".", name, "[", i, "] = ", v,
                   " is outside [0, ", max, "] (", meaning,
                   feature.empty() ? "" : detail::cat(" '", feature, "'"), ")");
    }
  }
}

// Row indices into a table of `count` rows: [0, count).
void check_rows(std::string_view owner, std::span<const std::int32_t> values, std::size_t count,
                std::string_view name, std::string_view table) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    const std::int32_t v = values[i];
    if (v < 0 || static_cast<std::size_t>(v) >= count) {
      detail::fail(ErrorCode::invalid_argument, owner, ".", name, "[", i, "] = ", v,
                   " is outside [0, ", count, ") (", table, " has ", count, " rows)");
    }
  }
}

// The arrays a DeepRankerBatch and DeepRankerExamples share: everything but
// the item vectors (per event and candidate in a batch; a table the
// examples' events and candidates index).
struct IndexedArrays {
  std::string_view owner;
  std::size_t users = 0;
  std::span<const std::int32_t> user_categorical;
  std::span<const float> user_numeric;
  std::span<const std::int64_t> history_offsets;
  std::span<const std::int32_t> history_category;
  std::span<const std::int32_t> history_type;
  std::span<const std::int32_t> history_recency;
  std::size_t candidates = 0;
  std::span<const std::int32_t> candidate_user;
  std::span<const std::int32_t> candidate_categorical;
  std::span<const float> candidate_numeric;
};

// Sizes of the shared arrays, checking the arrays whose length bounds
// `users` and `candidates` before multiplying by them.
void check_sizes(const IndexedArrays& a, const DeepRankerConfig& config) {
  if (a.history_offsets.size() != a.users + 1 || a.users >= a.history_offsets.size()) {
    detail::fail(ErrorCode::invalid_argument, a.owner, ".history_offsets has ",
                 a.history_offsets.size(), " values, expected users + 1 = ", a.users, " + 1");
  }
  check_size(a.owner, a.candidate_user, a.candidates, "candidate_user", "one per candidate");
  check_size(a.owner, a.user_categorical, a.users * config.user_categorical.size(),
             "user_categorical", "users x user_categorical features");
  check_size(a.owner, a.user_numeric, a.users * config.user_numeric.size(), "user_numeric",
             "users x user_numeric features");
  const std::size_t events = a.history_category.size();
  check_size(a.owner, a.history_type, events, "history_type",
             "one per history event, as history_category");
  check_size(a.owner, a.history_recency, events, "history_recency",
             "one per history event, as history_category");
  check_size(a.owner, a.candidate_categorical, a.candidates * config.item_categorical.size(),
             "candidate_categorical", "candidates x item_categorical features");
  check_size(a.owner, a.candidate_numeric, a.candidates * config.item_numeric.size(),
             "candidate_numeric", "candidates x item_numeric features");
}

// Offsets, index ranges and finite numerics of the shared arrays (sizes checked).
void check_values(const IndexedArrays& a, const DeepRankerConfig& config) {
  const std::size_t events = a.history_category.size();
  if (a.history_offsets[0] != 0) {
    detail::fail(ErrorCode::invalid_argument, a.owner, ".history_offsets[0] is ",
                 a.history_offsets[0], ", expected 0");
  }
  for (std::size_t u = 0; u < a.users; ++u) {
    const std::int64_t begin = a.history_offsets[u];
    const std::int64_t end = a.history_offsets[u + 1];
    if (end < begin) {
      detail::fail(ErrorCode::invalid_argument, a.owner, ".history_offsets[", u + 1, "] = ", end,
                   " is less than history_offsets[", u, "] = ", begin,
                   " (offsets must not decrease)");
    }
    if (static_cast<std::uint64_t>(end - begin) > config.history_length) {
      detail::fail(ErrorCode::invalid_argument, a.owner, ".history_offsets: user row ", u, " has ",
                   end - begin, " history events, more than history_length ",
                   config.history_length);
    }
  }
  if (static_cast<std::uint64_t>(a.history_offsets[a.users]) != events) {
    detail::fail(ErrorCode::invalid_argument, a.owner, ".history_offsets[", a.users, "] is ",
                 a.history_offsets[a.users], ", expected the history event count ", events,
                 " (the length of history_category)");
  }

  check_indices(a.owner, a.user_categorical, config.user_categorical, "user_categorical");
  check_indices(a.owner, a.candidate_categorical, config.item_categorical, "candidate_categorical");
  const DeepCategoricalFeature& history_feature =
      config.item_categorical[config.history_category_feature];
  check_range(a.owner, a.history_category, history_feature.vocab.size(), "history_category",
              "index into the table of item feature", history_feature.name);
  check_range(a.owner, a.history_type, kEventTypes - 1, "history_type", "EventType value");
  check_range(a.owner, a.history_recency, config.recency_bounds_s.size(), "history_recency",
              "recency bucket");
  for (std::size_t i = 0; i < a.candidates; ++i) {
    const std::int32_t u = a.candidate_user[i];
    if (u < 0 || static_cast<std::size_t>(u) >= a.users) {
      detail::fail(ErrorCode::invalid_argument, a.owner, ".candidate_user[", i, "] = ", u,
                   " is outside [0, ", a.users, ") (there are ", a.users, " users)");
    }
  }
  check_finite(a.owner, a.user_numeric, std::max<std::size_t>(1, config.user_numeric.size()),
               "user_numeric");
  check_finite(a.owner, a.candidate_numeric, std::max<std::size_t>(1, config.item_numeric.size()),
               "candidate_numeric");
}

}  // namespace

void DeepRankerBatch::validate(const DeepRankerConfig& config) const {
  constexpr std::string_view kOwner = "DeepRankerBatch";
  const IndexedArrays shared{kOwner,
                             users,
                             user_categorical,
                             user_numeric,
                             history_offsets,
                             history_category,
                             history_type,
                             history_recency,
                             candidates,
                             candidate_user,
                             candidate_categorical,
                             candidate_numeric};
  const std::size_t d = config.item_vector_dim;
  check_sizes(shared, config);
  check_size(kOwner, history_vectors, history_category.size() * d, "history_vectors",
             "history events x item_vector_dim");
  check_size(kOwner, candidate_vectors, candidates * d, "candidate_vectors",
             "candidates x item_vector_dim");
  check_values(shared, config);
  check_finite(kOwner, history_vectors, d, "history_vectors");
  check_finite(kOwner, candidate_vectors, d, "candidate_vectors");
}

namespace detail {

void validate_deep_examples(const DeepRankerConfig& config, const DeepRankerExamples& ex) {
  constexpr std::string_view kOwner = "DeepRankerExamples";
  const IndexedArrays shared{kOwner,
                             ex.users,
                             ex.user_categorical,
                             ex.user_numeric,
                             ex.history_offsets,
                             ex.history_category,
                             ex.history_type,
                             ex.history_recency,
                             ex.candidates,
                             ex.candidate_user,
                             ex.candidate_categorical,
                             ex.candidate_numeric};
  const std::size_t d = config.item_vector_dim;
  check_sizes(shared, config);
  // items x D cannot overflow for a vector that fits in memory unless
  // `items` is absurd: bound it by the array before multiplying.
  if (ex.items > ex.item_vectors.size() || ex.item_vectors.size() != ex.items * d) {
    detail::fail(ErrorCode::invalid_argument, kOwner, ".item_vectors has ", ex.item_vectors.size(),
                 " values, expected items x item_vector_dim = ", ex.items, " x ", d);
  }
  check_size(kOwner, std::span<const std::int32_t>(ex.history_item), ex.history_category.size(),
             "history_item", "one per history event, as history_category");
  check_size(kOwner, std::span<const std::int32_t>(ex.candidate_item), ex.candidates,
             "candidate_item", "one per candidate");
  check_values(shared, config);
  check_rows(kOwner, ex.history_item, ex.items, "history_item", "item_vectors");
  check_rows(kOwner, ex.candidate_item, ex.items, "candidate_item", "item_vectors");
  check_finite(kOwner, ex.item_vectors, d, "item_vectors");
}

}  // namespace detail

// ---------------------------------------------------------------------------
// DeepRankerExamples

namespace {

// Columns of a rows x ? matrix stored in `size` values (0 when rows is 0).
// `where` names the caller in messages.
std::size_t columns_of(std::size_t size, std::size_t rows, std::string_view name,
                       std::string_view rows_name, std::string_view where) {
  if (rows == 0) {
    require(size == 0, where, ": ", name, " has ", size, " values but ", rows_name, " is 0");
    return 0;
  }
  require(size % rows == 0, where, ": ", name, " has ", size, " values, not a multiple of ",
          rows_name, " = ", rows);
  return size / rows;
}

// Rows [row * width, (row + 1) * width) of `from`, appended to `to`.
template <class T>
void append_row(const std::vector<T>& from, std::size_t row, std::size_t width,
                std::vector<T>& to) {
  const auto first = from.begin() + static_cast<std::ptrdiff_t>(row * width);
  to.insert(to.end(), first, first + static_cast<std::ptrdiff_t>(width));
}

// gather() for `count` rows, row i being row_at(i): one body for a span of
// rows and for all rows (which needs no index array).
template <class RowAt>
DeepRankerBatch gather_rows(const DeepRankerExamples& ex, std::size_t count, RowAt row_at,
                            DeepRankerBatchStorage& s) {
  constexpr std::string_view kWhere = "DeepRankerExamples::gather";
  // Without a config, the widths come from the arrays; they must be
  // consistent, or the copies below would read out of bounds.
  require(ex.history_offsets.size() == ex.users + 1, kWhere, ": history_offsets has ",
          ex.history_offsets.size(), " values, expected users + 1 = ", ex.users + 1);
  require(ex.candidate_user.size() == ex.candidates && ex.candidate_item.size() == ex.candidates,
          kWhere, ": candidate_user and candidate_item have ", ex.candidate_user.size(), " and ",
          ex.candidate_item.size(), " values, expected candidates = ", ex.candidates);
  const std::size_t events = ex.history_item.size();
  require(ex.history_category.size() == events && ex.history_type.size() == events &&
              ex.history_recency.size() == events,
          kWhere, ": history_item, history_category, history_type and history_recency have ",
          events, ", ", ex.history_category.size(), ", ", ex.history_type.size(), " and ",
          ex.history_recency.size(), " values (one per history event each)");
  const std::size_t d =
      columns_of(ex.item_vectors.size(), ex.items, "item_vectors", "items", kWhere);
  const std::size_t nuc =
      columns_of(ex.user_categorical.size(), ex.users, "user_categorical", "users", kWhere);
  const std::size_t nun =
      columns_of(ex.user_numeric.size(), ex.users, "user_numeric", "users", kWhere);
  const std::size_t nic = columns_of(ex.candidate_categorical.size(), ex.candidates,
                                     "candidate_categorical", "candidates", kWhere);
  const std::size_t nin = columns_of(ex.candidate_numeric.size(), ex.candidates,
                                     "candidate_numeric", "candidates", kWhere);
  // Every index the user numbering reads is checked before user_map is
  // written: user_map must be all -1 again when this returns or throws.
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t r = row_at(i);
    if (r >= ex.candidates) {
      detail::fail(ErrorCode::invalid_argument, kWhere, ": rows[", i, "] = ", r, " is outside [0, ",
                   ex.candidates, ") (the examples have ", ex.candidates, " candidates)");
    }
    const std::int32_t u = ex.candidate_user[r];
    if (u < 0 || static_cast<std::size_t>(u) >= ex.users) {
      detail::fail(ErrorCode::invalid_argument, kWhere, ": candidate_user[", r, "] = ", u,
                   " is outside [0, ", ex.users, ") (the examples have ", ex.users, " users)");
    }
    const std::int32_t item = ex.candidate_item[r];
    if (item < 0 || static_cast<std::size_t>(item) >= ex.items) {
      detail::fail(ErrorCode::invalid_argument, kWhere, ": candidate_item[", r, "] = ", item,
                   " is outside [0, ", ex.items, ") (item_vectors has ", ex.items, " rows)");
    }
  }

  // Users in order of first use.
  if (s.user_map.size() != ex.users) s.user_map.assign(ex.users, -1);
  s.candidate_user.resize(count);
  std::int32_t nu = 0;
  for (std::size_t i = 0; i < count; ++i) {
    std::int32_t& local = s.user_map[static_cast<std::size_t>(ex.candidate_user[row_at(i)])];
    if (local < 0) local = nu++;
    s.candidate_user[i] = local;
  }
  for (std::size_t i = 0; i < count; ++i) {
    s.user_map[static_cast<std::size_t>(ex.candidate_user[row_at(i)])] = -1;
  }

  const auto users = static_cast<std::size_t>(nu);
  s.user_categorical.clear();
  s.user_numeric.clear();
  s.history_offsets.assign(1, 0);
  s.history_vectors.clear();
  s.history_category.clear();
  s.history_type.clear();
  s.history_recency.clear();
  std::int32_t next = 0;  // the batch user whose first candidate comes next
  for (std::size_t i = 0; i < count && next < nu; ++i) {
    if (s.candidate_user[i] != next) continue;
    ++next;
    const std::size_t r = row_at(i);
    const auto gu = static_cast<std::size_t>(ex.candidate_user[r]);
    append_row(ex.user_categorical, gu, nuc, s.user_categorical);
    append_row(ex.user_numeric, gu, nun, s.user_numeric);
    const std::int64_t begin = ex.history_offsets[gu];
    const std::int64_t end = ex.history_offsets[gu + 1];
    if (begin < 0 || end < begin || static_cast<std::uint64_t>(end) > events) {
      detail::fail(ErrorCode::invalid_argument, kWhere, ": history_offsets[", gu, "] = ", begin,
                   " and history_offsets[", gu + 1, "] = ", end, " are not a range within [0, ",
                   events, "] (the history events)");
    }
    for (auto e = static_cast<std::size_t>(begin); e < static_cast<std::size_t>(end); ++e) {
      const std::int32_t item = ex.history_item[e];
      if (item < 0 || static_cast<std::size_t>(item) >= ex.items) {
        detail::fail(ErrorCode::invalid_argument, kWhere, ": history_item[", e, "] = ", item,
                     " is outside [0, ", ex.items, ") (item_vectors has ", ex.items, " rows)");
      }
      append_row(ex.item_vectors, static_cast<std::size_t>(item), d, s.history_vectors);
      s.history_category.push_back(ex.history_category[e]);
      s.history_type.push_back(ex.history_type[e]);
      s.history_recency.push_back(ex.history_recency[e]);
    }
    s.history_offsets.push_back(static_cast<std::int64_t>(s.history_category.size()));
  }

  s.candidate_vectors.clear();
  s.candidate_categorical.clear();
  s.candidate_numeric.clear();
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t r = row_at(i);
    append_row(ex.item_vectors, static_cast<std::size_t>(ex.candidate_item[r]), d,
               s.candidate_vectors);
    append_row(ex.candidate_categorical, r, nic, s.candidate_categorical);
    append_row(ex.candidate_numeric, r, nin, s.candidate_numeric);
  }

  DeepRankerBatch b;
  b.users = users;
  b.user_categorical = s.user_categorical;
  b.user_numeric = s.user_numeric;
  b.history_offsets = s.history_offsets;
  b.history_vectors = s.history_vectors;
  b.history_category = s.history_category;
  b.history_type = s.history_type;
  b.history_recency = s.history_recency;
  b.candidates = count;
  b.candidate_user = s.candidate_user;
  b.candidate_vectors = s.candidate_vectors;
  b.candidate_categorical = s.candidate_categorical;
  b.candidate_numeric = s.candidate_numeric;
  return b;
}

}  // namespace

DeepRankerBatch DeepRankerExamples::gather(std::span<const std::size_t> rows,
                                           DeepRankerBatchStorage& storage) const {
  return gather_rows(
      *this, rows.size(), [rows](std::size_t i) { return rows[i]; }, storage);
}

DeepRankerBatch DeepRankerExamples::gather_all(DeepRankerBatchStorage& storage) const {
  return gather_rows(
      *this, candidates, [](std::size_t i) { return i; }, storage);
}

namespace {

constexpr std::string_view kExamplesFormat = "funnel.deep_ranker.examples";

// The examples' tensors: name, dtype, and whether it is a matrix (rows x
// columns) or a vector.
struct ExampleTensor {
  const char* name;
  TensorDType dtype;
  bool matrix;
};
constexpr ExampleTensor kExampleTensors[] = {
    {"item_vectors", TensorDType::f32, true},
    {"user_categorical", TensorDType::i32, true},
    {"user_numeric", TensorDType::f32, true},
    {"history_offsets", TensorDType::i64, false},
    {"history_item", TensorDType::i32, false},
    {"history_category", TensorDType::i32, false},
    {"history_type", TensorDType::i32, false},
    {"history_recency", TensorDType::i32, false},
    {"candidate_user", TensorDType::i32, false},
    {"candidate_item", TensorDType::i32, false},
    {"candidate_categorical", TensorDType::i32, true},
    {"candidate_numeric", TensorDType::f32, true},
    {"labels", TensorDType::f32, true},
    {"ts", TensorDType::i64, false},
};

template <class T>
std::span<const std::byte> bytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

template <class T>
std::vector<T> copy_tensor(const SafetensorsFile& file, const TensorInfo& t) {
  std::vector<T> out(t.elements());
  const auto bytes = file.bytes(t);
  assert(bytes.size() == out.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

}  // namespace

void DeepRankerExamples::save(const std::filesystem::path& path) const {
  constexpr std::string_view kWhere = "DeepRankerExamples::save";
  require(history_offsets.size() == users + 1, kWhere, ": history_offsets has ",
          history_offsets.size(), " values, expected users + 1 = ", users + 1);
  require(candidate_user.size() == candidates && candidate_item.size() == candidates, kWhere,
          ": candidate_user and candidate_item have ", candidate_user.size(), " and ",
          candidate_item.size(), " values, expected candidates = ", candidates);
  require(ts.size() == candidates, kWhere, ": ts has ", ts.size(),
          " values, expected candidates = ", candidates);
  const std::size_t events = history_category.size();
  require(history_item.size() == events && history_type.size() == events &&
              history_recency.size() == events,
          kWhere, ": history_category, history_item, history_type and history_recency have ",
          events, ", ", history_item.size(), ", ", history_type.size(), " and ",
          history_recency.size(), " values (one per history event each)");
  const std::size_t d = columns_of(item_vectors.size(), items, "item_vectors", "items", kWhere);
  const std::size_t uc =
      columns_of(user_categorical.size(), users, "user_categorical", "users", kWhere);
  const std::size_t un = columns_of(user_numeric.size(), users, "user_numeric", "users", kWhere);
  const std::size_t cc = columns_of(candidate_categorical.size(), candidates,
                                    "candidate_categorical", "candidates", kWhere);
  const std::size_t cn =
      columns_of(candidate_numeric.size(), candidates, "candidate_numeric", "candidates", kWhere);
  const std::size_t tl = columns_of(labels.size(), candidates, "labels", "candidates", kWhere);

  const std::vector<TensorToWrite> tensors = {
      {"item_vectors", TensorDType::f32, {items, d}, bytes_of(item_vectors)},
      {"user_categorical", TensorDType::i32, {users, uc}, bytes_of(user_categorical)},
      {"user_numeric", TensorDType::f32, {users, un}, bytes_of(user_numeric)},
      {"history_offsets", TensorDType::i64, {users + 1}, bytes_of(history_offsets)},
      {"history_item", TensorDType::i32, {events}, bytes_of(history_item)},
      {"history_category", TensorDType::i32, {events}, bytes_of(history_category)},
      {"history_type", TensorDType::i32, {events}, bytes_of(history_type)},
      {"history_recency", TensorDType::i32, {events}, bytes_of(history_recency)},
      {"candidate_user", TensorDType::i32, {candidates}, bytes_of(candidate_user)},
      {"candidate_item", TensorDType::i32, {candidates}, bytes_of(candidate_item)},
      {"candidate_categorical",
       TensorDType::i32,
       {candidates, cc},
       bytes_of(candidate_categorical)},
      {"candidate_numeric", TensorDType::f32, {candidates, cn}, bytes_of(candidate_numeric)},
      {"labels", TensorDType::f32, {candidates, tl}, bytes_of(labels)},
      {"ts", TensorDType::i64, {candidates}, bytes_of(ts)},
  };
  write_safetensors(path, tensors, {{"format", std::string(kExamplesFormat)}});
}

DeepRankerExamples DeepRankerExamples::load(const std::filesystem::path& path,
                                            const DeepRankerConfig& config) {
  config.validate();
  const SafetensorsFile file = SafetensorsFile::open(path);
  const std::string where = path.string();
  for (const TensorInfo& t : file.tensors()) {
    const bool known = std::any_of(std::begin(kExampleTensors), std::end(kExampleTensors),
                                   [&](const ExampleTensor& e) { return t.name == e.name; });
    if (t.name == "history_vectors" || t.name == "candidate_vectors") {
      detail::fail(ErrorCode::format, where, ": tensor '", t.name,
                   "' is of the older per-example layout (vectors are now stored once, in "
                   "item_vectors, and referred to by history_item / candidate_item); export "
                   "the examples again");
    }
    if (!known) {
      detail::fail(ErrorCode::format, where, ": unexpected tensor '", t.name,
                   "' (not a DeepRankerExamples array)");
    }
  }
  for (const ExampleTensor& e : kExampleTensors) {
    const TensorInfo& t = file.at(e.name);
    if (t.dtype != e.dtype) {
      detail::fail(ErrorCode::format, where, ": tensor '", e.name, "' has dtype ",
                   to_string(t.dtype), ", expected ", to_string(e.dtype));
    }
    if (t.shape.size() != (e.matrix ? 2U : 1U)) {
      detail::fail(ErrorCode::format, where, ": tensor '", e.name, "' has shape ",
                   shape_string(t.shape), ", expected ", e.matrix ? "2" : "1", " dimensions");
    }
  }
  const TensorInfo& offsets = file.at("history_offsets");
  if (offsets.shape[0] == 0) {
    detail::fail(ErrorCode::format, where,
                 ": tensor 'history_offsets' is empty, expected users + 1 values");
  }
  const std::size_t items = file.at("item_vectors").shape[0];
  const std::size_t users = offsets.shape[0] - 1;
  const std::size_t candidates = file.at("candidate_user").shape[0];
  const std::size_t events = file.at("history_category").shape[0];
  const std::size_t d = config.item_vector_dim;
  const std::size_t t_count = config.tasks.size();
  // Expected rows and columns (columns are not checked for a 0-row matrix,
  // whose width a writer without the config cannot know).
  const std::map<std::string, std::pair<std::size_t, std::size_t>, std::less<>> expected = {
      {"item_vectors", {items, d}},
      {"user_categorical", {users, config.user_categorical.size()}},
      {"user_numeric", {users, config.user_numeric.size()}},
      {"history_offsets", {users + 1, 0}},
      {"history_item", {events, 0}},
      {"history_category", {events, 0}},
      {"history_type", {events, 0}},
      {"history_recency", {events, 0}},
      {"candidate_user", {candidates, 0}},
      {"candidate_item", {candidates, 0}},
      {"candidate_categorical", {candidates, config.item_categorical.size()}},
      {"candidate_numeric", {candidates, config.item_numeric.size()}},
      {"labels", {candidates, t_count}},
      {"ts", {candidates, 0}},
  };
  for (const ExampleTensor& e : kExampleTensors) {
    const TensorInfo& t = file.at(e.name);
    const auto [rows, cols] = expected.at(e.name);
    const bool ok = t.shape[0] == rows && (!e.matrix || rows == 0 || t.shape[1] == cols);
    if (!ok) {
      const std::vector<std::size_t> want =
          e.matrix ? std::vector<std::size_t>{rows, cols} : std::vector<std::size_t>{rows};
      detail::fail(ErrorCode::format, where, ": tensor '", e.name, "' has shape ",
                   shape_string(t.shape), ", expected ", shape_string(want), " (", items,
                   " items from item_vectors, ", users, " users from history_offsets, ", candidates,
                   " candidates from candidate_user, ", events,
                   " events from history_category, and the config)");
    }
  }

  DeepRankerExamples ex;
  ex.items = items;
  ex.users = users;
  ex.candidates = candidates;
  // Zero-row matrices may have any width in the file; they load empty.
  ex.item_vectors = copy_tensor<float>(file, file.at("item_vectors"));
  ex.user_categorical = copy_tensor<std::int32_t>(file, file.at("user_categorical"));
  ex.user_numeric = copy_tensor<float>(file, file.at("user_numeric"));
  ex.history_offsets = copy_tensor<std::int64_t>(file, file.at("history_offsets"));
  ex.history_item = copy_tensor<std::int32_t>(file, file.at("history_item"));
  ex.history_category = copy_tensor<std::int32_t>(file, file.at("history_category"));
  ex.history_type = copy_tensor<std::int32_t>(file, file.at("history_type"));
  ex.history_recency = copy_tensor<std::int32_t>(file, file.at("history_recency"));
  ex.candidate_user = copy_tensor<std::int32_t>(file, file.at("candidate_user"));
  ex.candidate_item = copy_tensor<std::int32_t>(file, file.at("candidate_item"));
  ex.candidate_categorical = copy_tensor<std::int32_t>(file, file.at("candidate_categorical"));
  ex.candidate_numeric = copy_tensor<float>(file, file.at("candidate_numeric"));
  ex.labels = copy_tensor<float>(file, file.at("labels"));
  ex.ts = copy_tensor<std::int64_t>(file, file.at("ts"));
  for (std::size_t i = 0; i < ex.labels.size(); ++i) {
    if (std::isinf(ex.labels[i])) {
      detail::fail(ErrorCode::format, where, ": tensor 'labels' [row ", i / t_count, ", task '",
                   config.tasks[i % t_count].name, "'] is ", ex.labels[i],
                   " (labels must be finite, or NaN for no label)");
    }
  }
  try {
    detail::validate_deep_examples(config, ex);
  } catch (const Error& e) {
    detail::fail(ErrorCode::format, where, ": ", e.what());
  }
  return ex;
}

}  // namespace funnel
