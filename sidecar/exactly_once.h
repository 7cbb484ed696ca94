// ExactlyOnce: the exactly-once delivery strategy's state, over the relay's InFlightLedger
// (relay.delivery = "exactly_once"; docs/design.md, "Exactly-once delivery"). One batch travels in
// one Kafka transaction together with a checkpoint record naming the outbox ids it carries. The
// persisted reports of its messages are held here, not marked: they count only once the
// transaction commits (then they become the ledger's marks, and the rows of dead-letter copies are
// dead-lettered); if it aborts, every row it carried failed and goes again, in id order. So a
// report of a message in an aborted transaction never removes a row. Before the first transaction
// of a leadership term, or of a new producer, the relay must make it `ready` (InitTransactions,
// then the last committed checkpoint's rows removed). Owned and used by the relay thread only.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "checkpoint.h"
#include "inflight.h"

namespace outboxd {

class ExactlyOnce {
 public:
  using Entry = InFlightLedger::Entry;

  // Transactions initialized and the last checkpoint applied, for this term and producer.
  bool ready() const { return ready_; }
  void SetReady() {
    ready_ = true;
    checkpoint_applied_ = true;
  }
  // InitTransactions succeeded on this producer (it may be called only once per producer).
  bool initialized() const { return initialized_; }
  void SetInitialized() { initialized_ = true; }
  // The leadership is gone: the open transaction's outcome is Kafka's to decide (the next
  // InitTransactions commits or aborts it); nothing it carried is removed here.
  void Reset();
  // The producer is rebuilt within the term (a fatal error): the open transaction, if any, ends
  // here as if aborted (its rows failed, the ledger rewinds to the lowest; returns the ids whose
  // dead-letter copies must be produced again). If its commit had not been asked for, it can
  // only abort, and the relay's own record is the last committed checkpoint's: the new producer
  // needs InitTransactions but no checkpoint read. If it had, the outcome is unknown until the
  // new producer's InitTransactions: the checkpoint must be read again (its rows, if it
  // committed, are then removed and not fetched again).
  std::vector<int64_t> ProducerRebuilt(InFlightLedger& ledger);
  // The last committed checkpoint is applied in this term, and nothing committed since that the
  // relay does not know of: a new producer may skip reading it.
  bool checkpoint_applied() const { return checkpoint_applied_; }
  // CommitTransaction is about to be called: the outcome is unknown until it returns ok.
  void CommitRequested() { commit_requested_ = true; }

  bool open() const { return open_; }
  void Begin();
  // A message produced into the open transaction (a row, or a row's dead-letter copy).
  void Carried(const Entry& entry) { carried_.push_back(entry); }
  bool carries_anything() const { return !carried_.empty(); }
  // The checkpoint record of the open transaction: what it carries.
  Checkpoint checkpoint() const;
  void SetCheckpointToken(uint64_t token) { checkpoint_token_ = token; }
  bool IsCheckpoint(uint64_t token) const { return checkpoint_token_ == token; }
  // The checkpoint record's report: not persisted means the transaction must abort.
  void CheckpointReported(bool persisted);
  bool awaiting_checkpoint() const {
    return checkpoint_token_.has_value() && !checkpoint_reported_;
  }

  // A proven (persisted, with an offset) report of a message of the open transaction.
  void Held(const Entry& entry) { held_.push_back(entry); }
  // A message of the open transaction (or its checkpoint record) was not delivered: abort it.
  void Failed() { must_abort_ = true; }
  bool must_abort() const { return must_abort_; }

  // Committed: the held rows become the ledger's marks (per-key barriers apply as for any ack);
  // returns the ids whose dead-letter copies were committed (their rows go to
  // outbox.dead_letters). The transaction is closed.
  std::vector<int64_t> Committed(InFlightLedger& ledger, InFlightLedger::Clock::time_point now);
  // Aborted: every row it carried failed (the ledger rewinds to the lowest); returns the ids
  // whose dead-letter copies must be produced again. The transaction is closed.
  std::vector<int64_t> Aborted(InFlightLedger& ledger);

 private:
  bool ready_ = false;
  bool initialized_ = false;
  bool checkpoint_applied_ = false;
  bool commit_requested_ = false;
  bool checkpoint_reported_ = false;
  bool open_ = false;
  bool must_abort_ = false;
  std::vector<Entry> carried_;
  std::vector<Entry> held_;
  std::optional<uint64_t> checkpoint_token_;
};

}  // namespace outboxd
