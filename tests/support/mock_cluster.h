// librdkafka's mock cluster for the kafka_mock tests, and a reader of what it stored. Shared by
// every test that runs a producer against the mock (tests/kafka_mock); the test thread owns both.
#pragma once

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kafka/producer.h"

namespace outboxd::testing {

// A mock cluster of `brokers` brokers (ids 1..brokers), and the throwaway handle it lives in.
// Throws std::runtime_error when librdkafka cannot make it.
class MockCluster {
 public:
  explicit MockCluster(int brokers);

  rd_kafka_mock_cluster_t* get() const { return cluster_.get(); }
  int brokers() const { return brokers_; }
  std::string bootstraps() const { return rd_kafka_mock_cluster_bootstraps(cluster_.get()); }

  // A topic of `partitions` partitions replicated on every broker; leaders as the mock picks them.
  void CreateTopic(const std::string& topic, int partitions);
  // Partition p of `topic` led by `leader`, or by broker p % brokers + 1 when leader is 0.
  void SetLeaders(const std::string& topic, int partitions, int32_t leader = 0);
  // Errors queued for `api` (a request's ApiKey) on one broker that it has not served yet.
  size_t PendingErrors(int32_t broker, int16_t api) const;

 private:
  struct ClusterDeleter {
    void operator()(rd_kafka_mock_cluster_t* mc) const { rd_kafka_mock_cluster_destroy(mc); }
  };
  const int brokers_;
  // The cluster goes before the handle it lives in, so it is declared after it.
  KafkaPtr handle_;
  std::unique_ptr<rd_kafka_mock_cluster_t, ClusterDeleter> cluster_;
};

// One record as the cluster stored it.
struct StoredRecord {
  int32_t partition = 0;
  int64_t offset = 0;
  std::optional<std::string> key;
  std::optional<std::string> value;
  std::map<std::string, std::string> headers;  // the last value of each name
  // The outbox-id header; nullopt on a record without one.
  std::optional<int64_t> outbox_id() const;
};

// Everything the cluster holds for partitions 0..partitions-1 of `topic`, per partition in offset
// order: a read_committed consumer assigned to every partition from the beginning, reading up to
// the high watermark (no group membership). A failure to read is a test failure (ADD_FAILURE),
// with what was read so far returned.
std::vector<StoredRecord> ReadTopic(const MockCluster& cluster, const std::string& topic,
                                    int partitions);

}  // namespace outboxd::testing
