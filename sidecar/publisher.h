// Publisher: the seam between the relay and Kafka, so the relay can be tested with a fake.
// KafkaPublisher (kafka/producer.h) is the real one. Called from the relay thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "duration.h"
#include "status.h"

namespace outboxd {

using Headers = std::vector<std::pair<std::string, std::optional<std::string>>>;

struct OutgoingMessage {
  const std::string* topic;
  const std::optional<std::string>* key;
  const std::optional<std::string>* payload;
  const Headers* headers;
};

// One per produced message, exactly once, delivered by Poll.
struct DeliveryReport {
  enum class Outcome {
    kPersisted,  // the producer says the broker acknowledged it (acks=all); proof needs an offset
    kRetriable,  // not delivered, or maybe delivered: produce it again later
    kPermanent,  // can never be delivered as it is (poison)
    // Not delivered: its topic does not exist or may not be written (unknown topic, topic
    // authorization failed). Its topic's messages wait; messages of other topics go on.
    kTopicUnavailable,
  };
  uint64_t token = 0;
  Outcome outcome = Outcome::kRetriable;
  std::string error;
  int error_code = 0;  // librdkafka's rd_kafka_resp_err_t of a failed report (metrics), else 0
  // Where the broker wrote it; kNoOffset when the report carries none. A kPersisted report without
  // an offset is no proof: librdkafka's idempotent producer "implicitly acks" messages of a batch
  // that failed (NOT_LEADER on a new partition) when a later batch of its partition succeeds.
  static constexpr int64_t kNoOffset = -1;
  int64_t offset = kNoOffset;
  int32_t partition = -1;
  // The only report that lets a row be removed.
  bool proven() const { return outcome == Outcome::kPersisted && offset >= 0; }
};

class Publisher {
 public:
  virtual ~Publisher() = default;
  // Queues one message; its report comes later from Poll with the same token.
  // QueueFull: poll and try again; Permanent: this message can never be produced (no report
  // follows); TopicUnavailable: its topic does not exist or may not be written (no report
  // follows); Fatal: the producer is unusable, rebuild it (no report follows).
  virtual Status Produce(const OutgoingMessage& message, uint64_t token) = 0;
  // Serves delivery reports, waiting up to `timeout` for the first; appends them to `reports`.
  virtual void Poll(Millis timeout, std::vector<DeliveryReport>* reports) = 0;
  // The fatal error that made this producer unusable, if any.
  virtual std::optional<std::string> FatalError() = 0;
  // Fails everything queued or in flight; their reports (retriable) follow from Poll.
  virtual void PurgeAll() = 0;

  // Kafka transactions (relay.delivery = "exactly_once": a producer with a transactional.id).
  // Each returns Ok or: Unavailable (retriable: call it again), AbortRequired (abort the
  // transaction, then its messages count as not delivered), Fatal (the producer is unusable:
  // fenced by a newer instance with the same transactional.id, or another fatal error).
  // InitTransactions fences every older producer of the transactional.id and completes (commits
  // or aborts) its last transaction before it returns Ok.
  virtual Status InitTransactions(Millis /*timeout*/) { return NotTransactional(); }
  virtual Status BeginTransaction() { return NotTransactional(); }
  // Delivery reports must all have been served (Poll) before the commit.
  virtual Status CommitTransaction(Millis /*timeout*/) { return NotTransactional(); }
  virtual Status AbortTransaction(Millis /*timeout*/) { return NotTransactional(); }

 private:
  static Status NotTransactional() { return Status::Invalid("not a transactional producer"); }
};

using PublisherPtr = std::unique_ptr<Publisher>;
using PublisherFactory = std::function<Result<PublisherPtr>()>;

}  // namespace outboxd
