// Exactly-once mode (relay.delivery = "exactly_once") with the real transactional producer against
// librdkafka's mock cluster, the outbox being the in-memory FakeStore. The mock cluster runs the
// transaction protocol (InitProducerId, AddPartitionsToTxn, EndTxn, fencing by epoch) but writes
// no commit or abort markers, so its reader sees aborted records too. The tests therefore judge
// what a read_committed consumer of a real broker would see: only records of transactions whose
// commit succeeded (the witness in support/fakes.h keeps where they were stored), and a relay
// whose faults abort transactions reads its checkpoint the same way (CommittedCheckpoints). A
// commit that failed (fatally, or fenced) counts as aborted: the mock's coordinator never served
// the refused EndTxn, and the next producer's InitTransactions aborts it.
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "../support/fakes.h"
#include "../support/mock_cluster.h"
#include "../support/running_relay.h"
#include "kafka/checkpoint_topic.h"
#include "kafka/producer.h"
#include "relay.h"

namespace outboxd {
namespace {

using testing::Eventually;
using testing::FakeStore;
using testing::MockCluster;
using testing::ReadTopic;
using testing::StoredRecord;
using Clock = std::chrono::steady_clock;

constexpr int kBrokers = 3;
constexpr int kPartitions = 3;
constexpr int16_t kEndTxnApi = 26;
constexpr int16_t kAddPartitionsToTxnApi = 24;
constexpr Millis kLongWait{30'000};

// Per outbox id, how many records of `topic` carry it (read from the beginning to the end). With a
// witness, only records it counts: those of committed transactions (and persisted ones outside
// transactions).
std::map<int64_t, int> CopiesIn(const MockCluster& cluster, const std::string& topic,
                                std::map<std::string, std::vector<int64_t>>* per_key = nullptr,
                                testing::ReportWitness* witness = nullptr) {
  std::map<int64_t, int> copies;
  for (const StoredRecord& r : ReadTopic(cluster, topic, kPartitions)) {
    const std::optional<int64_t> id = r.outbox_id();
    if (!id) continue;
    if (witness && !witness->Counts({topic, r.partition, r.offset})) continue;
    if (copies[*id]++ == 0 && per_key && r.key) (*per_key)[*r.key].push_back(*id);
  }
  return copies;
}

// The relay's checkpoint reader as a read_committed consumer of a real broker would make it: the
// last checkpoint under the outbox's transactional.id among the records of committed transactions
// (the mock's own reader would also show those of aborted ones, naming rows never delivered).
CheckpointReader CommittedCheckpoints(const MockCluster& cluster, const Config& c,
                                      testing::ReportWitness& witness) {
  return [&cluster, &c, &witness](const std::string& outbox) -> Result<std::optional<Checkpoint>> {
    std::optional<Checkpoint> last;
    const std::string key = TransactionalId(c);
    for (const StoredRecord& r : ReadTopic(cluster, c.relay.checkpoint_topic, 1)) {
      if (!witness.Counts({c.relay.checkpoint_topic, r.partition, r.offset})) continue;
      if (r.key != key || !r.value) continue;
      auto parsed = ParseCheckpoint(*r.value);
      if (!parsed.ok()) return parsed.status();
      if (parsed->outbox == outbox) last = std::move(*parsed);
    }
    return last;
  };
}

// Which checkpoints the relay reads: the product's reader (KafkaCheckpointReader) where no
// transaction aborts or fails, else CommittedCheckpoints.
enum class Checkpoints { kKafkaReader, kCommittedOnly };

// A relay with a real transactional KafkaPublisher, witnessed (support/running_relay.h).
class RunningRelay : public testing::RunningRelay {
 public:
  RunningRelay(Config config, FakeStore& store, const MockCluster& cluster,
               Checkpoints checkpoints = Checkpoints::kCommittedOnly)
      : testing::RunningRelay(
            std::move(config), store,
            [&store](const Config& c) {
              return testing::Witnessed(
                  [&c] { return KafkaPublisher::Create(c.kafka, TransactionalId(c)); },
                  store.witness());
            },
            [&store, &cluster, checkpoints](const Config& c) {
              return checkpoints == Checkpoints::kKafkaReader
                         ? KafkaCheckpointReader(c)
                         : CommittedCheckpoints(cluster, c, store.witness());
            }) {}
};

class ExactlyOnceMock : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* level = std::getenv("OUTBOXD_TEST_LOG");
    spdlog::set_level(spdlog::level::from_str(level ? level : "warn"));
    topic_ = std::string("eo.") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    cluster_.CreateTopic(topic_, kPartitions);
    // The mock cluster has no CreateTopics: the checkpoint topic is made here (1 partition).
    cluster_.CreateTopic(Config().relay.checkpoint_topic, 1);
  }
  Config EoConfig(Delivery delivery = Delivery::kExactlyOnce) const {
    Config c = testing::FastRelayConfig();
    c.kafka.bootstrap_servers = cluster_.bootstraps();
    c.relay.delivery = delivery;
    c.relay.batch_size = 200;
    c.relay.max_in_flight = 1000;
    c.relay.shutdown_timeout = Millis(2000);
    c.backoff.max = Millis(50);
    c.leadership.lock_id = 4242;
    return c;
  }
  void AddRows(int64_t first, int64_t last, int keys = 20) {
    for (int64_t id = first; id <= last; ++id) {
      store_.Add(id, topic_, "key-" + std::to_string(id % keys), "payload-" + std::to_string(id));
    }
  }
  bool AllRemoved() {
    return Eventually([&] { return store_.Remaining().empty(); }, kLongWait);
  }
  // Records of committed transactions (and persisted ones outside transactions) in `topic`.
  std::map<int64_t, int> CommittedCopies(
      const std::string& topic, std::map<std::string, std::vector<int64_t>>* per_key = nullptr) {
    return CopiesIn(cluster_, topic, per_key, &store_.witness());
  }
  // Every row 1..last arrived; per key the first copies are in id order.
  void ExpectNoLossInKeyOrder(int64_t last, const std::map<int64_t, int>& copies,
                              const std::map<std::string, std::vector<int64_t>>& per_key) {
    int lost = 0;
    for (int64_t id = 1; id <= last; ++id) lost += copies.count(id) ? 0 : 1;
    EXPECT_EQ(lost, 0) << "rows lost";
    int breaks = 0;
    for (const auto& [key, ids] : per_key) {
      for (size_t i = 1; i < ids.size(); ++i) breaks += ids[i] < ids[i - 1] ? 1 : 0;
    }
    EXPECT_EQ(breaks, 0) << "key-order breaks";
  }
  static int Duplicates(const std::map<int64_t, int>& copies) {
    int d = 0;
    for (const auto& [id, n] : copies) d += n - 1;
    return d;
  }

  MockCluster cluster_{kBrokers};
  std::string topic_;
  FakeStore store_;
};

TEST_F(ExactlyOnceMock, DeliversEveryRowOnceInTransactionsWithCheckpoints) {
  AddRows(1, 3000);
  RunningRelay relay(EoConfig(), store_, cluster_, Checkpoints::kKafkaReader);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  Relay::Stats s = relay.Stop();
  EXPECT_TRUE(relay.status().ok()) << relay.status().message();
  std::map<std::string, std::vector<int64_t>> per_key;
  auto copies = CommittedCopies(topic_, &per_key);
  ExpectNoLossInKeyOrder(3000, copies, per_key);
  EXPECT_EQ(Duplicates(copies), 0);
  EXPECT_GE(s.transactions_committed, 3000 / 200);
  EXPECT_EQ(s.transactions_aborted, 0);
  // The last checkpoint names the last transaction's rows.
  Config c = EoConfig();
  auto last =
      ReadLastCheckpoint(c.kafka, c.relay.checkpoint_topic, TransactionalId(c), "", kLongWait);
  ASSERT_TRUE(last.ok()) << last.status().message();
  ASSERT_TRUE(*last);
  EXPECT_FALSE((*last)->sent.empty());
  EXPECT_EQ((*last)->sent.back(), 3000);
}

// A checkpoint under the same transactional.id from another outbox incarnation (a re-created
// database, or another outbox sharing the id) names ids 1..1000: none of this outbox's rows may be
// removed because of it. Before the incarnation guard they were removed unsent (lost).
TEST_F(ExactlyOnceMock, AnotherOutboxsCheckpointRemovesNothing) {
  Config c = EoConfig();
  ASSERT_TRUE(EnsureCheckpointTopic(c.kafka, c.relay.checkpoint_topic, kLongWait).ok());
  {
    auto other = KafkaPublisher::Create(c.kafka, TransactionalId(c));
    ASSERT_TRUE(other.ok());
    ASSERT_TRUE((*other)->InitTransactions(Millis(10'000)).ok());
    ASSERT_TRUE((*other)->BeginTransaction().ok());
    std::vector<int64_t> ids;
    for (int64_t id = 1; id <= 1000; ++id) ids.push_back(id);
    const std::optional<std::string> key = TransactionalId(c);
    const std::optional<std::string> value =
        EncodeCheckpoint(Checkpoint{"another-outbox", ids, {}});
    const Headers none;
    ASSERT_TRUE(
        (*other)->Produce(OutgoingMessage{&c.relay.checkpoint_topic, &key, &value, &none}, 1).ok());
    std::vector<DeliveryReport> reports;
    while (reports.empty()) (*other)->Poll(Millis(100), &reports);
    ASSERT_TRUE(reports[0].proven());
    ASSERT_TRUE((*other)->CommitTransaction(Millis(10'000)).ok());
  }
  AddRows(1, 1000);
  RunningRelay relay(c, store_, cluster_, Checkpoints::kKafkaReader);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  Relay::Stats s = relay.Stop();
  std::map<std::string, std::vector<int64_t>> per_key;
  auto copies = CommittedCopies(topic_, &per_key);
  ExpectNoLossInKeyOrder(1000, copies, per_key);
  EXPECT_EQ(s.checkpoint_rows_removed, 0);
}

// A crash between the Kafka commit and the PostgreSQL removal (the removal fails, the relay loses
// the outbox): the next term reads the checkpoint and removes those rows without sending them
// again. In at-least-once mode the same fault sends them twice (the test's before-fix run).
TEST_F(ExactlyOnceMock, CrashBetweenCommitAndRemovalSendsNothingAgain) {
  AddRows(1, 2000);
  store_.FailRemovalsAfter(400, 3);  // three removals in a row fail, mid-stream
  RunningRelay relay(EoConfig(), store_, cluster_, Checkpoints::kKafkaReader);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  Relay::Stats s = relay.Stop();
  ASSERT_GE(store_.injected_removal_failures(), 1) << "the fault never happened";
  std::map<std::string, std::vector<int64_t>> per_key;
  auto copies = CommittedCopies(topic_, &per_key);
  ExpectNoLossInKeyOrder(2000, copies, per_key);
  EXPECT_EQ(Duplicates(copies), 0) << "a committed transaction's rows were sent again";
  EXPECT_GE(s.leadership_terms, 2);
  EXPECT_GT(s.checkpoint_rows_removed, 0) << "the checkpoint removed nothing";
  std::cout << "[ eo-crash ] terms " << s.leadership_terms << ", rows removed from the checkpoint "
            << s.checkpoint_rows_removed << ", duplicates " << Duplicates(copies) << "\n";
}

// The same fault in at-least-once mode: the duplicates that exactly-once removes (a witness that
// the fault above bites; not a guarantee of at-least-once mode).
TEST_F(ExactlyOnceMock, SameCrashInAtLeastOnceModeSendsRowsTwice) {
  AddRows(1, 2000);
  store_.FailRemovalsAfter(400, 3);
  RunningRelay relay(EoConfig(Delivery::kAtLeastOnce), store_, cluster_, Checkpoints::kKafkaReader);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  relay.Stop();
  ASSERT_GE(store_.injected_removal_failures(), 1);
  auto copies = CopiesIn(cluster_, topic_);
  EXPECT_GT(Duplicates(copies), 0);
  std::cout << "[ alo-crash ] duplicates " << Duplicates(copies) << "\n";
}

// EndTxn and AddPartitionsToTxn fail: transactions abort (or retry), their rows go again, and
// nothing is lost or reordered; no row is removed for an aborted transaction (the witness store
// would refuse an unproven removal; removal happens only after a commit).
TEST_F(ExactlyOnceMock, FailedEndTxnAndAddPartitionsAbortAndLoseNothing) {
  AddRows(1, 600);
  RunningRelay relay(EoConfig(), store_, cluster_);
  ASSERT_TRUE(Eventually([&] { return store_.Removed().size() >= 200; }, kLongWait));
  rd_kafka_mock_push_request_errors(cluster_.get(), kAddPartitionsToTxnApi, 2,
                                    RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
                                    RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE);
  rd_kafka_mock_push_request_errors(
      cluster_.get(), kEndTxnApi, 3, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
      RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS);
  AddRows(601, 2000);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  Relay::Stats s = relay.Stop();
  std::map<std::string, std::vector<int64_t>> per_key;
  auto copies = CommittedCopies(topic_, &per_key);
  ExpectNoLossInKeyOrder(2000, copies, per_key);
  EXPECT_GE(s.transactions_aborted, 1) << "no transaction aborted: the fault did not bite";
  std::cout << "[ eo-abort ] committed " << s.transactions_committed << ", aborted "
            << s.transactions_aborted << ", records in the mock (aborted ones included) "
            << Duplicates(copies) << " beyond one per row\n";
}

// Produce responses slower than transaction.timeout.ms: the relay gives the transaction up, aborts
// it (purging what is in flight), and sends its rows again; nothing is lost or reordered.
TEST_F(ExactlyOnceMock, TransactionNotAcknowledgedInTimeIsAbortedAndSentAgain) {
  constexpr int16_t kProduceApi = 0;
  Config c = EoConfig();
  c.kafka.properties["transaction.timeout.ms"] = "2000";
  AddRows(1, 400);
  // The timeouts may also make the mock report a fatal error mid-abort: the relay gives its
  // producer up; its commit never asked for, the transaction aborted, and the new producer does
  // not read the checkpoint again (AbortThatFailsFatallySendsTheTransactionsRowsAgain).
  RunningRelay relay(c, store_, cluster_);
  ASSERT_TRUE(Eventually([&] { return store_.Removed().size() >= 200; }, kLongWait));
  for (int32_t b = 1; b <= kBrokers; ++b) {
    rd_kafka_mock_broker_push_request_error_rtts(cluster_.get(), b, kProduceApi, 2,
                                                 RD_KAFKA_RESP_ERR_NO_ERROR, 4000,
                                                 RD_KAFKA_RESP_ERR_NO_ERROR, 4000);
  }
  AddRows(401, 1500);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  Relay::Stats s = relay.Stop();
  std::map<std::string, std::vector<int64_t>> per_key;
  auto copies = CommittedCopies(topic_, &per_key);
  ExpectNoLossInKeyOrder(1500, copies, per_key);
  EXPECT_GE(s.transactions_aborted + s.producer_rebuilds, 1) << "no transaction was given up";
  std::cout << "[ eo-timeout ] committed " << s.transactions_committed << ", aborted "
            << s.transactions_aborted << ", producer rebuilds " << s.producer_rebuilds << "\n";
}

// A row the broker refuses (MSG_SIZE_TOO_LARGE, twice: in its batch's transaction, then alone in
// its own) is dead-lettered to the table and, inside a committed transaction, to the dead-letter
// topic; the other rows flow, each once.
TEST_F(ExactlyOnceMock, PoisonRowIsDeadLetteredThroughATransactionWhileTheRestFlow) {
  constexpr int16_t kProduceApi = 0;
  const std::string dlq = topic_ + ".dlq";
  cluster_.CreateTopic(dlq, kPartitions);
  Config c = EoConfig();
  c.relay.dead_letter_topic = dlq;
  // The rows on broker 2, the checkpoint record on broker 1, the dead-letter copies on broker 3:
  // the injected refusals (broker 2's next two ProduceRequests) hit row 301 and nothing else.
  for (int32_t p = 0; p < kPartitions; ++p) {
    rd_kafka_mock_partition_set_leader(cluster_.get(), topic_.c_str(), p, 2);
    rd_kafka_mock_partition_set_leader(cluster_.get(), dlq.c_str(), p, 3);
  }
  rd_kafka_mock_partition_set_leader(cluster_.get(), c.relay.checkpoint_topic.c_str(), 0, 1);
  AddRows(1, 300);
  RunningRelay relay(c, store_, cluster_);
  ASSERT_TRUE(AllRemoved());
  rd_kafka_mock_broker_push_request_error_rtts(cluster_.get(), 2, kProduceApi, 2,
                                               RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, 0,
                                               RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, 0);
  AddRows(301, 301);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  AddRows(302, 600);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  Relay::Stats s = relay.Stop();
  auto dead = store_.DeadLetters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead.begin()->first, 301);
  auto copies = CommittedCopies(dlq);
  EXPECT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies.count(301), 1u);
  std::map<std::string, std::vector<int64_t>> per_key;
  auto delivered = CommittedCopies(topic_, &per_key);
  for (int64_t id = 1; id <= 600; ++id) {
    if (id != 301) {
      EXPECT_EQ(delivered.count(id), 1u) << "row " << id;
    }
  }
  std::cout << "[ eo-poison ] committed " << s.transactions_committed << ", aborted "
            << s.transactions_aborted << ", dead-lettered " << s.dead_lettered << "\n";
}

// A transaction that must abort (its rows refused: MSG_SIZE_TOO_LARGE) whose abort then fails
// fatally (EndTxn answered TRANSACTIONAL_ID_AUTHORIZATION_FAILED): the relay rebuilds its producer
// within the term. Its commit was never asked for, so it aborted: the relay sends its rows again
// and does not read the checkpoint again. (This mock writes no transaction markers: a reader
// there shows the aborted transaction's checkpoint, naming rows that were never written, and
// removing them would lose them; a real broker would not show it, and the rows the relay had
// fetched must still be fetched again in this term, not left behind for the next one.)
TEST_F(ExactlyOnceMock, AbortThatFailsFatallySendsTheTransactionsRowsAgain) {
  constexpr int16_t kProduceApi = 0, kEndTxnApi = 26;
  Config c = EoConfig();
  // Rows on broker 2, the checkpoint record on broker 1: the refusal hits the rows only.
  for (int32_t p = 0; p < kPartitions; ++p) {
    rd_kafka_mock_partition_set_leader(cluster_.get(), topic_.c_str(), p, 2);
  }
  rd_kafka_mock_partition_set_leader(cluster_.get(), c.relay.checkpoint_topic.c_str(), 0, 1);
  AddRows(1, 300);
  RunningRelay relay(c, store_, cluster_);
  ASSERT_TRUE(AllRemoved());
  rd_kafka_mock_push_request_errors(cluster_.get(), kEndTxnApi, 1,
                                    RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
  // The refusal comes late (500 ms): the checkpoint record is written first, as it would be
  // when the failing partition's leader answers last.
  rd_kafka_mock_broker_push_request_error_rtts(cluster_.get(), 2, kProduceApi, 1,
                                               RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, 500);
  AddRows(301, 310);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  AddRows(311, 600);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  Relay::Stats s = relay.Stop();
  EXPECT_GE(s.producer_rebuilds, 1) << "the abort did not fail fatally: no rebuild to test";
  EXPECT_TRUE(store_.DeadLetters().empty());
  std::map<std::string, std::vector<int64_t>> per_key;
  auto copies = CommittedCopies(topic_, &per_key);
  ExpectNoLossInKeyOrder(600, copies, per_key);
  std::cout << "[ eo-abort-fatal ] committed " << s.transactions_committed << ", aborted "
            << s.transactions_aborted << ", producer rebuilds " << s.producer_rebuilds << "\n";
}

// The coordinator answers a commit with PRODUCER_FENCED (a newer producer of the transactional.id
// exists; librdkafka 2.0.2's mock cluster does not fence by epoch itself, so the answer is
// injected): the relay gives up the outbox, takes it again only through the lock, with a new
// producer, and loses nothing. The e2e scenario eo-zombie shows real fencing on a real broker.
TEST_F(ExactlyOnceMock, FencedProducerGivesUpAndLosesNothing) {
  AddRows(1, 600);
  Config c = EoConfig();
  RunningRelay relay(c, store_, cluster_);
  ASSERT_TRUE(Eventually([&] { return store_.Removed().size() >= 200; }, kLongWait));
  rd_kafka_mock_push_request_errors(cluster_.get(), kEndTxnApi, 1,
                                    RD_KAFKA_RESP_ERR_PRODUCER_FENCED);
  AddRows(601, 2000);
  ASSERT_TRUE(Eventually([&] { return relay.stats().leadership_terms >= 2; }, kLongWait))
      << "the relay was never fenced";
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  Relay::Stats s = relay.Stop();
  std::map<std::string, std::vector<int64_t>> per_key;
  auto copies = CommittedCopies(topic_, &per_key);
  ExpectNoLossInKeyOrder(2000, copies, per_key);
  std::cout << "[ eo-fenced ] terms " << s.leadership_terms << ", producer rebuilds "
            << s.producer_rebuilds << "\n";
}

// A commit that fails fatally for another reason than fencing (EndTxn answered
// TRANSACTIONAL_ID_AUTHORIZATION_FAILED): its outcome is unknown to the relay, so it removes none
// of the transaction's rows; it rebuilds its producer, whose InitTransactions aborts the
// transaction (the mock's coordinator never served the refused EndTxn), reads the checkpoint and
// sends those rows again. Removing them at the failed commit would lose them: the witness store
// refuses such a removal and RunningRelay::Stop reports it.
TEST_F(ExactlyOnceMock, FatalCommitOtherThanFencingRemovesNothing) {
  Config c = EoConfig();
  AddRows(1, 300);
  RunningRelay relay(c, store_, cluster_);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  const size_t removed_before = store_.Removed().size();
  // The relay is idle: the next EndTxn is the commit of the transaction that carries row 301.
  rd_kafka_mock_push_request_errors(cluster_.get(), kEndTxnApi, 1,
                                    RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
  AddRows(301, 1000);
  ASSERT_TRUE(AllRemoved()) << store_.Remaining().size() << " rows left";
  Relay::Stats s = relay.Stop();
  EXPECT_GE(s.producer_rebuilds, 1) << "the commit did not fail fatally: nothing to test";
  EXPECT_EQ(s.leadership_terms, 1) << "treated as fencing: not the case under test";
  EXPECT_EQ(removed_before, 300u);
  std::map<std::string, std::vector<int64_t>> per_key;
  auto copies = CommittedCopies(topic_, &per_key);
  ExpectNoLossInKeyOrder(1000, copies, per_key);
  EXPECT_EQ(Duplicates(copies), 0) << "a committed transaction's rows were sent again";
  std::cout << "[ eo-commit-fatal ] committed " << s.transactions_committed << ", aborted "
            << s.transactions_aborted << ", producer rebuilds " << s.producer_rebuilds << "\n";
}

}  // namespace
}  // namespace outboxd
