// SPDX-License-Identifier: Apache-2.0
#include "funnel/npy.hpp"

#include <bit>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"

// The .npy format: magic "\x93NUMPY", major/minor version bytes, a
// little-endian header length (2 bytes in v1, 4 bytes in v2/v3), then an
// ASCII (v3: UTF-8) Python dict literal {'descr': ..., 'fortran_order': ...,
// 'shape': (...), } padded with spaces and ending in '\n' so that the data
// starts on a 64-byte boundary; then the raw array data.

namespace funnel {
namespace {

static_assert(std::endian::native == std::endian::little,
              "funnel's .npy IO assumes a little-endian host");

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicSize = 6;

struct Header {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::uint64_t> shape;
  std::size_t data_offset = 0;
};

[[noreturn]] void bad(const std::filesystem::path& path, const std::string& what) {
  detail::fail(ErrorCode::format, "'", path.string(), "': not a valid .npy file: ", what);
}

// Extracts the value text that follows 'key': in the header dict.
std::string dict_value(const std::filesystem::path& path, const std::string& dict,
                       const std::string& key) {
  const std::string quoted1 = "'" + key + "'";
  const std::string quoted2 = "\"" + key + "\"";
  std::size_t pos = dict.find(quoted1);
  std::size_t len = quoted1.size();
  if (pos == std::string::npos) {
    pos = dict.find(quoted2);
    len = quoted2.size();
  }
  if (pos == std::string::npos) bad(path, "header has no '" + key + "'");
  pos = dict.find(':', pos + len);
  if (pos == std::string::npos) bad(path, "header entry '" + key + "' has no value");
  ++pos;
  while (pos < dict.size() && dict[pos] == ' ') ++pos;
  if (pos >= dict.size()) bad(path, "header entry '" + key + "' has no value");
  if (dict[pos] == '(') {
    const std::size_t end = dict.find(')', pos);
    if (end == std::string::npos) bad(path, "unterminated shape tuple");
    return dict.substr(pos, end - pos + 1);
  }
  if (dict[pos] == '\'' || dict[pos] == '"') {
    const std::size_t end = dict.find(dict[pos], pos + 1);
    if (end == std::string::npos) bad(path, "unterminated string in header");
    return dict.substr(pos + 1, end - pos - 1);
  }
  std::size_t end = pos;
  while (end < dict.size() && dict[end] != ',' && dict[end] != '}') ++end;
  std::string value = dict.substr(pos, end - pos);
  while (!value.empty() && value.back() == ' ') value.pop_back();
  return value;
}

std::vector<std::uint64_t> parse_shape(const std::filesystem::path& path,
                                       const std::string& tuple) {
  std::vector<std::uint64_t> shape;
  std::size_t pos = 1;  // after '('
  while (pos < tuple.size()) {
    while (pos < tuple.size() && (tuple[pos] == ' ' || tuple[pos] == ',')) ++pos;
    if (pos >= tuple.size() || tuple[pos] == ')') break;
    std::uint64_t v = 0;
    bool any = false;
    while (pos < tuple.size() && tuple[pos] >= '0' && tuple[pos] <= '9') {
      const auto digit = static_cast<std::uint64_t>(tuple[pos] - '0');
      if (v > (std::numeric_limits<std::uint64_t>::max() - digit) / 10)
        bad(path, "shape overflows");
      v = v * 10 + digit;
      any = true;
      ++pos;
    }
    if (!any) bad(path, "malformed shape " + tuple);
    shape.push_back(v);
  }
  return shape;
}

Header read_header(std::istream& in, const std::filesystem::path& path, std::uint64_t file_size) {
  char magic[kMagicSize];
  if (!in.read(magic, kMagicSize) || std::memcmp(magic, kMagic, kMagicSize) != 0) {
    bad(path, "missing magic string");
  }
  unsigned char version[2];
  if (!in.read(reinterpret_cast<char*>(version), 2)) bad(path, "truncated version");
  std::uint32_t header_len = 0;
  std::size_t len_bytes = 0;
  if (version[0] == 1) {
    len_bytes = 2;
  } else if (version[0] == 2 || version[0] == 3) {
    len_bytes = 4;
  } else {
    bad(path, "unsupported format version " + std::to_string(version[0]));
  }
  unsigned char len_buf[4] = {0, 0, 0, 0};
  if (!in.read(reinterpret_cast<char*>(len_buf), static_cast<std::streamsize>(len_bytes))) {
    bad(path, "truncated header length");
  }
  for (std::size_t i = len_bytes; i-- > 0;) header_len = (header_len << 8) | len_buf[i];
  const std::size_t offset = kMagicSize + 2 + len_bytes + header_len;
  if (offset > file_size) bad(path, "header length runs past the end of the file");
  std::string dict(header_len, '\0');
  if (!in.read(dict.data(), header_len)) bad(path, "truncated header");

  Header h;
  h.data_offset = offset;
  h.descr = dict_value(path, dict, "descr");
  const std::string fortran = dict_value(path, dict, "fortran_order");
  if (fortran == "True") {
    h.fortran_order = true;
  } else if (fortran != "False") {
    bad(path, "fortran_order must be True or False, got " + fortran);
  }
  h.shape = parse_shape(path, dict_value(path, dict, "shape"));
  return h;
}

template <class T>
Matrix<T> load(const std::filesystem::path& path, const char* descr, const char* type_name) {
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::fail(ErrorCode::io, "cannot open '", path.string(), "' for reading");
  in.seekg(0, std::ios::end);
  const auto file_size = static_cast<std::uint64_t>(in.tellg());
  in.seekg(0);
  const Header h = read_header(in, path, file_size);
  if (h.descr != descr) {
    bad(path, detail::cat("expected dtype '", descr, "' (", type_name, "), found '", h.descr, "'"));
  }
  if (h.fortran_order) bad(path, "Fortran-order arrays are not supported; save with C order");
  if (h.shape.empty() || h.shape.size() > 2) {
    bad(path, detail::cat("expected a 1-D or 2-D array, found ", h.shape.size(), " dimensions"));
  }
  const std::uint64_t rows = h.shape[0];
  const std::uint64_t cols = h.shape.size() == 2 ? h.shape[1] : 1;
  if (cols != 0 && rows > std::numeric_limits<std::uint64_t>::max() / cols / sizeof(T)) {
    bad(path, "shape too large");
  }
  const std::uint64_t bytes = rows * cols * sizeof(T);
  if (file_size - h.data_offset != bytes) {
    bad(path,
        detail::cat("expected ", bytes, " data bytes for shape (", rows, ", ", cols, "), found ",
                    file_size - h.data_offset,
                    h.data_offset + bytes > file_size ? " (truncated)" : " (trailing bytes)"));
  }
  std::vector<T> data(rows * cols);
  if (bytes > 0 &&
      !in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(bytes))) {
    detail::fail(ErrorCode::io, "error while reading '", path.string(), "'");
  }
  return Matrix<T>(rows, cols, std::move(data));
}

template <class T>
void save(const std::filesystem::path& path, MatrixView<const T> m, const char* descr) {
  detail::require(m.data != nullptr || m.size() == 0, "save_npy: null data for a non-empty matrix");
  std::string dict = detail::cat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (",
                                 m.rows, ", ", m.cols, "), }");
  // Pad with spaces so that magic + version + length + dict + '\n' is a multiple of 64.
  const std::size_t unpadded = kMagicSize + 2 + 2 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict.push_back('\n');
  detail::require(dict.size() <= 0xFFFF, "save_npy: header too long");
  detail::write_file_atomic(path, [&](std::ostream& out) {
    out.write(kMagic, kMagicSize);
    const char version[2] = {1, 0};
    out.write(version, 2);
    const char len[2] = {static_cast<char>(dict.size() & 0xFF),
                         static_cast<char>(dict.size() >> 8)};
    out.write(len, 2);
    out.write(dict.data(), static_cast<std::streamsize>(dict.size()));
    out.write(reinterpret_cast<const char*>(m.data),
              static_cast<std::streamsize>(m.size() * sizeof(T)));
  });
}

}  // namespace

Matrix<float> load_npy_f32(const std::filesystem::path& path) {
  return load<float>(path, "<f4", "float32");
}

Matrix<std::int64_t> load_npy_i64(const std::filesystem::path& path) {
  return load<std::int64_t>(path, "<i8", "int64");
}

void save_npy(const std::filesystem::path& path, MatrixView<const float> m) {
  save<float>(path, m, "<f4");
}

void save_npy(const std::filesystem::path& path, MatrixView<const std::int64_t> m) {
  save<std::int64_t>(path, m, "<i8");
}

}  // namespace funnel
