#include "scan_window.h"

#include <gtest/gtest.h>

namespace outboxd {
namespace {

Snapshot Snap(std::vector<uint64_t> running) {
  Snapshot s;
  s.xmin = running.empty() ? 100 : running.front();
  s.xmax = 1000;
  s.running = std::move(running);
  return s;
}

TEST(Snapshot, ParsesPgText) {
  auto s = Snapshot::Parse("735:740:736,738");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->xmin, 735u);
  EXPECT_EQ(s->xmax, 740u);
  EXPECT_EQ(s->running, (std::vector<uint64_t>{736, 738}));
  EXPECT_TRUE(Snapshot::Parse("10:10:"));
  EXPECT_FALSE(Snapshot::Parse("10:x:"));
}

TEST(ScanWindow, AdvancesPastFreshRows) {
  ScanWindow w;
  EXPECT_TRUE(w.Apply(Snap({}), {}, false, {1, 2, 3}));
  EXPECT_EQ(w.hi(), 3);
  EXPECT_TRUE(w.gaps().empty());
}

// Id 5 taken by a transaction still running when 6 and 7 were read: 5 must stay watched.
TEST(ScanWindow, GapOfRunningTransactionIsKeptUntilItEnds) {
  ScanWindow w;
  ASSERT_TRUE(w.Apply(Snap({}), {}, false, {1, 2, 3, 4}));
  ASSERT_TRUE(w.Apply(Snap({42}), {}, false, {6, 7}));
  ASSERT_EQ(w.gaps().size(), 1u);
  EXPECT_EQ(w.gaps()[0].first, 5);
  EXPECT_EQ(w.gaps()[0].last, 5);
  EXPECT_EQ(w.GapStarts(), "{5}");
  // Still running: the gap stays.
  ASSERT_TRUE(w.Apply(Snap({42}), {}, false, {}));
  EXPECT_EQ(w.gaps().size(), 1u);
  // It committed: this fetch returned id 5 as a late row, and the gap is gone.
  ASSERT_TRUE(w.Apply(Snap({}), {5}, false, {8}));
  EXPECT_TRUE(w.gaps().empty());
  EXPECT_EQ(w.hi(), 8);
}

TEST(ScanWindow, GapOfAbortedTransactionIsDroppedWhenItsOwnersEnd) {
  ScanWindow w;
  ASSERT_TRUE(w.Apply(Snap({7, 9}), {}, false, {1, 4}));
  EXPECT_EQ(w.GapStarts(), "{2}");
  EXPECT_EQ(w.GapEnds(), "{3}");
  ASSERT_TRUE(w.Apply(Snap({9, 12}), {}, false, {}));
  EXPECT_EQ(w.gaps().size(), 1u);
  EXPECT_EQ(w.gaps()[0].owners, (std::vector<uint64_t>{9}));  // 12 started later: not an owner
  ASSERT_TRUE(w.Apply(Snap({12}), {}, false, {}));
  EXPECT_TRUE(w.gaps().empty());
}

TEST(ScanWindow, LateRowsAreCarvedOut) {
  ScanWindow w;
  ASSERT_TRUE(w.Apply(Snap({5}), {}, false, {10}));  // gap 1..9
  ASSERT_TRUE(w.Apply(Snap({5}), {4}, false, {}));
  EXPECT_EQ(w.GapStarts(), "{1,5}");
  EXPECT_EQ(w.GapEnds(), "{3,9}");
}

TEST(ScanWindow, FullLateBranchHoldsBackFreshRows) {
  ScanWindow w;
  ASSERT_TRUE(w.Apply(Snap({5}), {}, false, {10}));
  EXPECT_FALSE(w.Apply(Snap({}), {1, 2}, true, {11, 12}));
  EXPECT_EQ(w.hi(), 10);            // fresh rows not taken
  EXPECT_EQ(w.GapStarts(), "{3}");  // the owner is kept though it ended: rows may remain
  ASSERT_TRUE(w.Apply(Snap({}), {3}, false, {11, 12}));
  EXPECT_TRUE(w.gaps().empty());
  EXPECT_EQ(w.hi(), 12);
}

TEST(ScanWindow, RewindRefetchesFromTheFirstUnacked) {
  ScanWindow w;
  ASSERT_TRUE(w.Apply(Snap({3}), {}, false, {1, 2, 10, 20}));  // gaps 3..9, 11..19
  w.Rewind(15);
  EXPECT_EQ(w.hi(), 14);
  EXPECT_EQ(w.GapStarts(), "{3,11}");
  EXPECT_EQ(w.GapEnds(), "{9,14}");
  w.Rewind(100);  // never forward
  EXPECT_EQ(w.hi(), 14);
  w.Reset();
  EXPECT_EQ(w.hi(), 0);
  EXPECT_TRUE(w.gaps().empty());
}

}  // namespace
}  // namespace outboxd

namespace outboxd {
namespace {

// pg_current_snapshot()'s xmax is latestCompletedXid + 1: a transaction whose xid is above the
// last completed one runs but is not listed. Its gap must be watched until it is known to be done.
TEST(ScanWindow, RunningXidAboveXmaxIsAnOwnerToo) {
  ScanWindow w;
  ASSERT_TRUE(w.Apply(Snap({}), {}, false, {149}));
  Snapshot s1 = Snap({});
  s1.xmax = 5151;
  s1.next_xid = 5152;  // xid 5151 was assigned (and took id 151) but is not in xip
  ASSERT_TRUE(w.Apply(s1, {}, false, {150, 152}));
  ASSERT_EQ(w.GapStarts(), "{151}");
  Snapshot s2 = Snap({5151});  // now listed as running
  s2.xmax = 5160;
  s2.next_xid = 5160;
  ASSERT_TRUE(w.Apply(s2, {}, false, {}));
  ASSERT_EQ(w.GapStarts(), "{151}");
  EXPECT_EQ(w.gaps()[0].owners, (std::vector<uint64_t>{5151}));
  Snapshot s3 = Snap({});
  s3.xmax = 5170;
  s3.next_xid = 5170;
  ASSERT_TRUE(w.Apply(s3, {151}, false, {}));
  EXPECT_TRUE(w.gaps().empty());
}

// A late row in the middle of a gap splits it; both halves keep the open xid
// range ([xmax, next_xid) of the snapshot that made the gap), or the upper half counts as settled
// and a row that commits there later is never fetched.
TEST(ScanWindow, SplitGapKeepsItsOpenXidRange) {
  ScanWindow w;
  ASSERT_TRUE(w.Apply(Snap({}), {}, false, {1, 9}));
  ASSERT_EQ(w.hi(), 9);
  Snapshot s1;  // C (xid 100) committed id 13; 101..103 took ids 10..12 and run, unlisted
  s1.xmin = 101;
  s1.xmax = 101;
  s1.next_xid = 104;
  ASSERT_TRUE(w.Apply(s1, {}, false, {13}));
  ASSERT_EQ(w.GapStarts(), "{10}");
  ASSERT_EQ(w.GapEnds(), "{12}");
  Snapshot s2;  // 102 committed id 11; 101 and 103 still run
  s2.xmin = 101;
  s2.xmax = 103;
  s2.running = {101};
  s2.next_xid = 104;
  ASSERT_TRUE(w.Apply(s2, {11}, false, {}));
  EXPECT_EQ(w.GapStarts(), "{10,12}");
  EXPECT_EQ(w.GapEnds(), "{10,12}");
}

TEST(ScanWindow, OpenRangeStaysWhileAboveTheNewXmax) {
  ScanWindow w;
  Snapshot s1 = Snap({});
  s1.xmax = 100;
  s1.next_xid = 110;
  ASSERT_TRUE(w.Apply(s1, {}, false, {1, 3}));
  Snapshot s2 = Snap({});
  s2.xmax = 105;  // 105..109 may still run
  s2.next_xid = 120;
  ASSERT_TRUE(w.Apply(s2, {}, false, {}));
  EXPECT_EQ(w.gaps().size(), 1u);
  Snapshot s3 = Snap({});
  s3.xmax = 110;
  s3.next_xid = 130;
  ASSERT_TRUE(w.Apply(s3, {}, false, {}));
  EXPECT_TRUE(w.gaps().empty());
}

}  // namespace
}  // namespace outboxd
