// SPDX-License-Identifier: Apache-2.0
#pragma once

// Generalised linear models as trained by LogisticFineRanker: the loss and
// its gradient (exposed so that tests can check the gradient against finite
// differences), prediction, and a mini-batch Adam fit with early stopping.
// Defined in src/logistic_fine_ranker.cpp.
//
// Parameters are laid out as params[0] = bias, params[1 + j] = weight of
// feature j. Features are float (they are many); all arithmetic is double.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "funnel/matrix.hpp"

namespace funnel::detail {

/// What the linear predictor z = bias + w.x models.
enum class GlmKind {
  logistic,  ///< P(y = 1) = sigmoid(z); loss = log(1 + e^z) - y z
  linear,    ///< E[y] = z; loss = (z - y)^2 / 2
};

/// Numerically stable 1 / (1 + e^-z).
double sigmoid(double z) noexcept;

/// The linear predictor z of one feature row.
/// @param[in] x      d features
/// @param[in] params d + 1 parameters (bias first)
double glm_linear(std::span<const float> x, std::span<const double> params) noexcept;

/// Mean loss over the selected rows plus (l2 / 2) * sum of squared non-bias
/// weights, and its gradient with respect to every parameter.
/// @param[in]  x      n x d features
/// @param[in]  y      n targets (0/1 for logistic)
/// @param[in]  rows   the rows of x that form the batch (not empty)
/// @param[in]  params d + 1 parameters (bias first)
/// @param[out] grad   d + 1 values
double glm_loss_and_grad(GlmKind kind, MatrixView<const float> x, std::span<const float> y,
                         std::span<const std::size_t> rows, std::span<const double> params,
                         double l2, std::span<double> grad);

/// Settings of glm_fit (a subset of LogisticTrainConfig).
struct GlmFitConfig {
  std::size_t max_epochs = 40;
  std::size_t batch_size = 256;
  double learning_rate = 0.05;
  double l2 = 1e-4;
  std::size_t patience = 4;
  std::uint64_t seed = 42;
};

/// Result of glm_fit.
struct GlmFit {
  std::vector<double> params;    ///< the parameters of the best validation epoch
  double validation_metric = 0;  ///< that epoch's metric
  std::string metric_name;       ///< "auc", "log_loss" or "rmse"
  std::size_t epochs = 0;        ///< epochs run (early stopping included)
};

/// Fits a GLM with mini-batch Adam on (x_train, y_train), shuffling with
/// std::mt19937_64(seed) and an explicit Fisher-Yates pass so that the result
/// is identical on every platform. After each epoch the validation metric is
/// computed (logistic: AUC, or log loss when the validation rows lack a class;
/// linear: RMSE); the best epoch's parameters are kept and training stops
/// after `patience` epochs without improvement. The starting point (all
/// weights 0, bias at the training mean's link) counts as epoch 0.
GlmFit glm_fit(GlmKind kind, MatrixView<const float> x_train, std::span<const float> y_train,
               MatrixView<const float> x_validation, std::span<const float> y_validation,
               const GlmFitConfig& config);

}  // namespace funnel::detail
