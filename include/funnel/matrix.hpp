// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Dense row-major matrices and non-owning views of them.
///
/// Layout convention used throughout funnel (as in FAISS): a batch of n
/// vectors of dimension d is one contiguous row-major buffer of n*d elements;
/// row i occupies elements [i*d, (i+1)*d). Views never own their memory: a
/// view stays valid as long as the buffer it was made from.

#include <cassert>
#include <cstddef>
#include <span>
#include <type_traits>
#include <vector>

namespace funnel {

/// Non-owning view of a row-major rows x cols matrix.
/// @tparam T element type; use `const float` for read-only views.
template <class T>
struct MatrixView {
  T* data = nullptr;
  std::size_t rows = 0;
  std::size_t cols = 0;

  MatrixView() = default;
  MatrixView(T* d, std::size_t r, std::size_t c) : data(d), rows(r), cols(c) {}

  /// Implicit conversion from a mutable view to a const view.
  template <class U>
  // NOLINTNEXTLINE(google-explicit-constructor): mutable views convert to const views
  requires std::is_convertible_v<U*, T*> MatrixView(MatrixView<U> other)
      : data(other.data), rows(other.rows), cols(other.cols) {}

  /// Number of elements, rows*cols.
  [[nodiscard]] std::size_t size() const noexcept { return rows * cols; }
  [[nodiscard]] bool empty() const noexcept { return size() == 0; }

  /// Row i as a span of cols elements.
  [[nodiscard]] std::span<T> row(std::size_t i) const {
    assert(i < rows);
    return {data + i * cols, cols};
  }
  /// Element (i, j).
  [[nodiscard]] T& operator()(std::size_t i, std::size_t j) const {
    assert(i < rows && j < cols);
    return data[i * cols + j];
  }
};

/// Owning row-major rows x cols matrix.
template <class T>
class Matrix {
 public:
  Matrix() = default;
  /// A rows x cols matrix filled with `fill`.
  Matrix(std::size_t rows, std::size_t cols, T fill = T{})
      : data_(rows * cols, fill), rows_(rows), cols_(cols) {}
  /// Takes ownership of `data`, which must hold rows*cols elements.
  Matrix(std::size_t rows, std::size_t cols, std::vector<T> data)
      : data_(std::move(data)), rows_(rows), cols_(cols) {
    assert(data_.size() == rows * cols);
  }

  [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
  [[nodiscard]] std::size_t cols() const noexcept { return cols_; }
  [[nodiscard]] std::size_t size() const noexcept { return data_.size(); }
  [[nodiscard]] bool empty() const noexcept { return data_.empty(); }
  [[nodiscard]] T* data() noexcept { return data_.data(); }
  [[nodiscard]] const T* data() const noexcept { return data_.data(); }
  [[nodiscard]] std::span<T> row(std::size_t i) { return view().row(i); }
  [[nodiscard]] std::span<const T> row(std::size_t i) const { return view().row(i); }
  [[nodiscard]] T& operator()(std::size_t i, std::size_t j) { return data_[i * cols_ + j]; }
  [[nodiscard]] const T& operator()(std::size_t i, std::size_t j) const {
    return data_[i * cols_ + j];
  }

  /// Mutable view; valid until this matrix is resized, moved or destroyed.
  [[nodiscard]] MatrixView<T> view() noexcept { return {data_.data(), rows_, cols_}; }
  /// Read-only view; same lifetime rule.
  [[nodiscard]] MatrixView<const T> view() const noexcept { return {data_.data(), rows_, cols_}; }

  /// The underlying buffer (rows*cols elements).
  [[nodiscard]] const std::vector<T>& values() const noexcept { return data_; }

 private:
  std::vector<T> data_;
  std::size_t rows_ = 0;
  std::size_t cols_ = 0;
};

}  // namespace funnel
