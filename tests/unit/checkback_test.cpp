// CheckBack's policy against a fake store and a fake checker: when it asks, what each answer
// does, the final action after max_checks, late verdicts, and the leadership guard.
#include "checkback.h"

#include <map>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include <gtest/gtest.h>

namespace outboxd {
namespace {

struct FakeRow {
  PreparedMessage message;
  std::string state = "prepared";
  std::string settled_by;
  std::string final_topic;
};

class FakePreparedStore : public PreparedStore {
 public:
  void Add(int64_t id, std::optional<std::string> key = "k") {
    FakeRow r;
    r.message.id = id;
    r.message.topic = "orders";
    r.message.key = std::move(key);
    rows[id] = r;
  }
  Status Connect() override { return connect_status; }
  void Disconnect() override {}
  Result<std::vector<PreparedMessage>> FetchDue(Millis, int limit) override {
    std::lock_guard l(mu);
    std::vector<PreparedMessage> out;
    for (auto& [id, r] : rows) {
      if (r.state == "prepared" && static_cast<int>(out.size()) < limit) out.push_back(r.message);
    }
    return out;
  }
  // The relay session's lock, as PostgreSQL would report it: held until `lock_lost`.
  Result<bool> Leading(const LeaderSession& leader) override {
    std::lock_guard l(mu);
    return HoldsLock(leader);
  }
  Result<bool> Settle(int64_t id, Settlement s, SettledBy by, const std::string& final_topic,
                      const LeaderSession& leader) override {
    std::lock_guard l(mu);
    if (!HoldsLock(leader)) return Status::NotLeader("fenced");
    FakeRow& r = rows.at(id);
    if (settle_first) settle_first(id);
    if (r.state != "prepared") return false;
    if (by == SettledBy::kCheck) ++r.message.check_count;
    r.state = s == Settlement::kCommit     ? "committed"
              : s == Settlement::kRollback ? "rolled_back"
                                           : "dead_lettered";
    r.settled_by = by == SettledBy::kCheck ? "check" : "max_checks";
    r.final_topic = final_topic;
    return true;
  }
  Result<bool> RecordUnknown(int64_t id, Millis, const LeaderSession& leader) override {
    std::lock_guard l(mu);
    if (!HoldsLock(leader)) return Status::NotLeader("fenced");
    FakeRow& r = rows.at(id);
    if (r.state != "prepared") return false;
    ++r.message.check_count;
    return true;
  }
  // Removes what a statement would of `expired` settled rows past their retention.
  Result<int64_t> RemoveSettledBefore(Millis) override {
    std::lock_guard l(mu);
    const int64_t n = std::min(expired, kRemoveSettledBatch);
    expired -= n;
    return n;
  }

  std::string State(int64_t id) {
    std::lock_guard l(mu);
    return rows.at(id).state;
  }

  bool HoldsLock(const LeaderSession& leader) const {
    return !lock_lost && leader == LeaderSession{7, 42, "1.5"};
  }

  std::mutex mu;           // the check-back thread and the test body both use the rows
  bool lock_lost = false;  // the relay's session ended; nobody told the relay
  std::map<int64_t, FakeRow> rows;
  Status connect_status;
  std::function<void(int64_t)> settle_first;  // runs before a settle: the application's move
  int64_t expired = 0;  // settled rows older than settled_retention, not removed yet
};

class FakeChecker : public Checker {
 public:
  explicit FakeChecker(std::map<int64_t, CheckAnswer>* answers, std::vector<int64_t>* asked)
      : answers_(answers), asked_(asked) {}
  CheckAnswer Check(const PreparedMessage& m) override {
    asked_->push_back(m.id);
    auto it = answers_->find(m.id);
    return it == answers_->end() ? CheckAnswer{Verdict::kUnknown, "no answer"} : it->second;
  }

 private:
  std::map<int64_t, CheckAnswer>* answers_;
  std::vector<int64_t>* asked_;
};

class CheckBackTest : public ::testing::Test {
 protected:
  CheckBackTest() {
    config_.checker = CheckerKind::kHttp;
    config_.max_checks = 3;
  }
  std::unique_ptr<CheckBack> Make(bool with_checker = true) {
    return std::make_unique<CheckBack>(
        config_, store_, with_checker ? std::make_unique<FakeChecker>(&answers_, &asked_) : nullptr,
        [this] {
          return leading_.load() ? std::optional<LeaderSession>(LeaderSession{7, 42, "1.5"})
                                 : std::nullopt;
        });
  }

  CheckbackConfig config_;
  FakePreparedStore store_;
  std::map<int64_t, CheckAnswer> answers_;
  std::vector<int64_t> asked_;
  std::atomic<bool> leading_{true};
};

TEST_F(CheckBackTest, CommitAndRollbackVerdictsSettleTheMessage) {
  store_.Add(1);
  store_.Add(2);
  answers_[1] = {Verdict::kCommit, ""};
  answers_[2] = {Verdict::kRollback, ""};
  auto cb = Make();
  auto handled = cb->RunOnce();
  ASSERT_TRUE(handled.ok()) << handled.status().message();
  EXPECT_EQ(*handled, 2);
  EXPECT_EQ(store_.rows[1].state, "committed");
  EXPECT_EQ(store_.rows[1].settled_by, "check");
  EXPECT_EQ(store_.rows[2].state, "rolled_back");
  EXPECT_EQ(cb->stats().committed, 1);
  EXPECT_EQ(cb->stats().rolled_back, 1);
}

TEST_F(CheckBackTest, UnknownUntilMaxChecksThenTheFinalAction) {
  store_.Add(1);
  auto cb = Make();
  for (int round = 0; round < 3; ++round) ASSERT_TRUE(cb->RunOnce().ok());
  EXPECT_EQ(store_.rows[1].state, "prepared");
  EXPECT_EQ(store_.rows[1].message.check_count, 3);
  EXPECT_EQ(asked_.size(), 3u);
  ASSERT_TRUE(cb->RunOnce().ok());
  EXPECT_EQ(asked_.size(), 3u) << "no fourth question after max_checks";
  EXPECT_EQ(store_.rows[1].state, "rolled_back");
  EXPECT_EQ(store_.rows[1].settled_by, "max_checks");
  EXPECT_EQ(cb->stats().final_actions, 1);
}

TEST_F(CheckBackTest, DeadLetterFinalActionCarriesTheFinalTopic) {
  config_.final_action = FinalAction::kDeadLetter;
  config_.final_topic = "half-dlq";
  config_.max_checks = 0;
  store_.Add(1);
  auto cb = Make();
  ASSERT_TRUE(cb->RunOnce().ok());
  EXPECT_TRUE(asked_.empty());
  EXPECT_EQ(store_.rows[1].state, "dead_lettered");
  EXPECT_EQ(store_.rows[1].final_topic, "half-dlq");
}

TEST_F(CheckBackTest, AVerdictForAMessageTheApplicationSettledIsIgnored) {
  store_.Add(1);
  answers_[1] = {Verdict::kRollback, ""};
  // The application commits between the checker's answer and the settle.
  store_.settle_first = [this](int64_t id) { store_.rows[id].state = "committed"; };
  auto cb = Make();
  ASSERT_TRUE(cb->RunOnce().ok());
  EXPECT_EQ(store_.rows[1].state, "committed");
  EXPECT_EQ(cb->stats().ignored, 1);
  EXPECT_EQ(cb->stats().rolled_back, 0);
}

TEST_F(CheckBackTest, NoChecksWithoutACheckerOrWhenTheFetchFails) {
  store_.Add(1);
  auto none = Make(/*with_checker=*/false);
  ASSERT_TRUE(none->RunOnce().ok());
  EXPECT_EQ(store_.rows[1].state, "prepared");
  store_.connect_status = Status::Unavailable("PostgreSQL: down");
  auto cb = Make();
  EXPECT_FALSE(cb->RunOnce().ok());
  EXPECT_TRUE(asked_.empty());
}

TEST_F(CheckBackTest, TheThreadChecksOnlyWhileLeadingAndStopsPromptly) {
  config_.poll_interval = Millis(10);
  store_.Add(1);
  answers_[1] = {Verdict::kCommit, ""};
  leading_ = false;
  std::atomic<bool> stop{false};
  auto cb = Make();
  cb->Start(stop);
  std::this_thread::sleep_for(Millis(100));
  EXPECT_EQ(store_.State(1), "prepared") << "a standby must not check";
  leading_ = true;
  for (int i = 0; i < 200 && store_.State(1) == "prepared"; ++i) {
    std::this_thread::sleep_for(Millis(10));
  }
  auto started = std::chrono::steady_clock::now();
  stop = true;
  cb->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - started, Millis(500));
  EXPECT_EQ(store_.State(1), "committed");
  EXPECT_EQ(asked_.size(), 1u);
}

// The relay still believes it leads (it sent no statement since its session
// ended), but PostgreSQL says its session no longer holds the lock: nothing is asked or written.
TEST_F(CheckBackTest, ADeposedLeaderAsksNothingAndWritesNothing) {
  store_.Add(1);
  store_.Add(2);
  store_.lock_lost = true;
  auto cb = Make();
  auto handled = cb->RunOnce();
  ASSERT_FALSE(handled.ok());
  EXPECT_EQ(handled.status().code(), Status::Code::kNotLeader);
  EXPECT_TRUE(asked_.empty());
  EXPECT_EQ(store_.rows[1].message.check_count, 0);
}

// Deposed in the middle of a round (after the first question): the next message is not asked, and
// the answer already received is not recorded.
TEST_F(CheckBackTest, LosingTheLockMidRoundStopsTheRound) {
  store_.Add(1);
  store_.Add(2);
  std::vector<int64_t> asked;
  class LosingChecker : public Checker {
   public:
    LosingChecker(FakePreparedStore* store, std::vector<int64_t>* asked)
        : store_(store), asked_(asked) {}
    CheckAnswer Check(const PreparedMessage& m) override {
      asked_->push_back(m.id);
      std::lock_guard l(store_->mu);
      store_->lock_lost = true;
      return {Verdict::kUnknown, ""};
    }

   private:
    FakePreparedStore* store_;
    std::vector<int64_t>* asked_;
  };
  CheckBack cb(config_, store_, std::make_unique<LosingChecker>(&store_, &asked), [] {
    return std::optional<LeaderSession>(LeaderSession{7, 42, "1.5"});
  });
  auto handled = cb.RunOnce();
  EXPECT_EQ(handled.status().code(), Status::Code::kNotLeader);
  EXPECT_EQ(asked, std::vector<int64_t>{1});
  EXPECT_EQ(store_.rows[1].message.check_count, 0);
  EXPECT_EQ(store_.rows[2].message.check_count, 0);
}

TEST(CheckAnswer, HttpAnswersAndFailuresMapToVerdicts) {
  EXPECT_EQ(ParseHttpAnswer(200, R"({"status":"commit"})").verdict, Verdict::kCommit);
  EXPECT_EQ(ParseHttpAnswer(200, R"({"status":"rollback","why":"x"})").verdict, Verdict::kRollback);
  CheckAnswer unknown = ParseHttpAnswer(200, R"({"status":"unknown"})");
  EXPECT_EQ(unknown.verdict, Verdict::kUnknown);
  EXPECT_EQ(unknown.detail, "");  // the application answered: not a failure
  for (auto [code, body] : std::vector<std::pair<int, std::string>>{{500, R"({"status":"commit"})"},
                                                                    {503, ""},
                                                                    {404, R"({"status":"commit"})"},
                                                                    {200, "commit"},
                                                                    {200, "<html>"},
                                                                    {200, R"({"status":"COMMIT"})"},
                                                                    {200, R"({"status":1})"},
                                                                    {200, R"(["commit"])"}}) {
    CheckAnswer a = ParseHttpAnswer(code, body);
    EXPECT_EQ(a.verdict, Verdict::kUnknown) << code << " " << body;
    EXPECT_FALSE(a.detail.empty()) << code << " " << body;
  }
}

TEST(CheckAnswer, RequestBodyCarriesTheDocumentedFields) {
  PreparedMessage m;
  m.id = 42;
  m.topic = "orders";
  m.key = std::nullopt;
  m.headers = R"({"trace-id": "abc"})";
  m.created_at = "2024-01-02T03:04:05.000006Z";
  m.check_count = 2;
  auto body = nlohmann::json::parse(CheckRequestBody(m));
  EXPECT_EQ(body["id"], 42);
  EXPECT_EQ(body["topic"], "orders");
  EXPECT_TRUE(body["key"].is_null());
  EXPECT_EQ(body["headers"]["trace-id"], "abc");
  EXPECT_EQ(body["created_at"], "2024-01-02T03:04:05.000006Z");
  EXPECT_EQ(body["check_count"], 2);
}

// Settled half messages are removed at the rate they settle: a round that removed a full batch
// is followed by another at the next round, not after the cleanup interval (a minute).
TEST_F(CheckBackTest, SettledMessagesAreRemovedFasterThanABatchAMinute) {
  store_.expired = 3 * kRemoveSettledBatch + 5;
  auto cb = Make(/*with_checker=*/false);
  for (int round = 0; round < 4; ++round) ASSERT_TRUE(cb->RunOnce().ok());
  EXPECT_EQ(store_.expired, 0) << "settled rows past their retention left after four rounds";
}

}  // namespace
}  // namespace outboxd
