// SPDX-License-Identifier: Apache-2.0
#include "funnel/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include <nlohmann/json.hpp>

#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"
#include "internal/huge_pages.hpp"
#include "internal/utf8.hpp"

namespace funnel {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; funnel maps it without byte swapping");

// The reference implementation refuses larger headers; so do we, so that a
// corrupt length cannot make us parse gigabytes of tensor data as JSON.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
constexpr std::size_t kLengthBytes = 8;
constexpr std::string_view kMetadataKey = "__metadata__";

struct DTypeName {
  std::string_view name;
  TensorDType dtype;
};
constexpr DTypeName kDTypeNames[] = {
    {"F32", TensorDType::f32},      {"F16", TensorDType::f16}, {"BF16", TensorDType::bf16},
    {"F64", TensorDType::f64},      {"I64", TensorDType::i64}, {"I32", TensorDType::i32},
    {"I16", TensorDType::i16},      {"I8", TensorDType::i8},   {"U8", TensorDType::u8},
    {"BOOL", TensorDType::boolean},
};
// Defined by safetensors but not read by funnel.
constexpr std::string_view kUnsupportedDTypes[] = {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2"};

std::optional<TensorDType> parse_dtype(std::string_view s) {
  for (const auto& d : kDTypeNames)
    if (d.name == s) return d.dtype;
  return std::nullopt;
}

// a * b, or nullopt on overflow.
std::optional<std::size_t> checked_mul(std::size_t a, std::size_t b) {
  std::size_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// Rounds to nearest like the hardware does, but spelled out beyond float's
// range, where a plain conversion is undefined in C++.
float narrow_to_float(double v) {
  constexpr double kMax = std::numeric_limits<float>::max();
  // Halfway between FLT_MAX and the next power of two: from here on, round to
  // nearest (ties to even; FLT_MAX's significand is odd) gives infinity.
  constexpr double kOverflow = 0x1.ffffffp+127;
  if (std::isnan(v) || std::abs(v) <= kMax) return static_cast<float>(v);
  const float magnitude = std::abs(v) >= kOverflow ? std::numeric_limits<float>::infinity()
                                                   : std::numeric_limits<float>::max();
  return v < 0 ? -magnitude : magnitude;
}

// Read-only mapping of a whole file, unmapped on destruction.
class Mapping {
 public:
  Mapping(const std::filesystem::path& path, const SafetensorsOpenOptions& options) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      detail::fail(ErrorCode::io, "cannot open safetensors file '", path.string(),
                   "': ", std::strerror(errno));
    struct FdCloser {
      int fd;
      ~FdCloser() { (void)::close(fd); }
    } closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0)
      detail::fail(ErrorCode::io, "cannot stat '", path.string(), "': ", std::strerror(errno));
    if (!S_ISREG(st.st_mode))
      detail::fail(ErrorCode::io, "'", path.string(), "' is not a regular file");
    size_ = static_cast<std::size_t>(st.st_size);
    // An empty file cannot be mapped; the caller reports it as too short.
    if (size_ == 0) return;
    // Huge pages: cached pages of the file that no process maps are dropped,
    // so that the first reads through this mapping (advised before any read)
    // bring the file back in 2 MiB folios, which the kernel maps whole.
    if (options.huge_pages) (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    void* addr = options.huge_pages ? map_aligned(fd) : MAP_FAILED;
    if (addr == MAP_FAILED) addr = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED)
      detail::fail(ErrorCode::io, "cannot map '", path.string(), "': ", std::strerror(errno));
    addr_ = static_cast<const std::byte*>(addr);
    if (options.huge_pages) detail::advise_huge_pages(addr_, size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { unmap(addr_, size_); }

  // The file mapped at a 2 MiB-aligned address (a huge page of the file can
  // only be mapped whole where address and file offset agree modulo 2 MiB),
  // or MAP_FAILED.
  [[nodiscard]] void* map_aligned(int fd) const noexcept {
    void* block = detail::map_aligned_block(size_, PROT_NONE);
    if (block == nullptr) return MAP_FAILED;
    void* addr = ::mmap(block, size_, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
    if (addr == MAP_FAILED) (void)::munmap(block, size_);
    return addr;
  }

  static void unmap(const std::byte* addr, std::size_t size) noexcept {
    // munmap takes a non-const pointer; the mapping was never written through.
    if (addr != nullptr) (void)::munmap(const_cast<std::byte*>(addr), size);
  }
  // Hands ownership of the mapping to the caller.
  std::pair<const std::byte*, std::size_t> release() noexcept {
    return {std::exchange(addr_, nullptr), std::exchange(size_, 0)};
  }
  [[nodiscard]] const std::byte* data() const noexcept { return addr_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }

 private:
  const std::byte* addr_ = nullptr;
  std::size_t size_ = 0;
};

// Parses a safetensors header, checking everything the format requires.
class HeaderParser {
 public:
  HeaderParser(const std::filesystem::path& path, std::size_t data_bytes)
      : path_(path), data_bytes_(data_bytes) {}

  [[noreturn]] void bad(const std::string& what) const {
    detail::fail(ErrorCode::format, "safetensors file '", path_.string(), "': ", what);
  }
  [[noreturn]] void bad_tensor(const std::string& name, const std::string& what) const {
    detail::fail(ErrorCode::format, "safetensors file '", path_.string(), "', tensor '", name,
                 "': ", what);
  }

  void parse(std::string_view text, std::vector<TensorInfo>& tensors,
             std::map<std::string, std::string>& metadata) const {
    if (const auto pos = detail::find_invalid_utf8(text))
      bad(detail::cat("header is not valid UTF-8 (byte ", *pos, " of the header)"));
    // nlohmann::json keeps the last of repeated keys silently; the callback
    // sees every key, so repeated names are caught here (a tensor name twice
    // is ambiguous, a field twice is malformed).
    std::vector<std::set<std::string>> keys_at_depth;
    std::optional<std::string> duplicate;
    const auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event,
                              nlohmann::json& parsed) {
      using Event = nlohmann::json::parse_event_t;
      if (event == Event::object_start) {
        keys_at_depth.emplace_back();
      } else if (event == Event::object_end) {
        if (!keys_at_depth.empty()) keys_at_depth.pop_back();
      } else if (event == Event::key && !keys_at_depth.empty()) {
        auto key = parsed.get<std::string>();
        if (!keys_at_depth.back().insert(key).second && !duplicate) {
          duplicate = keys_at_depth.size() == 1 ? detail::cat("duplicate tensor name '", key, "'")
                                                : detail::cat("duplicate field '", key, "'");
        }
      }
      return true;
    };
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text.begin(), text.end(), callback);
    } catch (const nlohmann::json::exception& e) {
      bad(detail::cat("header is not valid JSON: ", e.what()));
    }
    if (duplicate) bad("header has a " + *duplicate);
    if (!header.is_object()) bad("header is not a JSON object");

    for (const auto& item : header.items()) {
      if (item.key() == kMetadataKey) {
        parse_metadata(item.value(), metadata);
        continue;
      }
      tensors.push_back(parse_tensor(item.key(), item.value()));
    }
    check_coverage(tensors);
  }

 private:
  void parse_metadata(const nlohmann::json& entry,
                      std::map<std::string, std::string>& metadata) const {
    if (!entry.is_object()) bad("\"__metadata__\" is not an object");
    for (const auto& item : entry.items()) {
      if (!item.value().is_string())
        bad(detail::cat("\"__metadata__\" value '", item.key(), "' is not a string"));
      metadata.emplace(item.key(), item.value().get<std::string>());
    }
  }

  std::vector<std::size_t> parse_uints(const std::string& name, const nlohmann::json& entry,
                                       const char* field) const {
    const auto it = entry.find(field);
    if (it == entry.end()) bad_tensor(name, detail::cat("no \"", field, "\""));
    if (!it->is_array()) bad_tensor(name, detail::cat("\"", field, "\" is not an array"));
    std::vector<std::size_t> out;
    out.reserve(it->size());
    for (const auto& v : *it) {
      // nlohmann parses non-negative integer literals as unsigned; negative
      // ones, fractions, exponents and values beyond 64 bits are other types.
      if (!v.is_number_unsigned())
        bad_tensor(name,
                   detail::cat("\"", field, "\" holds ", v.dump(), ", not a non-negative integer"));
      const auto u = v.get<std::uint64_t>();
      if (u > std::numeric_limits<std::size_t>::max())
        bad_tensor(name, detail::cat("\"", field, "\" value ", u, " is too large"));
      out.push_back(static_cast<std::size_t>(u));
    }
    return out;
  }

  TensorInfo parse_tensor(const std::string& name, const nlohmann::json& entry) const {
    if (!entry.is_object()) bad_tensor(name, "entry is not a JSON object");
    TensorInfo t;
    t.name = name;

    const auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end()) bad_tensor(name, "no \"dtype\"");
    if (!dtype_it->is_string()) bad_tensor(name, "\"dtype\" is not a string");
    const auto dtype_name = dtype_it->get<std::string>();
    const auto dtype = parse_dtype(dtype_name);
    if (!dtype) {
      for (const auto u : kUnsupportedDTypes)
        if (u == dtype_name)
          detail::fail(ErrorCode::unsupported, "safetensors file '", path_.string(), "', tensor '",
                       name, "': dtype ", dtype_name, " is not supported by funnel");
      bad_tensor(name, detail::cat("unknown dtype \"", dtype_name, "\""));
    }
    t.dtype = *dtype;

    t.shape = parse_uints(name, entry, "shape");
    const auto offsets = parse_uints(name, entry, "data_offsets");
    if (offsets.size() != 2)
      bad_tensor(name, detail::cat("\"data_offsets\" has ", offsets.size(),
                                   " values, expected 2 [begin, end]"));
    const std::size_t begin = offsets[0];
    const std::size_t end = offsets[1];
    if (end < begin)
      bad_tensor(name, detail::cat("data_offsets end ", end, " is before begin ", begin));
    if (end > data_bytes_)
      bad_tensor(name, detail::cat("data_offsets [", begin, ", ", end,
                                   "] reach beyond the data section of ", data_bytes_,
                                   " bytes (truncated file?)"));

    std::optional<std::size_t> expected = dtype_size(t.dtype);
    for (const auto d : t.shape)
      if (expected) expected = checked_mul(*expected, d);
    if (!expected) bad_tensor(name, "shape's byte size overflows");
    if (*expected != end - begin)
      bad_tensor(name,
                 detail::cat("shape and dtype ", dtype_name, " need ", *expected,
                             " bytes, data_offsets [", begin, ", ", end, "] hold ", end - begin));
    t.offset = begin;
    t.bytes = end - begin;
    return t;
  }

  // The format requires the tensors to tile the data section exactly.
  void check_coverage(std::vector<TensorInfo>& tensors) const {
    std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
      const auto ka = std::tuple(a.offset, a.offset + a.bytes, std::string_view(a.name));
      const auto kb = std::tuple(b.offset, b.offset + b.bytes, std::string_view(b.name));
      return ka < kb;
    });
    std::size_t covered = 0;  // data section bytes [0, covered) belong to tensors so far
    const TensorInfo* last = nullptr;
    for (const auto& t : tensors) {
      if (t.offset < covered) {
        assert(last != nullptr);
        bad(detail::cat("tensors '", last->name, "' [", last->offset, ", ",
                        last->offset + last->bytes, ") and '", t.name, "' [", t.offset, ", ",
                        t.offset + t.bytes, ") overlap"));
      }
      if (t.offset > covered)
        bad(detail::cat("data section bytes [", covered, ", ", t.offset,
                        ") belong to no tensor (next is '", t.name, "')"));
      covered = t.offset + t.bytes;
      if (t.bytes > 0) last = &t;
    }
    if (covered != data_bytes_)
      bad(detail::cat("data section bytes [", covered, ", ", data_bytes_, ") belong to no tensor"));
  }

  const std::filesystem::path& path_;
  std::size_t data_bytes_;
};

}  // namespace

std::string_view to_string(TensorDType dtype) noexcept {
  for (const auto& d : kDTypeNames)
    if (d.dtype == dtype) return d.name;
  return "?";
}

std::size_t dtype_size(TensorDType dtype) noexcept {
  switch (dtype) {
    case TensorDType::f64:
    case TensorDType::i64: return 8;
    case TensorDType::f32:
    case TensorDType::i32: return 4;
    case TensorDType::f16:
    case TensorDType::bf16:
    case TensorDType::i16: return 2;
    case TensorDType::i8:
    case TensorDType::u8:
    case TensorDType::boolean: return 1;
  }
  return 0;
}

float half_to_float(std::uint16_t bits) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000U) << 16U;
  const std::uint32_t exponent = (bits >> 10U) & 0x1FU;
  const std::uint32_t mantissa = bits & 0x3FFU;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24F;
    return sign != 0 ? -magnitude : magnitude;
  }
  if (exponent == 0x1F)  // infinity or NaN (payload kept)
    return std::bit_cast<float>(sign | 0x7F800000U | (mantissa << 13U));
  // Rebias the exponent from 15 to 127.
  return std::bit_cast<float>(sign | ((exponent + 112U) << 23U) | (mantissa << 13U));
}

float bfloat16_to_float(std::uint16_t bits) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16U);
}

std::size_t TensorInfo::elements() const {
  std::size_t n = 1;
  for (const auto d : shape) n *= d;
  return n;
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path,
                                      const SafetensorsOpenOptions& options) {
  Mapping mapping(path, options);
  const auto bad = [&](const std::string& what) {
    detail::fail(ErrorCode::format, "safetensors file '", path.string(), "': ", what);
  };
  if (mapping.size() < kLengthBytes)
    bad(detail::cat("only ", mapping.size(), " bytes; a safetensors file starts with an ",
                    kLengthBytes, "-byte header length"));
  std::uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, mapping.data(), sizeof header_bytes);
  if (header_bytes > kMaxHeaderBytes)
    bad(detail::cat("header length ", header_bytes, " exceeds the limit of ", kMaxHeaderBytes,
                    " bytes"));
  if (header_bytes > mapping.size() - kLengthBytes)
    bad(detail::cat("header length ", header_bytes, " exceeds the ", mapping.size() - kLengthBytes,
                    " bytes that follow it (truncated file?)"));

  SafetensorsFile file;
  file.path_ = path;
  const std::size_t data_start = kLengthBytes + static_cast<std::size_t>(header_bytes);
  const std::string_view text(reinterpret_cast<const char*>(mapping.data()) + kLengthBytes,
                              static_cast<std::size_t>(header_bytes));
  HeaderParser(path, mapping.size() - data_start).parse(text, file.tensors_, file.metadata_);
  for (std::size_t i = 0; i < file.tensors_.size(); ++i)
    file.by_name_.emplace(file.tensors_[i].name, i);

  std::tie(file.map_, file.size_) = mapping.release();
  file.data_ = file.map_ == nullptr ? nullptr : file.map_ + data_start;
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      map_(std::exchange(other.map_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      data_(std::exchange(other.data_, nullptr)),
      tensors_(std::move(other.tensors_)),
      by_name_(std::move(other.by_name_)),
      metadata_(std::move(other.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    size_ = std::exchange(other.size_, 0);
    data_ = std::exchange(other.data_, nullptr);
    tensors_ = std::move(other.tensors_);
    by_name_ = std::move(other.by_name_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { release(); }

void SafetensorsFile::release() noexcept {
  Mapping::unmap(map_, size_);
  map_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const noexcept {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::at(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (t == nullptr)
    detail::fail(ErrorCode::format, "missing tensor ", name, " in ", path_.string());
  return *t;
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& t) const noexcept {
  assert(t.offset + t.bytes <= size_);
  if (t.bytes == 0) return {};
  return {data_ + t.offset, t.bytes};
}

void SafetensorsFile::drop_pages(const TensorInfo& t) const noexcept {
  const std::span<const std::byte> b = bytes(t);
  if (b.empty()) return;
  const long page_size = ::sysconf(_SC_PAGESIZE);
  if (page_size <= 0) return;
  const auto page = static_cast<std::size_t>(page_size);
  // Whole pages inside the tensor only: a page shared with a neighbour stays.
  const std::size_t from = static_cast<std::size_t>(b.data() - map_);
  const std::size_t first = (from + page - 1) / page * page;
  const std::size_t last = (from + b.size()) / page * page;
  if (last <= first) return;
  // madvise takes a non-const pointer; MADV_DONTNEED on a read-only private
  // file mapping only unmaps the pages (the next read maps them again from
  // the file), it never writes.
  (void)::madvise(const_cast<std::byte*>(map_ + first), last - first, MADV_DONTNEED);
}

void SafetensorsFile::drop_all_pages() const noexcept {
  if (map_ == nullptr || size_ == 0) return;
  // As in drop_pages: on a read-only private file mapping MADV_DONTNEED only
  // unmaps.
  (void)::madvise(const_cast<std::byte*>(map_), size_, MADV_DONTNEED);
}

void SafetensorsFile::advise_sparse(const TensorInfo& t) const noexcept {
  const std::span<const std::byte> b = bytes(t);
  if (!b.empty()) detail::advise_huge_pages(b.data(), b.size(), false);
}

void SafetensorsFile::populate(const TensorInfo& t) const noexcept {
  const std::span<const std::byte> b = bytes(t);
  const long page_size = ::sysconf(_SC_PAGESIZE);
  if (b.empty() || page_size <= 0) return;
  const auto page = static_cast<std::uintptr_t>(page_size);
  const auto begin = reinterpret_cast<std::uintptr_t>(b.data()) / page * page;
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(b.data()) + b.size();
  auto* addr = reinterpret_cast<void*>(begin);
  // Both only read (fault in) pages of a read-only mapping.
#ifdef MADV_POPULATE_READ
  if (::madvise(addr, end - begin, MADV_POPULATE_READ) == 0) return;
#endif
  (void)::madvise(addr, end - begin, MADV_WILLNEED);
}

std::span<const float> SafetensorsFile::f32_view(const TensorInfo& t) const {
  if (t.dtype != TensorDType::f32)
    detail::fail(ErrorCode::format, "tensor '", t.name, "' in '", path_.string(), "' is ",
                 to_string(t.dtype), ", expected F32");
  const auto raw = bytes(t);
  if (raw.empty()) return {};
  if (reinterpret_cast<std::uintptr_t>(raw.data()) % alignof(float) != 0)
    detail::fail(ErrorCode::format, "tensor '", t.name, "' in '", path_.string(),
                 "' is not 4-byte aligned (data offset ", t.offset,
                 "); read it with to_f32 instead");
  // The mapping holds the floats' object representation; reading it through
  // float is how every safetensors reader works.
  return {reinterpret_cast<const float*>(raw.data()), t.elements()};
}

std::vector<float> SafetensorsFile::to_f32(const TensorInfo& t) const {
  const auto raw = bytes(t);
  const std::size_t n = t.elements();
  std::vector<float> out(n);
  // memcpy per element: the data may sit at any offset in the file.
  switch (t.dtype) {
    case TensorDType::f32:
      if (n > 0) std::memcpy(out.data(), raw.data(), n * sizeof(float));
      break;
    case TensorDType::f16:
    case TensorDType::bf16: {
      const bool is_half = t.dtype == TensorDType::f16;
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t bits = 0;
        std::memcpy(&bits, raw.data() + 2 * i, sizeof bits);
        out[i] = is_half ? half_to_float(bits) : bfloat16_to_float(bits);
      }
      break;
    }
    case TensorDType::f64:
      for (std::size_t i = 0; i < n; ++i) {
        double v = 0;
        std::memcpy(&v, raw.data() + 8 * i, sizeof v);
        out[i] = narrow_to_float(v);
      }
      break;
    default:
      detail::fail(ErrorCode::format, "tensor '", t.name, "' in '", path_.string(), "' is ",
                   to_string(t.dtype), ", expected a floating-point dtype (F32, F16, BF16, F64)");
  }
  return out;
}

void write_safetensors(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the header in the caller's order (readers do not care,
  // people reading the header do).
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& meta = header[std::string(kMetadataKey)];
    meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) {
      detail::require(!detail::find_invalid_utf8(key) && !detail::find_invalid_utf8(value),
                      "write_safetensors '", path.string(), "': metadata entry '", key,
                      "' is not valid UTF-8");
      meta[key] = value;
    }
  }
  std::set<std::string_view> names;
  std::size_t offset = 0;
  for (const auto& t : tensors) {
    const auto where = [&] {
      return detail::cat("write_safetensors '", path.string(), "': tensor '", t.name, "'");
    };
    detail::require(!t.name.empty(), where(), ": empty name");
    detail::require(!detail::find_invalid_utf8(t.name), where(), ": name is not valid UTF-8");
    detail::require(t.name != kMetadataKey, where(), ": the name is reserved");
    detail::require(names.insert(t.name).second, where(), ": name appears twice");
    std::optional<std::size_t> expected = dtype_size(t.dtype);
    for (const auto d : t.shape)
      if (expected) expected = checked_mul(*expected, d);
    detail::require(expected.has_value(), where(), ": shape's byte size overflows");
    detail::require(*expected == t.data.size(), where(), ": shape and dtype ", to_string(t.dtype),
                    " need ", *expected, " bytes, data has ", t.data.size());
    header[t.name] = {{"dtype", std::string(to_string(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  std::string text = header.dump();
  // Spaces after the JSON are allowed; they make the data section start 8-aligned.
  text.append((8 - (kLengthBytes + text.size()) % 8) % 8, ' ');
  const std::uint64_t header_bytes = text.size();

  detail::write_file_atomic(path, [&](std::ostream& out) {
    char length[kLengthBytes];
    std::memcpy(length, &header_bytes, sizeof length);
    out.write(length, sizeof length);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : tensors)
      out.write(reinterpret_cast<const char*>(t.data.data()),
                static_cast<std::streamsize>(t.data.size()));
  });
}

}  // namespace funnel
