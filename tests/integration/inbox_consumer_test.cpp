// The example consumer (examples/inbox_consumer.cpp) with the inbox: outboxd relays messages, the
// consumer applies each one's effect with outbox.consume_once in the same transaction, and is
// killed with SIGKILL several times mid-stream. Every message's effect must land exactly once.
// The same run without the inbox shows that the kills really redeliver (effects land twice).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class ConsumerProcess {
 public:
  ConsumerProcess(std::vector<std::string> args, std::string log)
      : args_(std::move(args)), log_(std::move(log)) {}
  ~ConsumerProcess() { Kill(SIGKILL); }
  void Start() {
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args_) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  void Kill(int sig) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  std::vector<std::string> args_;
  std::string log_;
  pid_t pid_ = -1;
};

size_t CountLines(const std::string& path, const std::string& prefix) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += line.rfind(prefix, 0) == 0;
  return n;
}

class InboxConsumer : public ServicesTest {
 protected:
  struct Figures {
    int64_t messages = 0, effects = 0, distinct = 0, twice = 0, kills = 0;
    size_t duplicate_lines = 0;
    bool balances_match = false;
  };

  std::vector<std::string> ConsumerArgs(bool use_inbox) {
    std::vector<std::string> args = {INBOX_CONSUMER_BINARY,
                                     "--bootstrap",
                                     services_.kafka_bootstrap,
                                     "--topic",
                                     topic_,
                                     "--group",
                                     UniqueName("g"),
                                     "--conninfo",
                                     db_->conninfo(),
                                     "--name",
                                     "billing",
                                     "--commit-every",
                                     "50",
                                     "--instance-id",
                                     "billing-1"};
    if (!use_inbox) args.push_back("--no-inbox");
    return args;
  }

  Figures RunWithKills(bool use_inbox) {
    constexpr int kMessages = 2000, kKills = 5;
    db_->Exec("SELECT outbox.publish('" + topic_ +
              "', 'acct-' || (i % 50), ((i % 97) + 1)::text) " + "FROM generate_series(1, " +
              std::to_string(kMessages) + ") i");
    OutboxdProcess outboxd(services_, *db_);
    outboxd.Start();
    std::string log = TestFile(UniqueName("consumer") + ".log", "");
    ConsumerProcess consumer(ConsumerArgs(use_inbox), log);
    auto effects = [&] {
      std::string n = db_->Scalar("SELECT count(*) FROM example_effects");
      return n.empty() ? int64_t{0} : std::stoll(n);
    };
    Figures f;
    f.messages = kMessages;
    consumer.Start();
    // The business tables exist once the consumer connected.
    EXPECT_TRUE(WaitFor([&] { return db_->Scalar("SELECT to_regclass('example_effects')") != ""; },
                        seconds(30)));
    for (int k = 0; k < kKills; ++k) {
      int64_t before = effects();
      // Mid-stream: some progress since the last start, then SIGKILL at once.
      bool progressed = WaitFor([&] { return effects() >= before + 120; }, seconds(60));
      EXPECT_TRUE(progressed) << "consumer made no progress\n" << outboxd.Log();
      if (!progressed) break;
      consumer.Kill(SIGKILL);
      ++f.kills;
      consumer.Start();
    }
    EXPECT_TRUE(WaitFor(
        [&] {
          return db_->Scalar("SELECT count(DISTINCT message_id) FROM example_effects") ==
                 std::to_string(kMessages);
        },
        seconds(120)))
        << outboxd.Log();
    consumer.Kill(SIGTERM);
    f.effects = effects();
    f.distinct = std::stoll(db_->Scalar("SELECT count(DISTINCT message_id) FROM example_effects"));
    f.twice = std::stoll(db_->Scalar(
        "SELECT count(*) FROM (SELECT message_id FROM example_effects GROUP BY message_id "
        "HAVING count(*) > 1) d"));
    f.balances_match =
        db_->Scalar(
            "SELECT count(*) FROM example_accounts a FULL JOIN (SELECT 'acct-' || (i % 50) "
            "AS account, sum((i % 97) + 1) AS total FROM generate_series(1, " +
            std::to_string(kMessages) +
            ") i GROUP BY 1) e USING (account) WHERE a.balance IS DISTINCT FROM e.total") == "0";
    f.duplicate_lines = CountLines(log, "duplicate ");
    std::cout << "[ inbox    ] " << (use_inbox ? "with" : "WITHOUT") << " the inbox: " << f.messages
              << " messages, " << f.kills << " SIGKILLs, " << f.effects << " effects applied ("
              << f.distinct << " distinct, " << f.twice << " applied twice), " << f.duplicate_lines
              << " redeliveries skipped by consume_once, balances "
              << (f.balances_match ? "match" : "DIFFER") << "\n";
    return f;
  }
};

TEST_F(InboxConsumer, KilledMidStreamEachEffectLandsExactlyOnce) {
  Figures f = RunWithKills(/*use_inbox=*/true);
  EXPECT_EQ(f.kills, 5);
  EXPECT_EQ(f.distinct, f.messages);
  EXPECT_EQ(f.effects, f.messages);
  EXPECT_EQ(f.twice, 0);
  EXPECT_TRUE(f.balances_match);
  EXPECT_EQ(std::stoll(db_->Scalar("SELECT count(*) FROM outbox.inbox WHERE consumer = 'billing'")),
            f.messages);
  // The kills did redeliver: the inbox turned those records away.
  EXPECT_GT(f.duplicate_lines, 0u);
}

// An id can come back for a different message (README, "Durability"): here the sequence hands
// out a delivered message's id again. The consumer dedupes on (outbox-id, outbox-created-at), so
// the new message is applied, not turned away as a redelivery.
TEST_F(InboxConsumer, AnIdThatComesBackForANewMessageIsApplied) {
  const std::string id = db_->Scalar("SELECT outbox.publish('" + topic_ + "', 'acct-r', '5')");
  std::string log = TestFile(UniqueName("consumer") + ".log", "");
  ConsumerProcess consumer(ConsumerArgs(/*use_inbox=*/true), log);
  consumer.Start();
  auto balance = [&] {
    return db_->Scalar("SELECT balance FROM example_accounts WHERE account = 'acct-r'");
  };
  {
    OutboxdProcess outboxd(services_, *db_);
    outboxd.Start();
    ASSERT_TRUE(WaitFor(
        [&] {
          return db_->Scalar("SELECT to_regclass('example_accounts')") != "" && balance() == "5";
        },
        seconds(60)))
        << outboxd.Log();
    outboxd.Kill(SIGTERM);
    ASSERT_EQ(outboxd.Wait(seconds(15)), 0) << outboxd.Log();
  }
  db_->Exec("SELECT setval('outbox.messages_id_seq', " + id + ", false)");
  ASSERT_EQ(db_->Scalar("SELECT outbox.publish('" + topic_ + "', 'acct-r', '7')"), id);
  OutboxdProcess outboxd(services_, *db_);
  outboxd.Start();
  EXPECT_TRUE(WaitFor([&] { return balance() == "12"; }, seconds(60)))
      << "balance " << balance() << ": the new message with a reused id was not applied\n"
      << outboxd.Log();
  consumer.Kill(SIGTERM);
  EXPECT_EQ(CountLines(log, "duplicate "), 0u);
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM outbox.inbox WHERE message_id = " + id), "2");
}

// Without consume_once the same kills apply effects twice: the test above can fail.
TEST_F(InboxConsumer, WithoutTheInboxKillsApplyEffectsTwice) {
  Figures f = RunWithKills(/*use_inbox=*/false);
  EXPECT_EQ(f.distinct, f.messages);
  EXPECT_GT(f.twice, 0);
  EXPECT_FALSE(f.balances_match);
}

}  // namespace
}  // namespace outboxd::testing
