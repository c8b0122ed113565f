// SPDX-License-Identifier: Apache-2.0
#pragma once

// Memory backed by 2 MiB pages where the kernel allows it (Linux transparent
// huge pages).
//
// Inference streams its weights through the cores on every call. With 4 KiB
// pages a read of W bytes needs W / 4 KiB page-table walks, and under a
// hypervisor each walk is a two-level (guest and host) walk; on the 2-core
// VM of docs/encoder-benchmark.md an interleaved sweep over 88 MB read
// 10.8 GB/s from 4 KiB pages and 13.7 GB/s from 2 MiB pages, file-backed or
// anonymous alike. Nothing here changes a value, only where the bytes live.
// The kernel may refuse huge pages (THP "never", fragmentation): the memory
// then has ordinary pages and everything works the same, a little slower.

#include <cstddef>

namespace funnel::detail {

/// Size of a transparent huge page on x86-64 and arm64 (4 KiB base pages).
inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

/// Asks for huge pages on [addr, addr + bytes), or (huge false) for ordinary
/// ones: madvise MADV_HUGEPAGE / MADV_NOHUGEPAGE on the whole 2 MiB-aligned
/// pages inside it. A hint: failures are ignored.
void advise_huge_pages(const void* addr, std::size_t bytes, bool huge = true) noexcept;

/// Maps `bytes` of anonymous memory with protection `prot` (PROT_*) at a
/// 2 MiB-aligned address: over-maps by 2 MiB and hands back both ends, so
/// that exactly the pages covering `bytes` stay mapped. MAP_FIXED may later
/// replace the block with another mapping of the same place.
/// @return the block, or nullptr when the kernel refuses (errno is set).
void* map_aligned_block(std::size_t bytes, int prot) noexcept;

/// An anonymous, zero-filled, 2 MiB-aligned block of memory, advised to use
/// huge pages (or not: `huge` false gives the same block with ordinary
/// pages). Its size is rounded up to whole huge pages, which the kernel
/// backs only where they are touched. Movable, not copyable.
class HugePageBuffer {
 public:
  HugePageBuffer() = default;
  /// @throws Error(internal) when the kernel cannot map `bytes` (out of
  ///         address space or memory).
  HugePageBuffer(std::size_t bytes, bool huge);
  HugePageBuffer(HugePageBuffer&& other) noexcept;
  HugePageBuffer& operator=(HugePageBuffer&& other) noexcept;
  HugePageBuffer(const HugePageBuffer&) = delete;
  HugePageBuffer& operator=(const HugePageBuffer&) = delete;
  ~HugePageBuffer();

  [[nodiscard]] std::byte* data() const noexcept { return data_; }
  /// Bytes asked for (the mapping may be longer).
  [[nodiscard]] std::size_t size() const noexcept { return size_; }

 private:
  void release() noexcept;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t mapped_ = 0;
};

/// Hands out 64-byte aligned pieces of one HugePageBuffer, in order, for
/// data that lives as long as the arena (e.g. a model's reordered weights).
/// Packing them into one block wastes at most one partly used huge page,
/// where a block per tensor could waste one per tensor.
class HugePageArena {
 public:
  HugePageArena() = default;
  HugePageArena(std::size_t capacity, bool huge) : buffer_(capacity, huge) {}

  /// Bytes `take` uses for a request of `bytes` (alignment included).
  static constexpr std::size_t footprint(std::size_t bytes) noexcept {
    return (bytes + kAlign - 1) / kAlign * kAlign;
  }
  /// The next `bytes` bytes, zero-filled.
  /// @throws Error(internal) when the sum of footprint() of the requests
  ///         exceeds the capacity (a sizing bug of the caller).
  std::byte* take(std::size_t bytes);

 private:
  static constexpr std::size_t kAlign = 64;
  HugePageBuffer buffer_;
  std::size_t used_ = 0;
};

}  // namespace funnel::detail
