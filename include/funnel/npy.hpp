// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// NumPy .npy files (format versions 1.0-3.0) for float32 and int64
/// matrices in C order, so that anything funnel writes can be checked with
/// numpy.load and anything numpy writes can be read here.
///
/// A 1-D array of n elements is read as an n x 1 matrix.

#include <cstdint>
#include <filesystem>

#include "funnel/matrix.hpp"

namespace funnel {

/// Reads a little-endian float32 ('<f4') array of 1 or 2 dimensions.
/// @throws Error(io) when unreadable; Error(format) naming the file for a bad
///         magic, header, dtype, Fortran order, shape, or truncated data.
Matrix<float> load_npy_f32(const std::filesystem::path& path);

/// Reads a little-endian int64 ('<i8') array of 1 or 2 dimensions.
/// @throws as load_npy_f32.
Matrix<std::int64_t> load_npy_i64(const std::filesystem::path& path);

/// Writes a 2-D '<f4' array, atomically (temporary file + rename).
void save_npy(const std::filesystem::path& path, MatrixView<const float> m);

/// Writes a 2-D '<i8' array, atomically.
void save_npy(const std::filesystem::path& path, MatrixView<const std::int64_t> m);

}  // namespace funnel
