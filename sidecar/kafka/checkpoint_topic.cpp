#include "kafka/checkpoint_topic.h"

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <librdkafka/rdkafka.h>
#include <spdlog/spdlog.h>

#include "kafka/producer.h"
#include "kafka/tls_verify.h"

namespace outboxd {

namespace {

using Clock = std::chrono::steady_clock;

struct QueueDeleter {
  void operator()(rd_kafka_queue_t* q) const { rd_kafka_queue_destroy(q); }
};
struct EventDeleter {
  void operator()(rd_kafka_event_t* e) const { rd_kafka_event_destroy(e); }
};
struct AdminOptionsDeleter {
  void operator()(rd_kafka_AdminOptions_t* o) const { rd_kafka_AdminOptions_destroy(o); }
};
struct NewTopicDeleter {
  void operator()(rd_kafka_NewTopic_t* t) const { rd_kafka_NewTopic_destroy(t); }
};
struct PartitionListDeleter {
  void operator()(rd_kafka_topic_partition_list_t* l) const {
    rd_kafka_topic_partition_list_destroy(l);
  }
};
struct MessageDeleter {
  void operator()(rd_kafka_message_t* m) const { rd_kafka_message_destroy(m); }
};

// A handle of `type` with the user's properties plus `extra`; librdkafka's notes about properties
// of the other client type are logged at debug level only.
Result<KafkaPtr> MakeHandle(rd_kafka_type_t type, const KafkaConfig& kafka,
                            const std::map<std::string, std::string>& extra) {
  KafkaConfPtr conf(rd_kafka_conf_new());
  char err[512];
  std::map<std::string, std::string> p = kafka.properties;
  p["bootstrap.servers"] = kafka.bootstrap_servers;
  for (const auto& [k, v] : extra) p[k] = v;
  for (const auto& [k, v] : p) {
    if (rd_kafka_conf_set(conf.get(), k.c_str(), v.c_str(), err, sizeof(err)) != RD_KAFKA_CONF_OK) {
      return Status::Invalid("kafka.properties \"" + k + "\": " + err);
    }
  }
  rd_kafka_conf_set_log_cb(conf.get(), [](const rd_kafka_t*, int, const char* fac, const char* b) {
    spdlog::debug("kafka checkpoint {}: {}", fac, b);
  });
  InstallCertificateVerifyReasons(conf.get());
  rd_kafka_t* rk = rd_kafka_new(type, conf.get(), err, sizeof(err));
  if (rk == nullptr) return Status::Invalid(std::string("kafka checkpoint client: ") + err);
  conf.release();
  return KafkaPtr(rk);
}

int Ms(Millis d) { return static_cast<int>(std::max<int64_t>(0, d.count())); }

}  // namespace

Status EnsureCheckpointTopic(const KafkaConfig& kafka, const std::string& topic, Millis timeout) {
  auto rk = MakeHandle(RD_KAFKA_PRODUCER, kafka, {});
  if (!rk.ok()) return rk.status();
  // Already there? (All topics' metadata: asking for one topic could auto-create it, uncompacted.)
  const rd_kafka_metadata_t* md = nullptr;
  rd_kafka_resp_err_t e = rd_kafka_metadata(rk->get(), 1, nullptr, &md, Ms(timeout));
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Status::Unavailable("checkpoint topic metadata: " + std::string(rd_kafka_err2str(e)));
  }
  bool exists = false;
  for (int i = 0; i < md->topic_cnt; ++i) {
    exists |= topic == md->topics[i].topic && md->topics[i].err == RD_KAFKA_RESP_ERR_NO_ERROR;
  }
  rd_kafka_metadata_destroy(md);
  if (exists) return Status::Ok();
  char err[512];
  std::unique_ptr<rd_kafka_NewTopic_t, NewTopicDeleter> nt(
      rd_kafka_NewTopic_new(topic.c_str(), 1, -1, err, sizeof(err)));
  if (!nt) return Status::Invalid("relay.checkpoint_topic: " + std::string(err));
  rd_kafka_NewTopic_set_config(nt.get(), "cleanup.policy", kCheckpointCleanupPolicy);
  rd_kafka_NewTopic_set_config(nt.get(), "segment.bytes",
                               std::to_string(kCheckpointSegmentBytes).c_str());
  rd_kafka_NewTopic_set_config(nt.get(), "segment.ms",
                               std::to_string(kCheckpointSegmentMs).c_str());
  rd_kafka_NewTopic_set_config(nt.get(), "min.cleanable.dirty.ratio", kCheckpointDirtyRatio);
  std::unique_ptr<rd_kafka_AdminOptions_t, AdminOptionsDeleter> options(
      rd_kafka_AdminOptions_new(rk->get(), RD_KAFKA_ADMIN_OP_CREATETOPICS));
  rd_kafka_AdminOptions_set_request_timeout(options.get(), Ms(timeout), err, sizeof(err));
  rd_kafka_AdminOptions_set_operation_timeout(options.get(), Ms(timeout), err, sizeof(err));
  std::unique_ptr<rd_kafka_queue_t, QueueDeleter> queue(rd_kafka_queue_new(rk->get()));
  rd_kafka_NewTopic_t* topics[] = {nt.get()};
  rd_kafka_CreateTopics(rk->get(), topics, 1, options.get(), queue.get());
  std::unique_ptr<rd_kafka_event_t, EventDeleter> ev(
      rd_kafka_queue_poll(queue.get(), Ms(timeout) + 1000));
  if (!ev) return Status::Unavailable("creating the checkpoint topic: no answer from Kafka");
  if (rd_kafka_event_error(ev.get())) {
    return Status::Unavailable(std::string("creating the checkpoint topic: ") +
                               rd_kafka_event_error_string(ev.get()));
  }
  size_t n = 0;
  const rd_kafka_topic_result_t** results =
      rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev.get()), &n);
  for (size_t i = 0; i < n; ++i) {
    rd_kafka_resp_err_t e = rd_kafka_topic_result_error(results[i]);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
      spdlog::info(
          "created the checkpoint topic {} (cleanup.policy={}, segment.bytes={}, segment.ms={}, "
          "min.cleanable.dirty.ratio={})",
          topic, kCheckpointCleanupPolicy, kCheckpointSegmentBytes, kCheckpointSegmentMs,
          kCheckpointDirtyRatio);
    } else if (e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
      const char* msg = rd_kafka_topic_result_error_string(results[i]);
      return Status::Unavailable("creating the checkpoint topic " + topic + ": " +
                                 (msg ? msg : rd_kafka_err2str(e)));
    }
  }
  return Status::Ok();
}

namespace {

// What the newest record of `key` in one partition said: a checkpoint of this outbox, or a
// tombstone (nullopt). Records of another incarnation are skipped and do not decide.
struct Decisive {
  std::optional<Checkpoint> checkpoint;
  int64_t timestamp = -1;  // CreateTime, to order partitions (the topic should have one)
};

Result<KafkaPtr> MakeReader(const KafkaConfig& kafka) {
  return MakeHandle(RD_KAFKA_CONSUMER, kafka,
                    {{"group.id", "outboxd-checkpoint-reader"},  // assign() needs one
                     {"enable.auto.commit", "false"},
                     {"enable.auto.offset.store", "false"},
                     {"enable.partition.eof", "true"},
                     {"auto.offset.reset", "earliest"},
                     // Records of aborted transactions and the transactions' control records
                     // are dropped by the client, wherever the read starts.
                     {"isolation.level", "read_committed"}});
}

// Reads partition `partition` from offset `from` (a fresh handle: nothing of an earlier window
// can come back) until a record at or past `until`, or, for the newest window (`until` unset),
// until the end: the high watermark with no transaction open below it (read_committed stops at
// the last stable offset). Keeps the newest decisive record of `key` in the window.
Status ReadWindow(const KafkaConfig& kafka, const std::string& topic, int32_t partition,
                  int64_t from, std::optional<int64_t> until, const std::string& key,
                  const std::string& outbox, Clock::time_point deadline,
                  std::optional<Decisive>* found, int* foreign) {
  auto made = MakeReader(kafka);
  if (!made.ok()) return made.status();
  rd_kafka_t* rk = made->get();
  auto left = [&] {
    return std::max<int64_t>(0,
                             std::chrono::duration_cast<Millis>(deadline - Clock::now()).count());
  };
  std::unique_ptr<rd_kafka_topic_partition_list_t, PartitionListDeleter> assignment(
      rd_kafka_topic_partition_list_new(1));
  rd_kafka_topic_partition_list_add(assignment.get(), topic.c_str(), partition)->offset = from;
  if (rd_kafka_resp_err_t e = rd_kafka_assign(rk, assignment.get())) {
    return Status::Unavailable("checkpoint topic assign: " + std::string(rd_kafka_err2str(e)));
  }
  for (;;) {
    if (left() == 0) {
      rd_kafka_consumer_close(rk);
      return Status::Unavailable("reading the checkpoint topic timed out (partition " +
                                 std::to_string(partition) + " from offset " +
                                 std::to_string(from) + ")");
    }
    std::unique_ptr<rd_kafka_message_t, MessageDeleter> m(
        rd_kafka_consumer_poll(rk, static_cast<int>(std::min<int64_t>(left(), 100))));
    if (!m) continue;
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      // Any end counts for an older window: the newest one was read to the end before it. The
      // newest ends only at the high watermark: a transaction of any outbox sharing the
      // partition still open below it could hold a later checkpoint of ours.
      int64_t lo = 0, hi = 0;
      rd_kafka_get_watermark_offsets(rk, topic.c_str(), m->partition, &lo, &hi);
      if (until || m->offset >= hi) break;
      continue;
    }
    if (m->err) {
      spdlog::debug("checkpoint topic: {}", rd_kafka_message_errstr(m.get()));
      continue;
    }
    if (until && m->offset >= *until) break;
    if (!m->key || std::string_view(static_cast<const char*>(m->key), m->key_len) != key) continue;
    Decisive d;
    d.timestamp = rd_kafka_message_timestamp(m.get(), nullptr);
    if (m->payload) {
      auto parsed = ParseCheckpoint(std::string(static_cast<const char*>(m->payload), m->len));
      if (!parsed.ok() || parsed->outbox != outbox) {
        ++*foreign;  // another outbox's, or not a checkpoint
        continue;
      }
      d.checkpoint = std::move(*parsed);
    }  // else a tombstone: no checkpoint
    *found = std::move(d);
  }
  rd_kafka_consumer_close(rk);
  return Status::Ok();
}

// The first window read back from the end, in offsets; each further one is kFactor times larger.
// A transaction takes two offsets (its checkpoint and its commit marker), so the first window
// holds the last few hundred transactions of every outbox sharing the topic.
constexpr int64_t kFirstWindow = 1024;
constexpr int64_t kFactor = 4;

}  // namespace

Result<std::optional<Checkpoint>> ReadLastCheckpoint(const KafkaConfig& kafka,
                                                     const std::string& topic,
                                                     const std::string& key,
                                                     const std::string& outbox, Millis timeout) {
  auto made = MakeReader(kafka);
  if (!made.ok()) return made.status();
  rd_kafka_t* rk = made->get();
  const auto deadline = Clock::now() + timeout;
  auto left = [&] {
    return static_cast<int>(
        std::max<int64_t>(0, std::chrono::duration_cast<Millis>(deadline - Clock::now()).count()));
  };

  const rd_kafka_metadata_t* md = nullptr;
  std::unique_ptr<rd_kafka_topic_t, KafkaTopicDeleter> t(
      rd_kafka_topic_new(rk, topic.c_str(), nullptr));
  rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, t.get(), &md, left());
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Status::Unavailable("checkpoint topic metadata: " + std::string(rd_kafka_err2str(e)));
  }
  int partitions = md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR
                       ? md->topics[0].partition_cnt
                       : 0;
  rd_kafka_metadata_destroy(md);
  t.reset();
  if (partitions == 0) return Status::Unavailable("checkpoint topic " + topic + " not found");

  // Each partition is read back from its end in growing windows until a window holds a decisive
  // record of `key`: the cost follows how far back the outbox's last transaction is, not how
  // long the topic's history is.
  std::optional<Decisive> last;
  int foreign = 0;
  for (int32_t p = 0; p < partitions; ++p) {
    int64_t lo = 0, hi = 0;
    e = rd_kafka_query_watermark_offsets(rk, topic.c_str(), p, &lo, &hi, left());
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return Status::Unavailable("checkpoint topic offsets: " + std::string(rd_kafka_err2str(e)));
    }
    std::optional<Decisive> found;
    std::optional<int64_t> until;  // unset: the newest window, read to the end
    int64_t window = kFirstWindow;
    int64_t from = hi;
    do {
      from = std::max(lo, from - window);
      Status s = ReadWindow(kafka, topic, p, from, until, key, outbox, deadline, &found, &foreign);
      if (!s.ok()) return s;
      until = from;
      window *= kFactor;
    } while (!found && from > lo);
    if (found && (!last || found->timestamp > last->timestamp)) last = std::move(found);
  }
  if (foreign > 0) {
    spdlog::warn(
        "checkpoint topic {}: {} records under {} are not this outbox's (incarnation {}): ignored; "
        "give each outbox its own transactional.id",
        topic, foreign, key, outbox);
  }
  if (!last) return std::optional<Checkpoint>();
  return std::move(last->checkpoint);
}

CheckpointReader KafkaCheckpointReader(const Config& config) {
  return [&config](const std::string& outbox) -> Result<std::optional<Checkpoint>> {
    // Both within the leader's session timeout: the relay sends no statement meanwhile.
    const Millis bound = config.leadership.session_timeout * 2 / 5;
    Status s = EnsureCheckpointTopic(config.kafka, config.relay.checkpoint_topic, bound);
    if (!s.ok()) return s;
    return ReadLastCheckpoint(config.kafka, config.relay.checkpoint_topic, TransactionalId(config),
                              outbox, bound);
  };
}

}  // namespace outboxd
