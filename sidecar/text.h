// Text that must be valid for PostgreSQL's text type (UTF-8, no NUL byte), from bytes that may
// not be: error messages quoting row contents, broker errors. Pure functions.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace outboxd {

// At most `max_bytes` bytes of valid UTF-8: complete characters of `text` in order; an invalid
// byte or a NUL becomes U+FFFD; never a character cut in half.
std::string ValidUtf8Prefix(std::string_view text, size_t max_bytes);

// `text` with every byte outside printable ASCII written as \xNN: valid in any server encoding.
std::string AsciiEscaped(std::string_view text);

}  // namespace outboxd
