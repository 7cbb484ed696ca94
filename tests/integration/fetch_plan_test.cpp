// The relay's session reads outbox rows by index at any outbox size. Its statements are
// prepared once, and PostgreSQL plans them from the statistics of that moment: on an empty outbox
// (the usual state of a live one) the fetch's plan was a sequential scan and a sort, which reads
// every dead row the removals leave, each round, or, after a backlog built up, the whole backlog.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "../support/integration.h"
#include "config.h"
#include "outbox_store.h"

namespace outboxd::testing {
namespace {

// Scans of outbox.messages so far, by kind, as the statistics collector has them.
struct Scans {
  int64_t seq = 0;
  int64_t idx = 0;
};
Scans ReadScans(const TestDatabase& db) {
  Scans s;
  s.seq = std::stoll(db.Scalar(
      "SELECT seq_scan FROM pg_stat_user_tables WHERE relid = 'outbox.messages'::regclass"));
  s.idx =
      std::stoll(db.Scalar("SELECT coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                           "WHERE relid = 'outbox.messages'::regclass"));
  return s;
}

TEST(FetchPlan, PlansMadeOnAnEmptyOutboxStillReadByIndexOnceRowsArrive) {
  Services services;
  OUTBOXD_REQUIRE_SERVICES(services);
  TestDatabase db(services);
  Config config;
  config.postgres.conninfo = db.conninfo();
  config.relay.batch_size = 100;
  PgOutboxStore store(config);
  ASSERT_TRUE(store.Lead().ok());
  const int64_t relay_pid = store.Session().pid;
  const Scans before = ReadScans(db);

  // Ten fetches of an empty outbox: PostgreSQL settles on a plan for the fetch (after five
  // executions it may keep a generic one) from an empty table's statistics.
  std::vector<OutboxRow> rows;
  int fetches = 0;
  for (int i = 0; i < 10; ++i, ++fetches) ASSERT_TRUE(store.FetchBatch(&rows).ok());
  ASSERT_TRUE(rows.empty());
  // Then rows arrive, and the relay fetches through them, removing each batch as it goes (dead
  // rows, as a live outbox has).
  db.Exec("SELECT count(outbox.publish('t', 'k', repeat('x', 200))) FROM generate_series(1, 500)");
  size_t got = 0;
  do {
    ASSERT_TRUE(store.FetchBatch(&rows).ok());
    ++fetches;
    got += rows.size();
    std::vector<int64_t> ids;
    for (const auto& r : rows) ids.push_back(r.id);
    ASSERT_TRUE(store.MarkSent(ids).ok());
  } while (!rows.empty());
  EXPECT_EQ(got, 500u);

  // A backend sends its statistics when it ends: end the relay's session, then wait until every
  // fetch shows up as a scan of the table (of either kind).
  store.Disconnect();
  ASSERT_TRUE(WaitFor(
      [&] {
        return db.Scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = " +
                         std::to_string(relay_pid)) == "0";
      },
      std::chrono::seconds(10)));
  Scans after;
  ASSERT_TRUE(WaitFor(
      [&] {
        after = ReadScans(db);
        return (after.seq - before.seq) + (after.idx - before.idx) >= fetches;
      },
      std::chrono::seconds(15)))
      << "the relay's scans did not reach the statistics: seq " << after.seq - before.seq
      << ", index " << after.idx - before.idx << ", fetches " << fetches;
  // Nothing else read the table, so every sequential scan is the relay's.
  EXPECT_EQ(after.seq - before.seq, 0) << "the relay's fetches scanned outbox.messages";
}

}  // namespace
}  // namespace outboxd::testing
