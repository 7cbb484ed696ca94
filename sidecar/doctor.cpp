#include "doctor.h"

#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "kafka/checkpoint_topic.h"
#include "leader_session.h"
#include "migrate.h"
#include "pg/connection.h"

namespace outboxd {
namespace {

using ConfigMap = std::map<std::string, std::string>;

Finding Make(std::string area, std::string subject, std::string check, std::string value,
             Health verdict, std::string detail, std::string fix = "") {
  return Finding{std::move(area), std::move(subject), std::move(check), std::move(value),
                 verdict,         std::move(detail),  std::move(fix)};
}

std::string Get(const ConfigMap& m, const std::string& key, const std::string& fallback = "?") {
  auto it = m.find(key);
  return it == m.end() ? fallback : it->second;
}

long long Number(const std::string& s, long long fallback = -1) {
  try {
    return std::stoll(s);
  } catch (...) {
    return fallback;
  }
}

// ---------------------------------------------------------------- Kafka

struct KafkaDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
using KafkaPtr = std::unique_ptr<rd_kafka_t, KafkaDeleter>;

struct TopicInfo {
  bool exists = false;
  int partitions = 0;
  int replication_factor = 0;  // the smallest over the partitions
  int smallest_isr = 0;
};

// The durability verdicts of one topic, from its replication factor and configs.
void JudgeTopic(const std::string& topic, int rf, const ConfigMap& configs, const std::string& how,
                std::vector<Finding>* out) {
  const std::string alter =
      "kafka-configs.sh --bootstrap-server B --alter --entity-type topics "
      "--entity-name " +
      topic;
  if (rf < 2) {
    out->push_back(Make("kafka", topic, "replication factor", std::to_string(rf) + how,
                        Health::kRisk,
                        "one copy: losing that broker (or its disk) loses acknowledged messages, "
                        "and delivery stops while it is down",
                        "recreate or reassign the topic with replication factor 3 "
                        "(kafka-reassign-partitions.sh), and set default.replication.factor=3"));
  } else {
    out->push_back(Make("kafka", topic, "replication factor", std::to_string(rf) + how, Health::kOk,
                        "each acknowledged message is on up to this many brokers"));
  }
  long long min_isr = Number(Get(configs, "min.insync.replicas"));
  if (min_isr < 2) {
    out->push_back(Make(
        "kafka", topic, "min.insync.replicas", Get(configs, "min.insync.replicas") + how,
        Health::kRisk,
        "acks=all waits only for the replicas in sync: with 1, the leader alone may acknowledge "
        "after the followers fell behind, and its loss then loses acknowledged messages",
        alter + " --add-config min.insync.replicas=2 (with replication factor 3)"));
  } else if (min_isr >= rf && rf > 0) {
    out->push_back(Make("kafka", topic, "min.insync.replicas", std::to_string(min_isr) + how,
                        Health::kWarn,
                        "as large as the replication factor: one broker down stops every write to "
                        "this topic (outboxd keeps the messages and retries)",
                        "replication factor = min.insync.replicas + 1 (e.g. 3 and 2)"));
  } else {
    out->push_back(Make("kafka", topic, "min.insync.replicas", std::to_string(min_isr) + how,
                        Health::kOk,
                        "an acknowledgement means at least this many brokers have the message"));
  }
  const std::string unclean = Get(configs, "unclean.leader.election.enable");
  out->push_back(
      unclean == "true"
          ? Make("kafka", topic, "unclean.leader.election.enable", unclean + how, Health::kRisk,
                 "a replica that is out of sync may become leader and drop acknowledged messages",
                 alter + " --add-config unclean.leader.election.enable=false")
          : Make("kafka", topic, "unclean.leader.election.enable", unclean + how, Health::kOk,
                 "only in-sync replicas become leader"));
}

// The exactly-once checkpoint topic (relay.checkpoint_topic): outboxd creates it with the settings
// of kafka/checkpoint_topic.h; a topic made otherwise (by hand, or by an older outboxd) is judged
// by them. Its replication is judged by JudgeTopic like any other topic's.
void JudgeCheckpointTopic(const std::string& topic, int partitions, const ConfigMap& configs,
                          std::vector<Finding>* out) {
  const std::string alter =
      "kafka-configs.sh --bootstrap-server B --alter --entity-type topics --entity-name " + topic +
      " --add-config ";
  const std::string policy = Get(configs, "cleanup.policy");
  if (policy != kCheckpointCleanupPolicy) {
    out->push_back(Make(
        "kafka", topic, "cleanup.policy", policy, Health::kRisk,
        "the checkpoint topic must be compacted only: with deletion, the last checkpoint of an "
        "outbox idle for longer than retention.ms is gone, and a restart after a crash between a "
        "commit and its removal sends that transaction's rows again",
        alter + "cleanup.policy=compact"));
  } else {
    out->push_back(Make("kafka", topic, "cleanup.policy", policy, Health::kOk,
                        "compacted: the last checkpoint of each outbox is kept"));
  }
  out->push_back(partitions == 1
                     ? Make("kafka", topic, "partitions", "1", Health::kOk,
                            "one partition: each outbox's checkpoints are in one place, in order")
                     : Make("kafka", topic, "partitions", std::to_string(partitions), Health::kWarn,
                            "more than one partition: an outbox's checkpoints move to another "
                            "partition when the count changes, and the newest is then told only "
                            "by its timestamp",
                            "recreate the topic with one partition while no outboxd runs in "
                            "exactly-once mode"));
  // Compaction never touches the active segment: it must roll soon for the topic to stay small.
  const long long bytes = Number(Get(configs, "segment.bytes"));
  const long long ms = Number(Get(configs, "segment.ms"));
  const std::string segment =
      "segment.bytes=" + Get(configs, "segment.bytes") +
      ", segment.ms=" + Get(configs, "segment.ms") +
      ", min.cleanable.dirty.ratio=" + Get(configs, "min.cleanable.dirty.ratio");
  double dirty = 1;
  try {
    dirty = std::stod(Get(configs, "min.cleanable.dirty.ratio"));
  } catch (...) {
  }
  const bool small = bytes > 0 && bytes <= 16 * kCheckpointSegmentBytes && ms > 0 &&
                     ms <= 24 * kCheckpointSegmentMs && dirty <= 0.5;
  out->push_back(
      small ? Make("kafka", topic, "segments", segment, Health::kOk,
                   "segments roll and are compacted soon: the topic keeps about one record per "
                   "outbox")
            : Make("kafka", topic, "segments", segment, Health::kWarn,
                   "the active segment is never compacted: at tens of transactions a second it "
                   "holds millions of checkpoints, which every outbox without a recent checkpoint "
                   "of its own reads at start-up, and which fill the disk",
                   alter + "segment.bytes=" + std::to_string(kCheckpointSegmentBytes) +
                       ",segment.ms=" + std::to_string(kCheckpointSegmentMs) +
                       ",min.cleanable.dirty.ratio=" + kCheckpointDirtyRatio));
}

// DescribeConfigs for the given resources; the answer per resource name ("" for a failure).
std::map<std::string, ConfigMap> DescribeConfigs(
    rd_kafka_t* rk, const std::vector<std::pair<rd_kafka_ResourceType_t, std::string>>& what,
    Millis timeout, std::string* error) {
  std::map<std::string, ConfigMap> out;
  std::vector<rd_kafka_ConfigResource_t*> resources;
  for (const auto& [type, name] : what) {
    resources.push_back(rd_kafka_ConfigResource_new(type, name.c_str()));
  }
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk);
  rd_kafka_AdminOptions_t* options =
      rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
  char err[256];
  rd_kafka_AdminOptions_set_request_timeout(options, static_cast<int>(timeout.count()), err,
                                            sizeof(err));
  rd_kafka_DescribeConfigs(rk, resources.data(), resources.size(), options, queue);
  rd_kafka_event_t* ev = rd_kafka_queue_poll(queue, static_cast<int>(timeout.count()) + 1000);
  if (ev == nullptr) {
    *error = "no answer within " + FormatDuration(timeout);
  } else if (rd_kafka_event_error(ev)) {
    *error = rd_kafka_event_error_string(ev);
  } else {
    const rd_kafka_DescribeConfigs_result_t* result = rd_kafka_event_DescribeConfigs_result(ev);
    size_t n = 0;
    const rd_kafka_ConfigResource_t** rs = rd_kafka_DescribeConfigs_result_resources(result, &n);
    for (size_t i = 0; i < n; ++i) {
      ConfigMap& m = out[rd_kafka_ConfigResource_name(rs[i])];
      if (rd_kafka_ConfigResource_error(rs[i])) {
        *error = rd_kafka_ConfigResource_error_string(rs[i]);
        continue;
      }
      size_t cn = 0;
      const rd_kafka_ConfigEntry_t** entries = rd_kafka_ConfigResource_configs(rs[i], &cn);
      for (size_t j = 0; j < cn; ++j) {
        const char* v = rd_kafka_ConfigEntry_value(entries[j]);
        m[rd_kafka_ConfigEntry_name(entries[j])] = v ? v : "";
      }
    }
  }
  if (ev) rd_kafka_event_destroy(ev);
  rd_kafka_AdminOptions_destroy(options);
  rd_kafka_queue_destroy(queue);
  for (auto* r : resources) rd_kafka_ConfigResource_destroy(r);
  return out;
}

void CheckKafka(const Config& config, const std::set<std::string>& topics,
                const std::atomic<bool>* stop, std::vector<Finding>* out) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  // The user's client properties (security and the like) apply; outboxd's own producer settings
  // do not matter to a read-only look.
  for (const auto& [k, v] : config.kafka.properties) {
    rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof(err));
  }
  rd_kafka_conf_set(conf, "bootstrap.servers", config.kafka.bootstrap_servers.c_str(), err,
                    sizeof(err));
  rd_kafka_conf_set(conf, "allow.auto.create.topics", "false", err, sizeof(err));
  // Quiet: what goes wrong becomes a finding (and the relay logs outages itself).
  rd_kafka_conf_set_log_cb(conf, [](const rd_kafka_t*, int, const char*, const char*) {});
  rd_kafka_conf_set_error_cb(conf, [](rd_kafka_t*, int, const char*, void*) {});
  // Exactly once: the checkpoint topic is judged too (JudgeCheckpointTopic).
  const std::string checkpoint_topic =
      config.relay.delivery == Delivery::kExactlyOnce ? config.relay.checkpoint_topic : "";
  KafkaPtr rk(rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err)));
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    out->push_back(Make("kafka", "client", "connect", err, Health::kRisk,
                        "cannot create a Kafka client", "check [kafka] in the configuration"));
    return;
  }
  const rd_kafka_metadata_t* md = nullptr;
  // All topics: asking for one by name could create it. In slices, so that `stop` is heard.
  rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__TIMED_OUT;
  for (Millis waited{0}; waited < config.doctor.kafka_timeout && !(stop && *stop);
       waited += Millis(500)) {
    e = rd_kafka_metadata(rk.get(), 1, nullptr, &md, 500);
    if (e != RD_KAFKA_RESP_ERR__TIMED_OUT && e != RD_KAFKA_RESP_ERR__TRANSPORT) break;
  }
  if (e) {
    out->push_back(Make("kafka", config.kafka.bootstrap_servers, "reachable", rd_kafka_err2str(e),
                        Health::kRisk, "the cluster did not answer: nothing is delivered",
                        "check kafka.bootstrap_servers and that the brokers run"));
    return;
  }
  std::map<std::string, TopicInfo> info;
  for (const std::string& t : topics) info[t];
  for (int i = 0; i < md->topic_cnt; ++i) {
    auto it = info.find(md->topics[i].topic);
    if (it == info.end() || md->topics[i].err) continue;
    TopicInfo& ti = it->second;
    ti.exists = true;
    ti.partitions = md->topics[i].partition_cnt;
    ti.replication_factor = INT32_MAX;
    ti.smallest_isr = INT32_MAX;
    for (int p = 0; p < md->topics[i].partition_cnt; ++p) {
      ti.replication_factor =
          std::min(ti.replication_factor, md->topics[i].partitions[p].replica_cnt);
      ti.smallest_isr = std::min(ti.smallest_isr, md->topics[i].partitions[p].isr_cnt);
    }
    if (ti.partitions == 0) ti.replication_factor = ti.smallest_isr = 0;
  }
  const int brokers = md->broker_cnt;
  const std::string broker_id = brokers > 0 ? std::to_string(md->brokers[0].id) : "";
  rd_kafka_metadata_destroy(md);

  std::vector<std::pair<rd_kafka_ResourceType_t, std::string>> what;
  for (const auto& [t, ti] : info) {
    if (ti.exists) what.emplace_back(RD_KAFKA_RESOURCE_TOPIC, t);
  }
  if (!broker_id.empty()) what.emplace_back(RD_KAFKA_RESOURCE_BROKER, broker_id);
  std::string error;
  auto configs = DescribeConfigs(rk.get(), what, config.doctor.kafka_timeout, &error);
  if (!error.empty()) {
    out->push_back(Make("kafka", "cluster", "describe configs", error, Health::kWarn,
                        "some configuration could not be read; the verdicts below are partial",
                        "allow DescribeConfigs on the topics and the cluster for outboxd's user"));
  }
  const ConfigMap& broker = configs[broker_id];
  const std::string broker_name = "broker " + broker_id;

  out->push_back(Make("kafka", "cluster", "brokers", std::to_string(brokers),
                      brokers >= 3 ? Health::kOk : Health::kInfo,
                      brokers >= 3 ? "enough brokers for replication factor 3"
                                   : "fewer than 3 brokers: replication factor 3 is impossible"));
  for (const auto& [t, ti] : info) {
    if (ti.exists) {
      JudgeTopic(t, ti.replication_factor, configs[t], "", out);
      if (t == checkpoint_topic) JudgeCheckpointTopic(t, ti.partitions, configs[t], out);
      if (ti.smallest_isr < ti.replication_factor) {
        out->push_back(
            Make("kafka", t, "in-sync replicas",
                 std::to_string(ti.smallest_isr) + " of " + std::to_string(ti.replication_factor),
                 Health::kWarn, "a partition has replicas out of sync right now",
                 "look at the brokers' health (under-replicated partitions)"));
      }
      continue;
    }
    if (t == checkpoint_topic) {
      out->push_back(Make("kafka", t, "exists", "no (created by outboxd at its first term)",
                          Health::kInfo,
                          "created with one partition, compacted, with small segments, and the "
                          "broker's default replication (judged below)"));
      JudgeTopic(
          t, static_cast<int>(Number(Get(broker, "default.replication.factor"), 0)),
          {{"min.insync.replicas", Get(broker, "min.insync.replicas")},
           {"unclean.leader.election.enable", Get(broker, "unclean.leader.election.enable")}},
          " (broker default, topic not created yet)", out);
      continue;
    }
    if (Get(broker, "auto.create.topics.enable") == "true") {
      // outboxd's first message creates it with the broker's defaults: judge those.
      ConfigMap defaults = {
          {"min.insync.replicas", Get(broker, "min.insync.replicas")},
          {"unclean.leader.election.enable", Get(broker, "unclean.leader.election.enable")}};
      out->push_back(Make("kafka", t, "exists", "no (auto-created on first message)", Health::kInfo,
                          "created with the broker's defaults, judged below"));
      JudgeTopic(t, static_cast<int>(Number(Get(broker, "default.replication.factor"), 0)),
                 defaults, " (broker default, topic not created yet)", out);
    } else {
      out->push_back(Make("kafka", t, "exists", "no", Health::kRisk,
                          "the topic does not exist and the broker does not create topics: its "
                          "messages cannot be delivered",
                          "kafka-topics.sh --create --topic " + t +
                              " --replication-factor 3 --config min.insync.replicas=2"));
    }
  }
  if (!broker.empty()) {
    const std::string auto_create = Get(broker, "auto.create.topics.enable");
    const long long default_rf = Number(Get(broker, "default.replication.factor"));
    const long long default_isr = Number(Get(broker, "min.insync.replicas"));
    const std::string value =
        auto_create + " (default.replication.factor=" + Get(broker, "default.replication.factor") +
        ", min.insync.replicas=" + Get(broker, "min.insync.replicas") +
        ", num.partitions=" + Get(broker, "num.partitions") + ")";
    if (auto_create == "true" && (default_rf < 2 || default_isr < 2)) {
      out->push_back(Make("kafka", broker_name, "topic auto-creation", value, Health::kRisk,
                          "a new topic in the outbox (or a typo) is created with too few copies",
                          "set default.replication.factor=3 and min.insync.replicas=2 on the "
                          "brokers, or auto.create.topics.enable=false and create topics first"));
    } else {
      out->push_back(Make("kafka", broker_name, "topic auto-creation", value,
                          auto_create == "true" ? Health::kInfo : Health::kOk,
                          auto_create == "true"
                              ? "new topics are created on first use with these safe defaults"
                              : "topics must be created before messages for them are published"));
    }
    const std::string flush_messages = Get(broker, "log.flush.interval.messages");
    std::string flush_ms = Get(broker, "log.flush.interval.ms", "");
    if (flush_ms.empty()) flush_ms = "unset (log.flush.scheduler.interval.ms decides)";
    const bool never = Number(flush_messages) >= (1LL << 62) || flush_messages == "?";
    out->push_back(Make(
        "kafka", broker_name, "log.flush.*",
        "log.flush.interval.messages=" + flush_messages + ", log.flush.interval.ms=" + flush_ms,
        Health::kInfo,
        never ? "Kafka acknowledges from the page cache and leaves fsync to the OS: durability "
                "rests on replication (an ack means min.insync.replicas brokers have it in "
                "memory). RocketMQ's SYNC_FLUSH fsyncs before acknowledging; Kafka's equivalent "
                "is log.flush.interval.messages=1, at a large cost. A power loss of every in-sync "
                "replica at once can lose acknowledged messages (with replication factor 1, one "
                "broker's crash can)"
              : "the broker forces the log to disk at this interval: closer to RocketMQ's "
                "SYNC_FLUSH, at a throughput cost"));
  }
}

// ---------------------------------------------------------------- PostgreSQL

std::optional<std::string> Scalar(pg::Connection& c, const std::string& sql,
                                  const pg::Params& p = pg::Params()) {
  auto r = c.Query(sql, p);
  if (!r.ok() || r->rows() == 0 || r->IsNull(0, 0)) return std::nullopt;
  return std::string(r->Get(0, 0));
}

// The value a new session of `role` in this database starts with (role+database, role,
// database settings, then the server's), as ALTER ROLE / ALTER DATABASE leave them.
constexpr const char* kRoleSettingSql = R"sql(
SELECT coalesce(
  (SELECT split_part(c, '=', 2) FROM pg_db_role_setting s, unnest(s.setconfig) c, pg_database d
    WHERE d.datname = current_database() AND s.setdatabase = d.oid AND s.setrole = r.oid
      AND c LIKE $2 || '=%'),
  (SELECT split_part(c, '=', 2) FROM pg_db_role_setting s, unnest(s.setconfig) c
    WHERE s.setdatabase = 0 AND s.setrole = r.oid AND c LIKE $2 || '=%'),
  (SELECT split_part(c, '=', 2) FROM pg_db_role_setting s, unnest(s.setconfig) c, pg_database d
    WHERE d.datname = current_database() AND s.setdatabase = d.oid AND s.setrole = 0
      AND c LIKE $2 || '=%'),
  (SELECT setting FROM pg_file_settings WHERE name = $2 AND applied ORDER BY seqno DESC LIMIT 1),
  (SELECT boot_val FROM pg_settings WHERE name = $2))
  FROM pg_roles r WHERE r.rolname = $1)sql";

void CheckPostgres(const Config& config, std::vector<Finding>* out, std::set<std::string>* topics) {
  auto conn = pg::Connection::Open(config.postgres.conninfo, "outboxd doctor",
                                   SessionTcpSettings(config.leadership));
  if (!conn.ok()) {
    out->push_back(Make("postgres", "server", "reachable", conn.status().message(), Health::kRisk,
                        "PostgreSQL did not answer", "check postgres.conninfo"));
    return;
  }
  pg::Connection& c = *conn;
  const std::string fsync = Scalar(c, "SELECT current_setting('fsync')").value_or("?");
  out->push_back(
      fsync == "on"
          ? Make("postgres", "server", "fsync", fsync, Health::kOk, "commits reach the disk")
          : Make("postgres", "server", "fsync", fsync, Health::kRisk,
                 "a crash can lose or corrupt committed transactions, outbox rows "
                 "with them",
                 "fsync = on in postgresql.conf"));
  const std::string fpw = Scalar(c, "SELECT current_setting('full_page_writes')").value_or("?");
  if (fpw != "on") {
    out->push_back(Make("postgres", "server", "full_page_writes", fpw, Health::kRisk,
                        "a crash during a page write can corrupt the outbox",
                        "full_page_writes = on"));
  }
  // The application's roles: login roles that are members of outbox_writer.
  std::vector<std::string> roles;
  if (auto r = c.Query(
          "SELECT r.rolname FROM pg_roles r WHERE r.rolcanlogin AND pg_has_role(r.oid, "
          "'outbox_writer', 'MEMBER') AND to_regrole('outbox_writer') IS NOT NULL ORDER BY 1");
      r.ok()) {
    for (int i = 0; i < r->rows(); ++i) roles.emplace_back(r->Get(i, 0));
  }
  if (roles.empty()) {
    out->push_back(Make("postgres", "roles", "application roles", "none", Health::kInfo,
                        "no login role is a member of outbox_writer: synchronous_commit is the "
                        "server's (and this connection's role's)",
                        "GRANT outbox_writer TO <the application's role>"));
    roles.push_back(Scalar(c, "SELECT current_user").value_or("postgres"));
  }
  for (const std::string& role : roles) {
    pg::Params p;
    p.Add(role).Add(std::string("synchronous_commit"));
    const std::string sc = Scalar(c, kRoleSettingSql, p).value_or("?");
    if (sc == "off") {
      out->push_back(Make("postgres", "role " + role, "synchronous_commit", sc, Health::kRisk,
                          "a commit the application saw can vanish in a crash (its outbox rows "
                          "with it): the business change and its message are lost together",
                          "ALTER ROLE " + role + " RESET synchronous_commit (on)"));
    } else {
      out->push_back(Make("postgres", "role " + role, "synchronous_commit", sc, Health::kOk,
                          sc == "local" ? "durable on this server's disk, not waiting for standbys"
                                        : "a commit is durable before the application sees it"));
    }
  }
  const std::string wal_level = Scalar(c, "SELECT current_setting('wal_level')").value_or("?");
  const std::string standbys =
      Scalar(c, "SELECT current_setting('synchronous_standby_names')").value_or("");
  const std::string replicas = Scalar(c, "SELECT count(*) FROM pg_stat_replication").value_or("?");
  const std::string sync_replicas =
      Scalar(c, "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')")
          .value_or("0");
  const std::string value = "wal_level=" + wal_level + ", standbys=" + replicas +
                            ", synchronous_standby_names='" + standbys + "'";
  if (standbys.empty() || sync_replicas == "0") {
    out->push_back(Make(
        "postgres", "server", "replication", value, Health::kWarn,
        replicas == "0" ? "no standby: losing this server's disk loses committed messages not yet "
                          "delivered (and their business changes)"
                        : "standbys are asynchronous: a failover can lose the last commits, "
                          "messages included",
        "a synchronous standby (synchronous_standby_names, synchronous_commit=on or "
        "remote_apply), as RocketMQ's SYNC_MASTER"));
  } else {
    out->push_back(Make("postgres", "server", "replication", value, Health::kOk,
                        "commits wait for a synchronous standby"));
  }
  // The oldest open transaction with an xid or a snapshot: it holds late ids of the scan window
  // (only its own) and vacuum's horizon.
  if (auto r = c.Query(
          "SELECT pid, extract(epoch FROM now() - xact_start)::bigint, coalesce(application_name, "
          "''), state FROM pg_stat_activity WHERE xact_start IS NOT NULL AND pid <> "
          "pg_backend_pid() AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) "
          "ORDER BY xact_start LIMIT 1");
      r.ok()) {
    if (r->rows() == 0) {
      out->push_back(Make("postgres", "server", "oldest open transaction", "none", Health::kOk,
                          "nothing holds the scan floor back"));
    } else {
      long long age = r->GetInt(0, 1);
      std::string v = std::to_string(age) + " s (pid " + std::string(r->Get(0, 0)) + ", " +
                      std::string(r->Get(0, 3)) + ", '" + std::string(r->Get(0, 2)) + "')";
      bool old = age * 1000 > config.doctor.long_transaction.count();
      out->push_back(Make("postgres", "server", "oldest open transaction", v,
                          old ? Health::kWarn : Health::kOk,
                          old ? "holds the scan floor (its own rows wait for it) and vacuum back: "
                                "dead rows pile up in the outbox"
                              : "short",
                          old ? "end it (pg_terminate_backend) and keep transactions short" : ""));
    }
  }

  // The outbox.
  if (!Scalar(c, "SELECT to_regclass('outbox.messages')::text")) {
    out->push_back(Make("outbox", "schema", "installed", "no", Health::kRisk,
                        "outbox.messages does not exist", "outboxd migrate"));
    return;
  }
  // The scan window needs ids taken one at a time; outboxd refuses to lead without it.
  const std::string cache = Scalar(c,
                                   "SELECT s.seqcache FROM pg_catalog.pg_sequence s "
                                   "WHERE s.seqrelid = to_regclass('outbox.messages_id_seq')")
                                .value_or("?");
  if (Status s = CheckIdSequence(c); s.ok()) {
    out->push_back(Make("outbox", "messages_id_seq", "cache", cache, Health::kOk,
                        "ids are taken one at a time, as the relay's scan needs"));
  } else {
    out->push_back(Make("outbox", "messages_id_seq", "cache", cache, Health::kRisk,
                        s.message() + " (outboxd refuses to lead until then)",
                        "ALTER SEQUENCE outbox.messages_id_seq CACHE 1"));
  }
  auto r = c.Query(
      "SELECT DISTINCT topic FROM (SELECT topic FROM outbox.messages WHERE sent_at IS NULL "
      "UNION SELECT topic FROM outbox.dead_letters) t");
  if (r.ok()) {
    for (int i = 0; i < r->rows(); ++i) topics->insert(std::string(r->Get(i, 0)));
  }
  for (const char* sql : {"SELECT DISTINCT topic FROM outbox.delayed",
                          "SELECT DISTINCT topic FROM outbox.prepared WHERE state = 'prepared'"}) {
    if (auto q = c.Query(sql); q.ok()) {
      for (int i = 0; i < q->rows(); ++i) topics->insert(std::string(q->Get(i, 0)));
    }
  }
  const std::string backlog =
      Scalar(c, "SELECT count(*) FROM outbox.messages WHERE sent_at IS NULL").value_or("?");
  const auto oldest = Scalar(c,
                             "SELECT extract(epoch FROM now() - created_at)::bigint FROM "
                             "outbox.messages WHERE sent_at IS NULL ORDER BY id LIMIT 1");
  const long long oldest_s = oldest ? Number(*oldest, 0) : 0;
  const bool stale = oldest && oldest_s * 1000 > config.doctor.max_unsent_age.count();
  out->push_back(Make("outbox", "messages", "backlog", backlog + " unsent", Health::kInfo,
                      "rows committed and not yet acknowledged by Kafka"));
  out->push_back(
      Make("outbox", "messages", "oldest unsent", oldest ? std::to_string(oldest_s) + " s" : "none",
           stale ? Health::kRisk : Health::kOk,
           stale ? "older than doctor.max_unsent_age: delivery is stuck or far behind"
                 : "within doctor.max_unsent_age",
           stale ? "is outboxd running and leading (outboxd status)? does Kafka accept the topic?"
                 : ""));
  if (Scalar(c, "SELECT to_regclass('outbox.delayed')::text")) {
    const std::string waiting = Scalar(c, "SELECT count(*) FROM outbox.delayed").value_or("?");
    const auto overdue = Scalar(c,
                                "SELECT count(*) FROM outbox.delayed WHERE due_at < now() - "
                                "interval '1 minute'");
    const bool late = overdue && *overdue != "0";
    out->push_back(
        Make("outbox", "delayed", "waiting",
             waiting + " waiting, " + overdue.value_or("?") + " overdue by more than 1 min",
             late ? Health::kRisk : Health::kOk,
             late ? "due messages are not released: no leader, or delay.enabled = false"
                  : "delayed messages are released on time",
             late ? "run outboxd with delay.enabled = true" : ""));
  }
  const std::string dead = Scalar(c, "SELECT count(*) FROM outbox.dead_letters").value_or("?");
  out->push_back(dead == "0"
                     ? Make("outbox", "dead_letters", "dead letters", dead, Health::kOk,
                            "no message was given up")
                     : Make("outbox", "dead_letters", "dead letters", dead, Health::kRisk,
                            "messages that could not be delivered (see their error)",
                            "SELECT id, topic, error FROM outbox.dead_letters; fix the cause and "
                            "re-publish them"));
  pg::Params p;
  p.Add(int64_t{config.checkback.max_checks})
      .Add(std::to_string(config.checkback.transaction_timeout.count() +
                          config.checkback.check_interval.count() *
                              (config.checkback.max_checks + 1)) +
           " milliseconds");
  const auto past = Scalar(c,
                           "SELECT count(*) FROM outbox.prepared WHERE state = 'prepared' AND "
                           "(check_count >= $1 OR created_at < now() - $2::interval)",
                           p);
  if (past) {
    out->push_back(*past == "0"
                       ? Make("outbox", "prepared", "past their checks", *past, Health::kOk,
                              "every half message is within its check-back schedule")
                       : Make("outbox", "prepared", "past their checks", *past, Health::kRisk,
                              "half messages still unsettled after all their checks: neither "
                              "delivered nor discarded",
                              "configure a checker ([checkback] checker) and a final_action, or "
                              "settle them: outbox.commit(id) / outbox.rollback(id)"));
  }
}

}  // namespace

const char* HealthName(Health v) {
  switch (v) {
    case Health::kOk:
      return "ok";
    case Health::kInfo:
      return "info";
    case Health::kWarn:
      return "warn";
    case Health::kRisk:
      return "RISK";
  }
  return "?";
}

bool DoctorReport::at_risk() const {
  return std::any_of(findings.begin(), findings.end(),
                     [](const Finding& f) { return f.verdict == Health::kRisk; });
}

std::string DoctorReport::Text() const {
  std::ostringstream out;
  std::string area;
  for (const Finding& f : findings) {
    if (f.area != area) {
      area = f.area;
      out << "\n[" << area << "]\n";
    }
    out << "  " << HealthName(f.verdict)
        << std::string(6 - std::string(HealthName(f.verdict)).size(), ' ') << f.subject << ": "
        << f.check << " = " << f.value << "\n";
    if (f.verdict != Health::kOk) out << "        " << f.detail << "\n";
    if (!f.fix.empty() && (f.verdict == Health::kRisk || f.verdict == Health::kWarn)) {
      out << "        fix: " << f.fix << "\n";
    }
  }
  size_t risks = std::count_if(findings.begin(), findings.end(),
                               [](const Finding& f) { return f.verdict == Health::kRisk; });
  size_t warns = std::count_if(findings.begin(), findings.end(),
                               [](const Finding& f) { return f.verdict == Health::kWarn; });
  out << "\n"
      << (risks ? "AT RISK: " : "ok: ") << risks << " risk(s), " << warns << " warning(s)\n";
  return out.str();
}

std::string DoctorReport::Json() const {
  nlohmann::json j;
  j["at_risk"] = at_risk();
  j["findings"] = nlohmann::json::array();
  for (const Finding& f : findings) {
    j["findings"].push_back(
        {{"area", f.area},
         {"subject", f.subject},
         {"check", f.check},
         {"value", f.value},
         {"verdict", f.verdict == Health::kRisk ? "risk" : HealthName(f.verdict)},
         {"detail", f.detail},
         {"fix", f.fix}});
  }
  return j.dump(2) + "\n";
}

DoctorReport RunDoctor(const Config& config, const std::vector<std::string>& extra_topics,
                       const std::atomic<bool>* stop) {
  DoctorReport report;
  std::vector<Finding> pg_findings;
  std::set<std::string> topics(extra_topics.begin(), extra_topics.end());
  CheckPostgres(config, &pg_findings, &topics);
  if (!config.relay.dead_letter_topic.empty()) topics.insert(config.relay.dead_letter_topic);
  if (!config.checkback.final_topic.empty()) topics.insert(config.checkback.final_topic);
  if (config.relay.delivery == Delivery::kExactlyOnce) {
    topics.insert(config.relay.checkpoint_topic);
  }
  CheckKafka(config, topics, stop, &report.findings);
  report.findings.insert(report.findings.end(), pg_findings.begin(), pg_findings.end());
  return report;
}

void LogDoctorFindings(const Config& config, const std::atomic<bool>& stop) {
  DoctorReport report = RunDoctor(config, {}, &stop);
  for (const Finding& f : report.findings) {
    if (f.check == "reachable" || f.check == "connect") {
      spdlog::debug("start-up doctor skipped: {} {}: {}", f.area, f.subject, f.value);
      return;
    }
  }
  if (stop) return;
  for (const Finding& f : report.findings) {
    if (f.verdict != Health::kRisk && f.verdict != Health::kWarn) continue;
    spdlog::warn("doctor: {} {}: {} = {}: {}{}{}", f.area, f.subject, f.check, f.value, f.detail,
                 f.fix.empty() ? "" : "; fix: ", f.fix);
  }
  if (!report.at_risk()) spdlog::info("doctor: no durability risk found (outboxd doctor for all)");
}

}  // namespace outboxd
