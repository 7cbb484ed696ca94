// Doctor: can this setup keep outboxd's promise? It inspects the real Kafka cluster (per topic the
// outbox writes to: existence, replication factor, min.insync.replicas, unclean leader election;
// the broker's topic auto-creation and its defaults, and log.flush.*) and the PostgreSQL side
// (fsync, synchronous_commit for the application's roles, replication and synchronous standbys,
// the oldest open transaction) and the outbox itself (backlog, oldest unsent message, delayed
// messages overdue, dead letters, half messages past their checks). Each finding has a verdict
// and, where something is wrong, the fix.
//
// `outboxd doctor` prints the report (exit 0: nothing at risk, 1: something at risk); `outboxd
// run` runs it once at start-up on its own thread and logs each risk as a warning. Read only: it
// never creates a topic (metadata for all topics, allow.auto.create.topics=false) or writes a row.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "config.h"

namespace outboxd {

enum class Health { kOk, kInfo, kWarn, kRisk };
const char* HealthName(Health v);

struct Finding {
  std::string area;     // kafka | postgres | outbox
  std::string subject;  // a topic, a role, "broker 1", "server", ...
  std::string check;    // e.g. "replication factor"
  std::string value;    // what was found
  Health verdict = Health::kOk;
  std::string detail;  // what it means
  std::string fix;     // what to do ("" when fine)
};

struct DoctorReport {
  std::vector<Finding> findings;
  bool at_risk() const;
  std::string Text() const;
  std::string Json() const;
};

// `extra_topics`: topics to check beyond those found in the outbox (e.g. from the command line).
// `stop`, when given and set, cuts the wait for the Kafka cluster short.
DoctorReport RunDoctor(const Config& config, const std::vector<std::string>& extra_topics = {},
                       const std::atomic<bool>* stop = nullptr);

// The start-up check: runs RunDoctor and logs each warning and risk (one line each). When
// PostgreSQL or Kafka does not answer it logs nothing (the relay reports outages itself).
void LogDoctorFindings(const Config& config, const std::atomic<bool>& stop);

}  // namespace outboxd
