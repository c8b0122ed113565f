// SPDX-License-Identifier: Apache-2.0
// `funnel train`: trains a fine ranker (DeepFineRanker or LogisticFineRanker)
// on a shop's catalogue, users and events (JSON Lines) and writes the model
// directory; optionally exports the deep ranker's examples for the PyTorch
// trainer (tools/deep_ranker/train_torch.py). Also the pieces `funnel eval`
// shares (commands.hpp): reading the shop and making the catalogue vectors.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "funnel/catalog.hpp"
#include "funnel/deep_fine_ranker.hpp"
#include "funnel/deep_ranker.hpp"
#include "funnel/error.hpp"
#include "funnel/event.hpp"
#include "funnel/fusion.hpp"
#include "funnel/hashing_encoder.hpp"
#include "funnel/logistic_fine_ranker.hpp"
#include "funnel/matrix.hpp"
#include "funnel/npy.hpp"
#include "funnel/user.hpp"
#include "internal/atomic_file.hpp"
#include "internal/checksum.hpp"
#include "internal/error_util.hpp"

namespace funnel::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---------------------------------------------------------------------------
// Shared with `funnel eval` (commands.hpp)

namespace {

constexpr const char* kRecipeFormat = "funnel.catalog_vectors";
constexpr const char* kTrainRunFormat = "funnel.train_run";
constexpr int kFormatVersion = 1;

json read_json_file(const fs::path& path) {
  const std::string text = detail::read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    detail::fail(ErrorCode::format, "'", path.string(), "' is not valid JSON: ", e.what());
  }
}

// Typed access to a JSON document's fields with messages that name the
// file and the field (used for vectors.json, train.json and --config).
class FieldReader {
 public:
  FieldReader(fs::path path, std::string what) : path_(std::move(path)), what_(std::move(what)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    detail::fail(ErrorCode::format, what_, " '", path_.string(), "': ", key.empty() ? "" : key,
                 key.empty() ? "" : ": ", message);
  }

  // Rejects keys outside `known` (they would be ignored silently otherwise).
  void only(const json& object, const std::string& key,
            std::initializer_list<std::string_view> known) const {
    if (!object.is_object()) fail(key, "expected a JSON object");
    for (const auto& [name, value] : object.items()) {
      if (std::find(known.begin(), known.end(), name) != known.end()) continue;
      std::string list;
      for (const std::string_view k : known) list += (list.empty() ? "" : ", ") + std::string(k);
      fail(join(key, name), "unknown key (known: " + list + ")");
    }
  }

  [[nodiscard]] static std::string join(const std::string& parent, const std::string& name) {
    return parent.empty() ? name : parent + "." + name;
  }

  [[nodiscard]] const json& member(const json& object, const std::string& key,
                                   const std::string& name) const {
    const auto it = object.find(name);
    if (it == object.end()) fail(join(key, name), "missing");
    return *it;
  }

  [[nodiscard]] std::string string(const json& value, const std::string& key) const {
    if (!value.is_string()) fail(key, "expected a string, got " + value.dump());
    return value.get<std::string>();
  }
  [[nodiscard]] double number(const json& value, const std::string& key) const {
    if (!value.is_number()) fail(key, "expected a number, got " + value.dump());
    return value.get<double>();
  }
  [[nodiscard]] float real(const json& value, const std::string& key) const {
    return static_cast<float>(number(value, key));
  }
  [[nodiscard]] std::int64_t integer(const json& value, const std::string& key) const {
    if (!value.is_number_integer()) fail(key, "expected an integer, got " + value.dump());
    return value.get<std::int64_t>();
  }
  [[nodiscard]] std::uint64_t unsigned_integer(const json& value, const std::string& key) const {
    if (!value.is_number_unsigned()) {
      fail(key, "expected a non-negative integer, got " + value.dump());
    }
    return value.get<std::uint64_t>();
  }
  [[nodiscard]] std::size_t count(const json& value, const std::string& key) const {
    return static_cast<std::size_t>(unsigned_integer(value, key));
  }
  [[nodiscard]] bool boolean(const json& value, const std::string& key) const {
    if (!value.is_boolean()) fail(key, "expected true or false, got " + value.dump());
    return value.get<bool>();
  }
  [[nodiscard]] std::vector<std::string> strings(const json& value, const std::string& key) const {
    if (!value.is_array()) fail(key, "expected an array of strings");
    std::vector<std::string> out;
    for (std::size_t i = 0; i < value.size(); ++i) {
      out.push_back(string(value[i], key + "[" + std::to_string(i) + "]"));
    }
    return out;
  }
  [[nodiscard]] std::vector<std::size_t> counts(const json& value, const std::string& key) const {
    if (!value.is_array()) fail(key, "expected an array of non-negative integers");
    std::vector<std::size_t> out;
    for (std::size_t i = 0; i < value.size(); ++i) {
      out.push_back(count(value[i], key + "[" + std::to_string(i) + "]"));
    }
    return out;
  }
  [[nodiscard]] std::vector<std::int64_t> integers(const json& value,
                                                   const std::string& key) const {
    if (!value.is_array()) fail(key, "expected an array of integers");
    std::vector<std::int64_t> out;
    for (std::size_t i = 0; i < value.size(); ++i) {
      out.push_back(integer(value[i], key + "[" + std::to_string(i) + "]"));
    }
    return out;
  }

 private:
  fs::path path_;
  std::string what_;
};

json hashing_json(const HashingEncoderConfig& c) {
  return {{"dim", c.dim},
          {"seed", c.seed},
          {"cjk_n", {c.cjk_min_n, c.cjk_max_n}},
          {"word_n", {c.word_min_n, c.word_max_n}},
          {"char_n", {c.char_min_n, c.char_max_n}},
          {"cjk_weight", c.cjk_weight},
          {"word_weight", c.word_weight},
          {"char_weight", c.char_weight},
          {"sublinear_tf", c.sublinear_tf}};
}

HashingEncoderConfig hashing_from_json(const json& doc, const FieldReader& read) {
  read.only(doc, "hashing",
            {"dim", "seed", "cjk_n", "word_n", "char_n", "cjk_weight", "word_weight", "char_weight",
             "sublinear_tf"});
  HashingEncoderConfig c;
  c.dim = read.count(read.member(doc, "hashing", "dim"), "hashing.dim");
  c.seed = read.unsigned_integer(read.member(doc, "hashing", "seed"), "hashing.seed");
  const auto range = [&](const char* name, std::size_t& min_n, std::size_t& max_n) {
    const std::string key = std::string("hashing.") + name;
    const std::vector<std::size_t> n = read.counts(read.member(doc, "hashing", name), key);
    if (n.size() != 2) read.fail(key, "expected [min, max]");
    min_n = n[0];
    max_n = n[1];
  };
  range("cjk_n", c.cjk_min_n, c.cjk_max_n);
  range("word_n", c.word_min_n, c.word_max_n);
  range("char_n", c.char_min_n, c.char_max_n);
  c.cjk_weight = read.real(read.member(doc, "hashing", "cjk_weight"), "hashing.cjk_weight");
  c.word_weight = read.real(read.member(doc, "hashing", "word_weight"), "hashing.word_weight");
  c.char_weight = read.real(read.member(doc, "hashing", "char_weight"), "hashing.char_weight");
  c.sublinear_tf =
      read.boolean(read.member(doc, "hashing", "sublinear_tf"), "hashing.sublinear_tf");
  return c;
}

}  // namespace

ShopFiles load_shop_files(const Args& args) {
  const fs::path catalog_path(args.required("--catalog"));
  const fs::path events_path(args.required("--events"));
  ShopFiles shop;
  shop.catalog = std::make_shared<Catalog>(Catalog::load_jsonl(catalog_path));
  if (shop.catalog->empty()) {
    detail::fail(ErrorCode::invalid_argument, "--catalog '", catalog_path.string(),
                 "' holds no items");
  }
  if (const auto users = args.value("--users")) shop.users = load_users_jsonl(fs::path(*users));
  shop.events = load_events_jsonl(events_path);
  if (shop.events.empty()) {
    detail::fail(ErrorCode::invalid_argument, "--events '", events_path.string(),
                 "' holds no events");
  }
  return shop;
}

std::string item_text(const Item& item) {
  std::string text = item.title;
  for (const std::string* part : {&item.brand, &item.category, &item.description}) {
    if (!part->empty()) text += " " + *part;
  }
  return text;
}

std::string vectors_checksum(const Catalog& catalog) {
  const MatrixView<const float> v = catalog.vectors();
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): bytes of the float array
  const std::string_view bytes(reinterpret_cast<const char*>(v.data), v.size() * sizeof(float));
  return detail::to_hex(detail::checksum64(bytes));
}

std::string attach_vectors(Catalog& catalog, const VectorSource& source) {
  json recipe;
  recipe["format"] = kRecipeFormat;
  recipe["version"] = kFormatVersion;
  if (source.npy) {
    Matrix<float> vectors = load_npy_f32(*source.npy);
    if (vectors.rows() != catalog.size()) {
      detail::fail(ErrorCode::invalid_argument, "--vectors '", source.npy->string(), "' holds ",
                   vectors.rows(), " rows but the catalogue holds ", catalog.size(),
                   " items (one row per item, in catalogue order)");
    }
    catalog.set_vectors(std::move(vectors));
    recipe["source"] = "npy";
    recipe["npy"] = fs::absolute(*source.npy).lexically_normal().string();
  } else {
    const HashingEncoder encoder(source.hashing);
    std::vector<std::string> texts;
    texts.reserve(catalog.size());
    for (const Item& item : catalog.items()) texts.push_back(item_text(item));
    catalog.set_vectors(encoder.encode(texts));
    recipe["source"] = "hashing";
    recipe["text"] = "title brand category description";
    recipe["hashing"] = hashing_json(source.hashing);
  }
  recipe["items"] = catalog.size();
  recipe["dim"] = catalog.vector_dim();
  recipe["vectors_sha"] = vectors_checksum(catalog);
  return recipe.dump(2) + "\n";
}

VectorRecipe read_vector_recipe(const fs::path& path) {
  const json doc = read_json_file(path);
  const FieldReader read(path, "vectors recipe");
  read.only(
      doc, "",
      {"format", "version", "source", "npy", "text", "hashing", "items", "dim", "vectors_sha"});
  if (read.string(read.member(doc, "", "format"), "format") != kRecipeFormat) {
    read.fail("format", std::string("expected '") + kRecipeFormat + "'");
  }
  if (read.integer(read.member(doc, "", "version"), "version") != kFormatVersion) {
    read.fail("version", "unsupported version (expected 1)");
  }
  VectorRecipe recipe;
  const std::string source = read.string(read.member(doc, "", "source"), "source");
  if (source == "npy") {
    recipe.source.npy = fs::path(read.string(read.member(doc, "", "npy"), "npy"));
  } else if (source == "hashing") {
    recipe.source.hashing = hashing_from_json(read.member(doc, "", "hashing"), read);
  } else {
    read.fail("source", "expected \"npy\" or \"hashing\", got \"" + source + "\"");
  }
  recipe.items = read.count(read.member(doc, "", "items"), "items");
  recipe.dim = read.count(read.member(doc, "", "dim"), "dim");
  recipe.vectors_sha = read.string(read.member(doc, "", "vectors_sha"), "vectors_sha");
  return recipe;
}

std::optional<std::int64_t> read_training_cutoff(const fs::path& dir) {
  const fs::path path = dir / kTrainRunFile;
  if (!fs::exists(path)) return std::nullopt;
  const json doc = read_json_file(path);
  const FieldReader read(path, "training record");
  const json& until = read.member(doc, "", "until");
  if (until.is_null()) return std::numeric_limits<std::int64_t>::max();
  return read.integer(until, "until");
}

// ---------------------------------------------------------------------------
// funnel train

namespace {

constexpr OptionSpec kTrainOptions[] = {
    {"--catalog", "FILE", "catalogue, JSON Lines (required)"},
    {"--users", "FILE", "user profiles, JSON Lines (optional)"},
    {"--events", "FILE", "events, JSON Lines (required)"},
    {"--vectors", "FILE", "float32 .npy, one row per catalogue item in file order"},
    {"--hash-dim", "N", "without --vectors: HashingEncoder dimension (default 256)"},
    {"--until", "TS", "train on the events with ts < TS (default: all)"},
    {"--ranker", "deep|logistic", "which fine ranker (default deep)"},
    {"--body", "mmoe|shared_bottom", "deep: network body (default mmoe)"},
    {"--experts", "N", "deep: experts (default 4; shared_bottom: 1)"},
    {"--epochs", "N", "most training epochs (default 20 deep, 40 logistic)"},
    {"--batch", "N", "examples per step (default 512 deep, 256 logistic)"},
    {"--lr", "X", "learning rate (default 0.001 deep, 0.05 logistic)"},
    {"--optimizer", "adam|adamw", "deep: optimizer (default adam)"},
    {"--threads", "N", "deep: trainer threads (default 1)"},
    {"--seed", "N", "initialisation and shuffling seed (default 42)"},
    {"--sampled-negatives", "N", "deep: negatives per event for logs without views (default 0)"},
    {"--config", "FILE", "deep: settings as JSON (see below); the flags override it"},
    {"--out", "DIR", "model directory to write"},
    {"--export-examples", "DIR", "deep: write the examples for tools/deep_ranker/train_torch.py"},
};

constexpr CommandSpec kTrainSpec{
    "funnel train", "--catalog FILE --events FILE (--out DIR | --export-examples DIR) [options]",
    "Trains a fine ranker on a shop's catalogue, users and events and writes the model.",
    kTrainOptions,
    "Catalogue vectors come from --vectors, or from hashing each item's title, brand,\n"
    "category and description with the HashingEncoder (as examples/demo_shop does).\n"
    "--out DIR receives the ranker (deep: config.json, model.safetensors,\n"
    "features.json; logistic: logistic_ranker.json), vectors.json (how the vectors\n"
    "were made, so that `funnel eval` rebuilds them) and train.json (the cut-off).\n"
    "--config FILE is a JSON object with optional parts \"model\" (body,\n"
    "history_length, recency_bounds_s, attention_dim, experts, expert_hidden,\n"
    "tower_hidden, tasks, dropout, fusion), \"features\" (user_categorical,\n"
    "user_numeric, item_categorical, item_numeric, history_category,\n"
    "embedding_dim, min_count), \"examples\" (attribution_window_s, negative_keep,\n"
    "sampled_negatives, validation_fraction, seed) and \"train\" (optimizer,\n"
    "learning_rate, weight_decay, beta1, beta2, epsilon, batch_size, max_epochs,\n"
    "patience, seed, threads); see docs/cli.md.\n"
    "--export-examples DIR writes config.json (the untrained model config with its\n"
    "vocabularies and standardisation), train.safetensors, validation.safetensors,\n"
    "features.json and vectors.json. Without --out it trains one epoch only, to\n"
    "fix the vocabularies.\n"};

class Stopwatch {
 public:
  [[nodiscard]] double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

DeepRankerConfig::Body parse_body(std::string_view name, const FieldReader& read,
                                  const std::string& key) {
  if (name == "mmoe") return DeepRankerConfig::Body::mmoe;
  if (name == "shared_bottom") return DeepRankerConfig::Body::shared_bottom;
  read.fail(key, "expected \"mmoe\" or \"shared_bottom\", got \"" + std::string(name) + "\"");
}

FusionConfig fusion_from_json(const json& doc, const FieldReader& read, const std::string& key) {
  read.only(doc, key, {"kind", "weights", "epsilon"});
  FusionConfig fusion;
  if (doc.contains("kind")) {
    const std::string kind = read.string(doc["kind"], key + ".kind");
    if (kind != "weighted_product" && kind != "weighted_sum") {
      read.fail(key + ".kind", "expected weighted_product or weighted_sum, got \"" + kind + "\"");
    }
    fusion.kind = parse_fusion_kind(kind);
  }
  if (doc.contains("weights")) {
    const json& weights = doc["weights"];
    const std::string wkey = key + ".weights";
    fusion.weights.clear();
    if (weights.is_object()) {
      for (const auto& [name, weight] : weights.items()) {
        fusion.weights.emplace_back(name, read.real(weight, detail::cat(wkey, ".", name)));
      }
    } else if (weights.is_array()) {
      for (std::size_t i = 0; i < weights.size(); ++i) {
        const std::string ekey = wkey + "[" + std::to_string(i) + "]";
        const json& entry = weights[i];
        if (!entry.is_array() || entry.size() != 2) read.fail(ekey, "expected [name, weight]");
        fusion.weights.emplace_back(read.string(entry[0], ekey), read.real(entry[1], ekey));
      }
    } else {
      read.fail(wkey, "expected {\"name\": weight, ...} or [[name, weight], ...]");
    }
  }
  if (doc.contains("epsilon")) fusion.epsilon = read.real(doc["epsilon"], key + ".epsilon");
  return fusion;
}

void apply_model_part(const json& doc, const FieldReader& read, DeepRankerConfig& model) {
  read.only(doc, "model",
            {"body", "history_length", "recency_bounds_s", "attention_dim", "experts",
             "expert_hidden", "tower_hidden", "tasks", "dropout", "fusion"});
  if (doc.contains("body")) {
    model.body = parse_body(read.string(doc["body"], "model.body"), read, "model.body");
  }
  if (doc.contains("history_length")) {
    model.history_length = read.count(doc["history_length"], "model.history_length");
  }
  if (doc.contains("recency_bounds_s")) {
    model.recency_bounds_s = read.integers(doc["recency_bounds_s"], "model.recency_bounds_s");
  }
  if (doc.contains("attention_dim")) {
    model.attention_dim = read.count(doc["attention_dim"], "model.attention_dim");
  }
  if (doc.contains("experts")) model.experts = read.count(doc["experts"], "model.experts");
  if (doc.contains("expert_hidden")) {
    model.expert_hidden = read.counts(doc["expert_hidden"], "model.expert_hidden");
  }
  if (doc.contains("tower_hidden")) {
    model.tower_hidden = read.counts(doc["tower_hidden"], "model.tower_hidden");
  }
  if (doc.contains("tasks")) {
    const json& tasks = doc["tasks"];
    if (!tasks.is_array()) read.fail("model.tasks", "expected an array of task objects");
    model.tasks.clear();
    for (std::size_t i = 0; i < tasks.size(); ++i) {
      const std::string key = "model.tasks[" + std::to_string(i) + "]";
      const json& t = tasks[i];
      read.only(t, key, {"name", "kind", "parent", "loss_weight", "label"});
      DeepTaskConfig task;
      task.name = read.string(read.member(t, key, "name"), key + ".name");
      const std::string kind = read.string(read.member(t, key, "kind"), key + ".kind");
      if (kind != "binary" && kind != "ctcvr" && kind != "regression") {
        read.fail(key + ".kind", "expected binary, ctcvr or regression, got \"" + kind + "\"");
      }
      task.kind = parse_deep_task_kind(kind);
      if (t.contains("parent")) task.parent = read.string(t["parent"], key + ".parent");
      if (t.contains("loss_weight")) {
        task.loss_weight = read.real(t["loss_weight"], key + ".loss_weight");
      }
      task.label = read.string(read.member(t, key, "label"), key + ".label");
      model.tasks.push_back(std::move(task));
    }
  }
  if (doc.contains("dropout")) model.dropout = read.real(doc["dropout"], "model.dropout");
  if (doc.contains("fusion")) model.fusion = fusion_from_json(doc["fusion"], read, "model.fusion");
}

void apply_features_part(const json& doc, const FieldReader& read, DeepFeatureConfig& features) {
  read.only(doc, "features",
            {"user_categorical", "user_numeric", "item_categorical", "item_numeric",
             "history_category", "embedding_dim", "min_count"});
  const auto list = [&](const char* name, std::vector<std::string>& out) {
    if (doc.contains(name)) out = read.strings(doc[name], std::string("features.") + name);
  };
  list("user_categorical", features.user_categorical);
  list("user_numeric", features.user_numeric);
  list("item_categorical", features.item_categorical);
  list("item_numeric", features.item_numeric);
  if (doc.contains("history_category")) {
    features.history_category = read.string(doc["history_category"], "features.history_category");
  }
  if (doc.contains("embedding_dim")) {
    features.embedding_dim = read.count(doc["embedding_dim"], "features.embedding_dim");
  }
  if (doc.contains("min_count")) {
    features.min_count = read.count(doc["min_count"], "features.min_count");
  }
}

void apply_examples_part(const json& doc, const FieldReader& read, DeepExampleConfig& examples) {
  read.only(doc, "examples",
            {"attribution_window_s", "negative_keep", "sampled_negatives", "validation_fraction",
             "seed"});
  if (doc.contains("attribution_window_s")) {
    examples.attribution_window_s =
        read.integer(doc["attribution_window_s"], "examples.attribution_window_s");
  }
  if (doc.contains("negative_keep")) {
    examples.negative_keep = read.number(doc["negative_keep"], "examples.negative_keep");
  }
  if (doc.contains("sampled_negatives")) {
    examples.sampled_negatives = read.count(doc["sampled_negatives"], "examples.sampled_negatives");
  }
  if (doc.contains("validation_fraction")) {
    examples.validation_fraction =
        read.number(doc["validation_fraction"], "examples.validation_fraction");
  }
  if (doc.contains("seed")) examples.seed = read.unsigned_integer(doc["seed"], "examples.seed");
}

void apply_train_part(const json& doc, const FieldReader& read, DeepTrainConfig& train) {
  read.only(doc, "train",
            {"optimizer", "learning_rate", "weight_decay", "beta1", "beta2", "epsilon",
             "batch_size", "max_epochs", "patience", "seed", "threads"});
  if (doc.contains("optimizer")) {
    const std::string name = read.string(doc["optimizer"], "train.optimizer");
    if (name != "adam" && name != "adamw") {
      read.fail("train.optimizer", "expected adam or adamw, got \"" + name + "\"");
    }
    train.optimizer = parse_deep_optimizer(name);
  }
  const auto real = [&](const char* name, float& out) {
    if (doc.contains(name)) out = read.real(doc[name], std::string("train.") + name);
  };
  real("learning_rate", train.learning_rate);
  real("weight_decay", train.weight_decay);
  real("beta1", train.beta1);
  real("beta2", train.beta2);
  real("epsilon", train.epsilon);
  const auto count = [&](const char* name, std::size_t& out) {
    if (doc.contains(name)) out = read.count(doc[name], std::string("train.") + name);
  };
  count("batch_size", train.batch_size);
  count("max_epochs", train.max_epochs);
  count("patience", train.patience);
  count("threads", train.threads);
  if (doc.contains("seed")) train.seed = read.unsigned_integer(doc["seed"], "train.seed");
}

void apply_config_file(const fs::path& path, DeepFineRankerTrainConfig& config) {
  const json doc = read_json_file(path);
  const FieldReader read(path, "--config");
  read.only(doc, "", {"model", "features", "examples", "train"});
  if (doc.contains("model")) apply_model_part(doc["model"], read, config.model);
  if (doc.contains("features")) apply_features_part(doc["features"], read, config.features);
  if (doc.contains("examples")) apply_examples_part(doc["examples"], read, config.examples);
  if (doc.contains("train")) apply_train_part(doc["train"], read, config.train);
}

std::string metric(double value, const char* format = "%.4f") {
  if (std::isnan(value)) return "-";
  char text[32];
  std::snprintf(text, sizeof text, format, value);
  return text;
}

void print_deep_report(const DeepFineRanker& ranker, const DeepTrainReport& report,
                       double seconds) {
  std::printf(
      "trained %s in %.2f s: %zu train / %zu validation examples, %zu epochs (best %zu, mean "
      "validation AUC %s), %.0f examples/s\n",
      ranker.name().c_str(), seconds, report.train_examples, report.validation_examples,
      report.epochs, report.best_epoch, metric(report.best_validation_auc).c_str(),
      report.examples_per_second);
  std::printf("  %-10s %9s %8s %9s %8s\n", "task", "examples", "AUC", "log-loss", "RMSE");
  for (const DeepTaskMetrics& task : report.validation) {
    std::printf("  %-10s %9zu %8s %9s %8s\n", task.task.c_str(), task.examples,
                metric(task.auc).c_str(), metric(task.log_loss).c_str(), metric(task.rmse).c_str());
  }
}

void write_run_record(const fs::path& dir, std::string_view ranker,
                      std::optional<std::int64_t> until, std::size_t events,
                      const std::string& recipe) {
  json run;
  run["format"] = kTrainRunFormat;
  run["version"] = kFormatVersion;
  run["ranker"] = ranker;
  run["until"] = until ? json(*until) : json(nullptr);
  run["events"] = events;
  detail::write_file_atomic(dir / kTrainRunFile, run.dump(2) + "\n");
  detail::write_file_atomic(dir / kVectorsFile, recipe);
}

// The examples of a ranker's vocabularies, written for train_torch.py.
void export_examples(const DeepFineRanker& ranker, const fs::path& dir,
                     std::span<const Event> events, std::span<const UserProfile> users,
                     const DeepExampleConfig& config, const std::string& recipe) {
  fs::create_directories(dir);
  DeepRankerExamples validation;
  const DeepRankerExamples training = ranker.build_examples(events, users, config, &validation);
  training.save(dir / "train.safetensors");
  validation.save(dir / "validation.safetensors");
  detail::write_file_atomic(dir / "config.json", ranker.model().config().to_json());
  // features.json (feature names, price bands, popularity) completes a
  // PyTorch-trained model directory; only save() writes it.
  const fs::path scratch = dir / ".funnel-train-scratch";
  fs::remove_all(scratch);
  ranker.save(scratch);
  fs::rename(scratch / "features.json", dir / "features.json");
  fs::remove_all(scratch);
  detail::write_file_atomic(dir / kVectorsFile, recipe);
  std::printf(
      "exported examples to '%s': config.json, train.safetensors (%zu examples), "
      "validation.safetensors (%zu), features.json, vectors.json\n",
      dir.string().c_str(), training.candidates, validation.candidates);
}

}  // namespace

int run_train(const Invocation& invocation) {
  const Args args = Args::parse(kTrainSpec, invocation.words);
  if (args.help()) {
    print_help(std::cout, kTrainSpec);
    return kExitOk;
  }
  // Every usage check comes before the first file is read.
  (void)args.required("--catalog");
  (void)args.required("--events");
  const bool deep = args.choice("--ranker", {"deep", "logistic"}, "deep") == "deep";
  const std::optional<std::string_view> out = args.value("--out");
  const std::optional<std::string_view> export_dir = args.value("--export-examples");
  if (!out && !export_dir) args.fail("give --out DIR, --export-examples DIR or both");
  if (!deep) {
    for (const std::string_view deep_only :
         {"--body", "--experts", "--optimizer", "--threads", "--sampled-negatives", "--config",
          "--export-examples"}) {
      if (args.has(deep_only)) args.fail(std::string(deep_only) + " applies to --ranker deep only");
    }
  }
  if (args.has("--vectors") && args.has("--hash-dim")) {
    args.fail("--hash-dim applies to hashed vectors, not to --vectors");
  }
  VectorSource source;
  if (const auto npy = args.value("--vectors")) source.npy = fs::path(*npy);
  source.hashing.dim = args.number_or<std::size_t>("--hash-dim", source.hashing.dim, 1,
                                                   HashingEncoderConfig::kMaxDim);
  const std::optional<std::int64_t> until = args.number<std::int64_t>("--until");
  const std::optional<std::size_t> epochs = args.number<std::size_t>("--epochs", 1);
  const std::optional<std::size_t> batch = args.number<std::size_t>("--batch", 1);
  const std::optional<float> lr = args.number<float>("--lr", 0.0F);
  if (lr && !(*lr > 0.0F && std::isfinite(*lr))) args.fail("--lr must be a positive number");
  const std::optional<std::uint64_t> seed = args.number<std::uint64_t>("--seed");
  const std::optional<std::size_t> experts = args.number<std::size_t>("--experts", 1);
  const std::optional<std::size_t> threads = args.number<std::size_t>("--threads", 1, 1024);
  const std::optional<std::size_t> negatives = args.number<std::size_t>("--sampled-negatives");
  const std::string_view body = args.choice("--body", {"mmoe", "shared_bottom"}, "");
  if (body == "shared_bottom" && experts && *experts != 1) {
    args.fail("--body shared_bottom has one expert, not --experts " + std::to_string(*experts));
  }
  const std::string_view optimizer = args.choice("--optimizer", {"adam", "adamw"}, "");

  // The deep settings (the --config file first, so that a bad one fails fast).
  DeepFineRankerTrainConfig config;
  if (deep) {
    if (const auto file = args.value("--config")) apply_config_file(fs::path(*file), config);
    if (!body.empty()) {
      config.model.body =
          body == "mmoe" ? DeepRankerConfig::Body::mmoe : DeepRankerConfig::Body::shared_bottom;
    }
    if (experts) {
      config.model.experts = *experts;
    } else if (config.model.body == DeepRankerConfig::Body::shared_bottom) {
      config.model.experts = 1;
    }
    if (epochs) config.train.max_epochs = *epochs;
    if (batch) config.train.batch_size = *batch;
    if (lr) config.train.learning_rate = *lr;
    if (!optimizer.empty()) config.train.optimizer = parse_deep_optimizer(optimizer);
    if (threads) config.train.threads = *threads;
    if (seed) config.train.seed = *seed;
    if (negatives) config.examples.sampled_negatives = *negatives;
  }

  const Stopwatch load_clock;
  ShopFiles shop = load_shop_files(args);
  const std::size_t all_events = shop.events.size();
  if (until) {
    std::erase_if(shop.events, [&](const Event& e) { return e.ts >= *until; });
    if (shop.events.empty()) {
      detail::fail(ErrorCode::invalid_argument, "no event before --until ", *until, " among ",
                   all_events);
    }
  }
  std::printf("loaded %zu items, %zu users, %zu events in %.2f s", shop.catalog->size(),
              shop.users.size(), all_events, load_clock.seconds());
  if (until) {
    std::printf("; training on the %zu before ts %lld", shop.events.size(),
                static_cast<long long>(*until));
  }
  std::printf("\n");

  const Stopwatch vector_clock;
  const std::string recipe = attach_vectors(*shop.catalog, source);
  const std::string made_by = source.npy ? "'" + source.npy->string() + "'"
                                         : "hashing(dim=" + std::to_string(source.hashing.dim) +
                                               ") of title, brand, category, description";
  std::printf("vectors: %s, %zu x %zu in %.2f s\n", made_by.c_str(), shop.catalog->size(),
              shop.catalog->vector_dim(), vector_clock.seconds());
  const std::shared_ptr<const Catalog> catalog = shop.catalog;

  if (!deep) {
    LogisticTrainConfig logistic;
    if (epochs) logistic.max_epochs = *epochs;
    if (batch) logistic.batch_size = *batch;
    if (lr) logistic.learning_rate = *lr;
    if (seed) logistic.seed = *seed;
    std::vector<ObjectiveTrainReport> report;
    const Stopwatch train_clock;
    const std::unique_ptr<LogisticFineRanker> ranker =
        LogisticFineRanker::train(catalog, shop.events, shop.users, logistic, &report);
    std::printf("trained logistic in %.2f s:\n", train_clock.seconds());
    for (const ObjectiveTrainReport& r : report) {
      std::printf(
          "  %-6s %8zu train / %7zu validation examples, validation %s %.4f after %zu epochs\n",
          r.objective.c_str(), r.train_examples, r.validation_examples,
          r.validation_metric_name.c_str(), r.validation_metric, r.epochs);
    }
    const fs::path dir(*out);
    fs::create_directories(dir);
    ranker->save(dir / kLogisticModelFile);
    write_run_record(dir, "logistic", until, shop.events.size(), recipe);
    std::printf("saved '%s' (%s, %s, %s)\n", dir.string().c_str(), kLogisticModelFile, kVectorsFile,
                kTrainRunFile);
    return kExitOk;
  }

  std::unique_ptr<DeepFineRanker> ranker;
  if (out) {
    DeepTrainReport report;
    const Stopwatch train_clock;
    ranker = DeepFineRanker::train(catalog, shop.events, shop.users, config, &report);
    print_deep_report(*ranker, report, train_clock.seconds());
    const fs::path dir(*out);
    fs::create_directories(dir);
    ranker->save(dir);
    write_run_record(dir, "deep", until, shop.events.size(), recipe);
    std::printf("saved '%s' (config.json, model.safetensors, features.json, %s, %s)\n",
                dir.string().c_str(), kVectorsFile, kTrainRunFile);
  }
  if (export_dir) {
    if (!ranker) {
      // The vocabularies and standardisation come from train(); one epoch
      // is the least it runs.
      DeepFineRankerTrainConfig once = config;
      once.train.max_epochs = 1;
      const Stopwatch train_clock;
      ranker = DeepFineRanker::train(catalog, shop.events, shop.users, once);
      std::printf("fixed the vocabularies with one training epoch in %.2f s\n",
                  train_clock.seconds());
    }
    export_examples(*ranker, fs::path(*export_dir), shop.events, shop.users, config.examples,
                    recipe);
  }
  return kExitOk;
}

}  // namespace funnel::cli
