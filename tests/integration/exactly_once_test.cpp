// Exactly-once mode against the real broker and PostgreSQL: the checkpoint topic outboxd creates,
// a start-up whose checkpoint topic holds a long history, recovery that must skip the checkpoint
// of an aborted transaction, and removals that wait for the WAL flush whatever the database's
// default synchronous_commit.
#include <librdkafka/rdkafka.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <map>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../support/integration.h"
#include "checkpoint.h"
#include "config.h"
#include "outbox_store.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

// Far above any id a test's outbox reaches: checkpoints naming these remove nothing.
constexpr int64_t kFarId = 1'000'000'000'000;

rd_kafka_t* NewClient(const Services& s, rd_kafka_type_t type,
                      const std::map<std::string, std::string>& extra = {}) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  std::map<std::string, std::string> p = extra;
  p["bootstrap.servers"] = s.kafka_bootstrap;
  for (const auto& [k, v] : p) {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof(err)) != RD_KAFKA_CONF_OK) {
      throw std::runtime_error(k + ": " + err);
    }
  }
  rd_kafka_t* rk = rd_kafka_new(type, conf, err, sizeof(err));
  if (rk == nullptr) throw std::runtime_error(err);
  return rk;
}

// A checkpoint topic as outboxd made it before it set small segments: one partition, compacted.
void CreateOldStyleCheckpointTopic(const Services& s, const std::string& topic) {
  rd_kafka_t* rk = NewClient(s, RD_KAFKA_PRODUCER);
  char err[512];
  rd_kafka_NewTopic_t* nt = rd_kafka_NewTopic_new(topic.c_str(), 1, 1, err, sizeof(err));
  rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
  rd_kafka_queue_t* q = rd_kafka_queue_new(rk);
  rd_kafka_CreateTopics(rk, &nt, 1, nullptr, q);
  rd_kafka_event_t* ev = rd_kafka_queue_poll(q, 30000);
  std::string error = ev == nullptr ? "no answer" : "";
  if (ev && rd_kafka_event_error(ev)) error = rd_kafka_event_error_string(ev);
  if (ev && error.empty()) {
    size_t n = 0;
    const rd_kafka_topic_result_t** res =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
    if (n == 1 && rd_kafka_topic_result_error(res[0])) {
      error = rd_kafka_topic_result_error_string(res[0]);
    }
  }
  if (ev) rd_kafka_event_destroy(ev);
  rd_kafka_queue_destroy(q);
  rd_kafka_NewTopic_destroy(nt);
  rd_kafka_destroy(rk);
  if (!error.empty()) throw std::runtime_error("create " + topic + ": " + error);
}

// The topic's configuration as the broker describes it, and its partition count.
std::map<std::string, std::string> DescribeTopic(const Services& s, const std::string& topic,
                                                 int* partitions) {
  rd_kafka_t* rk = NewClient(s, RD_KAFKA_PRODUCER);
  rd_kafka_topic_t* t = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
  const rd_kafka_metadata_t* md = nullptr;
  *partitions = 0;
  if (rd_kafka_metadata(rk, 0, t, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1 &&
      md->topics[0].err == 0) {
    *partitions = md->topics[0].partition_cnt;
  }
  if (md) rd_kafka_metadata_destroy(md);
  rd_kafka_topic_destroy(t);
  rd_kafka_ConfigResource_t* res =
      rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic.c_str());
  rd_kafka_queue_t* q = rd_kafka_queue_new(rk);
  rd_kafka_DescribeConfigs(rk, &res, 1, nullptr, q);
  rd_kafka_event_t* ev = rd_kafka_queue_poll(q, 30000);
  std::map<std::string, std::string> out;
  if (ev && !rd_kafka_event_error(ev)) {
    size_t n = 0;
    const rd_kafka_ConfigResource_t** rs =
        rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &n);
    for (size_t i = 0; i < n; ++i) {
      size_t cn = 0;
      const rd_kafka_ConfigEntry_t** entries = rd_kafka_ConfigResource_configs(rs[i], &cn);
      for (size_t j = 0; j < cn; ++j) {
        const char* v = rd_kafka_ConfigEntry_value(entries[j]);
        out[rd_kafka_ConfigEntry_name(entries[j])] = v ? v : "";
      }
    }
  }
  if (ev) rd_kafka_event_destroy(ev);
  rd_kafka_queue_destroy(q);
  rd_kafka_ConfigResource_destroy(res);
  rd_kafka_destroy(rk);
  return out;
}

void Check(rd_kafka_error_t* error, const char* what) {
  if (error == nullptr) return;
  std::string text = std::string(what) + ": " + rd_kafka_error_string(error);
  rd_kafka_error_destroy(error);
  throw std::runtime_error(text);
}

void Produce(rd_kafka_t* rk, const std::string& topic, const std::string& key,
             const std::string& value) {
  for (;;) {
    rd_kafka_resp_err_t e =
        rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_PARTITION(0),
                          RD_KAFKA_V_KEY(key.data(), key.size()),
                          RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return;
    if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      throw std::runtime_error("produce: " + std::string(rd_kafka_err2str(e)));
    }
    rd_kafka_poll(rk, 10);
  }
}

// The delivery reports' errors, counted by the producer's callback.
std::atomic<int> g_failed_reports{0};

// `n` committed checkpoints of outbox `outbox` under `key`, each naming one far id (so applying
// any of them removes nothing), as a busy outbox leaves them: the last one names kFarId + n - 1.
void FillCheckpoints(const Services& s, const std::string& topic, const std::string& key,
                     const std::string& outbox, int n) {
  g_failed_reports = 0;
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  for (const auto& [k, v] :
       std::map<std::string, std::string>{{"bootstrap.servers", s.kafka_bootstrap},
                                          {"linger.ms", "20"},
                                          {"batch.num.messages", "10000"},
                                          {"batch.size", "4000000"},
                                          {"queue.buffering.max.messages", "1000000"},
                                          {"compression.type", "lz4"}}) {
    rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof(err));
  }
  rd_kafka_conf_set_dr_msg_cb(conf, [](rd_kafka_t*, const rd_kafka_message_t* m, void*) {
    if (m->err) ++g_failed_reports;
  });
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (rk == nullptr) throw std::runtime_error(err);
  for (int i = 0; i < n; ++i) {
    Checkpoint c;
    c.outbox = outbox;
    c.sent = {kFarId + i};
    Produce(rk, topic, key, EncodeCheckpoint(c));
    if (i % 10000 == 0) rd_kafka_poll(rk, 0);
  }
  rd_kafka_resp_err_t e = rd_kafka_flush(rk, 120000);
  rd_kafka_destroy(rk);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR || g_failed_reports > 0) {
    throw std::runtime_error("filling " + topic + ": " + rd_kafka_err2str(e) + ", " +
                             std::to_string(g_failed_reports.load()) + " failed");
  }
}

std::string ExactlyOnceToml(const std::string& transactional_id,
                            const std::string& checkpoint_topic) {
  return "delivery = \"exactly_once\"\ntransactional_id = \"" + transactional_id +
         "\"\ncheckpoint_topic = \"" + checkpoint_topic + "\"\n";
}

// "exactly-once: transactions ready (N ms)": how long the term's preparation took, or -1.
long long ReadyMillis(const std::string& log) {
  std::smatch m;
  static const std::regex kReady("transactions ready \\(([0-9]+) ms\\)");
  return std::regex_search(log, m, kReady) ? std::stoll(m[1]) : -1;
}

class ExactlyOnceIntegration : public ServicesTest {
 protected:
  std::string Incarnation() const {
    return db_->Scalar("SELECT incarnation::text FROM outbox.relay_state");
  }
  // A checkpoint topic the test deletes at the end.
  std::string CheckpointTopicName() {
    std::string t = UniqueName("ckpt");
    topics_.push_back(t);
    return t;
  }
};

// The topic outboxd creates: compacted, one partition, and segments small and young enough for
// compaction to keep it near one record per outbox. Doctor says so; and it warns about a topic
// made with compaction alone (the active segment, up to 1 GiB or 7 days, is never compacted).
TEST_F(ExactlyOnceIntegration, CheckpointTopicIsCreatedCompactedWithOnePartitionAndSmallSegments) {
  const std::string checkpoints = CheckpointTopicName();
  OutboxdProcess outboxd(services_, *db_, ExactlyOnceToml("eo-" + topic_, checkpoints));
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("no earlier checkpoint of this outbox", 60s)) << outboxd.Log();
  Consumer consumer(services_, topic_);
  ExpectedMessages sent = PublishMany(5, 2, topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(sent), 60s)) << outboxd.Log();

  int partitions = 0;
  auto configs = DescribeTopic(services_, checkpoints, &partitions);
  EXPECT_EQ(partitions, 1);
  EXPECT_EQ(configs["cleanup.policy"], "compact");
  EXPECT_EQ(configs["segment.bytes"], "1048576");
  EXPECT_EQ(configs["segment.ms"], "3600000");
  EXPECT_EQ(configs["min.cleanable.dirty.ratio"], "0.1");

  auto verdict = [](const std::string& doctor_json, const std::string& topic,
                    const std::string& check) {
    auto j = nlohmann::json::parse(doctor_json, nullptr, false);
    if (j.is_discarded()) return std::string("unparsed: ") + doctor_json;
    for (const auto& f : j["findings"]) {
      if (f["subject"] == topic && f["check"] == check) return f["verdict"].get<std::string>();
    }
    return std::string("missing");
  };
  auto [rc, out] = RunOutboxd({"doctor", "--json", "--config", outboxd.config_path()});
  EXPECT_EQ(verdict(out, checkpoints, "cleanup.policy"), "ok") << out;
  EXPECT_EQ(verdict(out, checkpoints, "partitions"), "ok") << out;
  EXPECT_EQ(verdict(out, checkpoints, "segments"), "ok") << out;

  const std::string old_style = CheckpointTopicName();
  CreateOldStyleCheckpointTopic(services_, old_style);
  OutboxdProcess old(services_, *db_, ExactlyOnceToml("eo-" + topic_, old_style));
  auto [old_rc, old_out] = RunOutboxd({"doctor", "--json", "--config", old.config_path()});
  EXPECT_EQ(verdict(old_out, old_style, "cleanup.policy"), "ok") << old_out;
  EXPECT_EQ(verdict(old_out, old_style, "segments"), "warn") << old_out;
}

// A busy outbox's checkpoint topic, made before outboxd set small segments, holds a checkpoint
// per transaction in its never-compacted active segment. The start of a term must not read them
// all: it used to, within 2/5 of leadership.session_timeout, and with a million of them it timed
// out at every try and delivered nothing. (The records are checkpoints of this very outbox under
// its transactional.id: each one is parsed by a reader that reads from the beginning.)
TEST_F(ExactlyOnceIntegration, AMillionCheckpointsInTheTopicDoNotKeepTheOutboxFromStarting) {
  const std::string checkpoints = CheckpointTopicName();
  CreateOldStyleCheckpointTopic(services_, checkpoints);
  const std::string txid = "eo-" + topic_;
  constexpr int kCheckpoints = 1'000'000;
  FillCheckpoints(services_, checkpoints, txid, Incarnation(), kCheckpoints);
  ExpectedMessages sent = PublishMany(20, 4, topic_);

  Consumer consumer(services_, topic_);
  OutboxdProcess outboxd(services_, *db_, ExactlyOnceToml(txid, checkpoints));
  outboxd.Start();
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(sent), 60s)) << "the outbox did not start delivering\n"
                                                     << outboxd.Log().substr(0, 4000);
  const std::string log = outboxd.Log();
  // It found the newest checkpoint, the one naming a single far id.
  EXPECT_NE(log.find("the last committed transaction carried 1 rows"), std::string::npos) << log;
  std::cout << "[ measure  ] reading the checkpoint among " << kCheckpoints
            << " records: term ready in " << ReadyMillis(log) << " ms\n";
  ExpectedMessages markers = PublishMarkers(topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(markers), 30s)) << outboxd.Log();
  sent.insert(markers.begin(), markers.end());
  DeliveryCheck check = CheckDelivery(sent, consumer.records(), kPartitions);
  EXPECT_TRUE(check.ok()) << check.Summary();
  EXPECT_EQ(check.duplicates, 0u);
}

// The outbox's last committed checkpoint names rows long gone; then a transaction of the same
// key names the rows still waiting, and aborts (a crash before the commit: the rows were never
// delivered). Recovery must take the committed one: taking the aborted one removes those rows
// unsent. The aborted transaction also carries thousands of another outbox's records, so a reader
// that starts near the end starts inside it, past its checkpoint.
TEST_F(ExactlyOnceIntegration, RecoverySkipsTheCheckpointOfAnAbortedTransaction) {
  const std::string checkpoints = CheckpointTopicName();
  CreateOldStyleCheckpointTopic(services_, checkpoints);
  const std::string txid = "eo-" + topic_;
  ExpectedMessages waiting = PublishMany(10, 2, topic_);

  rd_kafka_t* rk = NewClient(services_, RD_KAFKA_PRODUCER,
                             {{"transactional.id", "writer-" + topic_}, {"linger.ms", "5"}});
  Check(rd_kafka_init_transactions(rk, 30000), "init");
  Checkpoint committed;
  committed.outbox = Incarnation();
  committed.sent = {kFarId};
  Check(rd_kafka_begin_transaction(rk), "begin");
  Produce(rk, checkpoints, txid, EncodeCheckpoint(committed));
  Check(rd_kafka_commit_transaction(rk, 30000), "commit");

  Checkpoint aborted;
  aborted.outbox = Incarnation();
  for (const auto& [id, m] : waiting) aborted.sent.push_back(id);
  Check(rd_kafka_begin_transaction(rk), "begin");
  Produce(rk, checkpoints, txid, EncodeCheckpoint(aborted));
  Checkpoint other;
  other.outbox = "another-outbox";
  for (int i = 0; i < 3000; ++i) {
    other.sent = {kFarId + i};
    Produce(rk, checkpoints, "another-outbox", EncodeCheckpoint(other));
  }
  ASSERT_EQ(rd_kafka_flush(rk, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
  Check(rd_kafka_abort_transaction(rk, 30000), "abort");
  rd_kafka_destroy(rk);

  Consumer consumer(services_, topic_);
  OutboxdProcess outboxd(services_, *db_, ExactlyOnceToml(txid, checkpoints));
  outboxd.Start();
  EXPECT_TRUE(consumer.ReadUntilIds(Ids(waiting), 60s))
      << "rows named only by an aborted transaction's checkpoint were removed unsent ("
      << db_->Scalar("SELECT count(*) FROM outbox.messages") << " rows left in the outbox)\n"
      << outboxd.Log();
  EXPECT_NE(outboxd.Log().find("the last committed transaction carried 1 rows"), std::string::npos)
      << outboxd.Log();
}

// Exactly once, a removal whose commit PostgreSQL loses in a crash is a duplicate nobody can
// detect (the next checkpoint names only its own rows), so the relay's session pins
// synchronous_commit = on whatever the role's or database's default. Witness: the WAL is flushed
// past the removal's commit when the removal returns. Asynchronous commits leave the flush to the
// WAL writer (every wal_writer_delay, 200 ms by default), so at least one of the rounds below
// would see the flush position still behind.
TEST_F(ExactlyOnceIntegration, RemovalsWaitForTheWalFlushWhenTheDatabaseDefaultIsOff) {
  db_->Exec("ALTER DATABASE " + db_->name() + " SET synchronous_commit = off");
  Config config;
  config.postgres.conninfo = db_->conninfo();
  config.relay.delivery = Delivery::kExactlyOnce;
  PgOutboxStore store(config);
  Status led = store.Lead();
  ASSERT_TRUE(led.ok()) << led.message();
  pg::Connection c = db_->Connect();
  ASSERT_TRUE(c.Exec("SET synchronous_commit = on").ok());
  int behind = 0;
  for (int round = 0; round < 10; ++round) {
    auto id = c.Query("SELECT outbox.publish('" + topic_ + "', 'k', 'v')");
    ASSERT_TRUE(id.ok()) << id.status().message();
    // The removal's commit record comes after this position.
    auto before = c.Query("SELECT pg_current_wal_insert_lsn()::text");
    ASSERT_TRUE(before.ok());
    const std::string lsn(before->Get(0, 0));
    Status removed = store.MarkSent({id->GetInt(0, 0)});
    ASSERT_TRUE(removed.ok()) << removed.message();
    auto flushed = c.Query("SELECT pg_current_wal_flush_lsn() > '" + lsn + "'::pg_lsn");
    ASSERT_TRUE(flushed.ok());
    if (std::string(flushed->Get(0, 0)) != "t") ++behind;
  }
  store.Disconnect();
  EXPECT_EQ(behind, 0) << "in " << behind
                       << " of 10 rounds the removal returned before its commit was flushed: "
                          "the exactly-once session does not pin synchronous_commit = on";
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.messages"), "0");
}

}  // namespace
}  // namespace outboxd::testing
