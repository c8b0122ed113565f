// SPDX-License-Identifier: Apache-2.0
#include "internal/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "internal/error_util.hpp"

namespace funnel::detail {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail(ErrorCode::io, "cannot open '", path.string(), "' for reading: ", std::strerror(errno));
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) fail(ErrorCode::io, "error while reading '", path.string(), "'");
  return std::move(os).str();
}

std::filesystem::path temp_path_for(const std::filesystem::path& path) {
  static std::atomic<unsigned long> counter{0};
  std::filesystem::path tmp = path;
  tmp += cat(".tmp.", ::getpid(), ".", counter.fetch_add(1));
  return tmp;
}

void rename_file(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code ec;
  std::filesystem::rename(from, to, ec);
  if (ec)
    fail(ErrorCode::io, "cannot rename '", from.string(), "' to '", to.string(),
         "': ", ec.message());
}

namespace {

void fsync_path(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  (void)::fsync(fd);
  (void)::close(fd);
}

}  // namespace

void write_file_atomic(const std::filesystem::path& path,
                       const std::function<void(std::ostream&)>& write) {
  const std::filesystem::path tmp = temp_path_for(path);
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) fail(ErrorCode::io, "cannot create '", tmp.string(), "': ", std::strerror(errno));
      write(out);
      out.flush();
      if (!out) fail(ErrorCode::io, "error while writing '", tmp.string(), "'");
    }
    fsync_path(tmp);
    rename_file(tmp, path);
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
}

void write_file_atomic(const std::filesystem::path& path, const std::string& bytes) {
  write_file_atomic(path, [&](std::ostream& out) {
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  });
}

}  // namespace funnel::detail
