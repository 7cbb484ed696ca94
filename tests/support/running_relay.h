// A relay running on its own thread for the life of the object, over a FakeStore: for the unit
// tests (fake broker) and the kafka_mock tests (librdkafka's mock cluster). The publishers given
// should be witnessed (testing::Witnessed, FakeFactory): the store then refuses to remove a row
// without a persisted report, and Stop() checks that the relay never asked.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "fakes.h"
#include "relay.h"

namespace outboxd::testing {

class RunningRelay {
 public:
  // Make the relay's publisher factory and checkpoint reader from the relay's own copy of the
  // configuration (a reader may keep a reference to it).
  using PublishersFor = std::function<PublisherFactory(const Config&)>;
  using CheckpointsFor = std::function<CheckpointReader(const Config&)>;

  RunningRelay(Config config, FakeStore& store, const PublishersFor& publishers,
               const CheckpointsFor& checkpoints = nullptr)
      : config_(std::move(config)),
        store_(store),
        relay_(config_, store, publishers(config_),
               checkpoints ? checkpoints(config_) : CheckpointReader()),
        thread_([this] { status_ = relay_.Run(stop_); }) {}
  ~RunningRelay() { Stop(); }
  RunningRelay(const RunningRelay&) = delete;
  RunningRelay& operator=(const RunningRelay&) = delete;

  // As SIGTERM does: the relay stops fetching and drains; returns at once.
  void RequestStop() { stop_ = true; }
  // Stops the relay (it drains as on SIGTERM), joins its thread and checks the removals.
  Relay::Stats Stop() {
    stop_ = true;
    if (thread_.joinable()) {
      thread_.join();
      EXPECT_EQ(store_.Unproven(), std::vector<int64_t>{})
          << "the relay asked to remove rows that had no persisted report";
    }
    return relay_.stats();
  }
  Relay::Stats stats() const { return relay_.stats(); }
  // What Run returned; read it after Stop().
  const Status& status() const { return status_; }

 private:
  const Config config_;  // the relay keeps a reference: it must outlive it
  FakeStore& store_;
  std::atomic<bool> stop_{false};
  Relay relay_;
  Status status_;
  std::thread thread_;
};

}  // namespace outboxd::testing
