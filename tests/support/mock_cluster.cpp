#include "mock_cluster.h"

#include <chrono>
#include <iostream>
#include <stdexcept>

#include <gtest/gtest.h>

namespace outboxd::testing {

namespace {

struct PartitionListDeleter {
  void operator()(rd_kafka_topic_partition_list_t* l) const {
    rd_kafka_topic_partition_list_destroy(l);
  }
};

constexpr std::chrono::milliseconds kReadTimeout{30'000};

}  // namespace

MockCluster::MockCluster(int brokers) : brokers_(brokers) {
  char err[512];
  KafkaConfPtr conf(rd_kafka_conf_new());
  // It connects nowhere; without this it says so ("No bootstrap.servers") on every test.
  rd_kafka_conf_set(conf.get(), "log_level", "4", err, sizeof(err));
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), err, sizeof(err));
  if (rk == nullptr) throw std::runtime_error(std::string("mock cluster handle: ") + err);
  conf.release();
  handle_.reset(rk);
  cluster_.reset(rd_kafka_mock_cluster_new(handle_.get(), brokers_));
  if (!cluster_) throw std::runtime_error("rd_kafka_mock_cluster_new failed");
}

void MockCluster::CreateTopic(const std::string& topic, int partitions) {
  ASSERT_EQ(rd_kafka_mock_topic_create(get(), topic.c_str(), partitions, brokers_),
            RD_KAFKA_RESP_ERR_NO_ERROR)
      << topic;
}

void MockCluster::SetLeaders(const std::string& topic, int partitions, int32_t leader) {
  for (int32_t p = 0; p < partitions; ++p) {
    ASSERT_EQ(rd_kafka_mock_partition_set_leader(get(), topic.c_str(), p,
                                                 leader ? leader : p % brokers_ + 1),
              RD_KAFKA_RESP_ERR_NO_ERROR)
        << topic << " [" << p << "]";
  }
}

size_t MockCluster::PendingErrors(int32_t broker, int16_t api) const {
  size_t n = 0;
  rd_kafka_mock_broker_error_stack_cnt(get(), broker, api, &n);
  return n;
}

std::optional<int64_t> StoredRecord::outbox_id() const {
  auto it = headers.find("outbox-id");
  if (it == headers.end()) return std::nullopt;
  return std::stoll(it->second);
}

std::vector<StoredRecord> ReadTopic(const MockCluster& cluster, const std::string& topic,
                                    int partitions) {
  std::vector<StoredRecord> records;
  char err[512];
  KafkaConfPtr conf(rd_kafka_conf_new());
  for (const auto& [k, v] : std::map<std::string, std::string>{
           {"bootstrap.servers", cluster.bootstraps()},
           {"group.id", "outboxd-mock-reader"},  // assign() needs one; nothing is committed
           {"enable.auto.commit", "false"},
           {"enable.auto.offset.store", "false"},
           {"isolation.level", "read_committed"}}) {
    if (rd_kafka_conf_set(conf.get(), k.c_str(), v.c_str(), err, sizeof(err)) != RD_KAFKA_CONF_OK) {
      ADD_FAILURE() << k << ": " << err;
      return records;
    }
  }
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), err, sizeof(err));
  if (rk == nullptr) {
    ADD_FAILURE() << "consumer: " << err;
    return records;
  }
  conf.release();
  KafkaPtr consumer(rk);

  std::map<int32_t, int64_t> high;  // partitions still to read, and where they end
  std::unique_ptr<rd_kafka_topic_partition_list_t, PartitionListDeleter> assignment(
      rd_kafka_topic_partition_list_new(partitions));
  for (int32_t p = 0; p < partitions; ++p) {
    int64_t lo = 0, hi = 0;
    rd_kafka_resp_err_t e =
        rd_kafka_query_watermark_offsets(rk, topic.c_str(), p, &lo, &hi, /*timeout_ms=*/10'000);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
      ADD_FAILURE() << "watermarks of " << topic << " [" << p << "]: " << rd_kafka_err2str(e);
      return records;
    }
    if (hi > lo) high[p] = hi;
    rd_kafka_topic_partition_list_add(assignment.get(), topic.c_str(), p)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
  }
  if (rd_kafka_resp_err_t e = rd_kafka_assign(rk, assignment.get())) {
    ADD_FAILURE() << "assign: " << rd_kafka_err2str(e);
    return records;
  }
  auto deadline = std::chrono::steady_clock::now() + kReadTimeout;
  while (!high.empty() && std::chrono::steady_clock::now() < deadline) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk, 100);
    if (m == nullptr) continue;
    std::unique_ptr<rd_kafka_message_t, decltype(&rd_kafka_message_destroy)> msg(
        m, &rd_kafka_message_destroy);
    if (m->err) {
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        std::cerr << "read-back: " << rd_kafka_message_errstr(m) << "\n";
      }
      continue;
    }
    StoredRecord r;
    r.partition = m->partition;
    r.offset = m->offset;
    if (m->key) r.key.emplace(static_cast<const char*>(m->key), m->key_len);
    if (m->payload) r.value.emplace(static_cast<const char*>(m->payload), m->len);
    rd_kafka_headers_t* headers = nullptr;
    if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      const char* name;
      const void* value;
      size_t size;
      for (size_t i = 0;
           rd_kafka_header_get_all(headers, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR;
           ++i) {
        r.headers[name] = value ? std::string(static_cast<const char*>(value), size) : "";
      }
    }
    records.push_back(std::move(r));
    auto it = high.find(m->partition);
    if (it != high.end() && m->offset + 1 >= it->second) high.erase(it);
  }
  EXPECT_TRUE(high.empty()) << "read-back of " << topic << " did not reach the end of "
                            << high.size() << " partitions";
  rd_kafka_consumer_close(rk);
  return records;
}

}  // namespace outboxd::testing
