// Failover and network faults. Instance A runs in a network namespace made by
// tests/netfault/netns.sh and reaches PostgreSQL and Kafka over a veth pair; instance B runs beside
// them on loopback. Faults are silent drops on A's link (a partition: no RST, no FIN), random
// loss, or SIGSTOP. A writer publishes throughout; the ids publish() returned are checked against
// what a separate consumer reads from Kafka (0 lost). Needs root and nftables; without them the
// tests skip, or fail under CI=true. Each prints its measured takeover or resume time.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

const std::string kScript = std::string(OUTBOXD_SOURCE_DIR) + "/tests/netfault/netns.sh";
// The documented worst case for a leader cut off or frozen: leadership.session_timeout (10 s)
// plus the standby's retry (200 ms in these tests), with room for a loaded 2-core machine.
constexpr auto kTakeoverBound = seconds(15);

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::pair<int, std::string> Script(const std::string& args) {
  std::string out;
  FILE* p = popen((kScript + " " + args + " 2>&1").c_str(), "r");
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// Publishes `per_round` rows every `pause` on its own connection until stopped; remembers the
// ids publish() returned and their keys.
class Writer {
 public:
  Writer(const TestDatabase& db, const std::string& topic, int per_round = 20,
         milliseconds pause = milliseconds(20))
      : thread_([this, &db, topic, per_round, pause] {
          pg::Connection c = db.Connect();
          for (int i = 0; running_; ++i) {
            std::string key = "k" + std::to_string(i % 50);
            auto r = c.Query("SELECT outbox.publish('" + topic + "', '" + key + "', 'v') FROM " +
                             "generate_series(1, " + std::to_string(per_round) + ")");
            if (r.ok()) {
              std::lock_guard l(mu_);
              for (int j = 0; j < r->rows(); ++j) expected_[r->GetInt(j, 0)] = {key, "v", {}};
            }
            std::this_thread::sleep_for(pause);
          }
        }) {}
  ~Writer() { Stop(); }
  void Stop() {
    running_ = false;
    if (thread_.joinable()) thread_.join();
  }
  ExpectedMessages expected() {
    std::lock_guard l(mu_);
    return expected_;
  }

 private:
  std::atomic<bool> running_{true};
  std::mutex mu_;
  ExpectedMessages expected_;  // GUARDED_BY(mu_)
  std::thread thread_;
};

size_t Occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class NetFault : public ServicesTest {
 protected:
  void SetUp() override {
    ServicesTest::SetUp();
    if (HasFatalFailure() || IsSkipped()) return;
    auto [rc, why] = Script("check");
    if (rc != 0) {
      if (InCi()) FAIL() << "network namespaces unavailable under CI: " << why;
      GTEST_SKIP() << "network namespaces unavailable: " << why;
    }
    auto [up_rc, out] = Script("up a 1");
    ASSERT_EQ(up_rc, 0) << out;
    up_ = true;
  }
  void TearDown() override {
    if (up_) Script("down a");
    if (wire_) Script("down w");
    if (!a_role_.empty()) {
      a_.reset();  // its sessions end before its role goes
      db_->Exec("DROP ROLE IF EXISTS " + a_role_);
    }
  }

  int64_t Remaining() { return std::stoll(db_->Scalar("SELECT count(*) FROM outbox.messages")); }
  std::string LockHolders() {
    return db_->Scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())");
  }

  // Every row removed from the outbox, with the role of the session that removed it: A connects
  // as a role of its own (a_role_), B as postgres. (Their addresses do not tell them apart: the
  // namespace's link is SNATed to 127.0.0.1.) The witness of "the old leader removes nothing"
  // instead of its log.
  void AuditRemovals() {
    a_role_ = UniqueName("nf_a");
    db_->Exec("CREATE ROLE " + a_role_ + " LOGIN SUPERUSER");
    db_->Exec(
        "CREATE TABLE public.removals (id bigint NOT NULL, who text NOT NULL, "
        "at timestamptz NOT NULL DEFAULT clock_timestamp())");
    db_->Exec(
        "CREATE FUNCTION public.audit_removal() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO public.removals (id, who) VALUES (OLD.id, session_user); "
        "RETURN OLD; END $$");
    db_->Exec(
        "CREATE TRIGGER audit_removal AFTER DELETE ON outbox.messages FOR EACH ROW EXECUTE "
        "FUNCTION public.audit_removal()");
  }
  // Rows A removed in all, and after B's first removal (once B leads, A must remove nothing).
  int64_t RemovedByA() {
    return std::stoll(
        db_->Scalar("SELECT count(*) FROM public.removals WHERE who = '" + a_role_ + "'"));
  }
  int64_t RemovedByAAfterB() {
    return std::stoll(db_->Scalar(
        "SELECT count(*) FROM public.removals WHERE who = '" + a_role_ +
        "' AND at > (SELECT coalesce(min(at), 'infinity') FROM public.removals WHERE who <> '" +
        a_role_ + "')"));
  }
  int64_t RemovedByB() {
    return std::stoll(
        db_->Scalar("SELECT count(*) FROM public.removals WHERE who <> '" + a_role_ + "'"));
  }
  // The writer stops and B delivers and removes everything: from now on B has nothing to send,
  // so a record that arrives is the old leader's. Returns the records read so far.
  size_t DrainWithB(Writer& writer, Consumer& consumer) {
    writer.Stop();
    EXPECT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(120)))
        << Remaining() << " left\nB:\n"
        << b_->Log();
    const size_t published = writer.expected().size();
    consumer.ReadUntil(published, seconds(60));
    consumer.ReadFor(seconds(2));
    return consumer.records().size();
  }
  // After the old leader is back (its link healed, or awake): for `window` no record arrives
  // and it removed nothing once B led; it had removed rows before (the witness sees it).
  void ExpectOldLeaderInert(Consumer& consumer, size_t records_before, const std::string& what) {
    consumer.ReadFor(seconds(10));
    EXPECT_EQ(consumer.records().size(), records_before)
        << what << ": records arrived after the old leader came back, with nothing left to send"
        << "\nA:\n"
        << a_->Log();
    EXPECT_GT(RemovedByA(), 0) << "the witness never saw A remove a row";
    EXPECT_GT(RemovedByB(), 0);
    EXPECT_EQ(RemovedByAAfterB(), 0) << what << ": the old leader removed rows after B led\nA:\n"
                                     << a_->Log();
    EXPECT_EQ(Remaining(), 0);
  }

  // A in the namespace leads, B on loopback stands by.
  void StartLeaderInNamespaceAndStandby() {
    // With AuditRemovals, A connects as its own role.
    a_.emplace(services_, *db_, "", "",
               a_role_.empty() ? ""
                               : "host=" + services_.pg_host + " port=" + services_.pg_port +
                                     " dbname=" + db_->name() + " user=" + a_role_);
    a_->SetNetworkNamespace("obxnfa");
    a_->Start();
    ASSERT_TRUE(a_->WaitForLog("leading the outbox", seconds(30))) << a_->Log();
    b_.emplace(services_, *db_);
    b_->Start();
    ASSERT_TRUE(b_->WaitForLog("standing by", seconds(30))) << b_->Log();
  }

  // Everything the writer published arrives: 0 lost, none out of order, nothing unknown.
  void ExpectAllDelivered(Writer& writer, Consumer& consumer, const std::string& what) {
    writer.Stop();
    ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(120)))
        << Remaining() << " left\nA:\n"
        << a_->Log() << "\nB:\n"
        << (b_ ? b_->Log() : "");
    auto expected = writer.expected();
    consumer.ReadUntil(expected.size(), seconds(60));
    consumer.ReadFor(seconds(1));
    DeliveryCheck check = CheckDelivery(expected, consumer.records(), kPartitions);
    std::cout << what << ": " << check.Summary() << "\n";
    EXPECT_EQ(check.lost, 0u) << check.Summary();
    EXPECT_EQ(check.out_of_order, 0u) << check.Summary();
    EXPECT_EQ(check.unexpected, 0u) << check.Summary();
  }

  bool up_ = false;
  bool wire_ = false;   // namespace w (over wire.py) was made
  std::string a_role_;  // AuditRemovals: the role A connects as
  std::optional<OutboxdProcess> a_, b_;
};

// The leader's link to PostgreSQL goes silent (a partition, or its host losing power): PostgreSQL
// ends its session within leadership.session_timeout, B takes over, A stops delivering on its own
// and cannot remove anything (its session is gone). When the link returns A stands by.
TEST_F(NetFault, LeaderCutFromPostgresIsReplacedWithinTheBound) {
  AuditRemovals();
  Writer writer(*db_, topic_);
  StartLeaderInNamespaceAndStandby();
  Consumer consumer(services_, topic_);
  ASSERT_GE(consumer.ReadUntil(500, seconds(30)).size(), 500u) << a_->Log();
  auto cut = Clock::now();
  ASSERT_EQ(Script("cut a pg").first, 0);
  ASSERT_TRUE(b_->WaitForLog("leading the outbox", seconds(60))) << b_->Log() << a_->Log();
  double takeover = Since(cut);
  ASSERT_TRUE(a_->WaitForLog("stopped delivering", seconds(60))) << a_->Log();
  double a_stopped = Since(cut);
  std::cout << "partition leader<->PostgreSQL: standby leads after " << takeover
            << " s; the old leader stopped delivering after " << a_stopped << " s\n";
  EXPECT_LE(takeover, std::chrono::duration<double>(kTakeoverBound).count());
  size_t before = consumer.records().size();
  EXPECT_GE(consumer.ReadUntil(before + 500, seconds(30)).size(), before + 500) << b_->Log();
  const size_t drained = DrainWithB(writer, consumer);
  ASSERT_EQ(Script("heal a").first, 0);
  EXPECT_TRUE(a_->WaitForLog("standing by", seconds(60))) << a_->Log();  // then judge it
  ExpectOldLeaderInert(consumer, drained, "partition leader<->PostgreSQL");
  EXPECT_EQ(LockHolders(), "1");
  ExpectAllDelivered(writer, consumer, "partition leader<->PostgreSQL");
}

// The leader's host dies: its link goes silent and the process dies behind it (SIGKILL while cut,
// so not even its FIN reaches PostgreSQL). B takes over within the bound; nothing is lost.
TEST_F(NetFault, LeaderHostCrashIsReplacedWithinTheBound) {
  Writer writer(*db_, topic_);
  StartLeaderInNamespaceAndStandby();
  Consumer consumer(services_, topic_);
  ASSERT_GE(consumer.ReadUntil(500, seconds(30)).size(), 500u) << a_->Log();
  auto crash = Clock::now();
  ASSERT_EQ(Script("cut a all").first, 0);
  a_->Kill(SIGKILL);
  ASSERT_TRUE(a_->Wait(seconds(10)).has_value());
  ASSERT_TRUE(b_->WaitForLog("leading the outbox", seconds(60))) << b_->Log();
  double takeover = Since(crash);
  std::cout << "leader host crash (link silent, process gone): standby leads after " << takeover
            << " s\n";
  EXPECT_LE(takeover, std::chrono::duration<double>(kTakeoverBound).count());
  EXPECT_EQ(LockHolders(), "1");
  ExpectAllDelivered(writer, consumer, "leader host crash");
}

// The leader's link to Kafka goes silent while PostgreSQL stays reachable. Nothing is removed
// without an acknowledgement; A keeps the lead (it is alive and proves it to PostgreSQL), so B
// does not take over: outboxd cannot tell a broker partition of one instance from a Kafka outage
// for all, and handing over on every Kafka error would only move the same wait around. When the
// link returns, delivery resumes.
TEST_F(NetFault, LeaderCutFromKafkaRemovesNothingUnackedAndResumes) {
  Writer writer(*db_, topic_);
  StartLeaderInNamespaceAndStandby();
  Consumer consumer(services_, topic_);
  ASSERT_GE(consumer.ReadUntil(500, seconds(30)).size(), 500u) << a_->Log();
  ASSERT_EQ(Script("cut a kafka").first, 0);
  // Rows removed so far: of the ids the writer has seen committed (its ids only grow, one
  // transaction at a time, so the outbox holds no other id at or below the highest), those gone.
  auto removed = [&] {
    auto ids = writer.expected();
    if (ids.empty()) return int64_t{0};
    int64_t left = std::stoll(db_->Scalar("SELECT count(*) FROM outbox.messages WHERE id <= " +
                                          std::to_string(ids.rbegin()->first)));
    return static_cast<int64_t>(ids.size()) - left;
  };
  // Acknowledgements already on their way are removed within a round or two.
  std::this_thread::sleep_for(seconds(2));
  int64_t removed_at_cut = removed();
  size_t received_at_cut = consumer.ReadFor(milliseconds(500)).size();
  auto until = Clock::now() + seconds(15);
  while (Clock::now() < until) {
    EXPECT_LE(removed(), removed_at_cut) << "a row was removed while Kafka was unreachable";
    std::this_thread::sleep_for(milliseconds(500));
  }
  EXPECT_EQ(consumer.ReadFor(milliseconds(200)).size(), received_at_cut);
  EXPECT_EQ(Occurrences(b_->Log(), "leading the outbox: delivering"), 0u) << b_->Log();
  auto healed = Clock::now();
  ASSERT_EQ(Script("heal a").first, 0);
  ASSERT_TRUE(WaitFor([&] { return removed() > removed_at_cut; }, seconds(120))) << a_->Log();
  std::cout << "partition leader<->Kafka (PostgreSQL reachable): delivery resumed " << Since(healed)
            << " s after the link returned; " << removed_at_cut
            << " rows removed before, none during the cut\n";
  EXPECT_EQ(Occurrences(b_->Log(), "leading the outbox: delivering"), 0u) << b_->Log();
  ExpectAllDelivered(writer, consumer, "partition leader<->Kafka");
}

// 5% of A's packets to and from PostgreSQL and Kafka dropped at random by nft on its veth link.
// The same backlog is drained without and with loss; both rates are printed.
TEST_F(NetFault, FivePercentLossLosesNothing) {
  constexpr int kRows = 10'000;
  auto publish = [&] {
    pg::Connection c = db_->Connect();
    auto r = c.Query("SELECT outbox.publish('" + topic_ + "', 'k' || (i % 100), 'v'), 'k' || " +
                     "(i % 100) FROM generate_series(1, " + std::to_string(kRows) + ") i");
    EXPECT_TRUE(r.ok()) << r.status().message();
    ExpectedMessages ids;
    for (int i = 0; r.ok() && i < r->rows(); ++i) {
      ids[r->GetInt(i, 0)] = {std::string(r->Get(i, 1)), "v", {}};
    }
    return ids;
  };
  a_.emplace(services_, *db_);
  a_->SetNetworkNamespace("obxnfa");
  a_->Start();
  ASSERT_TRUE(a_->WaitForLog("leading the outbox", seconds(30))) << a_->Log();
  auto drain = [&](const char* what) {
    auto ids = publish();
    auto start = Clock::now();
    EXPECT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(300))) << a_->Log();
    double rate = kRows / Since(start);
    std::cout << what << ": " << kRows << " messages drained at " << rate << " msgs/s\n";
    return ids;
  };
  auto first = drain("no loss");
  ASSERT_EQ(Script("loss a 5").first, 0);
  auto second = drain("5% loss both ways");
  first.merge(second);
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(first.size(), seconds(60));
  consumer.ReadFor(seconds(1));
  const ExpectedMessages& expected = first;
  DeliveryCheck check = CheckDelivery(expected, consumer.records(), kPartitions);
  std::cout << "5% loss: " << check.Summary() << "\n";
  EXPECT_EQ(check.lost, 0u) << check.Summary();
  EXPECT_EQ(check.unexpected, 0u) << check.Summary();
}

// What `tc netem delay 200ms loss 5%` was asked to show, on a kernel without netem: A's only link
// is wire.py, which delays every packet 200 ms and drops 5 %, in each direction (so 400 ms round
// trips). A backlog drains with nothing lost; the rate is printed.
TEST_F(NetFault, SlowLossyLinkLosesNothing) {
  auto [rc, out] = Script("up-wire w 2 200 5");
  wire_ = true;
  ASSERT_EQ(rc, 0) << out;
  constexpr int kRows = 5'000;
  pg::Connection c = db_->Connect();
  auto r = c.Query("SELECT outbox.publish('" + topic_ + "', 'k' || (i % 100), 'v'), 'k' || " +
                   "(i % 100) FROM generate_series(1, " + std::to_string(kRows) + ") i");
  ASSERT_TRUE(r.ok()) << r.status().message();
  ExpectedMessages expected;
  for (int i = 0; i < r->rows(); ++i)
    expected[r->GetInt(i, 0)] = {std::string(r->Get(i, 1)), "v", {}};
  a_.emplace(services_, *db_);
  a_->SetNetworkNamespace("obxnfw");
  auto start = Clock::now();
  a_->Start();
  ASSERT_TRUE(a_->WaitForLog("leading the outbox", seconds(60))) << a_->Log();
  double led = Since(start);
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(300))) << a_->Log();
  double drained = Since(start);
  std::cout << "200 ms delay + 5% loss each way: leading after " << led << " s, " << kRows
            << " messages drained at " << kRows / (drained - led) << " msgs/s\n";
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(expected.size(), seconds(60));
  consumer.ReadFor(seconds(1));
  DeliveryCheck check = CheckDelivery(expected, consumer.records(), kPartitions);
  std::cout << "200 ms delay + 5% loss: " << check.Summary() << "\n";
  EXPECT_EQ(check.lost, 0u) << check.Summary();
  EXPECT_EQ(check.out_of_order, 0u) << check.Summary();
  EXPECT_EQ(check.unexpected, 0u) << check.Summary();
}

// The leader hangs (SIGSTOP) for 20 s (or OUTBOXD_NETFAULT_FREEZE_SECONDS), then continues. Its
// kernel still answers TCP, so only the session timeout can depose it: B takes over within the
// bound. When A continues, its first statement fails (its session is gone), it stops delivering and
// stands by. Witnesses, not its log: B drains the outbox and is stopped for a few seconds (it keeps
// the lock) while 100 new rows wait; A wakes: no record arrives, the 100 rows stay, and the
// outbox's removal audit shows no row removed by A once B led. Then B delivers them.
TEST_F(NetFault, FrozenLeaderIsReplacedAndStandsByWhenItWakes) {
  AuditRemovals();
  Writer writer(*db_, topic_);
  StartLeaderInNamespaceAndStandby();
  Consumer consumer(services_, topic_);
  ASSERT_GE(consumer.ReadUntil(500, seconds(30)).size(), 500u) << a_->Log();
  auto frozen = Clock::now();
  a_->Kill(SIGSTOP);
  bool took_over = b_->WaitForLog("leading the outbox", seconds(40));
  double takeover = Since(frozen);
  // Frozen 20 s in all; OUTBOXD_NETFAULT_FREEZE_SECONDS=60 gives the long form.
  const char* freeze = std::getenv("OUTBOXD_NETFAULT_FREEZE_SECONDS");
  const double freeze_seconds = freeze ? std::atof(freeze) : 20;
  ASSERT_TRUE(took_over) << b_->Log();
  const size_t drained = DrainWithB(writer, consumer);
  while (Since(frozen) < freeze_seconds) std::this_thread::sleep_for(milliseconds(100));
  // Bait for A: B is frozen a few seconds (well inside its 10 s session timeout, so it keeps the
  // lock) while rows wait in the outbox. Anything produced or removed meanwhile is A's.
  b_->Kill(SIGSTOP);
  const auto b_frozen = Clock::now();
  ExpectedMessages bait = PublishMany(100, 10, topic_);
  a_->Kill(SIGCONT);
  std::cout << "leader frozen (SIGSTOP): standby leads after " << takeover << " s\n";
  EXPECT_LE(takeover, std::chrono::duration<double>(kTakeoverBound).count());
  auto woke = Clock::now();
  const bool stood_by = a_->WaitForLog("standing by", seconds(4));  // a pause, not the verdict
  const double stood_by_after = Since(woke);
  consumer.ReadFor(seconds(2));
  const size_t during = consumer.records().size();
  const int64_t left = Remaining();
  const int64_t removed_by_a = RemovedByAAfterB();
  b_->Kill(SIGCONT);
  const double b_stopped = Since(b_frozen);
  std::cout << "the frozen leader stood by " << stood_by_after << " s after SIGCONT; B was stopped "
            << b_stopped << " s\n";
  ASSERT_LT(b_stopped, 8.0) << "B was stopped too long to be sure it kept the lock";
  EXPECT_EQ(during, drained) << "records arrived while only the woken leader ran\nA:\n"
                             << a_->Log();
  EXPECT_EQ(left, 100) << "the woken leader removed bait rows\nA:\n" << a_->Log();
  EXPECT_EQ(removed_by_a, 0) << "the woken leader removed rows after B led\nA:\n" << a_->Log();
  EXPECT_GT(RemovedByA(), 0) << "the witness never saw A remove a row";
  EXPECT_TRUE(stood_by) << a_->Log();
  EXPECT_EQ(LockHolders(), "1");
  // B delivers the bait; everything arrives.
  ASSERT_TRUE(WaitFor([&] { return Remaining() == 0; }, seconds(60))) << b_->Log();
  ExpectedMessages expected = writer.expected();
  expected.insert(bait.begin(), bait.end());
  consumer.ReadUntil(expected.size(), seconds(60));
  consumer.ReadFor(seconds(1));
  DeliveryCheck check = CheckDelivery(expected, consumer.records(), kPartitions);
  std::cout << "frozen leader: " << check.Summary() << "\n";
  EXPECT_EQ(check.lost, 0u) << check.Summary();
  EXPECT_EQ(check.out_of_order, 0u) << check.Summary();
  EXPECT_EQ(check.unexpected, 0u) << check.Summary();
}

}  // namespace
}  // namespace outboxd::testing
