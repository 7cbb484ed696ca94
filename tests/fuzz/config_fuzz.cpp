// config_fuzz: mutates a configuration file many times and loads each mutant the way outboxd
// does (ParseConfig). Built with AddressSanitizer and UndefinedBehaviorSanitizer, linked with the
// configuration code only (tests/CMakeLists.txt). Three oracles:
//  1. Any mutant (bytes flipped, cut, spliced, values of other types...) either loads or is
//     refused with a message that starts with the file name and names a line ("fuzz.toml:12: ...")
//     or, for a required key that is absent, the key ("fuzz.toml: postgres.conninfo: ...").
//  2. A rewrite that keeps the file's meaning (comments, blank lines, whitespace, indentation,
//     another spelling of an integer or a string, key lines or tables in another order) loads
//     with the same values as the file itself.
//  3. A range-checked setting set out of its range is refused, naming its line and key; set to a
//     random value inside its range it loads with exactly that value and nothing else changed.
// A crash, a sanitizer report, an escaped exception or an input slower than the time limit fails
// the run too; the failing input is written to config_fuzz_failure.toml in the working directory.
//
//   config_fuzz SEED.toml COUNT [RANDOM_SEED]      (make test: 2000; make fuzz: 50000)
// Without RANDOM_SEED each run takes a new one; it is printed first, and passing it again
// replays the run exactly (make fuzz FUZZ_SEED=...).
#include <unistd.h>

#include <cctype>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "config.h"

namespace {

constexpr const char* kFileName = "fuzz.toml";
constexpr unsigned kSecondsPerInput = 10;

std::string g_current;  // the input being parsed (written out if the process dies)

void WriteFailure(const std::string& input) {
  std::ofstream("config_fuzz_failure.toml", std::ios::binary) << input;
}

void OnAlarm(int) {
  static const char kMsg[] = "config_fuzz: an input took longer than the time limit (a hang)\n";
  (void)!write(2, kMsg, sizeof(kMsg) - 1);
  WriteFailure(g_current);
  _exit(3);
}

class Mutator {
 public:
  Mutator(std::string seed, uint64_t random_seed) : seed_(std::move(seed)), rng_(random_seed) {}

  std::string Next() {
    std::string s = seed_;
    const int rounds = 1 + static_cast<int>(Below(4));
    for (int i = 0; i < rounds; ++i) Mutate(&s);
    return s;
  }

 private:
  size_t Below(size_t n) {
    return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(rng_);
  }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[Below(v.size())];
  }
  size_t Pos(const std::string& s) { return Below(s.size() + 1); }

  // The start of a random line's value (after " = "), or npos.
  size_t ValueStart(const std::string& s) {
    for (int tries = 0; tries < 20; ++tries) {
      size_t at = s.find(" = ", Pos(s));
      if (at != std::string::npos) return at + 3;
    }
    return std::string::npos;
  }
  size_t LineEnd(const std::string& s, size_t from) {
    size_t end = s.find('\n', from);
    return end == std::string::npos ? s.size() : end;
  }

  std::string Nested(size_t depth) {
    switch (Below(3)) {
      case 0:
        return std::string(depth, '[') + std::string(depth, ']');
      case 1: {
        std::string out;
        for (size_t i = 0; i < depth; ++i) out += "{a=";
        out += "1";
        for (size_t i = 0; i < depth; ++i) out += "}";
        return out;
      }
      default: {
        std::string out;
        for (size_t i = 0; i < depth; ++i) out += "[{a=";
        out += "1";
        for (size_t i = 0; i < depth; ++i) out += "}]";
        return out;
      }
    }
  }

  std::string RandomValue() {
    static const std::vector<std::string> kValues = {"99999999999999999999999999",
                                                     "-9223372036854775808",
                                                     "9223372036854775807",
                                                     "-9223372036854775809",
                                                     "0x7fffffffffffffff",
                                                     "0o777777777777777777777777",
                                                     "0b1",
                                                     "1e999",
                                                     "-1e999",
                                                     "nan",
                                                     "-inf",
                                                     "+inf",
                                                     "1_000_000",
                                                     "1__0",
                                                     "0.0",
                                                     "-0",
                                                     "true",
                                                     "false",
                                                     "\"\"",
                                                     "\"${}\"",
                                                     "\"${\"",
                                                     "\"${OUTBOXD_FUZZ_UNSET}\"",
                                                     "\"${OUTBOXD_PG_PORT}\"",
                                                     "\"x${OUTBOXD_FUZZ_SET}y${OUTBOXD_FUZZ_SET}\"",
                                                     "'literal'",
                                                     "'''multi\nline'''",
                                                     "\"\"\"multi\nline\"\"\"",
                                                     "[]",
                                                     "[1, \"a\", true]",
                                                     "{}",
                                                     "{a = 1}",
                                                     "1979-05-27T07:32:00Z",
                                                     "07:32:00",
                                                     "1979-05-27",
                                                     "\"\\u0000\"",
                                                     "\"\\uD800\"",
                                                     "\"\\U0010FFFF\"",
                                                     "\"\\x41\"",
                                                     "\"99999999999999999999h\"",
                                                     "\"-5s\"",
                                                     "\"1m30s\"",
                                                     "\"0ms\"",
                                                     "\"9223372036854775807ms\"",
                                                     "\"18446744073709551616s\"",
                                                     "\"1.5s\"",
                                                     "\"s\"",
                                                     "\"delete\"",
                                                     "\"retain\"",
                                                     "\"sql\"",
                                                     "\"http\"",
                                                     "\"dead_letter\"",
                                                     "\"http://u:p@h/\"",
                                                     "\"host=x password=\"",
                                                     "\"host=x port=99999999999\"",
                                                     "\"postgresql://[::1\"",
                                                     "\"/nonexistent/secret\"",
                                                     "\"/dev/null\"",
                                                     "\"/proc/self/status\""};
    switch (Below(6)) {
      case 0:
        return Nested(1 + Below(Below(20) == 0 ? 100000 : 64));  // deep ones rarely: ASan is slow
      case 1:
        return "\"" + std::string(Below(Below(20) == 0 ? 200000 : 1000), 'x') + "\"";
      case 2:
        return std::to_string(static_cast<int64_t>(rng_()));
      default:
        return Pick(kValues);
    }
  }

  std::string RandomKey() {
    static const std::vector<std::string> kKeys = {"postgres",
                                                   "kafka",
                                                   "relay",
                                                   "backoff",
                                                   "leadership",
                                                   "checkback",
                                                   "log",
                                                   "conninfo",
                                                   "password_file",
                                                   "bootstrap_servers",
                                                   "properties",
                                                   "property_files",
                                                   "batch_size",
                                                   "max_in_flight",
                                                   "poll_interval",
                                                   "on_sent",
                                                   "lock_id",
                                                   "checker",
                                                   "sql_conninfo",
                                                   "level",
                                                   "\"sasl.password\"",
                                                   "\"ssl.key.pem\"",
                                                   "\"transactional.id\"",
                                                   "\"acks\"",
                                                   "\"debug\"",
                                                   "\"\"",
                                                   "a.b.c",
                                                   "\"a\".\"b\"",
                                                   "'lit'",
                                                   "x-y_z",
                                                   "\xff\xfe",
                                                   "\"\\u00e9\""};
    return Pick(kKeys);
  }

  std::string InvalidUtf8() {
    static const std::vector<std::string> kBytes = {
        "\xff",     "\xfe\xff",    "\xc0\x80",     "\xed\xa0\x80",       "\xf4\x90\x80\x80",
        "\xe2\x82", "\x80",        "\xf0\x9f\x98", std::string(1, '\0'), "\r",
        "\x7f",     "\xef\xbb\xbf"};
    return Pick(kBytes);
  }

  void Mutate(std::string* s) {
    switch (Below(12)) {
      case 0:  // flip bytes
        for (size_t n = 1 + Below(8); n > 0 && !s->empty(); --n) {
          (*s)[Below(s->size())] ^= static_cast<char>(1u << Below(8));
        }
        break;
      case 1:  // random bytes in
        for (size_t n = 1 + Below(8); n > 0; --n) {
          s->insert(Pos(*s), 1, static_cast<char>(Below(256)));
        }
        break;
      case 2: {  // cut a range
        size_t from = Pos(*s);
        s->erase(from, Below(200));
        break;
      }
      case 3: {  // repeat a range (duplicate keys and tables)
        size_t from = Pos(*s);
        std::string piece = s->substr(from, Below(400));
        s->insert(Pos(*s), piece);
        break;
      }
      case 4:
      case 5: {  // a value of another type, a huge number, a deep nesting
        size_t at = ValueStart(*s);
        if (at == std::string::npos) break;
        s->replace(at, LineEnd(*s, at) - at, RandomValue());
        break;
      }
      case 6: {  // a key renamed
        size_t at = ValueStart(*s);
        if (at == std::string::npos) break;
        size_t line = s->rfind('\n', at - 3);
        line = line == std::string::npos ? 0 : line + 1;
        s->replace(line, at - 3 - line, RandomKey());
        break;
      }
      case 7: {  // a new line: key = value, a table header, an array of tables
        std::string line;
        switch (Below(3)) {
          case 0:
            line = RandomKey() + " = " + RandomValue();
            break;
          case 1:
            line = "[" + RandomKey() + "]";
            break;
          default:
            line = "[[" + RandomKey() + "]]";
        }
        size_t at = s->find('\n', Pos(*s));
        s->insert(at == std::string::npos ? s->size() : at + 1, line + "\n");
        break;
      }
      case 8:  // invalid UTF-8 (in a string, a key, a comment: wherever it lands)
        s->insert(Pos(*s), InvalidUtf8());
        break;
      case 9: {  // a splice of TOML punctuation
        static const std::vector<std::string> kPunct = {"[",  "]",  "[[",  "]]",     "{",  "}", "=",
                                                        "\"", "'",  "'''", "\"\"\"", ",",  ".", "#",
                                                        "\\", "\n", " = ", "\\u",    "${", "}"};
        s->insert(Pos(*s), Pick(kPunct));
        break;
      }
      case 10:  // a long line
        s->insert(Pos(*s),
                  std::string(Below(Below(20) == 0 ? 100000 : 1000), Below(2) ? ' ' : 'a'));
        break;
      default: {  // truncated
        s->resize(Pos(*s));
        break;
      }
    }
  }

  const std::string seed_;
  std::mt19937_64 rng_;
};

// Every value a Config holds, one per line: two files mean the same when these are equal.
std::string Describe(const outboxd::Config& c) {
  std::ostringstream o;
  auto ms = [](outboxd::Millis d) { return std::to_string(d.count()) + "ms"; };
  o << "postgres.conninfo=" << c.postgres.conninfo << "\n"
    << "kafka.bootstrap_servers=" << c.kafka.bootstrap_servers << "\n";
  for (const auto& [k, v] : c.kafka.properties) o << "kafka.properties." << k << "=" << v << "\n";
  const auto& r = c.relay;
  o << "relay: " << r.batch_size << " " << r.max_in_flight << " " << ms(r.poll_interval) << " "
    << ms(r.idle_poll_interval) << " " << ms(r.idle_grace) << " " << r.notify << " "
    << static_cast<int>(r.on_sent) << " " << ms(r.retention) << " " << ms(r.cleanup_interval) << " "
    << ms(r.shutdown_timeout) << " [" << r.dead_letter_topic << "] " << static_cast<int>(r.delivery)
    << " [" << r.checkpoint_topic << "] [" << r.transactional_id << "] " << ms(r.remove_interval)
    << " " << r.sleep_below_rate << "\n";
  o << "backoff: " << ms(c.backoff.initial) << " " << ms(c.backoff.max) << "\n";
  const auto& l = c.leadership;
  o << "leadership: " << l.lock_id << " " << ms(l.retry_interval) << " " << ms(l.session_timeout)
    << " " << ms(l.keepalive_idle) << " " << ms(l.keepalive_interval) << " " << l.keepalive_count
    << " " << ms(l.tcp_user_timeout) << "\n";
  const auto& b = c.checkback;
  o << "checkback: " << b.enabled << " " << static_cast<int>(b.checker) << " "
    << ms(b.transaction_timeout) << " " << ms(b.check_interval) << " " << b.max_checks << " "
    << static_cast<int>(b.final_action) << " [" << b.final_topic << "] [" << b.http_url << "] "
    << ms(b.http_timeout) << " [" << b.sql_conninfo << "] [" << b.sql_query << "] "
    << ms(b.sql_timeout) << " " << b.batch_size << " " << ms(b.poll_interval) << " "
    << ms(b.settled_retention) << "\n";
  o << "log: " << c.log.level << " " << static_cast<int>(c.log.format) << "\n";
  o << "delay: " << c.delay.enabled << " " << ms(c.delay.poll_interval) << " " << c.delay.batch_size
    << "\n";
  o << "inbox: " << ms(c.inbox.retention) << " " << ms(c.inbox.cleanup_interval) << "\n";
  o << "doctor: " << c.doctor.startup_check << " " << ms(c.doctor.max_unsent_age) << " "
    << ms(c.doctor.long_transaction) << " " << ms(c.doctor.kafka_timeout) << "\n";
  o << "admin: " << c.admin.listen << " " << ms(c.admin.query_timeout) << "\n";
  o << "secrets:";
  for (const auto& secret : c.secrets) o << " [" << secret << "]";
  o << "\n";
  return o.str();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

std::string Join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

bool IsHeader(const std::string& line) {
  size_t i = line.find_first_not_of(" \t");
  return i != std::string::npos && line[i] == '[';
}

// In a line "key = value", where the value starts (nullopt for any other line).
std::optional<size_t> KeyLineValue(const std::string& line) {
  size_t i = line.find_first_not_of(" \t");
  if (i == std::string::npos || line[i] == '#' || line[i] == '[') return std::nullopt;
  size_t eq = line.find('=');
  if (eq == std::string::npos) return std::nullopt;
  size_t v = line.find_first_not_of(" \t", eq + 1);
  if (v == std::string::npos) return std::nullopt;
  return v;
}

// The value token of a key line from `v`: [begin, end), a quoted string or up to whitespace or a
// comment.
std::pair<size_t, size_t> Token(const std::string& line, size_t v) {
  for (const char* triple : {"\"\"\"", "'''"}) {
    if (line.compare(v, 3, triple) == 0) {
      size_t close = line.find(triple, v + 3);
      return {v, close == std::string::npos ? line.size() : close + 3};
    }
  }
  if (line[v] == '"' || line[v] == '\'') {
    size_t close = line.find(line[v], v + 1);
    return {v, close == std::string::npos ? line.size() : close + 1};
  }
  size_t end = line.find_first_of(" \t#", v);
  return {v, end == std::string::npos ? line.size() : end};
}

// Rewrites of a valid file that keep every value: the file must load exactly as the original.
// The seed must hold no multi-line strings and no string with a quote or backslash in a key line
// that a rewrite could split (config/outboxd.toml has none).
class Rewriter {
 public:
  Rewriter(std::string seed, uint64_t random_seed)
      : lines_(Lines(seed)), rng_(random_seed ^ 0x9E3779B97F4A7C15ULL) {}

  std::string Next() {
    std::vector<std::string> lines = lines_;
    const int rounds = 1 + static_cast<int>(Below(4));
    for (int i = 0; i < rounds; ++i) Rewrite(&lines);
    return Join(lines);
  }

 private:
  size_t Below(size_t n) {
    return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(rng_);
  }
  std::string Blanks() {
    static const std::vector<std::string> kBlanks = {"", " ", "\t", "    ", " \t "};
    return kBlanks[Below(kBlanks.size())];
  }
  std::string CommentText() {
    static const std::vector<std::string> kTexts = {"",
                                                    "a comment",
                                                    "key = \"value\"",
                                                    "[not.a.table]",
                                                    "# twice",
                                                    "'''",
                                                    "\"\"\"",
                                                    "${OUTBOXD_FUZZ_UNSET}",
                                                    "\xc3\xa9t\xc3\xa9 \xe2\x98\x83",
                                                    "\\u0000 is no escape here"};
    return "#" + Blanks() + kTexts[Below(kTexts.size())];
  }
  // Indexes of the lines `pick` accepts.
  static std::vector<size_t> Where(const std::vector<std::string>& lines,
                                   const std::function<bool(const std::string&)>& pick) {
    std::vector<size_t> out;
    for (size_t i = 0; i < lines.size(); ++i) {
      if (pick(lines[i])) out.push_back(i);
    }
    return out;
  }
  std::string Integer(const std::string& digits) {
    const bool negative = digits[0] == '-';
    const std::string body = negative ? digits.substr(1) : digits;
    switch (Below(4)) {
      case 0: {  // underscores between digits
        std::string out;
        for (size_t i = 0; i < body.size(); ++i) {
          if (i > 0 && Below(3) == 0) out += '_';
          out += body[i];
        }
        return (negative ? "-" : "") + out;
      }
      case 1:
        return negative ? digits : "+" + body;
      default: {  // hexadecimal or octal (TOML has them for non-negative integers only)
        if (negative) return digits;
        const unsigned long long n = std::stoull(body);
        std::ostringstream o;
        if (Below(2)) {
          o << "0x" << std::hex << (Below(2) ? std::uppercase : std::nouppercase) << n;
        } else {
          o << "0o" << std::oct << n;
        }
        return o.str();
      }
    }
  }
  std::string String(const std::string& quoted) {
    const std::string body = quoted.substr(1, quoted.size() - 2);
    if (body.find_first_of("\\'\"") != std::string::npos) return quoted;
    switch (Below(3)) {
      case 0:
        return "'" + body + "'";
      case 1:
        return "\"\"\"" + body + "\"\"\"";
      default: {  // one character as a \u escape
        if (body.empty()) return quoted;
        const size_t at = Below(body.size());
        std::ostringstream esc;
        esc << "\\u" << std::hex << std::setw(4) << std::setfill('0')
            << static_cast<int>(static_cast<unsigned char>(body[at]));
        return "\"" + body.substr(0, at) + esc.str() + body.substr(at + 1) + "\"";
      }
    }
  }

  void Rewrite(std::vector<std::string>* lines_ptr) {
    auto& lines = *lines_ptr;
    auto key_lines = Where(lines, [](const std::string& l) { return KeyLineValue(l).has_value(); });
    switch (Below(8)) {
      case 0:  // a blank or comment line anywhere
        lines.insert(lines.begin() + static_cast<long>(Below(lines.size() + 1)),
                     Below(2) ? Blanks() : Blanks() + CommentText());
        break;
      case 1: {  // a comment at the end of a key or header line
        auto at = Where(lines, [](const std::string& l) { return KeyLineValue(l) || IsHeader(l); });
        if (!at.empty()) lines[at[Below(at.size())]] += Blanks() + " " + CommentText();
        break;
      }
      case 2: {  // whitespace around '='
        if (key_lines.empty()) break;
        std::string& l = lines[key_lines[Below(key_lines.size())]];
        const size_t v = *KeyLineValue(l);
        const size_t eq = l.rfind('=', v);
        const size_t key_end = l.find_last_not_of(" \t", eq - 1) + 1;
        l = l.substr(0, key_end) + Blanks() + "=" + Blanks() + l.substr(v);
        break;
      }
      case 3: {  // indentation
        const size_t i = Below(lines.size());
        lines[i] = Blanks() + lines[i];
        break;
      }
      case 4:
      case 5: {  // another spelling of an integer or a string value
        if (key_lines.empty()) break;
        std::string& l = lines[key_lines[Below(key_lines.size())]];
        const auto [b, e] = Token(l, *KeyLineValue(l));
        const std::string value = l.substr(b, e - b);
        std::string respelt = value;
        if (value.size() >= 2 && value[0] == '"' && value.back() == '"' &&
            value.compare(0, 3, "\"\"\"") != 0) {  // a basic string, not yet respelt
          respelt = String(value);
        } else if (!value.empty() && value.size() < 19 &&
                   value.find_first_not_of("0123456789", value[0] == '-' ? 1 : 0) ==
                       std::string::npos) {
          respelt = Integer(value);
        }
        l = l.substr(0, b) + respelt + l.substr(e);
        break;
      }
      case 6: {  // two neighbouring key lines of a table swapped
        std::vector<size_t> pairs;
        for (size_t i = 0; i + 1 < lines.size(); ++i) {
          if (KeyLineValue(lines[i]) && KeyLineValue(lines[i + 1])) pairs.push_back(i);
        }
        if (!pairs.empty()) {
          const size_t i = pairs[Below(pairs.size())];
          std::swap(lines[i], lines[i + 1]);
        }
        break;
      }
      default: {  // two tables (a header and the lines up to the next one) swapped
        const auto headers = Where(lines, IsHeader);
        if (headers.size() < 2) break;
        size_t a = Below(headers.size()), b = Below(headers.size());
        if (a == b) break;
        if (a > b) std::swap(a, b);
        auto end_of = [&](size_t h) {
          return h + 1 < headers.size() ? headers[h + 1] : lines.size();
        };
        std::vector<std::string> out(lines.begin(), lines.begin() + static_cast<long>(headers[a]));
        auto append = [&](size_t from, size_t to) {
          out.insert(out.end(), lines.begin() + static_cast<long>(from),
                     lines.begin() + static_cast<long>(to));
        };
        append(headers[b], end_of(b));
        append(end_of(a), headers[b]);
        append(headers[a], end_of(a));
        append(end_of(b), lines.size());
        lines = std::move(out);
      }
    }
  }

  const std::vector<std::string> lines_;
  std::mt19937_64 rng_;
};

// A range-checked setting: its table and key, its range (durations in ms; kNoMax: no upper
// bound) and how to set it in a Config. The ranges are sidecar/config.cpp's, stated again here on
// purpose: this list is the oracle that fails when a check is dropped or loosened. [low, high]
// narrows the random in-range values where another check ties the setting to the seed's value of
// another one (relay.max_in_flight >= relay.batch_size, backoff.max >= backoff.initial); `step`:
// in-range values are multiples of it (whole seconds).
constexpr int64_t kNoMax = INT64_MAX;
struct RangedSetting {
  std::string table, key;
  bool duration;
  int64_t min, max;
  std::function<void(outboxd::Config&, int64_t)> set;
  int64_t low = INT64_MIN, high = INT64_MAX, step = 1;
};

std::vector<RangedSetting> RangedSettings() {
  using outboxd::Config;
  using outboxd::Millis;
  return {
      {"relay", "batch_size", false, 1, 100'000,
       [](Config& c, int64_t n) { c.relay.batch_size = static_cast<int>(n); }, 1, 20'000},
      {"relay", "max_in_flight", false, 1, 1'000'000,
       [](Config& c, int64_t n) { c.relay.max_in_flight = static_cast<int>(n); }, 1000},
      {"relay", "sleep_below_rate", false, 0, 1'000'000,
       [](Config& c, int64_t n) { c.relay.sleep_below_rate = static_cast<int>(n); }},
      {"relay", "poll_interval", true, 1, kNoMax,
       [](Config& c, int64_t n) { c.relay.poll_interval = Millis(n); }},
      {"relay", "idle_poll_interval", true, 1, kNoMax,
       [](Config& c, int64_t n) { c.relay.idle_poll_interval = Millis(n); }},
      {"relay", "retention", true, 1000, kNoMax,
       [](Config& c, int64_t n) { c.relay.retention = Millis(n); }},
      {"relay", "cleanup_interval", true, 1000, kNoMax,
       [](Config& c, int64_t n) { c.relay.cleanup_interval = Millis(n); }},
      {"backoff", "initial", true, 1, kNoMax,
       [](Config& c, int64_t n) { c.backoff.initial = Millis(n); }, 1, 10'000},
      {"backoff", "max", true, 1, kNoMax, [](Config& c, int64_t n) { c.backoff.max = Millis(n); },
       100},
      {"leadership", "retry_interval", true, 10, kNoMax,
       [](Config& c, int64_t n) { c.leadership.retry_interval = Millis(n); }},
      {"leadership", "session_timeout", true, 1000, kNoMax,
       [](Config& c, int64_t n) { c.leadership.session_timeout = Millis(n); }},
      {"leadership", "keepalive_idle", true, 1000, kNoMax,
       [](Config& c, int64_t n) { c.leadership.keepalive_idle = Millis(n); }, INT64_MIN, INT64_MAX,
       1000},
      {"leadership", "keepalive_interval", true, 1000, kNoMax,
       [](Config& c, int64_t n) { c.leadership.keepalive_interval = Millis(n); }, INT64_MIN,
       INT64_MAX, 1000},
      {"leadership", "keepalive_count", false, 1, 100,
       [](Config& c, int64_t n) { c.leadership.keepalive_count = static_cast<int>(n); }},
      {"leadership", "tcp_user_timeout", true, 1000, kNoMax,
       [](Config& c, int64_t n) { c.leadership.tcp_user_timeout = Millis(n); }},
      {"checkback", "check_interval", true, 10, kNoMax,
       [](Config& c, int64_t n) { c.checkback.check_interval = Millis(n); }},
      {"checkback", "max_checks", false, 0, 1'000'000,
       [](Config& c, int64_t n) { c.checkback.max_checks = static_cast<int>(n); }},
      {"checkback", "http_timeout", true, 1, kNoMax,
       [](Config& c, int64_t n) { c.checkback.http_timeout = Millis(n); }},
      {"checkback", "sql_timeout", true, 1, kNoMax,
       [](Config& c, int64_t n) { c.checkback.sql_timeout = Millis(n); }},
      {"checkback", "batch_size", false, 1, 100'000,
       [](Config& c, int64_t n) { c.checkback.batch_size = static_cast<int>(n); }},
      {"checkback", "poll_interval", true, 1, kNoMax,
       [](Config& c, int64_t n) { c.checkback.poll_interval = Millis(n); }},
      {"delay", "poll_interval", true, 1, kNoMax,
       [](Config& c, int64_t n) { c.delay.poll_interval = Millis(n); }},
      {"delay", "batch_size", false, 1, 100'000,
       [](Config& c, int64_t n) { c.delay.batch_size = static_cast<int>(n); }},
      {"inbox", "cleanup_interval", true, 1000, kNoMax,
       [](Config& c, int64_t n) { c.inbox.cleanup_interval = Millis(n); }},
      {"doctor", "max_unsent_age", true, 1000, kNoMax,
       [](Config& c, int64_t n) { c.doctor.max_unsent_age = Millis(n); }},
      {"doctor", "long_transaction", true, 1000, kNoMax,
       [](Config& c, int64_t n) { c.doctor.long_transaction = Millis(n); }},
      {"doctor", "kafka_timeout", true, 100, kNoMax,
       [](Config& c, int64_t n) { c.doctor.kafka_timeout = Millis(n); }},
      {"admin", "query_timeout", true, 1, kNoMax,
       [](Config& c, int64_t n) { c.admin.query_timeout = Millis(n); }},
  };
}

// The seed with table.key's value replaced by `value`; *line is its 1-based line (0: no such key).
std::string WithValue(const std::string& seed, const std::string& table, const std::string& key,
                      const std::string& value, int* line) {
  std::vector<std::string> lines = Lines(seed);
  std::string current;
  *line = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& l = lines[i];
    if (IsHeader(l)) {
      const size_t open = l.find('['), close = l.find(']');
      current = l.substr(open + 1, close - open - 1);
      continue;
    }
    const auto v = KeyLineValue(l);
    if (!v || current != table) continue;
    const size_t begin = l.find_first_not_of(" \t");
    if (l.substr(begin, l.find_first_of(" \t=", begin) - begin) != key) continue;
    const auto [b, e] = Token(l, *v);
    lines[i] = l.substr(0, b) + value + l.substr(e);
    *line = static_cast<int>(i + 1);
    break;
  }
  return Join(lines);
}

// The oracle of one range-checked setting: `value` outside its range must be refused naming the
// line and the key; inside, load with exactly that value. Returns what went wrong ("" if nothing).
class RangeOracle {
 public:
  RangeOracle(std::string seed, const outboxd::Config& loaded, uint64_t random_seed)
      : seed_(std::move(seed)), loaded_(loaded), rng_(random_seed ^ 0xD1B54A32D192ED03ULL) {}

  std::string Check(const RangedSetting& s, std::string* input) {
    // Outside: below the minimum, or above the maximum where there is one.
    const bool above = s.max != kNoMax && (s.min == INT64_MIN || Draw(0, 1) == 1);
    int64_t bad =
        above ? s.max + Draw(1, 1'000'000) : s.min - Draw(1, s.duration ? s.min : 1'000'000);
    std::string text = Spell(s, bad);
    int line = 0;
    *input = WithValue(seed_, s.table, s.key, text, &line);
    if (line == 0) return "the seed has no " + s.table + "." + s.key;
    const std::string name = s.table + "." + s.key;
    auto refused = outboxd::ParseConfig(*input, "fuzz.toml");
    if (refused.ok()) return name + " = " + text + " (out of range) was accepted";
    const std::string want = "fuzz.toml:" + std::to_string(line) + ": " + name + ": ";
    if (refused.status().message().compare(0, want.size(), want) != 0) {
      return name + " = " + text +
             " refused without naming its line and key: " + refused.status().message();
    }
    // Inside: that value, and nothing else changed.
    const int64_t lo = std::max(s.min, s.low), hi = std::min(s.max, s.high);
    int64_t good = Draw(lo, std::min(hi, lo + (s.duration ? 100'000'000 : hi - lo)));
    good = std::max(lo, good / s.step * s.step);
    if (good % s.step != 0) good += s.step;
    text = Spell(s, good);
    *input = WithValue(seed_, s.table, s.key, text, &line);
    auto accepted = outboxd::ParseConfig(*input, "fuzz.toml");
    if (!accepted.ok()) {
      return name + " = " + text + " (in range) was refused: " + accepted.status().message();
    }
    outboxd::Config want_config = loaded_;
    s.set(want_config, good);
    if (Describe(*accepted) != Describe(want_config)) {
      return name + " = " + text + " loaded other values than " + std::to_string(good) + ":\n" +
             Describe(*accepted) + "expected:\n" + Describe(want_config);
    }
    return "";
  }

 private:
  int64_t Draw(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  // An integer as it is, a duration in one of the units it divides.
  std::string Spell(const RangedSetting& s, int64_t n) {
    if (!s.duration) return std::to_string(n);
    if (n < 0) return "\"" + std::to_string(n) + "ms\"";
    static const std::vector<std::pair<int64_t, const char*>> kUnits = {
        {86'400'000, "d"}, {3'600'000, "h"}, {60'000, "m"}, {1000, "s"}};
    std::vector<std::string> spellings = {std::to_string(n) + "ms"};
    for (const auto& [size, unit] : kUnits) {
      if (n > 0 && n % size == 0) spellings.push_back(std::to_string(n / size) + unit);
    }
    if (n > 60'000 && n % 60'000 != 0 && n % 1000 == 0) {
      spellings.push_back(std::to_string(n / 60'000) + "m" + std::to_string(n % 60'000 / 1000) +
                          "s");
    }
    return "\"" +
           spellings[static_cast<size_t>(Draw(0, static_cast<int64_t>(spellings.size()) - 1))] +
           "\"";
  }

  const std::string seed_;
  const outboxd::Config& loaded_;
  std::mt19937_64 rng_;
};

// "fuzz.toml:<line>: ..." or, for a key that is absent, "fuzz.toml: <key>: ...".
bool WellFormedError(const std::string& message) {
  const std::string prefix = std::string(kFileName) + ":";
  if (message.compare(0, prefix.size(), prefix) != 0) return false;
  size_t i = prefix.size();
  if (i < message.size() && std::isdigit(static_cast<unsigned char>(message[i]))) {
    while (i < message.size() && std::isdigit(static_cast<unsigned char>(message[i]))) ++i;
    return message.compare(i, 2, ": ") == 0;
  }
  if (message.compare(i, 1, " ") != 0) return false;
  size_t key_end = message.find(": ", i + 1);
  if (key_end == std::string::npos || key_end == i + 1) return false;
  for (size_t k = i + 1; k < key_end; ++k) {
    char c = message[k];
    if (!(std::islower(static_cast<unsigned char>(c)) || c == '_' || c == '.')) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: config_fuzz SEED.toml COUNT [RANDOM_SEED]\n";
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  if (!in) {
    std::cerr << "config_fuzz: cannot read " << argv[1] << "\n";
    return 2;
  }
  std::ostringstream text;
  text << in.rdbuf();
  const long count = std::atol(argv[2]);
  // A new random seed per run unless one is given: printed first, so any run can be replayed.
  const uint64_t random_seed =
      argc > 3 && *argv[3]
          ? std::strtoull(argv[3], nullptr, 10)
          : (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  std::cout << "config_fuzz: random seed " << random_seed << " (replay: config_fuzz " << argv[1]
            << " " << count << " " << random_seed << ")" << std::endl;
  setenv("OUTBOXD_PG_PORT", "55432", 0);
  setenv("OUTBOXD_KAFKA_PORT", "59092", 0);
  setenv("OUTBOXD_FUZZ_SET", "set", 1);
  unsetenv("OUTBOXD_FUZZ_UNSET");
  std::signal(SIGALRM, OnAlarm);

  // The seed itself must load.
  auto seed_config = outboxd::ParseConfig(text.str(), kFileName);
  if (!seed_config.ok()) {
    std::cerr << "config_fuzz: the seed does not load: " << seed_config.status().message() << "\n";
    return 1;
  }
  const std::string seed_values = Describe(*seed_config);
  auto fail = [&](const char* oracle, long i, const std::string& what) {
    WriteFailure(g_current);
    std::cerr << "config_fuzz: " << oracle << ", input " << i << " (random seed " << random_seed
              << "): " << what.substr(0, 4000) << "\n(written to config_fuzz_failure.toml)\n";
    return 1;
  };

  // 1. Any mutant loads or is refused with file:line.
  Mutator mutator(text.str(), random_seed);
  long accepted = 0, refused = 0;
  for (long i = 0; i < count; ++i) {
    g_current = mutator.Next();
    alarm(kSecondsPerInput);
    std::string failure;
    try {
      auto c = outboxd::ParseConfig(g_current, kFileName);
      if (c.ok()) {
        ++accepted;
      } else if (WellFormedError(c.status().message())) {
        ++refused;
      } else {
        failure = "refused without file:line: " + c.status().message().substr(0, 500);
      }
    } catch (const std::exception& e) {
      failure = std::string("an exception escaped ParseConfig: ") + e.what();
    } catch (...) {
      failure = "an unknown exception escaped ParseConfig";
    }
    alarm(0);
    if (!failure.empty()) return fail("mutant", i, failure);
  }

  // 2. A rewrite that keeps the meaning loads with the same values.
  Rewriter rewriter(text.str(), random_seed);
  const long rewrites = std::max(200L, count / 4);
  for (long i = 0; i < rewrites; ++i) {
    g_current = rewriter.Next();
    alarm(kSecondsPerInput);
    auto c = outboxd::ParseConfig(g_current, kFileName);
    alarm(0);
    if (!c.ok()) return fail("rewrite", i, "a valid rewrite was refused: " + c.status().message());
    if (const std::string values = Describe(*c); values != seed_values) {
      return fail("rewrite", i,
                  "a valid rewrite loaded other values:\n" + values + "expected (the seed's):\n" +
                      seed_values);
    }
  }

  // 3. Each range-checked setting: out of range refused by line and key, in range loaded as set.
  RangeOracle ranges(text.str(), *seed_config, random_seed);
  const std::vector<RangedSetting> settings = RangedSettings();
  const long range_checks = std::max(static_cast<long>(settings.size()) * 4, count / 10);
  for (long i = 0; i < range_checks; ++i) {
    const RangedSetting& s = settings[static_cast<size_t>(i) % settings.size()];
    alarm(kSecondsPerInput);
    const std::string failure = ranges.Check(s, &g_current);
    alarm(0);
    if (!failure.empty()) return fail("range", i, failure);
  }

  std::cout << "config_fuzz: " << count << " mutants (" << accepted << " loaded, " << refused
            << " refused with file:line or file and key), " << rewrites
            << " rewrites that keep the meaning (each loaded the seed's values), " << range_checks
            << " range checks of " << settings.size()
            << " settings (out of range refused by line and key, in range loaded as set); "
               "random seed "
            << random_seed << "; 0 failures\n";
  return 0;
}
