// SPDX-License-Identifier: Apache-2.0
// DeepRankerModel: the model directory (load / save) and the forward pass
// on oneDNN.
//
// How the forward pass is laid out (see deep_ranker.hpp for the math):
//  - The first expert layer and the gate layer read x = [u, c, p]. Their
//    weights are split by input columns: the user part W_u u + b is one
//    small product over the batch's users, computed once per user; the
//    candidate part [c, p] is one product per expert over all candidate
//    rows, with the user's part as its bias (fused with ReLU) when a chunk
//    of candidates belongs to one user, or added per row otherwise.
//  - Candidate columns are stored in an internal order, [v, E_hc[j], other
//    item embeddings, numeric, p], so that the attention query input t =
//    [v, E_hc[j]] is the first Hd columns of the same rows; the weights of
//    the first layers are permuted to match at load.
//  - Keys and values of all history events are one product; keys are then
//    transposed per batch so that a user's scores q_i . k_j are a small
//    register-blocked product (deep_ranker_kernels.hpp).
//  - Candidates run in chunks of kChunkRows rows, so the activations of a
//    chunk stay in the core's L2 cache; every product of a chunk has one of
//    a few row counts (multiples of kRowAlign = 4, or the exact count
//    below that: a request does at most 3 rows of padding work), whose
//    primitives are built once and cached; rows past the chunk's
//    candidates are zero.
//  - Each forward() call takes a workspace from a free list (its buffers,
//    its oneDNN stream and memory objects, grown on demand and kept), so
//    steady-state calls allocate nothing and calls may run concurrently.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include "funnel/deep_ranker.hpp"
#include "funnel/error.hpp"
#include "funnel/safetensors.hpp"
#include "internal/atomic_file.hpp"
#include "internal/checksum.hpp"
#include "internal/deep_ranker_kernels.hpp"
#include "internal/error_util.hpp"

namespace funnel {
namespace {

namespace fs = std::filesystem;
namespace kern = detail::deep;
namespace bert = detail::bert;
using detail::fail;
using dnnl::memory;
using Dt = memory::data_type;
using Tag = memory::format_tag;

constexpr std::string_view kFormatName = "funnel.deep_ranker";
constexpr const char* kConfigFile = "config.json";
constexpr const char* kWeightsFile = "model.safetensors";
// Rows of every product are padded to a multiple of this (products of
// fewer rows run on exactly their rows); small, so that padding wastes
// little (100 candidates: 100 rows, not 112), at the price of more shapes
// of primitives (at most kChunkRows / kRowAlign + kRowAlign - 1 per stage).
constexpr std::size_t kRowAlign = 4;
// Candidate rows per chunk (and the most rows of any one product).
constexpr std::size_t kChunkRows = 128;
// Bounds of the primitive cache (shared) and of each workspace's memory
// objects: cleared when full, a bound for workloads with very many shapes.
constexpr std::size_t kMaxCachedPrimitives = 1024;
constexpr std::size_t kMaxCachedMemories = 4096;
constexpr std::size_t kMaxThreads = 1024;
// Most expert layers (DeepRankerConfig::validate allows 64).
constexpr std::size_t kMaxLayers = 64;

constexpr std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }
// The row count a product of `rows` rows runs on (its buffers hold that many).
constexpr std::size_t padded_rows(std::size_t rows) {
  return rows < kRowAlign ? rows : round_up(rows, kRowAlign);
}

// Sets the calling thread's OpenMP thread count (an ICV of the calling
// thread's task, not a process-wide setting) for one call and restores it,
// as BertEncoder does.
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

bool cpu_has_bf16() noexcept {
  try {
    const auto have = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    const auto need = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
    return (have & need) == need;
  } catch (...) {
    return false;
  }
}

std::size_t dt_size(Dt t) { return t == Dt::bf16 ? 2 : 4; }

std::string shape_string(const std::vector<std::size_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += (i == 0 ? "" : ", ") + std::to_string(shape[i]);
  }
  return s + "]";
}

std::size_t elements(const std::vector<std::size_t>& shape) {
  std::size_t n = 1;
  for (const std::size_t d : shape) n *= d;
  return n;
}

// Runs f(i) for i < n, on the calling thread's OpenMP team when `parallel`.
template <class F>
void for_rows(std::size_t n, bool parallel, const F& f) {
  if (!parallel || n < 2) {
    for (std::size_t i = 0; i < n; ++i) f(i);
    return;
  }
  const auto sn = static_cast<std::ptrdiff_t>(n);
#pragma omp parallel for schedule(static)
  for (std::ptrdiff_t i = 0; i < sn; ++i) f(static_cast<std::size_t>(i));
}

// One matrix product of the network: y[m x n] = act(x[m x k] W + b). The
// weight layout (w_md) is chosen once by oneDNN for kChunkRows rows and
// shared by every row count.
struct Stage {
  std::uint32_t id = 0;
  std::size_t k = 0;
  std::size_t n = 0;
  std::size_t lda = 0;  // row stride of x, in elements
  std::size_t ldd = 0;  // row stride of y
  Dt src = Dt::f32;
  Dt dst = Dt::f32;
  bool bias = false;
  bool relu = false;
  memory::desc w_md;
};

// Stage ids (the high half of the primitive cache key).
constexpr std::uint32_t kUserStage = 1;
constexpr std::uint32_t kKeyValueStage = 2;
constexpr std::uint32_t kQueryStage = 3;
constexpr std::uint32_t kFirstFusedStage = 4;
constexpr std::uint32_t kFirstPlainStage = 5;
constexpr std::uint32_t kGateStage = 6;
constexpr std::uint32_t kExpertStage = 0x100;    // + layer
constexpr std::uint32_t kTowerStage = 0x200;     // + layer
constexpr std::uint32_t kTowerF32Stage = 0x300;  // + layer

// One weight matrix (and bias) in its stage's layout.
struct Linear {
  memory w;
  memory b;  // {1, n} f32; empty when the stage has no bias or takes it per call
  std::vector<float> bias;
};

struct Primitive {
  dnnl::matmul matmul;
  std::size_t scratch_bytes = 0;
};

// Per-call state, reused across calls: buffers, a stream, and oneDNN
// memory objects re-pointed at the buffers on each call.
struct Workspace {
  explicit Workspace(const dnnl::engine& engine) : stream(engine) {}

  dnnl::stream stream;
  std::unique_ptr<std::byte[]> storage;
  std::size_t capacity = 0;
  std::unique_ptr<std::byte[]> scratch;
  std::size_t scratch_capacity = 0;
  memory scratch_mem;
  std::unordered_map<std::uint64_t, memory> memories;

  // Grows to at least `bytes` (contents are not kept); 64-byte aligned.
  std::byte* reserve(std::size_t bytes) {
    if (bytes + 64 > capacity) {
      capacity = bytes + 64;
      storage = std::make_unique_for_overwrite<std::byte[]>(capacity);
    }
    const auto addr = reinterpret_cast<std::uintptr_t>(storage.get());
    return storage.get() + (round_up(addr, 64) - addr);
  }

  // The scratchpad memory, at least `bytes` large.
  const memory& scratchpad(std::size_t bytes, const dnnl::engine& engine) {
    if (!scratch_mem || bytes > scratch_capacity) {
      scratch_capacity = std::max<std::size_t>({bytes, scratch_capacity * 2, 4096});
      scratch = std::make_unique_for_overwrite<std::byte[]>(scratch_capacity);
      scratch_mem = memory({{static_cast<memory::dim>(scratch_capacity)}, Dt::u8, Tag::a}, engine,
                           scratch.get());
    }
    return scratch_mem;
  }

  // The memory object for `key` (made by `make` the first time), pointed at `data`.
  template <class Make>
  const memory& bind(std::uint64_t key, const Make& make, const void* data) {
    auto it = memories.find(key);
    if (it == memories.end()) {
      if (memories.size() >= kMaxCachedMemories) memories.clear();
      it = memories.emplace(key, make()).first;
    }
    it->second.set_data_handle(const_cast<void*>(data));
    return it->second;
  }
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

// Parameters checked against the config's table: any order in, canonical
// order out. `code` and `where` shape the messages (create: invalid
// argument; load: format, naming the file).
DeepRankerParameters canonical_parameters(const DeepRankerConfig& config,
                                          DeepRankerParameters given, ErrorCode code,
                                          std::string_view where) {
  DeepRankerParameters expected = deep_ranker_parameter_shapes(config);
  std::map<std::string_view, std::size_t> by_name;
  for (std::size_t i = 0; i < given.size(); ++i) {
    if (!by_name.emplace(given[i].name, i).second) {
      fail(code, where, ": parameter '", given[i].name, "' is given twice");
    }
  }
  const kern::KernelIsa isa = bert::detect_isa();
  for (NamedTensor& p : expected) {
    const auto it = by_name.find(p.name);
    if (it == by_name.end()) fail(code, where, ": missing parameter '", p.name, "'");
    NamedTensor& g = given[it->second];
    if (g.shape != p.shape) {
      fail(code, where, ": parameter '", p.name, "' has shape ", shape_string(g.shape),
           ", expected ", shape_string(p.shape));
    }
    if (g.values.size() != elements(p.shape)) {
      fail(code, where, ": parameter '", p.name, "' has ", g.values.size(), " values, expected ",
           elements(p.shape), " for shape ", shape_string(p.shape));
    }
    if (!kern::all_finite(isa, g.values.data(), g.values.size())) {
      const auto bad =
          std::find_if(g.values.begin(), g.values.end(), [](float v) { return !std::isfinite(v); });
      fail(code, where, ": parameter '", p.name, "' has a non-finite value ", *bad,
           " at flat index ", bad - g.values.begin());
    }
    p.values = std::move(g.values);
    by_name.erase(it);
  }
  if (!by_name.empty()) {
    fail(code, where, ": unexpected parameter '", by_name.begin()->first,
         "' (not in the network of this config)");
  }
  return expected;
}

void check_options(const DeepRankerServeOptions& options) {
  detail::require(options.threads >= 1 && options.threads <= kMaxThreads,
                  "DeepRankerServeOptions.threads must be in [1, ", kMaxThreads, "], got ",
                  options.threads);
  detail::require(options.precision == DeepRankerServeOptions::Precision::fp32 ||
                      options.precision == DeepRankerServeOptions::Precision::bf16,
                  "DeepRankerServeOptions.precision is not fp32 or bf16");
  if (options.precision == DeepRankerServeOptions::Precision::bf16 && !cpu_has_bf16()) {
    fail(ErrorCode::unsupported,
         "DeepRankerModel: bf16 precision needs AVX512_BF16 or AMX, which this CPU (or oneDNN's "
         "DNNL_MAX_CPU_ISA) does not offer");
  }
}

}  // namespace

// ---------------------------------------------------------------------------

struct DeepRankerModel::Impl {
  DeepRankerConfig config;
  DeepRankerParameters params;
  DeepRankerServeOptions options;
  kern::KernelIsa isa;
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  Dt act = Dt::f32;  // what the products read (f32, or bf16 in bf16 precision)

  // Widths (deep_ranker.hpp's notation).
  std::size_t d = 0, u_width = 0, c_width = 0, hd = 0, a = 0, ca = 0, experts = 0, tasks = 0;
  std::size_t h0 = 0;  // first expert layer width
  std::size_t hl = 0;  // last expert layer width (the towers' input)
  std::size_t ng = 0;  // gate logits per row (tasks x experts; 0 for shared_bottom)
  bool mmoe = true;

  // Input assembly: embedding tables (into params) and internal columns.
  struct Table {
    const float* data = nullptr;
    std::size_t dim = 0;
  };
  std::vector<Table> user_tables, item_tables;
  std::vector<std::size_t> item_columns;  // internal column of each item categorical feature
  std::size_t numeric_column = 0;         // internal column of the first item numeric feature
  const float* type_table = nullptr;
  const float* recency_table = nullptr;

  Stage user_stage, kv_stage, q_stage, first_fused, first_plain, gate_stage;
  std::vector<Stage> expert_stages;  // [l], l >= 1 ([0] unused)
  std::vector<Stage> tower_stages;   // hidden tower layers
  // bf16 precision: the hidden tower layers again in f32, for the towers
  // of regression tasks (an unbounded output has no sigmoid to shrink the
  // rounding error of bf16 products; these towers are a small share of the
  // work). Empty in fp32 precision.
  std::vector<Stage> tower_stages_f32;
  std::vector<bool> f32_tower;  // [t]: the task's tower runs tower_stages_f32
  Linear user_w, kv_w, q_w, gate_w;
  std::vector<Linear> first_w;                // [e]
  std::vector<std::vector<Linear>> expert_w;  // [e][l], l >= 1
  std::vector<std::vector<Linear>> tower_w;   // [t][l]
  std::vector<const float*> logit_w;          // [t]: the last tower layer (into params)
  std::vector<float> logit_b;                 // [t]
  std::vector<float> user_bias;               // [h0 * experts + ng]: b_{e,0}, then gate biases

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::uint64_t, std::shared_ptr<const Primitive>> cache;
  mutable std::mutex pool_mutex;
  mutable std::vector<std::unique_ptr<Workspace>> pool;

  static std::unique_ptr<Impl> make(DeepRankerConfig config, DeepRankerParameters canonical,
                                    const DeepRankerServeOptions& options);
  void prepare();
  [[nodiscard]] const NamedTensor& param(const std::string& name) const;
  [[nodiscard]] dnnl::matmul::primitive_desc make_pd(const Stage& s, std::size_t m,
                                                     const memory::desc& w_md) const;
  void init_stage(Stage& s, std::uint32_t id, std::size_t k, std::size_t n, std::size_t lda, Dt src,
                  Dt dst, bool bias, bool relu) const;
  [[nodiscard]] Linear make_linear(const Stage& s, const std::vector<float>& w_nk,
                                   std::vector<float> bias) const;
  [[nodiscard]] std::shared_ptr<const Primitive> primitive(const Stage& s, std::size_t m) const;
  void run(Workspace& ws, const Stage& s, const Linear& lin, std::size_t m, const void* src,
           void* dst, const float* bias = nullptr) const;
  void run_rows(Workspace& ws, const Stage& s, const Linear& lin, std::size_t rows,
                const std::byte* src, std::byte* dst) const;
  void forward(const DeepRankerBatch& batch, MatrixView<float> outputs, Workspace& ws) const;

  std::unique_ptr<Workspace> take_workspace() const {
    const std::lock_guard lock(pool_mutex);
    if (pool.empty()) return std::make_unique<Workspace>(engine);
    auto ws = std::move(pool.back());
    pool.pop_back();
    return ws;
  }
  void give_workspace(std::unique_ptr<Workspace> ws) const {
    const std::lock_guard lock(pool_mutex);
    pool.push_back(std::move(ws));
  }
};

const NamedTensor& DeepRankerModel::Impl::param(const std::string& name) const {
  for (const NamedTensor& p : params) {
    if (p.name == name) return p;
  }
  assert(false && "parameter names come from deep_ranker_parameter_shapes");
  fail(ErrorCode::internal, "DeepRankerModel: no parameter ", name);
}

dnnl::matmul::primitive_desc DeepRankerModel::Impl::make_pd(const Stage& s, std::size_t m,
                                                            const memory::desc& w_md) const {
  const auto mm = static_cast<memory::dim>(m);
  const auto k = static_cast<memory::dim>(s.k);
  const auto n = static_cast<memory::dim>(s.n);
  const memory::desc src_md({mm, k}, s.src, memory::dims{static_cast<memory::dim>(s.lda), 1});
  const memory::desc dst_md({mm, n}, s.dst, memory::dims{static_cast<memory::dim>(s.ldd), 1});
  const memory::desc bias_md = s.bias ? memory::desc({1, n}, Dt::f32, Tag::ab) : memory::desc();
  dnnl::post_ops ops;
  if (s.relu) ops.append_eltwise(1.0F, dnnl::algorithm::eltwise_relu, 0.0F, 0.0F);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return {dnnl::matmul::desc(src_md, w_md, bias_md, dst_md), attr, engine};
}

void DeepRankerModel::Impl::init_stage(Stage& s, std::uint32_t id, std::size_t k, std::size_t n,
                                       std::size_t lda, Dt src, Dt dst, bool bias,
                                       bool relu) const {
  s.id = id;
  s.k = k;
  s.n = n;
  s.lda = lda;
  s.ldd = n;
  s.src = src;
  s.dst = dst;
  s.bias = bias;
  s.relu = relu;
  const memory::desc any({static_cast<memory::dim>(k), static_cast<memory::dim>(n)}, src, Tag::any);
  s.w_md = make_pd(s, kChunkRows, any).weights_desc();
}

Linear DeepRankerModel::Impl::make_linear(const Stage& s, const std::vector<float>& w_nk,
                                          std::vector<float> bias) const {
  assert(w_nk.size() == s.k * s.n);
  Linear lin;
  // W is [n, k] row-major: the k x n weights of the product in "ba" layout.
  memory src({{static_cast<memory::dim>(s.k), static_cast<memory::dim>(s.n)}, Dt::f32, Tag::ba},
             engine, const_cast<float*>(w_nk.data()));
  lin.w = memory(s.w_md, engine);
  dnnl::stream stream(engine);
  dnnl::reorder(src, lin.w).execute(stream, src, lin.w);
  stream.wait();
  if (!bias.empty()) {
    assert(bias.size() == s.n);
    lin.bias = std::move(bias);
    lin.b = memory({{1, static_cast<memory::dim>(s.n)}, Dt::f32, Tag::ab}, engine, lin.bias.data());
  }
  return lin;
}

void DeepRankerModel::Impl::prepare() {
  const DeepRankerConfig& c = config;
  isa = bert::detect_isa();
  act = options.precision == DeepRankerServeOptions::Precision::bf16 ? Dt::bf16 : Dt::f32;
  mmoe = c.body == DeepRankerConfig::Body::mmoe;
  d = c.item_vector_dim;
  u_width = c.user_width();
  c_width = c.candidate_width();
  hd = c.token_width();
  a = c.attention_dim;
  ca = c_width + a;
  experts = c.experts;
  tasks = c.tasks.size();
  h0 = c.expert_hidden.front();
  hl = c.expert_hidden.back();
  ng = mmoe ? tasks * experts : 0;
  const std::size_t layers = c.expert_hidden.size();
  const std::size_t tower_layers = c.tower_hidden.size();

  for (const auto& f : c.user_categorical) {
    user_tables.push_back({param("user." + f.name + ".embedding").values.data(), f.dim});
  }
  for (const auto& f : c.item_categorical) {
    item_tables.push_back({param("item." + f.name + ".embedding").values.data(), f.dim});
  }
  type_table = param("history.type.embedding").values.data();
  recency_table = param("history.recency.embedding").values.data();

  // Internal candidate columns: [v, E_hc, other item embeddings, numeric];
  // `original[j]` is the column of c (deep_ranker.hpp's order) stored at j.
  std::vector<std::size_t> original(c_width);
  {
    std::vector<std::size_t> spec_offset(c.item_categorical.size());
    std::size_t at = d;
    for (std::size_t k = 0; k < c.item_categorical.size(); ++k) {
      spec_offset[k] = at;
      at += c.item_categorical[k].dim;
    }
    for (std::size_t j = 0; j < d; ++j) original[j] = j;
    item_columns.assign(c.item_categorical.size(), 0);
    std::size_t col = d;
    auto place = [&](std::size_t k) {
      item_columns[k] = col;
      for (std::size_t j = 0; j < c.item_categorical[k].dim; ++j)
        original[col++] = spec_offset[k] + j;
    };
    place(c.history_category_feature);
    for (std::size_t k = 0; k < c.item_categorical.size(); ++k) {
      if (k != c.history_category_feature) place(k);
    }
    numeric_column = col;
    for (std::size_t j = 0; j < c.item_numeric.size(); ++j) original[col++] = at + j;
    assert(col == c_width);
  }
  // Column of x (= [u, c, p]) feeding internal candidate-side column j.
  auto x_column = [&](std::size_t j) {
    return j < c_width ? u_width + original[j] : u_width + j;  // p follows c in both
  };

  const Dt first_dst = layers > 1 ? act : Dt::f32;
  if (u_width > 0) {
    init_stage(user_stage, kUserStage, u_width, experts * h0 + ng, u_width, Dt::f32, Dt::f32, true,
               false);
  }
  init_stage(kv_stage, kKeyValueStage, hd, 2 * a, hd, act, Dt::f32, true, false);
  init_stage(q_stage, kQueryStage, ca, a, ca, act, Dt::f32, true, false);
  init_stage(first_fused, kFirstFusedStage, ca, h0, ca, act, first_dst, true, true);
  first_plain = first_fused;
  first_plain.id = kFirstPlainStage;
  first_plain.dst = Dt::f32;
  first_plain.bias = false;
  first_plain.relu = false;
  if (mmoe) init_stage(gate_stage, kGateStage, ca, ng, ca, act, Dt::f32, false, false);
  expert_stages.resize(layers);
  for (std::size_t l = 1; l < layers; ++l) {
    init_stage(expert_stages[l], kExpertStage + static_cast<std::uint32_t>(l),
               c.expert_hidden[l - 1], c.expert_hidden[l], c.expert_hidden[l - 1], act,
               l + 1 == layers ? Dt::f32 : act, true, true);
  }
  tower_stages.resize(tower_layers);
  for (std::size_t l = 0; l < tower_layers; ++l) {
    const std::size_t in = l == 0 ? hl : c.tower_hidden[l - 1];
    init_stage(tower_stages[l], kTowerStage + static_cast<std::uint32_t>(l), in, c.tower_hidden[l],
               in, act, l + 1 == tower_layers ? Dt::f32 : act, true, true);
  }
  tower_stages_f32.clear();
  if (act != Dt::f32) {
    tower_stages_f32.resize(tower_layers);
    for (std::size_t l = 0; l < tower_layers; ++l) {
      const std::size_t in = l == 0 ? hl : c.tower_hidden[l - 1];
      init_stage(tower_stages_f32[l], kTowerF32Stage + static_cast<std::uint32_t>(l), in,
                 c.tower_hidden[l], in, Dt::f32, Dt::f32, true, true);
    }
  }

  // The user part of the first expert layer and of the gates, and its bias.
  user_bias.clear();
  std::vector<float> w_user;
  for (std::size_t e = 0; e < experts; ++e) {
    const auto& w = param(detail::cat("expert.", e, ".0.weight")).values;
    const auto& b = param(detail::cat("expert.", e, ".0.bias")).values;
    user_bias.insert(user_bias.end(), b.begin(), b.end());
    for (std::size_t h = 0; h < h0; ++h) {
      w_user.insert(w_user.end(), w.begin() + static_cast<std::ptrdiff_t>(h * c.input_width()),
                    w.begin() + static_cast<std::ptrdiff_t>(h * c.input_width() + u_width));
    }
  }
  if (mmoe) {
    for (const auto& t : c.tasks) {
      const auto& w = param("gate." + t.name + ".weight").values;
      const auto& b = param("gate." + t.name + ".bias").values;
      user_bias.insert(user_bias.end(), b.begin(), b.end());
      for (std::size_t e = 0; e < experts; ++e) {
        w_user.insert(w_user.end(), w.begin() + static_cast<std::ptrdiff_t>(e * c.input_width()),
                      w.begin() + static_cast<std::ptrdiff_t>(e * c.input_width() + u_width));
      }
    }
  }
  if (u_width > 0) user_w = make_linear(user_stage, w_user, user_bias);

  // Keys and values: one product with [W_k; W_v].
  {
    std::vector<float> w = param("attention.key.weight").values;
    const auto& wv = param("attention.value.weight").values;
    w.insert(w.end(), wv.begin(), wv.end());
    std::vector<float> b = param("attention.key.bias").values;
    const auto& bv = param("attention.value.bias").values;
    b.insert(b.end(), bv.begin(), bv.end());
    kv_w = make_linear(kv_stage, w, std::move(b));
  }
  // Query: t is the first hd internal columns; the other columns get zero weights.
  {
    const auto& wq = param("attention.query.weight").values;
    std::vector<float> w(a * ca, 0.0F);
    for (std::size_t r = 0; r < a; ++r) {
      std::copy_n(wq.begin() + static_cast<std::ptrdiff_t>(r * hd), hd,
                  w.begin() + static_cast<std::ptrdiff_t>(r * ca));
    }
    q_w = make_linear(q_stage, w, param("attention.query.bias").values);
  }
  // Candidate part of the first expert layer and of the gates, permuted.
  auto candidate_part = [&](const std::vector<float>& w, std::size_t rows) {
    std::vector<float> out(rows * ca);
    const std::size_t x = c.input_width();
    for (std::size_t r = 0; r < rows; ++r) {
      for (std::size_t j = 0; j < ca; ++j) out[r * ca + j] = w[r * x + x_column(j)];
    }
    return out;
  };
  first_w.clear();
  for (std::size_t e = 0; e < experts; ++e) {
    first_w.push_back(make_linear(
        first_fused, candidate_part(param(detail::cat("expert.", e, ".0.weight")).values, h0), {}));
  }
  if (mmoe) {
    std::vector<float> w;
    for (const auto& t : c.tasks) {
      const auto part = candidate_part(param("gate." + t.name + ".weight").values, experts);
      w.insert(w.end(), part.begin(), part.end());
    }
    gate_w = make_linear(gate_stage, w, {});
  }
  expert_w.assign(experts, {});
  for (std::size_t e = 0; e < experts; ++e) {
    expert_w[e].resize(layers);
    for (std::size_t l = 1; l < layers; ++l) {
      expert_w[e][l] =
          make_linear(expert_stages[l], param(detail::cat("expert.", e, ".", l, ".weight")).values,
                      param(detail::cat("expert.", e, ".", l, ".bias")).values);
    }
  }
  tower_w.assign(tasks, {});
  f32_tower.assign(tasks, false);
  logit_w.clear();
  logit_b.clear();
  for (std::size_t t = 0; t < tasks; ++t) {
    const std::string& name = c.tasks[t].name;
    f32_tower[t] = !tower_stages_f32.empty() && c.tasks[t].kind == DeepTaskKind::regression;
    const std::vector<Stage>& stages = f32_tower[t] ? tower_stages_f32 : tower_stages;
    for (std::size_t l = 0; l < tower_layers; ++l) {
      tower_w[t].push_back(make_linear(stages[l],
                                       param(detail::cat("tower.", name, ".", l, ".weight")).values,
                                       param(detail::cat("tower.", name, ".", l, ".bias")).values));
    }
    logit_w.push_back(
        param(detail::cat("tower.", name, ".", tower_layers, ".weight")).values.data());
    logit_b.push_back(param(detail::cat("tower.", name, ".", tower_layers, ".bias")).values[0]);
  }
}

std::shared_ptr<const Primitive> DeepRankerModel::Impl::primitive(const Stage& s,
                                                                  std::size_t m) const {
  const std::uint64_t key = (std::uint64_t{s.id} << 32) | m;
  const std::lock_guard lock(cache_mutex);
  if (const auto it = cache.find(key); it != cache.end()) return it->second;
  const auto pd = make_pd(s, m, s.w_md);
  auto prim = std::make_shared<Primitive>();
  prim->matmul = dnnl::matmul(pd);
  prim->scratch_bytes = pd.scratchpad_desc().get_size();
  if (cache.size() >= kMaxCachedPrimitives) cache.clear();
  cache.emplace(key, prim);
  return prim;
}

// Runs one product on m rows (padded_rows of a count, at most kChunkRows).
// `bias` replaces the stage's own bias (the first layer's per-user bias).
void DeepRankerModel::Impl::run(Workspace& ws, const Stage& s, const Linear& lin, std::size_t m,
                                const void* src, void* dst, const float* bias) const {
  const auto prim = primitive(s, m);
  const auto mm = static_cast<memory::dim>(m);
  const std::uint64_t key = (std::uint64_t{s.id} << 32) | (m << 2);
  const memory& src_mem = ws.bind(
      key,
      [&] {
        return memory({{mm, static_cast<memory::dim>(s.k)},
                       s.src,
                       memory::dims{static_cast<memory::dim>(s.lda), 1}},
                      engine, DNNL_MEMORY_NONE);
      },
      src);
  const memory& dst_mem = ws.bind(
      key | 1U,
      [&] {
        return memory({{mm, static_cast<memory::dim>(s.n)},
                       s.dst,
                       memory::dims{static_cast<memory::dim>(s.ldd), 1}},
                      engine, DNNL_MEMORY_NONE);
      },
      dst);
  std::array<dnnl_exec_arg_t, 5> args{};
  int count = 0;
  args[count++] = {DNNL_ARG_SRC, src_mem.get()};
  args[count++] = {DNNL_ARG_WEIGHTS, lin.w.get()};
  args[count++] = {DNNL_ARG_DST, dst_mem.get()};
  if (s.bias) {
    if (bias != nullptr) {
      const memory& bias_mem =
          ws.bind((std::uint64_t{s.id} << 32) | 2U,
                  [&] {
                    return memory({{1, static_cast<memory::dim>(s.n)}, Dt::f32, Tag::ab}, engine,
                                  DNNL_MEMORY_NONE);
                  },
                  bias);
      args[count++] = {DNNL_ARG_BIAS, bias_mem.get()};
    } else {
      args[count++] = {DNNL_ARG_BIAS, lin.b.get()};
    }
  }
  args[count++] = {DNNL_ARG_SCRATCHPAD, ws.scratchpad(prim->scratch_bytes, engine).get()};
  const dnnl_status_t status =
      dnnl_primitive_execute(prim->matmul.get(), ws.stream.get(), count, args.data());
  if (status != dnnl_success) {
    fail(ErrorCode::internal, "DeepRankerModel: oneDNN matmul (stage ", s.id, ", ", m,
         " rows) failed with status ", static_cast<int>(status));
  }
}

// Runs a product over `rows` rows (buffers hold padded_rows(rows)),
// in chunks of kChunkRows.
void DeepRankerModel::Impl::run_rows(Workspace& ws, const Stage& s, const Linear& lin,
                                     std::size_t rows, const std::byte* src, std::byte* dst) const {
  for (std::size_t r0 = 0; r0 < rows; r0 += kChunkRows) {
    const std::size_t m = padded_rows(std::min(kChunkRows, rows - r0));
    run(ws, s, lin, m, src + r0 * s.lda * dt_size(s.src), dst + r0 * s.ldd * dt_size(s.dst));
  }
}

void DeepRankerModel::Impl::forward(const DeepRankerBatch& batch, MatrixView<float> outputs,
                                    Workspace& ws) const {
  const DeepRankerConfig& c = config;
  const bool parallel = options.threads > 1;
  const bool bf16 = act == Dt::bf16;
  const std::size_t nu = batch.users;
  const std::size_t nc = batch.candidates;
  const std::size_t events = batch.history_category.size();
  const std::size_t layers = c.expert_hidden.size();
  const std::size_t tower_layers = c.tower_hidden.size();
  assert(layers <= kMaxLayers);
  const std::size_t n_user = experts * h0 + ng;  // user-part columns
  const std::size_t mu = padded_rows(nu);
  const std::size_t mev = padded_rows(events);
  const std::size_t rmax = std::min(kChunkRows, padded_rows(nc));
  const std::size_t hist = c.history_length;
  std::size_t tower_max = 1;
  for (const std::size_t w : c.tower_hidden) tower_max = std::max(tower_max, w);

  // Buffers.
  Carver carve;
  const std::size_t o_user_in = carve.add(mu * u_width * 4);
  const std::size_t o_up = carve.add(mu * n_user * 4);
  const std::size_t o_tok = carve.add(mev * hd * 4);
  const std::size_t o_tok_b = bf16 ? carve.add(mev * hd * 2) : 0;
  const std::size_t o_kv = carve.add(mev * 2 * a * 4);
  const std::size_t o_kt = carve.add(a * mev * 4);
  const std::size_t o_cand = carve.add(rmax * ca * 4);
  const std::size_t o_cand_b = bf16 ? carve.add(rmax * ca * 2) : 0;
  const std::size_t o_q = carve.add(rmax * a * 4);
  const std::size_t o_scores = carve.add(rmax * hist * 4);
  const std::size_t o_tmp = carve.add(rmax * h0 * 4);
  const std::size_t o_gate = carve.add(rmax * std::max<std::size_t>(ng, 1) * 4);
  // Hidden expert layers of one expert, then the last layer of all experts.
  std::array<std::size_t, kMaxLayers> o_layer{};
  for (std::size_t l = 0; l + 1 < layers; ++l)
    o_layer[l] = carve.add(rmax * c.expert_hidden[l] * 4);
  const std::size_t o_y = carve.add(experts * rmax * hl * 4);
  const std::size_t o_mix = carve.add(rmax * hl * 4);
  const std::size_t o_z0 = carve.add(rmax * tower_max * 4);
  const std::size_t o_z1 = carve.add(rmax * tower_max * 4);
  std::byte* base = ws.reserve(carve.size());
  auto* user_in = reinterpret_cast<float*>(base + o_user_in);
  auto* up = reinterpret_cast<float*>(base + o_up);
  auto* tok = reinterpret_cast<float*>(base + o_tok);
  auto* tok_b = reinterpret_cast<std::uint16_t*>(base + o_tok_b);
  auto* kv = reinterpret_cast<float*>(base + o_kv);
  auto* kt = reinterpret_cast<float*>(base + o_kt);
  auto* cand = reinterpret_cast<float*>(base + o_cand);
  auto* cand_b = reinterpret_cast<std::uint16_t*>(base + o_cand_b);
  auto* q = reinterpret_cast<float*>(base + o_q);
  auto* scores = reinterpret_cast<float*>(base + o_scores);
  auto* tmp = reinterpret_cast<float*>(base + o_tmp);
  auto* gate = reinterpret_cast<float*>(base + o_gate);
  std::byte* mix = base + o_mix;
  std::byte* z_buf[2] = {base + o_z0, base + o_z1};
  const std::byte* cand_act =
      bf16 ? reinterpret_cast<const std::byte*>(cand_b) : reinterpret_cast<const std::byte*>(cand);

  // Users: inputs, then their part of the first expert and gate layers.
  if (u_width > 0) {
    const std::size_t nuc = c.user_categorical.size();
    const std::size_t nun = c.user_numeric.size();
    for_rows(nu, parallel, [&](std::size_t u) {
      float* row = user_in + u * u_width;
      for (std::size_t k = 0; k < nuc; ++k) {
        const auto idx = static_cast<std::size_t>(batch.user_categorical[u * nuc + k]);
        const Table& t = user_tables[k];
        row = std::copy_n(t.data + idx * t.dim, t.dim, row);
      }
      for (std::size_t k = 0; k < nun; ++k) {
        const DeepNumericFeature& f = c.user_numeric[k];
        *row++ = (batch.user_numeric[u * nun + k] - f.mean) / f.std;
      }
    });
    std::fill(user_in + nu * u_width, user_in + mu * u_width, 0.0F);
    run_rows(ws, user_stage, user_w, nu, reinterpret_cast<const std::byte*>(user_in),
             reinterpret_cast<std::byte*>(up));
  } else {
    for (std::size_t u = 0; u < nu; ++u)
      std::copy(user_bias.begin(), user_bias.end(), up + u * n_user);
  }

  // History: tokens, keys and values of every event once.
  if (events > 0) {
    const Table& ht = item_tables[c.history_category_feature];
    for_rows(events, parallel, [&](std::size_t j) {
      float* row = tok + j * hd;
      std::copy_n(batch.history_vectors.data() + j * d, d, row);
      const auto idx = static_cast<std::size_t>(batch.history_category[j]);
      std::copy_n(ht.data + idx * ht.dim, ht.dim, row + d);
    });
    std::fill(tok + events * hd, tok + mev * hd, 0.0F);
    const std::byte* tok_act = reinterpret_cast<const std::byte*>(tok);
    if (bf16) {
      bert::to_bf16(isa, tok, tok_b, mev * hd);
      tok_act = reinterpret_cast<const std::byte*>(tok_b);
    }
    run_rows(ws, kv_stage, kv_w, events, tok_act, reinterpret_cast<std::byte*>(kv));
    // Keys transposed (kt[a][j]), with the event type and recency
    // embeddings; blocks of events, so that kv is read once.
    constexpr std::size_t kBlock = 64;
    for_rows((events + kBlock - 1) / kBlock, parallel, [&](std::size_t block) {
      const std::size_t end = std::min(events, (block + 1) * kBlock);
      for (std::size_t j = block * kBlock; j < end; ++j) {
        const float* key = kv + j * 2 * a;
        const float* type = type_table + static_cast<std::size_t>(batch.history_type[j]) * a;
        const float* rec = recency_table + static_cast<std::size_t>(batch.history_recency[j]) * a;
        for (std::size_t r = 0; r < a; ++r) kt[r * mev + j] = key[r] + type[r] + rec[r];
      }
    });
  }

  const float att_scale = 1.0F / std::sqrt(static_cast<float>(a));
  const std::size_t nic = c.item_categorical.size();
  const std::size_t nin = c.item_numeric.size();
  for (std::size_t c0 = 0; c0 < nc; c0 += kChunkRows) {
    const std::size_t rows = std::min(kChunkRows, nc - c0);
    const std::size_t m = padded_rows(rows);
    const std::int32_t* cu = batch.candidate_user.data() + c0;

    // Candidate rows in the internal column order; p = 0 for now.
    for_rows(rows, parallel, [&](std::size_t i) {
      const std::size_t g = c0 + i;
      float* row = cand + i * ca;
      std::copy_n(batch.candidate_vectors.data() + g * d, d, row);
      for (std::size_t k = 0; k < nic; ++k) {
        const auto idx = static_cast<std::size_t>(batch.candidate_categorical[g * nic + k]);
        const Table& t = item_tables[k];
        std::copy_n(t.data + idx * t.dim, t.dim, row + item_columns[k]);
      }
      for (std::size_t k = 0; k < nin; ++k) {
        const DeepNumericFeature& f = c.item_numeric[k];
        row[numeric_column + k] = (batch.candidate_numeric[g * nin + k] - f.mean) / f.std;
      }
      std::fill_n(row + c_width, a, 0.0F);
    });
    std::fill(cand + rows * ca, cand + m * ca, 0.0F);
    if (bf16) bert::to_bf16(isa, cand, cand_b, m * ca);

    // Target attention: queries for the chunk, then each candidate over its
    // user's events.
    run(ws, q_stage, q_w, m, cand_act, q);
    for_rows(rows, parallel, [&](std::size_t i) {
      const auto u = static_cast<std::size_t>(cu[i]);
      const auto begin = static_cast<std::size_t>(batch.history_offsets[u]);
      const std::size_t ne = static_cast<std::size_t>(batch.history_offsets[u + 1]) - begin;
      if (ne == 0) return;  // p stays 0
      float* p = cand + i * ca + c_width;
      kern::attention(isa, q + i * a, a, kt + begin, mev, kv + begin * 2 * a + a, 2 * a, ne,
                      att_scale, scores + i * hist, p);
      if (bf16) bert::to_bf16(isa, p, cand_b + i * ca + c_width, a);
    });

    // Gates: candidate part, plus the user's part, softmax per task.
    if (mmoe) {
      run(ws, gate_stage, gate_w, m, cand_act, gate);
      for_rows(rows, parallel, [&](std::size_t i) {
        kern::gate_softmax(isa, gate + i * ng,
                           up + static_cast<std::size_t>(cu[i]) * n_user + experts * h0, tasks,
                           experts);
      });
    }
    // Experts, one at a time through all its layers (its activations stay
    // in cache), into y (expert-major, f32). The first layer takes the
    // user's part as its bias when the chunk has one user.
    const bool one_user = std::all_of(cu, cu + rows, [&](std::int32_t u) { return u == cu[0]; });
    const Dt first_dst = first_fused.dst;
    const std::size_t first_esz = dt_size(first_dst);
    auto* y_out = reinterpret_cast<float*>(base + o_y);
    for (std::size_t e = 0; e < experts; ++e) {
      std::byte* expert_out = reinterpret_cast<std::byte*>(y_out + e * m * hl);
      std::byte* out = layers == 1 ? expert_out : base + o_layer[0];
      if (one_user) {
        run(ws, first_fused, first_w[e], m, cand_act, out,
            up + static_cast<std::size_t>(cu[0]) * n_user + e * h0);
      } else {
        run(ws, first_plain, first_w[e], m, cand_act, tmp);
        for_rows(m, parallel, [&](std::size_t i) {
          const float* x = tmp + i * h0;
          std::byte* dst = out + i * h0 * first_esz;
          if (i >= rows) {
            std::memset(dst, 0, h0 * first_esz);
            return;
          }
          const float* add = up + static_cast<std::size_t>(cu[i]) * n_user + e * h0;
          if (first_dst == Dt::bf16) {
            kern::add_relu(isa, x, add, h0, reinterpret_cast<std::uint16_t*>(dst));
          } else {
            kern::add_relu(isa, x, add, h0, reinterpret_cast<float*>(dst));
          }
        });
      }
      for (std::size_t l = 1; l < layers; ++l) {
        run(ws, expert_stages[l], expert_w[e][l], m, base + o_layer[l - 1],
            l + 1 == layers ? expert_out : base + o_layer[l]);
      }
    }
    const float* y = y_out;

    // Tower input: the mixture (mmoe, per task) or y itself (shared_bottom),
    // in the precision of the task's tower.
    auto mixture = [&](std::size_t t, Dt tower_in) {
      for_rows(m, parallel, [&](std::size_t i) {
        std::byte* out = mix + i * hl * dt_size(tower_in);
        if (i >= rows) {
          std::memset(out, 0, hl * dt_size(tower_in));
          return;
        }
        const float* g = gate + i * ng + t * experts;
        if (tower_in == Dt::bf16) {
          kern::mixture(isa, y + i * hl, m * hl, experts, hl, g,
                        reinterpret_cast<std::uint16_t*>(out));
        } else {
          kern::mixture(isa, y + i * hl, m * hl, experts, hl, g, reinterpret_cast<float*>(out));
        }
      });
    };
    const Dt tower_act = tower_layers > 0 ? act : Dt::f32;
    const std::byte* shared_in = reinterpret_cast<const std::byte*>(y);
    if (!mmoe && tower_act == Dt::bf16) {
      bert::to_bf16(isa, y, reinterpret_cast<std::uint16_t*>(mix), m * hl);
      shared_in = mix;
    }
    for (std::size_t t = 0; t < tasks; ++t) {
      const Dt tower_in = f32_tower[t] ? Dt::f32 : tower_act;
      const std::byte* z = tower_in == Dt::f32 ? reinterpret_cast<const std::byte*>(y) : shared_in;
      if (mmoe) {
        mixture(t, tower_in);
        z = mix;
      }
      const std::vector<Stage>& stages = f32_tower[t] ? tower_stages_f32 : tower_stages;
      for (std::size_t l = 0; l < tower_layers; ++l) {
        std::byte* out = z_buf[l % 2];
        run(ws, stages[l], tower_w[t][l], m, z, out);
        z = out;
      }
      // z is f32 here: the last hidden layer's output, or the f32 tower input.
      const auto* zf = reinterpret_cast<const float*>(z);
      const std::size_t width = tower_layers > 0 ? c.tower_hidden.back() : hl;
      const bool regression = c.tasks[t].kind == DeepTaskKind::regression;
      const float* w = logit_w[t];
      const float b = logit_b[t];
      for_rows(rows, parallel, [&](std::size_t i) {
        const float o = kern::dot(isa, zf + i * width, w, width) + b;
        outputs(c0 + i, t) = regression ? o : 1.0F / (1.0F + std::exp(-o));
      });
    }
  }
}

// ---------------------------------------------------------------------------
// Public API

DeepRankerModel::DeepRankerModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeepRankerModel::~DeepRankerModel() = default;

std::unique_ptr<DeepRankerModel::Impl> DeepRankerModel::Impl::make(
    DeepRankerConfig config, DeepRankerParameters canonical,
    const DeepRankerServeOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->params = std::move(canonical);
  impl->config = std::move(config);
  impl->options = options;
  try {
    const OmpThreadsScope threads(static_cast<int>(options.threads));
    impl->prepare();
  } catch (const dnnl::error& e) {
    fail(ErrorCode::internal, "DeepRankerModel: oneDNN failed while preparing weights: ", e.what());
  }
  return impl;
}

std::unique_ptr<DeepRankerModel> DeepRankerModel::create(DeepRankerConfig config,
                                                         DeepRankerParameters parameters,
                                                         const DeepRankerServeOptions& options) {
  check_options(options);
  config.validate();
  DeepRankerParameters canonical = canonical_parameters(
      config, std::move(parameters), ErrorCode::invalid_argument, "DeepRankerModel::create");
  return std::unique_ptr<DeepRankerModel>(
      new DeepRankerModel(Impl::make(std::move(config), std::move(canonical), options)));
}

std::unique_ptr<DeepRankerModel> DeepRankerModel::load(const std::filesystem::path& dir,
                                                       const DeepRankerServeOptions& options) {
  check_options(options);
  const fs::path config_path = dir / kConfigFile;
  const fs::path weights_path = dir / kWeightsFile;
  if (!fs::is_directory(dir)) {
    fail(ErrorCode::io, "DeepRankerModel::load: model directory ", dir.string(), " does not exist");
  }
  const std::string text = detail::read_file(config_path);
  DeepRankerConfig config = DeepRankerConfig::from_json(text, config_path.string());
  // from_json checked weights_sha's form when present; here it is required.
  std::string weights_sha;
  {
    const auto doc = nlohmann::json::parse(text);
    const auto it = doc.find("weights_sha");
    if (it == doc.end()) {
      fail(ErrorCode::format, config_path.string(),
           ": field 'weights_sha': missing (the checksum of model.safetensors)");
    }
    weights_sha = it->get<std::string>();
  }

  const SafetensorsFile file = SafetensorsFile::open(weights_path);
  const std::string where = weights_path.string();
  const std::string actual_sha = detail::to_hex(detail::checksum64_file(weights_path));
  if (actual_sha != weights_sha) {
    fail(ErrorCode::format, where, " has checksum ", actual_sha, " but ", config_path.string(),
         " says weights_sha ", weights_sha,
         " (the weights belong to another model, or the file is damaged)");
  }
  const DeepRankerParameters shapes = deep_ranker_parameter_shapes(config);
  for (const TensorInfo& t : file.tensors()) {
    const bool known = std::any_of(shapes.begin(), shapes.end(),
                                   [&](const NamedTensor& p) { return p.name == t.name; });
    if (!known) {
      fail(ErrorCode::format, where, ": unexpected tensor '", t.name,
           "' (not a parameter of the network in ", config_path.string(), ")");
    }
  }
  DeepRankerParameters params;
  params.reserve(shapes.size());
  for (const NamedTensor& p : shapes) {
    const TensorInfo* t = file.find(p.name);
    if (t == nullptr) fail(ErrorCode::format, where, ": missing tensor '", p.name, "'");
    if (t->dtype != TensorDType::f32) {
      fail(ErrorCode::format, where, ": tensor '", p.name, "' has dtype ", to_string(t->dtype),
           ", expected F32");
    }
    if (t->shape != p.shape) {
      fail(ErrorCode::format, where, ": tensor '", p.name, "' has shape ", shape_string(t->shape),
           ", expected ", shape_string(p.shape));
    }
    NamedTensor out{p.name, p.shape, std::vector<float>(t->elements())};
    const auto bytes = file.bytes(*t);
    if (!out.values.empty()) std::memcpy(out.values.data(), bytes.data(), bytes.size());
    params.push_back(std::move(out));
  }
  params = canonical_parameters(config, std::move(params), ErrorCode::format, where);
  return std::unique_ptr<DeepRankerModel>(
      new DeepRankerModel(Impl::make(std::move(config), std::move(params), options)));
}

void DeepRankerModel::save(const std::filesystem::path& dir) const {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    fail(ErrorCode::io, "DeepRankerModel::save: cannot create directory ", dir.string(), ": ",
         ec ? ec.message() : "not a directory");
  }
  const fs::path weights_path = dir / kWeightsFile;
  std::vector<TensorToWrite> tensors;
  tensors.reserve(impl_->params.size());
  for (const NamedTensor& p : impl_->params) {
    tensors.push_back(
        {p.name, TensorDType::f32, p.shape, std::as_bytes(std::span<const float>(p.values))});
  }
  write_safetensors(weights_path, tensors, {{"format", std::string(kFormatName)}});
  auto doc = nlohmann::ordered_json::parse(impl_->config.to_json());
  doc["weights_sha"] = detail::to_hex(detail::checksum64_file(weights_path));
  detail::write_file_atomic(dir / kConfigFile, doc.dump(2) + "\n");
}

const DeepRankerConfig& DeepRankerModel::config() const noexcept { return impl_->config; }
const DeepRankerParameters& DeepRankerModel::parameters() const noexcept { return impl_->params; }
const DeepRankerServeOptions& DeepRankerModel::options() const noexcept { return impl_->options; }

void DeepRankerModel::forward(const DeepRankerBatch& batch, MatrixView<float> outputs) const {
  const DeepRankerConfig& c = impl_->config;
  batch.validate(c);
  detail::require(outputs.rows == batch.candidates && outputs.cols == c.tasks.size(),
                  "DeepRankerModel::forward: outputs is ", outputs.rows, " x ", outputs.cols,
                  ", expected candidates x tasks = ", batch.candidates, " x ", c.tasks.size());
  detail::require(outputs.data != nullptr || outputs.empty(),
                  "DeepRankerModel::forward: outputs has no data");
  if (batch.candidates == 0) return;
  const OmpThreadsScope threads(static_cast<int>(impl_->options.threads));
  std::unique_ptr<Workspace> ws = impl_->take_workspace();
  try {
    impl_->forward(batch, outputs, *ws);
    dnnl_stream_wait(ws->stream.get());
  } catch (const dnnl::error& e) {
    impl_->give_workspace(std::move(ws));
    fail(ErrorCode::internal, "DeepRankerModel: oneDNN failed: ", e.what());
  } catch (...) {
    impl_->give_workspace(std::move(ws));
    throw;
  }
  impl_->give_workspace(std::move(ws));
}

}  // namespace funnel
