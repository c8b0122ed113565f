// SPDX-License-Identifier: Apache-2.0
#pragma once

// What the FAISS-format coarse rankers (ExactCoarseRanker, IvfCoarseRanker)
// share to write and read their files: the sidecar's path and field readers
// (each failure names the sidecar and the field), a FAISS writer that
// checksums what it streams, a FAISS reader over verified bytes in memory,
// and the FAISS type code for messages.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include <faiss/impl/io.h>
#include <nlohmann/json.hpp>

#include "funnel/error.hpp"
#include "internal/checksum.hpp"
#include "internal/error_util.hpp"

namespace funnel::detail {

inline std::filesystem::path sidecar_path(const std::filesystem::path& path) {
  std::filesystem::path sidecar = path;
  sidecar += ".json";
  return sidecar;
}

// FAISS writer that streams to a stdio file and checksums what it writes.
class ChecksumFileWriter final : public faiss::IOWriter {
 public:
  explicit ChecksumFileWriter(std::FILE* file) : file_(file) {}
  std::size_t operator()(const void* ptr, std::size_t size, std::size_t nitems) override {
    // FAISS writes empty lists as (nullptr, size, 0); fwrite wants a pointer.
    if (size == 0 || nitems == 0) return nitems;
    const std::size_t written = std::fwrite(ptr, size, nitems, file_);
    checksum_.update(ptr, written * size);
    bytes_ += written * size;
    return written;
  }
  [[nodiscard]] std::uint64_t digest() const { return checksum_.digest(); }
  [[nodiscard]] std::size_t bytes() const { return bytes_; }

 private:
  std::FILE* file_;
  Checksum64 checksum_;
  std::size_t bytes_ = 0;
};

// FAISS reader over bytes already in memory (and already verified).
class BytesReader final : public faiss::IOReader {
 public:
  explicit BytesReader(std::string_view bytes) : bytes_(bytes) {}
  std::size_t operator()(void* ptr, std::size_t size, std::size_t nitems) override {
    if (size == 0 || nitems == 0) return nitems;
    const std::size_t items = std::min(nitems, (bytes_.size() - pos_) / size);
    if (items == 0) return 0;
    std::memcpy(ptr, bytes_.data() + pos_, items * size);
    pos_ += items * size;
    return items;
  }
  [[nodiscard]] std::size_t position() const { return pos_; }

 private:
  std::string_view bytes_;
  std::size_t pos_ = 0;
};

struct FileCloser {
  void operator()(std::FILE* f) const { (void)std::fclose(f); }
};

// The FAISS type code at the start of an index file, for messages.
inline std::string fourcc_of(std::string_view bytes) {
  if (bytes.size() < 4) return "(none)";
  std::string code(bytes.substr(0, 4));
  for (char& ch : code) {
    if (ch < 0x20 || ch > 0x7e) ch = '?';
  }
  return "'" + code + "'";
}

inline const nlohmann::json& field(const nlohmann::json& doc, const std::filesystem::path& file,
                                   const char* name) {
  const auto it = doc.find(name);
  if (it == doc.end()) {
    fail(ErrorCode::format, "sidecar '", file.string(), "': missing field '", name, "'");
  }
  return *it;
}

inline std::uint64_t unsigned_field(const nlohmann::json& doc, const std::filesystem::path& file,
                                    const char* name) {
  const nlohmann::json& value = field(doc, file, name);
  if (!value.is_number_unsigned()) {
    fail(ErrorCode::format, "sidecar '", file.string(), "': field '", name,
         "' must be a non-negative integer, found ", value.dump());
  }
  return value.get<std::uint64_t>();
}

inline std::string string_field(const nlohmann::json& doc, const std::filesystem::path& file,
                                const char* name) {
  const nlohmann::json& value = field(doc, file, name);
  if (!value.is_string()) {
    fail(ErrorCode::format, "sidecar '", file.string(), "': field '", name,
         "' must be a string, found ", value.dump());
  }
  return value.get<std::string>();
}

}  // namespace funnel::detail
