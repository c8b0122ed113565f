// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// funnel's version.

namespace funnel {

inline constexpr int kVersionMajor = 0;
inline constexpr int kVersionMinor = 1;
inline constexpr int kVersionPatch = 0;
/// "major.minor.patch"
inline constexpr const char* kVersionString = "0.1.0";

}  // namespace funnel
