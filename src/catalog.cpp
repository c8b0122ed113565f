// SPDX-License-Identifier: Apache-2.0
#include "funnel/catalog.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include <nlohmann/json.hpp>

#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"
#include "internal/jsonl.hpp"
#include "internal/utf8.hpp"

namespace funnel {
namespace {

void check_text(const Item& item, std::string_view field, std::string_view text) {
  if (const auto bad = detail::find_invalid_utf8(text)) {
    detail::fail(ErrorCode::invalid_argument, "item ", item.id, ": field '", field,
                 "': invalid UTF-8 at byte ", *bad);
  }
}

Item parse_item(const detail::JsonLine& line) {
  Item item;
  item.id = *line.integer("id", true);
  if (item.id < 0) line.fail("id", "must be >= 0");
  item.title = *line.string("title", true);
  item.description = line.string("description", false).value_or("");
  item.category = line.string("category", false).value_or("");
  item.brand = line.string("brand", false).value_or("");
  item.price = line.number("price", false);
  if (item.price && *item.price < 0) line.fail("price", "must be >= 0");
  if (line.has("attrs")) {
    const auto& attrs = line.value()["attrs"];
    if (!attrs.is_object()) line.fail("attrs", "expected an object");
    for (const auto& [key, value] : attrs.items()) {
      if (value.is_string()) {
        item.attrs[key] = value.get<std::string>();
      } else if (value.is_number() || value.is_boolean()) {
        item.attrs[key] = value.dump();
      } else if (!value.is_null()) {
        line.fail("attrs." + key, "expected a string, number or boolean");
      }
    }
  }
  return item;
}

}  // namespace

Catalog Catalog::load_jsonl(const std::filesystem::path& path) {
  Catalog catalog;
  detail::for_each_jsonl(path, [&](const detail::JsonLine& line) {
    Item item = parse_item(line);
    if (const Item* existing = catalog.find(item.id)) {
      (void)existing;
      detail::fail(ErrorCode::format, line.where(), ": field 'id': duplicate item id ", item.id);
    }
    catalog.add(std::move(item));
  });
  return catalog;
}

void Catalog::save_jsonl(const std::filesystem::path& path) const {
  detail::write_file_atomic(path, [&](std::ostream& out) {
    for (const Item& item : items_) {
      nlohmann::json j;
      j["id"] = item.id;
      j["title"] = item.title;
      if (!item.description.empty()) j["description"] = item.description;
      if (!item.category.empty()) j["category"] = item.category;
      if (!item.brand.empty()) j["brand"] = item.brand;
      if (item.price) j["price"] = *item.price;
      if (!item.attrs.empty()) j["attrs"] = item.attrs;
      out << j.dump() << '\n';
    }
  });
}

void Catalog::add(Item item) {
  detail::require(item.id >= 0, "item id must be >= 0, got ", item.id);
  detail::require(!index_.contains(item.id), "duplicate item id ", item.id);
  if (item.price) {
    detail::require(std::isfinite(*item.price) && *item.price >= 0, "item ", item.id,
                    ": price must be finite and >= 0, got ", *item.price);
  }
  check_text(item, "title", item.title);
  check_text(item, "description", item.description);
  check_text(item, "category", item.category);
  check_text(item, "brand", item.brand);
  for (const auto& [key, value] : item.attrs) {
    check_text(item, "attrs key", key);
    check_text(item, "attrs." + key, value);
  }
  index_.emplace(item.id, items_.size());
  items_.push_back(std::move(item));
}

const Item* Catalog::find(ItemId id) const noexcept {
  const auto it = index_.find(id);
  return it == index_.end() ? nullptr : &items_[it->second];
}

const Item& Catalog::at(ItemId id) const {
  const Item* item = find(id);
  if (item == nullptr) detail::fail(ErrorCode::invalid_argument, "unknown item id ", id);
  return *item;
}

std::size_t Catalog::index_of(ItemId id) const noexcept {
  const auto it = index_.find(id);
  return it == index_.end() ? npos : it->second;
}

std::vector<std::string> Catalog::categories() const {
  std::set<std::string> set;
  for (const Item& item : items_) {
    if (!item.category.empty()) set.insert(item.category);
  }
  return {set.begin(), set.end()};
}

void Catalog::set_vectors(Matrix<float> vectors) {
  detail::require(vectors.rows() == items_.size(), "catalog vectors: expected ", items_.size(),
                  " rows (one per item), got ", vectors.rows());
  detail::require(vectors.cols() > 0 || items_.empty(), "catalog vectors: dimension is 0");
  for (std::size_t i = 0; i < vectors.rows(); ++i) {
    for (float v : vectors.row(i)) {
      detail::require(std::isfinite(v), "catalog vectors: non-finite value in the vector of item ",
                      items_[i].id);
    }
  }
  vectors_ = std::move(vectors);
}

std::span<const float> Catalog::vector(ItemId id) const noexcept {
  if (!has_vectors()) return {};
  const std::size_t row = index_of(id);
  if (row == npos) return {};
  return vectors_.row(row);
}

std::vector<ItemId> Catalog::ids() const {
  std::vector<ItemId> out;
  out.reserve(items_.size());
  for (const Item& item : items_) out.push_back(item.id);
  return out;
}

}  // namespace funnel
