// SPDX-License-Identifier: Apache-2.0
// SentencePieceTokenizer (XLM-R's tokenizer) on the committed fixture
// tests/data/bert/tiny_spm_mean_st (tools/bert_fixture/make_spm_fixture.py:
// a unigram model trained by SentencePiece, ids from the script's own
// XLM-R mapping). Expected piece ids below were read from the model with
// Python's sentencepiece (piece_to_id), so the +1 shift and the specials are
// checked against numbers this code did not produce.

#include <cstdint>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/error.hpp"
#include "funnel/sentencepiece_tokenizer.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using funnel::Error;
using funnel::ErrorCode;
using funnel::SentencePieceTokenizer;
using funnel::testing::error_of;

namespace {

fs::path fixture_dir() { return fs::path(FUNNEL_TEST_DATA_DIR) / "bert" / "tiny_spm_mean_st"; }

// SentencePiece ids (Python: sp.piece_to_id) of pieces of the fixture's model.
constexpr std::int32_t kSpShoes = 12;    // "▁shoes"
constexpr std::int32_t kSpSpace = 3;     // "▁"
constexpr std::int32_t kSpWorld = 13;    // "▁world"
constexpr std::int32_t kSpCafe = 81;     // "▁Café"
constexpr std::int32_t kSpBeijing = 46;  // "▁北京"
constexpr std::size_t kPieces = 160;

}  // namespace

TEST_CASE("SentencePieceTokenizer: XLM-R's id mapping, written by hand", "[tokenizer][spm]") {
  const auto tok = SentencePieceTokenizer::load(fixture_dir());
  CHECK(tok.kind() == "sentencepiece");
  CHECK(tok.pieces() == kPieces);
  CHECK(tok.vocab_size() == kPieces + 2);
  CHECK(tok.mask_id() == static_cast<std::int32_t>(kPieces) + 1);
  CHECK(tok.max_length() == 64);  // tokenizer_config.json's model_max_length
  CHECK(tok.pad_id() == 1);

  // fairseq's specials, then every piece one place later than in SentencePiece.
  CHECK(tok.id_of("<s>") == 0);
  CHECK(tok.id_of("<pad>") == 1);
  CHECK(tok.id_of("</s>") == 2);
  CHECK(tok.id_of("<unk>") == 3);
  CHECK(tok.id_of("<mask>") == 161);
  CHECK(tok.id_of("\u2581shoes") == kSpShoes + 1);
  CHECK(tok.id_of("\u2581") == kSpSpace + 1);
  CHECK(tok.id_of("not-a-piece") == -1);
  CHECK(tok.token_of(0) == "<s>");
  CHECK(tok.token_of(1) == "<pad>");
  CHECK(tok.token_of(3) == "<unk>");
  CHECK(tok.token_of(kSpShoes + 1) == "\u2581shoes");
  CHECK(tok.token_of(161) == "<mask>");
  CHECK(error_of([&] { (void)tok.token_of(162); }).code() == ErrorCode::invalid_argument);
  CHECK(error_of([&] { (void)tok.token_of(-1); }).code() == ErrorCode::invalid_argument);

  // <s> pieces </s>; the empty text is the two specials.
  CHECK(tok.encode("") == std::vector<std::int32_t>{0, 2});
  CHECK(tok.encode("shoes") == std::vector<std::int32_t>{0, kSpShoes + 1, 2});
  CHECK(tok.encode("world shoes") == std::vector<std::int32_t>{0, kSpWorld + 1, kSpShoes + 1, 2});
  CHECK(tok.encode("北京 Café") == std::vector<std::int32_t>{0, kSpBeijing + 1, kSpCafe + 1, 2});
  // Characters SentencePiece does not know are <unk> (3), not spm's <unk> + 1.
  CHECK(tok.encode("猫 shoes ☃") ==
        std::vector<std::int32_t>{0, kSpSpace + 1, 3, kSpShoes + 1, kSpSpace + 1, 3, 2});
  CHECK(tok.tokenize("猫 shoes") ==
        std::vector<std::string>{"\u2581", "\u732b", "\u2581shoes"});  // spm keeps the text
  // Special tokens in a text are plain text.
  const auto literal = tok.encode("<s>");
  CHECK(literal.size() > 3);
  CHECK(literal.front() == 0);
  CHECK(literal[1] != 0);
}

TEST_CASE("SentencePieceTokenizer: the model's normalisation and truncation", "[tokenizer][spm]") {
  const auto tok = SentencePieceTokenizer::load(fixture_dir());
  // nmt_nfkc: fullwidth forms fold, decomposed accents compose, runs of
  // whitespace collapse, leading/trailing whitespace goes.
  CHECK(tok.encode("ＵＳＢ") == tok.encode("USB"));
  CHECK(tok.encode("Cafe\u0301") == tok.encode("Café"));
  CHECK(tok.encode("  world \t  shoes  ") == tok.encode("world shoes"));

  const std::string text = "world shoes world shoes world";
  const auto full = tok.encode(text);
  REQUIRE(full.size() == 7);
  SentencePieceTokenizer short_tok(fixture_dir() / "sentencepiece.bpe.model", 5);
  CHECK(short_tok.max_length() == 5);
  CHECK(short_tok.encode(text) ==
        std::vector<std::int32_t>{0, full[1], full[2], full[3], 2});  // </s> kept
  SentencePieceTokenizer two(fixture_dir() / "sentencepiece.bpe.model", 2);
  CHECK(two.encode(text) == std::vector<std::int32_t>{0, 2});
  // load() takes the smaller of its argument and model_max_length.
  CHECK(SentencePieceTokenizer::load(fixture_dir(), 10).max_length() == 10);
  CHECK(SentencePieceTokenizer::load(fixture_dir(), 1000).max_length() == 64);
}

TEST_CASE("SentencePieceTokenizer: concurrent encode calls agree",
          "[tokenizer][spm][concurrency]") {
  const auto tok = SentencePieceTokenizer::load(fixture_dir());
  const std::vector<std::string> texts = {"world shoes", "北京 Café 猫", "ＵＳＢ cable", ""};
  std::vector<std::vector<std::int32_t>> want(texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) want[i] = tok.encode(texts[i]);
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (std::size_t k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int rep = 0; rep < 200; ++rep) {
        const std::size_t i = (k + static_cast<std::size_t>(rep)) % texts.size();
        if (tok.encode(texts[i]) != want[i]) ++mismatches[k];
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(mismatches == std::vector<int>(4, 0));
}

TEST_CASE("SentencePieceTokenizer: bad input and bad files are clear errors", "[tokenizer][spm]") {
  const auto tok = SentencePieceTokenizer::load(fixture_dir());
  const std::string bad = std::string("shoes ") + '\xC3';  // truncated 2-byte sequence
  const Error e = error_of([&] { (void)tok.encode(bad, 7); });
  CHECK(e.code() == ErrorCode::invalid_argument);
  CHECK_THAT(e.what(), Catch::Contains("text 7") && Catch::Contains("invalid UTF-8 at byte 6"));
  CHECK(error_of([&] { (void)tok.tokenize(bad); }).code() == ErrorCode::invalid_argument);

  funnel::testing::TempDir tmp;
  const fs::path model = fixture_dir() / "sentencepiece.bpe.model";
  const std::string bytes = funnel::testing::read_bytes(model);

  SECTION("missing file") {
    const Error m = error_of([&] { SentencePieceTokenizer t(tmp / "none.model"); });
    CHECK(m.code() == ErrorCode::io);
    CHECK_THAT(m.what(), Catch::Contains("none.model"));
  }
  SECTION("truncated model") {
    const fs::path cut = tmp / "cut.model";
    funnel::testing::write_bytes(cut, bytes.substr(0, bytes.size() / 3 + 1));
    const Error m = error_of([&] { SentencePieceTokenizer t(cut); });
    CHECK(m.code() == ErrorCode::format);
    CHECK_THAT(m.what(), Catch::Contains("cut.model") && Catch::Contains("SentencePiece model"));
  }
  SECTION("not a model at all") {
    const fs::path junk = tmp / "junk.model";
    funnel::testing::write_bytes(junk, "{\"this is\": \"json\"}\n");
    const Error m = error_of([&] { SentencePieceTokenizer t(junk); });
    CHECK(m.code() == ErrorCode::format);
    CHECK_THAT(m.what(), Catch::Contains("junk.model"));
    funnel::testing::write_bytes(junk, "");
    CHECK(error_of([&] { SentencePieceTokenizer t(junk); }).code() == ErrorCode::format);
  }
  SECTION("special pieces where XLM-R's mapping does not have them") {
    // T5's layout (<pad> 0, </s> 1, <unk> 2, no <s>), trained by the fixture script.
    const fs::path t5 = fixture_dir().parent_path() / "spm_t5_specials.model";
    const Error m = error_of([&] { SentencePieceTokenizer t(t5); });
    CHECK(m.code() == ErrorCode::unsupported);
    CHECK_THAT(m.what(), Catch::Contains("spm_t5_specials.model") &&
                             Catch::Contains("<unk> 2, <s> -1, </s> 1"));
  }
  SECTION("max_length below 2") {
    CHECK(error_of([&] { SentencePieceTokenizer t(model, 1); }).code() ==
          ErrorCode::invalid_argument);
    CHECK(error_of([&] { (void)SentencePieceTokenizer::load(fixture_dir(), 1); }).code() ==
          ErrorCode::invalid_argument);
  }
  SECTION("tokenizer_config.json") {
    const fs::path dir = tmp / "ckpt";
    fs::create_directories(dir);
    fs::copy_file(model, dir / "sentencepiece.bpe.model");
    funnel::testing::write_bytes(dir / "tokenizer_config.json",
                                 R"({"tokenizer_class": "CamembertTokenizer"})");
    const Error u = error_of([&] { (void)SentencePieceTokenizer::load(dir); });
    CHECK(u.code() == ErrorCode::unsupported);
    CHECK_THAT(u.what(), Catch::Contains("CamembertTokenizer"));
    funnel::testing::write_bytes(dir / "tokenizer_config.json", R"({"model_max_length": 1})");
    const Error f = error_of([&] { (void)SentencePieceTokenizer::load(dir); });
    CHECK(f.code() == ErrorCode::format);
    CHECK_THAT(f.what(), Catch::Contains("model_max_length"));
    funnel::testing::write_bytes(dir / "tokenizer_config.json", "{not json");
    CHECK(error_of([&] { (void)SentencePieceTokenizer::load(dir); }).code() == ErrorCode::format);
    // A limit stored as int(1e30) (no limit) and the fast tokenizer's class are fine.
    funnel::testing::write_bytes(
        dir / "tokenizer_config.json",
        R"({"tokenizer_class": "XLMRobertaTokenizerFast", "model_max_length": 1e30})");
    CHECK(SentencePieceTokenizer::load(dir, 300).max_length() == 300);
  }
}
