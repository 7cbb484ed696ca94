// KafkaPublisher: RAII over a librdkafka idempotent producer (C API). Delivery reports and errors
// are served by Poll on the caller's thread; librdkafka codes are mapped to outcomes in one place
// (ClassifyDeliveryError). Move-only through its unique_ptr; used by the relay thread only.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include <librdkafka/rdkafka.h>

#include "config.h"
#include "publisher.h"

namespace outboxd {

struct KafkaDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
struct KafkaConfDeleter {
  void operator()(rd_kafka_conf_t* c) const { rd_kafka_conf_destroy(c); }
};
struct KafkaTopicDeleter {
  void operator()(rd_kafka_topic_t* t) const { rd_kafka_topic_destroy(t); }
};
using KafkaPtr = std::unique_ptr<rd_kafka_t, KafkaDeleter>;
using KafkaConfPtr = std::unique_ptr<rd_kafka_conf_t, KafkaConfDeleter>;
using KafkaTopicPtr = std::unique_ptr<rd_kafka_topic_t, KafkaTopicDeleter>;

// The outcome that a librdkafka error gives a message.
DeliveryReport::Outcome ClassifyDeliveryError(rd_kafka_resp_err_t err);

// The producer settings outboxd applies: its guarantees first, then the user's properties; with
// a transactional_id (exactly-once mode) a transactional producer.
std::map<std::string, std::string> ProducerProperties(const KafkaConfig& config,
                                                      const std::string& transactional_id = "");
// The user's properties that weaken a guarantee without breaking it (logged at start-up).
std::vector<std::string> ProducerPropertyWarnings(const KafkaConfig& config);

// Builds a producer from `config` without brokers and destroys it: what librdkafka refuses in the
// properties as a whole (Invalid, named), without connecting and without a log line.
Status CheckProducerProperties(const KafkaConfig& config);

class KafkaPublisher : public Publisher {
 public:
  // Builds a producer; Invalid when librdkafka rejects a property (named in the message).
  static Result<PublisherPtr> Create(const KafkaConfig& config,
                                     const std::string& transactional_id = "");
  ~KafkaPublisher() override;

  Status Produce(const OutgoingMessage& message, uint64_t token) override;
  void Poll(Millis timeout, std::vector<DeliveryReport>* reports) override;
  std::optional<std::string> FatalError() override;
  void PurgeAll() override;
  Status InitTransactions(Millis timeout) override;
  Status BeginTransaction() override;
  Status CommitTransaction(Millis timeout) override;
  Status AbortTransaction(Millis timeout) override;

 private:
  KafkaPublisher() = default;
  static void OnDelivery(rd_kafka_t* rk, const rd_kafka_message_t* msg, void* opaque);
  static void OnError(rd_kafka_t* rk, int err, const char* reason, void* opaque);
  rd_kafka_topic_t* Topic(const std::string& name);

  // The topic handles must go before the producer, so they are declared after it.
  KafkaPtr rk_;
  std::unordered_map<std::string, KafkaTopicPtr> topics_;
  std::vector<DeliveryReport>* sink_ = nullptr;  // set during Poll only
  // Reports served outside Poll (commit and abort flush the producer): handed out by the next Poll.
  std::vector<DeliveryReport> unserved_;
  // Broker errors repeat while Kafka is down: each kind is said once per outage, and the first
  // acknowledgement after it says "Kafka reachable again". Used on the polling thread only.
  std::set<int> outage_errors_;
  std::chrono::steady_clock::time_point outage_since_;
  int outage_repeats_ = 0;
};

}  // namespace outboxd
