// InFlightLedger: tokens, per-key barriers, marks to remove, rewinds, suspects.
#include "inflight.h"

#include <gtest/gtest.h>

namespace outboxd {
namespace {

using Entry = InFlightLedger::Entry;
using Clock = InFlightLedger::Clock;

Entry Row(int64_t id, std::optional<std::string> key = std::nullopt) {
  return Entry{id, std::move(key), false, false};
}

TEST(InFlightLedger, TokensAreUniqueAndEachReportTakesItsEntryOnce) {
  InFlightLedger ledger;
  uint64_t a = ledger.NextToken();
  uint64_t b = ledger.NextToken();
  EXPECT_NE(a, b);
  ledger.Add(a, Row(10, "k"));
  ledger.Add(b, Row(11, "k"));
  EXPECT_EQ(ledger.size(), 2u);

  auto second = ledger.Take(b);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->id, 11);
  EXPECT_FALSE(ledger.Take(b)) << "a token's entry is taken once";
  EXPECT_FALSE(ledger.Take(12345)) << "a token never added has no entry";
  auto first = ledger.Take(a);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->id, 10);
  EXPECT_TRUE(ledger.empty());
}

TEST(InFlightLedger, TokenOfAMessageTheProducerRefusedIsNeverReused) {
  InFlightLedger ledger;
  uint64_t refused = ledger.NextToken();  // Produce failed: never added
  uint64_t next = ledger.NextToken();
  EXPECT_NE(refused, next);
  ledger.Add(next, Row(1));
  EXPECT_FALSE(ledger.Take(refused));
}

TEST(InFlightLedger, AcknowledgedRowsAreMarkedInOrderOfTheirAcks) {
  InFlightLedger ledger;
  auto now = Clock::now();
  EXPECT_TRUE(ledger.Acknowledge(Row(3, "a"), now));
  EXPECT_TRUE(ledger.Acknowledge(Row(1, "b"), now));
  EXPECT_TRUE(ledger.Acknowledge(Row(2), now));
  EXPECT_EQ(ledger.marks(), (std::vector<int64_t>{3, 1, 2}));
  EXPECT_EQ(ledger.TakeMarks(), (std::vector<int64_t>{3, 1, 2}));
  EXPECT_TRUE(ledger.marks().empty());
  EXPECT_FALSE(ledger.rewind_to());
}

TEST(InFlightLedger, LaterRowOfAFailedKeyIsNotRemovedEvenIfAcknowledged) {
  InFlightLedger ledger;
  auto now = Clock::now();
  ledger.Fail(Row(5, "k"));
  EXPECT_FALSE(ledger.Acknowledge(Row(7, "k"), now)) << "7 would overtake 5 of the same key";
  EXPECT_TRUE(ledger.marks().empty());
  ASSERT_TRUE(ledger.rewind_to());
  EXPECT_EQ(*ledger.rewind_to(), 5);
  // Other keys, keyless rows and earlier rows of the key are not held back.
  EXPECT_TRUE(ledger.Acknowledge(Row(8, "other"), now));
  EXPECT_TRUE(ledger.Acknowledge(Row(9), now));
  EXPECT_TRUE(ledger.Acknowledge(Row(4, "k"), now));
  EXPECT_EQ(ledger.marks(), (std::vector<int64_t>{8, 9, 4}));
}

TEST(InFlightLedger, BarrierHoldsAtTheLowestFailedIdOfTheKey) {
  InFlightLedger ledger;
  auto now = Clock::now();
  ledger.Fail(Row(5, "k"));
  ledger.Fail(Row(9, "k"));  // the barrier stays at 5
  EXPECT_FALSE(ledger.Acknowledge(Row(6, "k"), now));
  EXPECT_EQ(*ledger.rewind_to(), 5);
}

// Failures reported out of id order (reports of different partitions interleave): the barrier
// is the lowest failed id of the key, whichever failed first.
TEST(InFlightLedger, BarrierIsTheLowestFailedIdEvenWhenAHigherOneFailedFirst) {
  InFlightLedger ledger;
  auto now = Clock::now();
  ledger.Fail(Row(12, "k"));
  ledger.Fail(Row(10, "k"));
  EXPECT_FALSE(ledger.Acknowledge(Row(11, "k"), now)) << "11 would overtake 10 of the same key";
  EXPECT_TRUE(ledger.marks().empty());
  EXPECT_EQ(*ledger.rewind_to(), 10);
}

// Order is per topic and key: a failed row of key k on one topic holds back no row of key k on
// another topic, and the barrier of one topic still holds its own rows.
TEST(InFlightLedger, BarrierBelongsToTheTopicOfTheFailedRow) {
  InFlightLedger ledger;
  auto now = Clock::now();
  Entry failed = Row(5, "k");
  failed.topic = "orders";
  ledger.Fail(failed);
  Entry other_topic = Row(6, "k");
  other_topic.topic = "payments";
  EXPECT_TRUE(ledger.Acknowledge(other_topic, now)) << "another topic's row of the same key";
  Entry same_topic = Row(7, "k");
  same_topic.topic = "orders";
  EXPECT_FALSE(ledger.Acknowledge(same_topic, now));
  EXPECT_EQ(ledger.marks(), (std::vector<int64_t>{6}));
}

TEST(InFlightLedger, NewAttemptForgetsBarriersAndRewindButKeepsMarks) {
  InFlightLedger ledger;
  auto now = Clock::now();
  EXPECT_TRUE(ledger.Acknowledge(Row(1, "k"), now));
  ledger.Fail(Row(2, "k"));
  ledger.StartAttempt();
  EXPECT_FALSE(ledger.rewind_to());
  EXPECT_TRUE(ledger.Acknowledge(Row(3, "k"), now)) << "the re-fetched rows start afresh";
  EXPECT_EQ(ledger.marks(), (std::vector<int64_t>{1, 3}));
}

TEST(InFlightLedger, RewindPointIsTheLowestFailure) {
  InFlightLedger ledger;
  ledger.Rewind(40);
  ledger.Rewind(12);
  ledger.Rewind(30);
  EXPECT_EQ(*ledger.rewind_to(), 12);
  ledger.Fail(Row(7));  // a keyless failure moves the rewind point, sets no barrier
  EXPECT_EQ(*ledger.rewind_to(), 7);
  EXPECT_TRUE(ledger.Acknowledge(Row(8), Clock::now()));
}

TEST(InFlightLedger, MarksAreDueForABatchNothingInFlightOrAfterTheWait) {
  InFlightLedger ledger;
  auto t0 = Clock::now();
  const auto wait = std::chrono::milliseconds(5);
  EXPECT_FALSE(ledger.MarksDue(3, t0, wait)) << "no marks: nothing to do";
  ledger.Add(ledger.NextToken(), Row(100));
  ledger.Acknowledge(Row(1), t0);
  EXPECT_FALSE(ledger.MarksDue(3, t0, wait)) << "one mark, more in flight, fresh: wait";
  EXPECT_TRUE(ledger.MarksDue(3, t0 + wait, wait)) << "the oldest waited long enough";
  ledger.Acknowledge(Row(2), t0 + std::chrono::milliseconds(4));
  EXPECT_FALSE(ledger.MarksDue(3, t0 + std::chrono::milliseconds(4), wait))
      << "the wait counts from the first mark";
  ledger.Acknowledge(Row(3), t0);
  EXPECT_TRUE(ledger.MarksDue(3, t0, wait)) << "a batch of marks";
  ledger.TakeMarks();
  ledger.Acknowledge(Row(4), t0);
  ledger.Forget();
  EXPECT_TRUE(ledger.MarksDue(3, t0, wait)) << "nothing in flight: no reason to wait";
  ledger.DropMarks();
  EXPECT_FALSE(ledger.MarksDue(3, t0, wait));
}

TEST(InFlightLedger, SuspectTravelsAloneUntilItsReport) {
  InFlightLedger ledger;
  EXPECT_TRUE(ledger.AddSuspect(20));
  EXPECT_FALSE(ledger.AddSuspect(20)) << "already a suspect";
  EXPECT_TRUE(ledger.IsSuspect(20));
  uint64_t t = ledger.NextToken();
  ledger.Add(t, Entry{20, "k", false, /*isolated=*/true});
  EXPECT_TRUE(ledger.isolated_in_flight());
  auto e = ledger.Take(t);
  ASSERT_TRUE(e);
  EXPECT_FALSE(ledger.isolated_in_flight());
  EXPECT_TRUE(ledger.Acknowledge(*e, Clock::now()));
  EXPECT_FALSE(ledger.IsSuspect(20)) << "an acknowledged row is no longer a suspect";
}

TEST(InFlightLedger, ForgetDropsInFlightAndFailuresNotSuspects) {
  InFlightLedger ledger;
  ledger.AddSuspect(3);
  ledger.Add(ledger.NextToken(), Entry{3, std::nullopt, false, true});
  ledger.Add(ledger.NextToken(), Row(4, "k"));
  ledger.Fail(Row(4, "k"));
  ledger.Forget();
  EXPECT_TRUE(ledger.empty());
  EXPECT_FALSE(ledger.isolated_in_flight());
  EXPECT_FALSE(ledger.rewind_to());
  EXPECT_TRUE(ledger.IsSuspect(3));
  EXPECT_TRUE(ledger.Acknowledge(Row(5, "k"), Clock::now())) << "the barrier went with the attempt";
  ledger.ClearSuspects();
  EXPECT_FALSE(ledger.IsSuspect(3));
}

}  // namespace
}  // namespace outboxd
