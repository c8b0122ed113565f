// SPDX-License-Identifier: Apache-2.0
#pragma once

// Validation of DeepRankerExamples against a config, shared by
// DeepRankerExamples::load (deep_ranker.cpp) and the trainer's checks
// (deep_ranker_backprop.cpp).

#include "funnel/deep_ranker.hpp"

namespace funnel::detail {

/// Checks the examples' arrays against a config: every size (users,
/// events, candidates, items x item_vector_dim), the history offsets (from 0,
/// non-decreasing, at most history_length events per user), every index
/// within its table (categorical values, history category, event type,
/// recency bucket, candidate_user < users, history_item and candidate_item <
/// items) and finite user_numeric, candidate_numeric and item_vectors.
/// Labels and ts are the callers' business.
/// @throws Error(invalid_argument) naming the array, the row and the value.
void validate_deep_examples(const DeepRankerConfig& config, const DeepRankerExamples& examples);

}  // namespace funnel::detail
