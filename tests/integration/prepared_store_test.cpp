// Check-back timing against real PostgreSQL: when PgPreparedStore::FetchDue offers a prepared
// message (transaction_timeout, the message's check_immunity) and when again after an unknown
// answer (check_interval). Waits are bounded polls; each observed delay must be at least the
// configured one and not much more.
#include <chrono>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "../support/integration.h"
#include "prepared_store.h"

namespace outboxd::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

class PreparedStoreTiming : public ServicesTest {
 protected:
  std::set<int64_t> Due(PgPreparedStore& store, Millis transaction_timeout) {
    auto due = store.FetchDue(transaction_timeout, 100);
    EXPECT_TRUE(due.ok()) << due.status().message();
    std::set<int64_t> ids;
    if (due.ok()) {
      for (const auto& m : *due) ids.insert(m.id);
    }
    return ids;
  }
  // Seconds from `since` until `id` is due (polling every 20 ms), or a large number.
  double SecondsUntilDue(PgPreparedStore& store, Millis transaction_timeout, int64_t id,
                         Clock::time_point since) {
    bool due = WaitFor([&] { return Due(store, transaction_timeout).count(id) > 0; }, seconds(10));
    return due ? std::chrono::duration<double>(Clock::now() - since).count() : 1e9;
  }
};

// Slack for a loaded machine: a delay may exceed the configured one by this much.
constexpr double kSlack = 1.0;

TEST_F(PreparedStoreTiming, FirstCheckAfterTransactionTimeoutOrImmunityThenEveryCheckInterval) {
  PgPreparedStore store(db_->conninfo());
  ASSERT_TRUE(store.Connect().ok());
  const Millis timeout(1000);
  auto prepared_at = Clock::now();
  int64_t plain = std::stoll(db_->Scalar("SELECT outbox.prepare('" + topic_ + "', 'a', 'plain')"));
  int64_t immune = std::stoll(db_->Scalar("SELECT outbox.prepare('" + topic_ +
                                          "', 'b', 'immune', '{}', interval '2 seconds')"));
  EXPECT_EQ(Due(store, timeout), std::set<int64_t>{}) << "due before transaction_timeout";

  double first = SecondsUntilDue(store, timeout, plain, prepared_at);
  std::cout << "first check due after " << first << " s (transaction_timeout 1 s)\n";
  EXPECT_GE(first, 1.0 - 0.05);
  EXPECT_LE(first, 1.0 + kSlack);
  if (std::chrono::duration<double>(Clock::now() - prepared_at).count() < 1.9) {
    EXPECT_EQ(Due(store, timeout).count(immune), 0u) << "due before its check_immunity";
  }
  double immune_first = SecondsUntilDue(store, timeout, immune, prepared_at);
  std::cout << "immune message due after " << immune_first << " s (check_immunity 2 s)\n";
  EXPECT_GE(immune_first, 2.0 - 0.05);
  EXPECT_LE(immune_first, 2.0 + kSlack);

  // An unknown answer: not due again before check_interval.
  auto answered_at = Clock::now();
  auto recorded = store.RecordUnknown(plain, Millis(1500));
  ASSERT_TRUE(recorded.ok() && *recorded);
  EXPECT_EQ(Due(store, timeout).count(plain), 0u) << "due again at once";
  double again = SecondsUntilDue(store, timeout, plain, answered_at);
  std::cout << "re-check due after " << again << " s (check_interval 1.5 s)\n";
  EXPECT_GE(again, 1.5 - 0.05);
  EXPECT_LE(again, 1.5 + kSlack);
}

}  // namespace
}  // namespace outboxd::testing
