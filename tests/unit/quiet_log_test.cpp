// Log lines a user reads: one line each, no doubled prefix, and English counts.
#include <string>

#include <gtest/gtest.h>

#include "../support/log_counter.h"
#include "log.h"
#include "pg/connection.h"

namespace outboxd {
namespace {

using testing::LogCounter;

TEST(OnceLogger, SaysTheServiceOnceAndCountsInEnglish) {
  LogCounter log;
  OnceLogger pg("PostgreSQL");
  pg.Failure("PostgreSQL: connection to server failed");
  pg.Failure("PostgreSQL: connection to server failed");
  pg.Recovered();
  EXPECT_EQ(log.Count("PostgreSQL: connection to server failed; retrying with back-off"), 1);
  EXPECT_EQ(log.Count("PostgreSQL: PostgreSQL:"), 0);
  EXPECT_EQ(log.Count("recovered after"), 1);
  EXPECT_EQ(log.Count("and 1 retry"), 1);
  EXPECT_EQ(log.Count("1 retries"), 0);
}

// libpq's "connection refused" message spans two lines (a tab-indented hint): one line here.
TEST(PgConnection, ErrorMessagesAreOneLine) {
  // Port 1 on loopback: nothing listens, the connection is refused at once.
  auto conn = pg::Connection::Open("host=127.0.0.1 port=1 dbname=x connect_timeout=2", "test");
  ASSERT_FALSE(conn.ok());
  const std::string& m = conn.status().message();
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  EXPECT_EQ(m.find('\t'), std::string::npos) << m;
  EXPECT_NE(m.find("Connection refused; "), std::string::npos) << m;
}

// The test support's log capture (support/log_counter.h) counts by level as the log tests ask.
TEST(LogCounter, CountsByLevelAndDumpsTheLinesAtALevel) {
  LogCounter log;
  spdlog::trace("kafka: attempt 1");
  spdlog::info("kafka: reachable again");
  spdlog::warn("kafka: down");
  EXPECT_EQ(log.Count("kafka"), 3);
  EXPECT_EQ(log.Count(spdlog::level::trace, "kafka"), 3);
  EXPECT_EQ(log.Count(spdlog::level::info, "kafka"), 2);
  EXPECT_EQ(log.Count(spdlog::level::warn, ""), 1);
  EXPECT_EQ(log.Count(spdlog::level::err, ""), 0);
  EXPECT_EQ(log.Dump(spdlog::level::info), "kafka: reachable again\nkafka: down\n");
}

}  // namespace
}  // namespace outboxd
