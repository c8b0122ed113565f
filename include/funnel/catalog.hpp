// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Catalogue items and the Catalog that looks them up by id.
///
/// File format (JSON Lines, one item per line):
///   {"id": 42, "title": "...", "description": "...", "category": "...",
///    "brand": "...", "price": 19.9, "attrs": {"color": "red", ...}}
/// `id` (integer) and `title` (string) are required; the rest is optional.
/// `attrs` values may be strings, numbers or booleans; they are kept as text.

#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "funnel/item_id.hpp"
#include "funnel/matrix.hpp"

namespace funnel {

/// One catalogue item.
struct Item {
  ItemId id = kNoItem;
  std::string title;
  std::string description;
  std::string category;                      ///< empty when unknown
  std::string brand;                         ///< empty when unknown
  std::optional<double> price;               ///< absent when unknown; never negative
  std::map<std::string, std::string> attrs;  ///< free-form attributes, as text
};

/// An immutable-after-load set of items, looked up by id.
///
/// Threading: const methods may be called from many threads at once; add()
/// and set_vectors() need external exclusion. Pointers and references returned by find()/at()
/// and the span returned by items() stay valid until the next add().
class Catalog {
 public:
  Catalog() = default;

  /// Loads items from a JSON Lines file.
  /// @throws Error(io) when the file cannot be read; Error(format) naming the
  ///         file, line and field for a malformed line, a missing or mistyped
  ///         field, invalid UTF-8 or a duplicate id.
  static Catalog load_jsonl(const std::filesystem::path& path);

  /// Writes all items as JSON Lines, atomically (temporary file + rename).
  void save_jsonl(const std::filesystem::path& path) const;

  /// Adds one item.
  /// @throws Error(invalid_argument) for a duplicate id, a negative id,
  ///         a negative or non-finite price, or invalid UTF-8 in a text field.
  void add(Item item);

  /// The item with this id, or nullptr.
  [[nodiscard]] const Item* find(ItemId id) const noexcept;
  /// The item with this id. @throws Error(invalid_argument) naming the id.
  [[nodiscard]] const Item& at(ItemId id) const;
  /// Row of this item in items(), or npos.
  [[nodiscard]] std::size_t index_of(ItemId id) const noexcept;
  [[nodiscard]] bool contains(ItemId id) const noexcept { return find(id) != nullptr; }

  /// All items, in insertion (file) order.
  [[nodiscard]] std::span<const Item> items() const noexcept { return items_; }
  [[nodiscard]] std::size_t size() const noexcept { return items_.size(); }
  [[nodiscard]] bool empty() const noexcept { return items_.empty(); }

  /// Distinct categories, sorted.
  [[nodiscard]] std::vector<std::string> categories() const;

  /// Attaches one vector per item (row i belongs to items()[i]), typically
  /// the Encoder's output for the item texts.
  /// @throws Error(invalid_argument) when vectors.rows() != size() or a value
  ///         is not finite (the message names the item id).
  void set_vectors(Matrix<float> vectors);
  /// True once set_vectors() was called and no item was added since.
  [[nodiscard]] bool has_vectors() const noexcept {
    return !items_.empty() && vectors_.rows() == items_.size();
  }
  /// Dimension of the attached vectors (0 without vectors).
  [[nodiscard]] std::size_t vector_dim() const noexcept { return vectors_.cols(); }
  /// All vectors, rows in items() order.
  [[nodiscard]] MatrixView<const float> vectors() const noexcept { return vectors_.view(); }
  /// The vector of one item; empty span without vectors or for an unknown id.
  [[nodiscard]] std::span<const float> vector(ItemId id) const noexcept;
  /// All ids, in items() order.
  [[nodiscard]] std::vector<ItemId> ids() const;

  /// "Not found", named like std::string::npos on purpose.
  // NOLINTNEXTLINE(readability-identifier-naming)
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);

 private:
  std::vector<Item> items_;
  std::unordered_map<ItemId, std::size_t> index_;
  Matrix<float> vectors_;
};

}  // namespace funnel
