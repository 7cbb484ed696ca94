// StoppableThread (sidecar/stoppable_thread.h): the loop thread of CheckBack and Scheduler. A
// loop asleep for an hour ends within a bound when Stop() is called or the outside flag is set,
// and a sleep nobody interrupts lasts its full time.
#include "stoppable_thread.h"

#include <atomic>
#include <chrono>

#include <gtest/gtest.h>

namespace outboxd {
namespace {

using Clock = std::chrono::steady_clock;
constexpr Millis kHour{3'600'000};
constexpr Millis kBound{2'000};  // far above the 50 ms slice, far below the hour

// A loop like CheckBack's: sleeps an hour per round until stopping().
struct SleepyLoop {
  StoppableThread thread;
  std::atomic<int> rounds{0};
  std::atomic<bool> ended{false};
  void Start(const std::atomic<bool>& stop) {
    thread.Start(stop, [this] {
      while (!thread.stopping()) {
        ++rounds;
        thread.SleepFor(kHour);
      }
      ended = true;
    });
  }
};

bool WaitUntil(const std::atomic<int>& v, int at_least) {
  for (auto until = Clock::now() + kBound; Clock::now() < until;) {
    if (v >= at_least) return true;
    std::this_thread::sleep_for(Millis(5));
  }
  return false;
}

TEST(StoppableThread, StopEndsALoopAsleepForAnHour) {
  std::atomic<bool> outside{false};
  SleepyLoop loop;
  loop.Start(outside);
  ASSERT_TRUE(WaitUntil(loop.rounds, 1));
  EXPECT_FALSE(loop.thread.stop_requested());
  const auto asked = Clock::now();
  loop.thread.Stop();
  EXPECT_LT(Clock::now() - asked, kBound);
  EXPECT_TRUE(loop.ended);
  EXPECT_TRUE(loop.thread.stop_requested());
  EXPECT_EQ(loop.rounds, 1);
}

TEST(StoppableThread, OutsideFlagEndsTheLoopAndStopAfterwardsJustJoins) {
  std::atomic<bool> outside{false};
  SleepyLoop loop;
  loop.Start(outside);
  ASSERT_TRUE(WaitUntil(loop.rounds, 1));
  const auto set = Clock::now();
  outside = true;
  for (auto until = Clock::now() + kBound; !loop.ended && Clock::now() < until;) {
    std::this_thread::sleep_for(Millis(5));
  }
  EXPECT_TRUE(loop.ended) << "the outside flag did not end the loop";
  EXPECT_LT(Clock::now() - set, kBound);
  EXPECT_FALSE(loop.thread.stop_requested()) << "only Stop() counts as a stop request";
  loop.thread.Stop();
}

TEST(StoppableThread, RestartsAfterStop) {
  std::atomic<bool> outside{false};
  SleepyLoop loop;
  loop.Start(outside);
  ASSERT_TRUE(WaitUntil(loop.rounds, 1));
  loop.thread.Stop();
  loop.ended = false;
  loop.Start(outside);
  EXPECT_TRUE(WaitUntil(loop.rounds, 2)) << "Start after Stop ran no loop";
  EXPECT_FALSE(loop.thread.stop_requested());
  loop.thread.Stop();
  EXPECT_TRUE(loop.ended);
}

TEST(StoppableThread, SleepNobodyInterruptsLastsItsTime) {
  std::atomic<bool> outside{false};
  StoppableThread thread;
  std::atomic<bool> done{false};
  Clock::duration slept{};
  thread.Start(outside, [&] {
    const auto from = Clock::now();
    thread.SleepFor(Millis(300));
    slept = Clock::now() - from;
    done = true;
  });
  for (auto until = Clock::now() + kBound; !done && Clock::now() < until;) {
    std::this_thread::sleep_for(Millis(5));
  }
  thread.Stop();
  ASSERT_TRUE(done);
  // Millisecond precision: the last slice is the remaining time truncated to whole milliseconds.
  EXPECT_GE(slept, Millis(299));
  EXPECT_LT(slept, kBound);
}

}  // namespace
}  // namespace outboxd
