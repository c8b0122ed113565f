// SPDX-License-Identifier: Apache-2.0
#include "funnel/reason_generator.hpp"

namespace funnel {

std::string_view to_string(EvidenceKind kind) noexcept {
  switch (kind) {
    case EvidenceKind::none: return "none";
    case EvidenceKind::similar_to_history: return "similar_to_history";
    case EvidenceKind::category_affinity: return "category_affinity";
    case EvidenceKind::brand_affinity: return "brand_affinity";
    case EvidenceKind::price_band: return "price_band";
    case EvidenceKind::popular_in_location: return "popular_in_location";
    case EvidenceKind::objective: return "objective";
  }
  return "unknown";
}

}  // namespace funnel
