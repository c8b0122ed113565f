// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// HashingEncoder: a weight-free, deterministic multilingual text encoder.
///
/// Pipeline for one text:
///  1. Normalisation: Unicode compatibility decomposition (full-width and
///     half-width forms, ligatures), case folding ("ß" -> "ss"), removal of
///     default-ignorable code points (soft hyphen, zero-width space), removal
///     of the generic combining diacritics (U+0300..U+036F and the other
///     "Combining Diacritical Marks" blocks, so "Café" == "cafe"), then
///     canonical recomposition. Script-specific marks such as the kana voicing
///     marks or Indic vowel signs are kept, so "ガ" != "カ".
///  2. Segmentation into runs: CJK runs (Han incl. extensions and
///     compatibility ideographs, Hiragana, Katakana, Hangul syllables) and
///     words (letters, digits and marks of every other script). Everything
///     else (spaces, punctuation, symbols, controls) separates runs.
///  3. Features, each hashed together with its kind (CJK, word, char) so that
///     features of different kinds never share a hash even when their bytes
///     are equal:
///     - every character n-gram of a CJK run, n in [cjk_min_n, cjk_max_n];
///     - word n-grams over consecutive words, n in [word_min_n, word_max_n]
///       (punctuation does not break the sequence, a CJK run does), hashed as
///       the marked words joined by one space ("Men's shoes" -> "<men> <s>",
///       "<s> <shoes>", ...);
///     - character n-grams, n in [char_min_n, char_max_n], of each word
///       wrapped in boundary markers ("ipad" -> "<ipad>").
///     A range whose min_n is 0 is disabled (its max_n is then ignored).
///  4. Signed feature hashing: a seeded 64-bit hash of (kind, UTF-8 bytes of
///     the feature) picks a bucket in [0, dim) and an independent sign. Equal
///     features are counted first; a feature seen c times adds
///     sign * kind_weight * tf(c) to its bucket, where tf(c) = log(1 + c) when
///     sublinear_tf is set and tf(c) = c otherwise.
///  5. L2 normalisation. A text with no features (e.g. "" or "!?") gives an
///     all-zero row; so does the (rare) text whose signed features cancel out.
///
/// Texts sharing many n-grams therefore come out close in cosine similarity.
/// The output depends only on the config and the text: the same config gives
/// the same vectors in every process and on every platform (for non-ASCII
/// text, given the same Unicode version in the linked utf8proc), so vectors
/// stored in an index stay comparable with freshly encoded queries.
///
/// Threading: immutable after construction; encode() may run concurrently
/// from many threads and spawns no threads.

#include <cstddef>
#include <cstdint>
#include <string>

#include "funnel/encoder.hpp"

namespace funnel {

/// Settings of a HashingEncoder (defaults give a good general encoder).
struct HashingEncoderConfig {
  /// Largest accepted n for any n-gram range.
  static constexpr std::size_t kMaxNgram = 16;
  /// Largest accepted dim.
  static constexpr std::size_t kMaxDim = std::size_t{1} << 24;

  std::size_t dim = 256;                     ///< output dimension, in [1, kMaxDim]
  std::uint64_t seed = 0x66756e6e656cULL;    ///< hash seed; different seeds give unrelated vectors
  std::size_t cjk_min_n = 1, cjk_max_n = 3;  ///< CJK character n-gram sizes (min 0 disables)
  std::size_t word_min_n = 1, word_max_n = 2;  ///< word n-gram sizes (min 0 disables)
  std::size_t char_min_n = 3, char_max_n = 5;  ///< within-word character n-gram sizes,
                                               ///< boundary markers included (min 0 disables)
  float cjk_weight = 1.0F;                     ///< weight of each CJK n-gram, finite and >= 0
  float word_weight = 1.0F;                    ///< weight of each word n-gram, finite and >= 0
  float char_weight = 0.5F;  ///< weight of each within-word character n-gram, finite and >= 0
  /// Weights a feature seen c times in a text by log(1 + c) instead of c
  /// (sublinear tf), so that repeated words do not dominate a title.
  bool sublinear_tf = true;

  /// Checks every field: dim in [1, kMaxDim]; for each enabled range
  /// 1 <= min_n <= max_n <= kMaxNgram; weights finite and >= 0; at least one
  /// range enabled with a positive weight.
  /// @throws Error(invalid_argument) naming the bad field and its value.
  void validate() const;
};

/// The weight-free default Encoder (see the file comment for the algorithm).
///
/// TextRole is accepted and ignored: queries and documents are encoded the
/// same way, so a query and an identical item title give the same vector.
class HashingEncoder final : public Encoder {
 public:
  /// @param[in] config settings; validated here
  /// @throws Error(invalid_argument) when config.validate() does.
  explicit HashingEncoder(HashingEncoderConfig config = {});

  [[nodiscard]] std::size_t dim() const override { return config_.dim; }

  /// "hashing(dim=<dim>)".
  [[nodiscard]] std::string name() const override;

  /// Encodes a batch of texts (see Encoder::encode). `role` is ignored.
  /// All texts are validated before `out` is written: on a throw, `out` is
  /// left untouched.
  /// @throws Error(invalid_argument) when out is not texts.size() x dim(),
  ///         or when a text is not valid UTF-8 (the message names the text's
  ///         index and the byte offset of the first invalid sequence).
  void encode(std::span<const std::string_view> texts, MatrixView<float> out,
              TextRole role = TextRole::document) const override;
  using Encoder::encode;

  /// The settings this encoder was built with.
  [[nodiscard]] const HashingEncoderConfig& config() const noexcept { return config_; }

 private:
  HashingEncoderConfig config_;
};

}  // namespace funnel
