// SPDX-License-Identifier: Apache-2.0
#include "funnel/coarse_ranker.hpp"

namespace funnel {

std::string_view to_string(Metric metric) noexcept {
  switch (metric) {
    case Metric::inner_product: return "inner_product";
    case Metric::l2: return "l2";
  }
  return "unknown";
}

}  // namespace funnel
