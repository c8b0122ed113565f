// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// BertEncoder: a BERT-family transformer text encoder (all-MiniLM, bge,
/// e5-small-v2, multilingual-e5, bge-m3, BERT-base, ...) loaded from a
/// Hugging Face checkpoint directory and run on oneDNN in fp32, bf16 or int8.
///
/// What a checkpoint directory holds (see docs/bert-encoder.md):
///  - config.json: the architecture, model_type "bert" or "xlm-roberta"
///    (the same post-LayerNorm encoder; XLM-RoBERTa counts positions from
///    pad_token_id + 1): hidden_size, num_hidden_layers,
///    num_attention_heads, intermediate_size, vocab_size,
///    max_position_embeddings; optional type_vocab_size, layer_norm_eps,
///    pad_token_id, hidden_act "gelu", position_embedding_type "absolute";
///  - the tokenizer: vocab.txt (BERT's WordPiece, read by BertTokenizer) or,
///    without vocab.txt, sentencepiece.bpe.model (XLM-R's SentencePiece, as
///    multilingual-e5 and bge-m3 ship it; read by SentencePieceTokenizer),
///    each with an optional tokenizer_config.json;
///  - model.safetensors with the Hugging Face tensor names, with or without
///    the "bert." ("roberta.") prefix, in F32, F16 or BF16;
///  - optional sentence-transformers files: modules.json (Transformer,
///    Pooling, Normalize), <pooling dir>/config.json (CLS, mean, max or
///    mean/sqrt(len) pooling) and sentence_bert_config.json (max_seq_length).
///    Without them the encoder pools by the mean over the tokens.
///
/// Memory: an F32 checkpoint run in fp32 uses the memory-mapped weights in
/// place, except the query/key/value projections, which are concatenated
/// into one fused matrix (a copy of 3 * hidden^2 floats per layer), and
/// except with BertEncoderConfig::fp32_prepack. F16 and
/// BF16 checkpoints are converted to float once at load (the fp32 path then
/// holds a float copy of every weight). The bf16 and int8 paths hold their
/// own reordered bf16 / s8 copies of the projection weights and map the rest.
///
/// Threading: immutable after construction; encode() and forward() may be
/// called from many threads at once. Each call runs on config().threads
/// threads (an OpenMP team of the calling thread; the calling thread's
/// OpenMP thread count is set for the duration of the call and restored, so
/// no process-wide setting changes).

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "funnel/bert_tokenizer.hpp"
#include "funnel/encoder.hpp"
#include "funnel/matrix.hpp"
#include "funnel/sentencepiece_tokenizer.hpp"
#include "funnel/tokenizer.hpp"

namespace funnel {

/// Arithmetic of the transformer's matrix products.
enum class BertComputeType {
  /// bf16 where the CPU has AVX512_BF16 (or AMX), else fp32. int8 is never
  /// picked automatically: its error is larger (cosine >= 0.99 to fp32).
  automatic,
  /// float32 everywhere.
  fp32,
  /// bfloat16 inputs to every matrix product (weights reordered to bf16 once
  /// at load), float32 accumulation, LayerNorm, softmax and residuals in
  /// float32. Needs AVX512_BF16 or AMX.
  bf16,
  /// Dynamic int8 quantization of the linear layers: weights s8 with one
  /// scale per output channel (at load), activations u8 with a per-call
  /// scale and zero point, int32 accumulation dequantized to float32;
  /// attention, LayerNorm and residuals in float32. Needs AVX512_VNNI or AMX.
  int8,
};

/// "automatic", "fp32", "bf16" or "int8".
std::string_view to_string(BertComputeType type) noexcept;

/// How token states become one sentence vector.
enum class BertPooling {
  checkpoint,     ///< what the checkpoint's sentence-transformers files say; mean without them
  cls,            ///< the state of the first token ([CLS])
  mean,           ///< the mean over the sequence's tokens
  max,            ///< the element-wise maximum over the sequence's tokens
  mean_sqrt_len,  ///< the sum over the tokens divided by sqrt(number of tokens)
};

/// "checkpoint", "cls", "mean", "max" or "mean_sqrt_len".
std::string_view to_string(BertPooling pooling) noexcept;

/// Settings of a BertEncoder.
struct BertEncoderConfig {
  /// Largest accepted thread count.
  static constexpr std::size_t kMaxThreads = 1024;

  /// Hugging Face checkpoint directory (see the file comment).
  std::filesystem::path checkpoint_dir;
  /// Arithmetic; a type the CPU lacks is refused at construction.
  BertComputeType compute = BertComputeType::automatic;
  /// Threads per call, in [1, kMaxThreads].
  std::size_t threads = 1;
  /// Largest number of tokens per text, [CLS] and [SEP] included, >= 2. The
  /// effective limit is also capped by the checkpoint (config.json's
  /// max_position_embeddings, less the position offset of XLM-RoBERTa,
  /// tokenizer_config.json's model_max_length and sentence_bert_config.json's
  /// max_seq_length); longer texts are truncated.
  std::size_t max_length = 512;
  /// Most texts run through the transformer together, >= 1. Bigger batches
  /// amortise weight traffic; each batch holds about
  /// max_batch * max_length * (8 * hidden + intermediate) floats of scratch.
  std::size_t max_batch = 32;
  /// Prepended to every text encoded with TextRole::query, e.g. "query: "
  /// (e5) or "Represent this sentence for searching relevant passages: " (bge).
  std::string query_prefix;
  /// Prepended to every text encoded with TextRole::document, e.g.
  /// "passage: " (e5).
  std::string document_prefix;
  /// Pooling; checkpoint follows the checkpoint's files.
  BertPooling pooling = BertPooling::checkpoint;
  /// fp32 only: copies the attention-output and feed-forward weights into
  /// oneDNN's blocked layout at load instead of reading the mapped [out, in]
  /// tensors in place (the fused query/key/value weights are such a copy in
  /// any case). Costs one float per copied weight (about 32 MB for
  /// MiniLM-L6, 255 MB for BERT-base); saves oneDNN's per-call repacking in
  /// batches above fp32_transposed_max_tokens and runs short batches faster
  /// than the transposed product does (blocked weights feed the FMAs better
  /// than broadcasts from [out, in] rows).
  bool fp32_prepack = false;
  /// fp32 on weights in the file's layout (without fp32_prepack): a batch of
  /// at most this many tokens runs each linear layer as W . X^T, the mapped
  /// [out, in] weights as oneDNN's left operand, read in place, and only the
  /// batch's input packed; funnel transposes the product back with the bias,
  /// GELU or residual fused. Bigger batches run X . W^T, where oneDNN repacks
  /// the weights on every call, a cost that more tokens amortise. Measured
  /// on MiniLM-L6 and BERT-base shapes, 1 and 2 threads: 1.3-1.5x faster at
  /// 4-16 tokens, 1.1-1.3x at 32-64, 1.0x at 128, 2-4% slower from 256 on.
  /// 0: always X . W^T.
  std::size_t fp32_transposed_max_tokens = 128;
  /// fp32 on weights in the file's layout, on CPUs with AVX-512: a batch of
  /// at most this many tokens (rounded up to 16) runs the attention-output
  /// and feed-forward layers in funnel's own kernel instead of the
  /// transposed product: dot products of each mapped weight row with the
  /// batch's token rows, the weights prefetched ahead of use as they stream
  /// from memory, bias, GELU and residual fused. Measured against the
  /// transposed product on one thread: MiniLM-L6 1.8-2.1x faster on 4 tokens,
  /// 1.7-1.8x on 8, 1.2x on 16, 1.27x on 24, 1.03x on 32, 0.97-1.0x at 48-64;
  /// BERT-base 1.5x on 4, equal on 16, 0-5% slower on 32 (see
  /// docs/bert-encoder.md). 0: never. CPUs without AVX-512 run the
  /// transposed product.
  std::size_t fp32_small_batch_max_tokens = 32;
  /// Keeps the weights and the per-call scratch in 2 MiB pages where the
  /// kernel allows it (Linux transparent huge pages, "madvise" or "always"):
  /// the checkpoint is mapped as SafetensorsOpenOptions::huge_pages describes
  /// (its cached pages are dropped and read back once, in 2 MiB folios), and
  /// the reordered weight copies and scratch buffers of 2 MiB or more are
  /// anonymous memory advised MADV_HUGEPAGE. Every call reads its weights
  /// once; with 4 KiB pages that costs a page-table walk per 4 KiB, a
  /// two-level walk under a hypervisor. Never changes a result; costs some
  /// memory in 2 MiB steps (fp32: pages that hold both a copied QKV part and a
  /// streamed weight stay resident whole; about +6% peak RSS on MiniLM-L6
  /// and BERT-base). false keeps ordinary pages (and the page cache as it is).
  bool huge_pages = true;

  /// Checks the fields that do not need the checkpoint: checkpoint_dir not
  /// empty, threads in [1, kMaxThreads], max_length >= 2, max_batch >= 1,
  /// prefixes valid UTF-8.
  /// @throws Error(invalid_argument) naming the bad field and its value.
  void validate() const;
};

/// What a loaded checkpoint is, after every default has been resolved.
struct BertModelInfo {
  std::size_t hidden = 0;        ///< hidden_size
  std::size_t layers = 0;        ///< num_hidden_layers
  std::size_t heads = 0;         ///< num_attention_heads
  std::size_t intermediate = 0;  ///< intermediate_size
  /// Rows of the word embeddings (config.json vocab_size). vocab.txt has
  /// exactly this many tokens; a SentencePiece tokenizer's ids fit in it
  /// (tokenizer().vocab_size() <= vocab_size: multilingual-e5-small has 35
  /// rows more than XLM-R's 250,002 ids).
  std::size_t vocab_size = 0;
  std::size_t max_positions = 0;  ///< max_position_embeddings
  /// Position-table row of a sequence's first token: 0 for model_type
  /// "bert", pad_token_id + 1 for "xlm-roberta" (so a sequence has at most
  /// max_positions - position_offset tokens).
  std::size_t position_offset = 0;
  std::string model_type;         ///< "bert" or "xlm-roberta"
  std::size_t max_length = 0;     ///< effective longest sequence (see BertEncoderConfig)
  float layer_norm_eps = 1e-12F;  ///< layer_norm_eps
  std::string tensor_prefix;      ///< "bert.", "roberta." or ""
  std::string weights_dtype;      ///< "F32", "F16", "BF16" or "mixed"
  BertComputeType compute = BertComputeType::fp32;  ///< resolved (never automatic)
  BertPooling pooling = BertPooling::mean;          ///< resolved (never checkpoint)
  /// Whether the checkpoint ends in a sentence-transformers Normalize module.
  /// encode() normalises in any case (Encoder contract); forward() never does.
  bool checkpoint_normalizes = false;
};

/// Result of BertEncoder::forward().
struct BertForwardResult {
  /// Last hidden states, (batch * seq_len) x hidden: row r * seq_len + t is
  /// token t of sequence r; rows of padded positions are zero.
  Matrix<float> hidden;
  /// Pooled sentence vectors, batch x hidden, not normalised.
  Matrix<float> pooled;
};

/// A BERT encoder on oneDNN (see the file comment).
///
/// Inference: the texts of a call are tokenised, sorted by length and run in
/// batches of at most config().max_batch texts. The linear layers run on the
/// packed real tokens of a batch only (no padding), the attention on groups
/// of sequences of equal length, so a ragged batch costs its real tokens.
class BertEncoder final : public Encoder {
 public:
  /// Loads and validates a checkpoint and prepares the chosen arithmetic.
  /// @param[in] config settings; validated here
  /// @throws Error(invalid_argument) when config.validate() does;
  ///         Error(io) naming a file that cannot be read, or the directory
  ///         when it holds neither vocab.txt nor sentencepiece.bpe.model;
  ///         Error(format) naming the file and the field or tensor for bad
  ///         content: a missing, non-integer or inconsistent config.json
  ///         field (e.g. hidden_size not divisible by num_attention_heads), a
  ///         missing tensor, a tensor of another dtype than F32/F16/BF16 or of
  ///         the wrong shape (expected and actual), a vocab.txt whose token
  ///         count differs from vocab_size or from the word-embedding rows, a
  ///         SentencePiece model with more ids than vocab_size, a corrupt or
  ///         truncated SentencePiece model;
  ///         Error(unsupported) for a valid checkpoint this encoder cannot run
  ///         (hidden_act other than "gelu", relative position embeddings, a
  ///         non-BERT model_type, a sentence-transformers module other than
  ///         Transformer/Pooling/Normalize, several pooling modes at once)
  ///         and for a compute type the CPU lacks.
  explicit BertEncoder(BertEncoderConfig config);
  ~BertEncoder() override;
  BertEncoder(const BertEncoder&) = delete;
  BertEncoder& operator=(const BertEncoder&) = delete;

  /// Hidden size of the checkpoint.
  [[nodiscard]] std::size_t dim() const override;

  /// E.g. "bert(layers=6,hidden=384,heads=12,compute=bf16,pooling=mean)"; the
  /// model type first ("xlm-roberta(...)" for XLM-RoBERTa networks).
  [[nodiscard]] std::string name() const override;

  /// Encodes texts (see Encoder::encode): prefix by role, tokenise, run the
  /// transformer, pool, L2-normalise. Every text is tokenised before `out`
  /// is written, so an invalid text leaves `out` untouched.
  /// @throws Error(invalid_argument) when out is not texts.size() x dim(),
  ///         or for invalid UTF-8 (naming the text's index).
  void encode(std::span<const std::string_view> texts, MatrixView<float> out,
              TextRole role = TextRole::document) const override;
  using Encoder::encode;

  /// Token ids of one text as encode() feeds them to the transformer: the
  /// role's prefix, [CLS] ... [SEP], truncated to info().max_length.
  /// @throws Error(invalid_argument) for invalid UTF-8.
  [[nodiscard]] std::vector<std::int32_t> tokenize(std::string_view text,
                                                   TextRole role = TextRole::document) const;

  /// Runs the transformer on token ids padded to one length, e.g. a Hugging
  /// Face batch (input_ids, attention_mask). Token types are all 0 and
  /// position ids 0..len-1 (right padding).
  /// @param[in] ids  batch x seq_len token ids in [0, info().vocab_size)
  /// @param[in] mask batch x seq_len; each row is 1 for its first len tokens
  ///                 (1 <= len) and 0 after
  /// @return hidden states and pooled vectors (see BertForwardResult)
  /// @throws Error(invalid_argument) naming row and column for an id out of
  ///         range or a mask value other than 0/1, or a row whose ones do not
  ///         form a prefix or are none; when the shapes differ or seq_len
  ///         exceeds info().max_positions.
  [[nodiscard]] BertForwardResult forward(MatrixView<const std::int64_t> ids,
                                          MatrixView<const std::int64_t> mask) const;

  /// Runs the transformer on ragged token id sequences (e.g. from
  /// tokenize()); the result is padded to the longest sequence.
  /// @throws Error(invalid_argument) for an empty sequence, an id out of
  ///         range, or a sequence longer than info().max_positions, naming
  ///         the sequence's index.
  [[nodiscard]] BertForwardResult forward(
      std::span<const std::vector<std::int32_t>> sequences) const;

  /// The checkpoint's properties as loaded.
  [[nodiscard]] const BertModelInfo& info() const noexcept;
  /// The settings this encoder was built with.
  [[nodiscard]] const BertEncoderConfig& config() const noexcept;
  /// The checkpoint's tokenizer: a BertTokenizer (vocab.txt) or a
  /// SentencePieceTokenizer (sentencepiece.bpe.model); kind() tells which.
  [[nodiscard]] const Tokenizer& tokenizer() const noexcept;

  /// Whether this CPU (and oneDNN build) runs `type`; automatic and fp32
  /// always do.
  [[nodiscard]] static bool cpu_supports(BertComputeType type) noexcept;

 private:
  struct Impl;
  std::unique_ptr<const Impl> impl_;
};

}  // namespace funnel
