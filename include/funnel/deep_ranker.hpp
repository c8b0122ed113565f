// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// DeepRankerModel: the multi-task deep ranking network behind
/// DeepFineRanker, at the tensor level: a configuration, a batch of
/// already-indexed inputs, and a forward pass on oneDNN. Hosts that build
/// their own features (and the PyTorch twin in tools/deep_ranker/) use this
/// level directly; DeepFineRanker (deep_fine_ranker.hpp) turns a request's
/// UserContext and candidates into a DeepRankerBatch.
///
/// ## The network (format "funnel.deep_ranker", version 1)
/// Notation: D = item_vector_dim; dc = embedding dim of the item categorical
/// feature history tokens carry (item_categorical[history_category_feature]);
/// A = attention_dim; E = experts; T = tasks.size().
///
///  - User input  u = [E_uc_0[i_0], ..., E_uc_k[i_k], (x_0 - mean_0) / std_0, ...]:
///    user categorical embeddings in config order, then standardised user
///    numeric features. Width U.
///  - Candidate input c = [v (D), E_ic_0[j_0], ..., (y_0 - mean_0) / std_0, ...]:
///    the item's text vector, item categorical embeddings in config order,
///    standardised item numeric features. Width C.
///  - History token input h = [v_h (D), E_hc[cat_h] (dc)] for each history
///    event (E_hc = the table of item_categorical[history_category_feature],
///    shared with the candidate side); target input t = [v (D), E_hc[j_hcf]]
///    for each candidate. Width Hd = D + dc.
///  - Target attention (the candidate attends over the user's history, as in
///    Deep Interest Network, with a bilinear activation unit and softmax):
///      key_j   = W_k h_j + b_k + T_type[type_j] + T_rec[recency_j]   (A)
///      value_j = W_v h_j + b_v                                        (A)
///      q_i     = W_q t_i + b_q                                        (A)
///      s_ij    = q_i . key_j / sqrt(A),  a_i = softmax_j(s_i.) over the
///                candidate's user's history events only,
///      p_i     = sum_j a_ij value_j   (p_i = 0 when the user has no history).
///  - x_i = [u_user(i), c_i, p_i], width X = U + C + A.
///  - Experts e = 0..E-1: a_0 = x, a_{l+1} = relu(W_{e,l} a_l + b_{e,l}) for
///    each width in expert_hidden (ReLU after every layer, the last included);
///    y_e = a_L.
///  - body mmoe: per task t, g_t = softmax(W_g,t x + b_g,t) (E values) and
///    m_t = sum_e g_t,e y_e. body shared_bottom: experts must be 1, there are
///    no gates, m_t = y_0.
///  - Tower per task t: z_0 = m_t, z_{l+1} = relu(W_{t,l} z_l + b_{t,l}) for
///    each width in tower_hidden, then the logit o_t = w_t . z_L + b_t.
///  - Outputs: binary and ctcvr tasks sigmoid(o_t) (a ctcvr task's output is
///    its conditional probability, e.g. P(purchase | click); the product with
///    its parent's output is P(click and purchase | impression)); regression
///    tasks o_t itself (a prediction of log(1 + target), e.g. log(1 + dwell_s)).
///  - Training only: inverted dropout (rate `dropout`) on the output of every
///    expert and tower hidden layer.
///
/// Recency bucket of a history event: the number of recency_bounds_s entries
/// b with (now - ts) >= b (age clamped at 0), so buckets 0..bounds.size().
///
/// ## Parameters (safetensors names; Linear weights are [out, in] as in PyTorch)
///  user.<name>.embedding      [vocab.size() + 1, dim]   row 0 = out of vocabulary
///  item.<name>.embedding      [vocab.size() + 1, dim]
///  history.type.embedding     [4, A]                    rows in EventType order
///  history.recency.embedding  [recency_bounds_s.size() + 1, A]
///  attention.query.weight [A, Hd], attention.query.bias [A]  (same for key, value)
///  expert.<e>.<l>.weight [out, in], expert.<e>.<l>.bias [out]
///  gate.<task>.weight [E, X], gate.<task>.bias [E]   (mmoe only)
///  tower.<task>.<l>.weight [out, in], tower.<task>.<l>.bias [out]
///    for l = 0..tower_hidden.size(); the last layer has out = 1
/// Canonical order (deep_ranker_parameter_shapes): user embeddings, item
/// embeddings (config order), history type, history recency, attention
/// query, key, value, experts (e, then l), gates (task order), towers (task,
/// then l); weight before bias.
///
/// ## config.json (DeepRankerConfig::to_json; keys in this order)
///   {"format": "funnel.deep_ranker", "version": 1, "body": "mmoe",
///    "item_vector_dim": 64,
///    "user_categorical": [{"name": "gender", "vocab": ["f", "m"], "dim": 16}, ...],
///    "user_numeric": [{"name": "log_history_events", "mean": 1.2, "std": 0.8}, ...],
///    "item_categorical": [...], "item_numeric": [...],
///    "history_category_feature": 0, "history_length": 50,
///    "recency_bounds_s": [3600, ...], "attention_dim": 32, "experts": 4,
///    "expert_hidden": [256, 128], "tower_hidden": [64],
///    "tasks": [{"name": "ctr", "kind": "binary", "parent": "", "loss_weight": 1.0,
///               "label": "click"}, ...],
///    "dropout": 0.1,
///    "fusion": {"kind": "weighted_product", "weights": [["ctr", 1.0], ...], "epsilon": 1e-06},
///    "weights_sha": "<checksum64 of model.safetensors, 16 hex digits>"}   (files only)
/// Unknown keys are an error (they would mean a newer format).
///
/// ## Files
/// A model is a directory: `config.json` (DeepRankerConfig::to_json(), with
/// "format": "funnel.deep_ranker", "version": 1 and "weights_sha": the
/// checksum64 hex of model.safetensors) and `model.safetensors` (F32, the
/// tensors above, metadata {"format": "funnel.deep_ranker"}). Both written
/// atomically (weights first). load() rejects, naming file and tensor or
/// field: a missing or extra tensor, a wrong shape or dtype, a non-finite
/// weight, a weights file that does not match the config's checksum, an
/// unknown format/version/body/task kind/feature field, and the damaged
/// files SafetensorsFile rejects.
///
/// Threading: a DeepRankerModel is immutable after construction; forward()
/// may run concurrently from many threads (each thread reuses its own
/// workspace; steady-state calls allocate nothing).

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "funnel/fusion.hpp"
#include "funnel/matrix.hpp"

namespace funnel {

/// How a task's output is trained and read.
enum class DeepTaskKind : std::uint8_t {
  binary,     ///< sigmoid output, binary cross-entropy on its label
  ctcvr,      ///< sigmoid output p; trained as BCE(p_parent * p, label) over all impressions (ESMM)
  regression  ///< linear output, squared error on its label (log(1 + target))
};

/// "binary", "ctcvr", "regression".
std::string_view to_string(DeepTaskKind kind) noexcept;
/// @throws Error(invalid_argument) for an unknown name.
DeepTaskKind parse_deep_task_kind(std::string_view name);

/// One objective of the network.
struct DeepTaskConfig {
  std::string name;  ///< score column name, e.g. "ctr"
  DeepTaskKind kind = DeepTaskKind::binary;
  std::string parent;        ///< ctcvr only: the binary task it is conditioned on ("ctr")
  float loss_weight = 1.0F;  ///< weight of this task's mean loss in the total loss
  /// What DeepFineRanker labels this task with: "click", "cart",
  /// "purchase" (binary; for ctcvr the joint label) or "dwell" (regression
  /// on log(1 + dwell_s)). The tensor-level model only stores it.
  std::string label;
};

/// A categorical input: indices 1..vocab.size() are vocab's values, 0 is
/// "out of vocabulary".
struct DeepCategoricalFeature {
  std::string name;                ///< e.g. "gender", "category"
  std::vector<std::string> vocab;  ///< known values, in index order (index = position + 1)
  std::size_t dim = 8;             ///< embedding width
};

/// A numeric input, standardised by the network as (x - mean) / std.
struct DeepNumericFeature {
  std::string name;
  float mean = 0.0F;
  float std = 1.0F;  ///< > 0
};

/// Shape and semantics of a DeepRankerModel (see the file comment).
struct DeepRankerConfig {
  enum class Body : std::uint8_t { mmoe, shared_bottom };
  Body body = Body::mmoe;
  std::size_t item_vector_dim = 0;  ///< D: width of candidate and history text vectors
  std::vector<DeepCategoricalFeature> user_categorical;
  std::vector<DeepNumericFeature> user_numeric;
  std::vector<DeepCategoricalFeature> item_categorical;  ///< at least one (history tokens use one)
  std::vector<DeepNumericFeature> item_numeric;
  std::size_t history_category_feature = 0;  ///< index into item_categorical
  std::size_t history_length = 50;           ///< most recent history events a request keeps (N)
  /// Recency bucket bounds in seconds, strictly increasing, > 0: 1 hour,
  /// 1, 3, 7, 14, 30 and 90 days.
  std::vector<std::int64_t> recency_bounds_s = {3600,    86400,   259200, 604800,
                                                1209600, 2592000, 7776000};
  std::size_t attention_dim = 32;                       ///< A
  std::size_t experts = 4;                              ///< E (1 for shared_bottom)
  std::vector<std::size_t> expert_hidden = {256, 128};  ///< expert layer widths (at least one)
  std::vector<std::size_t> tower_hidden = {64};         ///< tower hidden widths (may be empty)
  /// Default: ctr (binary), cvr (ctcvr of ctr), dwell (regression).
  std::vector<DeepTaskConfig> tasks = {{"ctr", DeepTaskKind::binary, "", 1.0F, "click"},
                                       {"cvr", DeepTaskKind::ctcvr, "ctr", 1.0F, "purchase"},
                                       {"dwell", DeepTaskKind::regression, "", 0.5F, "dwell"}};
  float dropout = 0.1F;  ///< training only, in [0, 1)
  /// How DeepFineRanker's objective scores fuse into one ranking score.
  FusionConfig fusion;

  /// Widths U, C, Hd and X of the file comment.
  [[nodiscard]] std::size_t user_width() const;
  [[nodiscard]] std::size_t candidate_width() const;
  [[nodiscard]] std::size_t token_width() const;
  [[nodiscard]] std::size_t input_width() const;

  /// @throws Error(invalid_argument) naming the bad field (empty or
  ///         duplicate names, zero widths, a ctcvr task whose parent is not an
  ///         earlier binary task, shared_bottom with experts != 1, ...).
  void validate() const;

  /// The config as one JSON document (the model directory's config.json,
  /// without "weights_sha").
  [[nodiscard]] std::string to_json() const;
  /// Parses and validates to_json()'s output. `source` names the document in
  /// messages. @throws Error(format) naming the source and field.
  static DeepRankerConfig from_json(std::string_view json, std::string_view source = "config");
};

/// "mmoe" / "shared_bottom".
std::string_view to_string(DeepRankerConfig::Body body) noexcept;

/// A named float tensor (row-major).
struct NamedTensor {
  std::string name;
  std::vector<std::size_t> shape;
  std::vector<float> values;  ///< product(shape) values
};

/// The network's parameters in canonical order (see the file comment).
using DeepRankerParameters = std::vector<NamedTensor>;

/// Names and shapes of all parameters for a config, in canonical order,
/// values empty. @throws Error(invalid_argument) for an invalid config.
DeepRankerParameters deep_ranker_parameter_shapes(const DeepRankerConfig& config);

/// Inputs of one forward pass, already indexed (views, not owned).
/// Candidates of several users may share one batch (training); a request is
/// one user and its candidates. Indices are int32 (0 = out of vocabulary),
/// offsets int64, so the same arrays travel through safetensors files.
struct DeepRankerBatch {
  std::size_t users = 0;                           ///< nu
  std::span<const std::int32_t> user_categorical;  ///< nu x user_categorical.size()
  std::span<const float> user_numeric;             ///< nu x user_numeric.size(), raw
  std::span<const std::int64_t>
      history_offsets;                     ///< nu + 1; user u's events are rows [o[u], o[u+1])
  std::span<const float> history_vectors;  ///< total events x D
  std::span<const std::int32_t> history_category;       ///< per event: index into E_hc
  std::span<const std::int32_t> history_type;           ///< per event: EventType value 0..3
  std::span<const std::int32_t> history_recency;        ///< per event: recency bucket
  std::size_t candidates = 0;                           ///< nc
  std::span<const std::int32_t> candidate_user;         ///< nc: user row of each candidate
  std::span<const float> candidate_vectors;             ///< nc x D
  std::span<const std::int32_t> candidate_categorical;  ///< nc x item_categorical.size()
  std::span<const float> candidate_numeric;             ///< nc x item_numeric.size(), raw

  /// Checks sizes, index ranges (every index within its table, offsets
  /// non-decreasing from 0 to the event count, at most history_length events
  /// per user, candidate_user < users) and that every float is finite.
  /// @throws Error(invalid_argument) naming the array, the row and the value.
  void validate(const DeepRankerConfig& config) const;
};

/// Owning buffers of a materialised DeepRankerBatch (see
/// DeepRankerExamples::gather); reused across calls, so a training loop
/// allocates only while the largest batch grows.
struct DeepRankerBatchStorage {
  std::vector<std::int32_t> user_categorical;
  std::vector<float> user_numeric;
  std::vector<std::int64_t> history_offsets;
  std::vector<float> history_vectors;
  std::vector<std::int32_t> history_category;
  std::vector<std::int32_t> history_type;
  std::vector<std::int32_t> history_recency;
  std::vector<std::int32_t> candidate_user;
  std::vector<float> candidate_vectors;
  std::vector<std::int32_t> candidate_categorical;
  std::vector<float> candidate_numeric;
  std::vector<std::int32_t> user_map;  ///< scratch: example user row -> batch user row
};

/// Labelled examples in a compact form: the examples DeepFineRanker builds
/// from an event log, and the file `funnel train --export-examples` writes
/// for the PyTorch trainer. Item vectors are stored once, in item_vectors,
/// and history events and candidates refer to them by row (an impression
/// log repeats the same history item in thousands of examples: storing its
/// vector per event would cost history_length x D floats per example).
/// Several candidates may share one user row (same user, same history).
struct DeepRankerExamples {
  std::size_t items = 0;
  std::vector<float> item_vectors;  ///< items x D
  std::size_t users = 0;
  std::vector<std::int32_t> user_categorical;    ///< users x user_categorical.size()
  std::vector<float> user_numeric;               ///< users x user_numeric.size(), raw
  std::vector<std::int64_t> history_offsets{0};  ///< users + 1
  std::vector<std::int32_t> history_item;        ///< per event: row of item_vectors
  std::vector<std::int32_t> history_category;    ///< per event
  std::vector<std::int32_t> history_type;        ///< per event
  std::vector<std::int32_t> history_recency;     ///< per event
  std::size_t candidates = 0;
  std::vector<std::int32_t> candidate_user;         ///< candidates: user row
  std::vector<std::int32_t> candidate_item;         ///< candidates: row of item_vectors
  std::vector<std::int32_t> candidate_categorical;  ///< candidates x item_categorical.size()
  std::vector<float> candidate_numeric;             ///< candidates x item_numeric.size(), raw
  /// candidates x tasks.size(): binary: the label (0/1); ctcvr: the joint
  /// label over the impression (1 = clicked and converted); regression:
  /// log(1 + target). NaN = no label for this task (e.g. dwell of an
  /// unclicked impression): the row does not enter that task's loss.
  std::vector<float> labels;
  std::vector<std::int64_t> ts;  ///< candidates: example time (for splits)

  /// The candidates `rows` (indices < candidates, any order, repeats
  /// allowed) as a batch: their users once each, renumbered in order of
  /// first use, with the item vectors copied in. Candidate i of the batch
  /// is rows[i]. The batch views `storage`.
  /// @throws Error(invalid_argument) for a row or item index out of range.
  DeepRankerBatch gather(std::span<const std::size_t> rows, DeepRankerBatchStorage& storage) const;
  /// All candidates, in order.
  DeepRankerBatch gather_all(DeepRankerBatchStorage& storage) const;

  /// Writes the arrays as one safetensors file (tensor names = member
  /// names; int32 / int64 / F32), atomically.
  void save(const std::filesystem::path& path) const;
  /// Reads save()'s file and validates it against the config (shapes,
  /// index ranges incl. item rows, finite vectors).
  /// @throws Error(format) naming the file and tensor.
  static DeepRankerExamples load(const std::filesystem::path& path, const DeepRankerConfig& config);
};

/// Serving options of a DeepRankerModel.
struct DeepRankerServeOptions {
  enum class Precision : std::uint8_t { fp32, bf16 };
  /// bf16 runs the matmuls with bf16 weights and inputs and fp32
  /// accumulation where the CPU has AVX512_BF16 or AMX: probabilities within
  /// 1e-3 of fp32; a regression output (log-space, unbounded) within a few
  /// 1e-3 (benchmark: 2.9e-3 on the default network). The hidden tower
  /// layers of regression tasks stay in fp32, so the remaining rounding is
  /// the shared experts'. Without bf16 support, load() throws
  /// Error(unsupported).
  Precision precision = Precision::fp32;
  std::size_t threads = 1;  ///< threads per forward() call (1 = the caller only)
};

/// The network, ready to score batches.
class DeepRankerModel {
 public:
  ~DeepRankerModel();
  DeepRankerModel(const DeepRankerModel&) = delete;
  DeepRankerModel& operator=(const DeepRankerModel&) = delete;

  /// Builds a model from a config and its parameters (canonical names; any order).
  /// @throws Error(invalid_argument) naming a missing, extra, misshapen or
  ///         non-finite tensor, or an invalid config.
  static std::unique_ptr<DeepRankerModel> create(DeepRankerConfig config,
                                                 DeepRankerParameters parameters,
                                                 const DeepRankerServeOptions& options = {});

  /// Loads a model directory (config.json + model.safetensors).
  /// @throws Error(io) / Error(format) naming the file, tensor or field.
  static std::unique_ptr<DeepRankerModel> load(const std::filesystem::path& dir,
                                               const DeepRankerServeOptions& options = {});

  /// Writes the model directory (created if missing), atomically per file.
  /// @throws Error(io) naming the path.
  void save(const std::filesystem::path& dir) const;

  [[nodiscard]] const DeepRankerConfig& config() const noexcept;
  /// The parameters in canonical order (fp32, as loaded).
  [[nodiscard]] const DeepRankerParameters& parameters() const noexcept;
  [[nodiscard]] const DeepRankerServeOptions& options() const noexcept;

  /// Scores a batch: each user's side (its part of the first expert and gate
  /// layers, its history keys and values) is computed once and shared by
  /// its candidates.
  /// @param[out] outputs candidates x tasks.size() (see the file comment)
  /// @throws Error(invalid_argument) for an invalid batch or output shape.
  void forward(const DeepRankerBatch& batch, MatrixView<float> outputs) const;

 private:
  struct Impl;
  explicit DeepRankerModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Settings of the library's own trainer.
struct DeepTrainConfig {
  enum class Optimizer : std::uint8_t { adam, adamw };
  Optimizer optimizer = Optimizer::adam;
  float learning_rate = 1e-3F;
  /// adam: L2 penalty added to the gradient of every weight matrix and
  /// embedding (not biases); adamw: decoupled decay of the same tensors.
  float weight_decay = 1e-5F;
  float beta1 = 0.9F;
  float beta2 = 0.999F;
  float epsilon = 1e-8F;
  std::size_t batch_size = 512;
  std::size_t max_epochs = 20;
  std::size_t patience = 3;  ///< epochs without a better validation AUC before stopping
  std::uint64_t seed = 42;   ///< initialisation, shuffling and dropout
  std::size_t threads = 1;   ///< threads of the trainer's matmuls and loops

  /// @throws Error(invalid_argument) naming the bad field.
  void validate() const;
};

/// "adam" / "adamw"; parse throws Error(invalid_argument) for other names.
std::string_view to_string(DeepTrainConfig::Optimizer optimizer) noexcept;
DeepTrainConfig::Optimizer parse_deep_optimizer(std::string_view name);

/// Per-task validation metrics of one evaluation.
struct DeepTaskMetrics {
  std::string task;
  std::size_t examples = 0;  ///< labelled validation rows
  double auc = 0.0;          ///< binary: vs its label; ctcvr: p_parent * p vs the joint label;
                             ///< regression: long (label above the rows' median) vs short, as
                             ///< `funnel eval` ranks dwell; NaN with one class
  double log_loss = 0.0;     ///< binary / ctcvr (of the joint probability); NaN for regression
  double rmse = 0.0;         ///< regression (in the label's log space); NaN otherwise
};

/// What training did.
struct DeepTrainReport {
  std::size_t train_examples = 0;
  std::size_t validation_examples = 0;
  std::size_t epochs = 0;                   ///< epochs run, early stopping included
  std::size_t best_epoch = 0;               ///< 1-based epoch whose parameters were kept
  double best_validation_auc = 0.0;         ///< mean AUC over every task (DeepTaskMetrics::auc)
  std::vector<DeepTaskMetrics> validation;  ///< of the kept parameters
  double examples_per_second = 0.0;         ///< training throughput (forward + backward + update)
};

/// Trains the network with the library's own backward pass: mini-batch Adam
/// or AdamW, weight decay, dropout, shuffling and initialisation from
/// `train.seed` (He-uniform for ReLU layers, Xavier-uniform for the others,
/// N(0, 0.05) embeddings, zero biases except each task's output bias, which
/// starts at its training labels' base rate: logit of the click rate, of
/// the conversion rate given a click, the mean log dwell), early stopping
/// on the mean
/// validation AUC of every task (regression heads ranked long vs short),
/// keeping the best epoch's parameters. Deterministic for a
/// given seed and thread count.
/// @throws Error(invalid_argument) for an invalid config, examples that do
///         not match it, or an empty training set.
DeepRankerParameters train_deep_ranker(const DeepRankerConfig& config,
                                       const DeepRankerExamples& training,
                                       const DeepRankerExamples& validation,
                                       const DeepTrainConfig& train = {},
                                       DeepTrainReport* report = nullptr);

/// Per-task metrics of a model on labelled examples (see DeepTaskMetrics).
std::vector<DeepTaskMetrics> evaluate_deep_ranker(const DeepRankerModel& model,
                                                  const DeepRankerExamples& examples);

}  // namespace funnel
