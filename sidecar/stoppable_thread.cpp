#include "stoppable_thread.h"

#include <algorithm>
#include <chrono>

namespace outboxd {

namespace {
constexpr Millis kStopCheckSlice{50};
}  // namespace

void StoppableThread::Start(const std::atomic<bool>& stop, std::function<void()> loop) {
  outside_ = &stop;
  stop_requested_ = false;
  thread_ = std::thread(std::move(loop));
}

void StoppableThread::Stop() {
  stop_requested_ = true;
  if (thread_.joinable()) thread_.join();
}

void StoppableThread::SleepFor(Millis d) const {
  const auto until = std::chrono::steady_clock::now() + d;
  while (!stopping()) {
    auto left = std::chrono::duration_cast<Millis>(until - std::chrono::steady_clock::now());
    if (left <= Millis(0)) return;
    std::this_thread::sleep_for(std::min(left, kStopCheckSlice));
  }
}

}  // namespace outboxd
