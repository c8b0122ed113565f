// SPDX-License-Identifier: Apache-2.0
#include "internal/huge_pages.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "internal/error_util.hpp"

namespace funnel::detail {
namespace {

constexpr std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

}  // namespace

void advise_huge_pages(const void* addr, std::size_t bytes, bool huge) noexcept {
#if defined(MADV_HUGEPAGE) && defined(MADV_NOHUGEPAGE)
  const auto begin = reinterpret_cast<std::uintptr_t>(addr);
  const std::uintptr_t first = round_up(begin, kHugePageBytes);
  const std::uintptr_t last = (begin + bytes) / kHugePageBytes * kHugePageBytes;
  if (last <= first) return;
  // madvise takes a non-const pointer; neither advice changes a byte.
  (void)::madvise(reinterpret_cast<void*>(first), last - first,
                  huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#else
  (void)addr;
  (void)bytes;
  (void)huge;
#endif
}

void* map_aligned_block(std::size_t bytes, int prot) noexcept {
  const long page_size = ::sysconf(_SC_PAGESIZE);
  const std::size_t page = page_size > 0 ? static_cast<std::size_t>(page_size) : 4096;
  const std::size_t length = round_up(bytes, page);
  const std::size_t span = length + kHugePageBytes;
  void* raw = ::mmap(nullptr, span, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  auto* base = static_cast<std::byte*>(raw);
  const auto addr = reinterpret_cast<std::uintptr_t>(raw);
  const std::size_t head = round_up(addr, kHugePageBytes) - addr;
  if (head > 0) (void)::munmap(base, head);
  if (span - head - length > 0) (void)::munmap(base + head + length, span - head - length);
  return base + head;
}

HugePageBuffer::HugePageBuffer(std::size_t bytes, bool huge) : size_(bytes) {
  if (bytes == 0) return;
  const std::size_t length = round_up(bytes, kHugePageBytes);
  void* block = map_aligned_block(length, PROT_READ | PROT_WRITE);
  if (block == nullptr)
    fail(ErrorCode::internal, "cannot map ", bytes, " bytes of memory: ", std::strerror(errno));
  data_ = static_cast<std::byte*>(block);
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
