// The relay against a fake store and a fake broker: what it removes, re-sends and keeps in order.
#include "relay.h"

#include <thread>

#include <gtest/gtest.h>

#include "../support/fakes.h"
#include "../support/log_counter.h"
#include "../support/running_relay.h"
#include "text.h"

namespace outboxd {
namespace {

using testing::Eventually;
using testing::FakeBroker;
using testing::FakeFactory;
using testing::FakeStore;
using testing::LogCounter;
using Outcome = DeliveryReport::Outcome;

Config TestConfig() { return testing::FastRelayConfig(); }

// A relay over the fake store and the fake broker (support/running_relay.h).
class RunningRelay : public testing::RunningRelay {
 public:
  RunningRelay(Config c, FakeStore& store, FakeBroker& broker)
      : testing::RunningRelay(std::move(c), store,
                              [&](const Config&) { return FakeFactory(broker, store); }) {}
};

std::set<int64_t> Range(int64_t first, int64_t last) {
  std::set<int64_t> out;
  for (int64_t id = first; id <= last; ++id) out.insert(id);
  return out;
}

std::set<int64_t> PersistedIds(FakeBroker& broker) {
  std::set<int64_t> ids;
  for (auto& s : broker.Persisted()) ids.insert(s.outbox_id());
  return ids;
}

std::set<int64_t> RemovedIds(FakeStore& store) {
  auto removed = store.Removed();
  return std::set<int64_t>(removed.begin(), removed.end());
}

// Per key, the order in which the broker first stored each outbox id must be ascending.
void ExpectPerKeyOrder(const std::vector<testing::Sent>& persisted) {
  std::map<std::string, int64_t> last;
  std::set<int64_t> seen;
  for (const auto& s : persisted) {
    int64_t id = s.outbox_id();
    if (!seen.insert(id).second || !s.key) continue;  // duplicates are allowed, order is by first
    auto it = last.find(*s.key);
    if (it != last.end()) {
      EXPECT_LT(it->second, id) << "key " << *s.key << " reordered";
    }
    last[*s.key] = id;
  }
}

OutboxRow RowWithHeaders(int64_t id, std::string headers) {
  OutboxRow row;
  row.id = id;
  row.topic = "t";
  row.headers = std::move(headers);
  row.created_at_us = 1764633600123456;
  return row;
}

TEST(MessageHeaders, IdentityFirstThenRowHeadersInTheirOrder) {
  auto h = MessageHeaders(RowWithHeaders(42, R"({"n": 5, "z": null, "trace-id": "abc"})"));
  ASSERT_TRUE(h.ok());
  ASSERT_EQ(h->size(), 5u);
  EXPECT_EQ((*h)[0], (std::pair<std::string, std::optional<std::string>>{"outbox-id", "42"}));
  EXPECT_EQ((*h)[1], (std::pair<std::string, std::optional<std::string>>{"outbox-created-at",
                                                                         "1764633600123456"}));
  EXPECT_EQ((*h)[2].second, "5");
  EXPECT_EQ((*h)[3].second, std::optional<std::string>());
  EXPECT_EQ((*h)[4], (std::pair<std::string, std::optional<std::string>>{"trace-id", "abc"}));
  EXPECT_EQ(MessageHeaders(RowWithHeaders(1, "[1,2]")).status().code(), Status::Code::kPermanent);
}

// Values are the text jsonb_each_text gives, numbers never converted.
TEST(MessageHeaders, ValuesAreTheJsonTextUnconverted) {
  std::string huge = "1" + std::string(400, '0');  // how jsonb prints 1e400
  auto h =
      ParseHeaderObject(R"({"b": 12345678901234567890123, "f": 1.50, "e": 1e400, "h": )" + huge +
                        R"(, "t": true, "o": {"a": [1, "x"]}, "s": "\u00e9\n\"q\" \ud83d\ude00"})");
  ASSERT_TRUE(h);
  Headers expected{{"b", "12345678901234567890123"},
                   {"f", "1.50"},
                   {"e", "1e400"},
                   {"h", huge},
                   {"t", "true"},
                   {"o", R"({"a": [1, "x"]})"},
                   {"s", "\xC3\xA9\n\"q\" \xF0\x9F\x98\x80"}};
  EXPECT_EQ(*h, expected);
  EXPECT_EQ(ParseHeaderObject("{}"), Headers{});
  EXPECT_EQ(ParseHeaderObject(R"( {"a":[[[[]]],{}]} )"), (Headers{{"a", "[[[[]]],{}]"}}));
  for (const char* bad :
       {"", "[]", "\"s\"", "{", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{\"a\":01}", "{\"a\":1.}",
        "{\"a\":[1,]}", "{\"a\":tru}", "{\"a\":\"\\ud800\"}", "{\"a\":1} x", "{\"a\":{\"b\":1]}"}) {
    EXPECT_FALSE(ParseHeaderObject(bad)) << bad;
  }
}

// The error text quoting the headers is cut on a character boundary.
TEST(MessageHeaders, ErrorTextQuotingTheHeadersIsValidUtf8) {
  std::string json = "\"";
  for (int i = 0; i < 150; ++i) json += "\xC3\xA9";  // é: 2 bytes; 200 bytes would cut one
  json += "\"";
  auto h = MessageHeaders(RowWithHeaders(1, json));
  ASSERT_EQ(h.status().code(), Status::Code::kPermanent);
  const std::string& m = h.status().message();
  EXPECT_EQ(ValidUtf8Prefix(m, m.size()), m) << "cut inside a character";
  EXPECT_EQ(ValidUtf8Prefix("a\xC3\xA9", 2), "a");
  EXPECT_EQ(ValidUtf8Prefix("a\xC3(\xF0\x9F\x98", 100),
            "a\xEF\xBF\xBD(\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(AsciiEscaped("\xC3\xA9 x\n"), "\\xc3\\xa9 x\\x0a");
}

TEST(Relay, DeliversEveryRowOnceInIdOrderAndRemovesItAfterTheAck) {
  FakeStore store;
  FakeBroker broker;
  for (int i = 1; i <= 500; ++i)
    store.Add(i, "t", "k" + std::to_string(i % 7), "v" + std::to_string(i));
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  auto persisted = broker.Persisted();
  ASSERT_EQ(persisted.size(), 500u);
  for (int i = 0; i < 500; ++i) {
    EXPECT_EQ(persisted[i].outbox_id(), i + 1);
    EXPECT_EQ(persisted[i].payload, "v" + std::to_string(i + 1));
  }
  EXPECT_EQ(store.Removed().size(), 500u);
}

// The test support itself: the fake store refuses a removal nobody proved.
TEST(FakeStore, RefusesToRemoveARowWithoutAPersistedReport) {
  FakeStore store;
  store.Add(1, "t", "k", "v");
  store.Add(2, "t", "k", "v");
  store.witness().Persisted("t", 2);
  store.witness().Persisted("other-topic", 1);  // a copy elsewhere proves nothing
  EXPECT_FALSE(store.MarkSent({1, 2}).ok());
  EXPECT_EQ(store.Unproven(), std::vector<int64_t>{1});
  EXPECT_EQ(store.Remaining(), Range(1, 2));
  EXPECT_TRUE(store.MarkSent({2}).ok());
  EXPECT_EQ(store.Remaining(), Range(1, 1));
}

TEST(Relay, NothingIsRemovedWithoutAPersistedReport) {
  FakeStore store;
  FakeBroker broker;
  broker.hold_reports = true;  // the broker never answers
  for (int i = 1; i <= 50; ++i) store.Add(i, "t", "k", "v");
  RunningRelay relay(TestConfig(), store, broker);
  // Positive control: the relay leads and hands every row to the producer.
  ASSERT_TRUE(Eventually([&] { return relay.stats().produced == 50; }))
      << relay.stats().produced << " produced";
  relay.Stop();  // shutdown_timeout passes, the messages are purged
  EXPECT_EQ(relay.stats().produced, 50);
  EXPECT_EQ(relay.stats().acknowledged, 0);
  EXPECT_EQ(store.Remaining().size(), 50u);
  EXPECT_TRUE(store.Removed().empty());
  // Every message got its one report, and it was a failure.
  auto log = broker.Log();
  EXPECT_EQ(log.size(), 50u);
  for (const auto& sent : log) EXPECT_EQ(sent.outcome, Outcome::kRetriable) << sent.outbox_id();
}

// librdkafka's implicit ack: a batch that failed (NOT_LEADER on a new partition) is reported
// persisted, without an offset, when a later batch of its partition succeeds; the broker never
// wrote it. Such a report must not remove the row.
TEST(Relay, APersistedReportWithoutAnOffsetIsNoProof) {
  FakeStore store;
  FakeBroker broker;
  std::set<int64_t> unproven = {1, 2, 77};
  std::mutex mu;
  broker.implicit_ack = [&](const testing::Sent& s) {
    std::lock_guard l(mu);
    return unproven.erase(s.outbox_id()) > 0;  // each once: its next copy is really written
  };
  for (int i = 1; i <= 200; ++i) store.Add(i, "t", "k" + std::to_string(i % 5), "v");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  std::set<int64_t> stored;
  for (const auto& s : broker.Persisted()) stored.insert(s.outbox_id());
  for (int64_t id = 1; id <= 200; ++id) EXPECT_TRUE(stored.count(id)) << "id " << id << " lost";
  EXPECT_EQ(store.Removed().size(), 200u);
  EXPECT_EQ(relay.stats().unproven_reports, 3);
}

// Row 10 (key "a") fails twice. As the idempotent producer does (enable.gapless.guarantee), the
// messages queued behind it in its partition fail with it: key "a"'s later rows are not stored
// until row 10 is. The relay must re-send 10 and everything after it, in order.
TEST(Relay, RetriableFailureResendsAndKeepsPerKeyOrder) {
  FakeStore store;
  FakeBroker broker;
  std::atomic<int> failures{0};
  bool a_blocked = false;  // under broker.mu_ (decide runs there)
  broker.decide = [&](const testing::Sent& s) {
    if (s.outbox_id() == 10) {
      a_blocked = failures < 2;
      if (a_blocked) {
        ++failures;
        return Outcome::kRetriable;
      }
    }
    if (a_blocked && s.key == "a" && s.outbox_id() > 10) return Outcome::kRetriable;
    return Outcome::kPersisted;
  };
  for (int i = 1; i <= 60; ++i) store.Add(i, "t", i % 2 ? "b" : "a", "v");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  EXPECT_EQ(failures, 2);
  EXPECT_GE(relay.stats().rewinds, 2);
  EXPECT_EQ(PersistedIds(broker), Range(1, 60));
  EXPECT_EQ(RemovedIds(store), Range(1, 60));
  ExpectPerKeyOrder(broker.Persisted());  // by first copies, as a consumer sees them
}

// A broker that stores row 12 although row 10 of the same key failed before it (which the
// idempotent producer with enable.gapless.guarantee does not do): the relay cannot take 12 back,
// but it removes 12 only after 10, and sends 12 again after 10, so the last copies are in order.
TEST(Relay, RowStoredBehindAFailedRowOfItsKeyIsSentAgainAfterIt) {
  FakeStore store;
  FakeBroker broker;
  std::atomic<int> failures{0};
  broker.decide = [&](const testing::Sent& s) {
    if (s.outbox_id() == 10 && failures < 2) {
      ++failures;
      return Outcome::kRetriable;
    }
    return Outcome::kPersisted;
  };
  for (int i = 1; i <= 60; ++i) store.Add(i, "t", i % 2 ? "b" : "a", "v");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  EXPECT_EQ(failures, 2);
  auto removed = store.Removed();
  auto pos = [&](int64_t id) {
    return std::find(removed.begin(), removed.end(), id) - removed.begin();
  };
  EXPECT_LT(pos(10), pos(12));
  auto persisted = broker.Persisted();
  std::map<int64_t, size_t> last_index;
  for (size_t i = 0; i < persisted.size(); ++i) last_index[persisted[i].outbox_id()] = i;
  for (int64_t id = 12; id <= 60; id += 2) EXPECT_LT(last_index[10], last_index[id]) << id;
  EXPECT_GE(relay.stats().rewinds, 2);
}

TEST(Relay, PoisonMessagesAreDeadLetteredWhileOthersFlow) {
  FakeStore store;
  FakeBroker broker;
  broker.decide = [](const testing::Sent& s) {
    return s.payload == "too big" ? Outcome::kPermanent : Outcome::kPersisted;
  };
  for (int i = 1; i <= 30; ++i) store.Add(i, "t", "k", i == 7 ? "too big" : "ok");
  store.Add(31, "t", "k", "ok", "[\"not an object\"]");
  store.Add(32, "t", "k", "ok");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  auto dead = store.DeadLetters();
  ASSERT_EQ(dead.size(), 2u);
  EXPECT_EQ(dead.count(7), 1u);
  EXPECT_NE(dead[31].find("headers must be a JSON object"), std::string::npos);
  EXPECT_EQ(store.Removed().size(), 30u);
}

// A poison row whose error text quotes multibyte headers is dead-lettered
// (the fake store refuses non-UTF-8 text as PostgreSQL does), and the others keep flowing in
// the same leadership term.
TEST(Relay, PoisonWithMultibyteErrorTextIsDeadLetteredWhileOthersFlow) {
  FakeStore store;
  FakeBroker broker;
  std::string headers = "\"";
  for (int i = 0; i < 150; ++i) headers += "\xC3\xA9";
  headers += "\"";
  for (int i = 1; i <= 60; ++i)
    store.Add(i, "t", "k" + std::to_string(i % 3), "ok", i == 10 ? headers : "{}");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }))
      << store.Remaining().size() << " rows left after " << store.leads() << " leadership terms";
  relay.Stop();
  EXPECT_EQ(store.leads(), 1);
  auto dead = store.DeadLetters();
  ASSERT_EQ(dead.count(10), 1u);
  EXPECT_NE(dead[10].find("headers must be a JSON object"), std::string::npos);
  EXPECT_EQ(store.Removed().size(), 59u);
}

// A row that PostgreSQL refuses to dead-letter whatever the text is set aside for the term: it
// stays in the outbox, everything else is delivered, leadership is kept.
TEST(Relay, RowThatCannotBeDeadLetteredIsSetAsideAndCannotStopTheOthers) {
  FakeStore store;
  FakeBroker broker;
  for (int i = 1; i <= 60; ++i) store.Add(i, "t", "k", "ok", i == 7 ? "[\"poison\"]" : "{}");
  store.RefuseDeadLetter(7);
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining() == std::set<int64_t>{7}; }))
      << store.Remaining().size() << " rows left after " << store.leads() << " leadership terms";
  for (int i = 61; i <= 80; ++i) store.Add(i, "t", "k", "later");
  ASSERT_TRUE(Eventually([&] { return store.Remaining() == std::set<int64_t>{7}; }));
  relay.Stop();
  EXPECT_EQ(store.leads(), 1);
  EXPECT_EQ(store.dead_letter_attempts(), 2);  // the error text as it is, then in plain ASCII
  EXPECT_TRUE(store.DeadLetters().empty());
  EXPECT_EQ(store.Removed().size(), 79u);
}

TEST(Relay, PoisonGoesToTheDeadLetterTopicWhenConfigured) {
  FakeStore store;
  FakeBroker broker;
  broker.on_produce = [](const testing::Sent& s) {
    return s.payload == "bad" && s.topic == "orders" ? Status::Permanent("Message size too large")
                                                     : Status::Ok();
  };
  store.Add(1, "orders", "k", "bad");
  store.Add(2, "orders", "k", "good");
  Config c = TestConfig();
  c.relay.dead_letter_topic = "orders.dlq";
  RunningRelay relay(c, store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  auto persisted = broker.Persisted();
  ASSERT_EQ(persisted.size(), 2u);
  auto copy = std::find_if(persisted.begin(), persisted.end(),
                           [](const testing::Sent& s) { return s.topic == "orders.dlq"; });
  ASSERT_NE(copy, persisted.end());
  EXPECT_EQ(copy->outbox_id(), 1);
  bool has_error = false;
  for (auto& [k, v] : copy->headers) has_error |= (k == "outbox-error");
  EXPECT_TRUE(has_error);
  EXPECT_EQ(store.DeadLetters().count(1), 1u);
}

// Rows 1-100 are acknowledged; 101-149 are in flight (their reports held) when producing row 150
// raises a fatal error. The relay purges, rebuilds the producer and sends 101-300 again.
TEST(Relay, FatalProducerErrorRebuildsTheProducerAndLosesNothing) {
  FakeStore store;
  FakeBroker broker;
  broker.hold_from = 101;
  bool fired = false;  // under broker.mu_ (on_produce runs there)
  broker.on_produce = [&](const testing::Sent& s) {
    if (s.outbox_id() != 150 || fired) return Status::Ok();
    size_t persisted = 0;  // the broker's own record; broker.mu_ is held
    for (const auto& sent : broker.log_) persisted += sent.outcome == Outcome::kPersisted;
    if (persisted < 100) return Status::QueueFull("waiting for the first batch's reports");
    fired = true;
    broker.hold_from = INT64_MAX;
    return Status::Fatal("OUT_OF_ORDER_SEQUENCE_NUMBER (injected)");
  };
  for (int i = 1; i <= 300; ++i) store.Add(i, "t", "k" + std::to_string(i % 3), "v");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  EXPECT_EQ(broker.producers_built, 2);
  EXPECT_EQ(relay.stats().producer_rebuilds, 1);
  // The scenario happened: reports before the error were acks, and the in-flight rows were purged.
  std::set<int64_t> acked_before, purged;
  bool after = false;
  for (const auto& sent : broker.Log()) {
    if (sent.outcome == Outcome::kRetriable) {
      purged.insert(sent.outbox_id());
      after = true;
    } else if (!after) {
      acked_before.insert(sent.outbox_id());
    }
  }
  EXPECT_EQ(acked_before, Range(1, 100));
  EXPECT_EQ(purged, Range(101, 149));
  EXPECT_EQ(PersistedIds(broker), Range(1, 300));
  EXPECT_EQ(RemovedIds(store), Range(1, 300));
  ExpectPerKeyOrder(broker.Persisted());
}

// The connection fails mid-stream (at FetchBatch / MarkSent, after 100 rows were removed), as well
// as at start-up: the relay reconnects, takes leadership again and resumes without loss.
TEST(Relay, StoreFailureReconnectsAndResumes) {
  FakeStore store;
  FakeBroker broker;
  for (int i = 1; i <= 400; ++i) store.Add(i, "t", "k" + std::to_string(i % 5), "v");
  store.FailNext(3);
  store.FailAfterRemoved(100, 3);
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  EXPECT_EQ(store.injected_mid_stream(), 3);
  EXPECT_GT(store.rows_at_first_injection(), 0u) << "the failure hit after the stream ended";
  EXPECT_GE(store.leads(), 2);  // took leadership again after the connection was lost
  EXPECT_GE(relay.stats().leadership_terms, 2);
  EXPECT_EQ(PersistedIds(broker), Range(1, 400));
  EXPECT_EQ(RemovedIds(store), Range(1, 400));
  ExpectPerKeyOrder(broker.Persisted());
}

TEST(Relay, StandbyDoesNotDeliverUntilItLeads) {
  FakeStore store;
  FakeBroker broker;
  store.SetLeaderElsewhere(true);
  store.Add(1, "t", "k", "v");
  RunningRelay relay(TestConfig(), store, broker);
  // Several attempts to lead, all refused: nothing may have been produced meanwhile.
  ASSERT_TRUE(Eventually([&] { return store.lead_attempts() >= 5; }));
  EXPECT_TRUE(broker.Log().empty());
  EXPECT_EQ(relay.stats().produced, 0);
  store.SetLeaderElsewhere(false);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
}

TEST(Relay, QueueFullIsBackPressureNotAnError) {
  FakeStore store;
  FakeBroker broker;
  broker.queue_capacity = 3;
  for (int i = 1; i <= 200; ++i) store.Add(i, "t", "k", "v");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  EXPECT_EQ(broker.Persisted().size(), 200u);
  EXPECT_EQ(relay.stats().rewinds, 0);
}

// SIGTERM with 100 messages in flight: the broker acknowledges rows 1-60 during the shutdown
// wait and never 61-100. The relay removes exactly 1-60 and keeps the rest.
TEST(Relay, ShutdownMidBatchRemovesOnlyWhatWasAcknowledged) {
  LogCounter log;
  FakeStore store;
  FakeBroker broker;
  for (int i = 1; i <= 100; ++i) store.Add(i, "t", "k" + std::to_string(i % 4), "v");
  broker.hold_reports = true;
  Config c = TestConfig();
  c.relay.shutdown_timeout = Millis(2000);
  RunningRelay relay(c, store, broker);
  ASSERT_TRUE(Eventually([&] { return relay.stats().produced == 100; }));
  relay.RequestStop();
  ASSERT_TRUE(Eventually([&] { return log.Count("stopping: waiting up to") > 0; }));
  {
    std::lock_guard l(broker.mu_);
    broker.hold_from = 61;
  }
  broker.hold_reports = false;
  relay.Stop();
  EXPECT_EQ(PersistedIds(broker), Range(1, 60));  // the acknowledgements did arrive
  EXPECT_EQ(RemovedIds(store), Range(1, 60));
  EXPECT_EQ(store.Remaining(), Range(61, 100));
  EXPECT_EQ(relay.stats().acknowledged, 60);
}

// Stalled on Kafka (max_in_flight reached, no reports) the relay sends no round, but it
// still proves its leadership to the store (PostgreSQL would end a silent session); when the proof
// fails (its session was ended meanwhile) it steps down at once and removes nothing.
TEST(Relay, StalledOnKafkaItStillProvesLeadershipAndStepsDownWhenTheProofFails) {
  FakeStore store;
  FakeBroker broker;
  broker.hold_reports = true;
  for (int i = 1; i <= 3000; ++i) store.Add(i, "t", "k" + std::to_string(i % 7), "v");
  Config c = TestConfig();
  RunningRelay relay(c, store, broker);
  ASSERT_TRUE(Eventually([&] { return relay.stats().produced >= c.relay.max_in_flight; }));
  std::this_thread::sleep_for(Millis(50));  // stalled: nothing more is fetched or produced
  ASSERT_EQ(store.leads(), 1);
  store.FailNext(1, Status::Unavailable("injected: the session was ended"));
  EXPECT_TRUE(Eventually([&] { return store.leads() >= 2; }, Millis(2000)))
      << "the stalled relay never noticed that it lost its session";
  relay.Stop();
  EXPECT_TRUE(store.Removed().empty());
}

// Removal is decoupled from fetching. A trickle of rows, each fetched in a round of its
// own, is removed in a few larger statements (batch_size rows, or the oldest acknowledged row
// waited remove_interval), not one statement per round; and every row is still removed.
TEST(Relay, ATrickleIsRemovedInFewStatementsNotOnePerRound) {
  FakeStore store;
  FakeBroker broker;
  Config c = TestConfig();
  c.relay.remove_interval = Millis(300);
  RunningRelay relay(c, store, broker);
  const int n = 30;
  for (int i = 1; i <= n; ++i) {
    store.Add(i, "t", "k" + std::to_string(i % 7), "v");
    ASSERT_TRUE(Eventually([&] { return relay.stats().acknowledged >= i; }));
  }
  const int fetches = store.fetches();
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }, Millis(3000)));
  relay.Stop();
  EXPECT_EQ(RemovedIds(store), Range(1, n));
  EXPECT_GE(fetches, n) << "each row of the trickle should have had a round of its own";
  // 30 acknowledgements, each within a few ms on the fake broker: well inside 300 ms per
  // statement, even on a loaded machine (one round per row: the old code ran ~30 statements).
  EXPECT_LE(store.removal_statements(), 6);
}

// The pause between caught-up rounds waits; its last fraction of a millisecond used to
// be a spin of Poll(0) (the remaining time was truncated to whole milliseconds).
TEST(Relay, ThePauseBetweenCaughtUpRoundsWaitsInsteadOfSpinning) {
  FakeStore store;
  FakeBroker broker;
  Config c = TestConfig();
  c.relay.idle_poll_interval = Millis(5);
  c.relay.idle_grace = Millis(1000);  // stays in the polling state throughout
  RunningRelay relay(c, store, broker);
  const int n = 20;
  for (int i = 1; i <= n; ++i) {
    store.Add(i, "t", "k", "v");
    ASSERT_TRUE(Eventually([&] { return relay.stats().acknowledged >= i; }));
  }
  relay.Stop();
  // Each round serves reports without waiting once or twice (before it starts, and while the
  // store works); a spin adds hundreds per pause.
  EXPECT_LE(broker.zero_timeout_polls.load(), 4 * store.fetches()) << store.fetches() << " fetches";
}

// Waking without a pause: rows that arrive slower than relay.sleep_below_rate send the
// relay to sleep on LISTEN as soon as it caught up (the next commit notifies), instead of polling
// every idle_poll_interval through idle_grace. With sleep_below_rate = 0 it polls as before.
int SleepsWhileRowsTrickleIn(int sleep_below_rate) {
  FakeStore store;
  FakeBroker broker;
  Config c = TestConfig();
  c.relay.idle_poll_interval = Millis(5);
  c.relay.idle_grace = Millis(5000);  // longer than the whole test: only the rate may end it
  c.relay.sleep_below_rate = sleep_below_rate;
  RunningRelay relay(c, store, broker);
  const int n = 6;
  for (int i = 1; i <= n; ++i) {
    store.Add(i, "t", "k", "v");
    EXPECT_TRUE(Eventually([&] { return relay.stats().acknowledged >= i; }));
    // 10 rows a second at most (the pause stretches on a loaded machine: slower still).
    std::this_thread::sleep_for(Millis(100));
  }
  EXPECT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  return store.sleeps.load();
}

TEST(Relay, SlowArrivalsSleepAsSoonAsCaughtUp) {
  // The rate is known from the second row on: each of rows 2..6 is followed by a sleep.
  EXPECT_GE(SleepsWhileRowsTrickleIn(50), 5);
}

TEST(Relay, WithoutSleepBelowRateTheRelayPollsThroughTheGrace) {
  EXPECT_EQ(SleepsWhileRowsTrickleIn(0), 0);
}

}  // namespace
}  // namespace outboxd

namespace outboxd {
namespace {

// A rescan request above a row the relay has not sent yet (a row it rewound to, or any unsent row
// at a term's start): the fetch returns that lower row first, so the relay rewinds below the
// request. It must still clear the request it read, or every later fetch sees it again and
// produces nothing.
TEST(Relay, RescanRequestAboveAnUnsentRowIsClearedAndEveryRowDelivered) {
  FakeStore store;
  FakeBroker broker;
  for (int i = 1; i <= 20; ++i) store.Add(i, "t", "k" + std::to_string(i % 3), "v");
  store.RequestRescan(15);
  RunningRelay relay(TestConfig(), store, broker);
  EXPECT_TRUE(Eventually([&] { return store.Remaining().empty(); }, Millis(3000)))
      << store.Remaining().size() << " rows never delivered";
  relay.Stop();
  EXPECT_FALSE(store.rescan_request()) << "the request read was never cleared";
  EXPECT_EQ(PersistedIds(broker), Range(1, 20));
}

// The same after a Kafka failure: the relay rewound to row 5 when a command asked to rescan from
// row 15 (the sequence of a requeue during an outage).
TEST(Relay, RescanRequestedWhileRecoveringFromAFailureDoesNotStopDelivery) {
  FakeStore store;
  FakeBroker broker;
  bool failed = false;  // under broker.mu_ (decide runs there)
  broker.decide = [&](const testing::Sent& s) {
    if (s.outbox_id() == 5 && !failed) {
      failed = true;
      store.RequestRescan(15);
      return Outcome::kRetriable;
    }
    return Outcome::kPersisted;
  };
  for (int i = 1; i <= 20; ++i) store.Add(i, "t", "k" + std::to_string(i % 3), "v");
  RunningRelay relay(TestConfig(), store, broker);
  EXPECT_TRUE(Eventually([&] { return store.Remaining().empty(); }, Millis(3000)))
      << store.Remaining().size() << " rows never delivered";
  relay.Stop();
  EXPECT_FALSE(store.rescan_request());
  EXPECT_EQ(PersistedIds(broker), Range(1, 20));
}

// A row for a topic Kafka refuses (it does not exist yet; librdkafka then fails producev at once)
// holds back that topic's rows only: every row of the other topic is delivered and removed while
// it waits in the outbox, and once the topic appears it is delivered, with its key's later row
// after it.
TEST(Relay, RowForAMissingTopicWaitsWhileOtherTopicsFlow) {
  FakeStore store;
  FakeBroker broker;
  std::atomic<bool> created{false};
  broker.on_produce = [&](const testing::Sent& s) {
    if (s.topic == "missing" && !created) return Status::TopicUnavailable("Local: Unknown topic");
    return Status::Ok();
  };
  for (int i = 1; i <= 200; ++i) {
    const bool stray = i == 10 || i == 150;
    store.Add(i, stray ? "missing" : "orders", stray ? "m" : "k" + std::to_string(i % 5), "v");
  }
  RunningRelay relay(TestConfig(), store, broker);
  EXPECT_TRUE(Eventually([&] {
    return store.Remaining() == std::set<int64_t>{10, 150};
  })) << store.Remaining().size()
      << " rows left";
  for (int i = 201; i <= 300; ++i) store.Add(i, "orders", "k" + std::to_string(i % 5), "v");
  EXPECT_TRUE(Eventually([&] {
    return store.Remaining() == std::set<int64_t>{10, 150};
  })) << "rows committed later flow too";
  EXPECT_TRUE(store.DeadLetters().empty()) << "0 = never dead-lettered";
  created = true;
  EXPECT_TRUE(Eventually([&] { return store.Remaining().empty(); }, Millis(10000)));
  relay.Stop();
  std::vector<int64_t> missing_order;
  for (const auto& sent : broker.Persisted()) {
    if (sent.topic == "missing") missing_order.push_back(sent.outbox_id());
  }
  EXPECT_EQ(missing_order, (std::vector<int64_t>{10, 150}));
  ExpectPerKeyOrder(broker.Persisted());
}

// The same when the refusal comes in the delivery report (librdkafka fails queued messages with
// "Unknown topic" after topic.metadata.propagation.max.ms, and with TOPIC_AUTHORIZATION_FAILED
// when the ACLs forbid the topic): the other topic is not sent again or stopped.
TEST(Relay, TopicRefusedInTheReportWaitsWhileOtherTopicsFlow) {
  FakeStore store;
  FakeBroker broker;
  std::atomic<bool> authorized{false};
  broker.decide = [&](const testing::Sent& s) {
    if (s.topic == "secret" && !authorized) return Outcome::kTopicUnavailable;
    return Outcome::kPersisted;
  };
  for (int i = 1; i <= 200; ++i) {
    const bool secret = i % 50 == 7;
    store.Add(i, secret ? "secret" : "orders", (secret ? "s" : "k") + std::to_string(i % 3), "v");
  }
  RunningRelay relay(TestConfig(), store, broker);
  const std::set<int64_t> secret{7, 57, 107, 157};
  EXPECT_TRUE(Eventually([&] { return store.Remaining() == secret; }))
      << store.Remaining().size() << " rows left";
  size_t orders_sent = 0;
  for (const auto& sent : broker.Log()) orders_sent += sent.topic == "orders";
  EXPECT_EQ(orders_sent, 196u) << "no row of the other topic was sent twice";
  // A refusal is no failed delivery: no rewind, so no back-off pause for the other topic either
  // (each rewind waits up to backoff.max, 10 s by default, with nothing flowing).
  EXPECT_EQ(relay.stats().rewinds, 0);
  authorized = true;
  EXPECT_TRUE(Eventually([&] { return store.Remaining().empty(); }, Millis(10000)));
  relay.Stop();
  ExpectPerKeyOrder(broker.Persisted());
}

// relay.topic_unavailable_dead_letter_after: once the topic was refused that long, its waiting
// rows are dead-lettered with the error, and the other topics never stopped.
TEST(Relay, RowsOfATopicRefusedPastTheBoundAreDeadLettered) {
  FakeStore store;
  FakeBroker broker;
  broker.on_produce = [&](const testing::Sent& s) {
    if (s.topic == "missing") return Status::TopicUnavailable("Local: Unknown topic");
    return Status::Ok();
  };
  for (int i = 1; i <= 100; ++i) store.Add(i, i == 20 ? "missing" : "orders", "k", "v");
  Config c = TestConfig();
  c.relay.topic_unavailable_dead_letter_after = Millis(50);
  RunningRelay relay(c, store, broker);
  EXPECT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  auto dead = store.DeadLetters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_NE(dead[20].find("missing"), std::string::npos) << dead[20];
  EXPECT_NE(dead[20].find("Unknown topic"), std::string::npos) << dead[20];
  EXPECT_EQ(store.Removed().size(), 99u);
}

}  // namespace
}  // namespace outboxd
