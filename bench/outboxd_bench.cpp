// outboxd_bench: the measuring side of bench/run.sh.
//   load         put N messages into an outbox (outboxd's, or the Debezium peer's table)
//   db-ceiling   the relay's own fetch + remove loop (PgOutboxStore) without Kafka (--remove 0:
//                fetch only)
//   kafka-ceiling the same messages through KafkaPublisher without the database
//   topic        create a topic (LogAppendTime, so record timestamps are broker append times)
//   wait-topic   wait until a topic holds N records; prints the time the last one was appended
//   paced        commit single-message transactions at a fixed rate; records commit times
//   latency      match a topic's records to the commit times: p50 / p99 / max
//   visible      run beside paced: a live read_committed consumer; commit -> the record reached it
// Every command prints one JSON object on stdout.
#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "config.h"
#include "kafka/producer.h"
#include "outbox_store.h"
#include "pg/connection.h"

using namespace outboxd;
using Clock = std::chrono::steady_clock;

namespace {

std::map<std::string, std::string> Args(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int i = 2; i + 1 < argc; i += 2) a[std::string(argv[i]).substr(2)] = argv[i + 1];
  return a;
}

std::string Get(std::map<std::string, std::string>& a, const std::string& k,
                const std::string& def = "") {
  auto it = a.find(k);
  if (it != a.end()) return it->second;
  if (def.empty()) {
    std::cerr << "missing --" << k << "\n";
    std::exit(2);
  }
  return def;
}

[[noreturn]] void Die(const std::string& what) {
  std::cerr << "outboxd_bench: " << what << "\n";
  std::exit(1);
}

pg::Connection Connect(const std::string& conninfo) {
  auto c = pg::Connection::Open(conninfo, "outboxd_bench");
  if (!c.ok()) Die(c.status().message());
  return std::move(*c);
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int64_t WallMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The payload: 200 bytes of JSON whose "seq" lets the latency consumer find the commit time.
std::string PayloadSql(const std::string& seq_expr, int size) {
  return "'{\"seq\":' || " + seq_expr + " || ',\"pad\":\"' || repeat('x', greatest(0, " +
         std::to_string(size) + " - 20 - length((" + seq_expr + ")::text))) || '\"}'";
}

int Load(std::map<std::string, std::string>& a) {
  pg::Connection c = Connect(Get(a, "conninfo"));
  long n = std::stol(Get(a, "count")), keys = std::stol(Get(a, "keys", "1000"));
  int size = std::stoi(Get(a, "size", "200"));
  std::string topic = Get(a, "topic"), target = Get(a, "target", "outboxd");
  long start = std::stol(Get(a, "start", "1"));
  auto t0 = Clock::now();
  for (long from = start; from < start + n; from += 100'000) {
    long to = std::min(start + n - 1, from + 99'999);
    std::string range =
        "generate_series(" + std::to_string(from) + ", " + std::to_string(to) + ") AS i";
    std::string sql =
        target == "outboxd"
            ? "SELECT count(outbox.publish('" + topic + "', 'key-' || (i % " +
                  std::to_string(keys) + "), " + PayloadSql("i", size) + ")) FROM " + range
            : "INSERT INTO " + target +
                  " (aggregatetype, aggregateid, type, payload) SELECT 'bench', 'key-' || (i % " +
                  std::to_string(keys) + "), 'e', (" + PayloadSql("i", size) + ")::jsonb FROM " +
                  range;
    if (Status s = c.Exec(sql); !s.ok()) Die(s.message());
  }
  std::printf("{\"loaded\": %ld, \"seconds\": %.3f}\n", n, Seconds(t0, Clock::now()));
  return 0;
}

int DbCeiling(std::map<std::string, std::string>& a) {
  Config config;
  config.postgres.conninfo = Get(a, "conninfo");
  config.relay.batch_size = std::stoi(Get(a, "batch", "1000"));
  // --remove 0: fetch only, nothing removed (what the outbox as a log would cost: no DELETE)
  const bool remove = Get(a, "remove", "1") != "0";
  PgOutboxStore store(config);
  if (Status s = store.Lead(); !s.ok()) Die(s.message());
  long total = 0;
  std::vector<OutboxRow> rows;
  std::vector<int64_t> ids;
  auto t0 = Clock::now();
  // The relay's own round: one pipelined round trip removes the previous batch and fetches the
  // next (StartRound / FinishRound), as Relay::Step does, without Kafka in between.
  for (;;) {
    if (Status s = store.StartRound(std::move(ids)); !s.ok()) Die(s.message());
    while (!store.RoundReady(Millis(100))) {
    }
    if (Status s = store.FinishRound(&rows); !s.ok()) Die(s.message());
    ids.clear();
    if (rows.empty()) break;
    if (remove) {
      for (const auto& r : rows) ids.push_back(r.id);
    }
    total += static_cast<long>(rows.size());
  }
  double secs = Seconds(t0, Clock::now());
  std::printf("{\"messages\": %ld, \"seconds\": %.3f, \"msgs_per_s\": %.0f}\n", total, secs,
              total / secs);
  return 0;
}

int KafkaCeiling(std::map<std::string, std::string>& a) {
  KafkaConfig kc;
  kc.bootstrap_servers = Get(a, "bootstrap");
  // --inflight N: max.in.flight.requests.per.connection (outboxd's default is 1).
  if (a.count("inflight")) kc.properties["max.in.flight.requests.per.connection"] = a["inflight"];
  long n = std::stol(Get(a, "count")), keys = std::stol(Get(a, "keys", "1000"));
  int size = std::stoi(Get(a, "size", "200"));
  auto pub = KafkaPublisher::Create(kc);
  if (!pub.ok()) Die(pub.status().message());
  std::string topic = Get(a, "topic");
  std::vector<std::optional<std::string>> key_names;
  for (long k = 0; k < keys; ++k) key_names.emplace_back("key-" + std::to_string(k));
  long acked = 0, failed = 0;
  std::vector<DeliveryReport> reports;
  auto serve = [&](Millis t) {
    reports.clear();
    (*pub)->Poll(t, &reports);
    for (auto& r : reports) (r.proven() ? acked : failed)++;
  };
  auto t0 = Clock::now();
  for (long i = 1; i <= n; ++i) {
    // Built per message, as the relay builds each from its row.
    std::optional<std::string> payload =
        "{\"seq\":" + std::to_string(i) + ",\"pad\":\"" +
        std::string(std::max<long>(0, size - 20 - std::to_string(i).size()), 'x') + "\"}";
    Headers headers{{"outbox-id", std::to_string(i)}};
    OutgoingMessage m{&topic, &key_names[i % keys], &payload, &headers};
    for (;;) {
      Status s = (*pub)->Produce(m, static_cast<uint64_t>(i));
      if (s.ok()) break;
      if (s.code() != Status::Code::kQueueFull) Die(s.message());
      serve(Millis(1));
    }
    if (i % 1000 == 0) serve(Millis(0));
  }
  while (acked + failed < n) serve(Millis(10));
  double secs = Seconds(t0, Clock::now());
  std::printf("{\"messages\": %ld, \"failed\": %ld, \"seconds\": %.3f, \"msgs_per_s\": %.0f}\n",
              acked, failed, secs, acked / secs);
  return 0;
}

rd_kafka_t* Client(const std::string& bootstrap, rd_kafka_type_t type) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof(err));
  if (type == RD_KAFKA_CONSUMER) {
    rd_kafka_conf_set(conf, "group.id", "outboxd-bench", err, sizeof(err));
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof(err));
    rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", err, sizeof(err));
  }
  rd_kafka_t* rk = rd_kafka_new(type, conf, err, sizeof(err));
  if (!rk) Die(err);
  return rk;
}

int Topic(std::map<std::string, std::string>& a) {
  rd_kafka_t* rk = Client(Get(a, "bootstrap"), RD_KAFKA_PRODUCER);
  char err[512];
  std::string name = Get(a, "topic");
  rd_kafka_NewTopic_t* nt = rd_kafka_NewTopic_new(
      name.c_str(), std::stoi(Get(a, "partitions", "6")), 1, err, sizeof(err));
  rd_kafka_NewTopic_set_config(nt, "message.timestamp.type", "LogAppendTime");
  rd_kafka_queue_t* q = rd_kafka_queue_new(rk);
  rd_kafka_CreateTopics(rk, &nt, 1, nullptr, q);
  rd_kafka_event_t* ev = rd_kafka_queue_poll(q, 30000);
  if (!ev) Die("CreateTopics timed out");
  size_t cnt;
  const rd_kafka_topic_result_t** res =
      rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
  if (cnt == 1 && rd_kafka_topic_result_error(res[0]) &&
      rd_kafka_topic_result_error(res[0]) != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
    Die(rd_kafka_topic_result_error_string(res[0]));
  }
  rd_kafka_event_destroy(ev);
  rd_kafka_queue_destroy(q);
  rd_kafka_NewTopic_destroy(nt);
  rd_kafka_destroy(rk);
  std::printf("{\"topic\": \"%s\"}\n", name.c_str());
  return 0;
}

// Sum of the partitions' high watermarks.
long EndOffsets(rd_kafka_t* rk, const std::string& topic, int partitions) {
  long total = 0;
  for (int p = 0; p < partitions; ++p) {
    int64_t lo = 0, hi = 0;
    if (rd_kafka_query_watermark_offsets(rk, topic.c_str(), p, &lo, &hi, 5000) == 0) total += hi;
  }
  return total;
}

int WaitTopic(std::map<std::string, std::string>& a) {
  rd_kafka_t* rk = Client(Get(a, "bootstrap"), RD_KAFKA_PRODUCER);
  std::string topic = Get(a, "topic");
  int partitions = std::stoi(Get(a, "partitions", "6"));
  long n = std::stol(Get(a, "count"));
  double timeout = std::stod(Get(a, "timeout", "600"));
  auto t0 = Clock::now();
  long have = 0;
  while ((have = EndOffsets(rk, topic, partitions)) < n && Seconds(t0, Clock::now()) < timeout) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  rd_kafka_destroy(rk);
  std::printf("{\"records\": %ld, \"wall_us\": %lld}\n", have,
              static_cast<long long>(WallMicros()));
  return have >= n ? 0 : 1;
}

// Commits one message per transaction at `rate` per second for `seconds`, over `connections`
// connections; writes "seq commit_wall_us" lines to --out.
int Paced(std::map<std::string, std::string>& a) {
  std::string conninfo = Get(a, "conninfo"), topic = Get(a, "topic"),
              target = Get(a, "target", "outboxd");
  double rate = std::stod(Get(a, "rate")), seconds = std::stod(Get(a, "seconds"));
  int conns = std::stoi(Get(a, "connections", "8")), size = std::stoi(Get(a, "size", "200"));
  long keys = std::stol(Get(a, "keys", "1000"));
  std::atomic<long> next_seq{std::stol(Get(a, "start", "1"))};
  std::mutex mu;
  struct Commit {
    long seq;
    int64_t sent_us;      // COMMIT sent
    int64_t returned_us;  // COMMIT acknowledged to the application
  };
  std::vector<Commit> commits;
  std::atomic<long> late{0};
  auto t0 = Clock::now();
  auto worker = [&](int w) {
    pg::Connection c = Connect(conninfo);
    double per_conn = rate / conns;
    std::vector<Commit> mine;
    for (long i = 0;; ++i) {
      auto due = t0 + std::chrono::duration_cast<Clock::duration>(
                          std::chrono::duration<double>((i + w / double(conns)) / per_conn));
      if (Seconds(t0, due) >= seconds) break;
      if (Clock::now() < due) {
        std::this_thread::sleep_until(due);
      } else if (Clock::now() - due > std::chrono::milliseconds(5)) {
        ++late;
      }
      long seq = next_seq++;
      std::string s = std::to_string(seq);
      std::string sql =
          target == "outboxd"
              ? "BEGIN; SELECT outbox.publish('" + topic + "', 'key-" + std::to_string(seq % keys) +
                    "', " + PayloadSql(s, size) + ");"
              : "BEGIN; INSERT INTO " + target +
                    " (aggregatetype, aggregateid, type, payload) VALUES ('bench', 'key-" +
                    std::to_string(seq % keys) + "', 'e', (" + PayloadSql(s, size) + ")::jsonb);";
      if (Status st = c.Exec(sql); !st.ok()) Die(st.message());
      int64_t at = WallMicros();  // COMMIT sent now: latency counts from here
      if (Status st = c.Exec("COMMIT"); !st.ok()) Die(st.message());
      mine.push_back({seq, at, WallMicros()});
    }
    std::lock_guard l(mu);
    commits.insert(commits.end(), mine.begin(), mine.end());
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < conns; ++w) threads.emplace_back(worker, w);
  for (auto& t : threads) t.join();
  double secs = Seconds(t0, Clock::now());
  std::ofstream out(Get(a, "out"));
  for (auto& c : commits) out << c.seq << ' ' << c.sent_us << ' ' << c.returned_us << '\n';
  std::printf(
      "{\"committed\": %zu, \"seconds\": %.3f, \"achieved_per_s\": %.0f, \"late_starts\": %ld}\n",
      commits.size(), secs, commits.size() / secs, late.load());
  return 0;
}

// Reads the topic from the start and matches each record's append time to its commit time.
int Latency(std::map<std::string, std::string>& a) {
  std::map<long, std::pair<int64_t, int64_t>> commit_at;  // seq -> (COMMIT sent, returned)
  {
    std::ifstream in(Get(a, "commits"));
    long seq;
    int64_t sent, returned;
    while (in >> seq >> sent >> returned) commit_at[seq] = {sent, returned};
  }
  std::string topic = Get(a, "topic");
  int partitions = std::stoi(Get(a, "partitions", "6"));
  rd_kafka_t* rk = Client(Get(a, "bootstrap"), RD_KAFKA_CONSUMER);
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p)
    rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  rd_kafka_assign(rk, list);
  rd_kafka_topic_partition_list_destroy(list);
  std::vector<double> ms, ms_returned;
  std::map<long, int> seen;
  auto t0 = Clock::now();
  while (seen.size() < commit_at.size() && Seconds(t0, Clock::now()) < 120) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk, 100);
    if (!m) continue;
    if (!m->err && m->payload) {
      std::string v(static_cast<const char*>(m->payload), m->len);
      auto pos = v.find("\"seq\":");
      if (pos == std::string::npos) pos = v.find("\"seq\": ");
      long seq = std::atol(v.c_str() + v.find(':', pos) + 1);
      auto it = commit_at.find(seq);
      if (it != commit_at.end() && seen[seq]++ == 0) {
        rd_kafka_timestamp_type_t type;
        int64_t ts = rd_kafka_message_timestamp(m, &type);
        ms.push_back((ts * 1000.0 - it->second.first) / 1000.0);
        ms_returned.push_back((ts * 1000.0 - it->second.second) / 1000.0);
      }
    }
    rd_kafka_message_destroy(m);
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  std::sort(ms.begin(), ms.end());
  std::sort(ms_returned.begin(), ms_returned.end());
  // Append times are in whole milliseconds; anything well before its commit is a stale record.
  if (!ms.empty() && ms.front() < -2.0) Die("records older than their commits: a reused topic?");
  auto pct = [](const std::vector<double>& v, double p) {
    return v.empty() ? -1 : v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
  };
  std::printf(
      "{\"matched\": %zu, \"expected\": %zu, \"p50_ms\": %.1f, \"p99_ms\": %.1f, \"max_ms\": %.1f, "
      "\"from_commit_returned_p50_ms\": %.1f, \"from_commit_returned_p99_ms\": %.1f}\n",
      ms.size(), commit_at.size(), pct(ms, 0.50), pct(ms, 0.99), ms.empty() ? -1 : ms.back(),
      pct(ms_returned, 0.50), pct(ms_returned, 0.99));
  return ms.size() == commit_at.size() ? 0 : 1;
}

// Runs while `paced` commits: consumes the topic live with isolation.level=read_committed and
// notes when each record reached it (wall clock), so an exactly-once transaction counts from the
// commit until its consumers can see it (append times would count only to the append). Once
// paced has written the commits file, matches and prints p50 / p99 / max like `latency`.
int Visible(std::map<std::string, std::string>& a) {
  std::string topic = Get(a, "topic");
  std::string commits_path = Get(a, "commits");
  int partitions = std::stoi(Get(a, "partitions", "6"));
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  for (const auto& [k, v] :
       std::map<std::string, std::string>{{"bootstrap.servers", Get(a, "bootstrap")},
                                          {"group.id", "outboxd-bench-visible"},
                                          {"enable.auto.commit", "false"},
                                          {"fetch.wait.max.ms", "10"},
                                          {"isolation.level", "read_committed"}}) {
    rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof(err));
  }
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
  if (!rk) Die(err);
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p)
    rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  rd_kafka_assign(rk, list);
  rd_kafka_topic_partition_list_destroy(list);
  std::map<long, int64_t> received;  // seq -> first receipt (wall clock, microseconds)
  std::map<long, std::pair<int64_t, int64_t>> commit_at;
  auto last_new = Clock::now();
  for (;;) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk, 50);
    if (m) {
      if (!m->err && m->payload) {
        int64_t now_us = WallMicros();
        std::string v(static_cast<const char*>(m->payload), m->len);
        auto pos = v.find("\"seq\":");
        if (pos != std::string::npos) {
          long seq = std::atol(v.c_str() + v.find(':', pos) + 1);
          if (received.emplace(seq, now_us).second) last_new = Clock::now();
        }
      }
      rd_kafka_message_destroy(m);
      continue;
    }
    if (commit_at.empty()) {
      std::ifstream in(commits_path);
      long seq;
      int64_t sent, returned;
      while (in >> seq >> sent >> returned) commit_at[seq] = {sent, returned};
      if (commit_at.empty()) continue;  // paced still runs
    }
    size_t matched = 0;
    for (const auto& [seq, at] : commit_at) matched += received.count(seq);
    if (matched == commit_at.size() || Seconds(last_new, Clock::now()) > 30) break;
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  std::vector<double> ms;
  for (const auto& [seq, at] : commit_at) {
    auto r = received.find(seq);
    if (r != received.end()) ms.push_back((r->second - at.first) / 1000.0);
  }
  std::sort(ms.begin(), ms.end());
  auto pct = [&](double p) {
    return ms.empty() ? -1 : ms[std::min(ms.size() - 1, static_cast<size_t>(p * ms.size()))];
  };
  std::printf(
      "{\"matched\": %zu, \"expected\": %zu, \"visible_p50_ms\": %.1f, \"visible_p99_ms\": %.1f, "
      "\"visible_max_ms\": %.1f}\n",
      ms.size(), commit_at.size(), pct(0.50), pct(0.99), ms.empty() ? -1 : ms.back());
  return ms.size() == commit_at.size() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2)
    Die("usage: outboxd_bench load|db-ceiling|kafka-ceiling|topic|wait-topic|paced|latency --k v "
        "...");
  std::string cmd = argv[1];
  auto a = Args(argc, argv);
  spdlog::set_level(spdlog::level::err);  // stdout carries the JSON result only
  if (cmd == "load") return Load(a);
  if (cmd == "db-ceiling") return DbCeiling(a);
  if (cmd == "kafka-ceiling") return KafkaCeiling(a);
  if (cmd == "topic") return Topic(a);
  if (cmd == "wait-topic") return WaitTopic(a);
  if (cmd == "paced") return Paced(a);
  if (cmd == "latency") return Latency(a);
  if (cmd == "visible") return Visible(a);
  Die("unknown command " + cmd);
}
