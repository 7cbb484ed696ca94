// The leader's sessions that create outbox rows commit durably whatever the role's or server's
// synchronous_commit: the scheduler (a released delayed message is a new row) and check-back (a
// committed half message is a new row). Lost in a crash, such a commit would run again and send
// the message a second time under a new outbox-id, a duplicate no consumer can tell.
//
// How a test sees a session's synchronous_commit from outside: the test database defaults to
// synchronous_commit = off, and the server names a synchronous standby that never connects. A
// commit at synchronous_commit = on then waits for that standby (wait event SyncRep, in
// pg_stat_activity); at off it does not wait. The standby is unnamed again when the test ends.
#include <gtest/gtest.h>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <thread>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// While alive, the server names a synchronous standby that does not exist. Server-wide: these
// tests run alone (RUN_SERIAL, OUTBOXD_PG_SERVER_TESTS in tests/CMakeLists.txt).
class AbsentSynchronousStandby {
 public:
  explicit AbsentSynchronousStandby(const Services& s) : services_(s) {
    Set("ALTER SYSTEM SET synchronous_standby_names = 'outboxd_test_absent_standby'");
  }
  ~AbsentSynchronousStandby() { Set("ALTER SYSTEM RESET synchronous_standby_names"); }

 private:
  void Set(const std::string& sql) {
    auto admin = pg::Connection::Open(services_.pg_admin_conninfo, "outboxd-test");
    ASSERT_TRUE(admin.ok()) << admin.status().message();
    ASSERT_TRUE(admin->Exec(sql).ok());
    ASSERT_TRUE(admin->Exec("SELECT pg_reload_conf()").ok());
  }
  const Services& services_;
};

class SessionDurability : public ServicesTest {
 protected:
  void SetUp() override {
    ServicesTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    // New sessions on the test database default to off (this fixture's own connections too, so
    // they never wait for the absent standby).
    db_->Exec("ALTER DATABASE " + db_->name() + " SET synchronous_commit = off");
  }
  // The wait event of the session with this application_name ("" if none or not waiting).
  std::string WaitEvent(const std::string& application_name) {
    return db_->Scalar(
        "SELECT coalesce(string_agg(coalesce(wait_event, ''), ','), '') FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = '" +
        application_name + "'");
  }
};

TEST_F(SessionDurability, TheSchedulerReleasesWithSynchronousCommitOn) {
  ASSERT_EQ(db_->Scalar("SHOW synchronous_commit"), "off");
  const std::string id = db_->Scalar("SELECT outbox.publish('" + topic_ +
                                     "', 'k', 'delayed', '{}', clock_timestamp() + "
                                     "interval '1 s')");
  Consumer consumer(services_, topic_);
  {
    AbsentSynchronousStandby standby(services_);
    OutboxdProcess outboxd(services_, *db_, "", "[delay]\npoll_interval = \"100ms\"\n");
    outboxd.Start();
    EXPECT_TRUE(WaitFor([&] { return WaitEvent("outboxd scheduler") == "SyncRep"; }, seconds(20)))
        << "the scheduler's release did not wait for its WAL to reach the synchronous standby: "
           "its session does not run at synchronous_commit = on\n"
        << outboxd.Log();
    outboxd.Kill(SIGKILL);
    outboxd.Wait(seconds(10));
  }
  // Once the standby is no longer required, the waiting release completes (it commits locally
  // either way) and the message goes out once.
  OutboxdProcess outboxd(services_, *db_, "", "[delay]\npoll_interval = \"100ms\"\n");
  outboxd.Start();
  ASSERT_EQ(consumer.ReadUntil(1, seconds(30)).size(), 1u) << outboxd.Log();
  EXPECT_EQ(consumer.records()[0].Header("outbox-delayed-id"), id);
}

TEST_F(SessionDurability, CheckBackSettlesWithSynchronousCommitOn) {
  httplib::Server server;
  server.Post("/check", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"status\":\"commit\"}", "application/json");
  });
  const int port = server.bind_to_any_port("127.0.0.1");
  std::thread serving([&] { server.listen_after_bind(); });
  const std::string id =
      db_->Scalar("SELECT outbox.prepare('" + topic_ + "', 'k', 'half')");  // then abandoned
  const std::string toml =
      "[checkback]\ntransaction_timeout = \"200ms\"\npoll_interval = \"50ms\"\nchecker = "
      "\"http\"\nhttp_url = \"http://127.0.0.1:" +
      std::to_string(port) + "/check\"\n";
  {
    AbsentSynchronousStandby standby(services_);
    OutboxdProcess outboxd(services_, *db_, "", toml);
    outboxd.Start();
    EXPECT_TRUE(WaitFor([&] { return WaitEvent("outboxd checkback") == "SyncRep"; }, seconds(20)))
        << "check-back's settlement did not wait for its WAL to reach the synchronous standby: "
           "its session does not run at synchronous_commit = on\n"
        << outboxd.Log();
    outboxd.Kill(SIGKILL);
    outboxd.Wait(seconds(10));
  }
  OutboxdProcess outboxd(services_, *db_, "", toml);
  outboxd.Start();
  Consumer consumer(services_, topic_);
  ASSERT_EQ(consumer.ReadUntil(1, seconds(30)).size(), 1u) << outboxd.Log();
  EXPECT_EQ(consumer.records()[0].Header("outbox-prepared-id"), id);
  server.stop();
  serving.join();
}

}  // namespace
}  // namespace outboxd::testing
