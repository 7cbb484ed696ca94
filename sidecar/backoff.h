// Capped exponential back-off with jitter, for reconnecting to PostgreSQL and Kafka.
#pragma once

#include <random>

#include "duration.h"

namespace outboxd {

class Backoff {
 public:
  Backoff(Millis initial, Millis max) : initial_(initial), max_(max), next_(initial) {}

  // The delay before the next attempt; each call doubles the following one, up to max.
  Millis Next();
  void Reset() {
    next_ = initial_;
    attempts_ = 0;
  }
  int attempts() const { return attempts_; }

 private:
  // Constant after construction.
  Millis initial_;
  Millis max_;

  Millis next_;
  int attempts_ = 0;
  std::minstd_rand rng_{std::random_device{}()};
};

}  // namespace outboxd
