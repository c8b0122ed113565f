// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Entry points of the top-level `funnel` commands, listed in main.cpp's
/// command table. Each lives in its own <name>_command.cpp.

#include "cli.hpp"

namespace funnel::cli {

/// `funnel index build|search|info`: FAISS-backed vector indexes on .npy files.
int run_index(const Invocation& invocation);

/// `funnel encode`: texts (lines or a JSON Lines field) -> vectors (.npy).
int run_encode(const Invocation& invocation);

}  // namespace funnel::cli
