// SPDX-License-Identifier: Apache-2.0
#pragma once

// IvfIdMap: item id -> (inverted list, offset in the list), for
// IvfCoarseRanker's add() (duplicate detection) and remove() (O(1) lookup).
//
// Open addressing with linear probing over one array of 16-byte slots
// (kNoItem marks an empty slot, which is safe because kNoItem is never a
// stored id), at most 3/4 full. Compared with std::unordered_map this holds
// about 21-43 bytes per id instead of about 40 (one heap node per id plus a
// bucket), which matters next to 1-byte-per-dimension SQ8 codes. Erasing
// shifts the following entries of the probe run back, so no tombstones
// accumulate under add/remove churn.

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "funnel/item_id.hpp"

namespace funnel::detail {

class IvfIdMap {
 public:
  /// Where an item is stored.
  struct Location {
    std::uint32_t list = 0;
    std::uint32_t offset = 0;
  };

  [[nodiscard]] std::size_t size() const noexcept { return size_; }

  /// The location of `id`, or null when absent. Valid until the next change.
  [[nodiscard]] const Location* find(ItemId id) const noexcept {
    const std::size_t i = slot_of(id);
    return i == kAbsent ? nullptr : &slots_[i].location;
  }

  [[nodiscard]] bool contains(ItemId id) const noexcept { return find(id) != nullptr; }

  /// Makes room for `count` entries in total, so that inserting up to that
  /// many never allocates (and so never throws).
  void reserve(std::size_t count) {
    std::size_t capacity = slots_.empty() ? kMinCapacity : slots_.size();
    while (count > max_load(capacity)) capacity *= 2;
    if (capacity != slots_.size()) rehash(capacity);
  }

  /// Inserts an absent id. Does not allocate when reserve() made room.
  void insert(ItemId id, Location location) {
    assert(id != kNoItem && !contains(id));
    reserve(size_ + 1);
    std::size_t i = home(id);
    while (slots_[i].id != kNoItem) i = next(i);
    slots_[i] = {id, location};
    ++size_;
  }

  /// Changes the location of a present id.
  void update(ItemId id, Location location) noexcept {
    const std::size_t i = slot_of(id);
    assert(i != kAbsent);
    slots_[i].location = location;
  }

  /// Removes `id`; false when it was absent.
  bool erase(ItemId id) noexcept {
    std::size_t hole = slot_of(id);
    if (hole == kAbsent) return false;
    // Backward shift: move later entries of the run into the hole when the
    // hole lies between their home slot and their current slot.
    for (std::size_t i = next(hole);; i = next(i)) {
      if (slots_[i].id == kNoItem) break;
      const std::size_t want = home(slots_[i].id);
      const std::size_t dist_i = (i - want) & mask_;
      const std::size_t dist_hole = (hole - want) & mask_;
      if (dist_hole <= dist_i) {
        slots_[hole] = slots_[i];
        hole = i;
      }
    }
    slots_[hole] = Slot{};
    --size_;
    return true;
  }

  /// Bytes held by the table.
  [[nodiscard]] std::size_t memory_bytes() const noexcept {
    return slots_.capacity() * sizeof(Slot);
  }

  /// Calls fn(id, location) for every entry (unspecified order).
  template <class Fn>
  void for_each(const Fn& fn) const {
    for (const Slot& slot : slots_) {
      if (slot.id != kNoItem) fn(slot.id, slot.location);
    }
  }

 private:
  struct Slot {
    ItemId id = kNoItem;
    Location location;
  };
  static constexpr std::size_t kMinCapacity = 16;
  static constexpr std::size_t kAbsent = ~std::size_t{0};

  // The slot holding `id`, or kAbsent.
  [[nodiscard]] std::size_t slot_of(ItemId id) const noexcept {
    if (slots_.empty() || id == kNoItem) return kAbsent;
    for (std::size_t i = home(id);; i = next(i)) {
      if (slots_[i].id == id) return i;
      if (slots_[i].id == kNoItem) return kAbsent;
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
    std::vector<Slot> old(capacity);
    old.swap(slots_);
    mask_ = capacity - 1;
    for (const Slot& slot : old) {
      if (slot.id == kNoItem) continue;
      std::size_t i = home(slot.id);
      while (slots_[i].id != kNoItem) i = next(i);
      slots_[i] = slot;
    }
  }

  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

}  // namespace funnel::detail
