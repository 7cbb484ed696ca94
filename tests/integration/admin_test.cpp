// The admin room against real services: /metrics, /healthz and /readyz of a running leader and a
// standby (and `promtool check metrics` on the output), JSON logs, and the admin commands
// (dead-letters list/requeue/drop, replay, status --json), each run while a leader delivers,
// with an independent Kafka consumer as the witness.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../support/integration.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

std::string AdminToml(int port, const std::string& log_format = "text") {
  return "[admin]\nlisten = \"127.0.0.1:" + std::to_string(port) + "\"\n[log]\nformat = \"" +
         log_format + "\"\n";
}

httplib::Result Get(int port, const std::string& path) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(2, 0);
  c.set_read_timeout(10, 0);
  return c.Get(path.c_str());
}

// The value of an unlabelled sample (or labelled, when `series` includes the labels).
std::optional<double> Sample(const std::string& metrics, const std::string& series) {
  std::istringstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return std::nullopt;
}

std::optional<double> Scrape(int port, const std::string& series) {
  auto r = Get(port, "/metrics");
  if (!r || r->status != 200) return std::nullopt;
  return Sample(r->body, series);
}

class AdminIntegrationTest : public ServicesTest {
 protected:
  // Runs an admin command with the process's config; exit code and output.
  std::pair<int, std::string> Command(const OutboxdProcess& p, std::vector<std::string> args) {
    args.push_back("--config");
    args.push_back(p.config_path());
    return RunOutboxd(args);
  }
  nlohmann::json Json(const std::pair<int, std::string>& result) {
    EXPECT_EQ(result.first, 0) << result.second;
    return nlohmann::json::parse(result.second, nullptr, false);
  }
  // Copies of each outbox id the consumer has seen.
  static std::map<int64_t, int> Copies(const std::vector<Record>& records) {
    std::map<int64_t, int> n;
    for (const Record& r : records) ++n[r.outbox_id()];
    return n;
  }
  // A row that the relay must dead-letter: headers that are not a JSON object (written around
  // outbox.publish, which refuses them since schema 003, as an older writer could have).
  int64_t InsertPoison(const std::string& key) {
    return std::stoll(
        db_->Scalar("INSERT INTO outbox.messages (topic, key, payload, headers) "
                    "VALUES ('" +
                    topic_ + "', '" + key +
                    "', 'poison', '\"not an object\"') "
                    "RETURNING id"));
  }
  int64_t Count(const std::string& table) {
    return std::stoll(db_->Scalar("SELECT count(*) FROM " + table));
  }
};

TEST_F(AdminIntegrationTest, MetricsAndProbesOfALeaderAndAStandby) {
  const int port_a = FreePort(), port_b = FreePort();
  OutboxdProcess a(services_, *db_, "", AdminToml(port_a));
  a.Start();
  ASSERT_TRUE(WaitFor(
      [&] {
        auto r = Get(port_a, "/readyz");
        return r && r->status == 200 && nlohmann::json::parse(r->body)["role"] == "leader";
      },
      30s))
      << a.Log();
  ExpectedMessages expected = PublishMany(300, 10, topic_);
  Consumer consumer(services_, topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(expected), 60s));
  ASSERT_TRUE(WaitFor([&] { return Scrape(port_a, "outboxd_messages_removed_total") >= 300; }, 20s))
      << a.Log();
  auto metrics = Get(port_a, "/metrics");
  ASSERT_TRUE(metrics);
  const std::string& m = metrics->body;
  EXPECT_EQ(Sample(m, "outboxd_backlog_messages"), 0) << m;
  EXPECT_EQ(Sample(m, "outboxd_oldest_unsent_age_seconds"), 0);
  EXPECT_GE(Sample(m, "outboxd_messages_acknowledged_total"), 300);
  EXPECT_GE(Sample(m, "outboxd_commit_to_ack_seconds_count"), 300);
  EXPECT_GT(Sample(m, "outboxd_database_round_trip_seconds_count{statement=\"fetch\"}"), 0);
  EXPECT_EQ(Sample(m, "outboxd_leader"), 1);
  EXPECT_EQ(Sample(m, "outboxd_outbox_leader_present"), 1);
  EXPECT_EQ(Sample(m, "outboxd_database_scrape_success"), 1);
  EXPECT_EQ(Sample(m, "outboxd_dead_letters"), 0);
  EXPECT_EQ(Sample(m, "outboxd_half_messages{state=\"prepared\"}"), 0);

  // promtool agrees with the exposition (Debian's prometheus package).
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) {
    if (InCi()) ADD_FAILURE() << "promtool missing under CI (scripts/deps.sh installs prometheus)";
  } else {
    std::string file = TestFile("metrics.txt", m);
    FILE* p = popen(("promtool check metrics < '" + file + "' 2>&1").c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    int status = pclose(p);
    EXPECT_EQ(WEXITSTATUS(status), 0) << "promtool check metrics:\n" << out;
    EXPECT_EQ(out, "") << "promtool check metrics found problems";
  }

  // A transaction that took an xid and stays open: the long-transaction gauge sees it.
  pg::Connection holder = db_->Connect();
  ASSERT_TRUE(holder.Exec("BEGIN; SELECT pg_current_xact_id()").ok());
  EXPECT_TRUE(
      WaitFor([&] { return Scrape(port_a, "outboxd_oldest_transaction_age_seconds") >= 2; }, 20s));
  ASSERT_TRUE(holder.Exec("ROLLBACK").ok());
  EXPECT_TRUE(
      WaitFor([&] { return Scrape(port_a, "outboxd_oldest_transaction_age_seconds") < 2; }, 20s));

  // A second instance stands by: ready (it can take over), not leading.
  OutboxdProcess b(services_, *db_, "", AdminToml(port_b));
  b.Start();
  ASSERT_TRUE(WaitFor(
      [&] {
        auto r = Get(port_b, "/readyz");
        return r && r->status == 200 && nlohmann::json::parse(r->body)["role"] == "standby";
      },
      30s))
      << b.Log();
  EXPECT_EQ(Scrape(port_b, "outboxd_leader"), 0);
  EXPECT_EQ(Scrape(port_b, "outboxd_outbox_leader_present"), 1);
  auto health = Get(port_b, "/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);

  // The leader goes: the standby takes over, and says so.
  a.Kill(SIGKILL);
  a.Wait(10s);
  EXPECT_TRUE(WaitFor([&] { return Scrape(port_b, "outboxd_leader") == 1; }, 40s)) << b.Log();
  b.Kill(SIGTERM);
  EXPECT_EQ(b.Wait(30s), 0);
}

TEST_F(AdminIntegrationTest, RequeuedDeadLettersArriveWhileALeaderRuns) {
  const int port = FreePort();
  OutboxdProcess outboxd(services_, *db_, "", AdminToml(port, "json"));
  outboxd.Start();
  Consumer consumer(services_, topic_);
  ExpectedMessages before = PublishMany(20, 1, topic_);  // key-0
  const int64_t p1 = InsertPoison("key-0");
  const int64_t p2 = InsertPoison("key-0");
  ASSERT_TRUE(WaitFor([&] { return Count("outbox.dead_letters") == 2; }, 30s)) << outboxd.Log();
  // The relay moves past them: later rows, delivered.
  ExpectedMessages after = PublishMany(20, 1, topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(after), 60s));

  auto list = Json(Command(outboxd, {"dead-letters", "list", "--json"}));
  ASSERT_EQ(list["total"], 2) << list.dump();
  EXPECT_EQ(list["dead_letters"][0]["id"], p1);
  EXPECT_EQ(list["dead_letters"][1]["id"], p2);
  EXPECT_NE(list["dead_letters"][0]["error"].get<std::string>().find("JSON object"),
            std::string::npos);
  auto text = Command(outboxd, {"dead-letters", "list", "--limit", "1"});
  EXPECT_EQ(text.first, 0);
  EXPECT_NE(text.second.find("2 dead letter(s), the first 1 shown"), std::string::npos)
      << text.second;

  // Unknown ids: refused, nothing moves.
  auto unknown = Command(outboxd, {"dead-letters", "requeue", std::to_string(p1), "999999"});
  EXPECT_EQ(unknown.first, 2) << unknown.second;
  EXPECT_NE(unknown.second.find("not in outbox.dead_letters: 999999"), std::string::npos);
  EXPECT_EQ(Count("outbox.dead_letters"), 2);

  // The operator fixes the rows, then requeues them: they arrive with their original outbox-id,
  // in id order, while the leader keeps running.
  db_->Exec("UPDATE outbox.dead_letters SET headers = '{\"fixed\": \"yes\"}'");
  auto requeued = Json(Command(outboxd, {"dead-letters", "requeue", "--all", "--json"}));
  EXPECT_EQ(requeued["requeued"], nlohmann::json::array({p1, p2}));
  ASSERT_TRUE(consumer.ReadUntilIds({p1, p2}, 30s))
      << "requeued rows never arrived: the running relay did not look below its fetch position\n"
      << outboxd.Log();
  std::vector<int64_t> order;
  for (const Record& r : consumer.records()) {
    if (r.outbox_id() == p1 || r.outbox_id() == p2) {
      order.push_back(r.outbox_id());
      EXPECT_EQ(r.Header("fixed"), "yes");
      EXPECT_EQ(r.value, "poison");
    }
  }
  EXPECT_EQ(order, (std::vector<int64_t>{p1, p2}));
  EXPECT_EQ(Count("outbox.dead_letters"), 0);
  EXPECT_TRUE(WaitFor([&] { return Count("outbox.messages") == 0; }, 20s));
  EXPECT_EQ(db_->Scalar("SELECT rescan_from FROM outbox.relay_state"), "");  // cleared
  // Nothing was lost or reordered around them.
  ExpectedMessages all = before;
  all.insert(after.begin(), after.end());
  ExpectedMessages markers = PublishMarkers(topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(markers), 30s));
  std::vector<Record> others;
  for (const Record& r : consumer.records()) {
    if (r.outbox_id() != p1 && r.outbox_id() != p2) others.push_back(r);
  }
  all.insert(markers.begin(), markers.end());
  DeliveryCheck check = CheckDelivery(all, others, kPartitions);
  EXPECT_TRUE(check.ok()) << check.Summary();

  // JSON logs: every line is one object; the dead-letter lines carry message_id and error.
  std::istringstream log(outboxd.Log());
  std::string line;
  int lines = 0, dead_letter_lines = 0;
  while (std::getline(log, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << "not a JSON line: " << line;
    ASSERT_TRUE(j.contains("time") && j.contains("level") && j.contains("message")) << line;
    ++lines;
    if (j["message"].get<std::string>().find("moved to outbox.dead_letters") != std::string::npos) {
      ++dead_letter_lines;
      EXPECT_TRUE(j["message_id"] == p1 || j["message_id"] == p2) << line;
      EXPECT_NE(j["error"].get<std::string>().find("JSON object"), std::string::npos) << line;
    }
  }
  EXPECT_GT(lines, 2);
  EXPECT_EQ(dead_letter_lines, 2);
}

// The same admin path in exactly-once mode: a requeued dead letter reaches a running exactly-once
// leader (its rounds between transactions look for the rescan request too) and arrives once.
TEST_F(AdminIntegrationTest, RequeueReachesAnExactlyOnceLeader) {
  OutboxdProcess outboxd(
      services_, *db_, "delivery = \"exactly_once\"\ntransactional_id = \"admin-" + topic_ + "\"\n",
      AdminToml(FreePort()));
  outboxd.Start();
  Consumer consumer(services_, topic_);
  ExpectedMessages before = PublishMany(10, 1, topic_);
  const int64_t p1 = InsertPoison("key-0");
  ASSERT_TRUE(WaitFor([&] { return Count("outbox.dead_letters") == 1; }, 60s)) << outboxd.Log();
  ExpectedMessages after = PublishMany(10, 1, topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(after), 60s)) << outboxd.Log();
  db_->Exec("UPDATE outbox.dead_letters SET headers = '{\"fixed\": \"yes\"}'");
  auto requeued = Json(Command(outboxd, {"dead-letters", "requeue", "--all", "--json"}));
  EXPECT_EQ(requeued["requeued"], nlohmann::json::array({p1}));
  ASSERT_TRUE(consumer.ReadUntilIds({p1}, 30s))
      << "the requeued row never arrived at the exactly-once leader\n"
      << outboxd.Log();
  EXPECT_TRUE(WaitFor([&] { return Count("outbox.messages") == 0; }, 20s));
  EXPECT_EQ(Copies(consumer.records())[p1], 1);
}

// Hostile timing: the requeue commits while the leader drains a backlog with thousands of rows in
// flight. The rescan must wait for them: nothing is lost, nothing is sent twice, and every key
// keeps its order; the requeued rows arrive too.
TEST_F(AdminIntegrationTest, RequeueDuringADrainLosesAndDuplicatesNothing) {
  // linger.ms keeps produced rows unacknowledged for a while: a rescan that did not wait for
  // them would fetch and send them again.
  OutboxdProcess outboxd(services_, *db_, "batch_size = 200\nmax_in_flight = 2000",
                         "[admin]\nlisten = \"\"\n[kafka.properties]\n\"linger.ms\" = 200\n");
  outboxd.Start();
  Consumer consumer(services_, topic_);
  std::set<int64_t> poison;
  for (int i = 0; i < 5; ++i) poison.insert(InsertPoison("key-" + std::to_string(i)));
  ASSERT_TRUE(WaitFor([&] { return Count("outbox.dead_letters") == 5; }, 30s)) << outboxd.Log();
  db_->Exec("UPDATE outbox.dead_letters SET headers = '{}'");
  ExpectedMessages expected = PublishMany(30'000, 100, topic_);
  ASSERT_TRUE(WaitFor([&] { return Count("outbox.messages") < 28'000; }, 60s)) << outboxd.Log();
  auto requeued = Json(Command(outboxd, {"dead-letters", "requeue", "--all", "--json"}));
  const int64_t left = Count("outbox.messages");
  EXPECT_EQ(requeued["requeued"].size(), 5u);
  EXPECT_GT(left, 1'000) << "the drain ended before the requeue: no hostile timing";
  ASSERT_TRUE(consumer.ReadUntilIds(poison, 60s)) << outboxd.Log();
  ExpectedMessages markers = PublishMarkers(topic_);
  expected.insert(markers.begin(), markers.end());
  std::set<int64_t> all = Ids(expected);
  ASSERT_TRUE(consumer.ReadUntilIds(all, 90s));
  std::vector<Record> others;
  for (const Record& r : consumer.records()) {
    if (!poison.count(r.outbox_id())) others.push_back(r);
  }
  DeliveryCheck check = CheckDelivery(expected, others, kPartitions);
  EXPECT_TRUE(check.ok()) << check.Summary();
  EXPECT_EQ(check.duplicates, 0u) << check.Summary();
  auto copies = Copies(consumer.records());
  for (int64_t id : poison) EXPECT_EQ(copies[id], 1) << "requeued id " << id;
  std::cout << "requeue committed with " << left << " of 30000 rows still in the outbox\n";
}

TEST_F(AdminIntegrationTest, DropAndStatusJson) {
  OutboxdProcess outboxd(services_, *db_, "", "[admin]\nlisten = \"\"\n");
  outboxd.Start();
  const int64_t p1 = InsertPoison("k");
  const int64_t p2 = InsertPoison("k");
  ASSERT_TRUE(WaitFor([&] { return Count("outbox.dead_letters") == 2; }, 30s)) << outboxd.Log();
  auto status = Json(Command(outboxd, {"status", "--json"}));
  EXPECT_EQ(status["dead_letters"], 2) << status.dump();
  EXPECT_EQ(status["backlog"], 0);
  EXPECT_NE(status["leader"].get<std::string>().find("outboxd host="), std::string::npos);
  EXPECT_EQ(status["half_messages"]["prepared"], 0);

  auto refused = Command(outboxd, {"dead-letters", "drop", std::to_string(p1), "424242"});
  EXPECT_EQ(refused.first, 2) << refused.second;
  EXPECT_EQ(Count("outbox.dead_letters"), 2);
  auto dropped = Json(Command(outboxd, {"dead-letters", "drop", std::to_string(p2), "--json"}));
  EXPECT_EQ(dropped["dropped"], nlohmann::json::array({p2}));
  EXPECT_EQ(db_->Scalar("SELECT string_agg(id::text, ',') FROM outbox.dead_letters"),
            std::to_string(p1));
  EXPECT_EQ(Command(outboxd, {"dead-letters", "requeue"}).first, 2);  // neither ids nor --all
  // replay needs retain mode.
  auto replay = Command(outboxd, {"replay", "--from-id", "1"});
  EXPECT_EQ(replay.first, 2);
  EXPECT_NE(replay.second.find("relay.on_sent = \"retain\""), std::string::npos) << replay.second;
}

TEST_F(AdminIntegrationTest, ReplaySendsSentRowsAgainWhileALeaderRuns) {
  OutboxdProcess outboxd(services_, *db_, "on_sent = \"retain\"", "[admin]\nlisten = \"\"\n");
  outboxd.Start();
  Consumer consumer(services_, topic_);
  ExpectedMessages first = PublishMany(40, 4, topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(first), 60s));
  ASSERT_TRUE(WaitFor([&] { return Count("outbox.messages WHERE sent_at IS NULL") == 0; }, 20s));
  // More traffic after them, so the relay's fetch position is past the replayed range.
  ExpectedMessages second = PublishMany(10, 4, topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(second), 60s));

  const int64_t lo = first.begin()->first + 10, hi = lo + 9;
  auto replayed = Json(Command(outboxd, {"replay", "--from-id", std::to_string(lo), "--to-id",
                                         std::to_string(hi), "--json"}));
  EXPECT_EQ(replayed["replayed"], 10) << replayed.dump();
  EXPECT_EQ(replayed["from_id"], lo);
  EXPECT_EQ(replayed["to_id"], hi);
  ASSERT_TRUE(WaitFor(
      [&] {
        consumer.ReadFor(200ms);
        auto copies = Copies(consumer.records());
        for (int64_t id = lo; id <= hi; ++id) {
          if (copies[id] < 2) return false;
        }
        return true;
      },
      30s))
      << "replayed rows were not sent again\n"
      << outboxd.Log();
  // Only those: markers bound the wait for anything else.
  ExpectedMessages markers = PublishMarkers(topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(markers), 30s));
  auto copies = Copies(consumer.records());
  for (const auto& [id, e] : first) {
    EXPECT_EQ(copies[id], id >= lo && id <= hi ? 2 : 1) << "id " << id;
  }
  for (const auto& [id, e] : second) EXPECT_EQ(copies[id], 1) << "id " << id;
  EXPECT_TRUE(WaitFor([&] { return Count("outbox.messages WHERE sent_at IS NULL") == 0; }, 20s));

  // By time: everything created in the last hour, i.e. all of it.
  auto since = Json(Command(outboxd, {"replay", "--since", "1h", "--json"}));
  EXPECT_EQ(since["replayed"], static_cast<int>(first.size() + second.size() + markers.size()));
  auto none = Command(outboxd, {"replay", "--since", "2999-01-01 00:00:00+00"});
  EXPECT_EQ(none.first, 0) << none.second;
  EXPECT_NE(none.second.find("no sent row matches"), std::string::npos);
}

// Exactly-once recovery against rows put back by an operator. The leader dies (SIGKILL) right
// after a delivery, so the last committed checkpoint names the delivered rows; the operator then
// puts some of them back (replay, or requeue of a dead letter). The next leader's recovery removes
// the rows that checkpoint carried without sending them: it must not take the rows put back for
// them (that removed them unsent: lost). The witness reads read_committed (librdkafka's default).
std::string ExactlyOnceToml(const std::string& name, const std::string& more = "") {
  return "delivery = \"exactly_once\"\ntransactional_id = \"" + name + "\"\n" + more;
}

TEST_F(AdminIntegrationTest, ReplayedRowsAreSentAfterAnExactlyOnceLeaderDies) {
  const std::string relay = ExactlyOnceToml("replay-" + topic_, "on_sent = \"retain\"\n");
  OutboxdProcess first(services_, *db_, relay, "[admin]\nlisten = \"\"\n");
  first.Start();
  Consumer consumer(services_, topic_);
  ExpectedMessages sent = PublishMany(10, 2, topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(sent), 60s)) << first.Log();
  ASSERT_TRUE(WaitFor([&] { return Count("outbox.messages WHERE sent_at IS NULL") == 0; }, 20s))
      << first.Log();
  first.Kill(SIGKILL);
  ASSERT_TRUE(first.Wait(10s));
  const int64_t lo = sent.begin()->first, hi = sent.rbegin()->first;
  auto replayed = Json(Command(first, {"replay", "--from-id", std::to_string(lo), "--json"}));
  ASSERT_EQ(replayed["replayed"], 10) << replayed.dump();

  OutboxdProcess second(services_, *db_, relay, "[admin]\nlisten = \"\"\n");
  second.Start();
  const bool again = WaitFor(
      [&] {
        consumer.ReadFor(200ms);
        auto copies = Copies(consumer.records());
        for (int64_t id = lo; id <= hi; ++id) {
          if (copies[id] < 2) return false;
        }
        return true;
      },
      30s);
  ASSERT_TRUE(again) << "replayed rows were not sent again: the new leader's recovery took them "
                        "for the rows of the last checkpoint\n"
                     << second.Log();
  ExpectedMessages markers = PublishMarkers(topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(markers), 30s)) << second.Log();
  auto copies = Copies(consumer.records());
  for (int64_t id = lo; id <= hi; ++id) EXPECT_EQ(copies[id], 2) << "id " << id;
  EXPECT_TRUE(WaitFor([&] { return Count("outbox.messages WHERE sent_at IS NULL") == 0; }, 20s));
}

TEST_F(AdminIntegrationTest, RequeuedDeadLetterIsSentAfterAnExactlyOnceLeaderDies) {
  // With a dead-letter topic the poison row's copy travels in a transaction, so the checkpoint
  // names it (`dead=`).
  const std::string dead_topic = NewTopic("dlt", 1);
  const std::string relay =
      ExactlyOnceToml("requeue-" + topic_, "dead_letter_topic = \"" + dead_topic + "\"\n");
  OutboxdProcess first(services_, *db_, relay, "[admin]\nlisten = \"\"\n");
  first.Start();
  Consumer consumer(services_, topic_);
  Consumer dead_consumer(services_, dead_topic);
  const int64_t poison = InsertPoison("key-0");
  ASSERT_TRUE(dead_consumer.ReadUntilIds({poison}, 60s)) << first.Log();
  ASSERT_TRUE(WaitFor([&] { return Count("outbox.dead_letters") == 1; }, 20s)) << first.Log();
  ASSERT_EQ(Count("outbox.messages"), 0);
  first.Kill(SIGKILL);
  ASSERT_TRUE(first.Wait(10s));
  db_->Exec("UPDATE outbox.dead_letters SET headers = '{\"fixed\": \"yes\"}'");
  auto requeued = Json(Command(first, {"dead-letters", "requeue", "--all", "--json"}));
  ASSERT_EQ(requeued["requeued"], nlohmann::json::array({poison}));

  OutboxdProcess second(services_, *db_, relay, "[admin]\nlisten = \"\"\n");
  second.Start();
  ASSERT_TRUE(consumer.ReadUntilIds({poison}, 30s))
      << "the requeued row never arrived: the new leader's recovery dead-lettered it again ("
      << Count("outbox.dead_letters") << " dead letter(s) now)\n"
      << second.Log();
  ExpectedMessages markers = PublishMarkers(topic_);
  ASSERT_TRUE(consumer.ReadUntilIds(Ids(markers), 30s)) << second.Log();
  EXPECT_EQ(Copies(consumer.records())[poison], 1);
  for (const Record& r : consumer.records()) {
    if (r.outbox_id() == poison) {
      EXPECT_EQ(r.Header("fixed"), "yes");
    }
  }
  EXPECT_EQ(Count("outbox.dead_letters"), 0);
  EXPECT_TRUE(WaitFor([&] { return Count("outbox.messages") == 0; }, 20s));
}

}  // namespace
}  // namespace outboxd::testing
