// SPDX-License-Identifier: Apache-2.0
// Every expectation below is written by hand from BERT's tokenization rules
// (see include/funnel/bert_tokenizer.hpp), never from this code's output.
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/bert_tokenizer.hpp"
#include "funnel/error.hpp"
#include "test_util.hpp"

using funnel::BertTokenizer;
using funnel::BertTokenizerConfig;
using funnel::Error;
using funnel::ErrorCode;
using Tokens = std::vector<std::string>;
using Ids = std::vector<std::int32_t>;

namespace {

Tokens specials() { return {"[PAD]", "[UNK]", "[CLS]", "[SEP]"}; }

// A tokenizer whose vocabulary is the four specials (ids 0-3) then `words`
// (ids 4, 5, ...).
BertTokenizer make_tokenizer(const Tokens& words = {}, BertTokenizerConfig config = {}) {
  Tokens vocab = specials();
  vocab.insert(vocab.end(), words.begin(), words.end());
  return {std::move(vocab), std::move(config)};
}

BertTokenizerConfig cased() {
  BertTokenizerConfig config;
  config.lower_case = false;
  return config;
}

// Runs f, which must throw funnel::Error with `code`; returns the message.
template <class F>
std::string error_of(F&& f, ErrorCode code) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(e.code() == code);
    return e.what();
  }
  FAIL("no funnel::Error thrown");
  return {};
}

}  // namespace

TEST_CASE("BertTokenizerConfig::validate names the bad field", "[bert_tokenizer]") {
  BertTokenizerConfig config;
  CHECK_NOTHROW(config.validate());
  config.max_length = 1;
  CHECK_THAT(error_of([&] { config.validate(); }, ErrorCode::invalid_argument),
             Catch::Contains("max_length") && Catch::Contains("1"));
  config = {};
  config.max_input_chars_per_word = 0;
  CHECK_THAT(error_of([&] { config.validate(); }, ErrorCode::invalid_argument),
             Catch::Contains("max_input_chars_per_word"));
  config = {};
  config.sep_token.clear();
  CHECK_THAT(error_of([&] { config.validate(); }, ErrorCode::invalid_argument),
             Catch::Contains("sep_token"));
  config = {};
  config.max_length = 0;
  CHECK_THROWS_AS(make_tokenizer({}, config), Error);
}

TEST_CASE("strip_accents follows lower_case unless set", "[bert_tokenizer]") {
  BertTokenizerConfig config;
  CHECK(config.strips_accents());
  config.lower_case = false;
  CHECK_FALSE(config.strips_accents());
  config.strip_accents = true;
  CHECK(config.strips_accents());
  config.lower_case = true;
  config.strip_accents = false;
  CHECK_FALSE(config.strips_accents());
}

TEST_CASE("clean-up drops NUL, U+FFFD and control characters", "[bert_tokenizer]") {
  const BertTokenizer tok = make_tokenizer({}, cased());
  CHECK(tok.basic_tokenize(std::string("x\0y", 3)) == Tokens{"xy"});  // NUL
  CHECK(tok.basic_tokenize("a\x01"
                           "b\x1b"
                           "c\x7f"
                           "d") == Tokens{"abcd"});                       // Cc
  CHECK(tok.basic_tokenize("a\uFFFDb") == Tokens{"ab"});                  // replacement char
  CHECK(tok.basic_tokenize("zero\u200Bwidth") == Tokens{"zerowidth"});    // Cf
  CHECK(tok.basic_tokenize("soft\u00ADhyphen") == Tokens{"softhyphen"});  // Cf
  CHECK(tok.basic_tokenize("\uFEFFbom") == Tokens{"bom"});                // Cf
  CHECK(tok.basic_tokenize("a\uE000b") == Tokens{"ab"});                  // Co (private use)
  CHECK(tok.basic_tokenize("a\u0378b") == Tokens{"ab"});                  // Cn (unassigned)
  // Form feed, vertical tab, the information separators and NEL are Cc, so
  // they are dropped rather than treated as whitespace.
  CHECK(tok.basic_tokenize("a\x0c"
                           "b\x0b"
                           "c\x1f"
                           "d\u0085e") == Tokens{"abcde"});
  CHECK(tok.basic_tokenize("\x01\x02\u200B").empty());
}

TEST_CASE("whitespace: space, tab, newlines and category Zs separate tokens", "[bert_tokenizer]") {
  const BertTokenizer tok = make_tokenizer({}, cased());
  CHECK(tok.basic_tokenize("a b\tc\nd\re\r\nf") == Tokens{"a", "b", "c", "d", "e", "f"});
  // NO-BREAK SPACE, EM SPACE, IDEOGRAPHIC SPACE (Zs), LINE and PARAGRAPH
  // SEPARATOR (which Python's str.split() treats as whitespace).
  CHECK(tok.basic_tokenize("a\u00A0b\u2003c\u3000d\u2028e\u2029f") ==
        Tokens{"a", "b", "c", "d", "e", "f"});
  CHECK(tok.basic_tokenize("  \t lead   and trail \n ") == Tokens{"lead", "and", "trail"});
  CHECK(tok.basic_tokenize("").empty());
  CHECK(tok.basic_tokenize(" \t\r\n\u3000 ").empty());
}

TEST_CASE("CJK ideographs become single tokens; other scripts are not split", "[bert_tokenizer]") {
  const BertTokenizer tok = make_tokenizer({}, cased());
  CHECK(tok.basic_tokenize("我爱abc北京") == Tokens{"我", "爱", "abc", "北", "京"});
  // Extension B (U+20000) and the edges of the ranges.
  CHECK(tok.basic_tokenize("a\U00020000b") == Tokens{"a", "\U00020000", "b"});
  CHECK(tok.basic_tokenize("x\u3400y\u4DBFz") == Tokens{"x", "\u3400", "y", "\u4DBF", "z"});
  CHECK(tok.basic_tokenize("x\u9FFFy") == Tokens{"x", "\u9FFF", "y"});
  CHECK(tok.basic_tokenize("x\U0002A6DFy") == Tokens{"x", "\U0002A6DF", "y"});
  // U+4DC0 (a Yijing hexagram, So) lies between two ranges.
  CHECK(tok.basic_tokenize("x\u4DC0y") == Tokens{"x\u4DC0y"});
  // Hangul, kana: not CJK ideographs for BERT.
  CHECK(tok.basic_tokenize("한국어") == Tokens{"한국어"});
  CHECK(tok.basic_tokenize("カタカナです") == Tokens{"カタカナです"});
  // A compatibility ideograph is split, then NFC maps it to its unified form.
  CHECK(tok.basic_tokenize("a\uF900b") == Tokens{"a", "\u8C48", "b"});

  BertTokenizerConfig config = cased();
  config.tokenize_chinese_chars = false;
  CHECK(make_tokenizer({}, config).basic_tokenize("我爱abc 北京") == Tokens{"我爱abc", "北京"});
}

TEST_CASE("punctuation: BERT's ASCII ranges are split off one character each", "[bert_tokenizer]") {
  const BertTokenizer tok = make_tokenizer({}, cased());
  // Python's string.punctuation: exactly ASCII 33-47, 58-64, 91-96, 123-126.
  const std::string punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  REQUIRE(punct.size() == 32);
  for (int c = 33; c <= 126; ++c) {
    const std::string ch(1, static_cast<char>(c));
    INFO("character " << c << " '" << ch << "'");
    if (punct.find(ch) != std::string::npos) {
      CHECK(tok.basic_tokenize("x" + ch + "y") == Tokens{"x", ch, "y"});
    } else {
      CHECK(tok.basic_tokenize("x" + ch + "y") == Tokens{"x" + ch + "y"});
    }
  }
  CHECK(tok.basic_tokenize("hello,world!!") == Tokens{"hello", ",", "world", "!", "!"});
  CHECK(tok.basic_tokenize("$5.99") == Tokens{"$", "5", ".", "99"});
}

TEST_CASE("punctuation: Unicode categories P* are split, symbols are not", "[bert_tokenizer]") {
  const BertTokenizer tok = make_tokenizer({}, cased());
  CHECK(tok.basic_tokenize("¿Qué?") == Tokens{"¿", "Qué", "?"});            // Po
  CHECK(tok.basic_tokenize("你好。") == Tokens{"你", "好", "。"});          // Po
  CHECK(tok.basic_tokenize("a—b") == Tokens{"a", "—", "b"});                // Pd
  CHECK(tok.basic_tokenize("«a»") == Tokens{"«", "a", "»"});                // Pi, Pf
  CHECK(tok.basic_tokenize("「商品」") == Tokens{"「", "商", "品", "」"});  // Ps, Pe
  CHECK(tok.basic_tokenize("a・b") == Tokens{"a", "・", "b"});              // Po
  CHECK(tok.basic_tokenize("a‿b") == Tokens{"a", "‿", "b"});                // Pc
  // Sc, Sm, So and Lm are not punctuation outside ASCII.
  CHECK(tok.basic_tokenize("5€") == Tokens{"5€"});
  CHECK(tok.basic_tokenize("2×3") == Tokens{"2×3"});
  CHECK(tok.basic_tokenize("a©b") == Tokens{"a©b"});
  CHECK(tok.basic_tokenize("タワー") == Tokens{"タワー"});
}

TEST_CASE("lower-casing follows Python's str.lower()", "[bert_tokenizer]") {
  BertTokenizerConfig keep_accents;
  keep_accents.strip_accents = false;
  const BertTokenizer tok = make_tokenizer({}, keep_accents);
  CHECK(tok.basic_tokenize("HeLLo WORLD") == Tokens{"hello", "world"});
  CHECK(tok.basic_tokenize("ÀÉÎ ÑØ") == Tokens{"àéî", "ñø"});
  // Final sigma: a capital sigma after a cased letter and not before one.
  CHECK(tok.basic_tokenize("ΟΔΟΣ") == Tokens{"οδος"});
  CHECK(tok.basic_tokenize("ΣΑ") == Tokens{"σα"});
  CHECK(tok.basic_tokenize("Σ") == Tokens{"σ"});
  CHECK(tok.basic_tokenize("ΟΔΟΣ.") == Tokens{"οδος", "."});
  CHECK(tok.basic_tokenize("ΑΣ'Α") == Tokens{"ασ", "'", "α"});  // ' is case-ignorable
  CHECK(tok.basic_tokenize("ΑΣ,Α") == Tokens{"ας", ",", "α"});
  // U+0130 lower-cases to i + U+0307 in Python (kept when accents are kept).
  CHECK(tok.basic_tokenize("İstanbul") == Tokens{"i\u0307stanbul"});
  CHECK(make_tokenizer().basic_tokenize("İstanbul") == Tokens{"istanbul"});

  CHECK(make_tokenizer({}, cased()).basic_tokenize("HeLLo ΟΔΟΣ") == Tokens{"HeLLo", "ΟΔΟΣ"});
}

TEST_CASE("accent stripping: NFD then drop nonspacing marks", "[bert_tokenizer]") {
  CHECK(make_tokenizer().basic_tokenize("Héllo") == Tokens{"hello"});
  CHECK(make_tokenizer().basic_tokenize("Crème Brûlée") == Tokens{"creme", "brulee"});
  BertTokenizerConfig keep = {};
  keep.strip_accents = false;
  CHECK(make_tokenizer({}, keep).basic_tokenize("Héllo") == Tokens{"h\u00e9llo"});
  CHECK(make_tokenizer({}, cased()).basic_tokenize("Héllo") == Tokens{"H\u00e9llo"});
  BertTokenizerConfig strip_cased = cased();
  strip_cased.strip_accents = true;
  CHECK(make_tokenizer({}, strip_cased).basic_tokenize("Héllo") == Tokens{"Hello"});

  // Decomposed input is composed (NFC) when accents are kept.
  CHECK(make_tokenizer({}, keep).basic_tokenize("He\u0301llo") == Tokens{"h\u00e9llo"});
  CHECK(make_tokenizer({}, cased()).basic_tokenize("a\u212Bb") == Tokens{"a\u00C5b"});
  CHECK(make_tokenizer().basic_tokenize("He\u0301llo") == Tokens{"hello"});
  // A token made only of marks vanishes.
  CHECK(make_tokenizer().basic_tokenize("a \u0301\u0308 b") == Tokens{"a", "b"});
  // NFD decomposes Hangul syllables into conjoining jamo (category Lo, kept)
  // and splits off kana voicing marks (Mn, dropped).
  CHECK(make_tokenizer().basic_tokenize("한") == Tokens{"\u1112\u1161\u11AB"});
  CHECK(make_tokenizer().basic_tokenize("ゲーム") == Tokens{"ケーム"});
}

TEST_CASE("WordPiece: greedy longest match first with ## continuations", "[bert_tokenizer]") {
  // ids: 4 un, 5 ##aff, 6 ##able, 7 u, 8 ##a, 9 ab, 10 a, 11 ##bc, 12 ##b,
  //      13 我, 14 ##们, 15 é, 16 ##é
  const BertTokenizer tok = make_tokenizer(
      {"un", "##aff", "##able", "u", "##a", "ab", "a", "##bc", "##b", "我", "##们", "é", "##é"});
  CHECK(tok.wordpiece("unaffable") == Ids{4, 5, 6});
  CHECK(tok.wordpiece("ua") == Ids{7, 8});
  CHECK(tok.wordpiece("abbc") == Ids{9, 11});  // "ab" first, then "##bc"
  // No backtracking: "ab" is taken, "##c" is missing, so the whole word is
  // unknown although "a" + "##bc" would have covered it.
  CHECK(tok.wordpiece("abc") == Ids{tok.unk_id()});
  CHECK(tok.wordpiece("xyz") == Ids{tok.unk_id()});
  CHECK(tok.wordpiece("unx") == Ids{tok.unk_id()});  // a prefix matches, the rest does not
  CHECK(tok.wordpiece("我们") == Ids{13, 14});
  CHECK(tok.wordpiece("").empty());

  // The 100-character limit counts code points, not bytes.
  Ids hundred(100, 8);
  hundred[0] = 10;
  CHECK(tok.wordpiece(std::string(100, 'a')) == hundred);
  CHECK(tok.wordpiece(std::string(101, 'a')) == Ids{tok.unk_id()});
  std::string e100;
  for (int i = 0; i < 100; ++i) e100 += "é";
  Ids e_ids(100, 16);
  e_ids[0] = 15;
  CHECK(tok.wordpiece(e100) == e_ids);
  CHECK(tok.wordpiece(e100 + "é") == Ids{tok.unk_id()});

  BertTokenizerConfig short_words;
  short_words.max_input_chars_per_word = 5;
  const BertTokenizer short_tok = make_tokenizer({"un", "##aff", "##a"}, short_words);
  CHECK(short_tok.wordpiece("unaff") == Ids{4, 5});
  CHECK(short_tok.wordpiece("unaffa") == Ids{short_tok.unk_id()});
}

TEST_CASE("encode: [CLS] tokens [SEP], truncated to max_length", "[bert_tokenizer]") {
  // ids: 4 un, 5 ##aff, 6 ##able, 7 !, 8 ab, 9 ##b
  const Tokens words = {"un", "##aff", "##able", "!", "ab", "##b"};
  const BertTokenizer tok = make_tokenizer(words);
  REQUIRE(tok.cls_id() == 2);
  REQUIRE(tok.sep_id() == 3);
  REQUIRE(tok.pad_id() == 0);
  REQUIRE(tok.unk_id() == 1);
  CHECK(tok.encode("Unaffable!") == Ids{2, 4, 5, 6, 7, 3});
  CHECK(tok.encode("unaffable xyz") == Ids{2, 4, 5, 6, 1, 3});
  CHECK(tok.encode("") == Ids{2, 3});
  CHECK(tok.encode(" \t\u200B ") == Ids{2, 3});

  BertTokenizerConfig config;
  config.max_length = 4;
  const BertTokenizer four = make_tokenizer(words, config);
  CHECK(four.encode("unaffable") == Ids{2, 4, 5, 3});  // cut inside a word, [SEP] kept
  CHECK(four.encode("! ! ! ! ! !") == Ids{2, 7, 7, 3});
  CHECK(four.encode("!") == Ids{2, 7, 3});
  // Truncation applies to the word's final pieces: "abbbx" is [UNK] as a
  // whole, not its first matching piece.
  config.max_length = 3;
  CHECK(make_tokenizer(words, config).encode("abbbx") == Ids{2, 1, 3});
  config.max_length = 2;
  CHECK(make_tokenizer(words, config).encode("unaffable!") == Ids{2, 3});
  // No truncation in practice; nothing is sized by max_length up front.
  config.max_length = std::numeric_limits<std::size_t>::max();
  CHECK(make_tokenizer(words, config).encode("unaffable!") == Ids{2, 4, 5, 6, 7, 3});

  // encode_into truncates to the smaller of the buffer and max_length.
  std::vector<std::int32_t> out(3, -7);
  CHECK(tok.encode_into("unaffable", out) == 3);
  CHECK(out == Ids{2, 4, 3});
  std::vector<std::int32_t> big(10, -7);
  CHECK(four.encode_into("unaffable", big) == 4);
  CHECK(Ids(big.begin(), big.begin() + 4) == Ids{2, 4, 5, 3});
  CHECK(big[4] == -7);
  std::vector<std::int32_t> tiny(1);
  CHECK_THAT(error_of([&] { (void)tok.encode_into("x", tiny, 5); }, ErrorCode::invalid_argument),
             Catch::Contains("text 5"));
}

TEST_CASE("invalid UTF-8 is an error naming the text and the byte", "[bert_tokenizer]") {
  const BertTokenizer tok = make_tokenizer();
  const auto message = [&](std::string_view text, std::size_t index) {
    return error_of([&] { (void)tok.encode(text, index); }, ErrorCode::invalid_argument);
  };
  CHECK_THAT(message("ab\xff"
                     "cd",
                     7),
             Catch::Contains("text 7") && Catch::Contains("byte 2"));
  CHECK_THAT(message("\xc0\xaf", 0), Catch::Contains("text 0") && Catch::Contains("byte 0"));
  CHECK_THAT(message("ok \xed\xa0\x80", 3), Catch::Contains("byte 3"));   // surrogate
  CHECK_THAT(message("ab\xe4\xbd", 1), Catch::Contains("byte 2"));        // truncated
  CHECK_THAT(message("\xf4\x90\x80\x80", 1), Catch::Contains("byte 0"));  // > U+10FFFF
  CHECK_THAT(error_of([&] { (void)tok.basic_tokenize("a\x80"); }, ErrorCode::invalid_argument),
             Catch::Contains("byte 1"));
  CHECK_THROWS_AS(tok.wordpiece("\xff"), Error);
  CHECK_THROWS_AS(tok.tokenize("\xff"), Error);
}

TEST_CASE("vocabulary errors name the token and line", "[bert_tokenizer]") {
  const auto message = [](Tokens vocab, BertTokenizerConfig config = {}) {
    return error_of([&] { BertTokenizer tok(vocab, config); }, ErrorCode::invalid_argument);
  };
  CHECK_THAT(message({"[PAD]", "[CLS]", "[SEP]", "a"}), Catch::Contains("[UNK]"));
  CHECK_THAT(message({"[PAD]", "[UNK]", "[SEP]"}), Catch::Contains("cls_token"));
  CHECK_THAT(message({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "a"}),
             Catch::Contains("line 7") && Catch::Contains("'a'") && Catch::Contains("line 5"));
  CHECK_THAT(message({"[PAD]", "[UNK]", "[CLS]", "[SEP]", ""}),
             Catch::Contains("line 5") && Catch::Contains("empty"));
  CHECK_THAT(message({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "ok", "\xff"}),
             Catch::Contains("line 6") && Catch::Contains("UTF-8"));
  CHECK_THAT(message({}), Catch::Contains("[UNK]"));

  BertTokenizerConfig custom;
  custom.unk_token = "<unk>";
  CHECK_THAT(message(specials(), custom), Catch::Contains("<unk>"));
  const BertTokenizer tok({"<unk>", "[CLS]", "[SEP]", "[PAD]"}, custom);
  CHECK(tok.unk_id() == 0);
  CHECK(tok.pad_id() == 3);
}

TEST_CASE("vocabulary lookups", "[bert_tokenizer]") {
  const BertTokenizer tok = make_tokenizer({"hello", "##lo", "##"});
  CHECK(tok.vocab_size() == 7);
  CHECK(tok.id_of("hello") == 4);
  CHECK(tok.id_of("##lo") == 5);
  CHECK(tok.id_of("lo") == -1);
  CHECK(tok.id_of("") == -1);
  CHECK(tok.id_of("##") == 6);
  CHECK(tok.token_of(4) == "hello");
  CHECK(tok.token_of(0) == "[PAD]");
  CHECK_THROWS_AS(tok.token_of(7), Error);
  CHECK_THROWS_AS(tok.token_of(-1), Error);
  // Copies share the vocabulary and behave the same.
  const BertTokenizer copy = tok;  // NOLINT(performance-unnecessary-copy-initialization)
  CHECK(copy.encode("hello") == tok.encode("hello"));
}

TEST_CASE("load() reads vocab.txt and tokenizer_config.json", "[bert_tokenizer]") {
  funnel::testing::TempDir dir;
  // CRLF line ends are accepted; specials in unusual places.
  funnel::testing::write_bytes(
      dir / "vocab.txt", "<pad>\r\n<unk>\r\n[CLS]\r\n[SEP]\r\nHello\r\n##lo\r\nhello\r\n!\r\n");

  SECTION("defaults without tokenizer_config.json") {
    funnel::testing::write_bytes(dir / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n!");
    const BertTokenizer tok = BertTokenizer::load(dir.path());
    CHECK(tok.vocab_size() == 6);
    CHECK(tok.config().lower_case);
    CHECK(tok.config().max_length == 512);
    CHECK(tok.encode("Hello!") == Ids{2, 4, 5, 3});
  }
  SECTION("options are honoured and model_max_length caps max_length") {
    funnel::testing::write_bytes(dir / "tokenizer_config.json", R"({
      "do_lower_case": false, "strip_accents": null, "tokenize_chinese_chars": false,
      "model_max_length": 5, "tokenizer_class": "BertTokenizer",
      "unk_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": false},
      "pad_token": "<pad>", "mask_token": null})");
    const BertTokenizer tok = BertTokenizer::load(dir.path());
    CHECK_FALSE(tok.config().lower_case);
    CHECK_FALSE(tok.config().strip_accents.has_value());
    CHECK_FALSE(tok.config().tokenize_chinese_chars);
    CHECK(tok.config().max_length == 5);
    CHECK(tok.config().unk_token == "<unk>");
    CHECK(tok.config().pad_token == "<pad>");
    CHECK(tok.unk_id() == 1);
    CHECK(tok.pad_id() == 0);
    CHECK(tok.vocab_size() == 8);
    // Cased: "Hello" is a token; "hello" would be id 6.
    CHECK(tok.encode("Hello!") == Ids{2, 4, 7, 3});
    CHECK(tok.encode("Hello! Hello!") == Ids{2, 4, 7, 4, 3});
    CHECK(tok.basic_tokenize("北京") == Tokens{"北京"});
    CHECK(BertTokenizer::load(dir.path(), 3).config().max_length == 3);
  }
  SECTION("a huge model_max_length leaves max_length alone") {
    funnel::testing::write_bytes(
        dir / "tokenizer_config.json",
        R"({"model_max_length": 1000000000000000019884624838656, "strip_accents": true,
            "do_lower_case": false, "unk_token": "<unk>", "pad_token": "<pad>"})");
    const BertTokenizer tok = BertTokenizer::load(dir.path(), 128);
    CHECK(tok.config().max_length == 128);
    CHECK(tok.config().strip_accents == std::optional<bool>(true));
    CHECK(tok.basic_tokenize("Héllo") == Tokens{"Hello"});
  }
  SECTION("errors") {
    funnel::testing::TempDir empty;
    CHECK_THAT(error_of([&] { (void)BertTokenizer::load(empty.path()); }, ErrorCode::io),
               Catch::Contains((empty / "vocab.txt").string()));
    CHECK_THROWS_AS(BertTokenizer::load(dir.path(), 1), Error);

    const auto load_message = [&](const std::string& config_json, ErrorCode code) {
      funnel::testing::write_bytes(dir / "tokenizer_config.json", config_json);
      return error_of([&] { (void)BertTokenizer::load(dir.path()); }, code);
    };
    CHECK_THAT(load_message("{\"do_lower_case\": tru", ErrorCode::format),
               Catch::Contains("tokenizer_config.json"));
    CHECK_THAT(load_message("[1]", ErrorCode::format), Catch::Contains("tokenizer_config.json"));
    CHECK_THAT(load_message(R"({"do_lower_case": "yes"})", ErrorCode::format),
               Catch::Contains("tokenizer_config.json") && Catch::Contains("do_lower_case"));
    CHECK_THAT(load_message(R"({"strip_accents": 1})", ErrorCode::format),
               Catch::Contains("strip_accents"));
    CHECK_THAT(load_message(R"({"model_max_length": 1})", ErrorCode::format),
               Catch::Contains("model_max_length"));
    CHECK_THAT(load_message(R"({"unk_token": {"lstrip": true}})", ErrorCode::format),
               Catch::Contains("unk_token"));
    CHECK_THAT(load_message(R"({"cls_token": ""})", ErrorCode::format),
               Catch::Contains("cls_token"));
    CHECK_THAT(load_message(R"({"do_basic_tokenize": false})", ErrorCode::unsupported),
               Catch::Contains("do_basic_tokenize"));
    // The default [UNK] and [PAD] are not in this vocabulary.
    CHECK_THAT(load_message("{}", ErrorCode::format),
               Catch::Contains("vocab.txt") && Catch::Contains("[UNK]"));

    std::filesystem::remove(dir / "tokenizer_config.json");
    funnel::testing::write_bytes(dir / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhi\nyo\nhi\n");
    CHECK_THAT(error_of([&] { (void)BertTokenizer::load(dir.path()); }, ErrorCode::format),
               Catch::Contains((dir / "vocab.txt").string()) && Catch::Contains("line 7") &&
                   Catch::Contains("line 5"));
    funnel::testing::write_bytes(dir / "vocab.txt", "[PAD]\n[UNK]\n\n[CLS]\n[SEP]\n");
    CHECK_THAT(error_of([&] { (void)BertTokenizer::load(dir.path()); }, ErrorCode::format),
               Catch::Contains("line 3") && Catch::Contains("empty"));
  }
}

TEST_CASE("multilingual texts end to end (hand-verified)", "[bert_tokenizer]") {
  // Uncased multilingual settings (lower-case, strip accents, split CJK).
  const BertTokenizer tok = make_tokenizer({
      "hello",
      ",",
      "world",
      "!",
      "cafe",
      "au",
      "la",
      "##it",
      ".",  //
      "ip",
      "##hone",
      "15",
      "pro",
      "max",
      "256",
      "##gb",
      "（",
      "黑",
      "色",
      "）",  //
      "ελληνικα",
      "καλο",
      "##ς",
      "##σ",  //
      "urun",
      "acıklaması",
      ":",
      "%",
      "100",
      "pamuk",  //
      "東",
      "京",
      "タワー",
      "・",
      "ケーム",                                //
      "\u110B\u1161\u11AB\u1102\u1167\u11BC",  //
      "مرحبا",
      "،",
      "عالم",
      "नमसत",  //
      "nike",
      "air",
      "90",
      "男",
      "子",
      "运",
      "动",
      "鞋",
  });
  CHECK(tok.tokenize("Hello, World! Café au lait.") ==
        Tokens{"hello", ",", "world", "!", "cafe", "au", "la", "##it", "."});
  CHECK(tok.tokenize("iPhone 15 Pro Max 256GB（黑色）") ==
        Tokens{"ip", "##hone", "15", "pro", "max", "256", "##gb", "（", "黑", "色", "）"});
  // Accents stripped; the final capital sigma lower-cases to ς.
  CHECK(tok.tokenize("Ελληνικά ΚΑΛΟΣ") == Tokens{"ελληνικα", "καλο", "##ς"});
  // ç and ü lose their marks; dotless ı has no decomposition and stays.
  CHECK(tok.tokenize("Ürün açıklaması: %100 pamuk") ==
        Tokens{"urun", "acıklaması", ":", "%", "100", "pamuk"});
  CHECK(tok.tokenize("東京タワー・ゲーム") == Tokens{"東", "京", "タワー", "・", "ケーム"});
  CHECK(tok.tokenize("안녕") == Tokens{"\u110B\u1161\u11AB\u1102\u1167\u11BC"});
  CHECK(tok.tokenize("مرحبا، عالم") == Tokens{"مرحبا", "،", "عالم"});
  // Devanagari virama and vowel sign E are Mn: dropped by accent stripping.
  CHECK(tok.tokenize("नमस्ते") == Tokens{"नमसत"});
  CHECK(tok.tokenize("Nike Air Max 90 男子运动鞋") ==
        Tokens{"nike", "air", "max", "90", "男", "子", "运", "动", "鞋"});
  CHECK(tok.tokenize("👍🏻good") == Tokens{"[UNK]"});

  // Ids: the vocabulary above starts at id 4 with "hello".
  CHECK(tok.encode("hello, world") == Ids{2, 4, 5, 6, 3});

  // Cased (bert-base-multilingual-cased style): accents and syllables kept.
  const BertTokenizer cased_tok =
      make_tokenizer({"안녕", "##하세요", "!", "Café", "नमस्ते"}, cased());
  CHECK(cased_tok.tokenize("안녕하세요!") == Tokens{"안녕", "##하세요", "!"});
  CHECK(cased_tok.tokenize("Cafe\u0301 नमस्ते") == Tokens{"Café", "नमस्ते"});
}

TEST_CASE("encode is safe to call from several threads", "[bert_tokenizer]") {
  const BertTokenizer tok = make_tokenizer({"un", "##aff", "##able", "héllo", "北", "京", "!"});
  const std::vector<std::string> texts = {"Unaffable!", "北京 unaffable", "HÉLLO!", "xyz 北京!"};
  const std::vector<Ids> expected = {
      {2, 4, 5, 6, 10, 3}, {2, 8, 9, 4, 5, 6, 3}, {2, 1, 10, 3}, {2, 1, 8, 9, 10, 3}};
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 500; ++round) {
        const std::size_t i = (t + static_cast<std::size_t>(round)) % texts.size();
        if (tok.encode(texts[i]) != expected[i]) ++mismatches[t];
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(mismatches == std::vector<int>(4, 0));
}
