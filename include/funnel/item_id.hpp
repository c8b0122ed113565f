// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Item identifiers.

#include <cstdint>

namespace funnel {

/// The host's own 64-bit identifier of a catalogue item.
using ItemId = std::int64_t;

/// Marks "no item" in result buffers (FAISS uses -1 the same way).
inline constexpr ItemId kNoItem = -1;

}  // namespace funnel
