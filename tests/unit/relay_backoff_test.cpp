// The relay's reconnect back-off: an earlier outage must not slow the next reconnect.
#include <atomic>
#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "../support/fakes.h"
#include "relay.h"

namespace outboxd {
namespace {

using testing::Eventually;
using testing::FakeBroker;
using testing::FakeFactory;
using testing::FakeStore;

// A PostgreSQL outage long enough to grow the back-off (7 failed attempts: 10 ms doubling to
// 640 ms, the next would be 1280 ms), then leadership regained and a row delivered. A second,
// short outage (one failed call, one failed reconnect) must be over at the initial back-off,
// not at the grown one.
TEST(RelayBackoff, RegainingLeadershipResetsTheReconnectBackoff) {
  Config c = testing::FastRelayConfig();
  c.backoff.initial = Millis(10);
  c.backoff.max = Millis(5000);
  FakeStore store;
  FakeBroker broker;
  store.FailNext(7);
  store.Add(1, "t", "k", "v1");
  std::atomic<bool> stop{false};
  Relay relay(c, store, FakeFactory(broker, store));
  Status status;
  std::thread thread([&] { status = relay.Run(stop); });

  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }, Millis(10'000)));
  EXPECT_EQ(store.leads(), 1);

  const auto t0 = std::chrono::steady_clock::now();
  store.FailNext(2);  // the connection breaks; the first reconnect fails too
  store.Add(2, "t", "k", "v2");
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }, Millis(10'000)));
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(store.leads(), 2);
  // The grown back-off would be at least 1024 ms (1280 ms less up to 20% jitter).
  EXPECT_LT(took, Millis(500)) << "reconnect took "
                               << std::chrono::duration_cast<Millis>(took).count() << " ms";
  stop = true;
  thread.join();
  EXPECT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(store.Unproven(), std::vector<int64_t>{});
}

}  // namespace
}  // namespace outboxd
