#include "secrets.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>

#include <libpq-fe.h>
#include <spdlog/sinks/sink.h>
#include <spdlog/spdlog.h>

namespace outboxd {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// The registered secrets, longest first (so a secret that contains another is hidden whole).
std::mutex g_mutex;
std::vector<std::string> g_secrets;  // GUARDED_BY(g_mutex)

// Shorter values are not searched for: they would match inside line numbers and words (found
// by tests/fuzz/config_fuzz.cpp: a secret "1" turned "outboxd.toml:15:" into "[redacted]5:").
// The patterns below still hide them where they follow a password-like key.
constexpr size_t kShortestHiddenValue = 4;

void HideValues(std::string* text, const std::vector<std::string>& values) {
  for (const std::string& v : values) {
    if (v.size() < kShortestHiddenValue) continue;
    for (size_t at = text->find(v); at != std::string::npos; at = text->find(v, at)) {
      text->replace(at, v.size(), kRedacted);
      at += kRedacted.size();
    }
  }
}

bool IsKeyChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
}
bool IsBlank(char c) { return c == ' ' || c == '\t'; }

// The end of the value that starts at `at`: a "quoted" or 'quoted' string (to its closing quote,
// or the end of the line when there is none), or a bare word.
size_t ValueEnd(const std::string& text, size_t at) {
  if (at >= text.size()) return at;
  const char quote = text[at];
  size_t i = at;
  if (quote == '"' || quote == '\'') {
    for (++i; i < text.size() && text[i] != '\n'; ++i) {
      if (text[i] == '\\') {
        ++i;
      } else if (text[i] == quote) {
        return i + 1;
      }
    }
    return std::min(i, text.size());
  }
  static constexpr std::string_view kStops = " \t\r\n\"',;&}]";
  while (i < text.size() && kStops.find(text[i]) == std::string_view::npos) ++i;
  return i;
}

// Values after a key named like a secret (password=..., "sasl.password" = "..."). A scan, not a
// std::regex: libstdc++'s regex recurses per character and overflows the stack on long lines.
void HideKeyValues(std::string* text) {
  static constexpr std::string_view kWords[] = {"password", "passwd", "secret", "ssl.key.pem",
                                                "oauthbearer.config"};
  std::string lower = Lower(*text);
  for (size_t i = 0; i < lower.size(); ++i) {
    size_t word = 0;
    for (std::string_view w : kWords) {
      if (lower.compare(i, w.size(), w) == 0) {
        word = w.size();
        break;
      }
    }
    if (word == 0) continue;
    size_t j = i + word;
    while (j < text->size() && IsKeyChar((*text)[j])) ++j;
    if (j < text->size() && ((*text)[j] == '"' || (*text)[j] == '\'')) ++j;
    while (j < text->size() && IsBlank((*text)[j])) ++j;
    if (j >= text->size() || (*text)[j] != '=') {
      i = j > i ? j - 1 : i;
      continue;
    }
    ++j;
    while (j < text->size() && IsBlank((*text)[j])) ++j;
    const size_t end = ValueEnd(*text, j);
    if (end == j) continue;
    text->replace(j, end - j, kRedacted);
    lower.replace(j, end - j, kRedacted);
    i = j + kRedacted.size() - 1;
  }
}

// The password of a URL's user info: scheme://user:password@host.
void HideUrlPasswords(std::string* text) {
  for (size_t at = text->find("://"); at != std::string::npos; at = text->find("://", at + 3)) {
    if (at == 0 || !std::isalpha(static_cast<unsigned char>((*text)[at - 1]))) continue;
    static constexpr std::string_view kUserEnd = "/ \t\r\n:@";
    size_t colon = at + 3;
    while (colon < text->size() && kUserEnd.find((*text)[colon]) == std::string_view::npos) {
      ++colon;
    }
    if (colon >= text->size() || (*text)[colon] != ':') continue;
    static constexpr std::string_view kPasswordEnd = "@/ \t\r\n";
    size_t end = colon + 1;
    while (end < text->size() && kPasswordEnd.find((*text)[end]) == std::string_view::npos) ++end;
    if (end >= text->size() || (*text)[end] != '@') continue;
    text->replace(colon + 1, end - colon - 1, kRedacted);
  }
}

void HidePatterns(std::string* text) {
  HideKeyValues(text);
  HideUrlPasswords(text);
}

std::string QuoteConninfoValue(const std::string& v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

using ConninfoOptionsPtr = std::unique_ptr<PQconninfoOption, decltype(&PQconninfoFree)>;

// Parsed conninfo, or the libpq message (which may quote a piece of the string: the caller
// decides whether it may be shown).
Result<ConninfoOptionsPtr> ParseConninfo(const std::string& conninfo) {
  char* err = nullptr;
  ConninfoOptionsPtr opts(PQconninfoParse(conninfo.c_str(), &err), &PQconninfoFree);
  if (!opts) {
    std::string msg = err ? err : "invalid";
    PQfreemem(err);
    while (!msg.empty() && msg.back() == '\n') msg.pop_back();
    return Status::Invalid(msg);
  }
  return opts;
}

// A sink that hides secrets in each line, then hands it to the sink it wraps (whose level and
// format stay in charge).
class RedactingSink : public spdlog::sinks::sink {
 public:
  explicit RedactingSink(spdlog::sink_ptr inner) : inner_(std::move(inner)) {}

  void log(const spdlog::details::log_msg& msg) override {
    if (!inner_->should_log(msg.level)) return;
    const std::string redacted = Redact(std::string_view(msg.payload.data(), msg.payload.size()));
    spdlog::details::log_msg copy(msg);
    copy.payload = spdlog::string_view_t(redacted.data(), redacted.size());
    inner_->log(copy);
  }
  void flush() override { inner_->flush(); }
  void set_pattern(const std::string& pattern) override { inner_->set_pattern(pattern); }
  void set_formatter(std::unique_ptr<spdlog::formatter> formatter) override {
    inner_->set_formatter(std::move(formatter));
  }

 private:
  const spdlog::sink_ptr inner_;
};

}  // namespace

Result<std::string> ReadSecretFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Invalid("cannot read " + path + ": " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  std::string value = text.str();
  if (!value.empty() && value.back() == '\n') value.pop_back();
  if (!value.empty() && value.back() == '\r') value.pop_back();
  if (value.empty()) return Status::Invalid(path + " is empty");
  return value;
}

Result<std::string> ConninfoWithPassword(const std::string& conninfo, const std::string& password) {
  auto opts = ParseConninfo(conninfo);
  if (!opts.ok()) return opts.status();
  std::string out;
  for (const PQconninfoOption* o = opts->get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr || std::strcmp(o->keyword, "password") == 0) continue;
    out += std::string(o->keyword) + "=" + QuoteConninfoValue(o->val) + " ";
  }
  return out + "password=" + QuoteConninfoValue(password);
}

std::string ConninfoPassword(const std::string& conninfo) {
  auto opts = ParseConninfo(conninfo);
  if (!opts.ok()) return "";
  for (const PQconninfoOption* o = opts->get(); o->keyword != nullptr; ++o) {
    if (std::strcmp(o->keyword, "password") == 0 && o->val != nullptr) return o->val;
  }
  return "";
}

std::string UrlPassword(const std::string& url) {
  size_t scheme = url.find("://");
  if (scheme == std::string::npos) return "";
  size_t host_end = url.find_first_of("/?#", scheme + 3);
  std::string authority = url.substr(
      scheme + 3, host_end == std::string::npos ? std::string::npos : host_end - scheme - 3);
  size_t at = authority.rfind('@');
  if (at == std::string::npos) return "";
  size_t colon = authority.find(':');
  if (colon == std::string::npos || colon > at) return "";
  return authority.substr(colon + 1, at - colon - 1);
}

bool IsSecretKafkaProperty(std::string_view name) {
  const std::string n = Lower(name);
  return n.find("password") != std::string::npos || n.find("secret") != std::string::npos ||
         n == "ssl.key.pem" || n == "ssl_key" || n == "sasl.oauthbearer.config";
}

void RegisterSecrets(const std::vector<std::string>& values) {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (const std::string& v : values) {
    if (v.empty() || std::find(g_secrets.begin(), g_secrets.end(), v) != g_secrets.end()) continue;
    g_secrets.push_back(v);
  }
  std::sort(g_secrets.begin(), g_secrets.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
}

std::string RedactWith(std::string_view text, const std::vector<std::string>& extra) {
  std::string out(text);
  std::vector<std::string> longest_first = extra;
  std::sort(longest_first.begin(), longest_first.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  HideValues(&out, longest_first);
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    HideValues(&out, g_secrets);
  }
  HidePatterns(&out);
  return out;
}

std::string Redact(std::string_view text) { return RedactWith(text, {}); }

void InstallLogRedaction() {
  std::shared_ptr<spdlog::logger> logger = spdlog::default_logger();
  for (spdlog::sink_ptr& sink : logger->sinks()) {
    if (std::dynamic_pointer_cast<RedactingSink>(sink)) continue;
    sink = std::make_shared<RedactingSink>(sink);
  }
}

}  // namespace outboxd
