// The mock-cluster support (tests/support/mock_cluster.h) that the kafka_mock tests judge by:
// ReadTopic must return every record the cluster stored, per partition in offset order, with key,
// value and headers intact; SetLeaders and PendingErrors must act on the brokers they name.
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "../support/mock_cluster.h"
#include "kafka/producer.h"

namespace outboxd {
namespace {

using testing::MockCluster;
using testing::ReadTopic;
using testing::StoredRecord;

// Produces `count` records to `partition` of `topic` with plain librdkafka and waits for them.
void ProduceRaw(const MockCluster& cluster, const std::string& topic, int32_t partition, int first,
                int count) {
  char err[512];
  KafkaConfPtr conf(rd_kafka_conf_new());
  ASSERT_EQ(rd_kafka_conf_set(conf.get(), "bootstrap.servers", cluster.bootstraps().c_str(), err,
                              sizeof(err)),
            RD_KAFKA_CONF_OK);
  KafkaPtr rk(rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), err, sizeof(err)));
  ASSERT_TRUE(rk) << err;
  conf.release();
  for (int i = first; i < first + count; ++i) {
    const std::string key = "k" + std::to_string(i), value = "v" + std::to_string(i),
                      id = std::to_string(i);
    rd_kafka_headers_t* h = rd_kafka_headers_new(3);
    rd_kafka_header_add(h, "outbox-id", -1, id.data(), id.size());
    rd_kafka_header_add(h, "trace", -1, "first", 5);
    rd_kafka_header_add(h, "trace", -1, "last", 4);
    ASSERT_EQ(rd_kafka_producev(
                  rk.get(), RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_PARTITION(partition),
                  RD_KAFKA_V_KEY(key.data(), key.size()),
                  RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END),
              RD_KAFKA_RESP_ERR_NO_ERROR);
  }
  ASSERT_EQ(rd_kafka_flush(rk.get(), 10'000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

TEST(MockClusterSupport, ReadTopicReturnsEveryRecordInOffsetOrderWithItsHeaders) {
  MockCluster cluster(3);
  ASSERT_NO_FATAL_FAILURE(cluster.CreateTopic("read-back", 2));
  ASSERT_NO_FATAL_FAILURE(ProduceRaw(cluster, "read-back", 0, 1, 50));
  ASSERT_NO_FATAL_FAILURE(ProduceRaw(cluster, "read-back", 1, 51, 30));
  std::vector<StoredRecord> records = ReadTopic(cluster, "read-back", 2);
  ASSERT_EQ(records.size(), 80u);
  std::map<int32_t, int64_t> next_offset;
  for (const StoredRecord& r : records) {
    ASSERT_TRUE(r.outbox_id());
    const int64_t id = *r.outbox_id();
    EXPECT_EQ(r.partition, id <= 50 ? 0 : 1) << id;
    EXPECT_EQ(r.offset, next_offset[r.partition]++) << "partition " << r.partition;
    EXPECT_EQ(r.key, "k" + std::to_string(id));
    EXPECT_EQ(r.value, "v" + std::to_string(id));
    EXPECT_EQ(r.headers.at("trace"), "last");
  }
  EXPECT_EQ(next_offset[0], 50);
  EXPECT_EQ(next_offset[1], 30);
  // A topic with nothing in it reads back empty, without waiting for records that never come.
  ASSERT_NO_FATAL_FAILURE(cluster.CreateTopic("empty", 2));
  EXPECT_TRUE(ReadTopic(cluster, "empty", 2).empty());
}

TEST(MockClusterSupport, RecordWithoutAnOutboxIdHasNone) {
  StoredRecord r;
  EXPECT_EQ(r.outbox_id(), std::nullopt);
  r.headers["outbox-id"] = "42";
  EXPECT_EQ(r.outbox_id(), 42);
}

TEST(MockClusterSupport, LeadersAndQueuedErrorsActOnTheBrokersNamed) {
  constexpr int16_t kProduceApi = 0;
  MockCluster cluster(3);
  ASSERT_NO_FATAL_FAILURE(cluster.CreateTopic("led", 3));
  ASSERT_NO_FATAL_FAILURE(cluster.SetLeaders("led", 3, /*leader=*/2));
  ASSERT_EQ(rd_kafka_mock_broker_push_request_error_rtts(cluster.get(), 2, kProduceApi, 1,
                                                         RD_KAFKA_RESP_ERR_NO_ERROR, 0),
            RD_KAFKA_RESP_ERR_NO_ERROR);
  EXPECT_EQ(cluster.PendingErrors(2, kProduceApi), 1u);
  EXPECT_EQ(cluster.PendingErrors(1, kProduceApi), 0u);
  // Broker 2 leads every partition, so the first produce takes its queued answer.
  ASSERT_NO_FATAL_FAILURE(ProduceRaw(cluster, "led", 1, 1, 1));
  EXPECT_EQ(cluster.PendingErrors(2, kProduceApi), 0u);
  EXPECT_EQ(ReadTopic(cluster, "led", 3).size(), 1u);
}

}  // namespace
}  // namespace outboxd
