// SPDX-License-Identifier: Apache-2.0
// BertEncoder against the committed fixtures of tools/bert_fixture (random
// BERT checkpoints with float64 reference outputs from two independent
// implementations; see tools/bert_fixture/README.md).

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "funnel/bert_encoder.hpp"
#include "funnel/error.hpp"
#include "funnel/npy.hpp"
#include "funnel/safetensors.hpp"
#include "internal/bert_inplace_linear.hpp"
#include "internal/bert_kernels.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using funnel::BertComputeType;
using funnel::BertEncoder;
using funnel::BertEncoderConfig;
using funnel::BertPooling;
using funnel::Error;
using funnel::ErrorCode;
using funnel::Matrix;
using funnel::TextRole;
using funnel::testing::error_of;

namespace {

// tiny_spm_mean_st: XLM-R's SentencePiece tokenizer on a BERT network;
// tiny_xlmr_cls: the XLM-RoBERTa network (make_spm_fixture.py).
constexpr std::array<const char*, 5> kFixtures = {
    "tiny_f32_cls", "tiny_f16_mean_st", "tiny_bf16_plain", "tiny_spm_mean_st", "tiny_xlmr_cls"};

fs::path fixture_dir(const std::string& name) {
  return fs::path(FUNNEL_TEST_DATA_DIR) / "bert" / name;
}

struct Fixture {
  std::string name;
  Matrix<std::int64_t> ids, mask;
  Matrix<float> hidden;  // (batch * seq_len) x hidden
  Matrix<float> pooled, pooled_cls, pooled_mean, pooled_max;
  std::vector<std::string> inputs;
  nlohmann::json meta;

  [[nodiscard]] std::size_t batch() const { return ids.rows(); }
  [[nodiscard]] std::size_t seq_len() const { return ids.cols(); }
  [[nodiscard]] std::size_t length(std::size_t r) const {
    std::size_t n = 0;
    for (std::size_t c = 0; c < mask.cols(); ++c) n += mask(r, c) == 1 ? 1 : 0;
    return n;
  }
  [[nodiscard]] std::vector<std::int32_t> row_ids(std::size_t r) const {
    std::vector<std::int32_t> v(length(r));
    for (std::size_t c = 0; c < v.size(); ++c) v[c] = static_cast<std::int32_t>(ids(r, c));
    return v;
  }
};

Fixture load_fixture(const std::string& name) {
  const fs::path d = fixture_dir(name);
  Fixture f;
  f.name = name;
  f.ids = funnel::load_npy_i64(d / "ids.npy");
  f.mask = funnel::load_npy_i64(d / "mask.npy");
  f.hidden = funnel::load_npy_f32(d / "last_hidden_state.npy");
  f.pooled = funnel::load_npy_f32(d / "pooled.npy");
  f.pooled_cls = funnel::load_npy_f32(d / "pooled_cls.npy");
  f.pooled_mean = funnel::load_npy_f32(d / "pooled_mean.npy");
  f.pooled_max = funnel::load_npy_f32(d / "pooled_max.npy");
  std::ifstream in(d / "inputs.txt");
  for (std::string line; std::getline(in, line);) f.inputs.push_back(line);
  f.meta = nlohmann::json::parse(funnel::testing::read_bytes(d / "fixture.json"));
  return f;
}

BertEncoderConfig config_for(const fs::path& dir, BertComputeType compute = BertComputeType::fp32) {
  BertEncoderConfig c;
  c.checkpoint_dir = dir;
  c.compute = compute;
  return c;
}

// Largest |a - b| over the unpadded rows of the hidden states of row r.
float max_hidden_error(const Matrix<float>& got, const Fixture& f, std::size_t r,
                       std::size_t got_row = SIZE_MAX, std::size_t got_seq_len = SIZE_MAX) {
  if (got_row == SIZE_MAX) got_row = r;
  if (got_seq_len == SIZE_MAX) got_seq_len = f.seq_len();
  float err = 0.0F;
  for (std::size_t t = 0; t < f.length(r); ++t) {
    for (std::size_t j = 0; j < f.hidden.cols(); ++j) {
      err = std::max(
          err, std::fabs(got(got_row * got_seq_len + t, j) - f.hidden(r * f.seq_len() + t, j)));
    }
  }
  return err;
}

float max_row_error(const Matrix<float>& a, std::size_t ra, const Matrix<float>& b,
                    std::size_t rb) {
  float err = 0.0F;
  for (std::size_t j = 0; j < a.cols(); ++j) err = std::max(err, std::fabs(a(ra, j) - b(rb, j)));
  return err;
}

double cosine(const float* a, const float* b, std::size_t n) {
  double ab = 0.0;
  double aa = 0.0;
  double bb = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

const Matrix<float>& reference_pooled(const Fixture& f, BertPooling p) {
  switch (p) {
    case BertPooling::cls: return f.pooled_cls;
    case BertPooling::max: return f.pooled_max;
    default: return f.pooled_mean;
  }
}

// Copies a fixture into a fresh temporary directory (for corruption tests).
struct FixtureCopy {
  funnel::testing::TempDir tmp;
  fs::path dir;
  explicit FixtureCopy(const std::string& name) : dir(tmp / name) {
    fs::copy(fixture_dir(name), dir, fs::copy_options::recursive);
  }
};

// Rewrites model.safetensors in `dir` through `edit` (which may drop,
// rename or reshape tensors; the data spans stay valid during the call).
void rewrite_weights(const fs::path& dir,
                     const std::function<void(std::vector<funnel::TensorToWrite>&)>& edit) {
  const auto file = funnel::SafetensorsFile::open(dir / "model.safetensors");
  std::vector<funnel::TensorToWrite> tensors;
  for (const auto& t : file.tensors()) tensors.push_back({t.name, t.dtype, t.shape, file.bytes(t)});
  edit(tensors);
  funnel::write_safetensors(dir / "model.safetensors", tensors, file.metadata());
}

void edit_json(const fs::path& file, const std::function<void(nlohmann::json&)>& edit) {
  auto j = nlohmann::json::parse(funnel::testing::read_bytes(file));
  edit(j);
  funnel::testing::write_bytes(file, j.dump(2));
}

}  // namespace

// ---------------------------------------------------------------------------
// Correctness in fp32 against the float64 reference

TEST_CASE("BertEncoder fp32: batched forward matches the reference hidden states and poolings",
          "[bert]") {
  for (const char* name : kFixtures) {
    INFO(name);
    const Fixture f = load_fixture(name);
    const BertEncoder enc(config_for(fixture_dir(name)));
    const auto& info = enc.info();
    CHECK(info.compute == BertComputeType::fp32);
    CHECK(info.hidden == f.hidden.cols());
    CHECK(to_string(info.pooling) == f.meta["pooling"].get<std::string>());
    CHECK(info.tensor_prefix == f.meta["tensor_prefix"].get<std::string>());
    CHECK(info.weights_dtype == f.meta["dtype"].get<std::string>());
    CHECK(info.checkpoint_normalizes == f.meta["normalize"].get<bool>());

    const auto out = enc.forward(f.ids.view(), f.mask.view());
    REQUIRE(out.hidden.rows() == f.hidden.rows());
    REQUIRE(out.pooled.rows() == f.batch());
    for (std::size_t r = 0; r < f.batch(); ++r) {
      INFO("row " << r << " length " << f.length(r));
      CHECK(max_hidden_error(out.hidden, f, r) <= 1e-4F);
      CHECK(max_row_error(out.pooled, r, reference_pooled(f, info.pooling), r) <= 1e-4F);
      // Padded positions are zero, as in the reference.
      for (std::size_t t = f.length(r); t < f.seq_len(); ++t) {
        CHECK(out.hidden(r * f.seq_len() + t, 0) == 0.0F);
      }
    }
  }
}

TEST_CASE("BertEncoder fp32: prepacked weights give the same results", "[bert]") {
  for (const char* name : {"tiny_f32_cls", "tiny_f16_mean_st"}) {
    INFO(name);
    const Fixture f = load_fixture(name);
    BertEncoderConfig c = config_for(fixture_dir(name));
    c.fp32_prepack = true;
    const BertEncoder enc(c);
    const auto out = enc.forward(f.ids.view(), f.mask.view());
    for (std::size_t r = 0; r < f.batch(); ++r) CHECK(max_hidden_error(out.hidden, f, r) <= 1e-4F);
  }
}

TEST_CASE("BertEncoder: huge pages change no result, also with scratch of several MiB", "[bert]") {
  // The same checkpoint with and without huge_pages, every compute type the
  // CPU has, fp32 both ways (W . X^T and X . W^T): identical outputs, bit for bit. The
  // big batch (the fixture's sequences 100 times over, 9,000-14,000 tokens)
  // needs several MiB of scratch, which then comes from huge pages too.
  for (const char* name : {"tiny_f32_cls", "tiny_f16_mean_st"}) {
    const Fixture f = load_fixture(name);
    std::vector<std::vector<std::int32_t>> small, big;
    for (std::size_t r = 0; r < f.batch(); ++r) small.push_back(f.row_ids(r));
    for (std::size_t rep = 0; rep < 100; ++rep) {
      for (const auto& s : small) big.push_back(s);
    }
    for (const BertComputeType type :
         {BertComputeType::fp32, BertComputeType::bf16, BertComputeType::int8}) {
      if (!BertEncoder::cpu_supports(type)) continue;
      for (const std::size_t transposed_max : {std::size_t{0}, std::size_t{1} << 20}) {
        if (type != BertComputeType::fp32 && transposed_max != 0) continue;
        INFO(name << ", " << funnel::to_string(type) << ", fp32_transposed_max_tokens "
                  << transposed_max);
        BertEncoderConfig c = config_for(fixture_dir(name), type);
        c.fp32_transposed_max_tokens = transposed_max;
        c.max_batch = big.size();
        c.huge_pages = false;
        const BertEncoder plain(c);
        c.huge_pages = true;
        const BertEncoder huge(c);
        for (const auto* batch : {&small, &big}) {
          const auto want = plain.forward(*batch);
          const auto got = huge.forward(*batch);
          CHECK(got.hidden.values() == want.hidden.values());
          CHECK(got.pooled.values() == want.pooled.values());
        }
      }
    }
  }
}

TEST_CASE(
    "BertEncoder fp32: small-batch kernel, W . X^T and X . W^T on mapped weights all "
    "match the reference",
    "[bert]") {
  // Limits above the fixtures' batches (135 tokens) run them in funnel's
  // small-batch kernel (where the CPU has AVX-512) or as the transposed
  // product W . X^T; 0 and 0 send every batch to X . W^T.
  constexpr std::size_t kAll = std::size_t{1} << 20;
  const std::array<std::pair<std::size_t, std::size_t>, 3> limits = {
      {{kAll, 0}, {0, kAll}, {0, 0}}};
  for (const char* name : {"tiny_f32_cls", "tiny_f16_mean_st"}) {
    const Fixture f = load_fixture(name);
    for (const auto& [small_max, transposed_max] : limits) {
      for (const std::size_t threads : {1, 2}) {
        INFO(name << ", fp32_small_batch_max_tokens " << small_max
                  << ", fp32_transposed_max_tokens " << transposed_max << ", threads " << threads);
        BertEncoderConfig c = config_for(fixture_dir(name));
        c.fp32_small_batch_max_tokens = small_max;
        c.fp32_transposed_max_tokens = transposed_max;
        c.threads = threads;
        const BertEncoder enc(c);
        const auto out = enc.forward(f.ids.view(), f.mask.view());
        for (std::size_t r = 0; r < f.batch(); ++r) {
          CHECK(max_hidden_error(out.hidden, f, r) <= 1e-4F);
        }
      }
    }
  }
}

TEST_CASE("BertEncoder fp32: one sequence at a time and ragged batches give the same rows",
          "[bert]") {
  for (const char* name : {"tiny_f32_cls", "tiny_f16_mean_st"}) {
    INFO(name);
    const Fixture f = load_fixture(name);
    BertEncoderConfig c = config_for(fixture_dir(name));
    SECTION("batch 1") {
      const BertEncoder enc(c);
      for (std::size_t r = 0; r < f.batch(); ++r) {
        const std::vector<std::vector<std::int32_t>> one{f.row_ids(r)};
        const auto out = enc.forward(one);
        INFO("row " << r << " length " << f.length(r));
        CHECK(out.hidden.rows() == f.length(r));
        CHECK(max_hidden_error(out.hidden, f, r, 0, f.length(r)) <= 1e-4F);
      }
    }
    SECTION("reversed ragged batch, two sequences per transformer batch") {
      c.max_batch = 2;
      const BertEncoder enc(c);
      std::vector<std::vector<std::int32_t>> seqs;
      for (std::size_t r = f.batch(); r-- > 0;) seqs.push_back(f.row_ids(r));
      // Duplicates make runs of equal lengths share one attention product.
      seqs.push_back(f.row_ids(0));
      seqs.push_back(f.row_ids(0));
      const auto out = enc.forward(seqs);
      const std::size_t longest = out.hidden.rows() / seqs.size();
      CHECK(longest == f.seq_len());
      for (std::size_t r = 0; r < f.batch(); ++r) {
        INFO("row " << r);
        CHECK(max_hidden_error(out.hidden, f, r, f.batch() - 1 - r, longest) <= 1e-4F);
      }
      CHECK(max_hidden_error(out.hidden, f, 0, f.batch(), longest) <= 1e-4F);
      CHECK(max_hidden_error(out.hidden, f, 0, f.batch() + 1, longest) <= 1e-4F);
    }
  }
}

TEST_CASE("BertEncoder: tokenization of inputs.txt equals ids.npy", "[bert]") {
  for (const char* name : kFixtures) {
    INFO(name);
    const Fixture f = load_fixture(name);
    const BertEncoder enc(config_for(fixture_dir(name)));
    REQUIRE(f.inputs.size() == f.batch());
    for (std::size_t r = 0; r < f.batch(); ++r) {
      INFO("row " << r);
      CHECK(enc.tokenize(f.inputs[r]) == f.row_ids(r));
    }
    CHECK(enc.info().max_length == f.meta["max_length"].get<std::size_t>());
  }
}

TEST_CASE("BertEncoder fp32: encode gives the L2-normalised pooled reference", "[bert]") {
  for (const char* name : kFixtures) {
    INFO(name);
    const Fixture f = load_fixture(name);
    BertEncoderConfig c = config_for(fixture_dir(name));
    c.max_batch = 4;
    const BertEncoder enc(c);
    const Matrix<float> got = enc.encode(f.inputs);
    REQUIRE(got.rows() == f.batch());
    for (std::size_t r = 0; r < f.batch(); ++r) {
      double norm = 0.0;
      for (std::size_t j = 0; j < f.pooled.cols(); ++j)
        norm += double{f.pooled(r, j)} * f.pooled(r, j);
      const auto inv = static_cast<float>(1.0 / std::sqrt(norm));
      float err = 0.0F;
      double got_norm = 0.0;
      for (std::size_t j = 0; j < f.pooled.cols(); ++j) {
        err = std::max(err, std::fabs(got(r, j) - f.pooled(r, j) * inv));
        got_norm += double{got(r, j)} * got(r, j);
      }
      INFO("row " << r);
      CHECK(err <= 1e-4F);
      CHECK(got_norm == Approx(1.0).epsilon(1e-5));
    }
  }
}

TEST_CASE("BertEncoder: a pooling override replaces the checkpoint's pooling", "[bert]") {
  const Fixture f = load_fixture("tiny_f32_cls");
  for (const BertPooling p :
       {BertPooling::cls, BertPooling::mean, BertPooling::max, BertPooling::mean_sqrt_len}) {
    INFO(to_string(p));
    BertEncoderConfig c = config_for(fixture_dir("tiny_f32_cls"));
    c.pooling = p;
    const BertEncoder enc(c);
    CHECK(enc.info().pooling == p);
    const auto out = enc.forward(f.ids.view(), f.mask.view());
    for (std::size_t r = 0; r < f.batch(); ++r) {
      const auto scale =
          p == BertPooling::mean_sqrt_len ? std::sqrt(static_cast<float>(f.length(r))) : 1.0F;
      float err = 0.0F;
      for (std::size_t j = 0; j < f.hidden.cols(); ++j) {
        err = std::max(err, std::fabs(out.pooled(r, j) - reference_pooled(f, p)(r, j) * scale));
      }
      CHECK(err <= 1e-4F * scale);
    }
  }
  // Without sentence-transformers files the default is mean pooling.
  FixtureCopy copy("tiny_f32_cls");
  fs::remove(copy.dir / "modules.json");
  const BertEncoder plain(config_for(copy.dir));
  CHECK(plain.info().pooling == BertPooling::mean);
  CHECK_FALSE(plain.info().checkpoint_normalizes);
}

TEST_CASE("BertEncoder: query and document prefixes and max_length", "[bert]") {
  BertEncoderConfig c = config_for(fixture_dir("tiny_f32_cls"));
  c.query_prefix = "hello ";
  c.document_prefix = "world ";
  c.max_length = 8;
  const BertEncoder enc(c);
  CHECK(enc.info().max_length == 8);
  const auto& tok = enc.tokenizer();
  CHECK(enc.tokenize("shoes", TextRole::query) == tok.encode("hello shoes"));
  CHECK(enc.tokenize("shoes", TextRole::document) == tok.encode("world shoes"));
  CHECK(enc.tokenize("running shoes for men running shoes for men").size() == 8);

  // A query encodes as the prefixed text would without prefixes.
  BertEncoderConfig plain_config = config_for(fixture_dir("tiny_f32_cls"));
  plain_config.max_length = 8;
  const BertEncoder plain(plain_config);
  const std::vector<std::string> q{"shoes"};
  const std::vector<std::string> joined{"hello shoes"};
  const auto a = enc.encode(q, TextRole::query);
  const auto b = plain.encode(joined);
  CHECK(max_row_error(a, 0, b, 0) <= 1e-6F);
  CHECK(enc.name() == "bert(layers=2,hidden=32,heads=4,compute=fp32,pooling=cls)");
}

// ---------------------------------------------------------------------------
// bf16 and int8 against fp32

namespace {

struct Agreement {
  double mean_token_cosine = 0.0;
  double min_pooled_cosine = 1.0;
};

Agreement agreement(const Fixture& f, const funnel::BertForwardResult& out) {
  Agreement a;
  std::size_t n = 0;
  const std::size_t h = f.hidden.cols();
  for (std::size_t r = 0; r < f.batch(); ++r) {
    for (std::size_t t = 0; t < f.length(r); ++t) {
      const std::size_t row = r * f.seq_len() + t;
      a.mean_token_cosine += cosine(out.hidden.data() + row * h, f.hidden.data() + row * h, h);
      ++n;
    }
    const auto& ref = f.meta["pooling"] == "cls" ? f.pooled_cls : f.pooled_mean;
    a.min_pooled_cosine =
        std::min(a.min_pooled_cosine, cosine(out.pooled.data() + r * h, ref.data() + r * h, h));
  }
  a.mean_token_cosine /= static_cast<double>(n);
  return a;
}

}  // namespace

TEST_CASE("BertEncoder bf16: mean cosine to fp32 >= 0.999", "[bert]") {
  if (!BertEncoder::cpu_supports(BertComputeType::bf16)) {
    WARN("skipped: this CPU has neither AVX512_BF16 nor AMX");
    return;
  }
  for (const char* name : kFixtures) {
    INFO(name);
    const Fixture f = load_fixture(name);
    const BertEncoder enc(config_for(fixture_dir(name), BertComputeType::bf16));
    CHECK(enc.info().compute == BertComputeType::bf16);
    const Agreement a = agreement(f, enc.forward(f.ids.view(), f.mask.view()));
    INFO("mean token cosine " << a.mean_token_cosine << ", min pooled cosine "
                              << a.min_pooled_cosine);
    CHECK(a.mean_token_cosine >= 0.999);
    CHECK(a.min_pooled_cosine >= 0.999);
  }
}

TEST_CASE("BertEncoder int8: mean cosine to fp32 >= 0.99", "[bert]") {
  if (!BertEncoder::cpu_supports(BertComputeType::int8)) {
    WARN("skipped: this CPU has neither AVX512_VNNI, AVX_VNNI nor AMX");
    return;
  }
  for (const char* name : kFixtures) {
    INFO(name);
    const Fixture f = load_fixture(name);
    const BertEncoder enc(config_for(fixture_dir(name), BertComputeType::int8));
    CHECK(enc.info().compute == BertComputeType::int8);
    const Agreement a = agreement(f, enc.forward(f.ids.view(), f.mask.view()));
    INFO("mean token cosine " << a.mean_token_cosine << ", min pooled cosine "
                              << a.min_pooled_cosine);
    CHECK(a.mean_token_cosine >= 0.99);
    CHECK(a.min_pooled_cosine >= 0.99);
  }
}

TEST_CASE("BertEncoder: automatic picks bf16 where the CPU has it, else fp32", "[bert]") {
  const BertEncoder enc(config_for(fixture_dir("tiny_f32_cls"), BertComputeType::automatic));
  CHECK(enc.info().compute == (BertEncoder::cpu_supports(BertComputeType::bf16)
                                   ? BertComputeType::bf16
                                   : BertComputeType::fp32));
}

// ---------------------------------------------------------------------------
// Threads

TEST_CASE("BertEncoder: two threads give the one-thread result and leave the caller's count",
          "[bert]") {
  const Fixture f = load_fixture("tiny_f16_mean_st");
  BertEncoderConfig c = config_for(fixture_dir("tiny_f16_mean_st"));
  const BertEncoder one(c);
  c.threads = 2;
  const BertEncoder two(c);
  const int before = omp_get_max_threads();
  omp_set_num_threads(3);
  const auto a = one.encode(f.inputs);
  CHECK(omp_get_max_threads() == 3);
  const auto b = two.encode(f.inputs);
  CHECK(omp_get_max_threads() == 3);
  omp_set_num_threads(before);
  for (std::size_t r = 0; r < f.batch(); ++r) CHECK(max_row_error(a, r, b, r) <= 1e-5F);
}

TEST_CASE("BertEncoder: concurrent encode calls give the single-thread results",
          "[bert][concurrency]") {
  const Fixture f = load_fixture("tiny_f32_cls");
  const BertEncoder enc(config_for(fixture_dir("tiny_f32_cls")));
  const Matrix<float> expected = enc.encode(f.inputs);
  constexpr int kThreads = 4;
  std::vector<float> worst(kThreads, 0.0F);
  std::vector<std::thread> pool;
  pool.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    pool.emplace_back([&, t] {
      for (int rep = 0; rep < 3; ++rep) {
        // Different subsets per thread, so batches of different shapes run at once.
        std::vector<std::string> texts(f.inputs.begin() + (t + rep) % 3, f.inputs.end());
        const Matrix<float> got = enc.encode(texts);
        const std::size_t skip = f.inputs.size() - texts.size();
        for (std::size_t r = 0; r < texts.size(); ++r) {
          worst[static_cast<std::size_t>(t)] = std::max(worst[static_cast<std::size_t>(t)],
                                                        max_row_error(got, r, expected, r + skip));
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  for (int t = 0; t < kThreads; ++t) CHECK(worst[static_cast<std::size_t>(t)] <= 1e-6F);
}

// ---------------------------------------------------------------------------
// Bad checkpoints and bad calls

TEST_CASE("BertEncoder: config validation names the field", "[bert]") {
  BertEncoderConfig c = config_for(fixture_dir("tiny_f32_cls"));
  auto check = [&](auto mutate, const char* field) {
    BertEncoderConfig bad = c;
    mutate(bad);
    const Error e = error_of([&] { bad.validate(); });
    CHECK(e.code() == ErrorCode::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains(field));
  };
  check([](BertEncoderConfig& b) { b.threads = 0; }, "threads");
  check([](BertEncoderConfig& b) { b.max_length = 1; }, "max_length");
  check([](BertEncoderConfig& b) { b.max_batch = 0; }, "max_batch");
  check([](BertEncoderConfig& b) { b.checkpoint_dir.clear(); }, "checkpoint_dir");
  check([](BertEncoderConfig& b) { b.query_prefix = "\xff"; }, "query_prefix");
  const Error e = error_of([] { BertEncoder enc(config_for("/nonexistent/bert")); });
  CHECK(e.code() == ErrorCode::io);
}

TEST_CASE("BertEncoder: damaged safetensors are clear errors", "[bert]") {
  FixtureCopy copy("tiny_f32_cls");
  const fs::path st = copy.dir / "model.safetensors";
  const std::string original = funnel::testing::read_bytes(st);

  SECTION("missing tensor") {
    rewrite_weights(copy.dir, [](auto& ts) {
      std::erase_if(
          ts, [](const auto& t) { return t.name == "bert.encoder.layer.1.output.dense.bias"; });
    });
    const Error e = error_of([&] { BertEncoder enc(config_for(copy.dir)); });
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("bert.encoder.layer.1.output.dense.bias"));
  }
  SECTION("wrong shape") {
    rewrite_weights(copy.dir, [](auto& ts) {
      for (auto& t : ts) {
        if (t.name == "bert.encoder.layer.0.intermediate.dense.weight") t.shape = {32, 128};
      }
    });
    const Error e = error_of([&] { BertEncoder enc(config_for(copy.dir)); });
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("bert.encoder.layer.0.intermediate.dense.weight") &&
                             Catch::Contains("[32, 128]") && Catch::Contains("expected [128, 32]"));
  }
  SECTION("integer dtype for a weight") {
    rewrite_weights(copy.dir, [](auto& ts) {
      for (auto& t : ts) {
        if (t.name == "bert.embeddings.LayerNorm.bias") t.dtype = funnel::TensorDType::i32;
      }
    });
    const Error e = error_of([&] { BertEncoder enc(config_for(copy.dir)); });
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(),
               Catch::Contains("bert.embeddings.LayerNorm.bias") && Catch::Contains("I32"));
  }
  SECTION("unknown dtype") {
    std::string bytes = original;
    const auto at = bytes.find("\"F32\"");
    REQUIRE(at != std::string::npos);
    bytes.replace(at, 5, "\"Q32\"");
    funnel::testing::write_bytes(st, bytes);
    const Error e = error_of([&] { BertEncoder enc(config_for(copy.dir)); });
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("Q32"));
  }
  SECTION("truncated data") {
    funnel::testing::write_bytes(st, std::string_view(original).substr(0, original.size() - 100));
    const Error e = error_of([&] { BertEncoder enc(config_for(copy.dir)); });
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("model.safetensors"));
  }
  SECTION("truncated header") {
    funnel::testing::write_bytes(st, std::string_view(original).substr(0, 40));
    const Error e = error_of([&] { BertEncoder enc(config_for(copy.dir)); });
    CHECK(e.code() == ErrorCode::format);
  }
  SECTION("missing file") {
    fs::remove(st);
    const Error e = error_of([&] { BertEncoder enc(config_for(copy.dir)); });
    CHECK(e.code() == ErrorCode::io);
    CHECK_THAT(e.what(), Catch::Contains("model.safetensors"));
  }
}

TEST_CASE("BertEncoder: a vocabulary smaller than the embedding table is an error", "[bert]") {
  FixtureCopy copy("tiny_f32_cls");
  const fs::path vocab = copy.dir / "vocab.txt";
  std::string text = funnel::testing::read_bytes(vocab);
  // Drop the last three lines (tokens 397..399).
  for (int i = 0; i < 3; ++i) text.erase(text.rfind('\n', text.size() - 2) + 1);
  funnel::testing::write_bytes(vocab, text);
  const Error e = error_of([&] { BertEncoder enc(config_for(copy.dir)); });
  CHECK(e.code() == ErrorCode::format);
  CHECK_THAT(e.what(),
             Catch::Contains("vocab.txt has 397 tokens") && Catch::Contains("vocab_size 400"));

  SECTION("config vocab_size that disagrees with the embedding rows") {
    FixtureCopy other("tiny_f32_cls");
    rewrite_weights(other.dir, [](auto& ts) {
      for (auto& t : ts) {
        if (t.name == "bert.embeddings.word_embeddings.weight") {
          t.shape = {200, 64};  // same bytes, other rows
        }
      }
    });
    const Error e2 = error_of([&] { BertEncoder enc(config_for(other.dir)); });
    CHECK(e2.code() == ErrorCode::format);
    CHECK_THAT(e2.what(), Catch::Contains("word_embeddings") && Catch::Contains("[200, 64]") &&
                              Catch::Contains("expected [400, 32]"));
  }
}

TEST_CASE("BertEncoder: an XLM-R SentencePiece checkpoint (multilingual-e5's layout)", "[bert]") {
  const BertEncoder enc(config_for(fixture_dir("tiny_spm_mean_st")));
  CHECK(enc.tokenizer().kind() == "sentencepiece");
  CHECK(enc.tokenizer().pad_id() == 1);
  // The table has rows past the tokenizer's last id (<mask>), as
  // multilingual-e5-small's 250,037 rows exceed XLM-R's 250,002 ids.
  CHECK(enc.tokenizer().vocab_size() == 162);
  CHECK(enc.info().vocab_size == 165);
  CHECK(BertEncoder(config_for(fixture_dir("tiny_f32_cls"))).tokenizer().kind() == "wordpiece");

  SECTION("more tokenizer ids than embedding rows") {
    FixtureCopy copy("tiny_spm_mean_st");
    edit_json(copy.dir / "config.json", [](nlohmann::json& j) { j["vocab_size"] = 161; });
    const Error e = error_of([&] { BertEncoder bad(config_for(copy.dir)); });
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("sentencepiece.bpe.model gives ids up to 161") &&
                             Catch::Contains("vocab_size 161"));
  }
  SECTION("a damaged SentencePiece model") {
    FixtureCopy copy("tiny_spm_mean_st");
    const fs::path model = copy.dir / "sentencepiece.bpe.model";
    const std::string bytes = funnel::testing::read_bytes(model);
    funnel::testing::write_bytes(model, bytes.substr(0, bytes.size() / 2));
    const Error e = error_of([&] { BertEncoder bad(config_for(copy.dir)); });
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("sentencepiece.bpe.model"));
  }
  SECTION("no tokenizer at all") {
    FixtureCopy copy("tiny_spm_mean_st");
    fs::remove(copy.dir / "sentencepiece.bpe.model");
    const Error e = error_of([&] { BertEncoder bad(config_for(copy.dir)); });
    CHECK(e.code() == ErrorCode::io);
    CHECK_THAT(e.what(), Catch::Contains("no tokenizer") && Catch::Contains("vocab.txt") &&
                             Catch::Contains("sentencepiece.bpe.model"));
  }
}

TEST_CASE("BertEncoder: an XLM-RoBERTa network (multilingual-e5-base, bge-m3's layout)", "[bert]") {
  const BertEncoder enc(config_for(fixture_dir("tiny_xlmr_cls")));
  const auto& info = enc.info();
  CHECK(info.model_type == "xlm-roberta");
  CHECK(info.tensor_prefix == "roberta.");
  CHECK(info.position_offset == 2);  // pad_token_id 1 + 1
  CHECK(info.max_positions == 66);
  CHECK(info.max_length == 64);
  CHECK(enc.tokenizer().kind() == "sentencepiece");
  CHECK(enc.name() == "xlm-roberta(layers=2,hidden=32,heads=4,compute=fp32,pooling=cls)");
  CHECK(BertEncoder(config_for(fixture_dir("tiny_f32_cls"))).info().position_offset == 0);

  // 64 tokens fit, 65 do not: the first two rows of the table are not positions.
  std::vector<std::vector<std::int32_t>> seqs{std::vector<std::int32_t>(64, 5)};
  CHECK(enc.forward(seqs).hidden.rows() == 64);
  seqs[0].push_back(5);
  const Error e = error_of([&] { (void)enc.forward(seqs); });
  CHECK(e.code() == ErrorCode::invalid_argument);
  CHECK_THAT(e.what(), Catch::Contains("65 tokens") && Catch::Contains("64 positions") &&
                           Catch::Contains("offset 2"));

  FixtureCopy copy("tiny_xlmr_cls");
  const fs::path cfg = copy.dir / "config.json";
  auto load_error = [&] { return error_of([&] { BertEncoder bad(config_for(copy.dir)); }); };
  SECTION("plain RoBERTa (byte-level BPE tokenizer) is refused") {
    edit_json(cfg, [](nlohmann::json& j) { j["model_type"] = "roberta"; });
    const Error u = load_error();
    CHECK(u.code() == ErrorCode::unsupported);
    CHECK_THAT(u.what(), Catch::Contains("\"roberta\"") && Catch::Contains("xlm-roberta"));
  }
  SECTION("a pad id that leaves no position") {
    edit_json(cfg, [](nlohmann::json& j) { j["pad_token_id"] = 65; });
    const Error f = load_error();
    CHECK(f.code() == ErrorCode::format);
    CHECK_THAT(f.what(), Catch::Contains("max_position_embeddings 66") &&
                             Catch::Contains("pad_token_id is 65"));
    edit_json(cfg, [](nlohmann::json& j) { j["pad_token_id"] = -1; });
    CHECK(load_error().code() == ErrorCode::format);
  }
  SECTION("tensors without the roberta. prefix name it") {
    edit_json(cfg, [](nlohmann::json& j) { j["model_type"] = "bert"; });
    const Error f = load_error();
    CHECK(f.code() == ErrorCode::format);
    CHECK_THAT(f.what(), Catch::Contains("\"bert.\" prefix"));
  }
}

TEST_CASE("BertEncoder: bad config.json and sentence-transformers files are clear errors",
          "[bert]") {
  FixtureCopy copy("tiny_f32_cls");
  const fs::path cfg = copy.dir / "config.json";
  auto load_error = [&] { return error_of([&] { BertEncoder enc(config_for(copy.dir)); }); };

  SECTION("heads do not divide hidden") {
    edit_json(cfg, [](auto& j) { j["num_attention_heads"] = 5; });
    const Error e = load_error();
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(),
               Catch::Contains("hidden_size 32 is not divisible by num_attention_heads 5"));
  }
  SECTION("missing field") {
    edit_json(cfg, [](auto& j) { j.erase("intermediate_size"); });
    const Error e = load_error();
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("config.json") && Catch::Contains("intermediate_size"));
  }
  SECTION("non-integer field") {
    edit_json(cfg, [](auto& j) { j["hidden_size"] = "32"; });
    const Error e = load_error();
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("hidden_size"));
  }
  SECTION("activation other than gelu") {
    edit_json(cfg, [](auto& j) { j["hidden_act"] = "relu"; });
    const Error e = load_error();
    CHECK(e.code() == ErrorCode::unsupported);
    CHECK_THAT(e.what(), Catch::Contains("relu"));
  }
  SECTION("relative positions") {
    edit_json(cfg, [](auto& j) { j["position_embedding_type"] = "relative_key"; });
    CHECK(load_error().code() == ErrorCode::unsupported);
  }
  SECTION("a size the tensors do not have") {
    edit_json(cfg, [](auto& j) { j["intermediate_size"] = 64; });
    const Error e = load_error();
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("intermediate.dense.weight") &&
                             Catch::Contains("expected [64, 32]"));
  }
  SECTION("not JSON") {
    funnel::testing::write_bytes(cfg, "{\"hidden_size\": 32,");
    const Error e = load_error();
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("config.json"));
  }
  SECTION("a Dense module") {
    edit_json(copy.dir / "modules.json", [](auto& j) {
      j.push_back({{"idx", 2},
                   {"name", "2"},
                   {"path", "2_Dense"},
                   {"type", "sentence_transformers.models.Dense"}});
    });
    const Error e = load_error();
    CHECK(e.code() == ErrorCode::unsupported);
    CHECK_THAT(e.what(), Catch::Contains("Dense"));
  }
  SECTION("two pooling modes") {
    edit_json(copy.dir / "1_Pooling" / "config.json",
              [](auto& j) { j["pooling_mode_mean_tokens"] = true; });
    CHECK(load_error().code() == ErrorCode::unsupported);
  }
}

TEST_CASE("BertEncoder: bad calls are clear errors", "[bert]") {
  const Fixture f = load_fixture("tiny_f32_cls");
  const BertEncoder enc(config_for(fixture_dir("tiny_f32_cls")));
  Matrix<std::int64_t> ids = f.ids;
  Matrix<std::int64_t> mask = f.mask;
  SECTION("id out of range") {
    ids(1, 2) = 400;
    const Error e = error_of([&] { (void)enc.forward(ids.view(), mask.view()); });
    CHECK(e.code() == ErrorCode::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("ids[1][2]") && Catch::Contains("400"));
  }
  SECTION("left padding") {
    mask(0, 0) = 0;
    const Error e = error_of([&] { (void)enc.forward(ids.view(), mask.view()); });
    CHECK_THAT(e.what(), Catch::Contains("mask row 0"));
  }
  SECTION("shape mismatch") {
    const Matrix<std::int64_t> small(1, 3, 1);
    CHECK(error_of([&] { (void)enc.forward(ids.view(), small.view()); }).code() ==
          ErrorCode::invalid_argument);
  }
  SECTION("encode output of the wrong shape") {
    Matrix<float> out(2, 31);
    const std::vector<std::string_view> texts{"a", "b"};
    CHECK(error_of([&] { enc.encode(texts, out.view()); }).code() == ErrorCode::invalid_argument);
  }
  SECTION("invalid UTF-8 names the text") {
    Matrix<float> out(2, 32, 7.0F);
    const std::vector<std::string_view> texts{"fine", "bad \xc3"};
    const Error e = error_of([&] { enc.encode(texts, out.view()); });
    CHECK(e.code() == ErrorCode::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("1"));
    CHECK(out(0, 0) == 7.0F);  // untouched
  }
}

// ---------------------------------------------------------------------------
// Kernels: the AVX-512 paths against the scalar ones and against formulas

TEST_CASE("BertEncoder kernels: LayerNorm, softmax, bf16 and u8 agree across paths",
          "[bert][kernels]") {
  namespace k = funnel::detail::bert;
  const k::KernelIsa cpu = k::detect_isa();
  const k::KernelIsa none{};
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0F, 3.0F);
  for (const std::size_t n : {1U, 5U, 16U, 31U, 64U, 77U}) {
    INFO("n = " << n);
    std::vector<float> x(n), gamma(n), beta(n);
    for (std::size_t i = 0; i < n; ++i) {
      x[i] = normal(rng) + 2.0F;
      gamma[i] = 1.0F + 0.1F * normal(rng);
      beta[i] = 0.1F * normal(rng);
    }
    // LayerNorm by the formula, in double.
    double mean = 0.0;
    for (float v : x) mean += v;
    mean /= static_cast<double>(n);
    double var = 0.0;
    for (float v : x) var += (v - mean) * (v - mean);
    var /= static_cast<double>(n);
    for (const k::KernelIsa isa : {none, cpu}) {
      std::vector<float> y = x;
      std::vector<std::uint16_t> y16(n);
      float lo = 0.0F;
      float hi = 0.0F;
      k::layer_norm(isa, y.data(), n, gamma.data(), beta.data(), 1e-12F, y16.data(), &lo, &hi);
      for (std::size_t i = 0; i < n; ++i) {
        const double want = (x[i] - mean) / std::sqrt(var + 1e-12) * gamma[i] + beta[i];
        CHECK(y[i] == Approx(want).margin(1e-4));
        if (isa.avx512_bf16 || !isa.avx512) CHECK(y16[i] == k::to_bf16(y[i]));
        CHECK(lo <= y[i]);
        CHECK(hi >= y[i]);
      }
      // Softmax by the formula, as f32 (in place) and as bf16.
      std::vector<float> s = x;
      k::softmax(isa, s.data(), n, 0.7F, nullptr);
      std::vector<float> scratch = x;
      std::vector<std::uint16_t> s16(n);
      k::softmax(isa, scratch.data(), n, 0.7F, s16.data());
      double denom = 0.0;
      double top = -1e30;
      for (float v : x) top = std::max(top, 0.7 * v);
      for (float v : x) denom += std::exp(0.7 * v - top);
      for (std::size_t i = 0; i < n; ++i) {
        const double want = std::exp(0.7 * x[i] - top) / denom;
        CHECK(s[i] == Approx(want).epsilon(1e-5).margin(1e-7));
        CHECK(std::fabs(k::from_bf16(s16[i]) - want) <= want / 128.0 + 1e-7);
      }
      // u8 quantization round-trips within half a step.
      float qlo = 0.0F;
      float qhi = 0.0F;
      k::min_max(isa, x.data(), n, &qlo, &qhi);
      CHECK(qlo == std::min(0.0F, *std::min_element(x.begin(), x.end())));
      CHECK(qhi == std::max(0.0F, *std::max_element(x.begin(), x.end())));
      const k::U8Quant q = k::u8_quant_for(qlo, qhi);
      std::vector<std::uint8_t> qx(n);
      k::quantize_u8(isa, x.data(), n, q, qx.data());
      for (std::size_t i = 0; i < n; ++i) {
        const float back = q.scale * static_cast<float>(qx[i] - q.zero_point);
        CHECK(std::fabs(back - x[i]) <= 0.5F * q.scale * 1.001F);
      }
      // The same from bf16 storage equals quantizing the decoded values.
      std::vector<std::uint16_t> xb(n);
      std::vector<float> decoded(n);
      for (std::size_t i = 0; i < n; ++i) {
        xb[i] = k::to_bf16(x[i]);
        decoded[i] = k::from_bf16(xb[i]);
      }
      float blo = 0.0F;
      float bhi = 0.0F;
      k::min_max(isa, xb.data(), n, &blo, &bhi);
      CHECK(blo == std::min(0.0F, *std::min_element(decoded.begin(), decoded.end())));
      CHECK(bhi == std::max(0.0F, *std::max_element(decoded.begin(), decoded.end())));
      std::vector<std::uint8_t> qb(n);
      std::vector<std::uint8_t> qd(n);
      k::quantize_u8(isa, xb.data(), n, q, qb.data());
      k::quantize_u8(none, decoded.data(), n, q, qd.data());
      CHECK(qb == qd);
    }
  }
  // bf16 rounding by hand: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 -> even (1).
  CHECK(k::to_bf16(1.0F + 1.0F / 256.0F) == 0x3F80);
  CHECK(k::to_bf16(1.0F + 3.0F / 256.0F) == 0x3F82);
  CHECK(k::from_bf16(0x3F80) == 1.0F);
}

TEST_CASE("BertEncoder kernels: transposed_epilogue against double precision", "[bert][kernels]") {
  namespace k = funnel::detail::bert;
  const k::KernelIsa cpu = k::detect_isa();
  const k::KernelIsa none{};
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  const double sqrt_half = std::sqrt(0.5);
  // transposed_epilogue: out[m, n] (op)= yt[n * ld + m] + bias[n], against a
  // loop over the same values, for counts around its 16 x 16 tiles (ld
  // larger than rows, as a chunk's padded rows make it) and two column
  // ranges as threads split them.
  for (const std::size_t rows : {1U, 7U, 16U, 17U, 33U, 128U}) {
    for (const std::size_t n : {1U, 15U, 16U, 17U, 40U, 64U}) {
      const std::size_t ld = rows + 5;
      std::vector<float> yt(n * ld), bias(n), base(rows * n);
      for (float& v : yt) v = 3.0F * normal(rng);
      for (float& v : bias) v = normal(rng);
      for (float& v : base) v = normal(rng);
      for (const k::LinearEpilogue ep :
           {k::LinearEpilogue::store, k::LinearEpilogue::gelu, k::LinearEpilogue::add}) {
        for (const k::KernelIsa isa : {none, cpu}) {
          INFO("transposed_epilogue rows " << rows << " n " << n << " epilogue "
                                           << static_cast<int>(ep) << " avx512 " << isa.avx512);
          std::vector<float> out = base;
          const std::size_t split = n / 2 + (n > 2 ? 1 : 0);
          k::transposed_epilogue(isa, yt.data(), ld, rows, bias.data(), out.data(), n, 0, split,
                                 ep);
          k::transposed_epilogue(isa, yt.data(), ld, rows, bias.data(), out.data(), n, split, n,
                                 ep);
          std::size_t wrong = 0;
          for (std::size_t m = 0; m < rows; ++m) {
            for (std::size_t c = 0; c < n; ++c) {
              double v = static_cast<double>(yt[c * ld + m] + bias[c]);
              if (ep == k::LinearEpilogue::gelu) v = 0.5 * v * (1.0 + std::erf(v * sqrt_half));
              if (ep == k::LinearEpilogue::add) v += base[m * n + c];
              if (std::fabs(out[m * n + c] - v) > 5e-7 * (1.0 + std::fabs(v))) ++wrong;
            }
          }
          CHECK(wrong == 0);
        }
      }
    }
  }
  // By hand: yt = [[1, 2], [3, 4], [5, 6]] (n = 3, rows = 2), bias 10, 20,
  // 30 -> out = [[11, 23, 35], [12, 24, 36]].
  {
    const std::vector<float> yt32 = {1, 2, 3, 4, 5, 6};
    const std::vector<float> b3 = {10, 20, 30};
    for (const k::KernelIsa isa : {none, cpu}) {
      std::vector<float> out(6, -1.0F);
      k::transposed_epilogue(isa, yt32.data(), 2, 2, b3.data(), out.data(), 3, 0, 3,
                             k::LinearEpilogue::store);
      CHECK(out == std::vector<float>{11, 23, 35, 12, 24, 36});
    }
  }
  // The GELU epilogue over a grid of values (one row, bias 0: out = gelu(yt)),
  // far tails included.
  std::vector<float> grid;
  for (int i = -32; i <= 32; ++i) grid.push_back(0.37F * static_cast<float>(i));
  const std::vector<float> zero(grid.size(), 0.0F);
  for (const k::KernelIsa isa : {none, cpu}) {
    std::vector<float> out(grid.size());
    k::transposed_epilogue(isa, grid.data(), 1, 1, zero.data(), out.data(), grid.size(), 0,
                           grid.size(), k::LinearEpilogue::gelu);
    for (std::size_t i = 0; i < grid.size(); ++i) {
      const double v = grid[i];
      INFO("v " << v << " avx512 " << isa.avx512);
      CHECK(out[i] ==
            Approx(0.5 * v * (1.0 + std::erf(v * sqrt_half))).margin(5e-7 * (1 + std::fabs(v))));
    }
  }
  // GELU by hand: gelu(0) = 0, gelu(1) = Phi(1) = 0.8413447, gelu(-3) = -3 Phi(-3).
  CHECK(k::gelu_erf(0.0F) == 0.0F);
  CHECK(k::gelu_erf(1.0F) == Approx(0.8413447460685429).epsilon(1e-6));
  CHECK(k::gelu_erf(-3.0F) == Approx(-3.0 * 0.0013498980316301).epsilon(1e-5));
}

TEST_CASE("BertEncoder kernels: small_linear against double precision", "[bert][kernels]") {
  namespace k = funnel::detail::bert;
  const k::KernelIsa cpu = k::detect_isa();
  const k::KernelIsa none{};
  std::mt19937 rng(12);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  const double sqrt_half = std::sqrt(0.5);
  // y[t, n] (op)= x[t, :] . w[n, :] + bias[n]: token counts around the
  // kernel's blocks of 8 tokens, output counts around its blocks of 4 rows
  // (and past the prefetch distance), inner sizes around 16 lanes; two output
  // ranges, as threads split them. Bound: float sums of k products of
  // unit-normal values, against double.
  for (const std::size_t tokens : {1U, 3U, 8U, 9U, 16U, 23U, 32U}) {
    for (const std::size_t n : {1U, 3U, 4U, 13U, 40U}) {
      for (const std::size_t kk : {5U, 16U, 37U, 384U}) {
        std::vector<float> w(n * kk), x(tokens * kk), bias(n), base(tokens * n);
        for (float& v : w) v = normal(rng);
        for (float& v : x) v = normal(rng);
        for (float& v : bias) v = normal(rng);
        for (float& v : base) v = normal(rng);
        for (const k::LinearEpilogue ep :
             {k::LinearEpilogue::store, k::LinearEpilogue::gelu, k::LinearEpilogue::add}) {
          for (const k::KernelIsa isa : {none, cpu}) {
            INFO("small_linear tokens " << tokens << " n " << n << " k " << kk << " epilogue "
                                        << static_cast<int>(ep) << " avx512 " << isa.avx512);
            std::vector<float> y = base;
            const std::size_t split = n / 2 + (n > 2 ? 1 : 0);
            k::small_linear(isa, w.data(), kk, x.data(), tokens, bias.data(), y.data(), n, 0, split,
                            ep);
            k::small_linear(isa, w.data(), kk, x.data(), tokens, bias.data(), y.data(), n, split, n,
                            ep);
            std::size_t wrong = 0;
            for (std::size_t t = 0; t < tokens; ++t) {
              for (std::size_t c = 0; c < n; ++c) {
                double v = bias[c];
                for (std::size_t i = 0; i < kk; ++i) {
                  v += static_cast<double>(x[t * kk + i]) * static_cast<double>(w[c * kk + i]);
                }
                if (ep == k::LinearEpilogue::gelu) v = 0.5 * v * (1.0 + std::erf(v * sqrt_half));
                if (ep == k::LinearEpilogue::add) v += base[t * n + c];
                const double bound = 1e-7 * static_cast<double>(kk) + 5e-7 * (1.0 + std::fabs(v));
                if (std::fabs(y[t * n + c] - v) > bound) ++wrong;
              }
            }
            CHECK(wrong == 0);
          }
        }
      }
    }
  }
  // By hand: w = [[1, 2], [3, 4], [5, 6]] (n = 3, k = 2), x = [[1, 1], [2, -1]],
  // bias 10, 20, 30 -> y = [[13, 27, 41], [10, 22, 34]]; add onto ones.
  {
    const std::vector<float> w32 = {1, 2, 3, 4, 5, 6};
    const std::vector<float> x22 = {1, 1, 2, -1};
    const std::vector<float> b3 = {10, 20, 30};
    for (const k::KernelIsa isa : {none, cpu}) {
      std::vector<float> y(6, -1.0F);
      k::small_linear(isa, w32.data(), 2, x22.data(), 2, b3.data(), y.data(), 3, 0, 3,
                      k::LinearEpilogue::store);
      CHECK(y == std::vector<float>{13, 27, 41, 10, 22, 34});
      std::vector<float> acc(6, 1.0F);
      k::small_linear(isa, w32.data(), 2, x22.data(), 2, b3.data(), acc.data(), 3, 0, 3,
                      k::LinearEpilogue::add);
      CHECK(acc == std::vector<float>{14, 28, 42, 11, 23, 35});
    }
  }
}
