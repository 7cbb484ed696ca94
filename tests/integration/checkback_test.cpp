// Half messages and check-back: the outboxd binary against real PostgreSQL and Kafka, with the
// application's checker played by an HTTP server in this process (or a table, for the sql one).
// Short intervals keep the suite fast: first check after 200 ms, every 200 ms, at most 3.
#include <httplib.h>
#include <signal.h>

#include <mutex>
#include <random>
#include <regex>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// The application's check endpoint: answers through `handler`, records every request.
class CheckServer {
 public:
  struct Request {
    std::string path;
    nlohmann::json body;
  };
  // Returns the HTTP status and body for one check request.
  using Handler = std::function<std::pair<int, std::string>(const Request&)>;

  explicit CheckServer(Handler handler) : handler_(std::move(handler)) {
    server_.Post(R"(/.*)", [this](const httplib::Request& req, httplib::Response& res) {
      Request r{req.path, nlohmann::json::parse(req.body, nullptr, false)};
      {
        std::lock_guard l(mu_);
        requests_.push_back(r);
      }
      auto [status, body] = handler_(r);
      res.status = status;
      res.set_content(body, "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~CheckServer() {
    server_.stop();
    thread_.join();
  }
  std::string url(const std::string& path = "/check") const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  std::vector<Request> requests() {
    std::lock_guard l(mu_);
    return requests_;
  }
  // The check_count of every request about prepared message `id`, in arrival order.
  std::vector<int> ChecksOf(int64_t id) {
    std::vector<int> out;
    for (const auto& r : requests()) {
      if (r.body.is_object() && r.body["id"] == id) out.push_back(r.body["check_count"].get<int>());
    }
    return out;
  }

  static std::pair<int, std::string> Answer(const std::string& status) {
    return {200, "{\"status\":\"" + status + "\"}"};
  }

 private:
  Handler handler_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<Request> requests_;
};

class CheckBackIntegration : public ServicesTest {
 public:
  using ServicesTest::db_;
  using ServicesTest::services_;
  using ServicesTest::topic_;
  static std::string CheckbackToml(const std::string& settings, int max_checks = 3,
                                   const std::string& check_interval = "200ms") {
    return "[checkback]\ntransaction_timeout = \"200ms\"\ncheck_interval = \"" + check_interval +
           "\"\nmax_checks = " + std::to_string(max_checks) + "\npoll_interval = \"50ms\"\n" +
           settings;
  }
  static std::string HttpToml(const CheckServer& server, const std::string& more = "",
                              const std::string& path = "/check", int max_checks = 3,
                              const std::string& check_interval = "200ms") {
    return CheckbackToml("checker = \"http\"\nhttp_url = \"" + server.url(path) + "\"\n" + more,
                         max_checks, check_interval);
  }

  // The application prepares on its own connection, which then goes away: as if it crashed
  // between prepare and commit.
  int64_t Prepare(const std::string& key, const std::string& payload,
                  const std::string& headers = "{}") {
    return std::stoll(db_->Scalar("SELECT outbox.prepare('" + topic_ + "', '" + key + "', '" +
                                  payload + "', '" + headers + "')"));
  }
  int CheckCount(int64_t id) {
    return std::stoi(
        db_->Scalar("SELECT check_count FROM outbox.prepared WHERE id = " + std::to_string(id)));
  }
  std::string State(int64_t id) {
    return db_->Scalar(
        "SELECT state || '/' || coalesce(settled_by, '-') || '/' || check_count "
        "FROM outbox.prepared WHERE id = " +
        std::to_string(id));
  }
  bool AllSettled(milliseconds timeout) {
    return WaitFor(
        [&] {
          return db_->Scalar("SELECT count(*) FROM outbox.prepared WHERE state = 'prepared'") ==
                 "0";
        },
        timeout);
  }
  // Prepared ids of what arrived, each as many times as it arrived.
  static std::multiset<int64_t> PreparedIds(const std::vector<Record>& records) {
    std::multiset<int64_t> out;
    for (const auto& r : records) {
      auto h = r.Header("outbox-prepared-id");
      out.insert(h ? std::stoll(*h) : -1);
    }
    return out;
  }
};

size_t Occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST_F(CheckBackIntegration, CommitDeliversOnceRollbackNeverAndBothAreIdempotent) {
  int64_t committed = Prepare("k1", "to be committed", R"({"trace-id":"abc"})");
  int64_t rolled_back = Prepare("k2", "to be rolled back");
  int64_t waiting = Prepare("k3", "left prepared");
  OutboxdProcess outboxd(services_, *db_, "", CheckbackToml("checker = \"none\"\n"));
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("leading the outbox", seconds(20))) << outboxd.Log();
  Consumer consumer(services_, topic_);
  consumer.ReadFor(milliseconds(1000));
  EXPECT_TRUE(consumer.records().empty()) << "a prepared message was delivered";

  pg::Connection app = db_->Connect();
  // commit(id) is part of the caller's transaction: rolled back with it, nothing happens.
  ASSERT_TRUE(app.Exec("BEGIN").ok());
  ASSERT_TRUE(app.Query("SELECT outbox.commit(" + std::to_string(committed) + ")").ok());
  ASSERT_TRUE(app.Exec("ROLLBACK").ok());
  EXPECT_EQ(State(committed), "prepared/-/0");

  auto first = app.Query("SELECT outbox.commit(" + std::to_string(committed) + ")");
  ASSERT_TRUE(first.ok()) << first.status().message();
  auto again = app.Query("SELECT outbox.commit(" + std::to_string(committed) + ")");
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ(again->Get(0, 0), first->Get(0, 0)) << "commit is idempotent";
  ASSERT_TRUE(app.Exec("SELECT outbox.rollback(" + std::to_string(rolled_back) + ")").ok());
  ASSERT_TRUE(app.Exec("SELECT outbox.rollback(" + std::to_string(rolled_back) + ")").ok());

  Status s = app.Exec("SELECT outbox.commit(" + std::to_string(rolled_back) + ")");
  EXPECT_NE(s.message().find("cannot be committed: it was already rolled back"), std::string::npos)
      << s.message();
  s = app.Exec("SELECT outbox.rollback(" + std::to_string(committed) + ")");
  EXPECT_NE(s.message().find("cannot be rolled back: it was already committed"), std::string::npos)
      << s.message();
  s = app.Exec("SELECT outbox.commit(987654321)");
  EXPECT_NE(s.message().find("no prepared message with id 987654321"), std::string::npos)
      << s.message();

  consumer.ReadUntil(1, seconds(20));
  consumer.ReadFor(milliseconds(1000));
  ASSERT_EQ(consumer.records().size(), 1u) << outboxd.Log();
  const Record& r = consumer.records()[0];
  EXPECT_EQ(r.key, "k1");
  EXPECT_EQ(r.value, "to be committed");
  EXPECT_EQ(r.Header("outbox-prepared-id"), std::to_string(committed));
  EXPECT_EQ(std::to_string(r.outbox_id()), std::string(first->Get(0, 0)));
  EXPECT_EQ(r.Header("trace-id"), "abc");

  // checker = "none": the abandoned one waits for the application; status shows it.
  EXPECT_EQ(State(waiting), "prepared/-/0");
  auto [rc, out] = RunOutboxd({"status", "--config", outboxd.config_path()});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("1 prepared, 1 committed, 1 rolled back, 0 dead-lettered"), std::string::npos)
      << out;
  EXPECT_NE(out.find("ID"), std::string::npos) << out;
  EXPECT_TRUE(std::regex_search(
      out, std::regex("\n  " + std::to_string(waiting) + " +" + topic_ + " +k3 +[0-9.]+s +0 +-\n")))
      << out;
  EXPECT_NE(out.find("backlog:       0 message(s)"), std::string::npos) << out;
  std::cout << out;
  outboxd.Kill(SIGTERM);
  EXPECT_EQ(outboxd.Wait(seconds(15)), 0) << outboxd.Log();
}

TEST_F(CheckBackIntegration, HttpCheckerSettlesAbandonedMessagesCommitRollbackAndUnknown) {
  CheckServer server([](const CheckServer::Request& r) {
    std::string key = r.body.value("key", "");
    return CheckServer::Answer(key == "commit-me"      ? "commit"
                               : key == "roll-me-back" ? "rollback"
                                                       : "unknown");
  });
  int64_t commit_me = Prepare("commit-me", "yes", R"({"tenant":"t1"})");
  int64_t roll_me_back = Prepare("roll-me-back", "no");
  int64_t no_idea = Prepare("no-idea", "maybe");
  OutboxdProcess outboxd(services_, *db_, "", HttpToml(server));
  outboxd.Start();
  ASSERT_TRUE(AllSettled(seconds(20))) << outboxd.Log();
  EXPECT_EQ(State(commit_me), "committed/check/1");
  EXPECT_EQ(State(roll_me_back), "rolled_back/check/1");
  EXPECT_EQ(State(no_idea), "rolled_back/max_checks/3");
  EXPECT_EQ(server.ChecksOf(no_idea), (std::vector<int>{0, 1, 2}));

  Consumer consumer(services_, topic_);
  consumer.ReadUntil(1, seconds(20));
  consumer.ReadFor(milliseconds(1000));
  ASSERT_EQ(consumer.records().size(), 1u) << outboxd.Log();
  EXPECT_EQ(consumer.records()[0].value, "yes");
  EXPECT_EQ(consumer.records()[0].Header("outbox-prepared-id"), std::to_string(commit_me));

  // What the application is asked.
  nlohmann::json body;
  for (const auto& r : server.requests()) {
    if (r.body["id"] == commit_me) body = r.body;
  }
  EXPECT_EQ(body["topic"], topic_);
  EXPECT_EQ(body["key"], "commit-me");
  EXPECT_EQ(body["headers"]["tenant"], "t1");
  EXPECT_EQ(body["check_count"], 0);
  EXPECT_TRUE(body["created_at"].is_string());
  EXPECT_NE(outboxd.Log().find("no verdict after 3 checks: rolling back"), std::string::npos);
  // A late application call meets the recorded outcome.
  Status s = db_->Connect().Exec("SELECT outbox.rollback(" + std::to_string(commit_me) + ")");
  EXPECT_NE(s.message().find("already committed (by check)"), std::string::npos) << s.message();

  auto stopped_at = std::chrono::steady_clock::now();
  outboxd.Kill(SIGTERM);
  EXPECT_EQ(outboxd.Wait(seconds(15)), 0) << outboxd.Log();
  EXPECT_LT(std::chrono::steady_clock::now() - stopped_at, seconds(5));
}

TEST_F(CheckBackIntegration, TimeoutsErrorsAndGarbageCountAsUnknownThenDeadLetter) {
  std::string dlq = NewTopic("half_dlq", 1);
  CheckServer server([](const CheckServer::Request& r) -> std::pair<int, std::string> {
    std::string key = r.body.value("key", "");
    if (key == "slow") {
      std::this_thread::sleep_for(milliseconds(800));  // beyond http_timeout
      return CheckServer::Answer("commit");
    }
    if (key == "garbage") return {200, "<html>surely</html>"};
    if (key == "error") return {500, R"({"status":"commit"})"};
    if (key == "bad-word") return CheckServer::Answer("yes");
    // Garbage twice, then a real answer: a bad answer does not end the checking.
    if (key == "recovers") {
      return r.body["check_count"] == 2 ? CheckServer::Answer("commit")
                                        : std::pair<int, std::string>{502, "bad gateway"};
    }
    return CheckServer::Answer("unknown");
  });
  std::map<std::string, int64_t> ids;
  for (const char* key : {"slow", "garbage", "error", "bad-word", "recovers"}) {
    ids[key] = Prepare(key, std::string("payload of ") + key);
  }
  OutboxdProcess outboxd(
      services_, *db_, "",
      HttpToml(server,
               "http_timeout = \"300ms\"\nfinal_action = \"dead_letter\"\nfinal_topic = \"" + dlq +
                   "\"\n"));
  outboxd.Start();
  ASSERT_TRUE(AllSettled(seconds(30))) << outboxd.Log();
  for (const char* key : {"slow", "garbage", "error", "bad-word"}) {
    EXPECT_EQ(State(ids[key]), "dead_lettered/max_checks/3") << key;
    // Warned once per message, not once per check.
    EXPECT_EQ(Occurrences(outboxd.Log(), "half message " + std::to_string(ids[key]) +
                                             ": check failed, counted as unknown"),
              1u)
        << key << "\n"
        << outboxd.Log();
  }
  EXPECT_EQ(State(ids["recovers"]), "committed/check/3");

  Consumer main_topic(services_, topic_);
  main_topic.ReadUntil(1, seconds(20));
  Consumer dead(services_, dlq);
  dead.ReadUntil(4, seconds(20));
  main_topic.ReadFor(milliseconds(1000));
  dead.ReadFor(milliseconds(500));
  ASSERT_EQ(main_topic.records().size(), 1u) << outboxd.Log();
  EXPECT_EQ(main_topic.records()[0].value, "payload of recovers");
  ASSERT_EQ(dead.records().size(), 4u) << outboxd.Log();
  EXPECT_EQ(PreparedIds(dead.records()),
            (std::multiset<int64_t>{ids["slow"], ids["garbage"], ids["error"], ids["bad-word"]}));
  for (const auto& r : dead.records()) {
    EXPECT_EQ(r.Header("outbox-topic"), topic_);
    EXPECT_NE(r.Header("outbox-error")->find("no verdict after 3 checks"), std::string::npos);
  }
}

// The first check waits transaction_timeout from the prepare() call, not from the start of the
// transaction that prepares. A prepare late in a long transaction (4 s of work before it) whose
// application commits its local step 1 s after that transaction committed: the checker, which
// answers "rollback" for what it does not know, must not be asked before then.
TEST_F(CheckBackIntegration, PrepareLateInALongTransactionIsNotCheckedAtOnce) {
  CheckServer server([](const CheckServer::Request&) { return CheckServer::Answer("rollback"); });
  OutboxdProcess outboxd(services_, *db_, "",
                         "[checkback]\ntransaction_timeout = \"3s\"\ncheck_interval = "
                         "\"200ms\"\npoll_interval = \"50ms\"\nchecker = \"http\"\n"
                         "http_url = \"" +
                             server.url() + "\"\n");
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("leading the outbox", seconds(20))) << outboxd.Log();
  pg::Connection app = db_->Connect();
  ASSERT_TRUE(app.Exec("BEGIN").ok());
  ASSERT_TRUE(app.Exec("SELECT pg_sleep(4)").ok());
  auto prepared = app.Query("SELECT outbox.prepare('" + topic_ + "', 'k', 'late')");
  ASSERT_TRUE(prepared.ok()) << prepared.status().message();
  ASSERT_TRUE(app.Exec("COMMIT").ok());
  const std::string id(prepared->Get(0, 0));
  // The local step.
  std::this_thread::sleep_for(seconds(1));
  auto committed = app.Query("SELECT outbox.commit(" + id + ")");
  EXPECT_TRUE(committed.ok()) << committed.status().message() << "\n" << outboxd.Log();
  EXPECT_EQ(State(std::stoll(id)), "committed/application/0");
  EXPECT_TRUE(server.ChecksOf(std::stoll(id)).empty());
  Consumer consumer(services_, topic_);
  EXPECT_EQ(consumer.ReadUntil(1, seconds(20)).size(), 1u) << outboxd.Log();
}

TEST_F(CheckBackIntegration, SqlCheckerAsksTheApplicationsDatabase) {
  // The application records the outcome of its local step; the query reads it. $1 (the id) is
  // not used: a query may use any of the parameters.
  db_->Exec(
      "CREATE TABLE payments (order_key text, tenant text, verdict text, "
      "PRIMARY KEY (order_key, tenant))");
  db_->Exec(
      "INSERT INTO payments VALUES ('paid', 't1', 'commit'), ('failed', 't1', 'rollback'), "
      "('odd', 't1', 'perhaps'), ('paid', 't2', 'rollback')");
  std::string query =
      "SELECT coalesce((SELECT verdict FROM payments WHERE order_key = $2 "
      "AND tenant = $3->>'tenant'), 'unknown')";
  int64_t paid = Prepare("paid", "paid t1", R"({"tenant":"t1"})");
  int64_t failed = Prepare("failed", "failed t1", R"({"tenant":"t1"})");
  int64_t odd = Prepare("odd", "odd t1", R"({"tenant":"t1"})");
  int64_t missing = Prepare("missing", "missing t1", R"({"tenant":"t1"})");
  int64_t other_tenant = Prepare("paid", "paid t2", R"({"tenant":"t2"})");
  OutboxdProcess outboxd(services_, *db_, "",
                         CheckbackToml("checker = \"sql\"\nsql_query = \"" + query + "\"\n"));
  outboxd.Start();
  ASSERT_TRUE(AllSettled(seconds(20))) << outboxd.Log();
  EXPECT_EQ(State(paid), "committed/check/1");
  EXPECT_EQ(State(failed), "rolled_back/check/1");
  EXPECT_EQ(State(other_tenant), "rolled_back/check/1");
  EXPECT_EQ(State(odd), "rolled_back/max_checks/3");
  EXPECT_EQ(State(missing), "rolled_back/max_checks/3");
  EXPECT_NE(outboxd.Log().find("expected commit, rollback or unknown, got \"perhaps\""),
            std::string::npos)
      << outboxd.Log();
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(1, seconds(20));
  consumer.ReadFor(milliseconds(1000));
  ASSERT_EQ(consumer.records().size(), 1u) << outboxd.Log();
  EXPECT_EQ(consumer.records()[0].value, "paid t1");
}

// The application's commit/rollback and check verdicts cross, concurrently, many times: every
// message has exactly one outcome, recorded once; Kafka holds exactly the committed ones.
TEST_F(CheckBackIntegration, CrossingVerdictsAndApplicationCallsSettleEachMessageOnce) {
  constexpr int kMessages = 300;
  std::mt19937 rng(7);
  // Per message: the checker's verdict, and what the application does: 0 nothing (the checker
  // decides), 1 commit / 2 rollback at a random moment around the first check, 3 commit / 4
  // rollback from inside the check request (so the verdict surely arrives after it).
  std::map<int64_t, int> app_plan;
  std::map<int64_t, std::string> verdict;
  std::vector<int64_t> ids;
  std::mutex mu;
  std::map<int64_t, std::string> app_result;  // "ok" or the error
  auto app_call = [&](pg::Connection& c, int64_t id, bool commit) {
    Status s = c.Exec(std::string("SELECT outbox.") + (commit ? "commit(" : "rollback(") +
                      std::to_string(id) + ")");
    std::lock_guard l(mu);
    app_result[id] = s.ok() ? "ok" : s.message();
  };
  CheckServer server([&](const CheckServer::Request& r) {
    int64_t id = r.body["id"].get<int64_t>();
    int plan;
    std::string answer;
    {
      std::lock_guard l(mu);
      plan = app_plan[id];
      answer = verdict[id];
    }
    if (plan >= 3) {
      pg::Connection c = db_->Connect();
      app_call(c, id, plan == 3);
    }
    return CheckServer::Answer(answer);
  });
  OutboxdProcess outboxd(services_, *db_, "",
                         HttpToml(server, "batch_size = 20\n") + "[log]\nlevel = \"debug\"\n");
  outboxd.Start();
  ASSERT_TRUE(outboxd.WaitForLog("leading the outbox", seconds(20))) << outboxd.Log();

  std::vector<std::thread> apps;
  std::mutex delayed_mu;
  std::vector<std::thread> delayed;  // application calls at a random moment
  constexpr int kApps = 6;
  for (int a = 0; a < kApps; ++a) {
    apps.emplace_back([&, a] {
      std::mt19937 local(a);
      pg::Connection c = db_->Connect();
      for (int i = 0; i < kMessages / kApps; ++i) {
        auto r = c.Query("SELECT outbox.prepare('" + topic_ + "', 'key-" +
                         std::to_string(local() % 20) + "', 'm')");
        ASSERT_TRUE(r.ok()) << r.status().message();
        int64_t id = r->GetInt(0, 0);
        int plan = static_cast<int>(local() % 5);
        {
          std::lock_guard l(mu);
          app_plan[id] = plan;
          verdict[id] = local() % 2 ? "commit" : "rollback";
          ids.push_back(id);
        }
        if (plan == 1 || plan == 2) {
          // Before, during or after the first check (due 200 ms after prepare).
          std::lock_guard l(delayed_mu);
          delayed.emplace_back([&, id, plan, delay = 100 + local() % 500] {
            std::this_thread::sleep_for(milliseconds(delay));
            pg::Connection own = db_->Connect();
            app_call(own, id, plan == 1);
          });
        }
        std::this_thread::sleep_for(milliseconds(local() % 8));
      }
    });
  }
  for (auto& t : apps) t.join();
  for (auto& t : delayed) t.join();
  ASSERT_TRUE(AllSettled(seconds(60))) << outboxd.Log().substr(0, 20000);
  {
    std::lock_guard l(mu);
    size_t expected = 0;
    for (auto& [id, plan] : app_plan) expected += plan != 0;
    ASSERT_EQ(app_result.size(), expected);
  }

  pg::Connection c = db_->Connect();
  auto rows = c.Query("SELECT id, state, settled_by, message_id FROM outbox.prepared");
  ASSERT_TRUE(rows.ok());
  std::multiset<int64_t> committed;
  int by_app = 0, by_check = 0, crossed = 0;
  for (int i = 0; i < rows->rows(); ++i) {
    int64_t id = rows->GetInt(i, 0);
    std::string state(rows->Get(i, 1)), by(rows->Get(i, 2));
    ASSERT_TRUE(state == "committed" || state == "rolled_back") << id << " " << state;
    EXPECT_EQ(state == "committed", !rows->IsNull(i, 3)) << id;
    if (state == "committed") committed.insert(id);
    (by == "application" ? by_app : by_check)++;
    std::lock_guard l(mu);
    int plan = app_plan[id];
    if (plan == 0) {
      EXPECT_EQ(by, "check") << id;
      EXPECT_EQ(state, verdict[id] == "commit" ? "committed" : "rolled_back") << id;
      continue;
    }
    bool app_commits = plan == 1 || plan == 3;
    const std::string& result = app_result[id];
    if (result == "ok") {
      // The application's call took effect, or found its own outcome already recorded.
      EXPECT_EQ(state, app_commits ? "committed" : "rolled_back") << id;
      if (by == "check") ++crossed;
    } else {
      // The check settled it the other way first; the application was told so.
      EXPECT_EQ(by, "check") << id;
      EXPECT_EQ(state, app_commits ? "rolled_back" : "committed") << id;
      EXPECT_NE(result.find("it was already"), std::string::npos) << id << ": " << result;
      ++crossed;
    }
    if (plan >= 3) {
      EXPECT_EQ(by, "application") << "the app settled before answering: " << id;
      ++crossed;
    }
  }
  EXPECT_EQ(rows->rows(), kMessages);
  EXPECT_TRUE(WaitFor([&] { return db_->Scalar("SELECT count(*) FROM outbox.messages") == "0"; },
                      seconds(20)));
  Consumer consumer(services_, topic_);
  consumer.ReadUntil(committed.size(), seconds(30));
  consumer.ReadFor(milliseconds(1500));
  EXPECT_EQ(PreparedIds(consumer.records()), committed);
  size_t ignored = Occurrences(outboxd.Log(), "check-back verdict");
  EXPECT_GT(ignored, 0u) << "late verdicts are logged at debug";
  std::cout << kMessages << " half messages: " << committed.size() << " committed, " << by_app
            << " settled by the application, " << by_check << " by check-back, " << crossed
            << " crossings (a check and the application both settling), " << ignored
            << " late verdicts ignored\n";
}

TEST_F(CheckBackIntegration, RestartInTheMiddleOfCheckingContinuesTheCount) {
  CheckServer server([](const CheckServer::Request&) { return CheckServer::Answer("unknown"); });
  int64_t id = Prepare("k", "never answered");
  OutboxdProcess restartable(services_, *db_, "", HttpToml(server, "", "/check", 6));
  restartable.Start();
  ASSERT_TRUE(WaitFor([&] { return CheckCount(id) >= 2; }, seconds(20))) << restartable.Log();
  restartable.Kill(SIGKILL);
  ASSERT_EQ(restartable.Wait(seconds(10)), 128 + SIGKILL);
  std::string at_kill = State(id);
  int count_at_kill = CheckCount(id);
  ASSERT_LT(count_at_kill, 6) << "killed too late to show anything";
  size_t requests_at_kill = server.ChecksOf(id).size();
  std::this_thread::sleep_for(milliseconds(600));
  EXPECT_EQ(State(id), at_kill) << "nobody checks while outboxd is down";

  restartable.Start();
  ASSERT_TRUE(AllSettled(seconds(20))) << restartable.Log();
  EXPECT_EQ(State(id), "rolled_back/max_checks/6");
  std::vector<int> counts = server.ChecksOf(id);
  ASSERT_GT(counts.size(), requests_at_kill);
  // After the restart the count went on from PostgreSQL's, not from 0.
  EXPECT_EQ(counts[requests_at_kill], count_at_kill);
  EXPECT_EQ(counts.back(), 5);
  // At most one check is asked twice: one answered but not yet recorded when killed.
  EXPECT_LE(counts.size(), 7u);
  Consumer consumer(services_, topic_);
  consumer.ReadFor(milliseconds(1000));
  EXPECT_TRUE(consumer.records().empty());
}

TEST_F(CheckBackIntegration, OnlyTheLeaderChecksAndAStandbyTakesOver) {
  CheckServer server([](const CheckServer::Request&) { return CheckServer::Answer("unknown"); });
  int64_t id = Prepare("k", "watched");
  auto config = [&](const std::string& path) {
    return HttpToml(server, "", path, /*max_checks=*/1000, /*check_interval=*/"100ms");
  };
  OutboxdProcess a(services_, *db_, "", config("/a"));
  a.Start();
  ASSERT_TRUE(a.WaitForLog("leading the outbox", seconds(20))) << a.Log();
  OutboxdProcess b(services_, *db_, "", config("/b"));
  b.Start();
  ASSERT_TRUE(b.WaitForLog("standing by", seconds(20))) << b.Log();
  auto asked = [&](const std::string& path) {
    size_t n = 0;
    for (const auto& r : server.requests()) n += r.path == path && r.body["id"] == id;
    return n;
  };
  ASSERT_TRUE(WaitFor([&] { return asked("/a") >= 3; }, seconds(10)));
  EXPECT_EQ(asked("/b"), 0u) << "a standby checked";
  a.Kill(SIGKILL);
  a.Wait(seconds(10));
  ASSERT_TRUE(WaitFor([&] { return asked("/b") >= 3; }, seconds(20))) << b.Log();
  EXPECT_NE(State(id).find("prepared/-/"), std::string::npos);
}

// The leader's relay is stuck on a broker that never answers (max_in_flight
// reached: it sends PostgreSQL no statement but its heartbeat), and its session is ended behind
// its back. A standby takes the lock. The old instance's check-back must not go on checking: each
// prepared message is checked by one instance only, and each unknown answer is counted once.
// `a_leadership` is added to A's [leadership] section.
void DeposedLeaderDoesNotCheckBack(CheckBackIntegration& t, const std::string& a_leadership,
                                   std::string* a_log) {
  SilentBroker broker;  // accepts connections, never answers: every delivery stays in flight
  Services stalled = t.services_;
  stalled.kafka_bootstrap = broker.address();
  CheckServer server([](const CheckServer::Request&) { return CheckServer::Answer("unknown"); });
  const TestDatabase& db = *t.db_;
  db.Exec("SELECT outbox.publish('" + t.topic_ + "', 'k' || i, 'v') FROM generate_series(1, 30) i");
  auto config = [&](const std::string& path) {
    return CheckBackIntegration::HttpToml(server, "", path, /*max_checks=*/1000,
                                          /*check_interval=*/"100ms");
  };
  const std::string relay = "batch_size = 10\nmax_in_flight = 10\n";
  OutboxdProcess a(stalled, db, relay, a_leadership + config("/a"));
  a.Start();
  ASSERT_TRUE(a.WaitForLog("leading the outbox", seconds(20))) << a.Log();
  OutboxdProcess b(stalled, db, relay, config("/b"));
  b.Start();
  ASSERT_TRUE(b.WaitForLog("standing by", seconds(20))) << b.Log();
  // A has max_in_flight messages waiting on the silent broker: no fetch for a while.
  ASSERT_TRUE(WaitFor(
      [&] {
        return db.Scalar(
                   "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                   "current_database() AND application_name LIKE 'outboxd host=%' AND state = "
                   "'idle' "
                   "AND (query LIKE '%pg_current_snapshot%' OR query = 'SELECT 1') AND "
                   "state_change < now() - interval '300 milliseconds'") != "0";
      },
      seconds(20)));
  // A's relay session ends (a PostgreSQL restart or an operator would do the same).
  ASSERT_EQ(db.Scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = "
                      "'advisory' AND granted AND database = (SELECT oid FROM pg_database "
                      "WHERE datname = current_database())"),
            "1");
  ASSERT_TRUE(b.WaitForLog("leading the outbox", seconds(20))) << b.Log();
  std::vector<int64_t> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(t.Prepare("h" + std::to_string(i), "half"));
  auto asked = [&](const std::string& path, int64_t id) {
    size_t n = 0;
    for (const auto& r : server.requests()) n += r.path == path && r.body["id"] == id;
    return n;
  };
  ASSERT_TRUE(WaitFor(
      [&] {
        for (int64_t id : ids) {
          if (asked("/b", id) < 5) return false;
        }
        return true;
      },
      seconds(30)))
      << b.Log();
  size_t by_a = 0;
  for (int64_t id : ids) by_a += asked("/a", id);
  EXPECT_EQ(by_a, 0u) << "the deposed leader checked back too\n" << a.Log();
  for (int64_t id : ids) {
    // Every unknown answer counted once: the count is what B asked (one answer may be in flight).
    int count = t.CheckCount(id);
    size_t b_asked = asked("/b", id);
    EXPECT_TRUE(count == static_cast<int>(b_asked) || count + 1 == static_cast<int>(b_asked))
        << id << ": check_count " << count << ", asked by B " << b_asked << ", by A "
        << asked("/a", id);
  }
  *a_log = a.Log();
}

TEST_F(CheckBackIntegration, ADeposedLeaderStuckOnTheBrokerDoesNotCheckBack) {
  std::string a_log;
  DeposedLeaderDoesNotCheckBack(*this, "", &a_log);
}

// The same with a relay that would not notice for a minute (its heartbeat every 15 s): check-back
// itself finds in PostgreSQL that the relay's session no longer holds the lock.
TEST_F(CheckBackIntegration, CheckBackProvesLeadershipInPostgresItself) {
  std::string a_log;
  DeposedLeaderDoesNotCheckBack(*this, "session_timeout = \"60s\"\n", &a_log);
  EXPECT_NE(a_log.find("check-back paused: this instance's relay session no longer holds the "
                       "outbox lock"),
            std::string::npos)
      << a_log;
  EXPECT_EQ(a_log.find("stopped delivering"), std::string::npos)
      << "the relay noticed first: this test shows nothing\n"
      << a_log;
}

}  // namespace
}  // namespace outboxd::testing
