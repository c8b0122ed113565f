// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// safetensors files: reading (memory-mapped, validated) and writing (atomic).
///
/// The format: an 8-byte little-endian unsigned header length N, then N bytes
/// of UTF-8 JSON — an object mapping each tensor name to {"dtype": "F32",
/// "shape": [d0, d1, ...], "data_offsets": [begin, end]} plus an optional
/// "__metadata__" object of string values — then the data section. Offsets
/// are relative to the start of the data section, tensors are row-major and
/// little-endian, and the tensors must cover the data section exactly (no
/// holes, no overlaps). This is the layout Hugging Face checkpoints use
/// (model.safetensors).
///
/// Ownership: a SafetensorsFile owns its read-only mapping; every span it
/// returns points into that mapping and stays valid while the object that
/// holds the mapping lives (moving the object moves the mapping, and the
/// spans stay valid). Threading: all const methods may be called from many
/// threads at once.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace funnel {

/// Element types of safetensors tensors that funnel reads and writes.
/// (safetensors also defines U16, U32, U64 and F8 types; a file holding one
/// of those is rejected with Error(unsupported) naming the tensor.)
enum class TensorDType { f32, f16, bf16, f64, i64, i32, i16, i8, u8, boolean };

/// The dtype's name as safetensors spells it: "F32", "F16", "BF16", "F64",
/// "I64", "I32", "I16", "I8", "U8", "BOOL".
std::string_view to_string(TensorDType dtype) noexcept;

/// Bytes per element (BOOL is one byte).
std::size_t dtype_size(TensorDType dtype) noexcept;

/// IEEE 754 binary16 (F16) bits to float, exactly (subnormals, infinities
/// and NaNs included).
float half_to_float(std::uint16_t bits) noexcept;

/// bfloat16 (BF16) bits to float, exactly (the top half of a float's bits).
float bfloat16_to_float(std::uint16_t bits) noexcept;

/// One tensor's entry in a safetensors header.
struct TensorInfo {
  std::string name;  ///< the header key, e.g. "bert.embeddings.word_embeddings.weight"
  TensorDType dtype = TensorDType::f32;  ///< element type
  std::vector<std::size_t> shape;        ///< dimensions, outermost first; empty for a scalar
  std::size_t offset = 0;                ///< byte offset of the data within the data section
  std::size_t bytes = 0;                 ///< byte size of the data (elements() * dtype_size(dtype))

  /// Product of the dimensions (1 for a scalar, 0 when any dimension is 0).
  [[nodiscard]] std::size_t elements() const;
};

/// How SafetensorsFile::open maps a file.
struct SafetensorsOpenOptions {
  /// Map the file with 2 MiB pages where the kernel allows it, for callers
  /// that stream tensors in place (a model's weights on every call): one
  /// page-table entry per 2 MiB instead of 512, about 20% faster sweeps on a
  /// virtual machine. open() drops the file's cached pages that no process
  /// maps (posix_fadvise POSIX_FADV_DONTNEED), maps the file 2 MiB-aligned
  /// and advises MADV_HUGEPAGE before any read, so the kernel reads the file
  /// back into 2 MiB page-cache folios as it is touched; the cost is reading
  /// the file from storage once more. Needs Linux transparent huge pages
  /// ("madvise" or "always") and a file system that caches large folios
  /// (ext4 and XFS on recent kernels); elsewhere the file gets ordinary
  /// pages. Never changes the bytes read.
  bool huge_pages = false;
};

/// A safetensors file, memory-mapped read-only and validated on open.
/// Movable, not copyable.
class SafetensorsFile {
 public:
  /// Maps and validates a file.
  /// @throws Error(io) when the file is missing, not a regular file, or
  ///         cannot be read or mapped.
  /// @throws Error(format) naming the file (and the tensor, where there is
  ///         one) when it is malformed: shorter than 8 bytes; a header length
  ///         beyond the file or above 100,000,000 bytes; a header that is not
  ///         UTF-8, not JSON or not an object; an entry that is not an object
  ///         or lacks dtype, shape or data_offsets; an unknown dtype; shape or
  ///         data_offsets that are not arrays of non-negative integers
  ///         (data_offsets of exactly two); end < begin; a byte size other than
  ///         product(shape) * dtype size (or one that overflows); offsets
  ///         beyond the data section; overlapping tensors, or bytes of the data
  ///         section that no tensor covers; duplicate names; a "__metadata__"
  ///         that is not an object of strings.
  /// @throws Error(unsupported) for a dtype that safetensors defines but
  ///         funnel does not read (U16, U32, U64, F8_E4M3, F8_E5M2).
  static SafetensorsFile open(const std::filesystem::path& path,
                              const SafetensorsOpenOptions& options = {});

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  /// Every tensor, ordered by data offset (ties: zero-sized tensors first,
  /// then by name).
  [[nodiscard]] const std::vector<TensorInfo>& tensors() const noexcept { return tensors_; }

  /// The tensor with this name, or nullptr.
  [[nodiscard]] const TensorInfo* find(std::string_view name) const noexcept;

  /// The tensor with this name.
  /// @throws Error(format) "missing tensor <name> in <file>".
  [[nodiscard]] const TensorInfo& at(std::string_view name) const;

  /// The tensor's raw little-endian bytes in the mapping (zero-copy).
  /// @param[in] t an entry of tensors() of this file
  [[nodiscard]] std::span<const std::byte> bytes(const TensorInfo& t) const noexcept;

  /// Drops the tensor's pages from the process's resident set, for a caller
  /// that copied the data and no longer reads the mapping: the memory is
  /// returned at once instead of staying resident until the file is closed.
  /// The bytes stay readable (a later read maps them again from the file).
  /// Pages the tensor shares with a neighbour are kept. Only a hint: errors
  /// are ignored.
  /// @param[in] t an entry of tensors() of this file
  void drop_pages(const TensorInfo& t) const noexcept;

  /// Drops every page of the mapping from the process's resident set, for a
  /// caller that has copied what it needs: drop_pages() keeps the pages a
  /// tensor shares with its neighbours, and reading a small tensor (a bias)
  /// after its neighbours were dropped maps its page again, a whole 2 MiB
  /// page in a huge_pages mapping. The bytes stay readable (a later read maps
  /// them again). Only a hint: errors are ignored.
  void drop_all_pages() const noexcept;

  /// Hints that the tensor is read sparsely (e.g. rows of an embedding
  /// table): the whole 2 MiB pages inside it keep ordinary pages
  /// (MADV_NOHUGEPAGE), so that a read brings in 4 KiB rather than 2 MiB.
  /// Matters only for a file opened with huge_pages, and only before the
  /// tensor's pages are first read. Only a hint: errors are ignored.
  /// @param[in] t an entry of tensors() of this file
  void advise_sparse(const TensorInfo& t) const noexcept;

  /// Reads the tensor's pages into memory now (MADV_POPULATE_READ, else
  /// MADV_WILLNEED), so that the first calls that stream it do not wait for
  /// storage. Only a hint: errors are ignored.
  /// @param[in] t an entry of tensors() of this file
  void populate(const TensorInfo& t) const noexcept;

  /// An F32 tensor as floats in the mapping (zero-copy), elements() of them.
  /// @throws Error(format) naming the tensor and file when its dtype is not
  ///         F32 or its data is not 4-byte aligned in the file.
  [[nodiscard]] std::span<const float> f32_view(const TensorInfo& t) const;

  /// A floating-point tensor (F32, F16, BF16, F64) converted to float (a copy,
  /// elements() values; F64 is rounded to nearest).
  /// @throws Error(format) naming the tensor and file for an integer or BOOL tensor.
  [[nodiscard]] std::vector<float> to_f32(const TensorInfo& t) const;

  /// The "__metadata__" strings (empty when the file has none).
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept {
    return metadata_;
  }

  /// The path the file was opened from.
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

  /// Size of the whole file in bytes.
  [[nodiscard]] std::size_t file_bytes() const noexcept { return size_; }

 private:
  SafetensorsFile() = default;
  void release() noexcept;

  std::filesystem::path path_;
  const std::byte* map_ = nullptr;   // start of the mapping (the whole file); owned
  std::size_t size_ = 0;             // bytes mapped
  const std::byte* data_ = nullptr;  // start of the data section inside the mapping
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> by_name_;  // name -> index into tensors_
  std::map<std::string, std::string> metadata_;
};

/// One tensor to write: its bytes must be row-major, little-endian and exactly
/// product(shape) * dtype_size(dtype) long.
struct TensorToWrite {
  std::string name;                      ///< header key (UTF-8, unique, not "__metadata__")
  TensorDType dtype = TensorDType::f32;  ///< element type
  std::vector<std::size_t> shape;        ///< dimensions; empty for a scalar
  std::span<const std::byte> data;       ///< the tensor's bytes (not owned)
};

/// Writes a safetensors file atomically (temporary name, then rename): the
/// header lists "__metadata__" first (when not empty) and then the tensors,
/// the data section holds them in the given order, and the header is padded
/// with spaces so that the data section starts at a multiple of 8 bytes.
/// @throws Error(invalid_argument) naming the tensor when a name is empty,
///         repeated, "__metadata__" or not UTF-8, or when a data size does not
///         match its shape and dtype; Error(invalid_argument) for metadata
///         that is not UTF-8; Error(io) when the file cannot be written.
void write_safetensors(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace funnel
