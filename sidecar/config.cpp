#include "config.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <sstream>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <toml.hpp>

#include "secrets.h"

namespace outboxd {
namespace {

// Raised inside this file only; LoadConfig turns it into a Status.
struct ConfigError {
  std::string message;
};

class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void Fail(const toml::value& at, const std::string& key, const std::string& what) {
    throw ConfigError{file_ + ":" + std::to_string(at.location().line()) + ": " + key + ": " +
                      what};
  }
  [[noreturn]] void FailNoLine(const std::string& key, const std::string& what) {
    throw ConfigError{file_ + ": " + key + ": " + what};
  }

  // Rejects keys of `table` that are not in `known`, naming the first by file:line.
  void OnlyKnownKeys(const toml::value& table, const std::string& prefix,
                     const std::set<std::string>& known) {
    for (const auto& [key, value] : table.as_table()) {
      if (!known.count(key)) {
        Fail(value, prefix + key, "unknown key (known here: " + Join(known) + ")");
      }
    }
  }

  const toml::value* Find(const toml::value& table, const std::string& key) {
    const auto& t = table.as_table();
    auto it = t.find(key);
    return it == t.end() ? nullptr : &it->second;
  }

  const toml::value& Table(const toml::value& root, const std::string& key) {
    const toml::value* v = Find(root, key);
    if (v == nullptr) return empty_;
    if (!v->is_table()) Fail(*v, key, "expected a table");
    return *v;
  }

  std::string String(const toml::value& v, const std::string& key) {
    if (!v.is_string()) Fail(v, key, "expected a string, got " + TypeName(v));
    return Interpolate(v, key, v.as_string().str);
  }

  void MaybeString(const toml::value& table, const std::string& prefix, const std::string& key,
                   std::string* out) {
    if (const toml::value* v = Find(table, key)) *out = String(*v, prefix + key);
  }

  void MaybeBool(const toml::value& table, const std::string& prefix, const std::string& key,
                 bool* out) {
    const toml::value* v = Find(table, key);
    if (v == nullptr) return;
    if (!v->is_boolean()) Fail(*v, prefix + key, "expected true or false, got " + TypeName(*v));
    *out = v->as_boolean();
  }

  template <typename Int>
  void MaybeInt(const toml::value& table, const std::string& prefix, const std::string& key,
                Int min, Int max, Int* out) {
    const toml::value* v = Find(table, key);
    if (v == nullptr) return;
    if (!v->is_integer()) Fail(*v, prefix + key, "expected an integer, got " + TypeName(*v));
    auto n = v->as_integer();
    if (n < static_cast<toml::integer>(min) || n > static_cast<toml::integer>(max)) {
      Fail(*v, prefix + key,
           "must be between " + std::to_string(min) + " and " + std::to_string(max));
    }
    *out = static_cast<Int>(n);
  }

  void MaybeDuration(const toml::value& table, const std::string& prefix, const std::string& key,
                     Millis min, Millis* out) {
    const toml::value* v = Find(table, key);
    if (v == nullptr) return;
    if (!v->is_string()) {
      Fail(*v, prefix + key,
           "expected a duration string such as \"500ms\", \"5s\", \"1m\", got " + TypeName(*v));
    }
    auto d = ParseDuration(String(*v, prefix + key));
    if (!d) Fail(*v, prefix + key, "not a duration (use ms, s, m, h or d, e.g. \"1m30s\")");
    if (*d < min) Fail(*v, prefix + key, "must be at least " + FormatDuration(min));
    *out = *d;
  }

  // Any scalar as the text librdkafka expects.
  std::string PropertyValue(const toml::value& v, const std::string& key) {
    if (v.is_string()) return String(v, key);
    if (v.is_integer()) return std::to_string(v.as_integer());
    if (v.is_boolean()) return v.as_boolean() ? "true" : "false";
    if (v.is_floating()) {
      std::ostringstream out;
      out << v.as_floating();
      return out.str();
    }
    Fail(v, key, "expected a string, number or boolean, got " + TypeName(v));
  }

 private:
  // Replaces ${NAME} with the environment variable NAME; an unset variable is an error.
  std::string Interpolate(const toml::value& at, const std::string& key, const std::string& in) {
    std::string out;
    size_t i = 0;
    while (i < in.size()) {
      size_t start = in.find("${", i);
      if (start == std::string::npos) {
        out.append(in, i);
        break;
      }
      size_t end = in.find('}', start);
      if (end == std::string::npos) Fail(at, key, "unterminated ${ in value");
      out.append(in, i, start - i);
      std::string name = in.substr(start + 2, end - start - 2);
      const char* value = std::getenv(name.c_str());
      if (value == nullptr) Fail(at, key, "environment variable " + name + " is not set");
      out += value;
      i = end + 1;
    }
    return out;
  }

  static std::string TypeName(const toml::value& v) {
    std::ostringstream out;
    out << v.type();
    return out.str();
  }

  static std::string Join(const std::set<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
  }

  std::string file_;
  const toml::value empty_ = toml::table{};
};

// librdkafka properties that outboxd sets itself or that would break its guarantees.
void CheckKafkaProperty(Reader& r, const toml::value& at, const std::string& name,
                        const std::string& value) {
  const std::string key = "kafka.properties.\"" + name + "\"";
  if (name == "bootstrap.servers" || name == "metadata.broker.list") {
    r.Fail(at, key, "set kafka.bootstrap_servers instead");
  }
  if (name == "enable.idempotence" && value != "true") {
    r.Fail(at, key, "outboxd needs the idempotent producer (per-key order across retries)");
  }
  if ((name == "acks" || name == "request.required.acks") && value != "all" && value != "-1") {
    r.Fail(at, key,
           "outboxd removes a row only after every in-sync replica has it: acks must be all");
  }
  if (name == "partitioner") {
    r.Fail(at, key, "outboxd uses murmur2_random so keys land where Java clients put them");
  }
  if (name == "enable.gapless.guarantee") {
    r.Fail(at, key, "outboxd sets it: a failed batch must not let later messages of a key pass");
  }
  if ((name == "message.timeout.ms" || name == "delivery.timeout.ms") && value != "0") {
    r.Fail(at, key,
           "must stay 0 (no limit): a timed-out message could be overtaken by a later one of its "
           "key; the outbox keeps the message, and relay.max_in_flight bounds what waits");
  }
  if (name == "transactional.id") {
    r.Fail(at, key, "set relay.delivery = \"exactly_once\" (and relay.transactional_id) instead");
  }
  if (name.rfind("dr_", 0) == 0 || name == "opaque" || name == "error_cb") {
    r.Fail(at, key, "callbacks are set by outboxd");
  }
  // librdkafka's own check of the name and the value (a conf only: nothing connects).
  std::unique_ptr<rd_kafka_conf_t, decltype(&rd_kafka_conf_destroy)> conf(rd_kafka_conf_new(),
                                                                          &rd_kafka_conf_destroy);
  char err[512];
  if (rd_kafka_conf_set(conf.get(), name.c_str(), value.c_str(), err, sizeof(err)) !=
      RD_KAFKA_CONF_OK) {
    r.Fail(at, key, err);
  }
}

// libpq's own check of a connection string. Its message may quote a piece of the string, so it is
// shown only when the string holds no password.
void CheckConninfo(Reader& r, const toml::value& at, const std::string& key,
                   const std::string& conninfo) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  if (opts != nullptr) {
    PQconninfoFree(opts);
    return;
  }
  std::string msg = err ? err : "invalid";
  PQfreemem(err);
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  std::string lower = conninfo;
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (lower.find("password") != std::string::npos || lower.find("://") != std::string::npos) {
    msg =
        "not a valid libpq connection string (libpq's detail is not shown: the string may hold "
        "a password)";
  }
  r.Fail(at, key, msg);
}

// A secret file named by the string value `v`; its contents join `secrets`.
std::string ReadSecretFileOrFail(Reader& r, const toml::value& v, const std::string& key,
                                 std::vector<std::string>* secrets) {
  auto value = ReadSecretFile(r.String(v, key));
  if (!value.ok()) r.Fail(v, key, value.status().message());
  secrets->push_back(*value);
  return *value;
}

void ReadCheckback(Reader& r, const toml::value& table, CheckbackConfig* out) {
  const std::string p = "checkback.";
  r.OnlyKnownKeys(table, p,
                  {"enabled", "checker", "transaction_timeout", "check_interval", "max_checks",
                   "final_action", "final_topic", "http_url", "http_timeout", "sql_conninfo",
                   "sql_query", "sql_timeout", "batch_size", "poll_interval", "settled_retention"});
  CheckbackConfig& cb = *out;
  r.MaybeBool(table, p, "enabled", &cb.enabled);
  if (const toml::value* v = r.Find(table, "checker")) {
    std::string s = r.String(*v, p + "checker");
    if (s == "none") {
      cb.checker = CheckerKind::kNone;
    } else if (s == "http") {
      cb.checker = CheckerKind::kHttp;
    } else if (s == "sql") {
      cb.checker = CheckerKind::kSql;
    } else {
      r.Fail(*v, p + "checker", "expected \"none\", \"http\" or \"sql\", got \"" + s + "\"");
    }
  }
  r.MaybeDuration(table, p, "transaction_timeout", Millis(0), &cb.transaction_timeout);
  r.MaybeDuration(table, p, "check_interval", Millis(10), &cb.check_interval);
  r.MaybeInt(table, p, "max_checks", 0, 1'000'000, &cb.max_checks);
  if (const toml::value* v = r.Find(table, "final_action")) {
    std::string s = r.String(*v, p + "final_action");
    if (s == "rollback") {
      cb.final_action = FinalAction::kRollback;
    } else if (s == "dead_letter") {
      cb.final_action = FinalAction::kDeadLetter;
    } else {
      r.Fail(*v, p + "final_action", "expected \"rollback\" or \"dead_letter\", got \"" + s + "\"");
    }
  }
  r.MaybeString(table, p, "final_topic", &cb.final_topic);
  if (!cb.final_topic.empty() && cb.final_action != FinalAction::kDeadLetter) {
    r.Fail(*r.Find(table, "final_topic"), p + "final_topic",
           "only used with final_action = \"dead_letter\"");
  }
  r.MaybeString(table, p, "http_url", &cb.http_url);
  if (!cb.http_url.empty() && cb.http_url.rfind("http://", 0) != 0 &&
      cb.http_url.rfind("https://", 0) != 0) {
    r.Fail(*r.Find(table, "http_url"), p + "http_url", "expected an http:// or https:// URL");
  }
  if (cb.checker == CheckerKind::kHttp && cb.http_url.empty()) {
    r.FailNoLine(p + "http_url", "required with checker = \"http\"");
  }
  r.MaybeDuration(table, p, "http_timeout", Millis(1), &cb.http_timeout);
  r.MaybeString(table, p, "sql_conninfo", &cb.sql_conninfo);
  r.MaybeString(table, p, "sql_query", &cb.sql_query);
  if (cb.checker == CheckerKind::kSql && cb.sql_query.empty()) {
    r.FailNoLine(p + "sql_query", "required with checker = \"sql\"");
  }
  r.MaybeDuration(table, p, "sql_timeout", Millis(1), &cb.sql_timeout);
  r.MaybeInt(table, p, "batch_size", 1, 100'000, &cb.batch_size);
  r.MaybeDuration(table, p, "poll_interval", Millis(1), &cb.poll_interval);
  r.MaybeDuration(table, p, "settled_retention", Millis(0), &cb.settled_retention);
}

void ReadDelayInboxDoctor(Reader& r, const toml::value& root, Config* c) {
  const toml::value& delay = r.Table(root, "delay");
  r.OnlyKnownKeys(delay, "delay.", {"enabled", "poll_interval", "batch_size"});
  r.MaybeBool(delay, "delay.", "enabled", &c->delay.enabled);
  r.MaybeDuration(delay, "delay.", "poll_interval", Millis(1), &c->delay.poll_interval);
  r.MaybeInt(delay, "delay.", "batch_size", 1, 100'000, &c->delay.batch_size);

  const toml::value& inbox = r.Table(root, "inbox");
  r.OnlyKnownKeys(inbox, "inbox.", {"retention", "cleanup_interval"});
  r.MaybeDuration(inbox, "inbox.", "retention", Millis(0), &c->inbox.retention);
  r.MaybeDuration(inbox, "inbox.", "cleanup_interval", Millis(1000), &c->inbox.cleanup_interval);

  const toml::value& doctor = r.Table(root, "doctor");
  r.OnlyKnownKeys(doctor, "doctor.",
                  {"startup_check", "max_unsent_age", "long_transaction", "kafka_timeout"});
  r.MaybeBool(doctor, "doctor.", "startup_check", &c->doctor.startup_check);
  r.MaybeDuration(doctor, "doctor.", "max_unsent_age", Millis(1000), &c->doctor.max_unsent_age);
  r.MaybeDuration(doctor, "doctor.", "long_transaction", Millis(1000), &c->doctor.long_transaction);
  r.MaybeDuration(doctor, "doctor.", "kafka_timeout", Millis(100), &c->doctor.kafka_timeout);
}

// `secrets` collects the secret values read so far, so that an error raised later can hide them.
Config Build(const toml::value& root, const std::string& file, std::vector<std::string>* secrets) {
  Reader r(file);
  Config c;
  c.path = file;
  r.OnlyKnownKeys(root, "",
                  {"postgres", "kafka", "relay", "backoff", "leadership", "checkback", "log",
                   "delay", "inbox", "doctor", "admin"});

  const toml::value& pg = r.Table(root, "postgres");
  r.OnlyKnownKeys(pg, "postgres.", {"conninfo", "password_file"});
  r.MaybeString(pg, "postgres.", "conninfo", &c.postgres.conninfo);
  if (c.postgres.conninfo.empty()) r.FailNoLine("postgres.conninfo", "required (a libpq string)");
  CheckConninfo(r, *r.Find(pg, "conninfo"), "postgres.conninfo", c.postgres.conninfo);
  secrets->push_back(ConninfoPassword(c.postgres.conninfo));
  const toml::value* password_file = r.Find(pg, "password_file");
  if (password_file != nullptr && !r.String(*password_file, "postgres.password_file").empty()) {
    const toml::value* v = password_file;
    const std::string password = ReadSecretFileOrFail(r, *v, "postgres.password_file", secrets);
    auto with = ConninfoWithPassword(c.postgres.conninfo, password);
    if (!with.ok()) r.Fail(*v, "postgres.password_file", with.status().message());
    c.postgres.conninfo = *with;
  }

  const toml::value& kafka = r.Table(root, "kafka");
  r.OnlyKnownKeys(kafka, "kafka.", {"bootstrap_servers", "properties", "property_files"});
  r.MaybeString(kafka, "kafka.", "bootstrap_servers", &c.kafka.bootstrap_servers);
  if (c.kafka.bootstrap_servers.empty()) r.FailNoLine("kafka.bootstrap_servers", "required");
  const toml::value& props = r.Table(kafka, "properties");
  for (const auto& [name, value] : props.as_table()) {
    std::string text = r.PropertyValue(value, "kafka.properties.\"" + name + "\"");
    if (IsSecretKafkaProperty(name)) secrets->push_back(text);
    CheckKafkaProperty(r, value, name, text);
    c.kafka.properties[name] = text;
  }
  // Properties whose values are read from files (Kubernetes Secrets), e.g. "sasl.password".
  const toml::value& files = r.Table(kafka, "property_files");
  for (const auto& [name, value] : files.as_table()) {
    const std::string key = "kafka.property_files.\"" + name + "\"";
    if (props.as_table().count(name)) r.Fail(value, key, "also set in [kafka.properties]");
    std::string text = ReadSecretFileOrFail(r, value, key, secrets);
    CheckKafkaProperty(r, value, name, text);
    c.kafka.properties[name] = text;
  }

  const toml::value& relay = r.Table(root, "relay");
  const std::string p = "relay.";
  r.OnlyKnownKeys(
      relay, p,
      {"batch_size", "max_in_flight", "poll_interval", "idle_poll_interval", "idle_grace", "notify",
       "on_sent", "retention", "cleanup_interval", "shutdown_timeout", "dead_letter_topic",
       "delivery", "checkpoint_topic", "transactional_id", "remove_interval", "sleep_below_rate",
       "topic_unavailable_dead_letter_after"});
  RelayConfig& rc = c.relay;
  r.MaybeInt(relay, p, "batch_size", 1, 100'000, &rc.batch_size);
  r.MaybeInt(relay, p, "max_in_flight", 1, 1'000'000, &rc.max_in_flight);
  if (rc.max_in_flight < rc.batch_size) {
    r.Fail(*(r.Find(relay, "max_in_flight") ? r.Find(relay, "max_in_flight")
                                            : r.Find(relay, "batch_size")),
           "relay.max_in_flight", "must be at least relay.batch_size");
  }
  r.MaybeDuration(relay, p, "poll_interval", Millis(1), &rc.poll_interval);
  r.MaybeDuration(relay, p, "idle_poll_interval", Millis(1), &rc.idle_poll_interval);
  r.MaybeDuration(relay, p, "idle_grace", Millis(0), &rc.idle_grace);
  r.MaybeBool(relay, p, "notify", &rc.notify);
  r.MaybeInt(relay, p, "sleep_below_rate", 0, 1'000'000, &rc.sleep_below_rate);
  if (const toml::value* v = r.Find(relay, "on_sent")) {
    std::string s = r.String(*v, "relay.on_sent");
    if (s == "delete") {
      rc.on_sent = OnSent::kDelete;
    } else if (s == "retain") {
      rc.on_sent = OnSent::kRetain;
    } else {
      r.Fail(*v, "relay.on_sent", "expected \"delete\" or \"retain\", got \"" + s + "\"");
    }
  }
  r.MaybeDuration(relay, p, "retention", Millis(1000), &rc.retention);
  r.MaybeDuration(relay, p, "cleanup_interval", Millis(1000), &rc.cleanup_interval);
  r.MaybeDuration(relay, p, "shutdown_timeout", Millis(0), &rc.shutdown_timeout);
  r.MaybeString(relay, p, "dead_letter_topic", &rc.dead_letter_topic);
  if (const toml::value* v = r.Find(relay, "delivery")) {
    std::string s = r.String(*v, "relay.delivery");
    if (s == "at_least_once") {
      rc.delivery = Delivery::kAtLeastOnce;
    } else if (s == "exactly_once") {
      rc.delivery = Delivery::kExactlyOnce;
    } else {
      r.Fail(*v, "relay.delivery",
             "expected \"at_least_once\" or \"exactly_once\", got \"" + s + "\"");
    }
  }
  r.MaybeString(relay, p, "checkpoint_topic", &rc.checkpoint_topic);
  if (rc.checkpoint_topic.empty()) {
    r.Fail(*r.Find(relay, "checkpoint_topic"), "relay.checkpoint_topic", "must not be empty");
  }
  r.MaybeString(relay, p, "transactional_id", &rc.transactional_id);
  r.MaybeDuration(relay, p, "remove_interval", Millis(0), &rc.remove_interval);
  r.MaybeDuration(relay, p, "topic_unavailable_dead_letter_after", Millis(0),
                  &rc.topic_unavailable_dead_letter_after);

  const toml::value& backoff = r.Table(root, "backoff");
  r.OnlyKnownKeys(backoff, "backoff.", {"initial", "max"});
  r.MaybeDuration(backoff, "backoff.", "initial", Millis(1), &c.backoff.initial);
  r.MaybeDuration(backoff, "backoff.", "max", Millis(1), &c.backoff.max);
  if (c.backoff.max < c.backoff.initial) {
    r.FailNoLine("backoff.max", "must be at least backoff.initial");
  }

  const toml::value& lead = r.Table(root, "leadership");
  const std::string l = "leadership.";
  LeadershipConfig& lc = c.leadership;
  r.OnlyKnownKeys(lead, l,
                  {"lock_id", "retry_interval", "session_timeout", "keepalive_idle",
                   "keepalive_interval", "keepalive_count", "tcp_user_timeout"});
  r.MaybeInt(lead, l, "lock_id", INT64_MIN, INT64_MAX, &lc.lock_id);
  r.MaybeDuration(lead, l, "retry_interval", Millis(10), &lc.retry_interval);
  r.MaybeDuration(lead, l, "session_timeout", Millis(1000), &lc.session_timeout);
  // PostgreSQL and libpq take keepalive times in whole seconds.
  r.MaybeDuration(lead, l, "keepalive_idle", Millis(1000), &lc.keepalive_idle);
  r.MaybeDuration(lead, l, "keepalive_interval", Millis(1000), &lc.keepalive_interval);
  r.MaybeInt(lead, l, "keepalive_count", 1, 100, &lc.keepalive_count);
  r.MaybeDuration(lead, l, "tcp_user_timeout", Millis(1000), &lc.tcp_user_timeout);
  for (const char* key : {"keepalive_idle", "keepalive_interval"}) {
    Millis d = std::string(key) == "keepalive_idle" ? lc.keepalive_idle : lc.keepalive_interval;
    if (d.count() % 1000 != 0) r.Fail(*r.Find(lead, key), l + key, "must be whole seconds");
  }

  ReadCheckback(r, r.Table(root, "checkback"), &c.checkback);
  ReadDelayInboxDoctor(r, root, &c);
  if (!c.checkback.sql_conninfo.empty()) {
    CheckConninfo(r, *r.Find(r.Table(root, "checkback"), "sql_conninfo"), "checkback.sql_conninfo",
                  c.checkback.sql_conninfo);
    secrets->push_back(ConninfoPassword(c.checkback.sql_conninfo));
  }
  secrets->push_back(UrlPassword(c.checkback.http_url));

  const toml::value& log = r.Table(root, "log");
  r.OnlyKnownKeys(log, "log.", {"level", "format"});
  if (const toml::value* v = r.Find(log, "format")) {
    std::string format = r.String(*v, "log.format");
    if (format == "text") {
      c.log.format = LogFormat::kText;
    } else if (format == "json") {
      c.log.format = LogFormat::kJson;
    } else {
      r.Fail(*v, "log.format", "expected \"text\" or \"json\", got \"" + format + "\"");
    }
  }
  if (const toml::value* v = r.Find(log, "level")) {
    std::string level = r.String(*v, "log.level");
    static const std::set<std::string> kLevels = {"trace", "debug", "info", "warn", "error"};
    if (!kLevels.count(level))
      r.Fail(*v, "log.level", "expected trace, debug, info, warn or error");
    c.log.level = level;
  }

  const toml::value& admin = r.Table(root, "admin");
  r.OnlyKnownKeys(admin, "admin.", {"listen", "query_timeout"});
  r.MaybeString(admin, "admin.", "listen", &c.admin.listen);
  if (!c.admin.listen.empty() && !ParseListenAddress(c.admin.listen)) {
    r.Fail(*r.Find(admin, "listen"), "admin.listen",
           "expected host:port (e.g. \"127.0.0.1:9464\", \"[::1]:9464\") or \"\" (off)");
  }
  r.MaybeDuration(admin, "admin.", "query_timeout", Millis(1), &c.admin.query_timeout);
  for (const std::string& s : *secrets) {
    if (!s.empty()) c.secrets.push_back(s);
  }
  return c;
}

// toml11's syntax errors read "[error] toml::parse_...: msg\n --> file\n   |\n 3 | ...".
// Keeps that text, prefixed with file:line so the first line says where.
std::string SyntaxMessage(const std::string& file, const std::exception& e,
                          const toml::source_location& where) {
  return file + ":" + std::to_string(where.line()) + ": syntax error\n" + e.what();
}

// toml11 parses arrays and inline tables recursively: a file nested a few thousand levels deep
// overflows the stack (found by tests/fuzz/config_fuzz.cpp). outboxd's settings nest three
// levels at most, so deeper text is refused before toml11 sees it. A scan that skips strings and
// comments; "line" is where the limit was passed.
constexpr int kMaxNesting = 32;

std::optional<size_t> TooDeepAtLine(const std::string& text) {
  int depth = 0;
  size_t line = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
    } else if (c == '#') {
      while (i + 1 < text.size() && text[i + 1] != '\n') ++i;
    } else if (c == '"' || c == '\'') {
      const bool multi = text.compare(i, 3, std::string(3, c)) == 0;
      const std::string close = multi ? std::string(3, c) : std::string(1, c);
      for (i += close.size(); i < text.size(); ++i) {
        if (text[i] == '\n') {
          ++line;
          if (!multi) break;  // a one-line string ends at the line's end (an error for toml11)
        } else if (c == '"' && text[i] == '\\') {
          if (i + 1 < text.size() && text[i + 1] == '\n') ++line;
          ++i;
        } else if (text.compare(i, close.size(), close) == 0) {
          i += close.size() - 1;
          break;
        }
      }
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxNesting) return line;
    } else if (c == ']' || c == '}') {
      depth = std::max(0, depth - 1);
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<ListenAddress> ParseListenAddress(const std::string& text) {
  ListenAddress a;
  size_t colon;
  if (!text.empty() && text[0] == '[') {
    size_t close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return std::nullopt;
    }
    a.host = text.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = text.rfind(':');
    if (colon == std::string::npos) return std::nullopt;
    a.host = text.substr(0, colon);
    if (a.host.find(':') != std::string::npos) return std::nullopt;  // v6 needs brackets
  }
  const std::string port = text.substr(colon + 1);
  if (a.host.empty() || port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  a.port = std::stoi(port);
  if (a.port > 65535) return std::nullopt;
  return a;
}

Result<Config> ParseConfig(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  // Messages are Redact()ed: one may quote a source line holding a password (syntax errors) or a
  // value read before the error.
  std::vector<std::string> secrets;
  if (std::optional<size_t> line = TooDeepAtLine(text)) {
    return Status::Invalid(name + ":" + std::to_string(*line) +
                           ": arrays or inline tables nested " + "deeper than " +
                           std::to_string(kMaxNesting) + " levels");
  }
  try {
    toml::value root = toml::parse(in, name);
    return Build(root, name, &secrets);
  } catch (const ConfigError& e) {
    return Status::Invalid(RedactWith(e.message, secrets));
  } catch (const toml::syntax_error& e) {
    return Status::Invalid(RedactWith(SyntaxMessage(name, e, e.location()), secrets));
  } catch (const toml::exception& e) {
    return Status::Invalid(RedactWith(SyntaxMessage(name, e, e.location()), secrets));
  }
}

std::string TransactionalId(const Config& config) {
  if (config.relay.delivery != Delivery::kExactlyOnce) return "";
  if (!config.relay.transactional_id.empty()) return config.relay.transactional_id;
  return "outboxd-" + std::to_string(config.leadership.lock_id);
}

Result<Config> LoadConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Invalid(path + ": cannot open configuration file");
  std::ostringstream text;
  text << in.rdbuf();
  return ParseConfig(text.str(), path);
}

}  // namespace outboxd
