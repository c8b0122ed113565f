// SPDX-License-Identifier: Apache-2.0
#include "funnel/bert_tokenizer.hpp"

#include <algorithm>
#include <array>
#include <cassert>
#include <cstring>
#include <limits>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>
#include <utf8proc.h>

#include "funnel/error.hpp"
#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"
#include "internal/tokenizer_config.hpp"
#include "internal/utf8.hpp"

namespace funnel {
namespace {

using Cp = utf8proc_int32_t;

// ---------------------------------------------------------------------------
// Character classes (BERT's definitions; see the header).

// What the clean-up and whitespace steps do with a byte: ASCII bytes are
// kept, dropped or whitespace; the others start or continue a multi-byte
// sequence.
enum class ByteAction : std::uint8_t { keep, drop, space, multibyte };

constexpr std::array<ByteAction, 256> make_byte_actions() {
  std::array<ByteAction, 256> table{};
  for (std::size_t c = 0; c < 256; ++c) {
    // 0-31 and 127 are category Cc, i.e. controls, except the three that
    // BERT counts as whitespace.
    if (c >= 128) {
      table[c] = ByteAction::multibyte;
    } else if (c < 32 || c == 127) {
      table[c] = ByteAction::drop;
    }
  }
  table['\t'] = table['\n'] = table['\r'] = table[' '] = ByteAction::space;
  return table;
}
constexpr std::array<ByteAction, 256> kByteActions = make_byte_actions();

constexpr ByteAction byte_action(char c) { return kByteActions[static_cast<unsigned char>(c)]; }

constexpr bool is_ascii_punct(unsigned c) {
  return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
         (c >= 123 && c <= 126);
}

constexpr std::array<bool, 128> make_ascii_punct() {
  std::array<bool, 128> table{};
  for (unsigned c = 0; c < 128; ++c) table[c] = is_ascii_punct(c);
  return table;
}
constexpr std::array<bool, 128> kAsciiPunct = make_ascii_punct();

bool is_punct(Cp cp) {
  if (cp < 128) return kAsciiPunct[static_cast<std::size_t>(cp)];
  const utf8proc_category_t cat = utf8proc_category(cp);
  return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

// BERT's _is_chinese_char ranges, exactly.
constexpr bool is_cjk(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// The compatibility ideographs are the only code points in the CJK ranges
// that normalisation changes.
constexpr bool is_cjk_compat(char32_t cp) {
  return (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

enum class CharAction : std::uint8_t { keep, drop, space, cjk };

// Clean-up, CJK and whitespace steps for a non-ASCII code point.
CharAction classify(char32_t cp, bool split_cjk) {
  if (cp == 0xFFFD) return CharAction::drop;
  const utf8proc_category_t cat = utf8proc_category(static_cast<Cp>(cp));
  switch (cat) {
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO: return CharAction::drop;
    // Zl and Zp (U+2028, U+2029) are not whitespace for BERT's clean-up,
    // but Python's str.split() (its whitespace_tokenize) separates on them.
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP: return CharAction::space;
    default: break;
  }
  return split_cjk && is_cjk(cp) ? CharAction::cjk : CharAction::keep;
}

// Python's Case_Ignorable: Mn, Me, Cf, Lm, Sk, and Word_Break MidLetter,
// MidNumLet or Single_Quote.
bool is_case_ignorable(Cp cp) {
  switch (cp) {
    case 0x27:
    case 0x2E:
    case 0x3A:
    case 0xB7:
    case 0x387:
    case 0x55F:
    case 0x5F4:
    case 0x2018:
    case 0x2019:
    case 0x2024:
    case 0x2027:
    case 0xFE13:
    case 0xFE52:
    case 0xFE55:
    case 0xFF07:
    case 0xFF0E:
    case 0xFF1A: return true;
    default: break;
  }
  const utf8proc_category_t cat = utf8proc_category(cp);
  return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME ||
         cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK;
}

// Python's Cased (Lowercase, Uppercase or Lt). Letters with a case mapping
// cover Lu/Ll/Lt and the circled letters and roman numerals; the rest of
// Other_Lowercase/Other_Uppercase that is not case-ignorable is listed.
bool is_cased(Cp cp) {
  const utf8proc_category_t cat = utf8proc_category(cp);
  if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT)
    return true;
  if (utf8proc_tolower(cp) != cp || utf8proc_toupper(cp) != cp) return true;
  return cp == 0xAA || cp == 0xBA || (cp >= 0x1F130 && cp <= 0x1F149) ||
         (cp >= 0x1F150 && cp <= 0x1F169) || (cp >= 0x1F170 && cp <= 0x1F189);
}

// Python's Final_Sigma context for a capital sigma at cps[i]: a cased letter
// before it and none after it, skipping case-ignorable characters.
bool is_final_sigma(const Cp* cps, std::size_t n, std::size_t i) {
  std::size_t j = i;
  while (j > 0 && is_case_ignorable(cps[j - 1])) --j;
  if (j == 0 || !is_cased(cps[j - 1])) return false;
  j = i + 1;
  while (j < n && is_case_ignorable(cps[j])) ++j;
  return j == n || !is_cased(cps[j]);
}

constexpr Cp kCapitalSigma = 0x3A3;
constexpr Cp kSmallFinalSigma = 0x3C2;
constexpr Cp kDottedCapitalI = 0x130;
constexpr Cp kCombiningDotAbove = 0x307;

constexpr bool is_utf8_continuation(char c) {
  return (static_cast<unsigned char>(c) & 0xC0U) == 0x80U;
}

std::size_t count_code_points(std::string_view s) {
  return static_cast<std::size_t>(
      std::count_if(s.begin(), s.end(), [](char c) { return !is_utf8_continuation(c); }));
}

// ---------------------------------------------------------------------------
// Vocabulary lookup: open addressing with keys viewing the stored tokens,
// and an FNV-1a hash that can be extended byte by byte, so that WordPiece
// hashes all prefixes of a word in one pass.

constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr std::uint64_t kFnvPrime = 0x100000001b3ULL;

constexpr std::uint64_t fnv_step(std::uint64_t h, char c) {
  return (h ^ static_cast<unsigned char>(c)) * kFnvPrime;
}

std::uint64_t fnv_hash(std::string_view s) {
  std::uint64_t h = kFnvOffset;
  for (char c : s) h = fnv_step(h, c);
  return h;
}

// FNV's low bits mix poorly; the slot index uses a finalised hash.
constexpr std::uint64_t slot_mix(std::uint64_t h) {
  h ^= h >> 32;
  h *= 0xd6e8feb86659fd93ULL;
  h ^= h >> 32;
  return h;
}

class PieceTable {
 public:
  // Sized for n keys at a load factor of at most 1/2.
  explicit PieceTable(std::size_t n = 0) {
    std::size_t capacity = 16;
    while (capacity < 2 * n) capacity *= 2;
    slots_.resize(capacity);
    mask_ = capacity - 1;
  }

  // Inserts key -> id; returns the id already stored under key, or -1.
  std::int32_t insert(std::string_view key, std::int32_t id) {
    const std::uint64_t h = fnv_hash(key);
    for (std::size_t i = slot_mix(h) & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.id < 0) {
        slot = Slot{h, key.data(), static_cast<std::uint32_t>(key.size()), id};
        max_key_size_ = std::max(max_key_size_, key.size());
        return -1;
      }
      if (slot.hash == h && slot.key() == key) return slot.id;
    }
  }

  // Id stored under key (whose fnv_hash is h), or -1.
  [[nodiscard]] std::int32_t find(std::string_view key, std::uint64_t h) const {
    for (std::size_t i = slot_mix(h) & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.id < 0) return -1;
      if (slot.hash == h && slot.size == key.size() &&
          std::memcmp(slot.data, key.data(), key.size()) == 0)
        return slot.id;
    }
  }

  [[nodiscard]] std::int32_t find(std::string_view key) const { return find(key, fnv_hash(key)); }

  // Longest key in bytes: no longer substring can match.
  [[nodiscard]] std::size_t max_key_size() const noexcept { return max_key_size_; }

 private:
  struct Slot {
    std::uint64_t hash = 0;
    const char* data = nullptr;  // views a token owned by the tokenizer
    std::uint32_t size = 0;
    std::int32_t id = -1;
    [[nodiscard]] std::string_view key() const { return {data, size}; }
  };
  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
  std::size_t max_key_size_ = 0;
};

// ---------------------------------------------------------------------------
// Per-thread scratch buffers, so that steady-state tokenization allocates
// nothing per text.

struct Scratch {
  std::string word;               // one whitespace token after clean-up
  std::vector<Cp> cps, cps2;      // normalisation work buffers
  std::string piece;              // one basic token
  std::vector<std::int32_t> ids;  // WordPiece ids of one basic token
  std::vector<std::uint64_t> prefix_hashes;
  std::vector<std::int32_t> encoded;  // encode()'s result before the copy out
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Canonical ordering (a stable sort of each run of non-starters by
// combining class); utf8proc_decompose_char does not reorder.
void canonical_order(Cp* p, std::size_t n) {
  for (std::size_t i = 1; i < n; ++i) {
    const auto ccc = utf8proc_get_property(p[i])->combining_class;
    if (ccc == 0) continue;
    std::size_t j = i;
    while (j > 0 && utf8proc_get_property(p[j - 1])->combining_class > ccc) {
      std::swap(p[j - 1], p[j]);
      --j;
    }
  }
}

// Decodes valid UTF-8 into NFC code points in out.
void nfc(std::string_view s, std::vector<Cp>& out) {
  const auto options = static_cast<utf8proc_option_t>(UTF8PROC_COMPOSE | UTF8PROC_STABLE);
  const auto* src = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  const auto src_size = static_cast<utf8proc_ssize_t>(s.size());
  if (out.size() < s.size() + 8) out.resize(s.size() + 8);
  utf8proc_ssize_t n = 0;
  for (;;) {
    n = utf8proc_decompose(src, src_size, out.data(), static_cast<utf8proc_ssize_t>(out.size()),
                           options);
    if (n < 0) detail::fail(ErrorCode::internal, "utf8proc_decompose failed: ", utf8proc_errmsg(n));
    if (static_cast<std::size_t>(n) <= out.size()) break;
    out.resize(static_cast<std::size_t>(n));
  }
  n = utf8proc_normalize_utf32(out.data(), n, options);
  if (n < 0)
    detail::fail(ErrorCode::internal, "utf8proc_normalize_utf32 failed: ", utf8proc_errmsg(n));
  out.resize(static_cast<std::size_t>(n));
}

// Python's str.lower() of in into out.
void lower(const std::vector<Cp>& in, std::vector<Cp>& out) {
  out.clear();
  for (std::size_t i = 0; i < in.size(); ++i) {
    const Cp cp = in[i];
    if (cp == kDottedCapitalI) {
      // The one unconditional multi-character lower-case mapping.
      out.push_back('i');
      out.push_back(kCombiningDotAbove);
    } else if (cp == kCapitalSigma && is_final_sigma(in.data(), in.size(), i)) {
      out.push_back(kSmallFinalSigma);
    } else {
      out.push_back(utf8proc_tolower(cp));
    }
  }
}

// NFD of in, without nonspacing marks, into out.
void nfd_without_marks(const std::vector<Cp>& in, std::vector<Cp>& out) {
  const auto options = static_cast<utf8proc_option_t>(UTF8PROC_DECOMPOSE);
  out.resize(in.size() * 4 + 8);
  std::size_t n = 0;
  for (const Cp cp : in) {
    int boundclass = 0;
    for (;;) {
      const utf8proc_ssize_t k = utf8proc_decompose_char(
          cp, out.data() + n, static_cast<utf8proc_ssize_t>(out.size() - n), options, &boundclass);
      if (k < 0)
        detail::fail(ErrorCode::internal, "utf8proc_decompose_char failed: ", utf8proc_errmsg(k));
      if (static_cast<std::size_t>(k) <= out.size() - n) {
        n += static_cast<std::size_t>(k);
        break;
      }
      out.resize(out.size() * 2 + static_cast<std::size_t>(k));
    }
  }
  canonical_order(out.data(), n);
  const auto end =
      std::remove_if(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n),
                     [](Cp cp) { return utf8proc_category(cp) == UTF8PROC_CATEGORY_MN; });
  out.erase(end, out.end());
}

}  // namespace

// ---------------------------------------------------------------------------

void BertTokenizerConfig::validate() const {
  detail::require(max_length >= 2,
                  "BertTokenizerConfig: max_length must be >= 2 ([CLS] and [SEP]), got ",
                  max_length);
  detail::require(max_input_chars_per_word >= 1,
                  "BertTokenizerConfig: max_input_chars_per_word must be >= 1, got ",
                  max_input_chars_per_word);
  const std::pair<const char*, const std::string*> specials[] = {{"unk_token", &unk_token},
                                                                 {"cls_token", &cls_token},
                                                                 {"sep_token", &sep_token},
                                                                 {"pad_token", &pad_token}};
  for (const auto& [name, token] : specials)
    detail::require(!token->empty(), "BertTokenizerConfig: ", name, " must not be empty");
}

struct BertTokenizer::Impl {
  BertTokenizerConfig config;
  std::vector<std::string> vocab;
  PieceTable whole;         // every token, for the first piece of a word
  PieceTable continuation;  // "##x" tokens keyed by "x", for later pieces
  std::int32_t cls = -1, sep = -1, pad = -1, unk = -1;
  bool lower_case = true;
  bool strip_accents = true;
  bool split_cjk = true;

  // Builds the tables. Errors have code `code` and locate a token as
  // `where` followed by its 1-based line.
  Impl(std::vector<std::string> tokens, BertTokenizerConfig cfg, ErrorCode code,
       const std::string& where);

  // Runs basic tokenization over valid UTF-8, calling
  // sink(token, code points in token) -> bool (false stops).
  template <class Sink>
  void basic(std::string_view text, Scratch& s, Sink&& sink) const;

  // Steps 3, 5 and 6 for one whitespace token (s.word).
  template <class Sink>
  bool process_word(Scratch& s, bool ascii, Sink& sink) const;

  // Appends the WordPiece ids of one valid UTF-8 word of n_chars code points.
  void wordpiece_into(std::string_view word, std::size_t n_chars, std::vector<std::int32_t>& out,
                      std::vector<std::uint64_t>& prefix_hashes) const;

  // [CLS] tokens [SEP] into out (cleared), at most `limit` ids.
  void encode_to(std::string_view text, std::size_t text_index, std::size_t limit,
                 std::vector<std::int32_t>& out) const;
};

BertTokenizer::Impl::Impl(std::vector<std::string> tokens, BertTokenizerConfig cfg, ErrorCode code,
                          const std::string& where)
    : config(std::move(cfg)), vocab(std::move(tokens)) {
  config.validate();
  lower_case = config.lower_case;
  strip_accents = config.strips_accents();
  split_cjk = config.tokenize_chinese_chars;
  if (vocab.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    detail::fail(code, where, ": ", vocab.size(), " tokens, more than ids can hold (2^31-1)");
  std::size_t n_continuation = 0;
  for (const std::string& t : vocab) n_continuation += t.starts_with("##") ? 1 : 0;
  whole = PieceTable(vocab.size());
  continuation = PieceTable(n_continuation);
  for (std::size_t i = 0; i < vocab.size(); ++i) {
    const std::string& t = vocab[i];
    if (t.empty()) detail::fail(code, where, " line ", i + 1, ": empty token");
    if (const auto bad = detail::find_invalid_utf8(t))
      detail::fail(code, where, " line ", i + 1, ": invalid UTF-8 at byte ", *bad);
    const auto id = static_cast<std::int32_t>(i);
    const std::int32_t previous = whole.insert(t, id);
    if (previous >= 0)
      detail::fail(code, where, " line ", i + 1, ": token '", t, "' duplicates line ",
                   previous + 1);
    if (t.size() > 2 && t.starts_with("##")) continuation.insert(std::string_view(t).substr(2), id);
  }
  const auto special = [&](const char* name, const std::string& token) {
    const std::int32_t id = whole.find(token);
    if (id < 0)
      detail::fail(code, where, ": ", name, " '", token, "' is not in the vocabulary (",
                   vocab.size(), " tokens)");
    return id;
  };
  unk = special("unk_token", config.unk_token);
  cls = special("cls_token", config.cls_token);
  sep = special("sep_token", config.sep_token);
  pad = special("pad_token", config.pad_token);
}

template <class Sink>
void BertTokenizer::Impl::basic(std::string_view text, Scratch& s, Sink&& sink) const {
  s.word.clear();
  bool ascii = true;
  const auto flush = [&]() {
    if (s.word.empty()) return true;
    const bool more = process_word(s, ascii, sink);
    s.word.clear();
    ascii = true;
    return more;
  };
  std::size_t pos = 0;
  while (pos < text.size()) {
    const ByteAction action = byte_action(text[pos]);
    if (action == ByteAction::keep) {
      // Copies a whole run of kept ASCII bytes at once.
      std::size_t end = pos + 1;
      while (end < text.size() && byte_action(text[end]) == ByteAction::keep) ++end;
      s.word.append(text.data() + pos, end - pos);
      pos = end;
      continue;
    }
    if (action != ByteAction::multibyte) {
      ++pos;
      if (action == ByteAction::space && !flush()) return;
      continue;
    }
    const std::size_t start = pos;
    const auto cp = detail::decode_utf8(text, pos);
    assert(cp.has_value());  // callers validate the text first
    switch (classify(*cp, split_cjk)) {
      case CharAction::keep:
        s.word.append(text.substr(start, pos - start));
        ascii = false;
        break;
      case CharAction::drop: break;
      case CharAction::space:
        if (!flush()) return;
        break;
      case CharAction::cjk:
        if (!flush()) return;
        s.word.append(text.substr(start, pos - start));
        ascii = false;
        if (!flush()) return;
        break;
    }
  }
  flush();
}

template <class Sink>
bool BertTokenizer::Impl::process_word(Scratch& s, bool ascii, Sink& sink) const {
  std::string& piece = s.piece;
  piece.clear();
  if (ascii) {
    // NFC, NFD and accent stripping leave ASCII unchanged; pieces are views
    // into the word unless they need lower-casing.
    const std::string_view word = s.word;
    const auto emit_run = [&](std::string_view run) {
      if (!lower_case ||
          std::none_of(run.begin(), run.end(), [](char c) { return c >= 'A' && c <= 'Z'; }))
        return sink(run, run.size());
      piece.assign(run);
      for (char& c : piece)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      return sink(std::string_view(piece), piece.size());
    };
    std::size_t start = 0;
    for (std::size_t i = 0; i < word.size(); ++i) {
      if (!kAsciiPunct[static_cast<unsigned char>(word[i])]) continue;
      if (i > start && !emit_run(word.substr(start, i - start))) return false;
      if (!sink(word.substr(i, 1), 1)) return false;
      start = i + 1;
    }
    return start == word.size() || emit_run(word.substr(start));
  }
  // A lone unified ideograph (the common case in Chinese text) has no case,
  // no decomposition and is not punctuation.
  if (s.word.size() <= 4) {
    std::size_t pos = 0;
    const auto cp = detail::decode_utf8(s.word, pos);
    if (pos == s.word.size() && cp && is_cjk(*cp) && !is_cjk_compat(*cp))
      return sink(std::string_view(s.word), 1);
  }
  nfc(s.word, s.cps);
  const std::vector<Cp>* cps = &s.cps;
  if (lower_case) {
    lower(*cps, s.cps2);
    cps = &s.cps2;
  }
  if (strip_accents) {
    std::vector<Cp>& out = cps == &s.cps ? s.cps2 : s.cps;
    nfd_without_marks(*cps, out);
    cps = &out;
  }
  std::size_t n_chars = 0;
  for (const Cp cp : *cps) {
    if (is_punct(cp)) {
      if (!piece.empty() && !sink(std::string_view(piece), n_chars)) return false;
      piece.clear();
      n_chars = 0;
      detail::append_utf8(piece, static_cast<char32_t>(cp));
      if (!sink(std::string_view(piece), 1)) return false;
      piece.clear();
      continue;
    }
    detail::append_utf8(piece, static_cast<char32_t>(cp));
    ++n_chars;
  }
  return piece.empty() || sink(std::string_view(piece), n_chars);
}

void BertTokenizer::Impl::wordpiece_into(std::string_view word, std::size_t n_chars,
                                         std::vector<std::int32_t>& out,
                                         std::vector<std::uint64_t>& prefix_hashes) const {
  if (word.empty()) return;
  if (n_chars > config.max_input_chars_per_word) {
    out.push_back(unk);
    return;
  }
  const std::size_t mark = out.size();
  const std::size_t longest = std::max(whole.max_key_size(), continuation.max_key_size());
  if (prefix_hashes.size() < longest + 1) prefix_hashes.resize(longest + 1);
  std::size_t start = 0;
  while (start < word.size()) {
    const PieceTable& table = start == 0 ? whole : continuation;
    // Pieces longer than the longest key cannot match, so longest-first
    // starts there rather than at the end of a long word.
    const std::size_t max_end = std::min(word.size(), start + table.max_key_size());
    std::uint64_t h = kFnvOffset;
    prefix_hashes[0] = h;
    for (std::size_t k = start; k < max_end; ++k) {
      h = fnv_step(h, word[k]);
      prefix_hashes[k - start + 1] = h;
    }
    std::size_t end = max_end;
    while (end > start && end < word.size() && is_utf8_continuation(word[end])) --end;
    std::int32_t id = -1;
    while (end > start) {
      id = table.find(word.substr(start, end - start), prefix_hashes[end - start]);
      if (id >= 0) break;
      do {
        --end;
      } while (end > start && is_utf8_continuation(word[end]));
    }
    if (id < 0) {
      // Greedy matching does not backtrack: the whole word is unknown.
      out.resize(mark);
      out.push_back(unk);
      return;
    }
    out.push_back(id);
    start = end;
  }
}

void BertTokenizer::Impl::encode_to(std::string_view text, std::size_t text_index,
                                    std::size_t limit, std::vector<std::int32_t>& out) const {
  assert(limit >= 2);
  if (const auto bad = detail::find_invalid_utf8(text))
    detail::fail(ErrorCode::invalid_argument, "BertTokenizer: text ", text_index,
                 ": invalid UTF-8 at byte ", *bad);
  out.clear();
  out.push_back(cls);
  const std::size_t cap = limit - 1;  // the last slot is [SEP]'s
  if (out.size() < cap) {
    Scratch& s = scratch();
    basic(text, s, [&](std::string_view token, std::size_t n_chars) {
      s.ids.clear();
      wordpiece_into(token, n_chars, s.ids, s.prefix_hashes);
      const std::size_t take = std::min(s.ids.size(), cap - out.size());
      out.insert(out.end(), s.ids.begin(), s.ids.begin() + static_cast<std::ptrdiff_t>(take));
      return out.size() < cap;
    });
  }
  out.push_back(sep);
}

// ---------------------------------------------------------------------------

BertTokenizer::BertTokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

BertTokenizer::BertTokenizer(std::vector<std::string> vocab, BertTokenizerConfig config)
    : impl_(std::make_shared<const Impl>(std::move(vocab), std::move(config),
                                         ErrorCode::invalid_argument, "BertTokenizer: vocab")) {}

namespace {

// A special token in tokenizer_config.json: a string, or an AddedToken
// object with "content"; null keeps the default.
void read_special_token(const nlohmann::json& root, const char* key, const std::string& file,
                        std::string& token) {
  const auto it = root.find(key);
  if (it == root.end() || it->is_null()) return;
  const nlohmann::json* value = &*it;
  if (value->is_object()) {
    const auto content = value->find("content");
    if (content == value->end())
      detail::fail(ErrorCode::format, file, ": key '", key, "' is an object without \"content\"");
    value = &*content;
  }
  if (!value->is_string() || value->get_ref<const std::string&>().empty())
    detail::fail(ErrorCode::format, file, ": key '", key,
                 "' must be a non-empty string or an object with \"content\", got ", value->dump());
  token = value->get<std::string>();
}

bool read_bool(const nlohmann::json& root, const char* key, const std::string& file,
               bool fallback) {
  const auto it = root.find(key);
  if (it == root.end()) return fallback;
  if (!it->is_boolean())
    detail::fail(ErrorCode::format, file, ": key '", key, "' must be true or false, got ",
                 it->dump());
  return it->get<bool>();
}

void read_tokenizer_config(const std::filesystem::path& path, BertTokenizerConfig& config) {
  const std::string file = path.string();
  const nlohmann::json root = detail::read_tokenizer_config_json(path);
  if (!read_bool(root, "do_basic_tokenize", file, true))
    detail::fail(ErrorCode::unsupported, file,
                 ": do_basic_tokenize = false (WordPiece without basic tokenization) is not "
                 "supported");
  config.lower_case = read_bool(root, "do_lower_case", file, config.lower_case);
  config.tokenize_chinese_chars =
      read_bool(root, "tokenize_chinese_chars", file, config.tokenize_chinese_chars);
  if (const auto it = root.find("strip_accents"); it != root.end() && !it->is_null()) {
    if (!it->is_boolean())
      detail::fail(ErrorCode::format, file,
                   ": key 'strip_accents' must be true, false or null, got ", it->dump());
    config.strip_accents = it->get<bool>();
  }
  detail::apply_model_max_length(root, file, config.max_length);
  read_special_token(root, "unk_token", file, config.unk_token);
  read_special_token(root, "cls_token", file, config.cls_token);
  read_special_token(root, "sep_token", file, config.sep_token);
  read_special_token(root, "pad_token", file, config.pad_token);
}

}  // namespace

BertTokenizer BertTokenizer::load(const std::filesystem::path& checkpoint_dir,
                                  std::size_t max_length) {
  detail::require(max_length >= 2, "BertTokenizer::load: max_length must be >= 2, got ",
                  max_length);
  BertTokenizerConfig config;
  config.max_length = max_length;
  const std::filesystem::path config_path = checkpoint_dir / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::exists(config_path, ec)) read_tokenizer_config(config_path, config);

  const std::filesystem::path vocab_path = checkpoint_dir / "vocab.txt";
  const std::string bytes = detail::read_file(vocab_path);
  std::vector<std::string> vocab;
  vocab.reserve(bytes.size() / 6 + 1);
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    std::size_t end = bytes.find('\n', pos);
    if (end == std::string::npos) end = bytes.size();
    std::string_view line(bytes.data() + pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    vocab.emplace_back(line);
    pos = end + 1;
  }
  return BertTokenizer(std::make_shared<const Impl>(std::move(vocab), std::move(config),
                                                    ErrorCode::format, vocab_path.string()));
}

std::vector<std::string> BertTokenizer::basic_tokenize(std::string_view text) const {
  if (const auto bad = detail::find_invalid_utf8(text))
    detail::fail(ErrorCode::invalid_argument, "BertTokenizer: invalid UTF-8 at byte ", *bad);
  std::vector<std::string> tokens;
  impl_->basic(text, scratch(), [&](std::string_view token, std::size_t) {
    tokens.emplace_back(token);
    return true;
  });
  return tokens;
}

std::vector<std::int32_t> BertTokenizer::wordpiece(std::string_view word) const {
  if (const auto bad = detail::find_invalid_utf8(word))
    detail::fail(ErrorCode::invalid_argument, "BertTokenizer::wordpiece: invalid UTF-8 at byte ",
                 *bad);
  std::vector<std::int32_t> ids;
  impl_->wordpiece_into(word, count_code_points(word), ids, scratch().prefix_hashes);
  return ids;
}

std::vector<std::string> BertTokenizer::tokenize(std::string_view text) const {
  if (const auto bad = detail::find_invalid_utf8(text))
    detail::fail(ErrorCode::invalid_argument, "BertTokenizer: invalid UTF-8 at byte ", *bad);
  std::vector<std::string> tokens;
  Scratch& s = scratch();
  impl_->basic(text, s, [&](std::string_view token, std::size_t n_chars) {
    s.ids.clear();
    impl_->wordpiece_into(token, n_chars, s.ids, s.prefix_hashes);
    for (const std::int32_t id : s.ids)
      tokens.push_back(impl_->vocab[static_cast<std::size_t>(id)]);
    return true;
  });
  return tokens;
}

std::vector<std::int32_t> BertTokenizer::encode(std::string_view text,
                                                std::size_t text_index) const {
  std::vector<std::int32_t>& ids = scratch().encoded;
  impl_->encode_to(text, text_index, impl_->config.max_length, ids);
  return ids;
}

std::size_t BertTokenizer::encode_into(std::string_view text, std::span<std::int32_t> out,
                                       std::size_t text_index) const {
  detail::require(out.size() >= 2, "BertTokenizer::encode_into: text ", text_index,
                  ": output buffer holds ", out.size(), " ids, needs at least 2 ([CLS] [SEP])");
  std::vector<std::int32_t>& ids = scratch().encoded;
  impl_->encode_to(text, text_index, std::min(out.size(), impl_->config.max_length), ids);
  std::copy(ids.begin(), ids.end(), out.begin());
  return ids.size();
}

std::size_t BertTokenizer::vocab_size() const noexcept { return impl_->vocab.size(); }
std::size_t BertTokenizer::max_length() const noexcept { return impl_->config.max_length; }
std::string_view BertTokenizer::kind() const noexcept { return "wordpiece"; }

std::int32_t BertTokenizer::id_of(std::string_view token) const { return impl_->whole.find(token); }

const std::string& BertTokenizer::token_of(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= impl_->vocab.size())
    detail::fail(ErrorCode::invalid_argument, "BertTokenizer::token_of: id ", id,
                 " is outside [0, ", impl_->vocab.size(), ")");
  return impl_->vocab[static_cast<std::size_t>(id)];
}

std::int32_t BertTokenizer::cls_id() const noexcept { return impl_->cls; }
std::int32_t BertTokenizer::sep_id() const noexcept { return impl_->sep; }
std::int32_t BertTokenizer::pad_id() const noexcept { return impl_->pad; }
std::int32_t BertTokenizer::unk_id() const noexcept { return impl_->unk; }
const BertTokenizerConfig& BertTokenizer::config() const noexcept { return impl_->config; }

}  // namespace funnel
