// The relay against a fake store and a fake broker: what it removes, re-sends and keeps in order.
#include "relay.h"

#include <thread>

#include <gtest/gtest.h>

#include "../support/fakes.h"
#include "text.h"

namespace outboxd {
namespace {

using testing::Eventually;
using testing::FakeBroker;
using testing::FakeFactory;
using testing::FakeStore;
using Outcome = DeliveryReport::Outcome;

Config TestConfig() { return testing::FastRelayConfig(); }

// Runs a relay on its own thread for the life of the object.
class RunningRelay {
 public:
  RunningRelay(const Config& c, FakeStore& store, FakeBroker& broker)
      : relay_(c, store, FakeFactory(broker)), thread_([this] { status_ = relay_.Run(stop_); }) {}
  ~RunningRelay() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  const Relay::Stats& stats() const { return relay_.stats(); }

 private:
  std::atomic<bool> stop_{false};
  Relay relay_;
  Status status_;
  std::thread thread_;
};

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

// Issue 15, defect 4: values are the text jsonb_each_text gives, numbers never converted.
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

// Issue 15, defect 2: the error text quoting the headers is cut on a character boundary.
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

TEST(Relay, NothingIsRemovedWithoutAPersistedReport) {
  FakeStore store;
  FakeBroker broker;
  broker.hold_reports = true;  // the broker never answers
  for (int i = 1; i <= 50; ++i) store.Add(i, "t", "k", "v");
  RunningRelay relay(TestConfig(), store, broker);
  std::this_thread::sleep_for(Millis(100));
  relay.Stop();  // shutdown_timeout passes, the messages are purged
  EXPECT_EQ(store.Remaining().size(), 50u);
  EXPECT_TRUE(store.Removed().empty());
}

TEST(Relay, RetriableFailureResendsAndKeepsPerKeyOrder) {
  FakeStore store;
  FakeBroker broker;
  std::atomic<int> failures{0};
  // id 10 (key "a") fails twice; later rows of key "a" are acknowledged in between.
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
  // Row 12 (key "a", after 10) was acknowledged before 10 went through, but it was removed only
  // after 10: it was sent again after 10.
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

// Issue 15, defect 2: a poison row whose error text quotes multibyte headers is dead-lettered
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

TEST(Relay, FatalProducerErrorRebuildsTheProducerAndLosesNothing) {
  FakeStore store;
  FakeBroker broker;
  std::atomic<bool> fired{false};
  broker.on_produce = [&](const testing::Sent& s) {
    if (s.outbox_id() == 40 && !fired.exchange(true)) {
      return Status::Fatal("OUT_OF_ORDER_SEQUENCE_NUMBER (injected)");
    }
    return Status::Ok();
  };
  for (int i = 1; i <= 100; ++i) store.Add(i, "t", "k" + std::to_string(i % 3), "v");
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  EXPECT_EQ(broker.producers_built, 2);
  std::set<int64_t> ids;
  for (auto& s : broker.Persisted()) ids.insert(s.outbox_id());
  EXPECT_EQ(ids.size(), 100u);
  ExpectPerKeyOrder(broker.Persisted());
}

TEST(Relay, StoreFailureReconnectsAndResumes) {
  FakeStore store;
  FakeBroker broker;
  for (int i = 1; i <= 300; ++i) store.Add(i, "t", "k", "v");
  store.FailNext(3);
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  store.FailNext(1);
  for (int i = 301; i <= 400; ++i) store.Add(i, "t", "k", "v");
  ASSERT_TRUE(Eventually([&] { return store.Remaining().empty(); }));
  relay.Stop();
  std::set<int64_t> ids;
  for (auto& s : broker.Persisted()) ids.insert(s.outbox_id());
  EXPECT_EQ(ids.size(), 400u);
  ExpectPerKeyOrder(broker.Persisted());
}

TEST(Relay, StandbyDoesNotDeliverUntilItLeads) {
  FakeStore store;
  FakeBroker broker;
  store.SetLeaderElsewhere(true);
  store.Add(1, "t", "k", "v");
  RunningRelay relay(TestConfig(), store, broker);
  std::this_thread::sleep_for(Millis(50));
  EXPECT_TRUE(broker.Log().empty());
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

TEST(Relay, ShutdownMidBatchRemovesOnlyWhatWasAcknowledged) {
  FakeStore store;
  FakeBroker broker;
  std::atomic<int> served{0};
  broker.decide = [&](const testing::Sent&) {
    ++served;
    return Outcome::kPersisted;
  };
  for (int i = 1; i <= 100; ++i) store.Add(i, "t", "k", "v");
  broker.hold_reports = true;
  RunningRelay relay(TestConfig(), store, broker);
  ASSERT_TRUE(Eventually([&] { return !broker.Log().empty() || relay.stats().produced >= 100; }));
  relay.Stop();  // nothing acknowledged: purged at the timeout
  EXPECT_EQ(store.Remaining().size(), 100u);
  EXPECT_EQ(served, 0);
}

}  // namespace
}  // namespace outboxd
