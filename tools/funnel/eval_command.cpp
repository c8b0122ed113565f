// SPDX-License-Identifier: Apache-2.0
// `funnel eval`: loads a model written by `funnel train` (a DeepFineRanker
// directory or a LogisticFineRanker file, told apart by their content),
// rebuilds the catalogue vectors it was trained with, and prints
// evaluate_fine_ranker()'s report on a held-out period of the event log.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "funnel/catalog.hpp"
#include "funnel/deep_fine_ranker.hpp"
#include "funnel/deep_ranker.hpp"
#include "funnel/error.hpp"
#include "funnel/fine_ranker.hpp"
#include "funnel/fine_ranker_eval.hpp"
#include "funnel/fusion.hpp"
#include "funnel/logistic_fine_ranker.hpp"
#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"

namespace funnel::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

constexpr const char* kDeepFormat = "funnel.deep_ranker";
constexpr const char* kLogisticFormat = "funnel.logistic_fine_ranker";

constexpr OptionSpec kEvalOptions[] = {
    {"--model", "PATH", "model directory (or logistic model file) from funnel train (required)"},
    {"--catalog", "FILE", "catalogue, JSON Lines (required)"},
    {"--users", "FILE", "user profiles, JSON Lines (optional)"},
    {"--events", "FILE", "events, JSON Lines (required)"},
    {"--vectors", "FILE", "float32 .npy catalogue vectors (default: the model's vectors.json)"},
    {"--hash-dim", "N", "hash the item texts with this dimension instead of vectors.json"},
    {"--from", "TS", "held-out period start (default: the 90th percentile of event times)"},
    {"--k", "N", "cut-off of NDCG and recall (default 10)"},
    {"--fusion", "NAME=W,...", "objective weights of the ranking (default: the model's)"},
    {"--fusion-kind", "KIND", "weighted_product or weighted_sum (default: the model's)"},
    {"--window", "S", "attribution window in seconds (default 3600, as in training)"},
    {"--threads", "N", "deep: threads per score() call (default 1)"},
    {"--json", "", "print the report as JSON"},
};

constexpr CommandSpec kEvalSpec{
    "funnel eval", "--model PATH --catalog FILE --events FILE [options]",
    "Evaluates a trained fine ranker on the held-out period of an event log.", kEvalOptions,
    "Impressions are the views at or after --from, scored one request per (user, ts)\n"
    "with the history before it; per objective: AUC and log-loss (ctr over all\n"
    "impressions, cvr over clicked ones, ctcvr = ctr x cvr), dwell RMSE of\n"
    "log(1 + seconds) and AUC of long vs short visits; NDCG@k and recall@k of the\n"
    "fused score against each user's held-out purchases (see\n"
    "include/funnel/fine_ranker_eval.hpp). --model is a directory holding a deep\n"
    "ranker (config.json) or logistic_ranker.json, or a logistic model file.\n"
    "Catalogue vectors are rebuilt from the model's vectors.json unless --vectors\n"
    "or --hash-dim is given.\n"};

// The "format" field of a JSON model file.
std::string json_format(const fs::path& path) {
  const std::string text = detail::read_file(path);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    detail::fail(ErrorCode::format, "--model: '", path.string(), "' is not valid JSON: ", e.what());
  }
  if (!doc.is_object() || !doc.contains("format") || !doc["format"].is_string()) {
    detail::fail(ErrorCode::format, "--model: '", path.string(),
                 "' has no string field 'format' (is it a funnel model?)");
  }
  return doc["format"].get<std::string>();
}

struct ModelLocation {
  bool deep = false;
  fs::path path;  // deep: the directory; logistic: the model file
  fs::path dir;   // where vectors.json and train.json live
};

// Tells a deep ranker directory from a logistic model by what the files say.
ModelLocation locate_model(const fs::path& model) {
  if (!fs::exists(model)) {
    detail::fail(ErrorCode::io, "--model '", model.string(), "' does not exist");
  }
  if (fs::is_directory(model)) {
    if (fs::exists(model / "config.json")) {
      const std::string format = json_format(model / "config.json");
      if (format != kDeepFormat) {
        detail::fail(ErrorCode::format, "--model: '", (model / "config.json").string(),
                     "' has format '", format, "', expected '", kDeepFormat, "'");
      }
      return {true, model, model};
    }
    if (fs::exists(model / kLogisticModelFile)) {
      return {false, model / kLogisticModelFile, model};
    }
    detail::fail(ErrorCode::io, "--model directory '", model.string(),
                 "' holds neither a deep ranker (config.json) nor ", kLogisticModelFile);
  }
  const std::string format = json_format(model);
  fs::path dir = model.parent_path();
  if (dir.empty()) dir = ".";
  if (format == kLogisticFormat) return {false, model, dir};
  if (format == kDeepFormat) return {true, dir, dir};
  detail::fail(ErrorCode::format, "--model: '", model.string(), "' has format '", format,
               "', expected '", kLogisticFormat, "' or a deep ranker directory");
}

// "ctr=1,cvr=1,dwell=0.5" -> weights.
std::vector<std::pair<std::string, float>> parse_weights(const Args& args, std::string_view text) {
  std::vector<std::pair<std::string, float>> weights;
  const auto bad = [&](std::string_view part) {
    args.fail("--fusion expects NAME=WEIGHT,... (e.g. ctr=1,cvr=1,dwell=0.5), got '" +
              std::string(part) + "' in '" + std::string(text) + "'");
  };
  std::size_t begin = 0;
  while (begin <= text.size()) {
    const std::size_t comma = std::min(text.find(',', begin), text.size());
    const std::string_view part = text.substr(begin, comma - begin);
    const std::size_t equals = part.find('=');
    if (equals == std::string_view::npos || equals == 0) bad(part);
    const std::string_view number = part.substr(equals + 1);
    float weight = 0.0F;
    const char* end = number.data() + number.size();
    const auto [ptr, ec] = std::from_chars(number.data(), end, weight);
    if (number.empty() || ec != std::errc() || ptr != end) bad(part);
    weights.emplace_back(std::string(part.substr(0, equals)), weight);
    begin = comma + 1;
  }
  return weights;
}

// The nearest-rank 90th percentile of the event timestamps.
std::int64_t percentile90(std::span<const Event> events) {
  std::vector<std::int64_t> ts;
  ts.reserve(events.size());
  for (const Event& e : events) ts.push_back(e.ts);
  const auto rank = static_cast<std::size_t>(std::ceil(0.9 * static_cast<double>(ts.size())));
  const auto nth = ts.begin() + static_cast<std::ptrdiff_t>(std::max<std::size_t>(rank, 1) - 1);
  std::nth_element(ts.begin(), nth, ts.end());
  return *nth;
}

std::string metric(double value, const char* format = "%.4f") {
  if (std::isnan(value)) return "-";
  char text[32];
  std::snprintf(text, sizeof text, format, value);
  return text;
}

json number_or_null(double value) { return std::isnan(value) ? json(nullptr) : json(value); }

std::string describe_fusion(const FusionConfig& fusion) {
  std::string text(to_string(fusion.kind));
  text += ":";
  for (const auto& [name, weight] : fusion.weights) {
    text += " " + name + " " + metric(weight, "%g");
  }
  return text;
}

}  // namespace

int run_eval(const Invocation& invocation) {
  const Args args = Args::parse(kEvalSpec, invocation.words);
  if (args.help()) {
    print_help(std::cout, kEvalSpec);
    return kExitOk;
  }
  const fs::path model_path(args.required("--model"));
  (void)args.required("--catalog");
  (void)args.required("--events");
  FineRankerEvalConfig config;
  config.k = args.number_or<std::size_t>("--k", config.k, 1);
  config.attribution_window_s =
      args.number_or<std::int64_t>("--window", config.attribution_window_s, 1);
  const std::optional<std::int64_t> from = args.number<std::int64_t>("--from");
  std::optional<std::vector<std::pair<std::string, float>>> weights;
  if (const auto text = args.value("--fusion")) weights = parse_weights(args, *text);
  const std::string_view fusion_kind =
      args.choice("--fusion-kind", {"weighted_product", "weighted_sum"}, "");
  const std::size_t threads = args.number_or<std::size_t>("--threads", 1, 1, 1024);
  const bool as_json = args.has("--json");
  if (args.has("--vectors") && args.has("--hash-dim")) {
    args.fail("give --vectors or --hash-dim, not both");
  }
  const std::optional<std::size_t> hash_dim =
      args.number<std::size_t>("--hash-dim", 1, HashingEncoderConfig::kMaxDim);

  const ModelLocation location = locate_model(model_path);
  if (!location.deep && args.has("--threads")) args.fail("--threads applies to deep models only");
  ShopFiles shop = load_shop_files(args);
  std::vector<std::string> notes;

  // The vectors the model was trained with, unless told otherwise.
  const fs::path recipe_path = location.dir / kVectorsFile;
  std::optional<VectorRecipe> recipe;
  if (fs::exists(recipe_path)) recipe = read_vector_recipe(recipe_path);
  VectorSource source;
  if (const auto npy = args.value("--vectors")) {
    source.npy = fs::path(*npy);
  } else if (hash_dim) {
    source.hashing.dim = *hash_dim;
  } else if (recipe) {
    source = recipe->source;
  } else {
    detail::fail(ErrorCode::io, "--model '", model_path.string(), "' has no ", kVectorsFile,
                 " next to it: give --vectors FILE.npy or --hash-dim N to say how the catalogue "
                 "vectors were made");
  }
  (void)attach_vectors(*shop.catalog, source);
  if (recipe &&
      (recipe->items != shop.catalog->size() || recipe->dim != shop.catalog->vector_dim() ||
       recipe->vectors_sha != vectors_checksum(*shop.catalog))) {
    notes.push_back("the catalogue vectors differ from the ones the model was trained with (" +
                    std::to_string(recipe->items) + " x " + std::to_string(recipe->dim) + ", sha " +
                    recipe->vectors_sha + ")");
  }
  const std::shared_ptr<const Catalog> catalog = shop.catalog;

  std::unique_ptr<FineRanker> ranker;
  FusionConfig fusion;
  if (location.deep) {
    DeepRankerServeOptions serve;
    serve.threads = threads;
    auto deep = DeepFineRanker::load(location.path, catalog, serve);
    fusion = deep->model().config().fusion;
    ranker = std::move(deep);
  } else {
    ranker = LogisticFineRanker::load(location.path, catalog);
  }
  if (weights) fusion.weights = *weights;
  if (!fusion_kind.empty()) fusion.kind = parse_fusion_kind(fusion_kind);
  const std::span<const std::string> objectives = ranker->objectives();
  for (const auto& [name, weight] : fusion.weights) {
    if (std::find(objectives.begin(), objectives.end(), name) != objectives.end()) continue;
    std::string message = "--fusion names '" + name + "', which the model lacks (its objectives:";
    for (const std::string& o : objectives) message.append(" ").append(o);
    args.fail(message + ")");
  }
  try {
    fusion.validate();
  } catch (const Error& e) {
    args.fail(std::string("--fusion: ") + e.what());
  }
  config.fusion = fusion;

  config.from_ts = from ? *from : percentile90(shop.events);
  const std::string from_source =
      from ? "--from" : "the 90th percentile of event timestamps; --from to change";
  if (const std::optional<std::int64_t> cutoff = read_training_cutoff(location.dir)) {
    if (config.from_ts < *cutoff) {
      notes.push_back(
          *cutoff == std::numeric_limits<std::int64_t>::max()
              ? "the model was trained on all events, the held-out period included (train "
                "with --until)"
              : "the model was trained on events before ts " + std::to_string(*cutoff) +
                    ", after the held-out period begins");
    }
  }

  const FineRankerEvalReport report =
      evaluate_fine_ranker(*ranker, *catalog, shop.events, shop.users, config);

  if (as_json) {
    json doc;
    doc["model"] = model_path.string();
    doc["ranker"] = ranker->name();
    doc["from_ts"] = config.from_ts;
    doc["from_ts_source"] = from ? "--from" : "p90";
    doc["k"] = config.k;
    doc["impressions"] = report.impressions;
    doc["requests"] = report.requests;
    doc["skipped_events"] = report.skipped_events;
    json list = json::array();
    for (const ObjectiveEval& o : report.objectives) {
      json entry;
      entry["objective"] = o.objective;
      entry["examples"] = o.examples;
      entry["positive_rate"] = number_or_null(o.positive_rate);
      entry["auc"] = number_or_null(o.auc);
      entry["log_loss"] = number_or_null(o.log_loss);
      entry["rmse"] = number_or_null(o.rmse);
      list.push_back(std::move(entry));
    }
    doc["objectives"] = std::move(list);
    doc["ranking_users"] = report.ranking_users;
    doc["ndcg"] = number_or_null(report.ndcg);
    doc["recall"] = number_or_null(report.recall);
    json weights_doc = json::array();
    for (const auto& [name, weight] : fusion.weights) {
      weights_doc.push_back(json::array({name, weight}));
    }
    doc["fusion"] = {{"kind", to_string(fusion.kind)}, {"weights", std::move(weights_doc)}};
    doc["score_ms_per_request"] = report.score_ms_per_request;
    doc["notes"] = notes;
    std::cout << doc.dump(2) << '\n';
    return kExitOk;
  }

  std::printf("evaluated %s from '%s'\n", ranker->name().c_str(), model_path.string().c_str());
  std::printf("  held-out     ts >= %lld (%s)\n", static_cast<long long>(config.from_ts),
              from_source.c_str());
  std::printf("  impressions  %zu in %zu requests", report.impressions, report.requests);
  if (report.skipped_events > 0) {
    std::printf("; %zu events of items not in the catalogue skipped", report.skipped_events);
  }
  std::printf("\n  %-10s %9s %9s %8s %9s %8s\n", "objective", "examples", "pos.rate", "AUC",
              "log-loss", "RMSE");
  for (const ObjectiveEval& o : report.objectives) {
    std::printf("  %-10s %9zu %9s %8s %9s %8s\n", o.objective.c_str(), o.examples,
                metric(o.positive_rate).c_str(), metric(o.auc).c_str(), metric(o.log_loss).c_str(),
                metric(o.rmse).c_str());
  }
  std::printf("  NDCG@%zu      %s, recall@%zu %s over %zu users with a held-out purchase (%s)\n",
              config.k, metric(report.ndcg).c_str(), config.k, metric(report.recall).c_str(),
              report.ranking_users, describe_fusion(fusion).c_str());
  std::printf("  score time   %.3f ms per request\n", report.score_ms_per_request);
  for (const std::string& note : notes) std::printf("note: %s\n", note.c_str());
  return kExitOk;
}

}  // namespace funnel::cli
