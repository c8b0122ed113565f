// SPDX-License-Identifier: Apache-2.0
#pragma once

// The trainer's side of the deep ranking network (deep_ranker.hpp's file
// comment is the spec): a forward pass over a mini-batch of
// DeepRankerExamples rows that keeps its activations, the training loss, the
// gradient of every parameter, the initialisation and the Adam / AdamW
// update. The math is templated on the scalar type: float trains (matmuls on
// oneDNN's sgemm over the whole mini-batch), double checks the gradients
// against finite differences (plain loops).
//
// Parameters and gradients are lists of flat row-major tensors in the
// canonical order of deep_ranker_parameter_shapes(), with the same shapes.
// The loss of a mini-batch is the sum over tasks of loss_weight x the mean
// loss over the rows whose label for that task is not NaN (a task with no
// labelled row adds nothing); binary: BCE of sigmoid(o); ctcvr:
// BCE(sigmoid(o_parent) * sigmoid(o), joint label); regression: (o - y)^2.
// Weight decay is the optimizer's business, not part of the loss.
//
// Threading: a DeepBackprop owns its workspace; one object runs one pass at a
// time. Passes with the same thread count give bit-identical results.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "funnel/deep_ranker.hpp"

namespace funnel::detail {

/// Parameter tensors (or their gradients), flat, in canonical order.
template <class S>
using DeepTensors = std::vector<std::vector<S>>;

/// How a parameter tensor is initialised.
enum class DeepInit : std::uint8_t {
  embedding,  ///< N(0, 0.05)
  he,         ///< uniform(+-sqrt(6 / fan_in)): layers followed by a ReLU
  xavier,     ///< uniform(+-sqrt(6 / (fan_in + fan_out))): attention, gates, tower outputs
  zero        ///< biases
};

/// Where each parameter lives in the canonical list, and the network's widths.
struct DeepLayout {
  /// @throws Error(invalid_argument) for an invalid config.
  explicit DeepLayout(const DeepRankerConfig& config);

  DeepRankerParameters shapes;  ///< names and shapes, canonical order, values empty
  std::vector<DeepInit> init;   ///< per tensor
  std::vector<bool> decay;      ///< per tensor: weight decay applies (weights, embeddings)

  std::vector<std::size_t> user_embedding;  ///< tensor of each user categorical feature
  std::vector<std::size_t> item_embedding;  ///< tensor of each item categorical feature
  std::size_t type_embedding = 0;
  std::size_t recency_embedding = 0;
  std::size_t query = 0;  ///< weight; the bias is the next tensor (same for every layer below)
  std::size_t key = 0;
  std::size_t value = 0;
  std::vector<std::vector<std::size_t>> expert;  ///< [expert][layer] weight
  std::vector<std::size_t> gate;                 ///< [task] weight (mmoe only)
  std::vector<std::vector<std::size_t>> tower;   ///< [task][layer] weight, output layer last

  std::size_t user_width = 0;             ///< U
  std::size_t candidate_width = 0;        ///< C
  std::size_t token_width = 0;            ///< Hd
  std::size_t input_width = 0;            ///< X
  std::vector<std::size_t> user_offsets;  ///< column of each user categorical embedding in u
  std::vector<std::size_t> item_offsets;  ///< column of each item categorical embedding in c
  std::vector<int> parent;                ///< per task: index of a ctcvr task's parent, else -1
};

/// Inverted dropout of one pass: rate 0 switches it off. The masks are a
/// pure function of (seed, layer, row position in the mini-batch, unit).
struct DeepDropout {
  float rate = 0.0F;
  std::uint64_t seed = 0;
};

/// Forward, loss and backward over mini-batches (see the file comment).
template <class S>
class DeepBackprop {
 public:
  /// @param threads threads of the matmuls and loops (>= 1)
  DeepBackprop(const DeepRankerConfig& config, std::size_t threads);
  ~DeepBackprop();
  DeepBackprop(const DeepBackprop&) = delete;
  DeepBackprop& operator=(const DeepBackprop&) = delete;

  [[nodiscard]] const DeepLayout& layout() const noexcept;

  /// One pass over examples' candidate rows `rows` (any order, repeats
  /// allowed), gathered (DeepRankerExamples::gather) into a batch whose
  /// buffers this object keeps and reuses: once the largest mini-batch has
  /// been seen, a pass allocates nothing. The examples must have been
  /// validated against the config (check_deep_examples).
  /// @param[in] params tensors in canonical order and shape
  /// @param[out] grads when not null: d loss / d parameter (resized and overwritten)
  /// @param[out] outputs when not empty: rows.size() x tasks outputs (sigmoid
  ///             for binary and ctcvr tasks, the logit for regression)
  /// @returns the loss
  S run(const DeepTensors<S>& params, const DeepRankerExamples& examples,
        std::span<const std::size_t> rows, const DeepDropout& dropout, DeepTensors<S>* grads,
        std::span<S> outputs = {});

 private:
  struct Work;
  std::unique_ptr<Work> work_;
};

extern template class DeepBackprop<float>;
extern template class DeepBackprop<double>;

/// Initial parameters from a seed (see DeepInit), canonical order.
DeepTensors<float> deep_initial_parameters(const DeepLayout& layout, std::uint64_t seed);

/// Sets each task's output bias to the base rate of its training labels, so
/// that the first steps do not spend the shared layers on learning offsets
/// (a regression head on log-seconds starts about 4 away from its labels):
/// binary: logit of the mean label; ctcvr: logit of mean(joint) /
/// mean(parent label) over the rows labelled for both (the conditional
/// rate); regression: the mean label. Rates are clamped to [1e-4, 1 - 1e-4];
/// a task without labelled rows keeps its bias.
void deep_set_output_biases(const DeepLayout& layout, const DeepRankerConfig& config,
                            const DeepRankerExamples& training, DeepTensors<float>& params);

/// Adam (L2 weight decay added to the gradient) or AdamW (decoupled decay),
/// with PyTorch's update order; decay applies to the tensors layout.decay marks.
class DeepAdam {
 public:
  DeepAdam(const DeepTrainConfig& config, const DeepLayout& layout);

  /// One update of `params` with `grads` (same shapes). Thread count only
  /// splits elementwise work, so results do not depend on it.
  void step(DeepTensors<float>& params, const DeepTensors<float>& grads, std::size_t threads);

  /// Updates done so far.
  [[nodiscard]] std::uint64_t steps() const noexcept { return steps_; }

 private:
  DeepTrainConfig config_;
  std::vector<bool> decay_;
  DeepTensors<float> m_;
  DeepTensors<float> v_;
  std::uint64_t steps_ = 0;
};

/// Per-task metrics (DeepTaskMetrics) of outputs (n x tasks, as
/// DeepBackprop::run and DeepRankerModel::forward write them) against the
/// examples' labels (n x tasks).
std::vector<DeepTaskMetrics> deep_task_metrics(const DeepRankerConfig& config,
                                               std::span<const float> outputs,
                                               std::span<const float> labels);

/// Mean AUC over the tasks whose AUC is defined (a regression task's ranks
/// long against short, DeepTaskMetrics::auc); NaN if none.
double deep_mean_auc(const std::vector<DeepTaskMetrics>& metrics);

/// Checks examples against a config: the arrays (validate_deep_examples),
/// labels (candidates x tasks; binary and ctcvr 0, 1 or NaN; regression finite
/// or NaN) and ts (candidates). `what` names them in messages.
/// @throws Error(invalid_argument) naming the array, row and task.
void check_deep_examples(const DeepRankerConfig& config, const DeepRankerExamples& examples,
                         const std::string& what);

}  // namespace funnel::detail
