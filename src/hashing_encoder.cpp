// SPDX-License-Identifier: Apache-2.0
#include "funnel/hashing_encoder.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cmath>
#include <cstring>
#include <string_view>
#include <vector>

#include <utf8proc.h>

#include "internal/error_util.hpp"
#include "internal/utf8.hpp"

namespace funnel {
namespace {

// ---------------------------------------------------------------------------
// Hashing

// Feature kinds enter the hash seed, so equal bytes of different kinds never
// share a hash by construction.
enum class FeatureKind : std::uint64_t { cjk = 1, word = 2, chars = 3 };

constexpr std::uint64_t kMulA = 0x9e3779b97f4a7c15ULL;
constexpr std::uint64_t kMulB = 0xc2b2ae3d27d4eb4fULL;
constexpr std::uint64_t kMulC = 0x165667b19e3779f9ULL;

// The splitmix64 finaliser: a bijection with full avalanche.
constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// Little-endian loads, so hashes (and thus vectors) are the same on every
// platform.
inline std::uint64_t load_le64(const char* p) noexcept {
  std::uint64_t v = 0;
  std::memcpy(&v, p, sizeof v);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}
inline std::uint64_t load_le32(const char* p) noexcept {
  std::uint32_t v = 0;
  std::memcpy(&v, p, sizeof v);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  return v;
}

// Packs a tail of 1..7 bytes into one word with fixed-size loads only (a
// variable-size copy costs a store-forwarding stall per feature). The packing
// is injective for a given n, and n is mixed into the hash separately.
inline std::uint64_t load_tail(const char* p, std::size_t n) noexcept {
  assert(n >= 1 && n <= 7);
  if (n >= 4) return load_le32(p) | (load_le32(p + n - 4) << 32);
  const auto byte = [p](std::size_t i) {
    return static_cast<std::uint64_t>(static_cast<unsigned char>(p[i]));
  };
  return byte(0) | (byte(n / 2) << 8) | (byte(n - 1) << 16);
}

// Seeded 64-bit hash of a byte string: 8-byte blocks are scrambled and folded
// into the state, the length is mixed into the initial state, and a
// full-avalanche finaliser ends it.
inline std::uint64_t hash_bytes(std::uint64_t seed, std::string_view s) noexcept {
  std::uint64_t h = seed ^ (static_cast<std::uint64_t>(s.size()) * kMulA);
  const char* p = s.data();
  std::size_t n = s.size();
  auto fold = [&h](std::uint64_t block) {
    block *= kMulB;
    block = std::rotl(block, 31);
    block *= kMulA;
    h ^= block;
    h = std::rotl(h, 27) * kMulC + 0x52dce729ULL;
  };
  for (; n >= 8; p += 8, n -= 8) fold(load_le64(p));
  if (n > 0) fold(load_tail(p, n));
  return mix64(h);
}

// ---------------------------------------------------------------------------
// Normalisation and classification

// The generic combining diacritics used by Latin, Greek and Cyrillic. They
// are dropped (so "Café" == "cafe"); script-specific marks such as the kana
// voicing marks (U+3099) or Indic vowel signs carry meaning and stay.
constexpr bool is_generic_diacritic(std::int32_t cp) noexcept {
  return (cp >= 0x0300 && cp <= 0x036F) || (cp >= 0x1AB0 && cp <= 0x1AFF) ||
         (cp >= 0x1DC0 && cp <= 0x1DFF) || (cp >= 0x20D0 && cp <= 0x20FF) ||
         (cp >= 0xFE20 && cp <= 0xFE2F);
}

constexpr bool in_cjk_block(std::int32_t cp) noexcept {
  return (cp >= 0x4E00 && cp <= 0x9FFF) ||    // CJK unified ideographs
         (cp >= 0x3400 && cp <= 0x4DBF) ||    // extension A
         (cp >= 0x20000 && cp <= 0x3134F) ||  // extensions B..G
         (cp >= 0xF900 && cp <= 0xFAFF) ||    // compatibility ideographs
         (cp >= 0x3040 && cp <= 0x30FF) ||    // Hiragana, Katakana
         (cp >= 0x31F0 && cp <= 0x31FF) ||    // Katakana phonetic extensions
         (cp >= 0xAC00 && cp <= 0xD7AF) ||    // Hangul syllables
         cp == 0x3005 || cp == 0x3007;        // 々 (iteration mark), 〇
}

enum class CharClass : std::uint8_t { separator, cjk, word };

inline CharClass classify(std::int32_t cp) noexcept {
  if (cp < 0x80) {
    const bool alnum =
        (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9');
    return alnum ? CharClass::word : CharClass::separator;
  }
  const utf8proc_category_t cat = utf8proc_category(cp);
  // Letters (Lu..Lo), marks (Mn..Me) and numbers (Nd..No) are contiguous.
  const bool wordlike = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_NO;
  if (!wordlike) return CharClass::separator;  // punctuation such as "・" inside CJK blocks
  return in_cjk_block(cp) ? CharClass::cjk : CharClass::word;
}

// A run of code points laid out in Scratch::bytes. Word runs are stored
// wrapped in '<' '>' markers; runs are separated by one ' ', so any sequence
// of consecutive words is one contiguous byte range.
struct Run {
  CharClass cls = CharClass::separator;
  std::size_t first_offset = 0;  // index into Scratch::offsets
  std::size_t length = 0;        // code points, markers included
};

// Counts the occurrences of each distinct feature of one text, in an
// open-addressing table keyed by the feature's 64-bit hash (features hash
// with their kind, so equal hashes imply equal weights). Counting in a table
// rather than sorting the hashes keeps the cost at a few nanoseconds per
// feature; the table is reused across texts and only grows.
class FeatureCounter {
 public:
  void add(std::uint64_t hash, float weight) {
    if (2 * (used_.size() + 1) > slots_.size()) grow();
    std::size_t i = static_cast<std::size_t>(hash >> 1) & mask_;
    for (;;) {
      Slot& slot = slots_[i];
      if (slot.count == 0) {
        slot = Slot{hash, weight, 1};
        used_.push_back(i);
        return;
      }
      if (slot.hash == hash) {
        ++slot.count;
        return;
      }
      i = (i + 1) & mask_;
    }
  }

  /// Calls fn(hash, weight, count) per distinct feature, in first-seen order
  /// (so the float sums are reproducible), and empties the counter.
  template <class Fn>
  void drain(Fn&& fn) {
    for (const std::size_t i : used_) {
      Slot& slot = slots_[i];
      fn(slot.hash, slot.weight, static_cast<std::size_t>(slot.count));
      slot.count = 0;
    }
    used_.clear();
  }

 private:
  struct Slot {
    std::uint64_t hash = 0;
    float weight = 0.0F;
    std::uint32_t count = 0;  // 0 marks an empty slot
  };

  void grow() {
    std::vector<Slot> old(std::max<std::size_t>(64, 2 * slots_.size()));
    old.swap(slots_);
    mask_ = slots_.size() - 1;
    std::vector<std::size_t> old_used;
    old_used.swap(used_);
    used_.reserve(old_used.size());
    for (const std::size_t j : old_used) {
      const Slot& slot = old[j];
      std::size_t i = static_cast<std::size_t>(slot.hash >> 1) & mask_;
      while (slots_[i].count != 0) i = (i + 1) & mask_;
      slots_[i] = slot;
      used_.push_back(i);
    }
  }

  std::vector<Slot> slots_;  // size 0 or a power of two
  std::size_t mask_ = 0;
  std::vector<std::size_t> used_;  // occupied slots, in insertion order
};

// Per-call buffers, reused across the texts of one batch; each call owns its
// own, so concurrent encode() calls share nothing mutable.
struct Scratch {
  std::vector<utf8proc_int32_t> cps;  // normalised code points
  std::string bytes;                  // UTF-8 of the runs, see Run
  std::vector<std::size_t> offsets;   // per run: byte start of each code point, then its end
  std::vector<Run> runs;
  FeatureCounter counter;
};

bool is_ascii(std::string_view s) noexcept {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// Fills scratch.cps with the normalised code points of a valid UTF-8 text.
void normalise(std::string_view text, Scratch& scratch) {
  auto& cps = scratch.cps;
  if (is_ascii(text)) {
    // NFKC + case folding of ASCII is lower-casing; skipping utf8proc makes
    // English titles several times faster.
    cps.resize(text.size());
    std::transform(text.begin(), text.end(), cps.begin(), [](char c) {
      return (c >= 'A' && c <= 'Z') ? static_cast<utf8proc_int32_t>(c - 'A' + 'a')
                                    : static_cast<utf8proc_int32_t>(c);
    });
    return;
  }
  // Decompose into our own buffer rather than utf8proc_map, which would
  // allocate a fresh string per text. STRIPMARK is not used: it would also
  // strip the kana voicing marks ("ガ" -> "カ") and Indic vowel signs.
  const auto options = static_cast<utf8proc_option_t>(UTF8PROC_COMPOSE | UTF8PROC_COMPAT |
                                                      UTF8PROC_CASEFOLD | UTF8PROC_IGNORE);
  const auto* src = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  const auto src_len = static_cast<utf8proc_ssize_t>(text.size());
  if (cps.size() < text.size() + 16) cps.resize(text.size() + 16);
  utf8proc_ssize_t n = 0;
  for (;;) {
    n = utf8proc_decompose(src, src_len, cps.data(), static_cast<utf8proc_ssize_t>(cps.size()),
                           options);
    if (n < 0) {
      detail::fail(ErrorCode::internal, "utf8proc_decompose failed: ", utf8proc_errmsg(n));
    }
    if (static_cast<std::size_t>(n) <= cps.size()) break;
    cps.resize(static_cast<std::size_t>(n));  // too small: n is the size needed
  }
  const auto kept = std::remove_if(cps.begin(), cps.begin() + n, is_generic_diacritic);
  n = utf8proc_normalize_utf32(cps.data(), kept - cps.begin(), options);
  if (n < 0) {
    detail::fail(ErrorCode::internal, "utf8proc_normalize_utf32 failed: ", utf8proc_errmsg(n));
  }
  cps.resize(static_cast<std::size_t>(n));
}

// Splits scratch.cps into runs laid out in scratch.bytes.
void segment(Scratch& scratch) {
  scratch.bytes.clear();
  scratch.offsets.clear();
  scratch.runs.clear();
  Run* open = nullptr;
  auto close_run = [&] {
    if (open == nullptr) return;
    if (open->cls == CharClass::word) {
      scratch.offsets.push_back(scratch.bytes.size());
      scratch.bytes.push_back('>');
      ++open->length;
    }
    scratch.offsets.push_back(scratch.bytes.size());
    open = nullptr;
  };
  for (const utf8proc_int32_t cp : scratch.cps) {
    const CharClass cls = classify(cp);
    if (open != nullptr && cls != open->cls) close_run();
    if (cls == CharClass::separator) continue;
    if (open == nullptr) {
      if (!scratch.runs.empty()) scratch.bytes.push_back(' ');
      scratch.runs.push_back(Run{cls, scratch.offsets.size(), 0});
      open = &scratch.runs.back();
      if (cls == CharClass::word) {
        scratch.offsets.push_back(scratch.bytes.size());
        scratch.bytes.push_back('<');
        ++open->length;
      }
    }
    scratch.offsets.push_back(scratch.bytes.size());
    detail::append_utf8(scratch.bytes, static_cast<char32_t>(cp));
    ++open->length;
  }
  close_run();
  // Each run holds length + 1 offsets (a start per code point, then its end).
  assert(scratch.offsets.size() == scratch.runs.size() + [&] {
    std::size_t total = 0;
    for (const Run& run : scratch.runs) total += run.length;
    return total;
  }());
}

struct KindSeeds {
  std::uint64_t cjk;
  std::uint64_t word;
  std::uint64_t chars;
};

KindSeeds kind_seeds(std::uint64_t seed) noexcept {
  auto of = [seed](FeatureKind kind) {
    return mix64(seed ^ mix64(static_cast<std::uint64_t>(kind) * kMulA));
  };
  return {of(FeatureKind::cjk), of(FeatureKind::word), of(FeatureKind::chars)};
}

// Appends the hash of every character n-gram, n in [min_n, max_n], of `run`.
void add_char_ngrams(Scratch& scratch, const Run& run, std::size_t min_n, std::size_t max_n,
                     std::uint64_t seed, float weight) {
  assert(run.first_offset + run.length < scratch.offsets.size());
  const std::size_t* off = scratch.offsets.data() + run.first_offset;
  const std::string_view bytes = scratch.bytes;
  for (std::size_t n = min_n; n <= std::min(max_n, run.length); ++n) {
    for (std::size_t i = 0; i + n <= run.length; ++i) {
      scratch.counter.add(hash_bytes(seed, bytes.substr(off[i], off[i + n] - off[i])), weight);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------

void HashingEncoderConfig::validate() const {
  using detail::require;
  require(dim >= 1 && dim <= kMaxDim, "HashingEncoderConfig.dim must be in [1, ", kMaxDim,
          "], got ", dim);
  auto check_range = [](const char* name, std::size_t min_n, std::size_t max_n) {
    if (min_n == 0) return;  // disabled
    require(min_n <= max_n, "HashingEncoderConfig.", name, "_min_n (", min_n, ") must be <= ", name,
            "_max_n (", max_n, "); set ", name, "_min_n = 0 to disable");
    require(max_n <= kMaxNgram, "HashingEncoderConfig.", name, "_max_n must be <= ", kMaxNgram,
            ", got ", max_n);
  };
  check_range("cjk", cjk_min_n, cjk_max_n);
  check_range("word", word_min_n, word_max_n);
  check_range("char", char_min_n, char_max_n);
  auto check_weight = [](const char* name, float w) {
    require(std::isfinite(w) && w >= 0.0F, "HashingEncoderConfig.", name,
            "_weight must be finite and >= 0, got ", w);
  };
  check_weight("cjk", cjk_weight);
  check_weight("word", word_weight);
  check_weight("char", char_weight);
  const bool any = (cjk_min_n > 0 && cjk_weight > 0.0F) || (word_min_n > 0 && word_weight > 0.0F) ||
                   (char_min_n > 0 && char_weight > 0.0F);
  require(any,
          "HashingEncoderConfig enables no feature: every n-gram range is disabled (min_n = 0) "
          "or has weight 0, so every text would encode to a zero vector");
}

HashingEncoder::HashingEncoder(HashingEncoderConfig config) : config_(config) {
  config_.validate();
}

std::string HashingEncoder::name() const { return detail::cat("hashing(dim=", config_.dim, ")"); }

void HashingEncoder::encode(std::span<const std::string_view> texts, MatrixView<float> out,
                            TextRole /*role: same encoding for queries and documents*/) const {
  const std::size_t dim = config_.dim;
  detail::require(out.rows == texts.size() && out.cols == dim,
                  "HashingEncoder::encode: out must be ", texts.size(), " x ", dim,
                  " (texts x dim), got ", out.rows, " x ", out.cols);
  detail::require(out.data != nullptr || out.empty(), "HashingEncoder::encode: out.data is null");
  // Validate everything first so that a bad text leaves `out` untouched.
  for (std::size_t i = 0; i < texts.size(); ++i) {
    if (const auto bad = detail::find_invalid_utf8(texts[i])) {
      detail::fail(ErrorCode::invalid_argument, "HashingEncoder::encode: texts[", i,
                   "] is not valid UTF-8 (invalid sequence at byte offset ", *bad, ")");
    }
  }

  const HashingEncoderConfig& c = config_;
  const KindSeeds seeds = kind_seeds(c.seed);
  const bool use_cjk = c.cjk_min_n > 0 && c.cjk_weight > 0.0F;
  const bool use_word = c.word_min_n > 0 && c.word_weight > 0.0F;
  const bool use_char = c.char_min_n > 0 && c.char_weight > 0.0F;
  // Almost every count is small: tabulate tf instead of calling log1p per feature.
  const auto tf_of = [sublinear = c.sublinear_tf](std::size_t count) {
    const auto x = static_cast<double>(count);
    return sublinear ? std::log1p(x) : x;
  };
  std::array<double, 32> tf_table{};
  for (std::size_t k = 0; k < tf_table.size(); ++k) tf_table[k] = tf_of(k);

  Scratch scratch;
  for (std::size_t t = 0; t < texts.size(); ++t) {
    normalise(texts[t], scratch);
    segment(scratch);

    const std::vector<Run>& runs = scratch.runs;
    const std::string_view bytes = scratch.bytes;
    for (std::size_t r = 0; r < runs.size(); ++r) {
      const Run& run = runs[r];
      if (run.cls == CharClass::cjk) {
        if (use_cjk)
          add_char_ngrams(scratch, run, c.cjk_min_n, c.cjk_max_n, seeds.cjk, c.cjk_weight);
        continue;
      }
      if (use_char) {
        add_char_ngrams(scratch, run, c.char_min_n, c.char_max_n, seeds.chars, c.char_weight);
      }
      if (!use_word) continue;
      // Word n-grams starting at this word: runs r..r+n-1, which must all be
      // words (a CJK run breaks the sequence). Their bytes are contiguous.
      const std::size_t begin = scratch.offsets[run.first_offset];
      std::size_t last = r;
      for (std::size_t n = 1; n <= c.word_max_n; ++n, ++last) {
        if (last >= runs.size() || runs[last].cls != CharClass::word) break;
        if (n < c.word_min_n) continue;
        const Run& end_run = runs[last];
        const std::size_t end = scratch.offsets[end_run.first_offset + end_run.length];
        scratch.counter.add(hash_bytes(seeds.word, bytes.substr(begin, end - begin)),
                            c.word_weight);
      }
    }

    const std::span<float> row = out.row(t);
    std::fill(row.begin(), row.end(), 0.0F);
    scratch.counter.drain([&](std::uint64_t h, float weight, std::size_t count) {
      const double tf = count < tf_table.size() ? tf_table[count] : tf_of(count);
      // Bucket from the high 32 bits (multiply-shift), sign from bit 0.
      const auto bucket = static_cast<std::size_t>(((h >> 32) * dim) >> 32);
      const float value = static_cast<float>(tf) * weight;
      row[bucket] += (h & 1U) != 0 ? -value : value;
    });

    double norm2 = 0.0;
    for (const float v : row) norm2 += static_cast<double>(v) * v;
    if (norm2 > 0.0) {
      const auto inv = static_cast<float>(1.0 / std::sqrt(norm2));
      for (float& v : row) v *= inv;
    }
  }
}

}  // namespace funnel
