#include "backoff.h"

#include <algorithm>

namespace outboxd {

Millis Backoff::Next() {
  Millis current = next_;
  next_ = std::min(max_, Millis(next_.count() * 2));
  ++attempts_;
  // Up to 20% jitter downwards, so that several instances don't retry in lockstep.
  std::uniform_int_distribution<long long> jitter(0, current.count() / 5);
  return Millis(current.count() - jitter(rng_));
}

}  // namespace outboxd
