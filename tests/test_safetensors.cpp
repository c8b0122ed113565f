// SPDX-License-Identifier: Apache-2.0
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "funnel/error.hpp"
#include "funnel/safetensors.hpp"
#include "test_util.hpp"

using funnel::Error;
using funnel::ErrorCode;
using funnel::SafetensorsFile;
using funnel::TensorDType;
using funnel::TensorToWrite;
using funnel::testing::TempDir;
using funnel::testing::write_bytes;

namespace {

std::filesystem::path sample_path() {
  return std::filesystem::path(FUNNEL_TEST_DATA_DIR) / "safetensors" / "sample.safetensors";
}

// A safetensors file assembled by hand: little-endian u64 length, header, data.
std::string st_bytes(std::string_view header, std::string_view data,
                     std::uint64_t length = std::numeric_limits<std::uint64_t>::max()) {
  if (length == std::numeric_limits<std::uint64_t>::max()) length = header.size();
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((length >> (8 * i)) & 0xFFU));
  out += header;
  out += data;
  return out;
}

// Runs open() and returns the Error it throws (fails the test if none).
Error open_error(const std::filesystem::path& path) {
  try {
    (void)SafetensorsFile::open(path);
  } catch (const Error& e) {
    return e;
  }
  FAIL("open('" << path.string() << "') did not throw");
  return Error(ErrorCode::internal, "unreachable");
}

template <class T>
std::span<const std::byte> as_bytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

template <class T>
std::vector<T> values_of(std::span<const std::byte> raw) {
  std::vector<T> out(raw.size() / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), raw.data(), raw.size());
  return out;
}

}  // namespace

TEST_CASE("safetensors: dtype names and sizes follow the format", "[safetensors]") {
  const std::pair<TensorDType, std::pair<std::string_view, std::size_t>> expected[] = {
      {TensorDType::f32, {"F32", 4}},   {TensorDType::f16, {"F16", 2}},
      {TensorDType::bf16, {"BF16", 2}}, {TensorDType::f64, {"F64", 8}},
      {TensorDType::i64, {"I64", 8}},   {TensorDType::i32, {"I32", 4}},
      {TensorDType::i16, {"I16", 2}},   {TensorDType::i8, {"I8", 1}},
      {TensorDType::u8, {"U8", 1}},     {TensorDType::boolean, {"BOOL", 1}},
  };
  for (const auto& [dtype, name_size] : expected) {
    CHECK(funnel::to_string(dtype) == name_size.first);
    CHECK(funnel::dtype_size(dtype) == name_size.second);
  }
}

TEST_CASE("safetensors: F16 bit patterns decode to the values known by hand", "[safetensors]") {
  CHECK(funnel::half_to_float(0x3C00) == 1.0F);
  CHECK(funnel::half_to_float(0xC000) == -2.0F);
  CHECK(funnel::half_to_float(0x3555) == 0.333251953125F);     // 1 + 341/1024, times 2^-2
  CHECK(funnel::half_to_float(0x7BFF) == 65504.0F);            // largest finite
  CHECK(funnel::half_to_float(0x0400) == 0x1p-14F);            // smallest normal
  CHECK(funnel::half_to_float(0x03FF) == 1023.0F * 0x1p-24F);  // largest subnormal
  CHECK(funnel::half_to_float(0x0001) == 0x1p-24F);            // smallest subnormal
  CHECK(funnel::half_to_float(0x0000) == 0.0F);
  CHECK(std::signbit(funnel::half_to_float(0x8000)));
  CHECK(funnel::half_to_float(0x7C00) == std::numeric_limits<float>::infinity());
  CHECK(funnel::half_to_float(0xFC00) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(funnel::half_to_float(0x7E00)));
  CHECK(std::isnan(funnel::half_to_float(0xFC01)));

  // Every pattern against the definition: (-1)^s * 2^(e-15) * (1 + m/1024),
  // subnormals 2^-14 * m/1024, computed in double with ldexp.
  for (std::uint32_t bits = 0; bits < 0x10000U; ++bits) {
    const std::uint32_t e = (bits >> 10U) & 0x1FU;
    const std::uint32_t m = bits & 0x3FFU;
    if (e == 0x1F) continue;  // inf / NaN checked above
    double expected = e == 0 ? std::ldexp(static_cast<double>(m), -24)
                             : std::ldexp(1024.0 + m, static_cast<int>(e) - 25);
    if ((bits & 0x8000U) != 0) expected = -expected;
    const float got = funnel::half_to_float(static_cast<std::uint16_t>(bits));
    if (static_cast<double>(got) != expected) FAIL("F16 0x" << std::hex << bits << " -> " << got);
  }
}

TEST_CASE("safetensors: BF16 bit patterns decode to the values known by hand", "[safetensors]") {
  CHECK(funnel::bfloat16_to_float(0x3F80) == 1.0F);
  CHECK(funnel::bfloat16_to_float(0xC000) == -2.0F);
  CHECK(funnel::bfloat16_to_float(0x4049) == 3.140625F);  // 2 * (1 + 73/128)
  CHECK(funnel::bfloat16_to_float(0x3E20) == 0.15625F);
  CHECK(funnel::bfloat16_to_float(0x0080) == 0x1p-126F);    // smallest normal
  CHECK(funnel::bfloat16_to_float(0x0001) == 0x1p-133F);    // smallest subnormal
  CHECK(funnel::bfloat16_to_float(0x7F7F) == 0x1.fep127F);  // largest finite
  CHECK(funnel::bfloat16_to_float(0xFF80) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(funnel::bfloat16_to_float(0x7FC0)));
}

TEST_CASE("safetensors: the sample written by the Python fixture script reads back",
          "[safetensors]") {
  const auto file = SafetensorsFile::open(sample_path());
  CHECK(file.path() == sample_path());
  CHECK(file.file_bytes() == std::filesystem::file_size(sample_path()));
  CHECK(file.metadata() ==
        std::map<std::string, std::string>{{"format", "pt"}, {"source", "make_bert_fixture.py"}});

  // In the order of their data offsets (the script writes them in this order).
  const std::vector<std::string> names = {"f32", "f16", "bf16", "f64",  "i64",    "i32",
                                          "i16", "i8",  "u8",   "bool", "scalar", "empty"};
  REQUIRE(file.tensors().size() == names.size());
  for (std::size_t i = 0; i < names.size(); ++i) CHECK(file.tensors()[i].name == names[i]);

  const auto& f32 = file.at("f32");
  CHECK(f32.dtype == TensorDType::f32);
  CHECK(f32.shape == std::vector<std::size_t>{2, 3});
  CHECK(f32.offset == 0);
  CHECK(f32.bytes == 24);
  const auto view = file.f32_view(f32);
  REQUIRE(view.size() == 6);
  CHECK(view[0] == 1.0F);
  CHECK(view[1] == -2.5F);
  CHECK(view[2] == 0.15625F);
  CHECK(std::bit_cast<std::uint32_t>(view[3]) == 0x7F61B1E6U);  // 3e38 rounded to float
  CHECK(std::bit_cast<std::uint32_t>(view[4]) == 0x80000000U);  // -0
  CHECK(std::bit_cast<std::uint32_t>(view[5]) == 0x00000001U);  // 1e-45 -> smallest subnormal
  // f32_view is zero-copy: it points into the mapping.
  CHECK(static_cast<const void*>(view.data()) == static_cast<const void*>(file.bytes(f32).data()));

  CHECK(file.to_f32(file.at("f16")) == std::vector<float>{1.0F, -2.0F, 65504.0F, 0x1p-24F});
  CHECK(file.to_f32(file.at("bf16")) ==
        std::vector<float>{1.0F, -2.0F, 3.140625F, std::bit_cast<float>(0x7E960000U)});
  const auto f64 = file.to_f32(file.at("f64"));
  REQUIRE(f64.size() == 2);
  CHECK(f64[0] == 0.1F);
  CHECK(f64[1] == -std::numeric_limits<float>::infinity());  // -1e300 rounds beyond float
  CHECK(values_of<std::int64_t>(file.bytes(file.at("i64"))) ==
        std::vector<std::int64_t>{-1, std::int64_t{1} << 40});
  CHECK(values_of<std::int32_t>(file.bytes(file.at("i32"))) ==
        std::vector<std::int32_t>{7, -8, 2147483647});
  CHECK(values_of<std::int16_t>(file.bytes(file.at("i16"))) == std::vector<std::int16_t>{-32768});
  CHECK(values_of<std::int8_t>(file.bytes(file.at("i8"))) ==
        std::vector<std::int8_t>{-128, 127, 0});
  CHECK(values_of<std::uint8_t>(file.bytes(file.at("u8"))) == std::vector<std::uint8_t>{255, 1});
  CHECK(values_of<std::uint8_t>(file.bytes(file.at("bool"))) == std::vector<std::uint8_t>{1, 0, 1});
  CHECK(file.at("i64").shape == std::vector<std::size_t>{1, 2});

  const auto& scalar = file.at("scalar");
  CHECK(scalar.shape.empty());
  CHECK(scalar.elements() == 1);
  CHECK(file.to_f32(scalar) == std::vector<float>{2.0F});
  // Its data sits at an offset that is not a multiple of 4: no float view of it.
  REQUIRE(reinterpret_cast<std::uintptr_t>(file.bytes(scalar).data()) % 4 != 0);
  const auto misaligned = [&] { (void)file.f32_view(scalar); };
  CHECK_THROWS_WITH(misaligned(), Catch::Contains("scalar") && Catch::Contains("aligned") &&
                                      Catch::Contains("sample.safetensors"));

  const auto& empty = file.at("empty");
  CHECK(empty.shape == std::vector<std::size_t>{0, 3});
  CHECK(empty.elements() == 0);
  CHECK(empty.bytes == 0);
  CHECK(file.bytes(empty).empty());
  CHECK(file.f32_view(empty).empty());
  CHECK(file.to_f32(empty).empty());

  // Wrong-dtype requests name the tensor and the file.
  const auto not_f32 = [&] { (void)file.f32_view(file.at("f16")); };
  CHECK_THROWS_WITH(not_f32(), Catch::Contains("'f16'") && Catch::Contains("F16") &&
                                   Catch::Contains("sample.safetensors"));
  try {
    (void)file.to_f32(file.at("i64"));
    FAIL("to_f32 of I64 did not throw");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("'i64'") && Catch::Contains("I64"));
  }

  CHECK(file.find("nope") == nullptr);
  CHECK(file.find("u8") == &file.at("u8"));
  try {
    (void)file.at("bert.pooler.dense.weight");
    FAIL("at() of a missing tensor did not throw");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::format);
    CHECK_THAT(e.what(), Catch::Contains("missing tensor bert.pooler.dense.weight in") &&
                             Catch::Contains("sample.safetensors"));
  }
}

TEST_CASE("safetensors: write then read every dtype, in the given order", "[safetensors]") {
  const TempDir dir;
  const auto path = dir / "all.safetensors";
  const std::vector<float> f32 = {1.5F, -0.0F, 3e38F, 1e-45F, 7.0F, -8.25F};
  const std::vector<std::uint16_t> f16 = {0x3C00, 0xC000, 0x7BFF};  // 1, -2, 65504
  const std::vector<std::uint16_t> bf16 = {0x3F80, 0x4049};         // 1, 3.140625
  const std::vector<double> f64 = {0.1, -2.5};
  const std::vector<std::int64_t> i64 = {-1, std::int64_t{1} << 50};
  const std::vector<std::int32_t> i32 = {-7, 9, 11, 13};
  const std::vector<std::int16_t> i16 = {-300};
  const std::vector<std::int8_t> i8 = {-128, 5, 127};
  const std::vector<std::uint8_t> u8 = {0, 200, 255, 1, 2};
  const std::vector<std::uint8_t> boolean = {1, 0};
  // Deliberately not in alphabetical or dtype order: the data follows this order.
  const std::vector<TensorToWrite> tensors = {
      {"z.f16", TensorDType::f16, {3}, as_bytes_of(f16)},
      {"a.f32", TensorDType::f32, {2, 3}, as_bytes_of(f32)},
      {"m.i8", TensorDType::i8, {3}, as_bytes_of(i8)},
      {"bf16", TensorDType::bf16, {1, 2}, as_bytes_of(bf16)},
      {"f64", TensorDType::f64, {2}, as_bytes_of(f64)},
      {"i64", TensorDType::i64, {2, 1}, as_bytes_of(i64)},
      {"empty", TensorDType::f32, {4, 0}, {}},
      {"i32", TensorDType::i32, {2, 2}, as_bytes_of(i32)},
      {"i16", TensorDType::i16, {}, as_bytes_of(i16)},
      {"u8", TensorDType::u8, {5}, as_bytes_of(u8)},
      {"bool", TensorDType::boolean, {2}, as_bytes_of(boolean)},
      {"中文.名字", TensorDType::f32, {1}, std::as_bytes(std::span(f32).first(1))},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "héllo"}};
  funnel::write_safetensors(path, tensors, metadata);
  CHECK(funnel::testing::count_entries(dir.path()) == 1);  // no temporary left behind

  // The bytes on disk, checked without the reader: length, JSON, padding, data.
  const std::string raw = funnel::testing::read_bytes(path);
  REQUIRE(raw.size() >= 8);
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i)
    header_len = (header_len << 8U) | static_cast<unsigned char>(raw[static_cast<std::size_t>(i)]);
  CHECK((8 + header_len) % 8 == 0);
  const std::string header_text = raw.substr(8, header_len);
  const auto header = nlohmann::json::parse(header_text);
  CHECK(header_text.substr(0, 16) == "{\"__metadata__\":");
  CHECK(header["__metadata__"] == nlohmann::json{{"format", "pt"}, {"note", "héllo"}});
  std::string expected_data;
  for (const auto& t : tensors) {
    const auto& entry = header.at(t.name);
    CHECK(entry["dtype"] == std::string(funnel::to_string(t.dtype)));
    CHECK(entry["shape"].get<std::vector<std::size_t>>() == t.shape);
    CHECK(entry["data_offsets"] ==
          nlohmann::json::array({expected_data.size(), expected_data.size() + t.data.size()}));
    expected_data.append(reinterpret_cast<const char*>(t.data.data()), t.data.size());
  }
  CHECK(raw.substr(8 + header_len) == expected_data);

  // And through the reader.
  const auto file = SafetensorsFile::open(path);
  CHECK(file.metadata() == metadata);
  REQUIRE(file.tensors().size() == tensors.size());
  for (const auto& t : tensors) {
    const auto& info = file.at(t.name);
    CHECK(info.dtype == t.dtype);
    CHECK(info.shape == t.shape);
    const auto got = file.bytes(info);
    REQUIRE(got.size() == t.data.size());
    CHECK(std::equal(got.begin(), got.end(), t.data.begin()));
  }
  // tensors() is ordered by offset: the written order, with the empty tensor
  // first among those that share its offset.
  std::vector<std::string> order;
  for (const auto& info : file.tensors()) order.push_back(info.name);
  CHECK(order == std::vector<std::string>{"z.f16", "a.f32", "m.i8", "bf16", "f64", "i64", "empty",
                                          "i32", "i16", "u8", "bool", "中文.名字"});
  const auto f32_read = file.to_f32(file.at("a.f32"));
  CHECK(std::memcmp(f32_read.data(), f32.data(), f32.size() * sizeof(float)) == 0);
  CHECK(file.to_f32(file.at("z.f16")) == std::vector<float>{1.0F, -2.0F, 65504.0F});
  CHECK(file.to_f32(file.at("bf16")) == std::vector<float>{1.0F, 3.140625F});
  CHECK(file.to_f32(file.at("f64")) == std::vector<float>{0.1F, -2.5F});
  CHECK(file.at("i16").elements() == 1);

  // Rewriting replaces the file atomically.
  funnel::write_safetensors(path, std::span(tensors).first(1));
  const auto again = SafetensorsFile::open(path);
  CHECK(again.tensors().size() == 1);
  CHECK(again.metadata().empty());
  CHECK(funnel::testing::count_entries(dir.path()) == 1);
}

TEST_CASE("safetensors: write rejects inconsistent tensors and leaves no file", "[safetensors]") {
  const TempDir dir;
  const auto path = dir / "bad.safetensors";
  const std::vector<float> three = {1, 2, 3};
  const auto rejects = [&](const std::vector<TensorToWrite>& tensors, const char* what) {
    try {
      funnel::write_safetensors(path, tensors);
      FAIL("write_safetensors accepted: " << what);
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::invalid_argument);
      CHECK_THAT(e.what(), Catch::Contains(what));
    }
    CHECK(funnel::testing::count_entries(dir.path()) == 0);
  };
  rejects({{"w", TensorDType::f32, {2, 2}, as_bytes_of(three)}}, "need 16 bytes, data has 12");
  rejects({{"w", TensorDType::f16, {3}, as_bytes_of(three)}}, "need 6 bytes");
  rejects({{"w", TensorDType::f32, {3}, as_bytes_of(three)},
           {"w", TensorDType::f32, {3}, as_bytes_of(three)}},
          "twice");
  rejects({{"__metadata__", TensorDType::f32, {3}, as_bytes_of(three)}}, "reserved");
  rejects({{"", TensorDType::f32, {3}, as_bytes_of(three)}}, "empty name");
  rejects({{"bad\xff", TensorDType::f32, {3}, as_bytes_of(three)}}, "UTF-8");
  rejects({{"huge", TensorDType::f32, {std::size_t{1} << 62U, 8}, as_bytes_of(three)}},
          "overflows");

  try {
    funnel::write_safetensors(
        dir / "no-such-dir" / "x.safetensors",
        std::vector<TensorToWrite>{{"w", TensorDType::f32, {3}, as_bytes_of(three)}});
    FAIL("write into a missing directory did not throw");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::io);
  }
}

TEST_CASE("safetensors: open reports missing and unreadable files as io errors", "[safetensors]") {
  const TempDir dir;
  const auto missing = open_error(dir / "absent.safetensors");
  CHECK(missing.code() == ErrorCode::io);
  CHECK_THAT(missing.what(), Catch::Contains("absent.safetensors"));
  const auto directory = open_error(dir.path());
  CHECK(directory.code() == ErrorCode::io);
  CHECK_THAT(directory.what(), Catch::Contains("not a regular file"));
}

TEST_CASE("safetensors: malformed files are format errors naming the file and the problem",
          "[safetensors]") {
  struct Case {
    const char* label;
    std::string bytes;
    std::vector<std::string> says;  // substrings the message must contain
    ErrorCode code = ErrorCode::format;
  };
  const std::string ok_entry = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  const std::string eight(8, '\x01');
  const std::vector<Case> cases = {
      {"empty file", "", {"only 0 bytes"}},
      {"7 bytes", std::string(7, '\0'), {"only 7 bytes"}},
      {"header longer than the file",
       st_bytes("{}", "", 3),
       {"header length 3 exceeds the 2 bytes"}},
      {"header length over the limit",
       st_bytes("{}", "", std::uint64_t{1} << 40U),
       {"exceeds the limit of 100000000"}},
      {"truncated header", st_bytes(R"({"w":{"dtype":"F32")", ""), {"not valid JSON"}},
      {"empty header", st_bytes("", ""), {"not valid JSON"}},
      {"trailing garbage after the JSON", st_bytes("{} x", ""), {"not valid JSON"}},
      {"header is an array", st_bytes("[1,2]", ""), {"not a JSON object"}},
      {"header is not UTF-8", st_bytes("{\"w\xC3\x28\":{}}", ""), {"not valid UTF-8", "byte 3"}},
      {"entry not an object", st_bytes(R"({"w":[1]})", ""), {"'w'", "not a JSON object"}},
      {"no dtype",
       st_bytes(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", eight),
       {"'w'", "no \"dtype\""}},
      {"dtype not a string",
       st_bytes(R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", eight),
       {"'w'", "\"dtype\" is not a string"}},
      {"unknown dtype",
       st_bytes(R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", eight),
       {"'w'", "unknown dtype \"F33\""}},
      {"lower-case dtype",
       st_bytes(R"({"w":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", eight),
       {"unknown dtype \"f32\""}},
      {"dtype funnel does not read",
       st_bytes(R"({"w":{"dtype":"U16","shape":[4],"data_offsets":[0,8]}})", eight),
       {"'w'", "U16", "not supported"},
       ErrorCode::unsupported},
      {"no shape",
       st_bytes(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", eight),
       {"'w'", "no \"shape\""}},
      {"shape not an array",
       st_bytes(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", eight),
       {"'w'", "\"shape\" is not an array"}},
      {"negative dimension",
       st_bytes(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
       {"'w'", "\"shape\" holds -2, not a non-negative integer"}},
      {"fractional dimension",
       st_bytes(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", eight),
       {"'w'", "not a non-negative integer"}},
      {"string dimension",
       st_bytes(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", eight),
       {"'w'", "not a non-negative integer"}},
      {"dimension beyond 64 bits",
       st_bytes(R"({"w":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}})",
                eight),
       {"'w'", "not a non-negative integer"}},
      {"no data_offsets",
       st_bytes(R"({"w":{"dtype":"F32","shape":[2]}})", eight),
       {"'w'", "no \"data_offsets\""}},
      {"data_offsets not an array",
       st_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":{"a":0}}})", eight),
       {"'w'", "\"data_offsets\" is not an array"}},
      {"three data_offsets",
       st_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", eight),
       {"'w'", "has 3 values, expected 2"}},
      {"negative offset",
       st_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", eight),
       {"'w'", "\"data_offsets\" holds -8"}},
      {"end before begin",
       st_bytes(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight),
       {"'w'", "end 0 is before begin 8"}},
      {"size does not match shape",
       st_bytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
       {"'w'", "need 12 bytes", "hold 8"}},
      {"size does not match dtype",
       st_bytes(R"({"w":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}})", eight),
       {"'w'", "F16 need 4 bytes"}},
      {"shape product overflows",
       st_bytes(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})",
                eight),
       {"'w'", "overflows"}},
      {"offsets beyond the data (truncated)",
       st_bytes(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", eight),
       {"'w'", "beyond the data section of 8 bytes"}},
      {"overlapping tensors",
       st_bytes(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
           std::string(12, '\0')),
       {"'a' [0, 8)", "'b' [4, 12)", "overlap"}},
      {"same bytes twice",
       st_bytes(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})",
           eight),
       {"overlap"}},
      {"hole between tensors",
       st_bytes(
           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
           std::string(12, '\0')),
       {"bytes [4, 8) belong to no tensor", "'b'"}},
      {"hole at the start",
       st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight),
       {"bytes [0, 4) belong to no tensor"}},
      {"trailing bytes",
       st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight),
       {"bytes [4, 8) belong to no tensor"}},
      {"data but no tensors", st_bytes("{}", eight), {"bytes [0, 8) belong to no tensor"}},
      {"duplicate tensor names",
       st_bytes("{\"a\":{" + ok_entry +
                    "},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                std::string(16, '\0')),
       {"duplicate tensor name 'a'"}},
      {"duplicate field",
       st_bytes(R"({"a":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}})", eight),
       {"duplicate field 'dtype'"}},
      {"metadata not an object",
       st_bytes(R"({"__metadata__":[1]})", ""),
       {"__metadata__", "not an object"}},
      {"metadata value not a string",
       st_bytes(R"({"__metadata__":{"epoch":3}})", ""),
       {"__metadata__", "'epoch'", "not a string"}},
  };
  const TempDir dir;
  int index = 0;
  for (const auto& c : cases) {
    INFO(c.label);
    const auto path = dir / ("case" + std::to_string(index++) + ".safetensors");
    write_bytes(path, c.bytes);
    const auto e = open_error(path);
    CHECK(e.code() == c.code);
    CHECK_THAT(e.what(), Catch::Contains(path.filename().string()));
    for (const auto& s : c.says) CHECK_THAT(e.what(), Catch::Contains(s));
  }
}

TEST_CASE("safetensors: well-formed corner cases are accepted", "[safetensors]") {
  const TempDir dir;
  const auto path = dir / "corner.safetensors";
  SECTION("no tensors at all") {
    write_bytes(path, st_bytes("{}", ""));
    const auto file = SafetensorsFile::open(path);
    CHECK(file.tensors().empty());
    CHECK(file.metadata().empty());
    CHECK(file.file_bytes() == 10);
  }
  SECTION("whitespace padding, unknown fields, tensors listed out of offset order") {
    write_bytes(path,
                st_bytes(R"({ "b": {"dtype":"U8","shape":[2],"data_offsets":[2,4],"extra":true},)"
                         R"("a":{"data_offsets":[0,2],"shape":[1],"dtype":"F16"}}     )",
                         std::string("\x00\x3C\x07\x09", 4)));
    const auto file = SafetensorsFile::open(path);
    REQUIRE(file.tensors().size() == 2);
    CHECK(file.tensors()[0].name == "a");
    CHECK(file.tensors()[1].name == "b");
    CHECK(file.to_f32(file.at("a")) == std::vector<float>{1.0F});
    CHECK(values_of<std::uint8_t>(file.bytes(file.at("b"))) == std::vector<std::uint8_t>{7, 9});
  }
}

TEST_CASE("safetensors: a truncated copy of a good file is rejected", "[safetensors]") {
  const TempDir dir;
  const std::string good = funnel::testing::read_bytes(sample_path());
  REQUIRE(good.size() > 100);
  const auto path = dir / "cut.safetensors";
  write_bytes(path, good.substr(0, good.size() - 1));
  const auto e = open_error(path);
  CHECK(e.code() == ErrorCode::format);
  CHECK_THAT(e.what(), Catch::Contains("'empty'") || Catch::Contains("'scalar'"));
  write_bytes(path, good.substr(0, 100));  // inside the header
  CHECK_THAT(open_error(path).what(), Catch::Contains("exceeds"));
}

TEST_CASE("safetensors: moving a file keeps its views valid", "[safetensors]") {
  auto file = SafetensorsFile::open(sample_path());
  const auto view = file.f32_view(file.at("f32"));
  SafetensorsFile moved(std::move(file));
  CHECK(moved.f32_view(moved.at("f32")).data() == view.data());
  CHECK(view[1] == -2.5F);

  const TempDir dir;
  const std::vector<float> one = {4.0F};
  funnel::write_safetensors(
      dir / "one.safetensors",
      std::vector<TensorToWrite>{{"x", TensorDType::f32, {1}, as_bytes_of(one)}});
  auto other = SafetensorsFile::open(dir / "one.safetensors");
  other = std::move(moved);  // unmaps one.safetensors, takes over the sample's mapping
  CHECK(other.path() == sample_path());
  CHECK(other.find("x") == nullptr);
  CHECK(view[0] == 1.0F);
}

namespace {

// Resident file-backed pages of this process (RssFile in /proc/self/status), KiB.
double rss_file_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("RssFile:", 0) == 0) return std::stod(line.substr(8));
  }
  return -1.0;
}

}  // namespace

TEST_CASE("safetensors: drop_pages returns a tensor's pages and keeps its data readable",
          "[safetensors]") {
  const TempDir dir;
  // Two 8 MiB tensors around a small one, so that whole pages lie inside each.
  const std::size_t n = std::size_t{2} << 20;
  std::vector<float> a(n), b(n);
  for (std::size_t i = 0; i < n; ++i) {
    a[i] = static_cast<float>(i % 1000);
    b[i] = -static_cast<float>(i % 777);
  }
  const std::vector<float> mid = {1.0F, 2.0F, 3.0F};
  funnel::write_safetensors(
      dir / "big.safetensors",
      std::vector<TensorToWrite>{{"a", TensorDType::f32, {n}, as_bytes_of(a)},
                                 {"mid", TensorDType::f32, {3}, as_bytes_of(mid)},
                                 {"b", TensorDType::f32, {n}, as_bytes_of(b)}});
  const auto file = SafetensorsFile::open(dir / "big.safetensors");
  const auto view_a = file.f32_view(file.at("a"));
  const auto view_b = file.f32_view(file.at("b"));
  double sum = 0.0;
  for (const float v : view_a) sum += v;  // touch every page
  for (const float v : view_b) sum += v;
  CHECK(sum != 0.0);
  const double before = rss_file_kib();
  REQUIRE(before >= 0.0);
  file.drop_pages(file.at("a"));
  const double after = rss_file_kib();
  INFO("RssFile " << before << " KiB -> " << after << " KiB");
  CHECK(before - after >= 7.0 * 1024);  // nearly all of a's 8 MiB
  CHECK(before - after <= 8.0 * 1024 + 8);
  // Still readable, with the same values; the neighbours are intact.
  for (std::size_t i = 0; i < n; i += 4099) CHECK(view_a[i] == a[i]);
  CHECK(view_a[n - 1] == a[n - 1]);
  CHECK(file.f32_view(file.at("mid"))[2] == 3.0F);
  CHECK(view_b[n - 1] == b[n - 1]);
  file.drop_pages(file.at("mid"));  // smaller than a page: nothing to drop, no effect
  CHECK(file.f32_view(file.at("mid"))[0] == 1.0F);
  // drop_all_pages lets go of b too; everything stays readable.
  const double before_all = rss_file_kib();
  file.drop_all_pages();
  const double after_all = rss_file_kib();
  INFO("RssFile " << before_all << " KiB -> " << after_all << " KiB after drop_all_pages");
  CHECK(before_all - after_all >= 7.0 * 1024);  // nearly all of b's 8 MiB
  CHECK(view_b[0] == b[0]);
  CHECK(view_b[n - 1] == b[n - 1]);
  CHECK(view_a[n / 2] == a[n / 2]);
  CHECK(file.f32_view(file.at("mid"))[1] == 2.0F);
}

TEST_CASE("safetensors: a huge-page mapping reads the same bytes, 2 MiB-aligned", "[safetensors]") {
  const TempDir dir;
  // 12 MiB of data after a tensor of 8 bytes.
  const std::size_t n = std::size_t{3} << 20;
  std::vector<float> a(n);
  for (std::size_t i = 0; i < n; ++i) a[i] = static_cast<float>(i % 4093) - 2000.0F;
  const std::vector<std::int16_t> odd = {1, -2, 3, -4};
  funnel::write_safetensors(
      dir / "big.safetensors",
      std::vector<TensorToWrite>{{"odd", TensorDType::i16, {4}, as_bytes_of(odd)},
                                 {"a", TensorDType::f32, {n}, as_bytes_of(a)}});
  const auto plain = SafetensorsFile::open(dir / "big.safetensors");
  const auto huge = SafetensorsFile::open(dir / "big.safetensors", {.huge_pages = true});
  REQUIRE(huge.tensors().size() == plain.tensors().size());
  for (std::size_t t = 0; t < plain.tensors().size(); ++t) {
    const auto& info = plain.tensors()[t];
    INFO(info.name);
    CHECK(huge.tensors()[t].name == info.name);
    const auto x = plain.bytes(info);
    const auto y = huge.bytes(huge.tensors()[t]);
    REQUIRE(x.size() == y.size());
    CHECK(std::memcmp(x.data(), y.data(), x.size()) == 0);
  }
  // The file starts on a 2 MiB boundary: data start = 8 + header length.
  std::uint64_t header = 0;
  std::memcpy(&header, funnel::testing::read_bytes(dir / "big.safetensors").data(), 8);
  const auto& first = huge.at("odd");
  const auto file_start =
      reinterpret_cast<std::uintptr_t>(huge.bytes(first).data()) - first.offset - 8 - header;
  CHECK(file_start % (std::size_t{2} << 20) == 0);
  // Opening and closing leaves no address space behind (the 2 MiB-aligned
  // mapping is carved out of a larger reservation).
  const auto vm_size_kib = [] {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmSize:", 0) == 0) return std::stod(line.substr(7));
    }
    return -1.0;
  };
  const double vm_before = vm_size_kib();
  for (int i = 0; i < 200; ++i) {
    (void)SafetensorsFile::open(dir / "big.safetensors", {.huge_pages = true});
  }
  INFO("VmSize " << vm_before << " KiB -> " << vm_size_kib() << " KiB");
  CHECK(vm_size_kib() - vm_before < 16.0 * 1024);
  // drop_pages works on it as on any mapping.
  huge.drop_pages(huge.at("a"));
  const auto view = huge.f32_view(huge.at("a"));
  for (std::size_t i = 0; i < n; i += 4099) CHECK(view[i] == a[i]);
  CHECK(view[n - 1] == a[n - 1]);
}

TEST_CASE("safetensors: the committed BERT fixtures are valid checkpoints", "[safetensors]") {
  const auto root = std::filesystem::path(FUNNEL_TEST_DATA_DIR) / "bert";
  struct Expect {
    const char* dir;
    const char* prefix;
    TensorDType dtype;
    std::size_t vocab, hidden, tensors;
  };
  // 5 embedding tensors + 16 per layer x 2 layers, plus the extras the README lists.
  const Expect expected[] = {
      {"tiny_f32_cls", "bert.", TensorDType::f32, 400, 32, 37 + 2},
      {"tiny_f16_mean_st", "", TensorDType::f16, 420, 48, 37},
      {"tiny_bf16_plain", "bert.", TensorDType::bf16, 360, 64, 37 + 1},
  };
  for (const auto& x : expected) {
    INFO(x.dir);
    const auto file = SafetensorsFile::open(root / x.dir / "model.safetensors");
    CHECK(file.tensors().size() == x.tensors);
    const auto& word = file.at(std::string(x.prefix) + "embeddings.word_embeddings.weight");
    CHECK(word.dtype == x.dtype);
    CHECK(word.shape == std::vector<std::size_t>{x.vocab, x.hidden});
    const auto& ffn = file.at(std::string(x.prefix) + "encoder.layer.1.intermediate.dense.weight");
    CHECK(ffn.shape == std::vector<std::size_t>{4 * x.hidden, x.hidden});
    // LayerNorm gains are drawn around 1: a decoding error would show here.
    const auto gain = file.to_f32(file.at(std::string(x.prefix) + "embeddings.LayerNorm.weight"));
    REQUIRE(gain.size() == x.hidden);
    for (const float g : gain) CHECK((g > 0.5F && g < 1.5F));
    CHECK(file.metadata().at("format") == "pt");
  }
}
