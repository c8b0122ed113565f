// SPDX-License-Identifier: Apache-2.0
#include "internal/huge_pages.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "internal/error_util.hpp"

namespace funnel::detail {
namespace {

constexpr std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

}  // namespace

void advise_huge_pages(const void* addr, std::size_t bytes) noexcept {
#ifdef MADV_HUGEPAGE
  const auto begin = reinterpret_cast<std::uintptr_t>(addr);
  const std::uintptr_t first = round_up(begin, kHugePageBytes);
  const std::uintptr_t last = (begin + bytes) / kHugePageBytes * kHugePageBytes;
  if (last <= first) return;
  // madvise takes a non-const pointer; MADV_HUGEPAGE changes no byte.
  (void)::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)addr;
  (void)bytes;
#endif
}

HugePageBuffer::HugePageBuffer(std::size_t bytes, bool huge) : size_(bytes) {
  if (bytes == 0) return;
  // Over-map by one huge page, then trim both ends to a 2 MiB-aligned block.
  const std::size_t length = round_up(bytes, kHugePageBytes);
  const std::size_t span = length + kHugePageBytes;
  void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED)
    fail(ErrorCode::internal, "cannot map ", bytes, " bytes of memory: ", std::strerror(errno));
  auto* base = static_cast<std::byte*>(raw);
  const auto addr = reinterpret_cast<std::uintptr_t>(raw);
  const std::size_t head = round_up(addr, kHugePageBytes) - addr;
  if (head > 0) (void)::munmap(base, head);
  const std::size_t tail = span - head - length;
  if (tail > 0) (void)::munmap(base + head + length, tail);
  data_ = base + head;
  mapped_ = length;
  if (huge) advise_huge_pages(data_, mapped_);
}

HugePageBuffer::HugePageBuffer(HugePageBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)) {}

HugePageBuffer& HugePageBuffer::operator=(HugePageBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
  }
  return *this;
}

HugePageBuffer::~HugePageBuffer() { release(); }

void HugePageBuffer::release() noexcept {
  if (data_ != nullptr) (void)::munmap(data_, mapped_);
  data_ = nullptr;
  size_ = 0;
  mapped_ = 0;
}

std::byte* HugePageArena::take(std::size_t bytes) {
  const std::size_t need = footprint(bytes);
  if (need > buffer_.size() - used_)
    fail(ErrorCode::internal, "memory arena of ", buffer_.size(), " bytes cannot hold ", need,
         " more bytes after ", used_);
  std::byte* p = buffer_.data() + used_;
  used_ += need;
  return p;
}

}  // namespace funnel::detail
