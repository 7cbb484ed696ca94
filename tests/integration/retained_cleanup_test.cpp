// relay.on_sent = "retain": the removal of sent rows past relay.retention keeps up with the rate
// the relay sends at. It used to remove at most 10,000 rows per cleanup_interval, so any rate above
// 10,000 per interval (167 rows/s with the default minute) grew the table without bound.
#include <chrono>
#include <regex>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

class RetainedCleanup : public ServicesTest {};

// Cleanup runs that removed rows so far (one log line each).
int CleanupRuns(const OutboxdProcess& outboxd) {
  static const std::regex kLine("removed [0-9]+ sent rows older than the retention");
  const std::string log = outboxd.Log();
  return static_cast<int>(
      std::distance(std::sregex_iterator(log.begin(), log.end(), kLine), std::sregex_iterator()));
}

// A backlog several times the size of one removal statement is drained at full speed with a
// retention of a second. Once every row is past the retention, the next cleanup run must leave
// none of them: the table's size is bounded by what the relay sends within the retention and one
// cleanup interval, whatever the rate.
TEST_F(RetainedCleanup, AFullSpeedDrainLeavesNoRowPastTheRetentionAfterOneCleanupRun) {
  constexpr int kRows = 35'000;  // more than three removal statements' worth
  ExpectedMessages sent = PublishMany(kRows, 50, topic_);
  Consumer consumer(services_, topic_);
  OutboxdProcess outboxd(services_, *db_,
                         "on_sent = \"retain\"\nretention = \"1s\"\ncleanup_interval = \"10s\"\n"
                         "batch_size = 1000\nmax_in_flight = 20000\n");
  outboxd.Start();
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(sent), 120s)) << outboxd.Log();
  ASSERT_TRUE(WaitFor(
      [&] {
        return db_->Scalar("SELECT count(*) FROM outbox.messages WHERE sent_at IS NULL") == "0";
      },
      30s));
  // Every row is now older than the retention; a run that starts from here on ends with none.
  std::this_thread::sleep_for(1500ms);
  const int runs = CleanupRuns(outboxd);
  ASSERT_TRUE(WaitFor([&] { return CleanupRuns(outboxd) > runs; }, 30s)) << outboxd.Log();
  const std::string left = db_->Scalar("SELECT count(*) FROM outbox.messages");
  EXPECT_EQ(left, "0") << "rows sent more than the retention ago are still in the outbox after a "
                          "cleanup run\n"
                       << outboxd.Log();
}

}  // namespace
}  // namespace outboxd::testing
