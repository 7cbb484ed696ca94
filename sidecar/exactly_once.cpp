#include "exactly_once.h"

namespace outboxd {

void ExactlyOnce::Reset() {
  ready_ = false;
  initialized_ = false;
  checkpoint_applied_ = false;
  commit_requested_ = false;
  checkpoint_reported_ = false;
  open_ = false;
  must_abort_ = false;
  carried_.clear();
  held_.clear();
  checkpoint_token_.reset();
}

std::vector<int64_t> ExactlyOnce::ProducerRebuilt(InFlightLedger& ledger) {
  if (commit_requested_) checkpoint_applied_ = false;
  std::vector<int64_t> again = open_ ? Aborted(ledger) : std::vector<int64_t>();
  ready_ = false;
  initialized_ = false;
  commit_requested_ = false;
  return again;
}

void ExactlyOnce::Begin() {
  open_ = true;
  commit_requested_ = false;
  checkpoint_reported_ = false;
  must_abort_ = false;
  carried_.clear();
  held_.clear();
  checkpoint_token_.reset();
}

void ExactlyOnce::CheckpointReported(bool persisted) {
  checkpoint_reported_ = true;
  if (!persisted) must_abort_ = true;
}

Checkpoint ExactlyOnce::checkpoint() const {
  Checkpoint c;
  for (const Entry& e : carried_) (e.dead_letter_copy ? c.dead : c.sent).push_back(e.id);
  return c;
}

std::vector<int64_t> ExactlyOnce::Committed(InFlightLedger& ledger,
                                            InFlightLedger::Clock::time_point now) {
  std::vector<int64_t> dead;
  for (const Entry& e : held_) {
    if (e.dead_letter_copy) {
      dead.push_back(e.id);
    } else {
      ledger.Acknowledge(e, now);
    }
  }
  open_ = false;
  commit_requested_ = false;
  carried_.clear();
  held_.clear();
  checkpoint_token_.reset();
  return dead;
}

std::vector<int64_t> ExactlyOnce::Aborted(InFlightLedger& ledger) {
  std::vector<int64_t> again;
  for (const Entry& e : carried_) {
    if (e.dead_letter_copy) {
      again.push_back(e.id);
    } else {
      ledger.Fail(e);
    }
  }
  open_ = false;
  must_abort_ = false;
  commit_requested_ = false;
  carried_.clear();
  held_.clear();
  checkpoint_token_.reset();
  return again;
}

}  // namespace outboxd
