// SPDX-License-Identifier: Apache-2.0
// The library's own trainer of the deep ranking network (train_deep_ranker)
// and its evaluation (evaluate_deep_ranker). The forward/backward math lives
// in internal/deep_ranker_backprop.cpp.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "funnel/deep_ranker.hpp"
#include "internal/deep_ranker_backprop.hpp"
#include "internal/error_util.hpp"

namespace funnel {

namespace {

constexpr std::size_t kMaxThreads = 256;
// Validation rows scored per pass: big enough for efficient matmuls, small
// enough to bound the activations' memory.
constexpr std::size_t kEvalRows = 2048;
// Rows evaluate_deep_ranker gathers into one batch: the gathered item
// vectors (rows x history_length x D floats at most) stay bounded whatever
// the size of the examples.
constexpr std::size_t kServeEvalRows = 4096;

std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27U)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31U);
}

// Independent deterministic streams of one seed, by purpose.
constexpr std::uint64_t kShuffleStream = 0x53485546464C4531ULL;
constexpr std::uint64_t kDropoutStream = 0x44524F504F555431ULL;

// Fisher-Yates on a splitmix64 stream (64-bit modulo: its bias is below
// 2^-32 for fewer than 2^32 rows): the same order with every standard
// library, which std::shuffle does not promise.
void shuffle(std::vector<std::size_t>& order, std::uint64_t seed) {
  std::uint64_t state = mix64(seed);
  for (std::size_t i = order.size(); i > 1; --i) {
    state += 0x9E3779B97F4A7C15ULL;
    const std::size_t j = mix64(state) % i;
    std::swap(order[i - 1], order[j]);
  }
}

// Outputs of every row of `examples` under `params` (no dropout), and the metrics.
std::vector<DeepTaskMetrics> evaluate(detail::DeepBackprop<float>& net,
                                      const detail::DeepTensors<float>& params,
                                      const DeepRankerConfig& config,
                                      const DeepRankerExamples& examples) {
  const std::size_t tasks = config.tasks.size();
  std::vector<float> outputs(examples.candidates * tasks);
  std::vector<std::size_t> rows;
  for (std::size_t begin = 0; begin < examples.candidates; begin += kEvalRows) {
    const std::size_t end = std::min(examples.candidates, begin + kEvalRows);
    rows.resize(end - begin);
    std::iota(rows.begin(), rows.end(), begin);
    net.run(params, examples, rows, {}, nullptr,
            std::span<float>(outputs.data() + begin * tasks, rows.size() * tasks));
  }
  return detail::deep_task_metrics(config, outputs, examples.labels);
}

}  // namespace

void DeepTrainConfig::validate() const {
  using detail::require;
  require(optimizer == Optimizer::adam || optimizer == Optimizer::adamw,
          "DeepTrainConfig.optimizer is not adam or adamw (", static_cast<int>(optimizer), ")");
  require(std::isfinite(learning_rate) && learning_rate > 0.0F,
          "DeepTrainConfig.learning_rate must be finite and > 0, got ", learning_rate);
  require(std::isfinite(weight_decay) && weight_decay >= 0.0F,
          "DeepTrainConfig.weight_decay must be finite and >= 0, got ", weight_decay);
  require(beta1 >= 0.0F && beta1 < 1.0F, "DeepTrainConfig.beta1 must be in [0, 1), got ", beta1);
  require(beta2 >= 0.0F && beta2 < 1.0F, "DeepTrainConfig.beta2 must be in [0, 1), got ", beta2);
  require(std::isfinite(epsilon) && epsilon > 0.0F,
          "DeepTrainConfig.epsilon must be finite and > 0, got ", epsilon);
  require(batch_size >= 1, "DeepTrainConfig.batch_size must be >= 1, got ", batch_size);
  require(max_epochs >= 1, "DeepTrainConfig.max_epochs must be >= 1, got ", max_epochs);
  require(patience >= 1, "DeepTrainConfig.patience must be >= 1, got ", patience);
  require(threads >= 1 && threads <= kMaxThreads, "DeepTrainConfig.threads must be in [1, ",
          kMaxThreads, "], got ", threads);
}

std::string_view to_string(DeepTrainConfig::Optimizer optimizer) noexcept {
  switch (optimizer) {
    case DeepTrainConfig::Optimizer::adam: return "adam";
    case DeepTrainConfig::Optimizer::adamw: return "adamw";
  }
  return "unknown";
}

DeepTrainConfig::Optimizer parse_deep_optimizer(std::string_view name) {
  if (name == "adam") return DeepTrainConfig::Optimizer::adam;
  if (name == "adamw") return DeepTrainConfig::Optimizer::adamw;
  detail::fail(ErrorCode::invalid_argument, "unknown optimizer \"", name,
               "\" (expected adam or adamw)");
}

DeepRankerParameters train_deep_ranker(const DeepRankerConfig& config,
                                       const DeepRankerExamples& training,
                                       const DeepRankerExamples& validation,
                                       const DeepTrainConfig& train, DeepTrainReport* report) {
  config.validate();
  train.validate();
  detail::check_deep_examples(config, training, "training examples");
  detail::require(training.candidates > 0, "train_deep_ranker: the training set is empty");
  detail::check_deep_examples(config, validation, "validation examples");

  detail::DeepBackprop<float> net(config, train.threads);
  const detail::DeepLayout& layout = net.layout();
  detail::DeepTensors<float> params = detail::deep_initial_parameters(layout, train.seed);
  detail::deep_set_output_biases(layout, config, training, params);
  detail::DeepAdam adam(train, layout);
  detail::DeepTensors<float> grads;

  std::vector<std::size_t> order(training.candidates);
  std::iota(order.begin(), order.end(), std::size_t{0});
  detail::DeepTensors<float> best = params;
  std::vector<DeepTaskMetrics> best_metrics;
  double best_auc = -std::numeric_limits<double>::infinity();
  std::size_t best_epoch = 0;
  std::size_t since_best = 0;
  std::size_t epochs = 0;
  double seconds = 0.0;
  std::size_t trained = 0;

  for (std::size_t epoch = 1; epoch <= train.max_epochs; ++epoch) {
    epochs = epoch;
    shuffle(order, train.seed ^ mix64(kShuffleStream + epoch));
    const auto start = std::chrono::steady_clock::now();
    for (std::size_t begin = 0; begin < order.size(); begin += train.batch_size) {
      const std::size_t end = std::min(order.size(), begin + train.batch_size);
      const std::span<const std::size_t> rows(order.data() + begin, end - begin);
      const detail::DeepDropout dropout{config.dropout,
                                        train.seed ^ mix64(kDropoutStream + adam.steps())};
      const float loss = net.run(params, training, rows, dropout, &grads);
      if (!std::isfinite(loss)) {
        detail::fail(ErrorCode::invalid_argument, "train_deep_ranker: the loss is ", loss,
                     " at epoch ", epoch, ", step ", adam.steps() + 1,
                     " (training diverged; lower DeepTrainConfig.learning_rate)");
      }
      adam.step(params, grads, train.threads);
      trained += rows.size();
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    std::vector<DeepTaskMetrics> metrics = evaluate(net, params, config, validation);
    const double mean_auc = detail::deep_mean_auc(metrics);
    // Without a defined validation AUC (no validation rows, or one class
    // only) there is nothing to stop on: the latest parameters are kept.
    if (std::isnan(mean_auc) || mean_auc > best_auc) {
      best = params;
      best_metrics = std::move(metrics);
      best_auc = mean_auc;
      best_epoch = epoch;
      since_best = 0;
    } else if (++since_best >= train.patience) {
      break;
    }
  }

  if (report != nullptr) {
    report->train_examples = training.candidates;
    report->validation_examples = validation.candidates;
    report->epochs = epochs;
    report->best_epoch = best_epoch;
    report->best_validation_auc = best_auc;
    report->validation = std::move(best_metrics);
    report->examples_per_second = seconds > 0.0 ? static_cast<double>(trained) / seconds : 0.0;
  }

  DeepRankerParameters result = layout.shapes;
  for (std::size_t i = 0; i < result.size(); ++i) result[i].values = std::move(best[i]);
  return result;
}

std::vector<DeepTaskMetrics> evaluate_deep_ranker(const DeepRankerModel& model,
                                                  const DeepRankerExamples& examples) {
  const DeepRankerConfig& config = model.config();
  detail::check_deep_examples(config, examples, "examples");
  const std::size_t tasks = config.tasks.size();
  std::vector<float> outputs(examples.candidates * tasks);
  DeepRankerBatchStorage storage;
  std::vector<std::size_t> rows;
  for (std::size_t begin = 0; begin < examples.candidates; begin += kServeEvalRows) {
    const std::size_t end = std::min(examples.candidates, begin + kServeEvalRows);
    rows.resize(end - begin);
    std::iota(rows.begin(), rows.end(), begin);
    model.forward(examples.gather(rows, storage),
                  MatrixView<float>(outputs.data() + begin * tasks, rows.size(), tasks));
  }
  return detail::deep_task_metrics(config, outputs, examples.labels);
}

}  // namespace funnel
