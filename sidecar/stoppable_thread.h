// StoppableThread: the background thread of a component that runs a loop until it is stopped
// (CheckBack, Scheduler), and the loop's sleep that ends early when it is. Stopped means Stop()
// was called or the outside flag given to Start is set; the sleep looks every 50 ms.
//
// The owner calls Start and Stop from its own thread, and Stop from its destructor before its
// other members go (the loop uses them); the loop calls stopping() and SleepFor on the thread.
#pragma once

#include <atomic>
#include <functional>
#include <thread>

#include "duration.h"

namespace outboxd {

class StoppableThread {
 public:
  StoppableThread() = default;
  ~StoppableThread() { Stop(); }
  StoppableThread(const StoppableThread&) = delete;
  StoppableThread& operator=(const StoppableThread&) = delete;

  // Runs `loop` on a new thread. `stop` (the outside flag) must outlive the thread.
  void Start(const std::atomic<bool>& stop, std::function<void()> loop);
  // Asks the loop to end and waits for it; nothing when no thread runs.
  void Stop();

  // The loop should end: Stop() was called or the outside flag is set.
  bool stopping() const { return stop_requested_ || (outside_ != nullptr && *outside_); }
  // Stop() was called (the outside flag aside): what a round run without the thread looks at.
  bool stop_requested() const { return stop_requested_; }
  // Sleeps for `d`, or less when stopping() becomes true meanwhile.
  void SleepFor(Millis d) const;

 private:
  // Set by Start before the thread starts, read by it.
  const std::atomic<bool>* outside_ = nullptr;
  std::atomic<bool> stop_requested_{false};
  std::thread thread_;
};

}  // namespace outboxd
