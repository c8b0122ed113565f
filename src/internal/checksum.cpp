// SPDX-License-Identifier: Apache-2.0
#include "internal/checksum.hpp"

#include <cstring>
#include <fstream>
#include <vector>

#include "internal/error_util.hpp"

namespace funnel::detail {
namespace {

constexpr std::uint64_t kMul = 0x9FB21C651E98DF25ULL;

std::uint64_t load64(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];  // little-endian, any host
  return v;
}

std::uint64_t rotl(std::uint64_t v, int r) { return (v << r) | (v >> (64 - r)); }

std::uint64_t mix(std::uint64_t h) {
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDULL;
  h ^= h >> 33;
  h *= 0xC4CEB9FE1A85EC53ULL;
  h ^= h >> 33;
  return h;
}

}  // namespace

void Checksum64::block(const unsigned char* p) {
  for (std::size_t lane = 0; lane < 4; ++lane) {
    lanes_[lane] = rotl(lanes_[lane] ^ (load64(p + 8 * lane) * kMul), 29) * 0x94D049BB133111EBULL;
  }
}

void Checksum64::update(const void* data, std::size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += size;
  if (pending_size_ > 0) {
    const std::size_t take = std::min(size, sizeof(pending_) - pending_size_);
    std::memcpy(pending_ + pending_size_, p, take);
    pending_size_ += take;
    p += take;
    size -= take;
    if (pending_size_ < sizeof(pending_)) return;
    block(pending_);
    pending_size_ = 0;
  }
  while (size >= 32) {
    block(p);
    p += 32;
    size -= 32;
  }
  std::memcpy(pending_, p, size);
  pending_size_ = size;
}

std::uint64_t Checksum64::digest() const {
  std::uint64_t h = total_ * kMul;
  for (std::uint64_t lane : lanes_) h = mix(h ^ lane) + 0x2545F4914F6CDD1DULL;
  for (std::size_t i = 0; i < pending_size_; ++i) h = mix(h ^ (pending_[i] + (i << 8)));
  return mix(h);
}

std::uint64_t checksum64(std::string_view bytes) {
  Checksum64 c;
  c.update(bytes.data(), bytes.size());
  return c.digest();
}

std::uint64_t checksum64_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorCode::io, "cannot open '", path.string(), "' for reading");
  Checksum64 c;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    c.update(buf.data(), static_cast<std::size_t>(in.gcount()));
  }
  if (in.bad()) fail(ErrorCode::io, "error while reading '", path.string(), "'");
  return c.digest();
}

std::string to_hex(std::uint64_t value) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i) {
    s[static_cast<std::size_t>(i)] = kDigits[value & 0xF];
    value >>= 4;
  }
  return s;
}

}  // namespace funnel::detail
