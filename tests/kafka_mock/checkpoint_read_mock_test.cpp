// Exactly-once mode when the checkpoint cannot be read at the start of a term: the relay holds
// the leadership lock while it retries, and no standby can try meanwhile. After a few failed
// reads it gives the lock up for a while (another instance, with another view of Kafka, may read
// it), and delivers nothing unread. The transactional producer is real, against librdkafka's mock
// cluster; the outbox is the in-memory FakeStore.
#include <atomic>
#include <chrono>
#include <string>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "../support/fakes.h"
#include "../support/mock_cluster.h"
#include "../support/running_relay.h"
#include "kafka/producer.h"
#include "relay.h"

namespace outboxd {
namespace {

TEST(CheckpointReadMock, ARelayThatCannotReadTheCheckpointLetsAnotherInstanceTry) {
  spdlog::set_level(spdlog::level::warn);
  testing::MockCluster cluster(3);
  cluster.CreateTopic("eo.orders", 1);
  testing::FakeStore store;
  store.Add(1, "eo.orders", "k", "v");
  Config config = testing::FastRelayConfig();
  config.kafka.bootstrap_servers = cluster.bootstraps();
  config.relay.delivery = Delivery::kExactlyOnce;
  config.leadership.lock_id = 4343;
  std::atomic<int> reads{0};
  testing::RunningRelay relay(
      config, store,
      [&store](const Config& c) {
        return testing::Witnessed(
            [&c] { return KafkaPublisher::Create(c.kafka, TransactionalId(c)); }, store.witness());
      },
      [&reads](const Config&) -> CheckpointReader {
        return [&reads](const std::string&) -> Result<std::optional<Checkpoint>> {
          ++reads;
          return Status::Unavailable("reading the checkpoint topic timed out");
        };
      });
  EXPECT_TRUE(testing::Eventually([&] { return store.leads() >= 2; }, Millis(20'000)))
      << "still holding the lock after " << reads.load() << " failed checkpoint reads";
  relay.Stop();
  EXPECT_EQ(store.Remaining().size(), 1u) << "a row was removed without a checkpoint read";
}

}  // namespace
}  // namespace outboxd
