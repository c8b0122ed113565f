// SPDX-License-Identifier: Apache-2.0
// DeepRankerConfig, parameter shapes, DeepRankerBatch validation, the
// DeepRankerExamples file, and DeepRankerModel (files, forward against an
// independent double-precision reference, bf16, concurrency).
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/deep_ranker.hpp"
#include "funnel/error.hpp"
#include "funnel/safetensors.hpp"
#include "test_util.hpp"

using funnel::DeepCategoricalFeature;
using funnel::DeepNumericFeature;
using funnel::DeepRankerBatch;
using funnel::DeepRankerConfig;
using funnel::DeepRankerExamples;
using funnel::DeepTaskConfig;
using funnel::DeepTaskKind;
using funnel::Error;
using funnel::ErrorCode;
using funnel::TensorDType;
using funnel::TensorToWrite;
using funnel::testing::TempDir;

namespace {

// A small config whose widths are easy to check by hand:
// U = 2 (gender) + 1 (age) = 3; C = 4 (vector) + 3 (category) + 2 (brand) +
// 1 (price) = 10; Hd = 4 + 3 = 7; X = 3 + 10 + 3 (attention) = 16.
DeepRankerConfig small_config() {
  DeepRankerConfig c;
  c.item_vector_dim = 4;
  c.user_categorical = {{"gender", {"f", "m"}, 2}};
  c.user_numeric = {{"age", 30.0F, 10.0F}};
  c.item_categorical = {{"category", {"a", "b", "c"}, 3}, {"brand", {"x"}, 2}};
  c.item_numeric = {{"price", 10.0F, 5.0F}};
  c.history_category_feature = 0;
  c.history_length = 4;
  c.recency_bounds_s = {3600, 86400};
  c.attention_dim = 3;
  c.experts = 2;
  c.expert_hidden = {5, 4};
  c.tower_hidden = {3};
  return c;  // default tasks: ctr (binary), cvr (ctcvr of ctr), dwell (regression)
}

// Returns the message of the Error `f` throws, checking its code.
template <class F>
std::string error_of(F&& f, ErrorCode code) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(e.code() == code);
    return e.what();
  }
  FAIL("no funnel::Error was thrown");
  return {};
}

std::string validate_error(const DeepRankerConfig& c) {
  return error_of([&] { c.validate(); }, ErrorCode::invalid_argument);
}

// A valid batch for small_config(): 3 users (the second has no history),
// 5 candidates, 5 history events.
DeepRankerExamples small_examples() {
  DeepRankerExamples ex;
  ex.users = 3;
  ex.user_categorical = {1, 0, 2};
  ex.user_numeric = {25.0F, 40.0F, 31.5F};
  ex.history_offsets = {0, 3, 3, 5};
  for (int i = 0; i < 5 * 4; ++i)
    ex.history_vectors.push_back(0.1F * static_cast<float>(i % 7) - 0.3F);
  ex.history_category = {1, 3, 0, 2, 2};
  ex.history_type = {0, 1, 3, 2, 0};
  ex.history_recency = {0, 2, 1, 0, 2};
  ex.candidates = 5;
  ex.candidate_user = {0, 0, 1, 2, 2};
  for (int i = 0; i < 5 * 4; ++i) {
    ex.candidate_vectors.push_back(0.05F * static_cast<float>(i % 9) - 0.2F);
  }
  ex.candidate_categorical = {1, 1, 0, 0, 3, 1, 2, 0, 3, 1};
  ex.candidate_numeric = {12.0F, 3.0F, 0.0F, 99.0F, 10.0F};
  const float nan = std::numeric_limits<float>::quiet_NaN();
  ex.labels = {1, 0, 0.7F, 0, nan, nan, 1, 1, 1.2F, 0, 0, nan, 1, 0, 0.3F};
  ex.ts = {100, 200, 300, 400, 500};
  return ex;
}

std::string batch_error(const DeepRankerBatch& b, const DeepRankerConfig& c) {
  return error_of([&] { b.validate(c); }, ErrorCode::invalid_argument);
}

}  // namespace

// ---------------------------------------------------------------------------
// Config

TEST_CASE("DeepRankerConfig: widths of a hand-written config", "[deep_ranker]") {
  const DeepRankerConfig c = small_config();
  REQUIRE_NOTHROW(c.validate());
  CHECK(c.user_width() == 3);
  CHECK(c.candidate_width() == 10);
  CHECK(c.token_width() == 7);
  CHECK(c.input_width() == 16);
  DeepRankerConfig defaults;
  defaults.item_vector_dim = 64;
  defaults.item_categorical = {{"category", {"a"}, 16}};
  REQUIRE_NOTHROW(defaults.validate());
}

TEST_CASE("DeepRankerConfig: each validation error names its field", "[deep_ranker]") {
  using Catch::Matchers::Contains;
  auto with = [](auto change) {
    DeepRankerConfig c = small_config();
    change(c);
    return validate_error(c);
  };
  CHECK_THAT(with([](DeepRankerConfig& c) { c.item_vector_dim = 0; }), Contains("item_vector_dim"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.user_categorical[0].dim = 0; }),
             Contains("user_categorical[0].dim"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.user_categorical[0].name.clear(); }),
             Contains("user_categorical[0].name"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.user_numeric[0].name = "gender"; }),
             Contains("user_numeric[0].name") && Contains("twice"));
  CHECK_THAT(with([](DeepRankerConfig& c) {
               c.item_categorical[1].vocab = {"x", "x"};
             }),
             Contains("item_categorical[1].vocab[1]"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.item_numeric[0].std = 0.0F; }),
             Contains("item_numeric[0].std"));
  CHECK_THAT(with([](DeepRankerConfig& c) {
               c.user_numeric[0].mean = std::numeric_limits<float>::infinity();
             }),
             Contains("user_numeric[0].mean"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.item_categorical.clear(); }),
             Contains("item_categorical"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.history_category_feature = 2; }),
             Contains("history_category_feature"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.history_length = 0; }), Contains("history_length"));
  CHECK_THAT(with([](DeepRankerConfig& c) {
               c.recency_bounds_s = {3600, 3600};
             }),
             Contains("recency_bounds_s[1]"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.recency_bounds_s = {0}; }),
             Contains("recency_bounds_s[0]"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.attention_dim = 0; }), Contains("attention_dim"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.experts = 0; }), Contains("experts"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.body = DeepRankerConfig::Body::shared_bottom; }),
             Contains("experts") && Contains("shared_bottom"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.expert_hidden.clear(); }), Contains("expert_hidden"));
  CHECK_THAT(with([](DeepRankerConfig& c) {
               c.expert_hidden = {5, 0};
             }),
             Contains("expert_hidden[1]"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.tower_hidden = {0}; }), Contains("tower_hidden[0]"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.tasks.clear(); }), Contains("tasks"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.tasks[1].name = "ctr"; }), Contains("tasks[1].name"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.tasks[1].parent = "dwell"; }),
             Contains("tasks[1].parent"));
  CHECK_THAT(with([](DeepRankerConfig& c) { std::swap(c.tasks[0], c.tasks[1]); }),
             Contains("tasks[0].parent"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.tasks[0].parent = "cvr"; }),
             Contains("tasks[0].parent"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.tasks[2].loss_weight = -1.0F; }),
             Contains("tasks[2].loss_weight"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.tasks[2].label = "click"; }),
             Contains("tasks[2].label"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.tasks[0].label = "dwell"; }),
             Contains("tasks[0].label"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.dropout = 1.0F; }), Contains("dropout"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.fusion.epsilon = 0.0F; }),
             Contains("fusion") && Contains("epsilon"));
  CHECK_THAT(with([](DeepRankerConfig& c) { c.fusion.weights.emplace_back("gmv", 1.0F); }),
             Contains("fusion.weights") && Contains("gmv"));
}

TEST_CASE("DeepRankerConfig: JSON round trip, key order and names", "[deep_ranker]") {
  DeepRankerConfig c = small_config();
  c.body = DeepRankerConfig::Body::mmoe;
  c.user_numeric[0].mean = 1.2F;
  c.dropout = 0.25F;
  c.tasks[2].loss_weight = 0.3F;
  c.fusion.kind = funnel::FusionConfig::Kind::weighted_sum;
  c.fusion.weights = {{"ctr", 2.0F}, {"dwell", 0.1F}};
  const std::string text = c.to_json();
  const DeepRankerConfig back = DeepRankerConfig::from_json(text, "test");
  CHECK(back.to_json() == text);
  CHECK(back.item_vector_dim == 4);
  CHECK(back.user_categorical[0].vocab == std::vector<std::string>{"f", "m"});
  CHECK(back.user_numeric[0].mean == 1.2F);
  CHECK(back.item_categorical[1].name == "brand");
  CHECK(back.recency_bounds_s == std::vector<std::int64_t>{3600, 86400});
  CHECK(back.tasks[1].kind == DeepTaskKind::ctcvr);
  CHECK(back.tasks[1].parent == "ctr");
  CHECK(back.tasks[2].loss_weight == 0.3F);
  CHECK(back.dropout == 0.25F);
  CHECK(back.fusion.kind == funnel::FusionConfig::Kind::weighted_sum);
  CHECK(back.fusion.weights == c.fusion.weights);
  // Floats are written with their shortest decimal form.
  CHECK(text.find("\"mean\": 1.2,") != std::string::npos);
  // Keys in the documented order.
  const char* keys[] = {"\"format\"",
                        "\"version\"",
                        "\"body\"",
                        "\"item_vector_dim\"",
                        "\"user_categorical\"",
                        "\"user_numeric\"",
                        "\"item_categorical\"",
                        "\"item_numeric\"",
                        "\"history_category_feature\"",
                        "\"history_length\"",
                        "\"recency_bounds_s\"",
                        "\"attention_dim\"",
                        "\"experts\"",
                        "\"expert_hidden\"",
                        "\"tower_hidden\"",
                        "\"tasks\"",
                        "\"dropout\"",
                        "\"fusion\""};
  std::size_t last = 0;
  for (const char* key : keys) {
    const std::size_t at = text.find(key);
    REQUIRE(at != std::string::npos);
    CHECK(at >= last);
    last = at;
  }
  CHECK(text.find("weights_sha") == std::string::npos);

  CHECK(funnel::to_string(DeepTaskKind::ctcvr) == "ctcvr");
  CHECK(funnel::parse_deep_task_kind("regression") == DeepTaskKind::regression);
  CHECK_THROWS_AS(funnel::parse_deep_task_kind("poisson"), Error);
  CHECK(funnel::to_string(DeepRankerConfig::Body::shared_bottom) == "shared_bottom");
}

TEST_CASE("DeepRankerConfig::from_json: format errors name the source and field", "[deep_ranker]") {
  using Catch::Matchers::Contains;
  const std::string good = small_config().to_json();
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const std::size_t at = s.find(from);
    REQUIRE(at != std::string::npos);
    s.replace(at, from.size(), to);
    return s;
  };
  auto parse_error = [](const std::string& text) {
    return error_of([&] { (void)DeepRankerConfig::from_json(text, "cfg.json"); },
                    ErrorCode::format);
  };
  CHECK_THAT(parse_error("{"), Contains("cfg.json") && Contains("malformed"));
  CHECK_THAT(parse_error("[]"), Contains("cfg.json"));
  CHECK_THAT(parse_error(replace("\"format\": \"funnel.deep_ranker\"", "\"format\": \"x\"")),
             Contains("format"));
  CHECK_THAT(parse_error(replace("\"version\": 1", "\"version\": 2")), Contains("version"));
  CHECK_THAT(parse_error(replace("\"body\": \"mmoe\"", "\"body\": \"moe\"")), Contains("body"));
  CHECK_THAT(parse_error(replace("\"item_vector_dim\": 4", "\"item_vector_dim\": -4")),
             Contains("item_vector_dim"));
  CHECK_THAT(parse_error(replace("\"item_vector_dim\": 4", "\"item_vector_dim\": 4.5")),
             Contains("item_vector_dim"));
  CHECK_THAT(parse_error(replace("\"item_vector_dim\": 4", "\"item_vector_dim\": 0")),
             Contains("cfg.json") && Contains("item_vector_dim"));
  CHECK_THAT(parse_error(replace("\"item_vector_dim\": 4,", "")),
             Contains("item_vector_dim") && Contains("missing"));
  CHECK_THAT(parse_error(replace("\"format\"", "\"colour\": 1, \"format\"")),
             Contains("colour") && Contains("unknown key"));
  CHECK_THAT(parse_error(replace("\"dim\": 2", "\"dim\": 2, \"hash\": true")),
             Contains("user_categorical[0].hash"));
  CHECK_THAT(parse_error(replace("\"kind\": \"ctcvr\"", "\"kind\": \"poisson\"")),
             Contains("tasks[1].kind") && Contains("poisson"));
  CHECK_THAT(parse_error(replace("\"std\": 10.0", "\"std\": \"ten\"")),
             Contains("user_numeric[0].std"));
  CHECK_THAT(parse_error(replace("\"epsilon\": 1e-06", "\"epsilon\": 1e-06, \"bias\": 0")),
             Contains("fusion.bias"));
  CHECK_THAT(parse_error(replace("[\n        \"ctr\",", "[\n        7,")),
             Contains("fusion.weights[0][0]"));
  CHECK_THAT(parse_error(replace("\"version\": 1", "\"version\": 1, \"weights_sha\": \"xyz\"")),
             Contains("weights_sha"));
  CHECK_NOTHROW(DeepRankerConfig::from_json(
      replace("\"version\": 1", "\"version\": 1, \"weights_sha\": \"0123456789abcdef\"")));
}

TEST_CASE("deep_ranker_parameter_shapes: canonical names and shapes of a small config",
          "[deep_ranker]") {
  using Shape = std::vector<std::size_t>;
  const std::vector<std::pair<std::string, Shape>> expected = {
      {"user.gender.embedding", {3, 2}},
      {"item.category.embedding", {4, 3}},
      {"item.brand.embedding", {2, 2}},
      {"history.type.embedding", {4, 3}},
      {"history.recency.embedding", {3, 3}},
      {"attention.query.weight", {3, 7}},
      {"attention.query.bias", {3}},
      {"attention.key.weight", {3, 7}},
      {"attention.key.bias", {3}},
      {"attention.value.weight", {3, 7}},
      {"attention.value.bias", {3}},
      {"expert.0.0.weight", {5, 16}},
      {"expert.0.0.bias", {5}},
      {"expert.0.1.weight", {4, 5}},
      {"expert.0.1.bias", {4}},
      {"expert.1.0.weight", {5, 16}},
      {"expert.1.0.bias", {5}},
      {"expert.1.1.weight", {4, 5}},
      {"expert.1.1.bias", {4}},
      {"gate.ctr.weight", {2, 16}},
      {"gate.ctr.bias", {2}},
      {"gate.cvr.weight", {2, 16}},
      {"gate.cvr.bias", {2}},
      {"gate.dwell.weight", {2, 16}},
      {"gate.dwell.bias", {2}},
      {"tower.ctr.0.weight", {3, 4}},
      {"tower.ctr.0.bias", {3}},
      {"tower.ctr.1.weight", {1, 3}},
      {"tower.ctr.1.bias", {1}},
      {"tower.cvr.0.weight", {3, 4}},
      {"tower.cvr.0.bias", {3}},
      {"tower.cvr.1.weight", {1, 3}},
      {"tower.cvr.1.bias", {1}},
      {"tower.dwell.0.weight", {3, 4}},
      {"tower.dwell.0.bias", {3}},
      {"tower.dwell.1.weight", {1, 3}},
      {"tower.dwell.1.bias", {1}},
  };
  const auto shapes = funnel::deep_ranker_parameter_shapes(small_config());
  REQUIRE(shapes.size() == expected.size());
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    INFO("parameter " << i);
    CHECK(shapes[i].name == expected[i].first);
    CHECK(shapes[i].shape == expected[i].second);
    CHECK(shapes[i].values.empty());
  }

  DeepRankerConfig sb = small_config();
  sb.body = DeepRankerConfig::Body::shared_bottom;
  sb.experts = 1;
  sb.tower_hidden.clear();
  const auto sb_shapes = funnel::deep_ranker_parameter_shapes(sb);
  for (const auto& p : sb_shapes) CHECK(p.name.rfind("gate.", 0) == std::string::npos);
  CHECK(sb_shapes.back().name == "tower.dwell.0.bias");
  CHECK(sb_shapes[sb_shapes.size() - 2].shape == Shape{1, 4});
  CHECK(sb_shapes.size() == 11 + 4 + 3 * 2);
}

// ---------------------------------------------------------------------------
// Batch and examples

TEST_CASE("DeepRankerBatch::validate: errors name the array, row and value", "[deep_ranker]") {
  using Catch::Matchers::Contains;
  const DeepRankerConfig c = small_config();
  const DeepRankerExamples good = small_examples();
  REQUIRE_NOTHROW(good.batch().validate(c));
  auto with = [&](auto change) {
    DeepRankerExamples ex = good;
    change(ex);
    return batch_error(ex.batch(), c);
  };
  CHECK_THAT(with([](DeepRankerExamples& e) { e.user_categorical[2] = 3; }),
             Contains("user_categorical[row 2, feature 'gender'] = 3"));
  CHECK_THAT(with([](DeepRankerExamples& e) { e.candidate_categorical[3] = 2; }),
             Contains("candidate_categorical[row 1, feature 'brand'] = 2"));
  CHECK_THAT(with([](DeepRankerExamples& e) { e.candidate_categorical[0] = -1; }),
             Contains("candidate_categorical[row 0, feature 'category'] = -1"));
  CHECK_THAT(with([](DeepRankerExamples& e) { e.history_category[4] = 4; }),
             Contains("history_category[4] = 4"));
  CHECK_THAT(with([](DeepRankerExamples& e) { e.history_type[1] = 4; }),
             Contains("history_type[1] = 4"));
  CHECK_THAT(with([](DeepRankerExamples& e) { e.history_recency[0] = 3; }),
             Contains("history_recency[0] = 3"));
  CHECK_THAT(with([](DeepRankerExamples& e) {
               e.history_offsets = {0, 3, 2, 5};
             }),
             Contains("history_offsets[2] = 2"));
  CHECK_THAT(with([](DeepRankerExamples& e) {
               e.history_offsets = {1, 3, 3, 5};
             }),
             Contains("history_offsets[0]"));
  CHECK_THAT(with([](DeepRankerExamples& e) {
               e.history_offsets = {0, 3, 3, 4};
             }),
             Contains("history_offsets[3]"));
  CHECK_THAT(with([](DeepRankerExamples& e) { e.history_offsets.pop_back(); }),
             Contains("history_offsets"));
  CHECK_THAT(with([](DeepRankerExamples& e) {
               e.history_offsets = {0, 5, 5, 5};  // 5 events for user 0, history_length 4
             }),
             Contains("user row 0") && Contains("history_length 4"));
  CHECK_THAT(with([](DeepRankerExamples& e) {
               e.candidate_vectors[6] = std::numeric_limits<float>::quiet_NaN();
             }),
             Contains("candidate_vectors[row 1, column 2]"));
  CHECK_THAT(with([](DeepRankerExamples& e) {
               e.history_vectors[19] = std::numeric_limits<float>::infinity();
             }),
             Contains("history_vectors[row 4, column 3]"));
  CHECK_THAT(with([](DeepRankerExamples& e) {
               e.user_numeric[1] = std::numeric_limits<float>::quiet_NaN();
             }),
             Contains("user_numeric[row 1"));
  CHECK_THAT(with([](DeepRankerExamples& e) {
               e.candidate_numeric[4] = std::numeric_limits<float>::infinity();
             }),
             Contains("candidate_numeric[row 4"));
  CHECK_THAT(with([](DeepRankerExamples& e) { e.candidate_user[3] = 3; }),
             Contains("candidate_user[3] = 3"));
  CHECK_THAT(with([](DeepRankerExamples& e) { e.candidate_user[3] = -1; }),
             Contains("candidate_user[3] = -1"));
  CHECK_THAT(with([](DeepRankerExamples& e) { e.candidate_vectors.pop_back(); }),
             Contains("candidate_vectors"));
  CHECK_THAT(with([](DeepRankerExamples& e) { e.history_type.pop_back(); }),
             Contains("history_type"));
  CHECK_THAT(with([](DeepRankerExamples& e) { e.candidates = 6; }), Contains("candidate_user"));
  // An empty batch is valid.
  DeepRankerExamples empty;
  CHECK_NOTHROW(empty.batch().validate(c));
}

TEST_CASE("DeepRankerExamples: save/load round trip and damaged files", "[deep_ranker]") {
  using Catch::Matchers::Contains;
  const DeepRankerConfig c = small_config();
  const DeepRankerExamples ex = small_examples();
  TempDir dir;
  const auto path = dir / "examples.safetensors";
  ex.save(path);
  const DeepRankerExamples back = DeepRankerExamples::load(path, c);
  CHECK(back.users == 3);
  CHECK(back.candidates == 5);
  CHECK(back.user_categorical == ex.user_categorical);
  CHECK(back.user_numeric == ex.user_numeric);
  CHECK(back.history_offsets == ex.history_offsets);
  CHECK(back.history_vectors == ex.history_vectors);
  CHECK(back.history_category == ex.history_category);
  CHECK(back.history_type == ex.history_type);
  CHECK(back.history_recency == ex.history_recency);
  CHECK(back.candidate_user == ex.candidate_user);
  CHECK(back.candidate_vectors == ex.candidate_vectors);
  CHECK(back.candidate_categorical == ex.candidate_categorical);
  CHECK(back.candidate_numeric == ex.candidate_numeric);
  CHECK(back.ts == ex.ts);
  REQUIRE(back.labels.size() == ex.labels.size());
  for (std::size_t i = 0; i < ex.labels.size(); ++i) {
    CHECK((std::isnan(ex.labels[i]) ? std::isnan(back.labels[i]) : back.labels[i] == ex.labels[i]));
  }
  {
    // Tensor names are the member names; dtypes I32 / I64 / F32.
    const auto file = funnel::SafetensorsFile::open(path);
    CHECK(file.at("history_offsets").dtype == TensorDType::i64);
    CHECK(file.at("history_offsets").shape == std::vector<std::size_t>{4});
    CHECK(file.at("candidate_categorical").dtype == TensorDType::i32);
    CHECK(file.at("candidate_categorical").shape == std::vector<std::size_t>{5, 2});
    CHECK(file.at("labels").shape == std::vector<std::size_t>{5, 3});
  }

  // Zero-width matrices: a config without user features.
  {
    DeepRankerConfig bare = c;
    bare.user_categorical.clear();
    bare.user_numeric.clear();
    DeepRankerExamples e2 = ex;
    e2.user_categorical.clear();
    e2.user_numeric.clear();
    const auto p2 = dir / "bare.safetensors";
    e2.save(p2);
    const auto file = funnel::SafetensorsFile::open(p2);
    CHECK(file.at("user_numeric").shape == std::vector<std::size_t>{3, 0});
    CHECK(DeepRankerExamples::load(p2, bare).users == 3);
    CHECK_THAT(error_of([&] { (void)DeepRankerExamples::load(p2, c); }, ErrorCode::format),
               Contains("user_categorical") && Contains("[3, 0]"));
  }

  // Damaged files: rewrite one tensor of the saved file.
  auto rewrite = [&](const std::string& name, TensorDType dtype, std::vector<std::size_t> shape,
                     std::vector<std::byte> data, bool drop = false) {
    const auto file = funnel::SafetensorsFile::open(path);
    std::vector<std::vector<std::byte>> keep;
    std::vector<TensorToWrite> tensors;
    for (const auto& t : file.tensors()) {
      if (t.name == name) continue;
      const auto b = file.bytes(t);
      keep.emplace_back(b.begin(), b.end());
      tensors.push_back({t.name, t.dtype, t.shape, {}});
    }
    for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].data = keep[i];
    if (!drop) tensors.push_back({name, dtype, std::move(shape), data});
    const auto out = dir / "damaged.safetensors";
    funnel::write_safetensors(out, tensors);
    return error_of([&] { (void)DeepRankerExamples::load(out, c); }, ErrorCode::format);
  };
  auto raw = [](const auto& values) {
    const auto b = std::as_bytes(std::span(values));
    return std::vector<std::byte>(b.begin(), b.end());
  };
  CHECK_THAT(rewrite("ts", TensorDType::i64, {}, {}, true), Contains("ts"));
  CHECK_THAT(rewrite("extra", TensorDType::f32, {1}, raw(std::vector<float>{1.0F})),
             Contains("extra"));
  CHECK_THAT(rewrite("ts", TensorDType::i32, {5}, raw(std::vector<std::int32_t>(5, 0))),
             Contains("ts") && Contains("I32"));
  CHECK_THAT(rewrite("labels", TensorDType::f32, {5, 2}, raw(std::vector<float>(10, 0.0F))),
             Contains("labels") && Contains("[5, 3]"));
  {
    std::vector<float> labels(15, 0.0F);
    labels[4] = std::numeric_limits<float>::infinity();
    CHECK_THAT(rewrite("labels", TensorDType::f32, {5, 3}, raw(labels)),
               Contains("labels") && Contains("row 1") && Contains("cvr"));
  }
  {
    std::vector<std::int32_t> users = {0, 0, 1, 2, 7};
    CHECK_THAT(rewrite("candidate_user", TensorDType::i32, {5}, raw(users)),
               Contains("damaged.safetensors") && Contains("candidate_user[4] = 7"));
  }
  {
    std::vector<float> vectors(20, 0.0F);
    vectors[0] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THAT(rewrite("candidate_vectors", TensorDType::f32, {5, 4}, raw(vectors)),
               Contains("candidate_vectors[row 0, column 0]"));
  }
  // Save rejects inconsistent arrays.
  DeepRankerExamples bad = ex;
  bad.ts.pop_back();
  CHECK_THROWS_AS(bad.save(dir / "bad.safetensors"), Error);
}
