// SPDX-License-Identifier: Apache-2.0
// NumPy .npy IO. The reference files are built byte by byte in the test the
// way numpy 1.24's np.save writes them (magic, version, little-endian header
// length, dict padded with spaces to a 64-byte boundary, raw C-order data).

#include <cstring>

#include <catch2/catch.hpp>

#include "funnel/error.hpp"
#include "funnel/npy.hpp"
#include "test_util.hpp"

using Catch::Matchers::Contains;
using funnel::Error;
using funnel::ErrorCode;

namespace {

// The bytes np.save writes for a v1.0 file with this dict and raw data.
std::string numpy_file(const std::string& dict, const std::string& data, int version = 1) {
  const std::size_t prefix = version == 1 ? 10 : 12;
  std::string header = dict;
  header.append(21 - 1, ' ');  // numpy leaves room for the first axis to grow
  const std::size_t unpadded = prefix + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(static_cast<char>(version));
  out.push_back('\0');
  const std::size_t len = header.size();
  out.push_back(static_cast<char>(len & 0xFF));
  out.push_back(static_cast<char>((len >> 8) & 0xFF));
  if (version != 1) out.append(2, '\0');
  return out + header + data;
}

template <class T>
std::string raw(std::initializer_list<T> values) {
  std::string s(values.size() * sizeof(T), '\0');
  std::memcpy(s.data(), std::data(values), s.size());
  return s;
}

ErrorCode code_of(const std::filesystem::path& path) {
  try {
    (void)funnel::load_npy_f32(path);
  } catch (const Error& e) {
    return e.code();
  }
  FAIL("expected an error for " << path);
  return ErrorCode::internal;
}

}  // namespace

TEST_CASE("load_npy_f32 reads what numpy writes", "[npy]") {
  funnel::testing::TempDir dir;
  const std::string file = numpy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                                      raw<float>({1.5F, 2, 3, 4, 5, -6.25F}));
  REQUIRE(file.size() == 128 + 24);  // numpy's header for this array is 128 bytes
  funnel::testing::write_bytes(dir / "a.npy", file);
  const funnel::Matrix<float> m = funnel::load_npy_f32(dir / "a.npy");
  REQUIRE(m.rows() == 2);
  REQUIRE(m.cols() == 3);
  CHECK(m(0, 0) == 1.5F);
  CHECK(m(1, 2) == -6.25F);

  // 1-D arrays become n x 1; version 2 headers have a 4-byte length.
  funnel::testing::write_bytes(
      dir / "b.npy", numpy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
                                raw<float>({7, 8, 9}), 2));
  const auto b = funnel::load_npy_f32(dir / "b.npy");
  CHECK(b.rows() == 3);
  CHECK(b.cols() == 1);
  CHECK(b(2, 0) == 9.0F);
}

TEST_CASE("load_npy_i64 reads int64 ids", "[npy]") {
  funnel::testing::TempDir dir;
  funnel::testing::write_bytes(
      dir / "ids.npy", numpy_file("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }",
                                  raw<std::int64_t>({1, -2, 1LL << 40, 4})));
  const auto m = funnel::load_npy_i64(dir / "ids.npy");
  CHECK(m(1, 0) == (1LL << 40));
  CHECK(m(0, 1) == -2);
  // Reading int64 as float32 is a dtype error naming both.
  try {
    (void)funnel::load_npy_f32(dir / "ids.npy");
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Contains("<f4") && Contains("<i8") && Contains("ids.npy"));
  }
}

TEST_CASE("save_npy writes the layout numpy reads", "[npy]") {
  funnel::testing::TempDir dir;
  funnel::Matrix<float> m(2, 3);
  for (std::size_t i = 0; i < 6; ++i) m.data()[i] = static_cast<float>(i) * 0.5F;
  funnel::save_npy(dir / "m.npy", m.view());
  const std::string bytes = funnel::testing::read_bytes(dir / "m.npy");
  REQUIRE(bytes.size() > 10);
  CHECK(bytes.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
  const std::size_t header_len =
      static_cast<unsigned char>(bytes[8]) |
      (static_cast<std::size_t>(static_cast<unsigned char>(bytes[9])) << 8);
  CHECK((10 + header_len) % 64 == 0);
  const std::string header = bytes.substr(10, header_len);
  CHECK_THAT(header, Contains("'descr': '<f4'") && Contains("'fortran_order': False") &&
                         Contains("'shape': (2, 3)"));
  CHECK(header.back() == '\n');
  CHECK(bytes.substr(10 + header_len) == raw<float>({0, 0.5F, 1, 1.5F, 2, 2.5F}));

  const auto back = funnel::load_npy_f32(dir / "m.npy");
  CHECK(back.values() == m.values());

  funnel::Matrix<std::int64_t> ids(3, 1);
  ids(2, 0) = -9;
  funnel::save_npy(dir / "ids.npy", ids.view());
  CHECK(funnel::load_npy_i64(dir / "ids.npy")(2, 0) == -9);
}

TEST_CASE("damaged .npy files are format errors naming the file", "[npy]") {
  funnel::testing::TempDir dir;
  const std::string good = numpy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                                      raw<float>({1, 2, 3, 4, 5, 6}));
  const auto path = dir / "bad.npy";

  funnel::testing::write_bytes(path, good.substr(0, good.size() - 4));
  CHECK(code_of(path) == ErrorCode::format);
  CHECK_THROWS_WITH(funnel::load_npy_f32(path), Contains("bad.npy") && Contains("truncated"));

  funnel::testing::write_bytes(path, good + "xx");
  CHECK_THROWS_WITH(funnel::load_npy_f32(path), Contains("trailing"));

  funnel::testing::write_bytes(path, "PK\x03\x04 not numpy at all");
  CHECK(code_of(path) == ErrorCode::format);

  funnel::testing::write_bytes(path, good.substr(0, 40));  // cut inside the header
  CHECK(code_of(path) == ErrorCode::format);

  funnel::testing::write_bytes(
      path, numpy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                       raw<float>({1, 2, 3, 4, 5, 6})));
  CHECK_THROWS_WITH(funnel::load_npy_f32(path), Contains("Fortran"));

  funnel::testing::write_bytes(
      path, numpy_file("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
                       raw<float>({1, 2, 3, 4, 5, 6})));
  CHECK_THROWS_WITH(funnel::load_npy_f32(path), Contains(">f4"));

  funnel::testing::write_bytes(
      path, numpy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }",
                       raw<float>({1, 2, 3, 4, 5, 6})));
  CHECK_THROWS_WITH(funnel::load_npy_f32(path), Contains("3 dimensions"));

  std::string future = good;
  future[6] = 9;  // format version 9.0
  funnel::testing::write_bytes(path, future);
  CHECK_THROWS_WITH(funnel::load_npy_f32(path), Contains("version 9"));

  CHECK(code_of(dir / "absent.npy") == ErrorCode::io);
}
