// SPDX-License-Identifier: Apache-2.0
// DeepRankerConfig, parameter shapes, DeepRankerBatch validation,
// DeepRankerExamples (gather, the file), and DeepRankerModel (files, forward against an
// independent double-precision reference, bf16, concurrency).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/deep_ranker.hpp"
#include "funnel/error.hpp"
#include "funnel/safetensors.hpp"
#include "internal/checksum.hpp"
#include "test_util.hpp"

using funnel::DeepRankerBatch;
using funnel::DeepRankerBatchStorage;
using funnel::DeepRankerConfig;
using funnel::DeepRankerExamples;
using funnel::DeepRankerModel;
using funnel::DeepRankerParameters;
using funnel::DeepRankerServeOptions;
using funnel::DeepTaskConfig;
using funnel::DeepTaskKind;
using funnel::Error;
using funnel::ErrorCode;
using funnel::MatrixView;
using funnel::NamedTensor;
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

// An owning DeepRankerBatch: the model tests build batches directly.
struct OwnedBatch {
  std::size_t users = 0;
  std::vector<std::int32_t> user_categorical;
  std::vector<float> user_numeric;
  std::vector<std::int64_t> history_offsets{0};
  std::vector<float> history_vectors;
  std::vector<std::int32_t> history_category;
  std::vector<std::int32_t> history_type;
  std::vector<std::int32_t> history_recency;
  std::size_t candidates = 0;
  std::vector<std::int32_t> candidate_user;
  std::vector<float> candidate_vectors;
  std::vector<std::int32_t> candidate_categorical;
  std::vector<float> candidate_numeric;

  [[nodiscard]] DeepRankerBatch batch() const {
    DeepRankerBatch b;
    b.users = users;
    b.user_categorical = user_categorical;
    b.user_numeric = user_numeric;
    b.history_offsets = history_offsets;
    b.history_vectors = history_vectors;
    b.history_category = history_category;
    b.history_type = history_type;
    b.history_recency = history_recency;
    b.candidates = candidates;
    b.candidate_user = candidate_user;
    b.candidate_vectors = candidate_vectors;
    b.candidate_categorical = candidate_categorical;
    b.candidate_numeric = candidate_numeric;
    return b;
  }
};

template <class T>
std::vector<T> to_vector(std::span<const T> v) {
  return {v.begin(), v.end()};
}

// A copy of a batch's arrays.
OwnedBatch own(const DeepRankerBatch& b) {
  OwnedBatch o;
  o.users = b.users;
  o.user_categorical = to_vector(b.user_categorical);
  o.user_numeric = to_vector(b.user_numeric);
  o.history_offsets = to_vector(b.history_offsets);
  o.history_vectors = to_vector(b.history_vectors);
  o.history_category = to_vector(b.history_category);
  o.history_type = to_vector(b.history_type);
  o.history_recency = to_vector(b.history_recency);
  o.candidates = b.candidates;
  o.candidate_user = to_vector(b.candidate_user);
  o.candidate_vectors = to_vector(b.candidate_vectors);
  o.candidate_categorical = to_vector(b.candidate_categorical);
  o.candidate_numeric = to_vector(b.candidate_numeric);
  return o;
}

// A valid batch for small_config(): 3 users (the second has no history),
// 5 candidates, 5 history events.
OwnedBatch small_batch() {
  OwnedBatch ex;
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
  return ex;
}

// Valid examples for small_config(): 3 users (the second has no history),
// 5 history events and 5 candidates over a table of 4 items (items repeat;
// item 2 is in a history only).
DeepRankerExamples small_examples() {
  DeepRankerExamples ex;
  ex.items = 4;
  for (int i = 0; i < 4 * 4; ++i) {
    ex.item_vectors.push_back(0.1F * static_cast<float>(i % 7) - 0.3F +
                              0.01F * static_cast<float>(i));
  }
  ex.users = 3;
  ex.user_categorical = {1, 0, 2};
  ex.user_numeric = {25.0F, 40.0F, 31.5F};
  ex.history_offsets = {0, 3, 3, 5};
  ex.history_item = {0, 3, 0, 2, 1};
  ex.history_category = {1, 3, 0, 2, 2};
  ex.history_type = {0, 1, 3, 2, 0};
  ex.history_recency = {0, 2, 1, 0, 2};
  ex.candidates = 5;
  ex.candidate_user = {0, 0, 1, 2, 2};
  ex.candidate_item = {1, 3, 3, 0, 1};
  ex.candidate_categorical = {1, 1, 0, 0, 3, 1, 2, 0, 3, 1};
  ex.candidate_numeric = {12.0F, 3.0F, 0.0F, 99.0F, 10.0F};
  const float nan = std::numeric_limits<float>::quiet_NaN();
  ex.labels = {1, 0, 0.7F, 0, nan, nan, 1, 1, 1.2F, 0, 0, nan, 1, 0, 0.3F};
  ex.ts = {100, 200, 300, 400, 500};
  return ex;
}

// Row `row` of the examples' item table.
std::vector<float> item_row(const DeepRankerExamples& ex, std::int32_t row, std::size_t d) {
  const auto first =
      ex.item_vectors.begin() + static_cast<std::ptrdiff_t>(row) * static_cast<std::ptrdiff_t>(d);
  return {first, first + static_cast<std::ptrdiff_t>(d)};
}

// The candidates `rows` of `ex` expanded with plain loops, keeping the
// examples' own user numbering (every user, used or not): an independent
// reading of what gather() materialises, up to the order of the users.
OwnedBatch expand(const DeepRankerExamples& ex, const std::vector<std::size_t>& rows,
                  const DeepRankerConfig& c) {
  const std::size_t d = c.item_vector_dim;
  const std::size_t nic = c.item_categorical.size();
  const std::size_t nin = c.item_numeric.size();
  OwnedBatch b;
  b.users = ex.users;
  b.user_categorical = ex.user_categorical;
  b.user_numeric = ex.user_numeric;
  b.history_offsets = ex.history_offsets;
  for (const std::int32_t item : ex.history_item) {
    const auto v = item_row(ex, item, d);
    b.history_vectors.insert(b.history_vectors.end(), v.begin(), v.end());
  }
  b.history_category = ex.history_category;
  b.history_type = ex.history_type;
  b.history_recency = ex.history_recency;
  b.candidates = rows.size();
  for (const std::size_t r : rows) {
    b.candidate_user.push_back(ex.candidate_user[r]);
    const auto v = item_row(ex, ex.candidate_item[r], d);
    b.candidate_vectors.insert(b.candidate_vectors.end(), v.begin(), v.end());
    for (std::size_t k = 0; k < nic; ++k) {
      b.candidate_categorical.push_back(ex.candidate_categorical[r * nic + k]);
    }
    for (std::size_t k = 0; k < nin; ++k) {
      b.candidate_numeric.push_back(ex.candidate_numeric[r * nin + k]);
    }
  }
  return b;
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
  const OwnedBatch good = small_batch();
  REQUIRE_NOTHROW(good.batch().validate(c));
  auto with = [&](auto change) {
    OwnedBatch ex = good;
    change(ex);
    return batch_error(ex.batch(), c);
  };
  CHECK_THAT(with([](OwnedBatch& e) { e.user_categorical[2] = 3; }),
             Contains("user_categorical[row 2, feature 'gender'] = 3"));
  CHECK_THAT(with([](OwnedBatch& e) { e.candidate_categorical[3] = 2; }),
             Contains("candidate_categorical[row 1, feature 'brand'] = 2"));
  CHECK_THAT(with([](OwnedBatch& e) { e.candidate_categorical[0] = -1; }),
             Contains("candidate_categorical[row 0, feature 'category'] = -1"));
  CHECK_THAT(with([](OwnedBatch& e) { e.history_category[4] = 4; }),
             Contains("history_category[4] = 4"));
  CHECK_THAT(with([](OwnedBatch& e) { e.history_type[1] = 4; }), Contains("history_type[1] = 4"));
  CHECK_THAT(with([](OwnedBatch& e) { e.history_recency[0] = 3; }),
             Contains("history_recency[0] = 3"));
  CHECK_THAT(with([](OwnedBatch& e) {
               e.history_offsets = {0, 3, 2, 5};
             }),
             Contains("history_offsets[2] = 2"));
  CHECK_THAT(with([](OwnedBatch& e) {
               e.history_offsets = {1, 3, 3, 5};
             }),
             Contains("history_offsets[0]"));
  CHECK_THAT(with([](OwnedBatch& e) {
               e.history_offsets = {0, 3, 3, 4};
             }),
             Contains("history_offsets[3]"));
  CHECK_THAT(with([](OwnedBatch& e) { e.history_offsets.pop_back(); }),
             Contains("history_offsets"));
  CHECK_THAT(with([](OwnedBatch& e) {
               e.history_offsets = {0, 5, 5, 5};  // 5 events for user 0, history_length 4
             }),
             Contains("user row 0") && Contains("history_length 4"));
  CHECK_THAT(
      with([](OwnedBatch& e) { e.candidate_vectors[6] = std::numeric_limits<float>::quiet_NaN(); }),
      Contains("candidate_vectors[row 1, column 2]"));
  CHECK_THAT(
      with([](OwnedBatch& e) { e.history_vectors[19] = std::numeric_limits<float>::infinity(); }),
      Contains("history_vectors[row 4, column 3]"));
  CHECK_THAT(
      with([](OwnedBatch& e) { e.user_numeric[1] = std::numeric_limits<float>::quiet_NaN(); }),
      Contains("user_numeric[row 1"));
  CHECK_THAT(
      with([](OwnedBatch& e) { e.candidate_numeric[4] = std::numeric_limits<float>::infinity(); }),
      Contains("candidate_numeric[row 4"));
  CHECK_THAT(with([](OwnedBatch& e) { e.candidate_user[3] = 3; }),
             Contains("candidate_user[3] = 3"));
  CHECK_THAT(with([](OwnedBatch& e) { e.candidate_user[3] = -1; }),
             Contains("candidate_user[3] = -1"));
  CHECK_THAT(with([](OwnedBatch& e) { e.candidate_vectors.pop_back(); }),
             Contains("candidate_vectors"));
  CHECK_THAT(with([](OwnedBatch& e) { e.history_type.pop_back(); }), Contains("history_type"));
  CHECK_THAT(with([](OwnedBatch& e) { e.candidates = 6; }), Contains("candidate_user"));
  // An empty batch is valid.
  OwnedBatch empty;
  CHECK_NOTHROW(empty.batch().validate(c));
}

TEST_CASE("DeepRankerExamples::gather: users once each in order of first use", "[deep_ranker]") {
  const DeepRankerConfig c = small_config();
  const DeepRankerExamples ex = small_examples();
  DeepRankerBatchStorage storage;
  // Candidates 4 and 3 belong to user 2, 0 and 1 to user 0: user 2 is
  // used first, so it becomes batch user 0; user 1 is not used at all.
  const std::vector<std::size_t> rows = {4, 0, 3, 1};
  const DeepRankerBatch b = ex.gather(rows, storage);
  REQUIRE_NOTHROW(b.validate(c));
  CHECK(b.users == 2);
  CHECK(b.candidates == 4);
  CHECK(to_vector(b.candidate_user) == std::vector<std::int32_t>{0, 1, 0, 1});
  CHECK(to_vector(b.user_categorical) == std::vector<std::int32_t>{2, 1});
  CHECK(to_vector(b.user_numeric) == std::vector<float>{31.5F, 25.0F});
  CHECK(to_vector(b.history_offsets) == std::vector<std::int64_t>{0, 2, 5});
  CHECK(to_vector(b.history_category) == std::vector<std::int32_t>{2, 2, 1, 3, 0});
  CHECK(to_vector(b.history_type) == std::vector<std::int32_t>{2, 0, 0, 1, 3});
  CHECK(to_vector(b.history_recency) == std::vector<std::int32_t>{0, 2, 0, 2, 1});
  CHECK(to_vector(b.candidate_categorical) == std::vector<std::int32_t>{3, 1, 1, 1, 2, 0, 0, 0});
  CHECK(to_vector(b.candidate_numeric) == std::vector<float>{10.0F, 12.0F, 99.0F, 3.0F});
  // Vectors: user 2's events are items 2 and 1, user 0's items 0, 3, 0;
  // the candidates are items 1, 1, 0 and 3.
  std::vector<float> want_history;
  for (const std::int32_t item : {2, 1, 0, 3, 0}) {
    const auto v = item_row(ex, item, c.item_vector_dim);
    want_history.insert(want_history.end(), v.begin(), v.end());
  }
  CHECK(to_vector(b.history_vectors) == want_history);
  std::vector<float> want_candidates;
  for (const std::int32_t item : {1, 1, 0, 3}) {
    const auto v = item_row(ex, item, c.item_vector_dim);
    want_candidates.insert(want_candidates.end(), v.begin(), v.end());
  }
  CHECK(to_vector(b.candidate_vectors) == want_candidates);

  // Repeated rows: one user, its candidate three times.
  const std::vector<std::size_t> same = {2, 2, 2};
  const DeepRankerBatch r = ex.gather(same, storage);
  REQUIRE_NOTHROW(r.validate(c));
  CHECK(r.users == 1);
  CHECK(to_vector(r.candidate_user) == std::vector<std::int32_t>{0, 0, 0});
  CHECK(to_vector(r.history_offsets) == std::vector<std::int64_t>{0, 0});  // user 1: no history
  CHECK(to_vector(r.user_categorical) == std::vector<std::int32_t>{0});
  std::vector<float> thrice;
  for (int k = 0; k < 3; ++k) {
    const auto v = item_row(ex, 3, c.item_vector_dim);
    thrice.insert(thrice.end(), v.begin(), v.end());
  }
  CHECK(to_vector(r.candidate_vectors) == thrice);

  // No rows: an empty, valid batch.
  const DeepRankerBatch none = ex.gather({}, storage);
  CHECK(none.users == 0);
  CHECK(none.candidates == 0);
  CHECK_NOTHROW(none.validate(c));

  // gather_all is gather over 0..candidates-1; here every user is used in
  // order, so the batch is the examples with their vectors expanded.
  const std::vector<std::size_t> all = {0, 1, 2, 3, 4};
  DeepRankerBatchStorage other;
  const OwnedBatch by_rows = own(ex.gather(all, other));
  const OwnedBatch whole = own(ex.gather_all(storage));
  const OwnedBatch expanded = expand(ex, all, c);
  for (const OwnedBatch* g : {&by_rows, &whole}) {
    CHECK(g->users == expanded.users);
    CHECK(g->user_categorical == expanded.user_categorical);
    CHECK(g->user_numeric == expanded.user_numeric);
    CHECK(g->history_offsets == expanded.history_offsets);
    CHECK(g->history_vectors == expanded.history_vectors);
    CHECK(g->history_category == expanded.history_category);
    CHECK(g->history_type == expanded.history_type);
    CHECK(g->history_recency == expanded.history_recency);
    CHECK(g->candidate_user == expanded.candidate_user);
    CHECK(g->candidate_vectors == expanded.candidate_vectors);
    CHECK(g->candidate_categorical == expanded.candidate_categorical);
    CHECK(g->candidate_numeric == expanded.candidate_numeric);
  }
}

TEST_CASE("DeepRankerExamples::gather: out-of-range rows and items are errors", "[deep_ranker]") {
  using Catch::Matchers::Contains;
  const DeepRankerExamples good = small_examples();
  DeepRankerBatchStorage storage;
  const std::vector<std::size_t> all = {0, 1, 2, 3, 4};
  const OwnedBatch want = own(good.gather(all, storage));
  auto gather_error = [&](const DeepRankerExamples& ex, std::vector<std::size_t> rows) {
    std::string message =
        error_of([&] { (void)ex.gather(rows, storage); }, ErrorCode::invalid_argument);
    // The storage stays usable: the next gather is as from a fresh one.
    const OwnedBatch again = own(good.gather(all, storage));
    CHECK(again.candidate_user == want.candidate_user);
    CHECK(again.history_vectors == want.history_vectors);
    CHECK(again.user_categorical == want.user_categorical);
    return message;
  };
  CHECK_THAT(gather_error(good, {0, 5}), Contains("rows[1] = 5") && Contains("5 candidates"));
  DeepRankerExamples ex = good;
  ex.candidate_item[2] = 4;
  CHECK_THAT(gather_error(ex, {0, 2}), Contains("candidate_item[2] = 4") && Contains("[0, 4)"));
  CHECK_NOTHROW(ex.gather(std::vector<std::size_t>{0, 1}, storage));  // row 2 not gathered
  ex = good;
  ex.candidate_item[0] = -1;
  CHECK_THAT(gather_error(ex, {1, 0}), Contains("candidate_item[0] = -1"));
  ex = good;
  ex.history_item[4] = 7;  // user 2's second event
  CHECK_THAT(gather_error(ex, {0, 3}), Contains("history_item[4] = 7"));
  ex = good;
  ex.candidate_user[1] = 3;
  CHECK_THAT(gather_error(ex, {0, 1}), Contains("candidate_user[1] = 3"));
  ex = good;
  ex.history_offsets = {0, 3, 6, 5};
  CHECK_THAT(gather_error(ex, {2}), Contains("history_offsets[1]"));
  ex = good;
  ex.item_vectors.pop_back();
  CHECK_THAT(gather_error(ex, {0}), Contains("item_vectors"));
  ex = good;
  ex.history_type.pop_back();
  CHECK_THAT(gather_error(ex, {0}), Contains("history_type"));
}

TEST_CASE("DeepRankerExamples::gather: a warm storage is reused without reallocating",
          "[deep_ranker]") {
  const DeepRankerConfig c = small_config();
  const DeepRankerExamples ex = small_examples();
  DeepRankerBatchStorage storage;
  (void)ex.gather_all(storage);
  const float* history = storage.history_vectors.data();
  const float* candidates = storage.candidate_vectors.data();
  // A smaller batch afterwards holds only its own rows (nothing stale) ...
  const std::vector<std::size_t> one = {3};
  const DeepRankerBatch small = ex.gather(one, storage);
  CHECK(small.users == 1);
  CHECK(small.history_vectors.size() == 2 * c.item_vector_dim);
  CHECK(to_vector(small.history_category) == std::vector<std::int32_t>{2, 2});
  // ... and the buffers stay where they were.
  (void)ex.gather_all(storage);
  CHECK(storage.history_vectors.data() == history);
  CHECK(storage.candidate_vectors.data() == candidates);
}

TEST_CASE("DeepRankerExamples: save/load round trip and damaged files", "[deep_ranker]") {
  using Catch::Matchers::Contains;
  const DeepRankerConfig c = small_config();
  const DeepRankerExamples ex = small_examples();
  TempDir dir;
  const auto path = dir / "examples.safetensors";
  ex.save(path);
  const DeepRankerExamples back = DeepRankerExamples::load(path, c);
  CHECK(back.items == 4);
  CHECK(back.users == 3);
  CHECK(back.candidates == 5);
  CHECK(back.item_vectors == ex.item_vectors);
  CHECK(back.user_categorical == ex.user_categorical);
  CHECK(back.user_numeric == ex.user_numeric);
  CHECK(back.history_offsets == ex.history_offsets);
  CHECK(back.history_item == ex.history_item);
  CHECK(back.history_category == ex.history_category);
  CHECK(back.history_type == ex.history_type);
  CHECK(back.history_recency == ex.history_recency);
  CHECK(back.candidate_user == ex.candidate_user);
  CHECK(back.candidate_item == ex.candidate_item);
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
    CHECK(file.tensors().size() == 14);
    CHECK(file.at("item_vectors").dtype == TensorDType::f32);
    CHECK(file.at("item_vectors").shape == std::vector<std::size_t>{4, 4});
    CHECK(file.at("history_item").dtype == TensorDType::i32);
    CHECK(file.at("history_item").shape == std::vector<std::size_t>{5});
    CHECK(file.at("candidate_item").dtype == TensorDType::i32);
    CHECK(file.at("candidate_item").shape == std::vector<std::size_t>{5});
    CHECK(file.at("history_offsets").dtype == TensorDType::i64);
    CHECK(file.at("history_offsets").shape == std::vector<std::size_t>{4});
    CHECK(file.at("candidate_categorical").dtype == TensorDType::i32);
    CHECK(file.at("candidate_categorical").shape == std::vector<std::size_t>{5, 2});
    CHECK(file.at("labels").shape == std::vector<std::size_t>{5, 3});
    CHECK(file.metadata().at("format") == "funnel.deep_ranker.examples");
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
  // Empty examples round-trip.
  {
    const auto p3 = dir / "empty.safetensors";
    DeepRankerExamples{}.save(p3);
    const DeepRankerExamples empty = DeepRankerExamples::load(p3, c);
    CHECK(empty.items == 0);
    CHECK(empty.users == 0);
    CHECK(empty.candidates == 0);
    CHECK(empty.history_offsets == std::vector<std::int64_t>{0});
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
  CHECK_THAT(rewrite("candidate_item", TensorDType::i32, {}, {}, true), Contains("candidate_item"));
  CHECK_THAT(rewrite("extra", TensorDType::f32, {1}, raw(std::vector<float>{1.0F})),
             Contains("extra"));
  // A file of the older layout (vectors per event and candidate).
  CHECK_THAT(rewrite("history_vectors", TensorDType::f32, {5, 4}, raw(std::vector<float>(20))),
             Contains("history_vectors") && Contains("item_vectors") && Contains("again"));
  CHECK_THAT(rewrite("ts", TensorDType::i32, {5}, raw(std::vector<std::int32_t>(5, 0))),
             Contains("ts") && Contains("I32"));
  CHECK_THAT(rewrite("labels", TensorDType::f32, {5, 2}, raw(std::vector<float>(10, 0.0F))),
             Contains("labels") && Contains("[5, 3]"));
  CHECK_THAT(rewrite("item_vectors", TensorDType::f32, {4, 3}, raw(std::vector<float>(12))),
             Contains("item_vectors") && Contains("[4, 4]"));
  CHECK_THAT(rewrite("history_item", TensorDType::i32, {4}, raw(std::vector<std::int32_t>(4))),
             Contains("history_item") && Contains("[5]"));
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
    std::vector<std::int32_t> items = {1, 3, 3, 4, 1};  // 4 items: rows 0..3
    CHECK_THAT(rewrite("candidate_item", TensorDType::i32, {5}, raw(items)),
               Contains("damaged.safetensors") && Contains("candidate_item[3] = 4") &&
                   Contains("item_vectors has 4 rows"));
  }
  {
    std::vector<std::int32_t> items = {0, 3, -2, 2, 1};
    CHECK_THAT(rewrite("history_item", TensorDType::i32, {5}, raw(items)),
               Contains("history_item[2] = -2"));
  }
  {
    std::vector<float> vectors = ex.item_vectors;
    vectors[9] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THAT(rewrite("item_vectors", TensorDType::f32, {4, 4}, raw(vectors)),
               Contains("item_vectors[row 2, column 1]") && Contains("not finite"));
  }
  // Save rejects inconsistent arrays.
  DeepRankerExamples bad = ex;
  bad.ts.pop_back();
  CHECK_THROWS_AS(bad.save(dir / "bad.safetensors"), Error);
  bad = ex;
  bad.candidate_item.pop_back();
  CHECK_THROWS_WITH(bad.save(dir / "bad.safetensors"), Contains("candidate_item"));
  bad = ex;
  bad.item_vectors.pop_back();
  CHECK_THROWS_WITH(bad.save(dir / "bad.safetensors"), Contains("item_vectors"));
}

// ---------------------------------------------------------------------------
// The model: an independent reference, written from deep_ranker.hpp's math
// in double precision with plain loops.

namespace {

using Vec = std::vector<double>;

class Reference {
 public:
  Reference(const DeepRankerConfig& c, const DeepRankerParameters& p) : c_(c) {
    for (const NamedTensor& t : p) params_[t.name] = &t;
  }

  // Outputs, candidates x tasks.
  std::vector<double> forward(const OwnedBatch& ex) const {
    const std::size_t d = c_.item_vector_dim;
    const std::size_t a_dim = c_.attention_dim;
    const std::size_t nic = c_.item_categorical.size();
    const std::size_t nin = c_.item_numeric.size();
    const std::size_t nuc = c_.user_categorical.size();
    const std::size_t nun = c_.user_numeric.size();
    const auto& hcf = c_.item_categorical[c_.history_category_feature];
    std::vector<double> out;
    for (std::size_t i = 0; i < ex.candidates; ++i) {
      const auto u = static_cast<std::size_t>(ex.candidate_user[i]);
      Vec uvec;
      for (std::size_t k = 0; k < nuc; ++k) {
        append_row(uvec, "user." + c_.user_categorical[k].name + ".embedding",
                   ex.user_categorical[u * nuc + k]);
      }
      for (std::size_t k = 0; k < nun; ++k) {
        const auto& f = c_.user_numeric[k];
        uvec.push_back((double{ex.user_numeric[u * nun + k]} - f.mean) / f.std);
      }
      Vec cvec(ex.candidate_vectors.begin() + static_cast<std::ptrdiff_t>(i * d),
               ex.candidate_vectors.begin() + static_cast<std::ptrdiff_t>((i + 1) * d));
      for (std::size_t k = 0; k < nic; ++k) {
        append_row(cvec, "item." + c_.item_categorical[k].name + ".embedding",
                   ex.candidate_categorical[i * nic + k]);
      }
      for (std::size_t k = 0; k < nin; ++k) {
        const auto& f = c_.item_numeric[k];
        cvec.push_back((double{ex.candidate_numeric[i * nin + k]} - f.mean) / f.std);
      }
      // Target attention over the user's history.
      Vec t(cvec.begin(), cvec.begin() + static_cast<std::ptrdiff_t>(d));
      append_row(t, "item." + hcf.name + ".embedding",
                 ex.candidate_categorical[i * nic + c_.history_category_feature]);
      const Vec q = linear("attention.query", t);
      Vec p(a_dim, 0.0);
      const auto begin = static_cast<std::size_t>(ex.history_offsets[u]);
      const auto end = static_cast<std::size_t>(ex.history_offsets[u + 1]);
      if (end > begin) {
        std::vector<Vec> values;
        Vec scores;
        for (std::size_t j = begin; j < end; ++j) {
          Vec h(ex.history_vectors.begin() + static_cast<std::ptrdiff_t>(j * d),
                ex.history_vectors.begin() + static_cast<std::ptrdiff_t>((j + 1) * d));
          append_row(h, "item." + hcf.name + ".embedding", ex.history_category[j]);
          Vec key = linear("attention.key", h);
          const auto& type = params_.at("history.type.embedding")->values;
          const auto& rec = params_.at("history.recency.embedding")->values;
          for (std::size_t r = 0; r < a_dim; ++r) {
            key[r] += type[static_cast<std::size_t>(ex.history_type[j]) * a_dim + r];
            key[r] += rec[static_cast<std::size_t>(ex.history_recency[j]) * a_dim + r];
          }
          double s = 0.0;
          for (std::size_t r = 0; r < a_dim; ++r) s += q[r] * key[r];
          scores.push_back(s / std::sqrt(static_cast<double>(a_dim)));
          values.push_back(linear("attention.value", h));
        }
        const double mx = *std::max_element(scores.begin(), scores.end());
        double sum = 0.0;
        for (double& s : scores) sum += (s = std::exp(s - mx));
        for (std::size_t j = 0; j < values.size(); ++j) {
          for (std::size_t r = 0; r < a_dim; ++r) p[r] += scores[j] / sum * values[j][r];
        }
      }
      Vec x = uvec;
      x.insert(x.end(), cvec.begin(), cvec.end());
      x.insert(x.end(), p.begin(), p.end());
      // Experts.
      std::vector<Vec> y;
      for (std::size_t e = 0; e < c_.experts; ++e) {
        Vec h = x;
        for (std::size_t l = 0; l < c_.expert_hidden.size(); ++l) {
          h = relu(linear("expert." + std::to_string(e) + "." + std::to_string(l), h));
        }
        y.push_back(h);
      }
      for (const auto& task : c_.tasks) {
        Vec m;
        if (c_.body == DeepRankerConfig::Body::mmoe) {
          Vec g = linear("gate." + task.name, x);
          const double mx = *std::max_element(g.begin(), g.end());
          double sum = 0.0;
          for (double& v : g) sum += (v = std::exp(v - mx));
          m.assign(y[0].size(), 0.0);
          for (std::size_t e = 0; e < c_.experts; ++e) {
            for (std::size_t r = 0; r < m.size(); ++r) m[r] += g[e] / sum * y[e][r];
          }
        } else {
          m = y[0];
        }
        for (std::size_t l = 0; l < c_.tower_hidden.size(); ++l) {
          m = relu(linear("tower." + task.name + "." + std::to_string(l), m));
        }
        const double o =
            linear("tower." + task.name + "." + std::to_string(c_.tower_hidden.size()), m)[0];
        out.push_back(task.kind == DeepTaskKind::regression ? o : 1.0 / (1.0 + std::exp(-o)));
      }
    }
    return out;
  }

 private:
  void append_row(Vec& v, const std::string& table, std::int32_t row) const {
    const NamedTensor& t = *params_.at(table);
    const std::size_t dim = t.shape[1];
    for (std::size_t j = 0; j < dim; ++j) {
      v.push_back(t.values[static_cast<std::size_t>(row) * dim + j]);
    }
  }
  Vec linear(const std::string& name, const Vec& x) const {
    const NamedTensor& w = *params_.at(name + ".weight");
    const NamedTensor& b = *params_.at(name + ".bias");
    REQUIRE(w.shape[1] == x.size());
    Vec out(w.shape[0]);
    for (std::size_t o = 0; o < out.size(); ++o) {
      double s = b.values[o];
      for (std::size_t k = 0; k < x.size(); ++k) s += double{w.values[o * x.size() + k]} * x[k];
      out[o] = s;
    }
    return out;
  }
  static Vec relu(Vec v) {
    for (double& x : v) x = std::max(x, 0.0);
    return v;
  }

  const DeepRankerConfig& c_;
  std::map<std::string, const NamedTensor*> params_;
};

// Random parameters of moderate size (He-like uniform weights), so that
// attention and gates are far from uniform and no ReLU is always off.
DeepRankerParameters random_parameters(const DeepRankerConfig& c, std::uint64_t seed) {
  DeepRankerParameters params = funnel::deep_ranker_parameter_shapes(c);
  std::mt19937_64 rng(seed);
  for (NamedTensor& p : params) {
    std::size_t n = 1;
    for (const std::size_t dim : p.shape) n *= dim;
    float scale = 0.2F;
    if (p.name.ends_with(".embedding")) {
      scale = 0.8F;
    } else if (p.name.ends_with(".weight")) {
      scale = std::sqrt(6.0F / static_cast<float>(p.shape[1]));
    }
    std::uniform_real_distribution<float> dist(-scale, scale);
    p.values.resize(n);
    for (float& v : p.values) v = dist(rng);
  }
  return params;
}

// Random inputs: history[u] events for user u; candidate i belongs to user
// owners[i].
OwnedBatch random_batch(const DeepRankerConfig& c, const std::vector<std::size_t>& history,
                        const std::vector<std::int32_t>& owners, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> unit(-1.0F, 1.0F);
  auto index = [&](std::size_t vocab) {
    return static_cast<std::int32_t>(std::uniform_int_distribution<std::size_t>(0, vocab)(rng));
  };
  OwnedBatch ex;
  ex.users = history.size();
  for (std::size_t u = 0; u < ex.users; ++u) {
    for (const auto& f : c.user_categorical) ex.user_categorical.push_back(index(f.vocab.size()));
    for (const auto& f : c.user_numeric)
      ex.user_numeric.push_back(f.mean + 2.0F * f.std * unit(rng));
    for (std::size_t j = 0; j < history[u]; ++j) {
      for (std::size_t k = 0; k < c.item_vector_dim; ++k) ex.history_vectors.push_back(unit(rng));
      ex.history_category.push_back(
          index(c.item_categorical[c.history_category_feature].vocab.size()));
      ex.history_type.push_back(index(3));
      ex.history_recency.push_back(index(c.recency_bounds_s.size()));
    }
    ex.history_offsets.push_back(ex.history_offsets.back() + static_cast<std::int64_t>(history[u]));
  }
  ex.candidates = owners.size();
  ex.candidate_user = owners;
  for (std::size_t i = 0; i < owners.size(); ++i) {
    for (std::size_t k = 0; k < c.item_vector_dim; ++k) ex.candidate_vectors.push_back(unit(rng));
    for (const auto& f : c.item_categorical) {
      ex.candidate_categorical.push_back(index(f.vocab.size()));
    }
    for (const auto& f : c.item_numeric) {
      ex.candidate_numeric.push_back(f.mean + 2.0F * f.std * unit(rng));
    }
  }
  return ex;
}

std::vector<float> run_forward(const DeepRankerModel& model, const DeepRankerBatch& b) {
  std::vector<float> out(b.candidates * model.config().tasks.size(), -7.0F);
  model.forward(b, MatrixView<float>(out.data(), b.candidates, model.config().tasks.size()));
  return out;
}

std::vector<float> run_forward(const DeepRankerModel& model, const OwnedBatch& ex) {
  return run_forward(model, ex.batch());
}

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  return max_abs_diff(a, std::vector<double>(b.begin(), b.end()));
}

bool cpu_has_bf16() {
  try {
    DeepRankerServeOptions o;
    o.precision = DeepRankerServeOptions::Precision::bf16;
    const DeepRankerConfig c = small_config();
    (void)DeepRankerModel::create(c, random_parameters(c, 1), o);
    return true;
  } catch (const Error& e) {
    if (e.code() == ErrorCode::unsupported) return false;
    throw;
  }
}

std::filesystem::path fixture(const std::string& name) {
  return std::filesystem::path(FUNNEL_TEST_DATA_DIR) / "deep_ranker" / name;
}

// Writes a model directory by hand: tensors as given, config.json with the
// weights checksum (so the damage under test is the only one).
void write_model_dir(const std::filesystem::path& dir, const std::string& config_json,
                     const std::vector<TensorToWrite>& tensors) {
  std::filesystem::create_directories(dir);
  funnel::write_safetensors(dir / "model.safetensors", tensors);
  const std::string sha =
      funnel::detail::to_hex(funnel::detail::checksum64_file(dir / "model.safetensors"));
  std::string text = config_json;
  const std::size_t brace = text.rfind('}');
  REQUIRE(brace != std::string::npos);
  text.insert(brace, ", \"weights_sha\": \"" + sha + "\"\n");
  funnel::testing::write_bytes(dir / "config.json", text);
}

std::vector<TensorToWrite> tensors_of(const DeepRankerParameters& params) {
  std::vector<TensorToWrite> out;
  for (const NamedTensor& p : params) {
    out.push_back({p.name, TensorDType::f32, p.shape, std::as_bytes(std::span(p.values))});
  }
  return out;
}

std::string load_error(const std::filesystem::path& dir) {
  return error_of([&] { (void)DeepRankerModel::load(dir); }, ErrorCode::format);
}

}  // namespace

TEST_CASE("DeepRankerModel: a tiny case computed by hand", "[deep_ranker]") {
  // D = 1, one item feature "cat" (dim 1, E = [0; 1]), no user features,
  // A = 1, shared_bottom with one expert of width 1, no tower hidden layer.
  //   q = v,  key_j = v_h + T_type[type_j],  value_j = E[cat_j]
  //   x = [v, E[cat], p],  a = relu(v + p)   (expert weight [1, 0, 1])
  //   ctr = sigmoid(2 a - 1),  dwell = a + 0.5
  // User 0 has two events: (v_h 0, cat 1, view) and (v_h 0, cat 0, click),
  // with T_type[click] = ln 3, so the keys are 0 and ln 3.
  //  - candidate v = 1: scores (0, ln 3) -> a = (1/4, 3/4), p = 1/4 * 1 +
  //    3/4 * 0 = 0.25; a = 1.25; ctr = sigmoid(1.5) = 0.817574476;
  //    dwell = 1.75.
  //  - candidate v = -2: scores (0, -2 ln 3) -> weights 1 : 1/9, so
  //    a = (0.9, 0.1), p = 0.9; a = relu(-1.1) = 0; ctr = sigmoid(-1) =
  //    0.268941421; dwell = 0.5.
  // User 1 has no history: candidate v = 0.5 -> p = 0, a = 0.5, ctr =
  // sigmoid(0) = 0.5, dwell = 1.0.
  DeepRankerConfig c;
  c.body = DeepRankerConfig::Body::shared_bottom;
  c.item_vector_dim = 1;
  c.item_categorical = {{"cat", {"a"}, 1}};
  c.history_length = 2;
  c.recency_bounds_s = {100};
  c.attention_dim = 1;
  c.experts = 1;
  c.expert_hidden = {1};
  c.tower_hidden = {};
  c.tasks = {{"ctr", DeepTaskKind::binary, "", 1.0F, "click"},
             {"dwell", DeepTaskKind::regression, "", 1.0F, "dwell"}};
  c.fusion.weights = {{"ctr", 1.0F}};
  const float ln3 = std::log(3.0F);
  const std::map<std::string, std::vector<float>> values = {
      {"item.cat.embedding", {0, 1}},
      {"history.type.embedding", {0, ln3, 0, 0}},
      {"history.recency.embedding", {0, 0}},
      {"attention.query.weight", {1, 0}},
      {"attention.query.bias", {0}},
      {"attention.key.weight", {1, 0}},
      {"attention.key.bias", {0}},
      {"attention.value.weight", {0, 1}},
      {"attention.value.bias", {0}},
      {"expert.0.0.weight", {1, 0, 1}},
      {"expert.0.0.bias", {0}},
      {"tower.ctr.0.weight", {2}},
      {"tower.ctr.0.bias", {-1}},
      {"tower.dwell.0.weight", {1}},
      {"tower.dwell.0.bias", {0.5F}},
  };
  DeepRankerParameters params = funnel::deep_ranker_parameter_shapes(c);
  REQUIRE(params.size() == values.size());
  for (NamedTensor& p : params) p.values = values.at(p.name);
  const auto model = DeepRankerModel::create(c, params);

  OwnedBatch ex;
  ex.users = 2;
  ex.history_offsets = {0, 2, 2};
  ex.history_vectors = {0, 0};
  ex.history_category = {1, 0};
  ex.history_type = {0, 1};
  ex.history_recency = {0, 1};
  ex.candidates = 3;
  ex.candidate_user = {0, 0, 1};
  ex.candidate_vectors = {1, -2, 0.5F};
  ex.candidate_categorical = {0, 1, 1};
  const auto out = run_forward(*model, ex);
  const std::vector<double> expected = {0.817574476, 1.75, 0.268941421, 0.5, 0.5, 1.0};
  for (std::size_t i = 0; i < expected.size(); ++i) {
    INFO("output " << i);
    CHECK(out[i] == Approx(expected[i]).margin(1e-6));
  }
}

TEST_CASE("DeepRankerModel: forward matches a double-precision reference", "[deep_ranker]") {
  struct Case {
    std::string name;
    DeepRankerConfig config;
    std::size_t threads = 1;
  };
  std::vector<Case> cases;
  cases.push_back({"mmoe", small_config()});
  {
    Case k{"shared_bottom, no tower hidden layer", small_config()};
    k.config.body = DeepRankerConfig::Body::shared_bottom;
    k.config.experts = 1;
    k.config.tower_hidden.clear();
    cases.push_back(k);
  }
  {
    Case k{"mmoe, one expert layer, two tower layers, no user features", small_config()};
    k.config.expert_hidden = {6};
    k.config.tower_hidden = {5, 3};
    k.config.user_categorical.clear();
    k.config.user_numeric.clear();
    k.config.experts = 3;
    cases.push_back(k);
  }
  {
    Case k{"mmoe, three expert layers, second item feature for history, 2 threads", small_config()};
    k.config.expert_hidden = {7, 5, 4};
    k.config.history_category_feature = 1;
    k.config.attention_dim = 20;  // more than 16: masked vector tails
    k.config.item_vector_dim = 19;
    k.threads = 2;
    cases.push_back(k);
  }
  {
    Case k{"shared_bottom, wide attention", small_config()};
    k.config.body = DeepRankerConfig::Body::shared_bottom;
    k.config.experts = 1;
    k.config.attention_dim = 70;
    k.config.history_length = 70;
    cases.push_back(k);
  }
  for (const Case& k : cases) {
    SECTION(k.name) {
      const DeepRankerConfig& c = k.config;
      const DeepRankerParameters params = random_parameters(c, 7);
      DeepRankerServeOptions options;
      options.threads = k.threads;
      const auto model = DeepRankerModel::create(c, params, options);
      const Reference ref(c, params);
      const std::size_t full = c.history_length;
      // Several users, ragged history (user 1 has none), interleaved
      // candidates (chunks with several users: per-row user parts).
      const OwnedBatch mixed =
          random_batch(c, {3, 0, full, 1}, {0, 2, 1, 1, 3, 0, 2, 2, 3, 1, 0}, 11);
      CHECK(max_abs_diff(run_forward(*model, mixed), ref.forward(mixed)) <= 1e-5);
      // One user, more candidates than a chunk (the fused per-user bias).
      const OwnedBatch one = random_batch(c, {full}, std::vector<std::int32_t>(300, 0), 12);
      CHECK(max_abs_diff(run_forward(*model, one), ref.forward(one)) <= 1e-5);
      // A user without history as the only user.
      const OwnedBatch none = random_batch(c, {0}, {0, 0, 0}, 13);
      CHECK(max_abs_diff(run_forward(*model, none), ref.forward(none)) <= 1e-5);
      // One candidate (products of exactly one row, no padding), after and
      // before larger requests on the same workspace.
      const OwnedBatch single = random_batch(c, {full}, {0}, 14);
      const std::vector<float> single_out = run_forward(*model, single);
      CHECK(max_abs_diff(single_out, ref.forward(single)) <= 1e-5);
      // Repeated calls reuse the workspace and give the same values.
      CHECK(run_forward(*model, mixed) == run_forward(*model, mixed));
      CHECK(run_forward(*model, single) == single_out);
    }
  }
}

TEST_CASE("DeepRankerExamples::gather: scores like the plain expansion, any rows",
          "[deep_ranker]") {
  DeepRankerConfig c = small_config();
  c.history_length = 6;
  const auto model = DeepRankerModel::create(c, random_parameters(c, 41));
  // Random examples over a small item table: 7 users, ragged histories.
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<float> unit(-1.0F, 1.0F);
  auto pick = [&](std::size_t n) {  // in [0, n)
    return static_cast<std::int32_t>(std::uniform_int_distribution<std::size_t>(0, n - 1)(rng));
  };
  DeepRankerExamples ex;
  ex.items = 6;
  for (std::size_t k = 0; k < ex.items * c.item_vector_dim; ++k)
    ex.item_vectors.push_back(unit(rng));
  ex.users = 7;
  for (std::size_t u = 0; u < ex.users; ++u) {
    ex.user_categorical.push_back(pick(3));
    ex.user_numeric.push_back(30.0F + 10.0F * unit(rng));
    const auto n = static_cast<std::size_t>(pick(c.history_length + 1));
    for (std::size_t j = 0; j < n; ++j) {
      ex.history_item.push_back(pick(ex.items));
      ex.history_category.push_back(pick(4));
      ex.history_type.push_back(pick(4));
      ex.history_recency.push_back(pick(3));
    }
    ex.history_offsets.push_back(static_cast<std::int64_t>(ex.history_item.size()));
  }
  ex.candidates = 40;
  for (std::size_t i = 0; i < ex.candidates; ++i) {
    ex.candidate_user.push_back(pick(ex.users));
    ex.candidate_item.push_back(pick(ex.items));
    ex.candidate_categorical.push_back(pick(4));
    ex.candidate_categorical.push_back(pick(2));
    ex.candidate_numeric.push_back(10.0F + 5.0F * unit(rng));
  }
  DeepRankerBatchStorage storage;
  for (const std::size_t n : {40, 13, 1, 64}) {
    INFO(n << " rows");
    std::vector<std::size_t> rows;
    for (std::size_t i = 0; i < n; ++i) rows.push_back(static_cast<std::size_t>(pick(40)));
    const DeepRankerBatch b = ex.gather(rows, storage);
    REQUIRE_NOTHROW(b.validate(c));
    // Each user once: no more users than distinct users among the rows.
    std::vector<std::int32_t> distinct;
    distinct.reserve(rows.size());
    for (const std::size_t r : rows) distinct.push_back(ex.candidate_user[r]);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    CHECK(b.users == distinct.size());
    CHECK(max_abs_diff(run_forward(*model, b), run_forward(*model, expand(ex, rows, c))) <= 1e-6);
  }
}

TEST_CASE("DeepRankerModel: PyTorch twin fixtures (mmoe, shared_bottom)", "[deep_ranker]") {
  for (const char* name : {"mmoe", "shared_bottom"}) {
    INFO("fixture " << name);
    const auto dir = fixture(name);
    REQUIRE(std::filesystem::exists(dir / "config.json"));
    REQUIRE(std::filesystem::exists(dir / "expected.safetensors"));
    const auto model = DeepRankerModel::load(dir);
    const DeepRankerExamples inputs =
        DeepRankerExamples::load(dir / "inputs.safetensors", model->config());
    DeepRankerBatchStorage storage;
    const DeepRankerBatch batch = inputs.gather_all(storage);
    const auto expected_file = funnel::SafetensorsFile::open(dir / "expected.safetensors");
    const auto& info = expected_file.at("outputs");
    REQUIRE(info.shape ==
            std::vector<std::size_t>{inputs.candidates, model->config().tasks.size()});
    const std::vector<float> expected = expected_file.to_f32(info);
    const std::vector<float> out = run_forward(*model, batch);
    CHECK(max_abs_diff(out, expected) <= 1e-5);
    // And the reference agrees with the twin (the fixture checks the reference too).
    const Reference ref(model->config(), model->parameters());
    CHECK(max_abs_diff(expected, ref.forward(own(batch))) <= 1e-5);
  }
}

TEST_CASE("DeepRankerModel: bf16 scores within 1e-3 of fp32", "[deep_ranker]") {
  if (!cpu_has_bf16()) {
    WARN("skipped: this CPU has neither AVX512_BF16 nor AMX");
    return;
  }
  for (const auto body : {DeepRankerConfig::Body::mmoe, DeepRankerConfig::Body::shared_bottom}) {
    INFO("body " << funnel::to_string(body));
    DeepRankerConfig c = small_config();
    c.body = body;
    c.item_vector_dim = 32;
    c.attention_dim = 16;
    c.experts = body == DeepRankerConfig::Body::mmoe ? 4 : 1;
    c.expert_hidden = {64, 32};
    c.tower_hidden = {16};
    c.history_length = 20;
    // Trained-scale weights: the He-uniform draw shrunk, as a trained
    // ranker's logits are a few units at most.
    DeepRankerParameters scaled = random_parameters(c, 21);
    for (NamedTensor& p : scaled) {
      if (p.name.ends_with(".weight")) {
        for (float& v : p.values) v *= 0.5F;
      }
    }
    DeepRankerServeOptions bf16;
    bf16.precision = DeepRankerServeOptions::Precision::bf16;
    const auto m32 = DeepRankerModel::create(c, scaled);
    const auto m16 = DeepRankerModel::create(c, scaled, bf16);
    CHECK(m16->options().precision == DeepRankerServeOptions::Precision::bf16);
    const OwnedBatch ex = random_batch(c, {20, 0, 7}, {0, 1, 2, 0, 0, 2, 1, 2}, 22);
    const OwnedBatch one = random_batch(c, {20}, std::vector<std::int32_t>(200, 0), 23);
    for (const OwnedBatch* e : {&ex, &one}) {
      const auto a = run_forward(*m32, *e);
      const auto b = run_forward(*m16, *e);
      CHECK(max_abs_diff(b, a) <= 1e-3);
      CHECK(max_abs_diff(b, a) > 0.0);  // bf16 really ran
    }
  }
}

TEST_CASE("DeepRankerModel: create rejects bad parameters and options", "[deep_ranker]") {
  using Catch::Matchers::Contains;
  const DeepRankerConfig c = small_config();
  const DeepRankerParameters good = random_parameters(c, 3);
  auto create_error = [&](DeepRankerParameters p) {
    return error_of([&] { (void)DeepRankerModel::create(c, std::move(p)); },
                    ErrorCode::invalid_argument);
  };
  {
    DeepRankerParameters p = good;
    p.erase(p.begin() + 5);
    CHECK_THAT(create_error(p), Contains("missing parameter 'attention.query.weight'"));
  }
  {
    DeepRankerParameters p = good;
    p.push_back({"expert.9.0.weight", {1}, {0.0F}});
    CHECK_THAT(create_error(p), Contains("expert.9.0.weight"));
  }
  {
    DeepRankerParameters p = good;
    p[3].shape = {2, 6};
    CHECK_THAT(create_error(p), Contains("history.type.embedding") && Contains("[2, 6]"));
  }
  {
    DeepRankerParameters p = good;
    p[4].values.pop_back();
    CHECK_THAT(create_error(p), Contains("history.recency.embedding"));
  }
  {
    DeepRankerParameters p = good;
    p[12].values[2] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THAT(create_error(p), Contains(p[12].name) && Contains("non-finite"));
  }
  {
    DeepRankerParameters p = good;
    p.push_back(p[0]);
    CHECK_THAT(create_error(p), Contains("twice"));
  }
  {
    // Any order is accepted; parameters() is canonical.
    DeepRankerParameters p = good;
    std::reverse(p.begin(), p.end());
    const auto model = DeepRankerModel::create(c, p);
    REQUIRE(model->parameters().size() == good.size());
    for (std::size_t i = 0; i < good.size(); ++i) {
      CHECK(model->parameters()[i].name == good[i].name);
      CHECK(model->parameters()[i].values == good[i].values);
    }
  }
  DeepRankerServeOptions zero;
  zero.threads = 0;
  CHECK_THAT(
      error_of([&] { (void)DeepRankerModel::create(c, good, zero); }, ErrorCode::invalid_argument),
      Contains("threads"));
  DeepRankerConfig bad = c;
  bad.experts = 0;
  CHECK_THAT(
      error_of([&] { (void)DeepRankerModel::create(bad, good); }, ErrorCode::invalid_argument),
      Contains("experts"));
}

TEST_CASE("DeepRankerModel: forward rejects bad batches and output shapes", "[deep_ranker]") {
  using Catch::Matchers::Contains;
  const DeepRankerConfig c = small_config();
  const auto model = DeepRankerModel::create(c, random_parameters(c, 5));
  const OwnedBatch good = small_batch();
  std::vector<float> out(good.candidates * 3);
  auto forward_error = [&](const OwnedBatch& ex, std::size_t rows, std::size_t cols) {
    out.assign(rows * cols, 0.0F);
    return error_of([&] { model->forward(ex.batch(), MatrixView<float>(out.data(), rows, cols)); },
                    ErrorCode::invalid_argument);
  };
  CHECK_THAT(forward_error(good, 5, 2), Contains("5 x 2") && Contains("5 x 3"));
  CHECK_THAT(forward_error(good, 4, 3), Contains("outputs"));
  OwnedBatch ex = good;
  ex.candidate_categorical[2] = 9;
  CHECK_THAT(forward_error(ex, 5, 3), Contains("candidate_categorical[row 1"));
  ex = good;
  ex.history_offsets = {0, 4, 3, 5};
  CHECK_THAT(forward_error(ex, 5, 3), Contains("history_offsets[2] = 3"));
  ex = good;
  ex.history_offsets = {0, 5, 5, 5};
  CHECK_THAT(forward_error(ex, 5, 3), Contains("history_length"));
  ex = good;
  ex.user_numeric[0] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THAT(forward_error(ex, 5, 3), Contains("user_numeric[row 0"));
  ex = good;
  ex.candidate_user[4] = 3;
  CHECK_THAT(forward_error(ex, 5, 3), Contains("candidate_user[4] = 3"));
  // An empty batch is fine.
  OwnedBatch empty;
  CHECK_NOTHROW(model->forward(empty.batch(), MatrixView<float>(nullptr, 0, 3)));
}

TEST_CASE("DeepRankerModel: save/load round trip and damaged model directories", "[deep_ranker]") {
  using Catch::Matchers::Contains;
  const DeepRankerConfig c = small_config();
  const DeepRankerParameters params = random_parameters(c, 9);
  const auto model = DeepRankerModel::create(c, params);
  TempDir tmp;
  const auto dir = tmp / "model";
  model->save(dir);
  CHECK(std::filesystem::exists(dir / "config.json"));
  CHECK(std::filesystem::exists(dir / "model.safetensors"));
  CHECK(funnel::testing::count_entries(dir) == 2);  // no temporary files left
  const auto back = DeepRankerModel::load(dir);
  const OwnedBatch ex = small_batch();
  CHECK(run_forward(*back, ex) == run_forward(*model, ex));
  CHECK(back->config().to_json() == c.to_json());
  {
    const auto file = funnel::SafetensorsFile::open(dir / "model.safetensors");
    CHECK(file.metadata().at("format") == "funnel.deep_ranker");
    const std::string config_text = funnel::testing::read_bytes(dir / "config.json");
    CHECK_THAT(config_text, Contains(funnel::detail::to_hex(
                                funnel::detail::checksum64_file(dir / "model.safetensors"))));
  }
  const std::string json = c.to_json();
  auto damaged = [&](const std::string& name) { return tmp / name; };

  {
    DeepRankerParameters p = params;
    p.erase(p.begin() + 7);  // attention.key.weight
    write_model_dir(damaged("missing"), json, tensors_of(p));
    CHECK_THAT(load_error(damaged("missing")),
               Contains("model.safetensors") && Contains("missing tensor 'attention.key.weight'"));
  }
  {
    DeepRankerParameters p = params;
    p.push_back({"tower.gmv.0.weight", {1}, {1.0F}});
    write_model_dir(damaged("extra"), json, tensors_of(p));
    CHECK_THAT(load_error(damaged("extra")), Contains("unexpected tensor 'tower.gmv.0.weight'"));
  }
  {
    DeepRankerParameters p = params;
    p[6].shape = {1, 3};  // attention.query.bias [3] stored as [1, 3]
    write_model_dir(damaged("shape"), json, tensors_of(p));
    CHECK_THAT(load_error(damaged("shape")),
               Contains("attention.query.bias") && Contains("[1, 3]") && Contains("[3]"));
  }
  {
    auto tensors = tensors_of(params);
    const std::vector<double> as_f64(params[2].values.begin(), params[2].values.end());
    tensors[2] = {params[2].name, TensorDType::f64, params[2].shape,
                  std::as_bytes(std::span(as_f64))};
    write_model_dir(damaged("dtype"), json, tensors);
    CHECK_THAT(load_error(damaged("dtype")),
               Contains("item.brand.embedding") && Contains("F64") && Contains("F32"));
  }
  {
    DeepRankerParameters p = params;
    p[11].values[3] = std::numeric_limits<float>::quiet_NaN();
    write_model_dir(damaged("nan"), json, tensors_of(p));
    CHECK_THAT(load_error(damaged("nan")),
               Contains("model.safetensors") && Contains(p[11].name) && Contains("non-finite"));
  }
  {
    // Weights of another model of the same shape: the checksum differs.
    const auto other = damaged("other");
    DeepRankerModel::create(c, random_parameters(c, 10))->save(other);
    std::filesystem::copy_file(other / "model.safetensors", dir / "model.safetensors",
                               std::filesystem::copy_options::overwrite_existing);
    CHECK_THAT(load_error(dir), Contains("weights_sha") && Contains("another model"));
    model->save(dir);
    CHECK_NOTHROW(DeepRankerModel::load(dir));
  }
  {
    const auto cut = damaged("truncated");
    model->save(cut);
    const std::string bytes = funnel::testing::read_bytes(cut / "model.safetensors");
    funnel::testing::write_bytes(cut / "model.safetensors", bytes.substr(0, bytes.size() - 10));
    CHECK_THAT(load_error(cut), Contains("model.safetensors"));
  }
  auto edit_config = [&](const std::string& name, const std::string& from, const std::string& to) {
    const auto d = damaged(name);
    model->save(d);
    std::string text = funnel::testing::read_bytes(d / "config.json");
    const std::size_t at = text.find(from);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(), to);
    funnel::testing::write_bytes(d / "config.json", text);
    return load_error(d);
  };
  CHECK_THAT(edit_config("kind", "\"kind\": \"ctcvr\"", "\"kind\": \"poisson\""),
             Contains("config.json") && Contains("tasks[1].kind") && Contains("poisson"));
  CHECK_THAT(edit_config("key", "\"version\": 1", "\"version\": 1, \"temperature\": 2"),
             Contains("config.json") && Contains("temperature") && Contains("unknown key"));
  {
    const auto d = damaged("nosha2");
    model->save(d);
    std::string text = funnel::testing::read_bytes(d / "config.json");
    const std::size_t at = text.find(",\n  \"weights_sha\"");
    REQUIRE(at != std::string::npos);
    text.erase(at, text.find('"', text.find(':', at) + 3) - at + 1);
    funnel::testing::write_bytes(d / "config.json", text);
    CHECK_THAT(load_error(d), Contains("weights_sha") && Contains("missing"));
  }
  CHECK_THAT(error_of([&] { (void)DeepRankerModel::load(tmp / "nowhere"); }, ErrorCode::io),
             Contains("nowhere"));
}

TEST_CASE("DeepRankerModel: concurrent forward calls match sequential ones",
          "[deep_ranker][concurrency]") {
  DeepRankerConfig c = small_config();
  c.expert_hidden = {12, 6};
  const auto model = DeepRankerModel::create(c, random_parameters(c, 31));
  std::vector<OwnedBatch> batches;
  for (std::uint64_t b = 0; b < 6; ++b) {
    std::vector<std::int32_t> owners;
    for (std::size_t i = 0; i < 10 + 7 * b; ++i) owners.push_back(static_cast<std::int32_t>(i % 3));
    batches.push_back(random_batch(c, {b % 4, 4, 2}, owners, 100 + b));
  }
  std::vector<std::vector<float>> expected;
  expected.reserve(batches.size());
  for (const auto& b : batches) expected.push_back(run_forward(*model, b));
  constexpr int kThreads = 4;
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 10; ++round) {
        const std::size_t b = static_cast<std::size_t>(t + round) % batches.size();
        if (run_forward(*model, batches[b]) != expected[b])
          ++mismatches[static_cast<std::size_t>(t)];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) CHECK(mismatches[static_cast<std::size_t>(t)] == 0);
}
