// SPDX-License-Identifier: Apache-2.0
// Tests of the core helpers: errors, UTF-8, checksums, atomic writes, JSON Lines.

#include <cstdint>
#include <utility>

#include <catch2/catch.hpp>

#include "funnel/error.hpp"
#include "funnel/matrix.hpp"
#include "internal/atomic_file.hpp"
#include "internal/checksum.hpp"
#include "internal/huge_pages.hpp"
#include "internal/jsonl.hpp"
#include "internal/utf8.hpp"
#include "test_util.hpp"

using Catch::Matchers::Contains;
using funnel::Error;
using funnel::ErrorCode;

TEST_CASE("Error carries its code and message", "[core]") {
  const Error e(ErrorCode::format, "bad thing in x.jsonl:3");
  CHECK(e.code() == ErrorCode::format);
  CHECK(std::string(e.what()) == "bad thing in x.jsonl:3");
  CHECK(funnel::to_string(ErrorCode::invalid_argument) == "invalid_argument");
  CHECK(funnel::to_string(ErrorCode::unsupported) == "unsupported");
}

TEST_CASE("Matrix and views share the row-major layout", "[core]") {
  funnel::Matrix<float> m(2, 3);
  for (std::size_t i = 0; i < 6; ++i) m.data()[i] = static_cast<float>(i);
  CHECK(m(1, 0) == 3.0F);
  CHECK(m.row(1)[2] == 5.0F);
  funnel::MatrixView<const float> v = m.view();
  CHECK(v.rows == 2);
  CHECK(v(0, 2) == 2.0F);
}

TEST_CASE("UTF-8 validation follows RFC 3629", "[core][utf8]") {
  using funnel::detail::find_invalid_utf8;
  CHECK_FALSE(find_invalid_utf8("plain ascii").has_value());
  CHECK_FALSE(find_invalid_utf8("中文 café 😀").has_value());
  CHECK(find_invalid_utf8("ab\xC3\x28") == 2u);        // bad continuation byte
  CHECK(find_invalid_utf8("\xE4\xB8") == 0u);          // truncated 3-byte sequence
  CHECK(find_invalid_utf8("x\xC0\xAF") == 1u);         // overlong encoding of '/'
  CHECK(find_invalid_utf8("\xED\xA0\x80") == 0u);      // UTF-16 surrogate
  CHECK(find_invalid_utf8("\xF4\x90\x80\x80") == 0u);  // above U+10FFFF
  CHECK(find_invalid_utf8("\xFF") == 0u);
  // Round trip of code points, including 4-byte ones.
  const std::u32string cps = funnel::detail::decode_utf8(std::string_view("a中😀"));
  REQUIRE(cps.size() == 3);
  CHECK(cps[1] == U'\u4E2D');
  CHECK(cps[2] == U'\U0001F600');
  CHECK(funnel::detail::encode_utf8(cps) == "a中😀");
  CHECK_THROWS_AS(funnel::detail::decode_utf8(std::string_view("\xC3")), Error);
}

TEST_CASE("checksum64 is chunking-independent and sensitive to every byte", "[core]") {
  std::string data(1000, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + 3);
  const std::uint64_t whole = funnel::detail::checksum64(data);
  for (std::size_t chunk : {1u, 5u, 31u, 32u, 33u, 999u}) {
    funnel::detail::Checksum64 c;
    for (std::size_t pos = 0; pos < data.size(); pos += chunk) {
      c.update(data.data() + pos, std::min(chunk, data.size() - pos));
    }
    CHECK(c.digest() == whole);
  }
  for (std::size_t i : {0u, 31u, 32u, 500u, 999u}) {
    std::string flipped = data;
    flipped[i] = static_cast<char>(flipped[i] ^ 1);
    CHECK(funnel::detail::checksum64(flipped) != whole);
  }
  CHECK(funnel::detail::checksum64(data.substr(0, 999)) != whole);  // truncation
  CHECK(funnel::detail::to_hex(0x0123456789abcdefULL) == "0123456789abcdef");
}

TEST_CASE("write_file_atomic replaces a file whole or not at all", "[core][io]") {
  funnel::testing::TempDir dir;
  const auto path = dir / "out.txt";
  funnel::detail::write_file_atomic(path, std::string("first version"));
  CHECK(funnel::testing::read_bytes(path) == "first version");

  // A writer that fails half-way leaves the old file intact and no temporary behind.
  CHECK_THROWS_WITH(funnel::detail::write_file_atomic(path,
                                                      [](std::ostream& out) {
                                                        out << "half of the new";
                                                        throw Error(ErrorCode::internal, "boom");
                                                      }),
                    "boom");
  CHECK(funnel::testing::read_bytes(path) == "first version");
  CHECK(funnel::testing::count_entries(dir.path()) == 1);

  // Writing into a missing directory is an io error naming the path.
  try {
    funnel::detail::write_file_atomic(dir / "missing/sub/out.txt", std::string("x"));
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::io);
    CHECK_THAT(e.what(), Contains("missing/sub/out.txt"));
  }
  CHECK_THROWS_AS(funnel::detail::read_file(dir / "nope.txt"), Error);
}

TEST_CASE("for_each_jsonl names the file, line and field of bad input", "[core][jsonl]") {
  funnel::testing::TempDir dir;
  const auto path = dir / "x.jsonl";
  auto error_of = [&](const std::string& text, auto&& body) -> std::string {
    funnel::testing::write_bytes(path, text);
    try {
      funnel::detail::for_each_jsonl(path, body);
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::format);
      return e.what();
    }
    return "";
  };
  auto read_id = [](const funnel::detail::JsonLine& l) { (void)l.integer("id", true); };

  CHECK_THAT(error_of("{\"id\": 1}\n\n{\"id\": \"two\"}\n", read_id),
             Contains("x.jsonl:3") && Contains("'id'") && Contains("integer"));
  CHECK_THAT(error_of("{\"id\": 1}\n{\"id\": 2\n", read_id),
             Contains("x.jsonl:2") && Contains("malformed JSON"));
  CHECK_THAT(error_of("[1, 2]\n", read_id), Contains("x.jsonl:1") && Contains("object"));
  CHECK_THAT(error_of("{\"id\": 1, \"t\": \"a\xC3\x28\"}\n", read_id),
             Contains("x.jsonl:1") && Contains("invalid UTF-8"));
  CHECK_THAT(error_of("{\"x\": 1}\n", read_id), Contains("missing"));
  CHECK_THAT(error_of("{\"id\": 1.5}\n", read_id), Contains("integer"));
  // 3.0 is an integer written as a float: accepted. Blank lines and CRLF are fine.
  int count = 0;
  CHECK(error_of("{\"id\": 3.0}\r\n   \n{\"id\": 4}\n", [&](const funnel::detail::JsonLine& l) {
          CHECK(*l.integer("id", true) == (count == 0 ? 3 : 4));
          ++count;
        }).empty());
  CHECK(count == 2);
  try {
    funnel::detail::for_each_jsonl(dir / "absent.jsonl", read_id);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::io);
  }
}

TEST_CASE("HugePageBuffer: 2 MiB-aligned, zero-filled, writable to its end, movable", "[core]") {
  using funnel::detail::HugePageBuffer;
  using funnel::detail::kHugePageBytes;
  const HugePageBuffer none;
  CHECK(none.data() == nullptr);
  CHECK(none.size() == 0);
  CHECK(HugePageBuffer(0, true).data() == nullptr);
  for (const bool huge : {false, true}) {
    for (const std::size_t bytes : {std::size_t{1}, kHugePageBytes, kHugePageBytes + 3}) {
      INFO("huge " << huge << ", bytes " << bytes);
      HugePageBuffer b(bytes, huge);
      REQUIRE(b.data() != nullptr);
      CHECK(b.size() == bytes);
      CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % kHugePageBytes == 0);
      CHECK(b.data()[0] == std::byte{0});
      CHECK(b.data()[bytes - 1] == std::byte{0});
      b.data()[bytes - 1] = std::byte{7};
      std::byte* const at = b.data();
      HugePageBuffer moved(std::move(b));
      CHECK(moved.data() == at);
      CHECK(moved.data()[bytes - 1] == std::byte{7});
      HugePageBuffer other(5, huge);
      other = std::move(moved);  // unmaps its own block, takes over `moved`'s
      CHECK(other.data() == at);
      CHECK(other.size() == bytes);
    }
  }
}

TEST_CASE("HugePageArena: 64-byte aligned pieces in order, a clear error past capacity", "[core]") {
  using funnel::detail::HugePageArena;
  CHECK(HugePageArena::footprint(0) == 0);
  CHECK(HugePageArena::footprint(1) == 64);
  CHECK(HugePageArena::footprint(64) == 64);
  CHECK(HugePageArena::footprint(65) == 128);
  HugePageArena arena(HugePageArena::footprint(100) + HugePageArena::footprint(64), true);
  std::byte* a = arena.take(100);
  std::byte* b = arena.take(64);
  CHECK(reinterpret_cast<std::uintptr_t>(a) % 64 == 0);
  CHECK(b == a + 128);
  CHECK(arena.take(0) == b + 64);  // empty requests take nothing
  try {
    (void)arena.take(1);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::internal);
    CHECK_THAT(e.what(), Contains("cannot hold 64 more bytes"));
  }
}
