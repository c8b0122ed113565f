// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// SentencePieceTokenizer: XLM-RoBERTa's tokenizer, which
/// multilingual-e5-small and the Multilingual-MiniLM models pair with a BERT
/// network (BertEncoder reads it from such checkpoints).
///
/// The checkpoint holds `sentencepiece.bpe.model`, a SentencePiece unigram
/// model; the text is segmented by the SentencePiece library itself
/// (Debian's libsentencepiece), with the normalisation stored in the model
/// (XLM-R's: NFKC plus SentencePiece's extra rules, whitespace collapsed, a
/// "▁" before every word). Its ids are then mapped the way Hugging Face's
/// XLMRobertaTokenizer maps them (fairseq's dictionary order):
///   <s> 0, <pad> 1, </s> 2, <unk> 3 (also for every piece SentencePiece
///   reports as unknown), every other piece at its SentencePiece id + 1,
///   <mask> after the last piece.
/// A sequence is <s> pieces </s>, the pieces truncated to max_length - 2.
///
/// The text is always plain text: a literal "<s>" or "<mask>" in it is
/// segmented like any other characters (Hugging Face would turn it into the
/// special token). Hugging Face's fast tokenizer (tokenizer.json) agrees
/// with the SentencePiece model on ordinary text.
///
/// Threading: immutable after construction; every const method may run
/// concurrently from many threads. Cheap to copy: copies share the model.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "funnel/tokenizer.hpp"

namespace funnel {

/// XLM-RoBERTa's SentencePiece tokenizer (see the file comment).
class SentencePieceTokenizer final : public Tokenizer {
 public:
  static constexpr std::int32_t kBosId = 0;  ///< <s>, the first id of every sequence
  static constexpr std::int32_t kPadId = 1;  ///< <pad>
  static constexpr std::int32_t kEosId = 2;  ///< </s>, the last id of every sequence
  static constexpr std::int32_t kUnkId = 3;  ///< <unk>

  /// Loads a SentencePiece model file.
  /// @param[in] model_file a SentencePiece model (sentencepiece.bpe.model)
  /// @param[in] max_length largest number of ids encode() returns; >= 2
  /// @throws Error(invalid_argument) when max_length < 2;
  ///         Error(io) naming the file when it cannot be read;
  ///         Error(format) naming the file when it is not a SentencePiece
  ///         model (truncated, corrupt) or has no pieces;
  ///         Error(unsupported) naming the file when its special pieces are
  ///         not XLM-R's (<unk> 0, <s> 1, </s> 2), so that the id mapping
  ///         above would not hold.
  explicit SentencePieceTokenizer(const std::filesystem::path& model_file,
                                  std::size_t max_length = 512);

  /// Loads `<checkpoint_dir>/sentencepiece.bpe.model` and, when present,
  /// `<checkpoint_dir>/tokenizer_config.json`, whose model_max_length is
  /// honoured and whose tokenizer_class, when given, must be
  /// XLMRobertaTokenizer or XLMRobertaTokenizerFast; other keys are ignored.
  /// @param[in] checkpoint_dir a Hugging Face checkpoint directory
  /// @param[in] max_length     upper bound on max_length(); the result is
  ///                           min(max_length, model_max_length)
  /// @throws as the constructor; Error(format) naming the file and key for a
  ///         bad tokenizer_config.json; Error(unsupported) for another
  ///         tokenizer_class.
  static SentencePieceTokenizer load(const std::filesystem::path& checkpoint_dir,
                                     std::size_t max_length = 512);

  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view text,
                                                 std::size_t text_index = 0) const override;
  /// The pieces ("▁word", ...) as SentencePiece segments the text, unknown
  /// ones included as SentencePiece spells them.
  [[nodiscard]] std::vector<std::string> tokenize(std::string_view text) const override;
  /// pieces() + 2: the four fairseq specials replace SentencePiece's three,
  /// and <mask> follows the last piece.
  [[nodiscard]] std::size_t vocab_size() const noexcept override;
  [[nodiscard]] std::size_t max_length() const noexcept override;
  [[nodiscard]] std::int32_t pad_id() const noexcept override { return kPadId; }
  /// "sentencepiece".
  [[nodiscard]] std::string_view kind() const noexcept override;

  /// Number of pieces in the SentencePiece model (its own specials included).
  [[nodiscard]] std::size_t pieces() const noexcept;
  /// Id of <mask>: pieces() + 1.
  [[nodiscard]] std::int32_t mask_id() const noexcept;
  /// Model id of a piece ("▁shoes"), or -1 when it is not a piece; the
  /// special tokens' strings give their fairseq ids.
  [[nodiscard]] std::int32_t id_of(std::string_view piece) const;
  /// Piece (or special token) of a model id.
  /// @throws Error(invalid_argument) when id is outside [0, vocab_size()).
  [[nodiscard]] std::string token_of(std::int32_t id) const;

 private:
  struct Impl;
  explicit SentencePieceTokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;  // immutable, shared by copies
};

}  // namespace funnel
