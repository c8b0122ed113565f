// SPDX-License-Identifier: Apache-2.0
#pragma once

// IvfIdMap: item id -> (inverted list, offset in the list), for
// IvfCoarseRanker's add() (duplicate detection) and remove() (O(1) lookup).
//
// Open addressing with linear probing over one array of 8-byte slots that
// hold only the location: the id itself is read from the inverted list's id
// array (ids[list][offset]), which stores it anyway. So the map costs 8
// bytes per slot, at most 3/4 full: about 11-21 bytes per id, against 8 + 1
// bytes per dimension for the SQ8 row it indexes (a 16-byte slot with the
// id in it would cost 21-43 bytes, std::unordered_map about 40). The price
// is one extra memory read per probe on add/remove, never on search.
// Erasing shifts the following entries of the probe run back, so no
// tombstones accumulate under add/remove churn.
//
// Contract with the owner of the id arrays: an entry's id must be readable
// at its location whenever the map is used, so insert() an id after
// storing it, erase() it before overwriting its place, and update() a
// moved id while it is still readable at its old location or already at
// its new one (find reads through the stored location).

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "funnel/item_id.hpp"

namespace funnel::detail {

/// `Lists` is indexable as lists[list][offset] -> id (e.g. a vector of
/// vectors of 64-bit ids). The map keeps a pointer to it: bind() before use.
template <class Lists>
class IvfIdMap {
 public:
  /// Where an item is stored.
  struct Location {
    std::uint32_t list = kEmptyList;
    std::uint32_t offset = 0;
  };

  /// Points the map at the id arrays it reads keys from.
  void bind(const Lists* lists) noexcept { lists_ = lists; }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }

  /// The location of `id`, or null when absent. Valid until the next change.
  [[nodiscard]] const Location* find(ItemId id) const noexcept {
    const std::size_t i = slot_of(id);
    return i == kAbsent ? nullptr : &slots_[i];
  }

  [[nodiscard]] bool contains(ItemId id) const noexcept { return find(id) != nullptr; }

  /// Makes room for `count` entries in total, so that inserting up to that
  /// many never allocates (and so never throws).
  void reserve(std::size_t count) {
    std::size_t capacity = slots_.empty() ? kMinCapacity : slots_.size();
    while (count > max_load(capacity)) capacity *= 2;
    if (capacity != slots_.size()) rehash(capacity);
  }

  /// Inserts an absent id, already stored at `location`. Does not allocate
  /// when reserve() made room.
  void insert(ItemId id, Location location) {
    assert(id != kNoItem && key(location) == id && !contains(id));
    reserve(size_ + 1);
    std::size_t i = home(id);
    while (!empty(slots_[i])) i = next(i);
    slots_[i] = location;
    ++size_;
  }

  /// Changes the location of a present id.
  void update(ItemId id, Location location) noexcept {
    const std::size_t i = slot_of(id);
    assert(i != kAbsent);
    slots_[i] = location;
  }

  /// Removes `id` (still readable at its location); false when it was absent.
  bool erase(ItemId id) noexcept {
    std::size_t hole = slot_of(id);
    if (hole == kAbsent) return false;
    // Backward shift: move later entries of the run into the hole when the
    // hole lies between their home slot and their current slot.
    for (std::size_t i = next(hole);; i = next(i)) {
      if (empty(slots_[i])) break;
      const std::size_t want = home(key(slots_[i]));
      const std::size_t dist_i = (i - want) & mask_;
      const std::size_t dist_hole = (hole - want) & mask_;
      if (dist_hole <= dist_i) {
        slots_[hole] = slots_[i];
        hole = i;
      }
    }
    slots_[hole] = Location{};
    --size_;
    return true;
  }

  /// Bytes held by the table.
  [[nodiscard]] std::size_t memory_bytes() const noexcept {
    return slots_.capacity() * sizeof(Location);
  }

  /// Calls fn(id, location) for every entry (unspecified order).
  template <class Fn>
  void for_each(const Fn& fn) const {
    for (const Location& slot : slots_) {
      if (!empty(slot)) fn(key(slot), slot);
    }
  }

 private:
  static constexpr std::uint32_t kEmptyList = ~std::uint32_t{0};
  static constexpr std::size_t kMinCapacity = 16;
  static constexpr std::size_t kAbsent = ~std::size_t{0};

  static bool empty(const Location& slot) noexcept { return slot.list == kEmptyList; }
  [[nodiscard]] ItemId key(const Location& slot) const noexcept {
    assert(lists_ != nullptr);
    return static_cast<ItemId>((*lists_)[slot.list][slot.offset]);
  }

  // The slot holding `id`, or kAbsent.
  [[nodiscard]] std::size_t slot_of(ItemId id) const noexcept {
    if (slots_.empty() || id == kNoItem) return kAbsent;
    for (std::size_t i = home(id);; i = next(i)) {
      if (empty(slots_[i])) return kAbsent;
      if (key(slots_[i]) == id) return i;
    }
  }

  static std::size_t max_load(std::size_t capacity) { return capacity / 4 * 3; }

  // splitmix64's finaliser: consecutive or strided ids spread over the table.
  [[nodiscard]] std::size_t home(ItemId id) const noexcept {
    auto x = static_cast<std::uint64_t>(id);
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return static_cast<std::size_t>(x) & mask_;
  }
  [[nodiscard]] std::size_t next(std::size_t i) const noexcept { return (i + 1) & mask_; }

  void rehash(std::size_t capacity) {
    std::vector<Location> old(capacity);
    old.swap(slots_);
    mask_ = capacity - 1;
    for (const Location& slot : old) {
      if (empty(slot)) continue;
      std::size_t i = home(key(slot));
      while (!empty(slots_[i])) i = next(i);
      slots_[i] = slot;
    }
  }

  const Lists* lists_ = nullptr;
  std::vector<Location> slots_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

}  // namespace funnel::detail
