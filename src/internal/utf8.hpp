// SPDX-License-Identifier: Apache-2.0
#pragma once

// Strict UTF-8 validation and decoding (no overlongs, no surrogates, nothing
// above U+10FFFF).

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace funnel::detail {

/// Byte offset of the first invalid sequence, or nullopt when `s` is valid UTF-8.
std::optional<std::size_t> find_invalid_utf8(std::string_view s) noexcept;

/// Decodes one code point starting at s[pos]; advances pos. Returns nullopt
/// (and leaves pos unchanged) for an invalid sequence.
std::optional<char32_t> decode_utf8(std::string_view s, std::size_t& pos) noexcept;

/// Decodes a whole valid string. Throws Error(invalid_argument) naming the
/// byte offset for invalid input.
std::u32string decode_utf8(std::string_view s);

/// Appends the UTF-8 encoding of `cp` to `out`.
void append_utf8(std::string& out, char32_t cp);

/// Encodes code points as UTF-8.
std::string encode_utf8(std::u32string_view cps);

}  // namespace funnel::detail
