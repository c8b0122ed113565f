// SPDX-License-Identifier: Apache-2.0
#pragma once

// A fast non-cryptographic 64-bit checksum for detecting damaged files.
// Name in sidecars: "mix64". Stable across machines and versions.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace funnel::detail {

/// Incremental checksum: feed bytes in any chunking, same result.
class Checksum64 {
 public:
  void update(const void* data, std::size_t size);
  [[nodiscard]] std::uint64_t digest() const;

 private:
  std::uint64_t lanes_[4] = {0x9E3779B97F4A7C15ULL, 0xC2B2AE3D27D4EB4FULL, 0x165667B19E3779F9ULL,
                             0x27D4EB2F165667C5ULL};
  unsigned char pending_[32] = {};
  std::size_t pending_size_ = 0;
  std::uint64_t total_ = 0;
  void block(const unsigned char* p);
};

std::uint64_t checksum64(std::string_view bytes);
/// Checksum of a whole file. Throws Error(io) when unreadable.
std::uint64_t checksum64_file(const std::filesystem::path& path);
/// 16 lower-case hex digits.
std::string to_hex(std::uint64_t value);

}  // namespace funnel::detail
