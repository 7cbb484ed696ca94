#include "headers.h"

#include <vector>

#include "text.h"

namespace outboxd {
namespace {

// A strict RFC 8259 reader over one text, without recursion (jsonb nests deeply).
class JsonReader {
 public:
  explicit JsonReader(std::string_view in) : in_(in) {}

  bool AtEnd() {
    SkipSpace();
    return pos_ == in_.size();
  }
  bool Consume(char c) {
    SkipSpace();
    if (pos_ < in_.size() && in_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool Peek(char c) {
    SkipSpace();
    return pos_ < in_.size() && in_[pos_] == c;
  }

  // A string, unescaped into `out` (UTF-8).
  bool String(std::string* out) {
    if (!Consume('"')) return false;
    for (;;) {
      if (pos_ >= in_.size()) return false;
      char c = in_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= in_.size()) return false;
      switch (in_[pos_++]) {
        case '"':
          out->push_back('"');
          break;
        case '\\':
          out->push_back('\\');
          break;
        case '/':
          out->push_back('/');
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          uint32_t cp;
          if (!Hex4(&cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // a high surrogate: its low half must follow
            uint32_t low;
            if (in_.substr(pos_, 2) != "\\u") return false;
            pos_ += 2;
            if (!Hex4(&low) || low < 0xDC00 || low > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return false;
          }
          AppendUtf8(cp, out);
          break;
        }
        default:
          return false;
      }
    }
  }

  // Any value; `text` is its exact source text.
  bool Value(std::string_view* text) {
    SkipSpace();
    const size_t start = pos_;
    std::vector<char> open;  // the containers we are inside: '{' or '['
    for (;;) {
      // A value starts here.
      std::string ignored;
      if (Consume('{')) {
        if (!Consume('}')) {
          open.push_back('{');
          if (!String(&ignored) || !Consume(':')) return false;
          continue;
        }
      } else if (Consume('[')) {
        if (!Consume(']')) {
          open.push_back('[');
          continue;
        }
      } else if (Peek('"')) {
        if (!String(&ignored)) return false;
      } else if (!Scalar()) {
        return false;
      }
      // The value ended: close containers until one continues with another member.
      for (;;) {
        if (open.empty()) {
          *text = in_.substr(start, pos_ - start);
          return true;
        }
        if (Consume(',')) {
          if (open.back() == '{' && (!String(&ignored) || !Consume(':'))) return false;
          break;
        }
        if (!Consume(open.back() == '{' ? '}' : ']')) return false;
        open.pop_back();
      }
    }
  }

 private:
  void SkipSpace() {
    while (pos_ < in_.size() &&
           (in_[pos_] == ' ' || in_[pos_] == '\t' || in_[pos_] == '\n' || in_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Digits() {
    size_t from = pos_;
    while (pos_ < in_.size() && in_[pos_] >= '0' && in_[pos_] <= '9') ++pos_;
    return pos_ > from;
  }
  // A number (kept as text, never converted), true, false or null.
  bool Scalar() {
    for (std::string_view word : {"true", "false", "null"}) {
      if (in_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        return true;
      }
    }
    if (pos_ < in_.size() && in_[pos_] == '-') ++pos_;
    if (pos_ < in_.size() && in_[pos_] == '0') {
      ++pos_;
    } else if (!Digits()) {
      return false;
    }
    if (pos_ < in_.size() && in_[pos_] == '.') {
      ++pos_;
      if (!Digits()) return false;
    }
    if (pos_ < in_.size() && (in_[pos_] == 'e' || in_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < in_.size() && (in_[pos_] == '+' || in_[pos_] == '-')) ++pos_;
      if (!Digits()) return false;
    }
    return true;
  }
  bool Hex4(uint32_t* out) {
    if (pos_ + 4 > in_.size()) return false;
    *out = 0;
    for (int i = 0; i < 4; ++i) {
      char c = in_[pos_++];
      uint32_t d;
      if (c >= '0' && c <= '9') {
        d = static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        d = static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        d = static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return false;
      }
      *out = (*out << 4) | d;
    }
    return true;
  }
  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace

std::optional<Headers> ParseHeaderObject(std::string_view json) {
  JsonReader r(json);
  Headers out;
  if (!r.Consume('{')) return std::nullopt;
  if (!r.Consume('}')) {
    do {
      std::string name;
      std::string_view value;
      if (!r.String(&name) || !r.Consume(':') || !r.Value(&value)) return std::nullopt;
      if (value == "null") {
        out.emplace_back(std::move(name), std::nullopt);
      } else if (value.front() == '"') {
        std::string text;
        JsonReader(value).String(&text);
        out.emplace_back(std::move(name), std::move(text));
      } else {
        out.emplace_back(std::move(name), std::string(value));
      }
    } while (r.Consume(','));
    if (!r.Consume('}')) return std::nullopt;
  }
  if (!r.AtEnd()) return std::nullopt;
  return out;
}

Headers IdentityHeaders(const OutboxRow& row) {
  Headers headers;
  headers.emplace_back("outbox-id", std::to_string(row.id));
  headers.emplace_back("outbox-created-at", std::to_string(row.created_at_us));
  return headers;
}

Result<Headers> MessageHeaders(const OutboxRow& row) {
  Headers headers = IdentityHeaders(row);
  if (row.headers == "{}") return headers;
  auto parsed = ParseHeaderObject(row.headers);
  if (!parsed) {
    // Quoted in the dead-letter error text: cut on a character boundary (PostgreSQL refuses a
    // half character, SQLSTATE 22021).
    return Status::Permanent("headers must be a JSON object, got: " +
                             ValidUtf8Prefix(row.headers, 200));
  }
  for (auto& h : *parsed) headers.push_back(std::move(h));
  return headers;
}

}  // namespace outboxd
