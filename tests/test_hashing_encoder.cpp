// SPDX-License-Identifier: Apache-2.0
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/error.hpp"
#include "funnel/hashing_encoder.hpp"

using funnel::Error;
using funnel::ErrorCode;
using funnel::HashingEncoder;
using funnel::HashingEncoderConfig;
using funnel::Matrix;
using funnel::TextRole;

namespace {

std::vector<float> encode_one(const HashingEncoder& enc, std::string_view text) {
  const std::string_view texts[] = {text};
  std::vector<float> row(enc.dim());
  enc.encode(texts, funnel::MatrixView<float>(row.data(), 1, enc.dim()));
  return row;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

double norm(const std::vector<float>& a) { return std::sqrt(dot(a, a)); }

std::vector<float> nonzero_abs_sorted(const std::vector<float>& v) {
  std::vector<float> out;
  for (const float x : v) {
    if (x != 0.0F) out.push_back(std::fabs(x));
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A config with every range disabled; tests enable what they need. A large
// dim makes bucket collisions between a handful of features vanishingly rare.
HashingEncoderConfig bare_config() {
  HashingEncoderConfig c;
  c.dim = std::size_t{1} << 20;
  c.cjk_min_n = 0;
  c.word_min_n = 0;
  c.char_min_n = 0;
  c.sublinear_tf = false;
  return c;
}

// Requires that `fn` throws funnel::Error with `code` and a message containing `part`.
template <class Fn>
void require_error(Fn&& fn, ErrorCode code, const std::string& part) {
  try {
    fn();
  } catch (const Error& e) {
    INFO("message: " << e.what());
    CHECK(e.code() == code);
    CHECK(std::string(e.what()).find(part) != std::string::npos);
    return;
  }
  FAIL("expected funnel::Error containing '" << part << "'");
}

}  // namespace

TEST_CASE("HashingEncoder: paraphrases are closer than unrelated products", "[hashing_encoder]") {
  const HashingEncoder enc;  // default config
  struct Triple {
    const char* anchor;
    const char* paraphrase;
    const char* unrelated;
  };
  const Triple triples[] = {
      {"Apple iPhone 15 Pro 256GB 黑色 手机", "iPhone 15 Pro 手机 黑色", "儿童 运动鞋 透气"},
      {"女士 真丝 连衣裙 夏季", "夏季 连衣裙 女 真丝", "不锈钢 保温杯"},
      {"Men's running shoes, lightweight", "lightweight running shoe for men",
       "stainless steel water bottle"},
      {"Wireless Bluetooth headphones with noise cancelling",
       "noise-cancelling wireless headphones (Bluetooth 5.3)", "organic green tea leaves 500g"},
      {"Nike Air Max 270 男子 跑步鞋", "耐克 Air Max 270 男款 跑步鞋", "Apple AirPods 无线耳机"},
      {"小米 电动牙刷 T300 声波", "Xiaomi 小米 声波 电动牙刷", "宜家 实木 书架"},
      {"ワイヤレス イヤホン Bluetooth", "Bluetooth ワイヤレスイヤホン 防水", "ステンレス 水筒"},
  };
  constexpr double kMargin = 0.3;
  for (const auto& t : triples) {
    const auto a = encode_one(enc, t.anchor);
    const double similar = dot(a, encode_one(enc, t.paraphrase));
    const double dissimilar = dot(a, encode_one(enc, t.unrelated));
    INFO(t.anchor << " | similar " << similar << " | dissimilar " << dissimilar);
    CHECK(similar > dissimilar + kMargin);
  }
}

TEST_CASE("HashingEncoder: hand-computed vectors", "[hashing_encoder]") {
  HashingEncoderConfig c = bare_config();
  c.word_min_n = 1;
  c.word_max_n = 1;

  SECTION("a single word gives one entry of +-1") {
    for (const bool sublinear : {false, true}) {
      c.sublinear_tf = sublinear;
      const auto v = encode_one(HashingEncoder(c), "hello");
      const auto nz = nonzero_abs_sorted(v);
      REQUIRE(nz.size() == 1);
      CHECK(nz[0] == Approx(1.0F));
    }
  }
  SECTION("'x x y' with raw counts: x has tf 2, y tf 1") {
    c.sublinear_tf = false;
    const auto nz = nonzero_abs_sorted(encode_one(HashingEncoder(c), "x x y"));
    REQUIRE(nz.size() == 2);
    CHECK(nz[0] == Approx(1.0 / std::sqrt(5.0)));
    CHECK(nz[1] == Approx(2.0 / std::sqrt(5.0)));
  }
  SECTION("'x x y' with sublinear tf: x has log(3), y log(2)") {
    c.sublinear_tf = true;
    const auto nz = nonzero_abs_sorted(encode_one(HashingEncoder(c), "x x y"));
    REQUIRE(nz.size() == 2);
    const double norm_xy = std::hypot(std::log(3.0), std::log(2.0));
    CHECK(nz[0] == Approx(std::log(2.0) / norm_xy));
    CHECK(nz[1] == Approx(std::log(3.0) / norm_xy));
  }
  SECTION("kind weights: word 1.0 and two boundary-marked char 3-grams of 0.5") {
    c.char_min_n = 3;
    c.char_max_n = 3;
    c.word_weight = 1.0F;
    c.char_weight = 0.5F;
    // "ab" -> word "ab" (weight 1); "<ab>" -> "<ab", "ab>" (weight 0.5 each).
    const auto nz = nonzero_abs_sorted(encode_one(HashingEncoder(c), "ab"));
    REQUIRE(nz.size() == 3);
    const double n = std::sqrt(1.0 + 0.25 + 0.25);
    CHECK(nz[0] == Approx(0.5 / n));
    CHECK(nz[1] == Approx(0.5 / n));
    CHECK(nz[2] == Approx(1.0 / n));
  }
  SECTION("a word and a char n-gram with the same bytes are distinct features") {
    c.char_min_n = 4;
    c.char_max_n = 4;
    // Both the word unigram and the one char 4-gram of "ab" are the bytes
    // "<ab>". Were the kinds not separated in the hash, they would merge into
    // one feature of count 2.
    const auto nz = nonzero_abs_sorted(encode_one(HashingEncoder(c), "ab"));
    REQUIRE(nz.size() == 2);
    const double n = std::sqrt(1.0 + 0.25);
    CHECK(nz[0] == Approx(0.5 / n));
    CHECK(nz[1] == Approx(1.0 / n));
  }
  SECTION("char n-gram counts of one word") {
    c.word_min_n = 0;
    c.char_min_n = 2;
    c.char_max_n = 3;
    // "<abcd>" has 6 code points: five 2-grams and four 3-grams, all distinct.
    const auto nz = nonzero_abs_sorted(encode_one(HashingEncoder(c), "abcd"));
    REQUIRE(nz.size() == 9);
    for (const float x : nz) CHECK(x == Approx(1.0 / 3.0));
  }
  SECTION("CJK character n-grams stay within a run") {
    c.word_min_n = 0;
    c.cjk_min_n = 1;
    c.cjk_max_n = 2;
    // One run of 4: four 1-grams and three 2-grams.
    CHECK(nonzero_abs_sorted(encode_one(HashingEncoder(c), "黑色手机")).size() == 7);
    // Two runs of 2: four 1-grams and two 2-grams (no "色手").
    CHECK(nonzero_abs_sorted(encode_one(HashingEncoder(c), "黑色 手机")).size() == 6);
  }
  SECTION("word bigrams span punctuation but not CJK runs") {
    c.word_min_n = 2;
    c.word_max_n = 2;
    const auto across_punct = nonzero_abs_sorted(encode_one(HashingEncoder(c), "red, shoes!"));
    REQUIRE(across_punct.size() == 1);
    CHECK(across_punct[0] == Approx(1.0F));
    // cjk features are disabled; the CJK run still breaks the word sequence.
    const auto v = encode_one(HashingEncoder(c), "red 红色 shoes");
    CHECK(norm(v) == 0.0);
    CHECK(nonzero_abs_sorted(encode_one(HashingEncoder(c), "red shoes 红色 big")).size() == 1);
  }
}

TEST_CASE("HashingEncoder: repeating every feature k times leaves the vector unchanged",
          "[hashing_encoder]") {
  // With word unigrams only, the text repeated 3 times has every count
  // multiplied by 3; tf scales uniformly (3c, or log(1 + 3) for c = 1 under
  // sublinear tf), so after normalisation the vectors agree. Two thousand
  // distinct words also exercise the counting table far past its first size.
  std::string once;
  for (int i = 0; i < 2000; ++i) {
    once += 'w';
    once += std::to_string(i);
    once += ' ';
  }
  const std::string thrice = once + once + once;
  for (const bool sublinear : {false, true}) {
    HashingEncoderConfig c = bare_config();
    c.dim = 4096;
    c.word_min_n = 1;
    c.word_max_n = 1;
    c.sublinear_tf = sublinear;
    const HashingEncoder enc(c);
    const auto a = encode_one(enc, once);
    const auto b = encode_one(enc, thrice);
    CHECK(dot(a, b) == Approx(1.0).epsilon(1e-6));
    CHECK(nonzero_abs_sorted(a).size() > 1000);
  }
}

TEST_CASE("HashingEncoder: normalisation equivalences", "[hashing_encoder]") {
  const HashingEncoder enc;
  auto same = [&](std::string_view a, std::string_view b) {
    INFO(a << " vs " << b);
    const auto va = encode_one(enc, a);
    CHECK(norm(va) == Approx(1.0));
    CHECK(va == encode_one(enc, b));
  };
  same("ＡＢＣ１２３", "abc123");  // full-width forms
  same("Café", "cafe");            // precomposed accent, non-ASCII vs ASCII path
  same("CAFE\xCC\x81", "cafe");    // E + combining acute (U+0301)
  same("Crème Brûlée", "creme brulee");
  same("STRASSE", "straße");                  // full case folding
  same("ﬁle", "file");                        // ligature
  same("ｶﾀｶﾅ", "カタカナ");                   // half-width katakana
  same("ｶﾞｰﾑ", "ガーム");                     // half-width voicing mark recomposes
  same("soft\xC2\xADware", "software");       // soft hyphen is ignorable
  same("iPhone 15 Pro", "IPHONE   15\tpro");  // case and separator runs
  same("Hello, World! 123", "Hello, World! 123 \xE2\x80\x94");  // trailing em dash adds nothing
  // Kana voicing is meaningful and must not be stripped like an accent.
  CHECK(encode_one(enc, "ガ") != encode_one(enc, "カ"));
  CHECK(encode_one(enc, "cafe") != encode_one(enc, "cafes"));
}

TEST_CASE("HashingEncoder: determinism, seeds, batching, norms", "[hashing_encoder]") {
  const std::vector<std::string> texts = {"Apple iPhone 15 Pro 256GB 黑色 手机",
                                          "",
                                          "!!! ... ---",
                                          "女士 真丝 连衣裙 夏季",
                                          "Men's running shoes, lightweight",
                                          "x",
                                          "   ",
                                          "Крем для рук 50 мл",
                                          "ワイヤレス イヤホン",
                                          "हिंदी किताब"};
  const HashingEncoder a;
  const HashingEncoder b;
  const Matrix<float> ma = a.encode(texts);
  const Matrix<float> mb = b.encode(texts);
  REQUIRE(ma.rows() == texts.size());
  REQUIRE(ma.cols() == a.dim());
  CHECK(ma.values() == mb.values());  // same config, different instances

  SECTION("batch equals one by one") {
    for (std::size_t i = 0; i < texts.size(); ++i) {
      const auto one = encode_one(a, texts[i]);
      const auto row = ma.row(i);
      CHECK(std::vector<float>(row.begin(), row.end()) == one);
    }
  }
  SECTION("unit norm, zero rows for texts without features") {
    for (std::size_t i = 0; i < texts.size(); ++i) {
      const auto row = ma.row(i);
      const double n = norm(std::vector<float>(row.begin(), row.end()));
      INFO("text " << i << ": " << texts[i]);
      const bool featureless = i == 1 || i == 2 || i == 6;
      if (featureless) {
        CHECK(n == 0.0);
      } else {
        CHECK(n == Approx(1.0).epsilon(1e-5));
      }
    }
  }
  SECTION("different seeds give different vectors") {
    HashingEncoderConfig c;
    c.seed = 12345;
    const HashingEncoder other(c);
    const auto v1 = encode_one(a, "Apple iPhone 15 Pro");
    const auto v2 = encode_one(other, "Apple iPhone 15 Pro");
    CHECK(v1 != v2);
    // Unrelated hashings are near-orthogonal, not merely permuted.
    CHECK(std::fabs(dot(v1, v2)) < 0.5);
  }
  SECTION("role is ignored") {
    const Matrix<float> mq = a.encode(texts, TextRole::query);
    CHECK(mq.values() == ma.values());
  }
  SECTION("name and dim") {
    HashingEncoderConfig c;
    c.dim = 64;
    const HashingEncoder e(c);
    CHECK(e.dim() == 64);
    CHECK(e.name() == "hashing(dim=64)");
    CHECK(e.encode(texts).cols() == 64);
  }
}

TEST_CASE("HashingEncoder: errors", "[hashing_encoder]") {
  const HashingEncoder enc;

  SECTION("invalid UTF-8 names the text index and byte offset") {
    const std::string bad_inputs[] = {"ok \xC3\x28", "ok \xE4\xB8", "ok \xC0\xAF",
                                      "ok \xED\xA0\x80" /* surrogate */};
    for (const auto& bad : bad_inputs) {
      const std::string_view texts[] = {"fine", "also fine", bad};
      std::vector<float> out(3 * enc.dim(), 7.0F);
      require_error(
          [&] {
            enc.encode(texts, {out.data(), 3, enc.dim()});
          },
          ErrorCode::invalid_argument, "texts[2]");
      require_error(
          [&] {
            enc.encode(texts, {out.data(), 3, enc.dim()});
          },
          ErrorCode::invalid_argument, "byte offset 3");
      // Nothing written before the bad text was found.
      CHECK(std::all_of(out.begin(), out.end(), [](float x) { return x == 7.0F; }));
    }
  }
  SECTION("wrong output shape") {
    const std::string_view texts[] = {"a", "b"};
    std::vector<float> out(3 * enc.dim());
    require_error(
        [&] {
          enc.encode(texts, {out.data(), 3, enc.dim()});
        },
        ErrorCode::invalid_argument, "must be 2 x 256");
    require_error(
        [&] {
          enc.encode(texts, {out.data(), 2, 128});
        },
        ErrorCode::invalid_argument, "got 2 x 128");
  }
  SECTION("invalid configs") {
    auto bad = [](auto mutate, const std::string& part) {
      HashingEncoderConfig c;
      mutate(c);
      require_error([&] { c.validate(); }, ErrorCode::invalid_argument, part);
      require_error([&] { HashingEncoder e(c); }, ErrorCode::invalid_argument, part);
    };
    bad([](HashingEncoderConfig& c) { c.dim = 0; }, "dim must be in [1, ");
    bad([](HashingEncoderConfig& c) { c.dim = HashingEncoderConfig::kMaxDim + 1; }, "dim");
    bad([](HashingEncoderConfig& c) { c.word_min_n = 3; },
        "word_min_n (3) must be <= word_max_n (2)");
    bad([](HashingEncoderConfig& c) { c.cjk_max_n = 0; }, "cjk_min_n (1) must be <= cjk_max_n (0)");
    bad([](HashingEncoderConfig& c) { c.char_max_n = 99; }, "char_max_n must be <= 16");
    bad([](HashingEncoderConfig& c) { c.char_weight = -0.5F; }, "char_weight");
    bad([](HashingEncoderConfig& c) { c.word_weight = std::nanf(""); }, "word_weight");
    bad(
        [](HashingEncoderConfig& c) {
          c.cjk_min_n = 0;
          c.word_weight = 0.0F;
          c.char_min_n = 0;
        },
        "enables no feature");
    // Disabling a range by min_n = 0 is valid whatever its max_n.
    HashingEncoderConfig ok;
    ok.char_min_n = 0;
    ok.char_max_n = 99;
    CHECK_NOTHROW(ok.validate());
  }
}

TEST_CASE("HashingEncoder: concurrent encodes agree", "[hashing_encoder][concurrency]") {
  const HashingEncoder enc;
  std::vector<std::string> texts;
  texts.reserve(400);
  const char* bases[] = {"Apple iPhone 15 Pro 256GB 黑色 手机", "Men's running shoes, lightweight",
                         "女士 真丝 连衣裙 夏季", "Café crème ＡＢＣ", "ワイヤレス イヤホン"};
  for (int i = 0; i < 400; ++i)
    texts.push_back(std::string(bases[i % 5]) + " " + std::to_string(i));
  const Matrix<float> expected = enc.encode(texts);

  constexpr int kThreads = 4;
  std::vector<Matrix<float>> results(kThreads);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep) results[t] = enc.encode(texts);
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& r : results) CHECK(r.values() == expected.values());
}
