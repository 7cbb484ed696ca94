// inbox_consumer: an example Kafka consumer of outboxd's messages that applies each message's
// effect exactly once (docs/consuming.md). For every record, in ONE PostgreSQL transaction:
//   outbox.consume_once(consumer, outbox-id, outbox-created-at)  -- false: already applied, skip
//   the business update                                           -- here: credit an account
// then COMMIT, and only then store the Kafka offset (committed every --commit-every records and on
// shutdown). A crash anywhere redelivers records whose offsets were not committed; the inbox row
// that committed with their effect makes consume_once return false for them.
//
// Records: key = account, value = an integer amount. A value that is not an integer is poison:
// it is retried --retries times with backoff, then copied to the dead-letter topic (--dead-letter,
// default <topic>.dead-letter) with the error in a header, and skipped. A database error is not
// the message's fault: it is retried with backoff until it succeeds, without moving on (so the
// per-key order holds).
//
// It uses only librdkafka's C API and libpq, so it can be copied out of this repository.
//   inbox_consumer --bootstrap 127.0.0.1:9092 --topic orders --group billing
//                  --conninfo "dbname=app" [--name billing] [--commit-every 100]
// Prints one line per applied record ("applied <id>") and per skipped duplicate ("duplicate <id>").
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>

namespace {

volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

struct Options {
  std::string bootstrap, topic, group, conninfo, name, dead_letter;
  std::string instance_id;  // static group membership: a restart takes its partitions back at once
  int commit_every = 100;
  int retries = 3;
  bool use_inbox = true;  // --no-inbox: for the test that shows what the inbox prevents
};

[[noreturn]] void Usage(const char* why) {
  std::fprintf(stderr,
               "inbox_consumer: %s\nusage: inbox_consumer --bootstrap HOST:PORT --topic T "
               "--group G --conninfo STR [--name N] [--commit-every N] [--retries N] "
               "[--dead-letter TOPIC] [--instance-id ID] [--no-inbox]\n",
               why);
  std::exit(2);
}

Options Parse(int argc, char** argv) {
  Options o;
  std::map<std::string, std::string*> text = {
      {"--bootstrap", &o.bootstrap},    {"--topic", &o.topic}, {"--group", &o.group},
      {"--conninfo", &o.conninfo},      {"--name", &o.name},   {"--dead-letter", &o.dead_letter},
      {"--instance-id", &o.instance_id}};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--no-inbox") {
      o.use_inbox = false;
    } else if (i + 1 >= argc) {
      Usage(("missing value for " + a).c_str());
    } else if (text.count(a)) {
      *text[a] = argv[++i];
    } else if (a == "--commit-every") {
      o.commit_every = std::atoi(argv[++i]);
    } else if (a == "--retries") {
      o.retries = std::atoi(argv[++i]);
    } else {
      Usage(("unknown option " + a).c_str());
    }
  }
  if (o.bootstrap.empty() || o.topic.empty() || o.group.empty() || o.conninfo.empty()) {
    Usage("--bootstrap, --topic, --group and --conninfo are required");
  }
  if (o.name.empty()) o.name = o.group;
  if (o.dead_letter.empty()) o.dead_letter = o.topic + ".dead-letter";
  if (o.commit_every < 1) o.commit_every = 1;
  return o;
}

// The database side: one connection, the business tables, and the transaction per record.
class Database {
 public:
  explicit Database(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  ~Database() {
    if (conn_) PQfinish(conn_);
  }

  bool Connect() {
    if (conn_ && PQstatus(conn_) == CONNECTION_OK) return true;
    if (conn_) PQfinish(conn_);
    conn_ = PQconnectdb(conninfo_.c_str());
    if (PQstatus(conn_) != CONNECTION_OK) {
      std::fprintf(stderr, "postgres: %s", PQerrorMessage(conn_));
      return false;
    }
    // The example's business tables: balances, and a log of every applied effect (no unique key,
    // so an effect applied twice would show as two rows).
    return Exec(
        "CREATE TABLE IF NOT EXISTS example_accounts (account text PRIMARY KEY, balance bigint "
        "NOT NULL DEFAULT 0);"
        "CREATE TABLE IF NOT EXISTS example_effects (message_id bigint NOT NULL, account text, "
        "amount bigint NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
  }

  enum class Outcome { kApplied, kDuplicate, kFailed };

  // consume_once + the business update in one transaction.
  // The message is (message_id, created_at): an id alone can come back for another message.
  Outcome Apply(const std::string& consumer, int64_t message_id, int64_t created_at,
                const std::string& account, int64_t amount, bool use_inbox) {
    if (!Exec("BEGIN")) return Outcome::kFailed;
    std::string id = std::to_string(message_id), amt = std::to_string(amount);
    if (use_inbox) {
      std::string created = std::to_string(created_at);
      const char* p[3] = {consumer.c_str(), id.c_str(), created.c_str()};
      PGresult* r = PQexecParams(conn_, "SELECT outbox.consume_once($1, $2::bigint, $3::bigint)", 3,
                                 nullptr, p, nullptr, nullptr, 0);
      bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
      bool first = ok && std::strcmp(PQgetvalue(r, 0, 0), "t") == 0;
      if (!ok) std::fprintf(stderr, "consume_once: %s", PQerrorMessage(conn_));
      PQclear(r);
      if (!ok) return Rollback();
      if (!first) return Exec("COMMIT") ? Outcome::kDuplicate : Outcome::kFailed;
    }
    const char* p[3] = {account.c_str(), amt.c_str(), id.c_str()};
    PGresult* r = PQexecParams(conn_,
                               "WITH a AS (INSERT INTO example_accounts AS x (account, balance) "
                               "VALUES ($1, $2::bigint) ON CONFLICT (account) DO UPDATE "
                               "SET balance = x.balance + EXCLUDED.balance) "
                               "INSERT INTO example_effects (message_id, account, amount) "
                               "VALUES ($3::bigint, $1, $2::bigint)",
                               3, nullptr, p, nullptr, nullptr, 0);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) std::fprintf(stderr, "business update: %s", PQerrorMessage(conn_));
    PQclear(r);
    if (!ok) return Rollback();
    return Exec("COMMIT") ? Outcome::kApplied : Outcome::kFailed;
  }

 private:
  Outcome Rollback() {
    Exec("ROLLBACK");
    return Outcome::kFailed;
  }
  bool Exec(const char* sql) {
    PGresult* r = PQexec(conn_, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok) std::fprintf(stderr, "postgres: %s", PQerrorMessage(conn_));
    PQclear(r);
    return ok;
  }

  std::string conninfo_;
  PGconn* conn_ = nullptr;
};

std::string Header(const rd_kafka_message_t* m, const char* name) {
  rd_kafka_headers_t* headers = nullptr;
  if (rd_kafka_message_headers(m, &headers) != RD_KAFKA_RESP_ERR_NO_ERROR) return "";
  const void* value = nullptr;
  size_t size = 0;
  if (rd_kafka_header_get_last(headers, name, &value, &size) != RD_KAFKA_RESP_ERR_NO_ERROR ||
      value == nullptr) {
    return "";
  }
  return std::string(static_cast<const char*>(value), size);
}

bool ParseInt(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (end != s.c_str() + s.size()) return false;
  *out = v;
  return true;
}

rd_kafka_t* NewClient(rd_kafka_type_t type, const Options& o) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  auto set = [&](const char* k, const std::string& v) {
    if (rd_kafka_conf_set(conf, k, v.c_str(), err, sizeof(err)) != RD_KAFKA_CONF_OK) {
      std::fprintf(stderr, "%s: %s\n", k, err);
      std::exit(2);
    }
  };
  set("bootstrap.servers", o.bootstrap);
  if (type == RD_KAFKA_CONSUMER) {
    set("group.id", o.group);
    // A restarted member with the same id gets its partitions back without waiting for the
    // group to notice that the old one died (session.timeout.ms).
    if (!o.instance_id.empty()) set("group.instance.id", o.instance_id);
    set("auto.offset.reset", "earliest");
    // Offsets are stored by hand after the database commit, and committed by hand.
    set("enable.auto.commit", "false");
    set("enable.auto.offset.store", "false");
    // Only committed records of a transactional producer (outboxd's exactly-once mode); the same
    // as read_uncommitted for its at-least-once mode.
    set("isolation.level", "read_committed");
  } else {
    set("enable.idempotence", "true");
  }
  rd_kafka_t* rk = rd_kafka_new(type, conf, err, sizeof(err));
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    std::fprintf(stderr, "kafka: %s\n", err);
    std::exit(1);
  }
  return rk;
}

// Copies a poison record to the dead-letter topic with the error; true once acknowledged.
bool DeadLetter(rd_kafka_t* producer, const Options& o, const rd_kafka_message_t* m,
                const std::string& error) {
  rd_kafka_headers_t* h = nullptr;
  rd_kafka_message_headers(m, &h);
  rd_kafka_headers_t* copy = h ? rd_kafka_headers_copy(h) : rd_kafka_headers_new(2);
  rd_kafka_header_add(copy, "dead-letter-error", -1, error.c_str(), -1);
  rd_kafka_header_add(copy, "dead-letter-topic", -1, rd_kafka_topic_name(m->rkt), -1);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      producer, RD_KAFKA_V_TOPIC(o.dead_letter.c_str()), RD_KAFKA_V_KEY(m->key, m->key_len),
      RD_KAFKA_V_VALUE(m->payload, m->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_HEADERS(copy), RD_KAFKA_V_END);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    rd_kafka_headers_destroy(copy);
    return false;
  }
  return rd_kafka_flush(producer, 10'000) == RD_KAFKA_RESP_ERR_NO_ERROR;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = Parse(argc, argv);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  Database db(o.conninfo);
  while (!db.Connect()) {
    if (g_stop) return 1;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  rd_kafka_t* consumer = NewClient(RD_KAFKA_CONSUMER, o);
  rd_kafka_t* producer = NewClient(RD_KAFKA_PRODUCER, o);
  rd_kafka_poll_set_consumer(consumer);
  rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, o.topic.c_str(), RD_KAFKA_PARTITION_UA);
  if (rd_kafka_resp_err_t err = rd_kafka_subscribe(consumer, topics)) {
    std::fprintf(stderr, "subscribe: %s\n", rd_kafka_err2str(err));
    return 1;
  }
  rd_kafka_topic_partition_list_destroy(topics);

  int since_commit = 0;
  while (!g_stop) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(consumer, 200);
    if (m == nullptr) continue;
    if (m->err) {
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        std::fprintf(stderr, "consume: %s\n", rd_kafka_message_errstr(m));
      }
      rd_kafka_message_destroy(m);
      continue;
    }
    std::string value(static_cast<const char*>(m->payload ? m->payload : ""), m->len);
    std::string account(static_cast<const char*>(m->key ? m->key : ""), m->key_len);
    int64_t id = 0, created_at = 0, amount = 0;
    std::string error;
    if (!ParseInt(Header(m, "outbox-id"), &id)) error = "no outbox-id header";
    if (error.empty() && !ParseInt(Header(m, "outbox-created-at"), &created_at)) {
      error = "no outbox-created-at header";
    }
    // Poison: the record itself is wrong, retrying cannot help beyond a few attempts.
    for (int attempt = 0; error.empty() && attempt <= o.retries && !ParseInt(value, &amount);
         ++attempt) {
      if (attempt == o.retries) error = "value is not an integer amount";
      std::this_thread::sleep_for(std::chrono::milliseconds(50 << attempt));
    }
    if (!error.empty()) {
      while (!g_stop && !DeadLetter(producer, o, m, error)) {
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
      std::printf("dead-lettered %lld: %s\n", static_cast<long long>(id), error.c_str());
    } else {
      // The database: retried with backoff until it succeeds; never skipped.
      int backoff_ms = 100;
      Database::Outcome outcome;
      while ((outcome = db.Apply(o.name, id, created_at, account, amount, o.use_inbox)) ==
             Database::Outcome::kFailed) {
        if (g_stop) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
        backoff_ms = std::min(backoff_ms * 2, 10'000);
        db.Connect();
      }
      if (outcome == Database::Outcome::kFailed) {  // stopping: not processed, not stored
        rd_kafka_message_destroy(m);
        break;
      }
      std::printf("%s %lld\n", outcome == Database::Outcome::kApplied ? "applied" : "duplicate",
                  static_cast<long long>(id));
    }
    // Processed: its offset may be committed now (not before).
    rd_kafka_topic_partition_list_t* done = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(done, rd_kafka_topic_name(m->rkt), m->partition)->offset =
        m->offset + 1;
    rd_kafka_offsets_store(consumer, done);
    rd_kafka_topic_partition_list_destroy(done);
    rd_kafka_message_destroy(m);
    if (++since_commit >= o.commit_every) {
      rd_kafka_commit(consumer, nullptr, /*async=*/1);
      since_commit = 0;
    }
  }
  rd_kafka_commit(consumer, nullptr, /*async=*/0);
  rd_kafka_consumer_close(consumer);
  rd_kafka_destroy(consumer);
  rd_kafka_flush(producer, 5000);
  rd_kafka_destroy(producer);
  return 0;
}
