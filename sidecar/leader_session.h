// LeaderSession: the PostgreSQL session that holds the outbox's advisory lock for this instance
// (the relay's). Other threads of the instance (check-back) run their statements only while that
// session still holds the lock, proved in PostgreSQL itself (pg_locks), not by asking the relay.
#pragma once

#include <cstdint>
#include <string>

#include "config.h"
#include "pg/connection.h"

namespace outboxd {

struct LeaderSession {
  int64_t lock_id = 0;        // the advisory lock key
  int64_t pid = 0;            // the session's backend pid
  std::string backend_start;  // its start, epoch seconds as text: a pid alone may be reused

  bool operator==(const LeaderSession&) const = default;
};

// The [leadership] TCP settings, for every outboxd session.
inline pg::TcpSettings SessionTcpSettings(const LeadershipConfig& c) {
  return pg::TcpSettings{c.keepalive_idle, c.keepalive_interval, c.keepalive_count,
                         c.tcp_user_timeout};
}

// SQL that is true while session ($1 lock_id, $2 pid, $3 backend_start) holds the advisory lock
// in this database; `first` is the number of the first of the three parameters.
std::string LeaderHoldsLockSql(int first);

}  // namespace outboxd
