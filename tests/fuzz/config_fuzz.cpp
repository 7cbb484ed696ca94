// config_fuzz: mutates a configuration file many times and loads each mutant the way outboxd
// does (ParseConfig). Built with AddressSanitizer and UndefinedBehaviorSanitizer, linked with the
// configuration code only (tests/CMakeLists.txt). Every input must either load or be refused with
// a message that starts with the file name and names a line ("fuzz.toml:12: ...") or, for a
// required key that is absent, the key ("fuzz.toml: postgres.conninfo: ..."). A crash, a
// sanitizer report, an escaped exception or an input slower than the time limit fails the run;
// the input is written next to the working directory as config_fuzz_failure.toml.
//
//   config_fuzz SEED.toml COUNT [RANDOM_SEED]      (make test: 2000; make fuzz: 50000)
#include <unistd.h>

#include <cctype>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
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
  const uint64_t random_seed = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 20261201;
  setenv("OUTBOXD_PG_PORT", "55432", 0);
  setenv("OUTBOXD_KAFKA_PORT", "59092", 0);
  setenv("OUTBOXD_FUZZ_SET", "set", 1);
  unsetenv("OUTBOXD_FUZZ_UNSET");
  std::signal(SIGALRM, OnAlarm);

  // The seed itself must load.
  if (auto c = outboxd::ParseConfig(text.str(), kFileName); !c.ok()) {
    std::cerr << "config_fuzz: the seed does not load: " << c.status().message() << "\n";
    return 1;
  }
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
    if (!failure.empty()) {
      WriteFailure(g_current);
      std::cerr << "config_fuzz: input " << i << " (random seed " << random_seed << "): " << failure
                << "\n(written to config_fuzz_failure.toml)\n";
      return 1;
    }
  }
  std::cout << "config_fuzz: " << count << " inputs tried (random seed " << random_seed
            << "): " << accepted << " loaded, " << refused
            << " refused with file:line or file and key, 0 failures\n";
  return 0;
}
