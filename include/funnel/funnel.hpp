// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Umbrella header: the whole public API of funnel.

#include "funnel/catalog.hpp"
#include "funnel/coarse_ranker.hpp"
#include "funnel/deep_fine_ranker.hpp"
#include "funnel/deep_ranker.hpp"
#include "funnel/encoder.hpp"
#include "funnel/error.hpp"
#include "funnel/event.hpp"
#include "funnel/exact_coarse_ranker.hpp"
#include "funnel/fine_ranker.hpp"
#include "funnel/fine_ranker_eval.hpp"
#include "funnel/fusion.hpp"
#include "funnel/hashing_encoder.hpp"
#include "funnel/history_profile.hpp"
#include "funnel/item_id.hpp"
#include "funnel/ivf_coarse_ranker.hpp"
#include "funnel/logistic_fine_ranker.hpp"
#include "funnel/matrix.hpp"
#include "funnel/metrics.hpp"
#include "funnel/npy.hpp"
#include "funnel/pipeline.hpp"
#include "funnel/popularity.hpp"
#include "funnel/reason_generator.hpp"
#include "funnel/safetensors.hpp"
#include "funnel/template_reason_generator.hpp"
#include "funnel/user.hpp"
#include "funnel/version.hpp"
