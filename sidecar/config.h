// Config: the TOML file as a plain struct, validated. Every field's default is here and in
// config/outboxd.toml; the two are kept in step by a unit test that loads that file.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "duration.h"
#include "status.h"

namespace outboxd {

enum class OnSent { kDelete, kRetain };
enum class Delivery { kAtLeastOnce, kExactlyOnce };
enum class LogFormat { kText, kJson };

struct PostgresConfig {
  std::string conninfo;  // libpq connection string; required (with password_file's password set)
};

struct KafkaConfig {
  std::string bootstrap_servers;                  // required
  std::map<std::string, std::string> properties;  // passed to librdkafka as they are
};

struct RelayConfig {
  int batch_size = 1000;             // rows fetched per query
  int max_in_flight = 20000;         // produced but not yet acknowledged messages, at most
  Millis poll_interval{1000};        // longest sleep when idle (and the fallback without NOTIFY)
  Millis idle_poll_interval{5};      // caught up: pause between fetches (and idle polling)
  Millis idle_grace{200};            // then sets the sleeping flag and waits for NOTIFY
  bool notify = true;                // wake on NOTIFY from outbox.publish when asleep
  OnSent on_sent = OnSent::kDelete;  // delete acknowledged rows, or set sent_at and keep them
  Millis retention{86'400'000};      // on_sent = "retain": how long sent rows are kept
  Millis cleanup_interval{60'000};   // on_sent = "retain": how often old sent rows are removed
  Millis shutdown_timeout{10'000};   // SIGTERM: longest wait for outstanding acknowledgements
  std::string dead_letter_topic;     // empty: poison rows go to outbox.dead_letters only
  // exactly_once: each batch is one Kafka transaction with a checkpoint record (docs/design.md).
  Delivery delivery = Delivery::kAtLeastOnce;
  std::string checkpoint_topic = "outboxd.checkpoints";  // compacted; key: the transactional.id
  std::string transactional_id;                          // empty: "outboxd-<leadership.lock_id>"
  // Acknowledged rows are removed together once this old, or once batch_size of them gathered
  // (0: in every round).
  Millis remove_interval{0};
  // Arrivals slower than this (messages per second, measured between the last two rounds that
  // found rows): sleep on LISTEN as soon as caught up instead of polling through idle_grace, so
  // the next commit wakes the relay by NOTIFY (0: always wait idle_grace).
  int sleep_below_rate = 30;
  // A topic Kafka refuses (it does not exist, or outboxd may not write it): its rows wait in the
  // outbox, tried again with [backoff], while other topics flow. Once it was refused this long,
  // its waiting rows are dead-lettered with the error (0: they wait until the topic is fixed).
  Millis topic_unavailable_dead_letter_after{0};
};

struct BackoffConfig {
  Millis initial{100};
  Millis max{10'000};
};

// How a leader proves it is alive, and how fast a dead one loses the outbox (docs/design.md,
// section 5). A dead or frozen leader's session ends within about max(session_timeout,
// tcp_user_timeout, keepalive_idle + keepalive_interval x keepalive_count); a standby takes
// over at its next retry.
struct LeadershipConfig {
  int64_t lock_id = 7'299'548'542'091'251'572;  // advisory lock key; one per outbox
  Millis retry_interval{1000};                  // how often a standby tries to take over
  // PostgreSQL ends the leader's session after this long without a statement
  // (idle_session_timeout); the relay sends one at least every quarter of it.
  Millis session_timeout{10'000};
  Millis keepalive_idle{4000};  // TCP keepalives, both ends of every outboxd session (seconds)
  Millis keepalive_interval{2000};
  int keepalive_count = 3;
  Millis tcp_user_timeout{10'000};  // both ends: data unacknowledged this long ends a session
};

enum class CheckerKind { kNone, kHttp, kSql };
enum class FinalAction { kRollback, kDeadLetter };

// Half messages (docs/half-messages.md). Defaults are RocketMQ's: first check after 6 s, then
// every 30 s, at most 15 checks, then roll back.
struct CheckbackConfig {
  bool enabled = true;                       // run check-back (on the leading instance only)
  CheckerKind checker = CheckerKind::kNone;  // none: no checks; prepared messages wait for the app
  Millis transaction_timeout{6000};          // a prepared message is first checked this old
  Millis check_interval{30'000};             // then re-checked this often while unknown
  int max_checks = 15;                       // after this many unknown answers: the final action
  FinalAction final_action = FinalAction::kRollback;
  std::string final_topic;  // final_action = dead_letter: also publish the message here
  std::string http_url;     // checker = http: POST the check here
  Millis http_timeout{3000};
  std::string sql_conninfo;    // checker = sql: the application's database ("" = postgres.conninfo)
  std::string sql_query;       // $1 id, $2 key, $3 headers -> 'commit' | 'rollback' | 'unknown'
  Millis sql_timeout{3000};    // statement_timeout of that query
  int batch_size = 100;        // due messages checked per round
  Millis poll_interval{1000};  // how often it looks for due messages
  Millis settled_retention{86'400'000};  // committed / rolled back rows are kept this long
};

// Delayed delivery (outbox.publish(..., deliver_at)): the leader releases due messages into the
// outbox (sidecar/scheduler.h).
struct DelayConfig {
  bool enabled = true;         // release delayed messages (on the leading instance only)
  Millis poll_interval{1000};  // longest wait between releases: a due message waits at most this
  int batch_size = 1000;       // messages moved per release statement
};

// The consumer's inbox (outbox.consume_once, docs/consuming.md): the leader removes old rows.
struct InboxConfig {
  Millis retention{7 * 86'400'000LL};  // rows processed longer ago are removed (0: never)
  Millis cleanup_interval{3'600'000};  // how often that removal runs
};

// `outboxd doctor` and the start-up check (sidecar/doctor.h).
struct DoctorConfig {
  bool startup_check = true;         // run the checks at start-up, log each risk at warn
  Millis max_unsent_age{300'000};    // an unsent message older than this is a risk
  Millis long_transaction{300'000};  // an open transaction older than this is reported
  Millis kafka_timeout{10'000};      // how long to wait for the cluster's answers
};

struct LogConfig {
  std::string level = "info";
  LogFormat format = LogFormat::kText;  // "text" or "json" (one object per line)
};

// The admin HTTP listener (/metrics, /healthz, /readyz); docs/design.md, "The admin room".
struct AdminConfig {
  std::string listen = "127.0.0.1:9464";  // host:port; "" turns the listener off
  Millis query_timeout{2000};             // statement_timeout of the database gauges' queries
};

struct Config {
  std::string path;  // the file it was read from
  PostgresConfig postgres;
  KafkaConfig kafka;
  RelayConfig relay;
  BackoffConfig backoff;
  LeadershipConfig leadership;
  CheckbackConfig checkback;
  LogConfig log;
  DelayConfig delay;
  InboxConfig inbox;
  DoctorConfig doctor;
  AdminConfig admin;
  // Every secret value read (passwords in conninfo strings and URLs, secret librdkafka
  // properties, secret files): main hides them in everything outboxd prints (secrets.h).
  std::vector<std::string> secrets;
};

// The producer's transactional.id: relay.transactional_id, or "outboxd-<leadership.lock_id>";
// empty in at-least-once mode.
std::string TransactionalId(const Config& config);

// "host:port" (or "[v6]:port") split; nullopt when malformed. Port 0: any free port.
struct ListenAddress {
  std::string host;
  int port = 0;
};
std::optional<ListenAddress> ParseListenAddress(const std::string& text);

// Reads and validates a configuration file. On failure the Status message names the file, the
// line and the key, e.g. "outboxd.toml:12: relay.batch_size: expected an integer".
Result<Config> LoadConfig(const std::string& path);
// The same, from text (tests); `name` stands in for the file name in messages.
Result<Config> ParseConfig(const std::string& text, const std::string& name);

}  // namespace outboxd
