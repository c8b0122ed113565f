// SPDX-License-Identifier: Apache-2.0
#include "funnel/bert_encoder.hpp"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "funnel/error.hpp"
#include "funnel/safetensors.hpp"
#include "internal/bert_checkpoint.hpp"
#include "internal/bert_inplace_linear.hpp"
#include "internal/bert_kernels.hpp"
#include "internal/error_util.hpp"
#include "internal/huge_pages.hpp"
#include "internal/utf8.hpp"

namespace funnel {
namespace {

namespace fs = std::filesystem;
namespace kern = detail::bert;
using detail::fail;
using dnnl::memory;
using Dt = memory::data_type;
using Tag = memory::format_tag;

// Rows of the packed token matrix are padded to a multiple of this, so that
// every linear layer runs on one of a few fixed shapes (M in {16, 32, ...,
// kChunkRows}) whose primitives are built once and reused. 16 is also the
// row count of an AMX tile, so the padding costs nothing on AMX.
constexpr std::size_t kRowAlign = 16;
// Largest M of one linear-layer call; bigger token counts run in chunks.
constexpr std::size_t kChunkRows = 512;
// Columns per OpenMP work item of kern::transposed_epilogue.
constexpr std::size_t kEpilogueColumns = 64;
// Output columns (weight rows) per OpenMP work item of kern::small_linear: a
// multiple of its blocks of 4 rows, at most this many, and fewer when that
// gives each thread at least two items (MiniLM-L6's 384 columns in items of
// 64 would leave all but 6 threads idle), but at least 16.
constexpr std::size_t kSmallLinearRows = 64;
constexpr std::size_t kSmallLinearMinRows = 16;
// Most attention scores (floats) materialised at once; sequences of one
// length are batched into one pair of matrix products up to this bound.
constexpr std::size_t kScoreBudget = std::size_t{1} << 21;
// Primitive cache entries before the cache is cleared (a bound on memory for
// workloads with very many distinct lengths).
constexpr std::size_t kMaxCachedPrimitives = 4096;

constexpr std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

// Sets the calling thread's OpenMP thread count (an ICV of the calling
// thread's task, not a process-wide setting) for one call and restores it.
class OmpThreadsScope {
 public:
  explicit OmpThreadsScope(int threads) : saved_(omp_get_max_threads()) {
    omp_set_num_threads(threads);
  }
  ~OmpThreadsScope() { omp_set_num_threads(saved_); }
  OmpThreadsScope(const OmpThreadsScope&) = delete;
  OmpThreadsScope& operator=(const OmpThreadsScope&) = delete;

 private:
  int saved_;
};

bool isa_has(dnnl::cpu_isa isa, dnnl::cpu_isa needed) {
  const auto have = static_cast<unsigned>(isa);
  const auto need = static_cast<unsigned>(needed);
  return (have & need) == need;
}

// Element size of the data types used here.
std::size_t dt_size(Dt t) {
  switch (t) {
    case Dt::f32: return 4;
    case Dt::bf16: return 2;
    case Dt::u8:
    case Dt::s8: return 1;
    default: assert(false); return 4;
  }
}

// A float tensor: a view of the mapped file (F32) or an owned conversion.
class FloatParam {
 public:
  FloatParam() = default;
  FloatParam(const FloatParam&) = delete;
  FloatParam& operator=(const FloatParam&) = delete;
  FloatParam(FloatParam&&) noexcept = default;
  FloatParam& operator=(FloatParam&&) noexcept = default;
  ~FloatParam() = default;

  static FloatParam view(std::span<const float> v) {
    FloatParam p;
    p.view_ = v;
    p.in_mapping_ = true;
    return p;
  }
  // Floats the caller keeps alive elsewhere (the weight arena).
  static FloatParam borrow(std::span<const float> v) {
    FloatParam p;
    p.view_ = v;
    return p;
  }
  static FloatParam own(std::vector<float> v) {
    FloatParam p;
    p.owned_ = std::move(v);
    p.view_ = p.owned_;
    return p;
  }
  [[nodiscard]] const float* data() const noexcept { return view_.data(); }
  [[nodiscard]] std::size_t size() const noexcept { return view_.size(); }
  [[nodiscard]] bool mapped() const noexcept { return in_mapping_ && !view_.empty(); }

 private:
  std::vector<float> owned_;
  std::span<const float> view_;  // into owned_, the mapping or the weight arena
  bool in_mapping_ = false;
};

struct LayerNormParams {
  FloatParam gamma, beta;
};

// The four linear layers of a transformer layer; all layers share their
// shapes, and so their primitives.
enum class LinearKind : std::uint8_t { qkv = 0, out = 1, ffn1 = 2, ffn2 = 3 };
constexpr std::size_t kLinearKinds = 4;

struct LinearWeights {
  FloatParam w_f32;          // fp32 path: [out, in] row-major (the K x N weights, "ba")
  memory w_mem;              // what the primitive reads (wraps w_f32, or bf16/s8 reordered)
  std::vector<float> bias;   // [out]
  std::vector<float> scale;  // int8: per output channel, w ~= scale[n] * q[n][k]
  std::vector<float> qsum;   // int8: sum over k of q[n][k], for the activation zero point
};

struct LayerWeights {
  LinearWeights qkv, out, ffn1, ffn2;
  LayerNormParams ln_attention, ln_output;
  [[nodiscard]] const LinearWeights& linear(LinearKind k) const {
    switch (k) {
      case LinearKind::qkv: return qkv;
      case LinearKind::out: return out;
      case LinearKind::ffn1: return ffn1;
      case LinearKind::ffn2: return ffn2;
    }
    return qkv;
  }
};

struct Primitive {
  dnnl::matmul matmul;
  std::size_t scratch_bytes = 0;
};

// Reusable scratch memory of one forward call.
struct Workspace {
  std::unique_ptr<std::byte[]> storage;  // small workspaces
  detail::HugePageBuffer huge;           // from detail::kHugePageBytes on, with huge_pages
  std::size_t capacity = 0;

  // Grows to at least `bytes` (contents are not kept) and returns a 64-byte
  // aligned pointer.
  std::byte* reserve(std::size_t bytes, bool huge_pages) {
    if (bytes + 64 > capacity) {
      storage.reset();
      huge = {};
      capacity = bytes + 64;
      if (huge_pages && capacity >= detail::kHugePageBytes) {
        huge = detail::HugePageBuffer(capacity, true);  // 2 MiB-aligned
        return huge.data();
      }
      storage = std::make_unique_for_overwrite<std::byte[]>(capacity);
    }
    if (huge.data() != nullptr) return huge.data();
    const auto addr = reinterpret_cast<std::uintptr_t>(storage.get());
    return storage.get() + (round_up(addr, 64) - addr);
  }
};

// One text of a forward call: its ids and where its results go.
struct Sequence {
  const std::int32_t* ids = nullptr;
  std::size_t length = 0;
  std::size_t index = 0;  // row in the caller's batch
};

// Carves 64-byte aligned sub-buffers out of one block.
class Carver {
 public:
  std::size_t add(std::size_t bytes) {
    const std::size_t at = size_;
    size_ += round_up(bytes, 64);
    return at;
  }
  [[nodiscard]] std::size_t size() const { return size_; }

 private:
  std::size_t size_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------

std::string_view to_string(BertComputeType type) noexcept {
  switch (type) {
    case BertComputeType::automatic: return "automatic";
    case BertComputeType::fp32: return "fp32";
    case BertComputeType::bf16: return "bf16";
    case BertComputeType::int8: return "int8";
  }
  return "unknown";
}

std::string_view to_string(BertPooling pooling) noexcept {
  switch (pooling) {
    case BertPooling::checkpoint: return "checkpoint";
    case BertPooling::cls: return "cls";
    case BertPooling::mean: return "mean";
    case BertPooling::max: return "max";
    case BertPooling::mean_sqrt_len: return "mean_sqrt_len";
  }
  return "unknown";
}

void BertEncoderConfig::validate() const {
  using detail::require;
  require(!checkpoint_dir.empty(), "BertEncoderConfig.checkpoint_dir is empty");
  require(threads >= 1 && threads <= kMaxThreads, "BertEncoderConfig.threads must be in [1, ",
          kMaxThreads, "], got ", threads);
  require(max_length >= 2, "BertEncoderConfig.max_length must be >= 2 ([CLS] and [SEP]), got ",
          max_length);
  require(max_batch >= 1, "BertEncoderConfig.max_batch must be >= 1, got ", max_batch);
  if (const auto bad = detail::find_invalid_utf8(query_prefix)) {
    detail::fail(ErrorCode::invalid_argument,
                 "BertEncoderConfig.query_prefix is not valid UTF-8 (byte ", *bad, ")");
  }
  if (const auto bad = detail::find_invalid_utf8(document_prefix)) {
    detail::fail(ErrorCode::invalid_argument,
                 "BertEncoderConfig.document_prefix is not valid UTF-8 (byte ", *bad, ")");
  }
}

bool BertEncoder::cpu_supports(BertComputeType type) noexcept {
  try {
    const auto isa = dnnl::get_effective_cpu_isa();
    switch (type) {
      case BertComputeType::automatic:
      case BertComputeType::fp32: return true;
      case BertComputeType::bf16: return isa_has(isa, dnnl::cpu_isa::avx512_core_bf16);
      case BertComputeType::int8:
        return isa_has(isa, dnnl::cpu_isa::avx512_core_vnni) ||
               isa_has(isa, dnnl::cpu_isa::avx2_vnni);
    }
  } catch (...) {
    return type == BertComputeType::fp32 || type == BertComputeType::automatic;
  }
  return false;
}

// ---------------------------------------------------------------------------

namespace {

// Tokens a sequence may have: the position table's rows from the offset on.
std::size_t usable_positions(const BertModelInfo& i) { return i.max_positions - i.position_offset; }

// "N positions (max_position_embeddings M[ less XLM-RoBERTa's offset K])".
std::string positions_text(const BertModelInfo& i) {
  return detail::cat(usable_positions(i), " positions (max_position_embeddings ", i.max_positions,
                     i.position_offset == 0
                         ? std::string()
                         : detail::cat(" less XLM-RoBERTa's offset ", i.position_offset),
                     ")");
}

}  // namespace

struct BertEncoder::Impl {
  BertEncoderConfig config;
  BertModelInfo info;
  std::size_t type_vocab_size = 0;
  std::unique_ptr<const Tokenizer> tokenizer;
  std::optional<SafetensorsFile> weights_file;
  kern::KernelIsa isa;

  // Embeddings.
  FloatParam word, position, token_type;
  LayerNormParams ln_embeddings;
  std::vector<LayerWeights> layers;
  // Weight copies (fused QKV, reordered bf16 / int8 / prepacked weights),
  // packed into one block of huge pages.
  detail::HugePageArena weight_arena;

  // Arithmetic of each stage.
  Dt linear_in = Dt::f32;                             // inputs of the linear layers (f32, bf16, u8)
  Dt att = Dt::f32;                                   // q, k, v and attention probabilities
  Dt ctx = Dt::f32;                                   // attention output (before int8 quantization)
  Dt ffn_out = Dt::f32;                               // GELU output (before int8 quantization)
  std::array<memory::desc, kLinearKinds> weights_md;  // what the linear primitives read
  std::array<std::size_t, kLinearKinds> linear_k{}, linear_n{};

  dnnl::engine engine{dnnl::engine::kind::cpu, 0};

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::uint64_t, std::shared_ptr<const Primitive>> cache;
  mutable std::mutex pool_mutex;
  mutable std::vector<std::unique_ptr<Workspace>> pool;

  explicit Impl(BertEncoderConfig c) : config(std::move(c)) {}

  void load();
  void load_weights();
  FloatParam load_param(const std::string& name, std::initializer_list<std::size_t> shape) const;
  const TensorInfo& checked_tensor(const std::string& name,
                                   std::initializer_list<std::size_t> shape) const;
  void prepare_linear(LinearWeights& lw, LinearKind kind, std::vector<float> w_storage,
                      FloatParam w_view, std::vector<float> bias);

  [[nodiscard]] dnnl::matmul::primitive_desc linear_pd(LinearKind kind, std::size_t m,
                                                       const memory::desc& w_md) const;
  [[nodiscard]] std::shared_ptr<const Primitive> linear_primitive(LinearKind kind,
                                                                  std::size_t m) const;
  [[nodiscard]] std::shared_ptr<const Primitive> transposed_primitive(LinearKind kind,
                                                                      std::size_t m) const;
  [[nodiscard]] std::shared_ptr<const Primitive> attention_primitive(bool scores, std::size_t batch,
                                                                     std::size_t len) const;
  [[nodiscard]] std::shared_ptr<const Primitive> cached(
      std::uint64_t key, const std::function<dnnl::matmul::primitive_desc()>& make) const;

  void run(std::span<const Sequence> seqs, float* hidden_out, std::size_t seq_len,
           float* pooled_out) const;
  void run_batch(std::span<const Sequence> seqs, Workspace& ws, dnnl::stream& stream,
                 float* hidden_out, std::size_t seq_len, float* pooled_out) const;

  std::unique_ptr<Workspace> take_workspace() const {
    const std::lock_guard lock(pool_mutex);
    if (pool.empty()) return std::make_unique<Workspace>();
    auto ws = std::move(pool.back());
    pool.pop_back();
    return ws;
  }
  void give_workspace(std::unique_ptr<Workspace> ws) const {
    const std::lock_guard lock(pool_mutex);
    pool.push_back(std::move(ws));
  }
};

// ---------------------------------------------------------------------------
// Loading

void BertEncoder::Impl::load() {
  const fs::path& dir = config.checkpoint_dir;
  if (!fs::is_directory(dir)) {
    fail(ErrorCode::io, "BertEncoder: checkpoint directory ", dir.string(), " does not exist");
  }
  const auto st = kern::parse_sentence_transformers(dir);
  const fs::path model_dir = dir / st.transformer_dir;
  const auto arch = kern::parse_config_json(model_dir / "config.json");

  info.hidden = arch.hidden;
  info.layers = arch.layers;
  info.heads = arch.heads;
  info.intermediate = arch.intermediate;
  info.max_positions = arch.max_positions;
  info.position_offset = arch.position_offset;
  info.model_type = arch.model_type;
  info.layer_norm_eps = arch.layer_norm_eps;
  type_vocab_size = arch.type_vocab_size;
  info.checkpoint_normalizes = st.normalize;
  if (st.pooling_dim && *st.pooling_dim != arch.hidden) {
    fail(ErrorCode::format, (dir / "modules.json").string(),
         ": the pooling module's word_embedding_dimension ", *st.pooling_dim,
         " differs from config.json hidden_size ", arch.hidden);
  }
  info.pooling = config.pooling != BertPooling::checkpoint ? config.pooling
                                                           : st.pooling.value_or(BertPooling::mean);

  std::size_t max_length = std::min(config.max_length, usable_positions(info));
  if (st.max_seq_length) max_length = std::min(max_length, *st.max_seq_length);
  const std::size_t limit = std::max<std::size_t>(max_length, 2);
  std::error_code ec;
  if (std::filesystem::exists(model_dir / "vocab.txt", ec)) {
    tokenizer = std::make_unique<const BertTokenizer>(BertTokenizer::load(model_dir, limit));
    if (tokenizer->vocab_size() != arch.vocab_size) {
      fail(ErrorCode::format, (model_dir / "vocab.txt").string(), " has ", tokenizer->vocab_size(),
           " tokens but ", (model_dir / "config.json").string(), " says vocab_size ",
           arch.vocab_size, " (the rows of the word-embedding table)");
    }
  } else if (std::filesystem::exists(model_dir / "sentencepiece.bpe.model", ec)) {
    tokenizer = std::make_unique<const SentencePieceTokenizer>(
        SentencePieceTokenizer::load(model_dir, limit));
    // multilingual-e5-small's table has rows past XLM-R's last id; fewer
    // rows than ids would let a text index past the table.
    if (tokenizer->vocab_size() > arch.vocab_size) {
      fail(ErrorCode::format, (model_dir / "sentencepiece.bpe.model").string(), " gives ids up to ",
           tokenizer->vocab_size() - 1, " (XLM-R's mapping: ", tokenizer->vocab_size() - 2,
           " pieces, then <mask>) but ", (model_dir / "config.json").string(), " says vocab_size ",
           arch.vocab_size, " (the rows of the word-embedding table)");
    }
  } else {
    fail(ErrorCode::io, model_dir.string(),
         ": no tokenizer: neither vocab.txt (BERT WordPiece) nor sentencepiece.bpe.model (XLM-R "
         "SentencePiece) is there");
  }
  info.max_length = tokenizer->max_length();
  info.vocab_size = arch.vocab_size;

  BertComputeType compute = config.compute;
  if (compute == BertComputeType::automatic) {
    compute = BertEncoder::cpu_supports(BertComputeType::bf16) ? BertComputeType::bf16
                                                               : BertComputeType::fp32;
  }
  if (!BertEncoder::cpu_supports(compute)) {
    fail(ErrorCode::unsupported, "BertEncoder: compute type ", to_string(compute), " needs ",
         compute == BertComputeType::bf16 ? "AVX512_BF16 or AMX" : "AVX512_VNNI, AVX_VNNI or AMX",
         ", which this CPU (or oneDNN's DNNL_MAX_CPU_ISA) does not offer");
  }
  info.compute = compute;
  isa = kern::detect_isa();
  switch (compute) {
    case BertComputeType::bf16:
      linear_in = Dt::bf16;
      att = Dt::bf16;
      break;
    case BertComputeType::int8:
      // Attention stays in floating point; bf16 where the CPU has it.
      linear_in = Dt::u8;
      att = BertEncoder::cpu_supports(BertComputeType::bf16) ? Dt::bf16 : Dt::f32;
      break;
    default:
      linear_in = Dt::f32;
      att = Dt::f32;
      break;
  }

  ctx = linear_in == Dt::u8 ? Dt::f32 : att;
  // int8 quantizes the GELU output per call; bf16 halves the bytes of that
  // pass where the CPU has bf16.
  ffn_out = linear_in == Dt::f32 ? Dt::f32 : linear_in == Dt::bf16 ? Dt::bf16 : att;

  const fs::path st_path = model_dir / "model.safetensors";
  if (!fs::exists(st_path)) {
    fail(ErrorCode::io, "BertEncoder: ", st_path.string(),
         " not found (only safetensors checkpoints are read; convert pytorch_model.bin)");
  }
  weights_file.emplace(SafetensorsFile::open(st_path, {.huge_pages = config.huge_pages}));
  // HF's BertModel / XLMRobertaModel name their tensors with the prefix in
  // a task model's file and without it as a base model or in
  // sentence-transformers.
  const std::string own_prefix = info.model_type == "xlm-roberta" ? "roberta." : "bert.";
  if (weights_file->find(own_prefix + "embeddings.word_embeddings.weight") != nullptr) {
    info.tensor_prefix = own_prefix;
  } else if (weights_file->find("embeddings.word_embeddings.weight") != nullptr) {
    info.tensor_prefix = "";
  } else {
    fail(ErrorCode::format, "missing tensor embeddings.word_embeddings.weight (with or without ",
         "the \"", own_prefix, "\" prefix) in ", st_path.string());
  }

  // The word embeddings are read a row per token: 2 MiB pages would make
  // each row cost 2 MiB of memory.
  weights_file->advise_sparse(
      weights_file->at(info.tensor_prefix + "embeddings.word_embeddings.weight"));

  const OmpThreadsScope threads(static_cast<int>(config.threads));
  load_weights();
}

const TensorInfo& BertEncoder::Impl::checked_tensor(
    const std::string& name, std::initializer_list<std::size_t> shape) const {
  const TensorInfo& t = weights_file->at(info.tensor_prefix + name);
  const auto file = weights_file->path().string();
  if (t.dtype != TensorDType::f32 && t.dtype != TensorDType::f16 && t.dtype != TensorDType::bf16) {
    fail(ErrorCode::format, "tensor ", t.name, " in ", file, " has dtype ", to_string(t.dtype),
         ", expected F32, F16 or BF16");
  }
  if (!std::equal(t.shape.begin(), t.shape.end(), shape.begin(), shape.end())) {
    auto dims = [](auto begin, auto end) {
      std::string s = "[";
      for (auto it = begin; it != end; ++it) s += (it == begin ? "" : ", ") + std::to_string(*it);
      return s + "]";
    };
    fail(ErrorCode::format, "tensor ", t.name, " in ", file, " has shape ",
         dims(t.shape.begin(), t.shape.end()), ", expected ", dims(shape.begin(), shape.end()));
  }
  return t;
}

FloatParam BertEncoder::Impl::load_param(const std::string& name,
                                         std::initializer_list<std::size_t> shape) const {
  const TensorInfo& t = checked_tensor(name, shape);
  if (t.dtype == TensorDType::f32) {
    const auto bytes = weights_file->bytes(t);
    if (reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(float) == 0) {
      return FloatParam::view(weights_file->f32_view(t));
    }
  }
  FloatParam copy = FloatParam::own(weights_file->to_f32(t));
  weights_file->drop_pages(t);  // converted: the mapping is not read again
  return copy;
}

dnnl::matmul::primitive_desc BertEncoder::Impl::linear_pd(LinearKind kind, std::size_t m,
                                                          const memory::desc& w_md) const {
  const auto ki = static_cast<std::size_t>(kind);
  const auto k = static_cast<memory::dim>(linear_k[ki]);
  const auto n = static_cast<memory::dim>(linear_n[ki]);
  const auto mm = static_cast<memory::dim>(m);
  Dt out = Dt::f32;
  if (kind == LinearKind::qkv) out = att;
  if (kind == LinearKind::ffn1) out = ffn_out;
  const memory::desc src_md({mm, k}, linear_in, Tag::ab);
  const memory::desc dst_md({mm, n}, out, Tag::ab);
  dnnl::post_ops ops;
  memory::desc bias_md({1, n}, Dt::f32, Tag::ab);
  if (linear_in == Dt::u8) {
    // Dequantization and bias depend on the activation scale of each call,
    // so they are runtime operands of binary post-ops (runtime output scales
    // would push oneDNN 2.6 off its brgemm kernels).
    ops.append_binary(dnnl::algorithm::binary_mul, bias_md);
    ops.append_binary(dnnl::algorithm::binary_add, bias_md);
    bias_md = memory::desc();
  }
  if (kind == LinearKind::ffn1) ops.append_eltwise(1.0F, dnnl::algorithm::eltwise_gelu_erf, 0, 0);
  if (kind == LinearKind::out || kind == LinearKind::ffn2) ops.append_sum(1.0F);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return {dnnl::matmul::desc(src_md, w_md, bias_md, dst_md), attr, engine};
}

void BertEncoder::Impl::prepare_linear(LinearWeights& lw, LinearKind kind,
                                       std::vector<float> w_storage, FloatParam w_view,
                                       std::vector<float> bias) {
  const auto ki = static_cast<std::size_t>(kind);
  const std::size_t k = linear_k[ki];
  const std::size_t n = linear_n[ki];
  lw.bias = std::move(bias);
  FloatParam w = w_storage.empty() ? std::move(w_view) : FloatParam::own(std::move(w_storage));
  assert(w.size() == k * n);
  const memory::dims kn{static_cast<memory::dim>(k), static_cast<memory::dim>(n)};
  // A reordered copy of the weights, in the arena.
  auto reordered = [&] {
    return memory(weights_md[ki], engine, weight_arena.take(weights_md[ki].get_size()));
  };
  if (linear_in == Dt::f32 && weights_md[ki] != memory::desc(kn, Dt::f32, Tag::ba)) {
    memory src({kn, Dt::f32, Tag::ba}, engine, const_cast<float*>(w.data()));
    lw.w_mem = reordered();
    dnnl::stream s0(engine);
    dnnl::reorder(src, lw.w_mem).execute(s0, src, lw.w_mem);
    s0.wait();
    return;
  }
  if (linear_in == Dt::f32) {
    // Plain [out, in] layout read in place: no copy of mapped F32 weights.
    // A copy made at load (an F16 / BF16 tensor converted) moves into the
    // arena.
    if (!w.mapped()) {
      auto* dst = reinterpret_cast<float*>(weight_arena.take(k * n * sizeof(float)));
      std::copy_n(w.data(), k * n, dst);
      w = FloatParam::borrow({dst, k * n});
    }
    lw.w_f32 = std::move(w);
    lw.w_mem = memory(weights_md[ki], engine, const_cast<float*>(lw.w_f32.data()));
    return;
  }
  dnnl::stream stream(engine);
  if (linear_in == Dt::bf16) {
    memory src({kn, Dt::f32, Tag::ba}, engine, const_cast<float*>(w.data()));
    lw.w_mem = reordered();
    dnnl::reorder(src, lw.w_mem).execute(stream, src, lw.w_mem);
    stream.wait();
    return;
  }
  // int8: symmetric per-output-channel quantization.
  std::vector<std::int8_t> q(k * n);
  lw.scale.resize(n);
  lw.qsum.resize(n);
  for (std::size_t o = 0; o < n; ++o) {
    const float* row = w.data() + o * k;
    float amax = 0.0F;
    for (std::size_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
    const float scale = amax > 0.0F ? amax / 127.0F : 1.0F;
    std::int64_t sum = 0;
    for (std::size_t i = 0; i < k; ++i) {
      const auto v =
          static_cast<std::int8_t>(std::clamp(std::nearbyint(row[i] / scale), -127.0F, 127.0F));
      q[o * k + i] = v;
      sum += v;
    }
    lw.scale[o] = scale;
    lw.qsum[o] = static_cast<float>(sum);
  }
  memory src({kn, Dt::s8, Tag::ba}, engine, q.data());
  lw.w_mem = reordered();
  dnnl::reorder(src, lw.w_mem).execute(stream, src, lw.w_mem);
  stream.wait();
}

void BertEncoder::Impl::load_weights() {
  const std::size_t h = info.hidden;
  const std::size_t f = info.intermediate;
  word = load_param("embeddings.word_embeddings.weight", {info.vocab_size, h});
  position = load_param("embeddings.position_embeddings.weight", {info.max_positions, h});
  token_type = load_param("embeddings.token_type_embeddings.weight", {type_vocab_size, h});
  // LayerNorm parameters are copied (2 x hidden floats): read on every call
  // from the mapping, each would keep the page around it resident, a whole
  // 2 MiB page with huge_pages once its neighbours' pages were dropped.
  auto layer_norm = [&](const std::string& base) {
    LayerNormParams p;
    // Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
    const bool old = weights_file->find(info.tensor_prefix + base + ".weight") == nullptr &&
                     weights_file->find(info.tensor_prefix + base + ".gamma") != nullptr;
    auto owned = [&](const std::string& name) {
      const FloatParam v = load_param(name, {h});
      return FloatParam::own(std::vector<float>(v.data(), v.data() + v.size()));
    };
    p.gamma = owned(base + (old ? ".gamma" : ".weight"));
    p.beta = owned(base + (old ? ".beta" : ".bias"));
    return p;
  };
  ln_embeddings = layer_norm("embeddings.LayerNorm");

  linear_k = {h, h, h, f};
  linear_n = {3 * h, h, f, h};
  // The arena has room for every copy prepare_linear may make: a reordered
  // copy, or (weights read in place) one that is not mapped F32. Pages never
  // touched stay virtual, so the bound costs no memory.
  std::size_t arena_bytes = 0;
  for (std::size_t ki = 0; ki < kLinearKinds; ++ki) {
    const memory::dims kn{static_cast<memory::dim>(linear_k[ki]),
                          static_cast<memory::dim>(linear_n[ki])};
    // fp32 reads the mapped [out, in] weights in place, except the fused
    // QKV, a copy in any case: that copy is made in oneDNN's blocked layout,
    // which no call then repacks.
    const bool in_place = linear_in == Dt::f32 && !config.fp32_prepack &&
                          ki != static_cast<std::size_t>(LinearKind::qkv);
    if (in_place) {
      weights_md[ki] = memory::desc(kn, Dt::f32, Tag::ba);
    } else {
      // Let oneDNN pick its blocked layout once; every M then reuses it.
      const memory::desc any(kn,
                             linear_in == Dt::bf16  ? Dt::bf16
                             : linear_in == Dt::f32 ? Dt::f32
                                                    : Dt::s8,
                             Tag::any);
      weights_md[ki] = linear_pd(static_cast<LinearKind>(ki), kChunkRows, any).weights_desc();
    }
    arena_bytes += detail::HugePageArena::footprint(
        in_place ? linear_k[ki] * linear_n[ki] * sizeof(float) : weights_md[ki].get_size());
  }
  weight_arena = detail::HugePageArena(arena_bytes * info.layers, config.huge_pages);

  auto to_vector = [](const FloatParam& p) {
    return std::vector<float>(p.data(), p.data() + p.size());
  };
  layers.resize(info.layers);
  for (std::size_t l = 0; l < info.layers; ++l) {
    const std::string base = "encoder.layer." + std::to_string(l) + ".";
    LayerWeights& lw = layers[l];
    {
      std::vector<float> w(3 * h * h);
      std::vector<float> b(3 * h);
      const char* parts[] = {"query", "key", "value"};
      for (std::size_t p = 0; p < 3; ++p) {
        const std::string name = base + "attention.self." + parts[p];
        const FloatParam wp = load_param(name + ".weight", {h, h});
        const FloatParam bp = load_param(name + ".bias", {h});
        std::copy_n(wp.data(), h * h, w.begin() + static_cast<std::ptrdiff_t>(p * h * h));
        std::copy_n(bp.data(), h, b.begin() + static_cast<std::ptrdiff_t>(p * h));
        // Every compute type reads the fused copy, never the mapped parts.
        weights_file->drop_pages(weights_file->at(info.tensor_prefix + name + ".weight"));
      }
      prepare_linear(lw.qkv, LinearKind::qkv, std::move(w), {}, std::move(b));
    }
    auto linear = [&](LinearWeights& out, LinearKind kind, const std::string& name,
                      std::size_t n_out, std::size_t n_in) {
      FloatParam w = load_param(name + ".weight", {n_out, n_in});
      std::vector<float> b = to_vector(load_param(name + ".bias", {n_out}));
      prepare_linear(out, kind, {}, std::move(w), std::move(b));
      // Only fp32 in place reads the mapped weights after load; every other
      // path has its own reordered copy, so one copy stays resident.
      const TensorInfo& t = weights_file->at(info.tensor_prefix + name + ".weight");
      if (out.w_f32.mapped()) {
        weights_file->populate(t);  // read at load, not in the first call
      } else {
        weights_file->drop_pages(t);
      }
    };
    linear(lw.out, LinearKind::out, base + "attention.output.dense", h, h);
    lw.ln_attention = layer_norm(base + "attention.output.LayerNorm");
    linear(lw.ffn1, LinearKind::ffn1, base + "intermediate.dense", f, h);
    linear(lw.ffn2, LinearKind::ffn2, base + "output.dense", h, f);
    lw.ln_output = layer_norm(base + "output.LayerNorm");
  }

  // Where every projection weight is a copy, the calls read the mapping only
  // for the embeddings: let go of the rest, small tensors and page
  // neighbours included.
  if (!layers.empty() && !layers.front().out.w_f32.mapped()) weights_file->drop_all_pages();

  bool all_same = true;
  const TensorDType first =
      weights_file->at(info.tensor_prefix + "embeddings.word_embeddings.weight").dtype;
  for (const auto& t : weights_file->tensors()) {
    if ((t.dtype == TensorDType::f32 || t.dtype == TensorDType::f16 ||
         t.dtype == TensorDType::bf16) &&
        t.dtype != first) {
      all_same = false;
    }
  }
  info.weights_dtype = all_same ? std::string(to_string(first)) : "mixed";
}

// ---------------------------------------------------------------------------
// Primitives

std::shared_ptr<const Primitive> BertEncoder::Impl::cached(
    std::uint64_t key, const std::function<dnnl::matmul::primitive_desc()>& make) const {
  const std::lock_guard lock(cache_mutex);
  if (const auto it = cache.find(key); it != cache.end()) return it->second;
  const auto pd = make();
  auto prim = std::make_shared<Primitive>();
  prim->matmul = dnnl::matmul(pd);
  prim->scratch_bytes = pd.scratchpad_desc().get_size();
  if (cache.size() >= kMaxCachedPrimitives) cache.clear();
  cache.emplace(key, prim);
  return prim;
}

std::shared_ptr<const Primitive> BertEncoder::Impl::linear_primitive(LinearKind kind,
                                                                     std::size_t m) const {
  const auto ki = static_cast<std::size_t>(kind);
  const std::uint64_t key = (std::uint64_t{1} << 60) | (ki << 32) | m;
  return cached(key, [&] { return linear_pd(kind, m, weights_md[ki]); });
}

// fp32 in place, transposed: W [n, k] (the mapped [out, in] weights, read
// as they lie) x X^T [k, m] (the input chunk, packed by oneDNN) -> [n, m].
// Bias, activation and residual come with the transpose back (see
// kern::transposed_epilogue).
std::shared_ptr<const Primitive> BertEncoder::Impl::transposed_primitive(LinearKind kind,
                                                                         std::size_t m) const {
  const auto ki = static_cast<std::size_t>(kind);
  const std::uint64_t key = (std::uint64_t{4} << 60) | (ki << 32) | m;
  return cached(key, [&] {
    const auto k = static_cast<memory::dim>(linear_k[ki]);
    const auto n = static_cast<memory::dim>(linear_n[ki]);
    const auto mm = static_cast<memory::dim>(m);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(memory::desc({n, k}, Dt::f32, Tag::ab),
                                                           memory::desc({k, mm}, Dt::f32, Tag::ba),
                                                           memory::desc({n, mm}, Dt::f32, Tag::ab)),
                                        attr, engine);
  });
}

// Scores: [batch, len, dh] x [batch, dh, len] -> [batch, len, len] (f32).
// Context: [batch, len, len] x [batch, len, dh] -> [batch, len, dh].
// Inputs are head-major ([sequence][head][token][dh]), so that oneDNN runs
// its blocked kernels; a strided view of the fused QKV output would not.
std::shared_ptr<const Primitive> BertEncoder::Impl::attention_primitive(bool scores,
                                                                        std::size_t batch,
                                                                        std::size_t len) const {
  const std::uint64_t key =
      (std::uint64_t{scores ? 2U : 3U} << 60) | (static_cast<std::uint64_t>(batch) << 24) | len;
  return cached(key, [&] {
    const auto b = static_cast<memory::dim>(batch);
    const auto l = static_cast<memory::dim>(len);
    const auto dh = static_cast<memory::dim>(info.hidden / info.heads);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (scores) {
      return dnnl::matmul::primitive_desc(
          dnnl::matmul::desc(memory::desc({b, l, dh}, att, Tag::abc),
                             memory::desc({b, dh, l}, att, Tag::acb),
                             memory::desc({b, l, l}, Dt::f32, Tag::abc)),
          attr, engine);
    }
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(memory::desc({b, l, l}, att, Tag::abc),
                                                           memory::desc({b, l, dh}, att, Tag::abc),
                                                           memory::desc({b, l, dh}, ctx, Tag::abc)),
                                        attr, engine);
  });
}

// ---------------------------------------------------------------------------
// Forward

void BertEncoder::Impl::run(std::span<const Sequence> seqs, float* hidden_out, std::size_t seq_len,
                            float* pooled_out) const {
  // Longest first, so that each batch holds similar lengths and equal
  // lengths sit next to each other (one attention product per length).
  std::vector<Sequence> sorted(seqs.begin(), seqs.end());
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const Sequence& a, const Sequence& b) { return a.length > b.length; });
  const OmpThreadsScope threads(static_cast<int>(config.threads));
  std::unique_ptr<Workspace> ws = take_workspace();
  try {
    dnnl::stream stream(engine);
    for (std::size_t begin = 0; begin < sorted.size(); begin += config.max_batch) {
      const std::size_t end = std::min(sorted.size(), begin + config.max_batch);
      run_batch(std::span(sorted).subspan(begin, end - begin), *ws, stream, hidden_out, seq_len,
                pooled_out);
    }
  } catch (const dnnl::error& e) {
    give_workspace(std::move(ws));
    fail(ErrorCode::internal, "BertEncoder: oneDNN failed: ", e.what());
  } catch (...) {
    give_workspace(std::move(ws));
    throw;
  }
  give_workspace(std::move(ws));
}

void BertEncoder::Impl::run_batch(std::span<const Sequence> seqs, Workspace& ws,
                                  dnnl::stream& stream, float* hidden_out, std::size_t seq_len,
                                  float* pooled_out) const {
  const std::size_t h = info.hidden;
  const std::size_t f = info.intermediate;
  const std::size_t heads = info.heads;
  const std::size_t dh = h / heads;
  const std::size_t nseq = seqs.size();
  const int nt = static_cast<int>(config.threads);
  const bool parallel = nt > 1;

  std::vector<std::size_t> offset(nseq + 1, 0);
  for (std::size_t i = 0; i < nseq; ++i) offset[i + 1] = offset[i] + seqs[i].length;
  const std::size_t tokens = offset[nseq];
  const std::size_t rows = round_up(tokens, kRowAlign);

  // Attention runs: sequences of one length, at most `cap` per product.
  struct Run {
    std::size_t first, count, length;
  };
  std::vector<Run> runs;
  std::size_t score_floats = 0;
  for (std::size_t i = 0; i < nseq;) {
    const std::size_t len = seqs[i].length;
    const std::size_t cap = std::max<std::size_t>(1, kScoreBudget / (heads * len * len));
    std::size_t j = i;
    while (j < nseq && seqs[j].length == len && j - i < cap) ++j;
    runs.push_back({i, j - i, len});
    score_floats = std::max(score_floats, (j - i) * heads * len * len);
    i = j;
  }

  // Buffers. Linear-layer inputs have `rows` rows; rows past `tokens` stay
  // zero so that the padded rows of every product are finite and unused.
  const std::size_t esz_in = dt_size(linear_in);
  const std::size_t esz_att = dt_size(att);
  const std::size_t esz_ctx = dt_size(ctx);
  const bool att_bf16 = att == Dt::bf16;
  const bool bf16 = linear_in == Dt::bf16;
  const bool int8 = linear_in == Dt::u8;
  Carver carve;
  const std::size_t o_x = carve.add(rows * h * 4);
  const std::size_t o_xin = int8 || bf16 ? carve.add(rows * h * esz_in) : 0;
  const std::size_t o_qkv = carve.add(rows * 3 * h * esz_att);
  const std::size_t o_heads = carve.add(3 * tokens * h * esz_att);
  const std::size_t o_scores = carve.add(score_floats * 4);
  const std::size_t o_probs = att_bf16 ? carve.add(score_floats * 2) : 0;
  const std::size_t o_ctxh = carve.add(tokens * h * esz_ctx);
  const std::size_t o_ctx = carve.add(rows * h * esz_ctx);  // token-major context
  const std::size_t o_ctxq = int8 ? carve.add(rows * h) : 0;
  const std::size_t ffn_esz = dt_size(ffn_out);
  const std::size_t o_ffn = carve.add(rows * f * ffn_esz);
  const std::size_t o_ffnq = int8 ? carve.add(rows * f) : 0;
  const std::size_t o_qvec = int8 ? carve.add(kLinearKinds * 2 * std::max(3 * h, f) * 4) : 0;

  // Primitives of this batch's shapes.
  struct LinearPlan {
    std::shared_ptr<const Primitive> full, rest;
  };
  std::array<LinearPlan, kLinearKinds> plan;
  std::size_t scratch = 0;
  // fp32 with the output and feed-forward weights in the file's layout; the
  // fused QKV is always in oneDNN's layout (see load_weights).
  const bool in_place = linear_in == Dt::f32 && layers.front().out.w_f32.size() > 0;
  // A few tokens: funnel's own kernel on the mapped weights (AVX-512 only);
  // more: the transposed product up to its limit.
  const bool small = in_place && isa.avx512 && rows <= config.fp32_small_batch_max_tokens;
  const bool transposed = in_place && !small && tokens <= config.fp32_transposed_max_tokens;
  const auto is_small = [&](LinearKind kind) { return small && kind != LinearKind::qkv; };
  const auto is_transposed = [&](LinearKind kind) { return transposed && kind != LinearKind::qkv; };
  const auto primitive = [&](std::size_t ki, std::size_t m) {
    const auto kind = static_cast<LinearKind>(ki);
    return is_transposed(kind) ? transposed_primitive(kind, m) : linear_primitive(kind, m);
  };
  for (std::size_t ki = 0; ki < kLinearKinds; ++ki) {
    if (is_small(static_cast<LinearKind>(ki))) continue;
    if (rows >= kChunkRows) plan[ki].full = primitive(ki, kChunkRows);
    if (rows % kChunkRows != 0) plan[ki].rest = primitive(ki, rows % kChunkRows);
    for (const auto& p : {plan[ki].full, plan[ki].rest}) {
      if (p) scratch = std::max(scratch, p->scratch_bytes);
    }
  }
  std::vector<std::pair<std::shared_ptr<const Primitive>, std::shared_ptr<const Primitive>>>
      att_plan;
  for (const Run& r : runs) {
    att_plan.emplace_back(attention_primitive(true, r.count * heads, r.length),
                          attention_primitive(false, r.count * heads, r.length));
    scratch = std::max(
        {scratch, att_plan.back().first->scratch_bytes, att_plan.back().second->scratch_bytes});
  }
  const std::size_t o_scratch = carve.add(scratch);
  const std::size_t o_yt =
      transposed ? carve.add(std::max(h, f) * std::min(rows, kChunkRows) * 4) : 0;

  std::byte* base = ws.reserve(carve.size(), config.huge_pages);
  auto* x = reinterpret_cast<float*>(base + o_x);
  std::byte* xin = int8 || bf16 ? base + o_xin : base + o_x;
  std::byte* qkv = base + o_qkv;
  std::byte* head_buf = base + o_heads;
  auto* scores = reinterpret_cast<float*>(base + o_scores);
  auto* probs = reinterpret_cast<std::uint16_t*>(base + o_probs);
  std::byte* ctxh = base + o_ctxh;
  std::byte* ctx_buf = base + o_ctx;
  auto* ctxq = reinterpret_cast<std::uint8_t*>(base + o_ctxq);
  std::byte* ffn = base + o_ffn;
  auto* ffnq = reinterpret_cast<std::uint8_t*>(base + o_ffnq);
  auto* qvec = reinterpret_cast<float*>(base + o_qvec);
  auto* yt = reinterpret_cast<float*>(base + o_yt);  // a transposed product
  const memory scratch_mem({{static_cast<memory::dim>(scratch)}, Dt::u8, Tag::a}, engine,
                           base + o_scratch);

  const std::size_t pad = rows - tokens;
  std::memset(x + tokens * h, 0, pad * h * 4);
  if (int8 || bf16) std::memset(xin + tokens * h * esz_in, 0, pad * h * esz_in);
  std::memset(ctx_buf + tokens * h * esz_ctx, 0, pad * h * esz_ctx);
  if (int8) {
    std::memset(ctxq + tokens * h, 0, pad * h);
    std::memset(ffnq + tokens * f, 0, pad * f);
  }

  // Runs a linear layer over all rows, in chunks of kChunkRows rows.
  // int8: `quant` is the input's quantization; the per-call dequantization
  // (scale[n] * act_scale) and bias (minus the zero point's contribution)
  // become the binary post-ops' operands.
  auto linear = [&](LinearKind kind, const LinearWeights& lw, const std::byte* in, std::byte* out,
                    Dt out_dt, kern::U8Quant quant) {
    const auto ki = static_cast<std::size_t>(kind);
    const std::size_t k = linear_k[ki];
    const std::size_t n = linear_n[ki];
    // What linear_pd's post-ops do (the QKV product, whose output is stored,
    // is always in oneDNN's layout, so never runs either way below).
    const kern::LinearEpilogue epilogue =
        kind == LinearKind::ffn1 ? kern::LinearEpilogue::gelu : kern::LinearEpilogue::add;
    if (is_small(kind)) {
      assert(out_dt == Dt::f32 && lw.w_f32.size() == k * n && rows <= kChunkRows);
      const auto* xin_f = reinterpret_cast<const float*>(in);
      auto* dst = reinterpret_cast<float*>(out);
      const std::size_t per_item =
          std::clamp(round_up((n + 2 * config.threads - 1) / (2 * config.threads), 4),
                     kSmallLinearMinRows, kSmallLinearRows);
      const auto items = static_cast<std::ptrdiff_t>((n + per_item - 1) / per_item);
#pragma omp parallel for if (parallel) schedule(static)
      for (std::ptrdiff_t item = 0; item < items; ++item) {
        const std::size_t c0 = static_cast<std::size_t>(item) * per_item;
        kern::small_linear(isa, lw.w_f32.data(), k, xin_f, tokens, lw.bias.data(), dst, n, c0,
                           std::min(n, c0 + per_item), epilogue);
      }
      return;
    }
    if (is_transposed(kind)) {
      assert(out_dt == Dt::f32 && lw.w_f32.size() == k * n);
      const auto kk = static_cast<memory::dim>(k);
      const auto nn = static_cast<memory::dim>(n);
      const memory w_mem({{nn, kk}, Dt::f32, Tag::ab}, engine, const_cast<float*>(lw.w_f32.data()));
      const auto items = static_cast<std::ptrdiff_t>((n + kEpilogueColumns - 1) / kEpilogueColumns);
      for (std::size_t m0 = 0; m0 < rows; m0 += kChunkRows) {
        const std::size_t m = std::min(kChunkRows, rows - m0);
        const auto& prim = m == kChunkRows ? plan[ki].full : plan[ki].rest;
        const auto mm = static_cast<memory::dim>(m);
        const memory xt_mem({{kk, mm}, Dt::f32, Tag::ba}, engine,
                            const_cast<std::byte*>(in + m0 * k * sizeof(float)));
        const memory yt_mem({{nn, mm}, Dt::f32, Tag::ab}, engine, yt);
        prim->matmul.execute(stream, {{DNNL_ARG_SRC, w_mem},
                                      {DNNL_ARG_WEIGHTS, xt_mem},
                                      {DNNL_ARG_DST, yt_mem},
                                      {DNNL_ARG_SCRATCHPAD, scratch_mem}});
        float* dst = reinterpret_cast<float*>(out) + m0 * n;
#pragma omp parallel for if (parallel) schedule(static)
        for (std::ptrdiff_t item = 0; item < items; ++item) {
          const std::size_t c0 = static_cast<std::size_t>(item) * kEpilogueColumns;
          kern::transposed_epilogue(isa, yt, m, m, lw.bias.data(), dst, n, c0,
                                    std::min(n, c0 + kEpilogueColumns), epilogue);
        }
      }
      return;
    }
    const memory::desc vec_md({1, static_cast<memory::dim>(n)}, Dt::f32, Tag::ab);
    memory mul_mem, add_mem;
    if (int8) {
      float* mul = qvec + ki * 2 * std::max(3 * h, f);
      float* add = mul + std::max(3 * h, f);
      const auto zp = static_cast<float>(quant.zero_point);
      for (std::size_t j = 0; j < n; ++j) {
        mul[j] = lw.scale[j] * quant.scale;
        add[j] = lw.bias[j] - mul[j] * zp * lw.qsum[j];
      }
      mul_mem = memory(vec_md, engine, mul);
      add_mem = memory(vec_md, engine, add);
    }
    const memory bias_mem(vec_md, engine, const_cast<float*>(lw.bias.data()));
    const std::size_t out_esz = dt_size(out_dt);
    for (std::size_t m0 = 0; m0 < rows; m0 += kChunkRows) {
      const std::size_t m = std::min(kChunkRows, rows - m0);
      const auto& prim = m == kChunkRows ? plan[ki].full : plan[ki].rest;
      const auto mm = static_cast<memory::dim>(m);
      const memory src({{mm, static_cast<memory::dim>(k)}, linear_in, Tag::ab}, engine,
                       const_cast<std::byte*>(in + m0 * k * esz_in));
      const memory dst({{mm, static_cast<memory::dim>(n)}, out_dt, Tag::ab}, engine,
                       out + m0 * n * out_esz);
      std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src},
                                           {DNNL_ARG_WEIGHTS, lw.w_mem},
                                           {DNNL_ARG_DST, dst},
                                           {DNNL_ARG_SCRATCHPAD, scratch_mem}};
      if (int8) {
        args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, mul_mem);
        args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(1) | DNNL_ARG_SRC_1, add_mem);
      } else {
        args.emplace(DNNL_ARG_BIAS, bias_mem);
      }
      prim->matmul.execute(stream, args);
    }
  };

  // Quantization of the first `tokens` rows of an f32 matrix into u8.
  auto quantize = [&](const auto* src, std::size_t cols, std::uint8_t* dst, float lo, float hi) {
    const kern::U8Quant q = kern::u8_quant_for(lo, hi);
    const auto n = static_cast<std::ptrdiff_t>(tokens);
#pragma omp parallel for if (parallel) schedule(static)
    for (std::ptrdiff_t r = 0; r < n; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      kern::quantize_u8(isa, src + ur * cols, cols, q, dst + ur * cols);
    }
    return q;
  };
  auto range_of = [&](const auto* src, std::size_t cols) {
    float lo = 0.0F;
    float hi = 0.0F;
    const auto n = static_cast<std::ptrdiff_t>(tokens);
#pragma omp parallel for if (parallel) schedule(static) reduction(min : lo) reduction(max : hi)
    for (std::ptrdiff_t r = 0; r < n; ++r) {
      kern::min_max(isa, src + static_cast<std::size_t>(r) * cols, cols, &lo, &hi);
    }
    return std::pair{lo, hi};
  };

  // LayerNorm of the hidden rows; also produces the next linear layer's input.
  auto norm = [&](const LayerNormParams& p) {
    float lo = 0.0F;
    float hi = 0.0F;
    const auto n = static_cast<std::ptrdiff_t>(tokens);
    auto* xin16 = reinterpret_cast<std::uint16_t*>(xin);
#pragma omp parallel for if (parallel) schedule(static) reduction(min : lo) reduction(max : hi)
    for (std::ptrdiff_t r = 0; r < n; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      kern::layer_norm(isa, x + ur * h, h, p.gamma.data(), p.beta.data(), info.layer_norm_eps,
                       bf16 ? xin16 + ur * h : nullptr, int8 ? &lo : nullptr, int8 ? &hi : nullptr);
    }
    kern::U8Quant q;
    if (int8) q = quantize(x, h, reinterpret_cast<std::uint8_t*>(xin), lo, hi);
    return q;
  };

  // Embeddings: word + position + token type 0.
  {
    const auto n = static_cast<std::ptrdiff_t>(nseq);
#pragma omp parallel for if (parallel) schedule(static)
    for (std::ptrdiff_t si = 0; si < n; ++si) {
      const Sequence& s = seqs[static_cast<std::size_t>(si)];
      for (std::size_t t = 0; t < s.length; ++t) {
        float* row = x + (offset[static_cast<std::size_t>(si)] + t) * h;
        const float* we = word.data() + static_cast<std::size_t>(s.ids[t]) * h;
        const float* pe = position.data() + (info.position_offset + t) * h;
        const float* te = token_type.data();
        for (std::size_t j = 0; j < h; ++j) row[j] = we[j] + pe[j] + te[j];
      }
    }
  }
  kern::U8Quant in_quant = norm(ln_embeddings);

  const float att_scale = 1.0F / std::sqrt(static_cast<float>(dh));
  for (const LayerWeights& layer : layers) {
    // Fused Q, K, V projection.
    linear(LinearKind::qkv, layer.qkv, xin, qkv, att, in_quant);

    // Token-major [token][3][head][dh] -> head-major [3][sequence][head][token][dh].
    {
      const auto n = static_cast<std::ptrdiff_t>(nseq);
      const std::size_t row_bytes = dh * esz_att;
#pragma omp parallel for if (parallel) schedule(static)
      for (std::ptrdiff_t si = 0; si < n; ++si) {
        const auto us = static_cast<std::size_t>(si);
        const std::size_t len = seqs[us].length;
        for (std::size_t part = 0; part < 3; ++part) {
          std::byte* dst_seq = head_buf + (part * tokens + offset[us]) * h * esz_att;
          for (std::size_t t = 0; t < len; ++t) {
            const std::byte* src = qkv + ((offset[us] + t) * 3 * h + part * h) * esz_att;
            for (std::size_t hd = 0; hd < heads; ++hd) {
              std::memcpy(dst_seq + (hd * len + t) * row_bytes, src + hd * row_bytes, row_bytes);
            }
          }
        }
      }
    }

    // Attention per run of equal lengths: scores, softmax, context.
    for (std::size_t ri = 0; ri < runs.size(); ++ri) {
      const Run& r = runs[ri];
      const std::size_t len = r.length;
      const std::size_t batch = r.count * heads;
      const std::size_t first = offset[r.first] * h * esz_att;
      const auto b = static_cast<memory::dim>(batch);
      const auto l = static_cast<memory::dim>(len);
      const auto d = static_cast<memory::dim>(dh);
      const memory q_mem({{b, l, d}, att, Tag::abc}, engine, head_buf + first);
      const memory k_mem({{b, d, l}, att, Tag::acb}, engine,
                         head_buf + tokens * h * esz_att + first);
      const memory v_mem({{b, l, d}, att, Tag::abc}, engine,
                         head_buf + 2 * tokens * h * esz_att + first);
      const memory s_mem({{b, l, l}, Dt::f32, Tag::abc}, engine, scores);
      att_plan[ri].first->matmul.execute(stream, {{DNNL_ARG_SRC, q_mem},
                                                  {DNNL_ARG_WEIGHTS, k_mem},
                                                  {DNNL_ARG_DST, s_mem},
                                                  {DNNL_ARG_SCRATCHPAD, scratch_mem}});
      const auto nrows = static_cast<std::ptrdiff_t>(batch * len);
#pragma omp parallel for if (parallel) schedule(static)
      for (std::ptrdiff_t i = 0; i < nrows; ++i) {
        const auto ui = static_cast<std::size_t>(i);
        kern::softmax(isa, scores + ui * len, len, att_scale,
                      att_bf16 ? probs + ui * len : nullptr);
      }
      const memory p_mem({{b, l, l}, att, Tag::abc}, engine,
                         att_bf16 ? static_cast<void*>(probs) : static_cast<void*>(scores));
      const memory c_mem({{b, l, d}, ctx, Tag::abc}, engine, ctxh + offset[r.first] * h * esz_ctx);
      att_plan[ri].second->matmul.execute(stream, {{DNNL_ARG_SRC, p_mem},
                                                   {DNNL_ARG_WEIGHTS, v_mem},
                                                   {DNNL_ARG_DST, c_mem},
                                                   {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    }

    // Head-major context -> token-major.
    {
      const auto n = static_cast<std::ptrdiff_t>(nseq);
      const std::size_t row_bytes = dh * esz_ctx;
#pragma omp parallel for if (parallel) schedule(static)
      for (std::ptrdiff_t si = 0; si < n; ++si) {
        const auto us = static_cast<std::size_t>(si);
        const std::size_t len = seqs[us].length;
        const std::byte* src_seq = ctxh + offset[us] * h * esz_ctx;
        for (std::size_t t = 0; t < len; ++t) {
          std::byte* dst = ctx_buf + (offset[us] + t) * h * esz_ctx;
          for (std::size_t hd = 0; hd < heads; ++hd) {
            std::memcpy(dst + hd * row_bytes, src_seq + (hd * len + t) * row_bytes, row_bytes);
          }
        }
      }
    }
    kern::U8Quant ctx_quant;
    const std::byte* ctx_in = ctx_buf;
    if (int8) {
      const auto [lo, hi] = range_of(reinterpret_cast<const float*>(ctx_buf), h);
      ctx_quant = quantize(reinterpret_cast<const float*>(ctx_buf), h, ctxq, lo, hi);
      ctx_in = reinterpret_cast<const std::byte*>(ctxq);
    }

    // Output projection + residual (sum post-op into x), LayerNorm.
    linear(LinearKind::out, layer.out, ctx_in, reinterpret_cast<std::byte*>(x), Dt::f32, ctx_quant);
    in_quant = norm(layer.ln_attention);

    // Feed-forward: GELU fused into the first product, residual into the second.
    linear(LinearKind::ffn1, layer.ffn1, xin, ffn, ffn_out, in_quant);
    kern::U8Quant ffn_quant;
    const std::byte* ffn_in = ffn;
    if (int8) {
      if (ffn_out == Dt::bf16) {
        const auto* src = reinterpret_cast<const std::uint16_t*>(ffn);
        const auto [lo, hi] = range_of(src, f);
        ffn_quant = quantize(src, f, ffnq, lo, hi);
      } else {
        const auto* src = reinterpret_cast<const float*>(ffn);
        const auto [lo, hi] = range_of(src, f);
        ffn_quant = quantize(src, f, ffnq, lo, hi);
      }
      ffn_in = reinterpret_cast<const std::byte*>(ffnq);
    }
    linear(LinearKind::ffn2, layer.ffn2, ffn_in, reinterpret_cast<std::byte*>(x), Dt::f32,
           ffn_quant);
    in_quant = norm(layer.ln_output);
  }
  stream.wait();

  // Outputs: hidden states (optional) and pooled vectors, by caller row.
  const auto n = static_cast<std::ptrdiff_t>(nseq);
#pragma omp parallel for if (parallel) schedule(static)
  for (std::ptrdiff_t si = 0; si < n; ++si) {
    const auto us = static_cast<std::size_t>(si);
    const Sequence& s = seqs[us];
    const float* states = x + offset[us] * h;
    if (hidden_out != nullptr) {
      std::copy_n(states, s.length * h, hidden_out + s.index * seq_len * h);
    }
    float* pooled = pooled_out + s.index * h;
    switch (info.pooling) {
      case BertPooling::cls: std::copy_n(states, h, pooled); break;
      case BertPooling::max:
        std::copy_n(states, h, pooled);
        for (std::size_t t = 1; t < s.length; ++t) {
          for (std::size_t j = 0; j < h; ++j) pooled[j] = std::max(pooled[j], states[t * h + j]);
        }
        break;
      default: {
        std::fill_n(pooled, h, 0.0F);
        for (std::size_t t = 0; t < s.length; ++t) {
          for (std::size_t j = 0; j < h; ++j) pooled[j] += states[t * h + j];
        }
        const auto len = static_cast<float>(s.length);
        const float div = info.pooling == BertPooling::mean_sqrt_len ? std::sqrt(len) : len;
        for (std::size_t j = 0; j < h; ++j) pooled[j] /= div;
        break;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Public API

BertEncoder::BertEncoder(BertEncoderConfig config) {
  config.validate();
  auto impl = std::make_unique<Impl>(std::move(config));
  try {
    impl->load();
  } catch (const dnnl::error& e) {
    fail(ErrorCode::internal, "BertEncoder: oneDNN failed while preparing weights: ", e.what());
  }
  impl_ = std::move(impl);
}

BertEncoder::~BertEncoder() = default;

std::size_t BertEncoder::dim() const { return impl_->info.hidden; }

std::string BertEncoder::name() const {
  const auto& i = impl_->info;
  return detail::cat(i.model_type, "(layers=", i.layers, ",hidden=", i.hidden, ",heads=", i.heads,
                     ",compute=", to_string(i.compute), ",pooling=", to_string(i.pooling), ")");
}

const BertModelInfo& BertEncoder::info() const noexcept { return impl_->info; }
const BertEncoderConfig& BertEncoder::config() const noexcept { return impl_->config; }
const Tokenizer& BertEncoder::tokenizer() const noexcept { return *impl_->tokenizer; }

std::vector<std::int32_t> BertEncoder::tokenize(std::string_view text, TextRole role) const {
  const std::string& prefix =
      role == TextRole::query ? impl_->config.query_prefix : impl_->config.document_prefix;
  if (prefix.empty()) return impl_->tokenizer->encode(text);
  std::string joined;
  joined.reserve(prefix.size() + text.size());
  joined.append(prefix).append(text);
  return impl_->tokenizer->encode(joined);
}

void BertEncoder::encode(std::span<const std::string_view> texts, MatrixView<float> out,
                         TextRole role) const {
  const std::size_t h = dim();
  detail::require(out.rows == texts.size() && out.cols == h, "BertEncoder::encode: out is ",
                  out.rows, " x ", out.cols, ", expected ", texts.size(), " x ", h);
  const std::string& prefix =
      role == TextRole::query ? impl_->config.query_prefix : impl_->config.document_prefix;
  std::vector<std::vector<std::int32_t>> ids(texts.size());
  std::string joined;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    if (prefix.empty()) {
      ids[i] = impl_->tokenizer->encode(texts[i], i);
    } else {
      // The prefix is valid UTF-8 (validated), so an error offset past it
      // still points into the text.
      joined.assign(prefix).append(texts[i]);
      ids[i] = impl_->tokenizer->encode(joined, i);
    }
  }
  if (texts.empty()) return;
  std::vector<Sequence> seqs(texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) seqs[i] = {ids[i].data(), ids[i].size(), i};
  std::vector<float> pooled(texts.size() * h);
  impl_->run(seqs, nullptr, 0, pooled.data());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const float* p = pooled.data() + i * h;
    double sq = 0.0;
    for (std::size_t j = 0; j < h; ++j) sq += static_cast<double>(p[j]) * p[j];
    const float inv = sq > 0.0 ? static_cast<float>(1.0 / std::sqrt(sq)) : 0.0F;
    for (std::size_t j = 0; j < h; ++j) out(i, j) = p[j] * inv;
  }
}

BertForwardResult BertEncoder::forward(std::span<const std::vector<std::int32_t>> sequences) const {
  const auto& i = impl_->info;
  std::size_t seq_len = 0;
  std::vector<Sequence> seqs(sequences.size());
  for (std::size_t r = 0; r < sequences.size(); ++r) {
    const auto& s = sequences[r];
    detail::require(!s.empty(), "BertEncoder::forward: sequence ", r, " is empty");
    detail::require(s.size() <= usable_positions(i), "BertEncoder::forward: sequence ", r, " has ",
                    s.size(), " tokens, more than the model's ", positions_text(i));
    for (std::size_t t = 0; t < s.size(); ++t) {
      detail::require(s[t] >= 0 && static_cast<std::size_t>(s[t]) < i.vocab_size,
                      "BertEncoder::forward: sequence ", r, " token ", t, " has id ", s[t],
                      ", outside [0, ", i.vocab_size, ")");
    }
    seqs[r] = {s.data(), s.size(), r};
    seq_len = std::max(seq_len, s.size());
  }
  BertForwardResult result{Matrix<float>(sequences.size() * seq_len, i.hidden),
                           Matrix<float>(sequences.size(), i.hidden)};
  if (!seqs.empty()) impl_->run(seqs, result.hidden.data(), seq_len, result.pooled.data());
  return result;
}

BertForwardResult BertEncoder::forward(MatrixView<const std::int64_t> ids,
                                       MatrixView<const std::int64_t> mask) const {
  detail::require(ids.rows == mask.rows && ids.cols == mask.cols, "BertEncoder::forward: ids is ",
                  ids.rows, " x ", ids.cols, " but mask is ", mask.rows, " x ", mask.cols);
  const auto& i = impl_->info;
  detail::require(ids.cols <= usable_positions(i), "BertEncoder::forward: seq_len ", ids.cols,
                  " exceeds the model's ", positions_text(i));
  std::vector<std::vector<std::int32_t>> seqs(ids.rows);
  for (std::size_t r = 0; r < ids.rows; ++r) {
    std::size_t len = 0;
    for (std::size_t c = 0; c < ids.cols; ++c) {
      const std::int64_t m = mask(r, c);
      detail::require(m == 0 || m == 1, "BertEncoder::forward: mask[", r, "][", c, "] is ", m,
                      ", expected 0 or 1");
      detail::require(m == 0 || len == c, "BertEncoder::forward: mask row ", r,
                      " has a 1 after a 0 at column ", c, " (only right padding is supported)");
      if (m == 1) ++len;
    }
    detail::require(len > 0, "BertEncoder::forward: mask row ", r, " has no token");
    seqs[r].resize(len);
    for (std::size_t c = 0; c < len; ++c) {
      const std::int64_t id = ids(r, c);
      detail::require(id >= 0 && static_cast<std::size_t>(id) < i.vocab_size,
                      "BertEncoder::forward: ids[", r, "][", c, "] is ", id, ", outside [0, ",
                      i.vocab_size, ")");
      seqs[r][c] = static_cast<std::int32_t>(id);
    }
  }
  BertForwardResult result = forward(seqs);
  if (result.hidden.rows() != ids.rows * ids.cols) {
    // Pad to the caller's seq_len (the ragged forward pads to the longest).
    Matrix<float> hidden(ids.rows * ids.cols, i.hidden);
    const std::size_t longest = ids.rows == 0 ? 0 : result.hidden.rows() / ids.rows;
    for (std::size_t r = 0; r < ids.rows; ++r) {
      std::copy_n(result.hidden.data() + r * longest * i.hidden, longest * i.hidden,
                  hidden.data() + r * ids.cols * i.hidden);
    }
    result.hidden = std::move(hidden);
  }
  return result;
}

}  // namespace funnel
