// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// BertTokenizer: the WordPiece tokenizer of BERT-family checkpoints.
///
/// Follows the reference BERT tokenizer (Google's tokenization.py and the
/// Hugging Face "slow" BertTokenizer), step by step:
///  1. Clean-up: NUL, U+FFFD and control characters are dropped; every
///     whitespace character becomes a space. Whitespace is ' ', '\\t', '\\n',
///     '\\r' and category Zs. Control is every category C* (Cc, Cf, Co, Cn)
///     except '\\t', '\\n', '\\r', as Hugging Face (slow and fast) defines it;
///     Google's original drops only Cc and Cf, so private-use and unassigned
///     code points differ (dropped here, [UNK] there). Note that form feed,
///     vertical tab, U+001C..U+001F and U+0085 are controls, so they are
///     dropped, not turned into spaces.
///  2. When tokenize_chinese_chars is set, every CJK ideograph becomes a token
///     of its own. The ranges are BERT's: U+4E00-9FFF, U+3400-4DBF,
///     U+20000-2A6DF, U+2A700-2B73F, U+2B740-2B81F, U+2B820-2CEAF, U+F900-FAFF,
///     U+2F800-2FA1F. Hangul, kana and the other scripts are not split.
///  3. Canonical composition (NFC), as the current Hugging Face slow
///     tokenizer does (it only matters when accents are kept: decomposed
///     input then matches composed vocabulary entries, and CJK compatibility
///     ideographs map to their unified forms).
///  4. Whitespace splitting: on spaces and on U+2028/U+2029 (which Python's
///     str.split() also treats as whitespace).
///  5. Per whitespace token: lower-casing when lower_case is set (Python's
///     str.lower(): simple Unicode lower-case mappings from utf8proc, plus
///     U+0130 'İ' -> "i̇" (i + U+0307) and the Final_Sigma rule for 'Σ'); then,
///     when accents are stripped, canonical decomposition (NFD) and removal of
///     every nonspacing mark (category Mn). Note that this decomposes Hangul
///     syllables into conjoining jamo and drops kana voicing marks and Indic
///     vowel signs, exactly as BERT's uncased multilingual models expect.
///  6. Punctuation splitting: every punctuation character is a token of its
///     own. Punctuation is ASCII 33-47, 58-64, 91-96, 123-126 (so '$', '+',
///     '<', '=', '>', '^', '`', '|', '~' count) or any category P*.
///  7. WordPiece: greedy longest-match-first over the vocabulary, with "##"
///     marking pieces that continue a word; a word that cannot be split
///     completely, or that is longer than max_input_chars_per_word code
///     points, becomes one [UNK].
///
/// Differences from the Hugging Face slow tokenizer, all deliberate: the
/// text is always plain text (a literal "[SEP]" in a text is tokenized as
/// '[', "sep", ']', as Google's tokenizer does, never as the special token);
/// Unicode properties come from utf8proc (its Unicode version may differ
/// from the Python that produced a checkpoint, for code points assigned in
/// between); Python's Cased and Case_Ignorable properties, which the
/// Final_Sigma rule needs, are rebuilt from categories, case mappings and
/// short lists of exceptions. The Hugging Face fast tokenizer differs from
/// both in two rare cases: it applies no NFC and lower-cases 'Σ' to 'σ'
/// everywhere.
///
/// Threading: immutable after construction; every const method may run
/// concurrently from many threads (each thread reuses its own scratch
/// buffers) and none spawns threads.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "funnel/tokenizer.hpp"

namespace funnel {

/// Settings of a BertTokenizer (defaults are those of bert-base-uncased).
struct BertTokenizerConfig {
  /// Lower-cases every token (Hugging Face do_lower_case).
  bool lower_case = true;
  /// Strips accents (NFD, then drops category Mn). Unset follows lower_case,
  /// as in Hugging Face: uncased models strip, cased models keep accents.
  std::optional<bool> strip_accents;
  /// Makes every CJK ideograph a token of its own.
  bool tokenize_chinese_chars = true;
  /// Largest number of ids encode() returns, [CLS] and [SEP] included; >= 2.
  std::size_t max_length = 512;
  /// Words longer than this many code points become [UNK]; >= 1.
  std::size_t max_input_chars_per_word = 100;
  std::string unk_token = "[UNK]";  ///< token for unknown words; must be in the vocabulary
  std::string cls_token = "[CLS]";  ///< first token of every sequence; must be in the vocabulary
  std::string sep_token = "[SEP]";  ///< last token of every sequence; must be in the vocabulary
  std::string pad_token = "[PAD]";  ///< padding token (for batching); must be in the vocabulary

  /// Whether accents are stripped once strip_accents' default is resolved.
  [[nodiscard]] bool strips_accents() const noexcept { return strip_accents.value_or(lower_case); }

  /// Checks max_length >= 2, max_input_chars_per_word >= 1 and non-empty
  /// special tokens.
  /// @throws Error(invalid_argument) naming the bad field and its value.
  void validate() const;
};

/// BERT's WordPiece tokenizer (see the file comment for the exact rules).
///
/// Cheap to copy: copies share the immutable vocabulary.
class BertTokenizer final : public Tokenizer {
 public:
  /// Builds a tokenizer from a vocabulary.
  /// @param[in] vocab  token strings in id order (the lines of vocab.txt)
  /// @param[in] config settings; validated
  /// @throws Error(invalid_argument) for an invalid config, an empty token,
  ///         a token that is not valid UTF-8, a duplicate token (naming both
  ///         lines, counted from 1), a special token missing from the
  ///         vocabulary, or more than 2^31-1 tokens.
  BertTokenizer(std::vector<std::string> vocab, BertTokenizerConfig config);

  /// Loads `<checkpoint_dir>/vocab.txt` (one token per line; "\n" or "\r\n"
  /// line ends) and, when present, `<checkpoint_dir>/tokenizer_config.json`,
  /// whose keys do_lower_case, strip_accents (true, false or null),
  /// tokenize_chinese_chars, model_max_length and unk/cls/sep/pad_token (a
  /// string or an object with "content") are honoured; other keys are
  /// ignored, except do_basic_tokenize = false, which is refused.
  /// @param[in] checkpoint_dir a Hugging Face checkpoint directory
  /// @param[in] max_length     upper bound on config().max_length; the
  ///                           result is min(max_length, model_max_length)
  /// @throws Error(io) naming the path when vocab.txt cannot be read;
  ///         Error(format) naming the file and line (vocab.txt) or the file
  ///         and key (tokenizer_config.json) for bad content;
  ///         Error(unsupported) for do_basic_tokenize = false;
  ///         Error(invalid_argument) when max_length < 2.
  static BertTokenizer load(const std::filesystem::path& checkpoint_dir,
                            std::size_t max_length = 512);

  /// Basic tokenization (steps 1-6): clean-up, CJK splitting, NFC,
  /// whitespace splitting, lower-casing and accent stripping, punctuation
  /// splitting. Returns the tokens as UTF-8 strings.
  /// @throws Error(invalid_argument) naming the byte offset for invalid UTF-8.
  [[nodiscard]] std::vector<std::string> basic_tokenize(std::string_view text) const;

  /// WordPiece of one basic token (step 7): ids of the greedy longest-match
  /// pieces, "##" pieces after the first, or one unk_id() when the word
  /// cannot be split completely or has more than max_input_chars_per_word
  /// code points. The word is used as given (not cleaned, lower-cased or
  /// split further); an empty word gives no ids.
  /// @throws Error(invalid_argument) naming the byte offset for invalid UTF-8.
  [[nodiscard]] std::vector<std::int32_t> wordpiece(std::string_view word) const;

  /// Basic tokenization then WordPiece, as token strings, without [CLS],
  /// [SEP] or truncation (Hugging Face's tokenize()); for inspection.
  /// @throws Error(invalid_argument) naming the byte offset for invalid UTF-8.
  [[nodiscard]] std::vector<std::string> tokenize(std::string_view text) const override;

  /// Ids of [CLS], the text's WordPiece tokens, [SEP], with the tokens
  /// truncated so that the total is at most config().max_length ([SEP] is
  /// always kept). The empty text gives [CLS] [SEP].
  /// @param[in] text       UTF-8 text
  /// @param[in] text_index position of the text in the caller's batch; only
  ///                       used in error messages
  /// @throws Error(invalid_argument) for invalid UTF-8, naming text_index and
  ///         the byte offset of the first bad sequence.
  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view text,
                                                 std::size_t text_index = 0) const override;

  /// Like encode(), but writes into a caller buffer (no allocation once the
  /// calling thread's scratch buffers have grown), truncating to
  /// min(out.size(), config().max_length) ids.
  /// @param[in]  text       UTF-8 text
  /// @param[out] out        receives the ids; size >= 2
  /// @param[in]  text_index position of the text in the caller's batch (errors)
  /// @return the number of ids written, in [2, min(out.size(), max_length)]
  /// @throws Error(invalid_argument) for invalid UTF-8 (as encode()) or
  ///         out.size() < 2.
  std::size_t encode_into(std::string_view text, std::span<std::int32_t> out,
                          std::size_t text_index = 0) const;

  /// Number of tokens in the vocabulary.
  [[nodiscard]] std::size_t vocab_size() const noexcept override;
  /// config().max_length.
  [[nodiscard]] std::size_t max_length() const noexcept override;
  /// "wordpiece".
  [[nodiscard]] std::string_view kind() const noexcept override;
  /// Id of a token, or -1 when it is not in the vocabulary.
  [[nodiscard]] std::int32_t id_of(std::string_view token) const;
  /// Token string of an id.
  /// @throws Error(invalid_argument) when id is outside [0, vocab_size()).
  [[nodiscard]] const std::string& token_of(std::int32_t id) const;
  [[nodiscard]] std::int32_t cls_id() const noexcept;           ///< id of config().cls_token
  [[nodiscard]] std::int32_t sep_id() const noexcept;           ///< id of config().sep_token
  [[nodiscard]] std::int32_t pad_id() const noexcept override;  ///< id of config().pad_token
  [[nodiscard]] std::int32_t unk_id() const noexcept;           ///< id of config().unk_token
  /// The settings in effect (after load(): those read from the checkpoint).
  [[nodiscard]] const BertTokenizerConfig& config() const noexcept;

 private:
  struct Impl;
  explicit BertTokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;  // immutable, shared by copies
};

}  // namespace funnel
