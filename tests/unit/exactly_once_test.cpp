// The exactly-once strategy's pure parts: the checkpoint record's text, and what a committed or an
// aborted transaction does to the relay's ledger.
#include "exactly_once.h"

#include <gtest/gtest.h>

#include "checkpoint.h"
#include "config.h"

namespace outboxd {
namespace {

using Entry = InFlightLedger::Entry;
using Clock = InFlightLedger::Clock;

TEST(Checkpoint, RangesRoundTrip) {
  Checkpoint c{"7f0c-uuid", {9, 1, 2, 3, 5, 3, 4, 12}, {7}};
  std::string text = EncodeCheckpoint(c);
  EXPECT_EQ(text, "outboxd-checkpoint v1 outbox=7f0c-uuid sent=1-5,9,12 dead=7");
  auto back = ParseCheckpoint(text);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->outbox, "7f0c-uuid");
  EXPECT_EQ(back->sent, (std::vector<int64_t>{1, 2, 3, 4, 5, 9, 12}));
  EXPECT_EQ(back->dead, (std::vector<int64_t>{7}));
}

TEST(Checkpoint, EmptyListsRoundTrip) {
  auto back = ParseCheckpoint(EncodeCheckpoint(Checkpoint{}));
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->empty());
}

TEST(Checkpoint, LateCommitsOfLowerIdsAreCarriedExactly) {
  // The scan window delivers 3 after 10..12: the record names exactly the rows, not a span.
  Checkpoint c{"", {10, 11, 12, 3}, {}};
  auto back = ParseCheckpoint(EncodeCheckpoint(c));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->sent, (std::vector<int64_t>{3, 10, 11, 12}));
}

TEST(Checkpoint, CarriesThePutBackGenerationOnlyWhenThereIsOne) {
  Checkpoint c{"u", {4, 5}, {6}, 3};
  std::string text = EncodeCheckpoint(c);
  EXPECT_EQ(text, "outboxd-checkpoint v1 outbox=u sent=4-5 dead=6 put_back=3");
  auto back = ParseCheckpoint(text);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->put_back, 3);
  EXPECT_EQ(back->dead, (std::vector<int64_t>{6}));
  // Generation 0 (no put-back yet, or a record of an older outboxd): the field is absent.
  auto old = ParseCheckpoint("outboxd-checkpoint v1 outbox=u sent=4 dead=");
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(old->put_back, 0);
  EXPECT_EQ(EncodeCheckpoint(*old), "outboxd-checkpoint v1 outbox=u sent=4 dead=");
  auto empty_dead = ParseCheckpoint("outboxd-checkpoint v1 outbox=u sent=4 dead= put_back=9");
  ASSERT_TRUE(empty_dead.ok());
  EXPECT_TRUE(empty_dead->dead.empty());
  EXPECT_EQ(empty_dead->put_back, 9);
  for (const char* bad : {"outboxd-checkpoint v1 outbox=u sent=4 dead= put_back=",
                          "outboxd-checkpoint v1 outbox=u sent=4 dead= put_back=-1x"}) {
    EXPECT_FALSE(ParseCheckpoint(bad).ok()) << bad;
  }
}

TEST(Checkpoint, RefusesWhatItDidNotWrite) {
  for (const char* bad : {"", "hello", "outboxd-checkpoint v1 outbox=x sent=1-5",
                          "outboxd-checkpoint v1 outbox=x sent=5-1 dead=",
                          "outboxd-checkpoint v1 outbox=x sent=a dead=",
                          "outboxd-checkpoint v1 outbox=x sent=1,,2 dead=",
                          "outboxd-checkpoint v2 outbox=x sent=1 dead=",
                          "outboxd-checkpoint v1 outbox=x sent=1-99999999999 dead=",
                          "outboxd-checkpoint v1 sent=1 dead="}) {
    EXPECT_FALSE(ParseCheckpoint(bad).ok()) << bad;
  }
}

TEST(ExactlyOnce, ARebuiltProducerRereadsTheCheckpointOnlyIfACommitWasAskedFor) {
  InFlightLedger ledger;
  ExactlyOnce eo;
  eo.SetInitialized();
  eo.SetReady();
  Entry a{1, "k", false, false}, b{2, "k", false, false};
  // Rebuilt mid-transaction, no commit asked for: it aborted; its rows go again from the lowest.
  eo.Begin();
  eo.Carried(a);
  eo.Carried(b);
  eo.Held(a);
  EXPECT_TRUE(eo.ProducerRebuilt(ledger).empty());
  EXPECT_FALSE(eo.ready());
  EXPECT_FALSE(eo.initialized());
  EXPECT_FALSE(eo.open());
  EXPECT_TRUE(eo.checkpoint_applied());
  EXPECT_EQ(ledger.rewind_to(), 1);
  EXPECT_TRUE(ledger.marks().empty());
  // A commit was asked for and cut off: its outcome is the checkpoint's to tell.
  ledger.StartAttempt();
  eo.SetInitialized();
  eo.SetReady();
  eo.Begin();
  eo.Carried(a);
  eo.Held(a);
  eo.CommitRequested();
  eo.ProducerRebuilt(ledger);
  EXPECT_FALSE(eo.checkpoint_applied());
  // A committed transaction's outcome is known again.
  eo.SetReady();
  eo.Begin();
  eo.Carried(b);
  eo.CommitRequested();
  eo.Committed(ledger, Clock::now());
  eo.ProducerRebuilt(ledger);
  EXPECT_TRUE(eo.checkpoint_applied());
  // A new term always reads it.
  eo.Reset();
  EXPECT_FALSE(eo.checkpoint_applied());
}

TEST(ExactlyOnce, AcksOfAnOpenTransactionRemoveNothingUntilItCommits) {
  InFlightLedger ledger;
  ExactlyOnce eo;
  eo.Begin();
  Entry a{1, "k", false, false}, b{2, "k", false, false}, dl{3, "x", true, false};
  for (const Entry& e : {a, b, dl}) eo.Carried(e);
  eo.Held(a);
  eo.Held(b);
  eo.Held(dl);
  EXPECT_TRUE(ledger.marks().empty()) << "persisted inside a transaction is not delivered yet";
  Checkpoint c = eo.checkpoint();
  EXPECT_EQ(c.sent, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(c.dead, (std::vector<int64_t>{3}));

  auto dead = eo.Committed(ledger, Clock::now());
  EXPECT_EQ(ledger.marks(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(dead, (std::vector<int64_t>{3}));
  EXPECT_FALSE(eo.open());
}

TEST(ExactlyOnce, AbortedTransactionMeansNotDeliveredEvenForPersistedReports) {
  InFlightLedger ledger;
  ExactlyOnce eo;
  eo.Begin();
  Entry a{5, "k", false, false}, b{6, "k", false, false}, c{4, "j", false, false};
  Entry dl{7, "x", true, false};
  for (const Entry& e : {a, b, c, dl}) eo.Carried(e);
  eo.Held(a);  // persisted, then the transaction aborts
  eo.Held(dl);
  eo.Failed();
  EXPECT_TRUE(eo.must_abort());

  auto again = eo.Aborted(ledger);
  EXPECT_TRUE(ledger.marks().empty());
  ASSERT_TRUE(ledger.rewind_to());
  EXPECT_EQ(*ledger.rewind_to(), 4) << "every row it carried goes again, from the lowest";
  EXPECT_EQ(again, (std::vector<int64_t>{7})) << "the dead-letter copy is produced again";
  EXPECT_FALSE(eo.must_abort());
  // Per key: a later row of a key it carried is held back in the same attempt.
  EXPECT_FALSE(ledger.Acknowledge(Entry{8, "k", false, false}, Clock::now()));
}

TEST(ExactlyOnce, ResetForgetsTheOpenTransactionAndAsksForRecovery) {
  InFlightLedger ledger;
  ExactlyOnce eo;
  eo.SetReady();
  eo.Begin();
  eo.Carried(Entry{1, std::nullopt, false, false});
  eo.SetCheckpointToken(42);
  EXPECT_TRUE(eo.IsCheckpoint(42));
  eo.Reset();
  EXPECT_FALSE(eo.ready()) << "a new producer must InitTransactions and read the checkpoint";
  EXPECT_FALSE(eo.open());
  EXPECT_FALSE(eo.IsCheckpoint(42));
  EXPECT_TRUE(eo.checkpoint().empty());
}

TEST(ExactlyOnce, TransactionalIdComesFromTheLockIdUnlessConfigured) {
  Config c;
  EXPECT_EQ(TransactionalId(c), "") << "at-least-once: no transactions";
  c.relay.delivery = Delivery::kExactlyOnce;
  c.leadership.lock_id = 42;
  EXPECT_EQ(TransactionalId(c), "outboxd-42");
  c.relay.transactional_id = "orders-outbox";
  EXPECT_EQ(TransactionalId(c), "orders-outbox");
}

}  // namespace
}  // namespace outboxd
