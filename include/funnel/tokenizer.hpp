// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Tokenizer: what a transformer encoder needs from its tokenizer.
///
/// Two implementations: BertTokenizer (BERT's WordPiece, vocab.txt) and
/// SentencePieceTokenizer (XLM-RoBERTa's SentencePiece model, as used by
/// multilingual-e5 and the Multilingual-MiniLM models). BertEncoder picks the
/// one its checkpoint directory holds.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace funnel {

/// Text to token ids, with the model's special tokens.
///
/// Threading: implementations are immutable after construction; every const
/// method may run concurrently from many threads.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  /// Ids of one text as the model reads it: the start token, the text's
  /// tokens, the end token ([CLS] ... [SEP] or <s> ... </s>), the tokens
  /// truncated so that the total is at most max_length() (the end token is
  /// always kept). The empty text gives the two special tokens.
  /// @param[in] text       UTF-8 text
  /// @param[in] text_index position of the text in the caller's batch; only
  ///                       used in error messages
  /// @throws Error(invalid_argument) for invalid UTF-8, naming text_index and
  ///         the byte offset of the first bad sequence.
  [[nodiscard]] virtual std::vector<std::int32_t> encode(std::string_view text,
                                                         std::size_t text_index = 0) const = 0;

  /// The text's tokens as strings, without special tokens or truncation
  /// (Hugging Face's tokenize()); for inspection.
  /// @throws Error(invalid_argument) naming the byte offset for invalid UTF-8.
  [[nodiscard]] virtual std::vector<std::string> tokenize(std::string_view text) const = 0;

  /// One past the largest id encode() can return: the rows of the word
  /// embeddings that the tokenizer can reach.
  [[nodiscard]] virtual std::size_t vocab_size() const noexcept = 0;
  /// Largest number of ids encode() returns, special tokens included.
  [[nodiscard]] virtual std::size_t max_length() const noexcept = 0;
  /// Id of the padding token.
  [[nodiscard]] virtual std::int32_t pad_id() const noexcept = 0;
  /// "wordpiece" or "sentencepiece".
  [[nodiscard]] virtual std::string_view kind() const noexcept = 0;

 protected:
  Tokenizer() = default;
  Tokenizer(const Tokenizer&) = default;
  Tokenizer(Tokenizer&&) = default;
  Tokenizer& operator=(const Tokenizer&) = default;
  Tokenizer& operator=(Tokenizer&&) = default;
};

}  // namespace funnel
