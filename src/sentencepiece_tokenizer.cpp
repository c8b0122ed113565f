// SPDX-License-Identifier: Apache-2.0
#include "funnel/sentencepiece_tokenizer.hpp"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <array>
#include <limits>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "funnel/error.hpp"
#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"
#include "internal/tokenizer_config.hpp"
#include "internal/utf8.hpp"

namespace funnel {

namespace {

// XLM-R's special tokens in fairseq's order: their model ids are the indices.
constexpr std::array<std::string_view, 4> kSpecials = {"<s>", "<pad>", "</s>", "<unk>"};
constexpr std::string_view kMask = "<mask>";

}  // namespace

struct SentencePieceTokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::size_t max_length = 512;
  std::size_t pieces = 0;
  std::string file;

  // Model id of a SentencePiece id (XLMRobertaTokenizer's mapping).
  [[nodiscard]] std::int32_t model_id(int piece) const {
    return sp.IsUnknown(piece) ? kUnkId : static_cast<std::int32_t>(piece) + 1;
  }

  // Encodes into ids (SentencePiece ids) or pieces (strings).
  template <class Out>
  void encode(std::string_view text, std::vector<Out>& out) const {
    out.clear();
    const auto status = sp.Encode(text, &out);
    if (!status.ok()) {
      // SentencePiece fails only on a broken model, which load() rules out.
      detail::fail(ErrorCode::internal, "SentencePieceTokenizer: ", file,
                   ": SentencePiece could not encode a text: ", status.ToString());
    }
  }
};

SentencePieceTokenizer::SentencePieceTokenizer(std::shared_ptr<const Impl> impl)
    : impl_(std::move(impl)) {}

SentencePieceTokenizer::SentencePieceTokenizer(const std::filesystem::path& model_file,
                                               std::size_t max_length) {
  detail::require(max_length >= 2, "SentencePieceTokenizer: max_length must be >= 2 (<s> and ",
                  "</s>), got ", max_length);
  auto impl = std::make_shared<Impl>();
  impl->file = model_file.string();
  impl->max_length = max_length;
  const std::string bytes = detail::read_file(model_file);
  if (bytes.empty())
    detail::fail(ErrorCode::format, impl->file, ": empty file, not a SentencePiece model");
  const auto status = impl->sp.LoadFromSerializedProto(bytes);
  if (!status.ok()) {
    detail::fail(ErrorCode::format, impl->file,
                 ": not a valid SentencePiece model (truncated or corrupt?): ", status.ToString());
  }
  const int n = impl->sp.GetPieceSize();
  if (n < 4) {
    detail::fail(ErrorCode::format, impl->file, ": a SentencePiece model with ", n,
                 " pieces (at least <unk>, <s>, </s> and one piece are needed)");
  }
  if (n >= std::numeric_limits<std::int32_t>::max() - 2)
    detail::fail(ErrorCode::format, impl->file, ": too many pieces (", n, ")");
  const auto& sp = impl->sp;
  if (sp.unk_id() != 0 || sp.bos_id() != 1 || sp.eos_id() != 2) {
    detail::fail(ErrorCode::unsupported, impl->file, ": special pieces at <unk> ", sp.unk_id(),
                 ", <s> ", sp.bos_id(), ", </s> ", sp.eos_id(),
                 "; XLM-R's id mapping needs <unk> 0, <s> 1, </s> 2");
  }
  impl->pieces = static_cast<std::size_t>(n);
  impl_ = std::move(impl);
}

namespace {

void read_tokenizer_config(const std::filesystem::path& path, std::size_t& max_length) {
  const std::string file = path.string();
  const nlohmann::json root = detail::read_tokenizer_config_json(path);
  if (const auto it = root.find("tokenizer_class"); it != root.end() && !it->is_null()) {
    if (!it->is_string())
      detail::fail(ErrorCode::format, file, ": key 'tokenizer_class' must be a string, got ",
                   it->dump());
    const auto& name = it->get_ref<const std::string&>();
    if (name != "XLMRobertaTokenizer" && name != "XLMRobertaTokenizerFast")
      detail::fail(ErrorCode::unsupported, file, ": tokenizer_class '", name,
                   "' with sentencepiece.bpe.model; funnel reads XLMRobertaTokenizer's "
                   "(multilingual-e5, Multilingual-MiniLM)");
  }
  detail::apply_model_max_length(root, file, max_length);
}

}  // namespace

SentencePieceTokenizer SentencePieceTokenizer::load(const std::filesystem::path& checkpoint_dir,
                                                    std::size_t max_length) {
  detail::require(max_length >= 2, "SentencePieceTokenizer::load: max_length must be >= 2, got ",
                  max_length);
  const std::filesystem::path config_path = checkpoint_dir / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::exists(config_path, ec)) read_tokenizer_config(config_path, max_length);
  return SentencePieceTokenizer(checkpoint_dir / "sentencepiece.bpe.model", max_length);
}

std::vector<std::int32_t> SentencePieceTokenizer::encode(std::string_view text,
                                                         std::size_t text_index) const {
  if (const auto bad = detail::find_invalid_utf8(text))
    detail::fail(ErrorCode::invalid_argument, "SentencePieceTokenizer: text ", text_index,
                 ": invalid UTF-8 at byte ", *bad);
  thread_local std::vector<int> pieces;
  impl_->encode(text, pieces);
  const std::size_t take = std::min(pieces.size(), impl_->max_length - 2);
  std::vector<std::int32_t> ids;
  ids.reserve(take + 2);
  ids.push_back(kBosId);
  for (std::size_t i = 0; i < take; ++i) ids.push_back(impl_->model_id(pieces[i]));
  ids.push_back(kEosId);
  return ids;
}

std::vector<std::string> SentencePieceTokenizer::tokenize(std::string_view text) const {
  if (const auto bad = detail::find_invalid_utf8(text))
    detail::fail(ErrorCode::invalid_argument, "SentencePieceTokenizer: invalid UTF-8 at byte ",
                 *bad);
  std::vector<std::string> out;
  impl_->encode(text, out);
  return out;
}

std::size_t SentencePieceTokenizer::vocab_size() const noexcept { return impl_->pieces + 2; }
std::size_t SentencePieceTokenizer::max_length() const noexcept { return impl_->max_length; }
std::string_view SentencePieceTokenizer::kind() const noexcept { return "sentencepiece"; }
std::size_t SentencePieceTokenizer::pieces() const noexcept { return impl_->pieces; }
std::int32_t SentencePieceTokenizer::mask_id() const noexcept {
  return static_cast<std::int32_t>(impl_->pieces) + 1;
}

std::int32_t SentencePieceTokenizer::id_of(std::string_view piece) const {
  for (std::size_t i = 0; i < kSpecials.size(); ++i) {
    if (piece == kSpecials[i]) return static_cast<std::int32_t>(i);
  }
  if (piece == kMask) return mask_id();
  const int id = impl_->sp.PieceToId(piece);
  // PieceToId answers unk_id() for strings that are not pieces.
  if (impl_->sp.IsUnknown(id) || impl_->sp.IsControl(id)) return -1;
  return impl_->model_id(id);
}

std::string SentencePieceTokenizer::token_of(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= vocab_size())
    detail::fail(ErrorCode::invalid_argument, "SentencePieceTokenizer::token_of: id ", id,
                 " is outside [0, ", vocab_size(), ")");
  if (static_cast<std::size_t>(id) < kSpecials.size())
    return std::string(kSpecials[static_cast<std::size_t>(id)]);
  if (id == mask_id()) return std::string(kMask);
  return impl_->sp.IdToPiece(id - 1);
}

}  // namespace funnel
